"""The desired-state machine alone: no pysyncobj, no threads, no clock."""

from __future__ import annotations

import json
import pickle

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.consensus.state import (
    DEDUPE_WINDOW,
    DeleteTenant,
    DeleteWorkload,
    DesiredState,
    InvalidCommandError,
    MarkCompleted,
    MarkTerm,
    PlacementEntry,
    PutTenant,
    PutWorkload,
    RemovePlacements,
    ScaleWorkload,
    SetCredits,
    SetNodeAdmin,
    SetPlacements,
    command_from_wire,
    parse_replica_id,
    replica_id,
)


def spec(name: str = "web", replicas: int = 2, **extra: object) -> dict[str, object]:
    return {"name": name, "replicas": replicas, "image": "busybox", **extra}


def test_put_workload_creates_and_versions() -> None:
    s = DesiredState()
    r = s.apply(PutWorkload(spec(), expected_version=0).to_wire())
    assert r["ok"] and r["version"] == 1
    r = s.apply(PutWorkload(spec(image="alpine"), expected_version=1).to_wire())
    assert r["ok"] and r["version"] == 2
    w = s.workload("web")
    assert w is not None and w.version == 2 and w.spec["image"] == "alpine"
    assert w.replicas == 2 and w.tenant == "default"


def test_cas_refuses_a_lost_update() -> None:
    s = DesiredState()
    s.apply(PutWorkload(spec(), expected_version=0).to_wire())
    # Two writers both read version 1 and both try to write.
    first = s.apply(PutWorkload(spec(image="a"), expected_version=1).to_wire())
    second = s.apply(PutWorkload(spec(image="b"), expected_version=1).to_wire())
    assert first["ok"]
    assert second == {
        "ok": False,
        "error": "conflict",
        "message": "workload web is at version 2, not 1",
        "version": 2,
        "revision": 2,
    }
    assert s.workload("web").spec["image"] == "a"  # type: ignore[union-attr]
    # Creating a name that exists is a conflict too.
    assert s.apply(PutWorkload(spec(), expected_version=0).to_wire())["error"] == "conflict"


def test_same_request_applies_once_and_answers_the_same() -> None:
    s = DesiredState()
    cmd = PutWorkload(spec(), expected_version=0).to_wire()
    first = s.apply(cmd)
    again = s.apply(cmd)
    assert again.pop("duplicate") is True
    assert again == first
    assert s.workload("web").version == 1  # type: ignore[union-attr]


def test_identical_put_without_request_dedupe_is_a_no_op() -> None:
    s = DesiredState()
    s.apply(PutWorkload(spec()).to_wire())
    r = s.apply(PutWorkload(spec()).to_wire())
    assert r["ok"] and r["version"] == 1 and r["changed"] is False


def test_scale_and_delete_drop_placements() -> None:
    s = DesiredState()
    s.apply(PutWorkload(spec(replicas=3)).to_wire())
    s.apply(MarkTerm(1).to_wire())
    entries = tuple(PlacementEntry(replica_id("web", i), f"n{i}", 1) for i in range(3))
    r = s.apply(SetPlacements(1, entries).to_wire())
    assert r["applied"] == ["web-0", "web-1", "web-2"]
    r = s.apply(ScaleWorkload("web", 1, expected_version=1).to_wire())
    assert r["ok"] and r["removed_placements"] == 2 and r["version"] == 2
    assert [p.replica_id for p in s.placements()] == ["web-0"]
    assert s.placements_for("n0")[0].spec_version == 1
    r = s.apply(DeleteWorkload("web").to_wire())
    assert r["ok"] and r["removed_placements"] == 1
    assert s.placements() == [] and s.workloads() == []
    assert s.apply(DeleteWorkload("web").to_wire())["error"] == "not_found"
    assert s.apply(ScaleWorkload("web", 3).to_wire())["error"] == "not_found"


