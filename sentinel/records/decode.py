"""The records section of a RecordBatch v2: decode it into records, or check it without decoding.

The per-record hot path of every consumer (``decode_records``) and of the broker's produce
validation (``check_records``). The module is plain, fully typed Python that ``setup.py``
compiles with mypyc when the package is installed (about four times faster); where no
compiler is at hand the same source runs as it is. ``sentinel.records.decoder`` picks the
compiled module when it is present and built from this very source, and the record tests
run against both, so there is one codec of record whichever runs.

Contract (what ``RecordBatch.decode_records`` promises): every record is decoded and the
whole section checked before the list is returned; a malformed section raises
``InvalidRecordBatch`` naming the record, its byte position and the check that failed.
Only mypyc-compatible constructs here: no ``Any`` juggling beyond the record type, no
closures on the hot path.
"""

from __future__ import annotations

from typing import Any, Final

from sentinel.errors import InvalidRecordBatch
from sentinel.records import batch_format as fmt
from sentinel.varint import decode_uvarint

Header = tuple[str, bytes | None]

# A varint of a 64-bit field never carries more than 64 bits of payload.
_UINT64_LIMIT: Final = 1 << 64
# The range of a zig-zag varint of at most two bytes (14 payload bits).
_TWO_BYTE_VARINT_MIN: Final = -(1 << 13)
_TWO_BYTE_VARINT_MAX: Final = (1 << 13) - 1


class _Malformed(Exception):
    """Raised inside the record decoder; becomes an InvalidRecordBatch naming the record."""


def decode_records(
    buf: bytes,
    start: int,
    count: int,
    base_offset: int,
    base_timestamp: int,
    append_time: int | None,
    record_type: type[Any],
    topic: str = "",
    partition: int = 0,
    *,
    tagged: bool = False,
) -> list[Any]:
    """Decode ``count`` records from ``buf[start:]``, which they must fill exactly.

    Records are ``record_type((offset, timestamp, key, value, headers))``, or with ``tagged``
    ``record_type((topic, partition, offset, ...))``, a 7-field tuple type led by the topic
    and partition (see ``RecordBatch.decode_tagged``).
    """
    out, pos = decode_range(
        buf,
        start,
        start,
        0,
        count,
        count,
        base_offset,
        base_timestamp,
        append_time,
        record_type,
        topic,
        partition,
        tagged,
    )
    _check_section_end(buf, pos, count)
    return out


def decode_range(
    buf: bytes,
    section_start: int,
    pos: int,
    first: int,
    stop: int,
    count: int,
    base_offset: int,
    base_timestamp: int,
    append_time: int | None,
    record_type: type[Any],
    topic: str,
    partition: int,
    tagged: bool,
    build: bool = True,
) -> tuple[list[Any], int]:
    """Records ``first`` to ``stop - 1`` of the ``count`` in the section starting at
    ``buf[section_start]``, the first of them at ``buf[pos]``; and the position after the
    last. ``decode_records`` is the whole range and a check that nothing follows it. Without
    ``build`` the walk and its checks are the same but no record is made (no slice, no
    tuple: ``check_records``), and the list is empty.

    Varints are decoded inline (no call) in their one-byte case, and for the fields that
    commonly pass 63 (record length, timestampDelta, offsetDelta, valueLength) in their
    two-byte case too; longer ones go through ``_varint_at``. Reads may run past a record's
    end into the next one, but never return data from there: every field is checked against
    the record's end and the record must end exactly where its length says. Timestamps are
    checked to stay 64-bit. Records are built with ``tuple.__new__``: a NamedTuple's own
    constructor costs a Python call per record.
    """
    end = len(buf)
    out: list[Any] = []
    new = tuple.__new__
    null = fmt.NULL_LENGTH
    min_length = fmt.MIN_RECORD_SIZE - 1  # the length varint does not count itself
    # baseTimestamp + timestampDelta must stay a 64-bit timestamp. An inline-decoded (one- or
    # two-byte) delta is in [-8192, 8191]: it can only leave the range when baseTimestamp is
    # that close to a bound, and then every delta takes the checked path.
    ts_low = fmt.INT64_MIN - base_timestamp
    ts_high = fmt.INT64_MAX - base_timestamp
    ts_inline = ts_low <= _TWO_BYTE_VARINT_MIN and _TWO_BYTE_VARINT_MAX <= ts_high
    ts_one_byte_limit = 0x80 if ts_inline else 0  # a byte is never below 0: no inline path
    index = first
    record_start = pos
    try:
        for index in range(first, stop):
            record_start = pos
            if pos >= end:
                raise _Malformed(f"records section holds only {index} records, recordCount says {count}")
            b = buf[pos]
            if b < 0x80:
                length = (b >> 1) ^ -(b & 1)
                pos += 1
            elif buf[pos + 1] < 0x80:
                z = (b & 0x7F) | (buf[pos + 1] << 7)
                length = (z >> 1) ^ -(z & 1)
                pos += 2
            else:
                length, pos = _varint_at(buf, pos)
            record_end = pos + length
            if length < min_length:
                raise _Malformed(f"record length {length} is below the minimum {min_length}")
            if record_end > end:
                raise _Malformed(
                    f"record length {length} runs {record_end - end} bytes past the section's end"
                )
            pos += 1  # record attributes: no bits defined
            b = buf[pos]
            if b < ts_one_byte_limit:
                ts_delta = (b >> 1) ^ -(b & 1)
                pos += 1
            elif ts_inline and buf[pos + 1] < 0x80:
                z = (b & 0x7F) | (buf[pos + 1] << 7)
                ts_delta = (z >> 1) ^ -(z & 1)
                pos += 2
            else:
                ts_delta, pos = _varint_at(buf, pos)
                if not ts_low <= ts_delta <= ts_high:
                    raise _Malformed(
                        f"timestampDelta {ts_delta} takes baseTimestamp {base_timestamp} out of the "
                        "64-bit range"
                    )
            b = buf[pos]
            if b < 0x80:
                offset_delta = (b >> 1) ^ -(b & 1)
                pos += 1
            elif buf[pos + 1] < 0x80:
                z = (b & 0x7F) | (buf[pos + 1] << 7)
                offset_delta = (z >> 1) ^ -(z & 1)
                pos += 2
            else:
                offset_delta, pos = _varint_at(buf, pos)
            if offset_delta != index:
                raise _Malformed(f"offsetDelta: expected {index}, found {offset_delta}")
            b = buf[pos]
            if b < 0x80:
                key_length = (b >> 1) ^ -(b & 1)
                pos += 1
            else:
                key_length, pos = _varint_at(buf, pos)
            if key_length >= 0:
                field_end = pos + key_length
                if field_end > record_end:
                    raise _Malformed(f"key length {key_length} runs past the end of the record")
                key: bytes | None = buf[pos:field_end] if build else None
                pos = field_end
            elif key_length == null:
                key = None
            else:
                raise _Malformed(f"negative key length {key_length}")
            b = buf[pos]
            if b < 0x80:
                value_length = (b >> 1) ^ -(b & 1)
                pos += 1
            elif buf[pos + 1] < 0x80:
                z = (b & 0x7F) | (buf[pos + 1] << 7)
                value_length = (z >> 1) ^ -(z & 1)
                pos += 2
            else:
                value_length, pos = _varint_at(buf, pos)
            if value_length >= 0:
                field_end = pos + value_length
                if field_end > record_end:
                    raise _Malformed(f"value length {value_length} runs past the end of the record")
                value: bytes | None = buf[pos:field_end] if build else None
                pos = field_end
            elif value_length == null:
                value = None
            else:
                raise _Malformed(f"negative value length {value_length}")
            if buf[pos] == 0:  # headersCount 0, the common case
                headers: tuple[Header, ...] = ()
                pos += 1
            else:
                headers, pos = _decode_headers(buf, pos, record_end)
            if pos != record_end:
                raise _Malformed(
                    f"fields end at byte {pos - record_start}, the record's length says {length}"
                )
            if not build:
                continue
            timestamp = base_timestamp + ts_delta if append_time is None else append_time
            if tagged:
                out.append(
                    new(
                        record_type,
                        (topic, partition, base_offset + offset_delta, timestamp, key, value, headers),
                    )
                )
            else:
                out.append(new(record_type, (base_offset + offset_delta, timestamp, key, value, headers)))
    except _Malformed as exc:
        raise _bad_record(index, record_start - section_start, str(exc)) from None
    except IndexError:
        raise _bad_record(
            index, record_start - section_start, "truncated: a varint runs past the section's end"
        ) from None
    except ValueError as bad_varint:  # an over-long varint (a name of its own: mypyc types each)
        raise _bad_record(index, record_start - section_start, str(bad_varint)) from None
    return out, pos


