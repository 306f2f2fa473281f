"""The compaction planner: which files to merge next (pure; no IO).

Leveled compaction as in LevelDB:

* L0 holds whole flushed memtables; its files may overlap each other. When L0 has
  ``l0_compaction_trigger`` files, all of them are merged with the L1 files they overlap.
* L1..L(n-1) each hold non-overlapping files and have a byte budget that grows by
  ``level_size_multiplier`` per level. The level furthest over its budget (score >= 1)
  gives up one file, chosen round-robin by key (the compact pointer) so every part of the
  key space is eventually rewritten, merged with the files it overlaps one level down.
* A single input file that overlaps nothing in the next level is moved, not rewritten
  (a trivial move: only the manifest changes).
* Tombstones are dropped only when no deeper level holds the key range: a tombstone must
  keep hiding older data for as long as such data can exist below it.
* Reclaiming (:func:`reclaim_plans`): the compaction filter only sees data that a
  compaction rewrites, and append-only key ranges (a partition's log) come to rest in
  tables that nothing ever rewrites again. When the owner of the filter knows a key range
  became obsolete (retention moved a log start, a topic was deleted), each table of L1+
  that meets the range, or whose first or last key is obsolete, and that has nothing below
  it, is rewritten in place through the filter: its obsolete entries disappear.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs

from sentinel.storage.manifest import NUM_LEVELS, FileMeta, Version

MIB = 1024 * 1024


@attrs.frozen
class CompactionOptions:
    # Four L0 files: few enough that a point read checks only a handful of overlapping
    # tables, many enough that a flush rarely waits for an L0 compaction.
    l0_compaction_trigger: int = 4
    # L0 files at which writes stall until compaction catches up (back-pressure).
    l0_stop_writes_trigger: int = 12
    l1_max_bytes: int = 16 * MIB
    level_size_multiplier: int = 10
    target_file_bytes: int = 4 * MIB

    def max_bytes_for_level(self, level: int) -> int:
        return self.l1_max_bytes * self.level_size_multiplier ** (level - 1)


@attrs.frozen
class Compaction:
    level: int
    inputs: tuple[FileMeta, ...]  # from `level`, newest first
    overlaps: tuple[FileMeta, ...]  # from `level + 1`, in key order
    drop_tombstones: bool
    #: Rewrite ``inputs`` into the same level (reclaiming), rather than into the next.
    in_place: bool = False

    @property
    def output_level(self) -> int:
        return self.level if self.in_place else self.level + 1

    @property
    def is_trivial_move(self) -> bool:
        return len(self.inputs) == 1 and not self.overlaps and not self.in_place

    @property
    def input_bytes(self) -> int:
        return sum(f.size for f in self.inputs) + sum(f.size for f in self.overlaps)

    def all_inputs(self) -> list[tuple[int, FileMeta]]:
        return [(self.level, f) for f in self.inputs] + [(self.output_level, f) for f in self.overlaps]


def key_range(files: tuple[FileMeta, ...] | list[FileMeta]) -> tuple[bytes, bytes]:
    return min(f.min_key for f in files), max(f.max_key for f in files)


def level_scores(version: Version, options: CompactionOptions) -> list[float]:
    """Score per level (index = level); >= 1 means the level needs compacting. The last
    level has no budget: it is where data comes to rest."""
    scores = [len(version.files(0)) / options.l0_compaction_trigger]
    for level in range(1, NUM_LEVELS - 1):
        scores.append(version.level_bytes(level) / options.max_bytes_for_level(level))
    scores.append(0.0)
    return scores


def pick_compaction(
    version: Version, options: CompactionOptions, compact_pointers: dict[int, bytes]
) -> Compaction | None:
    """The most urgent compaction, or None when every level is within budget."""
    scores = level_scores(version, options)
    level = max(range(NUM_LEVELS - 1), key=lambda lvl: scores[lvl])
    if scores[level] < 1.0:
        return None
    return compaction_for_level(version, level, compact_pointers)


def compaction_for_level(
    version: Version, level: int, compact_pointers: dict[int, bytes]
) -> Compaction | None:
    """Compact ``level`` into ``level + 1`` (None if ``level`` is empty)."""
    if not 0 <= level < NUM_LEVELS - 1:
        raise ValueError(f"level {level} is the last level or outside the tree: nothing to compact into")
    files = version.files(level)
    if not files:
        return None
    if level == 0:
        # L0 files overlap one another; merging all of them keeps newest-wins simple.
        inputs = tuple(sorted(files, key=lambda f: f.number, reverse=True))
    else:
        pointer = compact_pointers.get(level)
        chosen = next((f for f in files if pointer is None or f.min_key > pointer), files[0])
        inputs = (chosen,)
    start, end = key_range(inputs)
    overlaps = tuple(version.overlapping(level + 1, start, end))
    if overlaps:
        start, end = min(start, overlaps[0].min_key), max(end, overlaps[-1].max_key)
    deeper_hold_range = any(version.overlapping(lvl, start, end) for lvl in range(level + 2, NUM_LEVELS))
    return Compaction(level=level, inputs=inputs, overlaps=overlaps, drop_tombstones=not deeper_hold_range)


def reclaim_plans(
    version: Version, ranges: Sequence[tuple[bytes, bytes]], obsolete: Callable[[bytes], bool]
) -> list[Compaction]:
    """In-place rewrites that let the compaction filter drop obsolete entries for good.

    A table of L1 or deeper qualifies when it meets one of ``ranges`` (each ``[start, end)``)
    or when its first or last key is ``obsolete``, and no deeper level holds any of its key
    range (so every obsolete entry can be dropped outright, never kept as a tombstone: a
    rewritten table never qualifies again for the same keys). L0 tables are left alone:
    their order is their age, and every one of them is rewritten by its next compaction.
    """
    plans = []
    for level in range(1, NUM_LEVELS):
        for meta in version.files(level):
            meets = any(start <= meta.max_key and meta.min_key < end for start, end in ranges)
            if not (meets or obsolete(meta.min_key) or obsolete(meta.max_key)):
                continue
            if any(
                version.overlapping(lvl, meta.min_key, meta.max_key) for lvl in range(level + 1, NUM_LEVELS)
            ):
                continue  # its obsolete entries would have to stay as tombstones: not yet
            plans.append(
                Compaction(level=level, inputs=(meta,), overlaps=(), drop_tombstones=True, in_place=True)
            )
    return plans
