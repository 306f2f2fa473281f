"""SkipList: ordering against a dict model, range bounds, versions, interleaved iteration, PRNG."""

from __future__ import annotations

import bisect
import random
import tracemalloc
from types import ModuleType

import pytest

from sentinel.storage import builds
from sentinel.storage.skiplist import MAX_HEIGHT, NODE_OVERHEAD_BYTES, SkipList

# Every test runs once per build of the skip list (tests/storage/conftest.py).
pytestmark = pytest.mark.usefixtures("storage_build")


def skiplist_module() -> ModuleType:
    """The build of ``sentinel.storage.skiplist`` under test (the fixture switched it)."""
    return builds.skiplist


Model = dict[bytes, tuple[int, bytes | None]]


def model_put(model: Model, key: bytes, seq: int, value: bytes | None) -> None:
    old = model.get(key)
    if old is None or seq >= old[0]:
        model[key] = (seq, value)


def model_items(model: Model, start: bytes | None = None, end: bytes | None = None) -> list:
    return [
        (k, s, v)
        for k, (s, v) in sorted(model.items())
        if (start is None or k >= start) and (end is None or k < end)
    ]


def random_ops(seed: int, count: int, key_space: int) -> tuple[SkipList, Model]:
    """Puts, deletes and stale (older-seq) writes over a small key space, applied to both."""
    rng = random.Random(seed)
    skiplist = skiplist_module().SkipList(seed=seed)
    model: Model = {}
    keys = [rng.randbytes(rng.randrange(0, 6)) for _ in range(key_space)]
    seq = 1000
    for _ in range(count):
        key = rng.choice(keys)
        roll = rng.random()
        if roll < 0.15:
            seq += 1
            skiplist.delete(key, seq)
            model_put(model, key, seq, None)
        elif roll < 0.25:
            stale = rng.randrange(0, seq)  # an older seq: must lose to anything newer
            skiplist.put(key, stale, b"stale")
            model_put(model, key, stale, b"stale")
        else:
            seq += 1
            value = rng.randbytes(rng.randrange(0, 8))
            skiplist.put(key, seq, value)
            model_put(model, key, seq, value)
    return skiplist, model


def test_empty() -> None:
    skiplist = skiplist_module().SkipList()
    assert len(skiplist) == 0
    assert list(skiplist) == []
    assert list(skiplist.items(b"a", b"z")) == []
    assert skiplist.get(b"") is None


def test_random_ops_match_sorted_dict() -> None:
    skiplist, model = random_ops(seed=7, count=10_000, key_space=3_000)
    assert list(skiplist) == model_items(model)
    assert list(skiplist.items()) == model_items(model)
    assert len(skiplist) == len(model)
    for key, (seq, value) in model.items():
        assert skiplist.get(key) == (seq, value)
    assert skiplist.get(b"\xff" * 7) is None  # longer than any generated key


