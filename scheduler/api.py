"""The public functions: ``place``, ``reschedule`` and ``explain``.

All three are pure: the same snapshot, requests, seed, strategy and config give
the same answer in every process, whatever order the nodes are listed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .config import DEFAULT_CONFIG, SchedulerConfig
from .engine import Planner, ScoreParts
from .errors import InvalidInputError, ReschedulePaused
from .types import (
    Decision,
    Move,
    PlacementRequest,
    Resources,
    Rule,
    Snapshot,
    format_bytes,
    format_cpu,
)


def place(
    snapshot: Snapshot,
    requests: Sequence[PlacementRequest],
    seed: int,
    *,
    strategy: str = "mycelial",
    config: SchedulerConfig = DEFAULT_CONFIG,
) -> list[Decision]:
    """Decide where each request goes; one ``Decision`` per request, in request order.

    Requests are decided one at a time, each seeing the ones before it as
    placed. Across tenants the order is weighted-fair (furthest below its share
    first); within a tenant, higher ``priority`` first, then, for the mycelial
    scorer, the largest request first (``SchedulerConfig.largest_first``), then
    request order.
    """
    return Planner(snapshot, seed, strategy=strategy, config=config).place_batch(list(requests))


def lost_nodes_of(snapshot: Snapshot, lost_nodes: Iterable[str]) -> tuple[set[str], set[str]]:
    """(failed, draining): the nodes whose replicas must move."""
    if isinstance(lost_nodes, str):
        raise InvalidInputError("lost_nodes must be a collection of node ids, not one str")
    failed = {str(n) for n in lost_nodes}
    draining: set[str] = set()
    for node in snapshot.nodes:
        if node.state == "dead":
            failed.add(node.id)
        elif node.state == "draining" and node.id not in failed:
            draining.add(node.id)
    return failed, draining


def reschedule(
    snapshot: Snapshot,
    lost_nodes: Iterable[str],
    seed: int,
    *,
    strategy: str = "mycelial",
    config: SchedulerConfig = DEFAULT_CONFIG,
    requests: Mapping[str, PlacementRequest] | None = None,
) -> list[Move]:
    """Move the replicas of lost, dead and draining nodes; nothing else moves.

    ``lost_nodes`` are ids the caller considers failed (they may be absent from
    the snapshot); nodes the snapshot marks dead or draining count too, and a
    placement on a node the snapshot does not know is lost as well. Suspect
    nodes keep their replicas and get no new ones. ``requests`` maps replica ids
    to the full request (constraints, spread) to re-place them with; without
    one, a replica keeps only its workload, tenant and resources.

    Raises ``ReschedulePaused`` when more than ``config.max_lost_fraction`` of
    the nodes failed at once (draining ones excluded): a likely partition.
    Moves come back sorted by replica id.
    """
    failed, draining = lost_nodes_of(snapshot, lost_nodes)
    known = {node.id for node in snapshot.nodes}
    failed |= {p.node_id for p in snapshot.placements if p.node_id not in known}
    total = len(snapshot.nodes)
    failed_known = len(failed & known)
    if total and failed_known > 1 and failed_known / total > config.max_lost_fraction:
        raise ReschedulePaused(
            f"rescheduling paused: {failed_known} of {total} nodes lost at once "
            f"({failed_known * 100 // total}% > {config.max_lost_fraction:.0%}); this looks "
            f"like a partition, so no replica moves until nodes return or an operator "
            f"confirms the loss",
            lost=failed_known,
            total=total,
            threshold=config.max_lost_fraction,
        )
    leaving = failed | draining
    moving = sorted(
        (p for p in snapshot.placements if p.node_id in leaving), key=lambda p: p.replica_id
    )
    if not moving:
        return []
    planner = Planner(
        snapshot,
        seed,
        strategy=strategy,
        config=config,
        exclude_replicas=[p.replica_id for p in moving],
        unusable_nodes=leaving,
    )
    batch: list[PlacementRequest] = []
    for placement in moving:
        given = requests.get(placement.replica_id) if requests else None
        if given is not None and not isinstance(given, PlacementRequest):
            raise InvalidInputError(
                f"requests[{placement.replica_id!r}] must be a PlacementRequest"
            )
        batch.append(given if given is not None else PlacementRequest.for_placement(placement))
    decisions = planner.place_batch(batch)
    moves = []
    for placement, decision in zip(moving, decisions, strict=True):
        moves.append(
            Move(
                replica_id=placement.replica_id,
                workload=placement.workload,
                tenant=placement.tenant,
                from_node=placement.node_id,
                to_node=decision.node_id,
                reason=decision.reason,
                rule=decision.rule,
            )
        )
    return moves


@dataclass(frozen=True, slots=True)
class Explanation:
    """A dry run of one request: where it would go and why, or why not and what would help.

    ``str()`` gives the text for a human (and an AI's ``scheduler_hint``);
    ``to_dict()`` the same as JSON-able data.
    """

    replica_id: str
    strategy: str
    node_id: str | None
    rule: Rule | None
    reason: str | None
    nodes: int
    feasible: int
    sampled: bool
    rejected: Mapping[str, int]
    candidates: tuple[ScoreParts, ...]
    suggestions: tuple[str, ...]
    #: How a candidate's total is made from its terms, with this config's weights.
    formula: str = "credit + balance + fit + anti-affinity + headroom"

    def to_dict(self) -> dict[str, Any]:
        return {
            "replica_id": self.replica_id,
            "strategy": self.strategy,
            "node_id": self.node_id,
            "rule": self.rule,
            "reason": self.reason,
            "nodes": self.nodes,
            "feasible": self.feasible,
            "sampled": self.sampled,
            "rejected": dict(self.rejected),
            "candidates": [
                {
                    "node_id": c.node_id,
                    "total": c.total,
                    "credit": c.credit,
                    "balance": c.balance,
                    "fit": c.fit,
                    "anti_affinity": c.anti_affinity,
                    "headroom": c.headroom,
                }
                for c in self.candidates
            ],
            "suggestions": list(self.suggestions),
            "formula": self.formula,
            "text": str(self),
        }

    def __str__(self) -> str:
        lines = []
        if self.node_id is not None:
            how = (
                "a seeded sample and the least allocated of them" if self.sampled else "all of them"
            )
            lines.append(
                f"{self.replica_id} would go on {self.node_id} ({self.strategy}; "
                f"{self.feasible} of {self.nodes} nodes can take it; scored {how})"
            )
        else:
            lines.append(f"{self.replica_id} cannot be placed: {self.reason}")
        if self.rejected:
            parts = ", ".join(f"{count} {why}" for why, count in self.rejected.items())
            lines.append(f"nodes ruled out: {parts}")
        if self.candidates:
            lines.append(f"best candidates (score = {self.formula}):")
            for c in self.candidates:
                lines.append(
                    f"  {c.node_id}: {c.total} (credit {c.credit}, balance {c.balance}, "
                    f"fit {c.fit}, anti-affinity {c.anti_affinity}, headroom {c.headroom})"
                )
        lines.extend(f"hint: {s}" for s in self.suggestions)
        return "\n".join(lines)


def _shortfall_text(need: Resources, free: Resources) -> str:
    parts = []
    if need.cpu_millicores > free.cpu_millicores:
        parts.append(format_cpu(need.cpu_millicores - free.cpu_millicores))
    if need.memory_bytes > free.memory_bytes:
        parts.append(f"{format_bytes(need.memory_bytes - free.memory_bytes)} memory")
    if need.pids > free.pids:
        parts.append(f"{need.pids - free.pids} pids")
    return " and ".join(parts)


def explain(
    snapshot: Snapshot,
    request: PlacementRequest,
    seed: int = 0,
    *,
    strategy: str = "mycelial",
    config: SchedulerConfig = DEFAULT_CONFIG,
    top: int = 5,
) -> Explanation:
    """Where ``request`` would go, why, and (if nowhere) what would make it fit.

    The chosen node is exactly what ``place(snapshot, [request], seed, ...)``
    returns; the counts and candidates come from a full scan (a dry run can
    afford one).
    """
    if not isinstance(request, PlacementRequest):
        raise InvalidInputError("request must be a PlacementRequest")
    decision = place(snapshot, [request], seed, strategy=strategy, config=config)[0]
    planner = Planner(snapshot, seed, strategy=strategy, config=config)
    want = request.resources
    rejected: dict[str, int] = {}
    for why, count in sorted(planner.not_usable.items()):
        rejected[why] = count
    spread = planner._spread_for(request)
    no_room: list[int] = []
    for i in range(planner.n):
        if not planner.usable[i]:
            continue
        node = planner.nodes[i]
        failing = next((c for c in request.constraints if not c.matches(node)), None)
        if failing is not None:
            key = f"not matching {failing}"
            rejected[key] = rejected.get(key, 0) + 1
        elif not want.fits_in(planner.free_of(i)):
            no_room.append(i)
        elif not planner._admissible(i, request, spread):
            key = (
                "already running a replica (distinct_nodes)"
                if (request.distinct_nodes and planner.wl_node.get(request.workload, {}).get(i))
                else f"over max_skew by {request.spread_by}"
            )
            rejected[key] = rejected.get(key, 0) + 1
    if no_room:
        rejected["without room"] = len(no_room)
    feasible = planner.feasible_nodes(request)
    # Best first, ties in the order the scorer breaks them (the seeded hash).
    rh = planner.request_hash(request)
    parts = {i: planner.score(i, request) for i in feasible}
    ranked = sorted(feasible, key=lambda i: (-parts[i].total, -(planner.node_hash[i] ^ rh)))
    scored = [parts[i] for i in ranked[:top]]
    suggestions: list[str] = []
    if decision.node_id is None:
        rule = decision.rule
        if rule == "resources":
            fitting_nodes = [
                i
                for i in range(planner.n)
                if planner.usable[i]
                and all(c.matches(planner.nodes[i]) for c in request.constraints)
            ]
            if fitting_nodes:
                best = max(
                    fitting_nodes,
                    key=lambda i: (
                        min(
                            planner.free_of(i).cpu_millicores * 1000 // max(want.cpu_millicores, 1),
                            planner.free_of(i).memory_bytes * 1000 // max(want.memory_bytes, 1),
                            planner.free_of(i).pids * 1000 // max(want.pids, 1),
                        ),
                        planner.ids[i],
                    ),
                )
                free = planner.free_of(best)
                suggestions.append(
                    f"ask for at most {free.human()} (what {planner.ids[best]} has free), "
                    f"or free {_shortfall_text(want, free)} on {planner.ids[best]}"
                )
            suggestions.append(
                f"add a node with at least {want.human()} free"
                + (
                    f" matching {', '.join(map(str, request.constraints))}"
                    if request.constraints
                    else ""
                )
            )
        elif rule == "constraints":
            suggestions.append(
                "relax the constraints or label a node to match: "
                + ", ".join(str(c) for c in request.constraints)
            )
        elif rule == "distinct_nodes":
            suggestions.append("add nodes, lower the replica count, or set distinct_nodes=false")
        elif rule == "spread":
            suggestions.append(
                f"raise max_skew above {request.max_skew} or free room in the emptiest "
                f"{request.spread_by}"
            )
        elif rule == "tenant_cap":
            suggestions.append(f"raise tenant {request.tenant!r}'s cap or remove its other work")
        elif rule == "state":
            suggestions.append("bring suspect nodes back, or mark nodes eligible / undrain them")
        waiting = [
            node.id
            for node in planner.nodes
            if node.state == "suspect"
            and want.fits_in(node.free)
            and all(c.matches(node) for c in request.constraints)
        ]
        if waiting:
            suggestions.append(
                f"{len(waiting)} suspect node(s) would have room once alive again "
                f"(e.g. {waiting[0]})"
            )
    return Explanation(
        replica_id=request.replica_id,
        strategy=strategy,
        node_id=decision.node_id,
        rule=decision.rule,
        reason=decision.reason,
        nodes=planner.n,
        feasible=len(feasible),
        sampled=planner.n > config.sample_threshold and strategy.startswith("mycelial"),
        rejected=rejected,
        candidates=tuple(scored),
        suggestions=tuple(suggestions),
        formula=(
            f"{config.credit_weight}*credit + {config.balance_weight}*balance + "
            f"{config.fit_weight}*fit + anti-affinity + headroom"
        ),
    )
