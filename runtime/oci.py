"""The ``oci`` driver: containers through an OCI runtime's CLI (youki, runc, crun).

For each container it writes a bundle (``config.json`` + root filesystem) in the
container's directory and hands ``<runtime> create`` and ``start`` to a
per-container shim (``shim.py``), which owns the container's output, records its
exit code and deletes it from the runtime when it ends. Every runtime call uses this driver's own
``--root``, ``--log <file> --log-format json`` (the runtime's errors reach the user
as one line), a container id ``<prefix>-<id>`` and ``cgroupsPath``
``/hypha/<prefix>/<id>``, so several agents on one host never collide.

Root filesystems: a directory is shared read-only between containers (plus a
tmpfs on /tmp), or overlaid with a private upper directory when the spec asks
for ``writable_root``; an OCI image layout is unpacked once with umoci into
``<state_dir>/oci/images/<digest>/rootfs`` and then used like a directory.
Containers share the host's network namespace (Hypha has no network model yet).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import trio

from runtime._shimdriver import DEFAULT_LOG_BACKUPS, DEFAULT_LOG_MAX_BYTES, Record, ShimDriver
from runtime.driver import find_oci_runtime
from runtime.errors import RuntimeFailedError, RuntimeNotFoundError, SpecError, StartError
from runtime.spec import ContainerSpec

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CPU_PERIOD_US = 100_000
MNT_DETACH = 2
RUNTIME_TIMEOUT = 60.0

# Docker's default capability set: enough for ordinary programs, nothing that
# administers the host.
CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
    "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]  # fmt: skip
MASKED_PATHS = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware",
]  # fmt: skip
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
_VERSION_RE = re.compile(r"^(\S+)\s+version\s+(\S+)", re.MULTILINE)
_REF_NAME = "org.opencontainers.image.ref.name"


def runtime_version(runtime: Path) -> str:
    """``"runc 1.1.5+ds1"`` from ``runc --version`` (the first ``X version Y`` line)."""
    try:
        out = subprocess.run(
            [str(runtime), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except OSError as exc:
        raise RuntimeNotFoundError(f"cannot run {runtime}: {exc.strerror}") from exc
    match = _VERSION_RE.search(out.stdout)
    if out.returncode != 0 or match is None:
        raise RuntimeNotFoundError(f"{runtime} --version failed: {out.stderr.strip()[:200]}")
    return f"{match.group(1)} {match.group(2)}"


def runtime_error(log_path: Path, fallback: str = "") -> str:
    """The runtime's last error from its ``--log-format json`` file, as one line."""
    message = ""
    with contextlib.suppress(OSError):
        for line in log_path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("level") in ("error", "fatal", "panic"):
                message = str(entry.get("msg", ""))
    message = message or fallback.strip() or "no error message from the runtime"
    return " ".join(message.split())


