"""The queue of updates waiting to be piggybacked, each sent a bounded number of times.

Updates that were sent fewer times go first, and among those the newest first, so a
fresh change overtakes an old one. A newer update about the same subject (a node's
liveness, or one key of one node) replaces the queued one. ``take_shared`` fills one
packet from two queues (membership, keys), half each while both have updates. Pure
data, no I/O.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass


@dataclass(slots=True)
class _Item:
    subject: Hashable
    packed: bytes
    transmits: int


class BroadcastQueue:
    """Pre-packed updates with per-item transmit counts."""

    __slots__ = ("_by_subject", "_buckets")

    def __init__(self) -> None:
        self._by_subject: dict[Hashable, _Item] = {}
        # transmits -> subject -> item; dict order is age (oldest first)
        self._buckets: dict[int, dict[Hashable, _Item]] = {}

    def __len__(self) -> int:
        return len(self._by_subject)

    def __contains__(self, subject: Hashable) -> bool:
        return subject in self._by_subject

    def queue(self, subject: Hashable, packed: bytes) -> None:
        """Queue ``packed`` about ``subject``, replacing an older update about it."""
        self.discard(subject)
        item = _Item(subject, packed, 0)
        self._by_subject[subject] = item
        self._buckets.setdefault(0, {})[subject] = item

    def discard(self, subject: Hashable) -> None:
        old = self._by_subject.pop(subject, None)
        if old is not None:
            bucket = self._buckets[old.transmits]
            del bucket[subject]
            if not bucket:
                del self._buckets[old.transmits]

    def take(self, room: int, limit: int, overhead: int = 3) -> list[bytes]:
        """Up to ``room`` bytes of updates (each counted ``overhead`` bytes of framing
        once), the least-sent and newest first. Items sent ``limit`` times are dropped."""
        chosen = self._choose(room - overhead)
        self._sent(chosen, limit)
        return [item.packed for item in chosen]

    def _choose(self, left: int) -> list[_Item]:
        chosen: list[_Item] = []
        skipped = 0
        for transmits in sorted(self._buckets):
            for item in reversed(self._buckets[transmits].values()):
                size = len(item.packed)
                if size <= left:
                    chosen.append(item)
                    left -= size
                elif (skipped := skipped + 1) > 32:
                    break
                if left < 8:
                    break
            if left < 8 or skipped > 32:
                break
        return chosen

    def _sent(self, chosen: list[_Item], limit: int) -> None:
        for item in chosen:
            bucket = self._buckets[item.transmits]
            del bucket[item.subject]
            if not bucket:
                del self._buckets[item.transmits]
            item.transmits += 1
            if item.transmits >= limit:
                del self._by_subject[item.subject]
            else:
                self._buckets.setdefault(item.transmits, {})[item.subject] = item


def take_shared(
    first: BroadcastQueue, second: BroadcastQueue, room: int, limit: int, overhead: int = 3
) -> list[bytes]:
    """Fill ``room`` bytes from two queues, each sure of half of it while both have
    updates waiting; what one leaves unused, the other gets. A storm in one queue
    (suspicions and refutations on a lossy network, or a busy writer of keys) then
    slows the other's updates to half speed instead of starving them."""
    left = room - overhead
    a = first._choose(left // 2)
    b = second._choose(left - _size(a))
    a = first._choose(left - _size(b))
    first._sent(a, limit)
    second._sent(b, limit)
    return [item.packed for item in a] + [item.packed for item in b]


def _size(items: list[_Item]) -> int:
    return sum(len(item.packed) for item in items)
