"""The user's ``WorkloadSpec``: what to run, how much of it, and how to keep it running.

A spec comes from a TOML or JSON file (``hypha run -f web.toml``), from CLI flags,
or from the API as JSON. ``WorkloadSpec.from_dict`` checks every field and raises
``ConfigError`` with the field's dotted name and what is allowed, so a typo never
becomes a silent default. ``to_dict`` gives the canonical JSON-able form that is
replicated through Raft; ``from_dict(to_dict(s)) == s``.

A file looks like this (every table is optional)::

    name = "web"
    image = "/var/lib/hypha/rootfs/busybox"   # rootfs dir or OCI image layout
    command = ["httpd", "-f", "-p", "8080"]
    replicas = 3
    tenant = "default"

    [env]
    GREETING = "hello"

    [resources]
    cpu = "250m"        # or 0.25, or cpu_millicores = 250
    memory = "64Mi"
    pids = 64

    [restart]
    policy = "on-failure"   # always | on-failure | never
    max_attempts = 5

    [placement]
    spread_by = "zone"
    max_skew = 1
    distinct_nodes = false
    priority = 0

    [[constraints]]
    label = "disk"
    op = "=="           # ==, !=, in, not_in, exists, not_exists
    value = "ssd"

    type = "service"    # service | batch | system

    [health]            # a command run inside the container, or a TCP port
    command = ["wget", "-q", "-O", "-", "http://127.0.0.1:8080/"]   # or tcp = 8080
    interval = 10
    timeout = 2
    retries = 3
    start_period = 5

    [update]            # rolling updates when the template changes
    max_parallel = 1
    min_healthy = 10
    healthy_deadline = 120
    auto_revert = true

    [drain]
    max_unavailable = 1
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agent.config import parse_size
from agent.errors import ConfigError

NAME_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,46}[a-z0-9])?")
LABEL_KEY_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_./-]{0,62})?")
ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

RestartMode = Literal["always", "on-failure", "never"]
JobType = Literal["service", "batch", "system"]
ConstraintOp = Literal["==", "!=", "in", "not_in", "exists", "not_exists"]

RESTART_MODES: tuple[str, ...] = ("always", "on-failure", "never")
CONSTRAINT_OPS: tuple[str, ...] = ("==", "!=", "in", "not_in", "exists", "not_exists")
MAX_REPLICAS = 10_000
#: More cores than any one machine has: a bound that keeps cpu a plain, finite number.
MAX_CPU_CORES = 1_000_000
MAX_PIDS = 4_194_304  # the kernel's largest pid_max
DEFAULT_CPU_MILLICORES = 100
DEFAULT_MEMORY_BYTES = 64 * 1024**2


def _fail(key: str, message: str) -> ConfigError:
    return ConfigError(f"{key}: {message}")


def _check_keys(table: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            known = ", ".join(allowed)
            prefix = f"{where}." if where else ""
            raise _fail(f"{prefix}{key}", f"unknown field; known fields here: {known}")


def _as_int(key: str, value: Any, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(key, f"must be a whole number, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise _fail(key, f"must be {bound}, got {value}")
    return value


def _as_seconds(key: str, value: Any, *, minimum: float, maximum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(key, f"must be a number of seconds, got {value!r}")
    if not minimum <= value <= maximum:  # also refuses nan, which compares false
        raise _fail(key, f"must be {minimum:g}..{maximum:g} seconds, got {value!r}")
    return float(value)


def _as_str(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _fail(key, f"must be a string, got {value!r}")
    return value


def _as_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(key, f"must be true or false, got {value!r}")
    return value


def _as_table(key: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(key, f"must be a table (an object), got {value!r}")
    return value


def parse_cpu(value: Any, *, key: str = "resources.cpu") -> int:
    """``"250m"``, ``"0.5"``, ``0.5`` or ``2`` (cores) -> millicores."""
    if isinstance(value, bool):
        raise _fail(key, f"expected cores like 0.5 or millicores like 500m, got {value!r}")
    expected = f"expected cores like 0.5 or millicores like 500m, got {value!r}"
    if isinstance(value, int | float):
        cores: float = value
    elif isinstance(value, str):
        text = value.strip()
        try:
            cores = int(text[:-1]) / 1000 if text.endswith("m") else float(text)
        except (ValueError, OverflowError):
            raise _fail(key, expected) from None
    else:
        raise _fail(key, expected)
    # float() takes "nan", "inf" and "1e400" (inf): refuse them before round() does.
    if not math.isfinite(cores) or cores > MAX_CPU_CORES:
        raise _fail(key, f"must be a finite number of cores up to {MAX_CPU_CORES}, got {value!r}")
    millis = round(cores * 1000)
    if millis <= 0:
        raise _fail(key, f"must be more than 0, got {value!r}")
    return millis


@dataclass(frozen=True, slots=True)
class Resources:
    """What one replica reserves on its node; the scheduler packs by these."""

    cpu_millicores: int = DEFAULT_CPU_MILLICORES
    memory_bytes: int = DEFAULT_MEMORY_BYTES
    pids: int | None = None

    def __post_init__(self) -> None:
        _as_int("resources.cpu_millicores", self.cpu_millicores, minimum=1)
        _as_int("resources.memory_bytes", self.memory_bytes, minimum=1024 * 1024)
        if self.pids is not None:
            _as_int("resources.pids", self.pids, minimum=1, maximum=MAX_PIDS)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Resources:
        _check_keys(data, ("cpu", "cpu_millicores", "memory", "memory_bytes", "pids"), "resources")
        if "cpu" in data and "cpu_millicores" in data:
            raise _fail("resources.cpu", "give cpu or cpu_millicores, not both")
        if "memory" in data and "memory_bytes" in data:
            raise _fail("resources.memory", "give memory or memory_bytes, not both")
        cpu = DEFAULT_CPU_MILLICORES
        if "cpu" in data:
            cpu = parse_cpu(data["cpu"])
        elif "cpu_millicores" in data:
            cpu = _as_int("resources.cpu_millicores", data["cpu_millicores"], minimum=1)
        memory = DEFAULT_MEMORY_BYTES
        for key in ("memory", "memory_bytes"):
            if key in data:
                memory = parse_size(data[key], key=f"resources.{key}")
                if memory < 1024 * 1024:
                    raise _fail(f"resources.{key}", f"must be at least 1Mi, got {data[key]!r}")
        pids = data.get("pids")
        if pids is not None:
            pids = _as_int("resources.pids", pids, minimum=1, maximum=MAX_PIDS)
        return cls(cpu_millicores=cpu, memory_bytes=memory, pids=pids)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cpu_millicores": self.cpu_millicores,
            "memory_bytes": self.memory_bytes,
            "pids": self.pids,
        }


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When a replica that exited is started again: ``always``, ``on-failure`` (a
    non-zero exit, at most ``max_attempts`` times in a row; None is unlimited) or
    ``never``. Restarts back off exponentially from ``backoff_initial`` seconds,
    doubling up to ``backoff_max``."""

    mode: RestartMode = "always"
    max_attempts: int | None = None
    backoff_initial: float = 1.0
    backoff_max: float = 60.0

    def __post_init__(self) -> None:
        if self.mode not in RESTART_MODES:
            raise _fail(
                "restart.policy", f"must be one of {', '.join(RESTART_MODES)}, got {self.mode!r}"
            )
        if self.max_attempts is not None:
            _as_int("restart.max_attempts", self.max_attempts, minimum=0)
            if self.mode == "never":
                raise _fail("restart.max_attempts", "makes no sense with policy = 'never'")
        for key in ("backoff_initial", "backoff_max"):
            value = getattr(self, key)
            _as_seconds(f"restart.{key}", value, minimum=0.001, maximum=86400)
        if self.backoff_max < self.backoff_initial:
            raise _fail("restart.backoff_max", "must be at least restart.backoff_initial")

    @classmethod
    def parse(cls, text: str) -> RestartPolicy:
        """``always``, ``never``, ``on-failure`` or ``on-failure:5`` (a CLI flag)."""
        mode, _, attempts = text.partition(":")
        if mode not in RESTART_MODES:
            raise _fail("restart", f"expected always, on-failure[:N] or never, got {text!r}")
        if attempts:
            if mode != "on-failure":
                raise _fail("restart", f"only on-failure takes a count, got {text!r}")
            try:
                count = int(attempts)
            except ValueError:
                raise _fail(
                    "restart", f"the count after ':' must be a number, got {text!r}"
                ) from None
            return cls(mode="on-failure", max_attempts=count)
        return cls(mode=mode)  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | str) -> RestartPolicy:
        if isinstance(data, str):
            return cls.parse(data)
        _check_keys(data, ("policy", "max_attempts", "backoff_initial", "backoff_max"), "restart")
        mode = _as_str("restart.policy", data.get("policy", "always"))
        if mode not in RESTART_MODES:
            raise _fail(
                "restart.policy", f"must be one of {', '.join(RESTART_MODES)}, got {mode!r}"
            )
        attempts = data.get("max_attempts")
        return cls(
            mode=mode,  # type: ignore[arg-type]
            max_attempts=attempts,
            backoff_initial=data.get("backoff_initial", 1.0),
            backoff_max=data.get("backoff_max", 60.0),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.mode,
            "max_attempts": self.max_attempts,
            "backoff_initial": self.backoff_initial,
            "backoff_max": self.backoff_max,
        }

    def should_restart(self, exit_code: int, restarts_so_far: int) -> bool:
        """Whether a replica that exited with ``exit_code`` is started again."""
        if self.mode == "never":
            return False
        if self.mode == "on-failure":
            if exit_code == 0:
                return False
            return self.max_attempts is None or restarts_so_far < self.max_attempts
        return True

    def backoff(self, restarts_so_far: int) -> float:
        """Seconds to wait before restart number ``restarts_so_far + 1``."""
        return float(min(self.backoff_max, self.backoff_initial * 2 ** min(restarts_so_far, 30)))


