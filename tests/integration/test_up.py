"""`hypha up` as a new user runs it: an agent that dies is reported and its containers
do not outlive the cluster, and the cluster restarts from its directory."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.client import ApiClient
from agent.localcluster import wait_until

pytestmark = pytest.mark.slow


def marked(mark: str) -> list[int]:
    """Pids of the processes that carry ``mark`` in their environment."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if mark.encode() in env and ") Z" not in stat:
            found.append(int(entry.name))
    return found


def agent_pid(data_dir: Path) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"agent" in argv and str(data_dir).encode() in argv:
            return int(entry.name)
    return None


def is_alive(pid: int) -> bool:
    try:
        return ") Z" not in Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False


class Up:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.proc: subprocess.Popen[str] | None = None
        self.output = ""

    def start(self, nodes: int = 2) -> None:
        (self.base / "env").unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "up", "-n", str(nodes), "--dir", str(self.base)]
            + ["--driver", "process", "--gossip-preset", "local", "--first-address", "127.0.6.2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        wait_until(lambda: self._check() and (self.base / "env").exists(), 120, "hypha up")

    def _check(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"hypha up exited: {self.proc.communicate()[0]}")
        return True

    def stop(self) -> str:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=180)
        self.output += out
        return out

    def client(self) -> ApiClient:
        return ApiClient(f"unix:{self.base / 'n1' / 'api.sock'}", timeout=10)


@pytest.fixture
def up() -> Iterator[Up]:
    base = Path(f"/tmp/hy-up-{os.getpid()}")
    base.mkdir(parents=True, exist_ok=True)
    running = Up(base)
    try:
        yield running
    finally:
        if running.proc is not None and running.proc.poll() is None:
            os.killpg(running.proc.pid, signal.SIGKILL)
            running.proc.wait()
        for data_dir in (base / "n1", base / "n2", base / "n3"):
            pid = agent_pid(data_dir)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
        import shutil

        shutil.rmtree(base, ignore_errors=True)


def test_up_reports_a_dead_agent_stops_its_containers_and_restarts_from_its_dir(
    up: Up,
) -> None:
    mark = f"HYPHA_TEST_MARK={secrets.token_hex(6)}"
    up.start()
    spec = {
        "name": "w",
        "command": ["sh", "-c", "while true; do sleep 1; done"],
        "replicas": 2,
        "env": {"HYPHA_TEST_MARK": mark.partition("=")[2]},
        "placement": {"distinct_nodes": True},
        "stop_grace": 1,
    }
    up.client().post("/v1/workloads", {"spec": spec})
    wait_until(lambda: len(marked(mark)) >= 2, 60, "both replicas running")
    n2 = agent_pid(up.base / "n2")
    assert n2 is not None
    os.kill(n2, signal.SIGKILL)
    wait_until(lambda: not is_alive(n2), 10, "n2 to die")
    out = up.stop()
    assert "agent n2 exited (killed by SIGKILL)" in out and "n2/agent.log" in out, out
    assert "stopped" in out.splitlines()[-1], out
    assert marked(mark) == [], out  # nothing of n2's survives, not even its shim

    up.start()  # the same dir again: same addresses, the desired state is still there
    wait_until(lambda: len(marked(mark)) >= 2, 90, "both replicas running again")
    out = up.stop()
    assert "exited" not in out and marked(mark) == [], out


def test_a_clean_stop_moves_no_replica(up: Up) -> None:
    """Stopped together, the agents leave one by one; the leader, still stopping its
    containers, used to move the replicas of those gone onto itself, so a restart had
    them all on one node. Here n1 and n2 take 3 s to stop theirs, n3 none."""
    mark = f"HYPHA_TEST_MARK={secrets.token_hex(6)}"
    up.start(nodes=3)
    slow = '[ "$HYPHA_NODE" = n3 ] || trap "" TERM; while true; do sleep 1; done'
    spec = {
        "name": "w",
        "command": ["sh", "-c", slow],
        "replicas": 6,
        "env": {"HYPHA_TEST_MARK": mark.partition("=")[2]},
        "stop_grace": 3,
    }
    up.client().post("/v1/workloads", {"spec": spec})
    wait_until(lambda: len(marked(mark)) >= 6, 60, "the replicas running")
    nodes = {r["node"] for r in up.client().get("/v1/replicas")["replicas"]}
    assert nodes == {"n1", "n2", "n3"}, nodes
    up.stop()
    logs = "".join((up.base / n / "agent.log").read_text() for n in ("n1", "n2", "n3"))
    assert " moved from " not in logs, [ln for ln in logs.splitlines() if "moved from" in ln]
