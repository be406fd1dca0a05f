"""Real Raft clusters of runner processes on loopback, for tests and ``scripts/bench-consensus``.

Every node is a ``python -m agent.consensus.runner`` process on its own loopback alias
(127.0.0.x) and a free port picked at start, so clusters of parallel tests never
collide. ``NodeProcess.kill()`` is a real SIGKILL.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from agent.secrets import generate_secret, write_secret

T = TypeVar("T")
_alias_counter = itertools.count(int(time.time() * 1000) % 200)


def next_loopback_alias() -> str:
    """127.0.0.2-127.0.0.250, round robin from a time-based start."""
    return f"127.0.0.{2 + next(_alias_counter) % 249}"


def free_port(host: str) -> int:
    """A TCP port free on ``host`` right now (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_address() -> str:
    host = next_loopback_alias()
    return f"{host}:{free_port(host)}"


def make_secret(path: Path) -> Path:
    write_secret(path, generate_secret(), force=True)
    return path


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (TimeoutError, NodeError) as exc:
            last_error = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} ({last_error})")
        time.sleep(interval)


class NodeError(Exception):
    """The runner process answered with an error, or died."""


class NodeProcess:
    """One runner process and its JSON-lines control channel."""

    def __init__(
        self,
        addr: str,
        data_dir: Path,
        secret_file: Path,
        *,
        bootstrap: bool = False,
        join: Iterable[str] = (),
        target_voters: int = 3,
        compaction_entries: int = 5000,
    ) -> None:
        self.addr = addr
        self.data_dir = data_dir
        self.secret_file = secret_file
        self.bootstrap = bootstrap
        self.join = list(join)
        self.target_voters = target_voters
        self.compaction_entries = compaction_entries
        self.proc: subprocess.Popen[bytes] | None = None
        self._answers: dict[int, queue.Queue[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self.started: dict[str, Any] | None = None

    def start(self, timeout: float = 30.0) -> NodeProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable,
            "-m",
            "agent.consensus.runner",
            "--addr",
            self.addr,
            "--data-dir",
            str(self.data_dir),
            "--secret-file",
            str(self.secret_file),
            "--target-voters",
            str(self.target_voters),
            "--compaction-entries",
            str(self.compaction_entries),
        ]
        if self.bootstrap:
            argv.append("--bootstrap")
        if self.join:
            argv += ["--join", ",".join(self.join)]
        log = open(self.data_dir / "runner.log", "ab")  # noqa: SIM115 (owned by the child)
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, bufsize=0
        )
        log.close()
        self._started: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        try:
            first = self._started.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise NodeError(f"{self.addr} did not start within {timeout}s") from None
        if first.get("event") != "started":
            self.kill()
            raise NodeError(f"{self.addr} failed to start: {first.get('message')}")
        self.started = first
        return self

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            if "event" in message:
                self._started.put(message)
                continue
            with self._lock:
                box = self._answers.get(message.get("id"))
            if box is not None:
                box.put(message)
        self._started.put({"event": "exited", "message": "process exited"})
        with self._lock:
            for box in self._answers.values():
                box.put({"error": "dead", "message": f"{self.addr} exited"})

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def request(self, cmd: str, timeout: float = 15.0, **fields: Any) -> dict[str, Any]:
        """Send one request and wait for its answer (raises ``NodeError`` if it died)."""
        if not self.alive:
            raise NodeError(f"{self.addr} is not running")
        assert self.proc is not None and self.proc.stdin is not None
        rid = next(self._ids)
        box: queue.Queue[dict[str, Any]] = queue.Queue()
        with self._lock:
            self._answers[rid] = box
        try:
            line = json.dumps({"id": rid, "cmd": cmd, **fields}) + "\n"
            try:
                self.proc.stdin.write(line.encode())
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError) as exc:
                raise NodeError(f"{self.addr}: {exc}") from None
            try:
                answer = box.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"{self.addr}: no answer to {cmd} in {timeout}s") from None
        finally:
            with self._lock:
                self._answers.pop(rid, None)
        if answer.get("error") == "dead":
            raise NodeError(answer["message"])
        return answer

    def status(self, timeout: float = 10.0) -> dict[str, Any]:
        return dict(self.request("status", timeout)["status"])

    def set_membership(self, alive: Iterable[str], suspect: Iterable[str] = ()) -> None:
        self.request("membership", alive=list(alive), suspect=list(suspect))

    def kill(self) -> None:
        """SIGKILL, then reap."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None:
                    stream.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask it to exit; SIGKILL if it does not."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(TimeoutError, NodeError):
                self.request("exit", timeout=0.5)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        self.kill()


class Cluster:
    """A set of ``NodeProcess`` es sharing one secret, under one directory."""

    def __init__(self, root: Path, *, target_voters: int = 3, compaction_entries: int = 5000):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.secret = make_secret(root / "secret")
        self.target_voters = target_voters
        self.compaction_entries = compaction_entries
        self.nodes: dict[str, NodeProcess] = {}

    def add(self, *, bootstrap: bool = False, join: Iterable[str] = ()) -> NodeProcess:
        addr = free_address()
        node = NodeProcess(
            addr,
            self.root / addr.replace(":", "_"),
            self.secret,
            bootstrap=bootstrap,
            join=join,
            target_voters=self.target_voters,
            compaction_entries=self.compaction_entries,
        )
        self.nodes[addr] = node
        return node.start()

    def restart(self, addr: str, join: Iterable[str] | None = None) -> NodeProcess:
        """SIGKILL the node and start it again on its data dir; it joins through
        ``join`` (every other node by default)."""
        old = self.nodes[addr]
        old.kill()
        node = NodeProcess(
            addr,
            old.data_dir,
            self.secret,
            join=[a for a in self.nodes if a != addr] if join is None else list(join),
            target_voters=self.target_voters,
            compaction_entries=self.compaction_entries,
        )
        self.nodes[addr] = node
        # The port may be briefly busy after a SIGKILL; retry a few times.
        for attempt in range(20):
            try:
                return node.start()
            except NodeError:
                if attempt == 19:
                    raise
                time.sleep(0.5)
        raise AssertionError("unreachable")

    def live(self) -> list[NodeProcess]:
        return [n for n in self.nodes.values() if n.alive]

    def set_membership(self, suspect: Iterable[str] = ()) -> None:
        """Tell every live node that the live nodes are alive (the fake gossip view),
        except ``suspect`` ones: those are only suspected (slow, not known dead)."""
        suspect = list(suspect)
        alive = [n.addr for n in self.live() if n.addr not in suspect]
        for node in self.live():
            node.set_membership(alive, suspect)

    def leader(self, timeout: float = 20.0) -> NodeProcess:
        """The live node that is leader and has written its term (all agree on it)."""

        def find() -> NodeProcess | None:
            for node in self.live():
                try:
                    status = node.status(timeout=3)
                except (TimeoutError, NodeError):
                    continue
                if status["state"] == "leader" and status["leader_ready"]:
                    return node
            return None

        found = wait_for(find, timeout, "a ready leader")
        assert found is not None
        return found

    def propose(self, wire: dict[str, Any], timeout: float = 20.0) -> dict[str, Any]:
        """Propose at whichever node leads, following NotLeader answers; retry on errors.

        Returns the state's result once acknowledged; raises ``TimeoutError`` if no
        acknowledgement came within ``timeout`` (the outcome is then unknown)."""
        deadline = time.monotonic() + timeout
        target: NodeProcess | None = None
        while time.monotonic() < deadline:
            if target is None or not target.alive:
                live = self.live()
                if not live:
                    raise NodeError("no live nodes")
                target = live[0]
            try:
                answer = target.request("propose", timeout=10, wire=wire, deadline=3)
            except (TimeoutError, NodeError):
                target = None
                time.sleep(0.05)
                continue
            if "result" in answer:
                return dict(answer["result"])
            if answer.get("error") == "not_leader" and answer.get("leader") in self.nodes:
                target = self.nodes[answer["leader"]]
            else:
                target = None
                time.sleep(0.05)
        raise TimeoutError(f"not acknowledged within {timeout}s")

    def close(self) -> None:
        for node in self.nodes.values():
            node.kill()