def test_placements_entry_checks_and_stale_terms() -> None:
    s = DesiredState()
    s.apply(PutWorkload(spec(replicas=2)).to_wire())
    s.apply(MarkTerm(5, "127.0.0.2:1").to_wire())
    batch = (
        PlacementEntry("web-0", "a", 1),
        PlacementEntry("web-5", "a", 1),
        PlacementEntry("web-1", "a", 9),
        PlacementEntry("gone-0", "a", 1),
    )
    r = s.apply(SetPlacements(5, batch).to_wire())
    assert r["applied"] == ["web-0"]
    assert r["rejected"] == {
        "web-5": "out_of_range",
        "web-1": "stale_version",
        "gone-0": "not_found",
    }
    # A deposed leader (term 4) is refused whole.
    r = s.apply(SetPlacements(4, (PlacementEntry("web-1", "b", 1),)).to_wire())
    assert r["error"] == "stale_term"
    assert s.apply(RemovePlacements(4, ("web-0",)).to_wire())["error"] == "stale_term"
    assert s.apply(MarkTerm(3).to_wire())["error"] == "stale_term"
    assert s.leader == "127.0.0.2:1"
    r = s.apply(RemovePlacements(6, ("web-0", "web-1")).to_wire())
    assert r["removed"] == ["web-0"] and s.term == 6


def test_completed_marks_follow_their_placement() -> None:
    s = DesiredState()
    s.apply(PutWorkload(spec(replicas=3)).to_wire())
    s.apply(SetPlacements(2, tuple(PlacementEntry(f"web-{i}", "a", 1) for i in range(3))).to_wire())
    r = s.apply(
        MarkCompleted(
            2,
            (
                PlacementEntry("web-0", "a", 1),
                PlacementEntry("web-1", "b", 1),  # not where it is placed
                PlacementEntry("web-9", "a", 1),
            ),
        ).to_wire()
    )
    assert r["applied"] == ["web-0"] and r["rejected"] == {"web-1": "moved", "web-9": "not_found"}
    assert s.completed("web-0") and not s.completed("web-1")
    assert "web-0" in s.fingerprint()["completed"]
    # Marking again changes nothing; a deposed leader is refused whole.
    again = s.apply(MarkCompleted(2, (PlacementEntry("web-0", "a", 1),)).to_wire())
    assert again["applied"] == [] and not again["changed"]
    old = s.apply(MarkCompleted(1, (PlacementEntry("web-1", "a", 1),)).to_wire())
    assert old["error"] == "stale_term"
    # The mark survives a snapshot, and goes with its placement: moved, removed, scaled.
    s = pickle.loads(pickle.dumps(s))
    assert s.completed("web-0")
    s.apply(MarkCompleted(2, (PlacementEntry("web-1", "a", 1),)).to_wire())
    s.apply(MarkCompleted(2, (PlacementEntry("web-2", "a", 1),)).to_wire())
    s.apply(SetPlacements(2, (PlacementEntry("web-0", "b", 1),)).to_wire())
    s.apply(RemovePlacements(2, ("web-1",)).to_wire())
    s.apply(ScaleWorkload("web", 2).to_wire())
    assert not any(s.completed(f"web-{i}") for i in range(3))
    assert s.fingerprint()["completed"] == []


def test_a_snapshot_from_before_completed_marks_restores() -> None:
    s = DesiredState()
    s.apply(PutWorkload(spec()).to_wire())
    state = dict(s.__dict__)
    del state["_completed"]  # as pickled by an agent that had no such field
    old = DesiredState.__new__(DesiredState)
    old.__setstate__(state)
    assert old.workload("web") is not None and not old.completed("web-0")
    r = old.apply(SetPlacements(1, (PlacementEntry("web-0", "a", 1),)).to_wire())
    assert r["applied"] == ["web-0"]


