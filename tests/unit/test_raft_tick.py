"""How long pysyncobj's tick thread sleeps (decision 054), and the shared cipher key."""

from __future__ import annotations

import math
from typing import Any

import pysyncobj.syncobj
import pysyncobj.utility
import pytest
from pysyncobj.monotonic import monotonic

from agent.consensus.raft import RaftTimings, _derive_encryptor, _poll_until_due

FOLLOWER, LEADER = 0, 2
OVERDUE, LONGEST = 0.05, 0.25


class Poller:
    def __init__(self) -> None:
        self.timeouts: list[float] = []

    def poll(self, timeout: float) -> None:
        self.timeouts.append(timeout)


class Sync:
    """The fields of a SyncObj the deadline poll reads (pysyncobj's private names)."""

    def __init__(self, state: int, voter: bool, due_in: float) -> None:
        self._poller = Poller()
        self._SyncObj__raftState = state
        self._SyncObj__selfNode = object() if voter else None
        due = monotonic() + due_in  # pysyncobj's clock, as it stores its timers
        self._SyncObj__newAppendEntriesTime = due if state == LEADER else 0.0
        self._SyncObj__raftElectionDeadline = due if state != LEADER else 0.0


def slept(sync: Any) -> float:
    _poll_until_due(sync, OVERDUE, LONGEST)
    sync._poller.poll(0.05)  # what pysyncobj passes: its autoTickPeriod
    return float(sync._poller.timeouts[-1])


def test_a_leader_sleeps_until_its_next_heartbeat() -> None:
    assert 0 < slept(Sync(LEADER, True, 0.08)) <= 0.08


def test_a_follower_sleeps_until_its_election_deadline_or_the_longest_sleep() -> None:
    assert 0 < slept(Sync(FOLLOWER, True, 0.1)) <= 0.1
    assert slept(Sync(FOLLOWER, True, 0.6)) == LONGEST


def test_a_replica_has_no_timer_of_its_own() -> None:
    assert slept(Sync(FOLLOWER, False, math.inf)) == LONGEST


def test_an_overdue_timer_keeps_the_old_cadence_rather_than_spinning() -> None:
    # A follower connected to nobody cannot call the election its deadline asks for.
    assert slept(Sync(FOLLOWER, True, -1.0)) == OVERDUE
    assert slept(Sync(LEADER, True, -0.01)) == OVERDUE


def test_the_deadline_is_read_on_pysyncobjs_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    # pysyncobj's timers use CLOCK_MONOTONIC_RAW, which drifts from time.monotonic()
    # (by 0.25 s after 12 hours on the development VM): mixing the two clocks made
    # the sleep wrong by that much.
    monkeypatch.setattr("agent.consensus.raft.monotonicTime", lambda: 1000.0)
    sync = Sync(FOLLOWER, True, 0.0)
    sync._SyncObj__raftElectionDeadline = 1000.2
    assert slept(sync) == pytest.approx(0.2)


def test_idle_tick_period_is_checked() -> None:
    assert RaftTimings().idle_tick_period >= RaftTimings().tick_period
    with pytest.raises(ValueError, match="idle_tick_period"):
        RaftTimings(tick_period=0.5, idle_tick_period=0.1)


def test_the_cipher_key_is_derived_once_per_password() -> None:
    # pysyncobj runs PBKDF2 (100,000 rounds) for every SyncObj and TcpUtility.
    assert pysyncobj.utility.getEncryptor is _derive_encryptor
    assert pysyncobj.syncobj.getEncryptor is _derive_encryptor
    first = _derive_encryptor(b"k" * 32)
    assert _derive_encryptor(b"k" * 32) is first
    assert _derive_encryptor(b"j" * 32) is not first
    token = first.encrypt(b"hello")
    assert _derive_encryptor(b"k" * 32).decrypt(token) == b"hello"
