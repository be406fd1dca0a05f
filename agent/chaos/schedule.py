"""A seeded schedule of faults: the same seed always gives the same schedule.

Faults come one at a time: apply, hold, heal, wait for the cluster to converge,
rest, next. Targets are named by their index in the sorted node list, or as
``leader`` (whoever leads when the fault starts), so the schedule itself never
depends on what happened at run time.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

FaultKind = Literal[
    "kill", "kill-leader", "pause-short", "pause-long", "partition", "partition-leader", "loss"
]
FAULT_KINDS: tuple[FaultKind, ...] = (
    "kill",
    "kill-leader",
    "pause-short",
    "pause-long",
    "partition",
    "partition-leader",
    "loss",
)
LEADER = "leader"


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault: ``targets`` are node names or ``leader``; ``hold`` is how long it lasts.

    ``kill``: SIGKILL the targets, start them again after ``hold``.
    ``pause-short``: SIGSTOP for ``hold`` seconds, shorter than the suspicion timeout:
    the node is only slow and must not be declared dead.
    ``pause-long``: SIGSTOP for longer than that: it may be declared dead.
    ``partition``: cut ``targets`` (a minority) off from the rest.
    ``partition-leader``: cut the leader and ``targets`` (a minority with it) off.
    ``loss``: drop ``percent`` of the packets between ``targets`` and the rest.
    """

    kind: FaultKind
    targets: tuple[str, ...]
    hold: float
    percent: float = 0.0

    def describe(self) -> str:
        what = ",".join(self.targets)
        extra = f" {self.percent:g}%" if self.kind == "loss" else ""
        return f"{self.kind} {what}{extra} for {self.hold:.1f}s"


def make_schedule(
    seed: int,
    nodes: Sequence[str],
    count: int,
    *,
    suspicion_timeout: float,
    kinds: Sequence[FaultKind] = FAULT_KINDS,
    max_hold: float = 20.0,
) -> list[Fault]:
    """``count`` faults for a cluster of ``nodes``, drawn from ``seed``."""
    if len(nodes) < 3:
        raise ValueError("chaos needs at least 3 nodes (a majority must survive one fault)")
    rng = random.Random(seed)
    names = sorted(nodes)
    minority = (len(names) - 1) // 2
    schedule = []
    for _ in range(count):
        kind = rng.choice(list(kinds))
        hold = round(rng.uniform(max_hold / 3, max_hold), 1)
        percent = 0.0
        if kind == "kill":
            targets: tuple[str, ...] = (rng.choice(names),)
        elif kind == "kill-leader":
            targets = (LEADER,)
        elif kind == "pause-short":
            targets = (rng.choice(names),)
            hold = round(rng.uniform(0.2, 0.5) * suspicion_timeout, 1)
        elif kind == "pause-long":
            targets = (rng.choice(names),)
            hold = round(max(hold, 2 * suspicion_timeout), 1)
        elif kind == "partition":
            targets = tuple(sorted(rng.sample(names, rng.randint(1, minority))))
        elif kind == "partition-leader":
            companions = rng.randint(0, minority - 1)
            targets = (LEADER, *sorted(rng.sample(names, companions)))
        else:
            targets = (rng.choice(names),)
            percent = float(rng.choice((10, 20, 30)))
        schedule.append(Fault(kind, targets, hold, percent))
    return schedule