def test_node_admin_credits_tenants() -> None:
    s = DesiredState()
    assert s.node_admin("n1").eligible is True
    s.apply(SetNodeAdmin("n1", draining=True).to_wire())
    s.apply(SetNodeAdmin("n1", eligible=False).to_wire())
    a = s.node_admin("n1")
    assert (a.eligible, a.draining) == (False, True)
    assert s.apply(SetCredits(1, 1, {"n1": 5, "n2": -3}).to_wire())["ok"]
    assert s.apply(SetCredits(1, 1, {"n1": 9}).to_wire())["error"] == "stale_epoch"
    assert s.credits() == {"n1": 5, "n2": -3}
    s.apply(PutTenant("acme", weight=200, cap=10).to_wire())
    assert s.tenant("acme").cap == 10  # type: ignore[union-attr]
    assert s.apply(DeleteTenant("acme").to_wire())["ok"]
    assert s.apply(DeleteTenant("acme").to_wire())["error"] == "not_found"


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: PutWorkload({"name": "Bad_Name", "replicas": 1}), "spec.name"),
        (lambda: PutWorkload({"name": "ok", "replicas": -1}), "spec.replicas"),
        (lambda: PutWorkload({"name": "ok", "replicas": True}), "spec.replicas"),
        (lambda: PutWorkload({"name": "ok", "replicas": 1, "x": float("nan")}), "spec"),
        (lambda: PutWorkload({"name": "ok", "replicas": 1, "x": object()}), "spec"),
        (lambda: PutWorkload(spec(), expected_version=-1), "expected_version"),
        (lambda: ScaleWorkload("web", 10**6), "replicas"),
        (lambda: SetPlacements(0, ()), "term"),
        (lambda: SetPlacements(1, (PlacementEntry("web", "n", 1),)), "placements[0]"),
        (
            lambda: SetPlacements(
                1, (PlacementEntry("w-0", "n", 1), PlacementEntry("w-0", "m", 1))
            ),
            "placements[1]",
        ),
        (lambda: SetPlacements(1, (PlacementEntry("w-0", "bad node", 1),)), "placements[0].node"),
        (lambda: SetNodeAdmin("n1"), "eligible/draining"),
        (lambda: SetNodeAdmin("n1", eligible="yes"), "eligible"),  # type: ignore[arg-type]
        (lambda: SetCredits(1, 1, {"n1": 1.5}), "balances[n1]"),  # type: ignore[dict-item]
        (lambda: PutTenant("t", weight=0), "weight"),
        (lambda: PutWorkload(spec(), request_id="has space"), "request_id"),
    ],
)
def test_validation_names_the_field(make: object, field: str) -> None:
    with pytest.raises(InvalidCommandError, match=f": {field.replace('[', '.').replace(']', '.')}"):
        make()  # type: ignore[operator]


def test_from_wire_refuses_garbage_and_apply_reports_it() -> None:
    for wire in (
        None,
        {"v": 2, "op": "put_workload"},
        {"v": 1, "op": "nope"},
        {"v": 1, "op": "put_workload", "spec": spec(), "bogus": 1},
        {"v": 1, "op": "set_placements", "term": 1, "placements": [["web-0", "n"]]},
    ):
        with pytest.raises(InvalidCommandError):
            command_from_wire(wire)
        s = DesiredState()
        r = s.apply(wire)  # type: ignore[arg-type]
        assert r["ok"] is False and r["error"] == "invalid"
        assert s.revision == 0


def test_wire_roundtrip_through_msgpack_and_json() -> None:
    commands = [
        PutWorkload(spec(env={"A": "1"}), expected_version=3),
        DeleteWorkload("web", expected_version=2),
        ScaleWorkload("web", 4),
        SetPlacements(2, (PlacementEntry("web-0", "n1", 1),)),
        RemovePlacements(2, ("web-0",)),
        SetNodeAdmin("n1", eligible=False),
        SetCredits(2, 7, {"n1": 3}),
        PutTenant("acme", 5, None),
        DeleteTenant("acme"),
        MarkTerm(9, "127.0.0.1:4000"),
        MarkCompleted(2, (PlacementEntry("web-0", "n1", 1),)),
    ]
    for c in commands:
        wire = c.to_wire()
        assert command_from_wire(msgpack.unpackb(msgpack.packb(wire))) == c
        assert command_from_wire(json.loads(json.dumps(wire))) == c


def test_replica_ids() -> None:
    assert replica_id("my-app", 12) == "my-app-12"
    assert parse_replica_id("my-app-12") == ("my-app", 12)
    for bad in ("web", "web-", "web-01", "-1", "Web-1"):
        with pytest.raises(InvalidCommandError):
            parse_replica_id(bad)


def test_dedupe_window_is_bounded() -> None:
    s = DesiredState()
    for i in range(DEDUPE_WINDOW + 10):
        s.apply(SetNodeAdmin(f"n{i % 3}", draining=bool(i % 2), request_id=f"r{i}").to_wire())
    assert len(s._results) == DEDUPE_WINDOW
    assert s.result_of("r0") is None and s.result_of(f"r{DEDUPE_WINDOW + 9}") is not None


def test_internal_error_is_a_result_not_a_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    s = DesiredState()

    def boom(self: DesiredState, c: object) -> dict[str, object]:
        raise RuntimeError("bug")

    monkeypatch.setattr(DesiredState, "_apply_put_tenant", boom)
    r = s.apply(PutTenant("t").to_wire())
    assert r["ok"] is False and r["error"] == "internal"


# ---------------------------------------------------------------------------
# Property tests.

names = st.sampled_from(["web", "db", "cache"])
nodes = st.sampled_from(["n1", "n2", "n3"])


