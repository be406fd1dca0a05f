"""LocalCluster (tests, chaos, `hypha up`) tells its replicas' processes from those of
another local cluster on this host whose nodes have the same names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agent.localcluster import LocalCluster


def test_only_our_agents_replicas_are_ours(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "a", 1, name_prefix="", first_host="127.0.9.2")
    (cluster.agents[0].data_dir).mkdir(parents=True)
    (cluster.agents[0].data_dir / "container-prefix").write_text("hy-n1-aaaaaa\n")
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    env = {"HYPHA_NODE": "n1", "HYPHA_REPLICA": "w-0"}
    theirs = subprocess.Popen(sleeper, env={**env, "HYPHA_AGENT": "hy-n1-bbbbbb"})
    mine = subprocess.Popen(
        sleeper, env={**env, "HYPHA_REPLICA": "w-1", "HYPHA_AGENT": "hy-n1-aaaaaa"}
    )
    try:
        assert cluster.replica_processes() == {"n1": {"w-1"}}
        assert cluster._host_pids() == [mine.pid]
    finally:
        for proc in (theirs, mine):
            proc.kill()
            proc.wait()
