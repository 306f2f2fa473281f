"""RecordBatch v2 codec: a known-answer batch built from the spec, build/parse/iterate, field
rewrites outside the CRC, many-batch splitting, and build-side argument errors.

The known-answer batch is assembled field by field with ``struct``, a local varint encoder
and a local bitwise CRC-32C, so it checks the codec against the Kafka spec rather than
against itself.
"""

from __future__ import annotations

import array
import struct

import pytest

from sentinel.errors import InvalidArgument, InvalidRecordBatch
from sentinel.records import (
    DEFAULT_MAX_BATCH_BYTES,
    Compression,
    Record,
    RecordBatch,
    RecordInput,
    RecordTuple,
    TimestampType,
    build_batch,
    iter_batches,
    split_batches,
)
from sentinel.records import batch_format as fmt

INT64_MAX = (1 << 63) - 1
INT64_MIN = -(1 << 63)
INT32_MAX = (1 << 31) - 1
T0 = 1_700_000_000_000  # a realistic millisecond timestamp

# --------------------------------------------------------------------------------------------
# An independent encoder, straight from the Kafka protocol docs (RecordBatch v2).


def spec_crc32c(data: bytes) -> int:
    """Bitwise CRC-32C (Castagnoli, reflected polynomial 0x82F63B78): slow and obviously right."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def spec_varint(value: int) -> bytes:
    """Zig-zag then unsigned LEB128, as Kafka's varint/varlong."""
    raw = ((value << 1) ^ (value >> 63)) & 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while raw >= 0x80:
        out.append((raw & 0x7F) | 0x80)
        raw >>= 7
    out.append(raw)
    return bytes(out)


def spec_record(
    offset_delta: int,
    timestamp_delta: int,
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, bytes | None]],
) -> bytes:
    body = bytearray()
    body += struct.pack(">b", 0)  # attributes: int8, unused
    body += spec_varint(timestamp_delta)
    body += spec_varint(offset_delta)
    body += spec_varint(-1) if key is None else spec_varint(len(key)) + key
    body += spec_varint(-1) if value is None else spec_varint(len(value)) + value
    body += spec_varint(len(headers))
    for name, header_value in headers:
        raw_name = name.encode("utf-8")
        body += spec_varint(len(raw_name)) + raw_name
        body += spec_varint(-1) if header_value is None else spec_varint(len(header_value)) + header_value
    return spec_varint(len(body)) + bytes(body)


def spec_batch(
    records_section: bytes,
    *,
    base_offset: int,
    partition_leader_epoch: int,
    attributes: int,
    last_offset_delta: int,
    base_timestamp: int,
    max_timestamp: int,
    producer_id: int,
    producer_epoch: int,
    base_sequence: int,
    record_count: int,
) -> bytes:
    covered = (
        struct.pack(">h", attributes)
        + struct.pack(">i", last_offset_delta)
        + struct.pack(">q", base_timestamp)
        + struct.pack(">q", max_timestamp)
        + struct.pack(">q", producer_id)
        + struct.pack(">h", producer_epoch)
        + struct.pack(">i", base_sequence)
        + struct.pack(">i", record_count)
        + records_section
    )
    # batchLength counts everything after itself: epoch (4) + magic (1) + crc (4) + covered.
    batch_length = 4 + 1 + 4 + len(covered)
    return (
        struct.pack(">q", base_offset)
        + struct.pack(">i", batch_length)
        + struct.pack(">i", partition_leader_epoch)
        + struct.pack(">b", 2)  # magic
        + struct.pack(">I", spec_crc32c(covered))
        + covered
    )


def test_the_spec_helpers_match_published_values() -> None:
    # The CRC-32C check value of RFC 3720 / the Castagnoli catalogue.
    assert spec_crc32c(b"123456789") == 0xE3069283
    assert spec_varint(0) == b"\x00"
    assert spec_varint(-1) == b"\x01"
    assert spec_varint(1) == b"\x02"
    assert spec_varint(63) == b"\x7e"
    assert spec_varint(-64) == b"\x7f"
    assert spec_varint(64) == b"\x80\x01"
    assert spec_varint(300) == b"\xd8\x04"
    assert spec_varint(INT64_MIN) == b"\xff" * 9 + b"\x01"


