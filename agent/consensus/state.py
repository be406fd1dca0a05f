"""The replicated desired state: a deterministic state machine, plain Python data.

Every agent holds a ``DesiredState``; Raft feeds each one the same committed commands
in the same order, so they all end up equal. Nothing here knows about Raft, threads,
clocks or randomness: ``apply(wire) -> result`` is a pure function of the state and
the command, which is what makes the replicas agree (and what the property tests check).

Commands are frozen dataclasses that validate on construction (bad input raises
``InvalidCommandError`` *before* anything is proposed) and travel as plain dicts
(``to_wire()`` / ``command_from_wire()``: str keys, str/int/bool/None/list/dict values,
msgpack- and JSON-able, never pickled objects of ours). Every command is idempotent:

* it sets values by key and version and never increments a counter the caller reads
  back blindly;
* it carries a ``request_id``; the state remembers the result of the last
  ``DEDUPE_WINDOW`` requests, so proposing the same command twice (a retry after a
  leader change whose outcome was unknown) applies it once and answers the same result.

``apply`` never raises on a committed command: a command that was valid when proposed
but no longer fits (the workload was deleted meanwhile, a newer leader has acted, the
version moved on) yields ``{"ok": False, "error": <code>, "message": ...}``, the same on
every replica. Error codes: ``invalid``, ``not_found``, ``conflict``, ``stale_term``,
``stale_epoch``, ``internal`` (a bug in Hypha; logged loudly, still deterministic).

Reads may come from another thread than the one applying (pysyncobj applies on its
tick thread): every query copies the dict it reads in one C-level call (atomic under
the GIL) and records are frozen, so a reader never sees a half-applied record.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from agent.errors import ConfigError

logger = logging.getLogger("hypha.consensus.state")

WIRE_VERSION = 1
DEDUPE_WINDOW = 20_000
MAX_REPLICAS = 10_000
MAX_BATCH = 10_000
MAX_SPEC_BYTES = 256 * 1024
NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
NODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
DEFAULT_TENANT = "default"


class InvalidCommandError(ConfigError):
    """A command (or a field of it) is malformed; the message names the field."""


# ---------------------------------------------------------------------------
# Records (what the state holds). Frozen, so readers can share them safely.


@dataclass(frozen=True, slots=True)
class WorkloadRecord:
    """A workload as committed: its spec (kept as canonical JSON text) and version."""

    name: str
    spec_json: str
    version: int
    replicas: int
    tenant: str

    @property
    def spec(self) -> dict[str, Any]:
        """A fresh copy of the spec dict (callers may modify it)."""
        value: dict[str, Any] = json.loads(self.spec_json)
        return value

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "spec": self.spec,
            "version": self.version,
            "replicas": self.replicas,
            "tenant": self.tenant,
        }


@dataclass(frozen=True, slots=True)
class PlacementRecord:
    """Replica ``replica_id`` of ``workload`` (at ``spec_version``) runs on ``node``."""

    replica_id: str
    workload: str
    node: str
    spec_version: int
    term: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "replica_id": self.replica_id,
            "workload": self.workload,
            "node": self.node,
            "spec_version": self.spec_version,
            "term": self.term,
        }


@dataclass(frozen=True, slots=True)
class NodeAdminRecord:
    """The operator's say on a node: may it get new work, is it being drained."""

    node: str
    eligible: bool = True
    draining: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "eligible": self.eligible, "draining": self.draining}


@dataclass(frozen=True, slots=True)
class TenantRecord:
    """A tenant's fair share: ``weight`` relative to others, ``cap`` on its replicas."""

    name: str
    weight: int
    cap: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "weight": self.weight, "cap": self.cap}


# ---------------------------------------------------------------------------
# Field checks shared by the commands.


def _fail(op: str, name: str, why: str) -> InvalidCommandError:
    return InvalidCommandError(f"{op}: {name}: {why}")


def _check_name(op: str, key: str, value: object) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise _fail(
            op,
            key,
            f"expected 1-63 lowercase letters, digits or '-' (not at the ends), got {value!r}",
        )
    return value


