"""What the leader does for job types, drains and rolling updates (issue 8), as pure
functions of the replicated state and the gossip view, so they are tested without
Raft, gossip or time.

* **System jobs** (``system_plan``): one replica on every eligible node (alive or
  suspect, eligible, not draining, with capacity, matching the constraints). The
  leader scales the workload to the number of such nodes, keeps the replicas that
  already sit on one, and gives the others to the nodes without one. A replica on
  a live node never moves: when a lower slot's node dies, that slot stays vacant.
* **Drains** (``drain_allowance``): replicas leave a draining node at most
  ``drain.max_unavailable`` at a time per workload, counting every replica of the
  workload that is not running now. (The old replica of a service keeps running
  until its replacement runs: that is the node reconciler's hand-off.)
* **Rolling updates** (``rollout_plan``): a workload's replicated spec carries, under
  ``META_KEY``, the version its current template started at and the specs of the
  versions before it (``History``). A placement at a version older than that runs
  the old spec until the leader re-places it at the current version, at most
  ``update.max_parallel`` at a time, each next one once the updated ones have been
  healthy for ``update.min_healthy`` seconds. A new replica that exits, turns
  unhealthy or is not healthy within ``update.healthy_deadline`` fails the update:
  nothing more is replaced and, with ``update.auto_revert``, the leader puts back the
  last version that was not a failure (a new version, rolled out the same way).
* **Batch status** (``batch_status``): complete when every replica exited 0, failed
  when one exited non-zero with no retries left.
"""

from __future__ import annotations

import copy
import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.nodes import NodeView
from agent.spec import WorkloadSpec, replica_id

#: Where the agent keeps its own data inside a replicated workload spec (never the user's).
META_KEY = "_hypha"
#: How many earlier templates a workload remembers (for rollbacks and rolling updates).
HISTORY_LIMIT = 5

TEMPLATE_FIELDS = ("image", "command", "env", "cwd", "resources", "labels", "health")


