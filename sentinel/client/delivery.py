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
from typing import TYPE_CHECKING

from sentinel.client import accumulator
from sentinel.client.types import BatchMetadata

# RecordRun and RecordFuture live with the per-record step of ``Producer.send`` in
# ``sentinel.client.appending``, which mypyc compiles (see ``sentinel.client.accumulator``
# for which build a producer uses); these names are those of the build in use at import.
if TYPE_CHECKING:
    from sentinel.client.appending import RecordFuture, RecordRun
else:
    RecordFuture = accumulator.appending.RecordFuture
    RecordRun = accumulator.appending.RecordRun

__all__ = ["Completion", "RecordFuture", "RecordRun", "WholeBatchDelivery"]


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
