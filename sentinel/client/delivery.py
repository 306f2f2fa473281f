"""What ``Producer.send`` hands back: a light per-record future over a shared run of records.

One ``asyncio.Future`` per record cost the producer more than everything else it does per
record (measured with 100-byte records: creating and resolving them about 40% of the
client's time, and the full garbage collections that walked the futures the producer held
another 37-39%). Here the producer holds nothing per record but the record itself:

- A :class:`RecordRun` is the records of one partition queued between two drains of its
  queue. It knows how each consecutive part of it ended (the part's first offset and log
  append time, or the error) once the request that carried the part is settled: one call
  per part, whatever the number of records.
- A :class:`RecordFuture` is the record's place in its run (the run, an index, the
  record's timestamp). Only the application holds it; it refers to the run and nothing
  refers back to it (except while someone waits on it: see below), so dropping it frees
  it at once, without the garbage collector. Its :class:`RecordMetadata` is built when
  asked for.

A ``RecordFuture`` follows the asyncio Future protocol (``asyncio.isfuture`` is true):
``await``, ``done``, ``result``, ``exception``, ``add_done_callback``,
``remove_done_callback``, ``cancel``, ``cancelled`` and ``get_loop``, so ``asyncio.gather``,
``wait``, ``wait_for`` and ``shield`` take it as they take an ``asyncio.Future``. Done
callbacks run through the loop (``call_soon``), as asyncio's do. Cancelling a record's
future does not stop the record from being sent (as with an ``asyncio.Future`` the producer
would have resolved later); it only makes the future cancelled.

Invariants:
- A run's parts end in increasing order and cover ``[0, resolved)`` without gaps: the
  producer settles a partition's requests in formation order, which is queue order.
- A future is in its run's ``watchers`` only while it has callbacks or waiters and is not
  done; settling a part empties ``watchers`` of every future the part made done.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Generator
from typing import Any, Final

from sentinel.client.types import BatchMetadata, RecordMetadata

# One part of a run: (end index, offset of index 0 or -1, log append time, error or None).
Part = tuple[int, int, int, BaseException | None]
Callback = Callable[[Any], object]

_new_tuple = tuple.__new__


class _Cancelled:
    """The marker a cancelled future keeps in place of its callbacks."""

    __slots__ = ()


_CANCELLED: Final = _Cancelled()


class RecordRun:
    """Consecutive records of one partition queued between two drains (see the module doc)."""

    __slots__ = ("loop", "partition", "parts", "resolved", "topic", "watchers")

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
        self.resolved = end = start + count
        watchers = self.watchers
        if watchers:
            still = []
            for future in watchers:
                extra = future._extra
                if type(extra) is not list:  # cancelled meanwhile: its callbacks already ran
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
    """The future of one record sent with ``Producer.send`` (see the module docstring)."""

    __slots__ = ("_extra", "_index", "_run", "_timestamp")

    # asyncio.isfuture() looks for this attribute (not None) to accept a Future-like object.
    _asyncio_future_blocking = False

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
        _, first, append_time, error = part
        if error is not None:
            raise error
        return _new_tuple(
            RecordMetadata,
            (
                run.topic,
                run.partition,
                first + self._index if first >= 0 else -1,
                append_time if append_time > 0 else self._timestamp,
            ),
        )

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
        if type(extra) is not list:
            return 0
        kept = [entry for entry in extra if not (type(entry) is tuple and entry[0] == fn)]
        removed = len(extra) - len(kept)
        extra[:] = kept
        return removed

    def cancel(self, msg: Any = None) -> bool:
        """Cancel the future (not the record: it is sent all the same)."""
        if self.done():
            return False
        extra = self._extra
        self._extra = _CANCELLED
        if type(extra) is list:
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

    __iter__ = __await__

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled() else "done" if self.done() else "pending"
        return f"<RecordFuture {self._run.topic}[{self._run.partition}] {state}>"

    # -- internals -------------------------------------------------------------------------

    def _watch(self) -> list[Any]:
        extra = self._extra
        if type(extra) is list:
            return extra
        entries: list[Any] = []
        self._extra = entries
        run = self._run
        if run.watchers is None:
            run.watchers = []
        run.watchers.append(self)
        return entries

    def _run_callbacks(self, entries: list[Any]) -> None:
        call_soon = self._run.loop.call_soon
        for entry in entries:
            if type(entry) is tuple:
                call_soon(entry[0], self, context=entry[1])
            elif not entry.done():  # a waiter of __await__ (cancelled if its task was)
                entry.set_result(None)


class WholeBatchDelivery:
    """The completion of one ``send_batch`` batch: its asyncio future and what its
    BatchMetadata needs."""

    __slots__ = ("count", "future", "partition", "timestamp_ms", "topic")

    def __init__(
        self, future: asyncio.Future[BatchMetadata], topic: str, partition: int, count: int, timestamp_ms: int
    ) -> None:
        self.future = future
        self.topic = topic
        self.partition = partition
        self.count = count
        self.timestamp_ms = timestamp_ms

    def resolve(self, start: int, count: int, base_offset: int, append_time: int) -> None:
        if not self.future.done():
            timestamp = append_time if append_time > 0 else self.timestamp_ms
            metadata = BatchMetadata(self.topic, self.partition, base_offset, self.count, timestamp)
            self.future.set_result(metadata)

    def fail(self, start: int, count: int, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


# What the producer queues per run of entries: records' runs and send_batch batches alike.
Completion = RecordRun | WholeBatchDelivery
