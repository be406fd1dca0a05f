"""The pre-vote (decision 046): a voter whose election timer runs out raises its term
only once a majority says it would vote for it. Real pysyncobj, driven by hand over an
in-memory transport that records what is sent."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.node import TCPNode
from pysyncobj.transport import Transport

from agent.consensus.raft import _PRE_VOTE, _PRE_VOTE_REPLY, _BridgeSyncObj, _Conf

ME, A, B = "127.0.0.251:9", "127.0.0.252:9", "127.0.0.253:9"
FOLLOWER, CANDIDATE, LEADER = 0, 1, 2


class Recorder(Transport):  # type: ignore[misc]
    """Always ready, connected to every voter; keeps what is sent."""

    def __init__(self, sync: Any, self_node: Any, other_nodes: Any) -> None:
        super().__init__(sync, self_node, other_nodes)
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.peers = list(other_nodes)

    def send(self, node: Any, message: dict[str, Any]) -> bool:
        self.sent.append((node.id, message))
        return True

    def connect_all(self) -> None:
        for node in self.peers:
            self._onNodeConnected(node)

    def take(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        out = [(to, m) for to, m in self.sent if m.get("type") == kind]
        self.sent.clear()
        return out


def voter(cls: type = _BridgeSyncObj) -> tuple[Any, Recorder]:
    conf = SyncObjConf(
        autoTick=False, raftMinTimeout=0.3, raftMaxTimeout=0.9, appendEntriesPeriod=0.05
    )
    sync = cls(ME, [A, B], conf=conf, transportClass=Recorder)
    transport = sync._SyncObj__transport
    transport.connect_all()
    return sync, transport


@pytest.fixture
def node() -> Iterator[tuple[Any, Recorder]]:
    sync, transport = voter()
    try:
        yield sync, transport
    finally:
        sync.destroy()


def time_out(sync: Any) -> None:
    sync._SyncObj__raftElectionDeadline = 0
    sync.doTick(0)


def term(sync: Any) -> int:
    return int(sync._SyncObj__raftCurrentTerm)


def reply(sync: Any, sender: str, granted: bool, current_term: int | None = None) -> None:
    message = {
        "type": _PRE_VOTE_REPLY,
        "term": term(sync) + 1,
        "granted": granted,
        "current_term": term(sync) if current_term is None else current_term,
    }
    sync._SyncObj__onMessageReceived(TCPNode(sender), message)


def ask(sync: Any, sender: str, at_term: int, log: tuple[int, int] | None = None) -> dict[str, Any]:
    """Send ``sync`` a pre-vote from ``sender`` and return its answer."""
    last_term, last_index = log or (
        sync._SyncObj__getCurrentLogTerm(),
        sync._SyncObj__getCurrentLogIndex(),
    )
    message = {
        "type": _PRE_VOTE,
        "term": at_term,
        "last_log_index": last_index,
        "last_log_term": last_term,
    }
    transport = sync._SyncObj__transport
    transport.sent.clear()
    sync._SyncObj__onMessageReceived(TCPNode(sender), message)
    [(to, answer)] = transport.take(_PRE_VOTE_REPLY)
    assert to == sender and answer["term"] == at_term
    return answer


def heartbeat(sync: Any, sender: str, at_term: int) -> None:
    message = {"type": "append_entries", "term": at_term, "commit_index": 0}
    sync._SyncObj__onMessageReceived(TCPNode(sender), message)


def test_plain_pysyncobj_raises_its_term_when_its_timer_runs_out() -> None:
    """What the pre-vote is for: alone on its side of a partition, pysyncobj's voter
    raises its term at every timeout, and that term deposes the leader later."""
    sync, transport = voter(SyncObj)
    try:
        before = term(sync)
        for _ in range(3):
            time_out(sync)
        assert term(sync) == before + 3
        assert transport.take("request_vote")
    finally:
        sync.destroy()


def test_a_timed_out_voter_asks_first_and_keeps_its_term(node: tuple[Any, Recorder]) -> None:
    sync, transport = node
    before = term(sync)
    time_out(sync)
    asked = transport.take(_PRE_VOTE)
    assert sorted(to for to, _ in asked) == [A, B]
    assert all(m["term"] == before + 1 for _, m in asked)
    assert term(sync) == before and not transport.take("request_vote")
    # Nobody answers (cut off): it keeps its term, and asks again only after another
    # election timeout, not at every tick.
    for _ in range(5):
        time_out(sync)
    assert term(sync) == before and not transport.take(_PRE_VOTE)
    sync._pre_vote_again_at = 0.0
    time_out(sync)
    assert len(transport.take(_PRE_VOTE)) == 2 and term(sync) == before


def test_a_majority_of_yeses_starts_the_real_election(node: tuple[Any, Recorder]) -> None:
    sync, transport = node
    before = term(sync)
    time_out(sync)
    transport.sent.clear()
    reply(sync, A, granted=False)
    sync.doTick(0)
    assert term(sync) == before  # itself and a no: not a majority
    reply(sync, B, granted=True)
    sync.doTick(0)  # itself and B: two of three
    assert term(sync) == before + 1
    assert sync._SyncObj__raftState == CANDIDATE
    assert sorted(to for to, _ in transport.take("request_vote")) == [A, B]


def test_a_yes_for_an_older_round_does_not_count(node: tuple[Any, Recorder]) -> None:
    sync, transport = node
    time_out(sync)
    before = term(sync)
    stale = {"type": _PRE_VOTE_REPLY, "term": before, "granted": True, "current_term": before}
    sync._SyncObj__onMessageReceived(TCPNode(A), stale)
    sync.doTick(0)
    assert term(sync) == before and not transport.take("request_vote")


def test_hearing_a_leader_cancels_a_won_pre_vote(node: tuple[Any, Recorder]) -> None:
    sync, transport = node
    time_out(sync)
    reply(sync, A, granted=True)
    heartbeat(sync, B, term(sync))
    before = term(sync)
    sync.doTick(0)
    assert term(sync) == before and not transport.take("request_vote")


def test_a_refusal_with_a_higher_term_is_taken_up(node: tuple[Any, Recorder]) -> None:
    """A voter behind the others' term would never get a yes (they only say yes to a
    higher term than theirs): it takes the term it is told, then asks at the next."""
    sync, transport = node
    time_out(sync)
    transport.sent.clear()
    reply(sync, A, granted=False, current_term=7)
    assert term(sync) == 7 and sync._SyncObj__raftState == FOLLOWER
    time_out(sync)
    assert {m["term"] for _, m in transport.take(_PRE_VOTE)} == {8}


def test_a_voter_says_yes_only_without_a_leader_and_to_a_log_as_long(
    node: tuple[Any, Recorder],
) -> None:
    sync, _ = node
    now = term(sync)
    assert ask(sync, A, now + 1)["granted"]
    assert not ask(sync, A, now)["granted"]  # not a higher term than its own
    last_term = sync._SyncObj__getCurrentLogTerm()
    last_index = sync._SyncObj__getCurrentLogIndex()
    assert not ask(sync, A, now + 1, (last_term, last_index - 1))["granted"]  # shorter log
    assert ask(sync, A, now + 1, (last_term + 1, 0))["granted"]  # a later last term wins
    heartbeat(sync, B, now)
    assert not ask(sync, A, now + 1)["granted"]  # it heard from its leader just now
    assert term(sync) == now  # answering changes nothing
    assert sync._SyncObj__votedForNodeId is None


def test_a_leader_says_no(node: tuple[Any, Recorder]) -> None:
    sync, transport = node
    time_out(sync)
    reply(sync, A, granted=True)
    sync.doTick(0)
    vote = {"type": "response_vote", "term": term(sync)}
    sync._SyncObj__onMessageReceived(TCPNode(A), vote)
    assert sync._SyncObj__raftState == LEADER
    answer = ask(sync, B, term(sync) + 1)
    assert not answer["granted"] and answer["current_term"] == term(sync)


def test_a_voter_alone_needs_no_pre_vote() -> None:
    conf = SyncObjConf(autoTick=False)
    sync = _BridgeSyncObj(ME, [], conf=conf, transportClass=Recorder)
    try:
        time_out(sync)
        assert sync._SyncObj__raftState == LEADER
    finally:
        sync.destroy()


def test_a_quiet_voter_judges_the_leader_by_the_normal_timeout() -> None:
    """A voter just promoted is quiet (election timeouts of 6-9 s) while it catches up.
    Its pre-vote answers must still use the normal timeout, or the other voters could
    not replace a leader lost in those seconds."""
    conf = _Conf(autoTick=False, raftMinTimeout=0.3, raftMaxTimeout=0.9, appendEntriesPeriod=0.05)
    sync = _BridgeSyncObj(ME, [A, B], conf=conf, transportClass=Recorder)
    try:
        sync._SyncObj__transport.connect_all()
        conf.quiet = True
        assert conf.raftMinTimeout > 1  # stretched
        heartbeat(sync, B, term(sync))
        assert not ask(sync, A, term(sync) + 1)["granted"]
        sync._heard_leader_at -= 1.0  # a second without the leader: long past 0.3 s
        assert ask(sync, A, term(sync) + 1)["granted"]
    finally:
        sync.destroy()