KNOWN_RECORDS: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]], int]] = [
    (b"k0", b"hello", [("h", b"x")], T0),
    (None, b"", [("trace-id", None), ("h\u00e9", b"\x00\xff")], T0 - 5),  # negative delta, UTF-8 key
    (b"", None, [], T0 + 300),  # two-byte timestamp delta
    (b"big", bytes(range(256)) * 20, [], T0 + 5000),  # 5120-byte value: two-byte length
]


def known_answer_batch() -> bytes:
    section = b"".join(
        spec_record(i, ts - T0, key, value, headers)
        for i, (key, value, headers, ts) in enumerate(KNOWN_RECORDS)
    )
    return spec_batch(
        section,
        base_offset=42,
        partition_leader_epoch=7,
        attributes=0,
        last_offset_delta=len(KNOWN_RECORDS) - 1,
        base_timestamp=T0,
        max_timestamp=T0 + 5000,
        producer_id=1234,
        producer_epoch=3,
        base_sequence=10,
        record_count=len(KNOWN_RECORDS),
    )


def test_known_answer_batch_parses_to_the_spec_fields() -> None:
    data = known_answer_batch()
    batch = RecordBatch.parse(data)
    assert batch.data == data
    assert batch.size_in_bytes == len(data)
    assert batch.base_offset == 42
    assert batch.partition_leader_epoch == 7
    assert batch.crc == struct.unpack_from(">I", data, 17)[0]
    assert batch.attributes == 0
    assert batch.compression is Compression.NONE
    assert batch.timestamp_type is TimestampType.CREATE_TIME
    assert not batch.is_transactional
    assert not batch.is_control_batch
    assert batch.last_offset_delta == 3
    assert batch.last_offset == 45
    assert batch.next_offset == 46
    assert batch.base_timestamp == T0
    assert batch.max_timestamp == T0 + 5000
    assert batch.producer_id == 1234
    assert batch.producer_epoch == 3
    assert batch.base_sequence == 10
    assert batch.record_count == 4
    assert list(batch.records()) == [
        Record(42, T0, b"k0", b"hello", (("h", b"x"),)),
        Record(43, T0 - 5, None, b"", (("trace-id", None), ("h\u00e9", b"\x00\xff"))),
        Record(44, T0 + 300, b"", None, ()),
        Record(45, T0 + 5000, b"big", bytes(range(256)) * 20, ()),
    ]


def test_known_answer_batch_is_what_build_batch_writes() -> None:
    built = build_batch(
        KNOWN_RECORDS,
        base_offset=42,
        partition_leader_epoch=7,
        producer_id=1234,
        producer_epoch=3,
        base_sequence=10,
    )
    assert built == known_answer_batch()


def test_known_answer_minimal_batch_literal() -> None:
    # One record, key null, value b"v", timestamp 0, every optional field at its default:
    # the whole batch written out byte by byte.
    record = bytes([0x0E, 0x00, 0x00, 0x00, 0x01, 0x02, ord("v"), 0x00])  # length 7 (zig-zag 14)
    covered = (
        bytes.fromhex(
            "0000"  # attributes
            "00000000"  # lastOffsetDelta
            "0000000000000000"  # baseTimestamp
            "0000000000000000"  # maxTimestamp
            "ffffffffffffffff"  # producerId -1
            "ffff"  # producerEpoch -1
            "ffffffff"  # baseSequence -1
            "00000001"  # recordCount
        )
        + record
    )
    expected = (
        bytes.fromhex("0000000000000000")  # baseOffset
        + (9 + len(covered)).to_bytes(4, "big")  # batchLength
        + bytes.fromhex("ffffffff")  # partitionLeaderEpoch -1
        + b"\x02"  # magic
        + spec_crc32c(covered).to_bytes(4, "big")
        + covered
    )
    assert len(expected) == 69
    assert build_batch([(None, b"v", [], 0)]) == expected
    assert list(RecordBatch.parse(expected).records()) == [Record(0, 0, None, b"v", ())]


def test_format_constants_match_the_spec_layout() -> None:
    assert fmt.BATCH_HEADER_SIZE == 61
    assert fmt.LOG_OVERHEAD == 12
    assert fmt.MIN_BATCH_LENGTH == 49
    assert fmt.CRC_START == 21
    assert fmt.HEADER.size == 61


# --------------------------------------------------------------------------------------------
# Build, parse, iterate


