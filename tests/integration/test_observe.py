"""Metrics, events and logs of real agents: /metrics scraped and parsed by
prometheus_client's parser, `hypha events --follow` watching a node die (SIGKILL)
and its replicas move, JSON log lines naming workloads and replicas."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.agents import LocalAgent, LocalCluster, hypha_cli, wait_until

pytestmark = pytest.mark.slow

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(agent: LocalAgent) -> Samples:
    content_type, text = agent.client(timeout=10).text("/metrics")
    assert content_type.startswith("text/plain; version=0.0.4")
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def spec(name: str, replicas: int) -> dict[str, Any]:
    return {
        "name": name,
        "command": ["sh", "-c", "while true; do sleep 1; done"],
        "replicas": replicas,
        "stop_grace": 2.0,
        "resources": {"cpu": "50m", "memory": "16Mi"},
    }


def running(cluster: LocalCluster, workload: str, count: int) -> bool:
    rows = cluster.replicas(workload)
    return len(rows) == count and all(r["state"] == "running" for r in rows)


def delete(cluster: LocalCluster, name: str) -> None:
    cluster.client().delete(f"/v1/workloads/{name}")
    wait_until(lambda: not cluster.replicas(name), 30, f"{name} to be gone")


def test_metrics_scraped_from_real_agents(shared_cluster: LocalCluster) -> None:
    cluster = shared_cluster
    n1 = cluster.agents[0]
    n1.client().post("/v1/workloads", {"spec": spec("obs-metrics", 3)})
    try:
        wait_until(lambda: running(cluster, "obs-metrics", 3), 60, "3 replicas running")
        wait_until(
            lambda: all(value(scrape(a), "hypha_raft_voters") == 3 for a in cluster.agents),
            60,
            "the autopilot to make 3 voters",
        )
        scraped = {a.name: scrape(a) for a in cluster.agents}
        for name, samples in scraped.items():
            assert value(samples, "hypha_gossip_members", state="alive") == 3, name
            assert value(samples, "hypha_gossip_members", state="dead") == 0, name
            assert value(samples, "hypha_gossip_packets_total", direction="sent") > 0, name
            assert value(samples, "hypha_gossip_bytes_total", direction="received") > 0, name
            assert ("hypha_gossip_drops_total", (("reason", "auth"),)) in samples, name
            assert value(samples, "hypha_gossip_probes_total") > 0, name
            assert value(samples, "hypha_raft_voters") == 3, name
            assert value(samples, "hypha_raft_commit_index") > 0, name
            assert value(samples, "hypha_workloads") >= 1, name
            assert value(samples, "hypha_agent_info", node=name, version="0.1.0") == 1
        leaders = [n for n, s in scraped.items() if value(s, "hypha_raft_is_leader") == 1]
        assert len(leaders) == 1, scraped.keys()
        assert len({value(s, "hypha_raft_term") for s in scraped.values()}) == 1
        for name, samples in scraped.items():
            role = "leader" if name in leaders else "follower"
            assert value(samples, "hypha_raft_role", state=role) == 1, name

        # The leader placed the replicas, timed its decisions and its Raft writes.
        leader = scraped[leaders[0]]
        assert value(leader, "hypha_scheduler_placements_total", kind="new") >= 3
        assert value(leader, "hypha_scheduler_decision_duration_seconds_count") > 0
        assert value(leader, "hypha_raft_apply_duration_seconds_count", op="put_workload") >= 1
        assert value(leader, "hypha_raft_proposals_total", op="set_placements", outcome="ok") >= 1

        # Containers by state add up to what the cluster says runs; each start timed.
        everywhere = [r for r in cluster.replicas() if r["state"] == "running"]
        assert sum(
            value(s, "hypha_runtime_containers", state="running") for s in scraped.values()
        ) == len(everywhere)
        for row in cluster.replicas("obs-metrics"):
            node = scraped[row["node"]]
            assert value(node, "hypha_runtime_container_start_duration_seconds_count") >= 1
            assert value(node, "hypha_runtime_container_starts_total", result="ok") >= 1

        # The API counts requests by route template, not by path.
        n1_metrics = scraped[n1.name]
        assert (
            value(
                n1_metrics,
                "hypha_api_requests_total",
                method="POST",
                route="/v1/workloads",
                status="201",
            )
            >= 1
        )
        assert (
            value(
                n1_metrics,
                "hypha_api_requests_total",
                method="GET",
                route="/v1/replicas",
                status="200",
            )
            >= 1
        )
        assert not any("obs-metrics" in str(labels) for (_n, labels) in n1_metrics)
        assert total(n1_metrics, "hypha_events_total") > 0

        # A replica that fits nowhere: the leader counts it by rule, and every agent
        # reports it as an event (the leader publishes its reasons in gossip).
        n1.client().post(
            "/v1/workloads", {"spec": {**spec("obs-huge", 1), "resources": {"cpu": "100000"}}}
        )
        for agent in cluster.agents:
            wait_until(
                lambda agent=agent: [
                    e
                    for e in agent.client().stream("/v1/events", query={"kind": "schedule"})
                    if e["data"]["replica"] == "obs-huge-0"
                ],
                30,
                f"schedule.failed on {agent.name}",
            )
        leader_agent = next(a for a in cluster.agents if a.name == leaders[0])
        failures = scrape(leader_agent)
        assert value(failures, "hypha_scheduler_failures_total", reason="resources") >= 1
        assert value(failures, "hypha_scheduler_pending_replicas") >= 1
    finally:
        delete(cluster, "obs-huge")
        delete(cluster, "obs-metrics")


class EventReader:
    """``hypha events --follow --json`` in a subprocess, its lines read on a thread."""

    def __init__(self, api: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "--api", api, "events", "--follow", "--json", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "HYPHA_API": ""},
        )
        self.events: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip():
                self.events.append(json.loads(line))

    def wait_for(self, what: str, match: Callable[[dict[str, Any]], bool], timeout: float) -> Any:
        def found() -> Any:
            if self.proc.poll() is not None:
                raise AssertionError(f"hypha events exited: {self.proc.stderr.read()}")  # type: ignore[union-attr]
            return next((e for e in self.events if match(e)), None)

        return wait_until(found, timeout, what)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._thread.join(timeout=5)


@pytest.fixture
def reader(shared_cluster: LocalCluster) -> Iterator[EventReader]:
    events = EventReader(shared_cluster.agents[0].api, "--tail", "0")
    try:
        yield events
    finally:
        events.stop()


def test_events_follow_shows_a_node_dying_and_its_replicas_moving(
    shared_cluster: LocalCluster, reader: EventReader
) -> None:
    cluster = shared_cluster
    n1 = cluster.agents[0]
    # Nothing happens before `hypha events` has connected.
    wait_until(lambda: _subscribed(n1), 30, "hypha events to connect")
    n1.client().post("/v1/workloads", {"spec": spec("obs-events", 6)})
    victim: LocalAgent | None = None
    try:
        wait_until(lambda: running(cluster, "obs-events", 6), 60, "6 replicas running")
        reader.wait_for(
            "workload.created",
            lambda e: e["kind"] == "workload.created" and e["data"]["workload"] == "obs-events",
            20,
        )
        placed = {r["replica_id"]: r["node"] for r in cluster.replicas("obs-events")}
        for rid, node in placed.items():
            reader.wait_for(
                f"{rid} running on {node}",
                lambda e, rid=rid, node=node: (
                    e["kind"] == "replica.state"
                    and e["data"].get("replica") == rid
                    and e["data"].get("member") == node
                    and e["data"].get("state") == "running"
                ),
                30,
            )
        # SIGKILL the agent (not n1, which serves the stream) holding the most replicas.
        counts = {a.name: sum(1 for n in placed.values() if n == a.name) for a in cluster.agents}
        victim = max(cluster.agents[1:], key=lambda a: counts[a.name])
        lost = sorted(rid for rid, node in placed.items() if node == victim.name)
        assert lost, placed
        victim.kill()

        dead = reader.wait_for(
            f"{victim.name} dead",
            lambda e: e["kind"] == "member.dead" and e["data"]["member"] == victim.name,
            60,
        )
        assert dead["level"] == "warning"
        assert f"node {victim.name} is dead" in dead["message"]
        for rid in lost:
            moved = reader.wait_for(
                f"{rid} moved",
                lambda e, rid=rid: e["kind"] == "replica.moved" and e["data"]["replica"] == rid,
                60,
            )
            assert moved["data"]["from_node"] == victim.name
            assert moved["data"]["to_node"] != victim.name
            assert moved["data"]["reason"] == "node dead"
            assert moved["seq"] > dead["seq"]
            reader.wait_for(
                f"{rid} running again",
                lambda e, rid=rid, to=moved["data"]["to_node"], after=moved["seq"]: (
                    e["kind"] == "replica.state"
                    and e["data"].get("replica") == rid
                    and e["data"].get("member") == to
                    and e["data"].get("state") == "running"
                    and e["seq"] > after
                ),
                60,
            )
        wait_until(lambda: running(cluster, "obs-events", 6), 60, "6 running again")

        # The same story for people, from the history (no --follow).
        text = hypha_cli(n1.api, "events", "--kind", "member", "--kind", "replica.moved")
        assert text.returncode == 0, text.stderr
        assert f"member.dead       node {victim.name} is dead" in text.stdout
        for rid in lost:
            assert f"replica {rid} moved from {victim.name} (node dead) to " in text.stdout
        assert "replica.placed" not in text.stdout
        result = hypha_cli(n1.api, "events", "--json", "--tail", "3")
        assert result.returncode == 0, result.stderr
        history = [json.loads(line) for line in result.stdout.splitlines()]
        assert len(history) == 3 and all(e["seq"] for e in history)
    finally:
        try:
            delete(cluster, "obs-events")
        finally:
            if victim is not None and not victim.running:
                victim.start()  # rejoins; adopts and stops what moved away
                wait_until(lambda: cluster.alive_members(n1) == 3, 60, "the cluster whole again")


def _subscribed(agent: LocalAgent) -> bool:
    """Someone follows this agent's events (the reader's stream is open)."""
    _, text = agent.client(timeout=10).text("/metrics")
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "hypha_event_subscribers" and sample.value >= 1:
                return True
    return False


def test_agent_logs_are_json_lines_naming_workloads_and_replicas(
    shared_cluster: LocalCluster,
) -> None:
    cluster = shared_cluster
    cluster.agents[0].client().post("/v1/workloads", {"spec": spec("obs-logs", 3)})
    try:
        wait_until(lambda: running(cluster, "obs-logs", 3), 60, "3 replicas running")
        cluster.client().post("/v1/workloads/obs-logs/scale", {"replicas": 1})
        wait_until(lambda: running(cluster, "obs-logs", 1), 60, "scaled down to 1")
    finally:
        delete(cluster, "obs-logs")
    time.sleep(1)  # the last lines reach the files
    about_replicas = 0
    for agent in cluster.agents:
        for line in (agent.data_dir / "agent.log").read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                pytest.fail(f"{agent.name}: not a JSON log line: {line[:200]}")
            assert {"ts", "level", "logger", "msg"} <= set(record), line
            if "replica" in record or "obs-logs-" in record["msg"]:
                about_replicas += 1
                assert record.get("workload") and record.get("replica"), line
                assert record["replica"].startswith(record["workload"] + "-"), line
    assert about_replicas > 10
