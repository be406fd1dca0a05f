"""A local cluster of real ``hypha agent`` processes on loopback aliases, for tests.

Every agent is ``python -m agent agent`` on its own address (127.0.0.X), with its
own data dir under the test's tmp dir and a shared generated secret. Node names
carry a random tag, so the clean-up can find every process the test's replicas
started even if an agent was SIGKILLed: at teardown each dead agent is restarted
with ``--stop-on-exit`` and terminated (it adopts and stops its containers), and
any process left with our ``HYPHA_NODE`` in its environment is killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from agent.client import ApiClient
from agent.errors import HyphaError
from agent.localcluster import free_port
from agent.secrets import generate_secret, write_secret

_next_host = [20]


def _hosts(count: int) -> list[str]:
    """Loopback aliases not used by other tests in this process."""
    start = _next_host[0] + (os.getpid() % 50)
    _next_host[0] += count
    return [f"127.0.{(start + i) // 250 + 1}.{(start + i) % 250 + 2}" for i in range(count)]


def wait_until(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.25
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
        except HyphaError as exc:
            last_error = exc
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout:.0f}s waiting for {what}"
        + (f" (last error: {last_error})" if last_error else "")
    )


class LocalAgent:
    def __init__(self, cluster: LocalCluster, index: int, host: str) -> None:
        self.cluster = cluster
        self.index = index
        self.host = host
        self.name = f"{cluster.tag}-n{index + 1}"
        self.data_dir = cluster.base / f"n{index + 1}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.data_dir / "api.sock"

    @property
    def api(self) -> str:
        return f"unix:{self.socket_path}"

    def client(self, timeout: float = 30.0) -> ApiClient:
        return ApiClient(self.api, timeout=timeout)

    def argv(self, join: list[str], stop_on_exit: bool = True) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "agent",
            "-v",
            "agent",
            "--name",
            self.name,
            "--bind",
            f"{self.host}:{self.cluster.port}",
            "--data-dir",
            str(self.data_dir),
            "--secret-file",
            str(self.cluster.secret),
            "--driver",
            self.cluster.driver,
            "--gossip-preset",
            self.cluster.preset,
        ]
        if self.cluster.runtime_path:
            argv += ["--runtime-path", self.cluster.runtime_path]
        argv += self.cluster.per_agent_args.get(self.index, [])
        argv.append("--stop-on-exit" if stop_on_exit else "--no-stop-on-exit")
        argv += self.cluster.agent_args
        for seed in join:
            argv += ["--join", seed]
        return argv

    def start(self, *, stop_on_exit: bool = True, wait: bool = True, alone: bool = False) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if alone:
            join = []
        elif self.cluster.started_once:  # a restart: join through any other agent
            join = [a.seed_address for a in self.cluster.agents if a is not self]
        else:
            join = [] if self.index == 0 else [self.cluster.seed]
        log = open(self.data_dir / "agent.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.argv(join, stop_on_exit),
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        if wait:
            self.wait_ready()

    @property
    def seed_address(self) -> str:
        return f"{self.host}:{self.cluster.port}"

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"agent {self.name} exited {self.proc.returncode}:\n" + self.log_tail()
                )
            if not self.socket_path.exists():
                return False
            try:
                self.client(timeout=5).get("/v1/status")
            except HyphaError:
                return False
            return True

        wait_until(ready, timeout, f"agent {self.name} to serve its API")

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = (self.data_dir / "agent.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the agent dies at once; its containers keep running."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 40.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(timeout=10)


class LocalCluster:
    def __init__(
        self,
        base: Path,
        size: int,
        *,
        driver: str = "process",
        preset: str = "local",
        runtime_path: str | None = None,
        agent_args: list[str] | None = None,
        per_agent_args: dict[int, list[str]] | None = None,
    ) -> None:
        self.base = base
        self.agent_args = list(agent_args or [])  # more flags for every `hypha agent`
        self.per_agent_args = per_agent_args or {}  # extra flags by agent index
        self.tag = "t" + secrets.token_hex(3)
        self.driver = driver
        self.preset = preset
        self.runtime_path = runtime_path
        self.secret = base / "secret"
        write_secret(self.secret, generate_secret())
        hosts = _hosts(size)
        self.port = free_port(hosts)
        self.agents = [LocalAgent(self, i, host) for i, host in enumerate(hosts)]
        self.seed = self.agents[0].seed_address
        self.started_once = False

    def start(self) -> None:
        for agent in self.agents:
            agent.start()
        self.started_once = True
        wait_until(
            lambda: self.alive_members(self.agents[0]) == len(self.agents),
            60,
            "every agent to see the others",
        )
        # Alive in gossip is not yet schedulable: an agent publishes its capacity only
        # once Raft runs, and it takes a gossip round to reach the leader.
        wait_until(self.schedulable, 60, "every agent to see every node's capacity")

    def schedulable(self) -> bool:
        for agent in self.agents:
            nodes = agent.client().get("/v1/nodes")["nodes"]
            ready = [n for n in nodes if n["state"] == "alive" and n.get("capacity")]
            if len(ready) != len(self.agents):
                return False
        return True

    def alive_members(self, agent: LocalAgent) -> int:
        members = agent.client().get("/v1/members")["members"]
        return sum(1 for m in members if m["state"] == "alive")

    def client(self) -> ApiClient:
        for agent in self.agents:
            if agent.running:
                return agent.client()
        raise AssertionError("no agent is running")

    def replicas(self, workload: str | None = None) -> list[dict[str, Any]]:
        query = {"workload": workload} if workload else {}
        rows: list[dict[str, Any]] = self.client().get("/v1/replicas", **query)["replicas"]
        return rows

    def running_by_node(self, workload: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.replicas(workload):
            if row["state"] == "running":
                counts[row["node"]] = counts.get(row["node"], 0) + 1
        return counts

    def host_processes(self) -> dict[str, list[int]]:
        """Processes on this host started for our replicas, by node (from their env)."""
        found: dict[str, list[int]] = {}
        names = {a.name for a in self.agents}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                env = (entry / "environ").read_bytes().split(b"\0")
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if ") Z" in stat:
                continue
            for item in env:
                if item.startswith(b"HYPHA_NODE="):
                    node = item[len(b"HYPHA_NODE=") :].decode(errors="replace")
                    if node in names:
                        found.setdefault(node, []).append(int(entry.name))
        return found

    def replica_processes(self) -> dict[str, set[str]]:
        """Replica ids running on this host, by node (from the processes' env)."""
        result: dict[str, set[str]] = {}
        for node, pids in self.host_processes().items():
            for pid in pids:
                try:
                    env = dict(
                        item.split(b"=", 1)
                        for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                        if b"=" in item
                    )
                except OSError:
                    continue
                replica = env.get(b"HYPHA_REPLICA")
                if replica:
                    result.setdefault(node, set()).add(replica.decode())
        return result

    def stop(self) -> None:
        """Stop every agent and every container, even after SIGKILLs and failures."""
        with contextlib.suppress(Exception):
            client = self.client()
            for workload in client.get("/v1/workloads")["workloads"]:
                client.delete(f"/v1/workloads/{workload['name']}")
            wait_until(lambda: not self.host_processes(), 20, "containers to stop")
        for agent in self.agents:
            if agent.running:
                agent.terminate()  # --stop-on-exit: it stops its containers
        # An agent that was SIGKILLed left its containers: start it once more on its
        # own with --stop-on-exit so it adopts and stops them, then terminate it.
        leftovers = self.host_processes()
        for agent in self.agents:
            if agent.name in leftovers:
                try:
                    agent.start(stop_on_exit=True, wait=True, alone=True)
                except AssertionError:
                    continue
                agent.terminate()
        for pids in self.host_processes().values():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        reap_orphans()


def reap_orphans(wait: float = 2.0) -> None:
    """Reap children of this (test) process that exited.

    A driver in this process may have made it a child subreaper, so the shims of a
    SIGKILLed agent are re-parented here: reap them now rather than leaving zombies
    for the next test to trip over."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # no children at all
        if pid == 0:
            time.sleep(0.1)

    def dump(self) -> str:
        parts = []
        for agent in self.agents:
            parts.append(
                f"--- {agent.name} ({'running' if agent.running else 'stopped'})\n"
                + agent.log_tail()
            )
        return "\n".join(parts)


@contextlib.contextmanager
def local_cluster(base: Path, size: int, **kwargs: Any) -> Iterator[LocalCluster]:
    cluster = LocalCluster(base, size, **kwargs)
    try:
        cluster.start()
        yield cluster
    except BaseException:
        print(cluster.dump(), file=sys.stderr)
        raise
    finally:
        cluster.stop()


def hypha_cli(api: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "--api", api, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HYPHA_API": ""},
    )


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


__all__ = ["LocalCluster", "as_json", "hypha_cli", "local_cluster", "shutil", "wait_until"]
