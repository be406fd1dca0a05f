"""Events, metrics and logs without a cluster: the bus, the observer's diffs, the
``/metrics`` and ``/v1/events`` routes over a real socket, the log formats."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from agent.api import ApiApp
from agent.client import ApiClient
from agent.consensus.state import (
    DeleteWorkload,
    DesiredState,
    MarkTerm,
    PlacementEntry,
    PutWorkload,
    RemovePlacements,
    ScaleWorkload,
    SetNodeAdmin,
    SetPlacements,
)
from agent.errors import ApiError
from agent.events import EventBus, Overflow
from agent.logs import JsonFormatter, KeyValueFormatter
from agent.metrics import AgentCollector, AgentMetrics
from agent.observe_api import kind_filter, routes
from agent.observer import Observer
from agent.reconciler import ReplicaReport
from agent.server import serve_api, unix_listener
from tests.unit.test_api import FakeBackend


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page, parsed by prometheus_client's parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


# -- the bus -------------------------------------------------------------------------
def test_bus_keeps_a_bounded_history_and_refuses_unknown_kinds() -> None:
    bus = EventBus("n1", history=3, clock=lambda: 100.0)
    for i in range(5):
        bus.publish("member.joined", f"node x{i} joined", member=f"x{i}", absent=None)
    events = bus.recent()
    assert [e.seq for e in events] == [3, 4, 5]
    assert events[0].to_dict() == {
        "seq": 3,
        "time": 100.0,
        "kind": "member.joined",
        "level": "info",
        "node": "n1",
        "message": "node x2 joined",
        "data": {"member": "x2"},  # None values are left out
    }
    assert [e.seq for e in bus.recent(since=4)] == [5]
    assert [e.seq for e in bus.recent(limit=1)] == [5]
    assert bus.recent(limit=0) == []
    with pytest.raises(ValueError, match="unknown event kind 'member.exploded'"):
        bus.publish("member.exploded", "boom")


async def test_a_slow_subscriber_is_cut_off_not_waited_for() -> None:
    bus = EventBus("n1")
    with bus.subscribe(buffer=2) as slow, bus.subscribe(buffer=100) as fast:
        for i in range(5):
            bus.publish("member.joined", f"x{i}")
        assert bus.cut_off == 1
        got = [(await slow.receive(1)) for _ in range(2)]
        assert [e.seq for e in got if e] == [1, 2]
        with pytest.raises(Overflow) as info:
            await slow.__anext__()
        assert info.value.missed == 3
        assert [e.seq for e in [await fast.receive(1) for _ in range(5)] if e] == [1, 2, 3, 4, 5]
    assert bus.subscribers == 0


def test_kind_filter_takes_kinds_and_prefixes() -> None:
    bus = EventBus("n1")
    member = bus.publish("member.dead", "x")
    moved = bus.publish("replica.moved", "y")
    placed = bus.publish("replica.placed", "z")
    match = kind_filter("member,replica.moved")
    assert [match(e) for e in (member, moved, placed)] == [True, True, False]
    with pytest.raises(Exception, match="kind: no event kind 'nodes'; known kinds: "):
        kind_filter("nodes")


# -- the observer --------------------------------------------------------------------
class FakeGossip:
    def __init__(self) -> None:
        self.liveness = {"n1": "alive", "n2": "alive", "n3": "alive"}
        self.node_states: dict[str, dict[str, str]] = {
            n: {"raft": json.dumps(f"127.0.0.{i}:1")} for i, n in enumerate(self.liveness)
        }

    def members(self) -> list[Any]:
        return [
            SimpleNamespace(
                name=n, state=s, address=("127.0.0.1", 1), incarnation=0, generation=1, since=0.0
            )
            for n, s in self.liveness.items()
        ]

    def states(self) -> dict[str, dict[str, str]]:
        return self.node_states

    def counters(self) -> dict[str, int]:
        return {"packets_sent": 10, "bytes_sent": 999, "drops_auth": 2, "probes": 4, "oddity": 1}


class FakeAgent:
    def __init__(self) -> None:
        self.name = "n1"
        self.started_at = 1.0
        self.version = "0.1.0"
        self.gossip = FakeGossip()
        self.state = DesiredState()
        self.state.apply(MarkTerm(term=1).to_wire())
        self.raft = SimpleNamespace(
            state=self.state,
            status=lambda: {
                "state": "leader",
                "term": 1,
                "commit_index": 7,
                "last_applied": 7,
                "voters": ["a", "b", "c"],
                "replicas": [],
            },
        )
        self.reconciler = None
        self.leader_loop = None

    def apply(self, command: Any) -> None:
        result = self.state.apply(command.to_wire())
        assert result["ok"], result


def spec(replicas: int, **extra: Any) -> dict[str, Any]:
    return {"name": "web", "command": ["sleep", "9"], "replicas": replicas, **extra}


def kinds(bus: EventBus, since: int = 0) -> list[tuple[str, str]]:
    return [(e.kind, e.message) for e in bus.recent(since=since)]


def test_observer_reports_workloads_placements_moves_and_drains() -> None:
    agent = FakeAgent()
    bus = EventBus("n1")
    metrics = AgentMetrics()
    observer = Observer(agent, bus, metrics)
    observer.diff_state(quiet=True)

    agent.apply(PutWorkload(spec(2), expected_version=0))
    agent.apply(
        SetPlacements(
            term=1, placements=(PlacementEntry("web-0", "n2", 1), PlacementEntry("web-1", "n3", 1))
        )
    )
    observer.diff_state()
    assert kinds(bus) == [
        ("workload.created", "workload web created with 2 replica(s) (version 1)"),
        ("replica.placed", "replica web-0 placed on n2"),
        ("replica.placed", "replica web-1 placed on n3"),
    ]

    mark = bus.last_seq
    agent.gossip.liveness["n3"] = "dead"
    agent.apply(SetPlacements(term=1, placements=(PlacementEntry("web-1", "n1", 1),)))
    observer.diff_state()
    assert kinds(bus, mark) == [
        ("replica.moved", "replica web-1 moved from n3 (node dead) to n1"),
    ]
    event = bus.recent(since=mark)[0]
    assert event.data == {
        "replica": "web-1",
        "workload": "web",
        "from_node": "n3",
        "to_node": "n1",
        "reason": "node dead",
    }

    mark = bus.last_seq
    agent.apply(SetNodeAdmin(node="n2", draining=True))
    agent.apply(ScaleWorkload(name="web", replicas=1))
    agent.apply(RemovePlacements(term=1, replica_ids=("web-1",)))
    observer.diff_state()
    assert kinds(bus, mark) == [
        ("workload.scaled", "workload web scaled from 2 to 1 replica(s)"),
        ("node.admin", "node n2 is draining: its replicas move elsewhere"),
        ("replica.unplaced", "replica web-1 removed from n1 (scaled down)"),
    ]

    mark = bus.last_seq
    agent.apply(DeleteWorkload(name="web"))
    observer.diff_state()
    assert kinds(bus, mark) == [
        ("workload.deleted", "workload web deleted"),
        ("replica.unplaced", "replica web-0 removed from n2 (workload deleted)"),
    ]
    counted = samples(metrics.render().decode())
    assert counted[("hypha_events_total", (("kind", "replica.placed"),))] == 2


def test_observer_reports_each_failed_run_once_and_counts_exits() -> None:
    agent = FakeAgent()
    bus = EventBus("n1")
    metrics = AgentMetrics()
    observer = Observer(agent, bus, metrics)

    def report(state: str, started: float, **extra: Any) -> dict[str, ReplicaReport]:
        return {"web-0": ReplicaReport("web-0", "web", state, 1, started_at=started, **extra)}

    observer.local_reports(report("starting", 0.0))
    observer.local_reports(report("running", 10.0))
    observer.local_reports(
        report("backoff", 10.0, exit_code=137, oom_killed=True, finished_at=12.0, restarts=1)
    )
    observer.local_reports(
        report("starting", 10.0, exit_code=137, oom_killed=True, finished_at=12.0, restarts=1)
    )
    observer.local_reports(report("running", 20.0, restarts=1))
    observer.local_reports({})  # scaled away
    assert kinds(bus) == [
        ("replica.state", "replica web-0 is starting on n1"),
        ("replica.state", "replica web-0 is running on n1"),
        ("replica.failed", "replica web-0 was OOM-killed on n1 (now backoff)"),
        ("replica.state", "replica web-0 is starting on n1 (exit code 137)"),
        ("replica.state", "replica web-0 is running on n1"),
        ("replica.state", "replica web-0 stopped on n1"),
    ]
    assert [e.level for e in bus.recent()].count("warning") == 1
    counted = samples(metrics.render().decode())
    assert counted[("hypha_runtime_oom_kills_total", ())] == 1
    assert counted[("hypha_runtime_container_exits_total", (("outcome", "oom"),))] == 1

    # Another node's replica, from its gossip key: a start failure, reported once.
    mark = bus.last_seq
    failed = {"replica_id": "api-0", "workload": "api", "state": "failed", "error": "no runc"}
    observer.replica_report("n2", "api-0", failed)
    observer.replica_report("n2", "api-0", failed)
    assert kinds(bus, mark) == [("replica.failed", "replica api-0 could not start on n2: no runc")]


def test_leader_steps_count_decisions_and_report_new_failures_once() -> None:
    agent = FakeAgent()
    bus = EventBus("n1")
    metrics = AgentMetrics()
    observer = Observer(agent, bus, metrics)
    step = SimpleNamespace(
        pending={"big-0": "no node has 64 GiB free"}, rules={"big-0": "resources"}
    )
    for _ in range(3):
        observer.leader_step(step, 0.002)
    observer.placements_committed({"new": 3, "move": 1, "update": 0})
    assert kinds(bus) == [("schedule.failed", "no node for replica big-0: no node has 64 GiB free")]
    counted = samples(metrics.render().decode())
    assert counted[("hypha_scheduler_failures_total", (("reason", "resources"),))] == 1
    assert counted[("hypha_scheduler_decision_duration_seconds_count", ())] == 3
    assert counted[("hypha_scheduler_steps_total", ())] == 3
    assert counted[("hypha_scheduler_placements_total", (("kind", "new"),))] == 3
    assert counted[("hypha_scheduler_placements_total", (("kind", "move"),))] == 1


def test_the_leaders_published_pending_reasons_become_events_everywhere() -> None:
    agent = FakeAgent()
    bus = EventBus("n1")
    observer = Observer(agent, bus, AgentMetrics())
    observer.remote_pending("n2", {"big-0": "no node has room"})
    observer.remote_pending("n2", {"big-0": "no node has room", "big-1": "no node has room"})
    observer.remote_pending("n2", {})
    assert kinds(bus) == [
        ("schedule.failed", "no node for replica big-0: no node has room"),
        ("schedule.failed", "no node for replica big-1: no node has room"),
    ]
    assert bus.recent()[0].data["leader"] == "n2"


def test_collector_reads_gossip_raft_and_state_at_scrape_time() -> None:
    agent = FakeAgent()
    agent.gossip.liveness["n3"] = "suspect"
    agent.apply(PutWorkload(spec(1), expected_version=0))
    metrics = AgentMetrics()
    metrics.add_view(AgentCollector(agent))
    counted = samples(metrics.render().decode())
    assert counted[("hypha_gossip_members", (("state", "alive"),))] == 2
    assert counted[("hypha_gossip_members", (("state", "suspect"),))] == 1
    assert counted[("hypha_gossip_members", (("state", "dead"),))] == 0
    assert counted[("hypha_gossip_packets_total", (("direction", "sent"),))] == 10
    assert counted[("hypha_gossip_bytes_total", (("direction", "sent"),))] == 999
    assert counted[("hypha_gossip_drops_total", (("reason", "auth"),))] == 2
    assert counted[("hypha_gossip_drops_total", (("reason", "decode"),))] == 0
    assert counted[("hypha_gossip_probes_total", ())] == 4
    assert counted[("hypha_gossip_misc_total", (("name", "oddity"),))] == 1
    assert counted[("hypha_raft_role", (("state", "leader"),))] == 1
    assert counted[("hypha_raft_role", (("state", "follower"),))] == 0
    assert counted[("hypha_raft_term", ())] == 1
    assert counted[("hypha_raft_commit_index", ())] == 7
    assert counted[("hypha_raft_voters", ())] == 3
    assert counted[("hypha_workloads", ())] == 1
    assert counted[("hypha_agent_info", (("node", "n1"), ("version", "0.1.0")))] == 1


def test_two_agents_in_one_process_keep_their_own_figures() -> None:
    first, second = AgentMetrics(), AgentMetrics()
    first.restarts.inc(5)
    assert samples(first.render().decode())[("hypha_runtime_restarts_total", ())] == 5
    assert samples(second.render().decode())[("hypha_runtime_restarts_total", ())] == 0


# -- the routes over a real socket ---------------------------------------------------
async def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))


async def test_metrics_and_events_routes(nursery: trio.Nursery, tmp_path: Path) -> None:
    bus = EventBus("n1")
    metrics = AgentMetrics()

    def observe(method: str, route: str, status: int, seconds: float) -> None:
        metrics.api_requests.labels(method, route, str(status)).inc()
        metrics.api_latency.labels(method, route).observe(seconds)

    path = tmp_path / "api.sock"
    app = ApiApp(FakeBackend(), extra_routes=routes(bus, metrics), observe=observe)
    await nursery.start(serve_api, app, unix_listener(path))
    client = ApiClient(f"unix:{path}", timeout=10)

    with pytest.raises(ApiError, match="no workload named 'ghost'"):
        await call(client.get, "/v1/workloads/ghost")
    with pytest.raises(ApiError, match="no such API route"):
        await call(client.get, "/v1/nowhere/at/all")

    def scrape() -> str:
        conn = client._connection(10)
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("content-type", "").startswith("text/plain; version=0.0.4")
        return response.read().decode()

    counted = samples(await call(scrape))
    route_404 = (("method", "GET"), ("route", "/v1/workloads/{name}"), ("status", "404"))
    assert counted[("hypha_api_requests_total", route_404)] == 1
    unmatched = (("method", "GET"), ("route", "unmatched"), ("status", "404"))
    assert counted[("hypha_api_requests_total", unmatched)] == 1
    latency = (("method", "GET"), ("route", "/v1/workloads/{name}"))
    assert counted[("hypha_api_request_duration_seconds_count", latency)] == 1

    bus.publish("member.joined", "node n2 joined", member="n2")
    bus.publish("replica.placed", "replica web-0 placed on n2", replica="web-0")
    history = await call(lambda: list(client.stream("/v1/events")))
    assert [e["kind"] for e in history] == ["member.joined", "replica.placed"]
    only = await call(lambda: list(client.stream("/v1/events", query={"kind": "replica"})))
    assert [e["seq"] for e in only] == [2]
    after = await call(lambda: list(client.stream("/v1/events", query={"since": 1})))
    assert [e["seq"] for e in after] == [2]
    with pytest.raises(ApiError, match="kind: no event kind 'bogus'"):
        await call(lambda: list(client.stream("/v1/events", query={"kind": "bogus"})))

    # Follow: the history, then new events as they come; a client that hangs up
    # ends the server's side of the stream too (no subscriber left behind).
    received: list[dict[str, Any]] = []
    done = threading.Event()

    def follow() -> None:
        stream = client.stream("/v1/events", query={"follow": "1", "limit": 1})
        for event in stream:
            received.append(event)
            if len(received) == 3:
                break
        stream.close()  # closes the connection
        done.set()

    nursery.start_soon(trio.to_thread.run_sync, follow)
    with trio.fail_after(10):
        while bus.subscribers == 0:
            await trio.sleep(0.01)
    bus.publish("member.dead", "node n2 is dead", level="warning", member="n2")
    bus.publish("replica.moved", "replica web-0 moved from n2 (node dead) to n1")
    with trio.fail_after(10):
        while not done.is_set():
            await trio.sleep(0.01)
        while bus.subscribers:
            await trio.sleep(0.01)
    assert [e["seq"] for e in received] == [2, 3, 4]
    assert received[1]["level"] == "warning"


# -- logs ----------------------------------------------------------------------------
def _record(msg: str, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("hypha.reconciler", logging.INFO, __file__, 1, msg, (), None)
    record.__dict__.update(extra)
    record.created = time.time()
    return record


def test_log_formats_carry_the_fields() -> None:
    record = _record("started replica", workload="web", replica="web-0", restarts=0)
    line = KeyValueFormatter().format(record)
    assert 'msg="started replica" workload=web replica=web-0 restarts=0' in line
    obj = json.loads(JsonFormatter().format(record))
    assert obj["msg"] == "started replica"
    assert (obj["workload"], obj["replica"], obj["restarts"]) == ("web", "web-0", 0)


async def test_reconciler_log_lines_name_workload_and_replica(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    from tests.unit.test_reconciler import Harness, replica

    caplog.set_level(logging.INFO, logger="hypha")
    harness = Harness()
    await nursery.start(harness.reconciler.run)
    harness.desired = {"web-0": replica("web-0", ["exit", "3"], restart="on-failure:1")}
    await harness.settle(10)
    harness.desired = {}
    await harness.settle(10)
    about = [
        r for r in caplog.records if r.name == "hypha.reconciler" and r.msg != "adopted containers"
    ]
    assert {r.msg for r in about} >= {"started replica", "restarting replica", "replica exited"}
    for r in about:
        assert getattr(r, "workload", None) == "web", r.msg
        assert getattr(r, "replica", None) == "web-0", r.msg