def test_range_bounds_match_model() -> None:
    skiplist, model = random_ops(seed=11, count=3_000, key_space=800)
    rng = random.Random(3)
    keys = sorted(model)
    probes: list[bytes | None] = [None, b"", b"\x00", b"\xff" * 8, keys[0], keys[-1], keys[len(keys) // 2]]
    probes += [rng.randbytes(rng.randrange(0, 4)) for _ in range(60)]
    for start in probes:
        for end in probes:
            assert list(skiplist.items(start, end)) == model_items(model, start, end), (start, end)


def test_seek_lands_on_first_key_at_or_after_start() -> None:
    skiplist = skiplist_module().SkipList()
    for i, key in enumerate([b"b", b"d", b"f"]):
        skiplist.put(key, i, key)
    assert [k for k, _, _ in skiplist.items(b"d")] == [b"d", b"f"]  # inclusive start
    assert [k for k, _, _ in skiplist.items(b"c")] == [b"d", b"f"]  # between keys
    assert [k for k, _, _ in skiplist.items(b"a", b"f")] == [b"b", b"d"]  # exclusive end
    assert [k for k, _, _ in skiplist.items(b"g")] == []
    assert [k for k, _, _ in skiplist.items(b"d", b"d")] == []
    assert [k for k, _, _ in skiplist.items(b"e", b"c")] == []  # end before start


def test_tombstones_are_stored_and_iterated() -> None:
    skiplist = skiplist_module().SkipList()
    skiplist.put(b"a", 1, b"x")
    assert skiplist.delete(b"a", 2) == -1  # the value's byte disappears
    assert skiplist.get(b"a") == (2, None)
    assert skiplist.delete(b"never-written", 3) == NODE_OVERHEAD_BYTES + len(b"never-written")
    assert list(skiplist) == [(b"a", 2, None), (b"never-written", 3, None)]
    assert skiplist.put(b"a", 4, b"back") == 4  # a put over a tombstone revives the key
    assert skiplist.get(b"a") == (4, b"back")
    assert len(skiplist) == 2


def test_older_seq_is_ignored_equal_seq_replaces() -> None:
    skiplist = skiplist_module().SkipList()
    skiplist.put(b"k", 10, b"ten")
    assert skiplist.put(b"k", 9, b"nine!") == 0
    assert skiplist.delete(b"k", 3) == 0
    assert skiplist.get(b"k") == (10, b"ten")
    assert skiplist.put(b"k", 10, b"TEN!") == 1
    assert skiplist.get(b"k") == (10, b"TEN!")
    assert len(skiplist) == 1


def test_put_byte_deltas() -> None:
    skiplist = skiplist_module().SkipList()
    assert skiplist.put(b"key", 1, b"value") == NODE_OVERHEAD_BYTES + 3 + 5
    assert skiplist.put(b"key", 2, b"a longer value") == 14 - 5
    assert skiplist.put(b"key", 3, b"v") == 1 - 14
    assert skiplist.put(b"", 4, b"") == NODE_OVERHEAD_BYTES  # empty key and value still cost a node


def test_iteration_survives_interleaved_inserts() -> None:
    rng = random.Random(42)
    skiplist = skiplist_module().SkipList(seed=5)
    initial = {rng.randbytes(4) for _ in range(2_000)}
    for i, key in enumerate(sorted(initial, key=lambda _: rng.random())):
        skiplist.put(key, i, b"v")
    inserted: set[bytes] = set()
    seq = 10_000
    for start, end in [(None, None), (b"\x40", b"\xc0")]:
        expected = {k for k in initial if (start is None or k >= start) and (end is None or k < end)}
        seen: list[bytes] = []
        for key, _, _ in skiplist.items(start, end):
            seen.append(key)
            # Inserts right around the current position, and anywhere, while suspended.
            for _ in range(rng.randrange(0, 3)):
                seq += 1
                new = key + rng.randbytes(1) if rng.random() < 0.3 else rng.randbytes(4)
                inserted.add(new)
                skiplist.put(new, seq, b"new")
        assert seen == sorted(set(seen)), "iteration went backwards or repeated a key"
        assert expected <= set(seen), "a key that existed when iteration started was skipped"
        assert set(seen) <= initial | inserted
        assert all((start is None or k >= start) and (end is None or k < end) for k in seen)
        initial |= inserted
    assert [k for k, _, _ in skiplist] == sorted(initial)


def test_replacing_the_current_key_while_suspended_yields_no_repeat() -> None:
    skiplist = skiplist_module().SkipList()
    for i, key in enumerate([b"a", b"b", b"c"]):
        skiplist.put(key, i, b"old")
    it = skiplist.items()
    assert next(it) == (b"a", 0, b"old")
    skiplist.put(b"a", 10, b"new")
    skiplist.put(b"b", 11, b"new")
    # The iterator may see newer data (readers tolerate it) but never a key twice.
    assert list(it) == [(b"b", 11, b"new"), (b"c", 2, b"old")]


def test_xorshift64_known_answer_and_determinism() -> None:
    # Marsaglia's xorshift64 (13, 7, 17) from state 1, worked by hand:
    # 1 ^ 1<<13 = 8193; ^ 8193>>7 = 8257; ^ 8257<<17 = 1082269761.
    assert skiplist_module().XorShift64(1).next_u64() == 1082269761
    a, b = skiplist_module().XorShift64(123), skiplist_module().XorShift64(123)
    assert [a.next_u64() for _ in range(1000)] == [b.next_u64() for _ in range(1000)]
    assert _heights(9, 1000) == _heights(9, 1000)
    assert _heights(1, 1000) != _heights(2, 1000)
    zero = skiplist_module().XorShift64(0)  # zero is xorshift's fixed point: it must be replaced
    assert zero.next_u64() != 0


def test_xorshift64_seed_is_masked_to_64_bits() -> None:
    assert (
        skiplist_module().XorShift64(5 | (1 << 64)).next_u64() == skiplist_module().XorShift64(5).next_u64()
    )
    # A seed that masks to zero takes the default seed instead of the fixed point.
    assert skiplist_module().XorShift64(1 << 64).next_u64() == skiplist_module().XorShift64().next_u64()
    rng = skiplist_module().XorShift64(1)
    assert all(rng.next_u64() for _ in range(10_000))


def _heights(seed: int, n: int) -> list[int]:
    rng = skiplist_module().XorShift64(seed)
    return [rng.next_height() for _ in range(n)]


def test_same_seed_builds_the_same_levels() -> None:
    rng = random.Random(0)
    keys = [rng.randbytes(8) for _ in range(500)]
    lists = [
        skiplist_module().SkipList(seed=77),
        skiplist_module().SkipList(seed=77),
        skiplist_module().SkipList(seed=78),
    ]
    for skiplist in lists:
        for i, key in enumerate(keys):
            skiplist.put(key, i, b"")

    def shape(skiplist: SkipList) -> list[int]:
        return [len(node) for node in _nodes(skiplist)]

    assert shape(lists[0]) == shape(lists[1])
    assert shape(lists[0]) != shape(lists[2])


def _nodes(skiplist: SkipList) -> list[list]:
    out = []
    node = skiplist._head[3]
    while node is not None:
        out.append(node)
        node = node[3]
    return out


def test_height_distribution_is_quarter_geometric() -> None:
    heights = _heights(2024, 200_000)
    n = len(heights)
    assert min(heights) == 1
    assert max(heights) <= MAX_HEIGHT
    for h, expected in [(2, 0.25), (3, 0.0625), (4, 0.015625)]:
        fraction = sum(1 for x in heights if x >= h) / n
        assert fraction == pytest.approx(expected, rel=0.08), h


def test_height_is_capped() -> None:
    assert skiplist_module().height_of(1 << 63) == MAX_HEIGHT  # 63 trailing zeros: 32 levels uncapped
    assert skiplist_module().height_of(1 << 2) == 2  # one all-zero pair
    rng, twin = skiplist_module().XorShift64(7), skiplist_module().XorShift64(7)
    assert [rng.next_height() for _ in range(100)] == [
        skiplist_module().height_of(twin.next_u64()) for _ in range(100)
    ]


def test_overhead_estimate_matches_traced_memory() -> None:
    """The accounting constant must stay close to what the structure really allocates."""
    assert skiplist_module().approximate_overhead_bytes_per_entry() == NODE_OVERHEAD_BYTES
    rng = random.Random(5)
    n = 20_000
    keys = [rng.randbytes(16) for _ in range(n)]
    values = [rng.randbytes(100) for _ in range(n)]
    seqs = [(1 << 40) + i for i in range(n)]
    skiplist = skiplist_module().SkipList()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        accounted = 0
        for i in range(n):
            # Copies, so the list owns its key/value/seq objects as it would in the engine.
            accounted += skiplist.put(bytes(bytearray(keys[i])), seqs[i] + 0, bytes(bytearray(values[i])))
        traced = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(skiplist) == n
    # Allocator rounding makes the real figure somewhat higher; a gross mismatch means
    # the node layout changed without the estimate.
    assert 0.8 <= traced / accounted <= 1.25, (traced / n, accounted / n)


def test_bisect_model_sanity_on_dense_keys() -> None:
    """Dense sequential keys (the engine's offset-ordered keys): seek is exact at every key."""
    skiplist = skiplist_module().SkipList()
    keys = [i.to_bytes(8, "big") for i in range(0, 4000, 2)]
    for i, key in enumerate(reversed(keys)):
        skiplist.put(key, i, b"")
    for probe in range(-1, 4001, 7):
        start = max(probe, 0).to_bytes(8, "big")
        first = next(skiplist.items(start), None)
        idx = bisect.bisect_left(keys, start)
        assert (first[0] if first else None) == (keys[idx] if idx < len(keys) else None)


def test_bulk_heights_are_the_same_sequence_as_one_at_a_time() -> None:
    one, bulk = skiplist_module().XorShift64(99), skiplist_module().XorShift64(99)
    expected = [one.next_height() for _ in range(1000)]
    drawn: list[int] = []
    for count in (1, 7, 256, 736):
        batch = bulk.next_heights(count)
        drawn += [batch.pop() for _ in range(count)]
    assert drawn == expected
    assert one.next_u64() == bulk.next_u64()  # and the generator ends in the same state


def test_levels_follow_the_generator_whatever_the_refills() -> None:
    # More keys than one refill of the height buffer: node heights are the seed's sequence.
    rng = random.Random(4)
    keys = [rng.randbytes(8) for _ in range(1000)]
    skiplist = skiplist_module().SkipList(seed=31)
    heights = skiplist_module().XorShift64(31)
    expected = {}
    for i, key in enumerate(keys):
        skiplist.put(key, i, b"")
        expected[key] = heights.next_height()
    assert {node[0]: len(node) - 3 for node in _nodes(skiplist)} == expected