@dataclass(frozen=True, slots=True)
class Constraint:
    """A rule on node labels: ``label op value`` (``values`` for in/not_in)."""

    label: str
    op: ConstraintOp = "=="
    values: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not LABEL_KEY_RE.fullmatch(self.label or ""):
            raise _fail("constraints.label", f"not a valid label name: {self.label!r}")
        if self.op not in CONSTRAINT_OPS:
            raise _fail(
                "constraints.op", f"must be one of {', '.join(CONSTRAINT_OPS)}, got {self.op!r}"
            )
        if self.op in ("exists", "not_exists"):
            if self.values:
                raise _fail("constraints.value", f"{self.op} takes no value")
        elif self.op in ("==", "!=") and len(self.values) != 1:
            raise _fail("constraints.value", f"{self.op} needs exactly one value")
        elif self.op in ("in", "not_in") and not self.values:
            raise _fail("constraints.values", f"{self.op} needs a list of values")

    @classmethod
    def parse(cls, text: str) -> Constraint:
        """``zone==a``, ``disk!=hdd``, ``zone in a,b``, ``gpu`` (exists), ``!gpu``."""
        text = text.strip()
        for op in ("==", "!="):
            if op in text:
                label, _, value = text.partition(op)
                return cls(label.strip(), op, (value.strip(),))
        for word, op in ((" not_in ", "not_in"), (" in ", "in")):
            if word in text:
                label, _, rest = text.partition(word)
                values = tuple(v.strip() for v in rest.split(",") if v.strip())
                return cls(label.strip(), op, values)  # type: ignore[arg-type]
        if text.startswith("!"):
            return cls(text[1:].strip(), "not_exists")
        return cls(text, "exists")

    @classmethod
    def from_dict(cls, data: Any, index: int) -> Constraint:
        where = f"constraints[{index}]"
        if isinstance(data, str):
            return cls.parse(data)
        data = _as_table(where, data)
        _check_keys(data, ("label", "op", "value", "values"), where)
        if "label" not in data:
            raise _fail(f"{where}.label", "is required")
        label = _as_str(f"{where}.label", data["label"])
        op = _as_str(f"{where}.op", data.get("op", "=="))
        values: tuple[str, ...] = ()
        if "value" in data and "values" in data:
            raise _fail(f"{where}.value", "give value or values, not both")
        if "value" in data:
            values = (_as_str(f"{where}.value", data["value"]),)
        elif "values" in data:
            raw = data["values"]
            if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
                raise _fail(f"{where}.values", f"must be a list of strings, got {raw!r}")
            values = tuple(raw)
        try:
            return cls(label, op, values)  # type: ignore[arg-type]
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("constraints.", f"{where}.", 1)) from None

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "op": self.op, "values": list(self.values)}

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.label in labels
        value = labels.get(self.label)
        if self.op == "exists":
            return present
        if self.op == "not_exists":
            return not present
        if self.op == "==":
            return value == self.values[0]
        if self.op == "!=":
            return value != self.values[0]
        if self.op == "in":
            return value in self.values
        return value not in self.values