def test_records_accept_record_input_and_plain_tuples() -> None:
    data = build_batch([RecordInput(b"k", b"v", [("a", b"1")], T0), (None, None, (), T0 + 1)])
    assert RecordBatch.parse(data).decode_records() == [
        Record(0, T0, b"k", b"v", (("a", b"1"),)),
        Record(1, T0 + 1, None, None, ()),
    ]


def test_bytes_like_keys_values_and_header_values_are_copied_as_bytes() -> None:
    key = bytearray(b"key")
    data = build_batch([(key, memoryview(b"value"), [("h", bytearray(b"hv"))], T0)])  # type: ignore[list-item]
    key[0] = ord("X")  # the batch owns its bytes
    assert list(RecordBatch.parse(data).records()) == [Record(0, T0, b"key", b"value", (("h", b"hv"),))]


def test_records_decodes_everything_before_yielding() -> None:
    data = bytearray(build_batch([(b"a", b"1", [], T0), (b"b", b"2", [], T0)]))
    # Make the last record's headersCount 1 (it has no bytes for a header), then fix the CRC.
    data[-1] = 0x02
    struct.pack_into(">I", data, fmt.CRC_OFFSET, spec_crc32c(bytes(data[fmt.CRC_START :])))
    batch = RecordBatch.parse(bytes(data))
    # The error comes from records() itself, before any record was handed out.
    with pytest.raises(
        InvalidRecordBatch,
        match=r"^malformed record 1 at byte 9 of the records section: headers count 1 does not fit",
    ):
        batch.records()


def test_parse_accepts_bytearray_and_memoryview_and_keeps_bytes() -> None:
    data = build_batch([(b"k", b"v", [], T0)])
    for raw in (bytearray(data), memoryview(data), memoryview(b"xx" + data)[2:]):
        batch = RecordBatch.parse(raw)
        assert type(batch.data) is bytes
        assert batch.data == data
        assert batch == RecordBatch(data)


def test_equality_hash_and_repr() -> None:
    a = RecordBatch.parse(build_batch([(b"k", b"v", [], T0)], base_offset=5))
    b = RecordBatch.parse(build_batch([(b"k", b"v", [], T0)], base_offset=5))
    c = RecordBatch.parse(build_batch([(b"k", b"v", [], T0)], base_offset=6))
    assert a == b
    assert hash(a) == hash(b)
    assert a != c
    assert a != a.data
    assert repr(a) == "RecordBatch(base_offset=5, record_count=1, compression=NONE, size_in_bytes=70)"


def test_log_append_time_replaces_every_record_timestamp_with_max_timestamp() -> None:
    data = build_batch(
        [(b"a", b"1", [], T0 + 10), (b"b", b"2", [], T0), (b"c", b"3", [], T0 + 99)],
        timestamp_type=TimestampType.LOG_APPEND_TIME,
    )
    batch = RecordBatch.parse(data)
    assert batch.timestamp_type is TimestampType.LOG_APPEND_TIME
    assert batch.attributes == fmt.TIMESTAMP_TYPE_FLAG
    assert batch.base_timestamp == T0 + 10
    assert batch.max_timestamp == T0 + 99
    assert [r.timestamp for r in batch.records()] == [T0 + 99] * 3


def test_transactional_and_control_flags_are_reported() -> None:
    section = spec_record(0, 0, b"\x00\x00\x00\x00", b"\x00\x00\x00\x00\x00\x00", [])
    data = spec_batch(
        section,
        base_offset=0,
        partition_leader_epoch=0,
        attributes=fmt.TRANSACTIONAL_FLAG | fmt.CONTROL_FLAG,
        last_offset_delta=0,
        base_timestamp=T0,
        max_timestamp=T0,
        producer_id=9,
        producer_epoch=1,
        base_sequence=-1,
        record_count=1,
    )
    batch = RecordBatch.parse(data)
    assert batch.is_transactional
    assert batch.is_control_batch
    assert batch.compression is Compression.NONE


def test_empty_batch_left_by_compaction_is_valid() -> None:
    data = spec_batch(
        b"",
        base_offset=100,
        partition_leader_epoch=0,
        attributes=0,
        last_offset_delta=4,  # the batch held 5 records once
        base_timestamp=T0,
        max_timestamp=T0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        record_count=0,
    )
    batch = RecordBatch.parse(data)
    assert batch.record_count == 0
    assert batch.next_offset == 105
    assert list(batch.records()) == []


