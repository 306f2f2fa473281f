"""The producer's per-record path: a partition's queue, the runs of records and their futures,
and the step ``Producer.send`` takes for each record once it is checked.

``setup.py`` compiles this module with mypyc (like ``sentinel.records.decode`` and
``sentinel.client.partition``): its classes are then native, so a record costs a few C-level
stores instead of a dozen Python attribute writes and a Python object per future (measured
with 100-byte records: the interpreted step was about half of ``send``'s ~0.85 µs). Which
build a producer uses is chosen by ``sentinel.client.accumulator`` (``appending``,
``appending_builds``, ``using_appending``); ``accumulator`` and ``delivery`` re-export these
classes from the build in use, and document them:

- :class:`PartitionQueue` and :class:`Piece`: the accumulator's per-partition queue (pure:
  no event loop, no clock; see ``sentinel.client.accumulator`` for its invariants).
- :class:`RecordRun` and :class:`RecordFuture`: what ``send`` hands back (see
  ``sentinel.client.delivery`` for the protocol and its invariants).
- :class:`RecordAppender`: one partition's per-record step of ``send``, the only part here
  that touches the event loop (it creates runs on it and sets the partition sender's
  wake-up event) and the clock (injected).

Everything the step needs is checked by ``send`` before it is called (types, sizes, the
reservation of the record's bytes): it cannot fail half-way.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import deque
from collections.abc import Awaitable, Callable, Generator
from typing import Any, ClassVar, Final, Generic, TypeVar

from sentinel.client.types import RecordMetadata

C = TypeVar("C")

# One part of a run: (end index, offset of index 0 or -1, log append time, error or None).
Part = tuple[int, int, int, BaseException | None]
Callback = Callable[[Any], object]
# A queued record: key, value, headers, create time (sentinel.records.RecordTuple).
Record = tuple[bytes | None, bytes | None, tuple[tuple[str, bytes | None], ...], int]

# Per-record framing beyond key, value and headers in RecordBatch v2: length (<= 5 bytes),
# attributes (1), timestamp delta (usually 1-3), offset delta (1-3), key and value lengths
# (1-3 each) and the header count (1). 16 is a typical record; exactness does not matter.
RECORD_OVERHEAD: Final = 16

_new_tuple: Final = tuple.__new__


# -- the accumulator's queue ---------------------------------------------------------------


class Piece(Generic[C]):
    """Queued entries ``[start, end)`` of one completion, consecutive in the queue. (An end,
    not a count: the next record's index is ``end``, one read and one write per record.)"""

    def __init__(self, completion: C, start: int = 0, end: int = 0) -> None:
        self.completion = completion
        self.start = start
        self.end = end


class PartitionQueue(Generic[C]):
    """Records of one partition waiting to be sent, oldest first."""

    def __init__(self) -> None:
        # Records (tuples) and, once send_batch was used, whole batches.
        self.records: list[Any] = []
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

    def add(self, record: object, size: int, now: float, batch_size: int) -> bool:
        """Queue a record whose ``size`` is reserved, as the next entry of the open piece
        (its index there is ``open.end`` before the call). True when the
        partition's sender should look again: the record is the first in an empty queue
        (start lingering), or the queue just reached ``batch_size`` (send without
        lingering)."""
        records = self.records
        if not records:
            self.first_at = now
        records.append(record)
        piece = self.open
        assert piece is not None
        piece.end += 1
        before = self.size
        after = before + size
        self.size = after
        self.ends.append(self.origin + after)
        return before == 0 or before < batch_size <= after

    def add_whole(self, batch: object, completion: C, size: int, now: float, batch_size: int) -> bool:
        """Queue a whole batch (a ``WholeBatch``), a piece of its own; the next record starts
        a new piece."""
        self.wholes += 1
        self.open_piece(completion)
        wake = self.add(batch, size, now, batch_size)
        self.open = None
        return wake


class BufferAccount:
    """The producer's buffer memory: bytes reserved by queued and in-flight records (the
    accumulator's account; ``buffered`` never exceeds ``max_buffer_bytes`` through a
    reservation that was checked first)."""

    def __init__(self, max_buffer_bytes: int) -> None:
        self.max_buffer_bytes = max_buffer_bytes
        self.buffered = 0


# -- the futures -----------------------------------------------------------------------------


class _Cancelled:
    """The marker a cancelled future keeps in place of its callbacks."""


_CANCELLED: Final = _Cancelled()


class RecordRun:
    """Consecutive records of one partition queued between two drains (see
    ``sentinel.client.delivery``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, topic: str, partition: int) -> None:
        self.loop = loop
        self.topic = topic
        self.partition = partition
        self.resolved = 0  # records [0, resolved) have an outcome
        self.parts: list[Part] = []
        self.watchers: list[RecordFuture] | None = None

    # -- the producer's side ---------------------------------------------------------------

    def resolve(self, start: int, count: int, base_offset: int, append_time: int) -> None:
        """Records ``[start, start + count)`` landed at ``base_offset`` onwards (-1: unknown,
        acks=0); ``append_time`` > 0 is the broker's log append time."""
        first = base_offset - start if base_offset >= 0 else -1
        self._settle(start, count, (start + count, first, append_time, None))

    def fail(self, start: int, count: int, error: BaseException) -> None:
        """Records ``[start, start + count)`` failed with ``error``."""
        self._settle(start, count, (start + count, -1, 0, error))

    def _settle(self, start: int, count: int, part: Part) -> None:
        if start != self.resolved or count <= 0:
            raise AssertionError(f"records {start}+{count} settled with [0, {self.resolved}) settled")
        self.parts.append(part)
        end = start + count
        self.resolved = end
        watchers = self.watchers
        if watchers:
            still: list[RecordFuture] = []
            for future in watchers:
                extra = future._extra
                if not isinstance(extra, list):  # cancelled meanwhile: its callbacks already ran
                    continue
                if future._index < end:
                    future._extra = None
                    future._run_callbacks(extra)
                else:
                    still.append(future)
            self.watchers = still

    # -- the futures' side -----------------------------------------------------------------

    def part_of(self, index: int) -> Part | None:
        if index >= self.resolved:
            return None
        for part in self.parts:  # a run has a part per request that carried it: a few
            if index < part[0]:
                return part
        raise AssertionError("a resolved index outside every part")  # pragma: no cover


class RecordFuture:
    """The future of one record sent with ``Producer.send`` (see ``sentinel.client.delivery``)."""

    # asyncio.isfuture() looks for this attribute (not None) to accept a Future-like object.
    _asyncio_future_blocking: ClassVar[bool] = False

    def __init__(self, run: RecordRun, index: int, timestamp_ms: int) -> None:
        self._run = run
        self._index = index
        self._timestamp = timestamp_ms
        # None, or the callbacks and waiters waiting for the outcome, or _CANCELLED.
        self._extra: list[Any] | _Cancelled | None = None

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._run.loop

    def done(self) -> bool:
        return self._index < self._run.resolved or self._extra is _CANCELLED

    def cancelled(self) -> bool:
        return self._extra is _CANCELLED

    def result(self) -> RecordMetadata:
        """The record's metadata; raises its delivery error, CancelledError, or
        InvalidStateError while it is not answered."""
        if self._extra is _CANCELLED:
            raise asyncio.CancelledError()
        run = self._run
        part = run.part_of(self._index)
        if part is None:
            raise asyncio.InvalidStateError("Result is not set.")
        first = part[1]
        append_time = part[2]
        error = part[3]
        if error is not None:
            raise error
        metadata: RecordMetadata = _new_tuple(
            RecordMetadata,
            (
                run.topic,
                run.partition,
                first + self._index if first >= 0 else -1,
                append_time if append_time > 0 else self._timestamp,
            ),
        )
        return metadata

    def exception(self) -> BaseException | None:
        if self._extra is _CANCELLED:
            raise asyncio.CancelledError()
        part = self._run.part_of(self._index)
        if part is None:
            raise asyncio.InvalidStateError("Exception is not set.")
        return part[3]

    def add_done_callback(self, fn: Callback, *, context: contextvars.Context | None = None) -> None:
        if self.done():
            self._run.loop.call_soon(fn, self, context=context)
            return
        self._watch().append((fn, context))

    def remove_done_callback(self, fn: Callback) -> int:
        extra = self._extra
        if not isinstance(extra, list):
            return 0
        kept = [entry for entry in extra if not (isinstance(entry, tuple) and entry[0] == fn)]
        removed = len(extra) - len(kept)
        extra[:] = kept
        return removed

    def cancel(self, msg: Any = None) -> bool:
        """Cancel the future (not the record: it is sent all the same)."""
        if self.done():
            return False
        extra = self._extra
        self._extra = _CANCELLED
        if isinstance(extra, list):
            self._run_callbacks(extra)
        return True

    def __await__(self) -> Generator[Any, None, RecordMetadata]:
        if not self.done():
            waiter = self._run.loop.create_future()
            self._watch().append(waiter)
            try:
                yield from waiter
            except asyncio.CancelledError:
                self.cancel()  # as an awaited asyncio.Future is cancelled with its awaiter
                raise
        return self.result()

    def __iter__(self) -> Generator[Any, None, RecordMetadata]:
        return self.__await__()

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled() else "done" if self.done() else "pending"
        return f"<RecordFuture {self._run.topic}[{self._run.partition}] {state}>"

    # -- internals -------------------------------------------------------------------------

    def _watch(self) -> list[Any]:
        extra = self._extra
        if isinstance(extra, list):
            return extra
        entries: list[Any] = []
        self._extra = entries
        run = self._run
        watchers = run.watchers
        if watchers is None:
            watchers = run.watchers = []
        watchers.append(self)
        return entries

    def _run_callbacks(self, entries: list[Any]) -> None:
        call_soon = self._run.loop.call_soon
        for entry in entries:
            if isinstance(entry, tuple):
                call_soon(entry[0], self, context=entry[1])
            elif not entry.done():  # a waiter of __await__ (cancelled if its task was)
                entry.set_result(None)


# -- the per-record step -------------------------------------------------------------------


class RecordAppender:
    """One partition's step of ``Producer.send``: queue a checked record whose bytes are
    reserved, in the partition's open run (a new run after each drain), and hand back its
    future; wake the partition's sender when the queue needs a look (its first record, or
    ``batch_size`` just reached)."""

    def __init__(
        self,
        queue: PartitionQueue[Any],
        loop: asyncio.AbstractEventLoop,
        topic: str,
        partition: int,
        wakeup: asyncio.Event,
        clock: Callable[[], float],
    ) -> None:
        self.queue = queue
        self.loop = loop
        self.topic = topic
        self.partition = partition
        self.wakeup = wakeup
        self.clock = clock  # monotonic seconds: when a queue's first record arrived

    def append(
        self,
        key: bytes | None,
        value: bytes | None,
        headers: tuple[tuple[str, bytes | None], ...],
        timestamp_ms: int,
        size: int,
        batch_size: int,
    ) -> RecordFuture:
        queue = self.queue
        piece = queue.open
        if piece is None:
            piece = queue.open_piece(RecordRun(self.loop, self.topic, self.partition))
        run: RecordRun = piece.completion
        index = piece.end
        now = self.clock() if not queue.records else queue.first_at  # first_at kept otherwise
        record: Record = (key, value, headers, timestamp_ms)
        if queue.add(record, size, now, batch_size):
            self.wakeup.set()
        return RecordFuture(run, index, timestamp_ms)


class SendFastPath:
    """``Producer.send`` for the common record, compiled: a record whose value and key are
    bytes or None, with no headers and no timestamp of its own, to an explicit partition that
    has a sender, fitting the buffer at once with nobody waiting for room. Anything else
    (validation errors included) goes to ``full_send``, the producer's ``send`` written out in
    Python, which handles every case; both take the same steps for the records the fast path
    takes, so which one ran is invisible to the caller."""

    def __init__(
        self,
        account: BufferAccount,
        room_waiters: deque[Any],
        max_record_bytes: int,
        batch_size: int,
        full_send: Callable[..., Awaitable[RecordFuture]],
    ) -> None:
        #: OPEN and not failed (the producer's flag; while False every send takes full_send).
        self.accepting = False
        self.account = account
        self.room_waiters = room_waiters  # the producer's: read only here
        self.max_record_bytes = max_record_bytes
        self.batch_size = batch_size
        self.full_send = full_send
        #: topic -> partition -> its appender, filled in by the producer as senders start.
        self.appenders: dict[object, dict[int, RecordAppender]] = {}
        # The appender of the last (topic, partition) objects sent to: a loop sending to one
        # partition finds it with two identity tests (so True or 1.0 never pass for 1).
        self._last_topic: object = None
        self._last_partition: object = None
        self._last: RecordAppender | None = None

    async def send(
        self,
        topic: object,
        value: object = None,
        *,
        key: object = None,
        partition: object = None,
        headers: object = None,
        timestamp_ms: object = None,
    ) -> RecordFuture:
        appender = self._last
        if topic is not self._last_topic or partition is not self._last_partition:
            appender = None
            if type(partition) is int:
                by_partition = self.appenders.get(topic)
                if by_partition is not None:
                    appender = by_partition.get(partition)
                    if appender is not None:
                        self._last_topic = topic
                        self._last_partition = partition
                        self._last = appender
        size = RECORD_OVERHEAD
        value_bytes: bytes | None = None
        key_bytes: bytes | None = None
        if value is not None:
            if type(value) is bytes:
                value_bytes = value
                size += len(value)
            else:
                appender = None
        if key is not None:
            if type(key) is bytes:
                key_bytes = key
                size += len(key)
            else:
                appender = None
        account = self.account
        buffered = account.buffered + size
        if (
            appender is None
            or not self.accepting
            or headers
            or timestamp_ms is not None
            or buffered > account.max_buffer_bytes
            or size > self.max_record_bytes
            or self.room_waiters
        ):
            return await self.full_send(
                topic, value, key=key, partition=partition, headers=headers, timestamp_ms=timestamp_ms
            )
        account.buffered = buffered
        timestamp = time.time_ns() // 1_000_000
        return appender.append(key_bytes, value_bytes, (), timestamp, size, self.batch_size)
