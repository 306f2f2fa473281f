"""A node's view of its Raft log: the persisted part (read through RaftStorage) followed
by the unstable part (entries, or a snapshot, not yet handed to the application to
persist, or handed out in the Ready being persisted).

Invariants:

* ``unstable_offset == storage.last_index() + 1`` unless an unstable snapshot is pending
  (then ``unstable_offset == snapshot.index + 1``); unstable entries are contiguous from it;
* ``committed`` never decreases, never exceeds the last index, and a committed entry is
  never replaced (``append`` refuses a conflict at or below ``committed``);
* ``applied <= committed``.
"""

from __future__ import annotations

from collections.abc import Sequence

from sentinel.raft.messages import Entry, Snapshot
from sentinel.raft.storage import LogCompacted, LogUnavailable, RaftStorage, limit_size


class RaftLogError(AssertionError):
    """An invariant of the log would be broken: a bug in the core or the storage, never a
    condition a message from the network can cause on its own."""


class RaftLog:
    __slots__ = (
        "applied",
        "committed",
        "storage",
        "unstable_entries",
        "unstable_offset",
        "unstable_snapshot",
    )

    def __init__(self, storage: RaftStorage) -> None:
        self.storage = storage
        first = storage.first_index()
        self.unstable_offset = storage.last_index() + 1
        self.unstable_entries: list[Entry] = []
        self.unstable_snapshot: Snapshot | None = None
        # The first index held minus one is covered by the snapshot, hence applied.
        self.committed = first - 1
        self.applied = first - 1

    # -- bounds and terms ----------------------------------------------------------------

    def first_index(self) -> int:
        if self.unstable_snapshot is not None:
            return self.unstable_snapshot.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        if self.unstable_entries:
            return self.unstable_offset + len(self.unstable_entries) - 1
        if self.unstable_snapshot is not None:
            return self.unstable_snapshot.index
        return self.storage.last_index()

    def term(self, index: int) -> int:
        """The term at ``index``; LogCompacted / LogUnavailable outside the held range."""
        offset = self.unstable_offset
        if index >= offset:
            i = index - offset
            if i < len(self.unstable_entries):
                return self.unstable_entries[i].term
            raise LogUnavailable(index)
        snap = self.unstable_snapshot
        if snap is not None:
            if index == snap.index:
                return snap.term
            raise LogCompacted(index)
        return self.storage.term(index)

    def term_or_zero(self, index: int) -> int:
        """The term at ``index``, or 0 where it is not held (a term no real entry has)."""
        try:
            return self.term(index)
        except (LogCompacted, LogUnavailable):
            return 0

    def last_term(self) -> int:
        return self.term(self.last_index())

    def match_term(self, index: int, term: int) -> bool:
        # An index not held matches no term, not even 0 (which would let an append claim
        # a match past our last index and leave a gap before its entries).
        try:
            return self.term(index) == term
        except (LogCompacted, LogUnavailable):
            return False

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """§5.4.1: a candidate's log is at least as up to date as ours."""
        our_term = self.last_term()
        return last_term > our_term or (last_term == our_term and last_index >= self.last_index())

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest ``i <= index`` whose term is ``<= term``, with that term: where a
        leader with ``term`` at ``index`` may share our log (the fast-backup hint). An index
        whose term is no longer held ends the search: ``(i, 0)``."""
        while index > 0:
            try:
                t = self.term(index)
            except (LogCompacted, LogUnavailable):
                return index, 0
            if t <= term:
                return index, t
            index -= 1
        return 0, 0

    # -- reading entries -----------------------------------------------------------------

    def entries(self, lo: int, max_bytes: int) -> list[Entry]:
        """Entries from ``lo`` to the end, within ``max_bytes`` (at least one). Raises
        LogCompacted if ``lo`` is below the first index."""
        return self.slice(lo, self.last_index() + 1, max_bytes)

    def slice(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        if lo >= hi:
            return []
        if lo < self.first_index():
            raise LogCompacted(lo)
        offset = self.unstable_offset
        if lo >= offset:
            return limit_size(self.unstable_entries[lo - offset : hi - offset], max_bytes)
        stable = self.storage.entries(lo, min(hi, offset), max_bytes)
        if hi <= offset or len(stable) < offset - lo:
            return stable  # all that was asked for, or cut by the byte limit
        return limit_size(stable + self.unstable_entries[: hi - offset], max_bytes)

    def next_committed_entries(self, max_bytes: int) -> list[Entry]:
        """Committed entries not yet applied (up to ``max_bytes``, at least one)."""
        lo = self.applied + 1
        hi = self.committed + 1
        if lo >= hi:
            return []
        return self.slice(lo, hi, max_bytes)

    def has_next_committed_entries(self) -> bool:
        return self.committed > self.applied

    # -- changing the log ----------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> int:
        """Append entries (contiguous) as unstable, replacing any suffix from
        ``entries[0].index`` on; returns the new last index."""
        if not entries:
            return self.last_index()
        after = entries[0].index
        if after <= self.committed:
            raise RaftLogError(f"append at {after} would replace committed entries (commit {self.committed})")
        offset = self.unstable_offset
        if after == offset + len(self.unstable_entries):
            self.unstable_entries.extend(entries)
        elif after <= offset:
            # Replaces the whole unstable part and a persisted suffix: the next Ready's
            # entries start at ``after``, which tells the storage to discard from there.
            self.unstable_offset = after
            self.unstable_entries = list(entries)
        else:
            del self.unstable_entries[after - offset :]
            self.unstable_entries.extend(entries)
        return self.last_index()

    def find_conflict(self, entries: Sequence[Entry]) -> int:
        """The index of the first entry of ``entries`` whose term differs from ours (or that
        we do not hold); 0 when we hold all of them already."""
        for e in entries:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def maybe_append(self, index: int, log_term: int, commit: int, entries: Sequence[Entry]) -> int | None:
        """Handle an AppendEntries: if our log has ``log_term`` at ``index``, append what
        is new in ``entries`` (replacing only a conflicting suffix), advance the commit to
        ``min(commit, last new index)`` and return the last new index; else None."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            if conflict <= self.committed:
                raise RaftLogError(
                    f"entry {conflict} conflicts with the committed log (commit {self.committed})"
                )
            self.append(entries[conflict - index - 1 :])
        self.commit_to(min(commit, last_new))
        return last_new

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index():
                raise RaftLogError(f"commit {index} is beyond the last index {self.last_index()}")
            self.committed = index

    def applied_to(self, index: int) -> None:
        if index > self.applied:
            if index > self.committed:
                raise RaftLogError(f"applied {index} is beyond the commit {self.committed}")
            self.applied = index

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the log by a leader's snapshot (to persist in the next Ready)."""
        self.committed = snapshot.index
        self.unstable_snapshot = snapshot
        self.unstable_offset = snapshot.index + 1
        self.unstable_entries = []

    def stable_to(self, index: int, term: int) -> None:
        """The entries up to ``index`` (whose term the application persisted as ``term``)
        are durable: drop them from the unstable part. A mismatching term means the
        entries were replaced after they were handed out, so nothing is dropped."""
        offset = self.unstable_offset
        if index < offset:
            return
        i = index - offset
        if i >= len(self.unstable_entries) or self.unstable_entries[i].term != term:
            return
        del self.unstable_entries[: i + 1]
        self.unstable_offset = index + 1

    def stable_snapshot_to(self, index: int) -> None:
        snap = self.unstable_snapshot
        if snap is not None and snap.index == index:
            self.unstable_snapshot = None
            if self.applied < index:
                self.applied = index
