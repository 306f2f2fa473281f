"""MemoryStorage: the reference RaftStorage (a node's "disk" in the tests and the
simulation). The bounds are the RaftStorage contract: the log is the snapshot at
``first_index() - 1`` followed by entries up to ``last_index()``."""

from __future__ import annotations

import pytest
from helpers import BIG, entries

from sentinel.raft.messages import ENTRY_OVERHEAD, HardState, Snapshot
from sentinel.raft.storage import LogCompacted, LogUnavailable, MemoryStorage


def storage_of(*terms: int) -> MemoryStorage:
    s = MemoryStorage()
    s.append(entries(1, *terms))
    return s


def terms(s: MemoryStorage) -> list[int]:
    return [e.term for e in s.entries(s.first_index(), s.last_index() + 1, BIG)]


def test_empty() -> None:
    s = MemoryStorage()
    assert (s.first_index(), s.last_index(), s.term(0)) == (1, 0, 0)
    assert s.snapshot() == Snapshot(0, 0)
    assert s.initial_state() == HardState()
    with pytest.raises(LogUnavailable):
        s.term(1)


def test_hard_state() -> None:
    s = MemoryStorage()
    s.set_hard_state(HardState(3, 2, 1))
    assert s.initial_state() == HardState(3, 2, 1)


@pytest.mark.parametrize(
    ("first", "new_terms", "want"),
    [
        (6, [2], [1, 1, 1, 1, 1, 2]),  # after the last entry
        (3, [2, 2], [1, 1, 2, 2]),  # replaces the suffix from 3, shorter than it was
        (3, [2, 2, 2, 2, 2], [1, 1, 2, 2, 2, 2, 2]),  # replaces it, longer
        (5, [1], [1, 1, 1, 1, 1]),  # rewriting the same entry is harmless
        (1, [3], [3]),  # everything
    ],
)
def test_append_replaces_the_suffix(first: int, new_terms: list[int], want: list[int]) -> None:
    """Writing entry *i* discards every entry at or after *i* (core.py duty 2)."""
    s = storage_of(1, 1, 1, 1, 1)
    s.append(entries(first, *new_terms))
    assert terms(s) == want
    assert s.last_index() == len(want)


def test_append_with_a_gap_is_refused() -> None:
    s = storage_of(1, 1)
    with pytest.raises(ValueError, match="gap"):
        s.append(entries(4, 1))
    assert terms(s) == [1, 1]


def test_append_below_the_snapshot_keeps_only_what_follows_it() -> None:
    s = storage_of(1, 1, 1, 1)
    s.compact(3)
    s.append(entries(2, 1, 1, 2, 2))  # 2 and 3 are covered by the snapshot
    assert (s.first_index(), s.last_index(), terms(s)) == (4, 5, [2, 2])
    s.append(entries(1, 1, 1))  # entirely covered: nothing changes
    assert terms(s) == [2, 2]


def test_compact() -> None:
    """Truncation from the front: what was at ``index`` becomes the snapshot."""
    s = storage_of(1, 1, 2, 2, 3)
    s.compact(3, b"state at 3")

    assert (s.first_index(), s.last_index()) == (4, 5)
    assert s.snapshot() == Snapshot(3, 2, b"state at 3")
    assert s.term(3) == 2  # the snapshot's own term stays known
    assert [s.term(4), s.term(5)] == [2, 3]
    for index in (0, 1, 2):
        with pytest.raises(LogCompacted):
            s.term(index)
    with pytest.raises(LogCompacted):
        s.entries(3, 5, BIG)
    assert [e.index for e in s.entries(4, 6, BIG)] == [4, 5]

    s.compact(2)  # older than the held snapshot: nothing happens
    s.compact(3)
    assert s.snapshot() == Snapshot(3, 2, b"state at 3")
    with pytest.raises(ValueError):
        s.compact(6)
    s.compact(5)
    assert (s.first_index(), s.last_index(), s.term(5)) == (6, 5, 3)


def test_apply_snapshot() -> None:
    """A leader's snapshot replaces the whole log, whatever was held."""
    s = storage_of(1, 1, 1)
    s.apply_snapshot(Snapshot(10, 4, b"state"))

    assert (s.first_index(), s.last_index(), s.term(10)) == (11, 10, 4)
    assert s.snapshot() == Snapshot(10, 4, b"state")
    with pytest.raises(LogCompacted):
        s.term(3)
    with pytest.raises(LogUnavailable):
        s.term(11)
    s.append(entries(11, 4, 5))
    assert terms(s) == [4, 5]

    with pytest.raises(ValueError):
        s.apply_snapshot(Snapshot(9, 4))
    s.apply_snapshot(Snapshot(10, 4, b"state"))  # the same again: allowed, drops the tail
    assert s.last_index() == 10


def test_apply_snapshot_behind_the_log_drops_it() -> None:
    """A snapshot older than the held entries (but newer than the held snapshot) still
    replaces them: the core only hands one out when the log conflicts with it."""
    s = storage_of(1, 1, 1, 1, 1)
    s.apply_snapshot(Snapshot(3, 2))
    assert (s.first_index(), s.last_index(), s.term(3)) == (4, 3, 2)


@pytest.mark.parametrize(
    ("lo", "hi", "error"),
    [(1, 4, LogCompacted), (2, 4, LogCompacted), (3, 7, LogUnavailable), (4, 8, LogUnavailable)],
)
def test_entries_bounds(lo: int, hi: int, error: type[Exception]) -> None:
    s = storage_of(1, 1, 1, 1, 1)
    s.compact(2)
    with pytest.raises(error):
        s.entries(lo, hi, BIG)


def test_entries_byte_limit() -> None:
    s = MemoryStorage()
    s.append(entries(1, 1, 1, 1, 1, data=b"x" * 10))
    size = 10 + ENTRY_OVERHEAD
    assert [e.index for e in s.entries(1, 5, BIG)] == [1, 2, 3, 4]
    assert [e.index for e in s.entries(1, 5, 2 * size)] == [1, 2]
    assert [e.index for e in s.entries(1, 5, 2 * size + 1)] == [1, 2]
    assert [e.index for e in s.entries(2, 5, 0)] == [2]  # at least one
    assert s.entries(3, 3, BIG) == []
