"""End to end: real agents on loopback, real gossip, real Raft, real containers.

Under CI (root, runc installed) the replicas run through the oci driver on a
busybox rootfs; elsewhere through the process driver. One scenario walks the
life of a workload the way the issue describes it: 6 replicas spread over 3
agents, scale to 9 and back to 3, SIGKILL an agent and see its replicas come
back elsewhere, restart it and see it stop what it no longer owns, drain a
node, delete the workload and see every container gone.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import IN_CI, require
from tests.integration.agents import LocalCluster, as_json, hypha_cli, local_cluster, wait_until

pytestmark = pytest.mark.slow

LOOP = ["sh", "-c", 'while true; do echo "tick from $HYPHA_REPLICA"; sleep 1; done']


def _driver() -> tuple[str, str | None]:
    """oci with runc where we can (always under CI); the process driver elsewhere.
    HYPHA_TEST_DRIVER=process forces the process driver."""
    runc = shutil.which("runc")
    forced = os.environ.get("HYPHA_TEST_DRIVER")
    has_oci = importlib.util.find_spec("runtime.oci") is not None
    if forced != "process" and os.geteuid() == 0 and runc and has_oci:
        return "oci", runc
    require(not IN_CI, "CI=true needs root, runc and the oci driver")
    return "process", None


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    driver, _ = _driver()
    if driver != "oci":
        return None
    import runtime

    build = getattr(runtime, "build_busybox_rootfs", None)
    if build is None:
        from runtime.rootfs import build_busybox_rootfs as build
    return Path(build(tmp_path_factory.mktemp("rootfs") / "busybox"))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    driver, runtime_path = _driver()
    # Short paths: a Unix socket path must stay under 108 bytes.
    base = Path(f"/tmp/hy-{os.getpid()}-{tmp_path.name[-8:]}")
    base.mkdir(parents=True, exist_ok=True)
    try:
        with local_cluster(base, 3, driver=driver, runtime_path=runtime_path) as c:
            yield c
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _spec(name: str, replicas: int, rootfs: Path | None) -> dict[str, object]:
    spec: dict[str, object] = {
        "name": name,
        "command": LOOP,
        "replicas": replicas,
        "restart": {"policy": "always", "backoff_initial": 0.5, "backoff_max": 2.0},
        "stop_grace": 2.0,
        "resources": {"cpu": "50m", "memory": "16Mi"},
    }
    if rootfs is not None:
        spec["image"] = str(rootfs)
    return spec


def _all_running(cluster: LocalCluster, name: str, count: int) -> bool:
    rows = cluster.replicas(name)
    return len(rows) == count and all(r["state"] == "running" for r in rows)


def _actual(cluster: LocalCluster) -> dict[str, set[str]]:
    return {node: ids for node, ids in cluster.replica_processes().items() if ids}


def _placed(cluster: LocalCluster, name: str) -> dict[str, set[str]]:
    placed: dict[str, set[str]] = {}
    for row in cluster.replicas(name):
        if row["node"]:
            placed.setdefault(row["node"], set()).add(row["replica_id"])
    return placed


def test_workload_life_on_three_agents(cluster: LocalCluster, rootfs: Path | None) -> None:
    client = cluster.client()
    created = client.post("/v1/workloads", {"spec": _spec("web", 6, rootfs)})
    assert created["name"] == "web" and created["version"] == 1
    wait_until(lambda: _all_running(cluster, "web", 6), 90, "6 replicas running")
    by_node = cluster.running_by_node("web")
    assert len(by_node) == 3, by_node  # spread over every agent
    # What runs on the hosts is exactly what is placed.
    wait_until(lambda: _actual(cluster) == _placed(cluster, "web"), 30, "actual == placed")

    client.post("/v1/workloads/web/scale", {"replicas": 9})
    wait_until(lambda: _all_running(cluster, "web", 9), 90, "9 replicas running")
    client.post("/v1/workloads/web/scale", {"replicas": 3})
    wait_until(lambda: _all_running(cluster, "web", 3), 60, "3 replicas running")
    wait_until(
        lambda: _actual(cluster) == _placed(cluster, "web"), 60, "the extra containers to stop"
    )

    # SIGKILL the agent holding the most replicas (not the one the test talks to).
    placed = _placed(cluster, "web")
    victims = [a for a in cluster.agents[1:] if placed.get(a.name)]
    victim = victims[0] if victims else cluster.agents[1]
    victim.kill()
    survivors = {a.name for a in cluster.agents if a is not victim}

    def moved() -> bool:
        rows = cluster.replicas("web")
        return (
            len(rows) == 3
            and all(r["state"] == "running" for r in rows)
            and all(r["node"] in survivors for r in rows)
        )

    wait_until(moved, 120, "the killed agent's replicas to run elsewhere")

    # Restart it: it adopts its old containers and stops those it no longer owns.
    victim.start()
    wait_until(
        lambda: victim.name not in _actual(cluster),
        60,
        "the restarted agent to stop replicas it no longer owns",
    )
    wait_until(lambda: _actual(cluster) == _placed(cluster, "web"), 60, "no replica runs twice")

    # Drain the node with replicas: they move away and it runs nothing.
    placed = _placed(cluster, "web")
    drained = next(a for a in cluster.agents if placed.get(a.name))
    result = client.post(f"/v1/nodes/{drained.name}/drain", {"draining": True})
    assert result["draining"] is True

    def drained_empty() -> bool:
        return (
            _all_running(cluster, "web", 3)
            and drained.name not in _placed(cluster, "web")
            and drained.name not in _actual(cluster)
        )

    wait_until(drained_empty, 90, "the drained node to be empty")

    client.delete("/v1/workloads/web")
    wait_until(lambda: not _actual(cluster), 60, "every container to be gone")
    assert client.get("/v1/workloads")["workloads"] == []


def test_errors_as_a_new_user_meets_them(
    cluster: LocalCluster, rootfs: Path | None, tmp_path: Path
) -> None:
    api = cluster.agents[1].api  # a follower: writes are forwarded to the leader
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "web"\ncommand = ["sleep", "9"]\nreplicas = "three"\n')
    result = hypha_cli(api, "run", "-f", str(bad))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"hypha: error: {bad}: replicas: must be a whole number, got 'three'"
    )

    result = hypha_cli(api, "scale", "ghost", "3")
    assert result.returncode == 1
    assert "no workload named 'ghost'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

    result = hypha_cli(api, "logs", "ghost-0")
    assert result.returncode == 1 and "ghost-0" in result.stderr

    result = hypha_cli(api, "run", "Bad_Name", "--", "true")
    assert result.returncode == 1 and "name: must be" in result.stderr

    result = hypha_cli(api, "drain", "no-such-node")
    assert result.returncode == 1 and "no node named 'no-such-node'" in result.stderr

    image = ["--image", str(rootfs)] if rootfs is not None else []
    result = hypha_cli(
        api,
        "run",
        "once",
        *image,
        "--restart",
        "never",
        "--wait",
        "--timeout",
        "90",
        "--",
        "sh",
        "-c",
        "echo hello from once; sleep 60",
    )
    assert result.returncode == 0, result.stderr
    assert "1/1 running" in result.stderr  # the progress line
    result = hypha_cli(api, "run", "once", *image, "--", "true")
    assert result.returncode == 1 and "already exists" in result.stderr
    assert "hypha update -f FILE" in result.stderr
    result = hypha_cli(api, "ps", "ghost")
    assert result.returncode == 1
    assert result.stderr == "hypha: error: no workload named 'ghost' (see `hypha ps`)\n"
    wait_until(
        lambda: "hello from once" in hypha_cli(api, "logs", "once-0").stdout,
        30,
        "the replica's output through any agent",
    )
    ps = as_json(hypha_cli(api, "ps", "--json"))
    assert [r["replica_id"] for r in ps["replicas"]] == ["once-0"]
    assert hypha_cli(api, "rm", "once").returncode == 0
    wait_until(lambda: not _actual(cluster), 60, "the container to be gone")

    # A replica that keeps failing is restarted under its policy, then reported with
    # its exit code.
    result = hypha_cli(
        api,
        "run",
        "crash",
        *image,
        "--restart",
        "on-failure:1",
        "--",
        "sh",
        "-c",
        "echo failing; exit 3",
    )
    assert result.returncode == 0, result.stderr

    def crashed() -> dict[str, object] | None:
        rows = as_json(hypha_cli(api, "ps", "crash", "--json"))["replicas"]
        row: dict[str, object] = rows[0]
        return row if row["state"] == "exited" else None

    row = wait_until(crashed, 60, "the crashing replica to give up")
    assert row["exit_code"] == 3 and row["restarts"] == 1
    assert "exited (3)" in hypha_cli(api, "ps").stdout
    assert hypha_cli(api, "rm", "crash").returncode == 0

    # A command that is not there: --wait stops once the replica has failed for good
    # (long before its timeout) with the whole reason, and logs says it failed.
    result = hypha_cli(
        api,
        "run",
        "nobin",
        *image,
        "--restart",
        "never",
        "--wait",
        "--timeout",
        "600",
        "--",
        "/no/such/binary",
    )
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("hypha: error: 1 replica of nobin failed for good; nobin-0 on "), line
    if rootfs is not None:
        assert "failed to start 2 times:" in line and "/no/such/binary" in line, line
        wait_until(
            lambda: "failed to start" in hypha_cli(api, "logs", "nobin-0").stderr,
            30,
            "logs to say the replica failed to start",
        )
        # A spec without an image cannot run on oci nodes: refused at submit.
        for args in (["--dry-run"], []):
            result = hypha_cli(api, "run", "hostcmd", *args, "--", "true")
            assert result.returncode == 1
            assert "runs the oci driver" in result.stderr and "--image DIR" in result.stderr
            assert "--driver process" in result.stderr
    assert hypha_cli(api, "rm", "nobin").returncode == 0

    # A replica that fits nowhere is pending, and every agent says why.
    result = hypha_cli(api, "run", "huge", *image, "--memory", "900Gi", "--", "true")
    assert result.returncode == 0, result.stderr

    def pending_reason() -> str | None:
        rows = as_json(hypha_cli(api, "ps", "huge", "--json"))["replicas"]
        reason: str | None = rows[0]["error"] if rows[0]["state"] == "pending" else None
        return reason

    reason = wait_until(pending_reason, 30, "a pending reason on a follower")
    assert "memory" in reason, reason
    assert hypha_cli(api, "rm", "huge").returncode == 0
