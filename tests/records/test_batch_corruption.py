"""Corrupt, truncated and garbage batches: every flipped byte, every truncation, random bytes,
and a differential check of the record decoder against a plain reference decoder.

Outcome of a flipped byte, by region (the documented contract):
- baseOffset (bytes 0-7) and partitionLeaderEpoch (12-15) are outside the CRC by design:
  the leader rewrites them on append. A flip there parses and changes only that field
  (records move to the new offsets); nothing else about the batch changes.
- batchLength (8-11): "batchLength mismatch". magic (16): "unsupported magic".
- crc and everything it covers (17 .. end): "CRC-32C mismatch" (CRC-32C detects every
  error burst of up to 32 bits, so every single-byte change).
"""

from __future__ import annotations

import re
import struct

import pytest
from crc32c import crc32c
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentinel.errors import InvalidRecordBatch
from sentinel.records import (
    Compression,
    Record,
    RecordBatch,
    RecordTuple,
    TimestampType,
    available_codecs,
    build_batch,
    iter_batches,
    split_batches,
)
from sentinel.records import batch_format as fmt

T0 = 1_700_000_000_000
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1

SETTINGS = settings(
    max_examples=200,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

SMALL_RECORDS = [
    (b"k1", b"value-1", [("h", b"x")], T0),
    (None, b"v2", [], T0 + 70),
]

# What parse() may say about bytes that are not a valid batch: one pattern per header check.
HEADER_ERRORS = re.compile(
    r"^(batch size \d+ bytes exceeds the limit of \d+ bytes"
    r"|batch too short: \d+ bytes, a batch header alone is 61 bytes"
    r"|batchLength mismatch: batchLength -?\d+ means a batch of -?\d+ bytes, found \d+ bytes"
    r"|unsupported magic: expected 2, found -?\d+"
    r"|CRC-32C mismatch: stored 0x[0-9a-f]{8}, computed 0x[0-9a-f]{8}"
    r"|unknown compression codec [5-7] in attributes 0x[0-9a-f]{4}"
    r"|bad recordCount: .*"
    r"|lastOffsetDelta inconsistent with recordCount .*"
    r"|bad lastOffsetDelta -?\d+ in an empty batch: expected >= -1)$"
)
# What records() may say about a records section that is not valid.
RECORD_ERRORS = re.compile(
    r"^(malformed record \d+ at byte \d+ of the records section: .+"
    r"|records section has \d+ trailing bytes after the last of the \d+ records recordCount announces"
    r"|bad recordCount: .*"
    r"|(gzip|lz4|zstd|snappy): .+)$"
)


def restamp(data: bytes | bytearray) -> bytes:
    """``data`` with batchLength and CRC made consistent again (to reach the deeper checks)."""
    out = bytearray(data)
    struct.pack_into(">i", out, fmt.BATCH_LENGTH_OFFSET, len(out) - fmt.LOG_OVERHEAD)
    struct.pack_into(">I", out, fmt.CRC_OFFSET, crc32c(bytes(out[fmt.CRC_START :])))
    return bytes(out)


# --------------------------------------------------------------------------------------------
# Every flipped byte


@pytest.mark.parametrize("codec", available_codecs(), ids=lambda c: c.name)
@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_every_flipped_byte_is_detected_or_is_a_field_outside_the_crc(codec: Compression, mask: int) -> None:
    data = build_batch(SMALL_RECORDS, base_offset=1000, partition_leader_epoch=4, compression=codec)
    original = RecordBatch.parse(data)
    original_records = original.decode_records()
    for position in range(len(data)):
        flipped = bytearray(data)
        flipped[position] ^= mask
        if position < fmt.BATCH_LENGTH_OFFSET:
            batch = RecordBatch.parse(flipped)
            new_base = struct.unpack_from(">q", flipped)[0]
            assert batch.base_offset == new_base
            assert batch.data[8:] == data[8:]
            if new_base >= 0:
                assert batch.decode_records() == [
                    Record(new_base + i, r.timestamp, r.key, r.value, r.headers)
                    for i, r in enumerate(original_records)
                ]
        elif position < fmt.PARTITION_LEADER_EPOCH_OFFSET:
            with pytest.raises(
                InvalidRecordBatch, match=r"^batchLength mismatch: batchLength -?\d+ means a batch"
            ):
                RecordBatch.parse(flipped)
        elif position < fmt.MAGIC_OFFSET:
            batch = RecordBatch.parse(flipped)
            assert batch.partition_leader_epoch == struct.unpack_from(">i", flipped, 12)[0] != 4
            assert batch.decode_records() == original_records
        elif position == fmt.MAGIC_OFFSET:
            with pytest.raises(
                InvalidRecordBatch,
                match=rf"^unsupported magic: expected 2, found {struct.unpack('>b', bytes([2 ^ mask]))[0]}$",
            ):
                RecordBatch.parse(flipped)
        else:
            with pytest.raises(
                InvalidRecordBatch, match=r"^CRC-32C mismatch: stored 0x[0-9a-f]{8}, computed"
            ):
                RecordBatch.parse(flipped)
        # iter_batches reports the same damage with its position (or a length problem first).
        if (
            fmt.BATCH_LENGTH_OFFSET <= position < fmt.PARTITION_LEADER_EPOCH_OFFSET
            or position >= fmt.MAGIC_OFFSET
        ):
            with pytest.raises(InvalidRecordBatch, match=r"^batch at byte 0: "):
                split_batches(flipped)


def test_a_negative_base_offset_from_a_flip_still_parses() -> None:
    # Documented outcome: baseOffset is not covered by the CRC, so a flipped sign bit is not
    # detectable here; the leader overwrites baseOffset on append, and the partition log
    # checks it against the offsets it expects when reading.
    data = bytearray(build_batch(SMALL_RECORDS, base_offset=1000))
    data[0] ^= 0x80
    batch = RecordBatch.parse(data)
    assert batch.base_offset == 1000 - (1 << 63)
    assert batch.with_base_offset(5)[8:] == bytes(data[8:])


# --------------------------------------------------------------------------------------------
# Truncation


@pytest.mark.parametrize("codec", available_codecs(), ids=lambda c: c.name)
def test_every_truncation_is_rejected_with_its_length(codec: Compression) -> None:
    data = build_batch(SMALL_RECORDS, compression=codec)
    size = len(data)
    for cut in range(size):
        piece = data[:cut]
        if cut < fmt.BATCH_HEADER_SIZE:
            parse_error = rf"^batch too short: {cut} bytes, a batch header alone is 61 bytes$"
            iter_error = rf"^batch at byte 0: truncated: {cut} bytes left, a batch header alone is 61 bytes$"
        else:
            parse_error = (
                rf"^batchLength mismatch: batchLength {size - 12} means a batch of {size} bytes, "
                rf"found {cut} bytes$"
            )
            iter_error = (
                rf"^batch at byte 0: truncated: batchLength {size - 12} needs {size} bytes, {cut} bytes left$"
            )
        with pytest.raises(InvalidRecordBatch, match=parse_error):
            RecordBatch.parse(piece)
        if cut:
            with pytest.raises(InvalidRecordBatch, match=iter_error):
                list(iter_batches(piece))
        # After a good batch, the truncated one is reported at its own position.
        it = iter_batches(data + piece)
        assert next(it).data == data
        if cut:
            with pytest.raises(InvalidRecordBatch, match=rf"^batch at byte {size}: truncated: "):
                next(it)
        else:
            assert list(it) == []


@pytest.mark.parametrize("codec", available_codecs(), ids=lambda c: c.name)
def test_every_truncated_records_section_with_a_valid_crc_is_rejected(codec: Compression) -> None:
    # A writer that cut the records short but stamped a correct length and CRC: only the
    # structural checks can tell, and they must, at parse() or at records().
    data = build_batch(SMALL_RECORDS, compression=codec)
    for cut in range(fmt.RECORDS_OFFSET, len(data)):
        piece = restamp(data[:cut])
        try:
            batch = RecordBatch.parse(piece)
        except InvalidRecordBatch as exc:
            assert re.match(r"^bad recordCount: 2 records cannot fit in a \d+-byte records section", str(exc))
            continue
        with pytest.raises(InvalidRecordBatch) as info:
            batch.records()
        assert RECORD_ERRORS.match(str(info.value)), str(info.value)


def test_truncated_records_report_the_record_and_position() -> None:
    small: RecordTuple = (b"a" * 10, b"1" * 10, [], T0)  # 27 bytes encoded
    data = build_batch([small, small, (b"bb", b"2" * 100, [], T0)])  # then 111 bytes, length varint of 2
    cases = [
        (
            len(data) - 1,
            r"^malformed record 2 at byte 54 .*: record length 109 runs 1 bytes past the section's end$",
        ),
        (
            fmt.RECORDS_OFFSET + 55,
            r"^malformed record 2 at byte 54 .*: truncated: a varint runs past the section's end$",
        ),
        (
            fmt.RECORDS_OFFSET + 54,
            r"^malformed record 2 at byte 54 .*: records section holds only 2 records, recordCount says 3$",
        ),
        (fmt.RECORDS_OFFSET + 20, r"^bad recordCount: 3 records cannot fit in a 20-byte records section"),
    ]
    for cut, message in cases:
        with pytest.raises(InvalidRecordBatch, match=message):
            RecordBatch.parse(restamp(data[:cut])).records()
    with pytest.raises(
        InvalidRecordBatch, match=r"^records section has 3 trailing bytes after the last of the 3 records"
    ):
        RecordBatch.parse(restamp(data + b"\x00\x00\x00")).records()


# --------------------------------------------------------------------------------------------
# Hand-made malformed records with a valid CRC: each check and its message


def _batch_with_section(section: bytes, count: int, base_timestamp: int = T0, attributes: int = 0) -> bytes:
    header = fmt.HEADER.pack(
        0, 0, -1, 2, 0, attributes, count - 1, base_timestamp, base_timestamp, -1, -1, -1, count
    )
    return restamp(header + section)


def _v(value: int) -> bytes:
    raw = ((value << 1) ^ (value >> 63)) & 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while raw >= 0x80:
        out.append((raw & 0x7F) | 0x80)
        raw >>= 7
    out.append(raw)
    return bytes(out)


def _rec(body: bytes) -> bytes:
    return _v(len(body)) + body


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (_v(5) + b"\x00" * 5 + b"\x00" * 10, r"record length 5 is below the minimum 6"),
        (_v(-3) + b"\x00" * 20, r"record length -3 is below the minimum 6"),
        (_rec(b"\x00\x00" + _v(1) + _v(-1) + _v(-1) + _v(0)), r"offsetDelta: expected 0, found 1"),
        (_rec(b"\x00\x00\x00" + _v(-2) + _v(-1) + _v(0)), r"negative key length -2"),
        (_rec(b"\x00\x00\x00" + _v(-1) + _v(-7) + _v(0)), r"negative value length -7"),
        (
            _rec(b"\x00\x00\x00" + _v(9) + b"abc" + _v(-1) + _v(0)),
            r"key length 9 runs past the end of the record",
        ),
        (
            _rec(b"\x00\x00\x00" + _v(-1) + _v(9) + b"abc" + _v(0)),
            r"value length 9 runs past the end of the record",
        ),
        (_rec(b"\x00\x00\x00" + _v(-1) + _v(-1) + _v(-1)), r"headers count -1 does not fit the record"),
        (
            _rec(b"\x00\x00\x00" + _v(-1) + _v(-1) + _v(3) + b"\x00\x00"),
            r"headers count 3 does not fit the record",
        ),
        (
            _rec(b"\x00\x00\x00" + _v(-1) + _v(-1) + _v(1) + _v(-1) + _v(-1)),
            r"header key length -1 is negative or runs past the record",
        ),
        (
            _rec(b"\x00\x00\x00" + _v(-1) + _v(-1) + _v(1) + _v(1) + b"\xff" + _v(-1)),
            r"header key is not valid UTF-8",
        ),
        (
            _rec(b"\x00\x00\x00" + _v(-1) + _v(-1) + _v(1) + _v(1) + b"h" + _v(5) + b"x"),
            r"header value length 5 runs past the record",
        ),
        (
            _rec(b"\x00\x00\x00" + _v(-1) + _v(-1) + _v(1) + _v(1) + b"h" + _v(-4)),
            r"negative header value length -4",
        ),
        (
            _rec(b"\x00\x00\x00" + _v(-1) + _v(-1) + _v(0) + b"\x00"),
            r"fields end at byte 7, the record's length says 7",
        ),
        (
            _rec(b"\x00" + b"\xff" * 10 + b"\x01" + _v(0) + _v(-1) + _v(-1) + _v(0)),
            r"varint longer than 10 bytes",
        ),
        (
            _rec(b"\x00" + b"\xff" * 9 + b"\x02" + _v(0) + _v(-1) + _v(-1) + _v(0)),
            r"varint wider than 64 bits",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else "section",
)
def test_malformed_record_fields_are_named(section: bytes, message: str) -> None:
    batch = RecordBatch.parse(_batch_with_section(section, 1))
    with pytest.raises(
        InvalidRecordBatch, match=r"^malformed record 0 at byte 0 of the records section: " + message
    ):
        batch.records()
    with pytest.raises(
        InvalidRecordBatch, match=r"^malformed record 0 at byte 0 of the records section: " + message
    ):
        batch.validate_records()


@pytest.mark.parametrize(
    ("base_timestamp", "delta"),
    [
        (INT64_MAX, 1),
        (INT64_MAX - 100, 101),
        (INT64_MAX - 8191, 8192),
        (INT64_MIN, -1),
        (INT64_MIN + 5, -64),
        (-1, INT64_MIN),
    ],
)
def test_timestamps_outside_64_bits_are_rejected(base_timestamp: int, delta: int) -> None:
    section = _rec(b"\x00" + _v(delta) + _v(0) + _v(-1) + _v(-1) + _v(0))
    batch = RecordBatch.parse(_batch_with_section(section, 1, base_timestamp))
    with pytest.raises(
        InvalidRecordBatch,
        match=rf"timestampDelta {delta} takes baseTimestamp {base_timestamp} out of the 64-bit range",
    ):
        batch.records()
    # The delta that lands exactly on the bound decodes.
    inside = INT64_MAX - base_timestamp if delta > 0 else INT64_MIN - base_timestamp
    section = _rec(b"\x00" + _v(inside) + _v(0) + _v(-1) + _v(-1) + _v(0))
    assert [
        r.timestamp for r in RecordBatch.parse(_batch_with_section(section, 1, base_timestamp)).records()
    ] == [base_timestamp + inside]


def test_header_checks_of_parse() -> None:
    data = bytearray(build_batch(SMALL_RECORDS))
    bad = bytearray(data)
    struct.pack_into(">i", bad, fmt.RECORD_COUNT_OFFSET, -1)
    with pytest.raises(InvalidRecordBatch, match=r"^bad recordCount: -1 is negative$"):
        RecordBatch.parse(restamp(bad))
    bad = bytearray(data)
    struct.pack_into(">i", bad, fmt.LAST_OFFSET_DELTA_OFFSET, 5)
    with pytest.raises(
        InvalidRecordBatch, match=r"^lastOffsetDelta inconsistent with recordCount 2: expected 1, found 5$"
    ):
        RecordBatch.parse(restamp(bad))
    bad = bytearray(data[: fmt.RECORDS_OFFSET])
    struct.pack_into(">ii", bad, fmt.RECORD_COUNT_OFFSET - 4, -1, 0)  # baseSequence, recordCount
    struct.pack_into(">i", bad, fmt.LAST_OFFSET_DELTA_OFFSET, -2)
    with pytest.raises(
        InvalidRecordBatch, match=r"^bad lastOffsetDelta -2 in an empty batch: expected >= -1$"
    ):
        RecordBatch.parse(restamp(bad))
    bad = bytearray(data)
    struct.pack_into(">i", bad, fmt.LAST_OFFSET_DELTA_OFFSET, 99)
    struct.pack_into(">i", bad, fmt.RECORD_COUNT_OFFSET, 100)
    size = len(data) - fmt.RECORDS_OFFSET
    with pytest.raises(
        InvalidRecordBatch,
        match=(
            rf"^bad recordCount: 100 records cannot fit in a {size}-byte records section "
            r"\(a record takes at least 7 bytes\)$"
        ),
    ):
        RecordBatch.parse(restamp(bad))


# --------------------------------------------------------------------------------------------
# A reference decoder for differential testing: the spec read plainly, plus the codec's
# documented strictness (offsetDelta == index, no trailing bytes, 64-bit varints and timestamps).


class Reject(Exception):
    pass


def ref_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    raw = 0
    for i in range(10):
        if pos >= end:
            raise Reject("truncated varint")
        byte = buf[pos]
        pos += 1
        raw |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            if raw >= 1 << 64:
                raise Reject("varint over 64 bits")
            return (raw >> 1) ^ -(raw & 1), pos
    raise Reject("varint over 10 bytes")


def ref_bytes(buf: bytes, pos: int, end: int, *, nullable: bool) -> tuple[bytes | None, int]:
    length, pos = ref_varint(buf, pos, end)
    if length == -1 and nullable:
        return None, pos
    if length < 0 or pos + length > end:
        raise Reject("bad length")
    return buf[pos : pos + length], pos + length


def ref_decode(
    section: bytes, count: int, base_offset: int, base_timestamp: int, append_time: int | None
) -> list[Record]:
    pos, end = 0, len(section)
    out = []
    for index in range(count):
        length, pos = ref_varint(section, pos, end)
        if length < 0 or pos + length > end:
            raise Reject("record length")
        rec_end = pos + length
        if pos >= rec_end:
            raise Reject("no attributes")
        pos += 1
        ts_delta, pos = ref_varint(section, pos, rec_end)
        offset_delta, pos = ref_varint(section, pos, rec_end)
        if offset_delta != index:
            raise Reject("offset delta")
        key, pos = ref_bytes(section, pos, rec_end, nullable=True)
        value, pos = ref_bytes(section, pos, rec_end, nullable=True)
        header_count, pos = ref_varint(section, pos, rec_end)
        if header_count < 0:
            raise Reject("header count")
        headers = []
        for _ in range(header_count):
            name, pos = ref_bytes(section, pos, rec_end, nullable=False)
            assert name is not None
            try:
                text = name.decode("utf-8")
            except UnicodeDecodeError:
                raise Reject("header key") from None
            header_value, pos = ref_bytes(section, pos, rec_end, nullable=True)
            headers.append((text, header_value))
        if pos != rec_end:
            raise Reject("record length disagrees")
        timestamp = base_timestamp + ts_delta
        if not INT64_MIN <= timestamp <= INT64_MAX:
            raise Reject("timestamp")
        out.append(
            Record(
                base_offset + index,
                timestamp if append_time is None else append_time,
                key,
                value,
                tuple(headers),
            )
        )
    if pos != end:
        raise Reject("trailing bytes")
    return out


def check_against_reference(data: bytes) -> None:
    """parse()+records() and the reference agree: same records, or both reject."""
    try:
        batch = RecordBatch.parse(data, verify_crc=False)
    except InvalidRecordBatch as exc:
        assert HEADER_ERRORS.match(str(exc)), str(exc)
        return
    count = batch.record_count
    section = data[fmt.RECORDS_OFFSET :]
    append_time = batch.max_timestamp if batch.timestamp_type is TimestampType.LOG_APPEND_TIME else None
    try:
        got: list[Record] | None = batch.decode_records()
        decode_error = None
    except InvalidRecordBatch as exc:
        assert RECORD_ERRORS.match(str(exc)), str(exc)
        got = None
        decode_error = str(exc)
    # The broker's validator rejects exactly what the decoder rejects, with its message.
    try:
        batch.validate_records()
        validate_error = None
    except InvalidRecordBatch as exc:
        validate_error = str(exc)
    assert validate_error == decode_error
    if batch.compression is not Compression.NONE:
        return  # the reference does not decompress; the codec's own answer was well-formed
    try:
        expected: list[Record] | None = ref_decode(
            section, count, batch.base_offset, batch.base_timestamp, append_time
        )
    except Reject:
        expected = None
    assert got == expected


def test_reference_decoder_agrees_on_a_valid_batch() -> None:
    data = build_batch(SMALL_RECORDS * 3, base_offset=9)
    batch = RecordBatch.parse(data)
    assert ref_decode(data[61:], 6, 9, T0, None) == batch.decode_records()
    with pytest.raises(Reject, match="trailing"):
        ref_decode(data[61:] + b"\x00", 6, 9, T0, None)


# --------------------------------------------------------------------------------------------
# Garbage


@SETTINGS
@given(st.binary(max_size=200))
def test_garbage_bytes_only_raise_invalid_record_batch(garbage: bytes) -> None:
    with pytest.raises(InvalidRecordBatch) as info:
        RecordBatch.parse(garbage)
    assert HEADER_ERRORS.match(str(info.value)), str(info.value)
    if garbage:
        with pytest.raises(InvalidRecordBatch, match=r"^batch at byte 0: "):
            list(iter_batches(garbage))
    check_against_reference(garbage)


@SETTINGS
@given(
    header=st.binary(min_size=61, max_size=61),
    section=st.binary(max_size=120),
    count=st.integers(0, 4),
    codec=st.sampled_from([0, 0, 0, *[int(c) for c in available_codecs()], 2, 5]),
)
def test_garbage_behind_a_valid_header_matches_the_reference(
    header: bytes, section: bytes, count: int, codec: int
) -> None:
    head = bytearray(header)
    head[fmt.MAGIC_OFFSET] = fmt.MAGIC
    attributes = struct.unpack_from(">h", head, fmt.ATTRIBUTES_OFFSET)[0]
    struct.pack_into(">h", head, fmt.ATTRIBUTES_OFFSET, (attributes & ~fmt.COMPRESSION_CODEC_MASK) | codec)
    struct.pack_into(">i", head, fmt.LAST_OFFSET_DELTA_OFFSET, count - 1)
    struct.pack_into(">i", head, fmt.RECORD_COUNT_OFFSET, count)
    data = restamp(bytes(head) + section)
    check_against_reference(data)
    # With the CRC checked, the outcome is the same: restamp made the CRC valid.
    try:
        RecordBatch.parse(data)
    except InvalidRecordBatch as exc:
        assert HEADER_ERRORS.match(str(exc)), str(exc)


_records = st.lists(
    st.tuples(
        st.one_of(st.none(), st.binary(max_size=20)),
        st.one_of(st.none(), st.binary(max_size=100)),
        st.lists(st.tuples(st.text(max_size=5), st.one_of(st.none(), st.binary(max_size=5))), max_size=2),
        st.integers(T0 - 10_000, T0 + 10_000),
    ),
    min_size=1,
    max_size=4,
)


@SETTINGS
@given(
    records=_records,
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.one_of(st.none(), st.integers(0, 10_000)),
)
def test_mutated_records_with_a_restamped_crc_match_the_reference(
    records: list, edits: list[tuple[int, int]], cut: int | None
) -> None:
    data = bytearray(build_batch(records, base_offset=3))
    section_size = len(data) - fmt.RECORDS_OFFSET
    for where, byte in edits:
        data[fmt.RECORDS_OFFSET + where % section_size] = byte
    if cut is not None:
        data = data[: fmt.RECORDS_OFFSET + cut % (section_size + 1)]
    check_against_reference(restamp(data))


@SETTINGS
@given(
    st.lists(st.sampled_from(available_codecs()), min_size=1, max_size=3), st.binary(min_size=1, max_size=80)
)
def test_garbage_after_good_batches_is_reported_at_its_position(
    codecs: list[Compression], garbage: bytes
) -> None:
    parts = [build_batch(SMALL_RECORDS, base_offset=2 * i, compression=c) for i, c in enumerate(codecs)]
    it = iter_batches(b"".join(parts) + garbage)
    for part in parts:
        assert next(it).data == part
    with pytest.raises(InvalidRecordBatch, match=rf"^batch at byte {sum(map(len, parts))}: "):
        next(it)


# --------------------------------------------------------------------------------------------
# The broker's validator: garbage records behind a valid header and CRC, in every codec


def _poison(codec: Compression, section: bytes, count: int) -> bytes:
    """A batch whose header and CRC are valid and whose (compressed) records are ``section``."""
    from sentinel.records.compression import compress

    payload = section if codec is Compression.NONE else compress(codec, section)
    header = fmt.HEADER.pack(0, 0, -1, 2, 0, int(codec), count - 1, T0, T0, -1, -1, -1, count)
    return restamp(header + payload)


@pytest.mark.parametrize("codec", available_codecs(), ids=lambda c: c.name)
@pytest.mark.parametrize(
    ("section", "count", "message"),
    [
        (b"\x00" * 40, 3, r"^malformed record 0 at byte 0 .*: record length 0 is below the minimum 6$"),
        (
            _rec(b"\x00\x00" + _v(0) + _v(-1) + _v(-1) + _v(0)) * 2,
            2,
            r"^malformed record 1 at byte 7 .*: offsetDelta: expected 1, found 0$",
        ),
        (
            b"".join(_rec(b"\x00\x00" + _v(i) + _v(-1) + _v(-1) + _v(0)) for i in range(3)),
            2,
            r"^records section has 7 trailing bytes after the last of the 2 records",
        ),
        (
            _rec(b"\x00\x00" + _v(0) + _v(-1) + _v(-1) + _v(0)) + _v(30) + b"\x00" * 10,
            2,
            r"^malformed record 1 at byte 7 .*: record length 30 runs 20 bytes past the section's end$",
        ),
    ],
    ids=["garbage", "offset-delta", "count-mismatch", "truncated"],
)
def test_validator_rejects_garbage_records_with_a_valid_crc(
    codec: Compression, section: bytes, count: int, message: str
) -> None:
    data = _poison(codec, section, count)
    batch = RecordBatch.parse(data)  # header and CRC are fine: only the records are garbage
    with pytest.raises(InvalidRecordBatch, match=message):
        batch.validate_records()


@pytest.mark.parametrize("codec", [c for c in available_codecs() if c is not Compression.NONE])
def test_validator_refuses_a_decompression_bomb(codec: Compression) -> None:
    data = _poison(codec, bytes(80 * 1024 * 1024), 1)
    batch = RecordBatch.parse(data)
    with pytest.raises(InvalidRecordBatch, match=r"(decompresses to more than|over the limit)"):
        batch.validate_records()


@pytest.mark.parametrize("codec", available_codecs(), ids=lambda c: c.name)
def test_validator_accepts_what_build_batch_writes(codec: Compression) -> None:
    records = [(b"k" * (i % 300), b"v" * (i * 7 % 5000), [("h", b"x")] * (i % 3), T0 - i) for i in range(300)]
    RecordBatch.parse(build_batch(records, compression=codec)).validate_records()
