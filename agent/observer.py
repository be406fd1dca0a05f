"""Turns what the agent sees into events (``agent.events``) and metrics (``agent.metrics``).

Sources, all of which every agent has, so ``hypha events`` on any agent shows the
whole cluster:

* gossip's member events -> ``member.joined|suspect|alive|dead|left``;
* Raft's leader changes -> ``leader.changed``;
* the replicated state, compared after every applied command that can change it
  -> ``workload.*``, ``node.admin``, ``replica.placed|moved|unplaced``;
* replica reports (this node's from the reconciler, the others' from their
  ``r/<replica>`` gossip keys) -> ``replica.state`` and ``replica.failed``.

Only the leader's own step knows *why* a replica has no home, so
``schedule.failed`` comes from the leader's agent (``leader_step``).

Comparing states rather than decoding commands keeps this honest: a dropped
notification only delays an event until the next comparison, and what is
reported is what the state now says, not what someone asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import trio

from agent.events import EventBus
from agent.metrics import AgentMetrics
from agent.nodes import REPLICA_PREFIX, decode, replica_from_value

log = logging.getLogger("hypha.events")

#: Commands after which the workloads, placements or node admin state may differ.
STATE_OPS = frozenset(
    {
        "put_workload",
        "delete_workload",
        "scale_workload",
        "set_placements",
        "remove_placements",
        "set_node_admin",
    }
)
#: Replica states that mean "it ran and stopped".
EXITED_STATES = frozenset({"exited", "backoff", "completed", "starting"})


def exit_outcome(exit_code: int | None, oom_killed: bool) -> str:
    if oom_killed:
        return "oom"
    if exit_code == 0:
        return "success"
    if exit_code is not None and exit_code > 128:
        return "signal"
    return "error"


class Observer:
    """Feeds ``bus`` and ``metrics`` from one agent's gossip, Raft and reconciler."""

    def __init__(self, agent: Any, bus: EventBus, metrics: AgentMetrics) -> None:
        self.agent = agent
        self.bus = bus
        self.metrics = metrics
        self._workloads: dict[str, tuple[int, int, dict[str, Any]]] | None = None
        self._placements: dict[str, tuple[str, str]] = {}
        self._admins: dict[str, tuple[bool, bool]] = {}
        # (node, replica) -> last report (dict in replica_from_value's shape)
        self._replicas: dict[tuple[str, str], dict[str, Any]] = {}
        # (node, replica) -> started_at of the last run whose exit was reported
        self._exits_seen: dict[tuple[str, str], Any] = {}
        # replica -> (started_at, finished_at) of the last run counted in the metrics
        self._runs_counted: dict[str, tuple[Any, Any]] = {}
        self._pending: dict[str, str] = {}
        # node -> the pending reasons it last published (the leader's "pending" key)
        self._remote_pending: dict[str, dict[str, str]] = {}

    # -- publishing ---------------------------------------------------------------------
    def publish(self, kind: str, message: str, *, level: str = "info", **data: Any) -> None:
        event = self.bus.publish(kind, message, level=level, **data)
        self.metrics.events.labels(kind).inc()
        extra = {"event": kind, **{f"{k}": v for k, v in event.data.items()}}
        log.log(logging.WARNING if level == "warning" else logging.INFO, message, extra=extra)

    # -- running ------------------------------------------------------------------------
    async def run(self) -> None:
        """Watch gossip and Raft until cancelled (the agent's nursery owns this)."""
        gossip_events = self.agent.gossip.subscribe()
        raft_events = self.agent.raft.subscribe()
        self._baseline()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_gossip, gossip_events)
            nursery.start_soon(self._watch_raft, raft_events)

    def _baseline(self) -> None:
        """What is already true when the agent starts is not news."""
        self.diff_state(quiet=True)
        for node, state in self.agent.gossip.states().items():
            if node != self.agent.name:
                self._remote_pending[node] = _pending_map(state.get("pending"))
            for key, value in state.items():
                if key.startswith(REPLICA_PREFIX):
                    rid = key[len(REPLICA_PREFIX) :]
                    report = replica_from_value(rid, value)
                    self._replicas[(node, rid)] = report
                    self._exits_seen[(node, rid)] = report.get("started_at")

    async def _watch_gossip(self, events: Any) -> None:
        async for event in events:
            member = getattr(event, "member", None)
            if member is not None:
                self._member(str(event.kind), member)
                continue
            key = getattr(event, "key", None)
            if key == "pending" and event.node != self.agent.name:
                self.remote_pending(str(event.node), _pending_map(event.value))
            elif key is not None and str(key).startswith(REPLICA_PREFIX):
                rid = str(key)[len(REPLICA_PREFIX) :]
                value = event.value
                report = None if value is None else replica_from_value(rid, value)
                self.replica_report(str(event.node), rid, report)

    async def _watch_raft(self, events: Any) -> None:
        async for event in events:
            kind = getattr(event.kind, "value", str(event.kind))
            if kind == "leader_changed":
                self._leader_changed(event.data)
            elif kind == "applied" and event.data.get("op") in STATE_OPS:
                self.diff_state()

    # -- membership and leadership ------------------------------------------------------
    def _member(self, kind: str, member: Any) -> None:
        host, port = member.address
        address = f"{host}:{port}"
        name = member.name
        data = {"member": name, "address": address, "incarnation": member.incarnation}
        if kind == "joined":
            self.publish("member.joined", f"node {name} joined ({address})", **data)
        elif kind == "suspect":
            self.publish(
                "member.suspect",
                f"node {name} is suspect (not answering probes); it gets no new work",
                level="warning",
                **data,
            )
        elif kind == "alive":
            self.publish("member.alive", f"node {name} is alive again", **data)
        elif kind == "dead":
            placed = sum(1 for _rid, (node, _w) in self._placements.items() if node == name)
            tail = f"; its {placed} replica(s) will move" if placed else ""
            self.publish(
                "member.dead",
                f"node {name} is dead{tail}",
                level="warning",
                replicas=placed,
                **data,
            )
        elif kind == "left":
            self.publish("member.left", f"node {name} left the cluster", **data)

    def _node_of_raft(self, raft_address: str | None) -> str | None:
        if not raft_address:
            return None
        for name, state in self.agent.gossip.states().items():
            if decode(state.get("raft")) == raft_address:
                return str(name)
        return None

    def _leader_changed(self, data: Mapping[str, Any]) -> None:
        leader = data.get("leader")
        term = data.get("term")
        node = self.agent.name if data.get("is_self") else self._node_of_raft(leader)
        if leader is None and not term:
            return  # starting up: no leader yet is not news
        if leader is None:
            message = f"no Raft leader (term {term})"
        else:
            message = f"{node or leader} is the Raft leader (term {term})"
        self.publish(
            "leader.changed",
            message,
            level="info" if leader else "warning",
            leader=node,
            raft_address=leader,
            term=term,
        )

    # -- the replicated state -----------------------------------------------------------
    def diff_state(self, *, quiet: bool = False) -> None:
        """Compare the replicated state with the last look and publish what changed."""
        state = self.agent.raft.state
        workloads = {r.name: (r.version, r.replicas, r.spec) for r in state.workloads()}
        placements = {p.replica_id: (p.node, p.workload) for p in state.placements()}
        admins = {a.node: (a.eligible, a.draining) for a in state.node_admins()}
        previous = self._workloads
        old_placements = self._placements
        old_admins = self._admins
        self._workloads, self._placements, self._admins = workloads, placements, admins
        if quiet or previous is None:
            return
        self._diff_workloads(previous, workloads)
        self._diff_admins(old_admins, admins)
        self._diff_placements(old_placements, placements, workloads)

    def _diff_workloads(
        self,
        old: Mapping[str, tuple[int, int, dict[str, Any]]],
        new: Mapping[str, tuple[int, int, dict[str, Any]]],
    ) -> None:
        for name, (version, replicas, spec) in sorted(new.items()):
            before = old.get(name)
            data: dict[str, Any] = {"workload": name, "version": version, "replicas": replicas}
            if before is None:
                self.publish(
                    "workload.created",
                    f"workload {name} created with {replicas} replica(s) (version {version})",
                    **data,
                )
                continue
            old_version, old_replicas, old_spec = before
            if old_version == version:
                continue
            same_template = {k: v for k, v in old_spec.items() if k != "replicas"} == {
                k: v for k, v in spec.items() if k != "replicas"
            }
            if same_template and old_replicas != replicas:
                self.publish(
                    "workload.scaled",
                    f"workload {name} scaled from {old_replicas} to {replicas} replica(s)",
                    previous_replicas=old_replicas,
                    **data,
                )
            else:
                self.publish(
                    "workload.updated",
                    f"workload {name} updated to version {version}",
                    **data,
                )
        for name in sorted(set(old) - set(new)):
            self.publish("workload.deleted", f"workload {name} deleted", workload=name)

    def _diff_admins(
        self, old: Mapping[str, tuple[bool, bool]], new: Mapping[str, tuple[bool, bool]]
    ) -> None:
        for node, (eligible, draining) in sorted(new.items()):
            if old.get(node, (True, False)) == (eligible, draining):
                continue
            if draining:
                what = "is draining: its replicas move elsewhere"
            elif not eligible:
                what = "is not eligible for new work"
            else:
                what = "takes new work again"
            self.publish(
                "node.admin",
                f"node {node} {what}",
                member=node,
                eligible=eligible,
                draining=draining,
            )

    def _liveness(self) -> dict[str, str]:
        return {m.name: m.state for m in self.agent.gossip.members()}

    def _diff_placements(
        self,
        old: Mapping[str, tuple[str, str]],
        new: Mapping[str, tuple[str, str]],
        workloads: Mapping[str, tuple[int, int, dict[str, Any]]],
    ) -> None:
        liveness: dict[str, str] | None = None
        for rid, (node, workload) in sorted(new.items()):
            before = old.get(rid)
            if before is None:
                self.publish(
                    "replica.placed",
                    f"replica {rid} placed on {node}",
                    replica=rid,
                    workload=workload,
                    to_node=node,
                )
            elif before[0] != node:
                if liveness is None:
                    liveness = self._liveness()
                why = self._why_leaving(before[0], liveness)
                self.publish(
                    "replica.moved",
                    f"replica {rid} moved from {before[0]} ({why}) to {node}",
                    replica=rid,
                    workload=workload,
                    from_node=before[0],
                    to_node=node,
                    reason=why,
                )
        for rid in sorted(set(old) - set(new)):
            node, workload = old[rid]
            record = workloads.get(workload)
            level = "info"
            if record is None:
                why = "workload deleted"
            elif _index(rid) >= record[1]:
                why = "scaled down"
            else:
                if liveness is None:
                    liveness = self._liveness()
                why = f"{self._why_leaving(node, liveness)}; no node fits it yet"
                level = "warning"
            self.publish(
                "replica.unplaced",
                f"replica {rid} removed from {node} ({why})",
                level=level,
                replica=rid,
                workload=workload,
                from_node=node,
                reason=why,
            )

    def _why_leaving(self, node: str, liveness: Mapping[str, str]) -> str:
        state = liveness.get(node, "unknown")
        if state in ("dead", "left", "unknown"):
            return f"node {state}"
        eligible, draining = self._admins.get(node, (True, False))
        if draining:
            return "node draining"
        return f"node {state}"

    # -- replica reports ----------------------------------------------------------------
    def local_reports(self, reports: Mapping[str, Any]) -> None:
        """This node's reconciler finished a pass (``ReplicaReport`` s by replica id)."""
        node = self.agent.name
        current = {rid: report.to_dict() for rid, report in reports.items()}
        for rid, data in current.items():
            self._count_exit(rid, data)
            self.replica_report(node, rid, data)
        for owner, rid in [k for k in self._replicas if k[0] == node]:
            if rid not in current:
                self._runs_counted.pop(rid, None)
                self.replica_report(owner, rid, None)

    def _count_exit(self, rid: str, data: Mapping[str, Any]) -> None:
        """Exits and OOM kills on this node, each container run counted once."""
        if data.get("exit_code") is None or data.get("state") not in EXITED_STATES:
            return
        run = (data.get("started_at"), data.get("finished_at"))
        if self._runs_counted.get(rid) == run:
            return
        self._runs_counted[rid] = run
        outcome = exit_outcome(data.get("exit_code"), bool(data.get("oom_killed")))
        self.metrics.container_exits.labels(outcome).inc()
        if outcome == "oom":
            self.metrics.oom_kills.inc()

    def replica_report(self, node: str, rid: str, report: Mapping[str, Any] | None) -> None:
        """A replica's report on ``node`` changed (None: the node no longer reports it)."""
        key = (node, rid)
        before = self._replicas.get(key)
        if report is None:
            if before is None:
                return
            del self._replicas[key]
            self._exits_seen.pop(key, None)
            if self._liveness().get(node) == "alive":
                self.publish(
                    "replica.state",
                    f"replica {rid} stopped on {node}",
                    replica=rid,
                    workload=before.get("workload"),
                    member=node,
                    state="removed",
                    previous=before.get("state"),
                )
            return
        report = dict(report)
        self._replicas[key] = report
        state = report.get("state")
        workload = report.get("workload")
        exit_code = report.get("exit_code")
        data: dict[str, Any] = {
            "replica": rid,
            "workload": workload,
            "member": node,
            "state": state,
            "previous": before.get("state") if before else None,
            "restarts": report.get("restarts") or None,
        }
        # One failure event per container run that exited badly, whatever states
        # the report passes through afterwards (exited, backoff, starting).
        if exit_code is not None and state in EXITED_STATES:
            run = report.get("started_at")
            if self._exits_seen.get(key, object()) != run:
                self._exits_seen[key] = run
                oom = bool(report.get("oom_killed"))
                if exit_code != 0 or oom:
                    how = "was OOM-killed" if oom else f"exited with code {exit_code}"
                    self.publish(
                        "replica.failed",
                        f"replica {rid} {how} on {node} (now {state})",
                        level="warning",
                        exit_code=exit_code,
                        oom_killed=oom or None,
                        **data,
                    )
                    return
        if state == "failed" and (
            before is None
            or before.get("state") != "failed"
            or before.get("error") != report.get("error")
        ):
            self.publish(
                "replica.failed",
                f"replica {rid} could not start on {node}: {report.get('error')}",
                level="warning",
                error=report.get("error"),
                **data,
            )
            return
        if before is not None and before.get("state") == state:
            return
        suffix = f" (exit code {exit_code})" if exit_code is not None and state != "running" else ""
        self.publish(
            "replica.state",
            f"replica {rid} is {state} on {node}{suffix}",
            exit_code=exit_code if suffix else None,
            **data,
        )

    # -- the leader's own steps ---------------------------------------------------------
    def leader_step(self, result: Any, seconds: float) -> None:
        """A leader planning step ran (``agent.leader.Plan``) in ``seconds``."""
        self.metrics.scheduler_decision.observe(seconds)
        self.metrics.scheduler_steps.inc()
        pending: dict[str, str] = dict(result.pending)
        rules: Mapping[str, str] = getattr(result, "rules", {}) or {}
        for rid, reason in sorted(pending.items()):
            if self._pending.get(rid) == reason:
                continue
            rule = rules.get(rid) or "unknown"
            self.metrics.scheduler_failures.labels(rule).inc()
            workload = rid.rpartition("-")[0]
            self.publish(
                "schedule.failed",
                f"no node for replica {rid}: {reason}",
                level="warning",
                replica=rid,
                workload=workload,
                rule=rule,
                reason=reason,
            )
        self._pending = pending

    def remote_pending(self, node: str, pending: Mapping[str, str]) -> None:
        """Another agent (the leader) published why replicas have no home: the same
        ``schedule.failed`` events on every agent, not only on the leader's."""
        before = self._remote_pending.get(node, {})
        self._remote_pending[node] = dict(pending)
        for rid, reason in sorted(pending.items()):
            if before.get(rid) == reason:
                continue
            self.publish(
                "schedule.failed",
                f"no node for replica {rid}: {reason}",
                level="warning",
                replica=rid,
                workload=rid.rpartition("-")[0],
                reason=reason,
                leader=node,
            )

    def placements_committed(self, kinds: Mapping[str, int]) -> None:
        """This agent, as leader, committed placements (``{"new": n, "move": m}``)."""
        for kind, count in kinds.items():
            if count:
                self.metrics.scheduler_placements.labels(kind).inc(count)


def _pending_map(text: str | None) -> dict[str, str]:
    found = decode(text, {})
    if not isinstance(found, dict):
        return {}
    return {str(k): str(v) for k, v in found.items()}


def _index(rid: str) -> int:
    try:
        return int(rid.rpartition("-")[2])
    except ValueError:
        return -1


__all__ = ["Observer", "exit_outcome"]
