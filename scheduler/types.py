"""The scheduler's input and output types: frozen, slotted, validated on construction.

The scheduler imports nothing of Hypha's: the agent builds these from gossip and
Raft, and reads the ``Decision`` / ``Move`` results back. Every number is an
``int`` (millicores, bytes, process counts, credit units) so that results never
depend on floating-point rounding or on the order things are summed in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, get_args

from .errors import InvalidInputError

NodeState = Literal["alive", "suspect", "dead", "draining"]
NODE_STATES: tuple[str, ...] = get_args(NodeState)

ConstraintOp = Literal["eq", "ne", "in", "not_in", "exists", "not_exists"]
CONSTRAINT_OPS: tuple[str, ...] = get_args(ConstraintOp)

#: The label key that falls back to ``NodeInfo.zone`` when a node has no such label.
ZONE_LABEL = "zone"

_EMPTY: Mapping[str, str] = MappingProxyType({})


def _check_int(owner: str, name: str, value: object, *, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"{owner}.{name} must be an int, got {value!r}")
    if value < minimum:
        raise InvalidInputError(f"{owner}.{name} must be >= {minimum}, got {value}")


def _check_str(owner: str, name: str, value: object, *, empty_ok: bool = False) -> None:
    if not isinstance(value, str):
        raise InvalidInputError(f"{owner}.{name} must be a str, got {value!r}")
    if not empty_ok and not value:
        raise InvalidInputError(f"{owner}.{name} must not be empty")


def _frozen_labels(owner: str, labels: object) -> Mapping[str, str]:
    if not isinstance(labels, Mapping):
        raise InvalidInputError(f"{owner}.labels must be a mapping of str to str, got {labels!r}")
    for key, value in labels.items():
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise InvalidInputError(
                f"{owner}.labels must map non-empty str keys to str values, got {key!r}: {value!r}"
            )
    return MappingProxyType(dict(labels)) if labels else _EMPTY


def format_bytes(value: int) -> str:
    """``8589934592`` -> ``"8 GiB"``; ``1610612736`` -> ``"1.5 GiB"``."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(value) >= size:
            text = f"{value / size:.2f}".rstrip("0").rstrip(".")
            return f"{text} {unit}"
    return f"{value} B"


def format_cpu(millicores: int) -> str:
    """``2000`` -> ``"2 cores"``; ``1500`` -> ``"1.5 cores"``; ``250`` -> ``"250m cpu"``."""
    if millicores % 1000 == 0:
        cores = millicores // 1000
        return f"{cores} core" if cores == 1 else f"{cores} cores"
    if millicores > 1000:
        return f"{millicores / 1000:.3f}".rstrip("0") + " cores"
    return f"{millicores}m cpu"


@dataclass(frozen=True, slots=True)
class Resources:
    """An amount of every resource the scheduler knows: cpu, memory, process ids."""

    cpu_millicores: int = 0
    memory_bytes: int = 0
    pids: int = 0

    def __post_init__(self) -> None:
        _check_int("Resources", "cpu_millicores", self.cpu_millicores)
        _check_int("Resources", "memory_bytes", self.memory_bytes)
        _check_int("Resources", "pids", self.pids)

    def __add__(self, other: Resources) -> Resources:
        return Resources(
            self.cpu_millicores + other.cpu_millicores,
            self.memory_bytes + other.memory_bytes,
            self.pids + other.pids,
        )

    def minus(self, other: Resources) -> Resources:
        """Component-wise difference, floored at zero on each resource."""
        return Resources(
            max(0, self.cpu_millicores - other.cpu_millicores),
            max(0, self.memory_bytes - other.memory_bytes),
            max(0, self.pids - other.pids),
        )

    def fits_in(self, other: Resources) -> bool:
        """True when every resource of ``self`` is at most that of ``other``."""
        return (
            self.cpu_millicores <= other.cpu_millicores
            and self.memory_bytes <= other.memory_bytes
            and self.pids <= other.pids
        )

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.cpu_millicores, self.memory_bytes, self.pids)

    def human(self) -> str:
        return (
            f"{format_cpu(self.cpu_millicores)}, {format_bytes(self.memory_bytes)} memory, "
            f"{self.pids} pids"
        )

    def to_dict(self) -> dict[str, int]:
        return {
            "cpu_millicores": self.cpu_millicores,
            "memory_bytes": self.memory_bytes,
            "pids": self.pids,
        }


