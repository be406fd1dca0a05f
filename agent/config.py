"""The agent's configuration: one frozen dataclass, loaded from TOML, overridden by flags.

Every field is documented where it is declared. ``load_config`` refuses unknown keys
and values of the wrong type or out of range with the key's name and what is
allowed, so a typo never silently becomes a default.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

from agent.errors import ConfigError

Driver = Literal["auto", "oci", "process", "mock"]
GossipPreset = Literal["lan", "wan", "local"]
LogFormat = Literal["text", "json"]

DEFAULT_GOSSIP_PORT = 7946
DEFAULT_RAFT_PORT_OFFSET = 1  # Raft listens on the gossip port + 1 unless told otherwise


PREFIX_FILE = "container-prefix"
"""In a data dir: the agent instance's container id prefix (``agent.daemon.container_prefix``)."""


def default_data_dir() -> Path:
    """``/var/lib/hypha`` for root, else ``$XDG_DATA_HOME/hypha`` (``~/.local/share/hypha``)."""
    if os.geteuid() == 0:
        return Path("/var/lib/hypha")
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "hypha"


def default_api_address() -> str:
    """The local agent's API: ``HYPHA_API`` if set, else the socket in the default data dir."""
    return os.environ.get("HYPHA_API") or f"unix:{default_data_dir() / 'api.sock'}"


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtKMGT]i?[bB]?|[bB])?\s*$")
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "ki": 1024,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mi": 1024**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gi": 1024**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ti": 1024**4,
    "tib": 1024**4,
}


MAX_SIZE = 1 << 62
"""4 EiB: sizes are int64 on every wire (msgpack, the kernel's cgroup files)."""


def parse_size(text: Any, *, key: str = "size") -> int:
    """Parse ``"512Mi"``, ``"1GiB"``, ``"2G"`` or a plain byte count into bytes."""
    expected = f"{key}: expected a size like 512Mi or 2GiB, got {text!r}"
    if isinstance(text, bool):
        raise ConfigError(expected)
    if isinstance(text, int):
        if text < 0:
            raise ConfigError(f"{key}: a size cannot be negative, got {text}")
        return _at_most_max_size(text, text, key)
    if not isinstance(text, str):  # a float such as 1.5 (bytes?) or a list
        raise ConfigError(expected + " (a string with a unit, or a whole number of bytes)")
    match = _SIZE_RE.match(text)
    if not match:
        raise ConfigError(expected)
    number, unit = match.groups()
    # Exact arithmetic: float("9" * 400) is inf, and int(inf) raises OverflowError.
    size = int(Fraction(number) * _SIZE_UNITS[(unit or "").lower()])
    return _at_most_max_size(size, text, key)


def _at_most_max_size(size: int, text: object, key: str) -> int:
    if size > MAX_SIZE:
        shown = repr(text) if len(repr(text)) <= 40 else repr(text)[:37] + "..."
        raise ConfigError(f"{key}: at most 4194304Ti (4 EiB), got {shown}")
    return size


