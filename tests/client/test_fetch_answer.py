"""FetchAnswer, the consumer's parser of ConsumeResponse, against the generated class: the
same fields for every message the generated class writes, and errors for damaged ones."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sentinel.client.fetching import FetchAnswer
from sentinel.generated.sentinel import v1 as pb

INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(
    topic=st.text(max_size=20),
    partition=INT32,
    record_batches=st.binary(max_size=300),
    high_watermark=INT64,
    log_start_offset=INT64,
    next_offset=INT64,
)
def test_every_field_reads_as_the_generated_class_wrote_it(
    topic: str,
    partition: int,
    record_batches: bytes,
    high_watermark: int,
    log_start_offset: int,
    next_offset: int,
) -> None:
    message = pb.ConsumeResponse(
        topic=topic,
        partition=partition,
        record_batches=record_batches,
        high_watermark=high_watermark,
        log_start_offset=log_start_offset,
        next_offset=next_offset,
    )
    answer = FetchAnswer.FromString(bytes(message))
    assert (
        answer.topic,
        answer.partition,
        bytes(answer.record_batches),
        answer.high_watermark,
        answer.log_start_offset,
        answer.next_offset,
    ) == (topic, partition, record_batches, high_watermark, log_start_offset, next_offset)
    assert type(answer.record_batches) is memoryview  # a view of the message, not a copy


def test_an_empty_message_is_every_field_at_its_default() -> None:
    answer = FetchAnswer.FromString(b"")
    assert (answer.topic, answer.partition, bytes(answer.record_batches), answer.next_offset) == (
        "",
        0,
        b"",
        0,
    )


def test_unknown_fields_are_skipped() -> None:
    known = bytes(pb.ConsumeResponse(topic="t", next_offset=7))
    # field 9 varint 1, field 10 fixed64, field 11 length-delimited "xy", field 12 fixed32
    unknown = b"\x48\x01" + b"\x51" + bytes(8) + b"\x5a\x02xy" + b"\x65" + bytes(4)
    answer = FetchAnswer.FromString(unknown + known)
    assert (answer.topic, answer.next_offset) == ("t", 7)


@pytest.mark.parametrize(
    "data",
    [
        b"\x1a\x05abc",  # record_batches of 5 bytes, 3 present
        b"\x30",  # next_offset without its varint
        b"\x30" + b"\xff" * 11,  # an over-long varint
        b"\x0b",  # wire type 3 (groups): not in proto3
        b"\x20\x03abc",  # high_watermark sent length-delimited
    ],
    ids=["truncated-field", "truncated-varint", "long-varint", "group", "wrong-wire-type"],
)
def test_a_damaged_message_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        FetchAnswer.FromString(data)
