"""Errors raised by the ``runtime`` library, all rooted in ``DriverError``::

    DriverError
    ├── SpecError               a container spec is invalid (``.field`` names the field)
    ├── ContainerNotFoundError  no container with that id is known to this driver
    ├── ContainerExistsError    the id is already used by a container of this driver
    ├── RuntimeNotFoundError    the driver cannot run here (no OCI runtime, no busybox, ...)
    └── RuntimeFailedError      the OCI runtime or the command refused to run (one clear line)
        └── StartError          a container could not be started

``str(err)`` is always one line meant for a user. The agent translates these into
its own tree (docs/decisions/001-error-roots.md).
"""

from __future__ import annotations


class DriverError(Exception):
    """Root of every error the runtime library raises on purpose."""


class SpecError(DriverError):
    """A container spec is invalid; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ContainerNotFoundError(DriverError):
    """No container with that id is known to this driver."""

    def __init__(self, container_id: str) -> None:
        super().__init__(f"no container {container_id!r}")
        self.container_id = container_id


class ContainerExistsError(DriverError):
    """The id is already used by a container of this driver (running or not removed)."""

    def __init__(self, container_id: str) -> None:
        super().__init__(f"container {container_id!r} already exists")
        self.container_id = container_id


class RuntimeNotFoundError(DriverError):
    """The driver cannot work on this host: a runtime or helper binary is missing."""


class RuntimeFailedError(DriverError):
    """The OCI runtime (or the command itself) refused; the message is the runtime's own."""


class StartError(RuntimeFailedError):
    """A container could not be started (runtime error, executable not found, ...)."""
