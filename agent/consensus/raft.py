"""The one bridge between trio and pysyncobj.

pysyncobj runs Raft on its own tick thread; nothing in trio blocks on it:

* A write is ``await node.propose(command, timeout)``: the command goes into
  pysyncobj's queue with a callback; the callback (on the tick thread) wakes the
  waiting trio task through the trio token's ``run_sync_soon``. It returns once the
  command is committed *and applied* here, raises ``NotLeaderError`` (with the
  leader's Raft address, so the agent can forward the write to the leader's API)
  or ``ConsensusError`` (timeout, no leader). Writes in flight are bounded.
* Every command carries a ``request_id`` and the state machine remembers results, so
  a retry after an unknown outcome (pysyncobj reports ``LEADER_CHANGED`` and friends
  for writes that were in fact applied, and some callbacks never fire) applies once.
* Leader changes, role changes and applied commands arrive as ``RaftEvent`` s on
  ``subscribe()`` channels.
* ``serve()`` builds the ``SyncObj`` on the calling thread, which must be the main
  thread (pysyncobj's tick thread exits when the thread that built it exits), watches
  that the tick thread stays alive, and runs the autopilot.

Voters and replicas: ``bootstrap=True`` starts a one-voter group; any other node
starts as a read-only replica (``SyncObj(None, voters)``) that receives every entry.
The leader's autopilot adds replicas as voters, one membership change at a time,
until ``target_voters``; a replica that sees its own address in the voter set
rebuilds itself as a voter. A voter that is gone (not in ``present``: the members not
known dead, so a merely suspect one, e.g. paused for a second, still counts) is
replaced: a replica is added first, and the dead voter is removed only once the new
one has caught up.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import functools
import gzip
import json
import logging
import math
import os
import pickle
import socket
import threading
import weakref
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pysyncobj.encryptor
import pysyncobj.syncobj
import pysyncobj.utility
import trio
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated
from pysyncobj.journal import FileJournal, MemoryJournal
from pysyncobj.monotonic import monotonic as monotonicTime
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection
from pysyncobj.transport import TCPTransport
from pysyncobj.utility import TcpUtility, UtilityException

from agent.consensus.state import Command, DesiredState, MarkTerm, to_wire
from agent.errors import ConsensusError, SecretError

logger = logging.getLogger("hypha.consensus")

# A voter just promoted from replica starts with an empty log: until it has replayed
# as far as it was, it waits this long without a leader before calling an election
# (at most QUIET_LIMIT seconds).
QUIET_ELECTION_TIMEOUT = (6.0, 9.0)
QUIET_LIMIT = 60.0


def _stretchable(name: str, quiet_value: float) -> property:
    """A ``_Conf`` field that reads ``quiet_value`` while the config is quiet (and not
    being validated: pysyncobj checks the normal values once, at construction)."""

    def get(conf: _Conf) -> float:
        if conf.quiet and not conf._validating:
            return quiet_value
        return float(conf.__dict__[name])

    def set_(conf: _Conf, value: float) -> None:
        conf.__dict__[name] = value

    return property(get, set_)


class _Conf(SyncObjConf):  # type: ignore[misc]
    """pysyncobj's config with election timeouts that can be stretched for a while.

    A promoted voter with an empty log cannot win an election, but until the leader's
    first append reaches it, each of its election timeouts started one with a higher
    term, and every higher term deposed the leader: the chaos soak saw 16 terms in two
    seconds after a promotion. pysyncobj has no pre-vote; ``quiet`` stood in for one
    while the new voter catches up, and stays as a second guard beside the bridge's own
    pre-vote (decision 046). pysyncobj reads these fields at each use."""

    def __init__(self, **kwargs: Any) -> None:
        self.quiet = False
        self._validating = False
        super().__init__(**kwargs)

    raftMinTimeout = _stretchable("raftMinTimeout", QUIET_ELECTION_TIMEOUT[0])
    raftMaxTimeout = _stretchable("raftMaxTimeout", QUIET_ELECTION_TIMEOUT[1])

    def validate(self) -> None:
        self._validating = True
        try:
            super().validate()
        finally:
            self._validating = False


MIN_PASSWORD_BYTES = 16
# A voter absent from the voter set for this long rejoins as a replica (see
# RaftNode._check_voter).
REMOVED_CONFIRM_AFTER = 2.0
# A voter missing from a follower's node list is added back after this long (at once if
# it is the leader; see RaftNode._keep_voters_listed).
MISSING_CONFIRM_AFTER = 1.0
META_FILE = "raft-meta.json"


class NotLeaderError(ConsensusError):
    """This node is not the leader; ``leader`` is the leader's Raft address, if known."""

    def __init__(self, leader: str | None) -> None:
        where = f"the leader is {leader}" if leader else "no leader is known yet"
        super().__init__(f"this node is not the Raft leader; {where}")
        self.leader = leader


@dataclass(frozen=True, slots=True)
class RaftTimings:
    """pysyncobj's timers. ``lan()`` is the default; ``local()`` is for tests on one host.

    * ``append_entries_period``: heartbeat period of the leader (a write is sent at
      once, whatever the period). Each heartbeat costs the leader two messages per
      follower: most of an idle agent's CPU (docs/decisions/054). pysyncobj needs it
      below a third of ``election_timeout_min``.
    * ``election_timeout_min/max``: a follower that hears no leader for a random time in
      this range starts an election (after a pre-vote, decision 046). Lower re-elects
      faster; too low and GIL-starved followers call pre-votes for nothing.
    * ``leader_fallback_timeout``: a leader that has not heard from a majority for this
      long steps down (pysyncobj's default, 30 s, lets an isolated leader believe in
      itself far too long).
    * ``connection_timeout``: a connection with no data for this long is dead.
    * ``connection_retry_time``: pause between dials to a peer (a restarted node waits
      up to this long to be redialled).
    * ``tick_period``: the tick thread's poll timeout while one of its timers is
      overdue (e.g. a follower connected to nobody: each tick retries).
    * ``idle_tick_period``: the longest the tick thread sleeps when nothing is due
      sooner (docs/decisions/054): it wakes for messages, for the leader's next
      heartbeat and a voter's election deadline; this bounds how late it retries a
      lost connection or a bind, and flushes the journal's metadata.
    """

    append_entries_period: float = 0.15
    election_timeout_min: float = 0.5
    election_timeout_max: float = 1.0
    leader_fallback_timeout: float = 1.5
    connection_timeout: float = 2.0
    connection_retry_time: float = 0.5
    tick_period: float = 0.05
    idle_tick_period: float = 0.25

    @classmethod
    def lan(cls) -> RaftTimings:
        return cls()

    @classmethod
    def local(cls) -> RaftTimings:
        """Same as ``lan``: on a busy 2-core host, shorter election timers only add
        spurious elections."""
        return cls()

    def __post_init__(self) -> None:
        if not 0 < self.append_entries_period * 3 < self.election_timeout_min:
            raise ValueError(
                "append_entries_period must be above 0 and below a third of "
                "election_timeout_min (pysyncobj refuses less)"
            )
        if self.election_timeout_max <= self.election_timeout_min:
            raise ValueError("election_timeout_max must exceed election_timeout_min")
        if self.leader_fallback_timeout <= self.election_timeout_max:
            raise ValueError("leader_fallback_timeout must exceed election_timeout_max")
        if not 0 < self.tick_period <= self.idle_tick_period:
            raise ValueError("idle_tick_period must be at least tick_period (above 0)")


