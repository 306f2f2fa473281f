"""The SSTable data path, pure: data blocks built entry by entry, and decoded back.

Role: every flush and compaction writes each entry through :class:`TableBuilder` and reads
it back through :func:`decode_entries`; ``sstable.py`` wraps them with the file (writes,
fsync, ``pread``, the block cache) and the bloom, index and footer blocks. The byte layout is
``sstable_format.py``'s. This module does no IO and imports no engine state, so mypyc
compiles it (see :mod:`sentinel.storage.builds`; the Python source is the same code and
runs where nothing was compiled): it is plain typed Python with no dynamic features.

Invariants of a :class:`TableBuilder`:

- keys strictly ascending, seqs within u64: ``add`` refuses anything else with ValueError
  and leaves the builder as it was;
- the framed blocks it hands out (``take``) are contiguous from file offset 0, in order, and
  the index entries it keeps name exactly them (first key, last key, offset, framed size);
- a block is closed as soon as its payload reaches ``block_size``, so it holds at least
  one entry.
"""

from __future__ import annotations

import zlib
from array import array
from collections.abc import Iterator
from typing import Final

from sentinel.storage.bloom import bloom_hash
from sentinel.storage.sstable_format import (
    BLOCK_HEADER,
    BLOCK_HEADER_SIZE,
    KIND_PUT,
    KIND_TOMBSTONE,
    MAX_BLOCK_PAYLOAD,
)
from sentinel.varint import decode_uvarint, encode_uvarint

Entry = tuple[bytes, int, bytes | None]

# The largest uvarint a block may hold: 64-bit values need at most 10 bytes (shift 63).
_MAX_VARINT_SHIFT = 63
_ONE_BYTE: Final = 0x80  # lengths and seq groups below this take one uvarint byte
_LOW_BITS: Final = 0x7F
# A block is gathered as a list of pieces joined when it is full: one list append per piece
# (a byte from these tables of ``bytes`` made once, a key, a value) instead of growing a
# bytearray in place. Compiled, a list append is native where every bytearray operation is a
# generic call: 0.45 against 0.9 us an entry (the source runs at the same speed either way).
_BYTE: Final = tuple(bytes((n,)) for n in range(256))
_PUT_LEN: Final = tuple(bytes((KIND_PUT, n)) for n in range(_ONE_BYTE))  # kind and a short value length


class MalformedBlock(Exception):
    """A checksum-valid data block whose contents do not decode (the reader says where)."""


