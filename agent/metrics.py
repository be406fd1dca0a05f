"""Prometheus metrics of one agent, served as text on ``GET /metrics``.

Each agent owns its own ``CollectorRegistry`` (never the process-global one), so
several agents in one process (tests, benchmarks) never mix their figures.

Two kinds of metric live here:

* **instruments** the agent updates as things happen: API requests and their
  latency, Raft apply latency, the scheduler's decisions, container starts,
  restarts and OOM kills, events published;
* **views** read when Prometheus scrapes (``AgentCollector``): gossip's counters
  and members by state, Raft's role, term and commit index, replicas by state on
  this node, workloads and placements in the replicated state. Reading them at
  scrape time means no second copy of a figure that the libraries already keep.

Every name starts with ``hypha_``; counters end in ``_total``; durations are in
seconds. Label values come from small fixed sets (route templates, not paths;
scheduler rules, not messages), so the number of series stays bounded whatever
the cluster runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# The ``*_created`` series double the output for little use; this is process-wide,
# and only Hypha's own registries live in an agent's process.
disable_created_metrics()

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Latency buckets for things that take milliseconds to seconds (API, Raft apply).
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
#: Container starts: a process is milliseconds, runc with a rootfs up to seconds.
START_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

MEMBER_STATES = ("alive", "suspect", "dead", "left")
RAFT_STATES = ("leader", "follower", "replica", "stopped")
REPLICA_STATES = ("starting", "running", "backoff", "exited", "completed", "failed", "stopping")

# Gossip counters with a metric of their own: key -> (metric name, help).
GOSSIP_COUNTERS: Mapping[str, tuple[str, str]] = {
    "probes": ("hypha_gossip_probes", "Direct probes (pings) sent."),
    "indirect_probes": ("hypha_gossip_indirect_probes", "Indirect probes (ping-req) asked."),
    "probe_failures": ("hypha_gossip_probe_failures", "Probes that got no ack in time."),
    "acks": ("hypha_gossip_acks", "Acks received for probes."),
    "suspicions": ("hypha_gossip_suspicions", "Members this node started suspecting."),
    "refutations": ("hypha_gossip_refutations", "Suspicions of this node it refuted."),
    "deaths_declared": ("hypha_gossip_deaths_declared", "Members this node declared dead."),
    "syncs": ("hypha_gossip_syncs", "State synchronisations (scuttlebutt digests)."),
    "gossip_rounds": ("hypha_gossip_rounds", "Gossip rounds run."),
    "events_dropped": ("hypha_gossip_events_dropped", "Events a slow subscriber lost."),
}
GOSSIP_GAUGES: Mapping[str, tuple[str, str]] = {
    "awareness": ("hypha_gossip_health_awareness", "Lifeguard local health (0 = healthy)."),
    "broadcast_queue": ("hypha_gossip_broadcast_queue", "Broadcasts waiting to be sent."),
}
#: Drop reasons always exported (0 until one happens), so alerts on rate() see a series.
DROP_REASONS = (
    "auth",
    "decode",
    "malformed",
    "oversize",
    "from_self",
    "wrong_target",
    "send_error",
)
_GOSSIP_HANDLED = {"packets_sent", "packets_received", "bytes_sent", "bytes_received"}


class AgentMetrics:
    """The instruments of one agent and its registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)  # process_cpu_seconds_total, _resident_memory_bytes...
        self.api_requests = Counter(
            "hypha_api_requests",
            "API requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=r,
        )
        self.api_latency = Histogram(
            "hypha_api_request_duration_seconds",
            "Time to answer an API request (to the first byte for streams).",
            ["method", "route"],
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.raft_apply = Histogram(
            "hypha_raft_apply_duration_seconds",
            "Time from proposing a command to its being committed and applied here.",
            ["op"],
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.raft_proposals = Counter(
            "hypha_raft_proposals",
            "Commands this agent proposed, by op and outcome "
            "(ok, rejected by the state, not_leader, not_committed).",
            ["op", "outcome"],
            registry=r,
        )
        self.scheduler_decision = Histogram(
            "hypha_scheduler_decision_duration_seconds",
            "Time of one leader planning step (snapshot, place, explain).",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.scheduler_steps = Counter(
            "hypha_scheduler_steps", "Leader planning steps run by this agent.", registry=r
        )
        self.scheduler_placements = Counter(
            "hypha_scheduler_placements",
            "Replicas this agent (as leader) committed to a node: new, or moved from another.",
            ["kind"],
            registry=r,
        )
        self.scheduler_failures = Counter(
            "hypha_scheduler_failures",
            "Replicas the scheduler found no node for, by the rule that blocked them "
            "(counted once per replica and reason, not once per step).",
            ["reason"],
            registry=r,
        )
        self.container_start = Histogram(
            "hypha_runtime_container_start_duration_seconds",
            "Time for the driver to start a container (create + start).",
            buckets=START_BUCKETS,
            registry=r,
        )
        self.container_starts = Counter(
            "hypha_runtime_container_starts",
            "Container starts on this node, by result (ok, error).",
            ["result"],
            registry=r,
        )
        self.restarts = Counter(
            "hypha_runtime_restarts",
            "Replicas restarted on this node after they exited (restart policy).",
            registry=r,
        )
        self.oom_kills = Counter(
            "hypha_runtime_oom_kills", "Containers on this node killed for memory.", registry=r
        )
        self.container_exits = Counter(
            "hypha_runtime_container_exits",
            "Containers on this node that exited, by outcome (success, error, signal, oom).",
            ["outcome"],
            registry=r,
        )
        self.events = Counter(
            "hypha_events", "Events published on this agent's bus, by kind.", ["kind"], registry=r
        )

    def add_view(self, collector: Collector) -> None:
        self.registry.register(collector)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class AgentCollector(Collector):
    """Figures read from the agent's parts when Prometheus scrapes.

    ``agent`` is duck-typed (``gossip``, ``raft``, ``reconciler``, ``leader_loop``,
    ``name``, ``started_at``, ``version``); a part not started yet is skipped."""

    def __init__(self, agent: Any) -> None:
        self._agent = agent

    def describe(self) -> Iterable[Metric]:
        return []  # read at scrape time; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        agent = self._agent
        info = GaugeMetricFamily(
            "hypha_agent_info",
            "This agent: 1, with its node name and version.",
            labels=["node", "version"],
        )
        info.add_metric([str(agent.name), str(getattr(agent, "version", ""))], 1)
        yield info
        yield GaugeMetricFamily(
            "hypha_agent_start_time_seconds",
            "When this agent started (Unix time).",
            value=float(agent.started_at),
        )
        bus = getattr(agent, "events", None)
        if bus is not None:
            yield GaugeMetricFamily(
                "hypha_event_subscribers",
                "Clients following /v1/events on this agent now.",
                value=bus.subscribers,
            )
            yield CounterMetricFamily(
                "hypha_event_subscribers_cut_off",
                "Followers cut off for falling too far behind.",
                value=bus.cut_off,
            )
        if getattr(agent, "gossip", None) is not None:
            yield from self._gossip(agent.gossip)
        if getattr(agent, "raft", None) is not None:
            yield from self._raft(agent.raft)
        if getattr(agent, "reconciler", None) is not None:
            yield from self._runtime(agent.reconciler)
        if getattr(agent, "leader_loop", None) is not None:
            pending = GaugeMetricFamily(
                "hypha_scheduler_pending_replicas",
                "Replicas the leader could not place at its last step (0 off the leader).",
            )
            pending.add_metric([], len(agent.leader_loop.pending))
            yield pending

    def _gossip(self, service: Any) -> Iterator[Metric]:
        members = GaugeMetricFamily(
            "hypha_gossip_members", "Members by state, as this node sees them.", labels=["state"]
        )
        counts = dict.fromkeys(MEMBER_STATES, 0)
        for member in service.members():
            counts[member.state] = counts.get(member.state, 0) + 1
        for state, count in counts.items():
            members.add_metric([state], count)
        yield members
        counters = dict(service.counters())
        packets = CounterMetricFamily(
            "hypha_gossip_packets", "Gossip datagrams, by direction.", labels=["direction"]
        )
        octets = CounterMetricFamily(
            "hypha_gossip_bytes", "Gossip bytes on the wire, by direction.", labels=["direction"]
        )
        for direction in ("sent", "received"):
            packets.add_metric([direction], counters.get(f"packets_{direction}", 0))
            octets.add_metric([direction], counters.get(f"bytes_{direction}", 0))
        yield packets
        yield octets
        drops = CounterMetricFamily(
            "hypha_gossip_drops",
            "Datagrams dropped, by reason: " + ", ".join(DROP_REASONS) + ".",
            labels=["reason"],
        )
        reasons = dict.fromkeys(DROP_REASONS, 0)
        for key, value in counters.items():
            if key.startswith("drops_"):
                reasons[key[len("drops_") :]] = value
        for reason, value in sorted(reasons.items()):
            drops.add_metric([reason], value)
        yield drops
        for key, (name, text) in GOSSIP_COUNTERS.items():
            yield CounterMetricFamily(name, text, value=counters.get(key, 0))
        for key, (name, text) in GOSSIP_GAUGES.items():
            yield GaugeMetricFamily(name, text, value=counters.get(key, 0))
        other = CounterMetricFamily(
            "hypha_gossip_misc",
            "Every other gossip counter, by name (see gossip/core.py).",
            labels=["name"],
        )
        for key, value in sorted(counters.items()):
            if (
                key in GOSSIP_COUNTERS
                or key in GOSSIP_GAUGES
                or key in _GOSSIP_HANDLED
                or key.startswith(("drops_", "members_"))
            ):
                continue
            other.add_metric([key], value)
        yield other

    def _raft(self, raft: Any) -> Iterator[Metric]:
        status = raft.status()
        state = str(status.get("state", "stopped"))
        role = GaugeMetricFamily(
            "hypha_raft_role",
            "1 for this agent's current Raft state (leader, follower, replica, stopped).",
            labels=["state"],
        )
        for name in RAFT_STATES:
            role.add_metric([name], 1 if state == name else 0)
        yield role
        yield GaugeMetricFamily(
            "hypha_raft_is_leader",
            "1 if this agent is the Raft leader.",
            value=int(state == "leader"),
        )
        for key, name, text in (
            ("term", "hypha_raft_term", "The Raft term this agent is in."),
            ("commit_index", "hypha_raft_commit_index", "The highest log index known committed."),
            ("last_applied", "hypha_raft_last_applied", "The highest log index applied here."),
        ):
            value = status.get(key)
            if isinstance(value, int | float):
                yield GaugeMetricFamily(name, text, value=value)
        yield GaugeMetricFamily(
            "hypha_raft_voters", "Voters in the Raft group.", value=len(status.get("voters") or ())
        )
        yield GaugeMetricFamily(
            "hypha_raft_replicas",
            "Read-only Raft replicas (non-voters).",
            value=len(status.get("replicas") or ()),
        )
        state_machine = raft.state
        yield GaugeMetricFamily(
            "hypha_workloads",
            "Workloads in the replicated state.",
            value=len(state_machine.workloads()),
        )
        yield GaugeMetricFamily(
            "hypha_placements",
            "Replica placements in the replicated state.",
            value=len(state_machine.placements()),
        )

    def _runtime(self, reconciler: Any) -> Iterator[Metric]:
        containers = GaugeMetricFamily(
            "hypha_runtime_containers",
            "Replicas on this node by state, as of the reconciler's last pass.",
            labels=["state"],
        )
        counts = dict.fromkeys(REPLICA_STATES, 0)
        for report in reconciler.reports.values():
            counts[report.state] = counts.get(report.state, 0) + 1
        for state, count in sorted(counts.items()):
            containers.add_metric([state], count)
        yield containers
        yield CounterMetricFamily(
            "hypha_reconciler_passes", "Reconciler passes on this node.", value=reconciler.passes
        )


__all__ = ["CONTENT_TYPE", "AgentCollector", "AgentMetrics"]
