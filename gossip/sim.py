"""An in-memory network and a discrete-event simulator on virtual time.

Every packet the nodes send is the real thing: encoded, sized to the MTU and
sealed by the core, then opened and decoded by the receiver. The network can
drop, duplicate, delay and partition on command and counts every byte. Time is
virtual: a thousand nodes run in one process, as fast as the CPU allows, and a
run with the same seed is the same run.

Used by the tests and by ``scripts/bench-gossip``; no I/O, no clock.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from gossip.config import GossipConfig
from gossip.core import GossipEvent, GossipNode, Member, Outgoing
from gossip.keyring import Keyring
from gossip.wire import Address

EventHook = Callable[[str, float, GossipEvent], None]

_TICK = 0
_DELIVER = 1
_RESUME = 2
_JOIN_RETRY = 3


@dataclass(slots=True)
class NetworkStats:
    packets: int = 0
    bytes: int = 0
    dropped_loss: int = 0
    dropped_partition: int = 0
    dropped_mtu: int = 0
    dropped_down: int = 0
    duplicated: int = 0
    bytes_by_node: dict[str, int] = field(default_factory=dict)


class Simulation:
    """Nodes on an in-memory network, driven by one event heap on virtual time."""

    def __init__(
        self,
        config: GossipConfig,
        *,
        seed: int = 0,
        keyring: Keyring | None = None,
        latency: tuple[float, float] = (0.0005, 0.002),
        record_events: bool = True,
        on_event: EventHook | None = None,
    ) -> None:
        self.config = config
        self.seed = seed
        self.rng = random.Random(seed)
        self.keyring = keyring if keyring is not None else Keyring(bytes(32))
        self.latency = latency
        self.now = 0.0
        self.loss = 0.0
        self.duplicate = 0.0
        self.extra_delay = 0.0
        self.stats = NetworkStats()
        self.nodes: dict[str, GossipNode] = {}
        self.events: dict[str, list[tuple[float, GossipEvent]]] = {}
        self.record_events = record_events
        self.on_event = on_event
        self._by_address: dict[Address, str] = {}
        self._address_of: dict[str, Address] = {}
        self._down: set[str] = set()
        self._stalled: dict[str, list[tuple[Address, bytes]]] = {}
        self._group: dict[str, int] = {}
        self._heap: list[tuple[float, int, int, object]] = []
        self._seq = 0
        self._next_tick: dict[str, float] = {}
        self._generations: dict[str, int] = {}

    # -- building the cluster ------------------------------------------------------

    def address_of(self, name: str) -> Address:
        if name not in self._address_of:
            index = len(self._address_of)
            address = (f"10.{index // 65536 % 256}.{index // 256 % 256}.{index % 256}", 7946)
            self._address_of[name] = address
            self._by_address[address] = name
        return self._address_of[name]

    def add_node(
        self, name: str, *, join: Iterable[str] = (), config: GossipConfig | None = None
    ) -> GossipNode:
        """Start a node (a new generation if ``name`` ran before) and join via ``join``."""
        generation = self._generations.get(name, 0) + 1
        self._generations[name] = generation
        node = GossipNode(
            config or self.config,
            name=name,
            generation=generation,
            keyring=self.keyring,
            rng=random.Random(f"{self.seed}/{name}/{generation}"),
        )
        self.nodes[name] = node
        self._down.discard(name)
        self.events.setdefault(name, [])
        self._send(name, node.start(self.address_of(name), self.now))
        seeds = [self.address_of(s) for s in join]
        if seeds:
            self._send(name, node.join(seeds, self.now))
            # Like GossipService.join: retry with backoff until somebody answers.
            self._push(self.now + 0.25, _JOIN_RETRY, (name, generation, tuple(seeds), 0.25))
        self._schedule(name)
        return node

    def bootstrap(self, names: Iterable[str]) -> None:
        """Start ``names`` as an already converged cluster (each preloaded with all)."""
        names = list(names)
        for name in names:
            self.add_node(name)
        everyone = [(n, self.nodes[n].generation, 0, self.address_of(n)) for n in names]
        for name in names:
            self.nodes[name].preload(everyone, self.now)
            self._schedule(name)

    def crash(self, name: str) -> None:
        """The node stops dead: no more ticks, packets to it vanish."""
        self._down.add(name)
        self._stalled.pop(name, None)

    def leave(self, name: str) -> None:
        """The node announces that it leaves (it keeps running until crashed)."""
        self._send(name, self.nodes[name].leave(self.now))
        self._schedule(name)

    def stall(self, name: str, duration: float) -> None:
        """The node's loop freezes for ``duration``; packets to it queue up meanwhile."""
        if name in self._stalled:
            return
        self._stalled[name] = []
        self._push(self.now + duration, _RESUME, name)

    def partition(self, *groups: Iterable[str]) -> None:
        """Cut the network into ``groups``; nodes in no group form one more group."""
        self._group = {}
        for index, group in enumerate(groups, 1):
            for name in group:
                self._group[name] = index

    def heal(self) -> None:
        self._group = {}

    # -- running ------------------------------------------------------------------

    def run_until(self, until: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= until:
            when, _, kind, payload = heapq.heappop(heap)
            self.now = when
            if kind == _TICK:
                assert isinstance(payload, str)
                if self._next_tick.get(payload) != when or payload in self._down:
                    continue
                if payload in self._stalled:
                    continue
                del self._next_tick[payload]
                node = self.nodes[payload]
                self._send(payload, node.tick(when))
                self._schedule(payload)
            elif kind == _DELIVER:
                assert isinstance(payload, tuple)
                self._deliver(*payload)
            elif kind == _JOIN_RETRY:
                assert isinstance(payload, tuple)
                self._retry_join(*payload)
            else:
                assert isinstance(payload, str)
                self._resume(payload)
        self.now = max(self.now, until)

    def run_for(self, duration: float) -> None:
        self.run_until(self.now + duration)

    def run_until_true(
        self, condition: Callable[[], bool], timeout: float, step: float = 0.05
    ) -> bool:
        """Run until ``condition()`` holds (checked every ``step``) or ``timeout`` passes."""
        deadline = self.now + timeout
        while self.now < deadline:
            if condition():
                return True
            self.run_until(min(deadline, self.now + step))
        return condition()

    # -- observations ---------------------------------------------------------------

    def live(self) -> list[str]:
        return [n for n in self.nodes if n not in self._down]

    def view(self, observer: str, name: str) -> Member | None:
        return self.nodes[observer].member(name)

    def state(self, observer: str, name: str) -> str | None:
        member = self.nodes[observer].member(name)
        return member.state if member else None

    def all_see(self, name: str, state: str, observers: Iterable[str] | None = None) -> bool:
        watchers = list(observers) if observers is not None else self.live()
        return all(self.state(o, name) == state for o in watchers if o != name)

    def converged(self, observers: Iterable[str] | None = None) -> bool:
        """Every live observer sees every live node alive."""
        live = self.live()
        watchers = list(observers) if observers is not None else live
        return all(self.state(o, n) == "alive" for o in watchers for n in live if o != n)

    # -- internals ------------------------------------------------------------------

    def _push(self, when: float, kind: int, payload: object) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, kind, payload))

    def _schedule(self, name: str) -> None:
        node = self.nodes[name]
        events = node.take_events()
        for event in events:
            if self.record_events:
                self.events[name].append((self.now, event))
            if self.on_event is not None:
                self.on_event(name, self.now, event)
        deadline = node.next_deadline()
        if math.isinf(deadline):
            return
        deadline = max(deadline, self.now)
        current = self._next_tick.get(name)
        if current is None or deadline < current:
            self._next_tick[name] = deadline
            self._push(deadline, _TICK, name)

    def _send(self, name: str, outgoing: Iterable[Outgoing]) -> None:
        source = self._address_of[name]
        for out in outgoing:
            address, data = out.address, out.data
            self.stats.packets += 1
            self.stats.bytes += len(data)
            self.stats.bytes_by_node[name] = self.stats.bytes_by_node.get(name, 0) + len(data)
            if len(data) > self.config.mtu:
                self.stats.dropped_mtu += 1
                continue
            target = self._by_address.get(address)
            if target is None or self._group.get(name, 0) != self._group.get(target, 0):
                self.stats.dropped_partition += 1
                continue
            if self.loss and self.rng.random() < self.loss:
                self.stats.dropped_loss += 1
                continue
            copies = 1
            if self.duplicate and self.rng.random() < self.duplicate:
                copies = 2
                self.stats.duplicated += 1
            for _ in range(copies):
                delay = self.rng.uniform(*self.latency) + self.extra_delay
                self._push(self.now + delay, _DELIVER, (target, source, data))

    def _deliver(self, target: str, source: Address, data: bytes) -> None:
        if target in self._down or target not in self.nodes:
            self.stats.dropped_down += 1
            return
        buffered = self._stalled.get(target)
        if buffered is not None:
            buffered.append((source, data))
            return
        node = self.nodes[target]
        self._send(target, node.receive(data, source, self.now))
        self._schedule(target)

    def _retry_join(
        self, name: str, generation: int, seeds: tuple[Address, ...], delay: float
    ) -> None:
        node = self.nodes.get(name)
        if node is None or node.generation != generation or name in self._down:
            return
        if node.last_contact > -math.inf:
            return
        self._send(name, node.join(seeds, self.now))
        delay = min(delay * 2, 5.0)
        self._push(self.now + delay, _JOIN_RETRY, (name, generation, seeds, delay))

    def _resume(self, name: str) -> None:
        buffered = self._stalled.pop(name, None)
        if buffered is None or name in self._down:
            return
        node = self.nodes[name]
        # Timers first, as a loop that wakes late would: the core must not accuse
        # anyone for the acks still sitting in its socket buffer.
        self._next_tick.pop(name, None)
        self._send(name, node.tick(self.now))
        for source, data in buffered:
            self._send(name, node.receive(data, source, self.now))
        self._schedule(name)