ZERO = Resources()


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeInfo:
    """One node as the scheduler sees it.

    ``allocated`` is what is reserved on the node and must include the resources
    of the placements on it listed in the snapshot; it is what the fit check uses.
    ``load`` is observed use (it may lag, and may include work Hypha did not
    place); only the credit ledger (``epoch``) reads it. ``credit`` is the
    node's balance from the last ``epoch``. The label ``zone`` falls back to
    ``zone`` when the node has no such label.
    """

    id: str
    capacity: Resources
    allocated: Resources = ZERO
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    zone: str = ""
    state: NodeState = "alive"
    eligible: bool = True
    load: Resources | None = None
    credit: int = 0

    def __post_init__(self) -> None:
        _check_str("NodeInfo", "id", self.id)
        owner = f"NodeInfo({self.id!r})"
        for name in ("capacity", "allocated"):
            if not isinstance(getattr(self, name), Resources):
                raise InvalidInputError(f"{owner}.{name} must be Resources")
        if self.load is not None and not isinstance(self.load, Resources):
            raise InvalidInputError(f"{owner}.load must be Resources or None")
        object.__setattr__(self, "labels", _frozen_labels(owner, self.labels))
        _check_str(owner, "zone", self.zone, empty_ok=True)
        if self.state not in NODE_STATES:
            raise InvalidInputError(
                f"{owner}.state must be one of {', '.join(NODE_STATES)}, got {self.state!r}"
            )
        if not isinstance(self.eligible, bool):
            raise InvalidInputError(f"{owner}.eligible must be a bool")
        _check_int(owner, "credit", self.credit, minimum=-(1 << 62))

    @property
    def free(self) -> Resources:
        return self.capacity.minus(self.allocated)

    def label(self, key: str) -> str | None:
        value = self.labels.get(key)
        if value is None and key == ZONE_LABEL and self.zone:
            return self.zone
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Placement:
    """An existing decision: replica ``replica_id`` of ``workload`` runs on ``node_id``."""

    replica_id: str
    workload: str
    node_id: str
    resources: Resources
    tenant: str = "default"

    def __post_init__(self) -> None:
        _check_str("Placement", "replica_id", self.replica_id)
        owner = f"Placement({self.replica_id!r})"
        _check_str(owner, "workload", self.workload)
        _check_str(owner, "node_id", self.node_id)
        _check_str(owner, "tenant", self.tenant)
        if not isinstance(self.resources, Resources):
            raise InvalidInputError(f"{owner}.resources must be Resources")


_CONSTRAINT_RE = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9_.\-/]+)\s*"
    r"(?:(?P<op>==|=|!=|\s+not\s+in\s+|\s+in\s+)\s*(?P<rest>.*?))?\s*$"
)


