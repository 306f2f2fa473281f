"""Reading a partition: record batches by offset, and offsets by timestamp.

A partition's batches are stored verbatim under a key holding their LAST offset
(``keys.py``), so "the batch holding offset N" is one seek. The reader never serves past
the high watermark its owner publishes, and never skips: offsets below it that storage
does not hold (a loss accepted at recovery) or holds in a damaged block are refused with
``DataLoss`` naming them (and the file and byte of the damage), once what precedes them
has been served.

A lookup by timestamp reads only the ~1 MiB chunks of the log whose largest timestamp
reaches the one asked for: a sparse in-memory index of chunks (first offset, end offset,
max timestamp) that the owner extends as batches commit, built for the data on disk at
open by the first lookup (a scan that yields to the event loop as it goes).

The reader holds no position of its own: ``positions()`` gives the (log start, high
watermark) the owner published last, read once per call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NoReturn

import attrs
import trio

from sentinel.broker import keys
from sentinel.errors import CorruptionError, DataLoss, InvalidRecordBatch, OffsetOutOfRange
from sentinel.records import RecordBatch
from sentinel.records import batch_format as fmt
from sentinel.storage.sstable import DamagedBlock
from sentinel.storage.store import Store

logger = logging.getLogger(__name__)
_BASE_OFFSET = fmt.BASE_OFFSET
# Bytes of batches per time-index chunk: a lookup by timestamp reads at most about this
# much beyond the answer (and the chunks before it only when their timestamps reach it).
TIME_INDEX_CHUNK_BYTES = 1024 * 1024
# Batches read between two checkpoints of a long scan, so it never blocks the event loop.
SCAN_BATCHES_PER_CHECKPOINT = 64


@attrs.define(slots=True)
class _Chunk:
    first: int  # offset of its first batch
    end: int  # offset after its last batch
    max_timestamp: int
    size: int


@attrs.frozen
class ReadResult:
    data: bytes  # whole record batches, concatenated, verbatim as stored
    next_offset: int  # where the next read should start
    high_watermark: int
    log_start_offset: int


class PartitionReader:
    def __init__(
        self,
        store: Store,
        topic: str,
        topic_id: int,
        partition: int,
        positions: Callable[[], tuple[int, int]],
        *,
        disk_end: int,
    ) -> None:
        self.topic = topic
        self.topic_id = topic_id
        self.partition = partition
        self._store = store
        self._positions = positions
        self._prefix_end = keys.data_key(topic_id, partition, keys.MAX_OFFSET)
        # Damaged table blocks already logged, by (file, byte).
        self._reported_damage: set[tuple[str, int | None]] = set()
        # The time index: chunks of [first, end) offsets in order. ``indexed`` extends it
        # from ``disk_end`` on; what was on disk below it is indexed by the first lookup.
        self._chunks: list[_Chunk] = []
        self._disk_end = disk_end
        start, _hw = positions()
        self._disk_indexed: trio.Event | None = None if disk_end > start else trio.Event()
        if self._disk_indexed is not None:
            self._disk_indexed.set()  # nothing on disk to index

    # -- batches by offset -------------------------------------------------------------

    def read(self, offset: int, max_bytes: int) -> ReadResult:
        """Whole batches from the one holding ``offset`` up to the high watermark, at most
        ``max_bytes`` unless the first batch alone is bigger (it is returned whole, so a
        consumer can always make progress)."""
        start, hw = self._positions()
        if offset < start or offset > hw:
            raise OffsetOutOfRange(
                f"offset {offset} is out of range for {self.topic}[{self.partition}]: "
                # Half-open like every offset range here: {hw} is the next offset to be written,
                # a valid place to wait for new records but not a record yet.
                f"valid offsets are {start} to {hw} ({hw} is the next offset)",
                log_start_offset=start,
                high_watermark=hw,
            )
        parts: list[bytes] = []
        total = 0
        next_offset = offset
        if offset < hw:
            begin = keys.data_key(self.topic_id, self.partition, offset)
            # Batches below the high watermark are contiguous: the first holds ``offset`` and
            # each next one starts right after the previous. Anything else is a hole: data
            # that is missing (a loss accepted at recovery) or in a damaged table block the
            # scan skipped. Refuse it, never skip it silently. What precedes the hole is
            # served first; the read that starts at the hole is refused.
            # A batch that continues the sequence is trusted even after a skipped block:
            # each offset is stored once, so the block cannot hold a batch before it.
            expected = offset
            damaged: list[DamagedBlock] = []
            for key, value in self._store.scan(begin, self._prefix_end, on_damage=damaged.append):
                (base,) = _BASE_OFFSET.unpack_from(value)
                if base > expected:
                    if parts:
                        break
                    self._unreadable(expected, min(base, hw), hw, damaged)
                if base >= hw:
                    break
                if parts and total + len(value) > max_bytes:
                    break
                parts.append(value)
                total += len(value)
                next_offset = expected = keys.parse_data_key(key)[2] + 1  # type: ignore[index]
                if total >= max_bytes:
                    break
            else:
                if next_offset < hw and not parts:
                    self._unreadable(next_offset, hw, hw, damaged)
        return ReadResult(
            data=b"".join(parts), next_offset=next_offset, high_watermark=hw, log_start_offset=start
        )

    def _unreadable(self, first: int, end: int, hw: int, damaged: list[DamagedBlock]) -> NoReturn:
        """Refuse a read at offsets ``first`` to ``end - 1``, which the scan did not find."""
        low = keys.data_key(self.topic_id, self.partition, first)
        high = keys.data_key(self.topic_id, self.partition, end - 1)
        # Batches holding those offsets are keyed (by last offset) within [low, high]: a
        # skipped block whose key range meets that interval explains the hole.
        suspects = [block for block in damaged if block.first_key <= high and block.last_key >= low]
        what = f"offsets {first} to {end - 1} of {self.topic}[{self.partition}]"
        if suspects:
            error = self.report_damage(f"{what} cannot be read", suspects)
            raise DataLoss(f"{what} cannot be read: {error}") from error
        raise DataLoss(
            f"{what} are missing from storage (below the high watermark {hw}); the data was lost, not skipped"
        )

    def report_damage(self, what: str, damaged: list[DamagedBlock]) -> CorruptionError:
        """The error of the first of ``damaged``, logged once per block: damage is the
        operator's to see, and a consumer retrying a refused read must not fill the log."""
        error = min(damaged, key=lambda block: block.first_key).error
        if (error.source, error.position) not in self._reported_damage:
            self._reported_damage.add((error.source, error.position))
            logger.warning("%s: %s", what, error)
        return error

    # -- offsets by timestamp ------------------------------------------------------------

    def indexed(self, first: int, end: int, max_timestamp: int, size: int) -> None:
        """A batch of offsets ``[first, end)`` became readable: extend the time index."""
        self._index(self._chunks, first, end, max_timestamp, size)

    def pruned(self, log_start: int) -> None:
        """Retention moved the log start: forget the chunks wholly below it."""
        gone = 0
        while gone < len(self._chunks) and self._chunks[gone].end <= log_start:
            gone += 1
        del self._chunks[:gone]

    async def offset_for_timestamp(self, timestamp_ms: int) -> tuple[int, int]:
        """The first offset whose record timestamp is >= ``timestamp_ms`` and that
        timestamp; ``(high_watermark, -1)`` when no such record exists. Reads only the
        chunks of the log whose largest timestamp reaches ``timestamp_ms``."""
        chunks = await self._time_index()
        for chunk in chunks:
            start, hw = self._positions()
            if chunk.end <= start or chunk.max_timestamp < timestamp_ms:
                continue
            if chunk.first >= hw:
                break
            found = await self._first_at_or_after(timestamp_ms, max(chunk.first, start), chunk.end)
            if found is not None:
                return found
        return self._positions()[1], -1

    async def _first_at_or_after(self, timestamp_ms: int, first: int, end: int) -> tuple[int, int] | None:
        scanned = 0
        begin = keys.data_key(self.topic_id, self.partition, first)
        for _key, value in self._store.scan(begin, self._prefix_end):
            hw = self._positions()[1]
            batch = RecordBatch(value, verify_crc=False)
            if batch.base_offset >= end or batch.base_offset >= hw:
                return None
            if batch.max_timestamp >= timestamp_ms:
                try:
                    records = batch.decode_records()
                except InvalidRecordBatch:
                    # A damaged batch stored before produce validated records: its header
                    # says a record in it reaches the timestamp. Answer its first offset
                    # (never skip past it); a read from there reports the damage.
                    return max(first, batch.base_offset), batch.max_timestamp
                for record in records:
                    if first <= record.offset < hw and record.timestamp >= timestamp_ms:
                        return record.offset, record.timestamp
            scanned += 1
            if scanned % SCAN_BATCHES_PER_CHECKPOINT == 0:
                await trio.lowlevel.checkpoint()
        return None

    async def _time_index(self) -> list[_Chunk]:
        """The chunks of the whole log (those below the log start may linger until the next
        retention pass prunes them)."""
        if self._disk_indexed is None:
            self._disk_indexed = trio.Event()
            try:
                disk = await self._index_disk()
            except BaseException:
                self._disk_indexed = None  # the next lookup tries again
                raise
            self._chunks[:0] = disk
            self._disk_indexed.set()
        await self._disk_indexed.wait()
        return self._chunks

    async def _index_disk(self) -> list[_Chunk]:
        """Index what was on disk at open: immutable, so a scan across awaits is safe."""
        chunks: list[_Chunk] = []
        scanned = 0
        begin = keys.data_key(self.topic_id, self.partition, self._positions()[0])
        for _key, value in self._store.scan(begin, self._prefix_end):
            batch = RecordBatch(value, verify_crc=False)
            if batch.base_offset >= self._disk_end:
                break
            self._index(chunks, batch.base_offset, batch.next_offset, batch.max_timestamp, len(value))
            scanned += 1
            if scanned % SCAN_BATCHES_PER_CHECKPOINT == 0:
                await trio.lowlevel.checkpoint()
        return chunks

    @staticmethod
    def _index(chunks: list[_Chunk], first: int, end: int, max_timestamp: int, size: int) -> None:
        last = chunks[-1] if chunks else None
        if last is None or last.size >= TIME_INDEX_CHUNK_BYTES:
            chunks.append(_Chunk(first, end, max_timestamp, size))
        else:
            last.end = end
            last.size += size
            if max_timestamp > last.max_timestamp:
                last.max_timestamp = max_timestamp
