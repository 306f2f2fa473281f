"""RaftLog: the persisted log (read through MemoryStorage) followed by the unstable tail.

(Named test_raft_log, not test_log: tests/broker/test_log.py holds that module name.)
"""

from __future__ import annotations

import pytest
from helpers import BIG, entries, new_storage

from sentinel.raft.log import RaftLog, RaftLogError
from sentinel.raft.messages import ENTRY_OVERHEAD, Entry, Snapshot
from sentinel.raft.storage import LogCompacted, LogUnavailable, MemoryStorage


def log_of(stable: list[Entry] = (), unstable: list[Entry] = (), compact: int = 0) -> RaftLog:  # type: ignore[assignment]
    storage = new_storage(stable)
    if compact:
        storage.compact(compact)
    log = RaftLog(storage)
    log.append(unstable)
    return log


def all_entries(log: RaftLog) -> list[Entry]:
    return log.slice(log.first_index(), log.last_index() + 1, BIG)


# -- term lookups -------------------------------------------------------------------------


def test_term_across_snapshot_stable_and_unstable() -> None:
    """Terms come from the storage's snapshot (at first_index - 1), its entries, and the
    unstable tail; below the snapshot is compacted, past the tail unavailable."""
    log = log_of(entries(1, 1, 1, 2, 2, 3), entries(6, 3, 4), compact=3)

    assert (log.first_index(), log.last_index(), log.unstable_offset) == (4, 7, 6)
    for index in (1, 2):
        with pytest.raises(LogCompacted):
            log.term(index)
        assert log.term_or_zero(index) == 0
    assert [log.term(i) for i in range(3, 8)] == [2, 2, 3, 3, 4]
    with pytest.raises(LogUnavailable):
        log.term(8)
    assert log.term_or_zero(8) == 0
    assert log.last_term() == 4
    assert log.match_term(5, 3) and not log.match_term(5, 2) and not log.match_term(8, 0)


def test_term_with_unstable_snapshot() -> None:
    """A snapshot received from the leader and not yet persisted: its index has its term,
    everything below is compacted, the entries after it are unstable."""
    log = log_of(entries(1, 1, 1, 1))
    log.restore(Snapshot(10, 5, b"state"))

    assert (log.first_index(), log.last_index(), log.committed) == (11, 10, 10)
    assert log.term(10) == 5
    with pytest.raises(LogCompacted):
        log.term(9)
    with pytest.raises(LogCompacted):
        log.term(2)  # the storage still holds 2, but the snapshot supersedes it
    with pytest.raises(LogUnavailable):
        log.term(11)

    log.append(entries(11, 5, 6))
    assert [log.term(i) for i in (10, 11, 12)] == [5, 5, 6]
    assert log.unstable_offset == 11

    log.storage.apply_snapshot(Snapshot(10, 5, b"state"))  # type: ignore[attr-defined]
    log.stable_snapshot_to(10)
    assert log.unstable_snapshot is None and log.applied == 10
    assert [log.term(i) for i in (10, 11, 12)] == [5, 5, 6]


def test_empty_log() -> None:
    log = RaftLog(MemoryStorage())
    assert (log.first_index(), log.last_index(), log.last_term(), log.term(0)) == (1, 0, 0, 0)
    assert log.entries(1, BIG) == []


# -- slices and byte limits ---------------------------------------------------------------

SIZE = 10 + ENTRY_OVERHEAD  # the cost of each entry below


@pytest.mark.parametrize(
    ("lo", "hi", "max_bytes", "want"),
    [
        (1, 7, BIG, [1, 2, 3, 4, 5, 6]),
        (2, 5, BIG, [2, 3, 4]),  # across the stable / unstable boundary
        (4, 7, BIG, [4, 5, 6]),  # unstable only
        (1, 3, BIG, [1, 2]),  # stable only
        (1, 7, 2 * SIZE, [1, 2]),  # cut within the stable part
        (1, 7, 3 * SIZE - 1, [1, 2]),
        (1, 7, 3 * SIZE, [1, 2, 3]),  # exactly the stable part
        (1, 7, 4 * SIZE, [1, 2, 3, 4]),  # cut within the unstable part
        (2, 7, 4 * SIZE - 1, [2, 3, 4]),
        (4, 7, 2 * SIZE, [4, 5]),
        (1, 7, 0, [1]),  # an entry above the limit still travels alone
        (5, 7, 1, [5]),
        (3, 3, BIG, []),
        (4, 2, BIG, []),
    ],
)
def test_slice(lo: int, hi: int, max_bytes: int, want: list[int]) -> None:
    log = log_of(entries(1, 1, 1, 1, data=b"0123456789"), entries(4, 2, 2, 2, data=b"0123456789"))

    got = log.slice(lo, hi, max_bytes)

    assert [e.index for e in got] == want
    assert all(e.data == b"0123456789" for e in got)


