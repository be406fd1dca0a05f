"""The agent's event bus: what happened in the cluster, as this agent saw it.

Producers (``agent.observer``) call ``EventBus.publish(kind, message, **data)``;
consumers either read the bounded recent history (``recent``) or ``subscribe`` to
every later event. Publishing never blocks and never fails: a subscriber that
falls ``buffer`` events behind is cut off (its stream ends with a note saying how
many it missed) rather than slowing the agent or growing memory without bound.

Every event is a small frozen dataclass with a sequence number local to this
agent (``seq``, so ``/v1/events?since=SEQ`` resumes where a client stopped), the
wall-clock ``time``, a dotted ``kind`` (``member.dead``, ``replica.moved``...), the
``node`` that observed it, a one-line ``message`` for people and flat ``data`` for
scripts. Kinds are listed in ``KINDS``; only ever add to it.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

#: Every kind of event, with what it means. Failures have level "warning".
KINDS: Mapping[str, str] = {
    "member.joined": "a node joined the cluster (or came back as a new generation)",
    "member.suspect": "a node stopped answering probes; it gets no new work",
    "member.alive": "a suspect node answered again",
    "member.dead": "a node was declared dead; its replicas move elsewhere",
    "member.left": "a node left the cluster cleanly",
    "leader.changed": "a new Raft leader (or none) for a term",
    "workload.created": "a workload was created",
    "workload.updated": "a workload's spec changed (new version)",
    "workload.scaled": "a workload's replica count changed",
    "workload.deleted": "a workload was deleted",
    "node.admin": "a node was drained, undrained, or made (in)eligible",
    "replica.placed": "the leader placed a replica on a node",
    "replica.moved": "the leader moved a replica from one node to another",
    "replica.unplaced": "a replica lost its placement (deleted, scaled down, or its node lost)",
    "replica.state": "a replica changed state on its node (starting, running, exited...)",
    "replica.failed": "a replica exited with an error, was OOM-killed or could not start",
    "schedule.failed": "the scheduler found no node for a replica (with the reason)",
}

DEFAULT_HISTORY = 1000
DEFAULT_BUFFER = 1000


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    time: float
    kind: str
    node: str
    message: str
    level: str = "info"
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": self.time,
            "kind": self.kind,
            "level": self.level,
            "node": self.node,
            "message": self.message,
            **({"data": dict(self.data)} if self.data else {}),
        }


class Overflow(Exception):
    """Raised to a subscriber that fell too far behind; ``missed`` events were dropped."""

    def __init__(self, missed: int) -> None:
        super().__init__(f"fell {missed} events behind")
        self.missed = missed


class Subscription:
    """Later events for one consumer; ``async for event in sub`` until overflow."""

    def __init__(self, bus: EventBus, buffer: int) -> None:
        self._bus = bus
        self._send, self._receive = trio.open_memory_channel[Event](buffer)
        self.missed = 0

    def _offer(self, event: Event) -> bool:
        """Queue ``event``; True if this is the one that cut the subscriber off."""
        if self.missed:
            self.missed += 1  # counted until the consumer sees the overflow and leaves
            return False
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.missed = 1
            self._send.close()
            return True
        return False

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            raise Overflow(self.missed) from None

    async def receive(self, timeout: float) -> Event | None:
        """The next event, or None after ``timeout`` seconds without one."""
        with trio.move_on_after(timeout):
            return await self.__anext__()
        return None

    def close(self) -> None:
        self._send.close()
        self._receive.close()


class EventBus:
    """Bounded history plus fan-out to subscribers. Synchronous publish, trio consumers."""

    def __init__(
        self,
        node: str,
        *,
        history: int = DEFAULT_HISTORY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
        self._history: collections.deque[Event] = collections.deque(maxlen=history)
        self._subscribers: list[Subscription] = []
        self._clock = clock
        self._seq = 0
        self.published: collections.Counter[str] = collections.Counter()
        self.cut_off = 0

    @property
    def last_seq(self) -> int:
        return self._seq

    def publish(self, kind: str, message: str, *, level: str = "info", **data: Any) -> Event:
        if kind not in KINDS:
            raise ValueError(f"unknown event kind {kind!r}; add it to agent.events.KINDS")
        self._seq += 1
        event = Event(
            seq=self._seq,
            time=self._clock(),
            kind=kind,
            node=self.node,
            message=message,
            level=level,
            data={k: v for k, v in data.items() if v is not None},
        )
        self._history.append(event)
        self.published[kind] += 1
        for sub in self._subscribers:
            if sub._offer(event):
                self.cut_off += 1
        return event

    def recent(self, *, since: int = 0, limit: int | None = None) -> list[Event]:
        """Events still in the history with ``seq > since``, oldest first, the last ``limit``."""
        events = [e for e in self._history if e.seq > since]
        if limit is not None:
            events = events[-limit:] if limit else []
        return events

    @contextmanager
    def subscribe(self, buffer: int = DEFAULT_BUFFER) -> Iterator[Subscription]:
        """Every event published from now on, until the block exits."""
        sub = Subscription(self, buffer)
        self._subscribers.append(sub)
        try:
            yield sub
        finally:
            if sub in self._subscribers:
                self._subscribers.remove(sub)
            sub.close()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)


__all__ = ["KINDS", "Event", "EventBus", "Overflow", "Subscription"]