@dataclass(frozen=True, slots=True)
class Placement:
    """How replicas spread: across a node label with a maximum skew, on distinct
    nodes, and with a priority (higher places first)."""

    spread_by: str | None = None
    max_skew: int = 1
    distinct_nodes: bool = False
    priority: int = 0

    def __post_init__(self) -> None:
        if self.spread_by is not None and not LABEL_KEY_RE.fullmatch(self.spread_by):
            raise _fail("placement.spread_by", f"not a valid label name: {self.spread_by!r}")
        _as_int("placement.max_skew", self.max_skew, minimum=1)
        _as_bool("placement.distinct_nodes", self.distinct_nodes)
        _as_int("placement.priority", self.priority, minimum=-1000, maximum=1000)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Placement:
        _check_keys(data, ("spread_by", "max_skew", "distinct_nodes", "priority"), "placement")
        spread = data.get("spread_by")
        if spread is not None:
            spread = _as_str("placement.spread_by", spread)
        return cls(
            spread_by=spread,
            max_skew=data.get("max_skew", 1),
            distinct_nodes=data.get("distinct_nodes", False),
            priority=data.get("priority", 0),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "spread_by": self.spread_by,
            "max_skew": self.max_skew,
            "distinct_nodes": self.distinct_nodes,
            "priority": self.priority,
        }


