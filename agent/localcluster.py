"""A cluster of real ``hypha agent`` processes on this machine's loopback aliases.

Used by the chaos soak and the integration tests (``tests/integration/agents.py``
adds only test conveniences): every agent runs ``python -m agent agent`` on its own
address (127.0.X.Y), with its own data dir under ``base`` and a shared generated
secret. Each process runs in its own session, so a fault (SIGKILL, SIGSTOP) hits
exactly one agent, and ``stop()`` cleans up even after agents were killed: a dead
agent is started once more alone with ``--stop-on-exit`` so it adopts and stops its
containers.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from agent.client import ApiClient
from agent.config import PREFIX_FILE
from agent.errors import HyphaError
from agent.secrets import generate_secret, write_secret

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T | None], timeout: float, what: str, interval: float = 0.25
) -> T:
    """Poll ``condition`` until it returns something truthy; else ``HyphaError`` naming ``what``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = condition()
        except HyphaError as exc:
            last_error = exc
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise HyphaError(
                f"timed out after {timeout:.0f}s waiting for {what}"
                + (f" (last error: {last_error})" if last_error else "")
            )
        time.sleep(interval)


def hosts_from(first: str, count: int) -> list[str]:
    """``count`` consecutive IPv4 addresses starting at ``first``."""
    parts = [int(p) for p in first.split(".")]
    base = (parts[0] << 24) | (parts[1] << 16) | (parts[2] << 8) | parts[3]
    out = []
    for i in range(count):
        value = base + i
        out.append(".".join(str((value >> s) & 255) for s in (24, 16, 8, 0)))
    return out


def free_port(hosts: list[str]) -> int:
    """A port free for UDP (gossip) and port + 1 free for TCP (Raft) on every host."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((hosts[0], 0))
            port = int(probe.getsockname()[1])
        if port >= 65000:
            continue
        held: list[socket.socket] = []
        try:
            for host in hosts:
                for kind, p in ((socket.SOCK_DGRAM, port), (socket.SOCK_STREAM, port + 1)):
                    s = socket.socket(socket.AF_INET, kind)
                    held.append(s)
                    s.bind((host, p))
            return port
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise HyphaError("no free port pair on the loopback addresses")


LAYOUT_FILE = "cluster.json"


@dataclass(frozen=True, slots=True)
class Layout:
    """Where a local cluster's agents listen: kept in its base dir, because an agent's
    Raft state is bound to its address, so a restart must reuse the same ones."""

    hosts: tuple[str, ...]
    port: int

    def save(self, base: Path) -> None:
        staging = base / (LAYOUT_FILE + ".tmp")
        staging.write_text(json.dumps({"hosts": list(self.hosts), "port": self.port}) + "\n")
        staging.replace(base / LAYOUT_FILE)

    @classmethod
    def load(cls, base: Path) -> Layout | None:
        """The saved layout; for a base dir from before the file, the addresses its
        agents' Raft state names (Raft listens on the gossip port + 1); else ``None``."""
        try:
            data = json.loads((base / LAYOUT_FILE).read_text())
            return cls(tuple(str(h) for h in data["hosts"]), int(data["port"]))
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError) as exc:
            raise HyphaError(f"{base / LAYOUT_FILE} is damaged ({exc})") from None
        found: dict[int, tuple[str, int]] = {}
        for meta in base.glob("n*/raft/raft-meta.json"):
            index = meta.parent.parent.name[1:]
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                host, _, raft_port = str(json.loads(meta.read_text())["self"]).rpartition(":")
                if index.isdigit():
                    found[int(index)] = (host, int(raft_port) - 1)
        if not found or sorted(found) != list(range(1, len(found) + 1)):
            return None
        ports = {port for _, port in found.values()}
        if len(ports) != 1:
            return None
        return cls(tuple(found[i][0] for i in sorted(found)), ports.pop())

    def busy(self) -> str | None:
        """``host:port`` of the first address some other process holds, if any."""
        for host in self.hosts:
            for kind, port in ((socket.SOCK_DGRAM, self.port), (socket.SOCK_STREAM, self.port + 1)):
                with socket.socket(socket.AF_INET, kind) as s:
                    if kind == socket.SOCK_STREAM:  # as Raft binds: TIME_WAIT is no owner
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    try:
                        s.bind((host, port))
                    except OSError:
                        return f"{host}:{port}"
        return None


