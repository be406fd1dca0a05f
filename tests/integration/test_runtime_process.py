"""Process-driver specifics: log rotation, output left by children, a monitor that dies."""

from __future__ import annotations

import os
import secrets
import signal
from pathlib import Path

import trio

from runtime import ContainerSpec, ProcessDriver
from tests.integration.runtime_support import RUNTIME_TEST_ROOT, DriverUnderTest, no_leaks


def open_process(**kwargs: int) -> DriverUnderTest:
    state_dir = RUNTIME_TEST_ROOT / f"hypha-test-runtime-{secrets.token_hex(4)}"
    state_dir.mkdir(mode=0o700)
    prefix = f"t{secrets.token_hex(3)}"
    driver = ProcessDriver(state_dir=state_dir, prefix=prefix, **kwargs)
    return DriverUnderTest("process", driver, state_dir, prefix)


async def collect(dut: DriverUnderTest, container_id: str, **kwargs: object) -> bytes:
    out = b""
    async for chunk in dut.driver.logs(container_id, **kwargs):  # type: ignore[arg-type]
        out += chunk
    return out


async def test_logs_rotate_by_size_and_tail_spans_files() -> None:
    dut = open_process(log_max_bytes=1024, log_backups=2)
    async with no_leaks(dut):
        # 200 lines of 20 bytes = 4000 bytes: rotated into at most 3 files of <= 1 KiB.
        script = "i=0; while [ $i -lt 200 ]; do printf 'line %014d\\n' $i; i=$((i+1)); done"
        await dut.driver.start(ContainerSpec(id="chatty", command=("sh", "-c", script)))
        assert await dut.driver.wait("chatty") == 0
        directory = dut.state_dir / "process" / "containers" / "chatty"
        logs = sorted(p.name for p in directory.glob("container.log*"))
        assert logs == ["container.log", "container.log.1", "container.log.2"]
        assert all((directory / name).stat().st_size <= 1024 for name in logs)
        everything = await collect(dut, "chatty")
        lines = everything.splitlines()
        assert lines[-1] == b"line 00000000000199"  # the newest survive, the oldest went
        assert len(lines) < 200 and len(everything) <= 3 * 1024
        tail = await collect(dut, "chatty", tail=60)  # more lines than the current file holds
        assert tail.splitlines() == lines[-60:]


async def test_follow_sees_output_across_a_rotation() -> None:
    dut = open_process(log_max_bytes=1024, log_backups=1)
    async with no_leaks(dut):
        script = "for i in $(seq 1 60); do printf 'follow %012d\\n' $i; sleep 0.01; done"
        await dut.driver.start(ContainerSpec(id="f", command=("sh", "-c", script)))
        followed = await collect(dut, "f", follow=True)
        assert followed.splitlines() == [b"follow %012d" % i for i in range(1, 61)]


async def test_exit_code_survives_a_killed_monitor() -> None:
    """If the shim dies, the container becomes the agent's child (child subreaper)."""
    dut = open_process()
    async with no_leaks(dut):
        await dut.driver.start(ContainerSpec(id="orphan", command=("sh", "-c", "sleep 1; exit 4")))
        shim = int((dut.state_dir / "process/containers/orphan/shim.json").read_text()
                   .split('"pid": ')[1].split(",")[0])  # fmt: skip
        os.kill(shim, signal.SIGKILL)
        with trio.fail_after(30):
            assert await dut.driver.wait("orphan") == 4


async def test_stop_and_remove_work_without_the_monitor() -> None:
    dut = open_process()
    async with no_leaks(dut):
        await dut.driver.start(ContainerSpec(id="headless", command=("sleep", "1000")))
        info = (dut.state_dir / "process/containers/headless/shim.json").read_text()
        os.kill(int(info.split('"pid": ')[1].split(",")[0]), signal.SIGKILL)
        await trio.sleep(0.2)
        [status] = await dut.driver.list()
        assert status.state == "running" and status.pid
        assert await dut.driver.stop("headless", grace=5) == 143  # the agent reaped it
        await dut.driver.remove("headless")


async def test_children_left_behind_are_killed() -> None:
    dut = open_process()
    async with no_leaks(dut):
        marker = dut.state_dir / "pid"
        script = f"(setsid sleep 1000 & echo $! > {marker}); sleep 1000 & echo started"
        await dut.driver.start(ContainerSpec(id="leaver", command=("sh", "-c", script)))
        assert await dut.driver.wait("leaver") == 0
        with trio.fail_after(10):
            while marker.exists() and Path(f"/proc/{marker.read_text().strip()}").exists():
                await trio.sleep(0.05)
