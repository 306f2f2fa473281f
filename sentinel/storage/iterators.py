"""Merging sorted runs of entries: the read path and compaction share this.

Every source yields ``(key, seq, value)`` triples in strictly ascending key order with at
most one entry per key (memtables and SSTables both keep one version per key). Sources are
given newest first; when several hold the same key the newest source's entry wins and the
others are skipped. A tombstone (``value is None``) hides every older entry of its key;
whether it is itself yielded is the caller's choice: reads drop it, a compaction that
does not reach the bottom of the tree must keep it so it goes on hiding older data below.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator

Entry = tuple[bytes, int, bytes | None]


def merge_entries(sources: Iterable[Iterable[Entry]], *, drop_tombstones: bool) -> Iterator[Entry]:
    """Merge newest-first sources into one ascending stream, newest entry per key."""
    iterators = [iter(source) for source in sources]
    if len(iterators) == 1:
        # The common case of a compaction with one input run, or a read of one table.
        only = iterators[0]
        if drop_tombstones:
            return (entry for entry in only if entry[2] is not None)
        return only
    return _merge(iterators, drop_tombstones)


def _merge(iterators: list[Iterator[Entry]], drop_tombstones: bool) -> Iterator[Entry]:
    # Heap items are (key, source_rank, entry, iterator): for equal keys the lower rank
    # (newer source) pops first. Ranks are unique, so entries are never compared. A source
    # is in the heap at most once, with its next entry.
    heap: list[tuple[bytes, int, Entry, Iterator[Entry]]] = []
    for rank, iterator in enumerate(iterators):
        for entry in iterator:
            heap.append((entry[0], rank, entry, iterator))
            break
    heapq.heapify(heap)
    heappop = heapq.heappop
    heappush = heapq.heappush
    heapreplace = heapq.heapreplace
    while heap:
        key, rank, entry, iterator = heappop(heap)
        # Skip the same key in older sources (they sort after this one: higher ranks).
        while heap and heap[0][0] == key:
            _, older_rank, _, older_iterator = heap[0]
            nxt = next(older_iterator, None)
            if nxt is None:
                heappop(heap)
            else:
                heapreplace(heap, (nxt[0], older_rank, nxt, older_iterator))
        if not (drop_tombstones and entry[2] is None):
            yield entry
        if not heap:
            # The last source left: the rest of it, as it comes.
            for entry in iterator:
                if not (drop_tombstones and entry[2] is None):
                    yield entry
            return
        # A run: this source's next entries that sort before every other source's next key
        # go out without touching the heap. Sources often hold long runs of keys no other
        # holds (a compaction's L0 tables each hold a stretch of every partition's offsets),
        # so most entries cost a comparison instead of a heap operation.
        bound = heap[0][0]
        for entry in iterator:
            key = entry[0]
            if key >= bound:  # equal: the heap decides which source's entry wins
                heappush(heap, (key, rank, entry, iterator))
                break
            if not (drop_tombstones and entry[2] is None):
                yield entry
