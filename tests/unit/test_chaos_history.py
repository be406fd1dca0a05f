"""The soak's checker and schedule, on histories written by hand."""

from __future__ import annotations

from agent.chaos.history import (
    ABSENT,
    DeathSample,
    LeaderSample,
    Op,
    ReplicaView,
    SlowWindow,
    WorkloadState,
    check_no_false_deaths,
    check_placement,
    check_unique_leaders,
    check_writes,
    possible_final_states,
)
from agent.chaos.schedule import FAULT_KINDS, LEADER, make_schedule


def op(kind: str, replicas: int | None, outcome: str, t: float, name: str = "w") -> Op:
    return Op(kind, name, replicas, outcome, t, t + 0.1)  # type: ignore[arg-type]


def test_acknowledged_writes_define_the_state() -> None:
    ops = [op("create", 3, "ok", 1), op("scale", 5, "ok", 2), op("scale", 2, "ok", 3)]
    assert possible_final_states(ops) == {WorkloadState(True, 2, 3)}
    assert check_writes(ops, {"w": WorkloadState(True, 2, 3)}) == []


def test_a_lost_acknowledged_scale_is_reported() -> None:
    ops = [op("create", 3, "ok", 1), op("scale", 5, "ok", 2)]
    (violation,) = check_writes(ops, {"w": WorkloadState(True, 3, 1)})
    assert violation.invariant == "writes" and "lost" in violation.detail


def test_a_write_applied_twice_is_reported() -> None:
    ops = [op("create", 3, "ok", 1), op("scale", 5, "ok", 2)]
    (violation,) = check_writes(ops, {"w": WorkloadState(True, 5, 3)})
    assert "applied twice" in violation.detail


def test_unknown_outcomes_allow_both() -> None:
    ops = [op("create", 3, "ok", 1), op("scale", 5, "unknown", 2), op("delete", None, "unknown", 3)]
    possible = possible_final_states(ops)
    assert possible == {WorkloadState(True, 3, 1), WorkloadState(True, 5, 2), ABSENT}
    assert check_writes(ops, {}) == []  # absent is fine: the delete may have applied


def test_failed_writes_did_not_apply_and_deletes_are_checked() -> None:
    ops = [op("create", 3, "ok", 1), op("scale", 9, "fail", 2), op("delete", None, "ok", 3)]
    assert check_writes(ops, {}) == []
    (violation,) = check_writes(ops, {"w": WorkloadState(True, 3, 1)})
    assert "observed 3 replicas v1" in violation.detail


def test_recreate_after_delete_starts_at_version_one() -> None:
    ops = [op("create", 1, "ok", 1), op("delete", None, "ok", 2), op("create", 4, "ok", 3)]
    assert possible_final_states(ops) == {WorkloadState(True, 4, 1)}


def test_two_leaders_in_one_term() -> None:
    samples = [LeaderSample("a", 3, "a", 1.0), LeaderSample("b", 3, "b", 1.1)]
    (violation,) = check_unique_leaders(samples)
    assert "term 3" in violation.detail
    assert check_unique_leaders([LeaderSample("a", 3, "a", 1), LeaderSample("b", 4, "b", 2)]) == []


def test_false_death_only_inside_a_slow_window() -> None:
    windows = [SlowWindow("n2", 10.0, 12.0)]
    assert check_no_false_deaths([DeathSample("n1", "n2", 20.0)], windows) == []
    (violation,) = check_no_false_deaths([DeathSample("n1", "n2", 11.0)], windows)
    assert "n1 saw n2 dead" in str(violation)


def test_replicas_on_the_wrong_node_or_twice() -> None:
    view = ReplicaView(
        placed={"w-0": "n1", "w-1": "n2"},
        running={"w-0": ["n1"], "w-1": ["n2", "n3"], "x-0": ["n1"]},
    )
    details = [v.detail for v in check_placement(view)]
    assert "w-1 runs on n3 but is placed on n2" in details
    assert "w-1 runs 2 times: ['n2', 'n3']" in details
    assert "x-0 runs on n1 but is not placed anywhere" in details
    assert len(details) == 3


