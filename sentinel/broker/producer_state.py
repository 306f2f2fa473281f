"""Idempotent produce: what a partition remembers of each producer, as a pure table.

Kafka's rules (RAFT-NOTES.md §3; Kafka's ProducerStateEntry / ProducerAppendInfo):

* a producer has an id and an epoch; each batch it sends to a partition carries the
  sequence number of its first record, numbered per partition from 0 and wrapping at
  2**31 - 1 back to 0;
* the partition keeps the last ``RETAINED_BATCHES`` batches of each producer — which is
  why a producer may have at most that many batches in flight per partition. Kafka keeps
  5 because a Kafka request carries at most one batch of a partition, and a producer has at
  most 5 requests in flight; a Sentinel request carries many batches of a partition, so a
  partition keeps 64 (two requests of 32 16-KiB batches in flight: with 5, a partition's
  default-sized batches went one request at a time, at half the records/s; see
  ``sentinel/client/sequencing.py``);
* a batch equal (same first and last sequence) to a retained one is a DUPLICATE: it is not
  appended again, and the answer is the original's offsets;
* otherwise, within an epoch, the first sequence must follow the last retained one
  exactly: a gap or a step back is OUT_OF_ORDER_SEQUENCE, never a silent second copy;
* a new (higher) epoch must start at sequence 0; a lower epoch is a fenced producer;
* a producer the partition has no state for (new, or its state expired) may start at any
  sequence.

The table is replicated state: it changes only by ``record`` as entries are applied in log
order, so every replica that applied the same prefix holds the same table, and a new leader
has it right once its first entry commits. It travels in snapshots (``encode``/``decode``).
"""

from __future__ import annotations

import struct
from collections import Counter, deque
from collections.abc import Sequence
from typing import Final, Protocol

import attrs

from sentinel.errors import FailedPrecondition, InvalidArgument, SentinelError

RETAINED_BATCHES: Final = 64
NO_PRODUCER_ID: Final = -1
MAX_SEQUENCE: Final = 2**31 - 1
_VERSION: Final = 1
_HEADER = struct.Struct(">BI")
_PRODUCER = struct.Struct(">qhB")
_BATCH = struct.Struct(">iiqqq")


class OutOfOrderSequence(SentinelError):
    """The batch's sequence does not follow the producer's last one (a gap or a step back)."""


class ProducerFenced(FailedPrecondition):
    """A newer epoch of this producer id exists: this one must stop."""


@attrs.frozen
class BatchMetadata:
    first_seq: int
    last_seq: int
    base_offset: int
    last_offset: int
    timestamp_ms: int


class _Producer:
    __slots__ = ("batches", "epoch")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.batches: deque[BatchMetadata] = deque(maxlen=RETAINED_BATCHES)


def next_sequence(seq: int, records: int) -> int:
    """The sequence after a batch of ``records`` starting at ``seq`` (wrapping)."""
    return (seq + records) % (MAX_SEQUENCE + 1)


def last_sequence(batch: BatchHeader) -> int:
    """The sequence of a batch's last record (wrapping, as Kafka's incrementSequence)."""
    return next_sequence(batch.base_sequence, batch.last_offset_delta)


class BatchHeader(Protocol):
    """The header fields of a RecordBatch that idempotence reads."""

    @property
    def producer_id(self) -> int: ...
    @property
    def producer_epoch(self) -> int: ...
    @property
    def base_sequence(self) -> int: ...
    @property
    def last_offset_delta(self) -> int: ...


def check_request(table: ProducerStateTable, batches: Sequence[BatchHeader]) -> list[BatchMetadata] | None:
    """Idempotence for one produce request (appended all or nothing): the originals when
    every batch was appended already (a retry), None when all are new; raises
    OutOfOrderSequence for a request that mixes both, or ProducerFenced. A new batch that
    follows another new one of the same producer in the request must continue its sequence
    (the table knows only what was appended before the request). More batches of one
    producer than the partition remembers are refused (InvalidArgument): a retry of the
    request could not be recognised."""
    if len(batches) > RETAINED_BATCHES:
        counts = Counter(b.producer_id for b in batches if b.producer_id != NO_PRODUCER_ID)
        most = max(counts.values(), default=0)
        if most > RETAINED_BATCHES:
            raise InvalidArgument(
                f"a request carries {most} batches of one producer id for one partition; "
                f"at most {RETAINED_BATCHES} (the batches a partition remembers)"
            )
    originals: list[BatchMetadata] = []
    fresh = 0
    follows: dict[int, int] = {}  # producer id -> first sequence of its next batch here
    for batch in batches:
        producer_id = batch.producer_id
        if producer_id == NO_PRODUCER_ID:
            fresh += 1
            continue
        first = batch.base_sequence
        last = last_sequence(batch)
        expected = follows.get(producer_id)
        if expected is None:
            found = table.check(producer_id, batch.producer_epoch, first, last)
        elif first != expected:
            raise OutOfOrderSequence(
                f"producer {producer_id} epoch {batch.producer_epoch} sent sequence {first}, "
                f"expected {expected}"
            )
        else:
            found = None
        if found is None:
            fresh += 1
            follows[producer_id] = next_sequence(last, 1)
        else:
            originals.append(found)
    if not originals:
        return None
    if fresh:
        raise OutOfOrderSequence("a request mixes already-appended and new batches")
    return originals


