"""The compaction planner (pure): triggers, input choice, trivial moves, tombstone dropping,
and the plans that leave damaged tables out."""

from __future__ import annotations

import pytest

from sentinel.storage.compaction import (
    Compaction,
    CompactionOptions,
    compaction_for_level,
    key_range,
    l0_blockers,
    level_scores,
    movable_l0_files,
    pick_compaction,
    reclaim_plans,
)
from sentinel.storage.manifest import NUM_LEVELS, FileMeta, Version, VersionEdit

MIB = 1024 * 1024
OPTIONS = CompactionOptions()  # trigger 4 L0 files, L1 16 MiB, x10 per level


def f(number: int, min_key: bytes, max_key: bytes, size: int = MIB) -> FileMeta:
    return FileMeta(number=number, size=size, count=1, min_key=min_key, max_key=max_key, max_seq=number)


def version_of(*files: tuple[int, FileMeta]) -> Version:
    return Version().apply(VersionEdit(added=files))


def numbers(files: tuple[FileMeta, ...]) -> list[int]:
    return [x.number for x in files]


def test_budgets_and_scores() -> None:
    assert [OPTIONS.max_bytes_for_level(level) for level in (1, 2, 3)] == [16 * MIB, 160 * MIB, 1600 * MIB]
    version = version_of(
        (0, f(1, b"a", b"b")),
        (0, f(2, b"a", b"b")),
        (1, f(3, b"a", b"b", size=8 * MIB)),
        (2, f(4, b"a", b"b", size=320 * MIB)),
        (NUM_LEVELS - 1, f(5, b"a", b"b", size=10**15)),
    )
    scores = level_scores(version, OPTIONS)
    assert len(scores) == NUM_LEVELS
    assert scores[:3] == [0.5, 0.5, 2.0]
    assert scores[-1] == 0.0  # the last level has no budget: data comes to rest there


def test_nothing_to_do_within_budget() -> None:
    version = version_of(*((0, f(n, b"a", b"z")) for n in range(1, 4)), (1, f(9, b"a", b"z", 15 * MIB)))
    assert pick_compaction(version, OPTIONS, {}) is None
    assert pick_compaction(Version(), OPTIONS, {}) is None


def test_l0_trigger_takes_all_l0_files_and_the_overlapping_l1_files() -> None:
    version = version_of(
        (0, f(10, b"c", b"f")),
        (0, f(12, b"e", b"h")),
        (0, f(11, b"d", b"e")),
        (0, f(13, b"c", b"d")),
        (1, f(1, b"a", b"b")),  # left of every L0 file
        (1, f(2, b"b\x00", b"c")),  # touches c: overlaps (both ends inclusive)
        (1, f(3, b"g", b"j")),
        (1, f(4, b"k", b"m")),  # right of every L0 file
        (2, f(5, b"x", b"z")),
    )
    plan = pick_compaction(version, OPTIONS, {})
    assert plan is not None
    assert plan.level == 0
    assert plan.output_level == 1
    assert numbers(plan.inputs) == [13, 12, 11, 10]  # newest first: newest wins in the merge
    assert numbers(plan.overlaps) == [2, 3]  # in key order
    assert not plan.is_trivial_move
    assert plan.drop_tombstones  # L2 holds only x..z, outside b\x00..j
    assert plan.input_bytes == 6 * MIB
    assert plan.all_inputs() == [(0, x) for x in plan.inputs] + [(1, x) for x in plan.overlaps]


def test_l0_below_trigger_waits() -> None:
    version = version_of(*((0, f(n, b"a", b"z")) for n in range(1, 4)))
    assert pick_compaction(version, OPTIONS, {}) is None
    options = CompactionOptions(l0_compaction_trigger=3)
    plan = pick_compaction(version, options, {})
    assert plan is not None and numbers(plan.inputs) == [3, 2, 1]


