"""Local clusters of real ``hypha agent`` processes for the integration tests.

The cluster itself is ``agent.localcluster`` (the chaos soak runs the same one); this
module adds what tests need around it: loopback addresses no other test of this
run uses, zombie reaping after a stop, a context manager that prints every agent's
log when a test fails, and a runner for the ``hypha`` CLI.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent import localcluster
from agent.localcluster import AgentProcess, wait_until

LocalAgent = AgentProcess

_next_host = [20]


def _hosts(count: int) -> list[str]:
    """Loopback aliases not used by other tests in this process (nor, likely, by another
    test run on this machine: the pid picks the start)."""
    start = _next_host[0] + (os.getpid() % 50)
    _next_host[0] += count
    return [f"127.0.{(start + i) // 250 + 1}.{(start + i) % 250 + 2}" for i in range(count)]


class LocalCluster(localcluster.LocalCluster):
    """``agent.localcluster.LocalCluster`` on this test run's own addresses, with node
    names tagged ``tXXXXXX-`` (the clean-up finds replicas by node name)."""

    def __init__(self, base: Path, size: int, **kwargs: Any) -> None:
        kwargs.setdefault("hosts", _hosts(size))
        kwargs.setdefault("name_prefix", "t" + secrets.token_hex(3) + "-")
        super().__init__(base, size, **kwargs)

    def stop(self) -> None:
        super().stop()
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


__all__ = [
    "LocalAgent",
    "LocalCluster",
    "as_json",
    "hypha_cli",
    "local_cluster",
    "reap_orphans",
    "wait_until",
]