JOB_TYPES: tuple[str, ...] = ("service", "batch", "system")
#: What a batch job's restart policy is when the file gives none.
BATCH_DEFAULT_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """How a node decides a running replica is healthy: a ``command`` run inside the
    container (exit 0 = healthy), or a TCP connect to ``tcp_port`` on the node (the
    containers share the host's network). Every ``interval`` seconds, each attempt
    limited to ``timeout``; ``retries`` failures in a row make it unhealthy, and an
    unhealthy replica is stopped and restarted under its restart policy. Failures
    within ``start_period`` seconds of the start do not count."""

    command: tuple[str, ...] = ()
    tcp_port: int | None = None
    tcp_host: str = "127.0.0.1"
    interval: float = 10.0
    timeout: float = 2.0
    retries: int = 3
    start_period: float = 0.0

    def __post_init__(self) -> None:
        if bool(self.command) == (self.tcp_port is not None):
            raise _fail("health", "give exactly one of command = [...] or tcp = PORT")
        if not isinstance(self.command, tuple) or not all(
            isinstance(a, str) and a for a in self.command
        ):
            raise _fail("health.command", f"must be a list of strings, got {self.command!r}")
        if self.tcp_port is not None:
            _as_int("health.tcp", self.tcp_port, minimum=1, maximum=65535)
        if not isinstance(self.tcp_host, str) or not self.tcp_host:
            raise _fail("health.host", f"must be a host name or address, got {self.tcp_host!r}")
        _as_seconds("health.interval", self.interval, minimum=0.1, maximum=3600)
        _as_seconds("health.timeout", self.timeout, minimum=0.1, maximum=600)
        _as_int("health.retries", self.retries, minimum=1, maximum=100)
        _as_seconds("health.start_period", self.start_period, minimum=0, maximum=3600)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HealthCheck:
        _check_keys(
            data,
            ("command", "tcp", "host", "interval", "timeout", "retries", "start_period"),
            "health",
        )
        command = data.get("command", ())
        if isinstance(command, str):
            raise _fail(
                "health.command", f'must be a list of strings, e.g. ["sh", "-c", {command!r}]'
            )
        if not isinstance(command, list | tuple):
            raise _fail("health.command", f"must be a list of strings, got {command!r}")
        return cls(
            command=tuple(command),
            tcp_port=data.get("tcp"),
            tcp_host=data.get("host", "127.0.0.1"),
            interval=data.get("interval", 10.0),
            timeout=data.get("timeout", 2.0),
            retries=data.get("retries", 3),
            start_period=data.get("start_period", 0.0),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": list(self.command),
            "tcp": self.tcp_port,
            "host": self.tcp_host,
            "interval": self.interval,
            "timeout": self.timeout,
            "retries": self.retries,
            "start_period": self.start_period,
        }

    def describe(self) -> str:
        what = " ".join(self.command) if self.command else f"tcp {self.tcp_host}:{self.tcp_port}"
        return (
            f"{what} every {self.interval:g}s (timeout {self.timeout:g}s, {self.retries} "
            f"retries, start period {self.start_period:g}s)"
        )


