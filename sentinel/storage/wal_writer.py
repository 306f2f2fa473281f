"""WalWriter: the actor that owns the write-ahead log file.

It receives framed write batches from the MemtableOwner, writes them, and reports each
batch's outcome back to the owner (``on_written``) in the order the batches arrived; the
owner then makes them visible and answers the writers. A batch counts as written once it
is durable under the sync mode:

* ``always``: every frame queued while the previous fsync ran is written with one write
  and made durable with one fsync (group commit); the fsync runs in a worker thread so the
  event loop keeps accepting writes meanwhile;
* ``interval``: written to the OS, then reported; a ticker task fsyncs dirty data every
  ``sync_interval`` seconds;
* ``none``: written to the OS, then reported; fsync only when a segment is retired.

Segments: ``wal-N.log``. Rotation (when the MemtableOwner freezes a memtable) creates the
next segment, then fsyncs and closes the current one, so recovery may assume that only
the newest segment can end in a torn write. Segments below the manifest's log number are
deleted on request once the memtables they backed are safe in SSTables.

A full disk (:class:`DiskFullError`) is not fatal: it fails exactly the batches it hit and
the node goes on.

* A write that fails is cut back to the last whole frame (``WalFile``); under ``always``
  a failed fsync cuts back the group it was making durable. Those batches are reported
  failed; nothing of them is ever visible.
* Under ``interval`` and ``none`` a failed fsync concerns batches already acknowledged:
  they stay in the file (and in the memtable), the sync is retried (every tick, and
  before each new write), and new batches are refused until it succeeds.
* **Write epochs** keep a failure from leaving a hole in a writer's sequence (a partition
  log assigns offsets before its batches reach here): every batch carries the epoch the
  store had when it was submitted, and each failure moves ``min_epoch`` past the failed
  batch's epoch, so every batch submitted before the failure was reported fails too, even
  if space came back in between. The owner adopts the new epoch when it reports the
  failure, so a writer that has seen the failure submits in the new epoch.
* The next batch of a current epoch is simply tried: writes are accepted again as soon
  as the disk has room, with no polling.
* A segment that recovery could not create (disk full at start-up) is created before the
  first write that needs it.

Any other IO error still fails the node (see the storage DESIGN's failure policy).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, assert_never

import attrs
import trio

from sentinel.actors import Actor, Reply, Request
from sentinel.errors import DiskFullError, WriteRefused
from sentinel.storage.files import fsync_dir, is_disk_full, parse_file_name, wal_path
from sentinel.storage.options import RunInThread, StorageOptions, SyncMode
from sentinel.storage.wal import WalFile

logger = logging.getLogger(__name__)


@attrs.define(slots=True, eq=False)
class StagedWrite:
    """One writer's batch, held by the MemtableOwner until the WAL reports on it."""

    reply: Reply[int]
    first_seq: int
    ops: Sequence[tuple[bytes, bytes | None]]
    last_seq: int = attrs.field()

    @last_seq.default
    def _last_seq(self) -> int:
        return self.first_seq + len(self.ops) - 1


@attrs.define(slots=True, eq=False)
class WalAppend:
    """From MemtableOwner: framed write batches to write together (``data``), submitted in
    write epoch ``epoch``. ``refusal`` set: the owner refused them (no room to grow the
    memtable); they are reported failed in their place in the order, and count as a failure
    for the epochs."""

    data: bytes
    writes: list[StagedWrite]
    epoch: int
    refusal: WriteRefused | None = None

    def fail(self, error: BaseException) -> None:
        """Answer every writer (the WAL stopped before reporting on this batch)."""
        for write in self.writes:
            write.reply.fail(error)


#: The WAL reports each WalAppend here, in order: None when written, else why not.
OnWritten = Callable[[WalAppend, WriteRefused | None], None]


@attrs.define(slots=True, eq=False)
class RotateWal(Request[int]):
    """From MemtableOwner: retire the current segment; answers the new segment's number,
    or fails with DiskFullError (then nothing changed: the current segment stays)."""


@attrs.frozen
class DeleteWalsBelow:
    """From Compactor: segments numbered below ``number`` are no longer needed."""

    number: int


#: What the WalWriter's mailbox takes (the MemtableOwner sends the first two, the Compactor the last).
WalMessage = WalAppend | RotateWal | DeleteWalsBelow


@attrs.frozen
class WalStatistics:
    segment: int
    appends: int
    bytes_written: int
    fsyncs: int
    fsync_seconds_total: float


