"""A cluster of real agents that several modules' end-to-end tests share.

``shared_cluster``: three ``hypha agent`` processes (process driver, JSON logs) on
loopback aliases, started once for every test that asks for it
(tests/integration/test_observe.py, test_mcp.py) and stopped right after the last
of them, so it does not sit idle through the rest of the suite. A test that breaks
something (kills an agent, drains a node) puts it back before it ends.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.integration.agents import LocalCluster

SHARED = "shared_cluster"
_live: list[LocalCluster] = []


def _stop(cluster: LocalCluster) -> None:
    if cluster in _live:
        _live.remove(cluster)
        cluster.stop()
        shutil.rmtree(cluster.base, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_cluster() -> Iterator[LocalCluster]:
    # Short path: a Unix socket path must stay under 108 bytes.
    base = Path(f"/tmp/hy-shared-{os.getpid()}")
    base.mkdir(parents=True, exist_ok=True)
    cluster = LocalCluster(base, 3, driver="process", extra_args=["--log-format", "json"])
    _live.append(cluster)
    try:
        cluster.start()
    except BaseException:
        print(cluster.dump(), file=sys.stderr)
        _stop(cluster)
        raise
    yield cluster
    _stop(cluster)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    yield
    if not _live or SHARED not in getattr(item, "fixturenames", ()):
        return
    items = item.session.items
    later = items[items.index(item) + 1 :] if item in items else []
    if not any(SHARED in getattr(i, "fixturenames", ()) for i in later):
        for cluster in list(_live):
            _stop(cluster)