def test_timestamps_at_the_64_bit_limits_round_trip() -> None:
    cases: list[list[RecordTuple]] = [
        [(b"a", None, [], INT64_MAX), (b"b", None, [], INT64_MAX - 1)],
        [(b"a", None, [], INT64_MIN), (b"b", None, [], INT64_MIN + 1)],
        [(b"a", None, [], INT64_MAX - 8191), (b"b", None, [], INT64_MAX)],
        [(b"a", None, [], 0), (b"b", None, [], INT64_MAX), (b"c", None, [], INT64_MIN + 1)],
    ]
    for records in cases:
        decoded = list(RecordBatch.parse(build_batch(records)).records())
        assert [r.timestamp for r in decoded] == [ts for *_, ts in records]


def test_large_values_and_many_records_take_the_slow_varint_paths() -> None:
    big = bytes(range(256)) * 300  # 76800 bytes: a three-byte length varint
    records: list[RecordTuple] = [
        (str(i).encode(), big if i % 1000 == 0 else b"v", [], T0 + i * 7) for i in range(5000)
    ]
    decoded = RecordBatch.parse(build_batch(records, base_offset=10)).decode_records()
    assert len(decoded) == 5000
    assert decoded[0] == Record(10, T0, b"0", big, ())
    assert decoded[4999] == Record(5009, T0 + 4999 * 7, b"4999", b"v", ())
    assert decoded[4000].value == big


# --------------------------------------------------------------------------------------------
# Rewriting fields outside the CRC


def test_with_base_offset_changes_only_the_first_eight_bytes() -> None:
    data = build_batch([(b"k", b"v", [("h", b"x")], T0), (None, b"w", [], T0 + 1)], base_offset=0)
    batch = RecordBatch.parse(data)
    rewritten = batch.with_base_offset(1_000_000)
    assert rewritten[:8] == struct.pack(">q", 1_000_000)
    assert rewritten[8:] == data[8:]  # records region and CRC untouched: nothing re-encoded
    moved = RecordBatch.parse(rewritten)  # CRC still verifies
    assert moved.crc == batch.crc
    assert moved.base_offset == 1_000_000
    assert moved.next_offset == 1_000_002
    assert [(r.offset, r.key, r.value) for r in moved.records()] == [
        (1_000_000, b"k", b"v"),
        (1_000_001, None, b"w"),
    ]


def test_with_base_offset_rejects_offsets_the_batch_cannot_take() -> None:
    batch = RecordBatch.parse(build_batch([(b"a", None, [], T0), (b"b", None, [], T0)]))
    assert RecordBatch.parse(batch.with_base_offset(INT64_MAX - 1)).last_offset == INT64_MAX
    with pytest.raises(
        InvalidArgument, match=r"new base offset must be an int in \[0, 9223372036854775806\]"
    ):
        batch.with_base_offset(INT64_MAX)
    with pytest.raises(InvalidArgument, match=r"new base offset must be an int .* got -1"):
        batch.with_base_offset(-1)


def test_with_partition_leader_epoch_keeps_the_crc_valid() -> None:
    data = build_batch([(b"k", b"v", [], T0)])
    batch = RecordBatch.parse(data)
    stamped = batch.with_partition_leader_epoch(12)
    assert stamped[:12] == data[:12]
    assert stamped[12:16] == struct.pack(">i", 12)
    assert stamped[16:] == data[16:]
    again = RecordBatch.parse(stamped)
    assert again.partition_leader_epoch == 12
    assert again.decode_records() == batch.decode_records()
    with pytest.raises(InvalidArgument, match=r"partition leader epoch must be an int in"):
        batch.with_partition_leader_epoch(INT32_MAX + 1)


# --------------------------------------------------------------------------------------------
# Many batches


def _three_batches() -> list[bytes]:
    return [
        build_batch([(b"a", b"1", [], T0)], base_offset=0),
        build_batch(
            [(b"b", b"2", [], T0), (b"c", b"3", [], T0)], base_offset=1, compression=Compression.GZIP
        ),
        build_batch([(b"d", b"4", [], T0)], base_offset=3),
    ]


def test_iter_batches_cuts_a_concatenation() -> None:
    parts = _three_batches()
    joined = b"".join(parts)
    for buf in (joined, bytearray(joined), memoryview(joined)):
        assert [b.data for b in iter_batches(buf)] == parts
    assert [b.data for b in split_batches(joined)] == parts
    offsets = [r.offset for b in iter_batches(joined) for r in b.records()]
    assert offsets == [0, 1, 2, 3]
    assert list(iter_batches(b"")) == []


