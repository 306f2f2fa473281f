"""The producer's pure record accumulator: wake-ups, drains, batch splits, memory account."""

from __future__ import annotations

import pytest

from sentinel.client.accumulator import (
    BATCH_OVERHEAD,
    RECORD_OVERHEAD,
    RecordAccumulator,
    WholeBatch,
    estimate_size,
)
from sentinel.client.types import TopicPartition

TP = TopicPartition("t", 0)
Acc = RecordAccumulator[int]


def record(i: int, size: int = 10) -> tuple[bytes | None, bytes | None, tuple[()], int]:
    return (None, b"%0*d" % (size, i), (), i)


def fill(acc: RecordAccumulator[int], count: int, size: int = 10) -> None:
    for i in range(count):
        estimate = estimate_size(None, record(i, size)[1], ())
        acc.reserve(estimate)
        acc.append(TP, record(i, size), i, estimate, now=float(i))


def test_estimate_counts_key_value_headers_and_overhead() -> None:
    assert estimate_size(None, None, ()) == RECORD_OVERHEAD
    headers = [("h", b"12"), ("n", None)]
    assert estimate_size(b"kk", b"vvv", headers) == RECORD_OVERHEAD + 5 + (2 + 1 + 2) + (2 + 1)


def test_append_asks_for_a_wakeup_on_the_first_record_and_when_full() -> None:
    acc = Acc(batch_size=60, max_buffer_bytes=10_000, max_request_bytes=10_000)
    flags = [acc.append(TP, record(i), i, 26, now=5.0 + i) for i in range(4)]
    assert flags == [True, False, True, False]  # first record; 52 -> 78 crosses 60
    assert acc.queue(TP).first_at == 5.0
    assert acc.is_full(TP)


def test_drain_splits_into_batches_of_at_most_batch_size_in_order() -> None:
    acc = Acc(batch_size=60, max_buffer_bytes=10_000, max_request_bytes=10_000)
    fill(acc, 7)  # 26 bytes each: two per batch
    drained = acc.drain(TP)
    assert drained is not None
    assert [len(b) for b in drained.batches] == [2, 2, 2, 1]
    assert [r[3] for b in drained.batches for r in b] == list(range(7))  # type: ignore[index]
    assert drained.completions == list(range(7))
    assert drained.size == 7 * 26
    assert acc.drain(TP) is None
    assert acc.buffered == 7 * 26  # released only when the request is answered
    acc.release(drained.size)
    assert acc.buffered == 0


def test_drain_stops_at_the_request_limit_but_always_takes_one_record() -> None:
    limit = 3 * 26 + BATCH_OVERHEAD
    acc = Acc(batch_size=1000, max_buffer_bytes=10_000, max_request_bytes=limit)
    fill(acc, 5)
    first = acc.drain(TP)
    assert first is not None and first.completions == [0, 1, 2]
    second = acc.drain(TP)
    assert second is not None and second.completions == [3, 4]

    tiny = Acc(batch_size=10, max_buffer_bytes=10_000, max_request_bytes=10)
    fill(tiny, 2, size=100)  # each record alone is over both limits
    drained = tiny.drain(TP)
    assert drained is not None and drained.completions == [0] and len(drained.batches) == 1


def test_memory_account_and_take_all() -> None:
    acc = Acc(batch_size=100, max_buffer_bytes=60, max_request_bytes=1000)
    assert acc.can_reserve(60) and not acc.can_reserve(61)
    fill(acc, 2)
    assert acc.buffered == 52 and not acc.can_reserve(26) and acc.can_reserve(8)
    assert acc.pending() == [TP]
    assert acc.take_all(TP) == [0, 1]
    assert acc.buffered == 0 and acc.pending() == []
    with pytest.raises(AssertionError, match="released more than was reserved"):
        acc.release(1)


def test_drain_takes_at_most_max_batches_but_always_one_record() -> None:
    acc = Acc(batch_size=60, max_buffer_bytes=10_000, max_request_bytes=10_000)
    fill(acc, 4)  # two per batch: two batches fit a budget of two
    first = acc.drain(TP, max_batches=2)
    assert first is not None and [len(b) for b in first.batches] == [2, 2]
    assert first.batch_record_counts() == [2, 2]
    fill(acc, 1, size=100)  # larger than a batch: alone, whatever the budget
    assert (one := acc.drain(TP, max_batches=1)) is not None and one.completions == [0]


def test_a_backlog_beyond_the_batch_budget_goes_in_fewer_larger_batches() -> None:
    acc = Acc(batch_size=60, max_buffer_bytes=10_000, max_request_bytes=1000)
    fill(acc, 12)  # 26 bytes each: six batches of two at batch_size
    drained = acc.drain(TP, max_batches=2)
    # Two batches still carry the whole backlog (312 bytes, under the request limit).
    assert drained is not None and [len(b) for b in drained.batches] == [6, 6]
    assert drained.completions == list(range(12))
    fill(acc, 6)
    rest = acc.drain(TP)  # no budget: batch_size again
    assert rest is not None and [len(b) for b in rest.batches] == [2, 2, 2]


def test_a_whole_batch_is_a_batch_of_its_own_between_records() -> None:
    acc = Acc(batch_size=1000, max_buffer_bytes=10_000, max_request_bytes=10_000)
    queue = acc.queue(TP)
    queue.add(record(0), 0, 26, 0.0, acc.batch_size)
    queue.add_whole(WholeBatch(b"encoded", 150, 7), 1, 100, 0.0, acc.batch_size)
    queue.add(record(2), 2, 26, 0.0, acc.batch_size)
    queue.add(record(3), 3, 26, 0.0, acc.batch_size)
    assert queue.wholes == 1
    drained = acc.drain(TP, max_batches=2)  # the record, then the whole batch
    assert drained is not None and drained.completions == [0, 1] and drained.wholes == 1
    assert drained.batch_record_counts() == [1, 150] and queue.wholes == 0
    tail = acc.drain(TP)
    assert tail is not None and tail.batch_record_counts() == [2] and tail.wholes == 0
