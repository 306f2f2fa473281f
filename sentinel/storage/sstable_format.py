"""On-disk layout of a Sentinel SSTable: every constant of the format and the footer codec.

An SSTable is an immutable file of entries ``(key, seq, value | None)`` with at most one
entry per key and keys strictly ascending in bytes order. ``sstable.py`` writes and reads
it; this module is the single place that says what the bytes are. Changing anything here
changes the file format: bump the magic.

Layout, in file order (all integers little-endian; "uvarint" is unsigned LEB128 as in
``sentinel.varint``)::

    +--------------------------+  offset 0
    | data block 0             |
    | data block 1             |   contiguous, in key order, no padding
    | ...                      |
    +--------------------------+  bloom_offset
    | bloom block              |
    +--------------------------+  index_offset = bloom_offset + bloom_size
    | index block              |
    +--------------------------+  footer_start = index_offset + index_size
    | footer body              |   footer_len bytes
    | footer trailer           |   16 bytes, the last bytes of the file
    +--------------------------+  file_size

Block framing (data, bloom and index blocks alike)::

    crc32    u32   zlib.crc32 of the payload bytes (not of the length)
    length   u32   payload length in bytes
    payload  length bytes

A block's *size* (as recorded in the index and the footer) is the framed size,
``BLOCK_HEADER_SIZE + length``.

Data block payload: entries back to back until the payload ends::

    key_len    uvarint
    key        key_len bytes
    seq        uvarint              sequence number the engine assigned to this write
    kind       u8                   KIND_PUT (1) or KIND_TOMBSTONE (0)
    -- only when kind == KIND_PUT:
    value_len  uvarint
    value      value_len bytes

The writer closes a block as soon as its payload reaches the target size (``BLOCK_SIZE``),
so a block holds at least one entry and an entry larger than the target ends up alone in
a block of its own. There are no restart points: a reader decodes the block (~4 KiB)
front to back.

Bloom block payload: the serialized filter of ``sentinel.storage.bloom`` over every key of
the table (bit array, then the number of probes as one trailing u8; see that module).

Index block payload: one entry per data block, in block order::

    first_key_len  uvarint
    first_key      first key of the block
    last_key_len   uvarint
    last_key       last key of the block
    offset         uvarint   file offset of the framed block
    size           uvarint   framed size of the block

Recording ``last_key`` besides ``first_key`` costs one key per 4 KiB block and lets a
point lookup reject a key that falls in the gap between two blocks (after the last key of
block i, before the first key of block i+1) without reading a data block; a first-key-only
index must read block i to find out.

Footer body (``footer_len`` bytes)::

    index_offset  u64
    index_size    u32
    bloom_offset  u64
    bloom_size    u32
    count         u64    number of entries (puts and tombstones)
    max_seq       u64    largest seq of any entry
    min_key_len   u32
    min_key       min_key_len bytes
    max_key_len   u32
    max_key       max_key_len bytes

Footer trailer (the last ``FOOTER_TRAILER_SIZE`` = 16 bytes of the file)::

    footer_len    u32    length of the footer body
    crc32         u32    zlib.crc32 of the footer body followed by the 4 footer_len bytes
    magic         u64    MAGIC

A reader reads the trailer first (fixed size at a known place), checks the magic, then
reads ``footer_len`` bytes before it and checks the CRC, and only then trusts the offsets
that locate the bloom and index blocks.
"""

from __future__ import annotations

import struct
import zlib
from typing import Final

import attrs

# Target payload size of a data block: one page, the unit a point lookup reads and checksums.
BLOCK_SIZE = 4096

# crc32, payload length: the framing of every block.
BLOCK_HEADER = struct.Struct("<II")
BLOCK_HEADER_SIZE = BLOCK_HEADER.size

# Final: mypyc inlines them into the compiled block codec (sstable_blocks.py).
KIND_TOMBSTONE: Final = 0
KIND_PUT: Final = 1

