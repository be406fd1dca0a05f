"""The gossip protocol as a sans-I/O state machine: SWIM + Lifeguard + scuttlebutt.

Nothing here reads a clock, opens a socket or draws its own randomness: the
driver passes ``now`` (seconds on any monotonic scale) and a seeded
``random.Random``, feeds received datagrams to ``receive`` and calls ``tick`` at
``next_deadline()``. Both return the datagrams to send (already encoded, sized
to the MTU and sealed); ``take_events`` returns what changed.

Failure detection (SWIM with Lifeguard):
  * every probe interval, ping the next member of a shuffled round-robin list;
    no ack within the probe timeout -> ask ``indirect_checks`` others to ping it
    (they answer with an ack or, on silence, a nack); no ack by the end of the
    interval -> suspect it;
  * a suspicion waits between a minimum (``suspicion_mult * log10(N+1)`` probe
    intervals) and ``suspicion_max_timeout_mult`` times that, shrinking as other
    members independently confirm it; in its last few probe timeouts we ping the
    suspect with the suspicion (its ack carries any refutation); then it is dead;
  * a suspected member refutes with a higher incarnation; a restarted member has
    a higher generation, which supersedes everything about its old self;
  * local health: missed nacks, refutations and our own stalled loop raise a
    score that stretches our probe interval and timeout, so a sick node slows
    down instead of accusing healthy ones.

Dissemination: membership and key updates are piggybacked on every probe packet
and pushed each gossip interval to a few members, each update a bounded number
of times (``retransmit_mult * ceil(log10(N+1))``). They wait in two queues that
share each packet half and half while both have updates (either takes what the
other leaves), so a suspicion storm cannot starve key updates, nor the reverse.

Anti-entropy (scuttlebutt, chitchat style): each sync interval, a three-way
exchange with one member: SYN (a digest of a name range) -> SYN_ACK (our digest
and the delta they lack) -> DELTA (what we lack). Deltas carry key entries in
version order and stop at the MTU, so a big state crosses over several rounds.
"""

from __future__ import annotations

import heapq
import math
import random
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from gossip import wire
from gossip.broadcast import BroadcastQueue, take_shared
from gossip.config import GossipConfig
from gossip.errors import StateError, WireError
from gossip.keyring import Keyring
from gossip.wire import Address

MemberState: TypeAlias = Literal["alive", "suspect", "dead", "left"]
EventKind: TypeAlias = Literal["joined", "suspect", "alive", "dead", "left"]

_RANK: dict[str, int] = {"alive": 0, "suspect": 1, "dead": 2, "left": 3}
_BY_CODE: dict[int, MemberState] = {0: "alive", 1: "suspect", 2: "dead", 3: "left"}


@dataclass(frozen=True, slots=True)
class Member:
    """One member as this node sees it. ``since`` is when its state last changed,
    on the clock the core was driven with (the trio driver converts it to wall time)."""

    name: str
    address: Address
    state: MemberState
    incarnation: int
    generation: int
    since: float


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """A member joined (or came back as a new generation), was suspected, recovered,
    died or left."""

    kind: EventKind
    member: Member


@dataclass(frozen=True, slots=True)
class KeyChanged:
    """A key of another member's state changed; ``value`` None means deleted."""

    node: str
    key: str
    value: str | None


