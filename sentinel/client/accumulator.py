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
  most ``max_request_bytes`` of estimated size otherwise; each batch it forms holds at most
  ``batch_size`` bytes unless it is a single record.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Generic, TypeVar

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

    __slots__ = ("completions", "first_at", "records", "size", "sizes")

    def __init__(self) -> None:
        self.records: list[RecordTuple] = []
        self.completions: list[C] = []
        self.sizes: list[int] = []
        self.size = 0  # estimated bytes queued
        self.first_at = 0.0  # when the oldest queued record arrived (meaningless when empty)

    def __len__(self) -> int:
        return len(self.records)

    def add(self, record: RecordTuple, completion: C, size: int, now: float, batch_size: int) -> bool:
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


@attrs.frozen
class Drained(Generic[C]):
    """Records taken from a partition queue for one produce request."""

    batches: list[list[RecordTuple]]  # consecutive records, one list per RecordBatch
    completions: list[C]  # one per record, in record order across the batches
    size: int  # estimated bytes, to release once the request is finished

    @property
    def record_count(self) -> int:
        return len(self.completions)


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

    def drain(self, tp: TopicPartition) -> Drained[C] | None:
        """Take the oldest records of ``tp`` for one request; None when its queue is empty."""
        queue = self._queues.get(tp)
        if queue is None or not queue.records:
            return None
        sizes = queue.sizes
        batch_size = self.batch_size
        limit = self.max_request_bytes
        cuts: list[int] = []  # end index of each batch
        batch_bytes = 0
        request_bytes = 0
        taken = 0
        for i, size in enumerate(sizes):
            if batch_bytes and batch_bytes + size > batch_size:
                cuts.append(i)
                batch_bytes = 0
            extra = size + (BATCH_OVERHEAD if batch_bytes == 0 else 0)
            if taken and request_bytes + extra > limit:
                break
            batch_bytes += size
            request_bytes += extra
            taken = i + 1
        if not cuts or cuts[-1] != taken:
            cuts.append(taken)
        records = queue.records
        batches: list[list[RecordTuple]] = []
        start = 0
        for end in cuts:
            if end > taken:
                break
            batches.append(records[start:end])
            start = end
        completions = queue.completions[:taken]
        drained_size = sum(sizes[:taken])
        del records[:taken]
        del queue.completions[:taken]
        del sizes[:taken]
        queue.size -= drained_size
        return Drained(batches, completions, drained_size)

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
        return completions
