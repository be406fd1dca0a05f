"""The nemesis runner: a real cluster, a workload mix, a seeded schedule of faults.

``scripts/chaos soak --seed S --duration D --nodes N`` starts N agents on
loopback aliases, keeps a client writing (create, scale, delete) through random
agents, applies the seed's faults one at a time (apply, hold, heal, wait for
convergence), samples who leads and who is seen dead, and finally checks the
invariants in ``agent.chaos.history``:

* no acknowledged create, scale or delete lost or applied twice;
* after each heal, every workload runs exactly its replica count within 30 s;
* no replica runs on a node it is not placed on (ground truth: the replica
  processes found in /proc, not what the agents believe);
* no node declared dead while it was only paused for less than the suspicion timeout;
* at most one leader per Raft term.
"""

from __future__ import annotations

import contextlib
import math
import random
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.chaos import faults
from agent.chaos.history import (
    DeathSample,
    LeaderSample,
    Op,
    Outcome,
    ReplicaView,
    SlowWindow,
    Violation,
    WorkloadState,
    check_no_false_deaths,
    check_placement,
    check_unique_leaders,
    check_writes,
)
from agent.chaos.schedule import LEADER, Fault, FaultKind, make_schedule
from agent.client import path_of
from agent.errors import AgentUnreachableError, ApiError, HyphaError
from agent.localcluster import AgentProcess, LocalCluster, status_of, wait_until

CONVERGE_LIMIT = 30.0  # the invariant: converged within this many seconds of a heal


def suspicion_timeout(preset: str, nodes: int) -> float:
    """The shortest time gossip waits before declaring a suspect dead, for ``preset``."""
    from gossip import GossipConfig

    config = getattr(GossipConfig, preset)()
    scale = max(1.0, math.log10(nodes + 1))
    return float(config.suspicion_mult * scale * config.probe_interval)


@dataclass
class FaultResult:
    fault: Fault
    resolved: tuple[str, ...]
    started: float
    converge_seconds: float | None
    note: str = ""


@dataclass
class SoakReport:
    seed: int
    nodes: int
    duration: float
    results: list[FaultResult] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)

    def summary(self) -> str:
        converge = [r.converge_seconds for r in self.results if r.converge_seconds is not None]
        counts = {
            o: sum(1 for op in self.ops if op.outcome == o) for o in ("ok", "fail", "unknown")
        }
        lines = [
            f"soak seed={self.seed} nodes={self.nodes} duration={self.duration:.0f}s",
            f"faults applied: {len(self.results)}",
        ]
        for r in self.results:
            took = f"{r.converge_seconds:.1f}s" if r.converge_seconds is not None else "NO"
            target = ",".join(r.resolved)
            lines.append(
                f"  +{r.started:6.1f}s  {r.fault.kind:<16} {target:<24} hold {r.fault.hold:4.1f}s"
                f"  converged {took}{'  ' + r.note if r.note else ''}"
            )
        if converge:
            lines.append(
                f"convergence after heal: p50 {statistics.median(converge):.1f}s, "
                f"max {max(converge):.1f}s"
            )
        lines.append(
            f"client writes: {counts['ok']} ok, {counts['fail']} refused, "
            f"{counts['unknown']} indeterminate"
        )
        lines.append(f"violations: {len(self.violations)}")
        lines += [f"  {v}" for v in self.violations]
        # For a post-mortem: the whole history of every workload a write check blamed.
        blamed = sorted(
            {v.detail.split(":", 1)[0] for v in self.violations if v.invariant == "writes"}
        )
        for name in blamed:
            lines.append(f"history of {name}:")
            for op in sorted(
                (o for o in self.ops if o.workload == name), key=lambda o: o.invoked_at
            ):
                what = op.kind + (f" {op.replicas}" if op.replicas is not None else "")
                when = f"+{op.invoked_at:6.1f}s..+{op.completed_at:6.1f}s"
                lines.append(f"  {when}  {what:<10} {op.outcome:<7} {op.detail}".rstrip())
        return "\n".join(lines)