def cgroup_mounts() -> list[tuple[Path, str]]:
    """(mount point, "cgroup"|"cgroup2") for every cgroup hierarchy on this host."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            before, _, after = line.partition(" - ")
            fstype = after.split()[0] if after else ""
            if fstype in ("cgroup", "cgroup2"):
                found.append((Path(before.split()[4]), fstype))
    return found


def _mount_overlay(lower: Path, upper: Path, work: Path, target: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    options = f"lowerdir={lower},upperdir={upper},workdir={work}".encode()
    if libc.mount(b"overlay", str(target).encode(), b"overlay", 0, options) != 0:
        err = ctypes.get_errno()
        raise StartError(f"cannot mount an overlay for a writable root: {os.strerror(err)}")


def _unmount(target: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.umount2(str(target).encode(), MNT_DETACH)


def _is_mount(path: Path) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


class OciDriver(ShimDriver):
    """Runs containers with an OCI runtime (youki, runc or crun) on bundles it writes."""

    kind = "oci"
    exec_uses_pid_file = True

    def __init__(
        self,
        *,
        state_dir: Path,
        prefix: str,
        runtime_path: Path | None = None,
        runtime_root: Path | None = None,
        log_max_bytes: int = DEFAULT_LOG_MAX_BYTES,
        log_backups: int = DEFAULT_LOG_BACKUPS,
    ) -> None:
        found = find_oci_runtime(runtime_path)
        if found is None:
            raise RuntimeNotFoundError("no OCI runtime found: install youki, runc or crun")
        if not found.is_absolute():
            located = shutil.which(str(found))
            found = Path(located) if located else found.absolute()
        if not (found.is_file() and os.access(found, os.X_OK)):
            raise RuntimeNotFoundError(f"{found} is not an executable file")
        if os.geteuid() != 0:
            raise RuntimeNotFoundError("the oci driver needs root (rootless is not supported)")
        self._runtime = found
        self._version = runtime_version(found)
        super().__init__(
            state_dir=state_dir,
            prefix=prefix,
            log_max_bytes=log_max_bytes,
            log_backups=log_backups,
        )
        self.runtime_root = runtime_root if runtime_root is not None else self.root / "runtime-root"
        self.runtime_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.images_dir = self.root / "images"
        self._cgroups = cgroup_mounts()
        self._memsw = any(
            (mount / "memory.memsw.limit_in_bytes").exists() for mount, _ in self._cgroups
        )

    @property
    def version(self) -> str:
        return self._version

    @property
    def runtime_path(self) -> Path:
        return self._runtime

    def container_id(self, container_id: str) -> str:
        """The id the runtime knows the container by."""
        return f"{self.prefix}-{container_id}"

    def cgroups_path(self, container_id: str) -> str:
        return f"/hypha/{self.prefix}/{container_id}"

    def runtime_argv(self, log: Path, *args: str) -> list[str]:
        return [
            str(self._runtime),
            "--root",
            str(self.runtime_root),
            "--log",
            str(log),
            "--log-format",
            "json",
            *args,
        ]

    # -- ShimDriver hooks -------------------------------------------------------------

    def check_spec(self, spec: ContainerSpec) -> None:
        if spec.image is None:
            raise SpecError("image", "the oci driver needs an image (a rootfs directory)")
        if not spec.image.exists():
            raise SpecError("image", f"{spec.image} does not exist")
        if not spec.image.is_dir():
            raise SpecError("image", f"{spec.image} is not a directory")

    async def prepare(self, spec: ContainerSpec, directory: Path) -> dict[str, Any]:
        assert spec.image is not None
        image = spec.image
        if (image / "oci-layout").is_file():
            image = await self.unpack_layout(image)
        if not (spec.writable_root or (image / spec.cwd.lstrip("/")).is_dir()):
            # The runtime would create it inside the shared, read-only image.
            raise SpecError("cwd", f"{spec.cwd} is not a directory in the image")
        bundle = directory / "bundle"
        bundle.mkdir()
        umount: list[str] = []
        if spec.writable_root:
            rootfs = bundle / "rootfs"
            upper, work = directory / "upper", directory / "work"
            for path in (rootfs, upper, work):
                path.mkdir()
            _mount_overlay(image, upper, work, rootfs)
            umount.append(str(rootfs))
            root: dict[str, Any] = {"path": "rootfs", "readonly": False}
        else:
            root = {"path": str(image), "readonly": True}
        config = self.config_json(spec, root)
        (bundle / "config.json").write_text(json.dumps(config, indent=1))
        cid = self.container_id(spec.id)
        runtime_log = directory / "runtime.log"
        cgroup_rel = self.cgroups_path(spec.id).lstrip("/")
        oom_files = []
        rmdirs = []
        for mount, fstype in self._cgroups:
            leaf = mount / cgroup_rel
            if fstype == "cgroup2":
                oom_files.append(str(leaf / "memory.events"))
            elif (mount / "memory.oom_control").exists():
                oom_files.append(str(leaf / "memory.oom_control"))
            rmdirs += [str(leaf), str(leaf.parent), str(leaf.parent.parent)]
        return {
            "mode": "oci",
            "argv": self.runtime_argv(
                runtime_log,
                "create",
                "--bundle",
                str(bundle),
                "--pid-file",
                str(directory / "container.pid"),
                cid,
            ),
            "env": {"PATH": os.environ.get("PATH", DEFAULT_PATH)},
            "cwd": str(bundle),
            "pid_file": str(directory / "container.pid"),
            "oom_files": oom_files,
            "start_argv": self.runtime_argv(runtime_log, "start", cid),
            "cleanup": [self.runtime_argv(runtime_log, "delete", "--force", cid)],
            "umount": umount,
            "rmdirs": rmdirs,
        }

    def config_json(self, spec: ContainerSpec, root: dict[str, Any]) -> dict[str, Any]:
        """The bundle's ``config.json`` (OCI runtime spec 1.0) for ``spec``."""
        uid, gid = spec.user if spec.user is not None else (0, 0)
        hostname = spec.hostname or spec.id.replace("_", "-").replace(".", "-")[:63]
        env = {"PATH": DEFAULT_PATH, "HOSTNAME": hostname, "HOME": "/root" if uid == 0 else "/"}
        env.update(spec.env)
        mounts: list[dict[str, Any]] = [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {
                "destination": "/dev/mqueue",
                "type": "mqueue",
                "source": "mqueue",
                "options": ["nosuid", "noexec", "nodev"],
            },
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            },
            {
                "destination": "/sys/fs/cgroup",
                "type": "cgroup",
                "source": "cgroup",
                "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
            },
        ]
        if root["readonly"]:
            mounts.append(
                {
                    "destination": "/tmp",
                    "type": "tmpfs",
                    "source": "tmpfs",
                    "options": ["nosuid", "nodev", "mode=1777"],
                }
            )
        resources: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
        if spec.cpu_millicores is not None:
            resources["cpu"] = {
                "shares": max(2, spec.cpu_millicores * 1024 // 1000),
                "quota": max(1000, spec.cpu_millicores * CPU_PERIOD_US // 1000),
                "period": CPU_PERIOD_US,
            }
        if spec.memory_bytes is not None:
            memory: dict[str, Any] = {"limit": spec.memory_bytes}
            if self._memsw:
                memory["swap"] = spec.memory_bytes  # memory + swap: no swap on top
            resources["memory"] = memory
        if spec.pids_limit is not None:
            resources["pids"] = {"limit": spec.pids_limit}
        return {
            "ociVersion": "1.0.2",
            "process": {
                "terminal": False,
                "user": {"uid": uid, "gid": gid},
                "args": list(spec.command),
                "env": [f"{key}={value}" for key, value in env.items()],
                "cwd": spec.cwd,
                "capabilities": {
                    "bounding": CAPABILITIES,
                    "effective": CAPABILITIES,
                    "permitted": CAPABILITIES,
                },
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                "noNewPrivileges": True,
            },
            "root": root,
            "hostname": hostname,
            "mounts": mounts,
            "linux": {
                "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")],
                "cgroupsPath": self.cgroups_path(spec.id),
                "resources": resources,
                "maskedPaths": MASKED_PATHS,
                "readonlyPaths": READONLY_PATHS,
            },
        }

    def exec_command(
        self, record: Record, command: tuple[str, ...], pid_file: Path
    ) -> tuple[list[str], dict[str, str] | None, str | None]:
        """``runtime exec``: the process joins the container's namespaces and cgroup
        and takes its environment, user and working directory from config.json."""
        argv = self.runtime_argv(
            record.dir / "exec.log",
            "exec",
            "--pid-file",
            str(pid_file),
            self.container_id(record.spec.id),
            *command,
        )
        return argv, None, None

    async def start_failed(self, record: Record, event: dict[str, Any]) -> str:
        stage = event.get("stage", "create")
        if "message" in event:
            return f"{self._runtime.name} {stage}: {event['message']}"
        return f"{self._runtime.name} {stage}: {runtime_error(record.dir / 'runtime.log')}"

    async def cleanup(self, record: Record) -> None:
        if not (record.dir / "cleaned").exists():
            await self.cleanup_dir(record.dir)

    async def cleanup_dir(self, directory: Path) -> None:
        """Delete the runtime's container, unmount the root and drop empty cgroups."""
        runtime_log = directory / "runtime.log"
        cid = self.container_id(directory.name)
        if (self.runtime_root / cid).exists():
            result = await self._run(self.runtime_argv(runtime_log, "delete", "--force", cid))
            if result.returncode != 0 and (self.runtime_root / cid).exists():
                raise RuntimeFailedError(
                    f"{directory.name}: {self._runtime.name} delete: "
                    f"{runtime_error(runtime_log, result.stderr.decode(errors='replace'))}"
                )
        rootfs = directory / "bundle" / "rootfs"
        if _is_mount(rootfs):
            _unmount(rootfs)
        cgroup_rel = self.cgroups_path(directory.name).lstrip("/")
        for mount, _ in self._cgroups:
            leaf = mount / cgroup_rel
            for path in (leaf, leaf.parent, leaf.parent.parent):
                with contextlib.suppress(OSError):
                    path.rmdir()

    # -- images -----------------------------------------------------------------------

    async def unpack_layout(self, layout: Path) -> Path:
        """Unpack an OCI image layout once (by manifest digest) and return its rootfs."""
        try:
            index = json.loads((layout / "index.json").read_text())
            manifests = list(index.get("manifests") or [])
        except (OSError, ValueError, AttributeError) as exc:
            raise SpecError("image", f"{layout} is not a valid OCI image layout: {exc}") from exc
        tagged = [m for m in manifests if (m.get("annotations") or {}).get(_REF_NAME)]
        if not tagged:
            raise SpecError("image", f"{layout} has no tagged manifest to unpack")
        chosen = next((m for m in tagged if m["annotations"][_REF_NAME] == "latest"), tagged[0])
        digest = str(chosen.get("digest", ""))
        if not re.match(r"^[a-z0-9]+:[a-f0-9]{32,}$", digest):
            raise SpecError("image", f"{layout}: manifest digest {digest!r} is not valid")
        target = self.images_dir / digest.replace(":", "-")
        if (target / "rootfs").is_dir():
            return target / "rootfs"
        umoci = shutil.which("umoci")
        if umoci is None:
            raise SpecError("image", f"{layout} is an OCI image layout and umoci is not installed")
        self.images_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=self.images_dir))
        try:
            ref = chosen["annotations"][_REF_NAME]
            argv = [umoci, "raw", "unpack", "--image", f"{layout}:{ref}", str(staging / "rootfs")]
            result = await self._run(argv)
            if result.returncode != 0:
                message = " ".join(result.stderr.decode(errors="replace").split())[-300:]
                raise SpecError("image", f"umoci could not unpack {layout}: {message}")
            try:
                os.rename(staging, target)
            except OSError:
                if not (target / "rootfs").is_dir():  # not a concurrent unpack: a real error
                    raise
        finally:
            await trio.to_thread.run_sync(lambda: shutil.rmtree(staging, ignore_errors=True))
        return target / "rootfs"

    async def _run(self, argv: list[str]) -> subprocess.CompletedProcess[bytes]:
        with trio.fail_after(RUNTIME_TIMEOUT):
            return await trio.run_process(
                argv,
                stdin=subprocess.DEVNULL,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
