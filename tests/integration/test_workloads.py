"""End to end, issue 8: what users expect of workloads, on one shared cluster of three
real agents (runc on a busybox rootfs under CI, the process driver elsewhere).

The agents carry labels for the placement rules: n1 zone=a disk=ssd, n2 zone=b
disk=ssd, n3 zone=b. Every test uses its own workload names and removes them, so
the tests share the cluster (one start-up for the whole module keeps CI short).
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.agents import LocalCluster, as_json, hypha_cli, local_cluster, wait_until
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
    driver, runtime_path = _driver()
    base = Path(f"/tmp/hw-{os.getpid()}-{TAG}")
    base.mkdir(parents=True, exist_ok=True)
    try:
        with local_cluster(
            base, 3, driver=driver, runtime_path=runtime_path, agent_args=LABELS
        ) as c:
            yield c
    finally:
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
