"""Shared test helpers: requirements that skip locally and fail under CI=true."""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip the test when ``condition`` is false, except under ``CI=true`` where it fails."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


def require_root() -> None:
    require(os.geteuid() == 0, "needs root")


def require_binary(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"{name} is not installed")
    assert path is not None
    return path


@pytest.fixture
def needs_root() -> None:
    require_root()


@pytest.fixture
def runc_path() -> str:
    require_root()
    return require_binary("runc")


@pytest.fixture
def iptables_path() -> str:
    require_root()
    return require_binary("iptables")
