"""Drivers that run Hypha's containers: ``oci`` (youki, runc, crun), ``process`` and ``mock``.

This package imports nothing else of Hypha's. Open a driver with ``open_driver``;
every driver implements the ``Driver`` protocol (see ``runtime.driver``), and all
errors are ``DriverError``s (see ``runtime.errors``).
"""

from runtime.driver import Driver, DriverKind, ExecResult, find_oci_runtime, open_driver
from runtime.errors import (
    ContainerExistsError,
    ContainerNotFoundError,
    DriverError,
    RuntimeFailedError,
    RuntimeNotFoundError,
    SpecError,
    StartError,
)
from runtime.mock import MockDriver, MockHost
from runtime.oci import OciDriver
from runtime.process import ProcessDriver
from runtime.rootfs import build_busybox_rootfs
from runtime.spec import ContainerSpec, ContainerState, ContainerStatus

__all__ = [
    "ContainerExistsError",
    "ContainerNotFoundError",
    "ContainerSpec",
    "ContainerState",
    "ContainerStatus",
    "Driver",
    "DriverError",
    "DriverKind",
    "ExecResult",
    "MockDriver",
    "MockHost",
    "OciDriver",
    "ProcessDriver",
    "RuntimeFailedError",
    "RuntimeNotFoundError",
    "SpecError",
    "StartError",
    "build_busybox_rootfs",
    "find_oci_runtime",
    "open_driver",
]
