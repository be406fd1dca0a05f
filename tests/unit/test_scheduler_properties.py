"""Property tests (hypothesis) for the scheduler's invariants."""

from __future__ import annotations

from collections import Counter, defaultdict
from fractions import Fraction

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler import (
    STRATEGIES,
    NodeInfo,
    Placement,
    PlacementRequest,
    Resources,
    SchedulerConfig,
    Snapshot,
    TenantPolicy,
    epoch,
    exchange,
    overlay,
    place,
    reschedule,
)
from scheduler.credits import decay, income

GiB = 1 << 30
PROFILE = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Small thresholds so the sampled path and its fall-back scan run too.
CONFIGS = [SchedulerConfig(), SchedulerConfig(sample_threshold=2, sample=2)]

resources_st = st.builds(
    Resources,
    st.integers(0, 4000),
    st.integers(0, 8 * GiB),
    st.integers(0, 200),
)


@st.composite
def clusters(
    draw: st.DrawFn, *, states: tuple[str, ...] = ("alive", "suspect", "dead", "draining")
) -> Snapshot:
    count = draw(st.integers(1, 10))
    nodes = []
    placements = []
    for i in range(count):
        cap = Resources(
            draw(st.sampled_from([2000, 4000, 8000, 16000])),
            draw(st.sampled_from([4, 8, 16, 32])) * GiB,
            draw(st.sampled_from([100, 1000])),
        )
        used = Resources()
        for k in range(draw(st.integers(0, 3))):
            res = Resources(
                draw(st.integers(0, cap.cpu_millicores // 4)),
                draw(st.integers(0, cap.memory_bytes // 4)),
                draw(st.integers(0, cap.pids // 4)),
            )
            workload = draw(st.sampled_from(["w0", "w1", "w2"]))
            placements.append(
                Placement(
                    replica_id=f"old-{i}-{k}",
                    workload=workload,
                    node_id=f"n{i}",
                    resources=res,
                    tenant=draw(st.sampled_from(["t0", "t1"])),
                )
            )
            used = used + res
        nodes.append(
            NodeInfo(
                id=f"n{i}",
                capacity=cap,
                allocated=used,
                zone=draw(st.sampled_from(["", "z0", "z1", "z2"])),
                labels=draw(st.sampled_from([{}, {"disk": "ssd"}, {"disk": "hdd"}])),
                state=draw(st.sampled_from(states)),
                eligible=draw(st.booleans()),
                load=draw(st.none() | resources_st),
                credit=draw(st.integers(-100_000, 100_000)),
            )
        )
    return Snapshot(nodes=tuple(nodes), placements=tuple(placements))


@st.composite
def request_lists(draw: st.DrawFn) -> list[PlacementRequest]:
    out = []
    for i in range(draw(st.integers(0, 16))):
        workload = draw(st.sampled_from(["w0", "w1", "w2", "w3"]))
        out.append(
            PlacementRequest(
                replica_id=f"{workload}-new{i}",
                workload=workload,
                resources=draw(resources_st),
                tenant=draw(st.sampled_from(["t0", "t1", "t2"])),
                distinct_nodes=draw(st.booleans()),
                spread_by=draw(st.sampled_from([None, None, "zone", "disk"])),
                max_skew=draw(st.integers(1, 2)),
                priority=draw(st.integers(0, 2)),
            )
        )
    return out


@PROFILE
@given(
    snap=clusters(),
    requests=request_lists(),
    seed=st.integers(0, 2**32),
    strategy=st.sampled_from(STRATEGIES),
    config=st.sampled_from(CONFIGS),
)
def test_capacity_is_never_exceeded_and_unusable_nodes_get_nothing(
    snap: Snapshot,
    requests: list[PlacementRequest],
    seed: int,
    strategy: str,
    config: SchedulerConfig,
) -> None:
    decisions = place(snap, requests, seed, strategy=strategy, config=config)
    assert [d.replica_id for d in decisions] == [r.replica_id for r in requests]
    by_id = {n.id: n for n in snap.nodes}
    added: dict[str, Resources] = defaultdict(Resources)
    for request, decision in zip(requests, decisions, strict=True):
        if decision.node_id is None:
            assert decision.reason and decision.rule
            continue
        node = by_id[decision.node_id]
        assert node.state == "alive" and node.eligible
        added[node.id] = added[node.id] + request.resources
    for node_id, extra in added.items():
        node = by_id[node_id]
        total = node.allocated + extra
        # Growth never pushes a resource past capacity (a node already over stays put).
        assert total.fits_in(node.capacity)


@PROFILE
@given(
    snap=clusters(),
    requests=request_lists(),
    seed=st.integers(0, 2**32),
    strategy=st.sampled_from(STRATEGIES),
    config=st.sampled_from(CONFIGS),
    data=st.data(),
)
def test_same_output_under_any_node_order_and_across_runs(
    snap: Snapshot,
    requests: list[PlacementRequest],
    seed: int,
    strategy: str,
    config: SchedulerConfig,
    data: st.DataObject,
) -> None:
    shuffled = snap.with_nodes(data.draw(st.permutations(snap.nodes)))
    first = place(snap, requests, seed, strategy=strategy, config=config)
    assert place(shuffled, requests, seed, strategy=strategy, config=config) == first
    assert place(snap, requests, seed, strategy=strategy, config=config) == first
    assert epoch(shuffled) == epoch(snap)


@PROFILE
@given(
    balances=st.lists(st.integers(-(10**9), 10**9), min_size=1, max_size=30),
    rounds=st.integers(0, 6),
    rate=st.integers(0, 1000),
    weighted=st.booleans(),
    data=st.data(),
)
def test_exchange_conserves_the_total_and_narrows_density(
    balances: list[int], rounds: int, rate: int, weighted: bool, data: st.DataObject
) -> None:
    names = [f"n{i}" for i in range(len(balances))]
    pairs = [(a, b) for a in names for b in names if a < b]
    edges = data.draw(st.lists(st.sampled_from(pairs), unique=True) if pairs else st.just([]))
    caps = {
        name: data.draw(st.sampled_from([1, 4000, 8000, 64000])) if weighted else 1
        for name in names
    }
    before = dict(zip(names, balances, strict=True))
    after = exchange(before, sorted(edges), rounds=rounds, rate=rate, capacities=caps)
    assert sum(after.values()) == sum(before.values())
    # Exchange only narrows the spread of credit per unit of capacity.
    density_before = [Fraction(before[n], caps[n]) for n in names]
    density_after = [Fraction(after[n], caps[n]) for n in names]
    assert max(density_after) <= max(density_before)
    assert min(density_after) >= min(density_before)


@PROFILE
@given(snap=clusters())
def test_epoch_is_decay_plus_income_with_exchange_conserving(snap: Snapshot) -> None:
    config = SchedulerConfig()
    after = epoch(snap, config=config)
    expected = sum(decay(n.credit, config.decay_shift) + income(n, config) for n in snap.nodes)
    assert sum(after.values()) == expected
    for a, b in overlay(snap.nodes):
        assert a < b


@PROFILE
@given(
    snap=clusters(states=("alive",)),
    replicas=st.integers(1, 10),
    seed=st.integers(0, 2**32),
    strategy=st.sampled_from(STRATEGIES),
    config=st.sampled_from(CONFIGS),
)
def test_anti_affinity_holds_whenever_it_is_satisfiable(
    snap: Snapshot, replicas: int, seed: int, strategy: str, config: SchedulerConfig
) -> None:
    small = Resources(1, 1, 0)
    usable = [n for n in snap.nodes if n.eligible and small.fits_in(n.free)]
    requests = [
        PlacementRequest(replica_id=f"aa-{i}", workload="aa", resources=small, distinct_nodes=True)
        for i in range(replicas)
    ]
    decisions = place(snap, requests, seed, strategy=strategy, config=config)
    chosen = [d.node_id for d in decisions if d.node_id is not None]
    assert len(chosen) == len(set(chosen))
    assert len(chosen) == min(replicas, len(usable))


@PROFILE
@given(
    snap=clusters(states=("alive", "suspect")),
    seed=st.integers(0, 2**32),
    strategy=st.sampled_from(STRATEGIES),
    data=st.data(),
)
def test_after_one_node_dies_exactly_its_replicas_move(
    snap: Snapshot, seed: int, strategy: str, data: st.DataObject
) -> None:
    victim = data.draw(st.sampled_from([n.id for n in snap.nodes]))
    moves = reschedule(snap, [victim], seed, strategy=strategy)
    expected = sorted(p.replica_id for p in snap.placements if p.node_id == victim)
    assert [m.replica_id for m in moves] == expected
    alive = {n.id for n in snap.nodes if n.state == "alive" and n.eligible}
    for move in moves:
        assert move.from_node == victim
        assert move.to_node is None or (move.to_node in alive and move.to_node != victim)


@PROFILE
@given(
    weights=st.lists(st.integers(1, 4), min_size=2, max_size=4),
    nodes=st.integers(1, 6),
    seed=st.integers(0, 2**32),
    strategy=st.sampled_from(STRATEGIES),
)
def test_tenant_shares_track_their_weights(
    weights: list[int], nodes: int, seed: int, strategy: str
) -> None:
    unit = Resources(100, 1 << 20, 1)
    snap = Snapshot(
        nodes=tuple(
            NodeInfo(id=f"n{i}", capacity=Resources(1000, 10 << 20, 100)) for i in range(nodes)
        ),
        tenants={f"t{k}": TenantPolicy(weight=w) for k, w in enumerate(weights)},
    )
    slots = nodes * 10
    requests = [
        PlacementRequest(replica_id=f"t{k}-{i}", workload=f"t{k}", resources=unit, tenant=f"t{k}")
        for k in range(len(weights))
        for i in range(slots)  # every tenant alone could fill the cluster
    ]
    decisions = place(snap, requests, seed, strategy=strategy)
    placed = Counter(d.replica_id.split("-")[0] for d in decisions if d.placed)
    assert sum(placed.values()) == slots
    floor = min(placed[f"t{k}"] / w for k, w in enumerate(weights))
    for k, w in enumerate(weights):
        # within one replica of its weighted share
        assert placed[f"t{k}"] <= w * floor + 1
