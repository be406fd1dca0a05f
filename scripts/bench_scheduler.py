"""Benchmark of the mycelial scheduler against its baselines (run via scripts/bench-scheduler).

Everything is seeded: the same arguments print the same decision hashes. Only
the timings (placements/s, latencies) vary with the machine.

Model. Nodes are homogeneous (16 cores, 64 GiB) or mixed (4-64 cores, 2-8 GiB
per core) in 4 zones. Workloads of 10 replicas with mixed shapes (a quarter to
4 cores, 1-8 GiB per core) arrive in ``epochs`` equal batches; 30% ask for
distinct nodes, 10% for zone spread (max_skew 1); four tenants with weights
1, 1, 2, 4. Request sizes are scaled so that the total demand of the scarcer
cluster resource is the target utilisation. A replica actually uses 30-100% of
its request, and a moving quarter of the nodes runs background work Hypha did
not place (30-50% of cpu and memory, for 4 of every 12 epochs): allocations
cannot see it, observed load can. After each batch the bench computes
``epoch()`` from the nodes' allocations and observed load; the scheduler sees
the balances from ``lag`` epochs before (0 = the last epoch's). Baselines and
the credit-free scorer never read credit, so they run once per lag-free setting.

Timings are CPU time of the benchmark's thread (``time.thread_time``), so that
other processes on a shared machine inflate them less (a busy sibling
hyperthread still slows a run down); up to 1k nodes each row is run three
times (``--repeat``) and the fastest timing is kept, the decisions being
identical (checked by hash). Wall time is printed at the end.

Metrics: placements/s over the whole run (index build, credit refresh and
every decision); p50/p99 of single decisions; fail% (requests not placed); mean util
(mean per-node dominant utilisation of allocations: with the same demand, lower
means cpu-heavy and memory-heavy replicas share nodes better); imbalance of
per-node dominant utilisation of allocations (max/mean and coefficient of
variation); hot% (node-epochs where real use incl. background exceeds 90% of
cpu or memory); strand% (free cpu on nodes without the smallest request's
memory, and free memory on nodes without its cpu, as a share of capacity, the
larger of the two); AA (hard anti-affinity violations) and co-loc% (replicas of
soft workloads sharing a node with a sibling); Jain (Jain's index over tenants
of the placed fraction of their demand); churn after losing 1 node, 1% of nodes
and a zone (replicas moved / replicas lost; rehomed% = moved somewhere).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from scheduler import (
    DEFAULT_CONFIG,
    STRATEGIES,
    NodeInfo,
    Placement,
    PlacementRequest,
    Planner,
    ReschedulePaused,
    Resources,
    SchedulerConfig,
    Snapshot,
    TenantPolicy,
    epoch,
    reschedule,
)
from scheduler._hash import mix64, stable_hash

GiB = 1 << 30
ZONES = 4
TENANTS = {"t0": 1, "t1": 1, "t2": 2, "t3": 4}
CREDIT_STRATEGIES = ("mycelial",)


@dataclass(frozen=True)
class Scenario:
    nodes: int
    replicas: int
    sizes: str
    util: float
    lag: int
    epochs: int = 10


@dataclass
class Result:
    scenario: Scenario
    strategy: str
    per_second: float
    p50_us: float
    p99_us: float
    failed: float
    max_mean: float
    cv: float
    hot: float
    stranded: float
    aa_violations: int
    colocated: float
    jain: float
    churn: dict[str, str] = field(default_factory=dict)
    digest: str = ""
    mean_util: float = 0.0


def make_nodes(count: int, sizes: str, seed: int) -> list[NodeInfo]:
    nodes = []
    for i in range(count):
        h = stable_hash(seed, "node-shape", i)
        if sizes == "homogeneous":
            cores, per_core = 16, 4
        else:
            cores = (4, 8, 16, 16, 32, 64)[h % 6]
            per_core = (2, 4, 4, 8)[(h >> 8) % 4]
        nodes.append(
            NodeInfo(
                id=f"n{i:05d}",
                capacity=Resources(cores * 1000, cores * per_core * GiB, 256 * cores),
                zone=f"z{(h >> 16) % ZONES}",
                labels={"rack": f"r{(h >> 24) % 32}"},
            )
        )
    return nodes


def make_requests(
    count: int, nodes: Sequence[NodeInfo], util: float, seed: int
) -> list[PlacementRequest]:
    shapes = []
    for w in range((count + 9) // 10):
        h = stable_hash(seed, "workload", w)
        cpu = (250, 500, 1000, 1000, 2000, 4000)[h % 6]
        mem = cpu * (1, 2, 4, 4, 8)[(h >> 8) % 5] * GiB // 1000
        pids = 16 + (h >> 16) % 112
        shapes.append((w, cpu, mem, pids, h))
    total_cpu = sum(10 * s[1] for s in shapes)
    total_mem = sum(10 * s[2] for s in shapes)
    cap_cpu = sum(n.capacity.cpu_millicores for n in nodes)
    cap_mem = sum(n.capacity.memory_bytes for n in nodes)
    scale = util * min(cap_cpu / total_cpu, cap_mem / total_mem)
    order = sorted(shapes, key=lambda s: mix64(s[4]))
    tenants = sorted(TENANTS)
    out: list[PlacementRequest] = []
    for w, cpu, mem, pids, h in order:
        kind = (h >> 24) % 10
        for k in range(10):
            if len(out) == count:
                break
            out.append(
                PlacementRequest(
                    replica_id=f"w{w}-{k}",
                    workload=f"w{w}",
                    tenant=tenants[w % len(tenants)],
                    resources=Resources(max(1, int(cpu * scale)), max(1, int(mem * scale)), pids),
                    distinct_nodes=kind < 3,
                    spread_by="zone" if kind == 3 else None,
                )
            )
    return out


def usage_factor(replica_id: str) -> int:
    """What a replica really uses, per mille of its request (30-100%)."""
    return 300 + stable_hash("use", replica_id) % 701


def background(node: NodeInfo, epoch_no: int) -> tuple[int, int]:
    """Work on the node that Hypha did not place: (cpu, memory), moving over time."""
    h = stable_hash("background", node.id)
    if h % 4 or (epoch_no + (h >> 8)) % 12 >= 4:
        return (0, 0)
    share = 300 + (h >> 16) % 201
    return (
        node.capacity.cpu_millicores * share // 1000,
        node.capacity.memory_bytes * share // 1000,
    )


def allocated_on(planner: Planner, i: int) -> Resources:
    """What the planner has placed on its ``i``-th node so far."""
    node = planner.nodes[i]
    return Resources(
        node.capacity.cpu_millicores - planner.free_c[i],
        node.capacity.memory_bytes - planner.free_m[i],
        node.capacity.pids - planner.free_p[i],
    )


def jain(values: Sequence[float]) -> float:
    if not values or not any(values):
        return 1.0
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))


def run(
    scenario: Scenario,
    strategy: str,
    seed: int,
    *,
    churn: bool,
    config: SchedulerConfig = DEFAULT_CONFIG,
) -> Result:
    nodes = make_nodes(scenario.nodes, scenario.sizes, seed)
    requests = make_requests(scenario.replicas, nodes, scenario.util, seed)
    tenants = {name: TenantPolicy(weight=w) for name, w in TENANTS.items()}
    snapshot = Snapshot(nodes=tuple(nodes), tenants=tenants)
    n = len(nodes)
    per_batch = math.ceil(len(requests) / scenario.epochs)
    batches = [requests[i : i + per_batch] for i in range(0, len(requests), per_batch)]

    spent = 0.0
    started = time.thread_time()
    planner = Planner(snapshot, seed, strategy=strategy, config=config)
    spent += time.thread_time() - started
    by_index = planner.nodes  # sorted by id
    use_c = [0] * n
    use_m = [0] * n
    balances: list[dict[str, int]] = []
    latencies: list[float] = []
    decisions = []
    hot_node_epochs = 0
    for e, batch in enumerate(batches):
        visible = e - 1 - scenario.lag
        if visible >= 0 and strategy in CREDIT_STRATEGIES:
            started = time.thread_time()
            planner.set_credits(balances[visible])
            spent += time.thread_time() - started
        started = time.thread_time()
        got = planner.place_batch(batch, clock=time.thread_time, latencies=latencies)
        spent += time.thread_time() - started
        decisions.extend(zip(batch, got, strict=True))
        for request, decision in zip(batch, got, strict=True):
            if decision.node_id is not None:
                i = planner.index[decision.node_id]
                u = usage_factor(request.replica_id)
                use_c[i] += request.resources.cpu_millicores * u // 1000
                use_m[i] += request.resources.memory_bytes * u // 1000
        # End of epoch: what nodes observe, and the credit ledger computed from it.
        observed = []
        previous = balances[-1] if balances else {}
        with_credit = strategy in CREDIT_STRATEGIES
        for i, node in enumerate(by_index):
            bc, bm = background(node, e)
            load_c, load_m = use_c[i] + bc, use_m[i] + bm
            if load_c * 10 > node.capacity.cpu_millicores * 9 or (
                load_m * 10 > node.capacity.memory_bytes * 9
            ):
                hot_node_epochs += 1
            if not with_credit:
                continue  # only the credit ledger reads observed load
            observed.append(
                NodeInfo(
                    id=node.id,
                    capacity=node.capacity,
                    allocated=allocated_on(planner, i),
                    load=Resources(load_c, load_m, 0),
                    zone=node.zone,
                    credit=previous.get(node.id, 0),
                )
            )
        if with_credit:
            balances.append(epoch(Snapshot(nodes=tuple(observed)), config=config))

    total = len(requests)
    placed = [(r, d) for r, d in decisions if d.node_id is not None]
    failed = 1 - len(placed) / total if total else 0.0
    utils = [planner._dominant_after(i, 0, 0, 0) / 1000 for i in range(n)]
    mean = statistics.fmean(utils)
    cv = statistics.pstdev(utils) / mean if mean else 0.0
    min_c = min(r.resources.cpu_millicores for r in requests)
    min_m = min(r.resources.memory_bytes for r in requests)
    cap_c = sum(planner.cap_c)
    cap_m = sum(planner.cap_m)
    strand_c = sum(planner.free_c[i] for i in range(n) if planner.free_m[i] < min_m)
    strand_m = sum(planner.free_m[i] for i in range(n) if planner.free_c[i] < min_c)
    per_node: dict[tuple[str, str], int] = {}
    soft_total = 0
    for request, decision in placed:
        key = (request.workload, decision.node_id or "")
        per_node[key] = per_node.get(key, 0) + 1
        soft_total += not request.distinct_nodes
    distinct = {r.workload for r in requests if r.distinct_nodes}
    violations = sum(c - 1 for (w, _), c in per_node.items() if w in distinct and c > 1)
    colocated = sum(c for (w, _), c in per_node.items() if w not in distinct and c > 1)
    demand: dict[str, int] = {}
    got_by_tenant: dict[str, int] = {}
    for request in requests:
        demand[request.tenant] = demand.get(request.tenant, 0) + 1
    for request, _ in placed:
        got_by_tenant[request.tenant] = got_by_tenant.get(request.tenant, 0) + 1
    digest = hashlib.sha256(
        ";".join(f"{r.replica_id}={d.node_id}" for r, d in decisions).encode()
    ).hexdigest()[:12]
    lat = sorted(latencies)
    result = Result(
        scenario=scenario,
        strategy=strategy,
        per_second=total / spent if spent else 0.0,
        p50_us=lat[len(lat) // 2] * 1e6 if lat else 0.0,
        p99_us=lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6 if lat else 0.0,
        failed=failed,
        max_mean=max(utils) / mean if mean else 0.0,
        cv=cv,
        hot=hot_node_epochs / (n * len(batches)),
        stranded=max(strand_c / cap_c, strand_m / cap_m),
        aa_violations=violations,
        colocated=colocated / soft_total if soft_total else 0.0,
        jain=jain([got_by_tenant.get(t, 0) / demand[t] for t in sorted(demand)]),
        digest=digest,
        mean_util=mean,
    )
    if churn:
        result.churn = measure_churn(planner, placed, seed, strategy)
    return result


def measure_churn(
    planner: Planner,
    placed: Sequence[tuple[PlacementRequest, object]],
    seed: int,
    strategy: str,
) -> dict[str, str]:
    nodes = []
    for i, node in enumerate(planner.nodes):
        nodes.append(
            NodeInfo(
                id=node.id,
                capacity=node.capacity,
                allocated=allocated_on(planner, i),
                zone=node.zone,
                labels=node.labels,
            )
        )
    placements = tuple(
        Placement(
            replica_id=r.replica_id,
            workload=r.workload,
            node_id=planner.placed_on[r.replica_id],
            resources=r.resources,
            tenant=r.tenant,
        )
        for r, _ in placed
    )
    snapshot = Snapshot(nodes=tuple(nodes), placements=placements)
    ids = sorted(planner.ids, key=lambda x: stable_hash(seed, "lose", x))
    cases = {
        "1 node": ids[:1],
        "1%": ids[: max(1, len(ids) // 100)],
        "zone": [node.id for node in nodes if node.zone == "z0"],
    }
    requests = {r.replica_id: r for r, _ in placed}
    out = {}
    for name, lost in cases.items():
        lost_set = set(lost)
        on_lost = sum(1 for p in placements if p.node_id in lost_set)
        try:
            moves = reschedule(snapshot, lost, seed, strategy=strategy, requests=requests)
        except ReschedulePaused:
            out[name] = "paused"
            continue
        moved_from_elsewhere = sum(1 for m in moves if m.from_node not in lost_set)
        rehomed = sum(1 for m in moves if m.to_node is not None)
        ratio = (len(moves) + moved_from_elsewhere) / on_lost if on_lost else 1.0
        out[name] = f"{ratio:.2f} ({100 * rehomed / max(1, len(moves)):.0f}%)"
    return out


def fairness_under_overload(seed: int, strategies: Sequence[str]) -> list[tuple[str, float, str]]:
    """Four tenants (weights 1, 1, 2, 4) each asking for 35% of the cluster."""
    nodes = make_nodes(200, "homogeneous", seed)
    unit = Resources(1000, 4 * GiB, 16)
    slots = 200 * 16
    requests = [
        PlacementRequest(
            replica_id=f"{t}-{i}", workload=f"{t}-w{i // 10}", tenant=t, resources=unit
        )
        for i in range(int(slots * 0.35))
        for t in sorted(TENANTS)
    ]
    tenants = {name: TenantPolicy(weight=w) for name, w in TENANTS.items()}
    snapshot = Snapshot(nodes=tuple(nodes), tenants=tenants)
    fair = water_fill(slots, {t: int(slots * 0.35) for t in TENANTS}, TENANTS)
    rows = []
    for strategy in strategies:
        planner = Planner(snapshot, seed, strategy=strategy)
        got: dict[str, int] = {}
        for d in planner.place_batch(requests):
            if d.node_id is not None:
                tenant = d.replica_id.split("-")[0]
                got[tenant] = got.get(tenant, 0) + 1
        shares = [got.get(t, 0) / fair[t] for t in sorted(TENANTS)]
        detail = ", ".join(
            f"{t}(w{TENANTS[t]}) {got.get(t, 0)}/{fair[t]:.0f}" for t in sorted(TENANTS)
        )
        rows.append((strategy, jain(shares), detail))
    return rows


def water_fill(capacity: int, demand: dict[str, int], weights: dict[str, int]) -> dict[str, float]:
    """Weighted max-min fair shares of ``capacity`` for ``demand``."""
    share = {t: 0.0 for t in demand}
    active = set(demand)
    left = float(capacity)
    while active and left > 1e-9:
        total_w = sum(weights[t] for t in active)
        step = min((demand[t] - share[t]) / weights[t] for t in active)
        step = min(step, left / total_w)
        for t in list(active):
            share[t] += step * weights[t]
            if share[t] >= demand[t] - 1e-9:
                active.discard(t)
        left -= step * total_w
    return share


HEADER = (
    "| nodes | replicas | sizes | util | lag | strategy | placements/s | p50 us | p99 us "
    "| fail% | mean util | max/mean | CV | hot% | strand% | AA | co-loc% | Jain | churn 1 node "
    "| churn 1% | churn zone | hash |"
)


def result_to_json(r: Result) -> str:
    data = asdict(r)
    return json.dumps(data, sort_keys=True)


def result_from_json(line: str) -> Result:
    data = json.loads(line)
    data["scenario"] = Scenario(**data["scenario"])
    return Result(**data)


def load_results(paths: Sequence[Path]) -> list[Result]:
    """Results saved by ``--results`` (JSON lines), in file order; a later line for
    the same (scenario, strategy) replaces an earlier one."""
    found: dict[tuple[Scenario, str], Result] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            if line.strip():
                r = result_from_json(line)
                found[(r.scenario, r.strategy)] = r
    return list(found.values())


def grid_order(r: Result) -> tuple[object, ...]:
    s = r.scenario
    position = STRATEGIES.index(r.strategy) if r.strategy in STRATEGIES else len(STRATEGIES)
    return (s.nodes, s.replicas, s.sizes, s.util, position, s.lag)


def row(r: Result) -> str:
    s = r.scenario
    churn = [r.churn.get(k, "-") for k in ("1 node", "1%", "zone")]
    return (
        f"| {s.nodes} | {s.replicas} | {s.sizes} | {s.util:.0%} | {s.lag} | {r.strategy} "
        f"| {r.per_second:,.0f} | {r.p50_us:.0f} | {r.p99_us:.0f} | {100 * r.failed:.2f} "
        f"| {100 * r.mean_util:.1f} | {r.max_mean:.3f} | {r.cv:.3f} | {100 * r.hot:.2f} "
        f"| {100 * r.stranded:.2f} "
        f"| {r.aa_violations} | {100 * r.colocated:.1f} | {r.jain:.4f} "
        f"| {churn[0]} | {churn[1]} | {churn[2]} | {r.digest} |"
    )


def plot(results: Sequence[Result], path: Path) -> bool:
    """Imbalance (max/mean, CV), mean dominant utilisation and failed placements
    against target utilisation, lag 0, one row per (node count, node mix)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "(no plot: matplotlib is missing; install the extra: pip install -e '.[bench]')",
            file=sys.stderr,
        )
        return False
    panels = sorted({(r.scenario.nodes, r.scenario.sizes) for r in results})
    if not panels:
        return False
    fig, axes = plt.subplots(len(panels), 4, figsize=(20, 4 * len(panels)), squeeze=False)
    for row_axes, (nodes, sizes) in zip(axes, panels, strict=True):
        chosen = [
            r
            for r in results
            if r.scenario.nodes == nodes and r.scenario.sizes == sizes and r.scenario.lag == 0
        ]
        metrics = (
            ("max/mean of dominant utilisation", lambda r: r.max_mean),
            ("CV of dominant utilisation", lambda r: r.cv),
            ("mean dominant utilisation % (lower = better packed)", lambda r: 100 * r.mean_util),
            ("failed placements %", lambda r: 100 * r.failed),
        )
        for ax, (title, value) in zip(row_axes, metrics, strict=True):
            for strategy in STRATEGIES:
                rs = sorted(
                    (r for r in chosen if r.strategy == strategy), key=lambda r: r.scenario.util
                )
                if not rs:
                    continue
                style = "-o" if strategy.startswith("mycelial") else "--."
                ax.plot(
                    [100 * r.scenario.util for r in rs],
                    [value(r) for r in rs],
                    style,
                    label=strategy,
                )
            ax.set_title(f"{title}\n({nodes} nodes, {sizes}, lag 0)", fontsize=10)
            ax.set_xlabel("target utilisation %")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
    return True