@dataclass(frozen=True, slots=True)
class Constraint:
    """A rule on node labels: ``eq``/``ne`` one value, ``in``/``not_in`` a set, ``exists``.

    ``ne`` and ``not_in`` also match nodes without the label (as Kubernetes'
    ``NotIn`` does); ``exists``/``not_exists`` ignore ``values``.
    """

    key: str
    op: ConstraintOp = "eq"
    values: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_str("Constraint", "key", self.key)
        if self.op not in CONSTRAINT_OPS:
            raise InvalidInputError(
                f"Constraint.op must be one of {', '.join(CONSTRAINT_OPS)}, got {self.op!r}"
            )
        if isinstance(self.values, str) or not isinstance(self.values, tuple):
            raise InvalidInputError(
                f"Constraint({self.key!r}).values must be a tuple of str, got {self.values!r}"
            )
        for value in self.values:
            _check_str(f"Constraint({self.key!r})", "values[]", value, empty_ok=True)
        if self.op in ("eq", "ne") and len(self.values) != 1:
            raise InvalidInputError(
                f"Constraint({self.key!r}) with op {self.op!r} needs exactly one value"
            )
        if self.op in ("in", "not_in") and not self.values:
            raise InvalidInputError(
                f"Constraint({self.key!r}) with op {self.op!r} needs at least one value"
            )
        if self.op in ("exists", "not_exists") and self.values:
            raise InvalidInputError(f"Constraint({self.key!r}) with op {self.op!r} takes no values")

    @classmethod
    def parse(cls, text: str) -> Constraint:
        """Parse ``key=value``, ``key!=value``, ``key in (a, b)``, ``key not in (a)``,
        ``key`` (exists) or ``!key`` (does not exist)."""
        match = _CONSTRAINT_RE.match(text) if isinstance(text, str) else None
        if match is None:
            raise InvalidInputError(
                f"constraint {text!r} is not one of: key=value, key!=value, "
                "key in (a, b), key not in (a, b), key, !key"
            )
        key, op, rest = match["key"], match["op"], match["rest"]
        if match["neg"]:
            if op is not None:
                raise InvalidInputError(f"constraint {text!r}: '!' only goes before a bare key")
            return cls(key, "not_exists")
        if op is None:
            return cls(key, "exists")
        op = op.strip()
        if op in ("=", "=="):
            return cls(key, "eq", (rest,))
        if op == "!=":
            return cls(key, "ne", (rest,))
        body = rest.strip()
        if not (body.startswith("(") and body.endswith(")")):
            raise InvalidInputError(f"constraint {text!r}: write the set as (a, b)")
        values = tuple(v.strip() for v in body[1:-1].split(",") if v.strip())
        return cls(key, "in" if op == "in" else "not_in", values)

    def matches(self, node: NodeInfo) -> bool:
        value = node.label(self.key)
        op = self.op
        if op == "eq":
            return value == self.values[0]
        if op == "ne":
            return value != self.values[0]
        if op == "in":
            return value is not None and value in self.values
        if op == "not_in":
            return value is None or value not in self.values
        if op == "exists":
            return value is not None
        return value is None

    def __str__(self) -> str:
        if self.op == "eq":
            return f"{self.key}={self.values[0]}"
        if self.op == "ne":
            return f"{self.key}!={self.values[0]}"
        if self.op in ("in", "not_in"):
            word = "in" if self.op == "in" else "not in"
            return f"{self.key} {word} ({', '.join(self.values)})"
        return self.key if self.op == "exists" else f"!{self.key}"


