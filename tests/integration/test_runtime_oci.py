"""The oci driver with real runc: bundles, limits (OOM -> 137), root filesystems,
runtime errors, two agents on one host, and re-adoption after ``kill -9``."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from runtime import ContainerSpec, RuntimeNotFoundError, SpecError, StartError
from runtime.oci import OciDriver
from runtime.rootfs import build_busybox_rootfs
from tests.conftest import require_binary, require_root
from tests.integration.runtime_support import (
    BUSYBOX_ROOTFS_CACHE,
    RUNTIME_TEST_ROOT,
    DriverUnderTest,
    no_leaks,
)

pytestmark = pytest.mark.slow


def new_state_dir() -> Path:
    path = RUNTIME_TEST_ROOT / f"hypha-test-runtime-{secrets.token_hex(4)}"
    path.mkdir(mode=0o700)
    return path


def open_oci(state_dir: Path | None = None, prefix: str | None = None) -> DriverUnderTest:
    require_root()
    runtime = require_binary("runc")
    state_dir = state_dir or new_state_dir()
    prefix = prefix or f"t{secrets.token_hex(3)}"
    driver = OciDriver(state_dir=state_dir, prefix=prefix, runtime_path=Path(runtime))
    dut = DriverUnderTest("oci", driver, state_dir, prefix)
    dut.runtime = runtime
    dut.rootfs = build_busybox_rootfs(BUSYBOX_ROOTFS_CACHE)
    return dut


@pytest.fixture
async def oci() -> AsyncIterator[DriverUnderTest]:
    async with no_leaks(open_oci()) as dut:
        yield dut


async def output(dut: DriverUnderTest, container_id: str) -> bytes:
    out = b""
    async for chunk in dut.driver.logs(container_id):
        out += chunk
    return out


async def run(dut: DriverUnderTest, spec: ContainerSpec) -> tuple[int, bytes]:
    await dut.driver.start(spec)
    code = await dut.driver.wait(spec.id)
    out = await output(dut, spec.id)
    await dut.driver.remove(spec.id)
    return code, out


async def test_memory_limit_oom_kills_with_137(oci: DriverUnderTest) -> None:
    spec = oci.spec(
        "hog", "dd if=/dev/zero of=/dev/null bs=256M count=1", memory_bytes=32 * 1024 * 1024
    )
    await oci.driver.start(spec)
    assert await oci.driver.wait("hog") == 137
    [status] = await oci.driver.list()
    assert status.exit_code == 137 and status.oom_killed
    await oci.driver.remove("hog")


async def test_limits_reach_the_cgroup(oci: DriverUnderTest) -> None:
    spec = oci.spec(
        "limited",
        "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.shares"
        " /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max",
        cpu_millicores=250,
        memory_bytes=64 * 1024 * 1024,
        pids_limit=10,
    )
    if not Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").exists():
        pytest.skip("this test reads cgroup v1 files")
    code, out = await run(oci, spec)
    assert code == 0, out
    assert out.split() == [b"25000", b"256", str(64 * 1024 * 1024).encode(), b"10"]


async def test_pids_limit_is_enforced(oci: DriverUnderTest) -> None:
    script = "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 5 & done 2>&1; wait; echo done"
    code, out = await run(oci, oci.spec("forky", script, pids_limit=4))
    assert b"fork" in out.lower() or b"resource temporarily unavailable" in out.lower(), out


async def test_bundle_config(oci: DriverUnderTest) -> None:
    spec = oci.spec(
        "cfg",
        "sleep 1000",
        env={"GREETING": "hi"},
        cwd="/tmp",
        user=(65534, 65534),
        hostname="box",
    )
    await oci.driver.start(spec)
    directory = oci.state_dir / "oci" / "containers" / "cfg"
    config = json.loads((directory / "bundle" / "config.json").read_text())
    assert config["process"]["terminal"] is False
    assert config["process"]["noNewPrivileges"] is True
    assert config["process"]["user"] == {"uid": 65534, "gid": 65534}
    assert config["process"]["cwd"] == "/tmp"
    assert "GREETING=hi" in config["process"]["env"]
    assert config["hostname"] == "box"
    assert config["root"] == {"path": str(oci.rootfs), "readonly": True}
    assert {n["type"] for n in config["linux"]["namespaces"]} >= {"pid", "mount", "ipc", "uts"}
    assert config["linux"]["cgroupsPath"] == f"/hypha/{oci.prefix}/cfg"
    assert "/proc/kcore" in config["linux"]["maskedPaths"]
    assert "/proc/sys" in config["linux"]["readonlyPaths"]
    assert {m["destination"] for m in config["mounts"]} >= {"/proc", "/dev", "/sys", "/tmp"}
    runc = [oci.runtime, "--root", str(oci.state_dir / "oci" / "runtime-root"), "list", "-q"]
    listed = subprocess.run(runc, capture_output=True, text=True, check=True).stdout.split()
    assert listed == [f"{oci.prefix}-cfg"]


async def test_identity_inside_the_container(oci: DriverUnderTest) -> None:
    spec = oci.spec(
        "who", "hostname; id -u; id -g; pwd; echo $GREETING", env={"GREETING": "hi"},
        cwd="/tmp", user=(65534, 65534), hostname="box",
    )  # fmt: skip
    code, out = await run(oci, spec)
    assert (code, out) == (0, b"box\n65534\n65534\n/tmp\nhi\n")


async def test_read_only_root_with_tmpfs_tmp(oci: DriverUnderTest) -> None:
    code, out = await run(oci, oci.spec("ro", "touch /x 2>&1; touch /tmp/y && echo tmp-ok"))
    assert b"Read-only file system" in out and b"tmp-ok" in out
    assert not (oci.rootfs / "x").exists() and not (oci.rootfs / "tmp" / "y").exists()  # type: ignore[operator]


async def test_writable_root_is_a_private_overlay(oci: DriverUnderTest) -> None:
    spec = oci.spec("rw", "echo data > /written && cat /written", writable_root=True)
    code, out = await run(oci, spec)
    assert (code, out) == (0, b"data\n")
    assert oci.rootfs is not None and not (oci.rootfs / "written").exists()


async def test_oci_image_layout_is_unpacked_with_umoci(oci: DriverUnderTest) -> None:
    umoci = require_binary("umoci")
    assert oci.rootfs is not None
    layout = oci.state_dir / "layout"
    work = oci.state_dir / "layout-work"
    subprocess.run([umoci, "init", "--layout", str(layout)], check=True)
    subprocess.run([umoci, "new", "--image", f"{layout}:latest"], check=True)
    subprocess.run([umoci, "unpack", "--image", f"{layout}:latest", str(work)], check=True)
    shutil.rmtree(work / "rootfs")
    shutil.copytree(oci.rootfs, work / "rootfs", symlinks=True)
    (work / "rootfs" / "etc" / "from-layout").write_text("yes\n")
    subprocess.run([umoci, "repack", "--image", f"{layout}:latest", str(work)], check=True)
    shutil.rmtree(work)
    spec = ContainerSpec(id="img", command=("cat", "/etc/from-layout"), image=layout)
    code, out = await run(oci, spec)
    assert (code, out) == (0, b"yes\n")
    code, out = await run(oci, spec)  # second start reuses the unpacked rootfs
    assert (code, out) == (0, b"yes\n")
    assert len(list((oci.state_dir / "oci" / "images").iterdir())) == 1


async def test_runtime_errors_are_one_clear_line(oci: DriverUnderTest) -> None:
    with pytest.raises(StartError) as info:
        await oci.driver.start(
            oci.spec("noexec", "true").__class__(
                id="noexec", command=("/etc/passwd",), image=oci.rootfs
            )
        )
    message = str(info.value)
    assert "\n" not in message and "runc create" in message and "/etc/passwd" in message
    assert "permission denied" in message
    with pytest.raises(SpecError) as spec_info:
        await oci.driver.start(oci.spec("nocwd", "true", cwd="/does/not/exist"))
    assert spec_info.value.field == "cwd"
    assert await oci.driver.list() == []


async def test_bad_images_are_refused_by_field(oci: DriverUnderTest, tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        await oci.driver.start(ContainerSpec(id="x", command=("true",), image=tmp_path / "no"))
    assert info.value.field == "image" and "does not exist" in str(info.value)
    (tmp_path / "file").write_text("")
    with pytest.raises(SpecError) as info:
        await oci.driver.start(ContainerSpec(id="x", command=("true",), image=tmp_path / "file"))
    assert info.value.field == "image"
    with pytest.raises(SpecError) as info:
        await oci.driver.start(ContainerSpec(id="x", command=("true",)))
    assert info.value.field == "image"


async def test_two_agents_same_container_id() -> None:
    first, second = open_oci(), open_oci()
    async with no_leaks(first):
        try:
            await first.driver.start(first.spec("web", "sleep 1000"))
            await second.driver.start(second.spec("web", "sleep 1000"))
            assert await first.driver.stop("web", grace=0) == 137
            await first.driver.remove("web")
            [still] = await second.driver.list()
            assert still.state == "running"
            assert await second.driver.stop("web", grace=0) == 137
        finally:
            for status in await second.driver.list():
                await second.driver.remove(status.id)
            await second.driver.close()
            assert not second.leaks()
            shutil.rmtree(second.state_dir, ignore_errors=True)


AGENT_SCRIPT = textwrap.dedent(
    """
    import sys, trio
    from pathlib import Path
    from runtime import ContainerSpec, open_driver

    async def main():
        kind, state_dir, prefix, rootfs = sys.argv[1:5]
        driver, why = open_driver(kind, state_dir=Path(state_dir), prefix=prefix)
        image = Path(rootfs) if kind == "oci" else None
        def spec(cid, script):
            return ContainerSpec(id=cid, command=("sh", "-c", script), image=image)
        await driver.start(spec("long", "echo started; sleep 1000"))
        await driver.start(spec("short", "echo bye; sleep 1; exit 7"))
        print("ready", flush=True)
        await trio.sleep_forever()

    trio.run(main)
    """
)


@pytest.mark.parametrize("kind", ["process", "oci"])
async def test_kill_9_agent_then_adopt(kind: str) -> None:
    """Exit codes and output survive the agent's death; a new agent adopts both."""
    dut = open_oci() if kind == "oci" else None
    state_dir = dut.state_dir if dut else new_state_dir()
    prefix = dut.prefix if dut else f"t{secrets.token_hex(3)}"
    if dut is not None:
        await dut.driver.close()
    rootfs = str(BUSYBOX_ROOTFS_CACHE)
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT_SCRIPT, kind, str(state_dir), prefix, rootfs],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        cwd=Path(__file__).parents[2],
    )
    try:
        assert agent.stdout is not None
        with trio.fail_after(60):
            line = await trio.to_thread.run_sync(agent.stdout.readline)
        assert line == b"ready\n"
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait()
    await trio.sleep(1.5)  # "short" exits while no agent is running
    if kind == "oci":
        again = open_oci(state_dir, prefix)
    else:
        from tests.integration.runtime_support import make_process_driver

        again = DriverUnderTest(kind, make_process_driver(state_dir, prefix), state_dir, prefix)
    async with no_leaks(again):
        adopted = {s.id: s for s in await again.driver.adopt()}
        assert set(adopted) == {"long", "short"}
        with trio.fail_after(30):
            assert await again.driver.wait("short") == 7
        short = {s.id: s for s in await again.driver.list()}["short"]
        assert short.state == "exited" and short.exit_code == 7
        assert adopted["long"].state == "running"
        assert await output(again, "short") == b"bye\n"
        assert await output(again, "long") == b"started\n"
        # busybox sh as a container's PID 1 ignores SIGTERM; as a plain process it dies.
        assert await again.driver.stop("long", grace=0.5) == (137 if kind == "oci" else 143)


