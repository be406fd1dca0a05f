"""The one ``Driver`` protocol every runtime implements, and ``open_driver``.

A driver runs containers from ``ContainerSpec``s and reports ``ContainerStatus``es.
Contract (checked by tests/integration/test_runtime_conformance.py for every driver):

* ``start(spec)`` returns once the command runs (state "running"); a second start
  with the same id raises ``ContainerExistsError`` until ``remove``.
* ``wait(id)`` returns the exit code (128 + signal for a signal).
* ``stop(id, grace)`` sends SIGTERM, then SIGKILL after ``grace`` seconds, and
  returns the exit code (None if the container had already been removed).
* ``remove(id)`` forgets an exited container and deletes its files and logs; it
  stops a running one first (with no grace).
* ``list()`` gives running and exited-not-removed containers, sorted by id.
* ``logs(id, tail=N, follow=...)`` yields the combined stdout/stderr bytes: the last
  ``N`` lines (all if None), then, with ``follow``, new output until the container exits.
* ``exec(id, command, timeout=...)`` runs ``command`` inside a running container
  (the process driver: with the container's environment and working directory) and
  returns an ``ExecResult``; it raises ``ContainerNotFoundError`` for an unknown id
  and ``RuntimeFailedError`` when the container is not running. Health checks use it.
* ``adopt()`` after an agent restart finds every container this driver's
  ``state_dir``/``prefix`` left behind, running or exited, with its exit code.
* ``close()`` releases the driver's own resources; containers keep running.
"""

from __future__ import annotations

import builtins
import os
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from runtime.errors import RuntimeNotFoundError, SpecError
from runtime.spec import ContainerSpec, ContainerStatus

DriverKind = Literal["auto", "oci", "process", "mock"]

_PREFIX_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")

#: At most this much of an exec'd command's output is kept (the start of it).
EXEC_OUTPUT_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class ExecResult:
    """What a command run inside a container did: its exit code (128 + signal for a
    signal; None when it was killed for running past its timeout) and the first
    ``EXEC_OUTPUT_LIMIT`` bytes of its combined stdout and stderr."""

    exit_code: int | None
    output: bytes = b""
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


@runtime_checkable
class Driver(Protocol):
    """What the agent needs from a container runtime."""

    @property
    def name(self) -> str:
        """``"oci"``, ``"process"`` or ``"mock"``."""
        ...

    @property
    def version(self) -> str:
        """The underlying runtime and its version, e.g. ``"runc 1.1.5"``."""
        ...

    async def start(self, spec: ContainerSpec) -> ContainerStatus: ...

    async def wait(self, container_id: str) -> int: ...

    async def stop(self, container_id: str, grace: float) -> int | None: ...

    async def remove(self, container_id: str) -> None: ...

    async def list(self) -> list[ContainerStatus]: ...

    def logs(
        self, container_id: str, *, tail: int | None = None, follow: bool = False
    ) -> AsyncIterator[bytes]: ...

    async def exec(
        self, container_id: str, command: tuple[str, ...], *, timeout: float
    ) -> ExecResult: ...

    async def adopt(self) -> builtins.list[ContainerStatus]: ...

    async def close(self) -> None: ...


def check_prefix(prefix: str) -> str:
    """A per-agent container id prefix: lowercase letters, digits and '-' (<= 31)."""
    if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix):
        raise SpecError(
            "prefix", f"{prefix!r} must be 1-31 lowercase letters, digits or '-' (a-z0-9-)"
        )
    return prefix


def check_state_dir(state_dir: Path) -> Path:
    """The driver's data directory must be an absolute path (it is created if missing)."""
    state_dir = Path(state_dir)
    if not state_dir.is_absolute():
        raise SpecError("state_dir", f"{str(state_dir)!r} is relative: give an absolute path")
    return state_dir


OCI_RUNTIMES = ("youki", "runc", "crun")


def find_oci_runtime(runtime_path: Path | None = None) -> Path | None:
    """The OCI runtime to use: ``runtime_path`` if given, else youki, runc, crun on PATH."""
    if runtime_path is not None:
        return Path(runtime_path)
    for name in OCI_RUNTIMES:
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def open_driver(
    kind: DriverKind,
    *,
    state_dir: Path,
    prefix: str,
    runtime_path: Path | None = None,
) -> tuple[Driver, str]:
    """Open the driver of ``kind`` and say which one it is and why.

    ``auto`` picks ``oci`` when an OCI runtime is found (youki, runc, crun on PATH,
    or ``runtime_path``) and we are root, else ``process``, so Hypha runs on any
    Linux box. Raises ``RuntimeNotFoundError`` if an explicit kind cannot work here.
    """
    check_prefix(prefix)
    state_dir = check_state_dir(state_dir)
    if kind == "mock":
        from runtime.mock import MockDriver

        return MockDriver(), "mock: in-memory driver for tests (asked for)"
    if kind == "process":
        from runtime.process import ProcessDriver

        driver = ProcessDriver(state_dir=state_dir, prefix=prefix)
        return driver, "process: plain child processes (asked for)"
    if kind not in ("auto", "oci"):
        raise SpecError("driver", f"{kind!r} is not one of auto, oci, process, mock")
    from runtime.oci import OciDriver

    found = find_oci_runtime(runtime_path)
    if kind == "oci":
        if found is None:
            raise RuntimeNotFoundError(
                "no OCI runtime found: install youki, runc or crun, or give its path"
            )
        oci = OciDriver(state_dir=state_dir, prefix=prefix, runtime_path=found)
        return oci, f"oci: {oci.version} at {oci.runtime_path} (asked for)"
    # auto: a real container runtime when it can work here, else plain processes.
    from runtime.process import ProcessDriver

    if found is None:
        return (
            ProcessDriver(state_dir=state_dir, prefix=prefix),
            "process: no OCI runtime (youki, runc, crun) on PATH",
        )
    if os.geteuid() != 0:
        return (
            ProcessDriver(state_dir=state_dir, prefix=prefix),
            f"process: {found.name} found but containers need root (running as uid {os.geteuid()})",
        )
    try:
        oci = OciDriver(state_dir=state_dir, prefix=prefix, runtime_path=found)
    except RuntimeNotFoundError as exc:
        return ProcessDriver(state_dir=state_dir, prefix=prefix), f"process: {exc}"
    how = "given path" if runtime_path is not None else "first of youki, runc, crun on PATH"
    return oci, f"oci: {oci.version} at {oci.runtime_path} ({how})"
