"""`scripts/demo --check`: the whole product as a new user first meets it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_demo_check_passes_and_cleans_up() -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo"), "--check"],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "FAILED" not in result.stdout
    assert result.stdout.count("ok: ") == 5
