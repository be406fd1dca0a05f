"""Hypha's per-container monitor (the "shim"): it outlives the agent.

Run as ``python3 -I -S shim.py`` with a pipe on stdin and stdout; standard library
only, so it starts fast and imports nothing of Hypha's. The agent keeps one spare
shim waiting, so a container start does not pay for the interpreter's start.

1. Waiting as a spare: new session, child subreaper (prctl 36), then one JSON job
   line on stdin. End of file instead means the agent is gone: exit quietly.
2. It starts the job's ``argv`` (the command itself for the process driver,
   ``runc create`` for the oci driver) with stdin on /dev/null and stdout + stderr
   on one pipe that it drains from the start into size-rotated log files, so the
   container never blocks on a full pipe and never writes into a dead agent. For
   the oci driver it then runs ``runc start`` itself: once it has the job, the
   container starts whether or not the agent is still there.
3. It tells the agent ``started`` (with the pid and its start time) on stdout, and
   also writes ``started.json``, so an agent that restarts can find it.
4. When the container's main process ends it records the real exit status
   (128 + signal for a signal; the OOM killer's count from the cgroup) in
   ``exit.json`` (atomically), then runs the job's cleanup (``runc delete``, unmount,
   empty cgroup parents), writes ``cleaned`` and exits.

Every child it gets is reaped by pid; being its own subreaper, that is all of them.
It runs isolated (``-I``), so it cannot import its sibling modules: the few helpers
it shares with ``_monitor.py`` (``proc_start_time``) are written out again here.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import select
import signal
import sys
import time
from typing import Any

PR_SET_CHILD_SUBREAPER = 36
MNT_DETACH = 2
DRAIN_AFTER_EXIT = 2.0  # seconds to keep reading output left by the container's children


class RotatingLog:
    """Append to ``path``; past ``max_bytes`` move it to ``path.1`` (``.1`` to ``.2``...)."""

    def __init__(self, path: str, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max(1, max_bytes)
        self.backups = max(0, backups)
        self.fd = -1
        self.size = 0
        self._open()

    def _open(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self.size = os.fstat(self.fd).st_size

    def write(self, data: bytes) -> None:
        """Append ``data``, never letting a file pass ``max_bytes``; cut at line ends."""
        view = memoryview(data)
        while view:
            room = self.max_bytes - self.size
            if room <= 0:
                self.rotate()
                continue
            piece = view[:room]
            if len(view) > room:
                cut = bytes(piece).rfind(b"\n") + 1
                if cut:
                    piece = piece[:cut]
                elif self.size:  # a line that does not fit: start it in a new file
                    self.rotate()
                    continue
            self._write_all(piece)
            view = view[len(piece) :]

    def _write_all(self, piece: memoryview) -> None:
        while piece:
            written = os.write(self.fd, piece)
            self.size += written
            piece = piece[written:]

    def rotate(self) -> None:
        os.close(self.fd)
        if self.backups == 0:
            os.truncate(self.path, 0)
        else:
            for index in range(self.backups - 1, 0, -1):
                older = f"{self.path}.{index}"
                if os.path.exists(older):
                    os.replace(older, f"{self.path}.{index + 1}")
            os.replace(self.path, f"{self.path}.1")
        self._open()

    def close(self) -> None:
        os.close(self.fd)


def write_json_atomic(path: str, data: dict[str, Any]) -> None:
    """Never half-written. Not fsynced: it must outlive the agent, not the host (the
    containers die with the host anyway), and an fsync costs milliseconds on a disk."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


DIAGNOSTICS = ""  # shim.log in the container's directory, made only if there is a complaint


def complain(message: str) -> None:
    if DIAGNOSTICS:
        with open(DIAGNOSTICS, "a") as f:
            f.write(f"{time.time():.3f} shim: {message}\n")


def report(event: dict[str, Any]) -> None:
    """Tell the agent, if it still listens; it may be gone, which is fine."""
    with contextlib.suppress(OSError):
        os.write(1, (json.dumps(event) + "\n").encode())


