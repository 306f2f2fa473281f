"""WalWriter: the actor that owns the write-ahead log file.

It receives framed write batches from the MemtableOwner and answers each writer (through
the writer's own reply slot, carried in the message) once the frame is durable under the
sync mode:

* ``always``: every frame queued while the previous fsync ran is written with one write
  and made durable with one fsync (group commit); the fsync runs in a worker thread so the
  event loop keeps accepting writes meanwhile;
* ``interval``: written to the OS, then acknowledged; a ticker task fsyncs dirty data
  every ``sync_interval`` seconds;
* ``none``: written to the OS, then acknowledged; fsync only when a segment is retired.

Segments: ``wal-N.log``. Rotation (when the MemtableOwner freezes a memtable) fsyncs and
closes the current segment before opening the next, so recovery may assume that only the
newest segment can end in a torn write. Segments below the manifest's log number are
deleted on request once the memtables they backed are safe in SSTables.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from sentinel.actors import Actor, Reply, Request
from sentinel.storage.files import fsync_dir, parse_file_name, wal_path
from sentinel.storage.options import StorageOptions, SyncMode
from sentinel.storage.wal import WalFile


@attrs.define(slots=True, eq=False)
class WalAppend:
    """From MemtableOwner: one or more framed write batches, written together. Each
    ``(reply, last_seq)`` in ``acks`` is a writer's own reply slot, answered with its
    batch's last sequence number once the data is durable under the sync mode."""

    data: bytes
    acks: list[tuple[Reply[int], int]]

    def fail(self, error: BaseException) -> None:
        for reply, _seq in self.acks:
            reply.fail(error)


@attrs.define(slots=True, eq=False)
class RotateWal(Request[int]):
    """From MemtableOwner: retire the current segment; answers the new segment's number."""


@attrs.frozen
class DeleteWalsBelow:
    """From Compactor: segments numbered below ``number`` are no longer needed."""

    number: int


@attrs.frozen
class WalStatistics:
    segment: int
    appends: int
    bytes_written: int
    fsyncs: int
    fsync_seconds_total: float


class WalWriter(Actor[object]):
    # Bounded: when the disk cannot keep up, the MemtableOwner (and so every writer)
    # waits here instead of queueing without limit.
    mailbox_capacity = 1024

    def __init__(self, directory: Path, first_segment: int, options: StorageOptions) -> None:
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
        #: Observers of fsync latency in seconds (metrics hook); called on the Trio thread.
        self.on_fsync: list[Callable[[float], None]] = []
        if options.on_wal_fsync is not None:
            self.on_fsync.append(options.on_wal_fsync)

    def wal_statistics(self) -> WalStatistics:
        return WalStatistics(
            segment=self._segment,
            appends=self._appends,
            bytes_written=self._bytes,
            fsyncs=self._fsyncs,
            fsync_seconds_total=self._fsync_seconds,
        )

    async def on_start(self) -> None:
        # Recovery created this segment (empty) before the manifest named it: open it.
        self._file = await trio.to_thread.run_sync(
            WalFile.open_for_append, wal_path(self._directory, self._segment), 0
        )

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            if self._options.sync is SyncMode.INTERVAL:
                nursery.start_soon(self._sync_periodically)
            limit = self._options.max_group_commit
            while batch := await self.receive_batch(limit):
                appends: list[WalAppend] = []
                for message in batch:
                    if isinstance(message, WalAppend):
                        appends.append(message)
                        continue
                    await self._commit(appends)
                    appends = []
                    await self._handle_control(message)
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
                await self._sync(self._file)
                self._file.close()
                self._file = None

    async def _commit(self, appends: list[WalAppend]) -> None:
        if not appends:
            return
        data = appends[0].data if len(appends) == 1 else b"".join([a.data for a in appends])
        file = self._file
        assert file is not None
        if self._options.sync is SyncMode.ALWAYS:
            # Write and fsync off the event loop; a cancel waits for the thread (a write
            # is never abandoned half-way).
            started = time.perf_counter()
            await trio.to_thread.run_sync(_write_and_sync, file, data)
            self._record_fsync(time.perf_counter() - started)
        else:
            file.append(data)
            self._dirty = True
        self._bytes += len(data)
        for append in appends:
            self._appends += len(append.acks)
            for reply, last_seq in append.acks:
                reply.set(last_seq)

    async def _handle_control(self, message: object) -> None:
        if isinstance(message, RotateWal):
            async with self._file_lock:
                old = self._file
                assert old is not None
                await self._sync(old)
                old.close()
                self._segment += 1
                self._file = await trio.to_thread.run_sync(
                    WalFile.create, wal_path(self._directory, self._segment)
                )
            message.reply.set(self._segment)
        elif isinstance(message, DeleteWalsBelow):
            await trio.to_thread.run_sync(self._delete_below, message.number)
        else:
            raise TypeError(f"wal-writer got an unexpected message {message!r}")

    async def _sync(self, file: WalFile) -> None:
        started = time.perf_counter()
        # Cleared before the fsync starts: a write made while it runs marks the file dirty
        # again, so the next tick covers it.
        self._dirty = False
        await trio.to_thread.run_sync(file.sync)
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
                    self._dirty = False
                    await self._sync(self._file)

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
            fsync_dir(self._directory)


def _write_and_sync(file: WalFile, data: bytes) -> None:
    file.append(data)
    file.sync()
