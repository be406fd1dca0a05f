"""Unit tests for each placement rule and every "no room" message of the scheduler."""

from __future__ import annotations

import pytest

from scheduler import (
    STRATEGIES,
    Constraint,
    InvalidInputError,
    NodeInfo,
    Placement,
    PlacementRequest,
    Planner,
    ReschedulePaused,
    Resources,
    SchedulerConfig,
    Snapshot,
    TenantPolicy,
    explain,
    place,
    reschedule,
)

GiB = 1 << 30
MiB = 1 << 20


def node(
    name: str, cpu: int = 4000, mem: int = 8 * GiB, pids: int = 1000, **kw: object
) -> NodeInfo:
    return NodeInfo(id=name, capacity=Resources(cpu, mem, pids), **kw)  # type: ignore[arg-type]


def req(
    rid: str, cpu: int = 500, mem: int = 512 * MiB, pids: int = 10, **kw: object
) -> PlacementRequest:
    workload = rid.rsplit("-", 1)[0]
    fields: dict[str, object] = {"workload": workload}
    fields.update(kw)
    return PlacementRequest(
        replica_id=rid,
        resources=Resources(cpu, mem, pids),
        **fields,  # type: ignore[arg-type]
    )


def one(snapshot: Snapshot, request: PlacementRequest, strategy: str = "mycelial"):  # type: ignore[no-untyped-def]
    return place(snapshot, [request], 7, strategy=strategy)[0]


# ------------------------------------------------------------------ filters


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_respects_every_resource(strategy: str) -> None:
    snap = Snapshot(
        nodes=(
            node("cpu-poor", cpu=400),
            node("mem-poor", mem=256 * MiB),
            node("pid-poor", pids=5),
            node("roomy"),
        )
    )
    decisions = place(snap, [req("w-0")], 1, strategy=strategy)
    assert decisions[0].node_id == "roomy"


def test_no_room_message_names_memory_and_the_largest_free() -> None:
    snap = Snapshot(
        nodes=(
            node("n1", mem=4 * GiB),
            node("n3", mem=8 * GiB, allocated=Resources(0, 2 * GiB, 0)),
            node("n2", mem=2 * GiB),
        )
    )
    d = one(snap, req("w-0", mem=8 * GiB))
    assert d.node_id is None and d.rule == "resources"
    assert d.reason == "no node has 8 GiB memory free; largest free: 6 GiB on n3"


def test_no_room_message_for_cpu_and_pids() -> None:
    snap = Snapshot(nodes=(node("a", cpu=1000), node("b", cpu=1500)))
    d = one(snap, req("w-0", cpu=2000))
    assert d.reason == "no node has 2 cores free; largest free: 1.5 cores on b"
    d = one(snap, req("w-0", pids=5000))
    assert d.reason == "no node has 5000 pids free; largest free: 1000 pids on a"


def test_no_room_together_names_the_closest_node() -> None:
    snap = Snapshot(
        nodes=(
            node("cpu-rich", cpu=8000, mem=1 * GiB),
            node("mem-rich", cpu=1000, mem=16 * GiB),
        )
    )
    d = one(snap, req("w-0", cpu=2000, mem=4 * GiB))
    assert d.rule == "resources"
    assert d.reason is not None
    assert d.reason.startswith("no node has 2 cores, 4 GiB memory, 10 pids free together")
    assert "closest: mem-rich with 1 core, 16 GiB memory, 1000 pids free" in d.reason


def test_every_strategy_reports_the_same_no_room_reason() -> None:
    snap = Snapshot(nodes=(node("a", mem=2 * GiB), node("b", mem=3 * GiB)))
    reasons = {one(snap, req("w-0", mem=4 * GiB), s).reason for s in STRATEGIES}
    assert reasons == {"no node has 4 GiB memory free; largest free: 3 GiB on b"}


def test_no_nodes_at_all() -> None:
    d = one(Snapshot(nodes=()), req("w-0"))
    assert d.rule == "no_nodes"
    assert d.reason == "no nodes are known"


