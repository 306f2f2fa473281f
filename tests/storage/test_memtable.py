"""Memtable: byte accounting, seq range, freeze, reads, and apply() of decoded batches."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from sentinel.storage.memtable import Memtable, MemtableFrozen
from sentinel.storage.skiplist import NODE_OVERHEAD_BYTES

# Every test runs once per build of the skip list under the memtable (tests/storage/conftest.py).
pytestmark = pytest.mark.usefixtures("storage_build")


def test_empty_memtable() -> None:
    memtable = Memtable(wal_number=7)
    assert memtable.wal_number == 7
    assert (len(memtable), memtable.approximate_bytes) == (0, 0)
    assert (memtable.first_seq, memtable.last_seq) == (None, None)
    assert not memtable.frozen
    assert memtable.get(b"a") is None
    assert list(memtable.scan()) == []


def test_byte_accounting() -> None:
    memtable = Memtable(1)
    memtable.put(b"key", 10, b"value")
    assert memtable.approximate_bytes == NODE_OVERHEAD_BYTES + 3 + 5
    memtable.put(b"key", 11, b"a much longer value")  # replace: only the value difference
    assert memtable.approximate_bytes == NODE_OVERHEAD_BYTES + 3 + 19
    memtable.put(b"key", 12, b"v")  # a shorter value shrinks the total
    assert memtable.approximate_bytes == NODE_OVERHEAD_BYTES + 3 + 1
    memtable.delete(b"key", 13)  # a tombstone has no value bytes, but keeps its node
    assert memtable.approximate_bytes == NODE_OVERHEAD_BYTES + 3
    memtable.delete(b"gone", 14)  # deleting an absent key still stores a tombstone
    assert memtable.approximate_bytes == 2 * NODE_OVERHEAD_BYTES + 3 + 4
    memtable.put(b"key", 5, b"an older write that loses")
    assert memtable.approximate_bytes == 2 * NODE_OVERHEAD_BYTES + 3 + 4
    assert len(memtable) == 2


def test_byte_accounting_matches_live_contents_under_random_writes() -> None:
    rng = random.Random(11)
    memtable = Memtable(1, seed=5)
    keys = [rng.randbytes(rng.randrange(1, 20)) for _ in range(300)]
    for seq in range(5000):
        key = rng.choice(keys)
        value = None if rng.random() < 0.2 else rng.randbytes(rng.randrange(0, 50))
        memtable.put(key, seq, value)
    live = list(memtable.scan())
    expected = sum(NODE_OVERHEAD_BYTES + len(k) + (0 if v is None else len(v)) for k, _, v in live)
    assert memtable.approximate_bytes == expected


def test_seq_range_covers_every_write_even_losing_ones() -> None:
    memtable = Memtable(1)
    memtable.put(b"k", 50, b"new")
    memtable.put(b"k", 20, b"old")  # loses to seq 50 but was absorbed: a flush covers it
    assert memtable.get(b"k") == (50, b"new")
    assert (memtable.first_seq, memtable.last_seq) == (20, 50)
    memtable.delete(b"j", 70)
    assert memtable.last_seq == 70
    assert memtable.get(b"j") == (70, None)


def test_apply_matches_individual_puts() -> None:
    rng = random.Random(2)
    entries = [(rng.randbytes(3), 100 + i, None if i % 7 == 0 else rng.randbytes(5)) for i in range(500)]
    one, many = Memtable(1), Memtable(1)
    for key, seq, value in entries:
        one.put(key, seq, value)
    many.apply(entries)
    assert list(one.scan()) == list(many.scan())
    assert one.approximate_bytes == many.approximate_bytes
    assert (one.first_seq, one.last_seq) == (many.first_seq, many.last_seq) == (100, 599)


def test_apply_accounts_for_what_landed_when_the_input_fails() -> None:
    memtable = Memtable(1)

    def entries() -> Iterator[tuple[bytes, int, bytes | None]]:
        yield b"a", 1, b"xx"
        yield b"b", 2, None
        raise RuntimeError("decoder failed")

    with pytest.raises(RuntimeError, match="decoder failed"):
        memtable.apply(entries())
    assert len(memtable) == 2
    assert memtable.approximate_bytes == 2 * NODE_OVERHEAD_BYTES + 2 + 2
    assert (memtable.first_seq, memtable.last_seq) == (1, 2)


def test_scan_bounds_and_tombstones() -> None:
    memtable = Memtable(1)
    for i, key in enumerate([b"a", b"c", b"e", b"g"]):
        memtable.put(key, i, key * 2)
    memtable.delete(b"c", 10)
    assert list(memtable.scan()) == [(b"a", 0, b"aa"), (b"c", 10, None), (b"e", 2, b"ee"), (b"g", 3, b"gg")]
    assert [k for k, _, _ in memtable.scan(b"b", b"g")] == [b"c", b"e"]
    assert [k for k, _, _ in memtable.scan(b"c")] == [b"c", b"e", b"g"]
    assert [k for k, _, _ in memtable.scan(None, b"c")] == [b"a"]


def test_freeze_is_final_and_reads_still_work() -> None:
    memtable = Memtable(4)
    memtable.put(b"k", 1, b"v")
    memtable.freeze()
    memtable.freeze()  # idempotent
    assert memtable.frozen
    for write in (
        lambda: memtable.put(b"k", 2, b"w"),
        lambda: memtable.delete(b"k", 2),
        lambda: memtable.apply([(b"x", 3, b"y")]),
    ):
        with pytest.raises(MemtableFrozen, match="write to the frozen memtable of WAL 4"):
            write()
    assert memtable.get(b"k") == (1, b"v")
    assert list(memtable.scan()) == [(b"k", 1, b"v")]
    assert (memtable.approximate_bytes, memtable.last_seq, len(memtable)) == (NODE_OVERHEAD_BYTES + 2, 1, 1)
    # An empty iterable is still a write to a frozen memtable: the caller's bug, caught early.
    with pytest.raises(MemtableFrozen):
        memtable.apply([])


def test_put_batch_matches_individual_puts_with_consecutive_seqs() -> None:
    rng = random.Random(7)
    ops = [(rng.randbytes(2), None if i % 5 == 0 else rng.randbytes(4)) for i in range(300)]
    one, batch = Memtable(1), Memtable(1)
    for i, (key, value) in enumerate(ops):
        one.put(key, 1000 + i, value)
    batch.put_batch(1000, ops[:100])
    batch.put_batch(1100, ops[100:])
    batch.put_batch(5000, [])  # nothing written: the seq range does not move
    assert list(one.scan()) == list(batch.scan())
    assert one.approximate_bytes == batch.approximate_bytes
    assert (one.first_seq, one.last_seq) == (batch.first_seq, batch.last_seq) == (1000, 1299)
    batch.freeze()
    with pytest.raises(MemtableFrozen):
        batch.put_batch(2000, [(b"k", b"v")])


def test_put_batches_is_put_batch_of_each_in_order() -> None:
    rng = random.Random(9)
    batches = [(10 + 3 * i, [(rng.randbytes(1), rng.randbytes(3)) for _ in range(3)]) for i in range(50)]
    one, many = Memtable(1), Memtable(1)
    for first_seq, ops in batches:
        one.put_batch(first_seq, ops)
    many.put_batches([*batches, (500, [])])  # an empty batch moves nothing
    assert list(one.scan()) == list(many.scan())
    assert one.approximate_bytes == many.approximate_bytes
    assert (one.first_seq, one.last_seq) == (many.first_seq, many.last_seq) == (10, 159)
    many.freeze()
    with pytest.raises(MemtableFrozen):
        many.put_batches([(600, [(b"k", None)])])
