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
import contextlib
import itertools
import os
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Final, Generic, TypeAlias, TypeVar

import attrs

from sentinel.client import appending as _appending_imported
from sentinel.client.types import TopicPartition
from sentinel.records import Header, RecordTuple
from sentinel.records.decoder import builds_of

C = TypeVar("C")

# The per-partition queue (``Piece``, ``PartitionQueue``) lives with the per-record step of
# ``Producer.send`` in ``sentinel.client.appending``, which mypyc compiles: its build when that
# was built from this very source, else the source (like the consumer's
# ``sentinel.client.partition``). A producer takes its queues, runs, futures and per-record
# step from the build in use when it is created (``appending``); tests run both.
_APPENDING_SOURCE: Final = os.path.join(os.path.dirname(__file__), "appending.py")


def appending_builds() -> dict[str, ModuleType]:
    """The builds of ``sentinel.client.appending`` at hand: "source" always, "compiled" when
    a fresh mypyc build is installed."""
    return builds_of(_appending_imported, _APPENDING_SOURCE, "sentinel.client._appending_source")


appending: ModuleType = appending_builds().get("compiled") or appending_builds()["source"]


@contextlib.contextmanager
def using_appending(module: ModuleType) -> Iterator[None]:
    """Producers and accumulators created inside the block use ``module`` (a value of
    ``appending_builds()``): for tests."""
    global appending
    previous, appending = appending, module
    try:
        yield
    finally:
        appending = previous


# Per-record framing beyond key, value and headers (see sentinel.client.appending).
RECORD_OVERHEAD: Final[int] = appending.RECORD_OVERHEAD

if TYPE_CHECKING:
    from sentinel.client.appending import BufferAccount, PartitionQueue, Piece
else:  # the build in use at import
    BufferAccount = appending.BufferAccount
    PartitionQueue = appending.PartitionQueue
    Piece = appending.Piece


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

    def __init__(
        self,
        *,
        batch_size: int,
        max_buffer_bytes: int,
        max_request_bytes: int,
        build: ModuleType | None = None,
    ) -> None:
        #: The build of ``sentinel.client.appending`` whose queues this holds (the one in
        #: use when created, unless given).
        self.build = appending if build is None else build
        self.batch_size = batch_size
        self.max_request_bytes = max_request_bytes
        #: The memory account (``buffered`` of ``max_buffer_bytes``), a native object in the
        #: compiled build: ``Producer.send``'s fast path reserves out of it directly.
        self.account: BufferAccount = self.build.BufferAccount(max_buffer_bytes)
        self._queues: dict[TopicPartition, PartitionQueue[C]] = {}

    # -- memory account ------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Bytes reserved and not yet released."""
        return self.account.buffered

    @property
    def max_buffer_bytes(self) -> int:
        return self.account.max_buffer_bytes

    def can_reserve(self, size: int) -> bool:
        account = self.account
        return account.buffered + size <= account.max_buffer_bytes

    def reserve(self, size: int) -> None:
        self.account.buffered += size

    def release(self, size: int) -> None:
        account = self.account
        account.buffered -= size
        if account.buffered < 0:
            raise AssertionError(f"released more than was reserved ({account.buffered} bytes)")

    # -- queues ------------------------------------------------------------------------------

    def queue(self, tp: TopicPartition) -> PartitionQueue[C]:
        queue = self._queues.get(tp)
        if queue is None:
            queue = self._queues[tp] = self.build.PartitionQueue()
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
        if full_only and taken == len(records) and len(starts) > 1 and 0 <= open_bytes <= batch_size:
            # The open last batch waits for more records (a record larger than a batch is a
            # full batch on its own: it goes, as _cut_records sends it).
            taken = starts.pop()
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
