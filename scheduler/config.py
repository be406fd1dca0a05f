"""Every tunable of the scheduler in one frozen, documented, validated dataclass."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from .errors import InvalidInputError


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerConfig:
    """Weights of the mycelial score, sampling, the credit ledger and failure handling.

    Score weights multiply terms that each lie in [-1000, 1000] (per mille), so
    they read as relative importance. Anti-affinity penalties are per replica of
    the same workload already on the node / in the zone, in the same units.
    """

    #: Weight of the node's credit balance (divided by its steady full-spare balance,
    #: cap_cpu * 2**decay_shift, and clamped to +-1000).
    #: 0 gives the credit-free scorer ("mycelial-nocredit"). A quarter of the fit
    #: weight: credit is lagged, smoothed headroom and partly repeats what fit
    #: already sees, so at equal weight it mostly added noise (docs/decisions/034).
    credit_weight: int = 1
    #: Weight of resource balance: 1000 minus the spread between cpu and memory
    #: utilisation after placing (Kubernetes' BalancedAllocation).
    balance_weight: int = 1
    #: Weight of the fit term: with ``pack=False`` 1000 minus the node's dominant
    #: utilisation now (spread, least allocated first); with ``pack=True`` its
    #: dominant utilisation after placing (bin-pack, MostAllocated). The replica's
    #: size enters through balance and headroom: fit "after placing" kept small
    #: nodes systematically emptier (a replica is a bigger step there), and the
    #: midpoint of decision 034 still did, by half (docs/decisions/035).
    #: Four times balance and credit: with fit at 2, balance (up to 1000) chose
    #: between nodes a few points apart and often took the fuller one.
    fit_weight: int = 4
    pack: bool = False
    #: Headroom (spread only): a node whose dominant utilisation after placing
    #: would exceed ``high_water`` (per mille) loses
    #: ``high_water_weight * excess**2 / 100``: nothing at 90%, 20 at 91%, 500 at
    #: 95%, 2000 at 100%. A replica fills a node past 90% only when no candidate
    #: keeps it below, and then the one it fills least (docs/decisions/035).
    high_water: int = 900
    high_water_weight: int = 20
    #: Batch order (mycelial strategies only): within a tenant and priority, decide
    #: the request with the largest dominant share of the cluster first, then in
    #: request order (first-fit decreasing; Graham's LPT rule for load balance).
    #: Large replicas find room while nodes are emptiest, and the small ones that
    #: come last fill the gaps and level the nodes. ``False`` keeps request order,
    #: as the baselines (online by definition) always do (docs/decisions/037).
    largest_first: bool = True
    #: Soft anti-affinity: penalty per replica of the same workload already on the
    #: node, and per replica in the node's zone. The node penalty is larger than the
    #: widest swing of all other terms together with the default weights (credit
    #: 1000 + balance 1000 + fit 4000 + headroom 2000), so a replica only joins a
    #: sibling when no sampled node without one has room; the zone penalty is a
    #: mild preference (stronger, it narrows the effective sample to the emptiest
    #: zone and costs balance).
    node_anti_affinity: int = 10000
    zone_anti_affinity: int = 250

    #: At most this many nodes, every feasible node is scored; above it, ``sample``
    #: candidates are drawn (power of d choices) and a full scan only runs when the
    #: sample holds fewer than two feasible nodes.
    sample_threshold: int = 256
    #: Candidates per decision when sampling; 0 means ``max(2, ceil(log2 n))``
    #: (Nomad's choice), so a workload of m replicas looks at d*m nodes in all.
    sample: int = 0
    #: When sampling (spread only), this many of the ``sample`` candidates are the
    #: least allocated feasible nodes, off an index of nodes bucketed by dominant
    #: utilisation (the global view least-loaded has; docs/decisions/035 and 038);
    #: the rest are drawn at random.
    index_candidates: int = 3
    #: When sampling and the best candidate would end above ``high_water``, draw
    #: this many times ``sample`` further candidates and choose again among all.
    second_look: int = 4

    #: Credit ledger (see ``scheduler.credits``). Utilisation above this (per mille)
    #: is pressure, and a node owes ``pressure_factor`` times its excess.
    target_utilisation: int = 800
    pressure_factor: int = 4
    #: Each epoch keeps ``balance - balance >> decay_shift`` (1 halves old balances).
    decay_shift: int = 1
    #: Overlay: links to this many successors on the hash ring (and, in the zone's
    #: own ring, this many zone mates).
    ring_neighbours: int = 2
    zone_neighbours: int = 2
    #: Rounds of exchange per epoch; each edge moves ``exchange_rate`` per mille of
    #: the difference divided by (largest degree + 1), which keeps it stable.
    exchange_rounds: int = 3
    exchange_rate: int = 1000

    #: Rescheduling pauses when more than this fraction of the snapshot's nodes is
    #: lost (dead or unknown, draining excluded) at once.
    max_lost_fraction: float = 0.5

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("pack", "largest_first"):
                if not isinstance(value, bool):
                    raise InvalidInputError(f"SchedulerConfig.{f.name} must be a bool")
            elif f.name == "max_lost_fraction":
                if not isinstance(value, int | float) or not 0.0 < value <= 1.0:
                    raise InvalidInputError(
                        f"SchedulerConfig.max_lost_fraction must be in (0, 1], got {value!r}"
                    )
            elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidInputError(
                    f"SchedulerConfig.{f.name} must be an int >= 0, got {value!r}"
                )
        if self.high_water > 1000:
            raise InvalidInputError("SchedulerConfig.high_water is per mille (<= 1000)")
        if self.target_utilisation > 1000:
            raise InvalidInputError("SchedulerConfig.target_utilisation is per mille (<= 1000)")
        if self.exchange_rate > 1000:
            raise InvalidInputError("SchedulerConfig.exchange_rate is per mille (<= 1000)")

    def with_(self, **changes: object) -> SchedulerConfig:
        return replace(self, **changes)  # type: ignore[arg-type]


DEFAULT_CONFIG = SchedulerConfig()
