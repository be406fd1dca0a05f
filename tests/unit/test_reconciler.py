"""The node reconciler against the mock driver, on trio's autojump clock."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from agent.reconciler import LABEL_RESTARTS, DesiredReplica, Reconciler, ReplicaReport
from agent.spec import WorkloadSpec
from runtime import MockDriver, MockHost


def replica(
    rid: str, command: list[str], restart: Any = "always", version: int = 1, **extra: Any
) -> DesiredReplica:
    name = rid.rpartition("-")[0]
    spec = WorkloadSpec.from_dict(
        {"name": name, "command": command, "restart": restart, "replicas": 10, **extra}
    )
    return DesiredReplica(rid, spec, version)


class Harness:
    def __init__(self, host: MockHost | None = None, driver: MockDriver | None = None) -> None:
        self.host = host or MockHost()
        self.driver = driver or MockDriver(self.host, clock=trio.current_time)
        self.desired: dict[str, DesiredReplica] = {}
        self.reports: dict[str, ReplicaReport] = {}
        self.failures: list[str] = []  # every failed report and failed start seen
        self.reconciler = Reconciler(
            self.driver,
            node="n1",
            desired=lambda: self.desired,
            on_report=self._report,
            on_start=self._started,
            clock=trio.current_time,
        )

    def _report(self, reports: dict[str, ReplicaReport]) -> None:
        self.reports = reports
        self.failures.extend(rid for rid, r in reports.items() if r.state == "failed")

    def _started(self, rid: str, restarts: int, seconds: float, error: str | None) -> None:
        if error is not None:
            self.failures.append(f"{rid}: {error}")

    def states(self) -> dict[str, str]:
        return {rid: r.state for rid, r in sorted(self.reports.items())}

    async def settle(self, seconds: float = 5.0) -> None:
        self.reconciler.poke()
        await trio.sleep(seconds)


@pytest.fixture
async def harness(nursery: trio.Nursery) -> Harness:
    h = Harness()
    await nursery.start(h.reconciler.run)
    return h


async def test_starts_and_stops_to_match_desired(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    harness.desired = {f"web-{i}": replica(f"web-{i}", ["serve"]) for i in range(3)}
    await harness.settle()
    assert harness.states() == {"web-0": "running", "web-1": "running", "web-2": "running"}
    assert sorted(harness.host.containers) == ["web-0", "web-1", "web-2"]
    env = harness.host.containers["web-1"].spec.env
    assert env["HYPHA_REPLICA"] == "web-1" and env["HYPHA_NODE"] == "n1"

    del harness.desired["web-2"]
    await harness.settle()
    assert sorted(harness.host.containers) == ["web-0", "web-1"]
    assert "web-2" not in harness.reports


async def test_scaling_does_not_restart_but_a_new_template_does(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    harness.desired = {"web-0": replica("web-0", ["serve"])}
    await harness.settle()
    pid = harness.host.containers["web-0"].pid
    harness.desired = {"web-0": replica("web-0", ["serve"], version=2)}  # e.g. scaled
    await harness.settle()
    assert harness.host.containers["web-0"].pid == pid
    harness.desired = {"web-0": replica("web-0", ["serve", "--new"], version=3)}
    await harness.settle()
    assert harness.host.containers["web-0"].pid != pid
    assert harness.host.containers["web-0"].spec.command == ("serve", "--new")


async def test_restart_policies_with_backoff(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    harness.desired = {
        "ok-0": replica("ok-0", ["true"], restart="on-failure:3"),
        "bad-0": replica("bad-0", ["exit", "3"], restart="on-failure:2"),
        "once-0": replica("once-0", ["exit", "4"], restart="never"),
    }
    await harness.settle(60)
    reports = harness.reports
    assert reports["ok-0"].state == "completed" and reports["ok-0"].exit_code == 0
    assert reports["bad-0"].state == "exited" and reports["bad-0"].exit_code == 3
    assert reports["bad-0"].restarts == 2
    assert reports["once-0"].state == "exited" and reports["once-0"].restarts == 0


async def test_always_restarts_a_crash_after_backoff(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    harness.desired = {"web-0": replica("web-0", ["serve"])}
    await harness.settle()
    harness.driver.crash("web-0", 137)
    await trio.sleep(0.01)
    harness.reconciler.poke()
    await trio.sleep(0.01)
    assert harness.reports["web-0"].state in ("backoff", "starting")
    await harness.settle(5)
    assert harness.reports["web-0"].state == "running"
    assert harness.host.containers["web-0"].spec.labels[LABEL_RESTARTS] == "1"


async def test_start_failure_is_reported_and_retried(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    harness.driver.fail_next_start("no such image")
    harness.desired = {"web-0": replica("web-0", ["serve"])}
    harness.reconciler.poke()
    await trio.sleep(0.5)
    assert harness.reports["web-0"].state == "failed"
    assert "no such image" in (harness.reports["web-0"].error or "")
    await harness.settle(5)
    assert harness.reports["web-0"].state == "running"


async def test_a_restarted_agent_adopts_and_stops_what_it_no_longer_owns(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    host = MockHost()
    first = Harness(host)
    first.desired = {"web-0": replica("web-0", ["serve"]), "web-1": replica("web-1", ["serve"])}
    async with trio.open_nursery() as inner:
        await inner.start(first.reconciler.run)
        await first.settle()
        inner.cancel_scope.cancel()  # the agent dies; its containers keep running
    assert sorted(host.containers) == ["web-0", "web-1"]
    pid = host.containers["web-0"].pid

    second = Harness(host)
    second.desired = {"web-0": replica("web-0", ["serve"])}  # web-1 moved elsewhere meanwhile
    await nursery.start(second.reconciler.run)
    await second.settle()
    assert sorted(host.containers) == ["web-0"]
    assert host.containers["web-0"].pid == pid  # adopted, not restarted


async def test_a_slow_stop_does_not_hold_up_a_start(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    """A restarted agent stops what it no longer owns, each container for up to its
    grace; the replicas placed on it meanwhile used to wait for every such stop."""
    harness.desired = {"old-0": replica("old-0", ["ignore-term"], stop_grace=30)}
    await harness.settle()
    assert harness.states() == {"old-0": "running"}
    harness.desired = {}
    await harness.settle(1)  # the stop has begun and waits out its 30 s grace
    assert "old-0" in harness.host.containers
    harness.desired = {"new-0": replica("new-0", ["serve"])}
    await harness.settle(2)
    assert harness.states() == {"new-0": "running", "old-0": "stopping"}
    assert "old-0" in harness.host.containers  # still in its grace
    await harness.settle(30)
    assert sorted(harness.host.containers) == ["new-0"]


async def test_a_container_no_longer_placed_is_reported_until_it_is_gone(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    """A replica moved off this node (a drain) or removed: its container stays for its
    stop grace, and the node's report says so; `drain --wait` counts on that (it said
    "drained" while the last container was still in its grace)."""
    harness.desired = {"web-0": replica("web-0", ["ignore-term"], stop_grace=3)}
    await harness.settle()
    started_at = harness.reports["web-0"].started_at
    harness.desired = {}
    await harness.settle(1)
    assert "web-0" in harness.host.containers
    report = harness.reports["web-0"]
    assert (report.state, report.workload, report.version) == ("stopping", "web", 1)
    assert report.started_at == started_at
    assert report.uid == ""  # no workload takes it for its current replica
    await harness.settle(1)
    assert harness.states() == {"web-0": "stopping"}  # every pass until it is gone
    await harness.settle(3)
    assert "web-0" not in harness.host.containers
    assert harness.states() == {}


async def test_a_container_no_longer_placed_gets_its_workloads_grace(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    """Its spec may be gone from the state (workload deleted, replica moved away while
    the agent was down): the grace is read from the container's label."""
    harness.desired = {"old-0": replica("old-0", ["ignore-term"], stop_grace=2)}
    await harness.settle()
    harness.desired = {}
    harness.reconciler.poke()
    await trio.sleep(2.5)
    assert "old-0" not in harness.host.containers  # killed after 2 s, not 10


