"""The leader's rules for job types, drains and rolling updates, as pure functions."""

from __future__ import annotations

from typing import Any

from agent.nodes import NodeView
from agent.spec import WorkloadSpec
from agent.workloads import (
    batch_status,
    drain_allowance,
    history_rows,
    join_spec,
    meta_for_put,
    rollout_plan,
    spec_dict_at,
    split_spec,
    system_plan,
)

CAP = {"cpu_millicores": 4000, "memory_bytes": 8 << 30, "pids": 1000}


def node(name: str, **kwargs: Any) -> NodeView:
    view = NodeView(name=name, liveness=kwargs.pop("liveness", "alive"))
    view.capacity = dict(CAP)
    for key, value in kwargs.items():
        setattr(view, key, value)
    return view


def spec(**extra: Any) -> WorkloadSpec:
    return WorkloadSpec.from_dict({"name": "w", "command": ["serve"], **extra})


def test_system_job_scales_to_eligible_nodes_then_covers_each_once() -> None:
    nodes = {
        "a": node("a", labels={"zone": "a"}),
        "b": node("b", labels={"zone": "b"}),
        "c": node("c", draining=True),
        "d": node("d", liveness="dead"),
        "e": node("e", eligible=False),
    }
    system = spec(type="system", replicas=0)
    assert system_plan(system, {}, nodes).scale == 2
    two = spec(type="system", replicas=2)
    assert system_plan(two, {}, nodes).place == [("w-0", "a"), ("w-1", "b")]
    # w-0 sits on the draining node: it moves to the node without one.
    assert system_plan(two, {"w-0": "c", "w-1": "a"}, nodes).place == [("w-0", "b")]
    assert system_plan(two, {"w-0": "b", "w-1": "a"}, nodes).place == []
    only_a = spec(type="system", replicas=1, constraints=["zone==a"])
    assert system_plan(only_a, {}, nodes).place == [("w-0", "a")]


def test_drain_moves_at_most_max_unavailable() -> None:
    running = {"state": "running", "health": None}
    nodes = {"a": node("a", draining=True), "b": node("b"), "c": node("c")}
    nodes["a"].replicas = {"w-0": running, "w-1": running}
    nodes["b"].replicas = {"w-2": running}
    web = spec(replicas=3, drain={"max_unavailable": 1})
    placements = {"w-0": "a", "w-1": "a", "w-2": "b"}
    assert drain_allowance(web, placements, nodes) == 1
    moving = {"w-0": "c", "w-1": "a", "w-2": "b"}  # w-0 moved, not running yet on c
    assert drain_allowance(web, moving, nodes) == 0
    nodes["c"].replicas = {"w-0": running}
    assert drain_allowance(web, moving, nodes) == 1


def test_history_and_spec_at_version() -> None:
    v1 = spec(replicas=2).to_dict()
    meta = meta_for_put(None, 0, v1)
    stored = join_spec(v1, meta)
    # Scaling keeps the template: no history entry.
    assert meta_for_put(stored, 1, {**v1, "replicas": 3}) == meta
    v3 = {**v1, "command": ["serve", "--new"]}
    meta3 = meta_for_put(join_spec({**v1, "replicas": 3}, meta), 2, v3)
    stored3 = join_spec(v3, meta3)
    assert meta3["template_since"] == 3
    assert spec_dict_at(stored3, 1)["command"] == ["serve"]
    assert spec_dict_at(stored3, 2)["command"] == ["serve"]
    assert spec_dict_at(stored3, 3)["command"] == ["serve", "--new"]
    assert split_spec(stored3)[0] == v3
    rows = history_rows(stored3, 3)
    assert [r["status"] for r in rows] == ["replaced", "current"]
    assert rows[0]["version_range"] == "1-2" and "command" in rows[1]["change"]
    # Each row tells what made its version: v1 was created, v3 changed the command.
    assert [r["change"] for r in rows] == ["created", "changed command"]
    v4 = {**v3, "env": {"A": "b"}}
    rows = history_rows(join_spec(v4, meta_for_put(stored3, 3, v4)), 4)
    assert [(r["version_range"], r["change"]) for r in rows] == [
        ("1-2", "created"),
        ("3", "changed command"),
        ("4", "changed env"),
    ]


def _rollout_inputs(
    reports: dict[str, dict[str, Any]], auto_revert: bool = False
) -> tuple[dict[str, Any], WorkloadSpec, dict[str, tuple[str, int]], dict[str, NodeView]]:
    update = {"max_parallel": 1, "min_healthy": 5, "healthy_deadline": 30}
    update["auto_revert"] = auto_revert
    v1 = spec(replicas=3, update=update).to_dict()
    v2 = {**v1, "command": ["serve", "--v2"]}
    stored = join_spec(v2, meta_for_put(join_spec(v1, {"template_since": 1}), 1, v2))
    parsed = WorkloadSpec.from_dict(split_spec(stored)[0])
    placements = {"w-0": ("a", 2), "w-1": ("a", 1), "w-2": ("a", 1)}
    nodes = {"a": node("a")}
    nodes["a"].replicas = reports
    return stored, parsed, placements, nodes