GossipEvent: TypeAlias = MemberEvent | KeyChanged


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A sealed datagram to send."""

    address: Address
    data: bytes


@dataclass(slots=True)
class _Entry:
    value: str | None
    version: int


@dataclass(slots=True)
class _Suspicion:
    start: float
    accusers: set[str]
    confirmations_wanted: int
    min_timeout: float
    max_timeout: float
    deadline: float
    last_word_at: float = math.inf  # when the next last-word ping is due

    def recompute(self) -> None:
        if self.confirmations_wanted <= 0:
            timeout = self.min_timeout
        else:
            seen = len(self.accusers) - 1  # the first accuser is not a confirmation
            frac = math.log(seen + 1) / math.log(self.confirmations_wanted + 1)
            timeout = max(
                self.min_timeout, self.max_timeout - (self.max_timeout - self.min_timeout) * frac
            )
        self.deadline = self.start + timeout


@dataclass(slots=True)
class _Node:
    name: str
    generation: int
    incarnation: int
    address: Address
    state: MemberState
    since: float
    kv: dict[str, _Entry] = field(default_factory=dict)
    watermark: int = 0
    gc_version: int = 0
    suspicion: _Suspicion | None = None
    notice_at: float = 0.0
    digest_cache: tuple[wire.DigestEntry, int] | None = None

    def member(self) -> Member:
        return Member(
            self.name, self.address, self.state, self.incarnation, self.generation, self.since
        )


@dataclass(slots=True)
class _Probe:
    seq: int
    target: str
    generation: int
    acked: bool = False
    nacks: int = 0
    expected_nacks: int = 0


@dataclass(slots=True)
class _Relay:
    origin: Address
    origin_seq: int


_DIGEST_RESERVE = 160  # bytes of a SYN_ACK kept for the responder's own digest
_ENTRY_OVERHEAD = 300  # a key/value pair must leave this much of a datagram free

_PROBE_END = 0
_PROBE_TIMEOUT = 1
_RELAY_NACK = 2
_SUSPICION = 3
_GOSSIP = 4
_SYNC = 5
_HOUSEKEEPING = 6
_RECONNECT = 7
_SYNC_RETRY = 8
_LAST_WORD = 9

_SYNC_RETRIES = 3  # a lost SYN or SYN_ACK while catching up is resent this many times
_LAST_WORDS = 8  # pings to a suspect, one per probe timeout, before its verdict


class GossipNode:
    """One member's protocol state. Not thread-safe; drive it from one task."""

    def __init__(
        self,
        config: GossipConfig,
        *,
        name: str,
        generation: int,
        keyring: Keyring,
        rng: random.Random,
    ) -> None:
        if not name or len(name) > wire.MAX_NAME:
            raise StateError(f"a node name must be 1 to {wire.MAX_NAME} characters: {name!r}")
        self.config = config
        self.name = name
        self.generation = generation
        self.keyring = keyring
        self.rng = rng
        self._aad = config.cluster.encode()
        self._budget = config.payload_budget
        self._me = _Node(name, generation, 0, ("0.0.0.0", 0), "alive", 0.0)
        self._nodes: dict[str, _Node] = {name: self._me}
        self._names: list[str] | None = None  # sorted, every known node (for digests)
        self._peers: list[str] | None = None  # alive or suspect, not us
        self._dead: list[str] | None = None  # dead (not left), not us
        self._broadcasts = BroadcastQueue()  # membership: alive, suspect, dead, left
        self._key_broadcasts = BroadcastQueue()  # key/value updates
        self._timers: list[tuple[float, int, int, object]] = []
        self._timer_seq = 0
        self._seq = 0
        self._probe: _Probe | None = None
        self._probe_order: list[str] = []
        self._relays: dict[int, _Relay] = {}
        self._syn_ranges: dict[Address, tuple[str, str | None]] = {}
        self._catching_up: set[Address] = set()
        self._awareness = 0
        self._version = 0  # our own key space's version counter
        self._tombstones: deque[tuple[float, str, int, str, int]] = deque()
        self._corpses: deque[tuple[float, str, int]] = deque()
        self._reaped: dict[str, tuple[int, int, float]] = {}
        self._out: list[Outgoing] = []
        self._events: list[GossipEvent] = []
        self._started = False
        self._leaving = False
        self._left_subject = ("m", name)
        self._news = False  # a join, death or leave waits in the queue: push it early
        self._last_gossip = -math.inf
        self._behind: str | None = None  # a member a key update showed us behind on
        self._next_pull = -math.inf
        self.last_contact = -math.inf
        self._now = 0.0
        self.counters: dict[str, int] = {}

    # -- public surface ----------------------------------------------------------

    @property
    def address(self) -> Address:
        return self._me.address

    @property
    def incarnation(self) -> int:
        return self._me.incarnation

    @property
    def awareness(self) -> int:
        """Lifeguard's local health score: 0 is healthy."""
        return self._awareness

    @property
    def max_entry_size(self) -> int:
        """The largest packed key update (about key + value + 40 bytes) we accept to publish."""
        return self._budget - _ENTRY_OVERHEAD

    @property
    def started(self) -> bool:
        return self._started

    def start(self, address: Address, now: float) -> list[Outgoing]:
        """Begin protocol activity, advertising ``address``."""
        if self._started:
            return []
        self._started = True
        self._me.address = address
        self._me.since = now
        self._queue_alive(self._me)
        interval = self.config.probe_interval
        # Spread timers of nodes started together.
        self._at(now + self.rng.uniform(0, interval), _PROBE_END, None)
        self._at(now + self.rng.uniform(0, self.config.gossip_interval), _GOSSIP, None)
        self._at(now + self.rng.uniform(0, self.config.sync_interval), _SYNC, None)
        self._at(now + 1.0, _HOUSEKEEPING, None)
        self._at(now + self._reconnect_interval(), _RECONNECT, None)
        return self._take_out()

    def members(self) -> list[Member]:
        """Every known member, us included, sorted by name."""
        return [self._nodes[n].member() for n in sorted(self._nodes)]

    def member(self, name: str) -> Member | None:
        node = self._nodes.get(name)
        return node.member() if node else None

    def state_of(self, name: str) -> dict[str, str]:
        """The live keys of ``name``'s key space (tombstones hidden)."""
        node = self._nodes.get(name)
        if node is None:
            return {}
        return {k: e.value for k, e in node.kv.items() if e.value is not None}

    def states(self) -> dict[str, dict[str, str]]:
        return {name: self.state_of(name) for name in sorted(self._nodes)}

    def cluster_size(self) -> int:
        """Members alive or suspect, us included (the N of every log N)."""
        return len(self._peer_names()) + 1

    def set(self, key: str, value: str, now: float) -> None:
        """Publish ``key=value`` in our own key space."""
        self._check_kv(key, value)
        current = self._me.kv.get(key)
        if current is not None and current.value == value:
            return
        self._write_own(key, value, now)

    def delete(self, key: str, now: float) -> None:
        """Delete ``key`` from our key space (a tombstone, collected after a while)."""
        self._check_kv(key, "")
        current = self._me.kv.get(key)
        if current is None or current.value is None:
            return
        self._write_own(key, None, now)

    def preload(self, members: Iterable[tuple[str, int, int, Address]], now: float) -> None:
        """Take (name, generation, incarnation, address) as alive members without
        events or gossip: a simulator's converged start, or a persisted snapshot.
        Known members are left alone; the protocol corrects anything stale."""
        added = False
        for name, generation, incarnation, address in members:
            if name not in self._nodes:
                self._nodes[name] = _Node(name, generation, incarnation, address, "alive", now)
                added = True
        if added:
            self._membership_changed()

    def join(self, seeds: Iterable[Address], now: float) -> list[Outgoing]:
        """Send a sync (carrying who we are) to every seed; answers teach us the cluster."""
        for seed in seeds:
            if seed == self._me.address:
                continue
            self._catching_up.add(seed)
            self._send_syn(seed, lo_index=0)
        return self._take_out()

    def leave(self, now: float) -> list[Outgoing]:
        """Announce that we leave; stop probing and refuting."""
        if self._leaving:
            return self._take_out()
        self._leaving = True
        me = self._me
        me.state = "left"
        me.since = now
        self._queue(("m", me.name), wire.Left(me.name, me.generation, me.incarnation))
        targets = self._peer_names()
        for name in self.rng.sample(targets, min(len(targets), self.config.gossip_nodes * 2)):
            self._emit(self._nodes[name].address, wire.Gossip())
        return self._take_out()

    def leave_done(self) -> bool:
        """True once our leave announcement was sent as often as updates are."""
        return self._leaving and (
            self._left_subject not in self._broadcasts or not self._peer_names()
        )

    def take_events(self) -> list[GossipEvent]:
        events, self._events = self._events, []
        return events

    def next_deadline(self) -> float:
        return self._timers[0][0] if self._timers else math.inf

    # -- input: datagrams and time -----------------------------------------------

    def receive(self, data: bytes, source: Address, now: float) -> list[Outgoing]:
        """Handle one datagram. Malformed or unauthenticated ones are counted and dropped."""
        self._now = now
        self._count("packets_received")
        self._count("bytes_received", len(data))
        if len(data) > self.config.mtu:
            self._count("drops_oversize")
            return []
        try:
            packet = wire.decode(self.keyring.open(data, self._aad), self._budget)
        except WireError as exc:
            self._count(f"drops_{exc.reason}")
            return []
        sender = packet.sender
        if sender.name == self.name:
            self._count("drops_from_self")
            return []
        self.last_contact = now
        if self._started:
            self._apply_alive(
                wire.Alive(sender.name, sender.generation, sender.incarnation, sender.address),
                now,
            )
        msg = packet.message
        if isinstance(msg, wire.Ping | wire.Ack | wire.PingReq | wire.Nack | wire.Gossip):
            for update in msg.updates:
                self._apply_update(update, now)
            if self._behind is not None:
                self._pull(self._behind, source, now)
        if isinstance(msg, wire.Ping):
            if msg.target == self.name:
                self._emit(source, wire.Ack(msg.seq))
            else:
                self._count("drops_wrong_target")
        elif isinstance(msg, wire.Ack):
            self._on_ack(msg.seq)
        elif isinstance(msg, wire.PingReq):
            self._on_ping_req(msg, source, now)
        elif isinstance(msg, wire.Nack):
            if self._probe is not None and self._probe.seq == msg.seq:
                self._probe.nacks += 1
                self._count("nacks_received")
        elif isinstance(msg, wire.Syn):
            self._on_syn(msg, source)
        elif isinstance(msg, wire.SynAck):
            learned = self._apply_delta(msg.delta, sender.name, now)
            delta = self._build_delta(msg.lo, msg.hi, msg.digest, self._budget - 64)
            if delta:
                self._emit(source, wire.Delta(delta))
            self._catch_up(source, learned)
        elif isinstance(msg, wire.Delta):
            self._apply_delta(msg.delta, sender.name, now)
        self._notice(sender, source, now)
        self._push_news(now)
        return self._take_out()

    def tick(self, now: float) -> list[Outgoing]:
        """Fire every timer due at ``now``."""
        self._now = now
        if not self._timers or self._timers[0][0] > now:
            return []
        stalled = now - self._timers[0][0] > self.config.stall_threshold
        if stalled:
            self._count("stalls")
            self._nudge_awareness(+1)
        while self._timers and self._timers[0][0] <= now:
            _, _, kind, arg = heapq.heappop(self._timers)
            if kind == _PROBE_END:
                self._probe_end(now, stalled)
            elif kind == _PROBE_TIMEOUT:
                self._probe_timeout(arg, now, stalled)
            elif kind == _RELAY_NACK:
                assert isinstance(arg, int)
                relay = self._relays.pop(arg, None)
                if relay is not None and not stalled:
                    self._emit(relay.origin, wire.Nack(relay.origin_seq))
            elif kind == _SUSPICION:
                self._suspicion_due(arg, now, stalled)
            elif kind == _GOSSIP:
                self._gossip_round()
                self._at(now + self.config.gossip_interval, _GOSSIP, None)
            elif kind == _SYNC:
                self._sync_round()
                self._at(now + self._sync_interval(), _SYNC, None)
            elif kind == _HOUSEKEEPING:
                self._housekeeping(now)
                self._at(now + 1.0, _HOUSEKEEPING, None)
            elif kind == _RECONNECT:
                self._reconnect()
                self._at(now + self._reconnect_interval(), _RECONNECT, None)
            elif kind == _SYNC_RETRY:
                self._sync_retry(arg)
            elif kind == _LAST_WORD:
                self._last_word(arg, now, stalled)
        self._push_news(now)
        return self._take_out()

    # -- timers -------------------------------------------------------------------

    def _at(self, when: float, kind: int, arg: object) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (when, self._timer_seq, kind, arg))

    def _sync_interval(self) -> float:
        """``sync_interval``, stretched by 1 + ceil(log2(N/64)) above 64 members: in a
        big cluster piggybacking carries the changes and anti-entropy only repairs,
        so each node's sync cost stays flat as N grows (memberlist scales its
        push-pull the same way)."""
        n = self.cluster_size()
        stretch = 1 + max(0, math.ceil(math.log2(n / 64))) if n > 64 else 1
        return self.config.sync_interval * stretch

    def _reconnect_interval(self) -> float:
        return self.config.probe_interval * 10

    # -- probing ------------------------------------------------------------------

    def _scale(self) -> int:
        return self._awareness + 1

    def _nudge_awareness(self, delta: int) -> None:
        self._awareness = max(0, min(self.config.awareness_max - 1, self._awareness + delta))

    def _probe_end(self, now: float, stalled: bool) -> None:
        probe, self._probe = self._probe, None
        if probe is not None and not probe.acked:
            if stalled:
                self._count("probes_inconclusive")
            else:
                self._probe_failed(probe, now)
        if not self._leaving:
            self._start_probe(now)
        self._at(now + self.config.probe_interval * self._scale(), _PROBE_END, None)

    def _next_target(self) -> _Node | None:
        for _ in range(2):
            while self._probe_order:
                node = self._nodes.get(self._probe_order.pop())
                if node is not None and node is not self._me and node.state in ("alive", "suspect"):
                    return node
            self._probe_order = list(self._peer_names())
            self.rng.shuffle(self._probe_order)
        return None

    def _start_probe(self, now: float) -> None:
        target = self._next_target()
        if target is None:
            return
        self._seq = (self._seq + 1) & wire.MAX_U32
        self._probe = _Probe(self._seq, target.name, target.generation)
        self._count("probes")
        self._emit(target.address, wire.Ping(self._seq, target.name))
        self._at(now + self.config.probe_timeout * self._scale(), _PROBE_TIMEOUT, self._seq)

    def _probe_timeout(self, seq: object, now: float, stalled: bool) -> None:
        probe = self._probe
        if probe is None or probe.seq != seq or probe.acked or stalled:
            return
        target = self._nodes.get(probe.target)
        if target is None:
            return
        # A second direct ping alongside the indirect ones (memberlist sends its
        # fallback over TCP): on a lossy path it halves the false suspicions.
        self._emit(target.address, wire.Ping(seq, target.name))
        self._count("probe_retries")
        helpers = [n for n in self._peer_names() if n != probe.target]
        chosen = self.rng.sample(helpers, min(len(helpers), self.config.indirect_checks))
        for name in chosen:
            self._emit(self._nodes[name].address, wire.PingReq(seq, target.name, target.address))
        probe.expected_nacks = len(chosen)
        self._count("indirect_probes", len(chosen))

    def _probe_failed(self, probe: _Probe, now: float) -> None:
        self._count("probe_failures")
        # Lifeguard: a helper that did not even nack suggests our own links or loop are
        # the problem, so we slow down; with no helpers at all, one failure counts.
        if probe.expected_nacks:
            self._nudge_awareness(probe.expected_nacks - probe.nacks)
        else:
            self._nudge_awareness(+1)
        node = self._nodes.get(probe.target)
        if node is None or node.generation != probe.generation:
            return
        if node.state in ("alive", "suspect"):
            self._apply_suspect(
                wire.Suspect(node.name, node.generation, node.incarnation, self.name), now
            )

    def _on_ack(self, seq: int) -> None:
        probe = self._probe
        if probe is not None and probe.seq == seq and not probe.acked:
            probe.acked = True
            self._count("acks")
            self._nudge_awareness(-1)
            return
        relay = self._relays.pop(seq, None)
        if relay is not None:
            self._emit(relay.origin, wire.Ack(relay.origin_seq))

    def _on_ping_req(self, msg: wire.PingReq, source: Address, now: float) -> None:
        self._seq = (self._seq + 1) & wire.MAX_U32
        self._relays[self._seq] = _Relay(source, msg.seq)
        self._emit(msg.target_address, wire.Ping(self._seq, msg.target))
        self._at(now + self.config.probe_timeout * 0.8, _RELAY_NACK, self._seq)

    # -- suspicion ----------------------------------------------------------------

    def _start_suspicion(self, node: _Node, accuser: str, now: float) -> None:
        n = self.cluster_size()
        minimum = self.config.suspicion_mult * max(1.0, math.log10(n + 1))
        minimum *= self.config.probe_interval
        wanted = self.config.suspicion_mult - 2
        if n - 2 < wanted:
            wanted = 0
        suspicion = _Suspicion(
            now,
            {accuser},
            max(0, wanted),
            minimum,
            minimum * self.config.suspicion_max_timeout_mult,
            0.0,
        )
        suspicion.recompute()
        node.suspicion = suspicion
        self._at(suspicion.deadline, _SUSPICION, (node.name, suspicion))
        self._plan_last_words(node.name, suspicion)

    def _plan_last_words(self, name: str, suspicion: _Suspicion) -> None:
        """Ping the suspect in the last ``_LAST_WORDS`` probe timeouts before its
        deadline, carrying the suspicion (Lifeguard's buddy system): a live suspect
        refutes, and its ack carries the new incarnation straight to us. Under heavy
        loss a refutation's gossip can miss a few members; without this each of them
        declares a live member dead. A real corpse costs each member these pings."""
        start = max(self._now, suspicion.deadline - _LAST_WORDS * self.config.probe_timeout)
        if start < suspicion.last_word_at:
            suspicion.last_word_at = start
            self._at(start, _LAST_WORD, (name, suspicion, start))

    def _last_word(self, arg: object, now: float, stalled: bool) -> None:
        assert isinstance(arg, tuple)
        name, suspicion, when = arg
        assert isinstance(name, str) and isinstance(suspicion, _Suspicion)
        node = self._nodes.get(name)
        if node is None or node.suspicion is not suspicion or node.state != "suspect":
            return
        if when != suspicion.last_word_at or now >= suspicion.deadline:
            return  # superseded by an earlier plan (a confirmation), or too late
        if not stalled and not self._leaving:
            self._seq = (self._seq + 1) & wire.MAX_U32
            accusation = wire.Suspect(node.name, node.generation, node.incarnation, self.name)
            self._count("last_word_pings")
            self._emit(node.address, wire.Ping(self._seq, node.name, (accusation,)))
        suspicion.last_word_at = now + self.config.probe_timeout
        if suspicion.last_word_at < suspicion.deadline:
            self._at(suspicion.last_word_at, _LAST_WORD, (name, suspicion, suspicion.last_word_at))

    def _suspicion_due(self, arg: object, now: float, stalled: bool) -> None:
        assert isinstance(arg, tuple)
        name, suspicion = arg
        assert isinstance(name, str) and isinstance(suspicion, _Suspicion)
        node = self._nodes.get(name)
        if node is None or node.suspicion is not suspicion or node.state != "suspect":
            return
        if now < suspicion.deadline:  # a confirmation moved it; a later entry exists
            return
        if stalled:
            # We could not hear a refutation while stalled: give it one more round.
            suspicion.deadline = now + self.config.probe_interval * self._scale()
            self._at(suspicion.deadline, _SUSPICION, (name, suspicion))
            return
        self._count("deaths_declared")
        self._apply_dead(wire.Dead(node.name, node.generation, node.incarnation, self.name), now)

    # -- membership updates (the rules) -------------------------------------------------

    def _apply_update(self, update: wire.Update, now: float) -> None:
        if isinstance(update, wire.Alive):
            self._apply_alive(update, now)
        elif isinstance(update, wire.Suspect):
            self._apply_suspect(update, now)
        elif isinstance(update, wire.Dead):
            self._apply_dead(update, now)
        elif isinstance(update, wire.Left):
            self._apply_left(update, now)
        else:
            self._apply_key_update(update, now)

    def _refute(self, incarnation: int) -> None:
        me = self._me
        me.incarnation = max(me.incarnation, incarnation) + 1
        self._count("refutations")
        self._nudge_awareness(+1)
        self._queue_alive(me)

    def _apply_alive(self, msg: wire.Alive, now: float, *, spread: bool = True) -> None:
        """``spread``: queue the news for gossip (not when a sync taught it: the peer
        that synced with us already knew, and so do most others)."""
        if msg.name == self.name:
            if (
                msg.generation == self.generation
                and msg.incarnation > self._me.incarnation
                and not self._leaving
            ):
                self._refute(msg.incarnation)
            return
        node = self._nodes.get(msg.name)
        if node is None:
            reaped = self._reaped.get(msg.name)
            if reaped is not None and (msg.generation, msg.incarnation) <= reaped[:2]:
                return
            node = _Node(msg.name, msg.generation, msg.incarnation, msg.address, "alive", now)
            self._nodes[msg.name] = node
            self._membership_changed()
            self._event("joined", node)
            if spread:
                self._queue_alive(node)
                self._news = True
            return
        if msg.generation < node.generation:
            return
        if msg.generation > node.generation:
            # A restart: the new generation supersedes the old self entirely.
            removed = {k for k, e in node.kv.items() if e.value is not None}
            node.generation = msg.generation
            node.incarnation = msg.incarnation
            node.address = msg.address
            node.state = "alive"
            node.since = now
            node.kv = {}
            node.watermark = node.gc_version = 0
            node.suspicion = None
            self._membership_changed()
            for key in sorted(removed):
                self._events.append(KeyChanged(node.name, key, None))
            self._event("joined", node)
            if spread:
                self._queue_alive(node)
                self._news = True
            return
        if msg.incarnation <= node.incarnation:
            return
        node.incarnation = msg.incarnation
        node.address = msg.address
        node.suspicion = None
        if node.state != "alive":
            came_back = node.state in ("dead", "left")
            node.state = "alive"
            node.since = now
            if came_back:  # suspect <-> alive leaves every cached view as it was
                self._membership_changed()
            self._event("joined" if came_back else "alive", node)
        if spread:
            self._queue_alive(node)

    def _apply_suspect(self, msg: wire.Suspect, now: float) -> None:
        if msg.name == self.name:
            if (
                msg.generation == self.generation
                and msg.incarnation >= self._me.incarnation
                and not self._leaving
            ):
                self._refute(msg.incarnation)
            return
        node = self._nodes.get(msg.name)
        if node is None or node.generation != msg.generation:
            return
        if msg.incarnation < node.incarnation or node.state in ("dead", "left"):
            return
        suspicion = node.suspicion
        if (
            node.state == "suspect"
            and suspicion is not None
            and msg.incarnation == node.incarnation
        ):
            # Already suspect: an independent accuser is a confirmation (Lifeguard).
            if msg.accuser not in suspicion.accusers:
                suspicion.accusers.add(msg.accuser)
                before = suspicion.deadline
                suspicion.recompute()
                if suspicion.deadline < before:
                    self._at(suspicion.deadline, _SUSPICION, (node.name, suspicion))
                    self._plan_last_words(node.name, suspicion)
                self._queue(("m", node.name), msg)
            return
        node.incarnation = msg.incarnation
        node.state = "suspect"
        node.since = now
        if msg.accuser == self.name:
            self._count("suspicions")
        self._start_suspicion(node, msg.accuser, now)
        self._event("suspect", node)
        self._queue(("m", node.name), msg)

    def _apply_dead(self, msg: wire.Dead, now: float) -> None:
        if msg.name == self.name:
            if (
                msg.generation == self.generation
                and msg.incarnation >= self._me.incarnation
                and not self._leaving
            ):
                self._refute(msg.incarnation)
            return
        node = self._nodes.get(msg.name)
        if node is None or node.generation != msg.generation:
            return
        if msg.incarnation < node.incarnation or node.state in ("dead", "left"):
            return
        node.incarnation = msg.incarnation
        node.state = "dead"
        node.since = now
        node.suspicion = None
        self._corpses.append((now, node.name, node.generation))
        self._membership_changed()
        self._event("dead", node)
        self._queue(("m", node.name), msg)
        self._news = True

    def _apply_left(self, msg: wire.Left, now: float) -> None:
        if msg.name == self.name:
            return
        node = self._nodes.get(msg.name)
        if node is None or node.generation != msg.generation:
            return
        if msg.incarnation < node.incarnation or node.state == "left":
            return
        node.incarnation = msg.incarnation
        node.state = "left"
        node.since = now
        node.suspicion = None
        self._corpses.append((now, node.name, node.generation))
        self._membership_changed()
        self._event("left", node)
        self._queue(("m", node.name), msg)
        self._news = True

    def _notice(self, sender: wire.Sender, source: Address, now: float) -> None:
        """Tell a member that talks to us that we hold it suspect or dead, so it refutes."""
        node = self._nodes.get(sender.name)
        if (
            node is None
            or node.generation != sender.generation
            or node.state not in ("suspect", "dead")
            or sender.incarnation > node.incarnation
            or now < node.notice_at
        ):
            return
        node.notice_at = now + self.config.probe_interval
        update: wire.Update
        if node.state == "suspect":
            update = wire.Suspect(node.name, node.generation, node.incarnation, self.name)
        else:
            update = wire.Dead(node.name, node.generation, node.incarnation, self.name)
        self._count("notices")
        self._emit(source, wire.Gossip((update,)), piggyback=False)

    # -- key/value state ----------------------------------------------------------

    def _check_kv(self, key: str, value: str) -> None:
        if not isinstance(key, str) or not key or len(key) > wire.MAX_KEY:
            raise StateError(f"a key must be a string of 1 to {wire.MAX_KEY} characters: {key!r}")
        if not isinstance(value, str):
            raise StateError(f"the value of {key!r} must be a string, not {type(value).__name__}")
        size = len(wire.pack_update(wire.KeyUpdate(self.name, self.generation, key, value, 2**63)))
        limit = self.max_entry_size
        if size > limit:
            raise StateError(
                f"key {key!r} with its value takes {size} bytes; one datagram carries at most "
                f"{limit} (raise mtu or split the value)"
            )

    def _write_own(self, key: str, value: str | None, now: float) -> None:
        self._version += 1
        self._me.kv[key] = _Entry(value, self._version)
        self._me.watermark = self._version
        if value is None:
            self._tombstones.append((now, self.name, self.generation, key, self._version))
        self._queue(
            ("k", self.name, key),
            wire.KeyUpdate(self.name, self.generation, key, value, self._version),
        )

    def _apply_key_update(self, msg: wire.KeyUpdate, now: float) -> None:
        node = self._nodes.get(msg.node)
        if node is None or node.generation < msg.generation:
            reaped = self._reaped.get(msg.node)
            if reaped is None or reaped[0] < msg.generation:
                self._behind = msg.node  # a member we do not know (yet): pull it
            return
        if node is self._me or node.generation != msg.generation:
            return
        if self._store(node, msg.key, msg.value, msg.version, now):
            if msg.version == node.watermark + 1:
                node.watermark = msg.version
            self._queue(("k", msg.node, msg.key), msg)
        if msg.version > node.watermark and node.state in ("alive", "suspect"):
            self._behind = msg.node  # versions between are missing: pull them

    def _store(self, node: _Node, key: str, value: str | None, version: int, now: float) -> bool:
        current = node.kv.get(key)
        if current is not None and current.version >= version:
            return False
        node.kv[key] = _Entry(value, version)
        if value is None:
            self._tombstones.append((now, node.name, node.generation, key, version))
        before = current.value if current is not None else None
        if before != value:
            self._events.append(KeyChanged(node.name, key, value))
        return True

    # -- anti-entropy ---------------------------------------------------------------

    def _sorted_names(self) -> list[str]:
        if self._names is None:
            self._names = sorted(self._nodes)
        return self._names

    def _digest_entry(self, node: _Node) -> tuple[wire.DigestEntry, int]:
        """The node's digest entry and its packed size (cached while unchanged)."""
        entry = wire.DigestEntry(
            node.name,
            node.generation,
            node.incarnation,
            wire.STATUS_CODES[node.state],
            node.watermark,
            node.gc_version,
        )
        cached = node.digest_cache
        if cached is not None and cached[0] == entry:
            return cached
        node.digest_cache = (entry, len(wire.pack(list(entry))))
        return node.digest_cache

    def _digest(
        self, start: int, budget: int, hi_limit: str | None = None
    ) -> tuple[str | None, tuple[wire.DigestEntry, ...]]:
        """Digest entries from sorted index ``start`` while they fit; returns (hi, entries)."""
        names = self._sorted_names()
        entries: list[wire.DigestEntry] = []
        used = 3
        index = start
        while index < len(names):
            name = names[index]
            if hi_limit is not None and name >= hi_limit:
                return hi_limit, tuple(entries)
            entry, size = self._digest_entry(self._nodes[name])
            if used + size > budget:
                return name, tuple(entries)
            entries.append(entry)
            used += size
            index += 1
        return hi_limit, tuple(entries)

    def _pull(self, name: str, source: Address, now: float) -> None:
        """A key update showed that we lack part of ``name``'s state (or ``name``
        itself): sync the name range from ``name`` with the member that sent it, at
        most once per gossip interval. Random anti-entropy at N=1000 visits a given
        name about once a minute; a joiner that did not know the key's owner yet, or
        a member that missed an earlier version, would wait that long."""
        self._behind = None
        if now < self._next_pull or self._leaving or source in self._syn_ranges:
            return
        self._next_pull = now + self.config.gossip_interval
        self._count("gap_pulls")
        self._send_syn(source, bisect_left(self._sorted_names(), name), lo=name)

    def _send_syn(self, address: Address, lo_index: int, lo: str | None = None) -> None:
        names = self._sorted_names()
        if lo is None:
            lo = "" if lo_index == 0 else names[lo_index]
        hi, digest = self._digest(lo_index, self._budget - 96)
        self._syn_ranges[address] = (lo, hi)
        self._emit(address, wire.Syn(lo, hi, digest))

    def _catch_up(self, peer: Address, learned: int) -> None:
        """Chain syncs with a peer while they teach us something: a joiner (or a node
        back from a partition) walks the whole name space in round trips instead of
        one range per sync interval. A sync that teaches nothing ends the chain."""
        sent = self._syn_ranges.pop(peer, None)
        if sent is None:
            return
        lo, hi = sent
        names = self._sorted_names()
        if learned:
            self._catching_up.add(peer)
            self._count("sync_chained")
            self._send_chained_syn(peer, bisect_left(names, lo) if lo else 0, 0)
        elif peer in self._catching_up:
            if hi is None:
                self._catching_up.discard(peer)
            else:
                self._count("sync_chained")
                self._send_chained_syn(peer, bisect_left(names, hi), 0)

    def _send_chained_syn(self, peer: Address, lo_index: int, tries: int) -> None:
        """A catch-up SYN, resent if its answer does not come back within the probe
        timeout: one lost datagram must not leave a joiner with half the cluster
        until random syncs fill it in."""
        self._send_syn(peer, lo_index)
        sent = self._syn_ranges[peer]
        self._at(self._now + self.config.probe_timeout, _SYNC_RETRY, (peer, sent, tries + 1))

    def _sync_retry(self, arg: object) -> None:
        assert isinstance(arg, tuple)
        peer, sent, tries = arg
        if self._syn_ranges.get(peer) is not sent or peer not in self._catching_up:
            return  # answered (or superseded by a newer exchange)
        if tries > _SYNC_RETRIES or self._leaving:
            self._catching_up.discard(peer)
            return
        self._count("sync_retries")
        lo, _ = self._syn_ranges[peer]
        self._send_chained_syn(peer, bisect_left(self._sorted_names(), lo) if lo else 0, tries)

    def _sync_round(self) -> None:
        if self._leaving:
            return
        peers = self._peer_names()
        if not peers:
            return
        target = self._nodes[self.rng.choice(peers)]
        self._count("syncs")
        names = self._sorted_names()
        # A digest holds about `span` entries from its start; drawing the start from
        # [-span, N) (clamped at 0) covers every name equally often, the first ones too.
        span = (self._budget - 96) // 28
        self._send_syn(target.address, max(0, self.rng.randrange(-span, len(names))))

    def _reconnect(self) -> None:
        """Try one member we hold dead: if it is back (a healed partition), the
        exchange makes one of us refute and the cluster merges again."""
        if self._leaving:
            return
        dead = self._dead_names()
        if dead:
            self._count("reconnects")
            self._send_syn(self._nodes[self.rng.choice(dead)].address, 0)

    def _on_syn(self, msg: wire.Syn, source: Address) -> None:
        names = self._sorted_names()
        start = bisect_left(names, msg.lo)
        room = self._budget - 96
        # The delta goes first (it is what they asked for); our digest, so they can
        # answer with what we lack, takes the rest and at least a few entries' worth.
        delta = self._build_delta(msg.lo, msg.hi, msg.digest, room - _DIGEST_RESERVE)
        used = len(wire.pack([wire.delta_fields(d) for d in delta]))
        hi, digest = self._digest(start, room - used, msg.hi)
        self._emit(source, wire.SynAck(msg.lo, hi, digest, delta))

    def _build_delta(
        self,
        lo: str,
        hi: str | None,
        digest: Sequence[wire.DigestEntry],
        budget: int,
    ) -> tuple[wire.NodeDelta, ...]:
        """What the owner of ``digest`` (covering names in [lo, hi)) lacks, within budget."""
        theirs = {e.name: e for e in digest}
        names = self._sorted_names()
        start = bisect_left(names, lo)
        end = len(names) if hi is None else bisect_left(names, hi)
        wanted: list[tuple[_Node, int, bool]] = []  # node, from version, reset
        for name in names[start:end]:
            node = self._nodes[name]
            entry = theirs.get(name)
            if entry is None:
                if node.state in ("dead", "left"):
                    continue  # they would ignore a corpse they do not know
                wanted.append((node, 0, False))
            elif node.generation > entry.generation:
                wanted.append((node, 0, False))
            elif node.generation < entry.generation:
                continue
            elif entry.version < node.gc_version and entry.gc_version < node.gc_version:
                wanted.append((node, 0, True))
            elif node.watermark > entry.version:
                wanted.append((node, entry.version, False))
            elif (node.incarnation, _RANK[node.state]) > (
                entry.incarnation,
                _RANK[_BY_CODE[entry.status]],
            ):
                wanted.append((node, node.watermark, False))
        self.rng.shuffle(wanted)
        out: list[wire.NodeDelta] = []
        used = 3
        for node, since, reset in wanted:
            header = self._delta_for(node, reset, ())
            header_size = len(wire.pack(wire.delta_fields(header)))
            if used + header_size > budget:
                continue
            room = budget - used - header_size - 2  # entries array header may grow
            entries: list[tuple[str, str | None, int]] = []
            pending = sorted(
                ((k, e.value, e.version) for k, e in node.kv.items() if e.version > since),
                key=lambda item: item[2],
            )
            for item in pending:
                size = len(wire.pack(list(item)))
                if size > room:
                    break
                entries.append(item)
                room -= size
            complete = len(entries) == len(pending)
            if pending and not entries:
                if reset:
                    continue
                complete = False
            delta = self._delta_for(node, reset, tuple(entries), complete)
            used += len(wire.pack(wire.delta_fields(delta)))
            out.append(delta)
        return tuple(out)

    def _delta_for(
        self,
        node: _Node,
        reset: bool,
        entries: tuple[tuple[str, str | None, int], ...],
        complete: bool = True,
    ) -> wire.NodeDelta:
        return wire.NodeDelta(
            node.name,
            node.generation,
            node.incarnation,
            wire.STATUS_CODES[node.state],
            node.address,
            node.watermark,
            node.gc_version,
            reset,
            complete,
            entries,
        )

    def _apply_delta(self, delta: Sequence[wire.NodeDelta], sender: str, now: float) -> int:
        """Apply a delta; return how many members and entries were news to us."""
        learned = 0
        for d in delta:
            state = _BY_CODE[d.status]
            if d.name == self.name:
                if d.generation == self.generation and state in ("suspect", "dead"):
                    self._apply_suspect(
                        wire.Suspect(d.name, d.generation, d.incarnation, sender), now
                    )
                continue
            known = self._nodes.get(d.name)
            if known is None and state in ("dead", "left"):
                continue  # never resurrect a corpse we do not know
            if known is not None and d.generation < known.generation:
                continue
            alive = wire.Alive(d.name, d.generation, d.incarnation, d.address)
            if state == "alive" or known is None or d.generation > known.generation:
                learned += known is None or d.generation > known.generation
                self._apply_alive(alive, now, spread=False)
            if state == "suspect" or state == "dead":
                # Like memberlist's state merge: another's "dead" only makes us suspect,
                # so one confused member cannot kill a healthy node everywhere.
                self._apply_suspect(wire.Suspect(d.name, d.generation, d.incarnation, sender), now)
            elif state == "left":
                self._apply_left(wire.Left(d.name, d.generation, d.incarnation), now)
            node = self._nodes.get(d.name)
            if node is None or node.generation != d.generation:
                continue
            if d.reset:
                for key, entry in list(node.kv.items()):
                    if entry.value is not None:
                        self._events.append(KeyChanged(node.name, key, None))
                node.kv = {}
                node.watermark = 0
                node.gc_version = max(node.gc_version, d.gc_version)
            for key, value, version in d.entries:
                learned += self._store(node, key, value, version, now)
            if d.complete:
                node.watermark = max(node.watermark, d.max_version)
            elif d.entries:
                # Entries above the sender's own watermark may sit beyond a hole it has.
                node.watermark = max(node.watermark, min(d.entries[-1][2], d.max_version))
        return learned

    # -- dissemination ------------------------------------------------------------

    def _retransmit_limit(self) -> int:
        return self.config.retransmit_mult * math.ceil(math.log10(self.cluster_size() + 1))

    def _queue(self, subject: tuple[str, ...], update: wire.Update) -> None:
        queue = self._key_broadcasts if subject[0] == "k" else self._broadcasts
        queue.queue(subject, wire.pack_update(update))

    def _pending(self) -> int:
        return len(self._broadcasts) + len(self._key_broadcasts)

    def _queue_alive(self, node: _Node) -> None:
        self._queue(
            ("m", node.name), wire.Alive(node.name, node.generation, node.incarnation, node.address)
        )

    def _push_news(self, now: float) -> None:
        """Gossip a join, death or leave at once instead of at the next round (at
        most every quarter gossip interval): each hop of its spread then costs a
        network round trip, not half a gossip interval. Suspicions and refutations,
        which come in storms on a lossy network, wait for the regular rounds."""
        if self._news and now - self._last_gossip >= self.config.gossip_interval / 4:
            self._count("gossip_eager")
            self._gossip_round()

    def _gossip_round(self) -> None:
        self._news = False
        self._last_gossip = self._now
        if not self._pending():
            return
        candidates = self._peer_names() + self._recently_dead()
        if not candidates:
            return
        chosen = self.rng.sample(candidates, min(len(candidates), self.config.gossip_nodes))
        for name in chosen:
            if not self._pending():
                break
            self._emit(self._nodes[name].address, wire.Gossip())
        self._count("gossip_rounds")

    def _recently_dead(self) -> list[str]:
        horizon = self.config.gossip_to_dead
        out = []
        for name in self._dead_names():
            node = self._nodes[name]
            if node.state == "dead" and node.since + horizon > self._now:
                out.append(name)
        return out

    # -- housekeeping -------------------------------------------------------------

    def _housekeeping(self, now: float) -> None:
        gc_before = now - self.config.tombstone_gc_after
        while self._tombstones and self._tombstones[0][0] <= gc_before:
            _, name, generation, key, version = self._tombstones.popleft()
            node = self._nodes.get(name)
            if node is None or node.generation != generation:
                continue
            entry = node.kv.get(key)
            if entry is None or entry.value is not None or entry.version != version:
                continue
            if version > node.watermark:
                continue  # learned out of order: keep until the gap is filled
            del node.kv[key]
            node.gc_version = max(node.gc_version, version)
        reap_before = now - self.config.reap_after
        while self._corpses and self._corpses[0][0] <= reap_before:
            since, name, generation = self._corpses.popleft()
            node = self._nodes.get(name)
            if (
                node is None
                or node.generation != generation
                or node.state not in ("dead", "left")
                or node.since != since
            ):
                continue
            del self._nodes[name]
            self._reaped[name] = (node.generation, node.incarnation, now + self.config.reap_after)
            self._membership_changed()
            self._broadcasts.discard(("m", name))
            self._count("reaped")
        for name, (_, _, until) in list(self._reaped.items()):
            if until <= now:
                del self._reaped[name]

    # -- output -------------------------------------------------------------------

    def _emit(self, address: Address, message: wire.Message, *, piggyback: bool = True) -> None:
        me = self._me
        sender = wire.Sender(me.name, me.generation, me.incarnation, me.address)
        head, count, has_updates = wire.encode_head(sender, message)
        if has_updates:
            _, _, own = wire.head_fields(message)
            packed = [wire.pack_update(u) for u in own or ()]
            if piggyback:
                room = self._budget - len(head) - 4 - sum(len(p) for p in packed)
                packed += take_shared(
                    self._broadcasts, self._key_broadcasts, room, self._retransmit_limit()
                )
            plain = wire.assemble(head, count, packed)
        else:
            plain = wire.assemble(head, count, None)
        if len(plain) > self._budget:  # our own sizing bug: fail loudly
            raise AssertionError(f"gossip packet of {len(plain)} bytes over {self._budget}")
        data = self.keyring.seal(plain, self._aad)
        self._count("packets_sent")
        self._count("bytes_sent", len(data))
        self._out.append(Outgoing(address, data))

    def _take_out(self) -> list[Outgoing]:
        out, self._out = self._out, []
        return out

    def _event(self, kind: EventKind, node: _Node) -> None:
        self._events.append(MemberEvent(kind, node.member()))

    def _count(self, name: str, amount: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + amount

    # -- cached views ---------------------------------------------------------------

    def _membership_changed(self) -> None:
        self._names = self._peers = self._dead = None

    def _peer_names(self) -> list[str]:
        if self._peers is None:
            self._peers = [
                n
                for n, node in self._nodes.items()
                if node is not self._me and node.state in ("alive", "suspect")
            ]
        return self._peers

    def _dead_names(self) -> list[str]:
        if self._dead is None:
            self._dead = [n for n, node in self._nodes.items() if node.state == "dead"]
        return self._dead

    def counters_snapshot(self) -> Mapping[str, int]:
        out = dict(self.counters)
        out["members_alive"] = sum(1 for n in self._nodes.values() if n.state == "alive")
        out["members_suspect"] = sum(1 for n in self._nodes.values() if n.state == "suspect")
        out["members_dead"] = sum(1 for n in self._nodes.values() if n.state == "dead")
        out["awareness"] = self._awareness
        out["broadcast_queue"] = self._pending()
        return out