@st.composite
def commands(draw: st.DrawFn) -> dict[str, object]:
    kind = draw(st.integers(0, 9))
    name = draw(names)
    rid = draw(st.text("abc", min_size=1, max_size=3))
    version = draw(st.one_of(st.none(), st.integers(0, 4)))
    term = draw(st.integers(1, 5))
    if kind == 0:
        c: object = PutWorkload(
            {"name": name, "replicas": draw(st.integers(0, 4)), "v": draw(st.integers(0, 3))},
            expected_version=version,
            request_id=rid,
        )
    elif kind == 1:
        c = DeleteWorkload(name, expected_version=version or None, request_id=rid)
    elif kind == 2:
        c = ScaleWorkload(name, draw(st.integers(0, 4)), version or None, request_id=rid)
    elif kind == 3:
        idx = draw(st.lists(st.integers(0, 4), unique=True, max_size=4))
        c = SetPlacements(
            term,
            tuple(PlacementEntry(f"{name}-{i}", draw(nodes), draw(st.integers(1, 4))) for i in idx),
            request_id=rid,
        )
    elif kind == 4:
        c = RemovePlacements(term, (f"{name}-{draw(st.integers(0, 4))}",), request_id=rid)
    elif kind == 5:
        c = SetNodeAdmin(draw(nodes), draining=draw(st.booleans()), request_id=rid)
    elif kind == 6:
        c = SetCredits(term, draw(st.integers(1, 5)), {draw(nodes): draw(st.integers(-9, 9))})
    elif kind == 7:
        c = MarkTerm(term, request_id=rid)
    elif kind == 8:
        c = MarkCompleted(
            term,
            (PlacementEntry(f"{name}-{draw(st.integers(0, 4))}", draw(nodes), 1),),
            request_id=rid,
        )
    else:
        c = PutTenant(name, draw(st.integers(1, 9)), request_id=rid)
    return c.to_wire()  # type: ignore[attr-defined]


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(commands(), max_size=40))
def test_replicas_applying_the_same_log_agree(log: list[dict[str, object]]) -> None:
    a, b = DesiredState(), DesiredState()
    results_a = [a.apply(c) for c in log]
    # b goes through the wire (msgpack) and a pickle snapshot half way, like a follower
    # that installs a snapshot and then replays the rest.
    half = len(log) // 2
    for c in log[:half]:
        b.apply(msgpack.unpackb(msgpack.packb(c)))
    b = pickle.loads(pickle.dumps(b))
    results_b = [b.apply(msgpack.unpackb(msgpack.packb(c))) for c in log[half:]]
    assert results_a[half:] == results_b
    assert a.fingerprint() == b.fingerprint()


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(commands(), max_size=40))
def test_applying_a_log_twice_changes_nothing(log: list[dict[str, object]]) -> None:
    s = DesiredState()
    first = [s.apply(c) for c in log]
    before = s.fingerprint()
    again = [s.apply(c) for c in log]
    assert s.fingerprint() == before
    # Every command whose request is still remembered answers as the first time.
    for one, two in zip(first, again, strict=True):
        two.pop("duplicate", None)
        assert two == one or one.get("duplicate")


@settings(max_examples=100)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 6)), max_size=30))
def test_cas_never_loses_an_acknowledged_update(writes: list[tuple[int, int]]) -> None:
    """Writers read a version, then CAS; every success is a distinct, kept version."""
    s = DesiredState()
    s.apply(PutWorkload({"name": "w", "replicas": 1, "by": -1}, expected_version=0).to_wire())
    seen_versions: dict[int, int] = {}
    for writer, value in writes:
        read = s.workload("w")
        assert read is not None
        r = s.apply(
            PutWorkload(
                {"name": "w", "replicas": 1, "by": writer, "value": value, "after": read.version},
                expected_version=read.version,
            ).to_wire()
        )
        assert r["ok"]
        seen_versions[r["version"]] = writer
    # Each acknowledged write built on the previous: versions are 2..n+1 with no gaps.
    assert sorted(seen_versions) == list(range(2, 2 + len(writes)))
    final = s.workload("w")
    assert final is not None and final.version == 1 + len(writes)


def test_concurrent_cas_exactly_one_wins() -> None:
    s = DesiredState()
    s.apply(PutWorkload(spec(), expected_version=0).to_wire())
    results = [
        s.apply(PutWorkload(spec(image=f"i{k}"), expected_version=1).to_wire()) for k in range(5)
    ]
    assert [r["ok"] for r in results] == [True, False, False, False, False]
