"""``scripts/bench-consensus``: real 3-voter pysyncobj clusters on loopback, real SIGKILL.

Prints a Markdown table: leader SIGKILL -> a new leader committing (p50/p99 over
``--kills``), one workload write's commit latency (p50/p99, measured inside the
leader's process around ``await propose()``), committed placements per second in
batches, and the time to promote replicas to voters.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from agent.consensus.harness import Cluster, NodeError, NodeProcess, wait_for
from agent.consensus.raft import RaftTimings
from agent.consensus.state import PutWorkload


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def three_voters(cluster: Cluster) -> list[NodeProcess]:
    first = cluster.add(bootstrap=True)
    cluster.leader()
    others = [cluster.add(join=[first.addr]) for _ in range(2)]
    cluster.set_membership()
    nodes = [first, *others]
    wait_for(lambda: all(n.status()["role"] == "voter" for n in nodes), 60, "three voters")
    return nodes


def healthy(cluster: Cluster, voters: int = 3) -> bool:
    """Leader ready, every other voter connected and caught up."""
    leader = cluster.leader(timeout=30)
    status = leader.status()
    match = status.get("match_index", {})
    return len(status.get("connected_voters", [])) == voters - 1 and all(
        match.get(a, 0) >= status["commit_index"] - 1 for a in status["connected_voters"]
    )


def first_commit_after(cluster: Cluster, marker: int, timeout: float = 30.0) -> float:
    """Poll every live node with a tiny write until one commits; return when it did."""
    deadline = time.monotonic() + timeout
    wire = PutWorkload({"name": "probe", "replicas": 1, "kill": marker}).to_wire()
    while time.monotonic() < deadline:
        for node in cluster.live():
            try:
                answer = node.request("propose", timeout=5, wire=wire, deadline=0.3)
            except (TimeoutError, NodeError):
                continue
            if "result" in answer:
                return time.monotonic()
        time.sleep(0.005)
    raise TimeoutError("no new leader committed")


def bench_failover(root: Path, kills: int) -> list[float]:
    cluster = Cluster(root)
    try:
        three_voters(cluster)
        samples = []
        for k in range(kills):
            wait_for(lambda: healthy(cluster), 60, "a healthy cluster")
            leader = cluster.leader()
            start = time.monotonic()
            leader.kill()
            samples.append(first_commit_after(cluster, k) - start)
            cluster.restart(leader.addr)
            print(f"  kill {k + 1}/{kills}: {samples[-1] * 1000:.0f} ms", file=sys.stderr)
        return samples
    finally:
        cluster.close()


def bench_steady(root: Path, writes: int, placements: int, batch: int) -> dict[str, float]:
    cluster = Cluster(root)
    try:
        three_voters(cluster)
        wait_for(lambda: healthy(cluster), 60, "a healthy cluster")
        leader = cluster.leader()
        latencies = leader.request("bench_commit", timeout=300, n=writes)["latencies"]
        placed = leader.request(
            "bench_placements", timeout=300, total=placements, batch=batch, concurrency=4
        )
        if "applied" not in placed:
            raise RuntimeError(f"placement benchmark failed: {placed}")
        return {
            "commit_p50": percentile(latencies, 50),
            "commit_p99": percentile(latencies, 99),
            "placements_per_s": placed["applied"] / placed["seconds"],
            "placements": placed["applied"],
        }
    finally:
        cluster.close()


def promote_once(root: Path) -> tuple[float, float]:
    """Time from the membership view listing two replicas to: the first promoted
    replica serving as a voter, and the cluster having 3 caught-up voters."""
    cluster = Cluster(root)
    try:
        first = cluster.add(bootstrap=True)
        cluster.leader()
        replicas = [cluster.add(join=[first.addr]) for _ in range(2)]
        start = time.monotonic()
        cluster.set_membership()
        wait_for(lambda: any(n.status()["role"] == "voter" for n in replicas), 60, "a promotion")
        one = time.monotonic() - start
        wait_for(lambda: healthy(cluster), 60, "three caught-up voters")
        return one, time.monotonic() - start
    finally:
        cluster.close()


def bench_promotion(root: Path, rounds: int) -> tuple[list[float], list[float]]:
    runs = [promote_once(root / f"promote-{r}") for r in range(rounds)]
    return [one for one, _ in runs], [three for _, three in runs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench-consensus")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--writes", type=int, default=1000)
    parser.add_argument("--placements", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--promotions", type=int, default=5)
    args = parser.parse_args(argv)
    t = RaftTimings.lan()
    with tempfile.TemporaryDirectory(prefix="hypha-bench-consensus-") as tmp:
        root = Path(tmp)
        print("steady state ...", file=sys.stderr)
        steady = bench_steady(root / "steady", args.writes, args.placements, args.batch)
        print("promotion ...", file=sys.stderr)
        promote_one, promote_three = bench_promotion(root, args.promotions)
        print("failover ...", file=sys.stderr)
        failover = bench_failover(root / "failover", args.kills)
    ms = 1000.0
    print(
        f"pysyncobj timings: appendEntriesPeriod={t.append_entries_period}s "
        f"raftMinTimeout={t.election_timeout_min}s raftMaxTimeout={t.election_timeout_max}s "
        f"leaderFallbackTimeout={t.leader_fallback_timeout}s "
        f"connectionTimeout={t.connection_timeout}s connectionRetryTime={t.connection_retry_time}s "
        "appendEntriesUseBatch=False"
    )
    print()
    print("| measure | result | goal |")
    print("|---|---|---|")
    print(
        f"| leader SIGKILL -> new leader committing ({len(failover)} kills) | "
        f"p50 {percentile(failover, 50) * ms:.0f} ms, p99 {percentile(failover, 99) * ms:.0f} ms "
        f"(mean {statistics.mean(failover) * ms:.0f} ms) | p50 < 2 s |"
    )
    print(
        f"| commit latency, one workload write ({args.writes} sequential) | "
        f"p50 {steady['commit_p50'] * ms:.1f} ms, p99 {steady['commit_p99'] * ms:.1f} ms "
        "| p50 < 10 ms |"
    )
    print(
        f"| committed placements/s (batches of {args.batch}, 4 in flight, "
        f"{steady['placements']:.0f} total) | {steady['placements_per_s']:,.0f}/s | >= 2,000/s |"
    )
    print(
        f"| replica -> voter (first promotion, {len(promote_one)} runs) | "
        f"p50 {percentile(promote_one, 50) * ms:.0f} ms, max {max(promote_one) * ms:.0f} ms | |"
    )
    print(
        "| 1 voter + 2 replicas -> 3 caught-up voters | "
        f"p50 {percentile(promote_three, 50) * ms:.0f} ms, max {max(promote_three) * ms:.0f} ms | |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
