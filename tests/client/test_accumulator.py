"""The producer's pure record accumulator: wake-ups, drains, batch splits, memory account."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sentinel.client.accumulator import (
    BATCH_OVERHEAD,
    RECORD_OVERHEAD,
    Drained,
    RecordAccumulator,
    WholeBatch,
    estimate_size,
)
from sentinel.client.types import TopicPartition

# Each test runs once per build of sentinel.client.appending (see conftest.py).
pytestmark = pytest.mark.usefixtures("appending_build")

TP = TopicPartition("t", 0)
Acc = RecordAccumulator[int]


def record(i: int, size: int = 10) -> tuple[bytes | None, bytes | None, tuple[()], int]:
    return (None, b"%0*d" % (size, i), (), i)


def completions(drained: Drained[int] | None) -> list[int]:
    """The completions of a drain's pieces (each test record has its own)."""
    assert drained is not None
    return [completion for completion, _, _, _ in drained.pieces]


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
    assert completions(drained) == list(range(7))
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
    assert first is not None and completions(first) == [0, 1, 2]
    second = acc.drain(TP)
    assert second is not None and completions(second) == [3, 4]

    tiny = Acc(batch_size=10, max_buffer_bytes=10_000, max_request_bytes=10)
    fill(tiny, 2, size=100)  # each record alone is over both limits
    drained = tiny.drain(TP)
    assert drained is not None and completions(drained) == [0] and len(drained.batches) == 1


def test_memory_account_and_take_all() -> None:
    acc = Acc(batch_size=100, max_buffer_bytes=60, max_request_bytes=1000)
    assert acc.can_reserve(60) and not acc.can_reserve(61)
    fill(acc, 2)
    assert acc.buffered == 52 and not acc.can_reserve(26) and acc.can_reserve(8)
    assert acc.pending() == [TP]
    assert [piece[0] for piece in acc.take_all(TP)] == [0, 1]
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
    assert (one := acc.drain(TP, max_batches=1)) is not None and completions(one) == [0]


def test_batch_size_bounds_every_batch_however_large_the_backlog() -> None:
    # Kafka's batch.size: a backlog beyond the batch budget is not packed into larger batches.
    acc = Acc(batch_size=60, max_buffer_bytes=10_000, max_request_bytes=1000)
    fill(acc, 12)  # 26 bytes each: six batches of two at batch_size
    drained = acc.drain(TP, max_batches=2)
    assert drained is not None and [len(b) for b in drained.batches] == [2, 2]
    assert completions(drained) == list(range(4))
    rest = acc.drain(TP)
    assert rest is not None and [len(b) for b in rest.batches] == [2, 2, 2, 2]


def test_a_request_carries_several_batches_up_to_the_request_limit() -> None:
    # 1 MB batch_size, 16 KiB worth of requests: the request limit cuts, not the batch size.
    limit = 2 * BATCH_OVERHEAD + 10 * 26
    acc = Acc(batch_size=5 * 26, max_buffer_bytes=100_000, max_request_bytes=limit)
    fill(acc, 30)
    drained = acc.drain(TP)
    assert drained is not None and [len(b) for b in drained.batches] == [5, 5]
    assert sum(len(b) for b in drained.batches) * 26 + len(drained.batches) * BATCH_OVERHEAD <= limit


def test_full_only_leaves_the_open_last_batch_to_fill_up() -> None:
    acc = Acc(batch_size=60, max_buffer_bytes=10_000, max_request_bytes=10_000)
    fill(acc, 5)  # two full batches and one of a single record
    drained = acc.drain(TP, full_only=True)
    assert drained is not None and [len(b) for b in drained.batches] == [2, 2]
    assert len(acc.queue(TP)) == 1
    alone = acc.drain(TP, full_only=True)  # the only batch goes anyway
    assert alone is not None and completions(alone) == [4]


def test_records_of_one_completion_form_one_piece_split_by_drains() -> None:
    acc = Acc(batch_size=1000, max_buffer_bytes=10_000, max_request_bytes=3 * 26 + BATCH_OVERHEAD)
    for i in range(5):
        acc.reserve(26)
        acc.append(TP, record(i), 100, 26, now=0.0)  # one completion: one piece
    first = acc.drain(TP)
    assert first is not None and first.pieces == [(100, 0, 3, 3)]
    acc.append(TP, record(5), 100, 26, now=0.0)  # the drain closed the piece: a new one
    second = acc.drain(TP)
    assert second is not None and second.pieces == [(100, 3, 2, 2), (100, 0, 1, 1)]