@pytest.mark.parametrize("state", ["suspect", "dead", "draining"])
def test_nodes_that_are_not_alive_get_no_new_work(state: str) -> None:
    snap = Snapshot(nodes=(node("sick", state=state), node("ok", mem=1 * GiB)))
    assert one(snap, req("w-0")).node_id == "ok"
    d = one(Snapshot(nodes=(node("sick", state=state),)), req("w-0"))
    assert d.rule == "state"
    assert d.reason == f"no node can take new work: 1 {state}"


def test_ineligible_nodes_get_no_new_work() -> None:
    d = one(Snapshot(nodes=(node("a", eligible=False), node("b", state="suspect"))), req("w-0"))
    assert d.reason == "no node can take new work: 1 ineligible, 1 suspect"


def test_no_room_message_mentions_nodes_that_take_no_work() -> None:
    snap = Snapshot(nodes=(node("a", mem=1 * GiB), node("b", state="suspect")))
    d = one(snap, req("w-0", mem=2 * GiB))
    assert d.reason == (
        "no node has 2 GiB memory free; largest free: 1 GiB on a (1 suspect node takes no new work)"
    )


# -------------------------------------------------------------- constraints


LABELLED = Snapshot(
    nodes=(
        node("a", labels={"disk": "ssd", "arch": "amd64"}, zone="z1"),
        node("b", labels={"disk": "hdd", "arch": "amd64"}, zone="z2"),
        node("c", labels={"arch": "arm64"}, zone="z3"),
    )
)


@pytest.mark.parametrize(
    ("constraint", "allowed"),
    [
        (Constraint("disk", "eq", ("ssd",)), {"a"}),
        (Constraint("disk", "ne", ("ssd",)), {"b", "c"}),
        (Constraint("arch", "in", ("arm64", "riscv")), {"c"}),
        (Constraint("disk", "not_in", ("hdd",)), {"a", "c"}),
        (Constraint("disk", "exists"), {"a", "b"}),
        (Constraint("disk", "not_exists"), {"c"}),
        (Constraint("zone", "eq", ("z2",)), {"b"}),
    ],
)
def test_label_constraints(constraint: Constraint, allowed: set[str]) -> None:
    chosen = set()
    for seed in range(12):
        d = place(LABELLED, [req("w-0", constraints=(constraint,))], seed)[0]
        assert d.node_id in allowed
        chosen.add(d.node_id)
    assert chosen  # at least one placement happened


def test_constraint_parse_round_trips() -> None:
    for text in [
        "disk=ssd",
        "disk!=ssd",
        "arch in (arm64, riscv)",
        "disk not in (hdd)",
        "gpu",
        "!gpu",
    ]:
        c = Constraint.parse(text)
        assert Constraint.parse(str(c)) == c
    assert Constraint.parse("disk==ssd") == Constraint("disk", "eq", ("ssd",))
    with pytest.raises(InvalidInputError, match="write the set as"):
        Constraint.parse("disk in ssd")
    with pytest.raises(InvalidInputError):
        Constraint.parse("=ssd")


def test_constraint_message_lists_the_values_seen() -> None:
    d = one(LABELLED, req("w-0", constraints=(Constraint("disk", "eq", ("nvme",)),)))
    assert d.rule == "constraints"
    assert d.reason == (
        "no usable node matches constraint disk=nvme "
        "(3 nodes otherwise eligible; values of disk there: hdd, ssd)"
    )
    d = one(LABELLED, req("w-0", constraints=(Constraint("gpu", "exists"),)))
    assert d.reason == (
        "no usable node matches constraint gpu (3 nodes otherwise eligible; none has the label gpu)"
    )


def test_no_room_among_matching_nodes_says_so() -> None:
    d = one(LABELLED, req("w-0", mem=6 * GiB, constraints=(Constraint.parse("disk=ssd"),)))
    assert d.node_id == "a"
    d = one(LABELLED, req("w-0", mem=10 * GiB, constraints=(Constraint.parse("disk=ssd"),)))
    assert d.reason == (
        "no node among the 1 nodes matching disk=ssd has 10 GiB memory free; "
        "largest free: 8 GiB on a"
    )