def test_iter_batches_counts_bytes_of_a_wide_memoryview() -> None:
    parts = _three_batches()
    # Grow the last key until the concatenation is whole 4-byte items.
    pad = -sum(map(len, parts)) % 4
    parts[2] = build_batch([(b"d" + b"x" * pad, b"4", [], T0)], base_offset=3)
    joined = b"".join(parts)
    assert len(joined) % 4 == 0
    items = memoryview(array.array("I", joined))
    assert [b.data for b in iter_batches(items)] == parts
    with pytest.raises(InvalidRecordBatch, match=rf"^batch at byte {len(joined)}: truncated: 4 bytes left"):
        list(iter_batches(memoryview(array.array("I", joined + bytes(4)))))


def test_iter_batches_yields_good_batches_before_a_bad_tail() -> None:
    parts = _three_batches()
    bad = bytearray(parts[2])
    bad[-1] ^= 0x01
    it = iter_batches(parts[0] + parts[1] + bytes(bad))
    assert next(it).data == parts[0]
    assert next(it).data == parts[1]
    position = len(parts[0]) + len(parts[1])
    with pytest.raises(InvalidRecordBatch, match=rf"^batch at byte {position}: CRC-32C mismatch"):
        next(it)
    with pytest.raises(InvalidRecordBatch, match=rf"^batch at byte {position}: CRC-32C mismatch"):
        split_batches(parts[0] + parts[1] + bytes(bad))


def test_iter_batches_checks_lengths_before_slicing() -> None:
    data = bytearray(build_batch([(b"k", b"v", [], T0)]))
    struct.pack_into(">i", data, fmt.BATCH_LENGTH_OFFSET, 48)
    with pytest.raises(
        InvalidRecordBatch, match=r"^batch at byte 0: batchLength 48 is below the minimum 49$"
    ):
        list(iter_batches(data))
    struct.pack_into(">i", data, fmt.BATCH_LENGTH_OFFSET, -5)
    with pytest.raises(InvalidRecordBatch, match=r"batchLength -5 is below the minimum 49"):
        list(iter_batches(data))
    struct.pack_into(">i", data, fmt.BATCH_LENGTH_OFFSET, INT32_MAX)
    with pytest.raises(
        InvalidRecordBatch,
        match=rf"batch size {INT32_MAX + 12} bytes exceeds the limit of {DEFAULT_MAX_BATCH_BYTES}",
    ):
        list(iter_batches(data))


def test_max_batch_bytes_is_enforced_by_parse_and_iter_batches() -> None:
    data = build_batch([(b"k", b"v" * 100, [], T0)])
    assert RecordBatch.parse(data, max_batch_bytes=len(data)).data == data
    with pytest.raises(
        InvalidRecordBatch, match=rf"^batch size {len(data)} bytes exceeds the limit of 100 bytes$"
    ):
        RecordBatch.parse(data, max_batch_bytes=100)
    with pytest.raises(
        InvalidRecordBatch,
        match=rf"^batch at byte 0: batch size {len(data)} bytes exceeds the limit of 100 bytes$",
    ):
        list(iter_batches(data, max_batch_bytes=100))


def test_verify_crc_false_skips_only_the_crc() -> None:
    data = bytearray(build_batch([(b"k", b"v", [], T0)]))
    data[fmt.CRC_OFFSET] ^= 0xFF
    with pytest.raises(InvalidRecordBatch, match="CRC-32C mismatch"):
        RecordBatch.parse(data)
    assert RecordBatch.parse(data, verify_crc=False).decode_records() == [Record(0, T0, b"k", b"v", ())]
    assert len(split_batches(data, verify_crc=False)) == 1
    data[fmt.MAGIC_OFFSET] = 1
    with pytest.raises(InvalidRecordBatch, match="unsupported magic: expected 2, found 1"):
        RecordBatch.parse(data, verify_crc=False)


# --------------------------------------------------------------------------------------------
# Build-side argument errors