def test_level_over_budget_picks_one_file_round_robin() -> None:
    l1 = [f(1, b"a", b"c", 6 * MIB), f(2, b"d", b"f", 6 * MIB), f(3, b"g", b"i", 6 * MIB)]
    version = version_of(*((1, x) for x in l1), (2, f(7, b"e", b"e")), (2, f(8, b"h", b"z")))
    pointers: dict[int, bytes] = {}
    chosen = []
    for _ in range(5):
        plan = pick_compaction(version, OPTIONS, pointers)
        assert plan is not None and plan.level == 1
        assert len(plan.inputs) == 1
        chosen.append(plan.inputs[0].number)
        # What the Compactor records after running it: the largest key it compacted.
        pointers[1] = max(x.max_key for x in plan.inputs)
    assert chosen == [1, 2, 3, 1, 2]  # every part of the key space gets its turn, then wraps
    plan = compaction_for_level(version, 1, {1: b"f"})
    assert plan is not None
    assert numbers(plan.inputs) == [3]
    assert numbers(plan.overlaps) == [8]
    plan = compaction_for_level(version, 1, {1: b"c"})
    assert plan is not None and numbers(plan.overlaps) == [7]


def test_most_urgent_level_goes_first() -> None:
    version = version_of(
        *((0, f(n, b"a", b"z")) for n in range(10, 15)),  # L0 score 5/4
        (1, f(1, b"a", b"m", 40 * MIB)),  # L1 score 2.5
        (2, f(2, b"a", b"m", 100 * MIB)),  # L2 score 0.6
    )
    plan = pick_compaction(version, OPTIONS, {})
    assert plan is not None and plan.level == 1
    version = version_of(*((0, f(n, b"a", b"z")) for n in range(10, 14)), (1, f(1, b"a", b"m", 16 * MIB)))
    plan = pick_compaction(version, OPTIONS, {})
    assert plan is not None and plan.level == 0  # a tie goes to L0: it blocks flushes


def test_trivial_move_when_nothing_overlaps_below() -> None:
    version = version_of((1, f(1, b"a", b"c", 20 * MIB)), (2, f(2, b"d", b"z")), (3, f(3, b"a", b"c")))
    plan = pick_compaction(version, OPTIONS, {})
    assert plan == Compaction(level=1, inputs=(version.files(1)[0],), overlaps=(), drop_tombstones=False)
    assert plan.is_trivial_move
    # A lone L0 file (manual compaction) with nothing below moves too.
    plan = compaction_for_level(version_of((0, f(4, b"a", b"b"))), 0, {})
    assert plan is not None and plan.is_trivial_move


@pytest.mark.parametrize(
    ("deeper", "drop"),
    [
        ([], True),
        ([(3, f(9, b"x", b"z"))], True),  # deeper data, but outside the range
        ([(3, f(9, b"a", b"a"))], True),
        ([(3, f(9, b"c", b"c"))], False),  # touches the input's range
        ([(6, f(9, b"m", b"p"))], False),  # inside the overlap's extension of the range
        ([(5, f(9, b"p", b"q"))], False),
    ],
)
def test_tombstones_dropped_only_when_no_deeper_level_holds_the_range(
    deeper: list[tuple[int, FileMeta]], drop: bool
) -> None:
    # L1 input b..d overlaps L2 c..p, so the output covers b..p.
    version = version_of((1, f(1, b"b", b"d", 20 * MIB)), (2, f(2, b"c", b"p")), *deeper)
    plan = pick_compaction(version, OPTIONS, {})
    assert plan is not None and plan.level == 1
    assert numbers(plan.overlaps) == [2]
    assert plan.drop_tombstones is drop


def test_l0_compaction_ignores_l1_when_deciding_tombstones() -> None:
    # L1 files outside the range stay where they are and hold none of the merged keys.
    version = version_of(*((0, f(n, b"m", b"n")) for n in range(10, 14)), (1, f(1, b"a", b"b")))
    plan = pick_compaction(version, OPTIONS, {})
    assert plan is not None and plan.overlaps == () and plan.drop_tombstones
    assert not plan.is_trivial_move  # four inputs are merged, never moved