async def test_open_driver_auto_says_which_and_why(monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime import open_driver

    require_root()
    runc = require_binary("runc")
    state_dir = new_state_dir()
    try:
        driver, why = open_driver("auto", state_dir=state_dir, prefix="tauto")
        await driver.close()
        assert driver.name == "oci" and why.startswith("oci: runc ") and "PATH" in why
        monkeypatch.setenv("PATH", str(state_dir))  # no runtime to be found
        driver, why = open_driver("auto", state_dir=state_dir, prefix="tauto")
        await driver.close()
        assert driver.name == "process" and "no OCI runtime" in why
        with pytest.raises(RuntimeNotFoundError):
            open_driver("oci", state_dir=state_dir, prefix="tauto")
        driver, why = open_driver(
            "oci", state_dir=state_dir, prefix="tauto", runtime_path=Path(runc)
        )
        await driver.close()
        assert driver.version.startswith("runc ") and "asked for" in why
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


async def test_a_killed_shim_loses_nothing(oci: DriverUnderTest) -> None:
    """The container becomes the agent's child: stop, exit code and cleanup still work."""
    await oci.driver.start(oci.spec("headless", "echo up; sleep 1000"))
    with trio.fail_after(30):
        while await output(oci, "headless") != b"up\n":  # the shim has logged it
            await trio.sleep(0.02)
    info = json.loads((oci.state_dir / "oci/containers/headless/shim.json").read_text())
    os.kill(info["pid"], signal.SIGKILL)
    await trio.sleep(0.2)
    [status] = await oci.driver.list()
    assert status.state == "running"
    assert await oci.driver.stop("headless", grace=0.2) == 137
    assert await output(oci, "headless") == b"up\n"
    await oci.driver.remove("headless")  # runc delete, cgroups: checked by the fixture
