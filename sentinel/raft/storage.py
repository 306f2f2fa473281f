"""How the Raft core reads a group's durable state, and an in-memory implementation.

The core only READS storage (``RaftStorage``): the hard state at start-up, the persisted
log by index, the latest snapshot. Writing is the application's duty when it handles a
``Ready`` (persist the hard state, the entries and the snapshot, in that Ready's order)
so the core never blocks on IO. ``MemoryStorage`` is the reference implementation the
tests and the deterministic simulation use as a node's "disk"; the LSM-backed storage of
a broker (``sentinel.raft.lsm_storage``) has the same read side.

The log a storage holds is ``(snapshot.index, snapshot.term)`` followed by the entries
``first_index() .. last_index()``; ``first_index() == snapshot.index + 1`` always. An
empty log has the sentinel snapshot (0, 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sentinel.raft.messages import Entry, HardState, Snapshot, entry_size


class LogCompacted(Exception):
    """The entry asked for is below the first index: it was truncated from the front and is
    covered by the snapshot."""


class LogUnavailable(Exception):
    """The entry asked for is above the last index."""


class RaftStorage(Protocol):
    def initial_state(self) -> HardState:
        """The hard state persisted last (HardState() on a new node)."""
        ...

    def first_index(self) -> int:
        """The index of the first entry still held (snapshot.index + 1)."""
        ...

    def last_index(self) -> int:
        """The index of the last entry held (snapshot.index when no entry is held)."""
        ...

    def term(self, index: int) -> int:
        """The term of the entry at ``index``, for ``first_index() - 1 <= index <= last_index()``;
        raises LogCompacted below that range and LogUnavailable above it."""
        ...

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries ``lo <= index < hi`` (``first_index() <= lo``, ``hi <= last_index() + 1``),
        as many as fit in ``max_bytes`` but always at least one."""
        ...

    def snapshot(self) -> Snapshot:
        """The latest snapshot (the state at ``first_index() - 1``)."""
        ...


def limit_size(entries: Sequence[Entry], max_bytes: int) -> list[Entry]:
    """The longest prefix of ``entries`` within ``max_bytes`` (by ``entry_size``), and never
    empty when ``entries`` is not: one entry larger than the limit still travels alone."""
    if not entries:
        return []
    total = entry_size(entries[0])
    n = 1
    for n in range(1, len(entries)):
        total += entry_size(entries[n])
        if total > max_bytes:
            break
    else:
        return list(entries)
    return list(entries[:n])


class MemoryStorage:
    """A RaftStorage held in memory, with the write side an application needs.

    ``_entries[0]`` is a dummy entry at the snapshot's (index, term), so term lookups at
    ``first_index() - 1`` need no special case.
    """

    def __init__(self) -> None:
        self.hard_state = HardState()
        self._snapshot = Snapshot(0, 0)
        self._entries: list[Entry] = [Entry(0, 0)]

    # -- read side (RaftStorage) -----------------------------------------------------------

    def initial_state(self) -> HardState:
        return self.hard_state

    def first_index(self) -> int:
        return self._entries[0].index + 1

    def last_index(self) -> int:
        return self._entries[0].index + len(self._entries) - 1

    def term(self, index: int) -> int:
        offset = self._entries[0].index
        if index < offset:
            raise LogCompacted(index)
        if index - offset >= len(self._entries):
            raise LogUnavailable(index)
        return self._entries[index - offset].term

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        offset = self._entries[0].index
        if lo <= offset:
            raise LogCompacted(lo)
        if hi > self.last_index() + 1:
            raise LogUnavailable(hi)
        return limit_size(self._entries[lo - offset : hi - offset], max_bytes)

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # -- write side (the application, handling a Ready) -------------------------------------

    def set_hard_state(self, hard_state: HardState) -> None:
        self.hard_state = hard_state

    def append(self, entries: Sequence[Entry]) -> None:
        """Append ``entries``, replacing every held entry at or after ``entries[0].index``."""
        if not entries:
            return
        first = entries[0].index
        offset = self._entries[0].index
        if first <= offset:
            # The part below the snapshot is already covered by it.
            entries = [e for e in entries if e.index > offset]
            if not entries:
                return
            first = entries[0].index
        if first > self.last_index() + 1:
            raise ValueError(f"append at {first} leaves a gap after last index {self.last_index()}")
        del self._entries[first - offset :]
        self._entries.extend(entries)

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Replace the whole log by ``snapshot`` (a follower installing its leader's)."""
        if snapshot.index < self._snapshot.index:
            raise ValueError(f"snapshot {snapshot.index} is older than the held {self._snapshot.index}")
        self._snapshot = snapshot
        self._entries = [Entry(snapshot.term, snapshot.index)]

    def persist_ready(
        self, snapshot: Snapshot | None, entries: Sequence[Entry], hard_state: HardState | None
    ) -> None:
        """Persist what a Ready asks, in the contract's order (snapshot, entries, hard state)."""
        if snapshot is not None:
            self.apply_snapshot(snapshot)
        self.append(entries)
        if hard_state is not None:
            self.set_hard_state(hard_state)

    def compact(self, index: int, data: bytes = b"") -> None:
        """Truncate the log from the front up to and including ``index`` (which must be
        applied), recording ``data`` as the snapshot at ``index``."""
        offset = self._entries[0].index
        if index <= offset:
            return
        if index > self.last_index():
            raise ValueError(f"compact {index} is beyond last index {self.last_index()}")
        term = self._entries[index - offset].term
        self._snapshot = Snapshot(index, term, data)
        del self._entries[: index - offset]
        self._entries[0] = Entry(term, index)
