"""Sans-IO codec for Kafka RecordBatch v2: build batches, validate untrusted bytes, decode records.

The layout lives in ``batch_format``. Roles:

- ``build_batch`` encodes records into one batch (the producer side). Its loop is the hot
  path of a producer: varints of small values come from a precomputed table instead of an
  encoder call, and only headers, unusual values and long batches take slower paths.
- ``RecordBatch.parse`` validates bytes that arrived from outside (the broker's produce path,
  a consumer's fetch) and exposes the header fields, unpacked once. It does not touch the
  records: the broker never needs them. ``records()`` decodes them on demand, with the
  records-section decoder of ``decode.py`` (compiled when built; see ``decoder.py``).
- ``iter_batches`` / ``split_batches`` cut a concatenation of batches (one fetch response).

Invariants:
- A ``RecordBatch`` only exists for bytes that passed every header check (length, magic,
  CRC unless the caller opted out, codec, record count); its ``data`` is exactly one batch.
- Malformed input raises ``InvalidRecordBatch`` saying which check failed with the expected
  and found values; never IndexError/struct.error, never wrong data. ``records()`` decodes
  and checks the whole records section before handing out the first record, so a consumer
  never acts on part of a malformed batch.
- ``with_base_offset`` / ``with_partition_leader_epoch`` rewrite fields outside the CRC and
  keep a valid batch valid.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from typing import Any, Final, Generic, NamedTuple, TypeVar

from crc32c import crc32c

from sentinel.errors import InvalidArgument, InvalidRecordBatch
from sentinel.records import batch_format as fmt
from sentinel.records import decoder as _decoders
from sentinel.records.compression import DEFAULT_MAX_UNCOMPRESSED_BYTES, Compression, compress, decompress
from sentinel.varint import encode_varint

# Largest batch accepted by default: Kafka's default message.max.bytes is ~1 MiB; 16 MiB
# leaves room for large-record producers while keeping one hostile batch cheap to reject.
DEFAULT_MAX_BATCH_BYTES: Final = 16 * 1024 * 1024

Header = tuple[str, bytes | None]
# (key, value, headers, timestamp_ms): what build_batch takes per record.
RecordTuple = tuple[bytes | None, bytes | None, Sequence[Header], int]


class Record(NamedTuple):
    """One decoded record: its absolute offset and timestamp, key, value and headers.

    A NamedTuple, not an attrs class: one is built per decoded record, and a tuple is
    built several times faster (the decoder calls ``tuple.__new__`` directly).
    """

    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...] = ()


TaggedRecord = TypeVar("TaggedRecord", bound=tuple[Any, ...])


class RecordInput(NamedTuple):
    """A record to build: a plain ``(key, value, headers, timestamp)`` tuple works as well."""

    key: bytes | None
    value: bytes | None
    headers: Sequence[Header]
    timestamp: int


class TimestampType(enum.IntEnum):
    """Attributes bit 3: who set the timestamps."""

    CREATE_TIME = 0  # the producer, per record
    LOG_APPEND_TIME = 1  # the broker: every record's timestamp is the batch's maxTimestamp


# Encodings of the zig-zag varints 0 .. _SMALL_VARINTS - 1, looked up by the build loop
# instead of calling an encoder: covers the offset deltas of batches up to 4096 records and
# the lengths of keys, values and records up to 4 KiB. 4096 short bytes objects is ~150 KiB.
_SMALL_VARINTS: Final = 4096
_VARINT: Final[tuple[bytes, ...]] = tuple(encode_varint(v) for v in range(_SMALL_VARINTS))
_NULL_LENGTH: Final = encode_varint(fmt.NULL_LENGTH)
_NO_HEADERS: Final = encode_varint(0)
_RECORD_ATTRIBUTES: Final = bytes((fmt.RECORD_ATTRIBUTES,))


# --------------------------------------------------------------------------------------------
# Building


def build_batch(
    records: Sequence[RecordTuple],
    *,
    base_offset: int = 0,
    compression: Compression = Compression.NONE,
    compression_level: int | None = None,
    producer_id: int = fmt.NO_PRODUCER_ID,
    producer_epoch: int = fmt.NO_PRODUCER_EPOCH,
    base_sequence: int = fmt.NO_SEQUENCE,
    partition_leader_epoch: int = fmt.NO_PARTITION_LEADER_EPOCH,
    timestamp_type: TimestampType = TimestampType.CREATE_TIME,
) -> bytes:
    """Encode ``(key, value, headers, timestamp_ms)`` records into one RecordBatch v2.

    baseTimestamp is the first record's timestamp (later ones may be smaller: deltas are
    signed); maxTimestamp the largest. Raises ``InvalidArgument`` for anything the format
    cannot carry (no records, out-of-range fields, non-bytes keys/values, an unavailable codec).
    """
    count = len(records)
    if count == 0:
        raise InvalidArgument("a record batch needs at least one record")
    _check_range("record count", count, 1, fmt.INT32_MAX)
    _check_range("base_offset", base_offset, 0, fmt.INT64_MAX - (count - 1))
    _check_range("producer_id", producer_id, fmt.INT64_MIN, fmt.INT64_MAX)
    _check_range("producer_epoch", producer_epoch, fmt.INT16_MIN, fmt.INT16_MAX)
    _check_range("base_sequence", base_sequence, fmt.INT32_MIN, fmt.INT32_MAX)
    _check_range("partition_leader_epoch", partition_leader_epoch, fmt.INT32_MIN, fmt.INT32_MAX)
    try:
        codec = Compression(compression)
        ts_type = TimestampType(timestamp_type)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None

    body, first_timestamp, max_timestamp = _encode_records(records)

    attributes = codec | (fmt.TIMESTAMP_TYPE_FLAG if ts_type is TimestampType.LOG_APPEND_TIME else 0)
    payload: bytes | bytearray = (
        body if codec is Compression.NONE else compress(codec, body, compression_level)
    )
    batch_length = fmt.MIN_BATCH_LENGTH + len(payload)
    if batch_length > fmt.INT32_MAX:
        raise InvalidArgument(
            f"batch of {batch_length + fmt.LOG_OVERHEAD} bytes does not fit batchLength (int32)"
        )
    covered = fmt.HEADER_CRC_COVERED.pack(
        attributes,
        count - 1,  # lastOffsetDelta: records take consecutive offsets
        first_timestamp,
        max_timestamp,
        producer_id,
        producer_epoch,
        base_sequence,
        count,
    )
    crc = crc32c(payload, value=crc32c(covered))
    prefix = fmt.HEADER_PREFIX.pack(base_offset, batch_length, partition_leader_epoch, fmt.MAGIC, crc)
    return prefix + covered + payload


def _encode_records(records: Sequence[RecordTuple]) -> tuple[bytearray, int, int]:
    """The uncompressed records section, the first and the largest timestamp."""
    try:
        first_timestamp = records[0][3]
    except (TypeError, IndexError, KeyError) as exc:
        raise _bad_record_input(records[0], 0, exc) from None
    _check_timestamp(first_timestamp, 0)
    max_timestamp = first_timestamp
    out = bytearray()
    table = _VARINT
    small = _SMALL_VARINTS
    null = _NULL_LENGTH
    attributes = _RECORD_ATTRIBUTES
    no_headers = _NO_HEADERS
    join = b"".join
    index = 0
    try:
        for index, (key, value, headers, timestamp) in enumerate(records):
            ts_delta = timestamp - first_timestamp
            if 0 <= ts_delta < small:
                ts_part = table[ts_delta]
            else:
                ts_part = _encode_timestamp_delta(timestamp, ts_delta, index)
            if timestamp > max_timestamp:
                max_timestamp = timestamp
            if key is None:
                key_len = null
                key = b""
            else:
                if type(key) is not bytes:
                    key = _as_bytes(key, "key", index)
                n = len(key)
                key_len = table[n] if n < small else encode_varint(n)
            if value is None:
                value_len = null
                value = b""
            else:
                if type(value) is not bytes:
                    value = _as_bytes(value, "value", index)
                n = len(value)
                value_len = table[n] if n < small else encode_varint(n)
            record = join(
                (
                    attributes,
                    ts_part,
                    table[index] if index < small else encode_varint(index),  # offsetDelta
                    key_len,
                    key,
                    value_len,
                    value,
                    _encode_headers(headers, index) if headers else no_headers,
                )
            )
            n = len(record)
            out += table[n] if n < small else encode_varint(n)
            out += record
    except (TypeError, ValueError) as exc:
        # A record that is not a 4-tuple, a timestamp that is not an int, headers that are
        # not a sequence: found out here, off the hot path, to name the culprit.
        raise _bad_record_input(records[index], index, exc) from None
    if max_timestamp > fmt.INT64_MAX:
        # The fast path above skips the range check of timestamps just after the first;
        # only the largest can overflow, and it becomes the header's maxTimestamp.
        index = next(i for i, record in enumerate(records) if record[3] == max_timestamp)
        _check_timestamp(max_timestamp, index)
    return out, first_timestamp, max_timestamp


def _bad_record_input(record: object, index: int, exc: Exception) -> InvalidArgument:
    """The most precise description of why ``record`` could not be encoded."""
    if isinstance(record, str | bytes | bytearray) or not isinstance(record, Sequence) or len(record) != 4:
        return InvalidArgument(
            f"record {index}: expected a (key, value, headers, timestamp_ms) tuple, "
            f"got {type(record).__name__}"
            + (f" of length {len(record)}" if isinstance(record, Sequence) else "")
        )
    timestamp = record[3]
    if type(timestamp) is not int or not fmt.INT64_MIN <= timestamp <= fmt.INT64_MAX:
        return InvalidArgument(f"record {index}: timestamp must be a 64-bit int (ms), got {timestamp!r}")
    headers = record[2]
    if not isinstance(headers, Sequence) or isinstance(headers, str | bytes | bytearray):
        return InvalidArgument(
            f"record {index}: headers must be a sequence of (str, bytes | None) pairs, "
            f"got {type(headers).__name__}"
        )
    return InvalidArgument(f"record {index}: {exc}")


def _encode_timestamp_delta(timestamp: int, delta: int, index: int) -> bytes:
    _check_timestamp(timestamp, index)
    if not fmt.INT64_MIN <= delta <= fmt.INT64_MAX:
        raise InvalidArgument(
            f"record {index}: timestamp {timestamp} is too far from the first record's "
            f"({timestamp - delta}) for a 64-bit timestamp delta"
        )
    return encode_varint(delta)


def _encode_headers(headers: Sequence[Header], index: int) -> bytes:
    items = tuple(headers)
    parts = [encode_varint(len(items))]
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise InvalidArgument(
                f"record {index}: a header must be a (str, bytes | None) pair, got {item!r}"
            )
        name, value = item
        try:
            raw_name = name.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidArgument(f"record {index}: header key {name!r} is not valid UTF-8: {exc}") from None
        parts.append(encode_varint(len(raw_name)))
        parts.append(raw_name)
        if value is None:
            parts.append(_NULL_LENGTH)
        else:
            if type(value) is not bytes:
                value = _as_bytes(value, f"header {name!r} value", index)
            parts.append(encode_varint(len(value)))
            parts.append(value)
    return b"".join(parts)


def _as_bytes(obj: object, what: str, index: int) -> bytes:
    if isinstance(obj, bytes | bytearray | memoryview):
        return bytes(obj)
    raise InvalidArgument(f"record {index}: {what} must be bytes or None, got {type(obj).__name__}")


def _check_timestamp(timestamp: object, index: int) -> None:
    if type(timestamp) is not int or not fmt.INT64_MIN <= timestamp <= fmt.INT64_MAX:
        raise InvalidArgument(f"record {index}: timestamp must be a 64-bit int (ms), got {timestamp!r}")


def _check_range(name: str, value: object, low: int, high: int) -> None:
    if type(value) is not int or not low <= value <= high:
        raise InvalidArgument(f"{name} must be an int in [{low}, {high}], got {value!r}")


# --------------------------------------------------------------------------------------------
# Reading


class RecordBatch:
    """A validated RecordBatch v2: the exact bytes of one batch and its header fields.

    Build one with :meth:`parse` (or the constructor, which is the same). Header fields
    are unpacked once; records are decoded only when :meth:`records` is called.
    """

    __slots__ = (
        "_attributes",
        "_base_offset",
        "_base_sequence",
        "_base_timestamp",
        "_compression",
        "_crc",
        "_data",
        "_last_offset_delta",
        "_max_timestamp",
        "_partition_leader_epoch",
        "_producer_epoch",
        "_producer_id",
        "_record_count",
    )

    def __init__(
        self,
        data: bytes | bytearray | memoryview,
        *,
        verify_crc: bool = True,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    ) -> None:
        if type(data) is not bytes:
            data = bytes(data)
        size = len(data)
        if size > max_batch_bytes:
            raise InvalidRecordBatch(f"batch size {size} bytes exceeds the limit of {max_batch_bytes} bytes")
        if size < fmt.BATCH_HEADER_SIZE:
            raise InvalidRecordBatch(
                f"batch too short: {size} bytes, a batch header alone is {fmt.BATCH_HEADER_SIZE} bytes"
            )
        (
            base_offset,
            batch_length,
            partition_leader_epoch,
            magic,
            crc,
            attributes,
            last_offset_delta,
            base_timestamp,
            max_timestamp,
            producer_id,
            producer_epoch,
            base_sequence,
            record_count,
        ) = fmt.HEADER.unpack_from(data)
        if batch_length + fmt.LOG_OVERHEAD != size:
            raise InvalidRecordBatch(
                f"batchLength mismatch: batchLength {batch_length} means a batch of "
                f"{batch_length + fmt.LOG_OVERHEAD} bytes, found {size} bytes"
            )
        if magic != fmt.MAGIC:
            raise InvalidRecordBatch(f"unsupported magic: expected {fmt.MAGIC}, found {magic}")
        if verify_crc:
            computed = crc32c(memoryview(data)[fmt.CRC_START :])
            if computed != crc:
                raise InvalidRecordBatch(f"CRC-32C mismatch: stored 0x{crc:08x}, computed 0x{computed:08x}")
        codec = attributes & fmt.COMPRESSION_CODEC_MASK
        if codec > fmt.MAX_KNOWN_CODEC:
            raise InvalidRecordBatch(
                f"unknown compression codec {codec} in attributes 0x{attributes & 0xFFFF:04x}"
            )
        if record_count < 0:
            raise InvalidRecordBatch(f"bad recordCount: {record_count} is negative")
        if record_count > 0:
            if last_offset_delta != record_count - 1:
                raise InvalidRecordBatch(
                    f"lastOffsetDelta inconsistent with recordCount {record_count}: "
                    f"expected {record_count - 1}, found {last_offset_delta}"
                )
        elif last_offset_delta < -1:
            # An empty batch (everything compacted away) keeps its last offset delta, >= -1.
            raise InvalidRecordBatch(
                f"bad lastOffsetDelta {last_offset_delta} in an empty batch: expected >= -1"
            )
        records_size = size - fmt.RECORDS_OFFSET
        if codec == fmt.CODEC_NONE and record_count * fmt.MIN_RECORD_SIZE > records_size:
            raise InvalidRecordBatch(
                f"bad recordCount: {record_count} records cannot fit in a {records_size}-byte records "
                f"section (a record takes at least {fmt.MIN_RECORD_SIZE} bytes)"
            )
        self._data = data
        self._base_offset = base_offset
        self._partition_leader_epoch = partition_leader_epoch
        self._crc = crc
        self._attributes = attributes
        self._compression = Compression(codec)
        self._last_offset_delta = last_offset_delta
        self._base_timestamp = base_timestamp
        self._max_timestamp = max_timestamp
        self._producer_id = producer_id
        self._producer_epoch = producer_epoch
        self._base_sequence = base_sequence
        self._record_count = record_count

    @classmethod
    def parse(
        cls,
        data: bytes | bytearray | memoryview,
        *,
        verify_crc: bool = True,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    ) -> RecordBatch:
        """Validate untrusted bytes holding exactly one batch; raise ``InvalidRecordBatch`` if bad.

        Checks, in order: size limit, minimum length, batchLength == len(data) - 12, magic,
        CRC-32C (unless ``verify_crc`` is false), a known codec, recordCount >= 0 and
        lastOffsetDelta == recordCount - 1 (>= -1 for an empty batch), and for uncompressed
        batches that recordCount records can fit in the records section.
        """
        return cls(data, verify_crc=verify_crc, max_batch_bytes=max_batch_bytes)

    # --- header fields ---------------------------------------------------------------------

    @property
    def data(self) -> bytes:
        """The batch's bytes, exactly as validated."""
        return self._data

    @property
    def size_in_bytes(self) -> int:
        return len(self._data)

    @property
    def base_offset(self) -> int:
        return self._base_offset

    @property
    def last_offset_delta(self) -> int:
        return self._last_offset_delta

    @property
    def last_offset(self) -> int:
        return self._base_offset + self._last_offset_delta

    @property
    def next_offset(self) -> int:
        """The offset the batch after this one starts at."""
        return self._base_offset + self._last_offset_delta + 1

    @property
    def record_count(self) -> int:
        return self._record_count

    @property
    def partition_leader_epoch(self) -> int:
        return self._partition_leader_epoch

    @property
    def crc(self) -> int:
        return self._crc

    @property
    def attributes(self) -> int:
        return self._attributes

    @property
    def compression(self) -> Compression:
        return self._compression

    @property
    def timestamp_type(self) -> TimestampType:
        if self._attributes & fmt.TIMESTAMP_TYPE_FLAG:
            return TimestampType.LOG_APPEND_TIME
        return TimestampType.CREATE_TIME

    @property
    def is_transactional(self) -> bool:
        return bool(self._attributes & fmt.TRANSACTIONAL_FLAG)

    @property
    def is_control_batch(self) -> bool:
        return bool(self._attributes & fmt.CONTROL_FLAG)

    @property
    def base_timestamp(self) -> int:
        return self._base_timestamp

    @property
    def max_timestamp(self) -> int:
        return self._max_timestamp

    @property
    def producer_id(self) -> int:
        return self._producer_id

    @property
    def producer_epoch(self) -> int:
        return self._producer_epoch

    @property
    def base_sequence(self) -> int:
        return self._base_sequence

    # --- rewriting fields outside the CRC ------------------------------------------------------

    def with_base_offset(self, new_base: int) -> bytes:
        """These bytes with baseOffset replaced: how a leader assigns offsets on append.

        Only the first 8 bytes change. The CRC covers attributes .. end and deliberately not
        baseOffset, so the stored CRC stays valid and no checksum is recomputed over the batch.
        """
        _check_range("new base offset", new_base, 0, fmt.INT64_MAX - max(self._last_offset_delta, 0))
        return fmt.BASE_OFFSET.pack(new_base) + self._data[fmt.BASE_OFFSET.size :]

    def with_partition_leader_epoch(self, epoch: int) -> bytes:
        """These bytes with partitionLeaderEpoch replaced (also outside the CRC: stays valid)."""
        _check_range("partition leader epoch", epoch, fmt.INT32_MIN, fmt.INT32_MAX)
        start = fmt.PARTITION_LEADER_EPOCH_OFFSET
        data = self._data
        return (
            data[:start]
            + fmt.PARTITION_LEADER_EPOCH.pack(epoch)
            + data[start + fmt.PARTITION_LEADER_EPOCH.size :]
        )

    # --- records -----------------------------------------------------------------------------

    def records(self, *, max_uncompressed_bytes: int = DEFAULT_MAX_UNCOMPRESSED_BYTES) -> Iterator[Record]:
        """The records, decompressed and fully validated before the first one is yielded."""
        return iter(self.decode_records(max_uncompressed_bytes=max_uncompressed_bytes))

    def decode_records(self, *, max_uncompressed_bytes: int = DEFAULT_MAX_UNCOMPRESSED_BYTES) -> list[Record]:
        """Every record of the batch; raises ``InvalidRecordBatch`` if the records section is malformed.

        A compressed section may not decompress to more than ``max_uncompressed_bytes``.
        """
        count = self._record_count
        append_time = (
            self._max_timestamp if self._attributes & fmt.TIMESTAMP_TYPE_FLAG else None
        )  # LogAppendTime: the broker's time replaces every record's
        section, start = self._records_section(max_uncompressed_bytes)
        return _decoders.active.decode_records(
            section, start, count, self._base_offset, self._base_timestamp, append_time, Record
        )

    def _records_section(self, max_uncompressed_bytes: int) -> tuple[bytes, int]:
        """The (decompressed) bytes holding the records and where in them they start."""
        if self._compression is Compression.NONE:
            return self._data, fmt.RECORDS_OFFSET
        section = decompress(
            self._compression, memoryview(self._data)[fmt.RECORDS_OFFSET :], max_uncompressed_bytes
        )
        count = self._record_count
        if count * fmt.MIN_RECORD_SIZE > len(section):
            raise InvalidRecordBatch(
                f"bad recordCount: {count} records cannot fit in a {len(section)}-byte decompressed "
                f"records section (a record takes at least {fmt.MIN_RECORD_SIZE} bytes)"
            )
        return section, 0

    def validate_records(self, *, max_uncompressed_bytes: int = DEFAULT_MAX_UNCOMPRESSED_BYTES) -> None:
        """Check the records section as ``decode_records`` would, building no records.

        What the broker runs on every produced batch before it assigns offsets: a batch that
        passes decodes (``decode_records`` raises for exactly the batches this rejects, with
        the same message). A compressed section is decompressed within
        ``max_uncompressed_bytes``, as a consumer will.
        """
        section, start = self._records_section(max_uncompressed_bytes)
        _decoders.active.check_records(section, start, self._record_count, self._base_timestamp)

    def decode_tagged(
        self,
        record_type: type[TaggedRecord],
        topic: str,
        partition: int,
        *,
        max_uncompressed_bytes: int = DEFAULT_MAX_UNCOMPRESSED_BYTES,
    ) -> list[TaggedRecord]:
        """Every record as ``record_type((topic, partition, offset, timestamp, key, value,
        headers))``: for a 7-field tuple type such as the client's ConsumerRecord, built
        directly (no intermediate Record). Validation is that of ``decode_records``."""
        section, start = self._records_section(max_uncompressed_bytes)
        return _decoders.active.decode_records(
            section,
            start,
            self._record_count,
            self._base_offset,
            self._base_timestamp,
            self._max_timestamp if self._attributes & fmt.TIMESTAMP_TYPE_FLAG else None,
            record_type,
            topic,
            partition,
            tagged=True,
        )

    def tagged_cursor(
        self,
        record_type: type[TaggedRecord],
        topic: str,
        partition: int,
        *,
        max_uncompressed_bytes: int = DEFAULT_MAX_UNCOMPRESSED_BYTES,
    ) -> TaggedRecordCursor[TaggedRecord]:
        """The records of ``decode_tagged``, decoded a few at a time as the cursor is read.

        The whole records section is checked first (as ``validate_records``, building no
        records): a malformed batch raises ``InvalidRecordBatch`` here, before any record
        of it exists. A consumer decodes just ahead of its application this way, so records
        are freed young instead of piling up for the garbage collector."""
        section, start = self._records_section(max_uncompressed_bytes)
        decoder = _decoders.active
        decoder.check_records(section, start, self._record_count, self._base_timestamp)
        append_time = self._max_timestamp if self._attributes & fmt.TIMESTAMP_TYPE_FLAG else None
        return TaggedRecordCursor(self, section, start, append_time, record_type, topic, partition)

    # --- misc ----------------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RecordBatch):
            return NotImplemented
        return self._data == other._data

    def __hash__(self) -> int:
        return hash(self._data)

    def __repr__(self) -> str:
        return (
            f"RecordBatch(base_offset={self._base_offset}, record_count={self._record_count}, "
            f"compression={self._compression.name}, size_in_bytes={len(self._data)})"
        )


