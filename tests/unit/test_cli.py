"""The CLI as a new user meets it: help, version, and one-line errors with exit codes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import SecretError
from agent.secrets import derive_key, load_secret


def hypha(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
    )


def test_version() -> None:
    result = hypha("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("hypha, version ")


def test_help_lists_commands_with_summaries() -> None:
    result = hypha("--help")
    assert result.returncode == 0
    for command in ("keygen", "members", "status", "completion"):
        assert f"  {command} " in result.stdout
    assert "--api ADDRESS" in result.stdout


def test_agent_not_running_is_one_line(tmp_path: Path) -> None:
    result = hypha("--api", f"unix:{tmp_path / 'api.sock'}", "members")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("hypha: error: cannot reach the agent at unix:")
    assert "Traceback" not in result.stderr


def test_api_from_environment(tmp_path: Path) -> None:
    result = hypha("status", env={"HYPHA_API": f"unix:{tmp_path}/x.sock"})
    assert result.returncode == 1
    assert f"unix:{tmp_path}/x.sock" in result.stderr


def test_bad_api_address_is_one_line() -> None:
    result = hypha("--api", "ftp://x", "members")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "hypha: error: --api (or HYPHA_API): expected unix:PATH or http://HOST:PORT, got 'ftp://x'"
    )


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("http://127.0.0.2:99999", "HYPHA_API): expected http://HOST:PORT with a port 1..65535"),
        ("http://127.0.0.2:http", "HYPHA_API): expected http://HOST:PORT with a port 1..65535"),
        ("http://:8080", "--api (or HYPHA_API): no host in 'http://:8080'"),
        ("https://127.0.0.1:8080", "--api (or HYPHA_API): expected unix:PATH or http://HOST:PORT"),
        ("http://127.0.0.1:8080/v1", "HYPHA_API): expected http://HOST:PORT and nothing else"),
    ],
)
def test_a_bad_api_from_the_environment_is_one_line(address: str, message: str) -> None:
    result = hypha("ps", env={"HYPHA_API": address})
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    prefix = "hypha: error: " + ("" if message.startswith("--api") else "--api (or ")
    assert lines[0].startswith(prefix + message), lines[0]


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["frobnicate"], "No such command 'frobnicate' (see `hypha --help`)"),
        (
            ["scale", "web", "-1"],
            "Invalid value for 'REPLICAS': the count must be >= 0, got -1 "
            "(see `hypha scale --help`)",
        ),
        (
            ["run", "x", "-n", "-2"],
            "Invalid value for '--replicas' / '-n': the count must be >= 0, got -2 "
            "(see `hypha run --help`)",
        ),
        (["scale", "web"], "Missing argument 'REPLICAS' (see `hypha scale --help`)"),
        (["ps", "--bogus"], "No such option '--bogus' (see `hypha ps --help`)"),
        (
            ["scale", "web", "3", "--wait", "--timeout", "nan"],
            "Invalid value for '--timeout': expected a finite number of seconds >= 0, "
            "got 'nan' (see `hypha scale --help`)",
        ),
        (
            ["run", "web", "--timeout", "-5", "--", "true"],
            "Invalid value for '--timeout': expected a finite number of seconds >= 0, "
            "got '-5' (see `hypha run --help`)",
        ),
    ],
)
def test_a_usage_error_is_one_line_and_exit_2(args: list[str], line: str) -> None:
    result = hypha(*args)
    assert result.returncode == 2
    assert result.stderr == f"hypha: error: {line}\n"
    assert result.stdout == ""


def test_hypha_alone_shows_the_help() -> None:
    result = hypha()
    assert result.returncode == 2
    assert "Commands:" in result.stdout + result.stderr


def test_keygen_writes_a_private_secret(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    result = hypha("keygen", "-o", str(path))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = load_secret(path)
    assert len(secret) == 32
    assert derive_key(secret, "raft-password") != derive_key(secret, "gossip-key-0")
    again = hypha("keygen", "-o", str(path))
    assert again.returncode == 1
    assert "already exists; pass --force" in again.stderr


def test_secret_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    assert hypha("keygen", "-o", str(path)).returncode == 0
    path.chmod(0o644)
    with pytest.raises(SecretError, match="mode 0644; it must be 0600"):
        load_secret(path)


def test_completion_script() -> None:
    result = hypha("completion", "bash")
    assert result.returncode == 0
    assert "_HYPHA_COMPLETE" in result.stdout


def test_an_agent_that_dies_mid_answer_is_unreachable(tmp_path: Path) -> None:
    """A truncated HTTP answer is the agent going away, not a crash of the client."""
    import socket
    import threading

    from agent.client import ApiClient
    from agent.errors import AgentUnreachableError

    path = tmp_path / "api.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def answer_half() -> None:
        conn, _ = server.accept()
        conn.recv(65536)
        conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial"')
        conn.close()

    thread = threading.Thread(target=answer_half)
    thread.start()
    try:
        with pytest.raises(AgentUnreachableError, match="cannot reach the agent"):
            ApiClient(f"unix:{path}", timeout=5).get("/v1/status")
    finally:
        thread.join(timeout=5)
        server.close()


def test_command_name_skips_global_options() -> None:
    from agent.cli import _command_name

    assert _command_name(["--api", "unix:/x", "-v", "agent", "--name", "n1"]) == "agent"
    assert _command_name(["--token-file", "t", "run", "agent"]) == "run"
    assert _command_name(["--debug"]) is None
