"""The consumer's per-partition fetch state, and the decoding of fetch answers.

Synchronous apart from holding the partition's in-flight fetch task: the consumer's
``getmany`` loop owns these objects and is the only code that changes them.

A fetch answer is scanned when it arrives (``scan_answer``: each batch's header and CRC
checked, nothing decoded). Its records are decoded as the application takes them
(``PartitionState.take``): a batch's whole records section is checked when it is reached,
then its records are built ``DECODE_AT_LEAST`` or as many as asked at a time. So a record
is built shortly before it is handed out, and an application that handles its records and
drops them frees them young: the garbage collector meets few of them (decoding a whole
1 MiB answer up front kept ~9,000 records alive across collections, and the collector's
full passes cost more than the decoding itself).

Invariants of a ``PartitionState``:
- ``position`` is the offset of the next record the application gets; None until it is
  looked up (committed offset, else the reset policy).
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
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Final, NamedTuple

from sentinel.client.errors import CorruptRecordBatch
from sentinel.client.types import ConsumerRecord, TopicPartition
from sentinel.errors import DataLoss, FailedPrecondition, InvalidRecordBatch, SentinelError
from sentinel.records import RecordBatch, iter_batches
from sentinel.records.batch import TaggedRecordCursor

__all__ = [
    "DecodedAnswer",
    "FetchAnswer",
    "FetchResult",
    "PartitionState",
    "ScannedAnswer",
    "decode_answer",
    "read_error",
    "records_from_batches",
    "scan_answer",
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

    __slots__ = (
        "after",
        "batches",
        "cursor",
        "error",
        "fetches",
        "high_watermark",
        "index",
        "position",
        "records",
        "reset_to_policy",
        "retry_at",
        "skip_before",
        "tp",
    )

    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp
        self.position: int | None = None  # None: to be looked up (committed offset / policy)
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
            self.position = records[index].offset
        else:
            self.records = []
            self.index = 0
            self._settle_position()
        return record

    def _settle_position(self) -> None:
        if self.records:
            self.position = self.records[self.index].offset
        elif self.cursor is not None:
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
                self.error = _undecodable(self.tp, at, batch, exc)
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


class FetchAnswer(NamedTuple):
    """A ConsumeResponse as the consumer reads it: the batches stay a view of the received
    message. The generated class copies them twice on parsing (the 1 MiB field is read out of
    the message and appended to a copy of its raw bytes), which cost the consumer more than
    a tenth of its time; this is the grpclib reply type of the consumer's Fetch instead.
    ``tests/client/test_fetch_answer.py`` checks it against the generated class."""

    topic: str
    partition: int
    record_batches: memoryview
    high_watermark: int
    log_start_offset: int
    next_offset: int

    @classmethod
    def FromString(cls, data: bytes) -> FetchAnswer:
        """Parse the protobuf wire format of ``ConsumeResponse`` (unknown fields skipped)."""
        view = memoryview(data)
        fields: dict[int, int | memoryview] = {}
        pos = 0
        end = len(data)
        while pos < end:
            key, pos = _wire_varint(data, pos)
            number, wire_type = key >> 3, key & 7
            if wire_type == _WIRE_VARINT:
                fields[number], pos = _wire_varint(data, pos)
            elif wire_type == _WIRE_LEN:
                length, pos = _wire_varint(data, pos)
                if pos + length > end:
                    raise ValueError(f"field {number} of {length} bytes runs past the message")
                fields[number] = view[pos : pos + length]
                pos += length
            elif wire_type == _WIRE_FIXED64:
                pos += 8
            elif wire_type == _WIRE_FIXED32:
                pos += 4
            else:
                raise ValueError(f"unknown wire type {wire_type} of field {number}")
        if pos != end:
            raise ValueError("the last field runs past the message")
        topic = fields.get(_TOPIC, b"")
        batches = fields.get(_RECORD_BATCHES, view[0:0])
        if not isinstance(topic, memoryview | bytes) or not isinstance(batches, memoryview):
            raise ValueError("ConsumeResponse: topic or record_batches is not length-delimited")
        return cls(
            bytes(topic).decode("utf-8"),
            _signed(fields.get(_PARTITION, 0)),
            batches,
            _signed(fields.get(_HIGH_WATERMARK, 0)),
            _signed(fields.get(_LOG_START_OFFSET, 0)),
            _signed(fields.get(_NEXT_OFFSET, 0)),
        )


# ConsumeResponse's field numbers (protos/sentinel/v1/sentinel.proto) and the wire types.
_TOPIC, _PARTITION, _RECORD_BATCHES, _HIGH_WATERMARK, _LOG_START_OFFSET, _NEXT_OFFSET = range(1, 7)
_WIRE_VARINT, _WIRE_FIXED64, _WIRE_LEN, _WIRE_FIXED32 = 0, 1, 2, 5
_UINT64: Final = 1 << 64


def _wire_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _signed(value: int | memoryview) -> int:
    """An int32/int64 field: negative values travel as their 64-bit two's complement."""
    if not isinstance(value, int):
        raise ValueError("ConsumeResponse: a number field is length-delimited")
    value %= _UINT64
    return value - _UINT64 if value >= 1 << 63 else value


