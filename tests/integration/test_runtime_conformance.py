"""One conformance suite, run against every driver: mock, process and oci (real runc).

Each test runs inside ``no_leaks``: afterwards whatever it left is removed through
the driver, the driver is closed, and the test fails if any container directory,
runtime container, cgroup directory, mount, child process or zombie remains.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from runtime import (
    ContainerExistsError,
    ContainerNotFoundError,
    MockDriver,
    MockHost,
    ProcessDriver,
    StartError,
)
from runtime.rootfs import build_busybox_rootfs
from tests.conftest import require, require_binary, require_root
from tests.integration.runtime_support import (
    BUSYBOX_ROOTFS_CACHE,
    RUNTIME_TEST_ROOT,
    DriverUnderTest,
    no_leaks,
)

KINDS = ["mock", "process", "oci"]


def new_state_dir() -> Path:
    path = RUNTIME_TEST_ROOT / f"hypha-test-runtime-{secrets.token_hex(4)}"
    path.mkdir(mode=0o700)
    return path


def open_dut(
    kind: str, state_dir: Path, prefix: str, host: MockHost | None = None
) -> DriverUnderTest:
    if kind == "mock":
        return DriverUnderTest(kind, MockDriver(host), state_dir, prefix)
    if kind == "process":
        return DriverUnderTest(
            kind, ProcessDriver(state_dir=state_dir, prefix=prefix), state_dir, prefix
        )
    from runtime.oci import OciDriver

    require_root()
    runtime = require_binary("runc")
    dut = DriverUnderTest(
        kind,
        OciDriver(state_dir=state_dir, prefix=prefix, runtime_path=Path(runtime)),
        state_dir,
        prefix,
    )
    dut.runtime = runtime
    dut.rootfs = build_busybox_rootfs(BUSYBOX_ROOTFS_CACHE)
    return dut


@pytest.fixture(params=KINDS)
async def dut(request: pytest.FixtureRequest) -> AsyncIterator[DriverUnderTest]:
    prefix = f"t{secrets.token_hex(3)}"
    async with no_leaks(open_dut(request.param, new_state_dir(), prefix)) as opened:
        yield opened


async def collect(it: AsyncIterator[bytes]) -> bytes:
    out = b""
    async for chunk in it:
        out += chunk
    return out


async def wait_for_output(dut: DriverUnderTest, container_id: str, expected: bytes) -> None:
    """Poll the container's log until it contains ``expected`` (mock: nothing to wait for)."""
    if dut.kind == "mock":
        return
    with trio.fail_after(30):
        while expected not in await collect(dut.driver.logs(container_id)):
            await trio.sleep(0.02)


async def test_exit_code_and_logs(dut: DriverUnderTest) -> None:
    script = "echo hello world" if dut.kind == "mock" else "echo hello world; exit 0"
    status = await dut.driver.start(dut.spec("hello", script, labels={"app": "x"}))
    assert status.id == "hello" and status.state in ("running", "exited")
    assert status.labels == {"app": "x"}
    assert await dut.driver.wait("hello") == 0
    assert await collect(dut.driver.logs("hello")) == b"hello world\n"
    [listed] = await dut.driver.list()
    assert listed.state == "exited" and listed.exit_code == 0 and listed.finished_at is not None
    await dut.driver.remove("hello")
    assert await dut.driver.list() == []


async def test_nonzero_exit_code(dut: DriverUnderTest) -> None:
    await dut.driver.start(dut.spec("three", "exit 3"))
    assert await dut.driver.wait("three") == 3
    await dut.driver.remove("three")


async def test_stop_honours_term(dut: DriverUnderTest) -> None:
    script = "run" if dut.kind == "mock" else "trap 'exit 143' TERM; echo ready; sleep 1000 & wait"
    status = await dut.driver.start(dut.spec("term", script))
    assert status.state == "running" and status.pid
    await wait_for_output(dut, "term", b"ready")  # the shell has set its trap
    assert await dut.driver.stop("term", grace=30) == 143
    [listed] = await dut.driver.list()
    assert listed.state == "exited" and listed.exit_code == 143
    await dut.driver.remove("term")


async def test_stop_escalates_to_kill(dut: DriverUnderTest) -> None:
    script = "ignore-term" if dut.kind == "mock" else "trap '' TERM; echo ready; sleep 1000"
    await dut.driver.start(dut.spec("stubborn", script))
    await wait_for_output(dut, "stubborn", b"ready")
    assert await dut.driver.stop("stubborn", grace=0.3) == 137
    assert await dut.driver.wait("stubborn") == 137
    await dut.driver.remove("stubborn")


