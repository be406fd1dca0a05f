"""``scripts/bench-runtime``: the oci driver against bare runc, side by side.

Needs root and an OCI runtime. Measures, in one run:

* bare ``runc create`` + ``start`` + wait (pidfd, as child subreaper) + ``delete``
  of ``/bin/true`` against ``start`` + ``wait`` + ``remove`` of the same through the
  oci driver (median of ``--runs``, alternating, a short pause between runs);
* bundle creation (the driver writing ``config.json`` and its directories);
* ``--concurrent`` containers started at once and stopped at once: errors and leaks;
* the agent's (this process's) RSS with ``--concurrent`` containers running, and
  the shims' total RSS beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from runtime._monitor import set_child_subreaper
from runtime.driver import find_oci_runtime
from runtime.errors import DriverError
from runtime.oci import OciDriver
from runtime.rootfs import build_busybox_rootfs
from runtime.spec import ContainerSpec


def rss_kib(pid: int | str = "self") -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def bare_cycle(runtime: str, root: Path, bundle: Path, cid: str) -> float:
    """One create + start + wait + delete with runc alone; seconds."""
    base = [runtime, "--root", str(root)]
    pid_file = bundle.parent / "bare.pid"
    quiet = {
        "stdin": subprocess.DEVNULL,
        "stdout": subprocess.DEVNULL,
        "stderr": subprocess.DEVNULL,
    }
    began = time.perf_counter()
    create = [*base, "create", "--bundle", str(bundle), "--pid-file", str(pid_file), cid]
    subprocess.run(create, check=True, **quiet)  # type: ignore[call-overload]
    pidfd = os.pidfd_open(int(pid_file.read_text()))
    subprocess.run([*base, "start", cid], check=True, **quiet)  # type: ignore[call-overload]
    os.waitid(os.P_PIDFD, pidfd, os.WEXITED)  # we are its subreaper: runc create has exited
    os.close(pidfd)
    subprocess.run([*base, "delete", cid], check=True, **quiet)  # type: ignore[call-overload]
    return time.perf_counter() - began


def leaks(driver: OciDriver) -> list[str]:
    found = []
    containers = list(driver.containers_dir.iterdir())
    if containers:
        found.append(f"{len(containers)} container dirs")
    listed = subprocess.run(
        [str(driver.runtime_path), "--root", str(driver.runtime_root), "list", "-q"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if listed:
        found.append(f"{len(listed)} runtime containers")
    for mount in Path("/sys/fs/cgroup").iterdir():
        if (mount / "hypha" / driver.prefix).exists():
            found.append(f"cgroup {mount / 'hypha' / driver.prefix}")
    with open("/proc/self/mounts") as f:
        mounts = [line for line in f if str(driver.state_dir) in line]
    if mounts:
        found.append(f"{len(mounts)} mounts")
    return found


async def bench(runs: int, concurrent: int, runtime: Path) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    state_dir = Path(tempfile.mkdtemp(prefix="hypha-bench-runtime-", dir="/run"))
    rootfs = build_busybox_rootfs(Path(tempfile.gettempdir()) / "hypha-bench-busybox-rootfs")
    prefix = f"b{secrets.token_hex(3)}"
    driver = OciDriver(state_dir=state_dir, prefix=prefix, runtime_path=runtime)
    set_child_subreaper()
    try:
        rows.append(("runtime", f"{driver.version} ({runtime})"))
        load = os.getloadavg()
        rows.append(("host", f"{os.cpu_count()} CPUs, load average {load[0]:.1f} at start"))
        # A bundle exactly like the driver's, for bare runc.
        bare_dir = state_dir / "bare"
        bundle = bare_dir / "bundle"
        bundle.mkdir(parents=True)
        spec = ContainerSpec(id="bare", command=("/bin/true",), image=rootfs)
        config = driver.config_json(spec, {"path": str(rootfs), "readonly": True})
        config["linux"]["cgroupsPath"] = f"/hypha/{prefix}-bare/bare"
        (bundle / "config.json").write_text(json.dumps(config))
        bare_root = bare_dir / "root"
        bare_times, driver_times = [], []
        await driver.start(ContainerSpec(id="warm", command=("/bin/true",), image=rootfs))
        await driver.wait("warm")
        await driver.remove("warm")
        for index in range(runs):
            await trio.sleep(0.4)
            bare_times.append(
                await trio.to_thread.run_sync(
                    bare_cycle, str(runtime), bare_root, bundle, f"{prefix}-bare-{index}"
                )
            )
            await trio.sleep(0.4)
            began = time.perf_counter()
            cid = f"true-{index}"
            await driver.start(ContainerSpec(id=cid, command=("/bin/true",), image=rootfs))
            code = await driver.wait(cid)
            await driver.remove(cid)
            driver_times.append(time.perf_counter() - began)
            if code != 0:
                raise DriverError(f"/bin/true exited {code}")
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            for path in (hierarchy / "hypha" / f"{prefix}-bare", hierarchy / "hypha"):
                with _suppress():
                    path.rmdir()
        bare = statistics.median(bare_times)
        ours = statistics.median(driver_times)
        rows.append((f"bare runc create+start+wait+delete /bin/true (median of {runs})",
                     f"{bare * 1000:.1f} ms"))  # fmt: skip
        rows.append((f"oci driver start+wait+remove /bin/true (median of {runs})",
                     f"{ours * 1000:.1f} ms"))  # fmt: skip
        rows.append(("driver / bare", f"{ours / bare:.2f}x (goal <= 1.2x)"))

        bundle_times = []
        for index in range(max(runs, 20)):
            directory = driver.containers_dir / f"bundle-{index}"
            directory.mkdir()
            spec = ContainerSpec(id=f"bundle-{index}", command=("/bin/true",), image=rootfs)
            began = time.perf_counter()
            await driver.prepare(spec, directory)
            bundle_times.append(time.perf_counter() - began)
            shutil.rmtree(directory)
        rows.append(("bundle creation (config.json + dirs, shared read-only rootfs)",
                     f"{statistics.median(bundle_times) * 1000:.2f} ms"))  # fmt: skip

        errors: list[str] = []

        async def start_one(index: int) -> None:
            try:
                await driver.start(
                    ContainerSpec(id=f"many-{index}", command=("sleep", "1000"), image=rootfs)
                )
            except DriverError as exc:
                errors.append(str(exc))

        began = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for index in range(concurrent):
                nursery.start_soon(start_one, index)
        started = time.perf_counter() - began
        running = [s for s in await driver.list() if s.state == "running"]
        agent_rss = rss_kib()
        shim_rss = 0
        for directory in driver.containers_dir.iterdir():
            info = json.loads((directory / "shim.json").read_text())
            shim_rss += rss_kib(info["pid"])

        async def stop_one(cid: str) -> None:
            try:
                await driver.stop(cid, grace=0)
                await driver.remove(cid)
            except DriverError as exc:
                errors.append(str(exc))

        began = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for status in running:
                nursery.start_soon(stop_one, status.id)
        stopped = time.perf_counter() - began
        left = leaks(driver)
        rows.append((f"{concurrent} concurrent starts (all running)",
                     f"{started:.2f} s, {len(running)}/{concurrent} running"))  # fmt: skip
        rows.append((f"{concurrent} concurrent stops + removes", f"{stopped:.2f} s"))
        rows.append(("errors / leaks", f"{len(errors)} / {', '.join(left) if left else 'none'}"))
        rows.append((f"agent RSS with {concurrent} running", f"{agent_rss / 1024:.1f} MiB"))
        each = shim_rss / 1024 / max(1, concurrent)
        rows.append((f"shims' RSS with {concurrent} running (total, each)",
                     f"{shim_rss / 1024:.0f} MiB, {each:.1f} MiB"))  # fmt: skip
        for message in errors[:5]:
            print(f"error: {message}", file=sys.stderr)
    finally:
        for status in await driver.list():
            await driver.remove(status.id)
        await driver.close()
        shutil.rmtree(state_dir, ignore_errors=True)
    return rows


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return isinstance(exc[1], OSError)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=30, help="timed runs of each (>= 20)")
    parser.add_argument("--concurrent", type=int, default=50, help="containers at once")
    parser.add_argument("--runtime", type=Path, default=None, help="OCI runtime path")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench-runtime: needs root (it runs real containers)", file=sys.stderr)
        return 2
    runtime = find_oci_runtime(args.runtime)
    if runtime is None:
        print("bench-runtime: no OCI runtime (youki, runc, crun) found", file=sys.stderr)
        return 2
    rows = trio.run(bench, max(20, args.runs), args.concurrent, runtime)
    width = max(len(name) for name, _ in rows)
    print(f"| {'measure':<{width}} | result |")
    print(f"|{'-' * (width + 2)}|--------|")
    for name, value in rows:
        print(f"| {name:<{width}} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
