"""The producer's record accumulator: per-partition queues and the buffer-memory account.

Pure and synchronous (no event loop, no clock: callers pass ``now``). The producer's
asyncio shell appends records here, decides when a partition is worth sending (full, or
lingered long enough) and drains it into one produce request.

Sizes are estimates of a record's encoded size (key, value, headers plus a fixed framing
overhead); they drive batching and back-pressure, not the wire format, so they need only be
close and never negative.

Invariants:
- ``buffered`` is the sum of every reservation not yet released; it never exceeds
  ``max_buffer_bytes`` through ``reserve`` when ``can_reserve`` was checked first.
- A partition's records leave its queue in the order they were appended, each with its
  completion handle, so acknowledgements can be matched to records by position.
- A drain takes at least one record (a record larger than a batch travels alone) and at
  most ``max_request_bytes`` of estimated size and ``max_batches`` batches otherwise; each
  batch it forms holds at most ``batch_size`` bytes unless it is a single record, or unless
  ``max_batches`` batches of ``batch_size`` would not hold what is queued: then its batches
  are as large as it takes for the request to carry up to ``max_request_bytes`` anyway
  (an idempotent producer may have only 5 batches in flight, and a request costs far more
  than a batch: the backlog goes in fewer, larger batches rather than in smaller requests).
- A :class:`WholeBatch` (``send_batch``) is a batch of its own: never merged with records.
"""

from __future__ import annotations

import itertools
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


class PartitionQueue(Generic[C]):
    """Records of one partition waiting to be sent, oldest first."""

    __slots__ = ("completions", "first_at", "records", "size", "sizes", "wholes")

    def __init__(self) -> None:
        self.records: list[Entry] = []
        self.completions: list[C] = []
        self.sizes: list[int] = []
        self.size = 0  # estimated bytes queued
        self.first_at = 0.0  # when the oldest queued record arrived (meaningless when empty)
        self.wholes = 0  # WholeBatch entries queued (0: every entry is a record, no checks)

    def __len__(self) -> int:
        return len(self.records)

    def add(self, record: Entry, completion: C, size: int, now: float, batch_size: int) -> bool:
        """``RecordAccumulator.append`` for a caller that holds the queue (the hot path)."""
        records = self.records
        if not records:
            self.first_at = now
        records.append(record)
        self.completions.append(completion)
        self.sizes.append(size)
        before = self.size
        self.size = before + size
        return before == 0 or before < batch_size <= self.size

    def add_whole(self, batch: WholeBatch, completion: C, size: int, now: float, batch_size: int) -> bool:
        """``add`` for a whole batch."""
        self.wholes += 1
        return self.add(batch, completion, size, now, batch_size)


@attrs.frozen
class Drained(Generic[C]):
    """Records taken from a partition queue for one produce request."""

    # Consecutive entries, one list per RecordBatch: records, or a single WholeBatch.
    batches: list[list[Entry]]
    completions: list[C]  # one per entry, in order across the batches
    size: int  # estimated bytes, to release once the request is finished
    wholes: int = 0  # how many of the batches are a WholeBatch

    @property
    def entry_count(self) -> int:
        return len(self.completions)

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
        """Queue a record whose ``size`` is already reserved. True when the partition's sender
        should look again: the record is the first in an empty queue (start lingering), or
        the queue just reached ``batch_size`` (send without lingering)."""
        return self.queue(tp).add(record, completion, size, now, self.batch_size)

    def is_full(self, tp: TopicPartition) -> bool:
        queue = self._queues.get(tp)
        return queue is not None and queue.size >= self.batch_size

    def drain(self, tp: TopicPartition, max_batches: int | None = None) -> Drained[C] | None:
        """Take the oldest records of ``tp`` for one request (at most ``max_batches``
        batches when given); None when its queue is empty."""
        queue = self._queues.get(tp)
        if queue is None or not queue.records:
            return None
        sizes = queue.sizes
        records = queue.records
        wholes = queue.wholes
        batch_size = self.batch_size
        limit = self.max_request_bytes
        if max_batches is not None and queue.size > max_batches * batch_size:
            batch_size = max(batch_size, -(-min(queue.size, limit) // max_batches))
        starts: list[int] = []  # index of each batch's first entry
        open_bytes = -1  # bytes of the batch records may still join; -1: none is open
        request_bytes = 0
        taken = 0
        taken_wholes = 0
        for i, size in enumerate(sizes):
            whole = wholes and type(records[i]) is WholeBatch
            if whole or open_bytes < 0 or open_bytes + size > batch_size:  # starts a batch
                extra = size + BATCH_OVERHEAD
                if taken and (len(starts) == max_batches or request_bytes + extra > limit):
                    break
                starts.append(i)
                open_bytes = -1 if whole else size
                if whole:
                    taken_wholes += 1
            else:
                extra = size
                if request_bytes + extra > limit:
                    break
                open_bytes += size
            request_bytes += extra
            taken = i + 1
        starts.append(taken)
        batches = [records[start:end] for start, end in itertools.pairwise(starts)]
        completions = queue.completions[:taken]
        drained_size = sum(sizes[:taken])
        del records[:taken]
        del queue.completions[:taken]
        del sizes[:taken]
        queue.size -= drained_size
        queue.wholes -= taken_wholes
        return Drained(batches, completions, drained_size, taken_wholes)

    def pending(self) -> list[TopicPartition]:
        """Partitions with queued records."""
        return [tp for tp, queue in self._queues.items() if queue.records]

    def take_all(self, tp: TopicPartition) -> list[C]:
        """Remove every queued record of ``tp`` and release their reservations; returns their
        completions (to fail them)."""
        queue = self._queues.get(tp)
        if queue is None:
            return []
        completions = queue.completions
        self.release(queue.size)
        queue.records, queue.completions, queue.sizes, queue.size = [], [], [], 0
        queue.wholes = 0
        return completions