def test_schedule_is_a_function_of_the_seed() -> None:
    nodes = ["n1", "n2", "n3", "n4", "n5"]
    one = make_schedule(1, nodes, 30, suspicion_timeout=4.0)
    assert one == make_schedule(1, list(reversed(nodes)), 30, suspicion_timeout=4.0)
    assert one != make_schedule(2, nodes, 30, suspicion_timeout=4.0)
    assert {f.kind for f in one} <= set(FAULT_KINDS)
    for fault in one:
        if fault.kind == "pause-short":
            assert fault.hold < 4.0
        if fault.kind in ("partition", "partition-leader"):
            named = [t for t in fault.targets if t != LEADER]
            assert len(named) + (LEADER in fault.targets) <= 2  # a minority of 5


def test_scaling_to_the_same_count_is_no_new_version() -> None:
    ops = [op("create", 3, "ok", 1), op("scale", 3, "ok", 2), op("scale", 4, "ok", 3)]
    assert possible_final_states(ops) == {WorkloadState(True, 4, 2)}


def test_an_acknowledged_impossible_write_is_reported_not_crashed_on() -> None:
    ops = [op("create", 3, "ok", 1), op("create", 2, "ok", 2)]  # created twice, both ok
    (violation,) = check_writes(ops, {"w": WorkloadState(True, 2, 1)})
    assert "create 2 at +2.0s was acknowledged" in violation.detail


def test_the_soak_report_shows_the_history_of_a_blamed_workload() -> None:
    from agent.chaos.soak import SoakReport

    report = SoakReport(seed=1, nodes=5, duration=60)
    report.ops = [
        Op("create", "w", 2, "ok", 1.0, 1.5, "via n1"),
        Op("delete", "w", None, "fail", 2.0, 2.5, "via n4: no workload named 'w'"),
        Op("create", "w", 1, "ok", 3.0, 3.5, "via n2"),
        Op("create", "other", 1, "ok", 1.0, 1.2, "via n3"),
    ]
    final = {"w": WorkloadState(True, 1, 1), "other": WorkloadState(True, 1, 1)}
    report.violations = check_writes(report.ops, final)
    assert len(report.violations) == 1
    text = report.summary()
    assert "history of w:" in text and "history of other" not in text
    assert "delete     fail    via n4: no workload named 'w'" in text


def test_an_unknown_write_may_apply_after_the_clients_later_writes() -> None:
    # The soak's seed-2 case: a delete timed out at the client (its agent was cut
    # off), the client scaled, and the forwarded delete committed after the scale.
    ops = [
        op("create", 3, "ok", 1),
        op("delete", None, "unknown", 2),
        op("scale", 5, "ok", 3),
        op("create", 2, "ok", 4),
    ]
    assert check_writes(ops, {"w": WorkloadState(True, 2, 1)}) == []
    # Without the late delete the create could not have applied at all.
    (violation,) = check_writes([*ops[:1], *ops[2:]], {"w": WorkloadState(True, 2, 1)})
    assert "create 2 at +4.0s was acknowledged" in violation.detail


def test_an_unknown_write_never_applies_before_it_was_invoked() -> None:
    ops = [op("create", 3, "ok", 1), op("scale", 5, "ok", 2), op("scale", 3, "unknown", 3)]
    possible = possible_final_states(ops)
    assert possible == {WorkloadState(True, 5, 2), WorkloadState(True, 3, 3)}


def test_many_open_unknown_writes_stay_cheap() -> None:
    ops = [op("create", 1, "ok", 0)]
    ops += [op("scale", 2 + i % 3, "unknown", 1 + i) for i in range(12)]
    possible = possible_final_states(ops)
    assert WorkloadState(True, 1, 1) in possible
    assert all(s.exists and s.version <= 13 for s in possible)