def exit_code_of(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


RESET_SIGNALS = (signal.SIGPIPE, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)


def spawn_runtime(argv: list[str], env: dict[str, str], out_fd: int) -> tuple[int, str | None]:
    """posix_spawn (vfork + exec: cheaper than a fork of Python) an OCI runtime command."""
    try:
        pid = os.posix_spawn(
            argv[0],
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, out_fd, 1),
                (os.POSIX_SPAWN_DUP2, out_fd, 2),
            ],
            setsigdef=RESET_SIGNALS,
            setsigmask=(),
        )
    except OSError as exc:
        return -1, f"cannot run {argv[0]}: {exc.strerror}"
    return pid, None


def spawn(job: dict[str, Any], log_w: int) -> tuple[int, str | None]:
    """Fork and exec the job's argv; return (pid, None) or (pid, why exec failed)."""
    if job.get("mode") == "oci":
        return spawn_runtime(job["argv"], job.get("env") or {}, log_w)
    err_r, err_w = os.pipe()  # both close-on-exec: EOF on exec success
    pid = os.fork()
    if pid == 0:  # child: only async-signal-safe-ish work, then exec
        try:
            os.close(err_r)
            signal.set_wakeup_fd(-1)
            for sig in RESET_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, [])
            if job.get("own_group"):
                os.setpgid(0, 0)
            devnull = os.open("/dev/null", os.O_RDWR)
            os.dup2(devnull, 0)
            os.dup2(log_w, 1)
            os.dup2(log_w, 2)
            cwd = job.get("cwd") or "/"
            try:
                os.chdir(cwd)
            except OSError as exc:
                raise RuntimeError(
                    f"cannot enter working directory {cwd}: {exc.strerror}"
                ) from None
            user = job.get("user")
            if user is not None:
                os.setgroups([])
                os.setgid(int(user[1]))
                os.setuid(int(user[0]))
            argv = job["argv"]
            try:
                os.execvpe(argv[0], argv, job.get("env") or {})
            except FileNotFoundError:
                raise RuntimeError(f"executable file not found: {argv[0]}") from None
            except PermissionError:
                raise RuntimeError(f"permission denied: {argv[0]}") from None
        except BaseException as exc:  # report, never return into the shim's code
            message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            try:
                os.write(err_w, message.encode(errors="replace"))
            finally:
                os._exit(127)
    os.close(err_w)
    chunks = []
    while True:
        chunk = os.read(err_r, 4096)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(err_r)
    error = b"".join(chunks).decode(errors="replace") if chunks else None
    return pid, error


def proc_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot: tells a pid from its reuse."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2 :].split()[19])


