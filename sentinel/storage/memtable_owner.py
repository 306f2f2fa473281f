"""MemtableOwner: the actor that owns the memtables, the sequence counter and the read view.

Every write enters the engine here. For each write batch it, in one synchronous step,
assigns a contiguous range of sequence numbers and frames the WAL record; every batch
queued at that moment goes to the WalWriter as ONE ``WalAppend`` (one write syscall). The
WalWriter reports each append's outcome back, in order, on this actor's control channel;
only then are the batches applied to the active memtable (atomically: no reader can
observe half a batch) and their writers answered. So a write becomes visible only once its
WAL record is durable under the sync mode, and a write the WAL could not take (a full
disk) is never visible: it fails with :class:`DiskFullError` and changes nothing.

Write epochs (see ``wal_writer.py``): each ``Write`` carries the epoch the store had when
it was submitted; a failure reported by the WAL moves the epoch past the failed batch's,
and a batch submitted in an older epoch fails too, so a writer that pipelines (a partition
log assigning offsets) never gets a later batch stored after an earlier one failed.

When the active memtable reaches ``memtable_bytes`` it is frozen (after every batch handed
to the WAL has been applied), the WalWriter starts a new segment, and the Compactor is
asked to flush it. At most ``max_immutable_memtables`` wait for flush (and at most
``l0_stop_writes_trigger`` L0 files exist); beyond that, writes stall here until the
Compactor catches up: the back-pressure reaches every writer through this actor's bounded
mailbox. If the Compactor reports that it cannot make room (a full disk, or a damaged table
holding L0 at its bound), writes that would need a new memtable are refused with its
error (:class:`DiskFullError`, :class:`StorageNeedsRepair`) instead of stalling forever
(the memory bound holds); they are accepted again once a flush or compaction went through.

The Compactor (and the WalWriter) report on a second, unbounded *control* channel served by
its own task, so a stalled write loop can never deadlock against a Compactor waiting to
report. Its size is bounded by the number of immutable memtables, compactions and WAL
appends in flight.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, assert_never

import attrs
import trio

from sentinel.actors import Actor, Request
from sentinel.errors import ActorClosed, InvalidArgument, MailboxFull, WriteRefused
from sentinel.storage import builds
from sentinel.storage.manifest import Version
from sentinel.storage.memtable import Memtable
from sentinel.storage.options import StorageOptions
from sentinel.storage.sstable import SSTableReader
from sentinel.storage.view import ReadView
from sentinel.storage.wal_format import WalGroupEncoder
from sentinel.storage.wal_writer import RotateWal, StagedWrite, WalAppend, WalWriter

Op = tuple[bytes, bytes | None]


@attrs.define(slots=True, eq=False)
class Write(Request[int]):
    """From Store: an atomic batch of puts (value bytes) and deletes (value None), submitted
    in write epoch ``epoch``. Answered with the batch's last sequence number once it is
    durable (and visible)."""

    ops: Sequence[Op]
    epoch: int = 0


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


@attrs.frozen
class CompactorBlocked:
    """Control notice from Compactor: it cannot make room, for lack of space (its work is
    retried with back-off) or because a damaged table holds L0 at its stop-writes bound.
    Cleared by the next MemtableFlushed or VersionInstalled (the Compactor sends it again
    after those while it still holds)."""

    error: WriteRefused


@attrs.frozen
class WalWritten:
    """Control notice from WalWriter: ``append`` is durable (``error`` None) or failed."""

    append: WalAppend
    error: WriteRefused | None


#: What the owner's mailbox takes (from Store).
OwnerMessage = Write | Flush
#: What its control channel takes (from the Compactor and the WalWriter).
Notice = MemtableFlushed | VersionInstalled | CompactorBlocked | WalWritten


class MemtableOwner(Actor[OwnerMessage]):
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
        unflushed: Memtable | None = None,
    ) -> None:
        """``unflushed``: what recovery replayed but could not write to a table (a full
        disk at start-up); readable at once, flushed once the WAL has its segment."""
        super().__init__("memtable-owner")
        self._options = options
        self._wal = wal
        self._request_flush = request_flush
        self._publish_view = publish
        self._last_seq = last_seq
        self._active = Memtable(wal_segment)
        self._immutables: list[Memtable] = [] if unflushed is None else [unflushed]  # newest first
        self._unflushed = unflushed
        self._version = version
        self._tables = tables
        self._control_send, self._control_receive = trio.open_memory_channel[Notice](math.inf)
        self._progress = trio.Event()
        # Flush requests waiting for these memtables to reach an SSTable.
        self._flush_waiters: list[tuple[set[int], Flush]] = []
        self._epoch = 0
        self._epoch_error: WriteRefused | None = None
        # WalAppends handed to the WAL and not yet reported, and their framed bytes (the
        # memtable growth still to come).
        self._unresolved = 0
        self._unresolved_bytes = 0
        self._resolved = trio.Event()
        # Set while the Compactor reports that it cannot make room.
        self._compactor_blocked: WriteRefused | None = None
        # Set while the active memtable is full and cannot be frozen (why: a full disk, or
        # damage holding L0 at its bound).
        self._rotation_blocked: WriteRefused | None = None
        self._refused = 0

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def epoch(self) -> int:
        """The write epoch a batch submitted now belongs to (read by ``Store.submit``)."""
        return self._epoch

    @property
    def refused_writes(self) -> int:
        """Write batches refused for lack of space since start (a metric)."""
        return self._refused

    def notify(self, notice: MemtableFlushed | VersionInstalled | CompactorBlocked) -> None:
        """Called by the Compactor (same Trio thread); never blocks."""
        self._control_send.send_nowait(notice)

    def wal_written(self, append: WalAppend, error: WriteRefused | None) -> None:
        """Called by the WalWriter (same Trio thread), in append order; never blocks."""
        self._control_send.send_nowait(WalWritten(append, error))

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
            # Writes the WAL reported on that were never settled (a crash or a cancel).
            try:
                while True:
                    notice = self._control_receive.receive_nowait()
                    if isinstance(notice, WalWritten):
                        notice.append.fail(ActorClosed(f"{self.name} stopped before answering"))
            except (trio.WouldBlock, trio.EndOfChannel):
                pass

    async def on_start(self) -> None:
        self._publish()
        if self._unflushed is not None and self._wal.has_segment:
            self._request_flush(self._unflushed)
            self._unflushed = None

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._serve_control)
            # Every write queued while the previous group was being handed on is framed in
            # one pass and goes to the WalWriter as ONE message (one write syscall): the
            # per-write cost is an encode, not a task switch.
            limit = self._options.max_group_commit
            encoder: WalGroupEncoder = builds.wal_format.WalGroupEncoder()
            while batch := await self.receive_batch(limit):
                staged: list[StagedWrite] = []
                size = 0
                # What the group may stage before a rotation is due (``_rotation_due``): only
                # an await (this actor's, or another task's meanwhile) changes it.
                room = self._room()
                for message in batch:
                    if isinstance(message, Write):  # the hot path: one check, no match
                        if size < room and message.epoch >= self._epoch:
                            # Neither a rotation nor a refusal is due (see ``_refusal``).
                            size += self._stage(message, staged, encoder)
                            continue
                        if self._rotation_due(size):
                            # Rotation comes after the WAL has everything staged so far: the
                            # WAL mailbox is FIFO, so the old segment holds it.
                            await self._hand_to_wal(staged, encoder)
                            staged, size = [], 0
                            await self._rotate()
                        refusal = self._refusal(message, size)
                        if refusal is None:
                            size += self._stage(message, staged, encoder)
                        else:
                            await self._hand_to_wal(staged, encoder)
                            staged, size = [], 0
                            await self._hand_refusal(message, refusal)
                        room = self._room()
                        continue
                    await self._hand_to_wal(staged, encoder)
                    staged, size = [], 0
                    await self.handle(message)
                    room = self._room()
                await self._hand_to_wal(staged, encoder)
                self._in_flight = []
            # Every write handed on is answered before this actor stops.
            await self._wait_resolved()
            nursery.cancel_scope.cancel()

    async def handle(self, message: OwnerMessage) -> None:
        match message:
            case Flush():
                await self._flush(message)
            case Write():
                raise AssertionError("writes are served by serve() in batches")
            case _:
                assert_never(message)

    def _stage(self, write: Write, staged: list[StagedWrite], encoder: WalGroupEncoder) -> int:
        """Assign sequence numbers and encode the batch into the group's WAL record; returns
        the bytes it adds (0: refused)."""
        ops = write.ops
        first = self._last_seq + 1
        try:
            size = encoder.add(first, ops)
        except ValueError as exc:
            write.reply.fail(InvalidArgument(f"write batch rejected: {exc}"))
            return 0
        last = self._last_seq = first + len(ops) - 1
        staged.append(StagedWrite(write.reply, first, ops, last))
        return size

    def _rotation_due(self, staged_bytes: int) -> bool:
        return staged_bytes >= self._room()

    def _room(self) -> int:
        """Bytes of WAL records that may still be staged before the active memtable (with
        everything handed to the WAL and not yet applied) reaches its size."""
        return self._options.memtable_bytes - self._active.approximate_bytes - self._unresolved_bytes

    def _refusal(self, write: Write, staged_bytes: int) -> WriteRefused | None:
        """Why ``write`` must be refused, if it must."""
        if write.epoch < self._epoch:
            # A failure was reported after this was submitted: it fails too (in order, after
            # the batches before it, some of which may still be failing in the WAL).
            assert self._epoch_error is not None  # the epoch moves only with an error
            return self._epoch_error
        if self._rotation_blocked is not None and self._rotation_due(staged_bytes):
            return self._rotation_blocked
        return None

    async def _hand_to_wal(self, staged: list[StagedWrite], encoder: WalGroupEncoder) -> None:
        if not staged:
            return
        await self._send_to_wal(WalAppend(encoder.take(), staged, self._epoch))

    async def _hand_refusal(self, write: Write, error: WriteRefused) -> None:
        """Refuse through the WAL, so the failure is reported after every batch before it
        (never ahead of one still in flight) and counts for the epochs like a failed write."""
        staged = [StagedWrite(write.reply, 0, write.ops)]
        await self._send_to_wal(WalAppend(b"", staged, self._epoch, refusal=error))

    async def _send_to_wal(self, message: WalAppend) -> None:
        self._unresolved += 1
        self._unresolved_bytes += len(message.data)
        try:
            self._wal.cast_nowait(message)
        except MailboxFull:
            await self._wal.cast(message)

    def _settle(self, append: WalAppend, error: WriteRefused | None) -> None:
        """The WAL reported on ``append``: apply it and answer its writers, or fail them."""
        self._unresolved -= 1
        self._unresolved_bytes -= len(append.data)
        if error is None:
            writes = append.writes
            self._active.put_batches([(write.first_seq, write.ops) for write in writes])
            for write in writes:
                write.reply.set(write.last_seq)
            if self._unflushed is not None:
                # The WAL's segment exists now: the flush may name it as the log number.
                self._request_flush(self._unflushed)
                self._unflushed = None
        else:
            if append.epoch >= self._epoch:
                self._epoch = append.epoch + 1
                self._epoch_error = error
            self._refused += len(append.writes)
            for write in append.writes:
                write.reply.fail(error)
        if not self._unresolved:
            self._resolved.set()
            self._resolved = trio.Event()

    async def _wait_resolved(self) -> None:
        while self._unresolved:
            await self._resolved.wait()

    async def _flush(self, request: Flush) -> None:
        await self._wait_resolved()
        if len(self._active):
            await self._rotate(force=True)
            if self._rotation_blocked is not None:
                request.reply.fail(self._rotation_blocked)
                return
        if not self._immutables:
            request.reply.set(None)
            return
        self._flush_waiters.append(({id(m) for m in self._immutables}, request))

    async def _rotate(self, *, force: bool = False) -> None:
        """Freeze the active memtable and start the next WAL segment, waiting while the
        engine is at its limits; on a full disk leave ``_rotation_blocked`` set instead."""
        options = self._options
        while (
            len(self._immutables) >= options.max_immutable_memtables
            or len(self._version.files(0)) >= options.compaction.l0_stop_writes_trigger
        ):
            if self._compactor_blocked is not None:
                self._rotation_blocked = self._compactor_blocked
                return
            await self._wait_for_progress()
        await self._wait_resolved()
        if not len(self._active) or not (force or self._rotation_due(0)):
            self._rotation_blocked = None  # what was pending failed: nothing to freeze
            return
        try:
            segment = await self._wal.call(RotateWal())
        except WriteRefused as exc:  # a full disk (or the refusal that closed the last epoch)
            self._rotation_blocked = exc
            return
        self._rotation_blocked = None
        old = self._active
        old.freeze()
        self._active = Memtable(segment)
        self._immutables.insert(0, old)
        self._publish()
        self._request_flush(old)

    async def _wait_for_progress(self) -> None:
        await self._progress.wait()

    async def _serve_control(self) -> None:
        async for notice in self._control_receive:
            match notice:
                case WalWritten():
                    self._settle(notice.append, notice.error)
                    continue
                case MemtableFlushed():
                    self._flushed(notice)
                case VersionInstalled():
                    self._version, self._tables = notice.version, notice.tables
                    self._compactor_blocked = None
                    self._publish()
                case CompactorBlocked():
                    self._compactor_blocked = notice.error
                case _:
                    assert_never(notice)
            self._progress.set()
            self._progress = trio.Event()

    def _flushed(self, notice: MemtableFlushed) -> None:
        self._immutables.remove(notice.memtable)
        self._version, self._tables = notice.version, notice.tables
        self._compactor_blocked = None
        flushed = id(notice.memtable)
        still_waiting = []
        for pending, request in self._flush_waiters:
            pending.discard(flushed)
            if pending:
                still_waiting.append((pending, request))
            else:
                request.reply.set(None)
        self._flush_waiters = still_waiting
        self._publish()

    def _publish(self) -> None:
        memtables = (self._active, *self._immutables)
        self._publish_view(ReadView(memtables, self._version, self._tables))
