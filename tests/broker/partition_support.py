"""Helpers shared by the partition tests (produce, reads, retention): record batches, and
the damage a failing disk does to a table's data block, located from the documented
SSTable format (not through the reader under test)."""

from __future__ import annotations

import time
from pathlib import Path

import attrs

from sentinel.broker import keys
from sentinel.broker.broker import Partition
from sentinel.broker.replica import ApplyRetention, PartitionReplica
from sentinel.records import RecordBatch, build_batch, split_batches
from sentinel.storage.sstable_format import (
    BLOCK_HEADER_SIZE,
    FOOTER_TRAILER,
    FOOTER_TRAILER_SIZE,
    decode_footer_body,
)
from sentinel.varint import decode_uvarint


def batch(*values: bytes, timestamp: int = 1_000, base_offset: int = 0) -> RecordBatch:
    return RecordBatch(build_batch([(None, v, (), timestamp) for v in values], base_offset=base_offset))


def timed_batch(*records: tuple[bytes, int]) -> RecordBatch:
    """One batch of ``(value, timestamp_ms)`` records."""
    return RecordBatch(build_batch([(None, v, (), ts) for v, ts in records]))


def replica(log: Partition) -> PartitionReplica:
    """A partition hosted here (every partition of a cluster of one)."""
    assert isinstance(log, PartitionReplica)
    return log


async def retain(
    log: Partition, *, retention_ms: int = 0, retention_bytes: int = 0, now_ms: int | None = None
) -> int:
    """One retention step of the partition's replica (what Broker.enforce_retention asks for
    each partition with the topic's config); the number of records removed."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return await replica(log).call(ApplyRetention(retention_ms, retention_bytes, now_ms))


def values_of(data: bytes) -> list[tuple[int, bytes | None]]:
    """``(offset, value)`` of every record in concatenated batches (CRC checked)."""
    return [(r.offset, r.value) for b in split_batches(data) for r in b.records()]


@attrs.frozen
class DataBlock:
    number: int
    position: int  # byte offset of the framed block in the file
    first: tuple[int, int, int] | None  # the parsed data key of its first and last entries
    last: tuple[int, int, int] | None


def data_blocks(table: Path) -> list[DataBlock]:
    """A table's data blocks, decoded from the documented format (not through the reader)."""
    data = table.read_bytes()
    footer_len, _crc, _magic = FOOTER_TRAILER.unpack_from(data, len(data) - FOOTER_TRAILER_SIZE)
    footer_start = len(data) - FOOTER_TRAILER_SIZE - footer_len
    footer = decode_footer_body(data[footer_start : footer_start + footer_len])
    index = data[footer.index_offset + BLOCK_HEADER_SIZE : footer.index_offset + footer.index_size]
    blocks = []
    pos = 0
    while pos < len(index):
        bounds = []
        for _ in range(2):
            n, pos = decode_uvarint(index, pos)
            bounds.append(keys.parse_data_key(index[pos : pos + n]))
            pos += n
        position, pos = decode_uvarint(index, pos)
        _size, pos = decode_uvarint(index, pos)
        blocks.append(DataBlock(len(blocks), position, bounds[0], bounds[1]))
    return blocks


def flip_byte(path: Path, position: int) -> None:
    """Damage one byte in place, as a failing disk would (open readers see it too)."""
    with path.open("r+b") as f:
        f.seek(position)
        byte = f.read(1)[0]
        f.seek(position)
        f.write(bytes([byte ^ 0x10]))


def padded(offset: int) -> bytes:
    return b"t0-%04d|" % offset + b"." * 240  # about 12 batches per 4 KiB data block
