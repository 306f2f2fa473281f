"""The idempotent-produce table: duplicates answered with the original's offsets, gaps and
steps back refused, epochs fenced (Kafka's ProducerStateEntry rules, RAFT-NOTES.md §3)."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sentinel.broker.producer_state import (
    MAX_SEQUENCE,
    NO_PRODUCER_ID,
    RETAINED_BATCHES,
    BatchMetadata,
    OutOfOrderSequence,
    ProducerFenced,
    ProducerStateTable,
    check_request,
    next_sequence,
)
from sentinel.errors import InvalidArgument


def batch(first: int, count: int, base: int) -> BatchMetadata:
    return BatchMetadata(first, (first + count - 1) % (MAX_SEQUENCE + 1), base, base + count - 1, 1000)


def test_a_retried_batch_is_a_duplicate_answered_with_its_original_offsets() -> None:
    table = ProducerStateTable()
    assert table.check(7, 0, 0, 9) is None
    table.record(7, 0, batch(0, 10, 100))
    assert table.check(7, 0, 10, 14) is None
    table.record(7, 0, batch(10, 5, 110))
    assert table.check(7, 0, 0, 9) == batch(0, 10, 100)
    assert table.check(7, 0, 10, 14) == batch(10, 5, 110)


def test_only_the_last_retained_batches_are_remembered() -> None:
    table = ProducerStateTable()
    for i in range(RETAINED_BATCHES + 1):
        table.record(1, 0, batch(i, 1, i))
    assert table.check(1, 0, RETAINED_BATCHES, RETAINED_BATCHES) == batch(
        RETAINED_BATCHES, 1, RETAINED_BATCHES
    )
    assert table.check(1, 0, 1, 1) == batch(1, 1, 1)
    # The oldest fell out of the window: a retry of it is no longer recognised, and is out of order.
    assert RETAINED_BATCHES == 64
    with pytest.raises(OutOfOrderSequence, match=f"sent sequence 0, expected {RETAINED_BATCHES + 1}$"):
        table.check(1, 0, 0, 0)


def test_a_gap_or_a_step_back_is_out_of_order_never_a_second_copy() -> None:
    table = ProducerStateTable()
    table.record(3, 2, batch(0, 10, 0))
    with pytest.raises(OutOfOrderSequence, match="producer 3 epoch 2 sent sequence 11, expected 10"):
        table.check(3, 2, 11, 15)
    with pytest.raises(OutOfOrderSequence, match="expected 10"):
        table.check(3, 2, 5, 9)  # overlaps the retained batch without being equal to it


def test_epochs_fence_older_producers_and_a_new_epoch_starts_at_zero() -> None:
    table = ProducerStateTable()
    table.record(3, 1, batch(0, 5, 0))
    with pytest.raises(ProducerFenced, match="epoch 0 is fenced by epoch 1"):
        table.check(3, 0, 5, 9)
    with pytest.raises(OutOfOrderSequence, match="a new epoch starts at 0"):
        table.check(3, 2, 5, 9)
    assert table.check(3, 2, 0, 4) is None
    table.record(3, 2, batch(0, 5, 5))
    assert table.last_sequence(3) == (2, 4)
    table.record(3, 1, batch(5, 5, 10))  # an old epoch replayed from the log changes nothing
    assert table.last_sequence(3) == (2, 4)


def test_an_unknown_producer_or_no_producer_id_may_start_anywhere() -> None:
    table = ProducerStateTable()
    assert table.check(9, 0, 12345, 12349) is None
    assert table.check(NO_PRODUCER_ID, -1, -1, -1) is None
    table.record(NO_PRODUCER_ID, -1, batch(0, 1, 0))
    assert len(table) == 0


def test_sequences_wrap_at_int32_max() -> None:
    table = ProducerStateTable()
    table.record(1, 0, batch(MAX_SEQUENCE - 1, 2, 0))
    assert next_sequence(MAX_SEQUENCE, 1) == 0
    assert table.check(1, 0, 0, 4) is None
    with pytest.raises(OutOfOrderSequence):
        table.check(1, 0, 1, 4)


@given(
    st.dictionaries(
        st.integers(0, 2**62),
        st.tuples(st.integers(0, 32767), st.lists(st.integers(0, MAX_SEQUENCE - 100), max_size=7)),
        max_size=5,
    )
)
def test_the_table_round_trips_through_its_snapshot_encoding(producers: dict) -> None:
    table = ProducerStateTable()
    for pid, (epoch, firsts) in producers.items():
        for i, first in enumerate(firsts):
            table.record(pid, epoch, batch(first, 3, i * 3))
    again = ProducerStateTable.decode(table.encode())
    assert again.encode() == table.encode()
    for pid in producers:
        assert again.last_sequence(pid) == table.last_sequence(pid)


def test_a_damaged_snapshot_is_refused() -> None:
    table = ProducerStateTable()
    table.record(1, 0, batch(0, 3, 0))
    data = table.encode()
    for cut in range(len(data)):
        with pytest.raises(ValueError):
            ProducerStateTable.decode(data[:cut])
    with pytest.raises(ValueError, match="unknown producer state version"):
        ProducerStateTable.decode(b"\x09" + data[1:])
    with pytest.raises(ValueError, match="bytes after the last producer"):
        ProducerStateTable.decode(data + b"\x00")


def test_a_request_with_more_batches_of_one_producer_than_are_remembered_is_refused() -> None:
    @attrs.frozen
    class Header:
        producer_id: int
        producer_epoch: int
        base_sequence: int
        last_offset_delta: int = 0

    table = ProducerStateTable()
    most = [Header(5, 0, i) for i in range(RETAINED_BATCHES)]
    assert check_request(table, most) is None  # a retry of all of them could be recognised
    # Other producers' and unidentified batches do not count towards producer 5's.
    others = [Header(6, 0, i) for i in range(3)] + [Header(NO_PRODUCER_ID, -1, -1)] * 3
    assert check_request(table, most + others) is None
    with pytest.raises(InvalidArgument, match=f"carries {RETAINED_BATCHES + 1} batches of one producer id"):
        check_request(table, [*most, Header(5, 0, RETAINED_BATCHES)])
