"""Agent-side plumbing shared by the process and oci drivers.

* ``set_child_subreaper``: the agent adopts orphans below it (prctl 36), so if a
  shim dies its container becomes the agent's child and its exit code is not lost.
* ``ShimPool``: spawns shims (``shim.py``) and keeps one spare waiting for a job.
* ``PidWatch``: waits for a process to end through a pidfd (race-free, works
  for processes that are not our children) and reaps it only if it is ours.
* ``read_logs``: tail and follow the rotated log files a shim writes.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import trio

from runtime.errors import RuntimeNotFoundError

PR_SET_CHILD_SUBREAPER = 36
SHIM_PATH = Path(__file__).with_name("shim.py")
PIPE_CAPACITY = 65536

_subreaper_set = False


def set_child_subreaper() -> None:
    """Make this process the reaper of its orphaned descendants (not inherited by children)."""
    global _subreaper_set
    if _subreaper_set:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise RuntimeNotFoundError(f"cannot become child subreaper: {os.strerror(err)}")
    _subreaper_set = True


def proc_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2 :].split()[19])


def proc_parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2 :].split()[1])


def open_pidfd(pid: int, start_time: int | None = None) -> int | None:
    """A pidfd for ``pid`` if it still is the process that started at ``start_time``."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    if start_time is not None and proc_start_time(pid) != start_time:
        os.close(fd)
        return None
    return fd


def pidfd_exited(pidfd: int) -> bool:
    """True once the process behind ``pidfd`` has ended (a pidfd polls readable then)."""
    ready, _, _ = select.select([pidfd], [], [], 0)
    return bool(ready)


def try_reap(pidfd: int, *, exited: bool = False) -> int | None:
    """Reap the process if it is our child and has ended; return its exit code.

    With ``exited`` (its pidfd polled readable) a child is reaped even if it is not
    waitable yet: the kernel can report the exit a moment before the zombie is.
    """
    try:
        result = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
        if result is None and exited:
            result = os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
    except ChildProcessError:
        return None
    if result is None:
        return None
    if result.si_code == os.CLD_EXITED:
        return result.si_status
    return 128 + result.si_status


def send_signal(pidfd: int | None, sig: int) -> bool:
    """Signal the process behind ``pidfd``; False if it is gone."""
    if pidfd is None:
        return False
    try:
        signal.pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:
        return False
    return True


class PidWatch:
    """One process watched through its pidfd; any number of tasks may ``wait``."""

    def __init__(self, pid: int, pidfd: int | None) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.done = pidfd is None
        self.reaped_code: int | None = None

    def poll(self) -> bool:
        if not self.done and self.pidfd is not None and pidfd_exited(self.pidfd):
            self._finish()
        return self.done

    async def wait(self) -> None:
        if self.poll():
            await trio.lowlevel.checkpoint()
            return
        assert self.pidfd is not None
        fd = os.dup(self.pidfd)  # each waiter on its own fd: trio allows one waiter per fd
        try:
            await trio.lowlevel.wait_readable(fd)
        finally:
            trio.lowlevel.notify_closing(fd)
            os.close(fd)
        if not self.done:
            self._finish()

    def _finish(self) -> None:
        assert self.pidfd is not None
        self.reaped_code = try_reap(self.pidfd, exited=True)
        self.done = True

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
            self.done = True