# Sequence numbers are u64 engine-wide (the WAL stores them so); the reader's seq decoder
# stops at ten uvarint bytes, so the writer must refuse anything wider.
MAX_SEQ = (1 << 64) - 1

# index_offset, index_size, bloom_offset, bloom_size, count, max_seq.
FOOTER_FIXED = struct.Struct("<QIQIQQ")
# The u32 length prefixes of min_key and max_key in the footer body.
FOOTER_KEY_LEN = struct.Struct("<I")
# footer_len, crc32, magic.
FOOTER_TRAILER = struct.Struct("<IIQ")
FOOTER_TRAILER_SIZE = FOOTER_TRAILER.size
# Smallest possible footer body: the fixed fields and two empty keys.
MIN_FOOTER_LEN = FOOTER_FIXED.size + 2 * FOOTER_KEY_LEN.size

# The file ends with the ASCII bytes "SNTLSST1" (stored as a little-endian u64), which
# makes a table recognisable in a hex dump; the trailing digit is the format version.
MAGIC = int.from_bytes(b"SNTLSST1", "little")

# No valid table is smaller: three framed blocks (data, bloom, index) and a footer with
# empty keys. A shorter file is reported as truncated before anything else is read.
MIN_FILE_SIZE = 3 * BLOCK_HEADER_SIZE + MIN_FOOTER_LEN + FOOTER_TRAILER_SIZE

# A block payload length is a u32.
MAX_BLOCK_PAYLOAD = 0xFFFFFFFF


@attrs.frozen
class Footer:
    """The decoded footer body (see the module docstring for its byte layout)."""

    index_offset: int
    index_size: int
    bloom_offset: int
    bloom_size: int
    count: int
    max_seq: int
    min_key: bytes
    max_key: bytes


def encode_footer(footer: Footer) -> bytes:
    """The footer body followed by the 16-byte trailer: the last bytes of a table."""
    body = b"".join(
        (
            FOOTER_FIXED.pack(
                footer.index_offset,
                footer.index_size,
                footer.bloom_offset,
                footer.bloom_size,
                footer.count,
                footer.max_seq,
            ),
            FOOTER_KEY_LEN.pack(len(footer.min_key)),
            footer.min_key,
            FOOTER_KEY_LEN.pack(len(footer.max_key)),
            footer.max_key,
        )
    )
    footer_len = FOOTER_KEY_LEN.pack(len(body))
    crc = zlib.crc32(footer_len, zlib.crc32(body))
    return body + FOOTER_TRAILER.pack(len(body), crc, MAGIC)


def decode_footer_body(body: bytes) -> Footer:
    """Parse a CRC-verified footer body; ValueError says what is malformed."""
    if len(body) < MIN_FOOTER_LEN:
        raise ValueError(f"footer body of {len(body)} bytes is shorter than {MIN_FOOTER_LEN}")
    index_offset, index_size, bloom_offset, bloom_size, count, max_seq = FOOTER_FIXED.unpack_from(body, 0)
    pos = FOOTER_FIXED.size
    (min_len,) = FOOTER_KEY_LEN.unpack_from(body, pos)
    pos += FOOTER_KEY_LEN.size
    if pos + min_len + FOOTER_KEY_LEN.size > len(body):
        raise ValueError(f"min_key length {min_len} overruns the footer")
    min_key = body[pos : pos + min_len]
    pos += min_len
    (max_len,) = FOOTER_KEY_LEN.unpack_from(body, pos)
    pos += FOOTER_KEY_LEN.size
    if pos + max_len != len(body):
        raise ValueError(f"max_key length {max_len} disagrees with the footer length {len(body)}")
    max_key = body[pos:]
    return Footer(
        index_offset=index_offset,
        index_size=index_size,
        bloom_offset=bloom_offset,
        bloom_size=bloom_size,
        count=count,
        max_seq=max_seq,
        min_key=min_key,
        max_key=max_key,
    )
