"""Helpers for the runtime tests: drivers under test and the no-leak checks."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from runtime import ContainerSpec, Driver, MockDriver, ProcessDriver

RUNTIME_TEST_ROOT = Path("/run") if os.geteuid() == 0 else Path(tempfile.gettempdir())
BUSYBOX_ROOTFS_CACHE = Path(tempfile.gettempdir()) / "hypha-test-runtime-busybox-rootfs"


def children_of(pid: int) -> dict[int, str]:
    """Processes whose parent is ``pid``: {child pid: "state-letter command-name"}."""
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[1]) == pid:
            comm = stat[stat.index(b"(") + 1 : stat.rindex(b")")].decode(errors="replace")
            found[int(entry)] = f"{fields[0].decode()} {comm}"
    return found


def mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(str(path))]


def cgroup_dirs(prefix: str) -> list[str]:
    """Cgroup directories of an oci driver with ``prefix`` in any hierarchy."""
    found = []
    base = Path("/sys/fs/cgroup")
    candidates = [base, *[p for p in base.iterdir() if p.is_dir()]] if base.exists() else []
    for hierarchy in candidates:
        path = hierarchy / "hypha" / prefix
        if path.exists():
            found.append(str(path))
    return found


def runtime_containers(runtime: str, root: Path) -> list[str]:
    if not root.exists():
        return []
    out = subprocess.run(
        [runtime, "--root", str(root), "list", "-q"],
        check=True,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    ).stdout
    return out.split()


class DriverUnderTest:
    """A driver plus what the conformance tests need to speak to it."""

    def __init__(self, kind: str, driver: Driver, state_dir: Path, prefix: str) -> None:
        self.kind = kind
        self.driver = driver
        self.state_dir = state_dir
        self.prefix = prefix
        self.rootfs: Path | None = None
        self.runtime: str | None = None

    def spec(self, container_id: str, script: str, **kwargs: object) -> ContainerSpec:
        """A spec running the shell ``script`` (mock: the mock's own script)."""
        if self.kind == "mock":
            command: tuple[str, ...] = tuple(script.split())
        else:
            command = ("sh", "-c", script)
        image = self.rootfs if self.kind == "oci" else None
        return ContainerSpec(id=container_id, command=command, image=image, **kwargs)  # type: ignore[arg-type]

    def leaks(self) -> list[str]:
        """Everything this driver left behind; empty when clean."""
        problems = []
        if self.kind == "mock":
            assert isinstance(self.driver, MockDriver)
            if self.driver.host.containers:
                problems.append(f"mock containers: {sorted(self.driver.host.containers)}")
            return problems
        containers = self.state_dir / self.kind / "containers"
        if containers.exists() and any(containers.iterdir()):
            problems.append(f"container dirs: {sorted(p.name for p in containers.iterdir())}")
        mounts = mounts_under(self.state_dir)
        if mounts:
            problems.append(f"mounts: {mounts}")
        if self.kind == "oci":
            assert self.runtime is not None
            left = runtime_containers(self.runtime, self.state_dir / "oci" / "runtime-root")
            if left:
                problems.append(f"runtime containers: {left}")
            cgroups = cgroup_dirs(self.prefix)
            if cgroups:
                problems.append(f"cgroup dirs: {cgroups}")
        return problems


@asynccontextmanager
async def no_leaks(dut: DriverUnderTest) -> AsyncIterator[DriverUnderTest]:
    """Run a test, then remove what it left, close the driver and check nothing leaked."""
    before = set(children_of(os.getpid()))
    try:
        yield dut
    finally:
        for status in await dut.driver.list():
            await dut.driver.remove(status.id)
        await dut.driver.close()
        problems = dut.leaks()
        new_children = {
            pid: state for pid, state in children_of(os.getpid()).items() if pid not in before
        }
        if new_children:
            problems.append(f"child processes or zombies left: {new_children}")
        shutil.rmtree(dut.state_dir, ignore_errors=True)
        assert not problems, "; ".join(problems)


def make_process_driver(state_dir: Path, prefix: str) -> ProcessDriver:
    return ProcessDriver(state_dir=state_dir, prefix=prefix)
