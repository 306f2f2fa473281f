"""Raft groups on the node's LSM store: every group's log and hard state in the one engine,
so all groups share one WAL and one group commit.

Key layout (this module's format; big-endian integers sort numerically)::

    b"R" group u64 | b"h"            -> hard state (format.encode_hard_state, CRC'd)
    b"R" group u64 | b"m"            -> meta: version u8 | snap_index u64 | snap_term u64
                                        | last_index u64 | last_term u64
    b"R" group u64 | b"s"            -> snapshot data (opaque to Raft)
    b"R" group u64 | b"e" index u64  -> entry: entry header (version, term, kind) then
                                        INLINE: the payload, or
                                        PLACED: the store key the payload lives under

How a partition's Raft log relates to its offsets (ARCHITECTURE.md §4, "the partition log
IS the Raft log"): a partition leader assigns offsets when it proposes, writing the base
offset into the record batch header (outside the batch CRC). The entry's payload is that
batch, and a partition's ``EntryLayout`` places it under the partition's data key
``L|topic|partition|last_offset`` — the key the fetch path has always sought by offset —
so the record data is written once, a read from an offset is one seek, and the Raft record
under ``R…e…index`` is ~40 bytes pointing at it. Entries without offsets (a leader's no-op,
the controller's commands) stay inline.

Invariants and their reasons:

* A Ready is persisted as ONE write batch (one WAL frame, one CRC): a torn write loses the
  whole Ready or nothing, so a vote is either durable with its term or not at all — a
  crash can never leave a node with a vote it does not remember, so never two votes in
  one term.
* Replacing a suffix from index *i* deletes the entry records from *i* to the old last
  index AND the payload keys they point to, in the same batch before the new puts: a
  truncated batch's offsets disappear with it, and a stale data key can never be found by
  a later seek by offset.
* Installing a snapshot discards every entry above the persisted commit the same way
  (entries at or below it are committed, identical on every replica, and covered by the
  snapshot).
* Truncating from the front (``compact``) writes only the snapshot and the meta record:
  the entries below become obsolete and the compaction filter (``is_obsolete``) drops them
  as SSTables are rewritten; their payloads go by the owner's own rule (a partition's log
  start offset). Nothing reads below ``first_index``.
* Opening reads three keys: restart time does not grow with the data stored. The tail of
  the log is cached in memory (bounded by bytes) for the leader's appends and term lookups.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Final, Protocol

import outcome

from sentinel.actors import ObservedReply
from sentinel.raft import format as fmt
from sentinel.raft.core import Ready
from sentinel.raft.messages import Entry, HardState, Snapshot, entry_size
from sentinel.raft.storage import LogCompacted, LogUnavailable, limit_size
from sentinel.storage.store import Store

RAFT: Final = b"R"
_GROUP = struct.Struct(">cQ")
_INDEX = struct.Struct(">Q")
_META = struct.Struct(">BQQQQ")
_META_VERSION: Final = 1
KIND_INLINE: Final = 0
KIND_PLACED: Final = 1
_ENTRY_KEY_SIZE: Final = _GROUP.size + 1 + _INDEX.size
# The tail of each group's log kept in memory: the leader's appends to followers and the
# core's term lookups read it instead of the tree.
DEFAULT_CACHE_BYTES: Final = 4 * 1024 * 1024


def group_prefix(group: int) -> bytes:
    return _GROUP.pack(RAFT, group)


def entry_key(group: int, index: int) -> bytes:
    return _GROUP.pack(RAFT, group) + b"e" + _INDEX.pack(index)


def parse_entry_key(key: bytes) -> tuple[int, int] | None:
    """``(group, index)`` of an entry key, None for any other key."""
    if len(key) != _ENTRY_KEY_SIZE or key[:1] != RAFT or key[9:10] != b"e":
        return None
    _, group = _GROUP.unpack_from(key)
    (index,) = _INDEX.unpack_from(key, 10)
    return group, index


class EntryLayout(Protocol):
    def place(self, data: bytes) -> bytes | None:
        """The store key ``data`` is written under, or None to keep it inline in the entry."""
        ...


class InlineLayout:
    def place(self, data: bytes) -> bytes | None:
        return None


class LsmRaftStorage:
    """One Raft group's RaftStorage (read side) and persistence (write side) on a Store.

    Only the group's owner (its replica actor) calls ``persist`` and ``compact``, and never
    two at once; reads are synchronous, from the cache or the store's published view."""

    def __init__(
        self,
        store: Store,
        group: int,
        *,
        layout: EntryLayout | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self.store = store
        self.group = group
        self.layout: EntryLayout = layout or InlineLayout()
        self._prefix = group_prefix(group)
        self._hs_key = self._prefix + b"h"
        self._meta_key = self._prefix + b"m"
        self._snap_key = self._prefix + b"s"
        self._cache_limit = cache_bytes
        source = f"raft group {group}"
        raw = store.get(self._hs_key)
        self._hard_state = (
            fmt.decode_hard_state(raw, source + " hard state") if raw is not None else HardState()
        )
        meta = store.get(self._meta_key)
        if meta is None:
            self._snap_index = self._snap_term = self._last_index = self._last_term = 0
        else:
            if len(meta) != _META.size or meta[0] != _META_VERSION:
                raise fmt.RaftFormatError(source + " meta", 0, f"unknown meta record ({len(meta)} bytes)")
            _, self._snap_index, self._snap_term, self._last_index, self._last_term = _META.unpack(meta)
        self._snapshot_data: bytes | None = None  # read on demand
        # persist_soon took a hard state that no write has carried yet.
        self._hard_state_unwritten = False
        # The cached tail: _cache[i] is the entry at _cache_first + i; always ends at last_index.
        self._cache: list[Entry] = []
        self._cache_first = self._last_index + 1
        self._cache_size = 0

    # -- read side (RaftStorage) ---------------------------------------------------------

    def initial_state(self) -> HardState:
        return self._hard_state

    def first_index(self) -> int:
        return self._snap_index + 1

    def last_index(self) -> int:
        return self._last_index

    def term(self, index: int) -> int:
        if index < self._snap_index:
            raise LogCompacted(index)
        if index > self._last_index:
            raise LogUnavailable(index)
        if index == self._snap_index:
            return self._snap_term
        if index == self._last_index:
            return self._last_term
        if index >= self._cache_first:
            return self._cache[index - self._cache_first].term
        return self._read_entry(index).term

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        if lo <= self._snap_index:
            raise LogCompacted(lo)
        if hi > self._last_index + 1:
            raise LogUnavailable(hi)
        if lo >= hi:
            return []
        first = self._cache_first
        if lo >= first:
            return limit_size(self._cache[lo - first : hi - first], max_bytes)
        # Below the cache: read the tree (a follower catching up from far behind).
        out: list[Entry] = []
        size = 0
        for index in range(lo, hi):
            entry = self._cache[index - first] if index >= first else self._read_entry(index)
            size += entry_size(entry)
            if out and size > max_bytes:
                break
            out.append(entry)
        return out

    def snapshot(self) -> Snapshot:
        if self._snapshot_data is None:
            self._snapshot_data = self.store.get(self._snap_key) or b""
        return Snapshot(self._snap_index, self._snap_term, self._snapshot_data)

    def _read_entry(self, index: int) -> Entry:
        source = f"raft group {self.group} entry {index}"
        raw = self.store.get(entry_key(self.group, index))
        if raw is None:
            raise LogUnavailable(f"{source} is missing from storage")
        term, kind = fmt.decode_entry_header(raw, source)
        body = raw[fmt.ENTRY_HEADER_SIZE :]
        if kind == KIND_INLINE:
            return Entry(term, index, body)
        if kind == KIND_PLACED:
            data = self.store.get(body)
            if data is None:
                raise LogUnavailable(f"{source}: its payload under {body.hex()} is missing from storage")
            return Entry(term, index, data)
        raise fmt.RaftFormatError(source, 9, f"unknown entry kind {kind}")

    def _placed_key(self, index: int) -> bytes | None:
        """The payload key of the stored entry at ``index`` (None if inline or absent)."""
        if index >= self._cache_first:
            return self.layout.place(self._cache[index - self._cache_first].data)
        raw = self.store.get(entry_key(self.group, index))
        if raw is None:
            return None
        _term, kind = fmt.decode_entry_header(raw)
        return raw[fmt.ENTRY_HEADER_SIZE :] if kind == KIND_PLACED else None

    # -- write side ----------------------------------------------------------------------

    async def persist(self, rd: Ready, extra: Sequence[tuple[bytes, bytes | None]] = ()) -> None:
        """Make ``rd``'s snapshot, entries and hard state durable in one atomic write, with
        the owner's ``extra`` ops (its own state that must change with the log)."""
        ops = self.ops_for(rd)
        ops.extend(extra)
        if ops:
            await self.store.write(ops)
            self.persisted(rd)

    async def persist_soon(self, rd: Ready) -> None:
        """Take a Ready that needs no sync (``must_sync`` false: a commit index change
        alone) without writing it now: its hard state goes with the group's next write
        (``persist``) or ``write_deferred``, whichever comes first. Until then the commit
        on disk lags the one the group acts on, which Raft allows (a restart recomputes it
        from the log and the peers); a busy group so writes once per Ready, not twice."""
        if rd.entries or rd.snapshot is not None:
            raise ValueError("persist_soon takes only a Ready that changes the hard state alone")
        if rd.hard_state is not None:
            self._hard_state = rd.hard_state
            self._hard_state_unwritten = True

    async def write_deferred(self) -> None:
        """Queue the write of a hard state ``persist_soon`` took (if it is still unwritten),
        without waiting for it: the owner calls this now and then (on ticks, at a stop) so
        an idle group's commit reaches the disk too."""
        if self._hard_state_unwritten:
            self._hard_state_unwritten = False
            ops = [(self._hs_key, fmt.encode_hard_state(self._hard_state))]
            await self.store.submit(ops, ObservedReply(self._deferred_written))

    def _deferred_written(self, result: outcome.Outcome[int]) -> None:
        if isinstance(result, outcome.Error):  # a full disk: the next write carries it again
            self._hard_state_unwritten = True

    def ops_for(self, rd: Ready) -> list[tuple[bytes, bytes | None]]:
        """The write batch that persists ``rd`` (for callers that batch several groups'
        writes themselves); ``persisted(rd)`` must follow once it is durable."""
        ops: list[tuple[bytes, bytes | None]] = []
        snap_index, snap_term = self._snap_index, self._snap_term
        last_index, last_term = self._last_index, self._last_term
        if rd.snapshot is not None:
            snap = rd.snapshot
            # Entries above the persisted commit may differ from the leader's: delete them
            # and their payload keys (a divergent tail's offsets may reach past the
            # snapshot's). Those at or below it are committed and covered by the snapshot.
            self._discard(ops, self._hard_state.commit + 1, last_index)
            ops.append((self._snap_key, snap.data))
            snap_index, snap_term = snap.index, snap.term
            last_index, last_term = snap.index, snap.term
        if rd.entries:
            first = rd.entries[0].index
            if first <= snap_index:
                raise ValueError(f"entries from {first} overlap the snapshot at {snap_index}")
            if first > last_index + 1:
                raise ValueError(f"entries from {first} leave a gap after {last_index}")
            if rd.snapshot is None:
                self._discard(ops, first, last_index)
            place = self.layout.place
            group = self.group
            header = fmt.encode_entry_header
            for e in rd.entries:
                key = place(e.data)
                if key is None:
                    ops.append((entry_key(group, e.index), header(e.term, KIND_INLINE) + e.data))
                else:
                    ops.append((key, e.data))
                    ops.append((entry_key(group, e.index), header(e.term, KIND_PLACED) + key))
            last = rd.entries[-1]
            last_index, last_term = last.index, last.term
        if (snap_index, snap_term, last_index, last_term) != (
            self._snap_index,
            self._snap_term,
            self._last_index,
            self._last_term,
        ):
            ops.append(
                (self._meta_key, _META.pack(_META_VERSION, snap_index, snap_term, last_index, last_term))
            )
        if rd.hard_state is not None:
            ops.append((self._hs_key, fmt.encode_hard_state(rd.hard_state)))
        elif self._hard_state_unwritten:
            ops.append((self._hs_key, fmt.encode_hard_state(self._hard_state)))  # persist_soon's
        return ops

    def _discard(self, ops: list[tuple[bytes, bytes | None]], lo: int, hi: int) -> None:
        for index in range(max(lo, self._snap_index + 1), hi + 1):
            key = self._placed_key(index)
            if key is not None:
                ops.append((key, None))
            ops.append((entry_key(self.group, index), None))

    def persisted(self, rd: Ready) -> None:
        """Update the in-memory view after ``ops_for(rd)`` became durable."""
        if rd.snapshot is not None:
            snap = rd.snapshot
            self._snap_index = self._last_index = snap.index
            self._snap_term = self._last_term = snap.term
            self._snapshot_data = snap.data
            self._cache = []
            self._cache_first = snap.index + 1
            self._cache_size = 0
        if rd.entries:
            first = rd.entries[0].index
            if first < self._cache_first:
                self._cache = []
                self._cache_first = first
                self._cache_size = 0
            else:
                dropped = self._cache[first - self._cache_first :]
                self._cache_size -= sum(len(e.data) for e in dropped)
                del self._cache[first - self._cache_first :]
            self._cache.extend(rd.entries)
            self._cache_size += sum(len(e.data) for e in rd.entries)
            last = rd.entries[-1]
            self._last_index, self._last_term = last.index, last.term
            self._trim_cache()
        if rd.hard_state is not None:
            self._hard_state = rd.hard_state
        self._hard_state_unwritten = False  # ops_for(rd) wrote the newest hard state

    def _trim_cache(self) -> None:
        if self._cache_size <= self._cache_limit:
            return
        drop = 0
        size = self._cache_size
        while size > self._cache_limit and drop < len(self._cache) - 1:
            size -= len(self._cache[drop].data)
            drop += 1
        del self._cache[:drop]
        self._cache_first += drop
        self._cache_size = size

    async def compact(self, index: int, data: bytes) -> None:
        """Truncate the log from the front through ``index`` (applied by the owner), with
        ``data`` as the snapshot a follower that needs those entries will receive."""
        if index <= self._snap_index:
            return
        if index > self._hard_state.commit:
            raise ValueError(f"compact {index} is beyond the persisted commit {self._hard_state.commit}")
        term = self.term(index)
        meta = _META.pack(_META_VERSION, index, term, self._last_index, self._last_term)
        # With the hard state: its commit on disk may lag (persist_soon), and a restart needs
        # it at or past the snapshot (everything below the first index is committed).
        hard_state = (self._hs_key, fmt.encode_hard_state(self._hard_state))
        await self.store.write(((self._snap_key, data), (self._meta_key, meta), hard_state))
        self._hard_state_unwritten = False
        self._snap_index, self._snap_term = index, term
        self._snapshot_data = data
        if index >= self._cache_first:
            drop = index + 1 - self._cache_first
            self._cache_size -= sum(len(e.data) for e in self._cache[:drop])
            del self._cache[:drop]
            self._cache_first = index + 1

    def obsolete_range(self) -> tuple[bytes, bytes]:
        """``[start, end)`` of the entry records below the first index (for Store.reclaim)."""
        return entry_key(self.group, 0), entry_key(self.group, self._snap_index + 1)

    def is_obsolete(self, index: int) -> bool:
        """For the compaction filter: an entry record at ``index`` is below the first index.
        Safe from any thread: one attribute read of an int the owner replaces."""
        return index <= self._snap_index


def compaction_filter(groups: Callable[[int], LsmRaftStorage | None]) -> Callable[[bytes], bool]:
    """A store compaction filter dropping the entry records below each group's first
    index (``groups`` maps a group id to its open storage; records of a group it does not
    know are kept: dropping a deleted group's records is its owner's rule, not this one's)."""

    def obsolete(key: bytes) -> bool:
        parsed = parse_entry_key(key)
        if parsed is None:
            return False
        storage = groups(parsed[0])
        return storage is not None and storage.is_obsolete(parsed[1])

    return obsolete
