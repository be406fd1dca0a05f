"""The node reconciler: make this node run exactly the replicas placed on it.

Level-triggered and idempotent. Each pass compares *desired* (the placements
for this node in the replicated state, with their workload specs) with *actual*
(``driver.list()``) and acts on the difference:

* a container whose replica is no longer placed here, or whose template (image,
  command, env, resources) changed, is stopped (SIGTERM, then SIGKILL after the
  workload's ``stop_grace``) and removed;
* a placed replica without a container is started;
* a replica whose container exited is started again under its restart policy,
  after an exponential backoff, or reported as exited with its code.

Everything the reconciler needs to remember lives on the containers themselves
(labels: replica, workload, template hash, restart count, stop grace), so a restarted agent
picks up exactly where it was (``driver.adopt()``) and stops what it no longer owns.
A pass runs on every change of the desired state, when a container exits, and
every ``interval`` seconds regardless. Runtime errors are reported per replica
(state ``failed`` with the message) and retried with backoff; they never stop
the loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

import runtime
from agent.health import HealthWatch
from agent.spec import WorkloadSpec

log = logging.getLogger("hypha.reconciler")

LABEL_REPLICA = "hypha.replica"
LABEL_WORKLOAD = "hypha.workload"
LABEL_VERSION = "hypha.version"
LABEL_TEMPLATE = "hypha.template"
LABEL_RESTARTS = "hypha.restarts"
LABEL_STOP_GRACE = "hypha.stop_grace"
# The grace of a container started before its label existed.
DEFAULT_STOP_GRACE = 10.0

#: A replica that ran this long before exiting starts its restart count afresh.
HEALTHY_RUN_SECONDS = 30.0
#: A replica that moved elsewhere keeps running here at most this long waiting for
#: its replacement to run (the hand-off of a drain; see ``keep_running``).
HANDOFF_TIMEOUT = 60.0
MAX_PARALLEL_ACTIONS = 16


@dataclass(frozen=True, slots=True)
class DesiredReplica:
    """One replica placed on this node, with the current spec of its workload."""

    replica_id: str
    spec: WorkloadSpec
    version: int
    uid: str = ""
    """The workload's uid (``agent.workloads.workload_uid``): set when it is created, it
    tells this workload's reports from those of a removed one of the same name."""
    done: bool = False
    """The replicated state records that it ran to completion here (a batch job): with
    no container left (a node that lost its data dir), it is not started again."""

    @property
    def workload(self) -> str:
        return self.spec.name


@dataclass(slots=True)
class ReplicaReport:
    """What this node says about one replica (published in gossip)."""

    replica_id: str
    workload: str
    state: str  # starting | running | exited | backoff | failed | stopping
    version: int = 0
    exit_code: int | None = None
    restarts: int = 0
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    oom_killed: bool = False
    health: str | None = None
    next_restart_at: float | None = None
    healthy_since: float | None = None
    uid: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "replica_id": self.replica_id,
            "workload": self.workload,
            "state": self.state,
            "version": self.version,
            "exit_code": self.exit_code,
            "restarts": self.restarts,
            "error": self.error,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "oom_killed": self.oom_killed,
            "health": self.health,
            "healthy_since": self.healthy_since,
        }


