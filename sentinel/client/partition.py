"""A consumer's per-partition state and its ``async for`` step: compiled with mypyc.

``PartitionState`` holds one assigned partition's position and what was read ahead of it;
``RecordIterator`` is what ``async for record in consumer`` steps through. ``setup.py``
compiles this module with mypyc (like ``sentinel.records.decode``): the ``async for`` step
reads and writes a ``PartitionState`` for every record, and compiled together the two make
a step about twice as cheap as in Python (where the coroutine of ``__anext__`` and the
attribute look-ups were a third of a consumed record's client CPU). The consumer uses the
compiled build only when it was built from this very source (``sentinel.client.fetching``
picks the build), and the consumer tests run against both builds.

Synchronous apart from holding the partition's in-flight fetch tasks: the consumer's
``getmany`` loop owns these objects and is the only code that changes them (the ``async
for`` step runs on the application's task too, between ``getmany`` calls).

``async for``: ``RecordIterator.__anext__`` hands out the next decoded record of the
partition the last record came from (``Consumer._iter_state``, None unless the consumer is
open), with the consumer's bookkeeping (a kept error, a rebalance, auto-commit, close) left
to ``Consumer._next_record`` whenever any of it may be due.

Invariants of a ``PartitionState``:
- ``position`` is the offset of the next record the application gets; None until it is
  looked up (committed offset, else the reset policy). While decoded records remain it is
  ``records[index].offset`` by construction (a property), so handing out a record moves
  ``index`` alone.
- ``records[index:]`` (decoded), then the rest of ``cursor``'s batch (checked, not yet
  decoded), then ``batches`` (scanned only) were fetched from ``position`` on and not yet
  returned; ``records`` is empty rather than used up, ``cursor`` None rather than done. Taking
  records advances ``position`` past each, and past the whole answer (``after``) once all
  are taken. Records of the first batch before ``skip_before`` (the offset the answer was
  fetched from) are not returned: a batch is fetched whole.
- ``fetches`` are this partition's fetches in offset order, in flight or finished and not
  yet taken: at most ``FETCH_DEPTH``, none started while an ``error`` is kept. The first
  reads from ``after`` while records are read ahead, else from ``position``; each next one
  from where the answer before it ended, started as soon as that answer arrived (so the
  broker works on it while the application handles the buffered answer: pipelining). A
  finished fetch waits in the queue until the buffer is empty, so at most ``FETCH_DEPTH``
  + 1 answers per partition are held and records come out in offset order; a fetch that no
  longer starts at ``position`` is dropped with those after it. ``reset`` (a seek) cancels
  the fetches and drops the buffer and the error.
- ``error`` is what stopped the decoding of the answer (a damaged stored batch, found by
  the scan or when its turn to be decoded came), kept until every record before it is
  taken; ``after`` is then the offset it names, so the position stops exactly at the
  damage and a commit never passes it.

Only mypyc-compatible constructs here (see ``sentinel/records/decode.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, Final, NamedTuple

from sentinel.client.errors import CorruptRecordBatch
from sentinel.client.types import ConsumerRecord, TopicPartition
from sentinel.errors import FailedPrecondition, InvalidRecordBatch, SentinelError
from sentinel.records import RecordBatch
from sentinel.records.batch import TaggedRecordCursor

if TYPE_CHECKING:
    from sentinel.client.consumer import Consumer

__all__ = [
    "DECODE_AT_LEAST",
    "FETCH_DEPTH",
    "Fetch",
    "FetchResult",
    "PartitionState",
    "RecordIterator",
    "undecodable",
]


# Fetches of one partition in flight or waiting to be taken. Two: the round trip of a 1 MiB
# answer (the broker's work, then the transfer) took longer than the application's work on
# the answer before it, so with one the consumer waited on every answer; with two the broker
# works on the next answer while this one travels.
FETCH_DEPTH: Final = 2

# Records are decoded at least this many at a time (``async for`` takes them one by one):
# enough to amortise a decoder call, few enough to be freed before the collector runs (its
# first generation is collected every 700 allocations). Kafka's default max.poll.records.
DECODE_AT_LEAST: Final = 500


class FetchResult(NamedTuple):
    offset: int  # the offset the fetch asked for
    batches: list[RecordBatch]  # scanned, not decoded (see ``scan_answer``)
    next_offset: int  # with an error: the offset the error names
    high_watermark: int
    error: SentinelError | None = None  # what stopped the scan, after ``batches``


class Fetch(NamedTuple):
    offset: int  # where it reads from
    task: asyncio.Task[FetchResult]


class PartitionState:
    """One assigned partition: its position and what was read ahead of it."""

    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp
        self._position: int | None = None  # ``position`` once no decoded record remains
        self.reset_to_policy = False  # True: skip the committed offset (it was out of range)
        self.records: list[ConsumerRecord] = []  # decoded; records[index:] not yet returned
        self.index = 0
        self.batches: deque[RecordBatch] = deque()  # read ahead, not yet decoded at all
        self.cursor: TaggedRecordCursor[ConsumerRecord] | None = None  # the batch being decoded
        self.skip_before = 0  # the offset the buffered answer was fetched from
        self.after = 0  # the position once every read-ahead record is returned
        self.high_watermark: int | None = None
        self.fetches: deque[Fetch] = deque()  # in flight or finished, in offset order
        self.retry_at = 0.0  # loop time before which no fetch is started (backoff)
        self.error: SentinelError | None = None  # raised once nothing before it is left

    @property
    def position(self) -> int | None:
        """The offset of the next record the application gets; None: to be looked up."""
        records = self.records
        if records:
            return records[self.index].offset
        return self._position

    @position.setter
    def position(self, value: int | None) -> None:
        self._position = value

    def reset(self, position: int | None, *, to_policy: bool = False) -> None:
        self.drop_fetches()
        self.records = []
        self.index = 0
        self.cursor = None
        self.batches.clear()
        self.position = position
        self.reset_to_policy = to_policy
        self.retry_at = 0.0
        self.error = None

    def buffered(self) -> bool:
        """Records read ahead and not yet returned (decoded or not)."""
        return bool(self.records) or self.cursor is not None or bool(self.batches)

    def drop_fetches(self) -> None:
        for fetch in self.fetches:
            fetch.task.cancel()
            # Nobody will look at its outcome; a fetch that failed instead of being cancelled
            # (the channel closed first) must not be reported as "never retrieved".
            fetch.task.add_done_callback(_ignore_outcome)
        self.fetches.clear()

    def next_fetch_offset(self) -> int | None:
        """Where the next fetch reads from, or None when none is to start now: the queue is
        full, an error is kept, the position is unknown, or the last fetch has not ended in
        an answer with records (still in flight, failed, damaged, or at the log's end: a
        long poll is not chained)."""
        if self.error is not None:
            return None
        fetches = self.fetches
        if not fetches:
            return self.after if self.buffered() else self.position
        last = fetches[-1].task
        if len(fetches) >= FETCH_DEPTH or not last.done() or last.cancelled() or last.exception():
            return None
        result = last.result()
        if result.error is not None or not result.batches:
            return None
        return max(result.batches[-1].next_offset, result.next_offset)

    def buffer(self, result: FetchResult) -> None:
        """Take in a fetch answer that starts at ``position`` while nothing is buffered."""
        self.high_watermark = result.high_watermark
        if result.batches:
            self.batches.extend(result.batches)
            self.skip_before = result.offset
            self.after = max(result.batches[-1].next_offset, result.next_offset)
        elif result.next_offset > result.offset:
            self.position = result.next_offset  # batches with nothing left to return
        self.error = result.error  # raised once the records before it are taken

    def pop_error(self) -> SentinelError | None:
        """The kept error once nothing decoded before it is left to take (and forget it:
        the next fetch from the same position meets the damage again and reports it anew)."""
        error = self.error
        if error is None or self.buffered():
            return None
        self.error = None
        return error

    def take(self, limit: int) -> list[ConsumerRecord]:
        """Up to ``limit`` read-ahead records, advancing the position past them.

        Records are decoded as they are reached, at least ``DECODE_AT_LEAST`` at a time. A
        batch that does not decode ends the buffer: its error is kept, the records before
        it are returned (here or already), and the position stops at it."""
        taken: list[ConsumerRecord] = []
        while len(taken) < limit:
            records = self.records
            if not records:
                if not self._decode(limit - len(taken)):
                    break
                continue
            start = self.index
            end = min(len(records), start + limit - len(taken))
            if not taken and start == 0 and end == len(records):
                taken = records  # all of them: no copy (nobody else holds the list)
            else:
                taken += records[start:end]
            if end == len(records):
                self.records = []
                self.index = 0
            else:
                self.index = end
        self._settle_position()
        return taken

    def take_one(self) -> ConsumerRecord:
        """The next decoded record (``records`` must not be empty): ``take(1)`` without
        building a list, for ``async for``."""
        records = self.records
        index = self.index
        record = records[index]
        index += 1
        if index < len(records):
            self.index = index
        else:
            self.records = []
            self.index = 0
            self._settle_position()
        return record

    def _settle_position(self) -> None:
        """``position`` once the decoded records are used up (while some remain it follows
        ``index``)."""
        if self.records:
            return
        if self.cursor is not None:
            self.position = max(self.cursor.next_offset, self.skip_before)
        elif self.batches:
            self.position = max(self.batches[0].base_offset, self.skip_before)
        else:
            self.position = self.after

    def _decode(self, wanted: int) -> bool:
        """Decode the next records into ``records`` (none is fine: the first batch may hold
        only records before ``skip_before``); False when there is nothing left to decode."""
        cursor = self.cursor
        if cursor is None:
            if not self.batches:
                return False
            batch = self.batches.popleft()
            try:
                cursor = batch.tagged_cursor(ConsumerRecord, self.tp.topic, self.tp.partition)
            except InvalidRecordBatch as exc:
                at = max(self.skip_before, batch.base_offset)
                self.error = undecodable(self.tp, at, batch, exc)
                self.after = at
                self.batches.clear()
                return False
            self.cursor = cursor
        records = cursor.take(max(wanted, DECODE_AT_LEAST))
        if cursor.remaining == 0:
            self.cursor = None
        if records and records[0].offset < self.skip_before:  # only the first batch starts early
            records = [r for r in records if r.offset >= self.skip_before]
        self.records = records
        self.index = 0
        return True


def _ignore_outcome(task: asyncio.Task[FetchResult]) -> None:
    if not task.cancelled():
        task.exception()


def undecodable(
    tp: TopicPartition, offset: int, batch: RecordBatch, exc: InvalidRecordBatch
) -> SentinelError:
    topic, partition = tp
    if not batch.compression.is_available():
        # Nothing is damaged: this process lacks the codec's package (the message says which).
        where = f"topic {topic!r} partition {partition} at offset {offset}"
        return FailedPrecondition(f"cannot decode {where}: {exc}")
    return CorruptRecordBatch(topic, partition, offset, (batch.base_offset, batch.last_offset), str(exc))


class RecordIterator:
    """The records of a consumer one at a time; see the module docstring."""

    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer
        # The chunk of decoded records the bookkeeping was last checked for: the rest of it
        # is handed out without looking again, as ``getmany`` hands out a whole poll's
        # records before its next check (a chunk is DECODE_AT_LEAST records, or what a
        # ``getmany`` decoded).
        self._checked: list[ConsumerRecord] | None = None

    def __aiter__(self) -> RecordIterator:
        return self

    async def __anext__(self) -> ConsumerRecord:
        consumer = self._consumer
        state = consumer._iter_state
        if state is not None:  # only while the consumer is open: close() clears it
            # The fast path: the next record of a decoded chunk, with no bookkeeping due when
            # the chunk was reached (the next answer is already being fetched: getmany
            # started it when it buffered this one). PartitionState.take_one inlined while
            # records remain in the chunk.
            records = state.records
            if records is not self._checked:
                group = consumer._group
                if (
                    not records
                    or (group is not None and group.rejoin_needed)
                    or (consumer._auto_commit and time.monotonic() >= consumer._next_auto_commit)
                ):
                    return await consumer._next_record()
                self._checked = records
            index = state.index + 1
            if index < len(records):
                state.index = index
                return records[index - 1]
            self._checked = None
            return state.take_one()
        return await consumer._next_record()