def test_a_whole_batch_is_a_batch_of_its_own_between_records() -> None:
    acc = Acc(batch_size=1000, max_buffer_bytes=10_000, max_request_bytes=10_000)
    queue = acc.queue(TP)
    acc.append(TP, record(0), 0, 26, 0.0)
    queue.add_whole(WholeBatch(b"encoded", 150, 7), 1, 100, 0.0, acc.batch_size)
    acc.append(TP, record(2), 2, 26, 0.0)
    acc.append(TP, record(3), 2, 26, 0.0)  # joins the piece of record 2
    assert queue.wholes == 1
    drained = acc.drain(TP, max_batches=2)  # the record, then the whole batch
    assert drained is not None and completions(drained) == [0, 1] and drained.wholes == 1
    assert drained.pieces[1] == (1, 0, 1, 150)  # one entry of 150 records
    assert drained.batch_record_counts() == [1, 150] and queue.wholes == 0
    tail = acc.drain(TP)
    assert tail is not None and tail.batch_record_counts() == [2] and tail.wholes == 0
    assert tail.pieces == [(2, 0, 2, 2)]


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 400), min_size=1, max_size=60),
    batch_size=st.integers(1, 1000),
    limit=st.integers(1, 3000),
    max_batches=st.one_of(st.none(), st.integers(1, 6)),
    full_only=st.booleans(),
)
def test_bisected_drains_cut_where_the_entry_by_entry_reference_cuts(
    sizes: list[int], batch_size: int, limit: int, max_batches: int | None, full_only: bool
) -> None:
    # Records alone are cut by bisection over the running byte counts; queues holding
    # whole batches entry by entry. Both must agree wherever both apply.
    acc = Acc(batch_size=batch_size, max_buffer_bytes=1 << 30, max_request_bytes=limit)
    acc.queue(TP).origin = 12_345  # bytes queued before: the counts are running totals
    acc.queue(TP).ends = []
    for i, size in enumerate(sizes):
        acc.append(TP, record(i), 0, size, now=0.0)
    queue = acc.queue(TP)
    assert acc._cut_records(queue, max_batches, full_only) == acc._cut_entries(queue, max_batches, full_only)


def test_a_queue_counts_every_entry_it_ever_held_across_drains_and_take_all() -> None:
    """``appended`` is what flush waits for: records and whole batches queued ever, whatever
    left the queue since (the producer keeps no count of its own per record)."""
    acc = Acc(batch_size=60, max_buffer_bytes=10_000, max_request_bytes=10_000)
    queue = acc.queue(TP)
    fill(acc, 5)
    assert queue.appended == 5
    drained = acc.drain(TP, max_batches=1)
    assert drained is not None and drained.entry_count == 2
    assert queue.appended == 5 and len(queue) == 3
    acc.reserve(100)
    queue.add_whole(WholeBatch(b"encoded", 150, 7), 99, 100, 0.0, acc.batch_size)
    assert queue.appended == 6
    acc.take_all(TP)
    assert queue.appended == 6 and len(queue) == 0


def test_a_record_joins_the_open_piece_at_its_end_and_a_partial_drain_keeps_the_rest() -> None:
    acc = Acc(batch_size=60, max_buffer_bytes=10_000, max_request_bytes=10_000)
    for i in range(5):
        acc.reserve(26)
        acc.append(TP, record(i), 7, 26, now=0.0)  # one completion: one piece
    piece = acc.queue(TP).open
    assert piece is not None and (piece.start, piece.end) == (0, 5)
    drained = acc.drain(TP, max_batches=1)
    assert drained is not None and drained.pieces == [(7, 0, 2, 2)]
    # The drain took part of the open piece and closed it; the rest is [2, 5) of it.
    assert acc.queue(TP).open is None
    rest = acc.drain(TP)
    assert rest is not None and rest.pieces == [(7, 2, 3, 3)]
