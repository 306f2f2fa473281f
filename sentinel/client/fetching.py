"""The consumer's per-partition fetch state, and the decoding of fetch answers.

Synchronous apart from holding the partition's in-flight fetch task: the consumer's
``getmany`` loop owns these objects and is the only code that changes them.

Invariants of a ``PartitionState``:
- ``position`` is the offset of the next record the application gets; None until it is
  looked up (committed offset, else the reset policy).
- ``records[index:]`` were fetched from ``position`` on and not yet returned; taking them
  advances ``position`` past each, and past the whole answer (``after``) once all are taken.
- At most one fetch is in flight (``task``), and only while nothing is read ahead: at most
  one answer per partition is buffered. ``reset`` (a seek) cancels it and drops the buffer.
"""

from __future__ import annotations

import asyncio
from typing import NamedTuple

from sentinel.client.types import ConsumerRecord, TopicPartition
from sentinel.records import iter_batches

__all__ = ["FetchResult", "PartitionState", "records_from_batches"]


class FetchResult(NamedTuple):
    offset: int  # the offset the fetch asked for
    records: list[ConsumerRecord]
    next_offset: int
    high_watermark: int


class PartitionState:
    """One assigned partition: its position and what was read ahead of it."""

    __slots__ = (
        "after",
        "high_watermark",
        "index",
        "position",
        "records",
        "reset_to_policy",
        "retry_at",
        "task",
        "tp",
    )

    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp
        self.position: int | None = None  # None: to be looked up (committed offset / policy)
        self.reset_to_policy = False  # True: skip the committed offset (it was out of range)
        self.records: list[ConsumerRecord] = []  # read ahead; records[index:] not yet returned
        self.index = 0
        self.after = 0  # the position once every read-ahead record is returned
        self.high_watermark: int | None = None
        self.task: asyncio.Task[FetchResult] | None = None
        self.retry_at = 0.0  # loop time before which no fetch is started (backoff)

    def reset(self, position: int | None, *, to_policy: bool = False) -> None:
        if self.task is not None:
            self.task.cancel()
            # Nobody will look at its outcome; a fetch that failed instead of being cancelled
            # (the channel closed first) must not be reported as "never retrieved".
            self.task.add_done_callback(_ignore_outcome)
            self.task = None
        self.records = []
        self.index = 0
        self.position = position
        self.reset_to_policy = to_policy
        self.retry_at = 0.0

    def take(self, limit: int) -> list[ConsumerRecord]:
        """Up to ``limit`` read-ahead records, advancing the position past them."""
        records = self.records
        start = self.index
        end = min(len(records), start + limit)
        chunk = records[start:end]
        if end >= len(records):
            self.records = []
            self.index = 0
            self.position = self.after
        else:
            self.index = end
            self.position = records[end].offset
        return chunk


def _ignore_outcome(task: asyncio.Task[FetchResult]) -> None:
    if not task.cancelled():
        task.exception()


def records_from_batches(tp: TopicPartition, data: bytes, start: int) -> list[ConsumerRecord]:
    """Decode a fetch answer (concatenated batches), skipping records before ``start``.

    The hot path of a consumer: each record is decoded straight into its ConsumerRecord.
    """
    topic, partition = tp
    out: list[ConsumerRecord] = []
    for batch in iter_batches(data):
        if batch.next_offset <= start or batch.is_control_batch:
            continue
        records = batch.decode_tagged(ConsumerRecord, topic, partition)
        if batch.base_offset < start:  # only the first batch of an answer can start early
            records = [r for r in records if r.offset >= start]
        out += records
    return out