def split_spec(spec: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A replicated spec dict -> (the user's spec, the agent's meta data)."""
    user = {k: copy.deepcopy(v) for k, v in spec.items() if k != META_KEY}
    meta = spec.get(META_KEY)
    return user, copy.deepcopy(dict(meta)) if isinstance(meta, Mapping) else {}


def join_spec(user: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
    data = dict(user)
    if meta:
        data[META_KEY] = dict(meta)
    return data


def new_workload_meta() -> dict[str, Any]:
    """The meta data of a workload being created: a fresh ``uid``, so the reports of a
    removed workload of the same name (its versions start at 1 again) never count
    for this one."""
    return {"uid": secrets.token_hex(6)}


def workload_uid(spec: Mapping[str, Any] | None) -> str:
    """The uid of a replicated spec; "" for one created before uids existed."""
    if spec is None:
        return ""
    return str(split_spec(spec)[1].get("uid") or "")


def is_current(report: Mapping[str, Any], uid: str) -> bool:
    """Whether a replica report belongs to the workload with ``uid`` (not to a removed
    one of the same name whose report the node has not replaced yet)."""
    return not uid or report.get("uid") == uid


def template_of(spec: Mapping[str, Any]) -> str:
    """What a container is made from (a change of it replaces containers)."""
    return json.dumps({k: spec.get(k) for k in TEMPLATE_FIELDS}, sort_keys=True)


def describe_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    changed = [k for k in TEMPLATE_FIELDS if old.get(k) != new.get(k)]
    return "changed " + ", ".join(changed) if changed else "same template"


def meta_for_put(
    current: Mapping[str, Any] | None, current_version: int, new_user: Mapping[str, Any]
) -> dict[str, Any]:
    """The meta data to store with ``new_user`` replacing ``current`` (at its version)."""
    if current is None:
        return {"template_since": 1}
    old_user, meta = split_spec(current)
    since = int(meta.get("template_since", 1))
    if template_of(old_user) == template_of(new_user):
        return meta or {"template_since": since}
    history = list(meta.get("history", []))
    history.append(
        {
            "first": since,
            "last": current_version,
            "spec": old_user,
            "status": "replaced",
            # What made the replaced version, not what replaced it (the next row says that).
            "change": meta.get("change", "created" if since == 1 else ""),
        }
    )
    renewed = {
        "template_since": current_version + 1,
        "history": history[-HISTORY_LIMIT:],
        "change": describe_change(old_user, new_user),
    }
    if meta.get("uid"):
        renewed["uid"] = meta["uid"]
    return renewed


def spec_dict_at(spec: Mapping[str, Any], version: int) -> dict[str, Any]:
    """The user's spec a placement at ``version`` runs: the current one from the
    version its template started at, else the remembered one (the current one if it
    is not remembered any more)."""
    user, meta = split_spec(spec)
    if version >= int(meta.get("template_since", 1)):
        return user
    for entry in reversed(meta.get("history", [])):
        if int(entry.get("first", 0)) <= version <= int(entry.get("last", -1)):
            old = dict(entry["spec"])
            old["replicas"] = user.get("replicas", old.get("replicas"))
            return old
    return user


# -- system jobs ---------------------------------------------------------------------


def eligible_for_system(spec: WorkloadSpec, nodes: Mapping[str, NodeView]) -> list[str]:
    """Nodes that should each run one replica of the system job ``spec``, sorted."""
    found = []
    for view in nodes.values():
        if view.liveness not in ("alive", "suspect") or not view.capacity:
            continue
        if not view.eligible or view.draining:
            continue
        if all(c.matches(view.labels) for c in spec.constraints):
            found.append(view.name)
    return sorted(found)


@dataclass(slots=True)
class SystemPlan:
    scale: int | None = None  # the replica count to commit first, if it changed
    place: list[tuple[str, str]] = field(default_factory=list)  # (replica, node)
    vacant: list[str] = field(default_factory=list)  # slots with no node to go to


def system_plan(
    spec: WorkloadSpec, placements: Mapping[str, str], nodes: Mapping[str, NodeView]
) -> SystemPlan:
    """``placements``: replica -> node for this workload now.

    A replica on an eligible node is never touched: replica ids are slots
    (``w-0``, ``w-1``...), and scaling down drops the highest ones, so the count
    only shrinks past slots that sit on no eligible node. A slot whose node died
    while a higher one still runs stays vacant (its placement goes; it waits for
    the next node) instead of its replica taking over a healthy one's node."""
    targets = eligible_for_system(spec, nodes)
    covered: set[str] = set()
    kept: set[int] = set()
    for index in range(spec.replicas):
        node = placements.get(replica_id(spec.name, index))
        if node is not None and node in targets and node not in covered:
            covered.add(node)
            kept.add(index)
    wanted = max(len(targets), max(kept) + 1 if kept else 0)
    if spec.replicas != wanted:
        return SystemPlan(scale=wanted)
    free = [replica_id(spec.name, i) for i in range(spec.replicas) if i not in kept]
    uncovered = [n for n in targets if n not in covered]
    return SystemPlan(place=list(zip(free, uncovered, strict=False)), vacant=free[len(uncovered) :])


# -- drains --------------------------------------------------------------------------


def report_of(nodes: Mapping[str, NodeView], node: str, rid: str) -> Mapping[str, Any] | None:
    view = nodes.get(node)
    return view.replicas.get(rid) if view is not None else None


def is_available(report: Mapping[str, Any] | None) -> bool:
    """Running, and healthy if it has a health check."""
    if report is None or report.get("state") != "running":
        return False
    return report.get("health") in (None, "healthy")


def is_finished(spec: WorkloadSpec, report: Mapping[str, Any] | None) -> bool:
    """A batch replica that completed: it stays where it ran, even on a draining node."""
    return spec.type == "batch" and report is not None and report.get("state") == "completed"


def drain_allowance(
    spec: WorkloadSpec,
    placements: Mapping[str, str],
    nodes: Mapping[str, NodeView],
) -> int:
    """How many more replicas of the workload may leave draining nodes now."""
    unavailable = 0
    for index in range(spec.replicas):
        rid = replica_id(spec.name, index)
        node = placements.get(rid)
        if node is None:
            unavailable += 1
            continue
        view = nodes.get(node)
        if view is not None and view.draining:
            continue  # still running where it is until it moves
        report = report_of(nodes, node, rid)
        if not is_available(report) and not is_finished(spec, report):
            unavailable += 1
    return max(0, spec.drain.max_unavailable - unavailable)


# -- rolling updates -----------------------------------------------------------------


@dataclass(slots=True)
class Rollout:
    """The state of a workload's rolling update, and what the leader should do next."""

    version: int
    status: str  # complete | running | failed | reverting
    total: int = 0
    updated: int = 0
    healthy: int = 0
    message: str = ""
    replace: list[tuple[str, str]] = field(default_factory=list)  # (replica, node) to update
    revert_to: dict[str, Any] | None = None  # the spec dict to put back (auto_revert)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "status": self.status,
            "total": self.total,
            "updated": self.updated,
            "healthy": self.healthy,
            "message": self.message,
        }


