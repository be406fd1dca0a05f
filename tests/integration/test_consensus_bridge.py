"""RaftNode in this process: real pysyncobj on loopback, driven from trio."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from agent.consensus.harness import free_address
from agent.consensus.raft import EventKind, NotLeaderError, RaftEvent, RaftNode
from agent.consensus.state import InvalidCommandError, PutWorkload
from agent.errors import ConsensusError, SecretError

PASSWORD = b"p" * 32


def test_refuses_to_start_without_a_password(tmp_path: Path) -> None:
    for bad in (None, b"", b"short"):
        with pytest.raises(SecretError, match="refusing to start Raft without a cluster secret"):
            RaftNode(free_address(), tmp_path, bad, bootstrap=True)


def test_refuses_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConsensusError, match="expected IPv4 host:port"):
        RaftNode("localhost:1", tmp_path, PASSWORD, bootstrap=True)
    with pytest.raises(ConsensusError, match="either bootstrap"):
        RaftNode(free_address(), tmp_path, PASSWORD, bootstrap=True, join_via=[free_address()])
    with pytest.raises(ConsensusError, match="target_voters"):
        RaftNode(free_address(), tmp_path, PASSWORD, bootstrap=True, target_voters=2)


async def wait_until(predicate: object, timeout: float = 20.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():  # type: ignore[operator]
            await trio.sleep(0.02)


async def next_event(events: trio.MemoryReceiveChannel[RaftEvent], kind: EventKind) -> RaftEvent:
    with trio.fail_after(20):
        async for event in events:
            if event.kind is kind:
                return event
    raise AssertionError("channel closed")


@pytest.mark.slow
async def test_bootstrap_propose_events_status_and_a_replica(tmp_path: Path) -> None:
    leader = RaftNode(free_address(), tmp_path / "a", PASSWORD, bootstrap=True)
    events = leader.subscribe()
    async with trio.open_nursery() as nursery:
        await nursery.start(leader.serve)
        changed = await next_event(events, EventKind.LEADER_CHANGED)
        while not changed.data["is_self"]:  # the first event reports "no leader yet"
            changed = await next_event(events, EventKind.LEADER_CHANGED)
        assert changed.data["leader"] == leader.self_addr and changed.data["term"] >= 1
        await wait_until(lambda: leader.is_leader_ready)

        with pytest.raises(InvalidCommandError):
            await leader.propose({"v": 1, "op": "put_workload", "spec": {}}, timeout=5)
        command = PutWorkload({"name": "web", "replicas": 2}, expected_version=0)
        result = await leader.propose(command, timeout=10)
        assert result["ok"] and result["version"] == 1
        applied = await next_event(events, EventKind.APPLIED)
        while applied.data["op"] != "put_workload":
            applied = await next_event(events, EventKind.APPLIED)
        assert applied.data["request_id"] == command.request_id
        # Proposing the same request again answers the same, applies nothing new.
        again = await leader.propose(command, timeout=10)
        assert again["version"] == 1 and leader.state.workload("web").version == 1  # type: ignore[union-attr]

        status = leader.status()
        assert status["leader"] == leader.self_addr and status["role"] == "voter"
        assert status["voters"] == [leader.self_addr] and status["term"] >= 1
        assert status["commit_index"] >= 3 and status["tick_thread_alive"]

        replica = RaftNode(free_address(), tmp_path / "b", PASSWORD, join_via=[leader.self_addr])
        await nursery.start(replica.serve)
        assert replica.role == "replica"
        await wait_until(lambda: replica.state.workload("web") is not None)
        with pytest.raises(NotLeaderError) as caught:
            await replica.propose(PutWorkload({"name": "db", "replicas": 1}), timeout=5)
        assert caught.value.leader == leader.self_addr
        syncs = [leader._sync, replica._sync]
        nursery.cancel_scope.cancel()
    # Cancelling serve() stops pysyncobj's tick threads.
    assert not any(sync.tick_thread_alive() for sync in syncs)
    assert RaftNode.has_local_state(tmp_path / "a") and RaftNode.has_local_state(tmp_path / "b")
    assert not RaftNode.has_local_state(tmp_path / "c")


@pytest.mark.slow
async def test_propose_times_out_without_a_quorum(tmp_path: Path) -> None:
    """A voter whose peer never answers has no leader: propose raises, it does not hang."""
    addr = free_address()
    (tmp_path / "raft-meta.json").write_text(
        f'{{"role": "voter", "self": "{addr}", "voters": ["{addr}", "{free_address()}"]}}'
    )
    node = RaftNode(addr, tmp_path, PASSWORD)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.serve)
        with pytest.raises(ConsensusError, match="not committed within"):
            await node.propose(PutWorkload({"name": "web", "replicas": 1}), timeout=1.5)
        nursery.cancel_scope.cancel()


@pytest.mark.slow
async def test_serve_fails_loudly_when_the_tick_thread_dies(tmp_path: Path) -> None:
    node = RaftNode(free_address(), tmp_path, PASSWORD, bootstrap=True)
    with pytest.raises(BaseExceptionGroup) as caught:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.serve)
            await wait_until(lambda: node.is_leader_ready)
            node._sync.destroy()  # what a crash of pysyncobj's thread looks like from here
            await trio.sleep(30)
    matched, _rest = caught.value.split(ConsensusError)
    assert matched is not None and "tick thread died" in repr(matched)
