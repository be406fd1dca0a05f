"""What the process and oci drivers share: one shim per container, state on disk.

Each container has a directory ``<state_dir>/<driver>/containers/<id>/``::

    shim.json      the shim's pid and start time (to tell it from a reused pid)
    spec.json      the ContainerSpec, written just before the shim gets its job: a
                   directory without it is debris of an interrupted start
    started.json   written by the shim: the main pid, its start time, when it started
    exit.json      written by the shim: exit_code, oom_killed, finished_at
    cleaned        written by the shim after its cleanup (oci: runc delete, unmount)
    container.log  stdout + stderr, rotated to container.log.1, .2, ...
    shim.log       the shim's own complaints, if any
    bundle/, runtime.log, container.pid, upper/, work/   (oci) the OCI bundle, the
                   runtime's JSON log, the init pid, the overlay of a writable root

The agent waits for the shim through a pidfd; after an agent restart ``adopt``
rebuilds the same records from these files, so no exit code is lost.
"""

from __future__ import annotations

import builtins
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from runtime._monitor import (
    PidWatch,
    ShimPool,
    open_pidfd,
    pidfd_exited,
    read_json,
    read_logs,
    send_signal,
    set_child_subreaper,
    try_reap,
)
from runtime.driver import EXEC_OUTPUT_LIMIT, ExecResult, check_prefix, check_state_dir
from runtime.errors import (
    ContainerExistsError,
    ContainerNotFoundError,
    DriverError,
    RuntimeFailedError,
    SpecError,
    StartError,
)
from runtime.spec import ContainerSpec, ContainerState, ContainerStatus, check_id

DEFAULT_LOG_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_LOG_BACKUPS = 2
KILL_TIMEOUT = 30.0  # after SIGKILL, how long a container may take to be gone
EXEC_KILL_WAIT = 10.0  # how long a timed-out exec's runtime may take to end by itself
_EXEC_IDS = itertools.count(1)


@dataclass(eq=False)
class Record:
    """What the driver knows about one container."""

    spec: ContainerSpec
    dir: Path
    shim: PidWatch
    main_pid: int | None = None
    main_pidfd: int | None = None
    started_at: float | None = None
    exit: dict[str, Any] | None = None
    lost_code: int | None = None  # exit status reaped by the agent when the shim died

    def close(self) -> None:
        self.shim.close()
        if self.main_pidfd is not None:
            os.close(self.main_pidfd)
            self.main_pidfd = None


