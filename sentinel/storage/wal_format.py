"""The write-ahead log's record format: one CRC frame per atomic write batch (or group of them).

A WAL segment is a sequence of frames (:mod:`sentinel.storage.framing`:
``crc32 | length | payload``). Each payload is one write batch, applied all or nothing::

    payload = first_seq u64 LE | count u32 LE | entry * count
    entry   = kind u8 | key_len uvarint | key | [value_len uvarint | value]   (value: put only)
    kind    = 1 put, 0 delete

Entry ``i`` (0-based) has seq ``first_seq + i``: sequence numbers inside a batch are
consecutive, so they cost nothing on disk. Decoded entries are the engine-wide triple
``(key, seq, value)`` with ``value is None`` for a delete.

The MemtableOwner frames every write queued at one moment (a group commit) as ONE
record when their seqs are consecutive (they always are: it assigns them in order), with
:class:`WalGroupEncoder`: the group is then applied all or nothing at recovery, which only
strengthens each write's own atomicity (no writer is answered before the whole group is
in the WAL), and a write costs its entries' bytes instead of a header, a checksum and a
frame of its own. A group is cut into several records at :data:`GROUP_RECORD_BYTES`.

Invariants the decoder enforces (the encoder never produces anything else, so a violation
in a checksum-valid frame is corruption: a software bug or a disk that lied):
``count >= 1``; every seq fits in a u64; kinds are 0 or 1; lengths stay inside the payload;
no bytes follow the last entry.

This module is compiled by mypyc when the package is installed with a C compiler (the
engine takes it from :mod:`sentinel.storage.builds`, which falls back to this source): keep
it plain typed Python; constants are ``Final`` so the compiled build inlines them, and
lists are appended to through ``parts.append`` (native compiled) rather than a bound method.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final

from sentinel.errors import CorruptionError
from sentinel.storage.framing import MAX_FRAME_PAYLOAD, frame
from sentinel.varint import decode_uvarint, encode_uvarint

BATCH_HEADER = struct.Struct("<QI")  # first_seq, count
BATCH_HEADER_SIZE: Final = BATCH_HEADER.size

KIND_DELETE: Final = 0
KIND_PUT: Final = 1

MAX_SEQ = (1 << 64) - 1  # first_seq is a u64, and so is every seq derived from it
MAX_BATCH_COUNT: Final = (1 << 32) - 1  # count is a u32
# The smallest entry is a delete of the empty key: a kind byte and a one-byte key length.
MIN_ENTRY_SIZE: Final = 2

# Lengths below this take one uvarint byte. Encoding looks their bytes (and the kind byte
# in front of a key length) up in tables built once, instead of formatting them per entry:
# on 1000 x (16-byte key, 100-byte value) that is ~0.08 ms per batch instead of ~0.4 ms.
_ONE_BYTE_UVARINT_LIMIT: Final = 0x80
# Below this a uvarint takes two bytes, packed with one struct call (values of a few KB,
# such as record batches, are common and deserve better than the general encoder).
_TWO_BYTE_UVARINT_LIMIT: Final = 0x4000
_VARINT_CONTINUATION: Final = 0x80
_VARINT_LOW_BITS: Final = 0x7F
_U16 = struct.Struct("<H")

_UVARINT_1: Final = tuple(bytes((n,)) for n in range(_ONE_BYTE_UVARINT_LIMIT))
_PUT_KEY_PREFIX: Final = tuple(bytes((KIND_PUT, n)) for n in range(_ONE_BYTE_UVARINT_LIMIT))
_DELETE_KEY_PREFIX: Final = tuple(bytes((KIND_DELETE, n)) for n in range(_ONE_BYTE_UVARINT_LIMIT))
_PUT_KIND = bytes((KIND_PUT,))
_DELETE_KIND = bytes((KIND_DELETE,))


def _uvarint(n: int) -> bytes:
    if n < _ONE_BYTE_UVARINT_LIMIT:
        return _UVARINT_1[n]
    if n < _TWO_BYTE_UVARINT_LIMIT:
        return _U16.pack((n & _VARINT_LOW_BITS) | _VARINT_CONTINUATION | (n >> 7 << 8))
    return encode_uvarint(n)


def _check_batch(first_seq: int, count: int) -> None:
    if count == 0:
        raise ValueError("a write batch needs at least one operation")
    if count > MAX_BATCH_COUNT:
        raise ValueError(f"a write batch holds at most {MAX_BATCH_COUNT} operations, got {count}")
    if first_seq < 0 or first_seq + count - 1 > MAX_SEQ:
        raise ValueError(f"seqs {first_seq}..{first_seq + count - 1} do not fit in a u64")


def _encode_entries(ops: Sequence[tuple[bytes, bytes | None]], parts: list[bytes]) -> int:
    """Append the encoded entries of ``ops`` to ``parts``; returns how many bytes they take."""
    one_byte = _ONE_BYTE_UVARINT_LIMIT
    uvarint_1 = _UVARINT_1
    put_prefix = _PUT_KEY_PREFIX
    size = 0
    for key, value in ops:
        key_len = len(key)
        if value is None:
            prefix = _DELETE_KEY_PREFIX[key_len] if key_len < one_byte else _DELETE_KIND + _uvarint(key_len)
            parts.append(prefix)
            parts.append(key)
            size += len(prefix) + key_len
        else:
            prefix = put_prefix[key_len] if key_len < one_byte else _PUT_KIND + _uvarint(key_len)
            value_len = len(value)
            length = uvarint_1[value_len] if value_len < one_byte else _uvarint(value_len)
            parts.append(prefix)
            parts.append(key)
            parts.append(length)
            parts.append(value)
            size += len(prefix) + key_len + len(length) + value_len
    return size


def encode_write_batch(first_seq: int, ops: Sequence[tuple[bytes, bytes | None]]) -> bytes:
    """The payload of one WAL record: ``ops[i]`` (``(key, value)``, value None = delete) gets
    seq ``first_seq + i``. Raises ValueError for an empty batch or a seq outside u64."""
    count = len(ops)
    _check_batch(first_seq, count)
    parts = [BATCH_HEADER.pack(first_seq, count)]
    _encode_entries(ops, parts)
    return b"".join(parts)


def encode_wal_record(first_seq: int, ops: Sequence[tuple[bytes, bytes | None]]) -> bytes:
    """One framed WAL record (what :meth:`WalFile.append` takes) for a write batch."""
    return frame(encode_write_batch(first_seq, ops))


# A group's record is cut here: big enough that a group of small writes is one record, small
# enough that one record is never near the frame limit (a write batch bigger than this gets
# a record of its own) and that replay never holds a huge payload twice.
GROUP_RECORD_BYTES: Final = 4 * 1024 * 1024


class WalGroupEncoder:
    """Frames consecutive write batches as few WAL records as possible (a group commit).

    ``add`` takes each batch with its first seq; batches whose seqs follow on go into the
    same record, up to :data:`GROUP_RECORD_BYTES` of payload, and ``take`` returns the
    framed records (what :meth:`WalFile.append` takes) and starts afresh. Decoding a record
    yields the entries of all its batches, each with its own seq: the same triples as one
    record per batch. A batch ``add`` refuses (ValueError) leaves the encoder as it was.
    """

    __slots__ = ("_count", "_first_seq", "_parts", "_records", "_size")

    def __init__(self) -> None:
        self._records: list[bytes] = []
        self._parts: list[bytes] = [b""]  # [0]: the open record's header, packed at the end
        self._first_seq = 0
        self._count = 0
        self._size = 0

    def __bool__(self) -> bool:
        return bool(self._count or self._records)

    def add(self, first_seq: int, ops: Sequence[tuple[bytes, bytes | None]]) -> int:
        """Encode one write batch (``ops[i]`` gets seq ``first_seq + i``); returns the bytes
        it adds. ValueError for an empty batch, seqs outside u64 or a batch too big to frame."""
        count = len(ops)
        # ``>> 64``: above MAX_SEQ without comparing against an int too big for a machine word.
        if not 0 < count <= MAX_BATCH_COUNT or first_seq < 0 or (first_seq + count - 1) >> 64:
            _check_batch(first_seq, count)  # raises, saying which
        if self._count and (
            first_seq != self._first_seq + self._count
            or self._count + count > MAX_BATCH_COUNT
            or self._size >= GROUP_RECORD_BYTES
        ):
            self._close_record()
        parts = self._parts
        mark = len(parts)
        size = _encode_entries(ops, parts)
        if BATCH_HEADER_SIZE + size > MAX_FRAME_PAYLOAD:
            del parts[mark:]
            raise ValueError(
                f"a write batch of {size} bytes exceeds the {MAX_FRAME_PAYLOAD}-byte record limit"
            )
        if self._size and self._size + size > MAX_FRAME_PAYLOAD - BATCH_HEADER_SIZE:
            # Too big to share the open record: it starts its own.
            moved = parts[mark:]
            del parts[mark:]
            self._close_record()
            self._parts.extend(moved)
        if not self._count:
            self._first_seq = first_seq
        self._count += count
        self._size += size
        return size

    def take(self) -> bytes:
        """The framed records of every batch added since the last ``take``."""
        if self._count:
            self._close_record()
        records, self._records = self._records, []
        if len(records) == 1:
            return records[0]
        return b"".join(records)

    def _close_record(self) -> None:
        parts = self._parts
        parts[0] = BATCH_HEADER.pack(self._first_seq, self._count)
        self._records.append(frame(b"".join(parts)))
        self._parts = [b""]
        self._count = 0
        self._size = 0


def decode_write_batch(
    payload: bytes, source: str, base_position: int = 0
) -> list[tuple[bytes, int, bytes | None]]:
    """The ``(key, seq, value)`` triples of a write-batch payload.

    Raises :class:`CorruptionError` naming ``source`` and the byte position
    ``base_position + offset in payload`` of the first malformed field (pass the payload's
    offset in its file as ``base_position``).
    """
    size = len(payload)
    if size < BATCH_HEADER_SIZE:
        raise CorruptionError(
            source,
            base_position,
            f"write batch of {size} bytes is shorter than its {BATCH_HEADER_SIZE}-byte header",
        )
    first_seq, count = BATCH_HEADER.unpack_from(payload, 0)
    if count == 0:
        raise CorruptionError(source, base_position, "empty write batch (count 0)")
    if first_seq + count - 1 > MAX_SEQ:
        raise CorruptionError(
            source, base_position, f"write batch seqs {first_seq}..{first_seq + count - 1} overflow a u64"
        )
    if count * MIN_ENTRY_SIZE > size - BATCH_HEADER_SIZE:
        raise CorruptionError(
            source,
            base_position,
            f"write batch claims {count} entries but has only {size - BATCH_HEADER_SIZE} bytes for them",
        )
    out: list[tuple[bytes, int, bytes | None]] = []
    append = out.append
    pos = BATCH_HEADER_SIZE
    entry_start = pos
    seq = first_seq
    try:
        for seq in range(first_seq, first_seq + count):
            entry_start = pos
            kind = payload[pos]
            key_len = payload[pos + 1]
            pos += 2
            if key_len >= _VARINT_CONTINUATION:  # a multi-byte uvarint: the rare slow path
                key_len, pos = decode_uvarint(payload, pos - 1)
            end = pos + key_len
            if end > size:
                raise IndexError
            key = payload[pos:end]
            pos = end
            if kind == KIND_PUT:
                value_len = payload[pos]
                pos += 1
                if value_len >= _VARINT_CONTINUATION:
                    value_len, pos = decode_uvarint(payload, pos - 1)
                end = pos + value_len
                if end > size:
                    raise IndexError
                append((key, seq, payload[pos:end]))
                pos = end
            elif kind == KIND_DELETE:
                append((key, seq, None))
            else:
                raise CorruptionError(
                    source, base_position + entry_start, f"unknown entry kind {kind} (seq {seq})"
                )
    except IndexError:
        raise CorruptionError(
            source,
            base_position + entry_start,
            f"write batch entry (seq {seq}) runs past the end of the {size}-byte payload",
        ) from None
    except ValueError as exc:  # from decode_uvarint: an over-long length
        raise CorruptionError(
            source, base_position + entry_start, f"bad length in write batch entry (seq {seq}): {exc}"
        ) from None
    if pos != size:
        raise CorruptionError(
            source, base_position + pos, f"{size - pos} unexpected bytes after the last write batch entry"
        )
    return out
