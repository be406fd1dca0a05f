"""Health checks: is a running replica healthy?

A check is a command run inside the container (``driver.exec``; exit 0 is healthy)
or a TCP connect to a port on the node (containers share the host's network). The
node reconciler runs one ``HealthWatch`` per running container of a workload with a
``[health]`` table. States:

* ``starting``: no check has passed yet (failures inside ``start_period`` do not count);
* ``healthy``: the last check passed (``healthy_since`` says since when, wall clock);
* ``unhealthy``: ``retries`` checks failed in a row. The watch then calls its
  ``on_unhealthy`` callback once (the reconciler stops the container, and the restart
  policy decides what happens next) and ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

import runtime
from agent.spec import HealthCheck

log = logging.getLogger("hypha.health")


async def check_once(driver: runtime.Driver, container_id: str, check: HealthCheck) -> str | None:
    """Run ``check`` once; None when it passed, else a one-line reason."""
    if check.command:
        try:
            result = await driver.exec(container_id, check.command, timeout=check.timeout)
        except runtime.DriverError as exc:
            return f"exec failed: {exc}"
        if result.timed_out:
            return f"timed out after {check.timeout:g}s"
        if result.exit_code != 0:
            output = result.output.decode(errors="replace").strip().splitlines()
            tail = f": {output[-1][:120]}" if output else ""
            return f"exit code {result.exit_code}{tail}"
        return None
    assert check.tcp_port is not None
    with trio.move_on_after(check.timeout):
        try:
            stream = await trio.open_tcp_stream(check.tcp_host, check.tcp_port)
        except OSError as exc:
            return f"tcp {check.tcp_host}:{check.tcp_port}: {exc.strerror or exc}"
        await stream.aclose()
        return None
    return f"tcp {check.tcp_host}:{check.tcp_port}: no answer within {check.timeout:g}s"


@dataclass(slots=True)
class HealthWatch:
    """The health of one container, updated by ``run``."""

    replica_id: str
    container_id: str
    started_at: float
    check: HealthCheck
    state: str = "starting"
    failures: int = 0
    last_error: str | None = None
    healthy_since: float | None = None
    checks: int = 0
    cancel_scope: trio.CancelScope | None = None

    async def run(
        self,
        driver: runtime.Driver,
        *,
        on_change: Callable[[], None],
        on_unhealthy: Callable[[HealthWatch], Awaitable[None]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        check = self.check
        while True:
            await trio.sleep(check.interval)
            error = await check_once(driver, self.container_id, check)
            self.checks += 1
            now = clock()
            if error is None:
                changed = self.state != "healthy"
                if changed:
                    self.healthy_since = now
                    log.info("replica healthy", extra={"replica": self.replica_id})
                self.state, self.failures, self.last_error = "healthy", 0, None
                if changed:
                    on_change()
                continue
            self.last_error = error
            if self.state == "starting" and now - self.started_at < check.start_period:
                continue  # still starting up: failures do not count yet
            self.failures += 1
            if self.failures < check.retries:
                continue
            self.state = "unhealthy"
            self.healthy_since = None
            log.warning(
                "replica unhealthy",
                extra={"replica": self.replica_id, "failures": self.failures, "error": error},
            )
            on_change()
            await on_unhealthy(self)
            return

    def describe(self) -> str:
        if self.state == "unhealthy":
            return f"unhealthy: {self.failures} checks failed in a row, last: {self.last_error}"
        if self.last_error:
            return f"last check failed: {self.last_error}"
        return ""


__all__ = ["HealthWatch", "check_once"]
