"""Gossip key rotation on live agents: ``--keyring`` files re-read on SIGHUP.

Two real agents (process driver) start on one keyring. The three rotation steps
(install the new key, make it the sealing key, remove the old one) are each a file
edit and a SIGHUP on both; nobody is declared dead along the way. Then one agent is
given a key the other does not hold: the other must lose it, which proves the reload
changed what live datagrams are sealed with.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.agents import LocalCluster, local_cluster, wait_until

pytestmark = pytest.mark.slow


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def _write(path: Path, *keys: str) -> None:
    path.write_text("".join(f"{k}\n" for k in keys))
    path.chmod(0o600)


def _alive(cluster: LocalCluster, index: int) -> set[str]:
    members = cluster.agents[index].client().get("/v1/members")["members"]
    return {m["name"] for m in members if m["state"] == "alive"}


def _reloads(cluster: LocalCluster, index: int) -> int:
    return cluster.agents[index].log_tail(10_000).count("keyring reloaded")


@pytest.fixture
def keyrings(tmp_path: Path) -> Iterator[tuple[LocalCluster, list[Path]]]:
    base = Path(f"/tmp/hy-keys-{os.getpid()}-{tmp_path.name[-6:]}")
    base.mkdir(parents=True, exist_ok=True)
    files = [base / "keyring-0", base / "keyring-1"]
    first = _key()
    for f in files:
        _write(f, first)
    try:
        with local_cluster(
            base,
            2,
            per_agent_args={i: ["--keyring", str(f)] for i, f in enumerate(files)},
        ) as cluster:
            yield cluster, files
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_sighup_rotates_the_gossip_key_without_losing_anyone(
    keyrings: tuple[LocalCluster, list[Path]],
) -> None:
    cluster, files = keyrings
    names = {a.name for a in cluster.agents}
    old = files[0].read_text().split()[0]
    new = _key()

    def step(*keys: str) -> None:
        before = [_reloads(cluster, i) for i in range(2)]
        for i, f in enumerate(files):
            _write(f, *keys)
            assert cluster.agents[i].proc is not None
            cluster.agents[i].proc.send_signal(signal.SIGHUP)
        for i in range(2):
            wait_until(lambda i=i: _reloads(cluster, i) > before[i], 10, "the keyring reload")
        # A few probe rounds under the new keys: both still see both.
        for _ in range(6):
            time.sleep(0.5)
            for i in range(2):
                assert _alive(cluster, i) == names

    step(old, new)  # install: the old key still seals
    step(new, old)  # use: the new key seals, the old one still opens
    step(new)  # remove the old key

    # A key only one agent holds: the other can open none of its datagrams and
    # declares it dead (the secret's own key opens, but nobody seals with it).
    stranger = _key()
    _write(files[0], stranger)
    assert cluster.agents[0].proc is not None
    cluster.agents[0].proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: cluster.agents[0].name not in _alive(cluster, 1),
        60,
        "agent 1 to lose agent 0 once their keys differ",
    )