@dataclass(frozen=True, slots=True)
class UpdatePolicy:
    """How a change of the container template rolls out: ``max_parallel`` replicas are
    replaced at a time; the next ones wait until each new replica has been healthy
    (running, and passing its health check if it has one) for ``min_healthy``
    seconds. A new replica that exits, turns unhealthy or is not healthy within
    ``healthy_deadline`` seconds fails the update: it stops, and with ``auto_revert``
    the workload goes back to the last version that rolled out well."""

    max_parallel: int = 1
    min_healthy: float = 5.0
    healthy_deadline: float = 120.0
    auto_revert: bool = False

    def __post_init__(self) -> None:
        _as_int("update.max_parallel", self.max_parallel, minimum=1, maximum=MAX_REPLICAS)
        _as_seconds("update.min_healthy", self.min_healthy, minimum=0, maximum=3600)
        _as_seconds("update.healthy_deadline", self.healthy_deadline, minimum=1, maximum=86400)
        _as_bool("update.auto_revert", self.auto_revert)
        if self.healthy_deadline <= self.min_healthy:
            raise _fail("update.healthy_deadline", "must be more than update.min_healthy")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UpdatePolicy:
        _check_keys(
            data, ("max_parallel", "min_healthy", "healthy_deadline", "auto_revert"), "update"
        )
        return cls(
            max_parallel=data.get("max_parallel", 1),
            min_healthy=data.get("min_healthy", 5.0),
            healthy_deadline=data.get("healthy_deadline", 120.0),
            auto_revert=data.get("auto_revert", False),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_parallel": self.max_parallel,
            "min_healthy": self.min_healthy,
            "healthy_deadline": self.healthy_deadline,
            "auto_revert": self.auto_revert,
        }


@dataclass(frozen=True, slots=True)
class DrainPolicy:
    """How replicas leave a draining node: at most ``max_unavailable`` replicas of the
    workload may be not running at once (moving ones included); a service's old
    replica keeps running until its replacement runs."""

    max_unavailable: int = 1

    def __post_init__(self) -> None:
        _as_int("drain.max_unavailable", self.max_unavailable, minimum=1, maximum=MAX_REPLICAS)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DrainPolicy:
        _check_keys(data, ("max_unavailable",), "drain")
        return cls(max_unavailable=data.get("max_unavailable", 1))

    def to_dict(self) -> dict[str, Any]:
        return {"max_unavailable": self.max_unavailable}