def write_table(results: Sequence[Result], path: Path) -> None:
    lines = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    lines += [row(r) for r in sorted(results, key=grid_order)]
    path.write_text("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/bench-scheduler", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="the whole grid of the issue (the default; say it to be explicit)",
    )
    parser.add_argument("--quick", action="store_true", help="1k nodes / 10k replicas only")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--repeat",
        type=int,
        help="run each row this many times and report the fastest timing (the decisions "
        "must be identical); default 3 up to 1k nodes, 1 above",
    )
    parser.add_argument("--scales", help="NODESxREPLICAS list, e.g. 1000x10000,10000x100000")
    parser.add_argument("--sizes", help="homogeneous,mixed (default both)")
    parser.add_argument("--utils", help="target utilisations, e.g. 0.5,0.7,0.85,0.95")
    parser.add_argument("--lags", help="credit lags in epochs, e.g. 0,1,5")
    parser.add_argument("--study-seeds", help="seeds for the credit study (empty string skips it)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--plot", type=Path, help="write a PNG of imbalance and failures")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    parser.add_argument(
        "--results",
        type=Path,
        help="append every row as JSON to this file (to run the grid in pieces)",
    )
    parser.add_argument(
        "--replot",
        type=Path,
        nargs="+",
        metavar="RESULTS",
        help="run nothing: read --results files, print the table and the goal check, "
        "and write --plot / --markdown from them",
    )
    args = parser.parse_args(argv)
    if args.full and args.quick:
        parser.error("--full and --quick exclude each other")
    if args.replot:
        saved = load_results(args.replot)
        print(HEADER)
        print("|" + "---|" * (HEADER.count("|") - 1))
        for r in sorted(saved, key=grid_order):
            print(row(r))
        print()
        goal_check(saved)
        if args.plot and plot(saved, args.plot):
            print(f"Plot: {args.plot}")
        if args.markdown:
            write_table(saved, args.markdown)
        return 0
    strategies = [s for s in args.strategies.split(",") if s]
    for s in strategies:
        if s not in STRATEGIES:
            parser.error(f"unknown strategy {s!r}; choose from {', '.join(STRATEGIES)}")
    if args.quick:
        sizes_list = [(1000, 10_000)]
        utils = [0.5, 0.85, 0.95]
        lags = [0, 5]
        study_seeds = [1, 2, 3]
    else:
        sizes_list = [(1000, 10_000), (10_000, 100_000)]
        utils = [0.5, 0.7, 0.85, 0.95]
        lags = [0, 1, 5]
        study_seeds = [1, 2, 3, 4, 5]
    node_sizes = ["homogeneous", "mixed"]
    try:
        if args.scales:
            sizes_list = [
                (int(a), int(b)) for a, b in (x.split("x") for x in args.scales.split(","))
            ]
        if args.utils:
            utils = [float(x) for x in args.utils.split(",")]
        if args.lags:
            lags = [int(x) for x in args.lags.split(",")]
        if args.study_seeds is not None:
            study_seeds = [int(x) for x in args.study_seeds.split(",") if x]
    except ValueError as exc:
        parser.error(f"bad list: {exc}")
    if args.sizes:
        node_sizes = [x for x in args.sizes.split(",") if x]
        for x in node_sizes:
            if x not in ("homogeneous", "mixed"):
                parser.error(f"--sizes takes homogeneous and/or mixed, not {x!r}")
    started = time.perf_counter()
    cpu_started = time.process_time()
    print(f"# scripts/bench-scheduler {' '.join(sys.argv[1:])} (seed {args.seed})", flush=True)
    print(f"# load average at start: {load_average()}", flush=True)
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1))
    results: list[Result] = []
    for nodes, replicas in sizes_list:
        for sizes in node_sizes:
            for util in utils:
                for strategy in strategies:
                    for lag in lags if strategy in CREDIT_STRATEGIES else [0]:
                        scenario = Scenario(nodes, replicas, sizes, util, lag)
                        churn = util == 0.85 and lag == 0
                        repeats = (
                            args.repeat if args.repeat is not None else (3 if nodes <= 1000 else 1)
                        )
                        result = timed_best_of(repeats, scenario, strategy, args.seed, churn)
                        results.append(result)
                        print(row(result), flush=True)
                        if args.results:
                            with args.results.open("a") as out:
                                out.write(result_to_json(result) + "\n")
    print()
    print("Fairness under overload (200 nodes; tenants t0..t3 weights 1,1,2,4 each ask 35%):")
    print("| strategy | Jain over placed / weighted fair share | placed / fair |")
    print("|---|---|---|")
    for strategy, index, detail in fairness_under_overload(args.seed, strategies):
        print(f"| {strategy} | {index:.4f} | {detail} |")
    print()
    if study_seeds:
        credit_study(study_seeds, lags, [0.85, 0.95])
    again = run(results[0].scenario, results[0].strategy, args.seed, churn=False)
    same = "yes" if again.digest == results[0].digest else "NO"
    print(f"\nDeterminism: re-running the first row gives hash {again.digest} (same: {same})")
    print()
    goal_check(results)
    print(
        f"Total time: {time.perf_counter() - started:.0f} s wall, "
        f"{time.process_time() - cpu_started:.0f} s CPU; load average at the end: "
        f"{load_average()}"
    )
    if args.plot and plot(results, args.plot):
        print(f"Plot: {args.plot}")
    if args.markdown:
        write_table(results, args.markdown)
    return 0