def record_batch(table: ProducerStateTable, batch: BatchHeader, base_offset: int, last_offset: int) -> None:
    """A batch was appended at ``base_offset``..``last_offset`` (applied in log order)."""
    if batch.producer_id == NO_PRODUCER_ID:
        return
    metadata = BatchMetadata(batch.base_sequence, last_sequence(batch), base_offset, last_offset, -1)
    table.record(batch.producer_id, batch.producer_epoch, metadata)


class ProducerStateTable:
    def __init__(self) -> None:
        self._producers: dict[int, _Producer] = {}

    def __len__(self) -> int:
        return len(self._producers)

    def check(self, producer_id: int, epoch: int, first_seq: int, last_seq: int) -> BatchMetadata | None:
        """Before appending a batch: its original if it is a duplicate, None if it may be
        appended; raises OutOfOrderSequence / ProducerFenced otherwise."""
        if producer_id == NO_PRODUCER_ID:
            return None
        state = self._producers.get(producer_id)
        if state is None:
            return None
        if epoch < state.epoch:
            raise ProducerFenced(
                f"producer {producer_id} epoch {epoch} is fenced by epoch {state.epoch}: "
                "a newer producer exists"
            )
        if epoch > state.epoch:
            if first_seq != 0:
                raise OutOfOrderSequence(
                    f"producer {producer_id} began epoch {epoch} at sequence {first_seq}; "
                    "a new epoch starts at 0"
                )
            return None
        batches = state.batches
        if not batches:
            return None
        expected = next_sequence(batches[-1].last_seq, 1)
        if first_seq == expected:
            # The usual case, without a walk of the retained batches: none of them starts
            # here (they are consecutive, and far fewer than 2**31 records).
            return None
        for batch in batches:
            if batch.first_seq == first_seq and batch.last_seq == last_seq:
                return batch
        raise OutOfOrderSequence(
            f"producer {producer_id} epoch {epoch} sent sequence {first_seq}, expected {expected}"
        )

    def record(self, producer_id: int, epoch: int, batch: BatchMetadata) -> None:
        """A batch of this producer was appended (applied in log order)."""
        if producer_id == NO_PRODUCER_ID:
            return
        state = self._producers.get(producer_id)
        if state is None or epoch > state.epoch:
            state = self._producers[producer_id] = _Producer(epoch)
        elif epoch < state.epoch:
            return  # a fenced epoch's batch replayed from an old log: it changes nothing
        state.batches.append(batch)

    def last_sequence(self, producer_id: int) -> tuple[int, int] | None:
        """(epoch, last sequence) known for a producer, None if unknown."""
        state = self._producers.get(producer_id)
        if state is None or not state.batches:
            return None
        return state.epoch, state.batches[-1].last_seq

    def encode(self) -> bytes:
        parts = [_HEADER.pack(_VERSION, len(self._producers))]
        for pid, state in sorted(self._producers.items()):
            parts.append(_PRODUCER.pack(pid, state.epoch, len(state.batches)))
            parts.extend(
                _BATCH.pack(b.first_seq, b.last_seq, b.base_offset, b.last_offset, b.timestamp_ms)
                for b in state.batches
            )
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> ProducerStateTable:
        table = cls()
        try:
            version, count = _HEADER.unpack_from(data, 0)
            if version != _VERSION:
                raise ValueError(f"unknown producer state version {version}")
            pos = _HEADER.size
            for _ in range(count):
                pid, epoch, n = _PRODUCER.unpack_from(data, pos)
                pos += _PRODUCER.size
                if n > RETAINED_BATCHES:
                    raise ValueError(f"producer {pid} has {n} batches, more than {RETAINED_BATCHES}")
                state = table._producers[pid] = _Producer(epoch)
                for _ in range(n):
                    state.batches.append(BatchMetadata(*_BATCH.unpack_from(data, pos)))
                    pos += _BATCH.size
            if pos != len(data):
                raise ValueError(f"{len(data) - pos} bytes after the last producer")
        except struct.error as exc:
            raise ValueError(f"producer state truncated: {exc}") from None
        return table
