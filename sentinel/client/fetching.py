"""The consumer's per-partition fetch state, and the decoding of fetch answers.

Synchronous apart from holding the partition's in-flight fetch task: the consumer's
``getmany`` loop owns these objects and is the only code that changes them.

Invariants of a ``PartitionState``:
- ``position`` is the offset of the next record the application gets; None until it is
  looked up (committed offset, else the reset policy).
- ``records[index:]`` were fetched from ``position`` on and not yet returned; taking them
  advances ``position`` past each, and past the whole answer (``after``) once all are taken.
- At most one fetch is in flight (``task``), never while an ``error`` is kept. It asks for
  ``fetch_offset()``: ``after`` while records are read ahead (the answer after the buffered
  one, fetched while the application works through the buffer: pipelining), else
  ``position``. A finished fetch waits in its task until the buffer is empty, so at most
  two answers per partition are held, and records always come out in offset order.
  ``reset`` (a seek) cancels the fetch and drops the buffer and the error.
- ``error`` is what stopped the decoding of the last answer (a damaged stored batch),
  kept until every record decoded before it is taken; ``after`` is then the offset it
  names, so the position stops exactly at the damage and a commit never passes it.
"""

from __future__ import annotations

import asyncio
from typing import NamedTuple

from sentinel.client.errors import CorruptRecordBatch
from sentinel.client.types import ConsumerRecord, TopicPartition
from sentinel.errors import DataLoss, FailedPrecondition, InvalidRecordBatch, SentinelError
from sentinel.records import RecordBatch, iter_batches

__all__ = [
    "DecodedAnswer",
    "FetchResult",
    "PartitionState",
    "decode_answer",
    "read_error",
    "records_from_batches",
]


class FetchResult(NamedTuple):
    offset: int  # the offset the fetch asked for
    records: list[ConsumerRecord]
    next_offset: int  # with an error: the offset the error names
    high_watermark: int
    error: SentinelError | None = None  # what stopped decoding, after ``records``


class PartitionState:
    """One assigned partition: its position and what was read ahead of it."""

    __slots__ = (
        "after",
        "error",
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
        self.error: SentinelError | None = None  # raised once records[index:] are taken

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
        self.error = None

    def fetch_offset(self) -> int | None:
        """Where the next fetch reads from: past the read-ahead records, else the position."""
        return self.after if self.records else self.position

    def pop_error(self) -> SentinelError | None:
        """The kept error once nothing decoded before it is left to take (and forget it:
        the next fetch from the same position meets the damage again and reports it anew)."""
        error = self.error
        if error is None or self.records:
            return None
        self.error = None
        return error

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


class DecodedAnswer(NamedTuple):
    records: list[ConsumerRecord]
    error: SentinelError | None = None  # the batch that did not decode, after ``records``
    error_offset: int = -1  # the first offset not delivered because of ``error``


def decode_answer(tp: TopicPartition, data: bytes, start: int) -> DecodedAnswer:
    """Decode a fetch answer (concatenated batches), skipping records before ``start``.

    Every record before a batch that does not decode is returned, with the error naming
    the partition and the offset where the damage starts: the consumer delivers those
    records first and reports the damage after them. The hot path of a consumer: each
    record is decoded straight into its ConsumerRecord.
    """
    topic, partition = tp
    out: list[ConsumerRecord] = []
    expected = start  # the first offset not yet accounted for
    batches = iter_batches(data)
    while True:
        try:
            batch = next(batches, None)
        except InvalidRecordBatch as exc:  # a header, length or CRC check failed
            error = CorruptRecordBatch(topic, partition, expected, None, str(exc))
            return DecodedAnswer(out, error, expected)
        if batch is None:
            return DecodedAnswer(out)
        if batch.next_offset <= start:
            continue
        if not batch.is_control_batch:
            try:
                records = batch.decode_tagged(ConsumerRecord, topic, partition)
            except InvalidRecordBatch as exc:
                at = max(start, batch.base_offset)
                return DecodedAnswer(out, _undecodable(tp, at, batch, exc), at)
            if batch.base_offset < start:  # only the first batch of an answer can start early
                records = [r for r in records if r.offset >= start]
            out += records
        expected = batch.next_offset


def _undecodable(
    tp: TopicPartition, offset: int, batch: RecordBatch, exc: InvalidRecordBatch
) -> SentinelError:
    topic, partition = tp
    if not batch.compression.is_available():
        # Nothing is damaged: this process lacks the codec's package (the message says which).
        where = f"topic {topic!r} partition {partition} at offset {offset}"
        return FailedPrecondition(f"cannot decode {where}: {exc}")
    return CorruptRecordBatch(topic, partition, offset, (batch.base_offset, batch.last_offset), str(exc))


def records_from_batches(tp: TopicPartition, data: bytes, start: int) -> list[ConsumerRecord]:
    """The records of a fetch answer from ``start`` on; raises if any batch does not decode."""
    decoded = decode_answer(tp, data, start)
    if decoded.error is not None:
        raise decoded.error
    return decoded.records


def read_error(exc: SentinelError, tp: TopicPartition, offset: int) -> SentinelError:
    """A fetch's error with the topic, partition and offset it was reading, when the broker
    reported missing or damaged stored data (DATA_LOSS: the message names the offsets, and
    the file and byte of any damage) or failed itself (INTERNAL and other statuses without
    a Sentinel meaning): the same error, otherwise."""
    if isinstance(exc, DataLoss) or type(exc) is SentinelError:
        return type(exc)(f"cannot read topic {tp.topic!r} partition {tp.partition} at offset {offset}: {exc}")
    return exc