# ------------------------------------------------------------ anti-affinity


def test_distinct_nodes_is_hard_and_explained() -> None:
    snap = Snapshot(nodes=(node("a"), node("b")))
    ds = place(snap, [req(f"w-{i}", distinct_nodes=True) for i in range(3)], 1)
    assert sorted(d.node_id or "-" for d in ds[:2]) == ["a", "b"]
    assert ds[2].rule == "distinct_nodes"
    assert ds[2].reason == (
        "all 2 nodes with room already run a replica of w (distinct_nodes); "
        "add nodes or allow two replicas on one node"
    )


def test_soft_anti_affinity_spreads_replicas_over_nodes_and_zones() -> None:
    snap = Snapshot(nodes=tuple(node(f"n{i}", zone=f"z{i % 3}") for i in range(6)))
    ds = place(snap, [req(f"w-{i}") for i in range(6)], 3)
    assert len({d.node_id for d in ds}) == 6
    ds = place(snap, [req(f"w-{i}") for i in range(3)], 3)
    zones = {int((d.node_id or "n0")[1:]) % 3 for d in ds}
    assert zones == {0, 1, 2}


def test_spread_with_max_skew_blocks_and_explains() -> None:
    snap = Snapshot(
        nodes=(
            node("a1", zone="a"),
            node("a2", zone="a"),
            node("b1", zone="b", mem=1 * GiB),
        )
    )
    ds = place(snap, [req(f"w-{i}", mem=1 * GiB, spread_by="zone") for i in range(4)], 5)
    placed = [d.node_id for d in ds]
    assert "b1" in placed[:2]  # the first two go one per zone
    assert placed[2] in ("a1", "a2")  # a: 2, b: 1 is within max_skew 1
    assert placed[3] is None and ds[3].rule == "spread"
    assert ds[3].reason == (
        "one more replica of w would exceed max_skew 1 over zone for w "
        "(replicas per zone: a: 2, b: 1); "
        "the emptiest (b) has no node with room: free room there or raise max_skew"
    )
    # max_skew 2 lets the fourth go to zone a too.
    ds = place(
        snap, [req(f"w-{i}", mem=1 * GiB, spread_by="zone", max_skew=2) for i in range(4)], 5
    )
    assert all(d.placed for d in ds)


def test_spread_over_a_label_no_node_has_says_so() -> None:
    snap = Snapshot(nodes=(node("n1"), node("n2")))
    ds = place(snap, [req("w-0", spread_by="zone"), req("w-1", spread_by="rack")], 5)
    assert [d.node_id for d in ds] == [None, None]
    assert ds[0].rule == "spread"
    assert ds[0].reason == (
        "w spreads over zone (spread_by), but none of the 2 nodes with room has a zone: "
        "give nodes one (hypha agent --zone) or remove spread_by"
    )
    assert ds[1].reason.endswith("(hypha agent --label rack=VALUE) or remove spread_by")


def test_spread_counts_existing_placements() -> None:
    snap = Snapshot(
        nodes=(node("a1", zone="a"), node("b1", zone="b")),
        placements=(
            Placement(replica_id="w-0", workload="w", node_id="a1", resources=Resources()),
        ),
    )
    d = place(snap, [req("w-1", spread_by="zone")], 1)[0]
    assert d.node_id == "b1"


# ------------------------------------------------------------------ scoring


def test_credit_steers_work_to_the_richer_node() -> None:
    snap = Snapshot(nodes=(node("poor", credit=-5000), node("rich", credit=5000)))
    assert one(snap, req("w-0")).node_id == "rich"
    # with credit weight 0 the two are equal and the seeded tie-break decides
    picks = {
        place(snap, [req("w-0")], s, strategy="mycelial-nocredit")[0].node_id for s in range(20)
    }
    assert picks == {"poor", "rich"}