class Shim:
    """A spawned shim: its pid, pidfd and the pipes to hand it a job."""

    def __init__(self, pid: int, pidfd: int, stdin_fd: int, stdout_fd: int) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.start_time = proc_start_time(pid)
        self._stdin_fd = stdin_fd
        self._stdout_fd = stdout_fd

    async def run(
        self, job: dict[str, Any], meanwhile: Callable[[], None] | None = None
    ) -> dict[str, Any]:
        """Send the job; return the shim's first report (started or error).

        ``meanwhile`` runs once the job is sent, while the shim works.
        """
        data = (json.dumps(job) + "\n").encode()
        events = trio.lowlevel.FdStream(self._stdout_fd)
        self._stdout_fd = -1
        try:
            with contextlib.suppress(BrokenPipeError):  # it died: we see end of output below
                if len(data) <= PIPE_CAPACITY:  # an empty pipe takes it without blocking
                    _write_all(self._stdin_fd, data)
                else:
                    await trio.to_thread.run_sync(_write_all, self._stdin_fd, data)
            if meanwhile is not None:
                meanwhile()  # e.g. make the next spare while this one starts the container
            buffer = b""
            while b"\n" not in buffer:
                chunk = await events.receive_some(65536)
                if not chunk:
                    return {"event": "error", "message": "the monitor process exited early"}
                buffer += chunk
            event: dict[str, Any] = json.loads(buffer.split(b"\n", 1)[0])
            return event
        finally:
            await events.aclose()

    def release(self) -> None:
        """Close our end of the shim's stdin: we will send it nothing more."""
        if self._stdin_fd >= 0:
            os.close(self._stdin_fd)
            self._stdin_fd = -1

    def discard(self) -> None:
        """Close a spare that will get no job: it reads end of file and exits."""
        for fd in (self._stdin_fd, self._stdout_fd):
            if fd >= 0:
                os.close(fd)
        self._stdin_fd = self._stdout_fd = -1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class ShimPool:
    """Spawns shims and keeps one spare, so starting a container skips Python's start-up."""

    def __init__(self, spare_file: Path, python: str | None = None) -> None:
        self._python = python or sys.executable
        self._spare: Shim | None = None
        self._spare_file = spare_file
        self._reap: list[int] = []  # pidfds of discarded spares, reaped when they are done
        # Leaving SCHED_IDLE needs CAP_SYS_NICE; without it spares start at normal priority.
        self._can_unidle = os.geteuid() == 0
        if not SHIM_PATH.is_file():
            raise RuntimeNotFoundError(f"the monitor script is missing: {SHIM_PATH}")

    def spawn(self, *, idle: bool = False) -> Shim:
        """A new shim; ``idle`` ones start at SCHED_IDLE, so warming up a spare never
        takes CPU from real work (``take`` raises it to normal before it gets a job)."""
        idle = idle and self._can_unidle
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            pid = os.posix_spawn(
                self._python,
                [self._python, "-I", "-S", str(SHIM_PATH)],
                {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")},
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, stdin_r, 0),
                    (os.POSIX_SPAWN_DUP2, stdout_w, 1),
                    (os.POSIX_SPAWN_DUP2, devnull, 2),
                ],
                setsid=True,
            )
        finally:
            for fd in (stdin_r, stdout_w, devnull):
                os.close(fd)
        if idle:
            with contextlib.suppress(OSError):
                os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
        pidfd = os.pidfd_open(pid)
        return Shim(pid, pidfd, stdin_w, stdout_r)

    def take(self) -> Shim:
        """The spare if there is one (a new one is made by ``refill``), else a new shim."""
        self._collect()
        shim, self._spare = self._spare, None
        if shim is None:
            return self.spawn()
        if self._can_unidle:
            with contextlib.suppress(OSError):
                os.sched_setscheduler(shim.pid, os.SCHED_OTHER, os.sched_param(0))
        return shim

    def refill(self) -> None:
        if self._spare is None:
            self._spare = self.spawn(idle=True)
            with contextlib.suppress(OSError):
                self._spare_file.write_text(f"{self._spare.pid} {self._spare.start_time}\n")

    def reap_stale_spare(self) -> None:
        """After a restart: the previous agent's spare exits at once; reap it if ours."""
        try:
            pid_text, start_text = self._spare_file.read_text().split()
            pid, start_time = int(pid_text), int(start_text)
        except (OSError, ValueError):
            return
        if self._spare is not None and self._spare.pid == pid:
            return
        if proc_parent(pid) == os.getpid() and proc_start_time(pid) == start_time:
            fd = open_pidfd(pid, start_time)
            if fd is not None:
                self._reap.append(fd)
        self._collect()

    def _collect(self) -> None:
        for fd in list(self._reap):
            if pidfd_exited(fd):
                try_reap(fd, exited=True)
                os.close(fd)
                self._reap.remove(fd)

    async def close(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.discard()
            self._reap.append(spare.pidfd)
        with trio.move_on_after(10):
            for fd in list(self._reap):
                watch = PidWatch(0, fd)
                await watch.wait()
                self._reap.remove(fd)
                os.close(fd)
        with contextlib.suppress(OSError):
            self._spare_file.unlink()


def log_files(path: Path) -> list[Path]:
    """The rotated files of one log, oldest first, ending with the current one."""
    backups = []
    index = 1
    while True:
        candidate = path.with_name(f"{path.name}.{index}")
        if not candidate.exists():
            break
        backups.append(candidate)
        index += 1
    return [*reversed(backups), path]


def _tail_bytes(data: bytes, lines: int) -> bytes:
    if lines <= 0:
        return b""
    return b"".join(data.splitlines(keepends=True)[-lines:])


async def read_logs(
    path: Path, *, tail: int | None, follow: bool, finished: Callable[[], bool]
) -> AsyncIterator[bytes]:
    """Yield the log's bytes (the last ``tail`` lines), then follow it until ``finished``."""
    files = log_files(path)
    if tail is None:
        for old in files[:-1]:
            with contextlib.suppress(FileNotFoundError):
                yield await trio.Path(old).read_bytes()
    try:
        current = open(path, "rb")  # noqa: SIM115 - kept open to follow across rotation
    except FileNotFoundError:
        await trio.lowlevel.checkpoint()
        return
    try:
        if tail is not None:
            data = b""
            for old in files[:-1]:
                with contextlib.suppress(FileNotFoundError):
                    data += old.read_bytes()
            data = _tail_bytes(data + current.read(), tail)
        else:
            data = current.read()
        if data:
            yield data
        while follow:
            done = finished()  # read once more after the end: nothing can follow it
            data = current.read()
            if data:
                yield data
                continue
            try:
                rotated = os.stat(path).st_ino != os.fstat(current.fileno()).st_ino
            except FileNotFoundError:
                rotated = False
            if rotated:
                current.close()
                current = open(path, "rb")  # noqa: SIM115
                continue
            if done:
                break
            await trio.sleep(0.05)
    finally:
        current.close()
    await trio.lowlevel.checkpoint()


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
