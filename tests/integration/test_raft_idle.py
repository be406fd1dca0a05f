"""A tick thread that sleeps long when idle still answers at once (decision 054)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from agent.consensus.harness import free_address
from agent.consensus.raft import RaftNode, RaftTimings
from agent.consensus.state import PutWorkload

PASSWORD = b"p" * 32


async def wait_until(predicate: object, timeout: float = 20.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():  # type: ignore[operator]
            await trio.sleep(0.02)


@pytest.mark.slow
async def test_a_sleeping_tick_thread_is_woken_for_jobs_writes_and_messages(
    tmp_path: Path,
) -> None:
    # Idle tick threads here would sleep a minute: anything that waited for one to wake
    # by itself (a job, a proposal, a leader's entries) would time out below.
    timings = RaftTimings(idle_tick_period=60.0)
    leader = RaftNode(free_address(), tmp_path / "a", PASSWORD, bootstrap=True, timings=timings)
    async with trio.open_nursery() as nursery:
        await nursery.start(leader.serve)
        await wait_until(lambda: leader.is_leader_ready)
        replica = RaftNode(
            free_address(), tmp_path / "b", PASSWORD, join_via=[leader.self_addr], timings=timings
        )
        await nursery.start(replica.serve)
        await wait_until(lambda: replica.leader == leader.self_addr)
        # A job queued by the trio side (a replica has no timer of its own).
        status = await replica._on_tick_thread(replica._raw_status, timeout=5.0)
        assert status["log_length"] >= 1
        # A write, and its entry reaching the replica.
        result = await leader.propose(PutWorkload({"name": "web", "replicas": 1}), timeout=10)
        assert result["ok"]
        await wait_until(lambda: replica.state.workload("web") is not None)
        nursery.cancel_scope.cancel()