@dataclass(frozen=True, slots=True, kw_only=True)
class PlacementRequest:
    """One replica to place.

    * ``constraints``: every one must match the node's labels.
    * ``distinct_nodes``: hard anti-affinity, at most one replica of ``workload``
      per node.
    * ``spread_by`` / ``max_skew``: hard topology spread; over the values of that
      label among usable nodes, (replicas in the chosen domain + 1) minus the
      fewest in any domain must stay <= ``max_skew``.
    * ``priority``: higher first within a tenant (fairness decides across tenants).
    """

    replica_id: str
    workload: str
    resources: Resources
    tenant: str = "default"
    constraints: tuple[Constraint, ...] = ()
    spread_by: str | None = None
    max_skew: int = 1
    distinct_nodes: bool = False
    priority: int = 0

    def __post_init__(self) -> None:
        _check_str("PlacementRequest", "replica_id", self.replica_id)
        owner = f"PlacementRequest({self.replica_id!r})"
        _check_str(owner, "workload", self.workload)
        _check_str(owner, "tenant", self.tenant)
        if not isinstance(self.resources, Resources):
            raise InvalidInputError(f"{owner}.resources must be Resources")
        if not isinstance(self.constraints, tuple) or not all(
            isinstance(c, Constraint) for c in self.constraints
        ):
            raise InvalidInputError(f"{owner}.constraints must be a tuple of Constraint")
        if self.spread_by is not None:
            _check_str(owner, "spread_by", self.spread_by)
        _check_int(owner, "max_skew", self.max_skew, minimum=1)
        if not isinstance(self.distinct_nodes, bool):
            raise InvalidInputError(f"{owner}.distinct_nodes must be a bool")
        _check_int(owner, "priority", self.priority, minimum=-(1 << 31))

    @classmethod
    def for_placement(cls, placement: Placement, **overrides: object) -> PlacementRequest:
        """A request that re-places an existing replica with the same resources."""
        fields: dict[str, object] = {
            "replica_id": placement.replica_id,
            "workload": placement.workload,
            "resources": placement.resources,
            "tenant": placement.tenant,
        }
        fields.update(overrides)
        return cls(**fields)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantPolicy:
    """A tenant's ``weight`` (its share relative to other tenants) and optional ``cap``
    (the most it may hold in total, per resource)."""

    weight: int = 1
    cap: Resources | None = None

    def __post_init__(self) -> None:
        _check_int("TenantPolicy", "weight", self.weight, minimum=1)
        if self.cap is not None and not isinstance(self.cap, Resources):
            raise InvalidInputError("TenantPolicy.cap must be Resources or None")


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """Everything one scheduling decision may look at. Node order does not matter."""

    nodes: tuple[NodeInfo, ...]
    placements: tuple[Placement, ...] = ()
    tenants: Mapping[str, TenantPolicy] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if not isinstance(self.nodes, tuple):
            object.__setattr__(self, "nodes", tuple(self.nodes))
        if not isinstance(self.placements, tuple):
            object.__setattr__(self, "placements", tuple(self.placements))
        seen: set[str] = set()
        for node in self.nodes:
            if not isinstance(node, NodeInfo):
                raise InvalidInputError(f"Snapshot.nodes must hold NodeInfo, got {node!r}")
            if node.id in seen:
                raise InvalidInputError(f"Snapshot.nodes lists node {node.id!r} twice")
            seen.add(node.id)
        replicas: set[str] = set()
        for placement in self.placements:
            if not isinstance(placement, Placement):
                raise InvalidInputError(
                    f"Snapshot.placements must hold Placement, got {placement!r}"
                )
            if placement.replica_id in replicas:
                raise InvalidInputError(
                    f"Snapshot.placements lists replica {placement.replica_id!r} twice"
                )
            replicas.add(placement.replica_id)
        if not isinstance(self.tenants, Mapping):
            raise InvalidInputError("Snapshot.tenants must be a mapping of name to TenantPolicy")
        for name, policy in self.tenants.items():
            if not isinstance(name, str) or not isinstance(policy, TenantPolicy):
                raise InvalidInputError(
                    f"Snapshot.tenants must map str to TenantPolicy, got {name!r}: {policy!r}"
                )
        object.__setattr__(self, "tenants", MappingProxyType(dict(self.tenants)))

    def with_nodes(self, nodes: Iterable[NodeInfo]) -> Snapshot:
        return Snapshot(nodes=tuple(nodes), placements=self.placements, tenants=self.tenants)


#: Which rule kept a request off every node (``Decision.rule``).
Rule = Literal[
    "no_nodes",
    "state",
    "constraints",
    "resources",
    "distinct_nodes",
    "spread",
    "tenant_cap",
    "duplicate",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """Where a request goes (``node_id``), or why it cannot go anywhere (``reason``,
    with ``rule`` naming the rule that blocked it)."""

    replica_id: str
    node_id: str | None
    reason: str | None = None
    rule: Rule | None = None

    @property
    def placed(self) -> bool:
        return self.node_id is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class Move:
    """A replica leaving a dead or draining node: to ``to_node``, or nowhere yet
    (``to_node=None`` with the reason)."""

    replica_id: str
    workload: str
    tenant: str
    from_node: str
    to_node: str | None
    reason: str | None = None
    rule: Rule | None = None
