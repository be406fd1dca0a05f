"""A committed membership entry must not undo a later change appended meanwhile
(decision 045). Real pysyncobj, driven by hand: no sockets are needed to append and
commit entries on a read-only replica."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest
from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.journal import FileJournal
from pysyncobj.node import TCPNode

from agent.consensus.raft import _BridgeSyncObj

NO_OP, MEMBERSHIP = bytes([1]), bytes([2])  # pysyncobj's command types
ME, LEADER, OTHER = "127.0.0.251:9", "127.0.0.252:9", "127.0.0.253:9"


def change(kind: str, address: str) -> bytes:
    return MEMBERSHIP + pickle.dumps([kind, address, TCPNode(address)])


@pytest.fixture(params=[SyncObj, _BridgeSyncObj], ids=["pysyncobj", "bridge"])
def replica(request: pytest.FixtureRequest) -> Iterator[SyncObj]:
    conf = SyncObjConf(autoTick=False, dynamicMembershipChange=True)
    sync = request.param(None, [LEADER, OTHER], conf=conf)
    try:
        yield sync
    finally:
        sync.destroy()


@pytest.mark.parametrize("address", [ME, OTHER], ids=["itself", "another voter"])
def test_committing_an_old_remove_keeps_a_later_add_appended_with_it(
    replica: SyncObj, address: str
) -> None:
    """A replica rebuilt while the leader adds it replays the log in one batch: an old
    "remove" of an address, then the new "add" (not committed yet). It lists the
    address; committing the old "remove" used to drop it again, for good (the add
    cannot commit without the new voter that never learns it was added)."""
    entries = [
        (NO_OP, 2, 1),
        (change("rem", address), 3, 1),
        (NO_OP, 4, 2),
        (change("add", address), 5, 2),
    ]
    message = {
        "type": "append_entries",
        "term": 2,
        "prevLogIdx": 1,
        "prevLogTerm": 0,
        "entries": entries,
        "commit_index": 4,
    }
    replica._SyncObj__onMessageReceived(TCPNode(LEADER), message)
    assert address in {n.address for n in replica.otherNodes}
    replica.doTick(0)  # applies entries 2-4: the old "remove", not the new "add"
    assert replica.raftLastApplied == 4
    listed = address in {n.address for n in replica.otherNodes}
    if type(replica) is SyncObj:
        assert not listed  # pysyncobj's own behaviour: if this fails, the override may go
    else:
        assert listed


def test_committed_changes_loaded_from_the_journal_still_apply(tmp_path: Path) -> None:
    """At start-up the journal's entries are applied when committed, not appended:
    those no later entry supersedes must still change the node list."""
    journal = str(tmp_path / "replica.journal")
    writer = FileJournal(journal)
    for entry in [
        (NO_OP, 1, 0),
        (change("rem", OTHER), 2, 1),
        (change("add", ME), 3, 1),
        (change("rem", ME), 4, 1),
        (change("add", ME), 5, 1),
    ]:
        writer.add(*entry)
    writer.setRaftCommitIndex(5)
    writer.onOneSecondTimer()  # saves the commit index
    writer._destroy()
    conf = SyncObjConf(autoTick=False, dynamicMembershipChange=True, journalFile=journal)
    replica = _BridgeSyncObj(None, [LEADER, OTHER], conf=conf)
    try:
        assert {n.address for n in replica.otherNodes} == {LEADER, OTHER}
        replica.doTick(0)
        assert replica.raftLastApplied == 5
        assert {n.address for n in replica.otherNodes} == {LEADER, ME}
    finally:
        replica.destroy()