class AgentProcess:
    """One agent of a ``LocalCluster``."""

    def __init__(self, cluster: LocalCluster, index: int, host: str) -> None:
        self.cluster = cluster
        self.index = index
        self.host = host
        self.name = f"{cluster.name_prefix}n{index + 1}"
        self.data_dir = cluster.base / f"n{index + 1}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def container_prefix(self) -> str | None:
        """The agent instance's container prefix (``HYPHA_AGENT`` of its replicas),
        once it has started; names repeat across clusters (two ``hypha up`` have an n1),
        this does not."""
        try:
            return (self.data_dir / PREFIX_FILE).read_text().strip() or None
        except OSError:
            return None

    @property
    def socket_path(self) -> Path:
        return self.data_dir / "api.sock"

    @property
    def api(self) -> str:
        return f"unix:{self.socket_path}"

    @property
    def seed_address(self) -> str:
        return f"{self.host}:{self.cluster.port}"

    def client(self, timeout: float = 10.0) -> ApiClient:
        return ApiClient(self.api, timeout=timeout)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def argv(self, join: list[str], stop_on_exit: bool) -> list[str]:
        c = self.cluster
        argv = [sys.executable, "-m", "agent", *(["-v"] if c.verbose else []), "agent"]
        argv += ["--name", self.name]
        argv += ["--bind", self.seed_address, "--data-dir", str(self.data_dir)]
        argv += ["--secret-file", str(c.secret), "--driver", c.driver]
        argv += ["--gossip-preset", c.preset]
        if c.runtime_path:
            argv += ["--runtime-path", c.runtime_path]
        argv += c.per_agent_args.get(self.index, [])
        argv.append("--stop-on-exit" if stop_on_exit else "--no-stop-on-exit")
        for seed in join:
            argv += ["--join", seed]
        return argv + list(c.extra_args)

    def start(self, *, stop_on_exit: bool = False, alone: bool = False, wait: bool = True) -> None:
        """Start (or restart) the agent; a restart joins through every other agent."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if alone:
            join: list[str] = []
        elif self.cluster.started:
            join = [a.seed_address for a in self.cluster.agents if a is not self]
        else:
            join = [] if self.index == 0 else [self.cluster.agents[0].seed_address]
        with open(self.data_dir / "agent.log", "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(join, stop_on_exit),
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.paused = False
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise HyphaError(f"agent {self.name} exited ({code}):\n{self.log_tail(20)}")
            self.client(timeout=5).get("/v1/status")
            return True

        wait_until(ready, timeout, f"agent {self.name} to serve its API")

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = (self.data_dir / "agent.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL: the agent dies at once; its containers keep running."""
        if self.proc is not None and self.proc.poll() is None:
            if self.paused:
                self.resume()
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def pause(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def terminate(self, timeout: float = 40.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.paused:
            self.resume()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


class LocalCluster:
    """``size`` agents on ``first_host`` and the addresses after it (or on ``hosts``),
    all on one port pair.

    ``extra_args`` go to every ``hypha agent``, ``per_agent_args`` to one (by index);
    ``runtime_path`` is the OCI runtime for ``driver="oci"``; ``verbose`` gives the
    agents ``-v`` (debug logs); ``port`` reuses a saved ``Layout``'s port (else a
    free one is picked). The layout is saved in ``base``."""

    def __init__(
        self,
        base: Path,
        size: int,
        *,
        driver: str = "process",
        preset: str = "local",
        first_host: str = "127.0.3.2",
        hosts: Sequence[str] | None = None,
        name_prefix: str | None = None,
        extra_args: Sequence[str] = (),
        per_agent_args: Mapping[int, list[str]] | None = None,
        runtime_path: str | None = None,
        verbose: bool = True,
        port: int | None = None,
    ) -> None:
        self.base = base
        self.verbose = verbose
        self.base.mkdir(parents=True, exist_ok=True)
        self.driver = driver
        self.preset = preset
        self.extra_args = tuple(extra_args)
        self.per_agent_args = dict(per_agent_args or {})
        self.runtime_path = runtime_path
        self.name_prefix = name_prefix if name_prefix is not None else secrets.token_hex(2) + "-"
        self.secret = base / "secret"
        if not self.secret.exists():
            write_secret(self.secret, generate_secret())
        hosts = list(hosts) if hosts is not None else hosts_from(first_host, size)
        if len(hosts) != size:
            raise HyphaError(f"{size} agents need {size} addresses, got {len(hosts)}")
        self.port = free_port(hosts) if port is None else port
        Layout(tuple(hosts), self.port).save(base)
        self.agents = [AgentProcess(self, i, host) for i, host in enumerate(hosts)]
        self.started = False

    def by_name(self, name: str) -> AgentProcess:
        for agent in self.agents:
            if agent.name == name:
                return agent
        raise HyphaError(f"no agent named {name!r} in this cluster")

    def start(self, timeout: float = 90.0) -> None:
        """Start every agent; return once each sees all alive and every node's capacity
        (alive in gossip is not yet schedulable: an agent publishes its capacity only
        once its Raft runs, and that takes a gossip round to reach the leader)."""
        for agent in self.agents:
            agent.start()
        self.started = True
        wait_until(
            lambda: all(self.alive_members(a) == len(self.agents) for a in self.agents),
            timeout,
            "every agent to see the others alive",
        )
        wait_until(self.schedulable, timeout, "every agent to see every node's capacity")

    def schedulable(self) -> bool:
        for agent in self.agents:
            nodes = agent.client().get("/v1/nodes")["nodes"]
            ready = [n for n in nodes if n["state"] == "alive" and n.get("capacity")]
            if len(ready) != len(self.agents):
                return False
        return True

    def alive_members(self, agent: AgentProcess) -> int:
        members = agent.client().get("/v1/members")["members"]
        return sum(1 for m in members if m["state"] == "alive")

    def client(self, timeout: float = 10.0) -> ApiClient:
        """A client of some running, unpaused agent."""
        for agent in self.agents:
            if agent.running and not agent.paused:
                return agent.client(timeout)
        raise HyphaError("no agent of the cluster is running")

    def replicas(self, workload: str | None = None) -> list[dict[str, Any]]:
        """The cluster's replica rows (``/v1/replicas``), of one workload or all."""
        query = {"workload": workload} if workload else {}
        rows: list[dict[str, Any]] = self.client().get("/v1/replicas", **query)["replicas"]
        return rows

    def running_by_node(self, workload: str) -> dict[str, int]:
        """How many of ``workload``'s replicas the cluster reports running, by node."""
        counts: dict[str, int] = {}
        for row in self.replicas(workload):
            if row["state"] == "running":
                counts[row["node"]] = counts.get(row["node"], 0) + 1
        return counts

    def _our_processes(self) -> Iterator[tuple[int, str, dict[bytes, bytes]]]:
        """(pid, agent name, environment) of each live process of our agents' replicas,
        told by ``HYPHA_AGENT`` (the agent instance), never by node name alone: another
        local cluster on this host may have a node of the same name."""
        ours = {a.container_prefix: a.name for a in self.agents if a.container_prefix}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                raw = (entry / "environ").read_bytes()
                if b"HYPHA_AGENT=" not in raw:
                    continue
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if ") Z" in stat:
                continue
            env = dict(item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
            name = ours.get(env.get(b"HYPHA_AGENT", b"").decode(errors="replace"))
            if name is not None:
                yield int(entry.name), name, env

    def replica_processes(self) -> dict[str, set[str]]:
        """Replica ids really running on this host, by node, from the processes' environment."""
        found: dict[str, set[str]] = {}
        for _, node, env in self._our_processes():
            replica = env.get(b"HYPHA_REPLICA", b"").decode(errors="replace")
            if replica:
                found.setdefault(node, set()).add(replica)
        return found

    def _host_pids(self) -> list[int]:
        return [pid for pid, _, _ in self._our_processes()]

    def stop(self) -> None:
        """Stop every agent and every replica, even after SIGKILLs and failures: delete
        the workloads, stop the agents, and have any SIGKILLed one adopt and stop what
        it left."""
        for agent in self.agents:
            if agent.paused:
                agent.resume()
        with contextlib.suppress(HyphaError, KeyError, TypeError):
            client = self.client()
            for workload in client.get("/v1/workloads")["workloads"]:
                client.delete(f"/v1/workloads/{workload['name']}")
            # Only live agents stop theirs; a SIGKILLed agent's are cleaned up below.
            live = {a.name for a in self.agents if a.running}
            wait_until(
                lambda: not live.intersection(self.replica_processes()), 30, "replicas to stop"
            )
        self.shutdown()
        self.stop_leftovers(everyone=self.driver == "oci")

    def stop_leftovers(self, dead: Iterable[str] = (), *, everyone: bool = False) -> list[str]:
        """After ``shutdown``: stop the containers agents left behind. An agent in
        ``dead`` (it died, e.g. SIGKILL), or with replica processes still running,
        or every agent with ``everyone``, is started once more alone with
        ``--stop-on-exit``, so it adopts and stops what it left, then stopped; any
        replica process still left is killed. Returns the names of those restarted."""
        leftovers = self.replica_processes()
        dead = set(dead)
        # All at once: started one by one, each found no peer (10 s) and no Raft
        # leader (30 s) before it served, so a 3-agent cluster took 2 minutes to
        # clean up. Together they find each other and a leader in a second or two.
        cleaners = [a for a in self.agents if everyone or a.name in leftovers or a.name in dead]
        for agent in cleaners:
            agent.start(stop_on_exit=True, alone=True, wait=False)
        for agent in cleaners:
            with contextlib.suppress(HyphaError):  # exited at once: nothing to stop
                agent.wait_ready()
        self.shutdown()
        for pid in self._host_pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        return [a.name for a in cleaners]

    def shutdown(self, timeout: float = 40.0) -> None:
        """SIGTERM every agent on our data dirs, ours and strays (an agent a chaos tool
        restarted is not our child), and wait for them; the desired state stays."""
        for agent in self.agents:
            if agent.paused:
                agent.resume()
            if agent.running:
                assert agent.proc is not None
                with contextlib.suppress(ProcessLookupError):
                    agent.proc.send_signal(signal.SIGTERM)
        ours = {a.proc.pid for a in self.agents if a.proc is not None}
        strays = [pid for pid in self._stray_agents() if pid not in ours]
        for pid in strays:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for agent in self.agents:
            if agent.proc is None:
                continue
            try:
                agent.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(agent.proc.pid, signal.SIGKILL)
                agent.proc.wait(timeout=10)
        while strays and time.monotonic() < deadline:
            strays = [pid for pid in strays if Path(f"/proc/{pid}").exists()]
            time.sleep(0.2)

    def _stray_agents(self) -> list[int]:
        """Agents running on our data dirs that we did not start."""
        found = []
        dirs = {str(a.data_dir).encode() for a in self.agents}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"agent" in argv and b"--data-dir" in argv and any(a in dirs for a in argv):
                found.append(int(entry.name))
        return found

    def dump(self) -> str:
        return "\n".join(
            f"--- {a.name} ({'running' if a.running else 'stopped'})\n{a.log_tail()}"
            for a in self.agents
        )


def status_of(agent: AgentProcess, timeout: float = 3.0) -> dict[str, Any] | None:
    """The agent's ``/v1/status``, or ``None`` if it does not answer."""
    try:
        data: dict[str, Any] = agent.client(timeout).get("/v1/status")
    except HyphaError:
        return None
    return data