async def test_waiters_get_the_code_when_another_task_removes(dut: DriverUnderTest) -> None:
    await dut.driver.start(dut.spec("busy", "run" if dut.kind == "mock" else "sleep 1000"))
    codes: list[int] = []

    async def waiter() -> None:
        codes.append(await dut.driver.wait("busy"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        nursery.start_soon(waiter)
        await trio.sleep(0.1)
        await dut.driver.remove("busy")
    assert len(codes) == 2 and codes[0] == codes[1] and codes[0] in (137, 143)


async def test_stop_unknown_is_none_and_others_raise(dut: DriverUnderTest) -> None:
    assert await dut.driver.stop("nope", grace=1) is None
    with pytest.raises(ContainerNotFoundError):
        await dut.driver.wait("nope")
    with pytest.raises(ContainerNotFoundError):
        await dut.driver.remove("nope")
    with pytest.raises(ContainerNotFoundError):
        await collect(dut.driver.logs("nope"))


async def test_duplicate_id_refused_until_removed(dut: DriverUnderTest) -> None:
    script = "run" if dut.kind == "mock" else "sleep 1000"
    await dut.driver.start(dut.spec("dup", script))
    with pytest.raises(ContainerExistsError):
        await dut.driver.start(dut.spec("dup", script))
    await dut.driver.remove("dup")  # stops it first
    await dut.driver.start(dut.spec("dup", "exit 0" if dut.kind != "mock" else "true"))
    assert await dut.driver.wait("dup") == 0


async def test_list_running_and_exited(dut: DriverUnderTest) -> None:
    await dut.driver.start(dut.spec("b-run", "run" if dut.kind == "mock" else "sleep 1000"))
    await dut.driver.start(dut.spec("a-done", "exit 7"))
    assert await dut.driver.wait("a-done") == 7
    listed = await dut.driver.list()
    assert [s.id for s in listed] == ["a-done", "b-run"]
    assert listed[0].state == "exited" and listed[0].exit_code == 7
    assert listed[1].state == "running" and listed[1].exit_code is None and listed[1].pid


async def test_logs_tail_and_follow(dut: DriverUnderTest) -> None:
    if dut.kind == "mock":
        await dut.driver.start(dut.spec("lines", "echo 1 2 3"))
        assert await collect(dut.driver.logs("lines", tail=1)) == b"1 2 3\n"
        assert await collect(dut.driver.logs("lines", follow=True)) == b"1 2 3\n"
        return
    await dut.driver.start(
        dut.spec("lines", "for i in 1 2 3 4 5; do echo line$i; sleep 0.1; done; echo oops >&2")
    )
    followed = await collect(dut.driver.logs("lines", follow=True))
    assert followed == b"line1\nline2\nline3\nline4\nline5\noops\n"
    assert await dut.driver.wait("lines") == 0
    assert await collect(dut.driver.logs("lines", tail=2)) == b"line5\noops\n"
    assert await collect(dut.driver.logs("lines", tail=0)) == b""


async def test_adopt_after_restart(dut: DriverUnderTest) -> None:
    """A new driver on the same state finds running and exited containers."""
    await dut.driver.start(dut.spec("runner", "run" if dut.kind == "mock" else "sleep 1000"))
    await dut.driver.start(dut.spec("quitter", "exit 5"))
    assert await dut.driver.wait("quitter") == 5
    await dut.driver.close()  # like an agent going away: containers keep running
    host = dut.driver.host if isinstance(dut.driver, MockDriver) else None
    again = open_dut(dut.kind, dut.state_dir, dut.prefix, host)
    dut.driver = again.driver
    adopted = {s.id: s for s in await dut.driver.adopt()}
    assert adopted["quitter"].state == "exited" and adopted["quitter"].exit_code == 5
    assert adopted["runner"].state == "running"
    assert await dut.driver.stop("runner", grace=0.2) in (137, 143)
    assert (await dut.driver.list())[0].state == "exited"


async def test_start_failure_is_one_clear_error(dut: DriverUnderTest) -> None:
    if isinstance(dut.driver, MockDriver):
        dut.driver.fail_next_start("no such thing")
        spec = dut.spec("bad", "true")
    else:
        spec = dut.spec("bad", "true").__class__(
            id="bad", command=("/no/such/binary",), image=dut.rootfs
        )
    with pytest.raises(StartError) as info:
        await dut.driver.start(spec)
    assert "\n" not in str(info.value)
    if dut.kind != "mock":
        assert "/no/such/binary" in str(info.value)
    assert await dut.driver.list() == []


@pytest.mark.parametrize("kind", ["process"])
async def test_env_cwd_and_user(kind: str) -> None:
    require(os.geteuid() == 0, "needs root to switch user")
    dut = open_dut(kind, new_state_dir(), "tenv")
    async with no_leaks(dut):
        spec = dut.spec(
            "env",
            "echo $GREETING; pwd; id -u; id -g",
            env={"GREETING": "hi"},
            cwd="/tmp",
            user=(65534, 65534),
        )
        await dut.driver.start(spec)
        assert await dut.driver.wait("env") == 0
        assert await collect(dut.driver.logs("env")) == b"hi\n/tmp\n65534\n65534\n"


async def test_exec_inside_a_running_container(dut: DriverUnderTest) -> None:
    """Health checks run commands inside the container: exit code, output, timeout."""
    from runtime import RuntimeFailedError

    script = "run" if dut.kind == "mock" else "sleep 1000"
    await dut.driver.start(dut.spec("ex", script, env={"WHO": "inside"}))
    ok = await dut.driver.exec("ex", ("true",), timeout=20)
    assert ok.exit_code == 0 and ok.ok and not ok.timed_out
    bad = await dut.driver.exec("ex", ("false",), timeout=20)
    assert bad.exit_code == 1 and not bad.ok
    if dut.kind != "mock":
        said = await dut.driver.exec("ex", ("sh", "-c", "echo $WHO; exit 4"), timeout=20)
        assert said.exit_code == 4 and said.output == b"inside\n"
        slow = await dut.driver.exec("ex", ("sleep", "30"), timeout=0.5)
        assert slow.timed_out and slow.exit_code is None and not slow.ok
        big = await dut.driver.exec("ex", ("head", "-c", "100000", "/dev/zero"), timeout=20)
        assert big.exit_code == 0 and len(big.output) == 4096
    with pytest.raises(ContainerNotFoundError):
        await dut.driver.exec("nope", ("true",), timeout=5)
    await dut.driver.stop("ex", grace=1)
    with pytest.raises(RuntimeFailedError):
        await dut.driver.exec("ex", ("true",), timeout=5)
    await dut.driver.remove("ex")
