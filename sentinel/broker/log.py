"""The partition log: the one interface a partition's records are written and read through.

The broker appends and reads through :class:`PartitionLog`; today it is implemented by
:class:`LocalPartitionLog` on the node's storage engine, and the Raft issue implements the
same interface with a (single- or multi-voter) Raft group whose log IS the partition log.

Invariants of every implementation:

* offsets are assigned by the log, contiguous and monotonic: each appended batch gets the
  base offset that follows the previous batch's last offset, with no gaps;
* the high watermark is the end of the acknowledged-durable prefix (with Raft: the commit
  index); readers never see past it, so a consumer sees only data that survives a crash;
* ``log_start_offset`` only moves forward (retention); records below it are gone;
* a read never skips: offsets below the high watermark that storage does not hold (a loss
  accepted at recovery) or holds in a damaged block are refused with ``DataLoss`` naming
  them (and the file and byte of the damage), once what precedes them has been served.

LocalPartitionLog stores each batch verbatim under a key holding its LAST offset
(``keys.py``), so a fetch from offset N is one seek. A lookup by timestamp reads only the
~1 MiB chunks of the log whose largest timestamp reaches the one asked for: a sparse
in-memory index of chunks (first offset, end offset, max timestamp) that appends extend,
built for the data on disk at open by the first lookup (a scan that yields to the event
loop as it goes). The offset counter and the
partition's byte size are written in the same atomic write batch as the data, so a crash
can never leave them disagreeing. Offsets are assigned and the write is enqueued in one
synchronous step, so concurrent appends reach the storage engine in offset order.

A refused write (:class:`WriteRefused`: a full disk, or storage that needs repair) fails an
append without leaving a hole: the storage engine fails every batch submitted before it
reported the failure (its write epochs), so the failed appends are always a suffix of
those in flight, and the first failure reported takes the log's end back to that append's
base offset (the others, of the same *generation*, only confirm it). The next append
reuses those offsets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import NoReturn, Protocol

import attrs
import outcome
import trio

from sentinel.actors import ObservedReply
from sentinel.broker import keys
from sentinel.errors import (
    CorruptionError,
    DataLoss,
    InvalidArgument,
    InvalidRecordBatch,
    OffsetOutOfRange,
    WriteRefused,
)
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
class AppendResult:
    base_offset: int
    last_offset: int
    log_append_time_ms: int  # -1: records keep their create time


@attrs.frozen
class ReadResult:
    data: bytes  # whole record batches, concatenated, verbatim as stored
    next_offset: int  # where the next read should start
    high_watermark: int
    log_start_offset: int


class PartitionLog(Protocol):
    topic: str
    partition: int

    @property
    def high_watermark(self) -> int: ...

    @property
    def log_end_offset(self) -> int: ...

    @property
    def log_start_offset(self) -> int: ...

    async def append(self, batches: Sequence[RecordBatch], *, wait: bool = True) -> AppendResult: ...

    def read(self, offset: int, max_bytes: int) -> ReadResult: ...

    async def wait_for_data(self, offset: int) -> None: ...


class LocalPartitionLog:
    """A partition log on the node's storage engine (the single-node implementation)."""

    def __init__(
        self,
        store: Store,
        topic: str,
        topic_id: int,
        partition: int,
        state: keys.PartitionState,
        *,
        on_append: Callable[[int, int], None] | None = None,
    ) -> None:
        self.topic = topic
        self.topic_id = topic_id
        self.partition = partition
        self._store = store
        self._next = state.next_offset
        self._start = state.log_start_offset
        self._size = state.size_bytes
        self._hw = state.next_offset  # everything on disk at open is durable
        self._data_arrived = trio.Event()
        self._state_key = keys.state_key(topic_id, partition)
        self._prefix_start = keys.data_key(topic_id, partition, 0)
        self._prefix_end = keys.data_key(topic_id, partition, keys.MAX_OFFSET)
        self._on_append = on_append
        # Bumped when a failed append takes the end back: later failures of appends made
        # before that are the same failure (see the module docstring).
        self._generation = 0
        # Bytes ever appended (in memory): a rollback takes ``_size`` back by what was
        # appended since the failed append, whatever retention did meanwhile.
        self._appended_bytes = 0
        self.closed = False
        # Damaged table blocks already logged, by (file, byte).
        self._reported_damage: set[tuple[str, int | None]] = set()
        # The time index: chunks of [first, end) offsets in order. Appends extend it from the
        # end offset at open; what was on disk then is indexed by the first lookup.
        self._chunks: list[_Chunk] = []
        self._disk_end = state.next_offset
        self._disk_indexed: trio.Event | None = None if state.next_offset > self._start else trio.Event()
        if self._disk_indexed is not None:
            self._disk_indexed.set()  # nothing on disk to index

    # -- positions ---------------------------------------------------------------------

    @property
    def high_watermark(self) -> int:
        return self._hw

    @property
    def log_end_offset(self) -> int:
        return self._next

    @property
    def log_start_offset(self) -> int:
        return self._start

    @property
    def size_bytes(self) -> int:
        return self._size

    def _state(self) -> bytes:
        return keys.encode_state(keys.PartitionState(self._next, self._start, self._size))

    # -- writes ------------------------------------------------------------------------

    async def append(self, batches: Sequence[RecordBatch], *, wait: bool = True) -> AppendResult:
        """Assign offsets to validated batches and store them; with ``wait``, return once
        they are durable under the storage sync mode (and so below the high watermark)."""
        if not batches:
            raise InvalidArgument("a produce request needs at least one record batch")
        for batch in batches:
            if batch.record_count <= 0:
                raise InvalidArgument("record batch holds no records")
        base = offset = self._next
        size = 0
        ops: list[tuple[bytes, bytes | None]] = []
        topic_id, partition = self.topic_id, self.partition
        for batch in batches:
            last = offset + batch.last_offset_delta
            data = batch.data if batch.base_offset == offset else batch.with_base_offset(offset)
            ops.append((keys.data_key(topic_id, partition, last), data))
            size += len(data)
            self._index(self._chunks, offset, last + 1, batch.max_timestamp, len(data))
            offset = last + 1
        self._next = offset
        self._size += size
        appended_before = self._appended_bytes
        self._appended_bytes += size
        ops.append((self._state_key, self._state()))
        end = offset
        generation = self._generation

        def settled(result: outcome.Outcome[int]) -> None:
            if isinstance(result, outcome.Value):
                if end > self._hw:
                    self._hw = end
                    self._data_arrived.set()
                    self._data_arrived = trio.Event()
                if self._on_append is not None:
                    self._on_append(end - base, size)
            elif isinstance(result, outcome.Error) and isinstance(result.error, WriteRefused):
                if generation == self._generation:
                    self._roll_back(base, appended_before)

        reply: ObservedReply[int] = ObservedReply(settled)
        # Shielded: once offsets are assigned the write must be enqueued, or the log would
        # have a gap. It only waits while the engine applies back-pressure.
        with trio.CancelScope(shield=True):
            await self._store.submit(ops, reply)
        if wait:
            await reply.wait()
        return AppendResult(base_offset=base, last_offset=end - 1, log_append_time_ms=-1)

    def _roll_back(self, base: int, appended_before: int) -> None:
        """The append at ``base`` failed, and with it every later one in flight: the log
        ends at ``base`` again (nothing from there on was stored)."""
        self._generation += 1
        self._next = base
        self._size -= self._appended_bytes - appended_before
        self._appended_bytes = appended_before
        while self._chunks and self._chunks[-1].first >= base:
            self._chunks.pop()
        if self._chunks and self._chunks[-1].end > base:
            # Its size and largest timestamp may still count the failed batches: an
            # overestimate only makes a lookup read a little more.
            self._chunks[-1].end = base

    # -- reads -------------------------------------------------------------------------

    def read(self, offset: int, max_bytes: int) -> ReadResult:
        """Whole batches from the one holding ``offset`` up to the high watermark, at most
        ``max_bytes`` unless the first batch alone is bigger (it is returned whole, so a
        consumer can always make progress)."""
        hw, start = self._hw, self._start
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
                    self._unreadable(expected, min(base, hw), damaged)
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
                    self._unreadable(next_offset, hw, damaged)
        return ReadResult(
            data=b"".join(parts), next_offset=next_offset, high_watermark=hw, log_start_offset=start
        )

    def _unreadable(self, first: int, end: int, damaged: list[DamagedBlock]) -> NoReturn:
        """Refuse a read at offsets ``first`` to ``end - 1``, which the scan did not find."""
        low = keys.data_key(self.topic_id, self.partition, first)
        high = keys.data_key(self.topic_id, self.partition, end - 1)
        # Batches holding those offsets are keyed (by last offset) within [low, high]: a
        # skipped block whose key range meets that interval explains the hole.
        suspects = [block for block in damaged if block.first_key <= high and block.last_key >= low]
        what = f"offsets {first} to {end - 1} of {self.topic}[{self.partition}]"
        if suspects:
            error = self._report_damage(f"{what} cannot be read", suspects)
            raise DataLoss(f"{what} cannot be read: {error}") from error
        raise DataLoss(
            f"{what} are missing from storage (below the high watermark {self._hw}); "
            "the data was lost, not skipped"
        )

    def _report_damage(self, what: str, damaged: list[DamagedBlock]) -> CorruptionError:
        """The error of the first of ``damaged``, logged once per block: damage is the
        operator's to see, and a consumer retrying a refused read must not fill the log."""
        error = min(damaged, key=lambda block: block.first_key).error
        if (error.source, error.position) not in self._reported_damage:
            self._reported_damage.add((error.source, error.position))
            logger.warning("%s: %s", what, error)
        return error

    async def wait_for_data(self, offset: int) -> None:
        """Return once the high watermark is past ``offset`` (or the log is closed)."""
        while self._hw <= offset and not self.closed:
            await self._data_arrived.wait()

    def close(self) -> None:
        """Wake every waiting reader (the topic was deleted or the broker stops)."""
        self.closed = True
        self._data_arrived.set()

    async def offset_for_timestamp(self, timestamp_ms: int) -> tuple[int, int]:
        """The first offset whose record timestamp is >= ``timestamp_ms`` and that
        timestamp; ``(high_watermark, -1)`` when no such record exists. Reads only the
        chunks of the log whose largest timestamp reaches ``timestamp_ms``."""
        chunks = await self._time_index()
        for chunk in chunks:
            start, hw = self._start, self._hw
            if chunk.end <= start or chunk.max_timestamp < timestamp_ms:
                continue
            if chunk.first >= hw:
                break
            found = await self._first_at_or_after(timestamp_ms, max(chunk.first, start), chunk.end)
            if found is not None:
                return found
        return self._hw, -1

    async def _first_at_or_after(self, timestamp_ms: int, first: int, end: int) -> tuple[int, int] | None:
        scanned = 0
        begin = keys.data_key(self.topic_id, self.partition, first)
        for _key, value in self._store.scan(begin, self._prefix_end):
            batch = RecordBatch(value, verify_crc=False)
            if batch.base_offset >= end or batch.base_offset >= self._hw:
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
                    if first <= record.offset < self._hw and record.timestamp >= timestamp_ms:
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
        begin = keys.data_key(self.topic_id, self.partition, self._start)
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

    # -- retention ---------------------------------------------------------------------

    async def apply_retention(
        self, *, retention_ms: int, retention_bytes: int, now_ms: int | None = None
    ) -> int:
        """Move the log start past batches older than ``retention_ms`` or beyond
        ``retention_bytes`` (0 disables either). The batches themselves are dropped by the
        storage engine's compaction (the broker's compaction filter), not rewritten here.
        Returns the number of records removed."""
        if retention_ms <= 0 and retention_bytes <= 0:
            return 0
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        new_start, size = self._start, self._size
        begin = keys.data_key(self.topic_id, self.partition, self._start)
        damaged: list[DamagedBlock] = []
        scan = self._store.scan(begin, self._prefix_end, on_damage=damaged.append)
        for scanned, (key, value) in enumerate(scan, 1):
            if scanned % SCAN_BATCHES_PER_CHECKPOINT == 0:
                await trio.lowlevel.checkpoint()  # a long backlog never blocks the event loop
            batch = RecordBatch(value, verify_crc=False)
            if batch.next_offset > self._hw:
                break  # never delete what is not yet durable
            if damaged and batch.base_offset > new_start:
                # A damaged block holds what precedes this batch: its age and size cannot be
                # read, so it stays (with everything after it) until an operator decides.
                self._report_damage(
                    f"retention of {self.topic}[{self.partition}] stops at offset {new_start}", damaged
                )
                break
            too_old = retention_ms > 0 and batch.max_timestamp < now_ms - retention_ms
            too_big = retention_bytes > 0 and size > retention_bytes
            if not (too_old or too_big):
                break
            new_start = keys.parse_data_key(key)[2] + 1  # type: ignore[index]
            size -= len(value)
        removed = new_start - self._start
        if removed > 0:
            old_start, removed_bytes = self._start, self._size - size
            self._start, self._size = new_start, size
            try:
                await self._store.write([(self._state_key, self._state())])
            except WriteRefused:
                # Not durable: keep the data readable (and out of the compaction filter's
                # reach) until a later pass can record the new start.
                self._start = old_start
                self._size += removed_bytes
                raise
            gone = 0
            while gone < len(self._chunks) and self._chunks[gone].end <= new_start:
                gone += 1
            del self._chunks[:gone]
        return removed
