"""The leader's plan: a pure function of workloads, placements and the node view."""

from __future__ import annotations

from collections import Counter

from agent.leader import PlacementView, WorkloadView, plan
from agent.nodes import NodeView
from agent.spec import WorkloadSpec

CAP = {"cpu_millicores": 4000, "memory_bytes": 8 * 1024**3, "pids": 10000}


def node(name: str, liveness: str = "alive", **extra: object) -> NodeView:
    return NodeView(name=name, liveness=liveness, capacity=dict(CAP), **extra)  # type: ignore[arg-type]


def workload(name: str, replicas: int, version: int = 1) -> WorkloadView:
    spec = WorkloadSpec.from_dict({"name": name, "command": ["serve"], "replicas": replicas})
    return WorkloadView(name, spec, version)


def nodes(*views: NodeView) -> dict[str, NodeView]:
    return {v.name: v for v in views}


def test_places_every_replica_and_spreads_them() -> None:
    result, _ = plan([workload("web", 6)], [], nodes(node("a"), node("b"), node("c")), seed=1)
    assert sorted(rid for rid, _, _ in result.place) == [f"web-{i}" for i in range(6)]
    assert all(version == 1 for _, _, version in result.place)
    assert Counter(n for _, n, _ in result.place) == {"a": 2, "b": 2, "c": 2}
    assert not result.remove and not result.pending


def test_nothing_to_do_when_everything_is_placed() -> None:
    placements = [PlacementView(f"web-{i}", "web", "abc"[i], 1) for i in range(3)]
    result, _ = plan(
        [workload("web", 3)], placements, nodes(node("a"), node("b"), node("c")), seed=1
    )
    assert result.empty


def test_moves_replicas_of_dead_and_draining_nodes_only() -> None:
    placements = [PlacementView(f"web-{i}", "web", "abcd"[i], 1) for i in range(4)]
    view = nodes(
        node("a", "dead"), node("b", "suspect"), node("c", draining=True), node("d"), node("e")
    )
    for rid, n in (("web-1", "b"), ("web-2", "c"), ("web-3", "d")):
        view[n].replicas = {rid: {"state": "running", "health": None}}
    # web-0 is lost and web-2 drains: both may be unavailable at once with max_unavailable 2.
    spec = WorkloadSpec.from_dict(
        {"name": "web", "command": ["serve"], "replicas": 4, "drain": {"max_unavailable": 2}}
    )
    result, _ = plan([WorkloadView("web", spec, 1)], placements, view, seed=1)
    moved = {rid: n for rid, n, _ in result.place}
    assert set(moved) == {"web-0", "web-2"}  # b is only suspect: web-1 stays
    assert all(n in ("d", "e") for n in moved.values())


def test_replicas_with_no_home_are_pending_with_a_reason() -> None:
    big = WorkloadSpec.from_dict(
        {"name": "big", "command": ["x"], "replicas": 1, "resources": {"memory": "64Gi"}}
    )
    result, _ = plan([WorkloadView("big", big, 1)], [], nodes(node("a")), seed=1)
    assert not result.place
    assert "big-0" in result.pending and result.pending["big-0"]


def test_a_mass_failure_pauses_moves() -> None:
    placements = [PlacementView(f"web-{i}", "web", "abc"[i], 1) for i in range(3)]
    view = nodes(node("a", "dead"), node("b", "dead"), node("c"))
    result, _ = plan([workload("web", 3)], placements, view, seed=1)
    assert result.paused and result.empty


def test_deleted_workloads_lose_their_placements() -> None:
    result, _ = plan([], [PlacementView("old-0", "old", "a", 1)], nodes(node("a")), seed=1)
    assert result.remove == ["old-0"]


def test_unknown_nodes_wait_for_the_grace() -> None:
    placements = [PlacementView("web-0", "web", "ghost", 1)]
    early, _ = plan(
        [workload("web", 1)], placements, nodes(node("a")), seed=1, unknown_is_lost=False
    )
    assert early.empty
    late, _ = plan([workload("web", 1)], placements, nodes(node("a")), seed=1)
    assert late.place == [("web-0", "a", 1)]


def test_completed_batch_replicas_stay_when_their_node_dies() -> None:
    """Exit 0 is completed and stays so: a dead node's finished replicas do not run again;
    the one still running there moves."""
    spec = WorkloadSpec.from_dict(
        {"name": "report", "type": "batch", "command": ["x"], "replicas": 3}
    )
    placements = [PlacementView(f"report-{i}", "report", "abb"[i], 1) for i in range(3)]
    view = nodes(node("a"), node("b", "dead"), node("c"))
    view["b"].replicas = {
        "report-1": {"state": "running"},
        "report-2": {"state": "completed", "exit_code": 0},
    }
    result, _ = plan([WorkloadView("report", spec, 1)], placements, view, seed=1)
    assert [rid for rid, _, _ in result.place] == ["report-1"]
    assert not result.remove and not result.pending


def test_a_reported_completion_is_recorded_and_then_outlives_the_node() -> None:
    """The plan asks the state to record what the node reports completed (at the placed
    version); once recorded, the replica stays done even when gossip no longer knows
    its node at all."""
    spec = WorkloadSpec.from_dict({"name": "report", "type": "batch", "command": ["x"]})
    job = WorkloadView("report", spec, 1)
    view = nodes(node("a"), node("b"))
    view["b"].replicas = {"report-0": {"state": "completed", "exit_code": 0, "version": 1}}
    result, _ = plan([job], [PlacementView("report-0", "report", "b", 1)], view, seed=1)
    assert result.completed == [("report-0", "b", 1)] and result.empty
    # A report of an older version does not count.
    view["b"].replicas["report-0"]["version"] = 0
    result, _ = plan([job], [PlacementView("report-0", "report", "b", 1)], view, seed=1)
    assert result.completed == []
    # Node b forgotten: without the record report-0 would run again on a...
    forgotten = nodes(node("a"))
    result, _ = plan([job], [PlacementView("report-0", "report", "b", 1)], forgotten, seed=1)
    assert result.place == [("report-0", "a", 1)]
    # ...with it, it stays done.
    done = PlacementView("report-0", "report", "b", 1, completed=True)
    result, _ = plan([job], [done], forgotten, seed=1)
    assert result.empty and not result.completed and not result.pending


def test_a_system_job_only_loses_the_dead_nodes_replica() -> None:
    spec = WorkloadSpec.from_dict({"name": "ne", "type": "system", "command": ["x"], "replicas": 3})
    placements = [PlacementView(f"ne-{i}", "ne", f"n{i + 1}", 1) for i in range(3)]
    view = nodes(node("n1"), node("n2", "dead"), node("n3"))
    result, _ = plan([WorkloadView("ne", spec, 1)], placements, view, seed=1)
    assert result.remove == ["ne-1"]
    assert not result.place and not result.scale


def test_a_removed_workloads_completion_does_not_count_for_a_new_one() -> None:
    """The new `report` (uid new) must run report-0 even though the dead node still
    says the old `report` (uid old) completed it."""
    user = {"name": "report", "type": "batch", "command": ["x"], "replicas": 1}
    spec = WorkloadSpec.from_dict(user)
    view = nodes(node("a"), node("b", "dead"))
    view["b"].replicas = {"report-0": {"state": "completed", "exit_code": 0, "uid": "old"}}
    placements = [PlacementView("report-0", "report", "b", 1)]
    new = WorkloadView("report", spec, 1, {**user, "_hypha": {"uid": "new"}})
    result, _ = plan([new], placements, view, seed=1)
    assert [(rid, n) for rid, n, _ in result.place] == [("report-0", "a")]
