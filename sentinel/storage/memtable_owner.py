"""MemtableOwner: the actor that owns the memtables, the sequence counter and the read view.

Every write enters the engine here. For each write batch it, in one synchronous step:
assigns a contiguous range of sequence numbers, applies the batch to the active memtable
(atomically: no reader can observe half a batch), frames the WAL record and hands it to
the WalWriter together with the *writer's own reply slot*. The WalWriter answers the
writer once the record is durable, so a write is acknowledged only after its WAL record
is durable, and group commit needs no extra hop back through this actor.

A reader may observe a write before it is acknowledged (it is in the memtable while its
fsync runs). That is safe here: if the WAL write then fails, the storage tree crashes and
the node stops; after recovery only durable writes exist.

When the active memtable reaches ``memtable_bytes`` it is frozen, the WalWriter starts a
new segment, and the Compactor is asked to flush it. At most ``max_immutable_memtables``
wait for flush (and at most ``l0_stop_writes_trigger`` L0 files exist); beyond that, writes
stall here until the Compactor catches up: the back-pressure reaches every writer through
this actor's bounded mailbox.

The Compactor reports progress (a memtable flushed, a new version installed) on a second,
unbounded *control* channel served by its own task, so a stalled write loop can never
deadlock against a Compactor waiting to report. Its size is bounded by the number of
immutable memtables and compactions in flight.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import trio

from sentinel.actors import Actor, Reply, Request
from sentinel.errors import ActorClosed, InvalidArgument, MailboxFull
from sentinel.storage.manifest import Version
from sentinel.storage.memtable import Memtable
from sentinel.storage.options import StorageOptions
from sentinel.storage.sstable import SSTableReader
from sentinel.storage.view import ReadView
from sentinel.storage.wal_format import encode_wal_record
from sentinel.storage.wal_writer import RotateWal, WalAppend, WalWriter

Op = tuple[bytes, bytes | None]


@attrs.define(slots=True, eq=False)
class Write(Request[int]):
    """From Store: an atomic batch of puts (value bytes) and deletes (value None).
    Answered with the batch's last sequence number once it is durable."""

    ops: Sequence[Op]


@attrs.define(slots=True, eq=False)
class Flush(Request[None]):
    """From Store: freeze the active memtable (if not empty) and answer once every
    memtable frozen so far is safe in an SSTable."""


@attrs.frozen
class MemtableFlushed:
    """Control notice from Compactor: ``memtable`` is now in ``version``."""

    memtable: Memtable
    version: Version
    tables: Mapping[int, SSTableReader]


@attrs.frozen
class VersionInstalled:
    """Control notice from Compactor: a compaction installed ``version``."""

    version: Version
    tables: Mapping[int, SSTableReader]