def test_spread_and_pack() -> None:
    snap = Snapshot(nodes=(node("busy", allocated=Resources(2000, 4 * GiB, 0)), node("idle")))
    assert one(snap, req("w-0")).node_id == "idle"
    packed = place(snap, [req("w-0")], 7, config=SchedulerConfig(pack=True))[0]
    assert packed.node_id == "busy"


def test_balance_prefers_the_node_the_request_evens_out() -> None:
    snap = Snapshot(
        nodes=(
            node("cpu-heavy", allocated=Resources(3000, 0, 0)),
            node("mem-heavy", allocated=Resources(0, 6 * GiB, 0)),
        )
    )
    cfg = SchedulerConfig(fit_weight=0, credit_weight=0)
    d = place(snap, [req("w-0", cpu=2000, mem=0)], 1, config=cfg)[0]
    assert d.node_id == "mem-heavy"


def test_seeded_tie_break_is_stable_and_varies_with_seed() -> None:
    snap = Snapshot(nodes=tuple(node(f"n{i}") for i in range(8)))
    a = [place(snap, [req("w-0")], s)[0].node_id for s in range(30)]
    b = [place(snap, [req("w-0")], s)[0].node_id for s in range(30)]
    assert a == b
    assert len(set(a)) > 3


def test_sampling_above_the_threshold_still_finds_the_last_free_node() -> None:
    nodes = [node(f"n{i:03}", allocated=Resources(4000, 0, 0)) for i in range(300)]
    nodes.append(node("zz-free"))
    cfg = SchedulerConfig(sample_threshold=16)
    for strategy in STRATEGIES:
        d = place(Snapshot(nodes=tuple(nodes)), [req("w-0")], 3, strategy=strategy, config=cfg)[0]
        assert d.node_id == "zz-free", strategy


def test_headroom_keeps_a_small_node_from_being_filled_when_a_big_one_has_room() -> None:
    # The empty 4-core node is the least allocated, so fit alone picks it and the
    # 4-core replica fills it to 100%. The headroom term charges that 2000 and sends
    # the replica to the 16-core node, which it takes from 60% to 85%.
    small = node("small", cpu=4000, mem=8 * GiB)
    big = node("big", cpu=16000, mem=32 * GiB, allocated=Resources(9600, 19 * GiB, 0))
    snap = Snapshot(nodes=(small, big))
    r = req("w-0", cpu=4000, mem=2 * GiB)
    assert one(snap, r).node_id == "big"
    off = SchedulerConfig(high_water=1000)
    assert place(snap, [r], 7, config=off)[0].node_id == "small"
    e = explain(snap, r, 7)
    parts = {c.node_id: c for c in e.candidates}
    assert parts["small"].headroom == -2000 and parts["big"].headroom == 0
    assert "4*fit + anti-affinity + headroom" in str(e)


def test_sampling_also_scores_the_least_allocated_nodes() -> None:
    # 600 nodes at 75% and one empty: a sample of 2 almost never draws it, the
    # least-allocated index always offers it.
    nodes = [node(f"n{i:03}", allocated=Resources(3000, 6 * GiB, 0)) for i in range(600)]
    nodes.append(node("zz-empty"))
    snap = Snapshot(nodes=tuple(nodes))
    cfg = SchedulerConfig(sample_threshold=16, sample=2, second_look=0)
    with_index = [place(snap, [req("w-0")], s, config=cfg)[0].node_id for s in range(20)]
    assert with_index == ["zz-empty"] * 20
    blind = cfg.with_(index_candidates=0)
    without = [place(snap, [req("w-0")], s, config=blind)[0].node_id for s in range(20)]
    assert without.count("zz-empty") < 5


