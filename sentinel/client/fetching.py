"""The consumer's fetch answers and their decoding; which build of its per-partition state.

``PartitionState`` (a partition's position and what was read ahead of it, with its
invariants) and the ``async for`` step live in ``sentinel.client.partition``, which mypyc
compiles; this module picks the build (``partition``) and re-exports them.

A fetch answer is scanned when it arrives (``scan_answer``: each batch's header and CRC
checked, nothing decoded). Its records are decoded as the application takes them
(``PartitionState.take``): a batch's whole records section is checked when it is reached,
then its records are built ``DECODE_AT_LEAST`` or as many as asked at a time. So a record
is built shortly before it is handed out, and an application that handles its records and
drops them frees them young: the garbage collector meets few of them (decoding a whole
1 MiB answer up front kept ~9,000 records alive across collections, and the collector's
full passes cost more than the decoding itself).

See ``sentinel.client.partition`` for the invariants of a ``PartitionState``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Final, NamedTuple

from sentinel.client import partition as _partition_imported
from sentinel.client.errors import CorruptRecordBatch
from sentinel.client.types import ConsumerRecord, TopicPartition
from sentinel.errors import DataLoss, InvalidRecordBatch, SentinelError
from sentinel.records import RecordBatch, iter_batches
from sentinel.records.decoder import builds_of
from sentinel.varint import decode_uvarint

# ``sentinel.client.partition`` (PartitionState and the ``async for`` step): its mypyc build
# when that was built from this very source, else the source (like the records decoder's two
# builds, ``sentinel.records.decoder``). The consumer takes both classes from ``partition``.
_PARTITION_SOURCE: Final = os.path.join(os.path.dirname(__file__), "partition.py")


def partition_builds() -> dict[str, ModuleType]:
    """The builds of ``sentinel.client.partition`` at hand: "source" always, "compiled" when
    a fresh mypyc build is installed."""
    return builds_of(_partition_imported, _PARTITION_SOURCE, "sentinel.client._partition_source")


partition: ModuleType = partition_builds().get("compiled") or partition_builds()["source"]


@contextlib.contextmanager
def using_partition(module: ModuleType) -> Iterator[None]:
    """Consumers created inside the block use ``module`` (a value of ``partition_builds()``):
    for tests."""
    global partition
    previous, partition = partition, module
    try:
        yield
    finally:
        partition = previous


if TYPE_CHECKING:
    from sentinel.client.partition import (
        DECODE_AT_LEAST,
        FETCH_DEPTH,
        Fetch,
        FetchResult,
        PartitionState,
        RecordIterator,
        undecodable,
    )
else:  # the build in use at import
    DECODE_AT_LEAST = partition.DECODE_AT_LEAST
    FETCH_DEPTH = partition.FETCH_DEPTH
    Fetch = partition.Fetch
    FetchResult = partition.FetchResult
    PartitionState = partition.PartitionState
    RecordIterator = partition.RecordIterator
    undecodable = partition.undecodable

__all__ = [
    "DECODE_AT_LEAST",
    "FETCH_DEPTH",
    "DecodedAnswer",
    "Fetch",
    "FetchAnswer",
    "FetchResult",
    "PartitionState",
    "RecordIterator",
    "ScannedAnswer",
    "decode_answer",
    "partition",
    "partition_builds",
    "read_error",
    "records_from_batches",
    "scan_answer",
    "using_partition",
]


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
            key, pos = decode_uvarint(data, pos)
            number, wire_type = key >> 3, key & 7
            if wire_type == _WIRE_VARINT:
                fields[number], pos = decode_uvarint(data, pos)
            elif wire_type == _WIRE_LEN:
                length, pos = decode_uvarint(data, pos)
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
            return DecodedAnswer(out, undecodable(tp, at, batch, exc), at)
    return DecodedAnswer(out, scanned.error, scanned.error_offset)


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