class EventKind(enum.Enum):
    LEADER_CHANGED = "leader_changed"
    ROLE_CHANGED = "role_changed"
    APPLIED = "applied"
    MEMBERSHIP_CHANGED = "membership_changed"


@dataclass(frozen=True, slots=True)
class RaftEvent:
    """Something the agent may react to. ``data`` depends on ``kind``:

    * ``LEADER_CHANGED``: ``leader`` (address or None), ``term``, ``is_self``.
    * ``ROLE_CHANGED``: ``role`` ("voter" or "replica").
    * ``APPLIED``: ``op``, ``request_id``, ``ok``, ``result`` (the state's answer).
    * ``MEMBERSHIP_CHANGED``: ``change`` ("add" or "remove"), ``address``, ``voters``.
    """

    kind: EventKind
    data: Mapping[str, Any] = field(default_factory=dict)


Membership = Callable[[], Collection[str]]
"""Returns the Raft addresses of the members currently alive (gossip's view)."""


class _Replicated(SyncObjConsumer):  # type: ignore[misc]
    """What pysyncobj replicates: one ``DesiredState``, nothing else.

    Attributes set before ``SyncObjConsumer.__init__`` are not serialized; the state
    set after it is. So the hook (a callable, not picklable) lives outside the dump and
    the dump stays pure data (anything unpicklable here breaks log compaction and then
    the whole cluster)."""

    def __init__(self, on_applied: Callable[[Mapping[str, Any], dict[str, Any]], None]) -> None:
        self._on_applied = on_applied
        super().__init__()
        self.state = DesiredState()

    @replicated  # type: ignore[untyped-decorator]
    def apply(self, wire: Mapping[str, Any]) -> dict[str, Any]:
        result = self.state.apply(wire)
        self._on_applied(wire, result)
        return result


#: Linux: ``bind(addr, 0)`` without reserving a port; ``connect()`` picks it.
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


class _BoundTcpConnection(TcpConnection):  # type: ignore[misc]
    """A pysyncobj connection whose outgoing socket leaves from our own address
    (docs/decisions/002: chaos rules on loopback match on source addresses).

    ``TcpConnection.connect`` calls ``setSockoptKeepalive`` on the new socket just before
    ``connect()``; that is the hook. The address is bound with IP_BIND_ADDRESS_NO_PORT:
    a plain ``bind(addr, 0)`` takes its port from the pool ``bind(addr, 0)`` also
    serves to whoever picks a free port for a Raft listener (``hypha up``, the test
    clusters), and a replica's outgoing socket once held the very port it had to
    listen on when it was promoted. ``connect()`` picks from the other half of the
    ephemeral range."""

    source_host: str | None = None

    def setSockoptKeepalive(self) -> None:  # noqa: N802 (pysyncobj's name)
        super().setSockoptKeepalive()
        sock = getattr(self, "_TcpConnection__socket", None)
        if self.source_host and sock is not None and self.state == CONNECTION_STATE.DISCONNECTED:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
            with contextlib.suppress(OSError):
                sock.bind((self.source_host, 0))


class _SafeJournal(FileJournal):  # type: ignore[misc]
    """pysyncobj's file journal with a crash-safe compaction.

    pysyncobj trims the journal after a snapshot by clearing the file and appending the
    kept entries again, in place: a SIGKILL in between leaves a journal missing the
    newest entries. Here the kept entries go to a new file that atomically replaces
    the old one."""

    def __init__(self, path: str) -> None:
        self._path = path
        super().__init__(path)

    def deleteEntriesTo(self, entryTo: int) -> None:  # noqa: N802, N803 (pysyncobj's names)
        keep = list(self._FileJournal__journal[entryTo:])
        _rewrite_journal(self._path, keep)
        # Reopen on the new file, keeping the commit index not yet saved to the meta file.
        unsaved = {k: self.__dict__[k] for k in ("_FileJournal__meta", "_FileJournal__metaSaved")}
        self._FileJournal__journalFile._destroy()
        FileJournal.__init__(self, self._path)
        self.__dict__.update(unsaved)


def _rewrite_journal(path: str, entries: Sequence[tuple[Any, int, int]]) -> None:
    """Write ``entries`` as a journal at ``path``, atomically (new file, then rename)."""
    tmp = path + ".compact"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fresh = FileJournal(tmp)
    for entry in entries:
        fresh.add(*entry)
    fresh._destroy()
    os.replace(tmp, path)


def _create_journal(journal_file: str | None = None) -> Any:
    if journal_file is None:
        return MemoryJournal()
    return _SafeJournal(journal_file)


# The bridge is the only user of pysyncobj in the process; every SyncObj gets the safe
# journal (pysyncobj looks createJournal up in its own module when it builds one).
pysyncobj.syncobj.createJournal = _create_journal

# pysyncobj derives the cipher key from the password with PBKDF2 (100,000 rounds,
# about 20 ms of CPU) for every SyncObj and every TcpUtility: a voter asking who the
# voters are every few seconds spent 0.6% of a core on it. Derive it once per password
# (the Fernet object is stateless, so the tick thread and utility threads may share it).
_derive_encryptor = functools.lru_cache(maxsize=8)(pysyncobj.encryptor.getEncryptor)
pysyncobj.syncobj.getEncryptor = _derive_encryptor
pysyncobj.utility.getEncryptor = _derive_encryptor

_FOLLOWER, _LEADER = 0, 2  # pysyncobj's _RAFT_STATE
# Our pre-vote messages, in pysyncobj's message stream (decision 046).
_PRE_VOTE, _PRE_VOTE_REPLY = "hypha_pre_vote", "hypha_pre_vote_reply"
_MEMBERSHIP = bytes([2])  # pysyncobj's _COMMAND_TYPE.MEMBERSHIP, an entry's first byte


