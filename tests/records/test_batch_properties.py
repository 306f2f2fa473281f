"""Property tests: random batches round-trip exactly through every available codec; baseOffset
rewrites keep the CRC and the records region; concatenations split back into their batches.

Deterministic: ``derandomize=True`` and no example database.
"""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentinel.records import (
    Compression,
    Record,
    RecordBatch,
    TimestampType,
    available_codecs,
    build_batch,
    iter_batches,
    split_batches,
)
from sentinel.records import batch_format as fmt

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1

SETTINGS = settings(
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

keys = st.one_of(st.none(), st.binary(max_size=40))
# Up to 300 bytes: one- and two-byte length varints.
values = st.one_of(st.none(), st.binary(max_size=300))
headers = st.lists(st.tuples(st.text(max_size=12), st.one_of(st.none(), st.binary(max_size=20))), max_size=3)
# Deltas: mostly the realistic small ones (one- and two-byte varints), sometimes far apart.
deltas = st.one_of(st.integers(-100, 10_000), st.integers(-(1 << 61), 1 << 61))


@st.composite
def record_lists(draw: st.DrawFn, max_size: int = 12) -> list[tuple[bytes | None, bytes | None, list, int]]:
    first = draw(st.one_of(st.integers(-(1 << 61), 1 << 61), st.integers(0, 2_000_000_000_000)))
    n = draw(st.integers(1, max_size))
    return [
        (draw(keys), draw(values), draw(headers), first if i == 0 else first + draw(deltas)) for i in range(n)
    ]


batch_options = st.fixed_dictionaries(
    {
        "base_offset": st.integers(0, INT64_MAX - 100),
        "compression": st.sampled_from(available_codecs()),
        "producer_id": st.integers(INT64_MIN, INT64_MAX),
        "producer_epoch": st.integers(-(1 << 15), (1 << 15) - 1),
        "base_sequence": st.integers(INT32_MIN, INT32_MAX),
        "partition_leader_epoch": st.integers(INT32_MIN, INT32_MAX),
        "timestamp_type": st.sampled_from(TimestampType),
    }
)


def expected_records(records: list, base_offset: int, timestamp_type: TimestampType) -> list[Record]:
    max_timestamp = max(ts for *_, ts in records)
    return [
        Record(
            base_offset + i,
            max_timestamp if timestamp_type is TimestampType.LOG_APPEND_TIME else ts,
            key,
            value,
            tuple(hdrs),
        )
        for i, (key, value, hdrs, ts) in enumerate(records)
    ]


@SETTINGS
@given(records=record_lists(), options=batch_options)
def test_random_batches_round_trip_exactly(records: list, options: dict[str, Any]) -> None:
    data = build_batch(records, **options)
    batch = RecordBatch.parse(data)
    assert batch.data == data
    assert batch.size_in_bytes == len(data) == struct.unpack_from(">i", data, 8)[0] + 12
    assert batch.base_offset == options["base_offset"]
    assert batch.compression is options["compression"]
    assert batch.timestamp_type is options["timestamp_type"]
    assert batch.producer_id == options["producer_id"]
    assert batch.producer_epoch == options["producer_epoch"]
    assert batch.base_sequence == options["base_sequence"]
    assert batch.partition_leader_epoch == options["partition_leader_epoch"]
    assert batch.record_count == len(records)
    assert batch.last_offset_delta == len(records) - 1
    assert batch.next_offset == options["base_offset"] + len(records)
    assert batch.base_timestamp == records[0][3]
    assert batch.max_timestamp == max(ts for *_, ts in records)
    assert not batch.is_transactional
    assert not batch.is_control_batch
    decoded = list(batch.records())
    assert decoded == expected_records(records, options["base_offset"], options["timestamp_type"])
    assert RecordBatch.parse(data, verify_crc=False).decode_records() == decoded
    if options["timestamp_type"] is TimestampType.CREATE_TIME:
        # Encoding is deterministic: the decoded records rebuild the very same bytes.
        rebuilt = build_batch([(r.key, r.value, r.headers, r.timestamp) for r in decoded], **options)
        assert rebuilt == data


@SETTINGS
@given(records=record_lists(), options=batch_options, new_base=st.integers(0, INT64_MAX - 100))
def test_with_base_offset_round_trips(records: list, options: dict[str, Any], new_base: int) -> None:
    data = build_batch(records, **options)
    batch = RecordBatch.parse(data)
    moved_data = batch.with_base_offset(new_base)
    # Only baseOffset changed: the CRC and the records region are the original bytes.
    assert moved_data[8:] == data[8:]
    assert moved_data[fmt.RECORDS_OFFSET :] == data[fmt.RECORDS_OFFSET :]
    moved = RecordBatch.parse(moved_data)  # verifies the unchanged CRC
    assert moved.crc == batch.crc
    assert moved.base_offset == new_base
    assert moved.decode_records() == expected_records(records, new_base, options["timestamp_type"])
    assert moved.with_base_offset(options["base_offset"]) == data
    assert RecordBatch.parse(moved.with_partition_leader_epoch(options["partition_leader_epoch"])) == moved


@SETTINGS
@given(
    batches=st.lists(
        st.tuples(record_lists(max_size=4), st.sampled_from(available_codecs())), min_size=1, max_size=6
    ),
    kind=st.sampled_from([bytes, bytearray, memoryview]),
)
def test_iter_batches_splits_a_concatenation(batches: list[tuple[list, Compression]], kind: type) -> None:
    parts = []
    offset = 0
    for records, codec in batches:
        parts.append(build_batch(records, base_offset=offset, compression=codec))
        offset += len(records)
    joined = kind(b"".join(parts))
    found = list(iter_batches(joined))
    assert [b.data for b in found] == parts
    assert split_batches(joined) == found
    # Offsets run on from batch to batch.
    assert [r.offset for b in found for r in b.records()] == list(range(offset))
    assert [b.next_offset for b in found][-1] == offset
