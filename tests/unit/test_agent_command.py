"""`hypha agent` as a new user starts it: one clear line for every mistake."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def hypha(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HYPHA_API": ""},
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hypha: error: "), result.stderr
    return lines[0]


def test_missing_secret_says_how_to_make_one(tmp_path: Path) -> None:
    line = one_line_error(
        hypha("agent", "--name", "a", "--bind", "127.0.0.9:0", "--data-dir", str(tmp_path))
    )
    assert "hypha keygen" in line and str(tmp_path / "secret") in line


def test_secret_readable_by_others_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    assert hypha("keygen", "-o", str(secret)).returncode == 0
    secret.chmod(0o644)
    line = one_line_error(
        hypha(
            "agent",
            "--bind",
            "127.0.0.9:0",
            "--data-dir",
            str(tmp_path),
            "--secret-file",
            str(secret),
        )
    )
    assert "chmod 600" in line


def test_config_file_errors_name_the_key(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[agent]\nname = "a"\nbind = "127.0.0.9:0"\nvoterz = 3\n')
    line = one_line_error(hypha("agent", "--config", str(config)))
    assert "unknown key 'voterz'" in line
    config.write_text(f'name = "a"\nbind = "0.0.0.0:7946"\ndata_dir = "{tmp_path}"\n')
    assert hypha("keygen", "-o", str(tmp_path / "secret")).returncode == 0
    line = one_line_error(hypha("agent", "--config", str(config)))
    assert "advertise" in line


def test_bad_flag_values(tmp_path: Path) -> None:
    line = one_line_error(hypha("agent", "--bind", "nowhere", "--data-dir", str(tmp_path)))
    assert "bind: expected HOST:PORT" in line
    line = one_line_error(
        hypha("agent", "--bind", "127.0.0.9:0", "--label", "zone", "--data-dir", str(tmp_path))
    )
    assert "--label: expected KEY=VALUE" in line


def test_gossip_port_in_use_is_one_line(tmp_path: Path) -> None:
    import socket

    assert hypha("keygen", "-o", str(tmp_path / "secret")).returncode == 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.9", 0))
        port = busy.getsockname()[1]
        line = one_line_error(
            hypha(
                "agent",
                "--name",
                "a",
                "--bind",
                f"127.0.0.9:{port}",
                "--data-dir",
                str(tmp_path),
                "--driver",
                "process",
            )
        )
    assert "bind:" in line and str(port) in line


def test_up_labels_and_zones_per_agent() -> None:
    from agent.agent_command import _up_node_args

    args = _up_node_args(3, 2, ("disk=ssd", "n2:disk=hdd", "url=http://x"))
    assert args[0] == ["--label", "disk=ssd", "--label", "url=http://x"] + [
        "--zone",
        "z0",
        "--label",
        "zone=z0",
    ]
    assert args[1][:6] == ["--label", "disk=ssd", "--label", "disk=hdd", "--label", "url=http://x"]
    assert args[1][6:8] == ["--zone", "z1"] and args[2][-3:] == ["z0", "--label", "zone=z0"]


def test_up_label_mistakes_are_one_line(tmp_path: Path) -> None:
    line = one_line_error(hypha("up", "-n", "2", "--dir", str(tmp_path), "--label", "n5:a=b"))
    assert "no agent n5 (they are n1..n2)" in line
    line = one_line_error(hypha("up", "-n", "2", "--dir", str(tmp_path), "--label", "disk"))
    assert "expected KEY=VALUE" in line


def test_up_again_on_its_dir_reuses_the_saved_addresses(tmp_path: Path) -> None:
    """An agent's Raft state is bound to its address: a restart must reuse the port,
    and what cannot work is refused at once, in one line."""
    import socket

    from agent.agent_command import _saved_port
    from agent.localcluster import Layout

    assert _saved_port(tmp_path, ["127.0.0.9"]) is None  # a new cluster
    Layout(("127.0.0.9", "127.0.0.10"), 42311).save(tmp_path)
    assert _saved_port(tmp_path, ["127.0.0.9", "127.0.0.10"]) == 42311
    line = one_line_error(
        hypha("up", "-n", "3", "--first-address", "127.0.0.9", "--dir", str(tmp_path))
    )
    assert "holds a cluster of 2 agents on 127.0.0.9" in line
    assert f"hypha up -n 2 --first-address 127.0.0.9 --dir {tmp_path}" in line
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.10", 42312))
        line = one_line_error(
            hypha("up", "-n", "2", "--first-address", "127.0.0.9", "--dir", str(tmp_path))
        )
    assert "127.0.0.10:42312 is in use" in line


def test_up_finds_the_port_of_a_dir_from_before_the_layout_file(tmp_path: Path) -> None:
    from agent.localcluster import Layout

    for i, host in enumerate(("127.0.0.2", "127.0.0.3"), 1):
        (tmp_path / f"n{i}" / "raft").mkdir(parents=True)
        meta = f'{{"self": "{host}:51000", "role": "voter", "voters": []}}'
        (tmp_path / f"n{i}" / "raft" / "raft-meta.json").write_text(meta)
    assert Layout.load(tmp_path) == Layout(("127.0.0.2", "127.0.0.3"), 50999)