def test_empty_level_and_last_level() -> None:
    assert compaction_for_level(Version(), 3, {}) is None
    version = version_of((NUM_LEVELS - 1, f(1, b"a", b"b")))
    with pytest.raises(ValueError, match=f"level {NUM_LEVELS - 1} is the last level"):
        compaction_for_level(version, NUM_LEVELS - 1, {})


def test_key_range() -> None:
    assert key_range([f(1, b"c", b"d"), f(2, b"a", b"b"), f(3, b"b", b"z")]) == (b"a", b"z")


def test_reclaim_rewrites_resting_tables_in_place() -> None:
    last = NUM_LEVELS - 1
    version = version_of(
        (0, f(1, b"a", b"z")),  # L0: never reclaimed (its next compaction rewrites it)
        (1, f(2, b"a", b"c")),  # has c..d below it: its obsolete keys could not be dropped
        (2, f(3, b"c", b"d")),
        (last, f(4, b"e", b"f")),  # meets the range
        (last, f(5, b"g", b"h")),  # starts with an obsolete key
        (last, f(6, b"i", b"j")),  # nothing obsolete known
    )
    plans = reclaim_plans(version, [(b"a", b"e0")], obsolete=lambda key: key == b"g")
    assert [(p.level, numbers(p.inputs)) for p in plans] == [(2, [3]), (last, [4]), (last, [5])]
    for plan in plans:
        assert plan.in_place and plan.output_level == plan.level
        assert not plan.is_trivial_move and plan.drop_tombstones and plan.overlaps == ()


def test_reclaim_range_end_is_exclusive_and_nothing_known_means_nothing_to_do() -> None:
    version = version_of((NUM_LEVELS - 1, f(1, b"m", b"p")))
    assert reclaim_plans(version, [(b"a", b"m")], obsolete=lambda key: False) == []
    assert reclaim_plans(version, [], obsolete=lambda key: False) == []
    assert len(reclaim_plans(version, [(b"p", b"q")], obsolete=lambda key: False)) == 1


# -- damaged tables: never an input that is read ------------------------------------------


def test_a_damaged_l0_file_holds_back_the_newer_l0_files_overlapping_it_and_only_those() -> None:
    version = version_of(
        (0, f(10, b"a", b"f")),  # older than the damaged file, overlaps it: may go down
        (0, f(11, b"d", b"h")),  # damaged
        (0, f(12, b"g", b"k")),  # newer, overlaps 11: an older file would hide it from reads
        (0, f(13, b"j", b"m")),  # overlaps only 12, which stays: held back too
        (0, f(14, b"x", b"z")),  # newer, overlaps nothing held: may go down
        (1, f(1, b"a", b"b")),
        (1, f(2, b"y", b"y")),
    )
    damaged = {11}
    assert numbers(movable_l0_files(version, damaged)) == [14, 10]  # newest first
    plan = pick_compaction(version, OPTIONS, {}, damaged)
    assert plan is not None and plan.level == 0
    assert numbers(plan.inputs) == [14, 10]
    assert numbers(plan.overlaps) == [1, 2]  # every L1 file in a..z (none damaged)
    assert [x.number for x in l0_blockers(version, damaged)] == [11]
    # Without damage: every L0 file, as before.
    assert numbers(movable_l0_files(version)) == [14, 13, 12, 11, 10]
    plan = pick_compaction(version, OPTIONS, {})
    assert plan is not None and numbers(plan.inputs) == [14, 13, 12, 11, 10]