# --------------------------------------------------------------------------------------------
# Many batches


def iter_batches(
    buf: bytes | bytearray | memoryview,
    *,
    verify_crc: bool = True,
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
) -> Iterator[RecordBatch]:
    """Yield each batch of a concatenation of batches, validating each with ``RecordBatch.parse``.

    A truncated or garbage tail raises ``InvalidRecordBatch`` naming the byte position, after
    the batches before it were yielded; use :func:`split_batches` for all-or-nothing.
    """
    view = memoryview(buf)
    if view.itemsize != 1:
        # len() and slices of a view count items: positions here are bytes.
        view = view.cast("B")
    total = len(view)
    pos = 0
    while pos < total:
        remaining = total - pos
        if remaining < fmt.BATCH_HEADER_SIZE:
            raise InvalidRecordBatch(
                f"batch at byte {pos}: truncated: {remaining} bytes left, a batch header alone is "
                f"{fmt.BATCH_HEADER_SIZE} bytes"
            )
        (batch_length,) = fmt.BATCH_LENGTH.unpack_from(view, pos + fmt.BATCH_LENGTH_OFFSET)
        size = batch_length + fmt.LOG_OVERHEAD
        if batch_length < fmt.MIN_BATCH_LENGTH:
            raise InvalidRecordBatch(
                f"batch at byte {pos}: batchLength {batch_length} is below the minimum {fmt.MIN_BATCH_LENGTH}"
            )
        if size > max_batch_bytes:
            raise InvalidRecordBatch(
                f"batch at byte {pos}: batch size {size} bytes exceeds the limit of {max_batch_bytes} bytes"
            )
        if size > remaining:
            raise InvalidRecordBatch(
                f"batch at byte {pos}: truncated: batchLength {batch_length} needs {size} bytes, "
                f"{remaining} bytes left"
            )
        try:
            batch = RecordBatch(
                view[pos : pos + size], verify_crc=verify_crc, max_batch_bytes=max_batch_bytes
            )
        except InvalidRecordBatch as exc:
            raise InvalidRecordBatch(f"batch at byte {pos}: {exc}") from None
        yield batch
        pos += size