class ScannedAnswer(NamedTuple):
    batches: list[RecordBatch]  # the batches holding records to return, records not decoded
    error: SentinelError | None = None  # the first batch that did not pass the scan
    error_offset: int = -1  # the first offset not delivered because of ``error``


def scan_answer(tp: TopicPartition, data: bytes | memoryview, start: int) -> ScannedAnswer:
    """Cut a fetch answer (concatenated batches) into batches, checking each one's header
    and CRC; decode none. Batches that end before ``start`` and control batches (nothing
    for the application) are left out. A batch that fails a check ends the answer: the
    error names the partition and the offset where the damage starts."""
    topic, partition = tp
    out: list[RecordBatch] = []
    expected = start  # the first offset not yet accounted for
    batches = iter_batches(data)
    while True:
        try:
            batch = next(batches, None)
        except InvalidRecordBatch as exc:  # a header, length or CRC check failed
            return ScannedAnswer(
                out, CorruptRecordBatch(topic, partition, expected, None, str(exc)), expected
            )
        if batch is None:
            return ScannedAnswer(out)
        if batch.next_offset <= start:
            continue
        if not batch.is_control_batch:
            out.append(batch)
        expected = batch.next_offset


def decode_batch(tp: TopicPartition, batch: RecordBatch, start: int) -> list[ConsumerRecord]:
    """The records of one scanned batch from ``start`` on, each decoded straight into its
    ConsumerRecord (the consumer's hot path); raises ``InvalidRecordBatch``."""
    records = batch.decode_tagged(ConsumerRecord, tp.topic, tp.partition)
    if batch.base_offset < start:  # only the first batch of an answer can start early
        records = [r for r in records if r.offset >= start]
    return records


class DecodedAnswer(NamedTuple):
    records: list[ConsumerRecord]
    error: SentinelError | None = None  # the batch that did not decode, after ``records``
    error_offset: int = -1  # the first offset not delivered because of ``error``


def decode_answer(tp: TopicPartition, data: bytes, start: int) -> DecodedAnswer:
    """Decode a whole fetch answer, skipping records before ``start``: ``scan_answer``
    then ``decode_batch`` for each batch, as the consumer does batch by batch.

    Every record before a batch that does not decode is returned, with the error naming
    the partition and the offset where the damage starts.
    """
    scanned = scan_answer(tp, data, start)
    out: list[ConsumerRecord] = []
    for batch in scanned.batches:
        try:
            out += decode_batch(tp, batch, start)
        except InvalidRecordBatch as exc:
            at = max(start, batch.base_offset)
            return DecodedAnswer(out, _undecodable(tp, at, batch, exc), at)
    return DecodedAnswer(out, scanned.error, scanned.error_offset)


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