class SlowRemoval(MockDriver):
    """A removal that takes a second, and a container that leaves ``list()`` as soon
    as its removal begins (as runc's does): starting the same id meanwhile fails."""

    def __init__(self, host: MockHost) -> None:
        super().__init__(host, clock=trio.current_time)
        self.removing: set[str] = set()

    async def remove(self, container_id: str) -> None:
        self.removing.add(container_id)
        try:
            await trio.sleep(1)
            await super().remove(container_id)
        finally:
            self.removing.discard(container_id)

    async def list(self) -> list[Any]:
        return [c for c in await super().list() if c.id not in self.removing]


async def test_a_replaced_container_is_removed_before_its_successor_starts(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A new template stops the old container beside the loop; the next pass must not
    start the new one while the old one's removal is still under way."""
    host = MockHost()
    h = Harness(host, SlowRemoval(host))
    await nursery.start(h.reconciler.run)
    h.desired = {"web-0": replica("web-0", ["serve"])}
    await h.settle()
    h.desired = {"web-0": replica("web-0", ["serve", "--v2"], version=2)}
    await h.settle(0.5)  # the old one is stopped; its removal takes a second
    assert isinstance(h.driver, SlowRemoval) and h.driver.removing == {"web-0"}
    await h.settle(10)  # a pass while it is being removed, then the rest
    assert not h.failures  # the start raced the removal: "container exists"
    assert h.states() == {"web-0": "running"}
    assert h.host.containers["web-0"].spec.command == ("serve", "--v2")


async def test_reports_name_the_workload_incarnation_they_belong_to(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    """`hypha rm web` then `hypha run web`: both are version 1, so only the uid tells
    the new workload's reports from the old one's failures still in gossip."""
    from agent.nodes import replica_from_value, replica_value
    from agent.workloads import is_current

    old = replica("web-0", ["false"], restart="never")
    harness.desired = {"web-0": DesiredReplica("web-0", old.spec, 1, "old-uid")}
    await harness.settle()
    gossiped = replica_from_value("web-0", replica_value(harness.reports["web-0"].to_dict()))
    assert gossiped["state"] == "exited" and gossiped["uid"] == "old-uid"
    assert is_current(gossiped, "old-uid") and not is_current(gossiped, "new-uid")
    harness.desired = {}
    await harness.settle()
    new = replica("web-0", ["serve"])
    harness.desired = {"web-0": DesiredReplica("web-0", new.spec, 1, "new-uid")}
    await harness.settle()
    assert harness.reports["web-0"].uid == "new-uid"
    assert harness.reports["web-0"].state == "running"


def test_containers_name_their_agent_instance() -> None:
    from agent.reconciler import container_spec

    spec = container_spec(replica("web-0", ["serve"]), node="n1", restarts=0, agent="hy-n1-abc")
    assert spec.env["HYPHA_AGENT"] == "hy-n1-abc" and spec.env["HYPHA_NODE"] == "n1"


async def test_a_replica_recorded_done_is_not_started_again(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    """A node that lost its containers (a new data dir under the same name) must not run
    a batch replica the state records as completed; one that still has the exited
    container keeps it, and its logs."""
    done = replica("report-0", ["true"], restart="never", type="batch")
    harness.desired = {"report-0": DesiredReplica("report-0", done.spec, 1, done=True)}
    await harness.settle()
    assert harness.host.containers == {}
    assert harness.reports["report-0"].state == "completed"
    assert harness.reports["report-0"].exit_code == 0

    ran = replica("report-1", ["true"], restart="never", type="batch")
    harness.desired = {"report-1": ran}
    await harness.settle()
    assert harness.states() == {"report-1": "completed"}
    harness.desired = {"report-1": DesiredReplica("report-1", ran.spec, 1, done=True)}
    await harness.settle()
    assert list(harness.host.containers) == ["report-1"]
    assert harness.states() == {"report-1": "completed"}