class Soak:
    """One soak run. ``run()`` always heals and stops the cluster, whatever happens."""

    def __init__(
        self,
        *,
        seed: int,
        duration: float,
        nodes: int,
        base: Path,
        driver: str = "process",
        preset: str = "lan",
        first_host: str = "127.0.3.2",
        workloads: int = 4,
        max_hold: float = 20.0,
        tag: str = faults.TAG,
        schedule: list[Fault] | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.seed = seed
        self.duration = duration
        self.preset = preset
        self.tag = tag
        self.log = log
        self.workload_names = [f"soak{i}" for i in range(workloads)]
        # A random prefix per run: node names (and so the replicas' HYPHA_NODE, which
        # the ground-truth check reads from /proc) never collide with another cluster's.
        self.cluster = LocalCluster(
            base, nodes, driver=driver, preset=preset, first_host=first_host
        )
        self.suspicion = suspicion_timeout(preset, nodes)
        names = [a.name for a in self.cluster.agents]
        self.schedule = schedule or make_schedule(
            seed, names, 1000, suspicion_timeout=self.suspicion, max_hold=max_hold
        )
        self.report = SoakReport(seed=seed, nodes=nodes, duration=duration)
        self.leaders: list[LeaderSample] = []
        self.deaths: list[DeathSample] = []
        self.slow: list[SlowWindow] = []
        self._stop = threading.Event()
        self._writing = threading.Event()  # cleared: the client finishes its op and waits
        self._writing.set()
        self._idle = threading.Event()  # set while the client is not in the middle of an op
        self._threads: list[threading.Thread] = []
        self.last_reason: str | None = None
        self._t0 = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        return time.monotonic() - self._t0

    # -- background: the client and the observer ------------------------------
    def _live_agents(self) -> list[AgentProcess]:
        return [a for a in self.cluster.agents if a.running and not a.paused]

    def _writer(self) -> None:
        rng = random.Random(self.seed + 1)
        believed: dict[str, int | None] = {name: None for name in self.workload_names}
        while not self._stop.is_set():
            if not self._writing.is_set():
                self._idle.set()
                self._writing.wait()
                continue
            self._idle.clear()
            name = rng.choice(self.workload_names)
            current = believed[name]
            if current is None:
                kind, replicas = "create", rng.randint(1, 3)
            elif rng.random() < 0.15:
                kind, replicas = "delete", None
            else:
                kind, replicas = "scale", rng.choice([n for n in range(0, 5) if n != current])
            agents = self._live_agents()
            if not agents:
                time.sleep(0.2)
                continue
            agent = rng.choice(agents)
            invoked = self.now()
            outcome, detail = self._write(agent, kind, name, replicas)
            detail = f"via {agent.name}" + (f": {detail}" if detail else "")
            op = Op(kind, name, replicas, outcome, invoked, self.now(), detail)  # type: ignore[arg-type]
            with self._lock:
                self.report.ops.append(op)
            if outcome == "ok":
                believed[name] = None if kind == "delete" else replicas
            elif outcome == "fail" and "exists" in detail:
                believed[name] = 1  # it exists after all; scale it next time
            elif outcome == "fail" and ("no workload" in detail or "not_found" in detail):
                believed[name] = None
            self._idle.set()
            self._stop.wait(rng.uniform(0.3, 1.0))

    def _write(
        self, agent: AgentProcess, kind: str, name: str, replicas: int | None
    ) -> tuple[Outcome, str]:
        client = agent.client(timeout=15)
        try:
            if kind == "create":
                spec: dict[str, Any] = {
                    "name": name,
                    "command": ["sleep", "100000"],
                    "replicas": replicas,
                    "resources": {"cpu": "10m", "memory": "8Mi"},
                }
                client.post("/v1/workloads", {"spec": spec}, timeout=15)
            elif kind == "scale":
                client.post(path_of("v1", "workloads", name, "scale"), {"replicas": replicas})
            else:
                client.delete(path_of("v1", "workloads", name))
        except ApiError as exc:
            # 4xx answers are definite refusals; 5xx (no leader, a timeout) are not.
            definite = 400 <= exc.status < 500 and exc.status != 408
            return ("fail" if definite else "unknown"), str(exc)
        except AgentUnreachableError as exc:
            return "unknown", str(exc)
        return "ok", ""

    def _observer(self) -> None:
        while not self._stop.is_set():
            for agent in self._live_agents():
                first = status_of(agent, 2.0)
                second = status_of(agent, 2.0)
                at = self.now()
                if (
                    first
                    and second
                    and first.get("state") == second.get("state") == "leader"
                    and first.get("term") == second.get("term")
                ):
                    with self._lock:
                        self.leaders.append(
                            LeaderSample(agent.name, int(first["term"]), agent.name, at)
                        )
                try:
                    members = agent.client(timeout=2).get("/v1/members")["members"]
                except (HyphaError, KeyError, TypeError):
                    continue
                for member in members:
                    if member.get("state") == "dead":
                        with self._lock:
                            self.deaths.append(DeathSample(agent.name, member["name"], at))
            self._stop.wait(0.3)

    # -- faults ----------------------------------------------------------------
    def _voters(self) -> int:
        leader = self.leader_agent()
        status = status_of(leader) if leader is not None else None
        return len(status.get("voters") or []) if status else 0

    def leader_agent(self) -> AgentProcess | None:
        """The agent that says it leads (asked directly, not through gossip)."""
        for agent in self._live_agents():
            status = status_of(agent)
            if status and status.get("state") == "leader":
                return agent
        return None

    def leader_name(self) -> str | None:
        for agent in self._live_agents():
            status = status_of(agent)
            if status and status.get("leader_node"):
                return str(status["leader_node"])
        return None

    def _resolve(self, fault: Fault) -> tuple[str, ...]:
        names: list[str] = []
        for target in fault.targets:
            name = self.leader_name() if target == LEADER else target
            if name and name not in names:
                names.append(name)
        return tuple(names)

    def _as_local(self, agent: AgentProcess) -> faults.LocalAgent:
        pid = agent.proc.pid if agent.proc else 0
        return faults.LocalAgent(agent.name, pid, agent.host, self.cluster.port, agent.data_dir, ())

    def apply(self, fault: Fault, targets: tuple[str, ...]) -> None:
        """Apply ``fault`` to ``targets``, hold it, and heal it (also on an exception)."""
        agents = [self.cluster.by_name(n) for n in targets]
        kind: FaultKind = fault.kind
        if kind in ("kill", "kill-leader"):
            for agent in agents:
                agent.kill()
            time.sleep(fault.hold)
            for agent in agents:
                agent.start(wait=False)
            for agent in agents:
                agent.wait_ready()
        elif kind in ("pause-short", "pause-long"):
            start = self.now()
            for agent in agents:
                agent.pause()
            try:
                time.sleep(fault.hold)
            finally:
                for agent in agents:
                    agent.resume()
            if kind == "pause-short":
                for agent in agents:
                    self.slow.append(SlowWindow(agent.name, start, self.now()))
        else:
            inside = [self._as_local(a) for a in agents]
            outside = [self._as_local(a) for a in self.cluster.agents if a.name not in targets]
            if kind == "loss":
                rules = faults.loss_rules(inside[0], outside, fault.percent, tag=self.tag)
            else:
                rules = faults.partition_rules([inside, outside], tag=self.tag)
            faults.apply_rules(rules)
            try:
                time.sleep(fault.hold)
            finally:
                faults.remove_rules(rules)

    # -- convergence and the final check ----------------------------------------
    def converged(self) -> bool:
        return self.not_converged_because() is None

    def not_converged_because(self) -> str | None:
        """``None`` when the cluster has converged, else the first reason it has not."""
        agents = self._live_agents()
        if len(agents) != len(self.cluster.agents):
            return f"{len(self.cluster.agents) - len(agents)} agent(s) not running"
        leaders = set()
        statuses = {}
        for agent in agents:
            status = status_of(agent)
            if status is None:
                return f"{agent.name} does not answer"
            if not status.get("leader"):
                return f"{agent.name} knows no leader"
            leaders.add(status["leader"])
            statuses[agent.name] = status
            alive = status.get("members_alive")
            if alive != len(self.cluster.agents):
                return f"{agent.name} sees {alive} members alive"
        if len(leaders) != 1:
            return f"agents disagree on the leader: {sorted(leaders)}"
        leader = self.leader_agent()
        if leader is None:
            return "no agent says it is the leader"
        committed = int(statuses[leader.name].get("commit_index") or 0)
        for name, status in statuses.items():
            applied = int(status.get("last_applied") or 0)
            if applied + 50 < committed:  # the leader keeps writing; allow a little lag
                return f"{name} lags: applied {applied} of {committed} committed"
        try:
            client = leader.client()
            workloads = client.get("/v1/workloads")["workloads"]
            rows = client.get("/v1/replicas")["replicas"]
        except (HyphaError, KeyError) as exc:
            return f"cannot read workloads: {exc}"
        for w in workloads:
            if w["running"] != w["replicas"]:
                return f"{w['name']} runs {w['running']} of {w['replicas']}"
        placed = {r["replica_id"]: r["node"] for r in rows}
        real = self.cluster.replica_processes()
        running = {rid for rids in real.values() for rid in rids}
        if running != set(placed):
            extra, missing = sorted(running - set(placed)), sorted(set(placed) - running)
            return f"processes differ from placements: extra {extra}, missing {missing}"
        wrong = check_placement(self._view(placed, real))
        return str(wrong[0]) if wrong else None

    @staticmethod
    def _view(placed: dict[str, str], real: dict[str, set[str]]) -> ReplicaView:
        running: dict[str, list[str]] = {}
        for node, rids in real.items():
            for rid in rids:
                running.setdefault(rid, []).append(node)
        return ReplicaView(placed=placed, running=running)

    def wait_converged(self, limit: float) -> float | None:
        start = time.monotonic()
        reason: str | None = "not checked"
        while time.monotonic() - start < limit:
            reason = self.not_converged_because()
            if reason is None:
                return time.monotonic() - start
            time.sleep(0.25)
        self.last_reason = reason
        return None

    def final_check(self) -> list[Violation]:
        violations: list[Violation] = []
        leader = self.leader_agent()
        client = leader.client() if leader is not None else self.cluster.client()
        final: dict[str, WorkloadState] = {}
        for w in client.get("/v1/workloads")["workloads"]:
            final[w["name"]] = WorkloadState(True, int(w["replicas"]), int(w["version"]))
        violations += check_writes(self.report.ops, final)
        rows = client.get("/v1/replicas")["replicas"]
        placed = {r["replica_id"]: r["node"] for r in rows if r.get("node")}
        violations += check_placement(self._view(placed, self.cluster.replica_processes()))
        violations += check_unique_leaders(self.leaders)
        violations += check_no_false_deaths(self.deaths, self.slow)
        return violations

    # -- the run ---------------------------------------------------------------
    def start(self) -> None:
        """Start the cluster, the client and the observer."""
        self.log(f"starting {len(self.cluster.agents)} agents under {self.cluster.base}")
        self.cluster.start()
        # Faults start once Raft has its voters: killing the leader of a one- or
        # two-voter group loses quorum by design, which is not what the soak tests.
        target = min(3, len(self.cluster.agents))
        wait_until(lambda: self._voters() >= target, 120, f"Raft to reach {target} voters")
        self._t0 = time.monotonic()
        self._threads = [
            threading.Thread(target=self._writer, name="soak-writer", daemon=True),
            threading.Thread(target=self._observer, name="soak-observer", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def step(self, fault: Fault) -> FaultResult | None:
        """Apply one fault, heal it, and time the convergence; ``None`` if it had no target."""
        targets = self._resolve(fault)
        if not targets:
            return None
        started = self.now()
        self.log(f"+{started:.1f}s {fault.kind} {','.join(targets)} ({fault.hold:.1f}s)")
        self.apply(fault, targets)
        took = self.wait_converged(2 * CONVERGE_LIMIT)
        note = ""
        if took is None or took > CONVERGE_LIMIT:
            shown = "never" if took is None else f"{took:.1f}s"
            note = f"did not converge within {CONVERGE_LIMIT:.0f}s ({shown})"
            if took is None:
                note += f": {self.last_reason}"
            self.report.violations.append(Violation("convergence", f"{fault.kind}: {note}"))
        result = FaultResult(fault, targets, started, took, note)
        self.report.results.append(result)
        self.log(f"    converged in {took:.1f}s" if took is not None else f"    {note}")
        return result

    def check(self) -> list[Violation]:
        """Quiesce the client, wait for convergence, and check every invariant so far."""
        self._writing.clear()
        self._idle.wait(timeout=60)
        try:
            violations = list(self.report.violations)
            if self.wait_converged(2 * CONVERGE_LIMIT) is None:
                violations.append(Violation("convergence", "the cluster did not converge"))
            violations += self.final_check()
            return violations
        finally:
            self._writing.set()

    def close(self) -> None:
        """Stop the client and observer, remove every rule, stop the cluster."""
        self._stop.set()
        self._writing.set()
        for thread in self._threads:
            thread.join(timeout=30)
        with contextlib.suppress(faults.ChaosError):
            faults.heal(self.tag)
        self.cluster.stop()

    def run(self) -> SoakReport:
        """The whole soak: start, faults until ``duration``, check, close."""
        try:
            self.start()
            time.sleep(3.0)  # some workloads first
            for fault in self.schedule:
                if self.now() >= self.duration:
                    break
                if self.step(fault) is not None:
                    time.sleep(2.0)
            try:
                self.report.violations = self.check()
            except HyphaError as exc:
                self.report.violations.append(Violation("check", f"could not check: {exc}"))
            return self.report
        finally:
            self.close()
