"""End to end, issue 8: what users expect of workloads, on one shared cluster of three
real agents (runc on a busybox rootfs under CI, the process driver elsewhere).

The agents carry labels for the placement rules: n1 zone=a disk=ssd, n2 zone=b
disk=ssd, n3 zone=b. Every test uses its own workload names and removes them, so
the tests share the cluster (one start-up for the whole module keeps CI short).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.agents import LocalCluster, as_json, hypha_cli, wait_until
from tests.integration.test_agent_cluster import _driver

pytestmark = pytest.mark.slow

LABELS = {
    0: ["--label", "zone=a", "--label", "disk=ssd"],
    1: ["--label", "zone=b", "--label", "disk=ssd"],
    2: ["--label", "zone=b"],
}
TAG = secrets.token_hex(3)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str | None:
    driver, _ = _driver()
    if driver != "oci":
        return None
    from runtime.rootfs import build_busybox_rootfs

    return str(build_busybox_rootfs(tmp_path_factory.mktemp("rootfs") / "busybox"))


@pytest.fixture(scope="module")
def cluster(image: str | None) -> Iterator[LocalCluster]:
    """Three agents running; a fourth (no labels) is started by the system-job test to
    see a node that joins later get its replica."""
    driver, runtime_path = _driver()
    base = Path(f"/tmp/hw-{os.getpid()}-{TAG}")
    base.mkdir(parents=True, exist_ok=True)
    c = LocalCluster(base, 4, driver=driver, runtime_path=runtime_path, per_agent_args=LABELS)
    try:
        for agent in c.agents[:3]:
            agent.start()
        c.started = True
        wait_until(lambda: c.alive_members(c.agents[0]) == 3, 60, "three agents")
        yield c
    except BaseException:
        print(c.dump(), file=sys.stderr)
        raise
    finally:
        c.stop()
        shutil.rmtree(base, ignore_errors=True)


def spec(image: str | None, name: str, script: str, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": name,
        "command": ["sh", "-c", script],
        "restart": {"policy": "always", "backoff_initial": 0.5, "backoff_max": 2.0},
        "stop_grace": 2.0,
        "resources": {"cpu": "50m", "memory": "16Mi"},
        **extra,
    }
    if image is not None:
        data["image"] = image
    return data


def cli(cluster: LocalCluster, *args: str) -> Any:
    return hypha_cli(cluster.agents[1].api, *args)


def remove(cluster: LocalCluster, *names: str) -> None:
    client = cluster.client()
    for name in names:
        client.delete(f"/v1/workloads/{name}")
    wait_until(
        lambda: not any(r["workload"] in names for r in cluster.replicas()),
        30,
        "the workloads to be gone",
    )


def test_health_check_restarts_an_unhealthy_replica(
    cluster: LocalCluster, image: str | None
) -> None:
    """A command check run inside the container: healthy for a while, then the file
    it tests for goes away, two checks fail, and the replica is restarted."""
    marker = f"/tmp/hc-{TAG}-$HYPHA_REPLICA"
    script = f"touch {marker}; sleep 6; rm -f {marker}; while true; do sleep 1; done"
    health = {
        "command": ["sh", "-c", f"test -e {marker}"],
        "interval": 1,
        "timeout": 5,
        "retries": 2,
    }
    cluster.client().post("/v1/workloads", {"spec": spec(image, "hc", script, health=health)})
    wait_until(
        lambda: [r["health"] for r in cluster.replicas("hc")] == ["healthy"],
        60,
        "hc-0 to be healthy",
    )
    ps = cli(cluster, "ps", "hc")
    assert ps.returncode == 0 and "healthy" in ps.stdout, ps.stdout + ps.stderr
    wait_until(
        lambda: cluster.replicas("hc")[0]["restarts"] >= 1,
        60,
        "the unhealthy replica to be restarted",
    )
    wait_until(
        lambda: cluster.replicas("hc")[0]["health"] == "healthy",
        60,
        "the restarted replica to be healthy again",
    )
    row = as_json(cli(cluster, "ps", "hc", "--json"))["replicas"][0]
    assert row["state"] == "running" and row["healthy_since"] is not None
    inspect = cli(cluster, "inspect", "hc")
    assert "health:" in inspect.stdout and "test -e" in inspect.stdout, inspect.stdout
    remove(cluster, "hc")


def node_of(cluster: LocalCluster, index: int) -> str:
    return cluster.agents[index].name


def test_placement_rules_and_why_a_replica_is_pending(
    cluster: LocalCluster, image: str | None, tmp_path: Path
) -> None:
    loop = "while true; do sleep 1; done"
    client = cluster.client()
    # disk==ssd and one per node: n1 and n2 take one each, the third has nowhere to go.
    pinned = spec(
        image,
        "pin",
        loop,
        replicas=3,
        constraints=[{"label": "disk", "op": "==", "value": "ssd"}],
        placement={"distinct_nodes": True},
    )
    (tmp_path / "pin.json").write_text(json.dumps(pinned))
    dry = cli(cluster, "run", "-f", str(tmp_path / "pin.json"), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert node_of(cluster, 0) in dry.stdout and node_of(cluster, 1) in dry.stdout, dry.stdout
    assert "distinct" in dry.stdout, dry.stdout  # pin-2: why not
    assert client.get("/v1/workloads")["workloads"] == []  # a dry run creates nothing
    client.post("/v1/workloads", {"spec": pinned})
    spread = spec(image, "spr", loop, replicas=4, placement={"spread_by": "zone", "max_skew": 1})
    client.post("/v1/workloads", {"spec": spread})
    gpu = spec(image, "gpu", loop, constraints=[{"label": "gpu", "op": "exists"}])
    client.post("/v1/workloads", {"spec": gpu})

    def pin_settled() -> bool:
        rows = cluster.replicas("pin")
        return sum(r["state"] == "running" for r in rows) == 2 and any(
            r["state"] == "pending" and r.get("error") for r in rows
        )

    wait_until(pin_settled, 60, "two pinned replicas running and one pending")
    rows = cluster.replicas("pin")
    assert {r["node"] for r in rows if r["node"]} == {node_of(cluster, 0), node_of(cluster, 1)}
    pending = next(r for r in rows if r["state"] == "pending")
    assert "distinct" in pending["error"], pending
    wait_until(lambda: cluster.replicas("gpu")[0].get("error"), 30, "gpu-0's reason")
    assert "gpu" in cluster.replicas("gpu")[0]["error"]
    ps = cli(cluster, "ps", "gpu")
    assert "pending" in ps.stdout and "gpu" in ps.stdout, ps.stdout
    wait_until(lambda: sum(cluster.running_by_node("spr").values()) == 4, 60, "spr's 4 replicas")
    by_node = cluster.running_by_node("spr")
    zone_a = by_node.get(node_of(cluster, 0), 0)
    assert zone_a == 2, by_node  # zone a has one node, zone b two: 2 and 2 (skew <= 1)
    remove(cluster, "pin", "spr", "gpu")


def test_batch_jobs_run_to_completion_and_retry_failures(
    cluster: LocalCluster, image: str | None
) -> None:
    client = cluster.client()
    client.post(
        "/v1/workloads",
        {
            "spec": {
                **spec(image, "job", "sleep 1; echo done"),
                "type": "batch",
                "replicas": 3,
                "restart": {"policy": "on-failure", "max_attempts": 2},
            }
        },
    )
    client.post(
        "/v1/workloads",
        {
            "spec": {
                **spec(image, "bad", "exit 3"),
                "type": "batch",
                "restart": {
                    "policy": "on-failure",
                    "max_attempts": 1,
                    "backoff_initial": 0.5,
                    "backoff_max": 1,
                },
            }
        },
    )
    wait_until(lambda: client.get("/v1/workloads/job")["status"] == "complete", 60, "job complete")
    assert {r["state"] for r in cluster.replicas("job")} == {"completed"}
    wait_until(lambda: client.get("/v1/workloads/bad")["status"] == "failed", 60, "bad failed")
    [row] = cluster.replicas("bad")
    assert row["state"] == "exited" and row["exit_code"] == 3 and row["restarts"] == 1
    time.sleep(2)
    assert cluster.replicas("bad")[0]["restarts"] == 1  # no more retries
    inspect = cli(cluster, "inspect", "job")
    assert "type:        batch" in inspect.stdout, inspect.stdout
    remove(cluster, "job", "bad")


def test_system_job_one_per_eligible_node_including_a_late_joiner(
    cluster: LocalCluster, image: str | None, tmp_path: Path
) -> None:
    client = cluster.client()
    system = {**spec(image, "sys", "while true; do sleep 1; done"), "type": "system"}
    (tmp_path / "sys.json").write_text(json.dumps(system))
    created = cli(cluster, "run", "-f", str(tmp_path / "sys.json"))
    assert created.returncode == 0, created.stderr
    assert "one replica per eligible node" in created.stdout, created.stdout

    def per_node() -> dict[str, int]:
        return cluster.running_by_node("sys")

    names = [node_of(cluster, i) for i in range(3)]
    wait_until(lambda: per_node() == {n: 1 for n in names}, 60, "one sys replica per node")
    off = cli(cluster, "eligible", names[2], "--off")
    assert off.returncode == 0, off.stderr
    wait_until(lambda: per_node() == {n: 1 for n in names[:2]}, 60, "sys off the ineligible node")
    assert cli(cluster, "eligible", names[2]).returncode == 0
    wait_until(lambda: per_node() == {n: 1 for n in names}, 60, "sys back on the node")
    late = cluster.agents[3]
    late.start()
    wait_until(
        lambda: per_node() == {n: 1 for n in [*names, late.name]}, 90, "sys on the late joiner"
    )
    assert client.get("/v1/workloads/sys")["replicas"] == 4
    remove(cluster, "sys")


def test_drain_moves_replicas_a_few_at_a_time_and_waits(
    cluster: LocalCluster, image: str | None
) -> None:
    client = cluster.client()
    # Deaf to SIGTERM: each old container stays for its whole stop grace.
    loop = "trap '' TERM; while true; do sleep 1; done"
    dr = spec(image, "dr", loop, replicas=4, drain={"max_unavailable": 1}, stop_grace=3.0)
    client.post("/v1/workloads", {"spec": dr})
    wait_until(lambda: sum(cluster.running_by_node("dr").values()) == 4, 60, "dr running")
    target = next(n for n, count in cluster.running_by_node("dr").items() if count)
    result = cli(cluster, "drain", target, "--wait", "--timeout", "120")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{target} is drained" in result.stderr, result.stderr
    # Drained means no container left: it said so 3 s early, while the last one was
    # still in its stop grace.
    left = {r for r in cluster.replica_processes().get(target, set()) if r.startswith("dr-")}
    assert not left, left
    by_node = cluster.running_by_node("dr")
    assert target not in by_node and sum(by_node.values()) == 4, by_node
    node = client.get(f"/v1/nodes/{target}")
    assert node["placed"] == 0 and node["replicas"] == [] and node["draining"]
    assert cli(cluster, "drain", target, "--undo").returncode == 0
    remove(cluster, "dr")


def test_rolling_update_then_a_failed_one_rolls_back(
    cluster: LocalCluster, image: str | None, tmp_path: Path
) -> None:
    client = cluster.client()
    update = {"max_parallel": 1, "min_healthy": 1, "healthy_deadline": 30, "auto_revert": True}
    v1 = spec(
        image,
        "ru",
        "while true; do sleep 1; done",
        replicas=3,
        update=update,
        env={"RELEASE": "one"},
    )
    client.post("/v1/workloads", {"spec": v1})
    wait_until(lambda: sum(cluster.running_by_node("ru").values()) == 3, 60, "ru running")
    v2 = {**v1, "env": {"RELEASE": "two"}}
    (tmp_path / "v2.json").write_text(json.dumps(v2))
    result = cli(cluster, "update", "-f", str(tmp_path / "v2.json"), "--wait", "--timeout", "120")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "complete" in result.stderr, result.stderr
    rows = cluster.replicas("ru")
    assert {r["version"] for r in rows} == {2}, (result.stderr, rows)
    assert {r["state"] for r in rows} == {"running"}
    v3 = {**v1, "command": ["sh", "-c", "exit 1"]}
    (tmp_path / "v3.json").write_text(json.dumps(v3))
    bad = cli(cluster, "update", "-f", str(tmp_path / "v3.json"), "--wait", "--timeout", "120")
    assert "rolled back" in bad.stderr or "rolled back" in bad.stdout, bad.stderr

    def rolled_back() -> bool:
        data = client.get("/v1/workloads/ru")
        rows = cluster.replicas("ru")
        return (
            data["version"] == 4
            and data["status"] == "complete"
            and all(r["state"] == "running" for r in rows)
        )

    wait_until(rolled_back, 120, "the failed update to roll back")
    data = client.get("/v1/workloads/ru")
    assert data["spec"]["env"] == {"RELEASE": "two"}
    assert [h["status"] for h in data["history"]][-2:] == ["failed", "current"]
    inspect = cli(cluster, "inspect", "ru")
    assert "failed" in inspect.stdout and "rolled back" in inspect.stdout, inspect.stdout
    remove(cluster, "ru")
