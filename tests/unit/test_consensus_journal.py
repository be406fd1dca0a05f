"""The crash-safe journal compaction and the start-up repair (no cluster)."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

from pysyncobj.journal import FileJournal

from agent.consensus.raft import _SafeJournal, repair_journal


def entries(n: int) -> list[tuple[bytes, int, int]]:
    return [(b"\x00cmd-%d" % i, i, 1 + i // 4) for i in range(1, n + 1)]


def read(path: Path) -> list[tuple[bytes, int, int]]:
    journal = FileJournal(str(path))
    found = [(bytes(journal[i][0]), journal[i][1], journal[i][2]) for i in range(len(journal))]
    journal._destroy()
    return found


def test_compaction_rewrites_the_journal_atomically(tmp_path: Path) -> None:
    path = tmp_path / "raft.journal"
    journal = _SafeJournal(str(path))
    for entry in entries(10):
        journal.add(*entry)
    journal.setRaftCommitIndex(9)
    journal.deleteEntriesTo(4)
    assert [journal[i][1] for i in range(len(journal))] == [5, 6, 7, 8, 9, 10]
    journal.add(b"\x00new", 11, 3)
    assert journal.getRaftCommitIndex() == 9  # the unsaved commit index survives the reopen
    journal._destroy()
    assert read(path) == entries(10)[4:] + [(b"\x00new", 11, 3)]
    assert not (tmp_path / "raft.journal.compact").exists()


def test_repair_trims_a_journal_that_starts_before_its_snapshot(tmp_path: Path) -> None:
    journal, dump = tmp_path / "raft.journal", tmp_path / "raft.dump"
    writer = FileJournal(str(journal))
    for entry in entries(12):
        writer.add(*entry)
    writer._destroy()
    # A snapshot taken at entries 7 (prev) and 8 (last); the kill came before the trim.
    all_entries = entries(12)
    with open(dump, "wb") as handle, gzip.GzipFile(fileobj=handle, mode="wb") as out:
        pickle.dump(({}, all_entries[7], all_entries[6], set()), out)
    assert repair_journal(str(journal), str(dump)) is True
    assert read(journal) == all_entries[6:]
    # Already aligned: nothing to do.
    assert repair_journal(str(journal), str(dump)) is False
    assert read(journal) == all_entries[6:]


def test_repair_leaves_unrelated_or_missing_files_alone(tmp_path: Path) -> None:
    journal, dump = tmp_path / "raft.journal", tmp_path / "raft.dump"
    assert repair_journal(str(journal), str(dump)) is False
    writer = FileJournal(str(journal))
    for entry in entries(5):
        writer.add(*entry)
    writer._destroy()
    dump.write_bytes(b"not a snapshot")
    assert repair_journal(str(journal), str(dump)) is False
    assert read(journal) == entries(5)
