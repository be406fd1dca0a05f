"""A busybox root filesystem for examples and tests, from Debian's busybox-static."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from runtime.errors import DriverError, RuntimeNotFoundError, SpecError

BUSYBOX_CANDIDATES = (Path("/bin/busybox"), Path("/usr/bin/busybox"))
_MARKER = ".hypha-busybox-rootfs"
_DIRS = (
    "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "dev/pts",
    "dev/shm", "dev/mqueue", "tmp", "root", "home", "var/tmp", "run", "sys/fs/cgroup",
)  # fmt: skip
_PT_INTERP = 3


def is_static_elf(path: Path) -> bool:
    """True for a 64-bit little-endian ELF without a program interpreter (static)."""
    with open(path, "rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
            return False
        phoff = int.from_bytes(header[32:40], "little")
        phentsize = int.from_bytes(header[54:56], "little")
        phnum = int.from_bytes(header[56:58], "little")
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    for index in range(phnum):
        entry = table[index * phentsize : (index + 1) * phentsize]
        if int.from_bytes(entry[0:4], "little") == _PT_INTERP:
            return False
    return True


def find_static_busybox() -> Path:
    for candidate in BUSYBOX_CANDIDATES:
        if candidate.is_file() and is_static_elf(candidate):
            return candidate
    raise RuntimeNotFoundError(
        "no static busybox found (looked at /bin/busybox, /usr/bin/busybox): "
        "apt-get install busybox-static"
    )


def build_busybox_rootfs(dest: Path) -> Path:
    """Build (or reuse) a busybox root filesystem at ``dest`` and return ``dest``.

    Every applet is a relative symlink to ``/bin/busybox``; ``/etc/passwd`` and
    ``/etc/group`` know root and nobody; mount points for /proc, /dev, /sys and
    /tmp exist so a read-only shared rootfs needs no change. The tree is built
    beside ``dest`` and renamed into place, so a half-built rootfs is never seen.
    An existing rootfs built from the same busybox is reused as is.
    """
    dest = Path(dest)
    if not dest.is_absolute():
        raise SpecError("dest", f"{str(dest)!r} is relative: give an absolute path")
    busybox = find_static_busybox()
    stamp = f"{busybox} {busybox.stat().st_size} {busybox.stat().st_mtime_ns}\n"
    marker = dest / _MARKER
    if marker.is_file() and marker.read_text() == stamp:
        return dest
    if dest.exists() and any(dest.iterdir()) and not marker.exists():
        raise SpecError("dest", f"{dest} exists and is not a busybox rootfs built by Hypha")
    try:
        return _build(busybox, dest, stamp)
    except OSError as exc:
        raise DriverError(f"cannot build a busybox rootfs at {dest}: {exc}") from exc


def _build(busybox: Path, dest: Path, stamp: str) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    applets = subprocess.run(
        [str(busybox), "--list-full"], check=True, capture_output=True, text=True
    ).stdout.split()
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        os.chmod(staging, 0o755)
        for directory in _DIRS:
            (staging / directory).mkdir(parents=True, exist_ok=True)
        os.chmod(staging / "tmp", 0o1777)
        shutil.copy2(busybox, staging / "bin" / "busybox")
        for applet in applets:
            link = staging / applet
            if link.exists() or link.is_symlink() or applet == "bin/busybox":
                continue
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(staging / "bin" / "busybox", link.parent))
        (staging / "etc" / "passwd").write_text(
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
        )
        (staging / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
        (staging / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
        (staging / _MARKER).write_text(stamp)
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
            os.rename(dest, old / "rootfs")
            shutil.rmtree(old, ignore_errors=True)
        os.rename(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest
