"""The credit ledger: what a node earns and owes each epoch, decay, and exchange.

Unit: one credit is one millicore of spare capacity held for one epoch, where
"spare" is measured on the node's scarcest resource and expressed in the node's
own cpu: a node whose dominant utilisation is ``U`` (per mille, the largest of
cpu, memory and pids used over capacity, counting for each resource the larger
of what is reserved and what is observed in use) has
``spare = capacity_cpu * (1000 - U) / 1000`` millicores. A 64-core node half
full therefore earns more than an 8-core node half full: absolute units.

Each epoch, for every node, in this order (all integer arithmetic):

1. **Decay**: ``balance -= trunc(balance / 2**decay_shift)`` (halves by default),
   so old history fades.
2. **Earn**: alive and eligible nodes add ``spare`` (above).
3. **Owe**: every node that is not dead subtracts
   ``pressure_factor * capacity_cpu * max(0, U - target_utilisation) / 1000``:
   pressure above the target share costs more than spare earns.
4. **Exchange** (mycelial): for ``exchange_rounds`` rounds, along every edge of
   the overlay, credit flows from the end with more credit per millicore of
   capacity to the one with less: ``exchange_rate/1000 / (max_degree + 1)`` of
   the amount that would equalise the pair's densities. Flows of a round are
   computed from the balances at the start of the round and then applied, so
   the result does not depend on edge order, and each flow is subtracted from
   one node and added to another in integers, so the total is exactly
   conserved. Diffusing density rather than amount matters with mixed node
   sizes: an 8-core node next to a 64-core one must not inherit half of the big
   node's credit.

The overlay links every node that is not dead to its ``ring_neighbours``
successors on a hash ring (nodes ordered by a stable hash of their id) and to
its ``zone_neighbours`` successors on its zone's own ring. Ring links spread
credit across the cluster in few hops; zone links make a node's balance a
measure of its zone's headroom, which steers work away from congested zones.

How placement reads and spends credit: the scorer's credit term is the
balance divided by the node's steady full-spare balance
(``cap_cpu * 2**decay_shift``), i.e. smoothed relative headroom of the node's
neighbourhood, clamped to +-1000 per mille. Placing a replica subtracts its
cost, the replica's dominant share of the node in the node's cpu units
(``max(cpu, memory * cap_cpu / cap_memory, pids * cap_cpu / cap_pids)``) times
``2**decay_shift`` (what it would take off the steady balance), from the
balance the rest of the batch sees, so one rich node does not attract a whole
batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

from ._hash import stable_hash
from .config import DEFAULT_CONFIG, SchedulerConfig
from .types import NodeInfo, Resources, Snapshot


def dominant_utilisation(capacity: Resources, used: Resources) -> int:
    """The largest of used/capacity over cpu, memory and pids, per mille (may exceed 1000)."""
    worst = 0
    for cap, use in zip(capacity.as_tuple(), used.as_tuple(), strict=True):
        if cap > 0:
            worst = max(worst, use * 1000 // cap)
        elif use > 0:
            worst = max(worst, 2000)
    return worst


def used_resources(node: NodeInfo) -> Resources:
    """Per resource, the larger of what is reserved and what is observed in use."""
    if node.load is None:
        return node.allocated
    a, b = node.allocated, node.load
    return Resources(
        max(a.cpu_millicores, b.cpu_millicores),
        max(a.memory_bytes, b.memory_bytes),
        max(a.pids, b.pids),
    )


def income(node: NodeInfo, config: SchedulerConfig = DEFAULT_CONFIG) -> int:
    """What ``node`` earns minus what it owes this epoch (steps 2 and 3 above)."""
    if node.state == "dead":
        return 0
    cpu = node.capacity.cpu_millicores
    util = dominant_utilisation(node.capacity, used_resources(node))
    earned = 0
    if node.state == "alive" and node.eligible:
        earned = cpu * max(0, 1000 - util) // 1000
    owed = config.pressure_factor * cpu * max(0, util - config.target_utilisation) // 1000
    return earned - owed


def decay(balance: int, shift: int) -> int:
    """``balance`` minus ``balance / 2**shift`` rounded toward zero (symmetric for debts)."""
    if shift == 0:
        return balance
    magnitude = abs(balance) >> shift
    return balance - magnitude if balance >= 0 else balance + magnitude


def overlay(
    nodes: Iterable[NodeInfo], config: SchedulerConfig = DEFAULT_CONFIG
) -> list[tuple[str, str]]:
    """The exchange overlay's edges as sorted ``(a, b)`` id pairs with ``a < b``, sorted.

    Dead nodes take no part. The result depends only on the set of nodes (and
    their zones), never on the order they are listed in.
    """
    live = sorted((n for n in nodes if n.state != "dead"), key=lambda n: n.id)
    key = (config.ring_neighbours, config.zone_neighbours, tuple((n.id, n.zone) for n in live))
    cached = _last_overlay.get(key)
    if cached is not None:
        return list(cached)
    edges: set[tuple[str, str]] = set()

    def ring(members: Sequence[NodeInfo], links: int) -> None:
        if len(members) < 2 or links == 0:
            return
        order = sorted(members, key=lambda n: (_ring_hash(n.id), n.id))
        count = len(order)
        for pos, node in enumerate(order):
            for step in range(1, min(links, count - 1) + 1):
                other = order[(pos + step) % count]
                a, b = sorted((node.id, other.id))
                edges.add((a, b))

    ring(live, config.ring_neighbours)
    zones: dict[str, list[NodeInfo]] = {}
    for node in live:
        if node.zone:
            zones.setdefault(node.zone, []).append(node)
    for zone in sorted(zones):
        ring(zones[zone], config.zone_neighbours)
    result = tuple(sorted(edges))
    _last_overlay.clear()  # one entry: consecutive epochs of one cluster share it
    _last_overlay[key] = result
    return list(result)


# The overlay is a pure function of (links, live node ids and zones), and a
# cluster's membership rarely changes between epochs, so the last one is kept.
_last_overlay: dict[tuple[object, ...], tuple[tuple[str, str], ...]] = {}


@lru_cache(maxsize=1 << 16)
def _ring_hash(node_id: str) -> int:
    return stable_hash("ring", node_id)


def exchange(
    balances: Mapping[str, int],
    edges: Sequence[tuple[str, str]],
    *,
    rounds: int,
    rate: int = 1000,
    capacities: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Diffuse credit along ``edges`` for ``rounds`` rounds; the total is conserved exactly.

    With ``capacities`` (each node's cpu), credit flows down the gradient of
    credit *per unit of capacity*, so it settles in proportion to capacity rather
    than evenly: along an edge (a, b) it moves
    ``(B_a * c_b - B_b * c_a) / (c_a + c_b) * rate / 1000 / (max_degree + 1)``
    (the amount that would equalise the pair's densities, scaled down so a round
    never overshoots). Without capacities every node counts as capacity 1.
    """
    current = dict(balances)
    if not edges or rounds == 0 or rate == 0:
        return current
    degree: dict[str, int] = {}
    for a, b in edges:
        degree[a] = degree.get(a, 0) + 1
        degree[b] = degree.get(b, 0) + 1
    divisor = 1000 * (max(degree.values()) + 1)
    caps = {name: max(1, capacities.get(name, 1)) if capacities else 1 for name in current}
    for _ in range(rounds):
        delta = dict.fromkeys(current, 0)
        for a, b in edges:
            ca, cb = caps[a], caps[b]
            diff = current[a] * cb - current[b] * ca
            flow = abs(diff) * rate // (divisor * (ca + cb))
            if flow == 0:
                continue
            if diff > 0:
                delta[a] -= flow
                delta[b] += flow
            else:
                delta[a] += flow
                delta[b] -= flow
        for name, change in delta.items():
            current[name] += change
    return current