class _BridgeSyncObj(SyncObj):  # type: ignore[misc]
    """pysyncobj's ``SyncObj`` with a pre-vote, minus a commit that undoes a later
    membership change.

    **Pre-vote** (Raft thesis 9.6; decision 046). pysyncobj calls an election as soon
    as a voter's election timer runs out, with a higher term, and any higher term it
    shows the others deposes their leader. A voter cut off from the leader (a
    partition, a long pause, a GIL-starved tick thread) kept raising its term, and
    when it came back its term unseated a healthy leader. Here a voter whose timer
    runs out first asks the others whether they would vote for it at the next term;
    a voter says yes only if it has not heard from a leader lately (within the
    shortest election timeout less one heartbeat), is not the leader itself, and the
    candidate's log is at least as up to date as its own. Only with yeses from a
    majority (itself included) does the real election, and its new term, happen;
    otherwise it asks again after another random election timeout. Nothing is
    written: a pre-vote changes no term and no vote. A voter told of a higher term in
    a refusal takes that term, as it would from a vote.

    **Membership replay.**
    pysyncobj applies a membership entry to the node list when it is appended, and
    again when it is committed (for entries loaded from the journal at start-up). The
    second time undoes any later change of the same node appended meanwhile: a
    replica rebuilt while the leader was adding it received the log in one batch,
    "remove me" (old) up to "add me" (new, not yet committed), listed itself, then
    committed the old "remove me" and dropped itself again. It never promoted, and
    the add could not commit without it: no quorum, for good (decision 045). The node
    list is the log's membership changes applied in order, so a committed change is
    applied only if no later entry in the log changes the same node; that later one
    stands (applied when appended, or when committed after a restart), and a rolled
    back one is reversed by pysyncobj itself."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Set before pysyncobj's constructor, which may start the tick thread.
        self._heard_leader_at = -math.inf  # pysyncobj's clock
        self._pre_vote_term = 0  # the term the pre-vote under way asks for (0: none)
        self._pre_votes: set[str] = set()  # who said yes to it, us included
        self._pre_vote_again_at = 0.0
        super().__init__(*args, **kwargs)

    # ------------------------------------------------------------------ pre-vote

    def _SyncObj__connectedToAnyone(self) -> bool:  # noqa: N802 (pysyncobj's name)
        """pysyncobj asks this, and only this, when a voter's election timer has run
        out: False keeps it from calling the election. So it is where the pre-vote
        runs: True once a majority said it would vote for us at the next term."""
        if not super()._SyncObj__connectedToAnyone():
            return False
        if not self._SyncObj__otherNodes or self._SyncObj__transferInProgress:
            return True  # alone, or the leader handed over: no one to disturb
        term = self._SyncObj__raftCurrentTerm + 1
        if self._pre_vote_term == term and self._pre_vote_carried():
            self._pre_vote_term = 0
            return True
        now = monotonicTime()
        if self._pre_vote_term != term or now >= self._pre_vote_again_at:
            self._pre_vote_term = term
            self._pre_votes = {self._SyncObj__selfNode.id}
            self._pre_vote_again_at = now + self._SyncObj__generateRaftTimeout()
            message = {
                "type": _PRE_VOTE,
                "term": term,
                "last_log_index": self._SyncObj__getCurrentLogIndex(),
                "last_log_term": self._SyncObj__getCurrentLogTerm(),
            }
            for node in self._SyncObj__otherNodes:
                self._SyncObj__transport.send(node, message)
        return False

    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:  # noqa: N802
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == _PRE_VOTE:
            self._answer_pre_vote(node, message)
            return
        if kind == _PRE_VOTE_REPLY:
            self._count_pre_vote(node, message)
            return
        if kind == "append_entries" and message["term"] >= self._SyncObj__raftCurrentTerm:
            self._heard_leader_at = monotonicTime()
            self._pre_vote_term = 0  # a leader is back: a won pre-vote no longer counts
        super()._SyncObj__onMessageReceived(node, message)

    def _answer_pre_vote(self, node: Any, message: Mapping[str, Any]) -> None:
        if self._SyncObj__selfNode is None:
            return  # a replica has no vote
        conf = self._SyncObj__conf
        # The unstretched timeout: a voter quiet after its promotion (6-9 s) must
        # not refuse for that long, or a leader lost just then stays unreplaced.
        shortest = conf.__dict__.get("raftMinTimeout", conf.raftMinTimeout)
        lease = shortest - conf.appendEntriesPeriod
        current = self._SyncObj__raftCurrentTerm
        candidate_log = (message["last_log_term"], message["last_log_index"])
        own_log = (self._SyncObj__getCurrentLogTerm(), self._SyncObj__getCurrentLogIndex())
        granted = (
            message["term"] > current
            and self._SyncObj__raftState != _LEADER
            and monotonicTime() - self._heard_leader_at >= lease
            and candidate_log >= own_log
        )
        reply = {
            "type": _PRE_VOTE_REPLY,
            "term": message["term"],
            "granted": granted,
            "current_term": current,
        }
        self._SyncObj__transport.send(node, reply)

    def _count_pre_vote(self, node: Any, message: Mapping[str, Any]) -> None:
        current = self._SyncObj__raftCurrentTerm
        if message["term"] != self._pre_vote_term or message["term"] != current + 1:
            return  # an answer to an older round
        if message["granted"]:
            self._pre_votes.add(node.id)
        elif message.get("current_term", 0) > current:
            # Behind the others' term: take it (as a vote would), ask again at the next.
            self._SyncObj__setCurrentTerm(message["current_term"], None)
            if self._SyncObj__raftState != _FOLLOWER:
                self._SyncObj__setState(_FOLLOWER)
            self._pre_vote_term = 0

    def _pre_vote_carried(self) -> bool:
        """A majority of the voters, us included, said yes."""
        return len(self._pre_votes) * 2 > len(self._SyncObj__otherNodes) + 1

    # --------------------------------------------------------- membership replay

    def _SyncObj__doApplyCommand(self, command: bytes) -> Any:  # noqa: N802 (pysyncobj's name)
        index = self.raftLastApplied + 1
        if command[:1] == _MEMBERSHIP and self._superseded(index, command):
            logger.debug(
                "raft skips committed membership entry %d %s: a later entry changes the node",
                index,
                pickle.loads(command[1:])[:2],
            )
            return None
        return super()._SyncObj__doApplyCommand(command)

    def _superseded(self, index: int, command: bytes) -> bool:
        """True if an entry after ``index`` (which holds ``command``) changes the same node."""
        entries = self._SyncObj__getEntries(index)
        if not entries or entries[0][0] != command:
            return False  # not where we expect it: apply as pysyncobj would
        node_id = pickle.loads(command[1:])[1]
        return any(
            entry[0][:1] == _MEMBERSHIP and pickle.loads(entry[0][1:])[1] == node_id
            for entry in entries[1:]
        )


def _poll_until_due(sync: Any, overdue: float, longest: float) -> None:
    """Make pysyncobj's tick thread sleep until its next timer, not a fixed period.

    Its loop is: tick, then poll the sockets for ``autoTickPeriod``. A fixed 0.05 s
    poll woke an idle follower about 40 times a second (20 timeouts and 20
    heartbeats). Here each poll lasts until what the next tick has to do on time:
    the leader's next heartbeat, a voter's election deadline, else ``longest``.
    Messages, proposals and our tick jobs (the pipe notifier) still wake it at once.
    A timer already past (a follower connected to nobody cannot start an election)
    gets the old ``overdue`` cadence. Reads pysyncobj 0.3.x private fields."""
    poller = sync._poller
    poll = poller.poll
    ref = weakref.ref(sync)

    def poll_until_due(timeout: float) -> None:
        owner = ref()
        if owner is not None:
            if owner._SyncObj__raftState == _LEADER:
                due = owner._SyncObj__newAppendEntriesTime
            elif owner._SyncObj__selfNode is not None:
                due = owner._SyncObj__raftElectionDeadline
            else:
                due = math.inf
            wait = due - monotonicTime()  # pysyncobj's clock (CLOCK_MONOTONIC_RAW)
            timeout = overdue if wait <= 0 else min(wait, longest)
        poll(timeout)

    poller.poll = poll_until_due


def repair_journal(journal: str, dump: str) -> bool:
    """Make a journal start where the snapshot ends, if a crash left it longer.

    pysyncobj writes the snapshot, then trims the journal; killed in between, the
    journal still starts before the snapshot, and on the next start pysyncobj, seeing a
    journal that does not begin with the snapshot's last two entries, *clears* it, and
    with it every entry after the snapshot. Trimming it here first keeps them.
    Returns True if the journal was rewritten."""
    if not (os.path.exists(journal) and os.path.exists(dump)):
        return False
    try:
        with open(dump, "rb") as handle, gzip.GzipFile(fileobj=handle) as unzipped:
            data = pickle.load(unzipped)
        last, prev = tuple(data[1]), tuple(data[2])
    except (OSError, EOFError, pickle.UnpicklingError, IndexError, TypeError, ValueError):
        logger.warning("raft snapshot %s unreadable; leaving the journal as it is", dump)
        return False
    reader = FileJournal(journal)
    entries = [tuple(reader[i]) for i in range(len(reader))]
    reader._destroy()
    keys = [(bytes(e[0]), e[1], e[2]) for e in entries]
    want = ((bytes(prev[0]), prev[1], prev[2]), (bytes(last[0]), last[1], last[2]))
    for k in range(1, len(keys) - 1):
        if keys[k] == want[0] and keys[k + 1] == want[1]:
            logger.warning("raft journal %s started before its snapshot; trimmed %d", journal, k)
            _rewrite_journal(journal, entries[k:])
            return True
    return False


def _make_transport(
    source_host: str, on_drop: Callable[[str], None] | None = None
) -> type[TCPTransport]:
    """pysyncobj's TCP transport, sending from ``source_host``; ``on_drop(address)`` is
    called (on the tick thread) when a voter is dropped from the node list."""

    class _BoundTransport(TCPTransport):  # type: ignore[misc]
        def addNode(self, node: Any) -> None:  # noqa: N802
            super().addNode(node)
            conn = self._connections.get(node)
            if conn is not None and type(conn) is TcpConnection:
                conn.__class__ = _BoundTcpConnection
                conn.source_host = source_host

        def dropNode(self, node: Any) -> None:  # noqa: N802
            voter = node in self._nodes
            super().dropNode(node)
            if voter and on_drop is not None:
                on_drop(str(node.address))

        def _onTick(self) -> None:  # noqa: N802
            super()._onTick()
            # pysyncobj checks a connection's timeout only when its socket has an
            # event or something is sent on it. A dial whose SYNs are dropped (a
            # partition) has neither: it waited for the kernel's SYN retries (1, 3, 7,
            # 15, 31 s apart) and reconnected that long after the path was back (chaos
            # soak: 3-8 s after a heal). Give a dial up after connectionTimeout, as a
            # silent connection is; the transport dials again.
            timeout = self._syncObj.conf.connectionTimeout
            now = monotonicTime()
            for conn in list(self._connections.values()):
                if (
                    conn.state == CONNECTION_STATE.CONNECTING
                    and now - conn._TcpConnection__lastReadTime > timeout
                ):
                    conn.disconnect()

    return _BoundTransport


def check_address(address: str, what: str = "raft address") -> tuple[str, int]:
    """``"host:port"`` with a numeric IPv4 host and a port in 1-65535."""
    host, sep, port = address.rpartition(":")
    parts = host.split(".")
    if (
        not sep
        or not port.isdigit()
        or not 0 < int(port) < 65536
        or len(parts) != 4
        or not all(p.isdigit() and int(p) < 256 for p in parts)
    ):
        raise ConsensusError(f"{what} {address!r}: expected IPv4 host:port, e.g. 127.0.0.2:7947")
    return host, int(port)


def discover_voters(join_via: Sequence[str], password: bytes, timeout: float = 3.0) -> list[str]:
    """Ask the members at ``join_via`` (any voter or replica) who the voters are.

    Blocking; call it from a worker thread. Uses pysyncobj's encrypted utility
    channel, so a wrong password gets no answer."""
    errors = []
    for address in join_via:
        check_address(address, "join address")
        try:
            status = TcpUtility(password, timeout).executeCommand(address, ["status"])
        except UtilityException as exc:
            errors.append(f"{address}: {exc}")
            continue
        if not isinstance(status, dict):
            errors.append(f"{address}: unexpected answer")
            continue
        voters = {
            key[len("partner_node_status_server_") :]
            for key in status
            if key.startswith("partner_node_status_server_")
        }
        me = status.get("self")
        if me is not None:
            voters.add(me.address)
        if voters:
            return sorted(voters)
        errors.append(f"{address}: knows no voters")
    raise ConsensusError(
        "cannot join Raft: no member answered ("
        + "; ".join(errors)
        + "); check the addresses and that every agent uses the same cluster secret"
    )


class RaftNode:
    """One agent's Raft membership and its copy of the desired state.

    Build it inside ``trio.run`` on the main thread, then ``await nursery.start(node.serve)``.

    ``self_addr`` is this node's Raft address (``"ip:port"``; it listens there as a
    voter, and sends from that ip in any role). ``data_dir`` holds the journal, the
    snapshot and ``raft-meta.json`` (role and last known voters, so a restart comes
    back in the same role). ``password`` is derived from the cluster secret
    (``agent.secrets.derive_key(secret, "raft-password")``); it is required.

    Exactly one of ``bootstrap=True`` (start a new one-voter cluster) or ``join_via``
    (Raft addresses of existing members) is needed on the first start; on a restart
    both may be omitted (the meta file says who the voters were).
    """

    def __init__(
        self,
        self_addr: str,
        data_dir: Path | str,
        password: bytes | str | None,
        *,
        bootstrap: bool = False,
        join_via: Sequence[str] = (),
        membership: Membership | None = None,
        present: Membership | None = None,
        target_voters: int = 3,
        timings: RaftTimings | None = None,
        max_in_flight: int = 256,
        event_buffer: int = 4096,
        autopilot_interval: float = 0.5,
        log_compaction_entries: int = 5000,
        membership_check_period: float = 3.0,
    ) -> None:
        if password is None or len(password) < MIN_PASSWORD_BYTES:
            raise SecretError(
                "refusing to start Raft without a cluster secret: pysyncobj unpickles what it "
                "receives, so its traffic must be authenticated (run `hypha keygen`)"
            )
        if bootstrap and join_via:
            raise ConsensusError("give either bootstrap=True or join_via addresses, not both")
        if target_voters not in (1, 3, 5, 7):
            raise ConsensusError(f"target_voters must be 1, 3, 5 or 7, got {target_voters}")
        self.self_addr = self_addr
        self._host, _ = check_address(self_addr)
        self.data_dir = Path(data_dir)
        self._password = password.encode() if isinstance(password, str) else bytes(password)
        for address in join_via:
            check_address(address, "join address")
        self._join_via = list(join_via)
        self._bootstrap = bootstrap
        self.membership = membership
        self.present = present
        self.target_voters = target_voters
        self.timings = timings or RaftTimings.lan()
        self._log_compaction_entries = log_compaction_entries
        self._autopilot_interval = autopilot_interval
        self._in_flight = trio.Semaphore(max_in_flight)
        self._event_buffer = event_buffer
        self._subscribers: list[trio.MemorySendChannel[RaftEvent]] = []
        self.dropped_events = 0
        self._token: trio.lowlevel.TrioToken | None = None
        self._sync: Any = None
        self._consumer: _Replicated | None = None
        self._role = "replica"
        self._frozen_state: DesiredState | None = None  # shown while promoting
        self._frozen_state_index = 0
        self._nursery: trio.Nursery | None = None
        self._saved_voters: list[str] = []
        self._removed_since: float | None = None
        self._missing_since: float | None = None  # a voter missing from our node list
        self._unbound_since: float | None = None  # a rebuilt voter not listening yet
        self._unbound_warned = False
        self._check_period = membership_check_period
        self._membership_check_at = 0.0
        self._rebuilding = False
        self._conf: _Conf | None = None
        self._quiet_until = 0.0
        self._tick_jobs: collections.deque[Callable[[], None]] = collections.deque()
        self._status_cache: dict[str, Any] = {}
        self._last_leader: tuple[str | None, int, bool] | None = None
        self._ready_term = 0
        self._pending_change: dict[str, Any] | None = None
        self._closed = False
        self._poke = trio.Event()
        self._tick_seen: tuple[Any, ...] = ()  # leader, term, leading, voters: tick thread
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)

    @staticmethod
    def has_local_state(data_dir: Path | str) -> bool:
        """True if ``data_dir`` holds a node's Raft data: it restarts in its old role and
        needs neither ``bootstrap`` nor ``join_via`` (so an agent restarting with the whole
        cluster need not wait for peers to be reachable first)."""
        return (Path(data_dir) / META_FILE).exists()

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> DesiredState:
        """This node's copy of the desired state (read-only by convention).

        After a rebuild it is the old copy until the new one has replayed as far; the
        switch happens here, at the first read after that, so a read never sees an
        older state than ``last_applied`` promises (a write acknowledged through this
        agent was once read back missing in the 0.1 s before the watch loop noticed)."""
        self._release_frozen()
        if self._frozen_state is not None:
            return self._frozen_state
        if self._consumer is None:
            return DesiredState()
        return self._consumer.state

    @property
    def role(self) -> str:
        """``"voter"`` or ``"replica"``."""
        return self._role

    @property
    def is_leader(self) -> bool:
        return self._sync is not None and bool(self._sync._isLeader())

    @property
    def is_leader_ready(self) -> bool:
        """Leader, and its term marker is applied: safe to act as leader (place, credit)."""
        return self.is_leader and self._ready_term == self.term and self.state.term == self.term

    @property
    def leader(self) -> str | None:
        if self._sync is None:
            return None
        node = self._sync._getLeader()
        return None if node is None else str(node.address)

    @property
    def term(self) -> int:
        return 0 if self._sync is None else int(self._sync.raftCurrentTerm)

    @property
    def commit_index(self) -> int:
        return 0 if self._sync is None else int(self._sync.raftCommitIndex)

    @property
    def last_applied(self) -> int:
        """The index of the state ``state`` answers from (the old copy's, after a
        rebuild, until the new one has replayed as far)."""
        raw = self._raw_last_applied()
        if self._frozen_state is not None and raw < self._frozen_state_index:
            return self._frozen_state_index
        return raw

    def _release_frozen(self) -> None:
        """Drop the pre-rebuild copy of the state once the new one has replayed as far."""
        if (
            self._frozen_state is not None
            and not self._rebuilding
            and self._raw_last_applied() >= self._frozen_state_index
        ):
            self._frozen_state = None

    def _raw_last_applied(self) -> int:
        return 0 if self._sync is None else int(self._sync.raftLastApplied)

    def voters(self) -> list[str]:
        """The voter set as this node sees it (applied membership changes)."""
        if self._sync is None:
            return []
        found = {n.address for n in self._sync.otherNodes}
        if self._role == "voter":
            found.add(self.self_addr)
        return sorted(found)

    def replicas(self) -> list[str]:
        """Members the membership view lists that are not voters (they run as replicas)."""
        if self.membership is None:
            return []
        voters = set(self.voters())
        return sorted(a for a in self.membership() if a not in voters)

    def status(self) -> dict[str, Any]:
        """Leader, term, commit index, voters and replicas, for ``hypha status``."""
        cached = dict(self._status_cache)
        state = "stopped"
        if self._sync is not None:
            state = (
                "leader" if self.is_leader else ("follower" if self._role == "voter" else "replica")
            )
        cached.update(
            {
                "self": self.self_addr,
                "role": self._role,
                "state": state,
                "leader": self.leader,
                "term": self.term,
                "commit_index": self.commit_index,
                "last_applied": self.last_applied,
                "voters": self.voters(),
                "replicas": self.replicas(),
                "target_voters": self.target_voters,
                "leader_ready": self.is_leader_ready,
                "tick_thread_alive": bool(
                    self._sync is not None and self._sync.tick_thread_alive()
                ),
                "revision": self.state.revision,
                "pending_change": dict(self._pending_change) if self._pending_change else None,
                "dropped_events": self.dropped_events,
            }
        )
        return cached

    def subscribe(self) -> trio.MemoryReceiveChannel[RaftEvent]:
        """A new channel of ``RaftEvent`` s. A subscriber that falls ``event_buffer``
        events behind loses the newest ones (counted in ``dropped_events``)."""
        send, receive = trio.open_memory_channel[RaftEvent](self._event_buffer)
        self._subscribers.append(send)
        return receive

    def _emit(self, kind: EventKind, **data: Any) -> None:
        event = RaftEvent(kind, data)
        for channel in list(self._subscribers):
            try:
                channel.send_nowait(event)
            except trio.WouldBlock:
                self.dropped_events += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.remove(channel)

    # --------------------------------------------------------- tick-thread side

    def _from_tick_thread(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the trio thread soon (called on pysyncobj's tick thread)."""
        token = self._token
        if token is None:
            return
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(fn)

    def _on_applied(self, wire: Mapping[str, Any], result: dict[str, Any]) -> None:
        # Tick thread. Keep it cheap: hand the event over to trio.
        data = {
            "op": wire.get("op"),
            "request_id": wire.get("request_id"),
            "ok": bool(result.get("ok")),
            "result": result,
        }
        self._from_tick_thread(lambda: self._emit(EventKind.APPLIED, **data))

    def _on_voter_dropped(self, address: str) -> None:
        # Tick thread: a membership change (maybe an old one, replayed) dropped a voter
        # from our node list; check the voter set now rather than in a few seconds.
        self._membership_check_at = 0.0

    def _on_state_changed(self, old: int, new: int) -> None:
        # Not ``self._poke.set``: bound here on the tick thread, it could be the event
        # the watch loop has already replaced, and the wake-up would be lost.
        self._from_tick_thread(self._poke_watch)

    def _on_tick(self) -> None:
        # Tick thread: run the jobs the trio side queued (status reads, membership
        # changes), so pysyncobj's internals are only touched from its own thread.
        while self._tick_jobs:
            job = self._tick_jobs.popleft()
            try:
                job()
            except Exception:  # a bug of ours; keep the tick thread alive, say so
                logger.exception("raft tick job failed")
        # Wake the watch loop when the leader, term, role or voter count moved: it
        # need not poll for a follower's new leader.
        sync = self._sync
        if sync is not None:
            seen = (sync._getLeader(), sync.raftCurrentTerm, sync._isLeader(), len(sync.otherNodes))
            if seen != self._tick_seen:
                if self._role == "replica" and seen[3:] != self._tick_seen[3:]:
                    # Our node list moved (the log added us, maybe): ask the voters
                    # now, not at the next periodic check up to 3 s away.
                    self._membership_check_at = 0.0
                self._tick_seen = seen
                self._from_tick_thread(self._poke_watch)

    def _poke_watch(self) -> None:
        self._poke.set()

    def _queue_tick_job(self, job: Callable[[], None]) -> None:
        """Run ``job`` on the tick thread, waking it now (it may sleep for
        ``idle_tick_period``)."""
        self._tick_jobs.append(job)
        notifier = getattr(self._sync, "_SyncObj__pipeNotifier", None)
        if notifier is not None:
            with contextlib.suppress(OSError):  # a full pipe already wakes it
                notifier.notify()

    async def _on_tick_thread(self, fn: Callable[[], Any], timeout: float = 2.0) -> Any:
        """Run ``fn`` on pysyncobj's tick thread and return its result."""
        done = trio.Event()
        box: list[Any] = []

        def job() -> None:
            try:
                box.append(("ok", fn()))
            except Exception as exc:
                box.append(("err", exc))
            self._from_tick_thread(done.set)

        self._queue_tick_job(job)
        with trio.move_on_after(timeout):
            await done.wait()
        if not box:
            raise ConsensusError(f"raft tick thread did not answer within {timeout:.1f}s")
        kind, value = box[0]
        if kind == "err":
            raise value
        return value

    # ------------------------------------------------------------- lifecycle

    def _meta_path(self) -> Path:
        return self.data_dir / META_FILE

    def _load_meta(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self._meta_path().read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ConsensusError(f"{self._meta_path()}: unreadable ({exc})") from exc

    def _save_meta(self, role: str, voters: Sequence[str]) -> None:
        tmp = self._meta_path().with_suffix(".tmp")
        tmp.write_text(json.dumps({"role": role, "self": self.self_addr, "voters": list(voters)}))
        os.replace(tmp, self._meta_path())

    def _files(self, role: str) -> tuple[str, str]:
        prefix = "raft" if role == "voter" else "replica"
        return str(self.data_dir / f"{prefix}.journal"), str(self.data_dir / f"{prefix}.dump")

    def _build(
        self, role: str, voters: Sequence[str], quiet: bool = False, retry_bind: bool = False
    ) -> None:
        """Build the SyncObj on this (the main) thread.

        At start-up a port we cannot listen on is an error the user must see at once;
        after a promotion (``retry_bind``) pysyncobj keeps trying every second, since
        the port may be held for a moment (a socket of ours still closing)."""
        if threading.current_thread() is not threading.main_thread():
            raise ConsensusError(
                "RaftNode must run on the main thread "
                "(pysyncobj's tick thread dies with the thread that built it)"
            )
        journal, dump = self._files(role)
        repair_journal(journal, dump)
        t = self.timings
        conf = _Conf(
            password=self._password,
            journalFile=journal,
            fullDumpFile=dump,
            dynamicMembershipChange=True,
            appendEntriesUseBatch=False,
            appendEntriesPeriod=t.append_entries_period,
            raftMinTimeout=t.election_timeout_min,
            raftMaxTimeout=t.election_timeout_max,
            leaderFallbackTimeout=t.leader_fallback_timeout,
            connectionTimeout=t.connection_timeout,
            connectionRetryTime=t.connection_retry_time,
            autoTickPeriod=t.tick_period,
            bindAddress=self.self_addr if role == "voter" else None,
            maxBindRetries=0 if retry_bind else 1,
            logCompactionMinEntries=self._log_compaction_entries,
            logCompactionMinTime=300,
            commandsWaitLeader=True,
            onStateChanged=self._on_state_changed,
        )
        conf.quiet = quiet and role == "voter"
        self._conf = conf
        self._quiet_until = trio.current_time() + QUIET_LIMIT
        consumer = _Replicated(self._on_applied)
        others = [v for v in voters if v != self.self_addr]
        self_node = self.self_addr if role == "voter" else None
        sync = _BridgeSyncObj(
            self_node,
            others,
            conf=conf,
            consumers=[consumer],
            transportClass=_make_transport(self._host, self._on_voter_dropped),
        )
        if not sync.tick_thread_alive():
            raise ConsensusError(
                f"raft could not listen on {self.self_addr} (address in use or not local?)"
            )
        _poll_until_due(sync, t.tick_period, t.idle_tick_period)
        sync.addOnTickCallback(self._on_tick)
        self._sync, self._consumer, self._role = sync, consumer, role
        self._saved_voters = sorted(voters if role == "replica" else {*voters, self.self_addr})
        self._save_meta(role, self._saved_voters)
        logger.info(
            "raft started role=%s self=%s voters=%s", role, self.self_addr, ",".join(voters)
        )

    def _destroy(self) -> None:
        if self._sync is not None:
            self._sync.destroy()

    async def _initial_role(self) -> tuple[str, list[str]]:
        meta = self._load_meta()
        if meta is not None:
            if meta.get("self") != self.self_addr:
                raise ConsensusError(
                    f"{self._meta_path()} belongs to {meta.get('self')}, not {self.self_addr}"
                )
            role, voters = str(meta["role"]), [str(v) for v in meta["voters"]]
            if role == "replica" and self._join_via:
                # The voters may have changed while we were away; ask, or use what we knew.
                with contextlib.suppress(ConsensusError):
                    voters = await trio.to_thread.run_sync(
                        discover_voters, self._join_via, self._password
                    )
            return role, voters
        if self._bootstrap:
            return "voter", [self.self_addr]
        if self._join_via:
            voters = await trio.to_thread.run_sync(discover_voters, self._join_via, self._password)
            return "replica", voters
        raise ConsensusError(
            f"no Raft data in {self.data_dir}: give bootstrap=True for a new cluster "
            "or join_via addresses of existing members"
        )

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start Raft (on this, the main, thread), report started, run until cancelled."""
        self._token = trio.lowlevel.current_trio_token()
        role, voters = await self._initial_role()
        try:
            self._build(role, voters)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._autopilot_loop)
                nursery.start_soon(self._membership_loop)
                task_status.started()
                await self._watch()
        finally:
            self._closed = True
            sync = self._sync
            self._destroy()
            with trio.CancelScope(shield=True), trio.move_on_after(3):
                while sync is not None and sync.tick_thread_alive():
                    await trio.sleep(0.01)
            for channel in self._subscribers:
                channel.close()

    async def _watch(self) -> None:
        """Leader/role changes, the tick thread's health, promotion, status cache."""
        next_status = trio.current_time()
        while True:
            # The tick thread pokes us when the leader, term, role or voters move
            # (_on_tick), so a steady node only looks once a second (the tick thread's
            # health, the status cache); while something is settling (no leader, a
            # leader not ready yet, a promotion catching up, a membership change) it
            # also polls every 0.1 s as it always did.
            with trio.move_on_after(0.1 if self._settling() else 1.0):
                await self._poke.wait()
            self._poke = trio.Event()
            if self._rebuilding:
                continue
            if not self._sync.tick_thread_alive():
                raise ConsensusError("raft tick thread died; the agent must restart")
            self._check_leader()
            self._release_frozen()
            if self._conf is not None and self._conf.quiet:
                caught_up = self._frozen_state is None and self.leader is not None
                if caught_up or trio.current_time() > self._quiet_until:
                    self._conf.quiet = False
                    logger.info(
                        "raft voter %s %s; normal election timeouts",
                        self.self_addr,
                        "caught up" if caught_up else f"still behind after {QUIET_LIMIT:.0f}s",
                    )
            voters = self.voters()
            if voters != self._saved_voters and self._sync is not None:
                self._saved_voters = voters
                self._save_meta(self._role, voters)
            now = trio.current_time()
            if now >= next_status:
                # The autopilot reads it while a new voter catches up; else for status.
                next_status = now + (0.2 if self._pending_change else 1.0)
                with contextlib.suppress(ConsensusError):
                    self._status_cache = await self._on_tick_thread(self._raw_status, 1.0)

    def _settling(self) -> bool:
        """Something the watch loop should look at often is under way."""
        return (
            self._rebuilding
            or self.leader is None
            or (self.is_leader and not self.is_leader_ready)
            or self._frozen_state is not None
            or (self._conf is not None and self._conf.quiet)
            or self._pending_change is not None
        )

    async def _autopilot_loop(self) -> None:
        while True:
            await trio.sleep(self._autopilot_interval)
            if self.is_leader_ready:
                await self._autopilot()
            elif self._pending_change is not None:
                # A change belongs to the term that started it. Kept, it made a leader
                # re-elected later wait (up to 30 s from the old start) for a voter
                # that had long caught up, and log "did not catch up" (chaos soak).
                logger.info("raft autopilot drops its pending change: no longer leader")
                self._pending_change = None

    def _check_leader(self) -> None:
        current = (self.leader, self.term, self.is_leader)
        if current == self._last_leader:
            return
        before = self._last_leader
        self._last_leader = current
        if before is None or before[0] != current[0] or before[2] != current[2]:
            self._emit(
                EventKind.LEADER_CHANGED, leader=current[0], term=current[1], is_self=current[2]
            )
        if current[2] and self._ready_term != current[1] and self._nursery is not None:
            self._ready_term = -1
            self._nursery.start_soon(self._mark_term, current[1])

    async def _mark_term(self, term: int) -> None:
        """A new leader writes its term before acting (stale terms are then refused)."""
        command = MarkTerm(term, self.self_addr, request_id=f"term-{term}")
        for _ in range(20):
            if not self.is_leader or self.term != term or self._closed:
                return
            try:
                result = await self.propose(command, timeout=2.0)
            except ConsensusError:
                continue
            if (result.get("ok") or self.state.term >= term) and self.term == term:
                self._ready_term = term
                self._poke.set()
            return

    async def _membership_loop(self) -> None:
        # Its own task: asking dead addresses may block for seconds, and the watch loop
        # must go on noticing leader changes meanwhile.
        while True:
            await trio.sleep(0.25)
            if self._sync is None or self._rebuilding:
                continue
            self._check_listening()
            if self._role == "replica":
                await self._check_replica()
            else:
                await self._check_voter()

    def _ask_order(self, known: Sequence[str]) -> list[str]:
        """Whom to ask for the voter set: the leader, then ``known``, then any member
        gossip sees alive (all we know may be gone)."""
        alive = sorted(self.membership()) if self.membership is not None else []
        ask = [a for a in (self.leader, *sorted(known), *alive) if a and a != self.self_addr]
        return list(dict.fromkeys(ask))

    async def _check_replica(self) -> None:
        """A replica keeps every voter in its node list, and promotes itself only when
        a voter confirms it is one.

        Promotion: a replica replaying the log passes through every past membership
        change: an old "add" of our own address makes us look like a voter until the
        later "remove" is applied. Acting on that made a replaced voter flap between
        replica and voter for minutes (found by the chaos soak). The leader's current
        view decides.

        Node list: only the leader sends a replica entries, and a replica's node list
        follows the membership changes in the log it replays. Replaying an old
        "remove" of a node that is the leader today (it was removed, added back, and
        elected since) drops the one connection the rest of the log would come
        through: the replica stopped there for ever (found by the chaos soak: stuck at
        entry 576 of 1000, and a rebuild replayed into the same hole). So a voter
        missing from our list is added back in place; replaying its later "add" is then
        a no-op. Extra nodes are left for the log to remove.

        We ask at most once a second while something is off, else every
        ``membership_check_period`` seconds."""
        now = trio.current_time()
        if now < self._membership_check_at:
            return
        mine = {n.address for n in self._sync.otherNodes}
        listed = self.self_addr in mine
        self._membership_check_at = now + (1.0 if listed else self._check_period)
        ask = self._ask_order(sorted(mine))
        if not ask:
            return
        try:
            voters = await trio.to_thread.run_sync(discover_voters, ask, self._password, 1.0)
        except ConsensusError:
            return  # nobody answers now; ask again later
        if self._role != "replica" or self._rebuilding:
            return
        if self.self_addr in voters:
            if listed:
                await self._promote_self()
            return  # added, but we have not applied it yet: wait for the log
        missing = sorted(set(voters) - {n.address for n in self._sync.otherNodes})
        if not missing:
            return
        self._membership_check_at = now + 1.0
        logger.warning(
            "raft replica %s lists %s but the voters are %s; adding %s",
            self.self_addr,
            sorted(mine),
            voters,
            missing,
        )
        await self._add_in_place(missing)

    async def _add_in_place(self, missing: Sequence[str]) -> None:
        """Add voters to our node list as applying an "add" entry would; replaying that
        entry later is then a no-op."""
        sync = self._sync

        def add() -> None:  # tick thread
            # What applying an "add" entry from the log does (pysyncobj 0.3.x; private).
            change = sync._SyncObj__doChangeCluster
            for address in missing:
                change(["add", address])

        with contextlib.suppress(ConsensusError):
            await self._on_tick_thread(add, 2.0)

    async def _promote_self(self) -> None:
        """The leader added us as a voter: rebuild as one (same address, voter files),
        quiet (no elections of our own) until we have caught up."""
        voters = sorted({n.address for n in self._sync.otherNodes} | {self.self_addr})
        logger.info("raft promoted to voter self=%s voters=%s", self.self_addr, voters)
        await self._rebuild("voter", voters, quiet=True)

    async def _rebuild(self, role: str, voters: Sequence[str], quiet: bool = False) -> None:
        """Replace our SyncObj by one in ``role``; answer reads from the old state until
        the new one has replayed as far."""
        self._frozen_state = self._consumer.state if self._consumer is not None else None
        self._frozen_state_index = self._raw_last_applied()
        self._rebuilding = True  # the watch loop must not take the old tick thread's end
        try:
            old = self._sync
            old.destroy()
            with trio.move_on_after(5):
                while old.tick_thread_alive():
                    await trio.sleep(0.01)
            for path in self._files(role):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            self._build(role, voters, quiet=quiet, retry_bind=True)
        finally:
            self._rebuilding = False
        self._emit(EventKind.ROLE_CHANGED, role=role)
        self._unbound_since = trio.current_time() if role == "voter" else None
        self._unbound_warned = False

    def _check_listening(self) -> None:
        """Log while a rebuilt voter cannot listen on its address yet (pysyncobj
        retries every second)."""
        if self._unbound_since is None or self._sync is None:
            return
        waited = trio.current_time() - self._unbound_since
        if getattr(self._sync, "_SyncObj__transport").ready:  # noqa: B009 (private name)
            if waited >= 2.0:
                logger.info("raft voter %s listens after %.1f s", self.self_addr, waited)
            self._unbound_since = None
        elif waited >= 2.0 and not self._unbound_warned:
            self._unbound_warned = True
            logger.warning(
                "raft voter %s cannot listen on its address yet (in use?); retrying",
                self.self_addr,
            )

    async def _check_voter(self) -> None:
        """A voter that does not lead asks every ``membership_check_period`` seconds
        whether it still is one; if the answers leave it out for
        ``REMOVED_CONFIRM_AFTER`` seconds, it rejoins as a replica.

        A voter paused or cut off while the autopilot replaced it comes back to a
        cluster that no longer sends it entries. It used to ask only when it heard no
        leader at all; but a removed voter can keep hearing one (the leader takes its
        connection for a replica's), so it stayed a stale voter for minutes, and its
        elections with ever higher terms deposed good leaders (found by the chaos
        soak)."""
        now = trio.current_time()
        if now < self._membership_check_at:
            return
        self._membership_check_at = now + (
            1.0 if self._removed_since is not None else self._check_period
        )
        if self.is_leader:
            self._removed_since = None
            return
        ask = self._ask_order([v for v in self.voters() if v != self.self_addr])
        if not ask:
            return
        try:
            voters = await trio.to_thread.run_sync(discover_voters, ask, self._password, 1.0)
        except ConsensusError:
            return  # nobody answers: partitioned or down, not removed
        if self._role != "voter" or self._rebuilding or self.is_leader:
            return
        if self.self_addr in voters:
            self._removed_since = None
            await self._keep_voters_listed(voters, now)
            return
        if self._removed_since is None:
            self._removed_since = now
            return
        if now - self._removed_since < REMOVED_CONFIRM_AFTER:
            return
        self._removed_since = None
        logger.warning(
            "raft voter %s was removed from the voter set %s; rejoining as a replica",
            self.self_addr,
            voters,
        )
        await self._rebuild("replica", voters)

    async def _keep_voters_listed(self, voters: Sequence[str], now: float) -> None:
        """A follower keeps every voter in its node list (decision 043).

        A voter promoted from replica starts with an empty log and replays the whole
        history from the leader; pysyncobj applies each membership entry as it arrives,
        so an old "remove" of the node that leads today (removed once, added back and
        elected since) drops the connection the rest of the log comes through, and the
        leader's reconnects are refused as coming from an unknown node. The later "add"
        never arrives: the new voter stalled until the next leader change (chaos soak,
        seed 2). So a voter missing from our list is added back in place: at once if
        it is the leader we follow, else once two answers a second apart agree (an
        "add" still in flight to us is not yet missing). Extra nodes are left for the
        log to remove."""
        mine = {n.address for n in self._sync.otherNodes}
        missing = sorted(set(voters) - mine - {self.self_addr})
        if not missing:
            self._missing_since = None
            return
        self._membership_check_at = now + 1.0
        urgent = self.leader in missing
        if not urgent:
            if self._missing_since is None:
                self._missing_since = now
                return
            if now - self._missing_since < MISSING_CONFIRM_AFTER:
                return
        self._missing_since = None
        logger.warning(
            "raft voter %s lists %s but the voters are %s; adding %s",
            self.self_addr,
            sorted(mine),
            list(voters),
            missing,
        )
        await self._add_in_place(missing)

    # ------------------------------------------------------------- status

    def _raw_status(self) -> dict[str, Any]:
        """Tick thread: pysyncobj's status, reduced to what the agent shows."""
        raw = self._sync.getStatus()
        connected = sorted(
            k[len("partner_node_status_server_") :]
            for k, v in raw.items()
            if k.startswith("partner_node_status_server_") and v == 2
        )
        match = {
            k[len("match_idx_server_") :]: v
            for k, v in raw.items()
            if k.startswith("match_idx_server_") and ":" in k
        }
        return {
            "has_quorum": bool(raw.get("has_quorum")),
            "connected_voters": connected,
            "replica_connections": int(raw.get("readonly_nodes_count", 0)),
            "match_index": match,
            "log_length": int(raw.get("log_len", 0)),
        }

    # ------------------------------------------------------------- writes

    async def propose(
        self, command: Command | Mapping[str, Any], timeout: float = 5.0
    ) -> dict[str, Any]:
        """Commit ``command`` and return the state's result once applied here.

        Raises ``InvalidCommandError`` (before anything is proposed),
        ``NotLeaderError`` (forward to ``err.leader``) or ``ConsensusError`` (timeout;
        the outcome is then unknown, and proposing the same command again is safe)."""
        wire = to_wire(command)
        request_id = wire["request_id"]
        deadline = trio.current_time() + timeout
        with trio.move_on_at(deadline):
            async with self._in_flight:
                while True:
                    done = self.state.result_of(request_id)
                    if done is not None:
                        return done
                    if self._sync is None:
                        raise ConsensusError("raft is not running")
                    if not self.is_leader:
                        leader = self.leader
                        if leader is not None:
                            raise NotLeaderError(leader)
                        await trio.sleep(0.02)
                        continue
                    result, error = await self._submit(wire)
                    if error == FAIL_REASON.SUCCESS:
                        return dict(result)
                    # Unknown outcome (leader changed, discarded, queue full...): the
                    # request id makes a retry safe; wait a little and look again.
                    await trio.sleep(0.02)
        done = self.state.result_of(request_id)
        if done is not None:
            return done
        raise ConsensusError(
            f"{wire['op']} not committed within {timeout:.1f}s (leader={self.leader}); "
            "it may still commit, and retrying the same request is safe"
        )

    async def _submit(self, wire: dict[str, Any]) -> tuple[Any, int]:
        event = trio.Event()
        box: list[Any] = []

        def resolve(result: Any, error: int) -> None:
            box.append((result, error))
            event.set()

        def callback(result: Any, error: int) -> None:  # tick thread
            self._from_tick_thread(lambda: resolve(result, error))

        assert self._consumer is not None
        self._consumer.apply(wire, callback=callback)
        await event.wait()
        return box[0]

    # ------------------------------------------------------------- autopilot

    async def _change_membership(self, change: str, address: str) -> bool:
        """One membership change, proposed on the tick thread; True once committed."""
        done = trio.Event()
        box: list[int] = []

        def callback(_result: Any, error: int) -> None:
            box.append(error)
            self._from_tick_thread(done.set)

        def job() -> None:
            if change == "add":
                self._sync.addNodeToCluster(address, callback=callback)
            else:
                self._sync.removeNodeFromCluster(address, callback=callback)

        self._queue_tick_job(job)
        with trio.move_on_after(10):
            await done.wait()
        ok = bool(box) and box[0] == FAIL_REASON.SUCCESS
        logger.info("raft membership %s %s -> %s", change, address, "committed" if ok else box)
        return ok

    async def _autopilot(self) -> None:
        """Leader only: grow the voter set to the target, replace dead voters.

        One change at a time: a change is finished when it is committed and, for an
        add, the new voter is connected and caught up with the leader's commit index."""
        if self.membership is None:
            return
        voters = set(self.voters())
        pending = self._pending_change
        if pending is not None:
            if pending["change"] == "add":
                status = self._status_cache
                caught_up = status.get("match_index", {}).get(pending["address"], 0)
                if (
                    pending["address"] in status.get("connected_voters", [])
                    and caught_up >= pending["commit_index"]
                ):
                    self._pending_change = None
                elif trio.current_time() - pending["since"] > 30:
                    logger.warning("raft voter %s did not catch up in 30s", pending["address"])
                    self._pending_change = None
                return
            self._pending_change = None
        alive = set(self.membership())
        # Replace only voters known dead: a suspect one may be slow (a GC or SIGSTOP
        # pause), and swapping it out left a resumed voter out of the set (chaos soak).
        present = set(self.present()) | alive if self.present is not None else alive
        dead = sorted(voters - present - {self.self_addr})
        candidates = sorted(alive - voters)
        change: tuple[str, str] | None = None
        # Grow only towards an odd size we can reach (1 -> 3 needs two replicas: an even
        # voter set tolerates no more failures than the odd one below it, and 2 voters
        # need both alive); replace a dead voter by adding first, removing after.
        room = min(self.target_voters, len(voters) + len(candidates))
        reachable = room if room % 2 else room - 1
        if len(voters) > self.target_voters and dead:
            change = ("remove", dead[0])
        elif candidates and (
            len(voters) < reachable or (dead and len(voters) <= self.target_voters)
        ):
            change = ("add", candidates[0])
        if change is None:
            return
        kind, address = change
        self._pending_change = {
            "change": kind,
            "address": address,
            "since": trio.current_time(),
            "commit_index": self.commit_index,
        }
        ok = await self._change_membership(kind, address)
        if not ok:
            self._pending_change = None
            return
        self._save_meta("voter", self.voters())
        self._emit(EventKind.MEMBERSHIP_CHANGED, change=kind, address=address, voters=self.voters())
        if kind == "remove":
            self._pending_change = None