def check_records(buf: bytes, start: int, count: int, base_timestamp: int) -> None:
    """``decode_records`` without the records: the same walk, checks and messages
    (``decode_range`` without ``build``), but no slices or tuples, so it costs a fraction of
    a decode."""
    pos = decode_range(
        buf, start, start, 0, count, count, 0, base_timestamp, None, tuple, "", 0, False, build=False
    )[1]
    _check_section_end(buf, pos, count)


def _check_section_end(buf: bytes, pos: int, count: int) -> None:
    """The last of ``count`` records ended at ``pos``: nothing may follow it."""
    end = len(buf)
    if pos != end:
        raise InvalidRecordBatch(
            f"records section has {end - pos} trailing bytes after the last of the {count} records "
            "recordCount announces"
        )


def _varint_at(buf: bytes, pos: int) -> tuple[int, int]:
    """A zig-zag varint of at most 64 bits; raises ValueError/IndexError on garbage."""
    raw, pos = decode_uvarint(buf, pos)
    if raw >= _UINT64_LIMIT:
        raise ValueError("varint wider than 64 bits")
    return (raw >> 1) ^ -(raw & 1), pos


def _decode_headers(buf: bytes, pos: int, record_end: int) -> tuple[tuple[Header, ...], int]:
    count, pos = _varint_at(buf, pos)
    # Each header takes at least two bytes (its two length varints): a larger count is a lie.
    if count < 0 or count * 2 > record_end - pos:
        raise _Malformed(f"headers count {count} does not fit the record")
    headers: list[Header] = []
    for _ in range(count):
        key_length, pos = _varint_at(buf, pos)
        if key_length < 0 or pos + key_length > record_end:
            raise _Malformed(f"header key length {key_length} is negative or runs past the record")
        try:
            name = buf[pos : pos + key_length].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Malformed(f"header key is not valid UTF-8: {exc}") from None
        pos += key_length
        value_length, pos = _varint_at(buf, pos)
        if value_length >= 0:
            if pos + value_length > record_end:
                raise _Malformed(f"header value length {value_length} runs past the record")
            headers.append((name, buf[pos : pos + value_length]))
            pos += value_length
        elif value_length == fmt.NULL_LENGTH:
            headers.append((name, None))
        else:
            raise _Malformed(f"negative header value length {value_length}")
    return tuple(headers), pos


def _bad_record(index: int, position: int, detail: str) -> InvalidRecordBatch:
    return InvalidRecordBatch(f"malformed record {index} at byte {position} of the records section: {detail}")