def parse_host_port(text: str, *, key: str, default_port: int | None = None) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (or ``HOST`` when a default port is given)."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = text, ""
    if not port_text:
        if default_port is None:
            raise ConfigError(f"{key}: expected HOST:PORT, got {text!r}")
        port = default_port
    else:
        try:
            port = int(port_text)
        except ValueError:
            raise ConfigError(f"{key}: port must be a number, got {text!r}") from None
    if not host:
        raise ConfigError(f"{key}: expected HOST:PORT, got {text!r}")
    if not 0 <= port <= 65535:
        raise ConfigError(f"{key}: port must be 0-65535, got {port}")
    return host, port


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything one agent needs to know. Fields map one to one to TOML keys and flags."""

    name: str = field(default_factory=lambda: os.uname().nodename)
    """This node's name in the cluster; must be unique among live agents."""
    bind: str = f"0.0.0.0:{DEFAULT_GOSSIP_PORT}"
    """Gossip UDP address to listen on (HOST:PORT)."""
    advertise: str | None = None
    """Address other agents use to reach this one; defaults to ``bind`` (must not be 0.0.0.0)."""
    join: tuple[str, ...] = ()
    """Seed addresses (HOST:PORT) to join through; empty means start a new cluster."""
    data_dir: Path = field(default_factory=default_data_dir)
    """Where the Raft journal, snapshots, logs, bundles and the API socket live."""
    driver: Driver = "auto"
    """``auto`` picks ``oci`` when youki, runc or crun is installed, else ``process``."""
    runtime_path: Path | None = None
    """Path of the OCI runtime binary; found on PATH (youki, runc, crun) when unset."""
    secret_file: Path | None = None
    """Cluster secret (mode 0600, from ``hypha keygen``); Raft's password and the first
    gossip key derive from it. Defaults to ``DATA_DIR/secret``."""
    keyring: Path | None = None
    """Gossip keyring file (mode 0600) holding rotated keys; optional."""
    api_socket: Path | None = None
    """The API's Unix socket (mode 0600); defaults to ``DATA_DIR/api.sock``."""
    api_tcp: str | None = None
    """Optional TCP address (HOST:PORT) for the API; needs ``api_token_file``."""
    api_token_file: Path | None = None
    """Bearer token file for the TCP API (mode 0600)."""
    raft_bind: str | None = None
    """Raft TCP address; defaults to the advertised gossip host and port + 1."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """Node labels used by placement constraints, e.g. ``{zone = "a"}``."""
    zone: str | None = None
    """Failure domain for spreading replicas; defaults to the ``zone`` label if any."""
    cpu_millicores: int | None = None
    """Capacity override: CPU in millicores (default: all cores x 1000)."""
    memory_bytes: int | None = None
    """Capacity override: memory in bytes (default: total memory). Accepts sizes like 8Gi."""
    pids: int | None = None
    """Capacity override: process count for all replicas on this node."""
    gossip_preset: GossipPreset = "lan"
    """Timer preset for gossip: ``lan`` (memberlist defaults), ``wan`` or ``local`` (tests)."""
    voters: int = 3
    """Target number of Raft voters the autopilot keeps (3 or 5)."""
    stop_on_exit: bool = False
    """Stop this node's containers when the agent exits (default: leave them running)."""
    log_format: LogFormat = "text"
    """``text`` (key=value lines) or ``json`` (one object per line, for collectors)."""

    def __post_init__(self) -> None:
        if not self.name or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", self.name):
            raise ConfigError(
                f"name: must be 1-63 letters, digits, '.', '_' or '-', got {self.name!r}"
            )
        parse_host_port(self.bind, key="bind")
        if self.advertise is not None:
            host, _ = parse_host_port(self.advertise, key="advertise")
            if host in ("0.0.0.0", "::"):
                raise ConfigError("advertise: must be an address others can reach, not 0.0.0.0")
        for seed in self.join:
            parse_host_port(seed, key="join", default_port=DEFAULT_GOSSIP_PORT)
        if self.api_tcp is not None:
            parse_host_port(self.api_tcp, key="api_tcp")
            if self.api_token_file is None:
                raise ConfigError("api_tcp: a TCP API needs api_token_file (a bearer token)")
        if self.raft_bind is not None:
            parse_host_port(self.raft_bind, key="raft_bind")
        if self.voters not in (1, 3, 5):
            raise ConfigError(f"voters: must be 1, 3 or 5, got {self.voters}")
        for key_name in ("cpu_millicores", "memory_bytes", "pids"):
            value = getattr(self, key_name)
            if value is not None and value <= 0:
                raise ConfigError(f"{key_name}: must be positive, got {value}")

    @property
    def secret_path(self) -> Path:
        return self.secret_file or self.data_dir / "secret"

    @property
    def api_socket_path(self) -> Path:
        return self.api_socket or self.data_dir / "api.sock"

    @property
    def advertise_address(self) -> tuple[str, int]:
        host, port = parse_host_port(self.advertise or self.bind, key="advertise")
        if host in ("0.0.0.0", "::"):
            raise ConfigError("advertise: bind is 0.0.0.0, so set --advertise HOST:PORT")
        return host, port


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(AgentConfig)


def _convert(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the annotation ``hint``; return it converted, or raise."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(key, value, inner[0])
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{key}: must be one of {allowed}, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be true or false, got {value!r}")
        return value
    if hint is int:
        if key == "memory_bytes":
            return parse_size(value, key=key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: must be a whole number, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: must be a string, got {value!r}")
        return value
    if hint is Path:
        if not isinstance(value, str | Path) or not str(value):
            raise ConfigError(f"{key}: must be a path, got {value!r}")
        return Path(value).expanduser()
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: must be a list of strings, got {value!r}")
        return tuple(value)
    if origin in (Mapping, dict) or hint is Mapping:
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise ConfigError(f"{key}: must be a table of string values, got {value!r}")
        return dict(value)
    raise AssertionError(f"config field {key} has an unsupported type {hint!r}")


def config_from_mapping(values: Mapping[str, Any], *, source: str = "config") -> AgentConfig:
    """Build an ``AgentConfig`` from plain values (TOML or flags), refusing unknown keys."""
    hints = _field_types()
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in hints:
            known = ", ".join(sorted(hints))
            raise ConfigError(f"{source}: unknown key {key!r}; known keys: {known}")
        kwargs[key] = _convert(key, value, hints[key])
    return AgentConfig(**kwargs)


def load_config(path: Path | None, overrides: Mapping[str, Any] | None = None) -> AgentConfig:
    """Read a TOML file (if given), then apply flag ``overrides`` (``None`` values are unset)."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from exc
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        agent_table = values.pop("agent", None)
        if agent_table is not None:
            # Accept both a flat file and one with an [agent] table.
            if not isinstance(agent_table, dict) or values:
                raise ConfigError(f"{path}: put every key under [agent] or none of them")
            values = agent_table
    if overrides:
        values.update({k: v for k, v in overrides.items() if v is not None})
    return config_from_mapping(values, source=str(path) if path else "flags")


def replace(config: AgentConfig, **changes: Any) -> AgentConfig:
    """A copy of ``config`` with ``changes`` applied and validated."""
    return dataclasses.replace(config, **changes)
