"""Pure placement functions: the credit-based mycelial scheduler and its baselines.

Same inputs, same output, whatever order the nodes come in. This package imports
nothing else of Hypha's (and never trio, sockets, the clock or a global RNG):
"randomness" is a stable hash of the caller's ``seed`` and names.

* ``place(snapshot, requests, seed, *, strategy, config) -> list[Decision]``
* ``reschedule(snapshot, lost_nodes, seed, ...) -> list[Move]`` (may raise
  ``ReschedulePaused``)
* ``epoch(snapshot, *, config) -> dict[node_id, int]``: the next credit balances
* ``explain(snapshot, request, seed, ...) -> Explanation``: a dry run, for
  ``--dry-run`` and the AI ``scheduler_hint``
* ``Planner``: the incremental engine behind ``place`` (one decision at a time)
"""

from .api import Explanation, explain, place, reschedule
from .config import DEFAULT_CONFIG, SchedulerConfig
from .credits import (
    dominant_utilisation,
    epoch,
    exchange,
    income,
    overlay,
    placement_cost,
)
from .engine import STRATEGIES, Planner, ScoreParts, placements_after
from .errors import InvalidInputError, ReschedulePaused, SchedulerError
from .types import (
    CONSTRAINT_OPS,
    NODE_STATES,
    Constraint,
    Decision,
    Move,
    NodeInfo,
    NodeState,
    Placement,
    PlacementRequest,
    Resources,
    Rule,
    Snapshot,
    TenantPolicy,
    format_bytes,
    format_cpu,
)

__all__ = [
    "CONSTRAINT_OPS",
    "DEFAULT_CONFIG",
    "NODE_STATES",
    "STRATEGIES",
    "Constraint",
    "Decision",
    "Explanation",
    "InvalidInputError",
    "Move",
    "NodeInfo",
    "NodeState",
    "Placement",
    "PlacementRequest",
    "Planner",
    "ReschedulePaused",
    "Resources",
    "Rule",
    "SchedulerConfig",
    "SchedulerError",
    "ScoreParts",
    "Snapshot",
    "TenantPolicy",
    "dominant_utilisation",
    "epoch",
    "exchange",
    "explain",
    "format_bytes",
    "format_cpu",
    "income",
    "overlay",
    "place",
    "placement_cost",
    "placements_after",
    "reschedule",
]
