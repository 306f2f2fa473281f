"""Store: the storage supervisor and the engine's public face.

``Store.run`` is the storage subtree of a node::

    Store.run (storage supervisor nursery)
    ├─ WalWriter      owns the WAL segment: group commit, fsync policy, rotation
    ├─ Compactor      owns the manifest and SSTables: flushes, leveled compaction
    └─ MemtableOwner  owns the memtables, sequence numbers and the published read view

Start it with ``await nursery.start(store.run)`` (recovery runs before ``started``) or use
``open_store`` as an async context manager. Any actor failure propagates out of ``run``
and fails the node loudly: a storage engine that hit an IO error cannot be trusted to
keep acknowledging writes. A full disk is the exception: writes are refused with
:class:`DiskFullError` (naming the file), reads go on, and writes are accepted again once
space is freed (``wal_writer.py``, ``memtable_owner.py``, ``compactor.py``); a store that
opens on a full disk serves what recovery replayed from memory until it can write it.
A damaged table that a compaction meets does not fail anything either: it is kept as it is,
reported, and left out of compactions; only if it holds L0 at its stop-writes bound are
writes refused, with :class:`StorageNeedsRepair` naming it (``compactor.py``).

Graceful shutdown (``aclose``) runs in a fixed order, under a shield, in bounded time:
the MemtableOwner stops taking writes and hands its queue to the WAL; the WalWriter
writes and fsyncs everything queued and closes its segment; the Compactor finishes a
queued flush (no new compaction starts); the manifest and the directory lock are
released. Nothing acknowledged depends on a flush: the WAL already holds it.

Reads (``get``, ``scan``) use the immutable view the MemtableOwner publishes: no actor
round trip per key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from sentinel.actors import Reply
from sentinel.errors import (
    CorruptionError,
    DiskFullError,
    InvalidArgument,
    MailboxFull,
    StorageClosed,
    StorageNeedsRepair,
    WriteRefused,
)
from sentinel.storage.compactor import CompactAll, CompactionStatistics, Compactor, FlushMemtable, Reclaim
from sentinel.storage.iterators import Entry
from sentinel.storage.manifest import NUM_LEVELS, Version
from sentinel.storage.memtable import Memtable
from sentinel.storage.memtable_owner import Flush, MemtableOwner, Write
from sentinel.storage.options import RunInThread, StorageOptions
from sentinel.storage.processes import WorkerProcess
from sentinel.storage.recovery import Recovered, recover, unlock_directory
from sentinel.storage.sstable import DamagedBlock
from sentinel.storage.view import ReadView
from sentinel.storage.wal_writer import WalStatistics, WalWriter

# Upper bound on a graceful close: long enough to fsync a WAL and finish one flush on a
# slow disk; after it the actors are cancelled (the WAL still holds every acknowledged write).
CLOSE_TIMEOUT_SECONDS = 30.0


@attrs.frozen
class StorageStatistics:
    last_seq: int
    memtable_bytes: int
    immutable_memtables: int
    tables_per_level: tuple[int, ...]
    bytes_per_level: tuple[int, ...]
    wal: WalStatistics
    compaction: CompactionStatistics
    #: Write batches refused for lack of space since the store opened.
    writes_refused: int = 0
    #: The disk-full error the engine is meeting now (None: writes and flushes succeed).
    disk_full: DiskFullError | None = None
    #: Tables a compaction found damaged since the store opened (each left out of compactions).
    damaged_tables: tuple[CorruptionError, ...] = ()
    #: Why writes needing room are refused now because of damage (None: they are not).
    needs_repair: StorageNeedsRepair | None = None


class Store:
    def __init__(
        self,
        directory: Path | str,
        options: StorageOptions | None = None,
        *,
        run_in_thread: RunInThread | None = None,
        run_in_process: WorkerProcess | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.options = options or StorageOptions()
        self._thread = run_in_thread or trio.to_thread.run_sync
        # Flushes and compactions write their tables in this worker process when given (the
        # store owns it: closed when the store stops); else in worker threads. See compactor.py.
        self._process = run_in_process
        self._view: ReadView | None = None
        self._view_published = trio.Event()  # set (and replaced) whenever _view changes
        self._refused_up_front = 0  # writes refused by check_space (counted with the engine's)
        self._closing = trio.Event()
        self._closed = trio.Event()
        self._started = False
        self._accepting = False
        self.recovery_report: tuple[str, ...] = ()
        #: (things dropped, WAL bytes dropped) by the recovery of this open: for the metrics.
        self.recovery_drops: tuple[int, int] = (0, 0)
        self._wal: WalWriter | None = None
        self._compactor: Compactor | None = None
        self._memtables: MemtableOwner | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Store] = trio.TASK_STATUS_IGNORED) -> None:
        if self._started or self._closing.is_set():
            raise StorageClosed(f"store {self.directory} was already started or closed; make a new Store")
        self._started = True
        try:
            recovered: Recovered = await self._thread(recover, self.directory, self.options)
        except BaseException:
            self._close_process()
            self._closed.set()  # nothing to close: aclose must not wait for a run that never was
            raise
        self.recovery_report = recovered.report
        self.recovery_drops = (recovered.drops, recovered.dropped_bytes)
        try:
            async with trio.open_nursery() as nursery:
                memtables: MemtableOwner | None = None

                def notify(notice: Any) -> None:
                    assert memtables is not None
                    memtables.notify(notice)

                def wal_written(append: Any, error: WriteRefused | None) -> None:
                    assert memtables is not None
                    memtables.wal_written(append, error)

                wal = self._wal = WalWriter(
                    self.directory,
                    recovered.wal_segment,
                    self.options,
                    on_written=wal_written,
                    run_in_thread=self._thread,
                )

                compactor = self._compactor = Compactor(
                    directory=self.directory,
                    manifest=recovered.manifest,
                    state=recovered.state,
                    tables=recovered.tables,
                    options=self.options,
                    wal=wal,
                    notify=notify,
                    run_in_thread=self._thread,
                    run_in_process=self._process,
                )

                def request_flush(memtable: Memtable) -> None:
                    compactor.cast_nowait(FlushMemtable(memtable))

                memtables = self._memtables = MemtableOwner(
                    options=self.options,
                    wal=wal,
                    request_flush=request_flush,
                    publish=self._publish,
                    last_seq=recovered.last_seq,
                    wal_segment=recovered.wal_segment,
                    version=recovered.state.version,
                    tables=dict(recovered.tables),
                    unflushed=recovered.unflushed,
                )
                await nursery.start(wal.run)
                await nursery.start(compactor.run)
                await nursery.start(memtables.run)
                self._accepting = True
                task_status.started(self)
                await self._closing.wait()
                self._accepting = False
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + CLOSE_TIMEOUT_SECONDS
                    for actor in (memtables, wal, compactor):
                        actor.close()
                        await actor.wait_stopped()
                nursery.cancel_scope.cancel()
        finally:
            self._accepting = False
            # Every actor has stopped: nothing reads the tables any more. Readers get
            # StorageClosed from here on rather than a view over closed files.
            self._publish(None)
            if self._compactor is not None:
                self._compactor.close_tables()
            else:
                for reader in recovered.tables.values():
                    reader.close()
            recovered.manifest.close()
            unlock_directory(recovered.lock_fd)
            self._close_process()
            self._closed.set()

    def _close_process(self) -> None:
        if self._process is not None:
            # Idle: the Compactor has stopped, and every job it ran was answered (the wait
            # for one is not cancellable).
            self._process.close()

    async def aclose(self) -> None:
        """Graceful, ordered shutdown (see the module docstring); idempotent. On a Store
        that was never started it only marks it closed."""
        self._closing.set()
        if not self._started:
            self._closed.set()
        with trio.CancelScope(shield=True):
            await self._closed.wait()

    def _publish(self, view: ReadView | None) -> None:
        self._view = view
        self._view_published.set()
        self._view_published = trio.Event()

    # -- writes ----------------------------------------------------------------------

    def write(self, ops: Sequence[tuple[bytes, bytes | None]]) -> Awaitable[int]:
        """Apply puts (value bytes) and deletes (value None) atomically: ``await
        store.write(ops)`` returns the batch's last sequence number once it is durable under
        the configured sync mode.

        The batch is checked and handed to the engine when ``write`` is called (invalid
        input and a closed store raise then); the awaitable is the wait for durability.
        Not a coroutine of its own: the wait is the owner's reply, one coroutine frame
        fewer on every write's suspension and wake-up."""
        for key, value in ops:
            if type(key) is not bytes or not (value is None or type(value) is bytes):
                raise InvalidArgument("keys must be bytes and values bytes or None")
        owner = self._memtables
        if not self._accepting or owner is None:
            raise StorageClosed(f"store {self.directory} is not open")
        return owner.call(Write(ops, owner.epoch))

    async def submit(
        self, ops: Sequence[tuple[bytes, bytes | None]], reply: Reply[int] | None = None
    ) -> Reply[int]:
        """Enqueue a write batch and return its reply slot without waiting for durability.

        Waits only while the engine's mailbox is full (back-pressure). Writes submitted
        from one task, or from several without a checkpoint in between, are applied in
        submission order. ``reply`` may be a subclass that observes completion.

        On a full disk the reply fails with :class:`DiskFullError`, and so does every batch
        submitted before that failure was reported (whatever happens to the disk meanwhile):
        a caller that pipelines batches sees a failed suffix, never a hole.
        """
        for key, value in ops:
            if type(key) is not bytes or not (value is None or type(value) is bytes):
                raise InvalidArgument("keys must be bytes and values bytes or None")
        owner = self._owner()
        # The epoch is taken now, before any wait: a failure reported after this call fails
        # this batch too (see wal_writer.py), so a caller's batches never leave a hole.
        epoch = owner.epoch
        request = Write(ops=ops, epoch=epoch) if reply is None else Write(ops=ops, epoch=epoch, reply=reply)
        try:
            owner.cast_nowait(request)
        except MailboxFull:
            await owner.cast(request)
        return request.reply

    async def put(self, key: bytes, value: bytes) -> int:
        return await self.write(((key, value),))

    async def delete(self, key: bytes) -> int:
        return await self.write(((key, None),))

    async def flush(self) -> None:
        """Freeze the active memtable and wait until every memtable is in an SSTable."""
        await self._owner().call(Flush())

    async def compact(self) -> None:
        """Manual compaction: push every table down to the last level. Where a damaged table
        keeps some from going down, the rest is done and :class:`StorageNeedsRepair` says
        which table is in the way."""
        await self.flush()
        compactor = self._compactor
        assert compactor is not None
        try:
            await compactor.call(CompactAll())
        except StorageNeedsRepair:
            await self._view_of(compactor.version)  # what it could do is done: show it
            raise
        await self._view_of(compactor.version)

    async def reclaim(self, ranges: Sequence[tuple[bytes, bytes]] = ()) -> int:
        """Let the compaction filter drop obsolete data that rests in tables no compaction
        would rewrite: tables meeting ``ranges`` (each ``[start, end)``, the key ranges the
        caller knows became obsolete) or starting or ending with an obsolete key are
        rewritten in place. Returns how many tables were rewritten (a damaged table is not:
        its obsolete entries stay)."""
        self._owner()  # raises StorageClosed when closed
        compactor = self._compactor
        assert compactor is not None
        rewritten = await compactor.call(Reclaim(tuple(ranges)))
        await self._view_of(compactor.version)
        return rewritten

    async def _view_of(self, version: Version) -> None:
        """Wait until the published view holds ``version``: the compactor's answer can
        overtake the notice that makes the MemtableOwner publish it, and reads (and
        statistics) after a compaction must see its result."""
        while self._view is not None and self._view.version is not version:
            await self._view_published.wait()

    def _owner(self) -> MemtableOwner:
        if not self._accepting or self._memtables is None:
            raise StorageClosed(f"store {self.directory} is not open")
        return self._memtables

    # -- reads -----------------------------------------------------------------------

    @property
    def view(self) -> ReadView:
        if self._view is None:
            raise StorageClosed(f"store {self.directory} is not open")
        return self._view

    def get(self, key: bytes) -> bytes | None:
        return self.view.get(key)

    def scan(
        self,
        start: bytes | None = None,
        end: bytes | None = None,
        *,
        on_damage: Callable[[DamagedBlock], None] | None = None,
    ) -> Iterator[tuple[bytes, bytes]]:
        """Live pairs in key order; ``on_damage``: report damaged table blocks and skip them
        instead of raising (``ReadView.scan``)."""
        return self.view.scan(start, end, on_damage=on_damage)

    def scan_entries(self, start: bytes | None = None, end: bytes | None = None) -> Iterable[Entry]:
        return self.view.scan_entries(start, end)

    # -- observability ---------------------------------------------------------------

    @property
    def disk_full(self) -> DiskFullError | None:
        """The error writes are refused with while the disk is full (None when it is not):
        lets a caller refuse a write up front instead of queueing it. A compaction that
        lacks room does not count: writes still fit (they are refused once flushes fail)."""
        wal, compactor = self._wal, self._compactor
        if wal is None or compactor is None:
            return None
        return wal.disk_full or compactor.flush_blocked

    def check_space(self) -> None:
        """Raise the error writes are refused with now (the disk is full, or a damaged table
        holds L0 at its bound: storage needs repair) and count it as a refused write: a
        caller refuses up front instead of queueing a write that would be held."""
        refusal: WriteRefused | None = self.disk_full
        if refusal is None and self._compactor is not None:
            refusal = self._compactor.needs_repair
        if refusal is not None:
            self._refused_up_front += 1
            raise refusal

    def statistics(self) -> StorageStatistics:
        assert self._memtables is not None and self._wal is not None and self._compactor is not None
        version = self.view.version
        return StorageStatistics(
            last_seq=self._memtables.last_seq,
            memtable_bytes=self._memtables.memtable_bytes(),
            immutable_memtables=self._memtables.immutable_count(),
            tables_per_level=tuple(len(version.files(level)) for level in range(NUM_LEVELS)),
            bytes_per_level=tuple(version.level_bytes(level) for level in range(NUM_LEVELS)),
            wal=self._wal.wal_statistics(),
            compaction=self._compactor.compaction_statistics(),
            writes_refused=self._memtables.refused_writes + self._refused_up_front,
            disk_full=self._wal.disk_full or self._compactor.disk_full,
            damaged_tables=self._compactor.damaged_tables,
            needs_repair=self._compactor.needs_repair,
        )


@asynccontextmanager
async def open_store(
    directory: Path | str,
    options: StorageOptions | None = None,
    *,
    run_in_process: WorkerProcess | None = None,
) -> AsyncIterator[Store]:
    """Run a Store for the duration of the block, closing it gracefully at the end."""
    async with trio.open_nursery() as nursery:
        store: Store = await nursery.start(Store(directory, options, run_in_process=run_in_process).run)
        try:
            yield store
        finally:
            await store.aclose()
