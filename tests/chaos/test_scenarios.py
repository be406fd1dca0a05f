"""Fixed fault scenarios on one real 5-agent cluster, each checked against the invariants.

One cluster (LAN gossip timers, the process driver, a client writing all along)
takes the faults in turn: a leader kill, a minority partition, a partition that
isolates the leader with a minority, a worker paused for less than the
suspicion timeout, and 20% packet loss for a minute. After each, the cluster must
converge within 30 s and every invariant must hold (see agent/chaos/history.py).
The long randomised soak is `scripts/chaos soak`, not CI.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from agent.chaos import faults
from agent.chaos.schedule import LEADER, Fault
from agent.chaos.soak import CONVERGE_LIMIT, Soak
from tests.conftest import require_binary, require_root

pytestmark = pytest.mark.slow
TAG = "hypha-test-chaos"


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Soak]:
    require_root()
    require_binary("iptables")
    run = Soak(
        seed=7,
        duration=0,
        nodes=5,
        base=tmp_path_factory.mktemp("chaos"),
        preset="lan",
        # Addresses of its own, so a run beside another (two developers, two suites)
        # never has its partitions cut the other's cluster.
        first_host=f"127.0.{10 + os.getpid() % 200}.2",
        workloads=3,
        tag=TAG,
        log=print,
    )
    try:
        run.start()
        yield run
    except BaseException:
        print(run.cluster.dump())
        raise
    finally:
        run.close()
        assert faults.tagged_rules(TAG) == []


def survive(soak: Soak, fault: Fault) -> None:
    result = soak.step(fault)
    assert result is not None, f"{fault.describe()} found no target"
    violations = soak.check()
    assert not violations, "\n".join(str(v) for v in violations) + "\n" + soak.report.summary()
    assert result.converge_seconds is not None and result.converge_seconds <= CONVERGE_LIMIT


def test_leader_kill(soak: Soak) -> None:
    survive(soak, Fault("kill-leader", (LEADER,), hold=5.0))


def test_minority_partition(soak: Soak) -> None:
    followers = [a.name for a in soak.cluster.agents if a.name != soak.leader_name()]
    survive(soak, Fault("partition", tuple(followers[:2]), hold=10.0))


def test_majority_partition_isolates_the_leader(soak: Soak) -> None:
    follower = next(a.name for a in soak.cluster.agents if a.name != soak.leader_name())
    survive(soak, Fault("partition-leader", (LEADER, follower), hold=10.0))


def test_worker_pause_shorter_than_suspicion_is_no_death(soak: Soak) -> None:
    worker = next(a.name for a in soak.cluster.agents if a.name != soak.leader_name())
    survive(soak, Fault("pause-short", (worker,), hold=round(0.5 * soak.suspicion, 1)))
    assert soak.slow, "the pause was recorded as a slow window"


def test_twenty_percent_loss_for_a_minute(soak: Soak) -> None:
    worker = next(a.name for a in soak.cluster.agents if a.name != soak.leader_name())
    survive(soak, Fault("loss", (worker,), hold=60.0, percent=20.0))
