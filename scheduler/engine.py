"""The placement engine: indexes built once per snapshot, then one decision at a time.

``Planner`` sorts the nodes by id (so node order in the snapshot never matters),
builds flat per-node arrays, a max-tree over free resources, and per-workload
counts, then places requests one by one, updating all of them incrementally. No
decision scans every node unless a sample found fewer than two feasible nodes,
and even that scan skips whole subtrees that cannot fit (the max-tree).

Strategies (``STRATEGIES``): the mycelial scorer, the same scorer with credit
weight 0, and the baselines random, round-robin, least-loaded (a heap),
power-of-two, best-fit (a sorted index). All of them apply the same hard rules
(resources, state, constraints, distinct nodes, topology spread, tenant caps),
so the benchmark compares choices, not rule sets.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import blake2b

from ._hash import GOLDEN, MASK64, mix64, stable_hash
from .config import DEFAULT_CONFIG, SchedulerConfig
from .credits import placement_cost
from .errors import InvalidInputError
from .types import (
    Constraint,
    Decision,
    NodeInfo,
    Placement,
    PlacementRequest,
    Resources,
    Rule,
    Snapshot,
    format_bytes,
    format_cpu,
)

STRATEGIES: tuple[str, ...] = (
    "mycelial",
    "mycelial-nocredit",
    "random",
    "round-robin",
    "least-loaded",
    "power-of-two",
    "best-fit",
)

_DIMS = ("cpu", "memory", "pids")


#: The bucket of the least-allocated index for nodes above 1000 per mille (they fit
#: nothing: some resource is already over-committed).
_OVER = 1001


def _fmt(dim: int, value: int) -> str:
    if dim == 0:
        return format_cpu(value)
    if dim == 1:
        return format_bytes(value)
    return f"{value} pids"


def _dim_phrase(dim: int, value: int) -> str:
    if dim == 0:
        return format_cpu(value)
    if dim == 1:
        return f"{format_bytes(value)} memory"
    return f"{value} pids"


def _ceil_log2(n: int) -> int:
    return max(0, (n - 1).bit_length())


@dataclass(slots=True)
class _Spread:
    """Replica counts of one workload per value of one label (one topology spread)."""

    key: str
    domains: frozenset[str]
    counts: dict[str, int] = field(default_factory=dict)

    def minimum(self) -> int:
        return min((self.counts.get(d, 0) for d in self.domains), default=0)


@dataclass(frozen=True, slots=True)
class ScoreParts:
    """How the mycelial scorer rated one node for one request (for ``explain``)."""

    node_id: str
    total: int
    credit: int
    balance: int
    fit: int
    anti_affinity: int
    headroom: int = 0


class Planner:
    """Places requests against one snapshot, keeping its indexes up to date.

    ``place()`` builds one per call; the benchmark builds one and times
    ``place_one`` per request. ``exclude_replicas`` are treated as gone (their
    resources are freed and they no longer count for anti-affinity or tenants);
    ``unusable_nodes`` get no new work whatever their state says.
    """

    def __init__(
        self,
        snapshot: Snapshot,
        seed: int,
        *,
        strategy: str = "mycelial",
        config: SchedulerConfig = DEFAULT_CONFIG,
        exclude_replicas: Iterable[str] = (),
        unusable_nodes: Iterable[str] = (),
    ) -> None:
        if not isinstance(snapshot, Snapshot):
            raise InvalidInputError(f"snapshot must be a Snapshot, got {type(snapshot).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InvalidInputError(f"seed must be an int, got {seed!r}")
        if strategy not in STRATEGIES:
            raise InvalidInputError(
                f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}"
            )
        if not isinstance(config, SchedulerConfig):
            raise InvalidInputError("config must be a SchedulerConfig")
        if strategy == "mycelial-nocredit":
            config = config.with_(credit_weight=0)
        self.snapshot = snapshot
        self.seed = seed
        self.strategy = strategy
        self.config = config
        excluded = frozenset(exclude_replicas)
        unusable = frozenset(unusable_nodes)

        nodes = sorted(snapshot.nodes, key=lambda node: node.id)
        self.nodes: list[NodeInfo] = nodes
        n = self.n = len(nodes)
        self.index: dict[str, int] = {node.id: i for i, node in enumerate(nodes)}
        self.ids = [node.id for node in nodes]
        self.cap_c = [node.capacity.cpu_millicores for node in nodes]
        self.cap_m = [node.capacity.memory_bytes for node in nodes]
        self.cap_p = [node.capacity.pids for node in nodes]
        self.free_c = [
            node.capacity.cpu_millicores - node.allocated.cpu_millicores for node in nodes
        ]
        self.free_m = [node.capacity.memory_bytes - node.allocated.memory_bytes for node in nodes]
        self.free_p = [node.capacity.pids - node.allocated.pids for node in nodes]
        self.usable = [
            node.state == "alive" and node.eligible and node.id not in unusable for node in nodes
        ]
        self.unusable_why: list[str] = []
        for node in nodes:
            if node.id in unusable:
                self.unusable_why.append("lost")
            elif node.state != "alive":
                self.unusable_why.append(node.state)
            elif not node.eligible:
                self.unusable_why.append("ineligible")
            else:
                self.unusable_why.append("")
        zones = sorted({node.zone for node in nodes if node.zone})
        zone_index = {zone: z for z, zone in enumerate(zones)}
        self.zones = zones
        self.zone_of = [zone_index[node.zone] if node.zone else -1 for node in nodes]
        self.credit = [node.credit for node in nodes]
        self.credit_term: list[int] = [0] * n
        self._credit_divisors()
        self.spend_shift = config.decay_shift
        self.node_hash = [stable_hash(seed, "node", node.id) for node in nodes]
        self._request_prefix = f"{seed}\x1frequest\x1f".encode()

        # Placements: workload counts per node and per zone, tenant usage, and
        # the freed resources of excluded replicas.
        self.wl_node: dict[str, dict[int, int]] = {}
        self.wl_zone: dict[str, dict[int, int]] = {}
        self.placed_on: dict[str, str] = {}
        self.tenant_use: dict[str, list[int]] = {}
        for placement in snapshot.placements:
            i = self.index.get(placement.node_id)
            if placement.replica_id in excluded:
                if i is not None:
                    self.free_c[i] += placement.resources.cpu_millicores
                    self.free_m[i] += placement.resources.memory_bytes
                    self.free_p[i] += placement.resources.pids
                continue
            self.placed_on[placement.replica_id] = placement.node_id
            self._count_tenant(placement.tenant, placement.resources, +1)
            if i is not None:
                self._count_workload(placement.workload, i)

        # Dominant utilisation of each node's allocations now (per mille), kept up
        # to date by ``commit``: the "before" half of the fit term.
        self.dom = [self._dominant_after(i, 0, 0, 0) for i in range(n)]
        usable_idx = [i for i in range(n) if self.usable[i]]
        self.total = (
            sum(self.cap_c[i] for i in usable_idx),
            sum(self.cap_m[i] for i in usable_idx),
            sum(self.cap_p[i] for i in usable_idx),
        )
        self.not_usable = Counter(why for why in self.unusable_why if why)
        self.spreads: dict[tuple[str, str, tuple[Constraint, ...]], _Spread] = {}
        self.spreads_of: dict[str, list[_Spread]] = {}
        self.domains: dict[tuple[str, tuple[Constraint, ...]], frozenset[str]] = {}
        self.failed_shapes: dict[tuple[object, ...], tuple[Rule, str]] = {}
        self.failed_by_workload: dict[str, dict[tuple[object, ...], tuple[Rule, str]]] = {}
        self.failed_frontier: list[tuple[int, int, int]] = []

        # Max-tree over free resources of usable nodes (-1 for the others).
        size = 1
        while size < max(1, n):
            size *= 2
        self.size = size
        self.tc = [-1] * (2 * size)
        self.tm = [-1] * (2 * size)
        self.tp = [-1] * (2 * size)
        for i in range(n):
            if self.usable[i]:
                self.tc[size + i] = self.free_c[i]
                self.tm[size + i] = self.free_m[i]
                self.tp[size + i] = self.free_p[i]
        # The leaf range [span_lo, span_hi) under each tree node.
        self.span_lo = [0] * (2 * size)
        self.span_hi = [0] * (2 * size)
        for j in range(1, 2 * size):
            level = j.bit_length() - 1
            width = size >> level
            self.span_lo[j] = (j - (1 << level)) * width
            self.span_hi[j] = self.span_lo[j] + width
        for j in range(size - 1, 0, -1):
            self.tc[j] = max(self.tc[2 * j], self.tc[2 * j + 1])
            self.tm[j] = max(self.tm[2 * j], self.tm[2 * j + 1])
            self.tp[j] = max(self.tp[2 * j], self.tp[2 * j + 1])

        self.sample = config.sample or max(2, _ceil_log2(n))
        #: How many of the ``sample`` candidates come off the least-allocated index.
        self.indexed = 0
        self.rr_next = stable_hash(seed, "round-robin") % n if n else 0
        # Least-allocated index (decision 038): usable nodes bucketed by dominant
        # utilisation per mille, each bucket sorted by (node hash, index).
        self._levels: list[list[tuple[int, int]]] = []
        self._level_of: list[int] = []
        self._lowest_level = 0
        self._indexed_nodes = 0
        self._bestfit: list[tuple[int, int, int, int]] = []
        self._bestfit_key: list[tuple[int, int, int, int]] = []
        self._choose: Callable[[PlacementRequest, int], int]
        if strategy in ("mycelial", "mycelial-nocredit"):
            self._choose = self._choose_scored
            if not config.pack and n > config.sample_threshold:
                self.indexed = min(config.index_candidates, self.sample - 1)
                if self.indexed:
                    self._build_levels(usable_idx)
        elif strategy == "random":
            self._choose = self._choose_random
        elif strategy == "round-robin":
            self._choose = self._choose_round_robin
        elif strategy == "least-loaded":
            self._build_levels(usable_idx)
            self._choose = self._choose_least_loaded
        elif strategy == "power-of-two":
            self._choose = self._choose_power_of_two
        else:
            self._bestfit_key = [self._fit_key(i) for i in range(n)]
            self._bestfit = sorted(self._bestfit_key[i] for i in usable_idx)
            self._choose = self._choose_best_fit

    def _build_levels(self, usable_idx: Sequence[int]) -> None:
        """Usable nodes in buckets by dominant utilisation (per mille; one bucket
        above 1000 for over-committed nodes, which fit nothing), each bucket sorted
        by (node hash, index). Walking the buckets upwards gives the nodes least
        allocated first, ties in seeded-hash order. A planner only ever adds
        allocations, so ``commit`` moves a node up and the lowest non-empty bucket
        only rises."""
        self._level_of = [min(self._load_key(i), _OVER) for i in range(self.n)]
        self._levels = [[] for _ in range(_OVER + 1)]
        for i in usable_idx:
            self._levels[self._level_of[i]].append((self.node_hash[i], i))
        for bucket in self._levels:
            bucket.sort()
        self._lowest_level = min((self._level_of[i] for i in usable_idx), default=_OVER)
        self._indexed_nodes = len(usable_idx)

    def set_credits(self, balances: Mapping[str, int]) -> None:
        """Replace the credit balances (a new epoch) without rebuilding the indexes.

        Nodes missing from ``balances`` keep theirs; unknown ids are ignored.
        """
        for node_id, balance in balances.items():
            i = self.index.get(node_id)
            if i is not None:
                self.credit[i] = balance
        self._credit_divisors()

    def _credit_divisors(self) -> None:
        """What a balance is divided by to give the +-1000 credit term, per node:
        its steady balance under full spare, ``cap_cpu * 2**decay_shift``."""
        shift = self.config.decay_shift
        self.credit_div = [max(1, c << shift) for c in self.cap_c]
        for i in range(self.n):
            self._update_credit_term(i)

    def _update_credit_term(self, i: int) -> None:
        term = self.credit[i] * 1000 // self.credit_div[i]
        self.credit_term[i] = -1000 if term < -1000 else 1000 if term > 1000 else term

    # ----------------------------------------------------------------- indexes

    def _count_workload(self, workload: str, i: int) -> None:
        per_node = self.wl_node.setdefault(workload, {})
        per_node[i] = per_node.get(i, 0) + 1
        z = self.zone_of[i]
        if z >= 0:
            per_zone = self.wl_zone.setdefault(workload, {})
            per_zone[z] = per_zone.get(z, 0) + 1

    def _count_tenant(self, tenant: str, resources: Resources, sign: int) -> None:
        use = self.tenant_use.setdefault(tenant, [0, 0, 0])
        use[0] += sign * resources.cpu_millicores
        use[1] += sign * resources.memory_bytes
        use[2] += sign * resources.pids

    def _tree_update(self, i: int) -> None:
        size = self.size
        tc, tm, tp = self.tc, self.tm, self.tp
        j = size + i
        if self.usable[i]:
            tc[j], tm[j], tp[j] = self.free_c[i], self.free_m[i], self.free_p[i]
        else:
            tc[j] = tm[j] = tp[j] = -1
        j >>= 1
        while j:
            left = 2 * j
            c = tc[left] if tc[left] > tc[left + 1] else tc[left + 1]
            m = tm[left] if tm[left] > tm[left + 1] else tm[left + 1]
            p = tp[left] if tp[left] > tp[left + 1] else tp[left + 1]
            if c == tc[j] and m == tm[j] and p == tp[j]:
                break
            tc[j], tm[j], tp[j] = c, m, p
            j >>= 1

    def _scan_range(
        self,
        lo: int,
        hi: int,
        want: tuple[int, int, int],
        limit: int,
        accept: Callable[[int], bool] | None,
        out: list[int],
    ) -> None:
        """Append to ``out`` the usable nodes in [lo, hi) with room for ``want`` (and
        ``accept``-ed), in index order, until ``out`` holds ``limit``.

        A depth-first walk of the max-tree that skips every subtree whose largest
        free cpu, memory or pids is too small, or that lies outside [lo, hi).
        """
        rc, rm, rp = want
        tc, tm, tp = self.tc, self.tm, self.tp
        span_lo, span_hi = self.span_lo, self.span_hi
        size = self.size
        stack = [1]
        pop, push = stack.pop, stack.append
        while stack:
            j = pop()
            if tc[j] < rc or tm[j] < rm or tp[j] < rp or span_hi[j] <= lo or span_lo[j] >= hi:
                continue
            if j >= size:
                i = j - size
                if accept is None or accept(i):
                    out.append(i)
                    if len(out) >= limit:
                        return
                continue
            push(2 * j + 1)
            push(2 * j)

    def scan(
        self,
        start: int,
        want: tuple[int, int, int],
        limit: int,
        accept: Callable[[int], bool] | None = None,
    ) -> list[int]:
        """Up to ``limit`` usable nodes with room for ``want`` (cpu, memory, pids) that
        ``accept`` allows, in index order from ``start``, wrapping around."""
        out: list[int] = []
        if limit <= 0 or not self.n:
            return out
        self._scan_range(start, self.n, want, limit, accept, out)
        if len(out) < limit and start > 0:
            self._scan_range(0, start, want, limit, accept, out)
        return out

    def _argmax(self, dim: int) -> int:
        """Index of a usable node with the most free of ``dim`` (-1 if none is usable)."""
        tree = (self.tc, self.tm, self.tp)[dim]
        if tree[1] < 0:
            return -1
        j = 1
        while j < self.size:
            j = 2 * j if tree[2 * j] == tree[j] else 2 * j + 1
        return j - self.size

    def _load_key(self, i: int) -> int:
        return self.dom[i]

    def _fit_key(self, i: int) -> tuple[int, int, int, int]:
        return (self.free_m[i], self.free_c[i], self.node_hash[i], i)

    def _dominant_after(self, i: int, rc: int, rm: int, rp: int) -> int:
        cc, cm, cp = self.cap_c[i], self.cap_m[i], self.cap_p[i]
        uc = (cc - self.free_c[i] + rc) * 1000 // cc if cc else 0
        um = (cm - self.free_m[i] + rm) * 1000 // cm if cm else 0
        up = (cp - self.free_p[i] + rp) * 1000 // cp if cp else 0
        return max(uc, um, up)

    # ------------------------------------------------------------------- rules

    def _spread_for(self, request: PlacementRequest) -> _Spread | None:
        key = request.spread_by
        if key is None:
            return None
        cache_key = (request.workload, key, request.constraints)
        spread = self.spreads.get(cache_key)
        if spread is None:
            domain_key = (key, request.constraints)
            domains = self.domains.get(domain_key)
            if domains is None:
                found: set[str] = set()
                for i, node in enumerate(self.nodes):
                    if not self.usable[i]:
                        continue
                    value = node.label(key)
                    if value is not None and all(c.matches(node) for c in request.constraints):
                        found.add(value)
                domains = self.domains[domain_key] = frozenset(found)
            spread = _Spread(key, domains)
            for i, count in self.wl_node.get(request.workload, {}).items():
                value = self.nodes[i].label(key)
                if value is not None:
                    spread.counts[value] = spread.counts.get(value, 0) + count
            self.spreads[cache_key] = spread
            self.spreads_of.setdefault(request.workload, []).append(spread)
        return spread

    def _admissible(self, i: int, request: PlacementRequest, spread: _Spread | None) -> bool:
        """The hard rules other than resources and state: constraints, distinct, spread."""
        node = self.nodes[i]
        for constraint in request.constraints:
            if not constraint.matches(node):
                return False
        if request.distinct_nodes:
            per_node = self.wl_node.get(request.workload)
            if per_node and per_node.get(i):
                return False
        if spread is not None:
            value = node.label(spread.key)
            if value is None or value not in spread.domains:
                return False
            if spread.counts.get(value, 0) + 1 - spread.minimum() > request.max_skew:
                return False
        return True

    def _simple(self, request: PlacementRequest) -> bool:
        return not request.constraints and not request.distinct_nodes and request.spread_by is None

    # -------------------------------------------------------------- strategies

    def _feasible(self, i: int, rc: int, rm: int, rp: int) -> bool:
        return (
            self.usable[i]
            and self.free_c[i] >= rc
            and self.free_m[i] >= rm
            and self.free_p[i] >= rp
        )

    def _candidates(
        self,
        request: PlacementRequest,
        request_hash: int,
        want: int,
        spread: _Spread | None,
        *,
        fallback: bool = True,
    ) -> list[int]:
        """Up to ``want`` distinct feasible nodes: sampled, topped up by a pruned scan
        (with ``fallback``) when fewer than two of the sampled ones are feasible."""
        res = request.resources
        rc, rm, rp = res.cpu_millicores, res.memory_bytes, res.pids
        simple = self._simple(request)
        usable, free_c, free_m, free_p = self.usable, self.free_c, self.free_m, self.free_p
        found: list[int] = []
        n = self.n
        x = request_hash
        drawn = 0
        while drawn < want:
            # ``want`` seeded positions in [0, n): two 32-bit draws per splitmix64
            # step (mix64, inlined), mapped by multiply-shift.
            x = (x + GOLDEN) & MASK64
            z = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & MASK64
            z = (z ^ (z >> 27)) * 0x94D049BB133111EB & MASK64
            z ^= z >> 31
            i = ((z & 0xFFFFFFFF) * n) >> 32
            j = ((z >> 32) * n) >> 32
            drawn += 2
            if (
                usable[i]
                and free_c[i] >= rc
                and free_m[i] >= rm
                and free_p[i] >= rp
                and i not in found
                and (simple or self._admissible(i, request, spread))
            ):
                found.append(i)
            if (
                (drawn <= want)
                and usable[j]
                and free_c[j] >= rc
                and free_m[j] >= rm
                and free_p[j] >= rp
                and j not in found
                and (simple or self._admissible(j, request, spread))
            ):
                found.append(j)
        if len(found) >= min(2, want) or not fallback:
            return found
        sampled = set(found)
        admissible = self._admissible

        def accept(i: int) -> bool:
            return i not in sampled and (simple or admissible(i, request, spread))

        found.extend(self.scan(request_hash % n, (rc, rm, rp), want - len(found), accept))
        return found

    def _all_feasible(self, request: PlacementRequest, spread: _Spread | None) -> list[int]:
        accept = None if self._simple(request) else self._acceptor(request, spread)
        return self.scan(0, request.resources.as_tuple(), self.n, accept)

    def _acceptor(self, request: PlacementRequest, spread: _Spread | None) -> Callable[[int], bool]:
        admissible = self._admissible
        return lambda i: admissible(i, request, spread)

    def score(self, i: int, request: PlacementRequest) -> ScoreParts:
        """The mycelial score of node ``i`` for ``request``, term by term (higher is better)."""
        cfg = self.config
        rc, rm, rp = request.resources.as_tuple()
        cc, cm = self.cap_c[i], self.cap_m[i]
        uc = (cc - self.free_c[i] + rc) * 1000 // cc if cc else 0
        um = (cm - self.free_m[i] + rm) * 1000 // cm if cm else 0
        after = self._dominant_after(i, rc, rm, rp)
        headroom = 0 if cfg.pack else self._headroom_penalty(after)
        credit = self.credit_term[i]
        balance = 1000 - abs(uc - um)
        fit = after if cfg.pack else 1000 - self.dom[i]
        anti = 0
        per_node = self.wl_node.get(request.workload)
        if per_node:
            anti += cfg.node_anti_affinity * per_node.get(i, 0)
        z = self.zone_of[i]
        per_zone = self.wl_zone.get(request.workload)
        if per_zone and z >= 0:
            anti += cfg.zone_anti_affinity * per_zone.get(z, 0)
        total = (
            cfg.credit_weight * credit
            + cfg.balance_weight * balance
            + cfg.fit_weight * fit
            - anti
            - headroom
        )
        return ScoreParts(self.ids[i], total, credit, balance, fit, -anti, -headroom)

    def _headroom_penalty(self, after: int) -> int:
        """What filling a node to ``after`` per mille costs above the high-water mark."""
        excess = after - self.config.high_water
        return self.config.high_water_weight * excess * excess // 100 if excess > 0 else 0

    def _best_scored(
        self,
        request: PlacementRequest,
        candidates: Sequence[int],
        rh: int,
        best: int = -1,
        best_total: int = 0,
        best_after: int = 0,
    ) -> tuple[int, int, int]:
        """The best of ``candidates`` (or ``best`` if it scores ``best_total`` and none
        beats it), its score, and its dominant utilisation after placing."""
        cfg = self.config
        rc, rm, rp = request.resources.as_tuple()
        free_c, free_m, free_p = self.free_c, self.free_m, self.free_p
        cap_c, cap_m, cap_p = self.cap_c, self.cap_m, self.cap_p
        credit_term, dom_now, node_hash = self.credit_term, self.dom, self.node_hash
        wc, wb, wf, pack = cfg.credit_weight, cfg.balance_weight, cfg.fit_weight, cfg.pack
        high, wh = (1000, 0) if pack else (cfg.high_water, cfg.high_water_weight)
        per_node = self.wl_node.get(request.workload)
        per_zone = self.wl_zone.get(request.workload)
        aa_node, aa_zone, zone_of = cfg.node_anti_affinity, cfg.zone_anti_affinity, self.zone_of
        for i in candidates:
            cc, cm, cp = cap_c[i], cap_m[i], cap_p[i]
            uc = (cc - free_c[i] + rc) * 1000 // cc if cc else 0
            um = (cm - free_m[i] + rm) * 1000 // cm if cm else 0
            up = (cp - free_p[i] + rp) * 1000 // cp if cp else 0
            dom = uc if uc > um else um
            if up > dom:
                dom = up
            total = wb * (1000 - (uc - um if uc > um else um - uc))
            if dom > high:  # _headroom_penalty, inlined on the hot path
                total -= wh * (dom - high) * (dom - high) // 100
            total += wf * (dom if pack else 1000 - dom_now[i])
            if wc:
                total += wc * credit_term[i]
            if per_node:
                total -= aa_node * per_node.get(i, 0)
            if per_zone:
                z = zone_of[i]
                if z >= 0:
                    total -= aa_zone * per_zone.get(z, 0)
            if (
                best < 0
                or total > best_total
                or (total == best_total and node_hash[i] ^ rh > node_hash[best] ^ rh)
            ):
                best, best_total, best_after = i, total, dom
        return best, best_total, best_after

    def _choose_scored(self, request: PlacementRequest, rh: int) -> int:
        spread = self._spread_for(request)
        if self.n <= self.config.sample_threshold:
            candidates = self._all_feasible(request, spread)
            return self._best_scored(request, candidates, rh)[0] if candidates else -1
        # d candidates in all: k least allocated off the index, d - k sampled.
        candidates = self._candidates(request, rh, self.sample - self.indexed, spread)
        if self.indexed:
            candidates.extend(self._least_allocated(request, spread, self.indexed, 16, candidates))
        if not candidates:
            return -1
        best, total, after = self._best_scored(request, candidates, rh)
        cfg = self.config
        if after > cfg.high_water and cfg.second_look and not cfg.pack:
            # A second look, at more nodes, before filling one past the high-water mark.
            seen = set(candidates)
            more = self._candidates(
                request, mix64(rh), cfg.second_look * self.sample, spread, fallback=False
            )
            more = [i for i in more if i not in seen]
            best = self._best_scored(request, more, rh, best, total, after)[0]
        return best

    def _least_allocated(
        self,
        request: PlacementRequest,
        spread: _Spread | None,
        want: int,
        limit: int,
        taken: Sequence[int] = (),
    ) -> list[int]:
        """Up to ``want`` feasible nodes not in ``taken``, least allocated first (ties
        in seeded-hash order), looking at no more than ``limit`` nodes."""
        rc, rm, rp = request.resources.as_tuple()
        simple = self._simple(request)
        levels = self._levels
        free_c, free_m, free_p = self.free_c, self.free_m, self.free_p
        found: list[int] = []
        looked = 0
        limit = min(limit, self._indexed_nodes)
        if not limit:
            return found
        level = self._lowest_level
        while not levels[level] and level < _OVER:
            level += 1
        self._lowest_level = level
        while level <= _OVER:
            for _, i in levels[level]:
                looked += 1
                if (
                    free_c[i] >= rc
                    and free_m[i] >= rm
                    and free_p[i] >= rp
                    and i not in taken
                    and (simple or self._admissible(i, request, spread))
                ):
                    found.append(i)
                    if len(found) >= want:
                        return found
                if looked >= limit:
                    return found
            level += 1
        return found

    def _first_admissible(self, request: PlacementRequest, start: int) -> int:
        accept = (
            None if self._simple(request) else self._acceptor(request, self._spread_for(request))
        )
        found = self.scan(start, request.resources.as_tuple(), 1, accept)
        return found[0] if found else -1

    def _choose_random(self, request: PlacementRequest, rh: int) -> int:
        return self._first_admissible(request, mix64(rh) % self.n)

    def _choose_round_robin(self, request: PlacementRequest, rh: int) -> int:
        i = self._first_admissible(request, self.rr_next % self.n)
        if i >= 0:
            self.rr_next = i + 1
        return i

    def _choose_power_of_two(self, request: PlacementRequest, rh: int) -> int:
        spread = self._spread_for(request)
        found = self._candidates(request, rh, 2, spread)
        if not found:
            return -1
        return min(found, key=lambda i: (self._load_key(i), self.node_hash[i]))

    def _choose_least_loaded(self, request: PlacementRequest, rh: int) -> int:
        """The least allocated node that fits, off the lazy heap (64 live entries at
        most), else the least allocated of a pruned scan."""
        simple = self._simple(request)
        spread = None if simple else self._spread_for(request)
        found = self._least_allocated(request, spread, 1, 64)
        if found:
            return found[0]
        if not self._indexed_nodes:
            return -1
        # The least loaded nodes cannot take it: the least loaded of a pruned scan.
        accept = None if simple else self._acceptor(request, spread)
        best = self.scan(rh % self.n, request.resources.as_tuple(), 64, accept)
        if not best:
            return -1
        dom, node_hash = self.dom, self.node_hash
        return min(best, key=lambda i: (dom[i], node_hash[i]))

    def _choose_best_fit(self, request: PlacementRequest, rh: int) -> int:
        """The node left with the least free memory (then cpu) that still fits.

        The index is sorted by (free memory, free cpu), so the first entry from the
        bisection point that fits on every resource is the best fit; the walk only
        skips nodes with enough memory but too little cpu or pids.
        """
        rc, rm, rp = request.resources.as_tuple()
        simple = self._simple(request)
        spread = None if simple else self._spread_for(request)
        index = self._bestfit
        free_p = self.free_p
        for pos in range(bisect_left(index, (rm, rc, -1, -1)), len(index)):
            entry = index[pos]
            i = entry[3]
            if (
                entry[1] >= rc
                and free_p[i] >= rp
                and (simple or self._admissible(i, request, spread))
            ):
                return i
        return -1

    # --------------------------------------------------------------- decisions

    def request_hash(self, request: PlacementRequest) -> int:
        """``stable_hash(seed, "request", replica_id)``, without re-encoding the prefix."""
        data = self._request_prefix + request.replica_id.encode("utf-8", "surrogatepass")
        return int.from_bytes(blake2b(data, digest_size=8).digest(), "little")

    def _tenant_cap_reason(self, request: PlacementRequest) -> str | None:
        policy = self.snapshot.tenants.get(request.tenant)
        if policy is None or policy.cap is None:
            return None
        use = self.tenant_use.get(request.tenant, [0, 0, 0])
        want = request.resources.as_tuple()
        cap = policy.cap.as_tuple()
        for dim in range(3):
            if use[dim] + want[dim] > cap[dim]:
                return (
                    f"tenant {request.tenant!r} is at its cap: {request.replica_id} needs "
                    f"{_dim_phrase(dim, want[dim])} but the tenant already holds "
                    f"{_fmt(dim, use[dim])} of its {_fmt(dim, cap[dim])} {_DIMS[dim]} cap"
                )
        return None

    def place_one(self, request: PlacementRequest) -> Decision:
        """Decide one request and update every index as if it had been placed."""
        if request.replica_id in self.placed_on:
            return Decision(
                replica_id=request.replica_id,
                node_id=None,
                rule="duplicate",
                reason=f"replica {request.replica_id} is already placed on "
                f"{self.placed_on[request.replica_id]}",
            )
        capped = self._tenant_cap_reason(request)
        if capped is not None:
            return Decision(
                replica_id=request.replica_id, node_id=None, rule="tenant_cap", reason=capped
            )
        # Within a batch free room only shrinks, so a shape that failed fails again;
        # with distinct_nodes or spread it also depends on the workload's own
        # placements, so those failures are forgotten when the workload places one.
        res = request.resources
        shape = (res.cpu_millicores, res.memory_bytes, res.pids, request.constraints)
        simple_shape = not request.distinct_nodes and request.spread_by is None
        if simple_shape:
            failed = self.failed_shapes
            key: tuple[object, ...] = shape
        else:
            failed = self.failed_by_workload.setdefault(request.workload, {})
            key = (*shape, request.distinct_nodes, request.spread_by, request.max_skew)
        known: tuple[Rule, str] | None = failed.get(key)
        if known is None and simple_shape and not request.constraints:
            # A request at least as large as one that already failed fails too.
            for small in self.failed_frontier:
                if small[0] <= shape[0] and small[1] <= shape[1] and small[2] <= shape[2]:
                    verdict: tuple[Rule, str] = ("resources", self._no_room_reason(res))
                    failed[key] = known = verdict
                    break
        if known is not None:
            return Decision(
                replica_id=request.replica_id,
                node_id=None,
                rule=known[0],
                reason=known[1],
            )
        i = self._choose(request, self.request_hash(request)) if self.n else -1
        if i < 0:
            rule, reason = self.why_not(request)
            failed[key] = (rule, reason)
            if simple_shape and not request.constraints and rule == "resources":
                self._remember_failure((res.cpu_millicores, res.memory_bytes, res.pids))
            return Decision(replica_id=request.replica_id, node_id=None, rule=rule, reason=reason)
        self.commit(request, i)
        return Decision(replica_id=request.replica_id, node_id=self.ids[i])

    def _remember_failure(self, shape: tuple[int, int, int]) -> None:
        """Keep the Pareto-minimal shapes that found no room (at most 64)."""
        c, m, p = shape
        kept = [s for s in self.failed_frontier if not (c <= s[0] and m <= s[1] and p <= s[2])]
        kept.append(shape)
        self.failed_frontier = kept[-64:]

    def commit(self, request: PlacementRequest, i: int) -> None:
        """Record ``request`` as placed on node ``i``."""
        rc, rm, rp = request.resources.as_tuple()
        self.free_c[i] -= rc
        self.free_m[i] -= rm
        self.free_p[i] -= rp
        self._tree_update(i)
        node = self.nodes[i]
        self.dom[i] = self._dominant_after(i, 0, 0, 0)
        self.credit[i] -= placement_cost(node.capacity, request.resources) << self.spend_shift
        self._update_credit_term(i)
        self.placed_on[request.replica_id] = node.id
        self._count_tenant(request.tenant, request.resources, +1)
        self._count_workload(request.workload, i)
        self.failed_by_workload.pop(request.workload, None)
        for spread in self.spreads_of.get(request.workload, ()):
            value = node.label(spread.key)
            if value is not None:
                spread.counts[value] = spread.counts.get(value, 0) + 1
        if self._level_of and self.usable[i]:
            was, level = self._level_of[i], min(self._load_key(i), _OVER)
            if level != was:
                entry = (self.node_hash[i], i)
                bucket = self._levels[was]
                del bucket[bisect_left(bucket, entry)]
                insort(self._levels[level], entry)
                self._level_of[i] = level
        if self._bestfit_key:
            old = self._bestfit_key[i]
            pos = bisect_left(self._bestfit, old)
            if pos < len(self._bestfit) and self._bestfit[pos] == old:
                del self._bestfit[pos]
            new = self._fit_key(i)
            self._bestfit_key[i] = new
            insort(self._bestfit, new)

    def tenant_share(self, tenant: str) -> int:
        """The tenant's dominant share of the usable cluster, in parts per billion."""
        use = self.tenant_use.get(tenant)
        if not use:
            return 0
        return max(
            (use[d] * 1_000_000_000 // self.total[d]) if self.total[d] else 0 for d in range(3)
        )

    def place_batch(
        self,
        requests: Sequence[PlacementRequest],
        *,
        clock: Callable[[], float] | None = None,
        latencies: list[float] | None = None,
    ) -> list[Decision]:
        """Decide ``requests`` (tenant fairness across tenants, priority within one);
        decisions come back in the order of ``requests``.

        Within a tenant and priority the mycelial scorer decides the largest
        request first (``SchedulerConfig.largest_first``: its dominant share of
        the cluster, then request order); the baselines keep request order.

        With ``clock`` (e.g. ``time.perf_counter``, passed in by a benchmark: the
        library never reads a clock itself), the time of each decision is appended
        to ``latencies``.
        """
        decisions: list[Decision | None] = [None] * len(requests)
        timings = latencies if latencies is not None else []

        def decide(pos: int) -> Decision:
            if clock is None:
                return self.place_one(requests[pos])
            started = clock()
            decision = self.place_one(requests[pos])
            timings.append(clock() - started)
            return decision

        seen: set[str] = set()
        queues: dict[str, list[tuple[int, int, int]]] = {}
        largest_first = self.config.largest_first and self.strategy.startswith("mycelial")
        tc, tm, tp = (t or 1 for t in self.total)
        for pos, request in enumerate(requests):
            if not isinstance(request, PlacementRequest):
                raise InvalidInputError(
                    f"requests[{pos}] must be a PlacementRequest, got {type(request).__name__}"
                )
            if request.replica_id in seen:
                decisions[pos] = Decision(
                    replica_id=request.replica_id,
                    node_id=None,
                    rule="duplicate",
                    reason=f"replica {request.replica_id} is listed twice in this batch",
                )
                continue
            seen.add(request.replica_id)
            size = 0
            if largest_first:  # the request's dominant share of the cluster, per billion
                res = request.resources
                size = max(
                    res.cpu_millicores * 1_000_000_000 // tc,
                    res.memory_bytes * 1_000_000_000 // tm,
                    res.pids * 1_000_000_000 // tp,
                )
            queues.setdefault(request.tenant, []).append((-request.priority, -size, pos))
        for queue in queues.values():
            queue.sort(reverse=True)  # pop() from the end gives the highest priority first
        tenants = self.snapshot.tenants
        if len(queues) == 1:
            for queue in queues.values():
                while queue:
                    *_, pos = queue.pop()
                    decisions[pos] = decide(pos)
        else:
            # Weighted fair order (Xen credit style): the tenant furthest below its
            # weighted share goes next, so UNDER tenants are served before OVER ones.
            def key(tenant: str) -> tuple[int, str]:
                policy = tenants.get(tenant)
                weight = policy.weight if policy is not None else 1
                return (self.tenant_share(tenant) * 1000 // weight, tenant)

            heap = [key(tenant) for tenant in queues]
            heapq.heapify(heap)
            while heap:
                _, tenant = heapq.heappop(heap)
                queue = queues[tenant]
                *_, pos = queue.pop()
                decisions[pos] = decide(pos)
                if queue:
                    heapq.heappush(heap, key(tenant))
        return [d for d in decisions if d is not None]

    # ------------------------------------------------------------- diagnosis

    def why_not(self, request: PlacementRequest) -> tuple[Rule, str]:
        """Which rule keeps ``request`` off every node, in words a user can act on."""
        want = request.resources.as_tuple()
        if self.n == 0:
            return "no_nodes", "no nodes are known"
        usable_count = self.n - sum(self.not_usable.values())
        if usable_count == 0:
            return "state", f"no node can take new work: {self._not_usable_text()}"
        suffix = self._not_usable_suffix()
        frees = (self.free_c, self.free_m, self.free_p)
        if not request.constraints:
            # Resources first, answered from the max-tree without a scan.
            fitting = self.scan(0, want, self.n)
            if not fitting:
                return "resources", self._no_room_reason(request.resources)
            scope = ""
        else:
            usable = [i for i in range(self.n) if self.usable[i]]
            matching = usable
            for constraint in request.constraints:
                kept = [i for i in matching if constraint.matches(self.nodes[i])]
                if not kept:
                    seen = sorted(
                        {
                            v
                            for i in matching
                            if (v := self.nodes[i].label(constraint.key)) is not None
                        }
                    )
                    values = (
                        f"values of {constraint.key} there: {', '.join(seen)}"
                        if seen
                        else (f"none has the label {constraint.key}")
                    )
                    return "constraints", (
                        f"no usable node matches constraint {constraint} "
                        f"({len(matching)} nodes otherwise eligible; {values}){suffix}"
                    )
                matching = kept
            scope = f" among the {len(matching)} nodes matching {self._constraints_text(request)}"
            fitting = [i for i in matching if all(frees[d][i] >= want[d] for d in range(3))]
            if not fitting:
                for dim in (1, 0, 2):
                    j = self._most_free(matching, frees[dim])
                    if frees[dim][j] < want[dim]:
                        return "resources", (
                            f"no node{scope} has {_dim_phrase(dim, want[dim])} free; "
                            f"largest free: {_fmt(dim, max(frees[dim][j], 0))} on "
                            f"{self.ids[j]}{suffix}"
                        )
                j = self._most_free(matching, self.free_m)
                return "resources", (
                    f"no node{scope} has {request.resources.human()} free together; closest: "
                    f"{self.ids[j]} with {self._free_text(j)} free{suffix}"
                )
        if request.distinct_nodes:
            per_node = self.wl_node.get(request.workload, {})
            free_of_it = [i for i in fitting if not per_node.get(i)]
            if not free_of_it:
                return "distinct_nodes", (
                    f"all {len(fitting)} nodes with room{scope} already run a replica of "
                    f"{request.workload} (distinct_nodes); add nodes or allow two replicas "
                    f"on one node"
                )
            fitting = free_of_it
        spread = self._spread_for(request)
        if spread is not None and not spread.domains:
            how = "--zone" if spread.key == "zone" else f"--label {spread.key}=VALUE"
            return "spread", (
                f"{request.workload} spreads over {spread.key} (spread_by), but none of the "
                f"{len(fitting)} nodes with room{scope} has a {spread.key}: give nodes one "
                f"(hypha agent {how}) or remove spread_by"
            )
        if spread is not None:
            counts = ", ".join(f"{d}: {spread.counts.get(d, 0)}" for d in sorted(spread.domains))
            lowest = spread.minimum()
            starved = sorted(d for d in spread.domains if spread.counts.get(d, 0) == lowest)
            return "spread", (
                f"one more replica of {request.workload} would exceed max_skew "
                f"{request.max_skew} over "
                f"{spread.key} for {request.workload} (replicas per {spread.key}: {counts}); "
                f"the emptiest ({', '.join(starved)}) has no node with room{scope}: "
                f"free room there or raise max_skew"
            )
        return (
            "resources",
            f"no node could take {request.workload}{scope}{suffix}",
        )  # pragma: no cover

    def _no_room_reason(self, resources: Resources) -> str:
        """Why no usable node fits ``resources`` (known to be true), from the max-tree."""
        want = resources.as_tuple()
        frees = (self.free_c, self.free_m, self.free_p)
        suffix = self._not_usable_suffix()
        for dim in (1, 0, 2):
            j = self._argmax(dim)
            if frees[dim][j] < want[dim]:
                return (
                    f"no node has {_dim_phrase(dim, want[dim])} free; largest free: "
                    f"{_fmt(dim, max(frees[dim][j], 0))} on {self.ids[j]}{suffix}"
                )
        j = self._argmax(1)
        return (
            f"no node has {resources.human()} free together; closest: "
            f"{self.ids[j]} with {self._free_text(j)} free{suffix}"
        )

    def _most_free(self, among: Sequence[int], free: Sequence[int]) -> int:
        return max(among, key=lambda i: (free[i], self.ids[i]))

    def _not_usable_text(self) -> str:
        return ", ".join(f"{count} {why}" for why, count in sorted(self.not_usable.items()))

    def _not_usable_suffix(self) -> str:
        """`` (1 suspect node takes no new work)``, or nothing when every node is usable."""
        if not self.not_usable:
            return ""
        verb = "node takes" if sum(self.not_usable.values()) == 1 else "nodes take"
        return f" ({self._not_usable_text()} {verb} no new work)"

    def _free_text(self, i: int) -> str:
        return (
            f"{format_cpu(max(self.free_c[i], 0))}, {format_bytes(max(self.free_m[i], 0))} "
            f"memory, {max(self.free_p[i], 0)} pids"
        )

    @staticmethod
    def _constraints_text(request: PlacementRequest) -> str:
        return ", ".join(str(c) for c in request.constraints)

    def feasible_nodes(self, request: PlacementRequest) -> list[int]:
        """Every node ``request`` could go on now (a full scan, for ``explain``)."""
        return self._all_feasible(request, self._spread_for(request))

    def free_of(self, i: int) -> Resources:
        return Resources(max(self.free_c[i], 0), max(self.free_m[i], 0), max(self.free_p[i], 0))

    def tenant_usage(self) -> Mapping[str, tuple[int, int, int]]:
        return {t: (u[0], u[1], u[2]) for t, u in sorted(self.tenant_use.items())}


def placements_after(
    snapshot: Snapshot, requests: Sequence[PlacementRequest], decisions: Sequence[Decision]
) -> list[Placement]:
    """The snapshot's placements plus the placed decisions, for chaining batches."""
    out = list(snapshot.placements)
    by_id = {r.replica_id: r for r in requests}
    for decision in decisions:
        if decision.node_id is None:
            continue
        req = by_id[decision.replica_id]
        out.append(
            Placement(
                replica_id=req.replica_id,
                workload=req.workload,
                node_id=decision.node_id,
                resources=req.resources,
                tenant=req.tenant,
            )
        )
    return out