def test_build_rejects_an_empty_batch() -> None:
    with pytest.raises(InvalidArgument, match="a record batch needs at least one record"):
        build_batch([])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base_offset": -1}, r"base_offset must be an int in \[0, 9223372036854775807\], got -1"),
        ({"base_offset": INT64_MAX + 1}, r"base_offset must be an int in"),
        ({"base_offset": 1.0}, r"base_offset must be an int in .* got 1.0"),
        ({"producer_id": INT64_MIN - 1}, r"producer_id must be an int in"),
        ({"producer_epoch": 1 << 15}, r"producer_epoch must be an int in \[-32768, 32767\], got 32768"),
        ({"base_sequence": 1 << 31}, r"base_sequence must be an int in"),
        ({"partition_leader_epoch": -(1 << 31) - 1}, r"partition_leader_epoch must be an int in"),
        ({"compression": 7}, r"7 is not a valid Compression"),
        ({"timestamp_type": 2}, r"2 is not a valid TimestampType"),
        ({"compression": Compression.SNAPPY, "compression_level": 1}, r"snappy has no compression levels"),
        ({"compression": Compression.GZIP, "compression_level": 10}, r"gzip compression level must be in"),
    ],
)
def test_build_rejects_out_of_range_batch_fields(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        build_batch([(b"k", b"v", [], T0)], **kwargs)  # type: ignore[arg-type]


def test_build_base_offset_leaves_room_for_every_record() -> None:
    records: list[RecordTuple] = [(b"k", b"v", [], T0)] * 3
    assert RecordBatch.parse(build_batch(records, base_offset=INT64_MAX - 2)).last_offset == INT64_MAX
    with pytest.raises(InvalidArgument, match=r"base_offset must be an int in \[0, 9223372036854775805\]"):
        build_batch(records, base_offset=INT64_MAX - 1)


@pytest.mark.parametrize(
    ("records", "message"),
    [
        (
            [b"abc"],
            r"^record 0: expected a \(key, value, headers, timestamp_ms\) tuple, got bytes of length 3$",
        ),
        ([(b"k", b"v")], r"^record 0: expected a .* tuple, got tuple of length 2$"),
        ([None], r"^record 0: expected a .* tuple, got NoneType$"),
        ([(b"k", b"v", [], T0), (b"k",)], r"^record 1: expected a .* tuple, got tuple of length 1$"),
        ([(b"k", b"v", [], T0), 5], r"^record 1: expected a .* tuple, got int$"),
        ([(b"k", b"v", [], 1.5)], r"^record 0: timestamp must be a 64-bit int \(ms\), got 1.5$"),
        ([(b"k", b"v", [], True)], r"^record 0: timestamp must be a 64-bit int \(ms\), got True$"),
        (
            [(b"k", b"v", [], 0), (b"k", b"v", [], 1.0)],
            r"^record 1: timestamp must be a 64-bit int \(ms\), got 1.0$",
        ),
        ([(b"k", b"v", [], 0), (b"k", b"v", [], "5")], r"^record 1: timestamp must be a 64-bit int"),
        ([(b"k", b"v", [], INT64_MAX + 1)], r"^record 0: timestamp must be a 64-bit int"),
        (
            [(b"k", b"v", [], INT64_MAX - 2), (b"k", b"v", [], INT64_MAX + 1)],
            r"^record 1: timestamp must be a 64-bit int \(ms\), got 9223372036854775808$",
        ),
        (
            [(b"k", b"v", [], INT64_MIN), (b"k", b"v", [], INT64_MAX)],
            r"^record 1: timestamp 9223372036854775807 is too far",
        ),
        (["k", b"v", [], T0], r"^record 0: expected a .* tuple, got str of length 1$"),
        ([("k", b"v", [], T0)], r"^record 0: key must be bytes or None, got str$"),
        ([(b"k", 5, [], T0)], r"^record 0: value must be bytes or None, got int$"),
        (
            [(b"k", b"v", 5, T0)],
            r"^record 0: headers must be a sequence of \(str, bytes \| None\) pairs, got int$",
        ),
        (
            [(b"k", b"v", [("h",)], T0)],
            r"^record 0: a header must be a \(str, bytes \| None\) pair, got \('h',\)$",
        ),
        ([(b"k", b"v", [(b"h", b"x")], T0)], r"^record 0: a header must be a \(str, bytes \| None\) pair"),
        ([(b"k", b"v", [("h", "x")], T0)], r"^record 0: header 'h' value must be bytes or None, got str$"),
        ([(b"k", b"v", [("\udcff", b"x")], T0)], r"^record 0: header key '\\udcff' is not valid UTF-8"),
    ],
)
def test_build_rejects_malformed_records_naming_the_record(records: list[object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        build_batch(records)  # type: ignore[arg-type]
