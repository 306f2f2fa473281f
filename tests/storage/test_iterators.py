"""merge_entries: newest source wins, tombstones hide older entries, checked against a model."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from sentinel.storage.iterators import Entry, merge_entries


def model_merge(sources: list[list[Entry]], *, drop_tombstones: bool) -> list[Entry]:
    """Brute force: for each key, the entry of the first (newest) source that holds it."""
    newest: dict[bytes, Entry] = {}
    for source in sources:
        for entry in source:
            newest.setdefault(entry[0], entry)
    merged = [newest[key] for key in sorted(newest)]
    return [e for e in merged if not (drop_tombstones and e[2] is None)]


def random_sources(rng: random.Random, count: int) -> list[list[Entry]]:
    """Newest-first sources over a small shared key space, so keys collide across sources."""
    key_space = [bytes([rng.randrange(256)]) * rng.randrange(1, 3) for _ in range(rng.randrange(1, 40))]
    sources = []
    seq = 10_000
    for _ in range(count):
        keys = sorted(set(rng.sample(key_space, rng.randrange(0, len(key_space) + 1))))
        seq -= 100  # older sources hold older seqs
        sources.append(
            [(k, seq + i, None if rng.random() < 0.3 else rng.randbytes(3)) for i, k in enumerate(keys)]
        )
    return sources


@pytest.mark.parametrize("drop_tombstones", [False, True])
def test_matches_brute_force_model(drop_tombstones: bool) -> None:
    rng = random.Random(2024)
    for _ in range(600):
        sources = random_sources(rng, rng.randrange(0, 7))
        merged = list(merge_entries((iter(s) for s in sources), drop_tombstones=drop_tombstones))
        assert merged == model_merge(sources, drop_tombstones=drop_tombstones), sources
        keys = [e[0] for e in merged]
        assert keys == sorted(set(keys))


def test_newest_source_wins() -> None:
    newest = [(b"a", 9, b"new-a"), (b"c", 9, b"new-c")]
    older = [(b"a", 5, b"old-a"), (b"b", 5, b"old-b"), (b"c", 5, b"old-c")]
    oldest = [(b"a", 1, b"oldest-a"), (b"d", 1, b"oldest-d")]
    assert list(merge_entries([newest, older, oldest], drop_tombstones=False)) == [
        (b"a", 9, b"new-a"),
        (b"b", 5, b"old-b"),
        (b"c", 9, b"new-c"),
        (b"d", 1, b"oldest-d"),
    ]


def test_source_order_not_seq_decides() -> None:
    # Sources are ranked by position: the caller lists them newest first.
    first = [(b"k", 1, b"first")]
    second = [(b"k", 99, b"second")]
    assert list(merge_entries([first, second], drop_tombstones=False)) == [(b"k", 1, b"first")]


def test_tombstones_hide_older_entries() -> None:
    newest = [(b"a", 9, None), (b"b", 9, None)]
    older = [(b"a", 5, b"old-a"), (b"c", 5, b"old-c")]
    assert list(merge_entries([newest, older], drop_tombstones=False)) == [
        (b"a", 9, None),
        (b"b", 9, None),
        (b"c", 5, b"old-c"),
    ]
    assert list(merge_entries([newest, older], drop_tombstones=True)) == [(b"c", 5, b"old-c")]
    # An older tombstone does not hide a newer value.
    assert list(merge_entries([[(b"a", 9, b"back")], [(b"a", 5, None)]], drop_tombstones=True)) == [
        (b"a", 9, b"back")
    ]


@pytest.mark.parametrize("drop_tombstones", [False, True])
def test_zero_and_one_source(drop_tombstones: bool) -> None:
    assert list(merge_entries([], drop_tombstones=drop_tombstones)) == []
    assert list(merge_entries([[], []], drop_tombstones=drop_tombstones)) == []
    only = [(b"a", 1, b"x"), (b"b", 2, None), (b"c", 3, b"")]
    expected = [e for e in only if not (drop_tombstones and e[2] is None)]
    assert list(merge_entries([only], drop_tombstones=drop_tombstones)) == expected


def test_sources_are_consumed_lazily() -> None:
    pulled: list[bytes] = []

    def source(keys: list[bytes], seq: int) -> Iterator[Entry]:
        for key in keys:
            pulled.append(key)
            yield key, seq, key

    merged = merge_entries(
        [source([b"a", b"c", b"e"], 2), source([b"b", b"d", b"f"], 1)], drop_tombstones=False
    )
    assert pulled == []
    # At most one look-ahead entry per source beyond what was yielded: a scan of huge tables
    # stays O(sources) in memory.
    expected = [(b"a", 2, b"a"), (b"b", 1, b"b"), (b"c", 2, b"c"), (b"d", 1, b"d"), (b"e", 2, b"e")]
    for yielded, entry in enumerate(expected, 1):
        assert next(merged) == entry
        assert yielded <= len(pulled) <= yielded + 2
    assert [entry[0] for entry in merged] == [b"f"]


def test_a_source_s_run_before_every_other_key_is_merged_in_order() -> None:
    # Long runs from one source (each L0 table holds a stretch of every partition's offsets)
    # go out without the heap; keys equal to another source's next key still go through it.
    newest = [(b"a1", 9, b"n"), (b"a2", 9, b"n"), (b"b1", 9, None), (b"c1", 9, b"n"), (b"c2", 9, b"n")]
    older = [(b"b0", 5, b"o"), (b"b1", 5, b"o"), (b"b2", 5, b"o"), (b"c2", 5, b"o"), (b"d", 5, b"o")]
    oldest = [(b"a0", 1, b"x"), (b"a2", 1, b"x"), (b"e", 1, b"x")]
    sources = [newest, older, oldest]
    for drop in (False, True):
        merged = list(merge_entries([iter(s) for s in sources], drop_tombstones=drop))
        assert merged == model_merge(sources, drop_tombstones=drop)