def split_batches(
    data: bytes | bytearray | memoryview,
    *,
    verify_crc: bool = True,
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
) -> list[RecordBatch]:
    """Every batch of a concatenation of batches, or ``InvalidRecordBatch`` if any part is bad."""
    return list(iter_batches(data, verify_crc=verify_crc, max_batch_bytes=max_batch_bytes))


class TaggedRecordCursor(Generic[TaggedRecord]):
    """The records of one checked batch (``RecordBatch.tagged_cursor``), decoded on demand.

    ``take(n)`` decodes and returns the next ``n`` records (fewer at the end); ``next_offset``
    is the offset of the next record (offsets in a batch are consecutive: the decoder
    checks offsetDelta), ``remaining`` how many are left.
    """

    __slots__ = (
        "_append_time",
        "_batch",
        "_decoder",
        "_index",
        "_partition",
        "_pos",
        "_record_type",
        "_section",
        "_start",
        "_topic",
    )

    def __init__(
        self,
        batch: RecordBatch,
        section: bytes,
        start: int,
        append_time: int | None,
        record_type: type[TaggedRecord],
        topic: str,
        partition: int,
    ) -> None:
        self._batch = batch
        self._section = section
        self._start = start
        self._pos = start
        self._index = 0
        self._append_time = append_time
        self._record_type = record_type
        self._topic = topic
        self._partition = partition
        self._decoder = _decoders.active  # the build that checked the section decodes it

    @property
    def batch(self) -> RecordBatch:
        return self._batch

    @property
    def remaining(self) -> int:
        return self._batch.record_count - self._index

    @property
    def next_offset(self) -> int:
        return self._batch.base_offset + self._index

    def take(self, n: int) -> list[TaggedRecord]:
        batch = self._batch
        first = self._index
        stop = min(batch.record_count, first + n)
        records, self._pos = self._decoder.decode_range(
            self._section,
            self._start,
            self._pos,
            first,
            stop,
            batch.record_count,
            batch.base_offset,
            batch.base_timestamp,
            self._append_time,
            self._record_type,
            self._topic,
            self._partition,
            True,
        )
        self._index = stop
        return records