def test_the_least_allocated_index_offers_each_node_once_in_order() -> None:
    # A replica too small to move a node's utilisation by one per mille leaves the
    # node where it was in the index; it must still be offered once, not twice.
    snap = Snapshot(
        nodes=(
            node("a"),
            node("b", allocated=Resources(1000, 2 * GiB, 10)),
            node("c", allocated=Resources(2000, 4 * GiB, 10)),
            node("full", allocated=Resources(5000, 2 * GiB, 10)),  # over-committed
        )
    )
    planner = Planner(snap, 1, strategy="least-loaded")
    tiny = req("t-0", cpu=1, mem=1, pids=0)
    for i in range(3):
        planner.commit(req(f"t-{i}", cpu=1, mem=1, pids=0), planner.index["a"])
    offered = planner._least_allocated(tiny, None, want=4, limit=64)
    assert [planner.ids[i] for i in offered] == ["a", "b", "c"]
    assert planner._least_allocated(tiny, None, want=4, limit=2) == offered[:2]


def test_a_second_look_before_filling_a_node_past_the_high_water_mark() -> None:
    # 270 nodes where the replica would end at 95%, 30 where it would end at 62%;
    # no least-allocated index. One sample of 2 misses the roomy nodes about 80%
    # of the time; the second look (8 more) rarely does.
    nodes = [node(f"f{i:03}", allocated=Resources(3300, 6 * GiB, 0)) for i in range(270)]
    nodes += [node(f"r{i:03}", allocated=Resources(2000, 4 * GiB, 0)) for i in range(30)]
    snap = Snapshot(nodes=tuple(nodes))
    cfg = SchedulerConfig(sample_threshold=16, sample=2, index_candidates=0)
    r = req("w-0", cpu=500)

    def roomy(config: SchedulerConfig) -> int:
        picks = [place(snap, [r], s, config=config)[0].node_id for s in range(100)]
        return sum(1 for p in picks if p and p.startswith("r"))

    assert roomy(cfg.with_(second_look=0)) < 40
    assert roomy(cfg) > 45


# ---------------------------------------------------------------- tenants


def test_tenant_cap_blocks_and_explains() -> None:
    snap = Snapshot(
        nodes=(node("a", cpu=16000, mem=64 * GiB),),
        tenants={"acme": TenantPolicy(weight=1, cap=Resources(1000, 64 * GiB, 1000))},
    )
    ds = place(snap, [req(f"w-{i}", tenant="acme") for i in range(3)], 1)
    assert [d.placed for d in ds] == [True, True, False]
    assert ds[2].rule == "tenant_cap"
    assert ds[2].reason == (
        "tenant 'acme' is at its cap: w-2 needs 500m cpu but the tenant already holds "
        "1 core of its 1 core cpu cap"
    )


def test_under_share_tenants_go_first() -> None:
    snap = Snapshot(
        nodes=(node("a", cpu=2000, mem=64 * GiB),),
        tenants={"big": TenantPolicy(weight=3), "small": TenantPolicy(weight=1)},
    )
    requests = [req(f"s-{i}", tenant="small") for i in range(4)]
    requests += [req(f"b-{i}", tenant="big") for i in range(4)]
    ds = place(snap, requests, 1)
    placed = {d.replica_id for d in ds if d.placed}
    assert sum(r.startswith("b-") for r in placed) == 3
    assert sum(r.startswith("s-") for r in placed) == 1


def test_priority_orders_requests_within_a_tenant() -> None:
    snap = Snapshot(nodes=(node("a", cpu=1000),))
    ds = place(snap, [req("lo-0"), req("hi-0", priority=5), req("mid-0", priority=1)], 1)
    assert {d.replica_id for d in ds if d.placed} == {"hi-0", "mid-0"}
    assert [d.replica_id for d in ds] == ["lo-0", "hi-0", "mid-0"]


def _small_then_big() -> tuple[Snapshot, list[PlacementRequest]]:
    # "a" is empty, "b" has a quarter taken: the small request alone would go to "a"
    # (least allocated), after which the big one fits nowhere.
    snap = Snapshot(
        nodes=(node("a"), node("b", allocated=Resources(1000, 2 * GiB, 10))),
    )
    return snap, [req("small-0", cpu=1000, mem=1 * GiB), req("big-0", cpu=4000, mem=4 * GiB)]


