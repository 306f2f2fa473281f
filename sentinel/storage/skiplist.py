"""The memtable's ordered index: a skip list from ``bytes`` key to its newest ``(seq, value)``.

Role: the in-memory sorted map behind :class:`sentinel.storage.memtable.Memtable`. Writes land
here after the WAL; flushes and range reads walk it in key order. ``value is None`` is a
tombstone (a delete) and is stored like any other value: deleting never unlinks a node.

Invariants (the model is LevelDB's ``skiplist.h``):

1. One node per key, holding only the NEWEST version. ``put`` with ``seq >=`` the stored seq
   replaces the node's ``(seq, value)`` in place; an older seq is ignored. The engine keeps
   only the newest version in memory because nothing needs an older one: there are no
   snapshot reads, and a reader is allowed to see data newer than the moment it started
   (an iterator over a live memtable may yield a value written after it began). Older
   versions of a key live on disk until compaction drops them.
2. Nodes are never removed and never relinked once linked, and a node's key never changes.
   Only ``seq``/``value`` (in place) and the ``next`` pointers (to splice in new nodes) are
   written after linking.
3. Level 0 is the sorted list of every node; the list at level ``i + 1`` is a sub-list of the
   one at level ``i``. A node's height is drawn once, from :class:`XorShift64`, with
   ``P(height > h) = BRANCHING_P ** h``, capped at :data:`MAX_HEIGHT`.

Consequence of (2): an iterator that holds a node and follows its level-0 ``next`` pointer
*after* resuming never skips or repeats a key that existed when it started, whatever was
inserted in between; it may or may not yield keys inserted after its position (single
threaded interleaving only: there is no locking, the owner actor is the only writer).

Representation (measured, CPython 3.11, 100k random 16-byte keys): a node is a plain list
``[key, seq, value, next_0, next_1, ..., next_{h-1}]``. Indexing a list with a constant is a
specialised bytecode and beat a ``__slots__`` node with a ``next`` list by ~1.5x on put and
~1.3x on get. The head node's key is ``None`` and is never compared. Searches are iterative
with locals only, and ``put`` reuses one preallocated ``update`` list.

Builds: mypyc compiles this module when the package is installed with a C compiler (1.5x
faster puts on the engine's key pattern); the memtable takes the class from
:mod:`sentinel.storage.builds`, which falls back to this source. Constants are ``Final`` so
the compiled build inlines them.

Memory: :func:`approximate_overhead_bytes_per_entry` estimates what one entry costs beyond
its key and value bytes (node list, seq int, the two ``bytes`` object headers); ``put``
reports byte deltas with that figure (:data:`NODE_OVERHEAD_BYTES`). A benchmark can check
the estimate against ``tracemalloc`` by inserting N entries and dividing the traced growth.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterator
from typing import Any, Final

# A node is ``[key, seq, value, next_0, ...]``; these name the slots.
_KEY: Final = 0
_SEQ: Final = 1
_VALUE: Final = 2
_NEXT0: Final = 3  # slot of the level-0 pointer; level i lives at _NEXT0 + i

# Each level keeps about a quarter of the nodes of the one below (as in LevelDB). Pugh's
# search cost, ~ (1/p) / ln(1/p) * ln(n) comparisons, is the same 2.885 * ln(n) for p = 1/2
# and p = 1/4, but p = 1/4 needs 1.33 next pointers per node on average instead of 2.
BRANCHING_P = 0.25
_BITS_PER_LEVEL: Final = 2  # a level is gained when two fair random bits are both zero: p = 1/4
# log_4(16M) = 12: searches stay O(log n) up to ~16 million keys, far beyond any memtable
# (a 64 MiB memtable of 16-byte keys and tiny values holds well under a million entries).
MAX_HEIGHT: Final = 12

_U64_MASK = (1 << 64) - 1
# Marsaglia's xorshift64 triple (13, 7, 17): a full-period (2**64 - 1) generator.
_XS_A: Final = 13
_XS_B: Final = 7
_XS_C: Final = 17
# Any fixed non-zero seed keeps levels (and so performance) reproducible run to run; this
# is the 64-bit golden-ratio constant, a conventional "nothing up my sleeve" choice.
DEFAULT_SEED = 0x9E3779B97F4A7C15

# Heights drawn per refill of a skip list's buffer: the bulk draw costs about half of drawing
# one at a time, and 256 ints (2 KiB) per skip list is nothing beside its nodes.
_HEIGHTS_PER_DRAW: Final = 256

# Average node height is 1 / (1 - p) = 4/3, so one third of a pointer beyond the first.
_EXPECTED_EXTRA_POINTERS = BRANCHING_P / (1.0 - BRANCHING_P)
_POINTER_BYTES = struct.calcsize("P")
# A representative sequence number: engine seqs exceed the small-int cache, so each node
# owns an int object of this size.
_TYPICAL_SEQ = 1 << 40


class XorShift64:
    """A seeded 64-bit xorshift PRNG (Marsaglia 2003): tiny, fast and deterministic.

    The skip list only needs cheap, well-spread bits for node heights, and a seeded
    generator of its own keeps tests and benchmarks reproducible without touching the
    ``random`` module's global state. State is never zero (zero is a fixed point).
    """

    __slots__ = ("_state",)

    def __init__(self, seed: int = DEFAULT_SEED) -> None:
        seed &= _U64_MASK
        self._state = seed if seed else DEFAULT_SEED

    def next_u64(self) -> int:
        x = self._state
        x ^= (x << _XS_A) & _U64_MASK
        x ^= x >> _XS_B
        x ^= (x << _XS_C) & _U64_MASK
        self._state = x
        return x

    def next_height(self) -> int:
        """A node height in ``[1, MAX_HEIGHT]`` with ``P(height > h) = (1/4) ** h``.

        One 64-bit draw covers every level: the height is one plus the number of
        trailing all-zero bit pairs (the output is never zero, so the loop-free bit trick
        is always defined).
        """
        return height_of(self.next_u64())

    def next_heights(self, count: int) -> list[int]:
        """The next ``count`` heights, LAST drawn first: ``next_heights(n).pop()`` gives what
        ``next_height()`` would have, in the same order (one loop instead of two calls each)."""
        x = self._state
        mask = _U64_MASK
        out = [0] * count
        for i in range(count - 1, -1, -1):
            x ^= (x << _XS_A) & mask
            x ^= x >> _XS_B
            x ^= (x << _XS_C) & mask
            height = ((x & -x).bit_length() - 1) // _BITS_PER_LEVEL + 1
            out[i] = height if height < MAX_HEIGHT else MAX_HEIGHT
        self._state = x
        return out


def height_of(x: int) -> int:
    """The node height a non-zero draw ``x`` stands for: one plus the number of its trailing
    all-zero bit pairs, capped at :data:`MAX_HEIGHT` (``XorShift64.next_heights`` inlines it)."""
    height = ((x & -x).bit_length() - 1) // _BITS_PER_LEVEL + 1
    return height if height < MAX_HEIGHT else MAX_HEIGHT


def approximate_overhead_bytes_per_entry() -> int:
    """Bytes one entry costs beyond ``len(key) + len(value)``, as this interpreter lays it out.

    The node list (header, GC header, three fixed slots, 4/3 next pointers on average), the
    seq int, and the object headers of the key and value ``bytes``. Allocator rounding is
    not counted, so ``tracemalloc`` typically measures somewhat more.
    """
    node = sys.getsizeof([None] * (_NEXT0 + 1)) + round(_EXPECTED_EXTRA_POINTERS * _POINTER_BYTES)
    return node + sys.getsizeof(_TYPICAL_SEQ) + 2 * sys.getsizeof(b"")


# The fixed cost ``put`` charges for a new key (memtable size accounting).
NODE_OVERHEAD_BYTES: Final = approximate_overhead_bytes_per_entry()


class SkipList:
    """Ordered map ``key -> (seq, value | None)`` keeping the newest version of each key.

    Not thread-safe: one owner mutates it; iterators may be interleaved with writes on
    the same thread (see the module docstring for what they then observe).

    The search loops spell node slots as literals (0 key, 1 seq, 2 value, 3 level-0 next)
    because a constant index is a specialised bytecode while a module global costs a dict
    lookup per step (~10% on get).
    """

    __slots__ = ("_count", "_head", "_height", "_heights", "_rng", "_update")

    def __init__(self, seed: int = DEFAULT_SEED) -> None:
        self._head: list[Any] = [None, 0, None] + [None] * MAX_HEIGHT
        self._height = 1  # levels currently in use; the head's pointers above are None
        self._rng = XorShift64(seed)
        # Node heights drawn ahead, in bulk (popped from the end): a list pop per new key
        # instead of two method calls and the xorshift arithmetic.
        self._heights: list[int] = []
        # put()'s per-level predecessors, reused across calls to avoid an allocation.
        self._update: list[Any] = [self._head] * (_NEXT0 + MAX_HEIGHT)
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def put(self, key: bytes, seq: int, value: bytes | None) -> int:
        """Insert or replace ``key``; return the change in approximate bytes.

        A new key costs ``len(key) + len(value) + NODE_OVERHEAD_BYTES``; replacing costs the
        difference in value length (a tombstone has length 0). A ``seq`` older than the
        stored one is ignored and returns 0 (invariant 1).
        """
        update = self._update
        # Typed locals: the compiled build indexes them as lists, not as generic objects.
        x: list[Any] = self._head
        nxt: list[Any] | None = None
        i = self._height + 2  # _NEXT0 + height - 1: the top level in use
        while i >= 3:
            nxt = x[i]
            while nxt is not None:
                nkey: bytes = nxt[0]
                if not nkey < key:
                    break
                x = nxt
                nxt = x[i]
            update[i] = x
            i -= 1
        # Here nxt is x's level-0 successor: the first node with key >= key.
        if nxt is not None and nxt[0] == key:
            if seq < nxt[1]:
                return 0
            old = nxt[2]
            nxt[1] = seq
            nxt[2] = value
            return (0 if value is None else len(value)) - (0 if old is None else len(old))

        heights = self._heights
        height = heights.pop() if heights else self._draw_heights()
        self._count += 1
        size = NODE_OVERHEAD_BYTES + len(key) + (0 if value is None else len(value))
        if height == 1:  # three nodes in four: skip the general linking loop
            node = [key, seq, value, nxt]
            x[_NEXT0] = node
            return size
        top = _NEXT0 + height
        if height > self._height:
            head = self._head
            for j in range(_NEXT0 + self._height, top):
                update[j] = head
            self._height = height
        node = [key, seq, value] + [None] * height
        for j in range(_NEXT0, top):
            prev = update[j]
            node[j] = prev[j]
            prev[j] = node
        return size

    def _draw_heights(self) -> int:
        """Refill the buffer of precomputed heights; returns the next one."""
        self._heights = heights = self._rng.next_heights(_HEIGHTS_PER_DRAW)
        return heights.pop()

    def delete(self, key: bytes, seq: int) -> int:
        """Record a tombstone for ``key`` (a put of ``None``); returns the byte delta."""
        return self.put(key, seq, None)

    def get(self, key: bytes) -> tuple[int, bytes | None] | None:
        """``(seq, value)`` of ``key`` (``value`` None for a tombstone), or None if absent."""
        # _seek's loop, inlined: a method call is ~5% of a get.
        x = self._head
        i = self._height + 2
        nxt = None
        while i >= 3:
            nxt = x[i]
            while nxt is not None and nxt[0] < key:
                x = nxt
                nxt = x[i]
            i -= 1
        if nxt is not None and nxt[0] == key:
            return nxt[1], nxt[2]
        return None

    def _seek(self, key: bytes) -> list[Any] | None:
        """The first node with ``node key >= key`` (None past the end), in O(log n)."""
        x = self._head
        i = self._height + 2
        nxt = None
        while i >= 3:
            nxt = x[i]
            while nxt is not None and nxt[0] < key:
                x = nxt
                nxt = x[i]
            i -= 1
        return nxt

    def items(
        self, start: bytes | None = None, end: bytes | None = None
    ) -> Iterator[tuple[bytes, int, bytes | None]]:
        """``(key, seq, value)`` ascending, for ``start <= key < end`` (None: unbounded).

        The start position is found eagerly (O(log n)) when this is called; keys inserted
        afterwards are yielded only if they land after the iterator's current position.
        """
        node = self._head[_NEXT0] if start is None else self._seek(start)
        return _walk(node, end)

    def __iter__(self) -> Iterator[tuple[bytes, int, bytes | None]]:
        return _walk(self._head[_NEXT0], None)


def _walk(node: list[Any] | None, end: bytes | None) -> Iterator[tuple[bytes, int, bytes | None]]:
    # The successor is read only after resuming, so a node spliced in right after the
    # current one while the generator was suspended is seen, and nothing is skipped.
    if end is None:
        while node is not None:
            yield node[0], node[1], node[2]
            node = node[_NEXT0]
    else:
        while node is not None:
            key = node[0]
            if key >= end:
                return
            yield key, node[1], node[2]
            node = node[_NEXT0]
