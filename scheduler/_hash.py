"""Seeded, stable hashes: the scheduler's only source of "randomness".

``hash()`` of a str changes between Python processes, and a module-level RNG
would make results depend on call history, so everything random-looking is a
pure function of (seed, names) here.
"""

from __future__ import annotations

from hashlib import blake2b

MASK64 = (1 << 64) - 1


def stable_hash(*parts: str | int) -> int:
    """A 64-bit hash of ``parts`` that is the same in every process and on every machine."""
    data = "\x1f".join(str(part) for part in parts).encode("utf-8", "surrogatepass")
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "little")


def mix64(value: int) -> int:
    """The splitmix64 finaliser: a cheap bijective scramble of a 64-bit int."""
    value = (value ^ (value >> 30)) * 0xBF58476D1CE4E5B9 & MASK64
    value = (value ^ (value >> 27)) * 0x94D049BB133111EB & MASK64
    return value ^ (value >> 31)


GOLDEN = 0x9E3779B97F4A7C15