def test_slice_cut_in_the_stable_part_takes_nothing_unstable() -> None:
    """A large stored entry stops the slice: the small unstable entries after it must
    not be appended to what came before it (that would skip an index)."""
    log = log_of([Entry(1, 1, b"a"), Entry(1, 2, b"b"), Entry(1, 3, b"x" * 1000)], entries(4, 1, 1))
    assert [e.index for e in log.slice(1, 6, 200)] == [1, 2]
    assert [e.index for e in log.slice(3, 6, 200)] == [3]
    assert [e.index for e in log.slice(4, 6, 200)] == [4, 5]


def test_slice_below_first_index_is_compacted() -> None:
    log = log_of(entries(1, 1, 1, 1, 1), compact=2)
    with pytest.raises(LogCompacted):
        log.slice(2, 4, BIG)
    with pytest.raises(LogCompacted):
        log.entries(1, BIG)
    assert [e.index for e in log.entries(3, BIG)] == [3, 4]


def test_next_committed_entries() -> None:
    log = log_of(entries(1, 1, 1), entries(3, 1, 1))
    assert log.next_committed_entries(BIG) == [] and not log.has_next_committed_entries()
    log.commit_to(3)
    assert [e.index for e in log.next_committed_entries(BIG)] == [1, 2, 3]
    assert [e.index for e in log.next_committed_entries(0)] == [1]
    log.applied_to(2)
    assert [e.index for e in log.next_committed_entries(BIG)] == [3]
    with pytest.raises(RaftLogError):
        log.applied_to(4)


# -- appending and conflicts --------------------------------------------------------------


@pytest.mark.parametrize(
    ("index", "log_term", "commit", "ents", "want_last", "want_commit", "want_terms"),
    [
        # the consistency check fails: nothing changes
        (3, 2, 3, entries(4, 4), None, 1, [1, 2, 3]),
        (4, 4, 3, entries(5, 4), None, 1, [1, 2, 3]),
        # term 0 (the empty log's) matches no index the log does not hold: taking it would
        # leave a gap before the new entries
        (5, 0, 3, entries(6, 4), None, 1, [1, 2, 3]),
        # matches the last entry: commit up to min(commit, last new index)
        (3, 3, 3, [], 3, 3, [1, 2, 3]),
        (3, 3, 4, [], 3, 3, [1, 2, 3]),
        (3, 3, 0, [], 3, 1, [1, 2, 3]),  # the commit never goes back
        (3, 3, 5, entries(4, 4, 4), 5, 5, [1, 2, 3, 4, 4]),
        # holds some of the entries already: only the new ones are added
        (2, 2, 4, entries(3, 3, 4), 4, 4, [1, 2, 3, 4]),
        # a message older than our log proves a match only up to its last entry: the
        # suffix after it stays, and the commit stops at the message's last entry
        (1, 1, 3, entries(2, 2), 2, 2, [1, 2, 3]),
        (0, 0, 3, [], 0, 1, [1, 2, 3]),
        # conflicts: the suffix from the first conflicting entry is replaced
        (2, 2, 3, entries(3, 4), 3, 3, [1, 2, 4]),
        (1, 1, 2, entries(2, 4, 4), 3, 2, [1, 4, 4]),
        (2, 2, 2, entries(3, 4, 4, 4), 5, 2, [1, 2, 4, 4, 4]),
    ],
)
def test_maybe_append(
    index: int,
    log_term: int,
    commit: int,
    ents: list[Entry],
    want_last: int | None,
    want_commit: int,
    want_terms: list[int],
) -> None:
    """§5.3's AppendEntries receiver rules 2-5, on a log 1/1 2/2 3/3 committed at 1."""
    log = log_of(entries(1, 1, 2), entries(3, 3))
    log.commit_to(1)

    assert log.maybe_append(index, log_term, commit, ents) == want_last
    assert log.committed == want_commit
    assert [e.term for e in all_entries(log)] == want_terms