def test_rollout_waits_for_min_healthy_then_replaces_the_next() -> None:
    young = {
        "state": "running",
        "health": None,
        "healthy_since": 98.0,
        "started_at": 98.0,
        "version": 2,
    }
    stale = {**young, "version": 1}  # the node has not taken version 2 in yet
    stored, parsed, placements, nodes = _rollout_inputs({"w-0": stale})
    plan = rollout_plan(stored, 2, parsed, placements, nodes, now=200.0)
    assert plan.status == "running" and plan.replace == [] and plan.healthy == 0
    stored, parsed, placements, nodes = _rollout_inputs({"w-0": young})
    plan = rollout_plan(stored, 2, parsed, placements, nodes, now=100.0)
    assert plan.status == "running" and plan.replace == [] and plan.updated == 1
    plan = rollout_plan(stored, 2, parsed, placements, nodes, now=104.0)
    assert plan.replace == [("w-1", "a")] and plan.healthy == 1


def test_rollout_failure_stops_or_reverts() -> None:
    crashed = {"state": "backoff", "health": None, "restarts": 1, "version": 2}
    stored, parsed, placements, nodes = _rollout_inputs({"w-0": crashed})
    plan = rollout_plan(stored, 2, parsed, placements, nodes, now=100.0)
    assert plan.status == "failed" and plan.replace == [] and plan.revert_to is None
    assert "w-0 backoff" in plan.message
    stored, parsed, placements, nodes = _rollout_inputs({"w-0": crashed}, auto_revert=True)
    plan = rollout_plan(stored, 2, parsed, placements, nodes, now=100.0)
    assert plan.status == "reverting" and plan.revert_to is not None
    user, meta = split_spec(plan.revert_to)
    assert user["command"] == ["serve"] and meta["reverted_from"] == 2
    assert meta["template_since"] == 3 and meta["history"][-1]["status"] == "failed"
    # The placements at version 2 run the failed spec until replaced; at 1, the good one.
    assert spec_dict_at(plan.revert_to, 2)["command"] == ["serve", "--v2"]
    assert spec_dict_at(plan.revert_to, 1)["command"] == ["serve"]


def test_rollout_not_healthy_within_the_deadline_fails() -> None:
    stuck = {"state": "running", "health": "starting", "started_at": 10.0, "version": 2}
    stored, parsed, placements, nodes = _rollout_inputs({"w-0": stuck})
    plan = rollout_plan(stored, 2, parsed, placements, nodes, now=100.0)
    assert plan.status == "failed" and "not healthy within 30s" in plan.message


def test_batch_status() -> None:
    job = spec(type="batch", replicas=2)
    done = {"state": "completed"}
    assert batch_status(job, [done, done]) == "complete"
    assert batch_status(job, [done, {"state": "running"}]) == "running"
    assert batch_status(job, [done, {"state": "exited"}]) == "failed"
    assert batch_status(job, [done]) == "running"


def test_system_job_leaves_survivors_alone_when_a_node_dies() -> None:
    """n2 (slot w-1) dies: w-1 just goes; w-0 and w-2 keep running where they are."""
    nodes = {"n1": node("n1"), "n2": node("n2", liveness="dead"), "n3": node("n3")}
    three = spec(type="system", replicas=3)
    now = {"w-0": "n1", "w-1": "n2", "w-2": "n3"}
    result = system_plan(three, now, nodes)
    assert result.scale is None and result.place == [] and result.vacant == ["w-1"]
    # A new node takes the vacant slot; the dead top slot is what scaling drops.
    nodes["n4"] = node("n4")
    assert system_plan(three, now, nodes).place == [("w-1", "n4")]
    moved = {"w-0": "n1", "w-1": "n3", "w-2": "n2"}
    assert system_plan(three, moved, nodes).place == [("w-2", "n4")]
    del nodes["n4"]
    assert system_plan(three, moved, nodes).scale == 2


def test_a_workload_keeps_its_uid_through_updates_and_a_new_one_gets_another() -> None:
    from agent.workloads import new_workload_meta, workload_uid

    v1 = spec(replicas=2).to_dict()
    first = join_spec(v1, new_workload_meta())
    uid = workload_uid(first)
    assert uid and workload_uid(join_spec(v1, new_workload_meta())) != uid
    v2 = {**v1, "command": ["serve", "--new"]}
    assert workload_uid(join_spec(v2, meta_for_put(first, 1, v2))) == uid
    assert workload_uid(join_spec(v1, meta_for_put(first, 1, {**v1, "replicas": 3}))) == uid
    assert workload_uid(v1) == ""  # created before uids: every report counts