SPEC_FIELDS = (
    "name",
    "image",
    "command",
    "env",
    "cwd",
    "replicas",
    "resources",
    "restart",
    "tenant",
    "constraints",
    "placement",
    "labels",
    "type",
    "stop_grace",
    "health",
    "update",
    "drain",
)


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """One workload as the user asked for it. Immutable; ``replace`` via ``with_replicas``."""

    name: str
    image: str | None = None
    """A rootfs directory or OCI image layout on every node; None runs the command
    on the host (the process driver only)."""
    command: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    replicas: int = 1
    resources: Resources = field(default_factory=Resources)
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    tenant: str = "default"
    constraints: tuple[Constraint, ...] = ()
    placement: Placement = field(default_factory=Placement)
    labels: Mapping[str, str] = field(default_factory=dict)
    type: JobType = "service"
    stop_grace: float = 10.0
    """Seconds between SIGTERM and SIGKILL when a replica is stopped."""
    health: HealthCheck | None = None
    update: UpdatePolicy = field(default_factory=UpdatePolicy)
    drain: DrainPolicy = field(default_factory=DrainPolicy)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_RE.fullmatch(self.name):
            raise _fail(
                "name",
                "must be 1-48 lowercase letters, digits or '-', starting and ending with a "
                f"letter or digit, got {self.name!r}",
            )
        if self.image is not None:
            if not isinstance(self.image, str) or not self.image:
                raise _fail(
                    "image", f"must be a path to a rootfs or OCI layout, got {self.image!r}"
                )
            if not self.image.startswith("/"):
                raise _fail(
                    "image",
                    f"must be an absolute path (the same on every node), got {self.image!r}",
                )
        if not isinstance(self.command, tuple) or not all(isinstance(a, str) for a in self.command):
            raise _fail("command", f"must be a list of strings, got {self.command!r}")
        if not self.command:
            raise _fail("command", 'is required: what to run (e.g. command = ["httpd", "-f"])')
        for key, value in self.env.items():
            if not isinstance(key, str) or not ENV_KEY_RE.fullmatch(key):
                raise _fail(f"env.{key}", "not a valid variable name (letters, digits, '_')")
            if not isinstance(value, str) or "\0" in value:
                raise _fail(f"env.{key}", f"must be a string, got {value!r}")
        if self.cwd is not None and (not isinstance(self.cwd, str) or not self.cwd.startswith("/")):
            raise _fail("cwd", f"must be an absolute path, got {self.cwd!r}")
        _as_int("replicas", self.replicas, minimum=0, maximum=MAX_REPLICAS)
        if not isinstance(self.tenant, str) or not NAME_RE.fullmatch(self.tenant):
            raise _fail(
                "tenant", f"must be 1-48 lowercase letters, digits or '-', got {self.tenant!r}"
            )
        for key, value in self.labels.items():
            if not isinstance(key, str) or not LABEL_KEY_RE.fullmatch(key):
                raise _fail(f"labels.{key}", "not a valid label name")
            if not isinstance(value, str):
                raise _fail(f"labels.{key}", f"must be a string, got {value!r}")
        if self.type not in JOB_TYPES:
            raise _fail("type", f"must be one of {', '.join(JOB_TYPES)}, got {self.type!r}")
        if self.type == "batch" and self.restart.mode == "always":
            raise _fail(
                "restart.policy",
                "a batch job runs to completion: use 'on-failure' (retry up to max_attempts) "
                "or 'never'",
            )
        _as_seconds("stop_grace", self.stop_grace, minimum=0, maximum=3600)

    # -- parsing ---------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any) -> WorkloadSpec:
        """Build and validate a spec from plain data (TOML, JSON or the API)."""
        data = _as_table("spec", data)
        if "workload" in data and isinstance(data["workload"], Mapping):
            if len(data) != 1:
                raise _fail("workload", "put every field under [workload] or none of them")
            data = data["workload"]
        _check_keys(data, SPEC_FIELDS, "")
        if "name" not in data:
            raise _fail("name", "is required")
        name = data["name"]
        image = data.get("image")
        if image is not None:
            image = _as_str("image", image)
        command = data.get("command", ())
        if isinstance(command, str):
            raise _fail("command", f'must be a list of strings, e.g. ["sh", "-c", {command!r}]')
        if not isinstance(command, list | tuple):
            raise _fail("command", f"must be a list of strings, got {command!r}")
        env = dict(_as_table("env", data.get("env", {})))
        labels = dict(_as_table("labels", data.get("labels", {})))
        raw_constraints = data.get("constraints", [])
        if not isinstance(raw_constraints, list | tuple):
            raise _fail("constraints", f"must be a list of tables, got {raw_constraints!r}")
        constraints = tuple(Constraint.from_dict(c, i) for i, c in enumerate(raw_constraints))
        job_type = data.get("type", "service")
        restart_raw = data.get("restart")
        if restart_raw is None:
            # A batch job retries failures a few times by default; a service restarts always.
            restart_raw = (
                {"policy": "on-failure", "max_attempts": BATCH_DEFAULT_ATTEMPTS}
                if job_type == "batch"
                else {}
            )
        if not isinstance(restart_raw, str):
            restart_raw = _as_table("restart", restart_raw)
        health_raw = data.get("health")
        health = None
        if health_raw is not None:
            health = HealthCheck.from_dict(_as_table("health", health_raw))
        return cls(
            name=name,
            image=image,
            command=tuple(command),
            env=env,
            cwd=data.get("cwd"),
            replicas=data.get("replicas", 1),
            resources=Resources.from_dict(_as_table("resources", data.get("resources", {}))),
            restart=RestartPolicy.from_dict(restart_raw),
            tenant=data.get("tenant", "default"),
            constraints=constraints,
            placement=Placement.from_dict(_as_table("placement", data.get("placement", {}))),
            labels=labels,
            type=job_type,
            stop_grace=data.get("stop_grace", 10.0),
            health=health,
            update=UpdatePolicy.from_dict(_as_table("update", data.get("update", {}))),
            drain=DrainPolicy.from_dict(_as_table("drain", data.get("drain", {}))),
        )

    @classmethod
    def load(cls, path: Path) -> WorkloadSpec:
        """Read a ``.toml`` or ``.json`` spec file (others are tried as TOML)."""
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{path}: not UTF-8 text (byte {exc.start} is {raw[exc.start]:#04x}); "
                "a spec file is TOML or JSON in UTF-8"
            ) from None
        return cls.parse_text(text, source=str(path), json_format=path.suffix == ".json")

    @classmethod
    def parse_text(cls, text: str, *, source: str, json_format: bool = False) -> WorkloadSpec:
        if json_format:
            try:
                data = json.loads(text)
            except ValueError as exc:
                raise ConfigError(f"{source}: not valid JSON: {exc}") from exc
        else:
            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON-able form (every field present), as replicated by Raft."""
        return {
            "name": self.name,
            "image": self.image,
            "command": list(self.command),
            "env": dict(self.env),
            "cwd": self.cwd,
            "replicas": self.replicas,
            "resources": self.resources.to_dict(),
            "restart": self.restart.to_dict(),
            "tenant": self.tenant,
            "constraints": [c.to_dict() for c in self.constraints],
            "placement": self.placement.to_dict(),
            "labels": dict(self.labels),
            "type": self.type,
            "stop_grace": self.stop_grace,
            "health": self.health.to_dict() if self.health is not None else None,
            "update": self.update.to_dict(),
            "drain": self.drain.to_dict(),
        }

    def with_replicas(self, replicas: int) -> WorkloadSpec:
        data = self.to_dict()
        data["replicas"] = replicas
        return WorkloadSpec.from_dict(data)

    def replica_ids(self) -> list[str]:
        return [replica_id(self.name, i) for i in range(self.replicas)]


def replica_id(workload: str, index: int) -> str:
    return f"{workload}-{index}"


def split_replica_id(rid: str) -> tuple[str, int]:
    """``"web-3"`` -> ``("web", 3)``; raises ``ConfigError`` for anything else."""
    workload, sep, index = rid.rpartition("-")
    if not sep or not index.isdigit() or not NAME_RE.fullmatch(workload):
        raise ConfigError(f"replica: expected WORKLOAD-INDEX like web-0, got {rid!r}")
    return workload, int(index)


def parse_env_flags(items: Sequence[str]) -> dict[str, str]:
    """``["K=V", ...]`` from repeated ``--env`` flags."""
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--env: expected KEY=VALUE, got {item!r}")
        env[key] = value
    return env