def test_maybe_append_refuses_to_replace_committed() -> None:
    """A conflict at or below the commit means two different committed entries at one
    index: an invariant broken elsewhere, never papered over."""
    log = log_of(entries(1, 1, 2, 3))
    log.commit_to(2)
    with pytest.raises(RaftLogError):
        log.maybe_append(1, 1, 3, entries(2, 4))
    with pytest.raises(RaftLogError):
        log.append(entries(2, 4))
    assert [e.term for e in all_entries(log)] == [1, 2, 3]


def test_append_replacing_a_persisted_suffix() -> None:
    """An append below the unstable offset hides the persisted suffix at once; the next
    Ready's entries start there, which tells the storage to discard it."""
    log = log_of(entries(1, 1, 1, 1))
    assert log.append(entries(2, 2)) == 2
    assert log.unstable_offset == 2
    assert log.unstable_entries == entries(2, 2)
    with pytest.raises(LogUnavailable):
        log.term(3)
    assert [log.term(1), log.term(2)] == [1, 2]


def test_append_within_the_unstable_tail() -> None:
    log = log_of(entries(1, 1), entries(2, 1, 1, 1))
    assert log.append(entries(3, 2)) == 3
    assert (log.unstable_offset, log.unstable_entries) == (2, entries(2, 1, 2))
    assert log.append(entries(4, 2, 2)) == 5
    assert log.unstable_entries == entries(2, 1, 2, 2, 2)


@pytest.mark.parametrize(
    ("ents", "want"),
    [
        ([], 0),
        (entries(1, 1, 2, 3), 0),
        (entries(2, 2, 3), 0),
        (entries(3, 3), 0),
        (entries(1, 1, 2, 3, 4, 4), 4),  # new entries
        (entries(3, 3, 4, 4), 4),
        (entries(1, 4, 4), 1),  # conflicts
        (entries(2, 1, 4, 4), 2),
        (entries(3, 1, 2, 4, 4), 3),
    ],
)
def test_find_conflict(ents: list[Entry], want: int) -> None:
    assert log_of(entries(1, 1, 2, 3)).find_conflict(ents) == want


NO_SNAP = entries(1, 2, 2, 5, 5, 5)  # 1/2 2/2 3/5 4/5 5/5


@pytest.mark.parametrize(
    ("stable", "compact", "index", "term", "want"),
    [
        # the log starts at index 1
        (NO_SNAP, 0, 100, 2, (100, 0)),  # past the end: the term is unknown
        (NO_SNAP, 0, 5, 6, (5, 5)),
        (NO_SNAP, 0, 5, 5, (5, 5)),
        (NO_SNAP, 0, 5, 4, (2, 2)),  # a whole term skipped
        (NO_SNAP, 0, 5, 2, (2, 2)),
        (NO_SNAP, 0, 5, 1, (0, 0)),  # nothing of ours has a term <= 1
        (NO_SNAP, 0, 1, 2, (1, 2)),
        (NO_SNAP, 0, 1, 1, (0, 0)),
        (NO_SNAP, 0, 0, 0, (0, 0)),
        # compacted up to 10 (term 3); entries 11/3 12/3 13/4 14/4 15/4
        (entries(1, *[1] * 9, 3, 3, 3, 4, 4, 4), 10, 30, 3, (30, 0)),
        (entries(1, *[1] * 9, 3, 3, 3, 4, 4, 4), 10, 14, 9, (14, 4)),
        (entries(1, *[1] * 9, 3, 3, 3, 4, 4, 4), 10, 14, 4, (14, 4)),
        (entries(1, *[1] * 9, 3, 3, 3, 4, 4, 4), 10, 14, 3, (12, 3)),
        (entries(1, *[1] * 9, 3, 3, 3, 4, 4, 4), 10, 14, 2, (9, 0)),  # reaches the compacted part
        (entries(1, *[1] * 9, 3, 3, 3, 4, 4, 4), 10, 11, 2, (9, 0)),
        (entries(1, *[1] * 9, 3, 3, 3, 4, 4, 4), 10, 10, 2, (9, 0)),
        (entries(1, *[1] * 9, 3, 3, 3, 4, 4, 4), 10, 10, 3, (10, 3)),  # the snapshot's own term
    ],
)
def test_find_conflict_by_term(
    stable: list[Entry], compact: int, index: int, term: int, want: tuple[int, int]
) -> None:
    """The fast-backup search (RAFT-NOTES.md, etcd log.go findConflictByTerm): the largest
    ``i <= index`` whose term is ``<= term``, and that term; ``(i, 0)`` where the term at
    ``i`` is not held; ``(0, 0)`` if nothing qualifies."""
    assert log_of(stable, compact=compact).find_conflict_by_term(index, term) == want


