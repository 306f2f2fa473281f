"""ReadView: the immutable snapshot of the tree that readers use.

The MemtableOwner publishes a new view whenever the set of memtables or SSTables changes
(LevelDB's ``Version`` idea): readers never round-trip through an actor per key. A view
holds:

* the memtables, newest first (the active one, then immutables waiting for flush);
* the manifest ``Version`` (which SSTables are live on which level);
* an open reader for every table in that version.

Point reads check sources newest to oldest and stop at the first entry for the key (a
tombstone answers "absent"). Scans merge every source; a scan may ask to have damaged
table blocks reported and skipped rather than raised (a merge reads each source one entry
ahead, so a raised error would also cost the good entries just before the damage). The
active memtable keeps changing under a view (it is only ever appended to); a reader may see
writes newer than the view, never older than it. A table that a later compaction deletes
stays readable through its open descriptor for as long as a view refers to it (POSIX keeps
unlinked open files).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Mapping

from sentinel.storage.iterators import Entry, merge_entries
from sentinel.storage.manifest import NUM_LEVELS, FileMeta, Version
from sentinel.storage.memtable import Memtable
from sentinel.storage.sstable import DamagedBlock, SSTableReader


class ReadView:
    __slots__ = ("_level_max_keys", "memtables", "tables", "version")

    def __init__(
        self, memtables: tuple[Memtable, ...], version: Version, tables: Mapping[int, SSTableReader]
    ) -> None:
        self.memtables = memtables
        self.version = version
        self.tables = tables
        # L1+ files are sorted and disjoint: a binary search over their max keys finds the
        # one file that can hold a key.
        self._level_max_keys = [[f.max_key for f in version.files(level)] for level in range(NUM_LEVELS)]

    def get_entry(self, key: bytes) -> tuple[int, bytes | None] | None:
        """The newest ``(seq, value)`` for ``key`` (value None: deleted), or None if unknown."""
        for memtable in self.memtables:
            found = memtable.get(key)
            if found is not None:
                return found
        tables = self.tables
        for meta in self.version.files(0):  # newest first
            if meta.min_key <= key <= meta.max_key:
                found = tables[meta.number].get(key)
                if found is not None:
                    return found
        for level in range(1, NUM_LEVELS):
            max_keys = self._level_max_keys[level]
            if not max_keys:
                continue
            index = bisect.bisect_left(max_keys, key)
            if index < len(max_keys):
                meta = self.version.files(level)[index]
                if meta.min_key <= key:
                    found = tables[meta.number].get(key)
                    if found is not None:
                        return found
        return None

    def get(self, key: bytes) -> bytes | None:
        found = self.get_entry(key)
        return None if found is None else found[1]

    def scan_entries(
        self,
        start: bytes | None = None,
        end: bytes | None = None,
        *,
        keep_tombstones: bool = False,
        on_damage: Callable[[DamagedBlock], None] | None = None,
    ) -> Iterator[Entry]:
        """Entries of every source merged; a damaged table block raises CorruptionError, or
        with ``on_damage`` is reported there and skipped (``SSTableReader.scan``)."""
        sources: list[Iterator[Entry]] = [m.scan(start, end) for m in self.memtables]
        sources.extend(
            self.tables[meta.number].scan(start, end, on_damage=on_damage) for meta in self.version.files(0)
        )
        for level in range(1, NUM_LEVELS):
            files = self.version.files(level)
            if files:
                sources.append(self._level_scan(files, start, end, on_damage))
        return merge_entries(sources, drop_tombstones=not keep_tombstones)

    def scan(
        self,
        start: bytes | None = None,
        end: bytes | None = None,
        *,
        on_damage: Callable[[DamagedBlock], None] | None = None,
    ) -> Iterator[tuple[bytes, bytes]]:
        """Live ``(key, value)`` pairs with ``start <= key < end`` in key order."""
        for key, _seq, value in self.scan_entries(start, end, on_damage=on_damage):
            assert value is not None
            yield key, value

    def _level_scan(
        self,
        files: tuple[FileMeta, ...],
        start: bytes | None,
        end: bytes | None,
        on_damage: Callable[[DamagedBlock], None] | None,
    ) -> Iterator[Entry]:
        """A level's disjoint files read one after another, opening each lazily."""
        first = 0 if start is None else bisect.bisect_left([f.max_key for f in files], start)
        for meta in files[first:]:
            if end is not None and meta.min_key >= end:
                return
            yield from self.tables[meta.number].scan(start, end, on_damage=on_damage)
