"""The memtable: the newest writes, in key order, in memory, until a flush makes them an SSTable.

Role: the MemtableOwner actor applies every write batch here after the WAL has it. When the
memtable grows past the engine's size threshold it is frozen (it becomes the immutable
memtable a flush turns into an L0 SSTable) and a fresh one, backed by a new WAL segment,
takes the writes.

Invariants:

- A memtable holds the records of exactly one WAL segment, ``wal_number``: once its contents
  are in an SSTable recorded in the manifest, that segment can be deleted.
- One version per key, the newest by seq (see :mod:`sentinel.storage.skiplist`).
- ``first_seq``/``last_seq`` bound every seq ever passed to a write, including a write that
  lost to a newer version already present: they describe what the memtable has absorbed
  (and so what a flush makes durable), not which versions survive in it.
- ``approximate_bytes`` is the sum of the deltas the skip list reports: key and value bytes
  plus a per-entry overhead. It only grows except when a value is replaced by a shorter one.
- Frozen is final: every write to a frozen memtable raises :class:`MemtableFrozen`, a
  programming error (an immutable memtable never changes, which is what lets a flush read
  it without coordinating with the writer).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from sentinel.storage import builds
from sentinel.storage.skiplist import DEFAULT_SEED, SkipList

# Empty-range sentinels: any u64 seq (the WAL's seq type) is below the first and above the
# last, so writes update the range with two plain comparisons and no None checks.
_NO_FIRST_SEQ = 1 << 64
_NO_LAST_SEQ = -1


class MemtableFrozen(AssertionError):
    """A write reached a frozen memtable: the caller broke the engine's own invariant."""


class Memtable:
    """A :class:`SkipList` with size accounting, a seq range and a one-way freeze."""

    __slots__ = ("_bytes", "_first_seq", "_frozen", "_last_seq", "_list", "_wal_number")

    def __init__(self, wal_number: int, *, seed: int = DEFAULT_SEED) -> None:
        self._wal_number = wal_number
        # The build chosen by sentinel.storage.builds (mypyc's when installed and fresh).
        self._list: SkipList = builds.skiplist.SkipList(seed)
        self._bytes = 0
        self._first_seq = _NO_FIRST_SEQ
        self._last_seq = _NO_LAST_SEQ
        self._frozen = False

    @property
    def wal_number(self) -> int:
        """The WAL segment holding this memtable's records."""
        return self._wal_number

    @property
    def approximate_bytes(self) -> int:
        return self._bytes

    @property
    def first_seq(self) -> int | None:
        """Smallest seq written to this memtable, None while empty."""
        return None if self._last_seq == _NO_LAST_SEQ else self._first_seq

    @property
    def last_seq(self) -> int | None:
        """Largest seq written to this memtable, None while empty."""
        return None if self._last_seq == _NO_LAST_SEQ else self._last_seq

    @property
    def frozen(self) -> bool:
        return self._frozen

    def freeze(self) -> None:
        """Make the memtable immutable for good (idempotent)."""
        self._frozen = True

    def __len__(self) -> int:
        return len(self._list)

    def _refuse_write(self) -> MemtableFrozen:
        return MemtableFrozen(f"write to the frozen memtable of WAL {self._wal_number}")

    def put(self, key: bytes, seq: int, value: bytes | None) -> None:
        """Write ``key`` (``value`` None is a tombstone); an older seq than stored is ignored."""
        if self._frozen:
            raise self._refuse_write()
        self._bytes += self._list.put(key, seq, value)
        if seq > self._last_seq:
            self._last_seq = seq
        if seq < self._first_seq:
            self._first_seq = seq

    def delete(self, key: bytes, seq: int) -> None:
        self.put(key, seq, None)

    def apply(self, entries: Iterable[tuple[bytes, int, bytes | None]]) -> None:
        """Apply ``(key, seq, value)`` triples in order (a decoded write batch)."""
        if self._frozen:
            raise self._refuse_write()
        put = self._list.put
        added = 0
        first = self._first_seq
        last = self._last_seq
        try:
            for key, seq, value in entries:
                added += put(key, seq, value)
                if seq > last:
                    last = seq
                if seq < first:
                    first = seq
        finally:
            # Even if the iterable fails part-way, account for what did reach the list.
            self._bytes += added
            self._first_seq = first
            self._last_seq = last

    def put_batch(self, first_seq: int, ops: Sequence[tuple[bytes, bytes | None]]) -> None:
        """Write a batch as the WAL holds it: ``ops[i]`` (``(key, value)``, value None a
        tombstone) gets seq ``first_seq + i``. The write path's form of :meth:`apply`."""
        self.put_batches(((first_seq, ops),))

    def put_batches(self, batches: Iterable[tuple[int, Sequence[tuple[bytes, bytes | None]]]]) -> None:
        """``put_batch(first_seq, ops)`` for each ``(first_seq, ops)`` in order, in one loop
        (a group commit's writes: the per-batch call was a fifth of applying one-op writes)."""
        if self._frozen:
            raise self._refuse_write()
        put = self._list.put
        added = 0
        first = self._first_seq
        last = self._last_seq
        try:
            for first_seq, ops in batches:
                seq = first_seq
                for key, value in ops:
                    added += put(key, seq, value)
                    seq += 1
                if seq > first_seq:
                    if first_seq < first:
                        first = first_seq
                    if seq - 1 > last:
                        last = seq - 1
        finally:
            # Even if an entry fails part-way, account for the batches that reached the list
            # (the failing batch's seqs are not counted: like an apply() cut short).
            self._bytes += added
            self._first_seq = first
            self._last_seq = last

    def get(self, key: bytes) -> tuple[int, bytes | None] | None:
        """``(seq, value)`` for ``key`` (value None: deleted here), None if this memtable lacks it."""
        return self._list.get(key)

    def scan(
        self, start: bytes | None = None, end: bytes | None = None
    ) -> Iterator[tuple[bytes, int, bytes | None]]:
        """``(key, seq, value)`` ascending for ``start <= key < end``, tombstones included."""
        return self._list.items(start, end)