def test_find_conflict_by_term_across_unstable() -> None:
    log = log_of(entries(1, 1, 1), entries(3, 3, 3, 5))
    assert log.find_conflict_by_term(5, 4) == (4, 3)
    assert log.find_conflict_by_term(5, 2) == (2, 1)


@pytest.mark.parametrize(
    ("last_index", "last_term", "want"),
    [(3, 2, True), (2, 2, False), (4, 2, True), (1, 3, True), (5, 1, False), (0, 0, False)],
)
def test_is_up_to_date(last_index: int, last_term: int, want: bool) -> None:
    """§5.4.1: a later last term wins; with the same last term the longer log."""
    assert log_of(entries(1, 1, 1, 2)).is_up_to_date(last_index, last_term) == want


# -- commit, apply and stabilization ------------------------------------------------------


def test_commit_to() -> None:
    log = log_of(entries(1, 1, 1))
    log.commit_to(2)
    log.commit_to(1)  # never backwards
    assert log.committed == 2
    with pytest.raises(RaftLogError):
        log.commit_to(3)
    assert log.committed == 2


def test_stable_to() -> None:
    log = log_of(entries(1, 1), entries(2, 1, 1, 1))
    log.stable_to(3, 1)
    assert (log.unstable_offset, log.unstable_entries) == (4, entries(4, 1))
    log.stable_to(2, 1)  # already stable: no-op
    assert (log.unstable_offset, log.unstable_entries) == (4, entries(4, 1))
    log.stable_to(5, 1)  # not in the log: no-op
    assert (log.unstable_offset, log.unstable_entries) == (4, entries(4, 1))
    log.stable_to(4, 1)
    assert (log.unstable_offset, log.unstable_entries) == (5, [])


def test_stable_to_with_a_term_mismatch() -> None:
    """Entries 2-4 of term 1 were handed out to persist; meanwhile a leader of term 2
    replaced 3 onwards. The persist of the old entries (reported as (4, term 1) or (3,
    term 1)) must not mark the replacements stable: they were never written (the ABA race
    of etcd's async_storage_writes_append_aba_race.txt)."""
    log = log_of(entries(1, 1), entries(2, 1, 1, 1))
    log.append(entries(3, 2))
    assert log.unstable_entries == entries(2, 1, 2)

    log.stable_to(4, 1)
    log.stable_to(3, 1)
    assert (log.unstable_offset, log.unstable_entries) == (2, entries(2, 1, 2))

    log.stable_to(2, 1)
    assert (log.unstable_offset, log.unstable_entries) == (3, entries(3, 2))
    log.stable_to(3, 2)
    assert (log.unstable_offset, log.unstable_entries) == (4, [])


def test_restore_replaces_the_log() -> None:
    log = log_of(entries(1, 1, 1), entries(3, 2))
    log.commit_to(2)
    log.restore(Snapshot(5, 3))
    assert (log.committed, log.first_index(), log.last_index(), log.unstable_entries) == (5, 6, 5, [])
    log.stable_snapshot_to(4)  # not the snapshot handed out: nothing happens
    assert log.unstable_snapshot == Snapshot(5, 3)