def test_a_batch_is_decided_largest_first() -> None:
    snap, requests = _small_then_big()
    ds = place(snap, requests, 1)
    assert [(d.replica_id, d.node_id) for d in ds] == [("small-0", "b"), ("big-0", "a")]


def test_request_order_strands_the_big_request_that_largest_first_places() -> None:
    snap, requests = _small_then_big()
    in_order = SchedulerConfig(largest_first=False)
    ds = place(snap, requests, 1, config=in_order)
    assert [(d.replica_id, d.node_id) for d in ds] == [("small-0", "a"), ("big-0", None)]
    # The baselines are online: least-loaded takes "a" for the small one, as above.
    ds = place(snap, requests, 1, strategy="least-loaded")
    assert [(d.replica_id, d.node_id) for d in ds] == [("small-0", "a"), ("big-0", None)]


def test_priority_outranks_size() -> None:
    snap, requests = _small_then_big()
    requests[0] = req("small-0", cpu=1000, mem=1 * GiB, priority=1)
    ds = place(snap, requests, 1)
    assert [(d.replica_id, d.node_id) for d in ds] == [("small-0", "a"), ("big-0", None)]


# ---------------------------------------------------------- reschedule


def _cluster_with_replicas() -> Snapshot:
    nodes = [
        node(f"n{i}", zone=f"z{i % 2}", allocated=Resources(1000, 1 * GiB, 20)) for i in range(4)
    ]
    placements = []
    for i in range(4):
        for k in range(2):
            placements.append(
                Placement(
                    replica_id=f"w{k}-{i}",
                    workload=f"w{k}",
                    node_id=f"n{i}",
                    resources=Resources(500, 512 * MiB, 10),
                )
            )
    return Snapshot(nodes=tuple(nodes), placements=tuple(placements))


def test_reschedule_moves_only_the_lost_nodes_replicas() -> None:
    snap = _cluster_with_replicas()
    moves = reschedule(snap, ["n1"], 1)
    assert [m.replica_id for m in moves] == ["w0-1", "w1-1"]
    assert all(m.from_node == "n1" and m.to_node not in (None, "n1") for m in moves)


def test_reschedule_moves_draining_and_dead_but_not_suspect() -> None:
    snap = _cluster_with_replicas()
    nodes = list(snap.nodes)
    nodes[0] = node("n0", zone="z0", state="draining", allocated=nodes[0].allocated)
    nodes[1] = node("n1", zone="z1", state="dead", allocated=nodes[1].allocated)
    nodes[2] = node("n2", zone="z0", state="suspect", allocated=nodes[2].allocated)
    moves = reschedule(snap.with_nodes(nodes), [], 1)
    assert {m.from_node for m in moves} == {"n0", "n1"}
    assert {m.to_node for m in moves} == {"n3"}


def test_reschedule_pauses_on_mass_failure() -> None:
    snap = _cluster_with_replicas()
    with pytest.raises(ReschedulePaused, match=r"3 of 4 nodes lost at once .* partition") as info:
        reschedule(snap, ["n0", "n1", "n2"], 1)
    assert info.value.lost == 3 and info.value.total == 4
    # a configured higher threshold lets it through
    moves = reschedule(snap, ["n0", "n1", "n2"], 1, config=SchedulerConfig(max_lost_fraction=0.9))
    assert {m.to_node for m in moves} == {"n3"}


def test_reschedule_reports_replicas_with_nowhere_to_go() -> None:
    snap = Snapshot(
        nodes=(node("a"), node("b", mem=256 * MiB)),
        placements=(
            Placement(replica_id="w-0", workload="w", node_id="a", resources=Resources(0, GiB, 0)),
        ),
    )
    (move,) = reschedule(snap, ["a"], 1)
    assert move.to_node is None and move.rule == "resources"
    assert move.reason == (
        "no node has 1 GiB memory free; largest free: 256 MiB on b (1 lost node takes no new work)"
    )