def template_hash(spec: WorkloadSpec) -> str:
    """A short hash of what a container is made from; a change means replace it.

    The replica count and placement rules are left out: scaling a workload or
    changing where new replicas go never restarts the ones already running."""
    data = spec.to_dict()
    template = {key: data[key] for key in ("image", "command", "env", "cwd", "resources", "labels")}
    text = json.dumps(template, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def container_spec(
    replica: DesiredReplica, *, node: str, restarts: int, agent: str = ""
) -> runtime.ContainerSpec:
    """``agent``: the agent instance (its container prefix), in ``HYPHA_AGENT``, so
    tools on the host tell its processes from those of another agent named alike."""
    spec = replica.spec
    _, _, index = replica.replica_id.rpartition("-")
    env = {
        "HYPHA_WORKLOAD": spec.name,
        "HYPHA_REPLICA": replica.replica_id,
        "HYPHA_INDEX": index,
        "HYPHA_NODE": node,
        **({"HYPHA_AGENT": agent} if agent else {}),
        **spec.env,
    }
    labels = {
        **{f"user.{k}": v for k, v in spec.labels.items()},
        LABEL_REPLICA: replica.replica_id,
        LABEL_WORKLOAD: spec.name,
        LABEL_VERSION: str(replica.version),
        LABEL_TEMPLATE: template_hash(spec),
        LABEL_RESTARTS: str(restarts),
        LABEL_STOP_GRACE: f"{spec.stop_grace:g}",
    }
    kwargs: dict[str, Any] = {
        "id": replica.replica_id,
        "command": spec.command,
        "image": Path(spec.image) if spec.image else None,
        "env": env,
        "cpu_millicores": spec.resources.cpu_millicores,
        "memory_bytes": spec.resources.memory_bytes,
        "pids_limit": spec.resources.pids,
        "labels": labels,
        "hostname": replica.replica_id if len(replica.replica_id) <= 63 else None,
    }
    if spec.cwd is not None:
        kwargs["cwd"] = spec.cwd
    return runtime.ContainerSpec(**kwargs)


@dataclass(slots=True)
class _StartFailure:
    count: int
    retry_at: float
    message: str


@dataclass(slots=True)
class _Actions:
    stop: list[tuple[runtime.ContainerStatus, float]] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    start: list[tuple[DesiredReplica, int]] = field(default_factory=list)


def _unowned_report(
    rid: str, status: runtime.ContainerStatus, state: str, *, error: str | None = None
) -> ReplicaReport:
    """A report of a container no replica placed here owns any more, read off its
    labels. Without a uid: no workload takes it for its current replica."""
    return ReplicaReport(
        rid,
        status.labels.get(LABEL_WORKLOAD, ""),
        state,
        int(status.labels.get(LABEL_VERSION, "0") or 0),
        started_at=status.started_at,
        error=error,
    )


class Reconciler:
    """Runs the placements of one node through one driver."""

    def __init__(
        self,
        driver: runtime.Driver,
        *,
        node: str,
        desired: Callable[[], Mapping[str, DesiredReplica]],
        on_report: Callable[[dict[str, ReplicaReport]], None] | None = None,
        on_start: Callable[[str, int, float, str | None], None] | None = None,
        interval: float = 1.0,
        clock: Callable[[], float] = time.time,
        keep_running: Callable[[str], bool] | None = None,
        agent: str = "",
    ) -> None:
        self.driver = driver
        self.agent = agent
        self._keep_running = keep_running
        self._handoff_since: dict[str, float] = {}
        self.node = node
        self._desired = desired
        self._on_report = on_report
        self._on_start = on_start
        self.interval = interval
        self._clock = clock
        self._wake = trio.Event()
        self._failures: dict[str, _StartFailure] = {}
        self._waiting: set[str] = set()
        self._stopping: set[str] = set()
        self.reports: dict[str, ReplicaReport] = {}
        self._health: dict[str, HealthWatch] = {}
        self._unhealthy: dict[str, str] = {}  # replica -> why its container was stopped
        self.passes = 0
        self._nursery: trio.Nursery | None = None

    def poke(self) -> None:
        """Ask for a pass soon (the desired state changed, or a container exited)."""
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Adopt what a previous run left, then reconcile until cancelled."""
        adopted = await self.driver.adopt()
        if adopted:
            log.info("adopted containers", extra={"count": len(adopted)})
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self.reconcile_once()
            task_status.started()
            while True:
                with trio.move_on_after(self._next_wake()):
                    await self._wake.wait()
                self._wake = trio.Event()
                await self.reconcile_once()

    def _next_wake(self) -> float:
        """Seconds until the next pass: the interval, or sooner for a due restart."""
        now = self._clock()
        soonest = self.interval
        for report in self.reports.values():
            if report.next_restart_at is not None:
                soonest = min(soonest, max(0.05, report.next_restart_at - now))
        return soonest

    async def reconcile_once(self) -> None:
        desired = dict(self._desired())
        actual = {c.labels.get(LABEL_REPLICA, c.id): c for c in await self.driver.list()}
        actions = _Actions()
        reports: dict[str, ReplicaReport] = {}
        now = self._clock()

        for rid, status in actual.items():
            want = desired.get(rid)
            if want is None and status.state == "running" and self._hand_off(rid, now):
                reports[rid] = _unowned_report(
                    rid,
                    status,
                    "handing-off",
                    error="keeps running until its replacement runs on its new node",
                )
                continue
            if want is None or status.labels.get(LABEL_TEMPLATE) != template_hash(want.spec):
                live = status.state in ("running", "created", "unknown")
                if live:
                    grace = want.spec.stop_grace if want else self._grace_for(status)
                    actions.stop.append((status, grace))
                    if want is not None:
                        reports[rid] = self._report(want, status, "stopping")
                elif status.id not in self._stopping:  # else its stop removes it
                    actions.remove.append(status.id)
                if want is None and (live or status.id in self._stopping):
                    # No longer placed here (moved off a draining node, workload removed)
                    # but still here until its stop grace ends: say so, so that the node's
                    # report lists every container it still has (`drain --wait` waits
                    # for that).
                    reports[rid] = _unowned_report(rid, status, "stopping")

        for rid, want in desired.items():
            current = actual.get(rid)
            if current is not None and current.labels.get(LABEL_TEMPLATE) != template_hash(
                want.spec
            ):
                continue  # being replaced: stopped above, started on the next pass
            if current is None and rid in self._stopping:
                # Its old container is still being stopped and removed, beside the
                # loop (the driver may already have dropped it from its list): a
                # start now would race the removal of the same id.
                reports[rid] = ReplicaReport(
                    rid, want.workload, "stopping", want.version, uid=want.uid
                )
                continue
            if current is None and want.done:
                reports[rid] = ReplicaReport(
                    rid, want.workload, "completed", want.version, exit_code=0, uid=want.uid
                )
                continue
            if current is None:
                failure = self._failures.get(rid)
                if failure is not None and now < failure.retry_at:
                    report = ReplicaReport(
                        rid,
                        want.workload,
                        "failed",
                        want.version,
                        error=failure.message,
                        restarts=failure.count,
                        next_restart_at=failure.retry_at,
                        uid=want.uid,
                    )
                    reports[rid] = report
                    continue
                actions.start.append((want, 0))
                reports[rid] = ReplicaReport(
                    rid, want.workload, "starting", want.version, uid=want.uid
                )
                continue
            if current.state == "exited":
                reports[rid] = self._exited(want, current, now, actions)
            else:
                reports[rid] = self._report(want, current, "running")
                if current.state == "running" and rid not in self._waiting:
                    self._watch(current.id, rid)

        self._update_health(desired, actual, reports)
        await self._act(actions)
        self.reports = reports
        self.passes += 1
        if self._on_report is not None:
            self._on_report(dict(reports))

    def _hand_off(self, rid: str, now: float) -> bool:
        """Whether the container of ``rid``, no longer placed here, keeps running a
        little longer (until its replacement runs elsewhere, or ``HANDOFF_TIMEOUT``)."""
        if self._keep_running is None or not self._keep_running(rid):
            self._handoff_since.pop(rid, None)
            return False
        since = self._handoff_since.setdefault(rid, now)
        if now - since < HANDOFF_TIMEOUT:
            return True
        log.warning("hand-off timed out; stopping", extra={"replica": rid})
        return False

    def _update_health(
        self,
        desired: Mapping[str, DesiredReplica],
        actual: Mapping[str, runtime.ContainerStatus],
        reports: dict[str, ReplicaReport],
    ) -> None:
        """Start a health watch for each running container that has a check, end the
        watches of containers that are gone, and put their state in the reports."""
        live: set[str] = set()
        for rid, report in reports.items():
            want = desired.get(rid)
            status = actual.get(rid)
            if report.state != "running" or want is None or status is None:
                continue
            if want.spec.health is None:
                report.healthy_since = status.started_at
                continue
            watch = self._health.get(rid)
            if watch is not None and (
                watch.container_id != status.id
                or watch.started_at != (status.started_at or 0.0)
                or watch.check != want.spec.health
            ):
                self._end_watch(rid)
                watch = None
            if watch is None and self._nursery is not None and rid not in self._stopping:
                watch = HealthWatch(rid, status.id, status.started_at or 0.0, want.spec.health)
                self._health[rid] = watch
                self._nursery.start_soon(self._run_watch, watch, want.spec.stop_grace)
            if watch is not None:
                live.add(rid)
                report.health = watch.state
                report.healthy_since = watch.healthy_since
                note = watch.describe()
                if note and not report.error:
                    report.error = note
        for rid in [r for r in self._health if r not in live]:
            self._end_watch(rid)
        for rid, report in reports.items():
            why = self._unhealthy.get(rid)
            if why is not None and report.state != "running":
                report.health = "unhealthy"
                report.error = report.error or why

    def _end_watch(self, rid: str) -> None:
        watch = self._health.pop(rid, None)
        if watch is not None and watch.cancel_scope is not None:
            watch.cancel_scope.cancel()

    async def _run_watch(self, watch: HealthWatch, grace: float) -> None:
        async def unhealthy(w: HealthWatch) -> None:
            self._unhealthy[w.replica_id] = w.describe()
            if w.container_id in self._stopping:
                return
            self._stopping.add(w.container_id)
            try:
                log.warning(
                    "stopping unhealthy replica",
                    extra={"replica": w.replica_id, "error": w.last_error},
                )
                with trio.CancelScope(shield=True):
                    await self.driver.stop(w.container_id, grace)
            except runtime.DriverError as exc:
                log.warning("stop failed", extra={"container": w.container_id, "error": str(exc)})
            finally:
                self._stopping.discard(w.container_id)
            self.poke()

        with trio.CancelScope() as scope:
            watch.cancel_scope = scope
            await watch.run(
                self.driver, on_change=self.poke, on_unhealthy=unhealthy, clock=self._clock
            )
        if self._health.get(watch.replica_id) is watch and watch.state != "unhealthy":
            self._health.pop(watch.replica_id, None)

    def _grace_for(self, status: runtime.ContainerStatus) -> float:
        """The stop grace of a container no longer placed here: its workload's, as
        labelled when it started (the spec may be gone from the state)."""
        try:
            grace = float(status.labels.get(LABEL_STOP_GRACE, DEFAULT_STOP_GRACE))
        except ValueError:
            return DEFAULT_STOP_GRACE
        return grace if 0 <= grace <= 3600 else DEFAULT_STOP_GRACE

    def _report(
        self, want: DesiredReplica, status: runtime.ContainerStatus, state: str
    ) -> ReplicaReport:
        return ReplicaReport(
            replica_id=want.replica_id,
            workload=want.workload,
            state=state,
            version=want.version,
            exit_code=status.exit_code,
            restarts=_restarts(status),
            started_at=status.started_at,
            finished_at=status.finished_at,
            oom_killed=status.oom_killed,
            uid=want.uid,
        )

    def _exited(
        self,
        want: DesiredReplica,
        status: runtime.ContainerStatus,
        now: float,
        actions: _Actions,
    ) -> ReplicaReport:
        restarts = _restarts(status)
        exit_code = status.exit_code if status.exit_code is not None else 255
        started = now if status.started_at is None else status.started_at
        finished = now if status.finished_at is None else status.finished_at
        if finished - started >= HEALTHY_RUN_SECONDS:
            restarts = 0  # it ran well for a while: a fresh series of attempts
        policy = want.spec.restart
        if not policy.should_restart(exit_code, restarts):
            state = "completed" if exit_code == 0 else "exited"
            return self._report(want, status, state)
        due = finished + policy.backoff(restarts)
        if now < due:
            report = self._report(want, status, "backoff")
            report.next_restart_at = due
            return report
        log.info(
            "restarting replica",
            extra={
                **_about(want.replica_id),
                "exit_code": exit_code,
                "restarts": restarts + 1,
            },
        )
        actions.remove.append(status.id)
        actions.start.append((want, restarts + 1))
        return self._report(want, status, "starting")

    async def _act(self, actions: _Actions) -> None:
        limiter = trio.CapacityLimiter(MAX_PARALLEL_ACTIONS)
        removed_then_start = {status_id for status_id in actions.remove}
        async with trio.open_nursery() as nursery:
            # Stops may take their whole grace: run them beside the loop, so that a
            # pass (and the replicas it starts) never waits for them. A restarted
            # agent stopping what it no longer owns held up its new replicas by the
            # old ones' grace. Each stop pokes the loop when done.
            stops = self._nursery if self._nursery is not None else nursery
            for status, grace in actions.stop:
                if status.id not in self._stopping:
                    self._stopping.add(status.id)
                    stops.start_soon(self._stop_and_remove, status, grace, limiter)
            for container_id in actions.remove:
                if not any(want.replica_id == container_id for want, _ in actions.start):
                    nursery.start_soon(self._remove, container_id, limiter)
            for want, restarts in actions.start:
                nursery.start_soon(
                    self._start, want, restarts, want.replica_id in removed_then_start, limiter
                )

    async def _stop_and_remove(
        self, status: runtime.ContainerStatus, grace: float, limiter: trio.CapacityLimiter
    ) -> None:
        async with limiter:
            try:
                log.info("stopping container", extra={**_about_container(status), "grace": grace})
                await self.driver.stop(status.id, grace)
                await self.driver.remove(status.id)
            except runtime.DriverError as exc:
                log.warning("stop failed", extra={**_about_container(status), "error": str(exc)})
            finally:
                self._stopping.discard(status.id)
        self.poke()

    async def _remove(self, container_id: str, limiter: trio.CapacityLimiter) -> None:
        async with limiter:
            try:
                await self.driver.remove(container_id)
            except runtime.DriverError as exc:
                log.warning(
                    "remove failed",
                    extra={**_about(container_id), "container": container_id, "error": str(exc)},
                )

    async def _start(
        self, want: DesiredReplica, restarts: int, remove_first: bool, limiter: trio.CapacityLimiter
    ) -> None:
        rid = want.replica_id
        async with limiter:
            started = time.perf_counter()
            try:
                if remove_first:
                    await self.driver.remove(rid)
                spec = container_spec(want, node=self.node, restarts=restarts, agent=self.agent)
                started = time.perf_counter()  # the start alone, not the removal before it
                status = await self.driver.start(spec)
            except runtime.DriverError as exc:
                if self._on_start is not None:
                    self._on_start(rid, restarts, time.perf_counter() - started, str(exc))
                previous = self._failures.get(rid)
                count = previous.count + 1 if previous else 1
                delay = want.spec.restart.backoff(count - 1)
                self._failures[rid] = _StartFailure(count, self._clock() + delay, str(exc))
                log.warning(
                    "start failed",
                    extra={**_about(rid), "error": str(exc), "retry_in": delay},
                )
                with contextlib.suppress(runtime.DriverError):
                    await self.driver.remove(rid)
                self.poke()  # report the failure now, not at the next interval
                return
        self._failures.pop(rid, None)
        self._unhealthy.pop(rid, None)
        if self._on_start is not None:
            self._on_start(rid, restarts, time.perf_counter() - started, None)
        log.info("started replica", extra={**_about(rid), "restarts": restarts})
        self._watch(status.id, rid)

    def _watch(self, container_id: str, rid: str) -> None:
        """Poke the loop the moment this container exits (no waiting for the interval)."""
        if self._nursery is None or rid in self._waiting:
            return
        self._waiting.add(rid)
        self._nursery.start_soon(self._wait_for_exit, container_id, rid)

    async def _wait_for_exit(self, container_id: str, rid: str) -> None:
        try:
            code = await self.driver.wait(container_id)
            log.info("replica exited", extra={**_about(rid), "exit_code": code})
        except runtime.DriverError:
            pass
        finally:
            self._waiting.discard(rid)
        self.poke()

    async def stop_all(self) -> None:
        """Stop and remove every container of this node (``--stop-on-exit``)."""
        statuses = await self.driver.list()
        async with trio.open_nursery() as nursery:
            limiter = trio.CapacityLimiter(MAX_PARALLEL_ACTIONS)
            for status in statuses:
                nursery.start_soon(self._stop_and_remove, status, 5.0, limiter)


def _about(replica_id: str) -> dict[str, str]:
    """Log fields naming a replica and its workload (replica ids are ``{workload}-{index}``)."""
    return {"workload": replica_id.rpartition("-")[0] or replica_id, "replica": replica_id}


def _about_container(status: runtime.ContainerStatus) -> dict[str, str]:
    rid = status.labels.get(LABEL_REPLICA, status.id)
    fields = _about(rid)
    if LABEL_WORKLOAD in status.labels:
        fields["workload"] = status.labels[LABEL_WORKLOAD]
    fields["container"] = status.id
    return fields


def _restarts(status: runtime.ContainerStatus) -> int:
    try:
        return int(status.labels.get(LABEL_RESTARTS, "0"))
    except ValueError:
        return 0


def summarize(reports: Mapping[str, ReplicaReport]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for report in reports.values():
        counts[report.state] = counts.get(report.state, 0) + 1
    return counts


__all__ = [
    "DesiredReplica",
    "Reconciler",
    "ReplicaReport",
    "container_spec",
    "summarize",
    "template_hash",
]