class TableBuilder:
    """Data blocks of one table, framed and indexed, and the bloom hash of every key.

    ``add`` entries in key order; ``take`` the framed blocks finished so far (the caller
    writes them to the file in order); ``finish_block`` closes the open block. ``hashes``
    holds ``bloom_hash`` of every key (the bloom filter is built from them) and ``index``
    the encoded index block payload.
    """

    def __init__(self, block_size: int) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self._block_size = block_size
        self._parts: list[bytes] = []  # the pieces of the data block being filled
        self._block_bytes = 0  # their total length
        self._bloom_hash = bloom_hash  # bound once: a module attribute is a lookup a key
        self._block_first = b""
        self._out = bytearray()  # framed blocks not yet taken
        self._offset = 0  # file offset of the first byte of ``_out``
        self.index = bytearray()
        # bloom_hash of every key, what the bloom filter is built from: 4 bytes a key (a list
        # would hold an int object of 32 bytes per key).
        self.hashes = array("I")
        self.min_key: bytes | None = None
        self.last_key = b""
        self.count = 0
        self.max_seq = 0
        self.data_bytes = 0  # keys and values added: what a caller cuts tables by

    @property
    def pending_bytes(self) -> int:
        """Bytes of framed blocks waiting for ``take``."""
        return len(self._out)

    @property
    def estimated_size(self) -> int:
        """Bytes of data blocks so far, the open block's payload included."""
        return self._offset + len(self._out) + self._block_bytes

    def add(self, key: bytes, seq: int, value: bytes | None) -> int:
        """Append one entry (``value`` None: a tombstone); returns ``pending_bytes``.

        ``key`` must be greater than every key added before. A rejected entry (ValueError,
        TypeError) leaves the builder as it was."""
        count = self.count
        if count and key <= self.last_key:
            raise ValueError(f"keys must be strictly ascending: {key!r} after {self.last_key!r}")
        if seq < 0 or seq >> 64:  # outside the u64 range (MAX_SEQ)
            raise ValueError(f"sequence number {seq} is outside the u64 range")
        parts = self._parts
        mark = len(parts)
        byte = _BYTE
        try:
            n = len(key)
            parts.append(byte[n] if n < _ONE_BYTE else encode_uvarint(n))
            parts.append(key)
            size = self._block_bytes + (1 if n < _ONE_BYTE else len(parts[mark])) + n + 1
            rest = seq
            while rest >= _ONE_BYTE:
                parts.append(byte[(rest & _LOW_BITS) | _ONE_BYTE])
                rest >>= 7
                size += 1
            parts.append(byte[rest])
            if value is None:
                parts.append(byte[KIND_TOMBSTONE])
                size += 1
            else:
                n = len(value)
                if n < _ONE_BYTE:
                    parts.append(_PUT_LEN[n])
                    size += 2
                else:
                    length = encode_uvarint(n)
                    parts.append(byte[KIND_PUT])
                    parts.append(length)
                    size += 1 + len(length)
                parts.append(value)
                size += n
        except BaseException:
            del parts[mark:]
            raise
        if not mark:
            self._block_first = key
        if not count:
            self.min_key = key
        self.hashes.append(self._bloom_hash(key))
        self.last_key = key
        self.count = count + 1
        self.data_bytes += len(key) if value is None else len(key) + len(value)
        if seq > self.max_seq:
            self.max_seq = seq
        self._block_bytes = size
        if size >= self._block_size:
            self.finish_block()
        return len(self._out)

    def add_from(self, entries: Iterator[Entry], pending_limit: int, data_limit: int) -> bool:
        """``add`` the entries of an iterator, in one compiled loop instead of a call per entry
        from Python, until it is exhausted (True) or the framed blocks waiting for ``take``
        reach ``pending_limit`` bytes, or ``data_bytes`` reaches ``data_limit`` (False: the
        iterator is left just after the last entry added)."""
        for key, seq, value in entries:
            if self.add(key, seq, value) >= pending_limit or self.data_bytes >= data_limit:
                return False
        return True

    def finish_block(self) -> None:
        """Frame the open block (if it holds anything) and index it."""
        if not self._parts:
            return
        block = b"".join(self._parts)
        if len(block) > MAX_BLOCK_PAYLOAD:
            raise ValueError(f"data block of {len(block)} bytes exceeds the format's u32 length")
        out = self._out
        offset = self._offset + len(out)
        out += BLOCK_HEADER.pack(zlib.crc32(block), len(block))
        out += block
        first = self._block_first
        last = self.last_key
        index = self.index
        index += encode_uvarint(len(first))
        index += first
        index += encode_uvarint(len(last))
        index += last
        index += encode_uvarint(offset)
        index += encode_uvarint(BLOCK_HEADER_SIZE + len(block))
        self._parts = []
        self._block_bytes = 0

    def append_framed(self, payload: bytes | bytearray) -> tuple[int, int]:
        """Frame a block that is not a data block (bloom, index); returns (offset, size)."""
        out = self._out
        offset = self._offset + len(out)
        out += BLOCK_HEADER.pack(zlib.crc32(payload), len(payload))
        out += payload
        return offset, BLOCK_HEADER_SIZE + len(payload)

    def append_raw(self, data: bytes) -> None:
        """Append unframed bytes (the footer)."""
        self._out += data

    def take(self) -> bytearray:
        """The bytes to write next (everything appended since the last ``take``)."""
        out = self._out
        self._offset += len(out)
        self._out = bytearray()
        return out


def decode_entries(data: bytes, pos: int) -> tuple[list[bytes], list[Entry]]:
    """The keys and entries of a data block, from ``pos`` to the end of ``data`` (its
    checksum verified). MalformedBlock if they do not decode exactly or are out of order."""
    keys: list[bytes] = []
    entries: list[Entry] = []
    end = len(data)
    prev = b""
    try:
        while pos < end:
            n = data[pos]
            pos += 1
            if n >= _ONE_BYTE:
                n, pos = decode_uvarint(data, pos - 1)
            stop = pos + n
            if stop > end:
                raise MalformedBlock(f"key of {n} bytes overruns the block")
            key = data[pos:stop]
            pos = stop
            seq = data[pos]
            pos += 1
            if seq >= _ONE_BYTE:
                # Inline uvarint: sequence numbers are usually several bytes long and a call
                # to decode_uvarint per entry costs more than the rest of the entry.
                seq &= _LOW_BITS
                shift = 7
                while True:
                    b = data[pos]
                    pos += 1
                    seq |= (b & _LOW_BITS) << shift
                    if b < _ONE_BYTE:
                        break
                    shift += 7
                    if shift > _MAX_VARINT_SHIFT:
                        raise MalformedBlock("sequence number varint longer than 10 bytes")
            kind = data[pos]
            pos += 1
            value: bytes | None
            if kind == KIND_PUT:
                n = data[pos]
                pos += 1
                if n >= _ONE_BYTE:
                    n, pos = decode_uvarint(data, pos - 1)
                stop = pos + n
                if stop > end:
                    raise MalformedBlock(f"value of {n} bytes overruns the block")
                value = data[pos:stop]
                pos = stop
            elif kind == KIND_TOMBSTONE:
                value = None
            else:
                raise MalformedBlock(f"unknown entry kind {kind}")
            if keys and key <= prev:
                raise MalformedBlock(f"keys out of order: {key!r} after {prev!r}")
            prev = key
            keys.append(key)
            entries.append((key, seq, value))
    except IndexError:
        raise MalformedBlock("entry truncated at the end of the block") from None
    except ValueError as exc:
        raise MalformedBlock(f"bad varint: {exc}") from None
    return keys, entries