def epoch(snapshot: Snapshot, *, config: SchedulerConfig = DEFAULT_CONFIG) -> dict[str, int]:
    """New credit balances for every node in ``snapshot``: decay, earn, owe, exchange.

    Pure: the result depends only on the snapshot's nodes (as a set) and ``config``.
    """
    after = {n.id: decay(n.credit, config.decay_shift) + income(n, config) for n in snapshot.nodes}
    edges = overlay(snapshot.nodes, config)
    exchanged = exchange(
        {n.id: after[n.id] for n in snapshot.nodes if n.state != "dead"},
        edges,
        rounds=config.exchange_rounds,
        rate=config.exchange_rate,
        capacities={n.id: n.capacity.cpu_millicores for n in snapshot.nodes},
    )
    after.update(exchanged)
    return dict(sorted(after.items()))


def placement_cost(capacity: Resources, request: Resources) -> int:
    """Credit a placement spends: its dominant share of the node, in the node's cpu units."""
    cpu = capacity.cpu_millicores
    cost = request.cpu_millicores
    if capacity.memory_bytes > 0:
        cost = max(cost, request.memory_bytes * cpu // capacity.memory_bytes)
    if capacity.pids > 0:
        cost = max(cost, request.pids * cpu // capacity.pids)
    return cost
