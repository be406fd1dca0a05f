"""What to run (``ContainerSpec``) and what became of it (``ContainerStatus``).

Both are frozen. A spec validates itself on construction and names the bad field
in a ``SpecError``; ``ContainerSpec.from_dict`` also refuses unknown fields, so a
typo in a workload file never silently becomes a default.
"""

from __future__ import annotations

import math
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from runtime.errors import SpecError

ContainerState = Literal["created", "running", "exited", "unknown"]

# Ids become file names, runc ids and cgroup names: keep them boring.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HOSTNAME_RE = re.compile(r"^(?=.{1,63}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?$")
_LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,127}$")

#: Limits beyond these are typos, not wishes.
MIN_MEMORY_BYTES = 4 * 1024 * 1024
MAX_MEMORY_BYTES = 1 << 50  # 1 PiB
MAX_CPU_MILLICORES = 1024 * 1000  # 1024 cores
MAX_PIDS = 4_194_304  # the kernel's pid_max ceiling
MAX_ID = 2**31 - 1


def check_id(value: object, field_name: str = "id") -> str:
    """Return ``value`` if it is a safe container id, else raise ``SpecError``."""
    if not isinstance(value, str):
        raise SpecError(field_name, f"must be a string, not {type(value).__name__}")
    if not _ID_RE.match(value) or ".." in value:
        raise SpecError(
            field_name,
            f"{value!r} is not a safe name: 1-63 characters of letters, digits, '_', '.', '-',"
            " starting with a letter or digit, without '..'",
        )
    return value


def _check_str(field_name: str, value: object, *, allow_empty: bool = True) -> str:
    if not isinstance(value, str):
        raise SpecError(field_name, f"must be a string, not {type(value).__name__}")
    if "\0" in value:
        raise SpecError(field_name, "must not contain a NUL byte")
    if not allow_empty and not value:
        raise SpecError(field_name, "must not be empty")
    return value


