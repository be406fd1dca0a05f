"""The trio driver: one UDP socket, the core's timers, and a small API for the agent.

All protocol decisions live in ``gossip.core``; this module only moves datagrams
between the socket and the core, sleeps until the core's next deadline, and fans
events out to subscribers. Time comes from ``trio.current_time()`` so tests can
run it on a mock clock; ``Member.since`` is converted to wall-clock seconds.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import socket
import time
from collections.abc import Iterable, Mapping, Sequence

import trio

from gossip.config import GossipConfig
from gossip.core import GossipEvent, GossipNode, KeyChanged, Member, MemberEvent, Outgoing
from gossip.errors import ConfigError, GossipError, JoinError
from gossip.keyring import Keyring
from gossip.wire import Address

log = logging.getLogger("hypha.gossip")

_RECV_SIZE = 65536


class GossipService:
    """A gossip member on real UDP. Run ``serve`` in a nursery, then ``join``."""

    def __init__(
        self,
        config: GossipConfig,
        *,
        name: str,
        bind: Address,
        advertise: Address | None = None,
        keyring: Keyring,
        rng_seed: int | None = None,
        generation: int | None = None,
    ) -> None:
        self.config = config
        self.name = name
        self.bind = bind
        self.keyring = keyring
        self._advertise = advertise
        # A restart must supersede the old self: wall-clock microseconds only grow.
        self.generation = generation if generation is not None else time.time_ns() // 1000
        self._core = GossipNode(
            config,
            name=name,
            generation=self.generation,
            keyring=keyring,
            rng=random.Random(rng_seed),
        )
        self._sock: trio.socket.SocketType | None = None
        self._bound: Address | None = None
        self._subscribers: list[trio.MemorySendChannel[GossipEvent]] = []
        self._wake = trio.Event()
        self._sleeping_until = math.inf
        self._contact = trio.Event()
        self._offset = 0.0  # wall clock minus trio clock
        self._counters: dict[str, int] = {}

    # -- lifecycle -----------------------------------------------------------------

    @property
    def address(self) -> Address | None:
        """The advertised address, once ``serve`` has bound the socket."""
        return self._core.address if self._core.started else None

    async def serve(
        self, *, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind the UDP socket, report the bound (host, port), run until cancelled."""
        if self._sock is not None:
            raise GossipError("this GossipService is already serving")
        host, port = self.bind
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = trio.socket.socket(family, socket.SOCK_DGRAM)
        try:
            try:
                await sock.bind((host, port))
            except OSError as exc:
                raise GossipError(
                    f"cannot bind gossip UDP socket to {host}:{port}: {exc.strerror}"
                ) from exc
            bound_host, bound_port = sock.getsockname()[:2]
            bound = (str(bound_host), int(bound_port))
            advertise = self._advertise or bound
            if advertise[0] in ("0.0.0.0", "::", ""):
                raise ConfigError(
                    f"gossip binds {host}:{port}, which is not an address others can reach; "
                    "pass advertise=(host, port)"
                )
            self._sock = sock
            self._bound = bound
            self._offset = time.time() - trio.current_time()
            await self._send_all(self._core.start(advertise, trio.current_time()))
            log.info(
                "gossip serving name=%s bind=%s:%d advertise=%s:%d", self.name, *bound, *advertise
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive_loop, sock)
                nursery.start_soon(self._timer_loop)
                task_status.started(bound)
        finally:
            sock.close()
            self._sock = None
            for channel in self._subscribers:
                channel.close()
            self._subscribers = []

    async def join(self, seeds: Sequence[Address], timeout: float) -> int:
        """Contact the seeds (retrying with backoff) until one answers; return members known.

        Raises ``JoinError`` naming the seeds if none answered within ``timeout`` seconds.
        """
        if self._sock is None:
            raise GossipError("join() needs serve() running first")
        resolved: list[Address] = []
        problems: list[str] = []
        for host, port in seeds:
            try:
                infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            except OSError as exc:
                problems.append(f"{host}:{port} ({exc.strerror or exc})")
                continue
            resolved.append((str(infos[0][4][0]), int(infos[0][4][1])))
        own = self._core.address
        targets = [s for s in resolved if s != own and s != self._bound]
        shown = ", ".join(f"{h}:{p}" for h, p in seeds) or "(no seeds)"
        if resolved and not targets:
            return 1  # only ourselves to join: we are the cluster (the first node's case)
        if not targets:
            raise JoinError(
                f"cannot join: no seed to contact in {shown}"
                + (f" ({'; '.join(problems)})" if problems else "")
            )
        start = trio.current_time()
        delay = min(0.25, self.config.probe_interval)
        with trio.move_on_after(timeout):
            while True:
                await self._send_all(self._core.join(targets, trio.current_time()))
                with trio.move_on_after(delay):
                    while self._core.last_contact < start:
                        await self._contact.wait()
                if self._core.last_contact >= start:
                    known = sum(1 for m in self._core.members() if m.state == "alive")
                    log.info("gossip joined seeds=%s members=%d", shown, known)
                    return known
                delay = min(delay * 2, 5.0)
        raise JoinError(
            f"cannot join: none of {shown} answered within {timeout:g}s; check that agents run "
            f"there, that UDP is not filtered, and that every node has cluster name "
            f"{self.config.cluster!r} and a shared key"
        )

    async def leave(self, timeout: float) -> None:
        """Tell the cluster we leave, waiting up to ``timeout`` for it to be gossiped."""
        if self._sock is None:
            return
        await self._send_all(self._core.leave(trio.current_time()))
        self._poke()
        with trio.move_on_after(timeout):
            while not self._core.leave_done():
                await trio.sleep(self.config.gossip_interval / 2)

    # -- views and state -----------------------------------------------------------

    def members(self) -> list[Member]:
        """Every known member, us included; ``since`` in wall-clock seconds."""
        return [self._wall(m) for m in self._core.members()]

    def set(self, key: str, value: str) -> None:
        """Publish ``key=value`` in our key space (gossiped to everyone)."""
        self._core.set(key, value, trio.current_time())
        self._poke()

    def delete(self, key: str) -> None:
        self._core.delete(key, trio.current_time())
        self._poke()

    def state_of(self, name: str) -> Mapping[str, str]:
        return self._core.state_of(name)

    def states(self) -> dict[str, Mapping[str, str]]:
        return dict(self._core.states())

    def subscribe(self, buffer: int = 1024) -> trio.MemoryReceiveChannel[GossipEvent]:
        """A channel of every later event. A subscriber that falls ``buffer`` events
        behind loses events (counted as ``events_dropped``) rather than stall gossip."""
        send, receive = trio.open_memory_channel[GossipEvent](buffer)
        self._subscribers.append(send)
        return receive

    def counters(self) -> Mapping[str, int]:
        out = dict(self._core.counters_snapshot())
        for key, value in self._counters.items():
            out[key] = out.get(key, 0) + value
        return out

    # -- loops -------------------------------------------------------------------------

    async def _receive_loop(self, sock: trio.socket.SocketType) -> None:
        while True:
            try:
                data, source = await sock.recvfrom(_RECV_SIZE)
            except OSError:
                self._count("recv_errors")
                await trio.sleep(0.01)
                continue
            before = self._core.last_contact
            out = self._core.receive(data, (str(source[0]), int(source[1])), trio.current_time())
            await self._send_all(out)
            self._dispatch()
            if self._core.last_contact != before:
                self._contact.set()
                self._contact = trio.Event()
            if self._core.next_deadline() < self._sleeping_until:
                self._poke()

    async def _timer_loop(self) -> None:
        while True:
            self._sleeping_until = self._core.next_deadline()
            with trio.move_on_at(self._sleeping_until):
                await self._wake.wait()
            self._wake = trio.Event()
            now = trio.current_time()
            if now >= self._core.next_deadline():
                await self._send_all(self._core.tick(now))
                self._dispatch()

    def _poke(self) -> None:
        self._wake.set()

    async def _send_all(self, outgoing: Iterable[Outgoing]) -> None:
        sock = self._sock
        if sock is None:
            return
        for out in outgoing:
            try:
                await sock.sendto(out.data, out.address)
            except OSError:
                self._count("drops_send_error")

    def _dispatch(self) -> None:
        events = self._core.take_events()
        if not events:
            return
        for event in events:
            if isinstance(event, MemberEvent):
                event = MemberEvent(event.kind, self._wall(event.member))
                log.info(
                    "gossip member %s node=%s address=%s:%d incarnation=%d",
                    event.kind,
                    event.member.name,
                    *event.member.address,
                    event.member.incarnation,
                )
            elif isinstance(event, KeyChanged):
                log.debug("gossip key node=%s key=%s", event.node, event.key)
            for channel in list(self._subscribers):
                try:
                    channel.send_nowait(event)
                except trio.WouldBlock:
                    self._count("events_dropped")
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._subscribers.remove(channel)

    def _wall(self, member: Member) -> Member:
        return dataclasses.replace(member, since=member.since + self._offset)

    def _count(self, name: str, amount: int = 1) -> None:
        self._counters[name] = self._counters.get(name, 0) + amount
