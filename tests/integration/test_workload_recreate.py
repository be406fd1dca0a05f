"""Regression: a workload deleted and created again starts at version 1 again.

The agent once cached parsed specs by (name, version), so after delete and
re-create the leader planned from the old workload's spec: it placed replicas the
state refused (out of range) in a hot loop, and they stayed pending for ever.
The chaos soak found it; this replays the soak's sequence on real agents.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.client import path_of
from agent.localcluster import LocalCluster, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path, 3, driver="process", preset="local", first_host="127.0.6.2")
    try:
        local.start()
        yield local
    except BaseException:
        print(local.dump())
        raise
    finally:
        local.stop()


def spec(name: str, replicas: int) -> dict[str, Any]:
    return {"name": name, "command": ["sleep", "100000"], "replicas": replicas}


def running(cluster: LocalCluster, name: str) -> int:
    workload = cluster.client().get(path_of("v1", "workloads", name))
    return int(workload["running"])


def test_recreated_workload_is_planned_from_its_new_spec(cluster: LocalCluster) -> None:
    client = cluster.client()
    client.post("/v1/workloads", {"spec": spec("again", 1)})  # v1, 1 replica
    wait_until(lambda: running(cluster, "again") == 1, 60, "the first life running")
    client.delete(path_of("v1", "workloads", "again"))
    wait_until(lambda: not cluster.replica_processes(), 60, "the first life stopped")
    client.post("/v1/workloads", {"spec": spec("again", 3)})  # v1 again, 3 replicas
    wait_until(lambda: running(cluster, "again") == 3, 60, "3 replicas of the second life")
    rows = client.get("/v1/replicas", workload="again")["replicas"]
    assert sorted(r["replica_id"] for r in rows) == ["again-0", "again-1", "again-2"]
    assert all(r["state"] == "running" for r in rows), rows
    real = cluster.replica_processes()
    assert sorted(rid for rids in real.values() for rid in rids) == [
        "again-0",
        "again-1",
        "again-2",
    ]