def test_reschedule_keeps_constraints_when_given_requests() -> None:
    snap = Snapshot(
        nodes=(node("a", labels={"disk": "ssd"}), node("b"), node("c", labels={"disk": "ssd"})),
        placements=(
            Placement(replica_id="w-0", workload="w", node_id="a", resources=Resources(1, 1, 1)),
        ),
    )
    full = req("w-0", constraints=(Constraint.parse("disk=ssd"),))
    for seed in range(10):
        (move,) = reschedule(snap, ["a"], seed, requests={"w-0": full})
        assert move.to_node == "c"


# ------------------------------------------------------------- explain


def test_explain_where_and_why() -> None:
    snap = Snapshot(nodes=(node("a", credit=100), node("b", state="suspect"), node("c")))
    e = explain(snap, req("w-0"), 7)
    assert e.node_id == one(snap, req("w-0")).node_id
    assert e.feasible == 2 and e.rejected == {"suspect": 1}
    assert e.candidates[0].node_id == "a"
    text = str(e)
    assert text.startswith("w-0 would go on a (mycelial; 2 of 3 nodes can take it")
    assert e.to_dict()["candidates"][0]["node_id"] == "a"


def test_explain_lists_tied_candidates_in_the_order_the_scorer_breaks_ties() -> None:
    snap = Snapshot(nodes=tuple(node(f"n{i}") for i in range(6)))
    for seed in range(20):
        e = explain(snap, req("w-0"), seed)
        assert len({c.total for c in e.candidates}) == 1
        assert e.candidates[0].node_id == e.node_id == one_seeded(snap, req("w-0"), seed)


def one_seeded(snapshot: Snapshot, request: PlacementRequest, seed: int) -> str | None:
    return place(snapshot, [request], seed)[0].node_id


def test_explain_says_what_would_make_it_fit() -> None:
    snap = Snapshot(nodes=(node("n3", mem=6 * GiB), node("n4", mem=8 * GiB, state="suspect")))
    e = explain(snap, req("w-0", mem=8 * GiB))
    assert e.node_id is None and e.rule == "resources"
    assert e.suggestions[0].startswith("ask for at most 4 cores, 6 GiB memory, 1000 pids")
    assert "free 2 GiB memory on n3" in e.suggestions[0]
    assert any("suspect node(s) would have room" in s for s in e.suggestions)
    assert "hint: add a node with at least" in str(e)


# ---------------------------------------------------------- bad input


def test_bad_input_gets_clear_errors() -> None:
    with pytest.raises(InvalidInputError, match="cpu_millicores must be >= 0"):
        Resources(-1)
    with pytest.raises(InvalidInputError, match="state must be one of"):
        node("a", state="zombie")
    with pytest.raises(InvalidInputError, match="lists node 'a' twice"):
        Snapshot(nodes=(node("a"), node("a")))
    with pytest.raises(InvalidInputError, match="unknown strategy 'fastest'"):
        place(Snapshot(nodes=()), [], 1, strategy="fastest")
    with pytest.raises(InvalidInputError, match="max_skew must be >= 1"):
        req("w-0", max_skew=0)
    with pytest.raises(InvalidInputError, match="needs exactly one value"):
        Constraint("disk", "eq", ("a", "b"))
    with pytest.raises(InvalidInputError, match="largest_first must be a bool"):
        SchedulerConfig(largest_first=1)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="seed must be an int"):
        place(Snapshot(nodes=()), [], "x")  # type: ignore[arg-type]


def test_duplicates_are_refused_per_request() -> None:
    snap = Snapshot(
        nodes=(node("a"),),
        placements=(Placement(replica_id="w-0", workload="w", node_id="a", resources=Resources()),),
    )
    ds = place(snap, [req("w-0"), req("w-1"), req("w-1")], 1)
    assert ds[0].rule == "duplicate" and ds[0].reason == "replica w-0 is already placed on a"
    assert ds[1].placed
    assert ds[2].reason == "replica w-1 is listed twice in this batch"