def rollout_plan(
    spec_dict: Mapping[str, Any],
    version: int,
    spec: WorkloadSpec,
    placements: Mapping[str, tuple[str, int]],
    nodes: Mapping[str, NodeView],
    now: float,
) -> Rollout:
    """``placements``: replica -> (node, spec_version) for this workload now."""
    user, meta = split_spec(spec_dict)
    since = int(meta.get("template_since", 1))
    history = list(meta.get("history", []))
    policy = spec.update
    result = Rollout(version=version, status="complete", total=spec.replicas)
    outdated: list[tuple[str, str]] = []
    in_progress = 0
    failures: list[str] = []
    for index in range(spec.replicas):
        rid = replica_id(spec.name, index)
        placed = placements.get(rid)
        if placed is None:
            continue
        node, placed_version = placed
        if placed_version < since:
            outdated.append((rid, node))
            continue
        result.updated += 1
        report = report_of(nodes, node, rid)
        if report is None or int(report.get("version") or 0) < placed_version:
            in_progress += 1  # the node has not reported this version yet
            continue
        state = report.get("state")
        health = report.get("health")
        if state in ("exited", "failed", "backoff") or health == "unhealthy":
            failures.append(f"{rid} {state}" + (f" ({health})" if health else ""))
            continue
        if report.get("restarts", 0) and state != "completed":
            failures.append(f"{rid} restarted {report.get('restarts')} times")
            continue
        healthy_since = report.get("healthy_since")
        if (
            is_available(report)
            and healthy_since is not None
            and now - float(healthy_since) >= policy.min_healthy
        ):
            result.healthy += 1
            continue
        started = report.get("started_at")
        if started is not None and now - float(started) > policy.healthy_deadline:
            failures.append(f"{rid} not healthy within {policy.healthy_deadline:g}s")
            continue
        in_progress += 1
    if meta.get("reverted_from"):
        result.message = f"rolled back from version {meta['reverted_from']}"
    if not outdated and not failures:
        result.status = "complete" if in_progress == 0 else "running"
        return result
    if failures:
        result.status = "failed"
        result.message = "update failed: " + "; ".join(failures[:3])
        good = [h for h in history if h.get("status") != "failed"]
        if policy.auto_revert and good and outdated:
            target = dict(good[-1]["spec"])
            target["replicas"] = user.get("replicas", target.get("replicas"))
            new_history = list(history)
            new_history.append(
                {
                    "first": since,
                    "last": version,
                    "spec": user,
                    "status": "failed",
                    "change": meta.get("change", ""),
                }
            )
            result.revert_to = join_spec(
                target,
                {
                    "template_since": version + 1,
                    "history": new_history[-HISTORY_LIMIT:],
                    "reverted_from": version,
                    "change": f"rollback to the spec of version {good[-1].get('last')}",
                },
            )
            result.status = "reverting"
        return result
    result.status = "running"
    slots = policy.max_parallel - in_progress
    if slots > 0:
        result.replace = outdated[:slots]
    return result


def history_rows(spec_dict: Mapping[str, Any], version: int) -> list[dict[str, Any]]:
    """The versions a workload went through, oldest first, for ``hypha inspect``."""
    _, meta = split_spec(spec_dict)
    rows = []
    for entry in meta.get("history", []):
        first, last = int(entry.get("first", 0)), int(entry.get("last", 0))
        rows.append(
            {
                "version": last,
                "version_range": f"{first}-{last}" if first != last else str(last),
                "status": entry.get("status", ""),
                "change": entry.get("change", ""),
            }
        )
    since = int(meta.get("template_since", 1))
    rows.append(
        {
            "version": version,
            "version_range": f"{since}-{version}" if since != version else str(version),
            "status": "current",
            "change": meta.get("change", "created" if since == 1 else ""),
        }
    )
    return rows


# -- batch ---------------------------------------------------------------------------


def batch_status(spec: WorkloadSpec, reports: Iterable[Mapping[str, Any] | None]) -> str:
    """complete | failed | running, for a batch job's replicas' reports."""
    states = [r.get("state") if r is not None else None for r in reports]
    if len(states) < spec.replicas:
        return "running"
    if any(s == "exited" for s in states):
        return "failed"
    if states and all(s == "completed" for s in states):
        return "complete"
    return "running"


__all__ = [
    "META_KEY",
    "Rollout",
    "SystemPlan",
    "batch_status",
    "drain_allowance",
    "eligible_for_system",
    "history_rows",
    "is_current",
    "join_spec",
    "meta_for_put",
    "new_workload_meta",
    "rollout_plan",
    "spec_dict_at",
    "split_spec",
    "workload_uid",
    "system_plan",
]
