"""An in-memory, deterministic driver for tests of the layers above the runtime.

No processes are started. The command is read as a tiny script:

* ``("true",)`` exits 0, ``("false",)`` exits 1, ``("exit", "N")`` exits N;
* ``("echo", *words)`` writes the words and a newline to the log, then exits 0;
* ``("sleep", "S")`` exits 0 after S seconds of trio time (instant under an
  ``autojump_clock``);
* ``("ignore-term", ...)`` runs until SIGKILL (exit 137): ``stop`` must escalate;
* anything else runs until stopped (SIGTERM gives exit 143).

Tests can also ``crash(id, code)`` a running container, make the next start fail
with ``fail_next_start(message)``, and simulate an agent restart by opening a
second ``MockDriver`` on the same ``MockHost``: its ``adopt()`` finds everything.
"""

from __future__ import annotations

import builtins
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import trio

from runtime.driver import ExecResult
from runtime.errors import (
    ContainerExistsError,
    ContainerNotFoundError,
    RuntimeFailedError,
    StartError,
)
from runtime.spec import ContainerSpec, ContainerStatus

SIGTERM_EXIT = 128 + 15
SIGKILL_EXIT = 128 + 9


@dataclass
class _MockContainer:
    spec: ContainerSpec
    pid: int
    started_at: float
    exit_at: float  # trio time at which the script ends by itself (inf: never)
    exit_after: int  # exit code when it ends by itself
    ignore_term: bool
    log: bytearray = field(default_factory=bytearray)
    exit_code: int | None = None
    finished_at: float | None = None
    changed: trio.Event = field(default_factory=trio.Event)
    exec_result: int | None | str = "default"  # set_exec_result's answer; None: time out


@dataclass
class MockHost:
    """The "machine" mock drivers share: containers outlive a driver, like real ones."""

    containers: dict[str, _MockContainer] = field(default_factory=dict)
    next_pid: int = 1000


