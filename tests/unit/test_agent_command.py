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