def _check_node(op: str, key: str, value: object) -> str:
    if not isinstance(value, str) or not NODE_RE.match(value):
        raise _fail(op, key, f"expected a node id (letters, digits, . _ : -), got {value!r}")
    return value


def _check_int(op: str, key: str, value: object, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(op, key, f"expected an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise _fail(op, key, f"must be {bound}, got {value}")
    return value


def _check_opt_int(op: str, key: str, value: object, lo: int, hi: int | None = None) -> int | None:
    return None if value is None else _check_int(op, key, value, lo, hi)


def _check_bool(op: str, key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _fail(op, key, f"expected true or false, got {value!r}")
    return value


def _check_request_id(op: str, value: object) -> str:
    if not isinstance(value, str) or not REQUEST_ID_RE.match(value):
        raise _fail(op, "request_id", f"expected 1-64 characters [A-Za-z0-9._:-], got {value!r}")
    return value


def _new_request_id() -> str:
    return uuid.uuid4().hex


def replica_id(workload: str, index: int) -> str:
    """The id of replica ``index`` of ``workload``: ``"{workload}-{index}"``."""
    return f"{workload}-{index}"


def parse_replica_id(value: str) -> tuple[str, int]:
    """``"web-3" -> ("web", 3)``; raises ``InvalidCommandError`` for anything else."""
    workload, sep, index = value.rpartition("-")
    if not sep or not index.isdigit() or not NAME_RE.match(workload) or str(int(index)) != index:
        raise InvalidCommandError(f"replica_id: expected '<workload>-<index>', got {value!r}")
    return workload, int(index)


def canonical_spec(op: str, spec: object) -> str:
    """Check a workload spec dict and return its canonical JSON text (sorted keys)."""
    if not isinstance(spec, Mapping):
        raise _fail(op, "spec", f"expected a JSON object, got {type(spec).__name__}")
    _check_name(op, "spec.name", spec.get("name"))
    _check_int(op, "spec.replicas", spec.get("replicas"), 0, MAX_REPLICAS)
    tenant = spec.get("tenant", DEFAULT_TENANT)
    _check_name(op, "spec.tenant", tenant)
    try:
        text = json.dumps(spec, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise _fail(op, "spec", f"not JSON-able: {exc}") from None
    if len(text) > MAX_SPEC_BYTES:
        raise _fail(op, "spec", f"{len(text)} bytes of JSON; at most {MAX_SPEC_BYTES} allowed")
    return text


# ---------------------------------------------------------------------------
# Commands.


@dataclass(frozen=True, slots=True)
class Command:
    """Base of every command: ``op`` names it on the wire; ``request_id`` dedupes retries."""

    op: ClassVar[str] = ""

    def to_wire(self) -> dict[str, Any]:
        raise NotImplementedError

    def _wire(self, **fields: Any) -> dict[str, Any]:
        return {"v": WIRE_VERSION, "op": self.op, **fields}


@dataclass(frozen=True, slots=True)
class PutWorkload(Command):
    """Create or update a workload. ``expected_version``: ``None`` writes unconditionally,
    ``0`` only creates (the name must be free), ``n`` only updates version ``n``."""

    op: ClassVar[str] = "put_workload"
    spec: Mapping[str, Any]
    expected_version: int | None = None
    request_id: str = field(default_factory=_new_request_id)

    def __post_init__(self) -> None:
        canonical = canonical_spec(self.op, self.spec)
        object.__setattr__(self, "spec", json.loads(canonical))
        _check_opt_int(self.op, "expected_version", self.expected_version, 0)
        _check_request_id(self.op, self.request_id)

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def to_wire(self) -> dict[str, Any]:
        return self._wire(
            request_id=self.request_id,
            spec=dict(self.spec),
            expected_version=self.expected_version,
        )


@dataclass(frozen=True, slots=True)
class DeleteWorkload(Command):
    """Delete a workload and all its placements (CAS on ``expected_version`` if given)."""

    op: ClassVar[str] = "delete_workload"
    name: str
    expected_version: int | None = None
    request_id: str = field(default_factory=_new_request_id)

    def __post_init__(self) -> None:
        _check_name(self.op, "name", self.name)
        _check_opt_int(self.op, "expected_version", self.expected_version, 1)
        _check_request_id(self.op, self.request_id)

    def to_wire(self) -> dict[str, Any]:
        return self._wire(
            request_id=self.request_id, name=self.name, expected_version=self.expected_version
        )


@dataclass(frozen=True, slots=True)
class ScaleWorkload(Command):
    """Set a workload's replica count (a new version); placements of replicas with an
    index at or above the new count are removed with it."""

    op: ClassVar[str] = "scale_workload"
    name: str
    replicas: int
    expected_version: int | None = None
    request_id: str = field(default_factory=_new_request_id)

    def __post_init__(self) -> None:
        _check_name(self.op, "name", self.name)
        _check_int(self.op, "replicas", self.replicas, 0, MAX_REPLICAS)
        _check_opt_int(self.op, "expected_version", self.expected_version, 1)
        _check_request_id(self.op, self.request_id)

    def to_wire(self) -> dict[str, Any]:
        return self._wire(
            request_id=self.request_id,
            name=self.name,
            replicas=self.replicas,
            expected_version=self.expected_version,
        )


@dataclass(frozen=True, slots=True)
class PlacementEntry:
    """One decision of a placement batch: ``replica_id`` of ``workload`` goes to ``node``."""

    replica_id: str
    node: str
    spec_version: int

    @property
    def workload(self) -> str:
        return parse_replica_id(self.replica_id)[0]

    @property
    def index(self) -> int:
        return parse_replica_id(self.replica_id)[1]

    def to_wire(self) -> list[Any]:
        return [self.replica_id, self.node, self.spec_version]


def _check_entries(op: str, key: str, entries: tuple[PlacementEntry, ...], *, unique: bool) -> None:
    """A batch of (replica, node, spec version) entries: at most ``MAX_BATCH``, each
    well formed, and with ``unique`` no replica twice."""
    if len(entries) > MAX_BATCH:
        raise _fail(op, key, f"at most {MAX_BATCH} per batch")
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, PlacementEntry):
            raise _fail(op, f"{key}[{i}]", "expected a PlacementEntry")
        try:
            parse_replica_id(entry.replica_id)
        except InvalidCommandError as exc:
            raise _fail(op, f"{key}[{i}]", str(exc)) from None
        _check_node(op, f"{key}[{i}].node", entry.node)
        _check_int(op, f"{key}[{i}].spec_version", entry.spec_version, 1)
        if unique and entry.replica_id in seen:
            raise _fail(op, f"{key}[{i}]", f"{entry.replica_id} appears twice")
        seen.add(entry.replica_id)


@dataclass(frozen=True, slots=True)
class SetPlacements(Command):
    """A batch of placement decisions made by the leader in Raft term ``term``.

    Refused whole (``stale_term``) if a newer leader's term has been applied. Each
    entry is applied or rejected on its own (workload gone, replica index out of
    range, spec version no longer current); the result lists both."""

    op: ClassVar[str] = "set_placements"
    term: int
    placements: tuple[PlacementEntry, ...]
    request_id: str = field(default_factory=_new_request_id)

    def __post_init__(self) -> None:
        _check_int(self.op, "term", self.term, 1)
        object.__setattr__(self, "placements", tuple(self.placements))
        _check_entries(self.op, "placements", self.placements, unique=True)
        _check_request_id(self.op, self.request_id)

    def to_wire(self) -> dict[str, Any]:
        return self._wire(
            request_id=self.request_id,
            term=self.term,
            placements=[p.to_wire() for p in self.placements],
        )


@dataclass(frozen=True, slots=True)
class RemovePlacements(Command):
    """Forget the placements of these replicas (the leader moved or retired them)."""

    op: ClassVar[str] = "remove_placements"
    term: int
    replica_ids: tuple[str, ...]
    request_id: str = field(default_factory=_new_request_id)

    def __post_init__(self) -> None:
        _check_int(self.op, "term", self.term, 1)
        object.__setattr__(self, "replica_ids", tuple(self.replica_ids))
        if len(self.replica_ids) > MAX_BATCH:
            raise _fail(self.op, "replica_ids", f"at most {MAX_BATCH} per batch")
        for i, rid in enumerate(self.replica_ids):
            try:
                parse_replica_id(rid)
            except InvalidCommandError as exc:
                raise _fail(self.op, f"replica_ids[{i}]", str(exc)) from None
        _check_request_id(self.op, self.request_id)

    def to_wire(self) -> dict[str, Any]:
        return self._wire(
            request_id=self.request_id, term=self.term, replica_ids=list(self.replica_ids)
        )


@dataclass(frozen=True, slots=True)
class MarkCompleted(Command):
    """These replicas ran to completion (a batch job's exit 0) where they are placed.

    The fact outlives the node that reported it: a finished replica is never placed
    again, even once gossip has forgotten its dead node. Each entry names the node and
    spec version it completed at; an entry that no longer matches the placement (moved,
    updated, removed) is rejected on its own."""

    op: ClassVar[str] = "mark_completed"
    term: int
    replicas: tuple[PlacementEntry, ...]
    request_id: str = field(default_factory=_new_request_id)

    def __post_init__(self) -> None:
        _check_int(self.op, "term", self.term, 1)
        object.__setattr__(self, "replicas", tuple(self.replicas))
        _check_entries(self.op, "replicas", self.replicas, unique=False)
        _check_request_id(self.op, self.request_id)

    def to_wire(self) -> dict[str, Any]:
        return self._wire(
            request_id=self.request_id,
            term=self.term,
            replicas=[p.to_wire() for p in self.replicas],
        )


@dataclass(frozen=True, slots=True)
class SetNodeAdmin(Command):
    """Set a node's admin state; a field left ``None`` keeps its current value."""

    op: ClassVar[str] = "set_node_admin"
    node: str
    eligible: bool | None = None
    draining: bool | None = None
    request_id: str = field(default_factory=_new_request_id)

    def __post_init__(self) -> None:
        _check_node(self.op, "node", self.node)
        if self.eligible is not None:
            _check_bool(self.op, "eligible", self.eligible)
        if self.draining is not None:
            _check_bool(self.op, "draining", self.draining)
        if self.eligible is None and self.draining is None:
            raise _fail(self.op, "eligible/draining", "give at least one of them")
        _check_request_id(self.op, self.request_id)

    def to_wire(self) -> dict[str, Any]:
        return self._wire(
            request_id=self.request_id,
            node=self.node,
            eligible=self.eligible,
            draining=self.draining,
        )


@dataclass(frozen=True, slots=True)
class SetCredits(Command):
    """The credit ledger for ``epoch``: replaces every balance. Epochs only go forward."""

    op: ClassVar[str] = "set_credits"
    term: int
    epoch: int
    balances: Mapping[str, int]
    request_id: str = field(default_factory=_new_request_id)

    def __post_init__(self) -> None:
        _check_int(self.op, "term", self.term, 1)
        _check_int(self.op, "epoch", self.epoch, 1)
        if not isinstance(self.balances, Mapping):
            raise _fail(self.op, "balances", "expected a mapping node -> integer")
        clean: dict[str, int] = {}
        for node, value in self.balances.items():
            _check_node(self.op, "balances key", node)
            clean[node] = _check_int(self.op, f"balances[{node}]", value, -(2**62), 2**62)
        object.__setattr__(self, "balances", dict(sorted(clean.items())))
        _check_request_id(self.op, self.request_id)

    def to_wire(self) -> dict[str, Any]:
        return self._wire(
            request_id=self.request_id,
            term=self.term,
            epoch=self.epoch,
            balances=dict(self.balances),
        )


@dataclass(frozen=True, slots=True)
class PutTenant(Command):
    """Create or replace a tenant: ``weight`` (1-10000) relative to other tenants, ``cap``
    the most replicas it may have placed (``None``: no cap)."""

    op: ClassVar[str] = "put_tenant"
    name: str
    weight: int = 100
    cap: int | None = None
    request_id: str = field(default_factory=_new_request_id)

    def __post_init__(self) -> None:
        _check_name(self.op, "name", self.name)
        _check_int(self.op, "weight", self.weight, 1, 10_000)
        _check_opt_int(self.op, "cap", self.cap, 0)
        _check_request_id(self.op, self.request_id)

    def to_wire(self) -> dict[str, Any]:
        return self._wire(
            request_id=self.request_id, name=self.name, weight=self.weight, cap=self.cap
        )


@dataclass(frozen=True, slots=True)
class DeleteTenant(Command):
    """Forget a tenant (its workloads keep running under the default share)."""

    op: ClassVar[str] = "delete_tenant"
    name: str
    request_id: str = field(default_factory=_new_request_id)

    def __post_init__(self) -> None:
        _check_name(self.op, "name", self.name)
        _check_request_id(self.op, self.request_id)

    def to_wire(self) -> dict[str, Any]:
        return self._wire(request_id=self.request_id, name=self.name)


@dataclass(frozen=True, slots=True)
class MarkTerm(Command):
    """Written by each new leader before it acts: from here on, commands tagged with an
    older term (a deposed leader's placements) are refused as ``stale_term``."""

    op: ClassVar[str] = "mark_term"
    term: int
    leader: str = ""
    request_id: str = field(default_factory=_new_request_id)

    def __post_init__(self) -> None:
        _check_int(self.op, "term", self.term, 1)
        if not isinstance(self.leader, str) or len(self.leader) > 255:
            raise _fail(self.op, "leader", "expected an address of at most 255 characters")
        _check_request_id(self.op, self.request_id)

    def to_wire(self) -> dict[str, Any]:
        return self._wire(request_id=self.request_id, term=self.term, leader=self.leader)


COMMANDS: dict[str, type[Command]] = {
    cls.op: cls
    for cls in (
        PutWorkload,
        DeleteWorkload,
        ScaleWorkload,
        SetPlacements,
        RemovePlacements,
        MarkCompleted,
        SetNodeAdmin,
        SetCredits,
        PutTenant,
        DeleteTenant,
        MarkTerm,
    )
}


def command_from_wire(wire: object) -> Command:
    """Rebuild (and so re-validate) a command from its wire dict."""
    if not isinstance(wire, Mapping):
        raise InvalidCommandError(f"command: expected a mapping, got {type(wire).__name__}")
    if wire.get("v") != WIRE_VERSION:
        raise InvalidCommandError(f"command: unsupported wire version {wire.get('v')!r}")
    op = wire.get("op")
    cls = COMMANDS.get(op) if isinstance(op, str) else None
    if cls is None:
        raise InvalidCommandError(f"command: unknown op {op!r}")
    fields = {k: v for k, v in wire.items() if k not in ("v", "op")}
    if cls is SetPlacements or cls is MarkCompleted:
        key = "placements" if cls is SetPlacements else "replicas"
        raw = fields.get(key)
        if not isinstance(raw, list | tuple):
            raise InvalidCommandError(f"{op}: {key}: expected a list")
        entries = []
        for i, item in enumerate(raw):
            if not isinstance(item, list | tuple) or len(item) != 3:
                raise InvalidCommandError(
                    f"{op}: {key}[{i}]: expected [replica_id, node, spec_version]"
                )
            entries.append(PlacementEntry(*item))
        fields[key] = tuple(entries)
    if cls is RemovePlacements and isinstance(fields.get("replica_ids"), list):
        fields["replica_ids"] = tuple(fields["replica_ids"])
    try:
        return cls(**fields)
    except TypeError as exc:
        raise InvalidCommandError(f"{op}: {exc}") from None


# Convenience for callers holding a dataclass instance.
def to_wire(command: Command | Mapping[str, Any]) -> dict[str, Any]:
    """The wire dict of ``command`` (validated; a dict is re-validated through the codec)."""
    if isinstance(command, Command):
        return command.to_wire()
    return command_from_wire(command).to_wire()


# ---------------------------------------------------------------------------
# The state machine.


def _ok(**fields: Any) -> dict[str, Any]:
    return {"ok": True, **fields}


def _err(code: str, message: str, **fields: Any) -> dict[str, Any]:
    return {"ok": False, "error": code, "message": message, **fields}


class DesiredState:
    """The cluster's desired state. Picklable plain data; ``apply`` is deterministic.

    ``revision`` counts the commands that changed something; ``term`` is the newest
    leader term applied (``MarkTerm`` or a term-tagged command)."""

    def __init__(self) -> None:
        self.revision = 0
        self.term = 0
        self.leader = ""
        self.credit_epoch = 0
        self._workloads: dict[str, WorkloadRecord] = {}
        self._placements: dict[str, PlacementRecord] = {}
        self._node_admin: dict[str, NodeAdminRecord] = {}
        self._credits: dict[str, int] = {}
        self._tenants: dict[str, TenantRecord] = {}
        self._results: dict[str, dict[str, Any]] = {}
        self._completed: dict[str, tuple[str, int]] = {}  # replica -> (node, spec_version)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A snapshot written before a field existed restores without it.
        self.__dict__.update(state)
        self.__dict__.setdefault("_completed", {})

    # -- queries ------------------------------------------------------------

    def workloads(self) -> list[WorkloadRecord]:
        return sorted(list(self._workloads.values()), key=lambda w: w.name)

    def workload(self, name: str) -> WorkloadRecord | None:
        return self._workloads.get(name)

    def placements(self) -> list[PlacementRecord]:
        return sorted(list(self._placements.values()), key=lambda p: p.replica_id)

    def placement(self, replica_id: str) -> PlacementRecord | None:
        return self._placements.get(replica_id)

    def completed(self, replica_id: str) -> bool:
        """Whether the replica ran to completion where it is placed now (``MarkCompleted``)."""
        p = self._placements.get(replica_id)
        return p is not None and self._completed.get(replica_id) == (p.node, p.spec_version)

    def placements_for(self, node: str) -> list[PlacementRecord]:
        return [p for p in self.placements() if p.node == node]

    def node_admin(self, node: str) -> NodeAdminRecord:
        return self._node_admin.get(node) or NodeAdminRecord(node)

    def node_admins(self) -> list[NodeAdminRecord]:
        return sorted(list(self._node_admin.values()), key=lambda n: n.node)

    def credits(self) -> dict[str, int]:
        return dict(self._credits)

    def tenants(self) -> list[TenantRecord]:
        return sorted(list(self._tenants.values()), key=lambda t: t.name)

    def tenant(self, name: str) -> TenantRecord | None:
        return self._tenants.get(name)

    def result_of(self, request_id: str) -> dict[str, Any] | None:
        """The result a request got when it was applied, if it is still remembered."""
        found = self._results.get(request_id)
        return dict(found) if found is not None else None

    def fingerprint(self) -> dict[str, Any]:
        """Everything replicated, as plain sorted data: equal on replicas that agree."""
        return {
            "revision": self.revision,
            "term": self.term,
            "credit_epoch": self.credit_epoch,
            "workloads": [w.to_dict() for w in self.workloads()],
            "placements": [p.to_dict() for p in self.placements()],
            "completed": sorted(r for r in self._completed if self.completed(r)),
            "node_admin": [n.to_dict() for n in self.node_admins()],
            "credits": dict(sorted(self._credits.items())),
            "tenants": [t.to_dict() for t in self.tenants()],
            "results": sorted(self._results),
        }

    # -- the one entry point that changes anything --------------------------

    def apply(self, wire: Mapping[str, Any]) -> dict[str, Any]:
        """Apply one committed command; never raises. Returns ``{"ok": ..., ...}``."""
        request_id = wire.get("request_id") if isinstance(wire, Mapping) else None
        if isinstance(request_id, str) and request_id in self._results:
            return dict(self._results[request_id], duplicate=True)
        try:
            command = command_from_wire(wire)
        except InvalidCommandError as exc:
            result = _err("invalid", str(exc))
        else:
            try:
                result = self._dispatch(command)
            except Exception as exc:  # a bug of ours: say so loudly, stay deterministic
                logger.exception("apply failed op=%s", getattr(command, "op", "?"))
                result = _err("internal", f"{type(exc).__name__}: {exc}")
        if isinstance(request_id, str) and REQUEST_ID_RE.match(request_id):
            self._remember(request_id, result)
        return dict(result)

    def _remember(self, request_id: str, result: dict[str, Any]) -> None:
        self._results[request_id] = result
        while len(self._results) > DEDUPE_WINDOW:
            del self._results[next(iter(self._results))]

    def _dispatch(self, command: Command) -> dict[str, Any]:
        handler = getattr(self, "_apply_" + command.op)
        result: dict[str, Any] = handler(command)
        if result.get("ok") and result.get("changed", True):
            self.revision += 1
        result.setdefault("revision", self.revision)
        return result

    def _check_term(self, term: int) -> dict[str, Any] | None:
        if term < self.term:
            return _err("stale_term", f"term {term} is older than the current term {self.term}")
        self.term = term
        return None

    # -- handlers -----------------------------------------------------------

    def _apply_mark_term(self, c: MarkTerm) -> dict[str, Any]:
        if c.term < self.term:
            return _err("stale_term", f"term {c.term} is older than the current term {self.term}")
        self.term = c.term
        self.leader = c.leader
        return _ok(term=c.term)

    def _apply_put_workload(self, c: PutWorkload) -> dict[str, Any]:
        current = self._workloads.get(c.name)
        have = current.version if current else 0
        if c.expected_version is not None and c.expected_version != have:
            return _err(
                "conflict",
                f"workload {c.name} is at version {have}, not {c.expected_version}",
                version=have,
            )
        spec_json = canonical_spec(c.op, c.spec)
        if current is not None and current.spec_json == spec_json:
            return _ok(name=c.name, version=have, changed=False)
        record = WorkloadRecord(
            name=c.name,
            spec_json=spec_json,
            version=have + 1,
            replicas=int(c.spec["replicas"]),
            tenant=str(c.spec.get("tenant", DEFAULT_TENANT)),
        )
        self._workloads[c.name] = record
        self._drop_excess(c.name, record.replicas)
        return _ok(name=c.name, version=record.version)

    def _apply_delete_workload(self, c: DeleteWorkload) -> dict[str, Any]:
        current = self._workloads.get(c.name)
        if current is None:
            return _err("not_found", f"workload {c.name} does not exist")
        if c.expected_version is not None and c.expected_version != current.version:
            return _err(
                "conflict",
                f"workload {c.name} is at version {current.version}, not {c.expected_version}",
                version=current.version,
            )
        del self._workloads[c.name]
        removed = self._drop_excess(c.name, 0)
        return _ok(name=c.name, removed_placements=removed)

    def _apply_scale_workload(self, c: ScaleWorkload) -> dict[str, Any]:
        current = self._workloads.get(c.name)
        if current is None:
            return _err("not_found", f"workload {c.name} does not exist")
        if c.expected_version is not None and c.expected_version != current.version:
            return _err(
                "conflict",
                f"workload {c.name} is at version {current.version}, not {c.expected_version}",
                version=current.version,
            )
        if current.replicas == c.replicas:
            return _ok(name=c.name, version=current.version, changed=False)
        spec = current.spec
        spec["replicas"] = c.replicas
        record = WorkloadRecord(
            name=c.name,
            spec_json=canonical_spec(c.op, spec),
            version=current.version + 1,
            replicas=c.replicas,
            tenant=current.tenant,
        )
        self._workloads[c.name] = record
        removed = self._drop_excess(c.name, c.replicas)
        return _ok(name=c.name, version=record.version, removed_placements=removed)

    def _drop_excess(self, workload: str, keep: int) -> int:
        """Remove placements of ``workload`` whose replica index is ``>= keep``."""
        doomed = [
            rid
            for rid, p in self._placements.items()
            if p.workload == workload and parse_replica_id(rid)[1] >= keep
        ]
        for rid in doomed:
            del self._placements[rid]
            self._completed.pop(rid, None)
        return len(doomed)

    def _apply_set_placements(self, c: SetPlacements) -> dict[str, Any]:
        stale = self._check_term(c.term)
        if stale:
            return stale
        applied: list[str] = []
        rejected: dict[str, str] = {}
        for entry in c.placements:
            workload, index = parse_replica_id(entry.replica_id)
            record = self._workloads.get(workload)
            if record is None:
                rejected[entry.replica_id] = "not_found"
            elif index >= record.replicas:
                rejected[entry.replica_id] = "out_of_range"
            elif entry.spec_version != record.version:
                rejected[entry.replica_id] = "stale_version"
            else:
                self._placements[entry.replica_id] = PlacementRecord(
                    entry.replica_id, workload, entry.node, entry.spec_version, c.term
                )
                self._completed.pop(entry.replica_id, None)
                applied.append(entry.replica_id)
        return _ok(applied=applied, rejected=rejected, changed=bool(applied))

    def _apply_mark_completed(self, c: MarkCompleted) -> dict[str, Any]:
        stale = self._check_term(c.term)
        if stale:
            return stale
        applied: list[str] = []
        rejected: dict[str, str] = {}
        for entry in c.replicas:
            p = self._placements.get(entry.replica_id)
            if p is None:
                rejected[entry.replica_id] = "not_found"
            elif (p.node, p.spec_version) != (entry.node, entry.spec_version):
                rejected[entry.replica_id] = "moved"
            elif self.completed(entry.replica_id):
                continue
            else:
                self._completed[entry.replica_id] = (entry.node, entry.spec_version)
                applied.append(entry.replica_id)
        return _ok(applied=applied, rejected=rejected, changed=bool(applied))

    def _apply_remove_placements(self, c: RemovePlacements) -> dict[str, Any]:
        stale = self._check_term(c.term)
        if stale:
            return stale
        removed = [rid for rid in c.replica_ids if self._placements.pop(rid, None) is not None]
        for rid in c.replica_ids:
            self._completed.pop(rid, None)
        return _ok(removed=removed, changed=bool(removed))

    def _apply_set_node_admin(self, c: SetNodeAdmin) -> dict[str, Any]:
        current = self.node_admin(c.node)
        record = NodeAdminRecord(
            c.node,
            current.eligible if c.eligible is None else c.eligible,
            current.draining if c.draining is None else c.draining,
        )
        if self._node_admin.get(c.node) == record:
            return _ok(**record.to_dict(), changed=False)
        self._node_admin[c.node] = record
        return _ok(**record.to_dict())

    def _apply_set_credits(self, c: SetCredits) -> dict[str, Any]:
        stale = self._check_term(c.term)
        if stale:
            return stale
        if c.epoch <= self.credit_epoch:
            return _err(
                "stale_epoch", f"epoch {c.epoch} is not after the current epoch {self.credit_epoch}"
            )
        self.credit_epoch = c.epoch
        self._credits = dict(c.balances)
        return _ok(epoch=c.epoch)

    def _apply_put_tenant(self, c: PutTenant) -> dict[str, Any]:
        record = TenantRecord(c.name, c.weight, c.cap)
        if self._tenants.get(c.name) == record:
            return _ok(**record.to_dict(), changed=False)
        self._tenants[c.name] = record
        return _ok(**record.to_dict())

    def _apply_delete_tenant(self, c: DeleteTenant) -> dict[str, Any]:
        if self._tenants.pop(c.name, None) is None:
            return _err("not_found", f"tenant {c.name} does not exist")
        return _ok(name=c.name)


def apply_all(state: DesiredState, commands: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Apply ``commands`` in order (a helper for tests and for replaying a log)."""
    return [state.apply(c) for c in commands]
