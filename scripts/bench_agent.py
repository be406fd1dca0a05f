"""The agent benchmark (run it with scripts/bench-agent): real agent processes on loopback.

For each cluster size: submit-to-all-running for 10 replicas; SIGKILL of an agent to
all of its replicas running elsewhere (p50/p99 over the kills); `hypha ps` latency
(the CLI, end to end); an idle agent's RSS and CPU. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.localcluster import status_of  # noqa: E402
from tests.integration.agents import LocalCluster, wait_until  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def all_running(cluster: LocalCluster, name: str, count: int, avoid: str | None = None) -> bool:
    rows = cluster.replicas(name)
    return (
        len(rows) == count
        and all(r["state"] == "running" for r in rows)
        and (avoid is None or all(r["node"] != avoid for r in rows))
    )


def voters_formed(cluster: LocalCluster, size: int) -> bool:
    """Agent 1 leads, with as many voters as the autopilot will make, none pending."""
    status = status_of(cluster.agents[0])
    if status is None or not status.get("leader_ready"):
        return False
    want = min(int(status["target_voters"]), size if size % 2 else size - 1)
    return len(status["voters"]) == want and not status.get("pending_change")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def bench(
    size: int, kills: int, driver: str, runtime_path: str | None, rootfs: str | None, preset: str
) -> dict[str, str]:
    base = Path(f"/tmp/hy-bench-{os.getpid()}-{size}")
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    cluster = LocalCluster(base, size, driver=driver, preset=preset, runtime_path=runtime_path)
    try:
        cluster.start()
        # Idle first: RSS and CPU of agent 1 (the Raft leader) over 10 s with nothing to
        # do, once the cluster has formed: the leader's autopilot promotes replicas to
        # voters one at a time for a few seconds after the agents answer.
        pid = cluster.agents[0].proc.pid  # type: ignore[union-attr]
        wait_until(lambda: voters_formed(cluster, size), 60, "the Raft voter set to form")
        time.sleep(3)
        before = cpu_seconds(pid)
        time.sleep(10)
        idle_cpu = (cpu_seconds(pid) - before) / 10 * 100
        idle_rss = rss_mb(pid)

        spec = {
            "name": "bench",
            "command": ["sh", "-c", "while true; do sleep 1; done"],
            "replicas": 10,
            "stop_grace": 1,
            "resources": {"cpu": "10m", "memory": "8Mi"},
        }
        if rootfs:
            spec["image"] = rootfs
        client = cluster.client()
        start = time.monotonic()
        client.post("/v1/workloads", {"spec": spec})
        wait_until(lambda: all_running(cluster, "bench", 10), 120, "10 running", interval=0.02)
        submit = time.monotonic() - start

        ps_times = []
        api = cluster.agents[0].api
        for _ in range(10):
            t0 = time.monotonic()
            subprocess.run(
                [sys.executable, "-m", "agent", "--api", api, "ps"], check=True, capture_output=True
            )
            ps_times.append(time.monotonic() - t0)

        recoveries = []
        for i in range(kills):
            placed: dict[str, int] = {}
            for row in cluster.replicas("bench"):
                placed[row["node"]] = placed.get(row["node"], 0) + 1
            candidates = [a for a in cluster.agents[1:] if placed.get(a.name)]
            victim = candidates[i % len(candidates)] if candidates else cluster.agents[1]
            t0 = time.monotonic()
            victim.kill()
            wait_until(
                functools.partial(all_running, cluster, "bench", 10, avoid=victim.name),
                180,
                "replicas rescheduled",
                interval=0.05,
            )
            recoveries.append(time.monotonic() - t0)
            victim.start()
            wait_until(
                lambda: cluster.alive_members(cluster.agents[0]) == size, 120, "the agent to rejoin"
            )
            wait_until(lambda: all_running(cluster, "bench", 10), 120, "steady again")
            time.sleep(1)
        client = cluster.client()
        client.delete("/v1/workloads/bench")
        return {
            "agents": str(size),
            "submit 10 (s)": f"{submit:.2f}",
            "kill->running p50 (s)": f"{statistics.median(recoveries):.2f}",
            "p99 (s)": f"{percentile(recoveries, 0.99):.2f}",
            "hypha ps p50 (ms)": f"{statistics.median(ps_times) * 1000:.0f}",
            "idle RSS (MB)": f"{idle_rss:.0f}",
            "idle CPU (%)": f"{idle_cpu:.1f}",
        }
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="3,5")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--driver", default="auto", choices=["auto", "oci", "process"])
    parser.add_argument("--preset", default="lan", choices=["lan", "local", "wan"])
    args = parser.parse_args()
    driver, runtime_path, rootfs = args.driver, None, None
    runc = shutil.which("runc")
    if driver in ("auto", "oci"):
        try:
            import runtime.oci  # noqa: F401
            from runtime.rootfs import build_busybox_rootfs

            if os.geteuid() != 0 or not runc:
                raise ImportError("needs root and runc")
            rootfs = str(build_busybox_rootfs(Path(f"/tmp/hy-bench-rootfs-{os.getpid()}")))
            driver, runtime_path = "oci", runc
        except Exception as exc:
            if driver == "oci":
                raise SystemExit(f"bench-agent: the oci driver cannot run here: {exc}") from exc
            driver = "process"
    print(
        f"driver: {driver}  gossip preset: {args.preset}  kills: {args.kills}  "
        f"cpus: {os.cpu_count()}",
        flush=True,
    )
    rows = []
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            rows.append(bench(size, args.kills, driver, runtime_path, rootfs, args.preset))
            print(f"  {size} agents done", flush=True)
    finally:
        if rootfs:
            shutil.rmtree(rootfs, ignore_errors=True)
    headers = list(rows[0])
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for row in rows:
        print("| " + " | ".join(row[h] for h in headers) + " |")


if __name__ == "__main__":
    main()
