"""RecordBatch.decode_tagged: records decoded straight into a 7-field tuple type (the
client's ConsumerRecord), equal field for field to decode_records, validated the same way."""

from __future__ import annotations

import pytest

from sentinel.client.types import ConsumerRecord
from sentinel.errors import InvalidRecordBatch
from sentinel.records import Compression, Record, RecordBatch, TimestampType, build_batch

T0 = 1_700_000_000_000


def sample(**options: object) -> RecordBatch:
    records = [
        (None, b"v0", (), T0),
        (b"k1", None, (("h", b"x"), ("n", None)), T0 + 5),
        (b"", b"v2" * 300, (), T0 - 3),
    ]
    return RecordBatch(build_batch(records, base_offset=40, **options))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "options",
    [{}, {"compression": Compression.GZIP}, {"timestamp_type": TimestampType.LOG_APPEND_TIME}],
    ids=["plain", "gzip", "log-append-time"],
)
def test_tagged_records_match_decoded_records(options: dict[str, object]) -> None:
    batch = sample(**options)
    tagged = batch.decode_tagged(ConsumerRecord, "orders", 3)
    plain = batch.decode_records()
    assert all(type(r) is ConsumerRecord for r in tagged)
    assert [ConsumerRecord("orders", 3, *r) for r in plain] == tagged
    assert [r.offset for r in tagged] == [40, 41, 42]
    assert tagged[1].headers == (("h", b"x"), ("n", None))


def test_records_are_named_tuples() -> None:
    record = sample().decode_records()[0]
    assert type(record) is Record
    assert record == Record(40, T0, None, b"v0")  # headers default to ()
    assert (record.offset, record.timestamp, record.key, record.value, record.headers) == tuple(record)


def test_tagged_decoding_validates_like_decode_records() -> None:
    data = bytearray(sample().data)
    data[-1] ^= 0xFF  # the last record's last byte: only the records section changes
    batch = RecordBatch(bytes(data), verify_crc=False)
    with pytest.raises(InvalidRecordBatch) as plain:
        batch.decode_records()
    with pytest.raises(InvalidRecordBatch) as tagged:
        batch.decode_tagged(ConsumerRecord, "t", 0)
    assert str(tagged.value) == str(plain.value)


@pytest.mark.parametrize("step", [1, 2, 5])
def test_a_cursor_decodes_the_records_of_decode_tagged_a_few_at_a_time(step: int) -> None:
    for options in ({}, {"compression": Compression.GZIP}, {"timestamp_type": TimestampType.LOG_APPEND_TIME}):
        batch = sample(**options)
        cursor = batch.tagged_cursor(ConsumerRecord, "orders", 3)
        assert (cursor.remaining, cursor.next_offset) == (3, 40)
        pieces: list[ConsumerRecord] = []
        while cursor.remaining:
            piece = cursor.take(step)
            assert 0 < len(piece) <= step
            pieces += piece
            assert cursor.next_offset == 40 + len(pieces)
        assert pieces == batch.decode_tagged(ConsumerRecord, "orders", 3)
        assert cursor.take(step) == []


def test_a_cursor_checks_the_whole_batch_before_building_any_record() -> None:
    data = bytearray(sample().data)
    data[-1] ^= 0xFF  # the last record is damaged; the first two are fine
    batch = RecordBatch(bytes(data), verify_crc=False)
    with pytest.raises(InvalidRecordBatch) as cursor:
        batch.tagged_cursor(ConsumerRecord, "t", 0)
    with pytest.raises(InvalidRecordBatch) as whole:
        batch.decode_tagged(ConsumerRecord, "t", 0)
    assert str(cursor.value) == str(whole.value)
