"""The producer's record accumulator: per-partition queues and the buffer-memory account.

Pure and synchronous (no event loop, no clock: callers pass ``now``). The producer's
asyncio shell appends records here, decides when a partition is worth sending (full, or
lingered long enough) and drains it into one produce request.

Sizes are estimates of a record's encoded size (key, value, headers plus a fixed framing
overhead); they drive batching and back-pressure, not the wire format, so they need only be
close and never negative.

Completions are kept per *piece*, not per record: a piece is a run of consecutive entries
that share one completion (the producer's ``RecordRun``, which every record future of the
run refers to, or a ``send_batch`` batch's own), each entry with its index in that
completion. Appending a record adds it to the open piece; a drain that takes any of the
open piece closes it, so records appended later start a new one. The hot path thus stores
no per-record object besides the record.

Invariants:
- ``buffered`` is the sum of every reservation not yet released; it never exceeds
  ``max_buffer_bytes`` through ``reserve`` when ``can_reserve`` was checked first.
- A partition's records leave its queue in the order they were appended; the pieces cover
  the queue's entries in order, so acknowledgements can be matched to records by position.
- A drain takes at least one record (a record larger than a batch travels alone) and at
  most ``max_request_bytes`` of estimated size and ``max_batches`` batches otherwise; each
  batch it forms holds at most ``batch_size`` bytes unless it is a single record (Kafka's
  ``batch.size``: the most bytes of one partition's batch; ``max_request_bytes`` bounds the
  request that carries several).
- A :class:`WholeBatch` (``send_batch``) is a batch of its own: never merged with records.
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from collections.abc import Sequence
from typing import Final, Generic, TypeAlias, TypeVar

import attrs

from sentinel.client.types import TopicPartition
from sentinel.records import Header, RecordTuple

C = TypeVar("C")

# Per-record framing beyond key, value and headers in RecordBatch v2: length (<= 5 bytes),
# attributes (1), timestamp delta (usually 1-3), offset delta (1-3), key and value lengths
# (1-3 each) and the header count (1). 16 is a typical record; exactness does not matter.
RECORD_OVERHEAD: Final = 16
# Per-header framing: the name length and value length varints.
HEADER_OVERHEAD: Final = 2
# A RecordBatch v2 header (61 bytes) counts against a request's size.
BATCH_OVERHEAD: Final = 61


class WholeBatch:
    """A RecordBatch encoded by ``send_batch``: queued in place of a record, it travels as a
    batch of its own and resolves its one future with a BatchMetadata."""

    __slots__ = ("count", "data", "timestamp_ms")

    def __init__(self, data: bytes, count: int, timestamp_ms: int) -> None:
        self.data = data
        self.count = count
        self.timestamp_ms = timestamp_ms


# What a partition queue holds: records, and whole batches once send_batch was used.
Entry: TypeAlias = RecordTuple | WholeBatch


def estimate_size(key: bytes | None, value: bytes | None, headers: Sequence[Header]) -> int:
    """The estimated encoded size of one record."""
    size = RECORD_OVERHEAD
    if key is not None:
        size += len(key)
    if value is not None:
        size += len(value)
    for name, header_value in headers:
        size += HEADER_OVERHEAD + len(name) + (len(header_value) if header_value is not None else 0)
    return size


class Piece(Generic[C]):
    """Queued entries ``[start, end)`` of one completion, consecutive in the queue. (An end,
    not a count: the next record's index is ``end``, one read and one write per record.)"""

    __slots__ = ("completion", "end", "start")

    def __init__(self, completion: C, start: int = 0, end: int = 0) -> None:
        self.completion = completion
        self.start = start
        self.end = end


class PartitionQueue(Generic[C]):
    """Records of one partition waiting to be sent, oldest first."""

    __slots__ = ("ends", "first_at", "open", "origin", "pieces", "records", "removed", "size", "wholes")

    def __init__(self) -> None:
        self.records: list[Entry] = []
        # Estimated bytes queued ever, through each entry: a drain finds where batches and
        # requests end by bisection, not by a Python loop over its records.
        self.ends: list[int] = []
        self.origin = 0  # bytes queued ever before the first queued entry
        self.pieces: deque[Piece[C]] = deque()
        #: The piece the next record joins (None: the next record starts one).
        self.open: Piece[C] | None = None
        self.size = 0  # estimated bytes queued
        self.first_at = 0.0  # when the oldest queued record arrived (meaningless when empty)
        self.wholes = 0  # WholeBatch entries queued (0: every entry is a record, no checks)
        self.removed = 0  # entries ever drained or taken (so no per-record count is kept)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def appended(self) -> int:
        """Entries (records, whole batches) ever queued here."""
        return self.removed + len(self.records)

    def open_piece(self, completion: C) -> Piece[C]:
        """Start the piece the next records join (call when ``open`` is None)."""
        piece = Piece(completion)
        self.pieces.append(piece)
        self.open = piece
        return piece

    def add(self, record: Entry, size: int, now: float, batch_size: int) -> bool:
        """Queue a record whose ``size`` is reserved, as the next entry of the open piece
        (its index there is ``open.end`` before the call). True when the
        partition's sender should look again: the record is the first in an empty queue
        (start lingering), or the queue just reached ``batch_size`` (send without
        lingering)."""
        records = self.records
        if not records:
            self.first_at = now
        records.append(record)
        self.open.end += 1  # type: ignore[union-attr]
        before = self.size
        self.size = after = before + size
        self.ends.append(self.origin + after)
        return before == 0 or before < batch_size <= after

    def add_whole(self, batch: WholeBatch, completion: C, size: int, now: float, batch_size: int) -> bool:
        """Queue a whole batch, a piece of its own; the next record starts a new piece."""
        self.wholes += 1
        self.open_piece(completion)
        wake = self.add(batch, size, now, batch_size)
        self.open = None
        return wake


@attrs.frozen
class Drained(Generic[C]):
    """Records taken from a partition queue for one produce request."""

    # Consecutive entries, one list per RecordBatch: records, or a single WholeBatch.
    batches: list[list[Entry]]
    # (completion, first index, entries, records) per piece, in queue order: a whole
    # batch is one entry of many records.
    pieces: list[tuple[C, int, int, int]]
    entry_count: int
    size: int  # estimated bytes, to release once the request is finished
    wholes: int = 0  # how many of the batches are a WholeBatch

    def batch_record_counts(self) -> list[int]:
        """Records per batch (a whole batch counts its records)."""
        if not self.wholes:
            return [len(batch) for batch in self.batches]
        return [batch[0].count if type(batch[0]) is WholeBatch else len(batch) for batch in self.batches]


class RecordAccumulator(Generic[C]):
    """Per-partition queues plus the reservation account of the producer's buffer."""

    def __init__(self, *, batch_size: int, max_buffer_bytes: int, max_request_bytes: int) -> None:
        self.batch_size = batch_size
        self.max_buffer_bytes = max_buffer_bytes
        self.max_request_bytes = max_request_bytes
        self.buffered = 0
        self._queues: dict[TopicPartition, PartitionQueue[C]] = {}

    # -- memory account ------------------------------------------------------------------

    def can_reserve(self, size: int) -> bool:
        return self.buffered + size <= self.max_buffer_bytes

    def reserve(self, size: int) -> None:
        self.buffered += size

    def release(self, size: int) -> None:
        self.buffered -= size
        if self.buffered < 0:
            raise AssertionError(f"released more than was reserved ({self.buffered} bytes)")

    # -- queues ------------------------------------------------------------------------------

    def queue(self, tp: TopicPartition) -> PartitionQueue[C]:
        queue = self._queues.get(tp)
        if queue is None:
            queue = self._queues[tp] = PartitionQueue()
        return queue

    def append(self, tp: TopicPartition, record: RecordTuple, completion: C, size: int, now: float) -> bool:
        """Queue a record whose ``size`` is already reserved, joining the open piece if its
        completion is ``completion`` (else starting one); the wake-up flag of
        :meth:`PartitionQueue.add`. (The producer's hot path calls the queue directly.)"""
        queue = self.queue(tp)
        piece = queue.open
        if piece is None or piece.completion is not completion:
            queue.open_piece(completion)
        return queue.add(record, size, now, self.batch_size)

    def is_full(self, tp: TopicPartition) -> bool:
        queue = self._queues.get(tp)
        return queue is not None and queue.size >= self.batch_size

    def drain(
        self, tp: TopicPartition, max_batches: int | None = None, *, full_only: bool = False
    ) -> Drained[C] | None:
        """Take the oldest records of ``tp`` for one request (at most ``max_batches``
        batches when given); None when its queue is empty. With ``full_only`` a last batch
        that ends with the queue stays queued (it may still fill up) unless it is the only
        one."""
        queue = self._queues.get(tp)
        if queue is None or not queue.records:
            return None
        records = queue.records
        if queue.wholes:
            taken, starts = self._cut_entries(queue, max_batches, full_only)
        else:
            taken, starts = self._cut_records(queue, max_batches, full_only)
        batches = [records[start:end] for start, end in itertools.pairwise(starts)]
        taken_wholes = sum(1 for batch in batches if type(batch[0]) is WholeBatch) if queue.wholes else 0
        ends = queue.ends
        drained_size = ends[taken - 1] - queue.origin
        pieces = self._take_pieces(queue, records, taken)
        queue.origin = ends[taken - 1]
        del records[:taken]
        del ends[:taken]
        queue.removed += taken
        queue.size -= drained_size
        queue.wholes -= taken_wholes
        return Drained(batches, pieces, taken, drained_size, taken_wholes)

    def _cut_records(
        self, queue: PartitionQueue[C], max_batches: int | None, full_only: bool
    ) -> tuple[int, list[int]]:
        """Where a drain of records alone ends, and where its batches start (then the end):
        one bisection per batch."""
        ends = queue.ends
        count = len(ends)
        origin = queue.origin
        batch_size = self.batch_size
        # A request of b batches takes the entries whose running count is at most this
        # less b batch headers.
        request_end = origin + self.max_request_bytes
        starts: list[int] = []
        position = 0
        base = origin  # bytes queued ever before the batch being cut
        while position < count and len(starts) != max_batches:
            room = request_end - (len(starts) + 1) * BATCH_OVERHEAD
            full_end = bisect.bisect_right(ends, base + batch_size, position)
            end = bisect.bisect_right(ends, room, position, full_end)
            if end == position:
                # A record larger than a batch goes in a batch of its own; the first record
                # of a request goes whatever the limits.
                if not starts or (full_end == position and ends[position] <= room):
                    end = position + 1
                else:
                    break
            elif full_only and end == count == full_end and starts:
                break  # the open last batch waits for more records
            starts.append(position)
            base = ends[end - 1]
            position = end
        starts.append(position)
        return position, starts

    def _cut_entries(
        self, queue: PartitionQueue[C], max_batches: int | None, full_only: bool
    ) -> tuple[int, list[int]]:
        """``_cut_records`` for a queue that holds whole batches: entry by entry."""
        records = queue.records
        batch_size = self.batch_size
        limit = self.max_request_bytes
        starts: list[int] = []  # index of each batch's first entry
        open_bytes = -1  # bytes of the batch records may still join; -1: none is open
        request_bytes = 0
        taken = 0
        previous = queue.origin
        for i, end in enumerate(queue.ends):
            size = end - previous
            previous = end
            whole = type(records[i]) is WholeBatch
            if whole or open_bytes < 0 or open_bytes + size > batch_size:  # starts a batch
                extra = size + BATCH_OVERHEAD
                if taken and (len(starts) == max_batches or request_bytes + extra > limit):
                    break
                starts.append(i)
                open_bytes = -1 if whole else size
            else:
                extra = size
                if request_bytes + extra > limit:
                    break
                open_bytes += size
            request_bytes += extra
            taken = i + 1
        if full_only and taken == len(records) and len(starts) > 1 and open_bytes >= 0:
            taken = starts.pop()  # the open last batch waits for more records
        starts.append(taken)
        return taken, starts

    @staticmethod
    def _take_pieces(
        queue: PartitionQueue[C], records: list[Entry], taken: int
    ) -> list[tuple[C, int, int, int]]:
        """The pieces of the first ``taken`` entries, leaving the rest queued. A drain that
        takes any of the open piece closes it."""
        pieces: list[tuple[C, int, int, int]] = []
        queued = queue.pieces
        position = 0  # queue index of the current piece's first entry
        while position < taken:
            piece = queued[0]
            available = piece.end - piece.start
            n = min(available, taken - position)
            entry = records[position]
            record_count = entry.count if n == 1 and isinstance(entry, WholeBatch) else n
            pieces.append((piece.completion, piece.start, n, record_count))
            if piece is queue.open:
                queue.open = None
            if n == available:
                queued.popleft()
            else:
                piece.start += n
            position += n
        return pieces

    def pending(self) -> list[TopicPartition]:
        """Partitions with queued records."""
        return [tp for tp, queue in self._queues.items() if queue.records]

    def take_all(self, tp: TopicPartition) -> list[tuple[C, int, int, int]]:
        """Remove every queued record of ``tp`` and release their reservations; returns
        their pieces (to fail them)."""
        queue = self._queues.get(tp)
        if queue is None:
            return []
        pieces = self._take_pieces(queue, queue.records, len(queue.records))
        self.release(queue.size)
        queue.origin += queue.size
        queue.removed += len(queue.records)
        queue.records, queue.ends, queue.size = [], [], 0
        queue.wholes = 0
        return pieces
