"""What a soak run records, and the invariants checked against it.

The client's writes are recorded as ``Op`` (Jepsen style: invoked, then ok, fail
or unknown when the answer never came). Each workload is written by one client at
a time, so its ops form a sequence; the checker walks it keeping every state the
cluster could be in and requires the final observed state to be one of them. An
unknown op may apply at any moment after it was invoked, or never: also after the
client's later writes, because a write forwarded to the leader can commit after
the client gave up on it (Jepsen treats such an op's process as crashed, and
leaves the op open for the rest of the history). A write applied twice shows as a version
higher than any possible one; a lost write as a state none of the possibilities
has.

Observations are samples the runner takes while faults are in force: who each
agent says is leader in which term, and which members each agent sees dead.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

OpKind = Literal["create", "scale", "delete"]
Outcome = Literal["ok", "fail", "unknown"]


@dataclass(frozen=True, slots=True)
class Op:
    """One write the client made: what, to which workload, and how it ended."""

    kind: OpKind
    workload: str
    replicas: int | None
    outcome: Outcome
    invoked_at: float
    completed_at: float
    detail: str = ""


@dataclass(frozen=True, slots=True)
class WorkloadState:
    """A workload as the checker models it: absent, or present with replicas and version."""

    exists: bool
    replicas: int = 0
    version: int = 0


ABSENT = WorkloadState(exists=False)


def _apply(state: WorkloadState, kind: OpKind, replicas: int | None) -> WorkloadState | None:
    """The state after a ``kind`` write of ``replicas`` applies to ``state``, or ``None``
    if it cannot apply there."""
    if kind == "create":
        if state.exists:
            return None
        return WorkloadState(True, replicas or 0, 1)
    if not state.exists:
        return None
    if kind == "scale":
        if state.replicas == replicas:
            return state  # no change, no new version (as the state machine does)
        return WorkloadState(True, replicas or 0, state.version + 1)
    return ABSENT


def possible_final_states(ops: Sequence[Op]) -> set[WorkloadState]:
    """Every state one workload can be in after ``ops``, given how each one ended.

    Empty when some acknowledged op could not have applied in any state the history
    allows (``impossible_op`` names it)."""
    return _walk(ops)[0]


def impossible_op(ops: Sequence[Op]) -> Op | None:
    """The first acknowledged op that no possible state could have applied."""
    return _walk(ops)[1]


# The unknown ops not applied yet, as a sorted multiset of (kind, replicas): two open
# ops that write the same thing are interchangeable, which keeps the walk polynomial.
_Open = tuple[tuple[OpKind, int], ...]


def _walk(ops: Sequence[Op]) -> tuple[set[WorkloadState], Op | None]:
    configs: set[tuple[WorkloadState, _Open]] = {(ABSENT, ())}
    for op in ops:
        configs = _late_applies(configs)
        if op.outcome == "ok":
            configs = {
                (after, pending)
                for state, pending in configs
                if (after := _apply(state, op.kind, op.replicas)) is not None
            }
            if not configs:
                return set(), op
        elif op.outcome == "unknown":
            write = (op.kind, op.replicas or 0)
            configs = {(state, tuple(sorted((*pending, write)))) for state, pending in configs}
        # "fail": the agent answered that it did not apply; the states stay.
    return {state for state, _ in _late_applies(configs)}, None


def _late_applies(
    configs: set[tuple[WorkloadState, _Open]],
) -> set[tuple[WorkloadState, _Open]]:
    """``configs`` and every configuration reached by applying open unknown ops."""
    seen = set(configs)
    frontier = list(configs)
    while frontier:
        state, pending = frontier.pop()
        for k, (kind, replicas) in enumerate(pending):
            if k and pending[k - 1] == pending[k]:
                continue  # the same write as the one before: same result
            after = _apply(state, kind, replicas)
            if after is None:
                continue
            reached = (after, pending[:k] + pending[k + 1 :])
            if reached not in seen:
                seen.add(reached)
                frontier.append(reached)
    return seen


@dataclass(frozen=True, slots=True)
class Violation:
    invariant: str
    detail: str

    def __str__(self) -> str:
        return f"{self.invariant}: {self.detail}"


def check_writes(ops: Iterable[Op], final: Mapping[str, WorkloadState]) -> list[Violation]:
    """No acknowledged create, scale or delete lost, none applied twice."""
    by_workload: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_workload[op.workload].append(op)
    violations = []
    for name, sequence in sorted(by_workload.items()):
        sequence.sort(key=lambda op: op.invoked_at)
        possible, impossible = _walk(sequence)
        observed = final.get(name, ABSENT)
        if impossible is not None:
            violations.append(
                Violation(
                    "writes",
                    f"{name}: {impossible.kind} {impossible.replicas} at "
                    f"+{impossible.invoked_at:.1f}s was acknowledged, but no state the "
                    "history allows could have applied it",
                )
            )
            continue
        if observed in possible:
            continue
        shown = ", ".join(
            "absent" if not s.exists else f"{s.replicas} replicas v{s.version}"
            for s in sorted(possible, key=lambda s: (s.exists, s.replicas, s.version))
        )
        seen = (
            "absent" if not observed.exists else f"{observed.replicas} replicas v{observed.version}"
        )
        kind = "applied twice" if observed.version > max(s.version for s in possible) else "lost"
        violations.append(
            Violation("writes", f"{name}: observed {seen}, expected one of [{shown}] ({kind}?)")
        )
    return violations


@dataclass(frozen=True, slots=True)
class LeaderSample:
    observer: str
    term: int
    leader: str | None
    at: float


def check_unique_leaders(samples: Iterable[LeaderSample]) -> list[Violation]:
    """At most one leader per Raft term, whoever is asked."""
    leaders: dict[int, dict[str, str]] = defaultdict(dict)
    for sample in samples:
        if sample.leader:
            leaders[sample.term].setdefault(sample.leader, sample.observer)
    return [
        Violation("leader", f"term {term} had leaders {sorted(seen)} (seen by {seen})")
        for term, seen in sorted(leaders.items())
        if len(seen) > 1
    ]


@dataclass(frozen=True, slots=True)
class DeathSample:
    """``observer`` saw ``member`` dead at ``at``."""

    observer: str
    member: str
    at: float


@dataclass(frozen=True, slots=True)
class SlowWindow:
    """``node`` was only slow (paused shorter than the suspicion timeout) in this window."""

    node: str
    start: float
    end: float


def check_no_false_deaths(
    deaths: Iterable[DeathSample], windows: Iterable[SlowWindow], grace: float = 2.0
) -> list[Violation]:
    """Nobody declares a node dead while it was only slow (nor ``grace`` seconds after)."""
    violations = []
    windows = list(windows)
    for death in deaths:
        for window in windows:
            if window.node == death.member and window.start <= death.at <= window.end + grace:
                violations.append(
                    Violation(
                        "false-death",
                        f"{death.observer} saw {death.member} dead at +{death.at:.1f}s while "
                        f"it was only paused ({window.end - window.start:.1f}s)",
                    )
                )
                break
    return violations


@dataclass(frozen=True, slots=True)
class ReplicaView:
    """Where replicas should run (placements) and where they really run."""

    placed: Mapping[str, str] = field(default_factory=dict)  # replica -> node
    running: Mapping[str, Sequence[str]] = field(default_factory=dict)  # replica -> nodes


def check_placement(view: ReplicaView) -> list[Violation]:
    """No replica runs on a node it is not placed on, and none runs twice."""
    violations = []
    for replica, nodes in sorted(view.running.items()):
        placed = view.placed.get(replica)
        for node in nodes:
            if node != placed:
                where = f"placed on {placed}" if placed else "not placed anywhere"
                violations.append(
                    Violation("placement", f"{replica} runs on {node} but is {where}")
                )
        if len(nodes) > 1:
            violations.append(
                Violation("placement", f"{replica} runs {len(nodes)} times: {sorted(nodes)}")
            )
    return violations
