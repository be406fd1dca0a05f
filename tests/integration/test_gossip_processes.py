"""Five gossip members as real processes on 127.0.0.2-6 with real UDP.

Each runs ``python -m gossip.run`` (the membership layer alone; ``hypha agent``
adds the rest) and writes its view to a JSON status file we poll.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gossip import Keyring, generate_key

HOSTS = [f"127.0.0.{i}" for i in range(2, 7)]


def free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.keyring = tmp / "keyring"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.addresses: dict[str, str] = {}

    def start(self, name: str, host: str, join: str | None) -> None:
        address = f"{host}:{free_udp_port(host)}"
        self.addresses[name] = address
        cmd = [sys.executable, "-m", "gossip.run", "--name", name, "--bind", address]
        cmd += ["--keyring", str(self.keyring), "--preset", "local"]
        cmd += ["--status", str(self.tmp / f"{name}.json")]
        if join:
            cmd += ["--join", join]
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 (kept for the process's life)
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def status(self, name: str) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.tmp / f"{name}.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {"members": [], "events": {}, "keys": 0, "counters": {}}
        return data

    def view(self, name: str) -> dict[str, str]:
        return {m["name"]: m["state"] for m in self.status(name)["members"]}

    def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            for name, proc in self.procs.items():
                if proc.poll() is not None and proc.returncode not in (-9, 0):
                    log = (self.tmp / f"{name}.log").read_text()
                    pytest.fail(f"{name} exited {proc.returncode}:\n{log[-2000:]}")
            time.sleep(0.1)
        views = {n: self.view(n) for n in self.procs}
        pytest.fail(f"timed out waiting for {what}; views: {views}")

    def signal_all(self, signum: int, names: list[str]) -> None:
        for name in names:
            self.procs[name].send_signal(signum)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            proc.wait(timeout=10)


def reloaded(cluster: Cluster, names: list[str], count: int) -> Callable[[], bool]:
    return lambda: all(cluster.status(n)["keys"] == count for n in names)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop()


@pytest.mark.slow
def test_five_processes_rotate_keys_and_detect_a_sigkill(cluster: Cluster) -> None:
    old, new = generate_key(), generate_key()
    Keyring(old).save(cluster.keyring)
    names = [f"n{i}" for i in range(5)]
    cluster.start("n0", HOSTS[0], None)
    cluster.wait(lambda: bool(cluster.status("n0")["members"]), 20, "n0 to start")
    for name, host in zip(names[1:], HOSTS[1:], strict=True):
        cluster.start(name, host, cluster.addresses["n0"])

    def all_alive(live: list[str]) -> bool:
        return all(all(cluster.view(o).get(n) == "alive" for n in live) for o in live)

    cluster.wait(lambda: all_alive(names), 30, "five members to converge")

    # Key rotation on the live cluster: install, use, remove, each on every member.
    def bad_events() -> int:
        return sum(
            count
            for n in names
            for key, count in cluster.status(n)["events"].items()
            if key.split(":")[0] in ("dead", "left")
        )

    before = bad_events()
    for keys in ([old, new], [new, old], [new]):
        Keyring(keys[0], keys[1:]).save(cluster.keyring)
        cluster.signal_all(signal.SIGHUP, names)
        cluster.wait(
            reloaded(cluster, names, len(keys)),
            20,
            f"every member to reload a keyring of {len(keys)} keys",
        )
        time.sleep(1.0)  # a few gossip rounds under the new keys
    drops_before = {n: cluster.status(n)["counters"].get("drops_auth", 0) for n in names}
    time.sleep(2.0)
    assert all_alive(names), {n: cluster.view(n) for n in names}
    assert bad_events() == before, "a member was declared dead or left during rotation"
    # Nobody is still sealing with the removed key.
    assert {n: cluster.status(n)["counters"].get("drops_auth", 0) for n in names} == drops_before

    # SIGKILL one member: every other marks it dead.
    victim = "n3"
    cluster.procs[victim].send_signal(signal.SIGKILL)
    cluster.procs[victim].wait(timeout=10)
    survivors = [n for n in names if n != victim]
    cluster.wait(
        lambda: all(cluster.view(o).get(victim) == "dead" for o in survivors),
        30,
        f"{victim} to be declared dead by all",
    )
    assert all_alive(survivors)


@pytest.mark.slow
def test_a_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keyring"
    Keyring(generate_key()).save(path)
    os.chmod(path, 0o640)
    port = free_udp_port(HOSTS[0])
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gossip.run",
            "--name",
            "x",
            "--bind",
            f"{HOSTS[0]}:{port}",
            "--keyring",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "mode 0640; it must be 0600" in result.stderr
