"""Health checks in the node reconciler (mock driver's exec, autojump clock) and the
TCP check against a real socket."""

from __future__ import annotations

import trio
import trio.testing

from agent.health import check_once
from agent.reconciler import Reconciler, ReplicaReport
from agent.spec import HealthCheck
from runtime import MockDriver, MockHost
from tests.unit.test_reconciler import Harness, replica


async def until(h: Harness, condition, limit: float = 30.0) -> float:  # type: ignore[no-untyped-def]
    """Advance (mock) time until ``condition()``; return how long it took."""
    start = trio.current_time()
    while not condition():
        assert trio.current_time() - start < limit, h.reports
        await trio.sleep(0.1)
    return trio.current_time() - start


CHECK = {"command": ["probe"], "interval": 1, "timeout": 1, "retries": 2, "start_period": 0}


async def test_healthy_then_unhealthy_is_restarted(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    h = Harness()
    await nursery.start(h.reconciler.run)
    restart = {"policy": "always", "backoff_initial": 1, "backoff_max": 1}
    h.desired = {"api-0": replica("api-0", ["serve"], restart, health=CHECK)}
    await until(h, lambda: "api-0" in h.reports and h.reports["api-0"].state == "running")
    assert h.reports["api-0"].health == "starting"
    await until(h, lambda: h.reports["api-0"].health == "healthy")
    assert h.reports["api-0"].healthy_since is not None

    h.driver.set_exec_result("api-0", 3)  # the check starts failing
    # Two failures in a row: stopped (SIGTERM, 143) and restarted under `always`.
    await until(h, lambda: h.reports["api-0"].restarts == 1)
    await until(h, lambda: h.reports["api-0"].state == "running")
    await until(h, lambda: h.reports["api-0"].health == "healthy")


async def test_unhealthy_with_restart_never_stays_down(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    h = Harness()
    await nursery.start(h.reconciler.run)
    h.desired = {"api-0": replica("api-0", ["serve"], "never", health=CHECK)}
    await until(h, lambda: "api-0" in h.host.containers)
    h.driver.set_exec_result("api-0", None)  # every check times out
    await until(h, lambda: h.reports["api-0"].state == "exited")
    await h.settle(5)
    report = h.reports["api-0"]
    assert report.state == "exited" and report.exit_code == 143
    assert report.health == "unhealthy"
    assert "timed out" in (report.error or "")


async def test_start_period_forgives_early_failures(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    host = MockHost()
    h = Harness(host)
    await nursery.start(h.reconciler.run)
    check = {**CHECK, "start_period": 10}
    h.desired = {"slow-0": replica("slow-0", ["serve"], health=check)}
    await until(h, lambda: "slow-0" in h.host.containers)
    h.driver.set_exec_result("slow-0", 1)
    await h.settle(6)
    assert h.reports["slow-0"].state == "running" and h.reports["slow-0"].health == "starting"
    h.driver.set_exec_result("slow-0", 0)
    await h.settle(2)
    assert h.reports["slow-0"].health == "healthy" and h.reports["slow-0"].restarts == 0


async def test_without_a_check_healthy_since_is_the_start() -> None:
    report = ReplicaReport("a-0", "a", "running", healthy_since=5.0)
    assert report.to_dict()["healthy_since"] == 5.0
    assert Reconciler is not None and MockDriver is not None


async def test_tcp_check_against_a_real_listener() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    port = listener.getsockname()[1]
    check = HealthCheck(tcp_port=port, timeout=2)
    driver = MockDriver()
    assert await check_once(driver, "x", check) is None
    listener.close()
    error = await check_once(driver, "x", check)
    assert error is not None and f"127.0.0.1:{port}" in error


async def test_hand_off_keeps_a_moved_replica_until_its_replacement_runs(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    h = Harness()
    elsewhere_running = {"value": False}
    h.reconciler._keep_running = lambda rid: not elsewhere_running["value"]
    await nursery.start(h.reconciler.run)
    h.desired = {"web-0": replica("web-0", ["serve"])}
    await until(h, lambda: h.reports.get("web-0") and h.reports["web-0"].state == "running")
    h.desired = {}  # the leader moved web-0 to another node
    await h.settle(3)
    assert "web-0" in h.host.containers and h.reports["web-0"].state == "handing-off"
    elsewhere_running["value"] = True  # it runs there now
    await until(h, lambda: "web-0" not in h.host.containers)
    assert "web-0" not in h.reports


async def test_hand_off_gives_up_after_the_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    from agent.reconciler import HANDOFF_TIMEOUT

    h = Harness()
    h.reconciler._keep_running = lambda rid: True  # the replacement never runs
    await nursery.start(h.reconciler.run)
    h.desired = {"web-0": replica("web-0", ["serve"])}
    await until(h, lambda: "web-0" in h.host.containers)
    h.desired = {}
    waited = await until(h, lambda: "web-0" not in h.host.containers, HANDOFF_TIMEOUT + 30)
    assert waited >= HANDOFF_TIMEOUT
