"""The leader's loop: place unplaced replicas, move those of dead and draining nodes.

Only the Raft leader runs a step. Each step reads the replicated desired state and
the gossip view of the nodes, asks ``scheduler.place`` where the replicas that need
a home should go, and commits the answers as one ``SetPlacements`` batch tagged with
its Raft term (a deposed leader's batch is refused as stale). ``plan`` is a pure
function of its inputs, so it is tested without Raft, gossip or time.

Rules the plan follows:

* a replica needs a home when it has no placement, or its node is dead, has left,
  is unknown to gossip (after a grace, so a new leader learns the membership
  first), or is draining;
* a node that is only *suspect* gets no new work but keeps its replicas;
* when more than half of the nodes (and at least two) are lost at once, nothing
  moves: that looks like a partition seen from the minority, not a failure;
* a replica that cannot go anywhere keeps its placement if its node is only
  draining (it keeps running until it can move), and loses it if its node is lost,
  so it shows as pending with the scheduler's reason;
* a batch replica that completed (exit 0) never moves: not off a draining node, nor
  off a dead one (its last report stays in gossip until the node is reaped).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

import scheduler
from agent.nodes import NodeView
from agent.spec import WorkloadSpec, replica_id
from agent.workloads import (
    Rollout,
    drain_allowance,
    is_current,
    is_finished,
    report_of,
    rollout_plan,
    system_plan,
    workload_uid,
)

log = logging.getLogger("hypha.leader")

BATCH = 500
OP_MAP = {
    "==": "eq",
    "!=": "ne",
    "in": "in",
    "not_in": "not_in",
    "exists": "exists",
    "not_exists": "not_exists",
}


@dataclass(frozen=True, slots=True)
class WorkloadView:
    name: str
    spec: WorkloadSpec
    version: int
    spec_dict: Mapping[str, Any] | None = None
    """The replicated spec with the agent's meta data (rolling updates need it)."""


@dataclass(frozen=True, slots=True)
class PlacementView:
    replica_id: str
    workload: str
    node: str
    spec_version: int
    completed: bool = False
    """The replicated state records that it ran to completion here (a batch job)."""