def _check_limit(field_name: str, value: object, low: int, high: int, unit: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(field_name, f"must be an integer or null, not {type(value).__name__}")
    if not low <= value <= high:
        raise SpecError(field_name, f"{value} is out of range: {low}..{high} {unit}")
    return value


def _freeze_str_map(field_name: str, value: object, key_re: re.Pattern[str]) -> Mapping[str, str]:
    if not isinstance(value, Mapping):
        raise SpecError(field_name, f"must be a mapping of strings, not {type(value).__name__}")
    out: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key_re.match(key):
            raise SpecError(f"{field_name}.{key}", f"{key!r} is not a valid name")
        out[key] = _check_str(f"{field_name}.{key}", item)
    return types.MappingProxyType(out)


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """One container to run.

    ``image`` is an absolute path to a root filesystem directory or an OCI image
    layout (``oci-layout`` + ``index.json``); it may be None only for the process
    driver, which runs ``command`` on the host. ``cwd`` is inside the container
    (on the host for the process driver). ``user`` is ``(uid, gid)``; None means
    root in a container and the agent's own user for the process driver. Limits
    are None for "no limit".
    """

    id: str
    command: tuple[str, ...]
    image: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str = "/"
    user: tuple[int, int] | None = None
    hostname: str | None = None
    writable_root: bool = False
    cpu_millicores: int | None = None
    memory_bytes: int | None = None
    pids_limit: int | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_id(self.id)
        command = self.command
        if isinstance(command, str) or not isinstance(command, tuple | list):
            raise SpecError("command", "must be a list of strings (argv), not a single string")
        if not command:
            raise SpecError("command", "must not be empty")
        for index, arg in enumerate(command):
            _check_str(f"command[{index}]", arg, allow_empty=index > 0)
        object.__setattr__(self, "command", tuple(command))
        if self.image is not None:
            image = self.image
            if isinstance(image, str):
                image = Path(image)
            if not isinstance(image, Path):
                raise SpecError("image", f"must be a path, not {type(image).__name__}")
            _check_str("image", str(image))
            if not image.is_absolute():
                raise SpecError("image", f"{str(image)!r} is relative: give an absolute path")
            object.__setattr__(self, "image", image)
        object.__setattr__(self, "env", _freeze_str_map("env", self.env, _ENV_NAME_RE))
        cwd = _check_str("cwd", self.cwd, allow_empty=False)
        if not PurePosixPath(cwd).is_absolute():
            raise SpecError("cwd", f"{cwd!r} is relative: give an absolute path")
        if self.user is not None:
            user = self.user
            if not isinstance(user, tuple | list) or len(user) != 2:
                raise SpecError("user", "must be a pair (uid, gid)")
            for name, part in zip(("uid", "gid"), user, strict=True):
                if isinstance(part, bool) or not isinstance(part, int) or not 0 <= part <= MAX_ID:
                    raise SpecError(f"user.{name}", f"{part!r} is not an id in 0..{MAX_ID}")
            object.__setattr__(self, "user", (int(user[0]), int(user[1])))
        if self.hostname is not None:
            _check_str("hostname", self.hostname)
            if not _HOSTNAME_RE.match(self.hostname):
                raise SpecError("hostname", f"{self.hostname!r} is not a valid host name")
        if not isinstance(self.writable_root, bool):
            raise SpecError("writable_root", "must be true or false")
        _check_limit("cpu_millicores", self.cpu_millicores, 1, MAX_CPU_MILLICORES, "millicores")
        _check_limit("memory_bytes", self.memory_bytes, MIN_MEMORY_BYTES, MAX_MEMORY_BYTES, "bytes")
        _check_limit("pids_limit", self.pids_limit, 1, MAX_PIDS, "processes")
        object.__setattr__(self, "labels", _freeze_str_map("labels", self.labels, _LABEL_KEY_RE))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict that ``from_dict`` turns back into an equal spec."""
        return {
            "id": self.id,
            "command": list(self.command),
            "image": None if self.image is None else str(self.image),
            "env": dict(self.env),
            "cwd": self.cwd,
            "user": None if self.user is None else list(self.user),
            "hostname": self.hostname,
            "writable_root": self.writable_root,
            "cpu_millicores": self.cpu_millicores,
            "memory_bytes": self.memory_bytes,
            "pids_limit": self.pids_limit,
            "labels": dict(self.labels),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ContainerSpec:
        """Build a spec from a JSON-like mapping; unknown fields are refused by name."""
        if not isinstance(data, Mapping):
            raise SpecError("spec", f"must be a mapping, not {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise SpecError(
                    str(key), f"unknown field; known fields: {', '.join(sorted(known))}"
                )
        for required in ("id", "command"):
            if required not in data:
                raise SpecError(required, "is required")
        kwargs = dict(data)
        if isinstance(kwargs.get("command"), list):
            kwargs["command"] = tuple(kwargs["command"])
        if isinstance(kwargs.get("user"), list):
            kwargs["user"] = tuple(kwargs["user"])
        if isinstance(kwargs.get("image"), str):
            kwargs["image"] = Path(kwargs["image"])
        for key in ("env", "labels"):
            if kwargs.get(key) is None and key in kwargs:
                kwargs[key] = {}
        return cls(**kwargs)

    def __hash__(self) -> int:
        return hash((self.id, self.command, self.image))


@dataclass(frozen=True, slots=True)
class ContainerStatus:
    """What a driver knows about one container.

    ``exit_code`` is the process's exit status, or 128 + the signal number when a
    signal killed it (137 for SIGKILL, including the OOM killer: see
    ``oom_killed``). Times are wall-clock seconds since the epoch.
    """

    id: str
    state: ContainerState
    pid: int | None = None
    exit_code: int | None = None
    oom_killed: bool = False
    started_at: float | None = None
    finished_at: float | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.finished_at is not None and not math.isfinite(self.finished_at):
            raise ValueError("finished_at must be finite")