class MockDriver:
    """A ``Driver`` with no processes: deterministic and instant."""

    def __init__(
        self, host: MockHost | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._host = host if host is not None else MockHost()
        self._clock = clock
        self._start_error: str | None = None
        self._closed = False

    @property
    def name(self) -> str:
        return "mock"

    @property
    def version(self) -> str:
        return "mock 1"

    @property
    def host(self) -> MockHost:
        return self._host

    # -- test hooks ---------------------------------------------------------------

    def fail_next_start(self, message: str) -> None:
        """Make the next ``start`` raise ``StartError(message)``."""
        self._start_error = message

    def set_exec_result(self, container_id: str, exit_code: int | None) -> None:
        """What ``exec`` answers for this container from now on (None: a timeout)."""
        self._get(container_id).exec_result = exit_code

    def crash(self, container_id: str, exit_code: int) -> None:
        """End a running container now with ``exit_code``."""
        self._finish(self._get(container_id), exit_code)

    # -- Driver -------------------------------------------------------------------

    async def start(self, spec: ContainerSpec) -> ContainerStatus:
        await trio.lowlevel.checkpoint()
        if spec.id in self._host.containers:
            raise ContainerExistsError(spec.id)
        if self._start_error is not None:
            message, self._start_error = self._start_error, None
            raise StartError(message)
        command = spec.command
        exit_at, exit_after, ignore_term = math.inf, 0, False
        log = bytearray()
        now = trio.current_time()
        if command[0] == "true":
            exit_at = now
        elif command[0] == "false":
            exit_at, exit_after = now, 1
        elif command[0] == "exit":
            exit_at, exit_after = now, _int_arg(command, 0)
        elif command[0] == "echo":
            exit_at = now
            log += (" ".join(command[1:]) + "\n").encode()
        elif command[0] == "sleep":
            exit_at = now + _float_arg(command, 0.0)
        elif command[0] == "ignore-term":
            ignore_term = True
        self._host.next_pid += 1
        container = _MockContainer(
            spec=spec,
            pid=self._host.next_pid,
            started_at=self._clock(),
            exit_at=exit_at,
            exit_after=exit_after,
            ignore_term=ignore_term,
            log=log,
        )
        self._host.containers[spec.id] = container
        return ContainerStatus(
            id=spec.id,
            state="running",
            pid=container.pid,
            started_at=container.started_at,
            labels=spec.labels,
        )

    async def wait(self, container_id: str) -> int:
        container = self._get(container_id)
        while True:
            self._advance(container)
            if container.exit_code is not None:
                await trio.lowlevel.checkpoint()
                return container.exit_code
            event = container.changed
            delay = container.exit_at - trio.current_time()
            with trio.move_on_after(delay):
                await event.wait()

    async def stop(self, container_id: str, grace: float) -> int | None:
        container = self._host.containers.get(container_id)
        if container is None:
            await trio.lowlevel.checkpoint()
            return None
        self._advance(container)
        if container.exit_code is None and not container.ignore_term:
            self._finish(container, SIGTERM_EXIT)
        if container.exit_code is None:
            with trio.move_on_after(grace):
                await self.wait(container_id)
        if container.exit_code is None:
            self._finish(container, SIGKILL_EXIT)
        await trio.lowlevel.checkpoint()
        return container.exit_code

    async def remove(self, container_id: str) -> None:
        container = self._get(container_id)
        self._advance(container)
        if container.exit_code is None:
            self._finish(container, SIGKILL_EXIT)
        del self._host.containers[container_id]
        await trio.lowlevel.checkpoint()

    async def list(self) -> list[ContainerStatus]:
        await trio.lowlevel.checkpoint()
        return [self._status(self._host.containers[key]) for key in sorted(self._host.containers)]

    async def logs(
        self, container_id: str, *, tail: int | None = None, follow: bool = False
    ) -> AsyncIterator[bytes]:
        container = self._get(container_id)
        data = bytes(container.log)
        if tail is not None:
            data = b"".join(data.splitlines(keepends=True)[-tail:]) if tail > 0 else b""
        sent = len(container.log)
        if data:
            yield data
        while follow:
            self._advance(container)
            if len(container.log) > sent:
                yield bytes(container.log[sent:])
                sent = len(container.log)
            if container.exit_code is not None:
                return
            with trio.move_on_after(container.exit_at - trio.current_time()):
                await container.changed.wait()
        await trio.lowlevel.checkpoint()

    async def exec(
        self, container_id: str, command: tuple[str, ...], *, timeout: float
    ) -> ExecResult:
        """``true`` answers 0, ``false`` 1, ``exit N`` N, unless ``set_exec_result``
        said otherwise for the container; a None result waits out the timeout."""
        container = self._get(container_id)
        self._advance(container)
        if container.exit_code is not None:
            await trio.lowlevel.checkpoint()
            raise RuntimeFailedError(f"{container_id}: not running")
        code: int | None
        if container.exec_result != "default":
            code = container.exec_result  # type: ignore[assignment]
        elif command[0] == "false":
            code = 1
        elif command[0] == "exit":
            code = _int_arg(command, 0)
        else:
            code = 0
        if code is None:
            await trio.sleep(timeout)
            return ExecResult(None, b"", timed_out=True)
        await trio.lowlevel.checkpoint()
        return ExecResult(code, b"")

    async def adopt(self) -> builtins.list[ContainerStatus]:
        return await self.list()

    async def close(self) -> None:
        self._closed = True
        await trio.lowlevel.checkpoint()

    # -- internals ----------------------------------------------------------------

    def _get(self, container_id: str) -> _MockContainer:
        try:
            return self._host.containers[container_id]
        except KeyError:
            raise ContainerNotFoundError(container_id) from None

    def _advance(self, container: _MockContainer) -> None:
        if container.exit_code is None and trio.current_time() >= container.exit_at:
            self._finish(container, container.exit_after)

    def _finish(self, container: _MockContainer, exit_code: int) -> None:
        if container.exit_code is not None:
            return
        container.exit_code = exit_code
        container.finished_at = self._clock()
        container.changed.set()
        container.changed = trio.Event()

    def _status(self, container: _MockContainer) -> ContainerStatus:
        self._advance(container)
        exited = container.exit_code is not None
        return ContainerStatus(
            id=container.spec.id,
            state="exited" if exited else "running",
            pid=None if exited else container.pid,
            exit_code=container.exit_code,
            started_at=container.started_at,
            finished_at=container.finished_at,
            labels=container.spec.labels,
        )


def _int_arg(command: tuple[str, ...], default: int) -> int:
    try:
        return int(command[1])
    except (IndexError, ValueError):
        return default


def _float_arg(command: tuple[str, ...], default: float) -> float:
    try:
        return float(command[1])
    except (IndexError, ValueError):
        return default
