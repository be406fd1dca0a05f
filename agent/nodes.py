"""Node state: what each agent publishes in its gossip key space, and how it is read.

Every value is a JSON string under a short key. One key per replica
(``r/<replica_id>``) keeps every value small, so it fits a gossip datagram no
matter how many replicas a node runs, and a change to one replica sends only
that replica's line::

    api          "http://10.0.0.5:40123"   the agent's TCP API (cluster token)
    raft         "10.0.0.5:7947"           its Raft address
    capacity     {"cpu_millicores":..., "memory_bytes":..., "pids":...}
    allocatable  the same, minus what its placements reserve
    labels       {"zone": "a", ...}
    zone         "a"
    load         {"cpu_millicores":..., "memory_bytes":..., "pids":..., "load1": 0.3}
    credit       1234                        its balance from the last credit epoch
    driver       "oci: runc 1.1.5 ..."
    version      "0.1.0"
    r/web-0      {"s": "running", "v": 3, "x": null, "n": 0, "h": null, "e": null, "t": 1.7e9}
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPLICA_PREFIX = "r/"


def encode(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def decode(text: str | None, default: Any = None) -> Any:
    if text is None:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


def replica_value(report: Mapping[str, Any]) -> str:
    """The compact gossip form of a ``ReplicaReport.to_dict()``."""
    return encode(
        {
            "w": report.get("workload"),
            "s": report.get("state"),
            "v": report.get("version"),
            "x": report.get("exit_code"),
            "n": report.get("restarts"),
            "h": report.get("health"),
            "e": (report.get("error") or None) and str(report["error"])[:200],
            "t": report.get("started_at"),
            "o": report.get("oom_killed") or None,
            "hs": report.get("healthy_since"),
            "u": report.get("uid") or None,
        }
    )


def replica_from_value(replica_id: str, text: str) -> dict[str, Any]:
    data = decode(text, {}) or {}
    return {
        "replica_id": replica_id,
        "workload": data.get("w"),
        "state": data.get("s", "unknown"),
        "version": data.get("v"),
        "exit_code": data.get("x"),
        "restarts": data.get("n", 0),
        "healthy_since": data.get("hs"),
        "health": data.get("h"),
        "error": data.get("e"),
        "started_at": data.get("t"),
        "oom_killed": bool(data.get("o")),
        "uid": data.get("u") or "",
    }


@dataclass(slots=True)
class NodeView:
    """One node as this agent sees it: gossip liveness + published state + Raft admin."""

    name: str
    liveness: str  # alive | suspect | dead | left | unknown
    address: str | None = None
    since: float | None = None
    api: str | None = None
    raft: str | None = None
    capacity: dict[str, int] = field(default_factory=dict)
    allocatable: dict[str, int] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    zone: str = ""
    load: dict[str, Any] = field(default_factory=dict)
    credit: int = 0
    eligible: bool = True
    draining: bool = False
    driver: str | None = None
    version: str | None = None
    replicas: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def scheduler_state(self) -> str:
        """``alive``/``suspect``/``dead``/``draining`` for the scheduler."""
        if self.liveness in ("dead", "left", "unknown"):
            return "dead"
        if self.draining:
            return "draining"
        return "suspect" if self.liveness == "suspect" else "alive"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.liveness,
            "address": self.address,
            "since": self.since,
            "api": self.api,
            "raft": self.raft,
            "capacity": self.capacity,
            "allocatable": self.allocatable,
            "labels": self.labels,
            "zone": self.zone,
            "load": self.load,
            "credit": self.credit,
            "eligible": self.eligible,
            "draining": self.draining,
            "driver": self.driver,
            "version": self.version,
            "replicas": sorted(self.replicas),
        }


def node_from_state(
    name: str, liveness: str, state: Mapping[str, str], *, address: str | None, since: float | None
) -> NodeView:
    view = NodeView(name=name, liveness=liveness, address=address, since=since)
    view.api = decode(state.get("api"))
    view.raft = decode(state.get("raft"))
    view.capacity = decode(state.get("capacity"), {}) or {}
    view.allocatable = decode(state.get("allocatable"), {}) or {}
    view.labels = decode(state.get("labels"), {}) or {}
    view.zone = decode(state.get("zone"), "") or ""
    view.load = decode(state.get("load"), {}) or {}
    credit = decode(state.get("credit"), 0)
    view.credit = credit if isinstance(credit, int) else 0
    view.driver = decode(state.get("driver"))
    view.version = decode(state.get("version"))
    for key, value in state.items():
        if key.startswith(REPLICA_PREFIX):
            rid = key[len(REPLICA_PREFIX) :]
            view.replicas[rid] = replica_from_value(rid, value)
    return view


# -- this host's capacity and load ---------------------------------------------------
def host_capacity(
    cpu_millicores: int | None, memory_bytes: int | None, pids: int | None
) -> dict[str, int]:
    """This host's capacity, with the config's overrides."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_millicores": cpu_millicores or (cpus or 1) * 1000,
        "memory_bytes": memory_bytes or _total_memory(),
        "pids": pids or _pid_max(),
    }


def _total_memory() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 1024**3


def _pid_max() -> int:
    try:
        return min(int(Path("/proc/sys/kernel/pid_max").read_text()), 32768)
    except (OSError, ValueError):
        return 32768


def host_load() -> dict[str, Any]:
    """Observed use of the whole host: load average, memory in use."""
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    used = 0
    try:
        info = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            info[key] = int(rest.split()[0]) * 1024
        used = info.get("MemTotal", 0) - info.get("MemAvailable", 0)
    except (OSError, ValueError, IndexError):
        pass
    return {"load1": round(load1, 2), "memory_bytes": used}