class MemtableOwner(Actor[object]):
    # Bounded: writers wait here while the engine stalls or the WAL is behind.
    mailbox_capacity = 1024

    def __init__(
        self,
        *,
        options: StorageOptions,
        wal: WalWriter,
        request_flush: Callable[[Memtable], None],
        publish: Callable[[ReadView], None],
        last_seq: int,
        wal_segment: int,
        version: Version,
        tables: Mapping[int, SSTableReader],
    ) -> None:
        super().__init__("memtable-owner")
        self._options = options
        self._wal = wal
        self._request_flush = request_flush
        self._publish_view = publish
        self._last_seq = last_seq
        self._active = Memtable(wal_segment)
        self._immutables: list[Memtable] = []  # newest first
        self._version = version
        self._tables = tables
        self._control_send, self._control_receive = trio.open_memory_channel[object](math.inf)
        self._progress = trio.Event()
        # Flush requests waiting for these memtables to reach an SSTable.
        self._flush_waiters: list[tuple[set[int], Flush]] = []

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def notify(self, notice: MemtableFlushed | VersionInstalled) -> None:
        """Called by the Compactor (same Trio thread); never blocks."""
        self._control_send.send_nowait(notice)

    def memtable_bytes(self) -> int:
        return self._active.approximate_bytes + sum(m.approximate_bytes for m in self._immutables)

    def immutable_count(self) -> int:
        return len(self._immutables)

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await super().run(task_status=task_status)
        finally:
            # Flush requests parked until their memtables reach an SSTable will never be
            # answered now: fail them, as the toolkit does for queued requests.
            waiters, self._flush_waiters = self._flush_waiters, []
            for _pending, request in waiters:
                request.reply.fail(ActorClosed(f"{self.name} stopped before the flush completed"))

    async def on_start(self) -> None:
        self._publish()

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._serve_control)
            # Every write queued while the previous group was being handed on is applied
            # in one pass and goes to the WalWriter as ONE message (one write syscall):
            # the per-write cost is a memtable insert and an encode, not a task switch.
            limit = self._options.max_group_commit
            while batch := await self.receive_batch(limit):
                data: list[bytes] = []
                acks: list[tuple[Reply[int], int]] = []
                for message in batch:
                    if isinstance(message, Write):
                        self._apply(message, data, acks)
                        if self._active.approximate_bytes < self._options.memtable_bytes:
                            continue
                    # Rotation and control messages come after the WAL has everything
                    # applied so far: the WAL mailbox is FIFO, so the old segment holds it.
                    await self._hand_to_wal(data, acks)
                    data, acks = [], []
                    if isinstance(message, Write):
                        await self._rotate()
                    else:
                        await self.handle(message)
                await self._hand_to_wal(data, acks)
                self._in_flight = []
            nursery.cancel_scope.cancel()

    async def handle(self, message: object) -> None:
        if isinstance(message, Flush):
            await self._flush(message)
        else:
            raise TypeError(f"memtable-owner got an unexpected message {message!r}")

    def _apply(self, write: Write, data: list[bytes], acks: list[tuple[Reply[int], int]]) -> None:
        """Assign sequence numbers, apply to the active memtable, frame the WAL record."""
        ops = write.ops
        if not ops:
            write.reply.fail(InvalidArgument("a write batch needs at least one operation"))
            return
        first = self._last_seq + 1
        last = first + len(ops) - 1
        try:
            # Encode before touching the memtable: a batch the WAL cannot hold must change nothing.
            record = encode_wal_record(first, ops)
        except ValueError as exc:
            write.reply.fail(InvalidArgument(f"write batch rejected: {exc}"))
            return
        self._last_seq = last
        put = self._active.put
        seq = first
        for key, value in ops:
            put(key, seq, value)
            seq += 1
        data.append(record)
        acks.append((write.reply, last))

    async def _hand_to_wal(self, data: list[bytes], acks: list[tuple[Reply[int], int]]) -> None:
        if not acks:
            return
        message = WalAppend(data[0] if len(data) == 1 else b"".join(data), acks)
        try:
            self._wal.cast_nowait(message)
        except MailboxFull:
            await self._wal.cast(message)

    async def _flush(self, request: Flush) -> None:
        if len(self._active):
            await self._rotate()
        if not self._immutables:
            request.reply.set(None)
            return
        self._flush_waiters.append(({id(m) for m in self._immutables}, request))

    async def _rotate(self) -> None:
        options = self._options
        while (
            len(self._immutables) >= options.max_immutable_memtables
            or len(self._version.files(0)) >= options.compaction.l0_stop_writes_trigger
        ):
            await self._wait_for_progress()
        old = self._active
        old.freeze()
        segment = await self._wal.call(RotateWal())
        self._active = Memtable(segment)
        self._immutables.insert(0, old)
        self._publish()
        self._request_flush(old)

    async def _wait_for_progress(self) -> None:
        await self._progress.wait()

    async def _serve_control(self) -> None:
        async for notice in self._control_receive:
            if isinstance(notice, MemtableFlushed):
                self._immutables.remove(notice.memtable)
                self._version, self._tables = notice.version, notice.tables
                flushed = id(notice.memtable)
                still_waiting = []
                for pending, request in self._flush_waiters:
                    pending.discard(flushed)
                    if pending:
                        still_waiting.append((pending, request))
                    else:
                        request.reply.set(None)
                self._flush_waiters = still_waiting
            elif isinstance(notice, VersionInstalled):
                self._version, self._tables = notice.version, notice.tables
            self._publish()
            self._progress.set()
            self._progress = trio.Event()

    def _publish(self) -> None:
        memtables = (self._active, *self._immutables)
        self._publish_view(ReadView(memtables, self._version, self._tables))