class WalWriter(Actor[WalMessage]):
    # Bounded: when the disk cannot keep up, the MemtableOwner (and so every writer)
    # waits here instead of queueing without limit.
    mailbox_capacity = 1024

    def __init__(
        self,
        directory: Path,
        first_segment: int,
        options: StorageOptions,
        *,
        on_written: OnWritten | None = None,
        run_in_thread: RunInThread | None = None,
    ) -> None:
        super().__init__("wal-writer")
        self._directory = directory
        self._segment = first_segment
        self._options = options
        self._file: WalFile | None = None
        self._dirty = False
        # Guards the file object against the interval ticker while a rotation swaps it.
        self._file_lock = trio.Lock()
        self._appends = 0
        self._bytes = 0
        self._fsyncs = 0
        self._fsync_seconds = 0.0
        self._thread: Callable[..., Awaitable[Any]] = run_in_thread or trio.to_thread.run_sync
        #: Where each batch's outcome goes (the MemtableOwner); set before ``run``.
        self.on_written: OnWritten | None = on_written
        # Batches of an epoch below this fail unwritten (see the module docstring).
        self._min_epoch = 0
        # Why batches of old epochs fail: the error that moved _min_epoch.
        self._epoch_error: WriteRefused | None = None
        # A failed fsync of acknowledged data (interval, none): refuse until a sync succeeds.
        self._unsynced: DiskFullError | None = None
        #: The last disk-full error met, None once a write or sync succeeded since (metrics).
        self.disk_full: DiskFullError | None = None
        #: Observers of fsync latency in seconds (metrics hook); called on the Trio thread.
        self.on_fsync: list[Callable[[float], None]] = []
        if options.on_wal_fsync is not None:
            self.on_fsync.append(options.on_wal_fsync)

    @property
    def has_segment(self) -> bool:
        """True once the segment being written exists and is open."""
        return self._file is not None

    def wal_statistics(self) -> WalStatistics:
        return WalStatistics(
            segment=self._segment,
            appends=self._appends,
            bytes_written=self._bytes,
            fsyncs=self._fsyncs,
            fsync_seconds_total=self._fsync_seconds,
        )

    async def on_start(self) -> None:
        path = wal_path(self._directory, self._segment)
        # Recovery created this segment (empty) before the manifest named it; on a full
        # disk it may not have managed to: then the first write creates it.
        if await self._thread(path.exists):
            self._file = await self._thread(WalFile.open_for_append, path, 0)

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            if self._options.sync is SyncMode.INTERVAL:
                nursery.start_soon(self._sync_periodically)
            limit = self._options.max_group_commit
            while batch := await self.receive_batch(limit):
                appends: list[WalAppend] = []
                for message in batch:
                    match message:
                        case WalAppend():
                            appends.append(message)
                        case RotateWal() | DeleteWalsBelow():
                            await self._commit(appends)
                            appends = []
                            await self._handle_control(message)
                        case _:
                            assert_never(message)
                await self._commit(appends)
                self._in_flight = []
            nursery.cancel_scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await super().run(task_status=task_status)
        finally:
            # A crash or a cancel skips on_stop: still release the segment's descriptor.
            if self._file is not None:
                self._file.close()
                self._file = None

    async def on_stop(self) -> None:
        async with self._file_lock:
            if self._file is not None:
                try:
                    await self._sync(self._file)
                except DiskFullError as exc:
                    # Shutting down on a full disk: what was written stays in the file (and
                    # the OS has it); recovery replays whatever of it reached the disk.
                    logger.warning("closing the WAL without a final fsync: %s", exc)
                self._file.close()
                self._file = None

    # -- writing -----------------------------------------------------------------------

    async def _commit(self, appends: list[WalAppend]) -> None:
        """Write the batches in order: each run of current-epoch batches with one write,
        the others (refused, or of an epoch a failure closed) reported failed in place."""
        run: list[WalAppend] = []
        for append in appends:
            if append.refusal is None and append.epoch >= self._min_epoch:
                run.append(append)
                continue
            await self._write_run(run)
            run = []
            # The run may have failed and closed this batch's epoch too: decide only now.
            if append.refusal is None and append.epoch >= self._min_epoch:
                run.append(append)
            else:
                error = append.refusal or self._epoch_error
                assert error is not None
                self._report_failed([append], error)
        await self._write_run(run)

    async def _write_run(self, run: list[WalAppend]) -> None:
        if not run:
            return
        data = run[0].data if len(run) == 1 else b"".join([a.data for a in run])
        try:
            file = await self._writable_file()
            if self._options.sync is SyncMode.ALWAYS:
                # Write and fsync off the event loop; a cancel waits for the thread (a write
                # is never abandoned half-way).
                started = time.perf_counter()
                await self._thread(_write_and_sync, file, data)
                self._record_fsync(time.perf_counter() - started)
            else:
                file.append(data)
                self._dirty = True
        except DiskFullError as exc:
            self.disk_full = exc
            self._report_failed(run, exc)
            return
        self.disk_full = None
        self._bytes += len(data)
        report = self.on_written
        assert report is not None
        for append in run:
            self._appends += len(append.writes)
            report(append, None)

    async def _writable_file(self) -> WalFile:
        """The open segment, ready for an append (DiskFullError when it cannot be)."""
        if self._file is None:
            self._file = await self._thread(WalFile.create, wal_path(self._directory, self._segment))
        if self._unsynced is not None:
            async with self._file_lock:
                await self._sync(self._file)
        return self._file

    def _report_failed(self, appends: list[WalAppend], error: WriteRefused) -> None:
        epoch = max(a.epoch for a in appends)
        if epoch >= self._min_epoch:
            self._min_epoch = epoch + 1
            self._epoch_error = error
        report = self.on_written
        assert report is not None
        for append in appends:
            report(append, error)

    # -- control -----------------------------------------------------------------------

    async def _handle_control(self, message: RotateWal | DeleteWalsBelow) -> None:
        match message:
            case RotateWal():
                async with self._file_lock:
                    try:
                        segment = await self._rotate()
                    except DiskFullError as exc:
                        self.disk_full = exc
                        message.reply.fail(exc)
                        return
                message.reply.set(segment)
            case DeleteWalsBelow():
                await self._thread(self._delete_below, message.number)
            case _:
                assert_never(message)

    async def _rotate(self) -> int:
        """Create the next segment, make the current one durable, switch. On a full disk
        nothing changes (the new segment is removed again) and DiskFullError is raised."""
        old = self._file
        if old is None:
            raise self._epoch_error or DiskFullError(
                str(wal_path(self._directory, self._segment)), "the segment could not be created"
            )
        path = wal_path(self._directory, self._segment + 1)
        new = await self._thread(WalFile.create, path)
        try:
            await self._sync(old)
        except BaseException:
            new.close()
            await self._thread(_remove_quietly, path)
            raise
        old.close()
        self._file = new
        self._segment += 1
        return self._segment

    async def _sync(self, file: WalFile) -> None:
        started = time.perf_counter()
        # Cleared before the fsync starts: a write made while it runs marks the file dirty
        # again, so the next tick covers it.
        self._dirty = False
        try:
            await self._thread(file.sync)
        except DiskFullError as exc:
            self._dirty = True
            self._unsynced = self.disk_full = exc
            raise
        self._unsynced = None
        self._record_fsync(time.perf_counter() - started)

    def _record_fsync(self, seconds: float) -> None:
        self._fsyncs += 1
        self._fsync_seconds += seconds
        for observer in self.on_fsync:
            observer(seconds)

    async def _sync_periodically(self) -> None:
        while True:
            await trio.sleep(self._options.sync_interval)
            if not self._dirty:
                continue
            async with self._file_lock:
                if self._file is not None:
                    try:
                        await self._sync(self._file)
                    except DiskFullError:
                        pass  # new writes are refused until a later tick (or write) syncs

    def _delete_below(self, number: int) -> None:
        removed = False
        for name in os.listdir(self._directory):
            parsed = parse_file_name(name)
            if parsed is None or parsed[0] != "wal":
                continue
            if parsed[1] < number and parsed[1] != self._segment:
                os.unlink(self._directory / name)
                removed = True
        if removed:
            try:
                fsync_dir(self._directory)
            except OSError as exc:
                # The files are gone; if the deletes are undone by a crash, recovery finds
                # them below the log number and deletes them again.
                if not is_disk_full(exc):
                    raise


def _write_and_sync(file: WalFile, data: bytes) -> None:
    size = file.size
    file.append(data)
    try:
        file.sync()
    except DiskFullError:
        # These batches fail: they must not come back from the file either.
        file.cut_back(size)
        raise


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
        fsync_dir(path.parent)
    except OSError as exc:
        if not is_disk_full(exc):
            raise


__all__ = [
    "DeleteWalsBelow",
    "OnWritten",
    "RotateWal",
    "StagedWrite",
    "WalAppend",
    "WalMessage",
    "WalStatistics",
    "WalWriter",
]