@dataclass(slots=True)
class Plan:
    """What one leader step commits."""

    place: list[tuple[str, str, int]] = field(default_factory=list)  # (replica, node, version)
    remove: list[str] = field(default_factory=list)
    pending: dict[str, str] = field(default_factory=dict)  # replica -> why it has no home
    rules: dict[str, str] = field(default_factory=dict)  # replica -> the rule that blocked it
    paused: str | None = None  # why moves were held back
    scale: dict[str, int] = field(default_factory=dict)  # system jobs: new replica counts
    revert: dict[str, tuple[dict[str, Any], int]] = field(default_factory=dict)  # auto_revert
    rollouts: dict[str, Rollout] = field(default_factory=dict)
    # Batch replicas whose node reports them completed, not yet recorded as such in the
    # replicated state: (replica, node, version).
    completed: list[tuple[str, str, int]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.place and not self.remove


def resources_of(spec: WorkloadSpec) -> scheduler.Resources:
    return scheduler.Resources(
        cpu_millicores=spec.resources.cpu_millicores,
        memory_bytes=spec.resources.memory_bytes,
        pids=spec.resources.pids or 0,
    )


def request_for(rid: str, spec: WorkloadSpec) -> scheduler.PlacementRequest:
    return scheduler.PlacementRequest(
        replica_id=rid,
        workload=spec.name,
        resources=resources_of(spec),
        tenant=spec.tenant,
        constraints=tuple(
            scheduler.Constraint(c.label, OP_MAP[c.op], c.values)  # type: ignore[arg-type]
            for c in spec.constraints
        ),
        spread_by=spec.placement.spread_by,
        max_skew=spec.placement.max_skew,
        distinct_nodes=spec.placement.distinct_nodes or spec.type == "system",
        priority=spec.placement.priority,
    )


def _res(data: Mapping[str, Any]) -> scheduler.Resources:
    return scheduler.Resources(
        cpu_millicores=max(0, int(data.get("cpu_millicores", 0) or 0)),
        memory_bytes=max(0, int(data.get("memory_bytes", 0) or 0)),
        pids=max(0, int(data.get("pids", 0) or 0)),
    )


def is_lost(node: NodeView | None, *, unknown_is_lost: bool) -> bool:
    if node is None:
        return unknown_is_lost
    if node.liveness == "unknown":
        return unknown_is_lost
    return node.liveness in ("dead", "left")


def plan(
    workloads: Iterable[WorkloadView],
    placements: Iterable[PlacementView],
    nodes: Mapping[str, NodeView],
    *,
    seed: int,
    unknown_is_lost: bool = True,
    strategy: str = "mycelial",
    now: float | None = None,
) -> tuple[Plan, scheduler.Snapshot]:
    """Decide placements; returns the plan and the snapshot it was made from.

    System jobs are placed by ``agent.workloads.system_plan``, replicas leave
    draining nodes at most ``drain.max_unavailable`` at a time, and with ``now``
    (wall clock) rolling updates advance (``agent.workloads.rollout_plan``)."""
    result = Plan()
    by_name = {w.name: w for w in workloads}
    current = {p.replica_id: p for p in placements}
    system = {name for name, w in by_name.items() if w.spec.type == "system"}
    nodes_of: dict[str, dict[str, str]] = {}
    for p in current.values():
        nodes_of.setdefault(p.workload, {})[p.replica_id] = p.node
    allowance: dict[str, int] = {}

    lost_nodes = {
        p.node
        for p in current.values()
        if is_lost(nodes.get(p.node), unknown_is_lost=unknown_is_lost)
    }
    lost_nodes |= {n for n, v in nodes.items() if is_lost(v, unknown_is_lost=True)}
    known = [v for v in nodes.values() if v.liveness not in ("left",)]
    lost_live_set = [n for n in lost_nodes if n in nodes and nodes[n].liveness != "left"]
    if len(lost_live_set) >= 2 and len(lost_live_set) * 2 > len(known):
        result.paused = (
            f"{len(lost_live_set)} of {len(known)} nodes lost at once; not moving replicas "
            "(a partition looks like this from the minority side)"
        )
        moving_lost: set[str] = set()
    else:
        moving_lost = lost_nodes

    needs_home: list[str] = []
    staying: list[scheduler.Placement] = []
    for rid, p in sorted(current.items()):
        workload = by_name.get(p.workload)
        if workload is None:
            result.remove.append(rid)
            continue
        node = nodes.get(p.node)
        if workload.name in system:
            pass  # system_plan below decides where system replicas go
        elif p.completed:
            pass  # a completed batch replica stays done, whatever became of its node
        elif is_finished(workload.spec, report := _report(nodes, p.node, rid, workload)):
            # Done, as its node says; recorded in the state, so that it stays done once
            # gossip has forgotten the node.
            if report is not None and int(report.get("version") or 0) == p.spec_version:
                result.completed.append((rid, p.node, p.spec_version))
        elif p.node in moving_lost:
            needs_home.append(rid)
            continue
        elif node is not None and node.draining:
            if workload.name not in allowance:
                allowance[workload.name] = drain_allowance(
                    workload.spec, nodes_of.get(workload.name, {}), nodes
                )
            if allowance[workload.name] > 0:
                allowance[workload.name] -= 1
                needs_home.append(rid)
                continue
        staying.append(
            scheduler.Placement(
                replica_id=rid,
                workload=p.workload,
                node_id=p.node,
                resources=resources_of(workload.spec),
                tenant=workload.spec.tenant,
            )
        )
    for workload in sorted(by_name.values(), key=lambda w: w.name):
        if workload.name in system:
            continue
        for index in range(workload.spec.replicas):
            rid = replica_id(workload.name, index)
            if rid not in current:
                needs_home.append(rid)

    allocated: dict[str, scheduler.Resources] = {}
    for sp in staying:
        allocated[sp.node_id] = allocated.get(sp.node_id, scheduler.Resources()) + sp.resources
    infos = []
    for view in sorted(nodes.values(), key=lambda v: v.name):
        if not view.capacity or view.liveness in ("left", "unknown"):
            continue
        load = None
        if view.load:
            load = scheduler.Resources(
                cpu_millicores=max(0, int(float(view.load.get("load1", 0.0)) * 1000)),
                memory_bytes=max(0, int(view.load.get("memory_bytes", 0) or 0)),
                pids=0,
            )
        infos.append(
            scheduler.NodeInfo(
                id=view.name,
                capacity=_res(view.capacity),
                allocated=allocated.get(view.name, scheduler.Resources()),
                labels=view.labels,
                zone=view.zone or view.labels.get("zone", ""),
                state=view.scheduler_state,  # type: ignore[arg-type]
                eligible=view.eligible,
                load=load,
                credit=view.credit,
            )
        )
    snapshot = scheduler.Snapshot(nodes=tuple(infos), placements=tuple(staying))
    _plan_workloads(result, by_name, current, nodes, set(needs_home), now)
    if not needs_home:
        return result, snapshot

    requests = []
    for rid in needs_home:
        workload_name = rid.rpartition("-")[0]
        requests.append(request_for(rid, by_name[workload_name].spec))
    decisions = scheduler.place(snapshot, requests, seed, strategy=strategy)
    for decision in decisions:
        rid = decision.replica_id
        old = current.get(rid)
        version = by_name[rid.rpartition("-")[0]].version
        if decision.node_id is not None:
            if old is None or old.node != decision.node_id or old.spec_version != version:
                result.place.append((rid, decision.node_id, version))
            continue
        result.pending[rid] = decision.reason or "no node fits"
        result.rules[rid] = decision.rule or "unknown"
        if old is not None and old.node in moving_lost:
            result.remove.append(rid)
    return result, snapshot


def _report(
    nodes: Mapping[str, NodeView], node: str, rid: str, workload: WorkloadView
) -> Mapping[str, Any] | None:
    """The node's report of ``rid`` if it is of this workload, not of a removed one."""
    report = report_of(nodes, node, rid)
    if report is None or not is_current(report, workload_uid(workload.spec_dict)):
        return None
    return report


def _plan_workloads(
    result: Plan,
    by_name: Mapping[str, WorkloadView],
    current: Mapping[str, PlacementView],
    nodes: Mapping[str, NodeView],
    moving: set[str],
    now: float | None,
) -> None:
    """System jobs and rolling updates (issue 8): see ``agent.workloads``."""
    for name, workload in sorted(by_name.items()):
        mine = {rid: p for rid, p in current.items() if p.workload == name}
        if workload.spec.type == "system":
            sp = system_plan(workload.spec, {rid: p.node for rid, p in mine.items()}, nodes)
            if sp.scale is not None:
                result.scale[name] = sp.scale
                continue
            for rid, node in sp.place:
                result.place.append((rid, node, workload.version))
            for rid in sp.vacant:
                result.pending[rid] = "system job: its node is gone; waits for a node to join"
                result.rules[rid] = "system"
                if rid in mine:
                    result.remove.append(rid)
        if now is None or workload.spec_dict is None or workload.spec.type == "batch":
            continue
        rollout = rollout_plan(
            workload.spec_dict,
            workload.version,
            workload.spec,
            {rid: (p.node, p.spec_version) for rid, p in mine.items()},
            nodes,
            now,
        )
        result.rollouts[name] = rollout
        if rollout.revert_to is not None:
            result.revert[name] = (rollout.revert_to, workload.version)
            continue
        placing = {rid for rid, _, _ in result.place}
        for rid, node in rollout.replace:
            view = nodes.get(node)
            if rid not in moving and rid not in placing and not (view and view.draining):
                result.place.append((rid, node, workload.version))


class LeaderLoop:
    """Runs ``plan`` whenever something changes, while this agent leads."""

    def __init__(
        self,
        *,
        is_leader: Callable[[], bool],
        term: Callable[[], int],
        read: Callable[[], tuple[list[WorkloadView], list[PlacementView]]],
        nodes: Callable[[], dict[str, NodeView]],
        commit_placements: Callable[[int, list[tuple[str, str, int]]], Awaitable[Any]],
        remove_placements: Callable[[int, list[str]], Awaitable[Any]],
        commit_credits: Callable[[int, scheduler.Snapshot], Awaitable[Any]] | None = None,
        mark_completed: Callable[[int, list[tuple[str, str, int]]], Awaitable[Any]] | None = None,
        on_step: Callable[[Plan, float], None] | None = None,
        on_pending: Callable[[dict[str, str]], None] | None = None,
        scale_workloads: Callable[[dict[str, int]], Awaitable[Any]] | None = None,
        revert_workloads: Callable[[dict[str, tuple[dict[str, Any], int]]], Awaitable[Any]]
        | None = None,
        clock: Callable[[], float] = time.time,
        interval: float = 1.0,
        epoch_interval: float = 10.0,
        unknown_grace: float = 5.0,
    ) -> None:
        self._is_leader = is_leader
        self._term = term
        self._read = read
        self._nodes = nodes
        self._commit_placements = commit_placements
        self._remove_placements = remove_placements
        self._commit_credits = commit_credits
        self._mark_completed = mark_completed
        self._scale_workloads = scale_workloads
        self._revert_workloads = revert_workloads
        self._clock = clock
        self.rollouts: dict[str, Rollout] = {}
        self._on_step = on_step
        self._on_pending = on_pending
        self.interval = interval
        self.epoch_interval = epoch_interval
        self.unknown_grace = unknown_grace
        self._wake = trio.Event()
        self._leading_since: float | None = None
        self._last_epoch = 0.0
        self.pending: dict[str, str] = {}
        self.paused: str | None = None
        self.refused: dict[str, str] = {}  # replica -> why the state refused its placement
        self.steps = 0

    def poke(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            with trio.move_on_after(self.interval):
                await self._wake.wait()
            self._wake = trio.Event()
            if not self._is_leader():
                if self._leading_since is not None and self._on_pending is not None:
                    self._on_pending({})
                self._leading_since = None
                self.pending = {}
                continue
            now = trio.current_time()
            if self._leading_since is None:
                self._leading_since = now
                self._last_epoch = now
            await self.step(unknown_is_lost=now - self._leading_since >= self.unknown_grace)
            if self.refused:
                await trio.sleep(self.interval)  # no hot loop on a plan the state refuses
            if self._commit_credits is not None and now - self._last_epoch >= self.epoch_interval:
                self._last_epoch = now
                _, snapshot = plan(
                    *self._read(), self._nodes(), seed=self._term(), unknown_is_lost=False
                )
                await self._commit_credits(self._term(), snapshot)

    async def step(self, *, unknown_is_lost: bool = True) -> Plan:
        term = self._term()
        started = time.perf_counter()
        workloads, placements = self._read()
        result, _ = plan(
            workloads,
            placements,
            self._nodes(),
            seed=term,
            unknown_is_lost=unknown_is_lost,
            now=self._clock(),
        )
        self.rollouts = result.rollouts
        if result.scale and self._scale_workloads is not None:
            await self._scale_workloads(result.scale)
        if result.revert and self._revert_workloads is not None:
            log.warning("rolling back failed updates", extra={"workloads": sorted(result.revert)})
            await self._revert_workloads(result.revert)
        if self._on_step is not None:
            self._on_step(result, time.perf_counter() - started)
        self.steps += 1
        self.pending = result.pending
        if self._on_pending is not None:
            self._on_pending(result.pending)
        if result.paused != self.paused and result.paused:
            log.warning("rescheduling paused", extra={"reason": result.paused})
        self.paused = result.paused
        if self._mark_completed is not None:
            for start in range(0, len(result.completed), BATCH):
                await self._mark_completed(term, result.completed[start : start + BATCH])
        for start in range(0, len(result.remove), BATCH):
            await self._remove_placements(term, result.remove[start : start + BATCH])
        self.refused = {}
        for start in range(0, len(result.place), BATCH):
            batch = result.place[start : start + BATCH]
            log.info("committing placements", extra={"count": len(batch), "term": term})
            answer = await self._commit_placements(term, batch)
            if isinstance(answer, dict) and answer.get("rejected"):
                self.refused.update(answer["rejected"])
        if self.refused:
            # The state refused what this leader planned: its view is wrong somewhere.
            # Say so, and let run() wait an interval rather than plan the same again.
            log.warning(
                "placements refused by the state",
                extra={"term": term, "refused": dict(sorted(self.refused.items())[:10])},
            )
        return result