class ShimDriver:
    """Base of the process and oci drivers; subclasses say how to run and clean up."""

    kind = "shim"
    exec_uses_pid_file = False  # True: ``exec_command`` starts the command via a runtime

    def __init__(
        self,
        *,
        state_dir: Path,
        prefix: str,
        log_max_bytes: int = DEFAULT_LOG_MAX_BYTES,
        log_backups: int = DEFAULT_LOG_BACKUPS,
    ) -> None:
        self.prefix = check_prefix(prefix)
        self.state_dir = check_state_dir(state_dir)
        if log_max_bytes < 1024:
            raise DriverError(f"log_max_bytes must be at least 1024, not {log_max_bytes}")
        self.log_max_bytes = log_max_bytes
        self.log_backups = max(0, log_backups)
        self.root = self.state_dir / self.kind
        self.containers_dir = self.root / "containers"
        try:
            self.containers_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise DriverError(f"cannot use state_dir {self.state_dir}: {exc.strerror}") from exc
        set_child_subreaper()
        self._pool = ShimPool(self.root / "spare.pid")
        self._records: dict[str, Record] = {}
        self._closed = False

    # -- to override ---------------------------------------------------------------

    def check_spec(self, spec: ContainerSpec) -> None:
        """Refuse what this driver cannot run (``SpecError`` naming the field)."""

    async def prepare(self, spec: ContainerSpec, directory: Path) -> dict[str, Any]:
        """Make what the container needs on disk and return the shim's job."""
        raise NotImplementedError

    async def start_failed(self, record: Record, event: dict[str, Any]) -> str:
        """The one-line reason a start failed."""
        return str(event.get("message") or "the container could not be started")

    def signal(self, record: Record, sig: int) -> bool:
        """Deliver ``sig`` to the container; False if it is gone."""
        return send_signal(record.main_pidfd, sig)

    async def cleanup(self, record: Record) -> None:
        """Release what the shim could not (runtime state, mounts) before files go."""

    def exec_command(
        self, record: Record, command: tuple[str, ...], pid_file: Path
    ) -> tuple[list[str], dict[str, str] | None, str | None]:
        """(argv, env, cwd) that run ``command`` inside the container of ``record``; a
        runtime that starts it elsewhere than as our child writes its pid to ``pid_file``
        (so a timeout can kill it too)."""
        raise NotImplementedError

    # -- Driver ----------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.kind

    async def start(self, spec: ContainerSpec) -> ContainerStatus:
        self._check_open()
        self.check_spec(spec)
        directory = self.containers_dir / check_id(spec.id)
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            raise ContainerExistsError(spec.id) from None
        record: Record | None = None
        try:
            job = await self.prepare(spec, directory)
            job.update(
                dir=str(directory),
                log_path=str(directory / "container.log"),
                log_max_bytes=self.log_max_bytes,
                log_backups=self.log_backups,
            )
            shim = self._pool.take()
            record = Record(spec=spec, dir=directory, shim=PidWatch(shim.pid, shim.pidfd))
            self._records[spec.id] = record
            (directory / "shim.json").write_text(
                json.dumps({"pid": shim.pid, "start_time": shim.start_time})
            )
            # spec.json last: a directory with it is a container to adopt.
            (directory / "spec.json").write_text(json.dumps(spec.to_dict()))
            try:
                event = await shim.run(job, meanwhile=self._pool.refill)
                if event.get("event") == "error":
                    shim.release()
                    with trio.move_on_after(KILL_TIMEOUT):
                        await record.shim.wait()
                    raise StartError(f"{spec.id}: {await self.start_failed(record, event)}")
                record.main_pid = int(event["pid"])
                record.main_pidfd = open_pidfd(record.main_pid, event.get("start_time"))
                record.started_at = float(event["started_at"])
            finally:
                shim.release()
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._discard(spec.id, directory, record)
            raise
        finally:
            self._pool.refill()
        return ContainerStatus(
            id=spec.id,
            state="running",
            pid=record.main_pid,
            started_at=record.started_at,
            labels=spec.labels,
        )

    def _running(self, record: Record) -> bool:
        """The container lives: its shim does, or (the shim was killed) its main process."""
        if not record.shim.poll():
            return True
        if self._exit_code(record) is not None or record.main_pidfd is None:
            return False
        return not pidfd_exited(record.main_pidfd)

    async def _gone(self, record: Record) -> None:
        """Wait until the shim and the container have both ended."""
        await record.shim.wait()
        if self._exit_code(record) is None:
            await self._recover_lost_exit(record)

    async def wait(self, container_id: str) -> int:
        record = self._get(container_id)
        await record.shim.wait()
        code = self._exit_code(record)
        if code is None:
            await self._recover_lost_exit(record)
            code = self._exit_code(record)
        if code is None:
            raise RuntimeFailedError(f"{container_id}: its monitor died and the exit code is lost")
        return code

    async def stop(self, container_id: str, grace: float) -> int | None:
        record = self._records.get(container_id)
        if record is None:
            await trio.lowlevel.checkpoint()
            return None
        if self._running(record):
            self.signal(record, signal.SIGTERM)
            with trio.move_on_after(max(0.0, grace)):
                await self._gone(record)
            if self._running(record):
                self.signal(record, signal.SIGKILL)
                with trio.move_on_after(KILL_TIMEOUT):
                    await self._gone(record)
                if self._running(record):
                    raise RuntimeFailedError(
                        f"{container_id}: still running {KILL_TIMEOUT:.0f}s after SIGKILL"
                    )
        try:
            return await self.wait(container_id)
        except RuntimeFailedError:
            return None

    async def remove(self, container_id: str) -> None:
        record = self._get(container_id)
        if self._running(record):
            await self.stop(container_id, 0)
        await self._discard(container_id, record.dir, record)

    async def list(self) -> list[ContainerStatus]:
        await trio.lowlevel.checkpoint()
        return [self._status(self._records[key]) for key in sorted(self._records)]

    async def logs(
        self, container_id: str, *, tail: int | None = None, follow: bool = False
    ) -> AsyncIterator[bytes]:
        record = self._get(container_id)
        async for chunk in read_logs(
            record.dir / "container.log", tail=tail, follow=follow, finished=record.shim.poll
        ):
            yield chunk

    async def exec(
        self, container_id: str, command: tuple[str, ...], *, timeout: float
    ) -> ExecResult:
        """Run ``command`` in the running container; kill it (its whole process group)
        if it outlives ``timeout`` seconds."""
        self._check_open()
        record = self._get(container_id)
        if not command or not all(isinstance(a, str) and a for a in command):
            raise SpecError("command", f"must be a non-empty list of strings, got {command!r}")
        if record.shim.poll() or record.main_pid is None:
            raise RuntimeFailedError(f"{container_id}: not running")
        pid_file = record.dir / f"exec-{os.getpid()}-{next(_EXEC_IDS)}.pid"
        argv, env, cwd = self.exec_command(record, tuple(command), pid_file)
        try:
            process = await trio.lowlevel.open_process(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as exc:
            return ExecResult(127, f"{argv[0]}: {exc.strerror}".encode())
        output = bytearray()
        timed_out = False
        try:
            with trio.move_on_after(timeout) as scope:
                assert process.stdout is not None
                while True:
                    chunk = await process.stdout.receive_some(65536)
                    if not chunk:
                        break
                    if len(output) < EXEC_OUTPUT_LIMIT:
                        output += chunk[: EXEC_OUTPUT_LIMIT - len(output)]
                await process.wait()
            timed_out = scope.cancelled_caught
        finally:
            if process.returncode is None:
                with trio.CancelScope(shield=True):
                    await self._end_exec(process, pid_file)
            if process.stdout is not None:
                await process.stdout.aclose()
            with contextlib.suppress(OSError):
                pid_file.unlink()
        if timed_out:
            return ExecResult(None, bytes(output), timed_out=True)
        code = process.returncode
        assert code is not None
        return ExecResult(128 - code if code < 0 else code, bytes(output))

    async def _end_exec(self, process: trio.Process, pid_file: Path) -> None:
        """Kill an exec'd command that ran past its timeout. A runtime's ``exec`` is
        not killed first: killed half-way through setting the process up, it can leave
        a helper stuck in the container's cgroup, and the container then never stops.
        So the command itself (its pid from ``pid_file``) is killed, and the runtime
        ends by itself; only if it does not is it killed too."""
        if self.exec_uses_pid_file:
            with trio.move_on_after(EXEC_KILL_WAIT):
                while process.returncode is None:
                    with contextlib.suppress(OSError, ValueError):
                        os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
                    with trio.move_on_after(0.1):
                        await process.wait()
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        await process.wait()

    async def adopt(self) -> builtins.list[ContainerStatus]:
        """Find every container a previous agent with this state_dir left behind."""
        self._check_open()
        self._pool.reap_stale_spare()
        for directory in sorted(self.containers_dir.iterdir()):
            if directory.name in self._records or not directory.is_dir():
                continue
            spec_data = read_json(directory / "spec.json")
            if spec_data is None:  # debris of a start interrupted before it began
                await self._discard(directory.name, directory, None)
                continue
            try:
                spec = ContainerSpec.from_dict(spec_data)
            except DriverError:
                continue
            shim_info = read_json(directory / "shim.json") or {}
            shim_pid = int(shim_info.get("pid", 0))
            shim_fd = open_pidfd(shim_pid, shim_info.get("start_time")) if shim_pid else None
            record = Record(spec=spec, dir=directory, shim=PidWatch(shim_pid, shim_fd))
            started = read_json(directory / "started.json")
            if started is not None:
                record.main_pid = int(started["pid"])
                record.started_at = float(started["started_at"])
                record.main_pidfd = open_pidfd(record.main_pid, started.get("start_time"))
            self._records[spec.id] = record
        return await self.list()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._pool.close()
        for record in self._records.values():
            if record.shim.poll() and record.shim.pidfd is not None:
                try_reap(record.shim.pidfd)
            record.close()
        self._records.clear()

    # -- internals --------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise DriverError(f"the {self.kind} driver is closed")

    def _get(self, container_id: str) -> Record:
        try:
            return self._records[container_id]
        except KeyError:
            raise ContainerNotFoundError(container_id) from None

    def _exit_info(self, record: Record) -> dict[str, Any] | None:
        if record.exit is None:
            record.exit = read_json(record.dir / "exit.json")
        return record.exit

    def _exit_code(self, record: Record) -> int | None:
        info = self._exit_info(record)
        if info is not None and isinstance(info.get("exit_code"), int):
            return int(info["exit_code"])
        return record.lost_code

    async def _recover_lost_exit(self, record: Record) -> None:
        """The shim died first: its container became our child (we are its subreaper)."""
        if record.main_pidfd is None or record.lost_code is not None:
            return
        watch = PidWatch(record.main_pid or 0, os.dup(record.main_pidfd))
        try:
            await watch.wait()  # still running: it is ours to wait for now
            record.lost_code = watch.reaped_code  # None if it went to another reaper
        finally:
            watch.close()

    def _status(self, record: Record) -> ContainerStatus:
        state: ContainerState
        exit_code: int | None = None
        oom = False
        finished_at = None
        pid = record.main_pid
        if record.shim.poll() and self._running(record):
            state = "running"  # its shim was killed; the container still runs
        elif record.shim.poll():
            info = self._exit_info(record) or {}
            exit_code = self._exit_code(record)
            oom = bool(info.get("oom_killed", False))
            finished_at = info.get("finished_at")
            state = "exited" if exit_code is not None else "unknown"
            pid = None
        elif record.main_pid is None:
            state = "created"
        else:
            state = "running"
        return ContainerStatus(
            id=record.spec.id,
            state=state,
            pid=pid,
            exit_code=exit_code,
            oom_killed=oom,
            started_at=record.started_at,
            finished_at=finished_at,
            labels=record.spec.labels,
        )

    async def _discard(self, container_id: str, directory: Path, record: Record | None) -> None:
        if record is not None:
            if self._running(record):
                self.signal(record, signal.SIGKILL)
                with trio.move_on_after(KILL_TIMEOUT):
                    await self._gone(record)
            if record.shim.pidfd is not None:
                try_reap(record.shim.pidfd)
            self._exit_info(record)  # keep the exit code for waiters still holding the record
            await self.cleanup(record)
            record.close()
            self._records.pop(container_id, None)
        else:
            await self.cleanup_dir(directory)
        await trio.to_thread.run_sync(_rmtree, directory)

    async def cleanup_dir(self, directory: Path) -> None:
        """Release what a half-made container directory holds (oci: a mount)."""


def _rmtree(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)