def timed_best_of(
    repeats: int, scenario: Scenario, strategy: str, seed: int, churn: bool
) -> Result:
    """``run`` ``repeats`` times; the first run's metrics with the fastest run's timings.

    The runs are deterministic (their hashes must agree), so only the timings
    differ, and on a shared machine the fastest is the one least disturbed.
    """
    best = run(scenario, strategy, seed, churn=churn)
    for _ in range(max(0, repeats - 1)):
        again = run(scenario, strategy, seed, churn=False)
        if again.digest != best.digest:
            raise SystemExit(f"non-deterministic: {scenario} {strategy}")
        if again.per_second > best.per_second:
            best.per_second, best.p50_us, best.p99_us = again.per_second, again.p50_us, again.p99_us
    return best


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def goal_check(results: Sequence[Result]) -> None:
    """The issue's goals, setting by setting, for the mycelial scorer at lag 0."""
    print("Goals (mycelial, lag 0 unless said):")
    by_key = {(r.scenario, r.strategy): r for r in results}
    mine = sorted((r for r in results if r.strategy == "mycelial"), key=lambda r: grid_order(r))
    for nodes in sorted({r.scenario.nodes for r in mine}):
        rates = [r.per_second for r in mine if r.scenario.nodes == nodes]
        goal = 20_000 if nodes <= 1000 else 3_750
        p99 = max(r.p99_us for r in mine if r.scenario.nodes == nodes)
        print(
            f"* {nodes} nodes: placements/s {min(rates):,.0f}-{max(rates):,.0f} over every "
            f"setting and lag (goal >= {goal:,}: {'met' if min(rates) >= goal else 'MISSED'}); "
            f"worst p99 {p99:.0f} us"
            + (f" (goal < 5000 us: {'met' if p99 < 5000 else 'MISSED'})" if nodes >= 10_000 else "")
        )
    for r in mine:
        s = r.scenario
        if s.lag:
            continue
        ll = by_key.get((s, "least-loaded"))
        parts = []
        if ll is not None and ll.max_mean:
            mm = r.max_mean / ll.max_mean - 1
            cv = r.cv / ll.cv - 1 if ll.cv else 0.0
            parts.append(
                f"fullest node {100 * r.max_mean * r.mean_util:.1f}% vs least-loaded "
                f"{100 * ll.max_mean * ll.mean_util:.1f}%, mean {100 * r.mean_util:.1f}% vs "
                f"{100 * ll.mean_util:.1f}%"
            )
            parts.append(
                f"max/mean {r.max_mean:.3f} vs least-loaded {ll.max_mean:.3f} ({mm:+.1%}: "
                f"{'met' if mm <= 0.10 else 'MISSED'}), CV {r.cv:.3f} vs {ll.cv:.3f} "
                f"({cv:+.1%}: {'met' if cv <= 0.10 else 'MISSED'}; standard deviation "
                f"{100 * r.cv * r.mean_util:.1f} vs {100 * ll.cv * ll.mean_util:.1f} points)"
            )
        bf = by_key.get((s, "best-fit"))
        if bf is not None and s.util >= 0.95:
            parts.append(
                f"failed {100 * r.failed:.2f}% vs best-fit {100 * bf.failed:.2f}% "
                f"({'met' if r.failed <= bf.failed else 'MISSED'})"
            )
        if r.churn:
            ok = all(v.startswith("1.00") for v in r.churn.values())
            parts.append(f"churn {'1.00 everywhere' if ok else r.churn}")
        parts.append(f"AA violations {r.aa_violations}")
        print(f"* {s.nodes} {s.sizes} {s.util:.0%}: " + "; ".join(parts))


