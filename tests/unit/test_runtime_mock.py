"""The mock driver is deterministic and instant under trio's autojump clock."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from runtime import ContainerSpec, MockDriver, StartError


async def test_sleep_uses_trio_time(autojump_clock: trio.testing.MockClock) -> None:
    driver = MockDriver()
    await driver.start(ContainerSpec(id="s", command=("sleep", "3600")))
    before = trio.current_time()
    assert await driver.wait("s") == 0
    assert trio.current_time() - before == pytest.approx(3600)


async def test_crash_and_fail_next_start() -> None:
    driver = MockDriver()
    await driver.start(ContainerSpec(id="c", command=("serve",)))
    driver.crash("c", 139)
    assert await driver.wait("c") == 139
    driver.fail_next_start("image not found")
    with pytest.raises(StartError, match="image not found"):
        await driver.start(ContainerSpec(id="d", command=("serve",)))
    assert [s.id for s in await driver.list()] == ["c"]


async def test_waiters_wake_on_stop() -> None:
    driver = MockDriver()
    await driver.start(ContainerSpec(id="w", command=("serve",)))
    codes: list[int] = []
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(lambda: _append(codes, driver.wait("w")))
        await trio.sleep(0.01)
        assert await driver.stop("w", grace=1) == 143
    assert codes == [143, 143, 143]


async def _append(codes: list[int], awaitable: object) -> None:
    codes.append(await awaitable)  # type: ignore[misc]
