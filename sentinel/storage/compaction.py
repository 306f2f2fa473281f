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

from collections.abc import Callable, Collection, Sequence

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
    version: Version,
    options: CompactionOptions,
    compact_pointers: dict[int, bytes],
    damaged: Collection[int] = frozenset(),
) -> Compaction | None:
    """The most urgent compaction, or None when every level is within budget (or the only
    work left needs a ``damaged`` table). Levels are tried by score, highest first (the
    lowest level on a tie): a level whose work damage blocks gives way to the next."""
    scores = level_scores(version, options)
    for level in sorted(range(NUM_LEVELS - 1), key=lambda lvl: -scores[lvl]):
        if scores[level] < 1.0:
            return None
        plan = compaction_for_level(version, level, compact_pointers, damaged)
        if plan is not None:
            return plan
    return None


def compaction_for_level(
    version: Version,
    level: int,
    compact_pointers: dict[int, bytes],
    damaged: Collection[int] = frozenset(),
) -> Compaction | None:
    """Compact ``level`` into ``level + 1`` (None if ``level`` is empty, or if every file of
    it that could go down needs a ``damaged`` table)."""
    if not 0 <= level < NUM_LEVELS - 1:
        raise ValueError(f"level {level} is the last level or outside the tree: nothing to compact into")
    files = version.files(level)
    if not files:
        return None
    if level == 0:
        # L0 files overlap one another; merging all of them keeps newest-wins simple.
        inputs = movable_l0_files(version, damaged)
        if not inputs:
            return None
    else:
        pointer = compact_pointers.get(level)
        # Round-robin from the pointer: the first file past it, wrapping around.
        first = next((i for i, f in enumerate(files) if pointer is None or f.min_key > pointer), 0)
        chosen = next(
            (f for f in files[first:] + files[:first] if _may_go_down(version, level, f, damaged)), None
        )
        if chosen is None:
            return None
        inputs = (chosen,)
    start, end = key_range(inputs)
    overlaps = tuple(version.overlapping(level + 1, start, end))
    if overlaps:
        start, end = min(start, overlaps[0].min_key), max(end, overlaps[-1].max_key)
    deeper_hold_range = any(version.overlapping(lvl, start, end) for lvl in range(level + 2, NUM_LEVELS))
    return Compaction(level=level, inputs=inputs, overlaps=overlaps, drop_tombstones=not deeper_hold_range)


def _may_go_down(version: Version, level: int, meta: FileMeta, damaged: Collection[int]) -> bool:
    below = version.overlapping(level + 1, meta.min_key, meta.max_key)
    if meta.number in damaged:
        return not below  # a trivial move: the file is not read, only renamed a level down
    return not any(f.number in damaged for f in below)


def movable_l0_files(version: Version, damaged: Collection[int] = frozenset()) -> tuple[FileMeta, ...]:
    """The L0 files one compaction may take into L1, newest first: all of them when nothing
    is damaged.

    A file is held back (stays in L0) when it is damaged, overlaps a damaged L1 file, or
    overlaps an OLDER held-back L0 file: reads check L0 before L1, so that older file would
    hide the newer entries once they were in L1. Older files overlapping a held-back one
    may go (the newer file left above them still wins, as it should). When damaged L1 files
    lie between the movable files, one compaction takes only the files of one gap between
    them, the gap holding the most (its key range must not include a damaged L1 file, which
    it would have to merge); a later compaction takes the next gap.
    """
    files = version.files(0)
    if not damaged:
        return files
    damaged_l1 = [f for f in version.files(1) if f.number in damaged]
    held: list[FileMeta] = []
    movable: list[FileMeta] = []
    for meta in sorted(files, key=lambda f: f.number):  # oldest first
        if (
            meta.number in damaged
            or any(_overlap(meta, other) for other in held)
            or any(_overlap(meta, other) for other in damaged_l1)
        ):
            held.append(meta)
        else:
            movable.append(meta)
    if damaged_l1 and movable:
        # Each movable file lies in one gap between the damaged L1 files (it overlaps none).
        gaps: dict[int, list[FileMeta]] = {}
        for meta in movable:
            gap = sum(1 for d in damaged_l1 if d.max_key < meta.min_key)
            gaps.setdefault(gap, []).append(meta)
        movable = max((gaps[gap] for gap in sorted(gaps)), key=len)  # the lowest gap on a tie
    return tuple(sorted(movable, key=lambda f: f.number, reverse=True))


def l0_blockers(version: Version, damaged: Collection[int]) -> list[FileMeta]:
    """The damaged tables that hold L0 files back, oldest first: damaged L0 files and
    damaged L1 files that an L0 file overlaps."""
    l0 = version.files(0)
    found = [f for f in l0 if f.number in damaged]
    found += [f for f in version.files(1) if f.number in damaged and any(_overlap(f, g) for g in l0)]
    return sorted(found, key=lambda f: f.number)


def _overlap(a: FileMeta, b: FileMeta) -> bool:
    return not (a.max_key < b.min_key or a.min_key > b.max_key)


def reclaim_plans(
    version: Version,
    ranges: Sequence[tuple[bytes, bytes]],
    obsolete: Callable[[bytes], bool],
    damaged: Collection[int] = frozenset(),
) -> list[Compaction]:
    """In-place rewrites that let the compaction filter drop obsolete entries for good.

    A table of L1 or deeper qualifies when it meets one of ``ranges`` (each ``[start, end)``)
    or when its first or last key is ``obsolete``, and no deeper level holds any of its key
    range (so every obsolete entry can be dropped outright, never kept as a tombstone: a
    rewritten table never qualifies again for the same keys). L0 tables are left alone:
    their order is their age, and every one of them is rewritten by its next compaction.
    A ``damaged`` table is never rewritten: its obsolete entries stay (unreadable anyway).
    """
    plans = []
    for level in range(1, NUM_LEVELS):
        for meta in version.files(level):
            if meta.number in damaged:
                continue
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
