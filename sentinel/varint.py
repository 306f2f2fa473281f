"""Unsigned LEB128 varints and zig-zag signed varints.

Used by the storage formats (unsigned) and by Kafka's RecordBatch v2 records (zig-zag).
Decoders take ``(buf, pos)`` and return ``(value, new_pos)`` so callers walk a buffer
without slicing; they raise ``ValueError`` on truncation or an over-long encoding, which
callers wrap into their own precise error.
"""

from __future__ import annotations

# A 64-bit value needs at most ten 7-bit groups; more means garbage input.
MAX_VARINT_BYTES = 10


def encode_uvarint(value: int) -> bytes:
    if value < 0:
        raise ValueError(f"uvarint cannot encode negative value {value}")
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_uvarint(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    end = len(buf)
    for _ in range(MAX_VARINT_BYTES):
        if pos >= end:
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
    raise ValueError("varint longer than 10 bytes")


def zigzag_encode(value: int) -> int:
    return (value << 1) ^ (value >> 63)


def zigzag_decode(value: int) -> int:
    return (value >> 1) ^ -(value & 1)


def encode_varint(value: int) -> bytes:
    """Signed zig-zag varint (Kafka's `varint` / `varlong`)."""
    return encode_uvarint(zigzag_encode(value) & 0xFFFFFFFFFFFFFFFF)


def decode_varint(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int]:
    raw, pos = decode_uvarint(buf, pos)
    return zigzag_decode(raw), pos