def children() -> list[int]:
    """Our living or unreaped children, from /proc."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat[stat.rindex(b")") + 2 :].split()[1]) == me:
            found.append(int(entry))
    return found


def read_pid_file(path: str) -> int:
    with open(path) as f:
        return int(f.read().strip())


def oom_kills(paths: list[str]) -> int:
    """The kernel's OOM-kill count for the container's memory cgroup (v1 or v2)."""
    for path in paths:
        try:
            with open(path) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return 0


def run_cleanup(job: dict[str, Any], libc: Any) -> bool:
    ok = True
    for argv in job.get("cleanup") or []:
        try:
            pid = os.posix_spawn(argv[0], argv, job.get("env") or {})
            _, status = os.waitpid(pid, 0)
            ok = ok and os.waitstatus_to_exitcode(status) == 0
        except OSError as exc:
            complain(f"cleanup {argv[0]} failed: {exc}")
            ok = False
    for target in job.get("umount") or []:
        if libc.umount2(target.encode(), MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err not in (errno.EINVAL, errno.ENOENT):
                complain(f"umount {target}: {os.strerror(err)}")
                ok = False
    for directory in job.get("rmdirs") or []:  # deepest first; only empty ones go
        with contextlib.suppress(OSError):
            os.rmdir(directory)
    return ok


def main() -> int:
    # -- as a spare: detach from the agent's session and become a subreaper --------
    with contextlib.suppress(OSError):  # already a session leader
        os.setsid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)

    line = sys.stdin.buffer.readline()
    if not line.strip():
        return 0  # the agent closed us without a job
    job = json.loads(line)
    directory = job["dir"]
    devnull = os.open("/dev/null", os.O_RDWR)
    os.dup2(devnull, 0)
    os.close(devnull)
    global DIAGNOSTICS
    DIAGNOSTICS = os.path.join(directory, "shim.log")

    log = RotatingLog(job["log_path"], int(job["log_max_bytes"]), int(job["log_backups"]))
    log_r, log_w = os.pipe()
    os.set_blocking(log_r, False)
    first_pid, error = spawn(job, log_w)
    os.close(log_w)
    statuses: dict[int, int] = {}

    def reap() -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)  # all our children are ours to reap
            except ChildProcessError:
                return
            if pid == 0:
                return
            statuses[pid] = status

    def drain() -> bool:
        """Copy what is in the pipe to the log; False at end of file."""
        while True:
            try:
                data = os.read(log_r, 65536)
            except BlockingIOError:
                return True
            if not data:
                return False
            log.write(data)

    def pump(until: float | None = None) -> bool:
        """Wait for output or a child's exit; False at end of output."""
        timeout = 1.0 if until is None else max(0.0, until - time.monotonic())
        ready, _, _ = select.select([log_r, wake_r], [], [], timeout)
        if wake_r in ready:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
        reap()
        return drain() if log_r in ready else True

    if error is not None:
        if first_pid > 0:
            os.waitpid(first_pid, 0)  # it is exiting: end of the error pipe came first
        reap()
        write_json_atomic(
            os.path.join(directory, "exit.json"),
            {"exit_code": 127, "error": error, "finished_at": time.time(), "oom_killed": False},
        )
        report({"event": "error", "message": error})
        return 0

    main_pid = first_pid
    open_output = True

    def wait_for(pid: int) -> int:
        nonlocal open_output
        while pid not in statuses:
            open_output = pump() and open_output
        return exit_code_of(statuses.pop(pid))

    def fail(stage: str, code: int) -> int:
        nonlocal open_output
        deadline = time.monotonic() + 0.5
        while open_output and time.monotonic() < deadline:
            open_output = pump(deadline)
        write_json_atomic(
            os.path.join(directory, "exit.json"),
            {"exit_code": None, "error": f"{stage} exited {code}", "finished_at": time.time()},
        )
        report({"event": "error", "stage": stage, "code": code})
        run_cleanup(job, libc)
        reap()
        return 0

    if job["mode"] == "oci":
        # `runc create`: when it has exited, the container's init is our child...
        code = wait_for(first_pid)
        if code != 0:
            return fail("create", code)
        main_pid = read_pid_file(job["pid_file"])
        # ...then `runc start` from here, so an agent dying now changes nothing.
        quiet = os.open("/dev/null", os.O_WRONLY)
        start_pid, error = spawn_runtime(job["start_argv"], job.get("env") or {}, quiet)
        os.close(quiet)
        code = 127 if error is not None else wait_for(start_pid)
        if code != 0:
            with contextlib.suppress(OSError):
                os.kill(main_pid, signal.SIGKILL)
            wait_for(main_pid)
            return fail("start", code)
    started_at = time.time()
    started = {"pid": main_pid, "started_at": started_at, "start_time": proc_start_time(main_pid)}
    write_json_atomic(os.path.join(directory, "started.json"), started)
    report({"event": "started", **started})

    while main_pid not in statuses:
        if open_output:
            open_output = pump()
        else:
            pump()
    status = statuses[main_pid]
    if job.get("own_group"):
        # What the command left behind dies with it: its group, and whatever
        # escaped the group but was re-parented to us (we are its subreaper).
        with contextlib.suppress(OSError):
            os.killpg(main_pid, signal.SIGKILL)
        for pid in children():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + DRAIN_AFTER_EXIT
    while open_output and time.monotonic() < deadline:
        open_output = pump(deadline)
    reap()
    while children() and time.monotonic() < deadline:  # reap them, or the agent inherits zombies
        time.sleep(0.01)
        reap()
    log.close()
    finished_at = time.time()
    result = {
        "exit_code": exit_code_of(status),
        "oom_killed": oom_kills(job.get("oom_files") or []) > 0,
        "finished_at": finished_at,
        "started_at": started_at,
        "pid": main_pid,
    }
    write_json_atomic(os.path.join(directory, "exit.json"), result)
    report({"event": "exited", **result})
    if run_cleanup(job, libc):
        with open(os.path.join(directory, "cleaned"), "w"):
            pass
    reap()
    return 0


if __name__ == "__main__":
    try:
        code = main()
    except BaseException:
        import traceback

        complain(traceback.format_exc())
        code = 1
    os._exit(code)  # no interpreter teardown: the agent is waiting for our exit