def credit_study(seeds: Sequence[int], lags: Sequence[int], utils: Sequence[float]) -> None:
    """Credit vs credit-free over several seeds (1k nodes, 10k replicas): does credit pay,
    and what does lagging load information cost it?"""
    print(
        f"Credit vs credit-free, mean over seeds {', '.join(map(str, seeds))} "
        "(1000 nodes, 10000 replicas; lower is better everywhere):"
    )
    print(
        "| sizes | util | lag | hot% credit | hot% free | CV credit | CV free "
        "| fail% credit | fail% free | seeds where credit has fewer hot nodes |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    summary: dict[int, list[float]] = {lag: [] for lag in lags}
    for sizes in ("homogeneous", "mixed"):
        for util in utils:
            free = [
                run(Scenario(1000, 10_000, sizes, util, 0), "mycelial-nocredit", s, churn=False)
                for s in seeds
            ]
            for lag in lags:
                credit = [
                    run(Scenario(1000, 10_000, sizes, util, lag), "mycelial", s, churn=False)
                    for s in seeds
                ]
                wins = sum(c.hot < f.hot for c, f in zip(credit, free, strict=True))
                ch = statistics.fmean(100 * c.hot for c in credit)
                fh = statistics.fmean(100 * f.hot for f in free)
                summary[lag].append(ch - fh)
                print(
                    f"| {sizes} | {util:.0%} | {lag} | {ch:.2f} | {fh:.2f} "
                    f"| {statistics.fmean(c.cv for c in credit):.3f} "
                    f"| {statistics.fmean(f.cv for f in free):.3f} "
                    f"| {statistics.fmean(100 * c.failed for c in credit):.2f} "
                    f"| {statistics.fmean(100 * f.failed for f in free):.2f} "
                    f"| {wins} of {len(seeds)} |",
                    flush=True,
                )
    for lag in lags:
        delta = statistics.fmean(summary[lag])
        word = "fewer" if delta < 0 else "more"
        print(
            f"lag {lag}: credit leaves {abs(delta):.2f} points {word} hot node-epochs than "
            f"the credit-free scorer on average"
        )


if __name__ == "__main__":
    sys.exit(main())