def test_when_every_l0_file_is_held_back_there_is_no_l0_plan_and_other_levels_go_on() -> None:
    version = version_of(
        *((0, f(n, b"a", b"z")) for n in range(10, 16)),  # L0 score 6/4, all overlapping 10
        (1, f(1, b"a", b"c", 20 * MIB)),  # L1 score 1.25: lower, but it can be done
        (2, f(2, b"m", b"n")),
    )
    damaged = {10}
    assert movable_l0_files(version, damaged) == ()
    assert compaction_for_level(version, 0, {}, damaged) is None
    plan = pick_compaction(version, OPTIONS, {}, damaged)
    assert plan is not None and plan.level == 1 and plan.is_trivial_move
    only_l0 = version_of(*((0, x) for x in version.files(0)))
    assert pick_compaction(only_l0, OPTIONS, {}, damaged) is None  # over its trigger, but stuck


def test_a_damaged_l1_file_holds_back_the_l0_files_overlapping_it() -> None:
    version = version_of(
        (0, f(10, b"a", b"c")),
        (0, f(11, b"e", b"f")),  # overlaps the damaged L1 file
        (0, f(12, b"h", b"i")),
        (0, f(13, b"j", b"k")),
        (0, f(14, b"j", b"p")),  # newer than 13, overlaps it: fine, both go
        (1, f(1, b"d", b"g")),  # damaged
        (1, f(2, b"x", b"z")),  # damaged, overlaps no L0 file
    )
    damaged = {1, 2}
    # The movable files lie on both sides of the damaged d..g: one compaction takes the
    # larger group (its range must not reach the damaged file), the next the other.
    assert numbers(movable_l0_files(version, damaged)) == [14, 13, 12]
    plan = compaction_for_level(version, 0, {}, damaged)
    assert plan is not None and plan.overlaps == ()
    assert [x.number for x in l0_blockers(version, damaged)] == [1]
    after = version.apply(
        VersionEdit(deleted=tuple((0, n) for n in (14, 13, 12)), added=((1, f(20, b"h", b"p")),))
    )
    assert numbers(movable_l0_files(after, damaged)) == [10]


def test_deeper_levels_choose_the_next_file_whose_compaction_needs_no_damaged_table() -> None:
    l1 = [f(1, b"a", b"c", 6 * MIB), f(2, b"d", b"f", 6 * MIB), f(3, b"g", b"i", 6 * MIB)]
    version = version_of(*((1, x) for x in l1), (2, f(7, b"e", b"e")), (2, f(8, b"h", b"z")))
    # 2 overlaps the damaged 7 below it: round-robin passes over it.
    plan = compaction_for_level(version, 1, {1: b"c"}, {7})
    assert plan is not None and numbers(plan.inputs) == [3] and numbers(plan.overlaps) == [8]
    # A damaged input is never merged...
    plan = compaction_for_level(version, 1, {1: b"f"}, {3, 7})
    assert plan is not None and numbers(plan.inputs) == [1] and plan.is_trivial_move
    # ...but one with nothing below it is moved down (a manifest edit: the file is not read).
    plan = compaction_for_level(version, 1, {}, {1})
    assert plan is not None and numbers(plan.inputs) == [1] and plan.is_trivial_move
    # Nothing left that may go: 1 and 3 overlap damaged files below, 2 is damaged itself
    # and has a file below it. The level stays over its budget, and nothing is planned.
    blocked = version.apply(VersionEdit(added=((2, f(9, b"b", b"b")),)))
    assert compaction_for_level(blocked, 1, {}, {2, 9, 8}) is None
    assert pick_compaction(blocked, OPTIONS, {}, {2, 9, 8}) is None


def test_reclaim_never_rewrites_a_damaged_table() -> None:
    last = NUM_LEVELS - 1
    version = version_of((last, f(4, b"e", b"f")), (last, f(5, b"g", b"h")))
    plans = reclaim_plans(version, [(b"a", b"z")], obsolete=lambda key: True, damaged={4})
    assert [numbers(p.inputs) for p in plans] == [[5]]
