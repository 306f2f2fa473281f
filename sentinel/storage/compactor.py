"""Compactor: the actor that owns the manifest, the SSTable files and their readers.

Work, in priority order:

1. flush an immutable memtable to one L0 SSTable (flushes unblock stalled writers, so a
   queued flush always goes before the next compaction);
2. run the compaction the planner (``compaction.py``) finds most urgent, one at a time.

Every change follows the same durable order: write the new SSTables and fsync them, fsync
the directory, append the version edit to the manifest and fsync it, *then* tell the
MemtableOwner (which publishes the new read view), and only then delete what the new
version no longer names (input tables; WAL segments below the new log number). A crash at
any point leaves either the old version with some orphan files (deleted on the next open)
or the new version with some garbage. File writing and fsyncs run in worker threads so
the event loop stays responsive.

Where the tables are written: given a worker process (``Store(run_in_process=...)``: the
broker's and the benchmark's), flushes and compactions of small entries
(``PROCESS_MAX_ENTRY_BYTES``) write them there, off this process's GIL, which a thread
would hold ~1 us per entry. A compaction is a pure job of table files (``run_compaction``:
numbers in, the compaction filter's snapshot if it has one, fsynced tables out; the output
file numbers are allocated here, ahead). A flush writes its table from the memtable's WAL
segment (``run_flush``), which holds exactly the memtable's records; a segment that does
not replay to the memtable (checked: key count and seq range) is refused and the memtable
is flushed from memory in a thread, as it is without a process. Whatever runs where, the
manifest edit, the readers and every rule below stay here.

A full disk (:class:`DiskFullError` from a table write, the manifest or the directory) is
not fatal: the work that met it is undone (its new tables deleted at once: they hold
space the disk lacks; a refused manifest edit is cut back by ``Manifest``), the
MemtableOwner is told (``CompactorBlocked``: writes that need a new memtable are refused
rather than stalled), and the same work is retried after a back-off that doubles from
``RETRY_MIN_SECONDS`` up to ``FLUSH_RETRY_MAX_SECONDS`` for flushes (writes wait for them)
and ``COMPACTION_RETRY_MAX_SECONDS`` for compactions. Each retry first checks with a small
probe file that space was freed, and a compaction also that the filesystem has as many
bytes free as its inputs hold, so a compaction that cannot fit does not rewrite its
inputs again and again. Immutable memtables keep their data (readable) until their flush
succeeds. Manual requests (``CompactAll``, ``Reclaim``) that meet a full disk fail
with the error instead. While closing, a flush that meets a full disk is given up: the WAL
still holds its data and the next open replays it.

A damaged input (a data block failing its checksum: ``CorruptionError`` from a table's
scan) fails only the compaction that read it, and changes nothing: the tables it had
written are deleted before any manifest edit names them, and the damaged table stays as it
is, live and readable around the damaged block (never rewritten without the block, which
would silently drop its entries; never deleted). It is reported once (an ERROR log line
naming the file and byte; ``damaged_tables`` feeds a gauge) and the planner leaves it out
of every later plan (``compaction.py``), so compaction goes on wherever it does not need
the table. Where it does: a damaged table holds back the L0 files that overlap it, and if
L0 reaches ``l0_stop_writes_trigger`` with nothing left that can go down, the MemtableOwner
is told (``CompactorBlocked`` with :class:`StorageNeedsRepair` naming the file and byte) so
writes that need room are refused rather than stalled forever; reads go on. Nothing is
remembered across a restart: the next compaction that reads the table finds the damage
again and the same happens (no crash loop). ``CompactAll`` does what it can and then fails
with :class:`StorageNeedsRepair`; ``Reclaim`` skips damaged tables.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol, assert_never

import attrs
import trio

from sentinel.actors import Actor, Request
from sentinel.errors import ActorClosed, CorruptionError, DiskFullError, StorageNeedsRepair
from sentinel.storage.compaction import (
    Compaction,
    compaction_for_level,
    l0_blockers,
    pick_compaction,
    reclaim_plans,
)
from sentinel.storage.files import (
    disk_full_error,
    free_bytes,
    fsync_dir,
    is_disk_full,
    probe_free_space,
    sst_path,
    wal_path,
)
from sentinel.storage.iterators import Entry, merge_entries
from sentinel.storage.manifest import NUM_LEVELS, FileMeta, Manifest, ManifestState, Version, VersionEdit
from sentinel.storage.memtable import Memtable
from sentinel.storage.memtable_owner import CompactorBlocked, MemtableFlushed, VersionInstalled
from sentinel.storage.options import RunInProcess, RunInThread, StorageOptions
from sentinel.storage.sstable import SSTableInfo, SSTableReader, SSTableWriter
from sentinel.storage.wal import replay_wal
from sentinel.storage.wal_writer import DeleteWalsBelow, WalWriter

logger = logging.getLogger(__name__)

# Back-off between retries of work that met a full disk: short at first (an operator who
# frees space gets writes back quickly), doubling up to a bound. Writes wait for flushes, so
# a flush is retried at least every second (a disk that stays full costs a probe file per
# second); a compaction only costs read amplification while it waits, so it backs off longer
# (a retry that cannot fit costs a probe file and a statvfs: see _attempt).
RETRY_MIN_SECONDS = 0.05
FLUSH_RETRY_MAX_SECONDS = 1.0
COMPACTION_RETRY_MAX_SECONDS = 5.0
# Flushes and compactions of entries averaging at most this many bytes go to the worker
# process, if the store has one (a memtable's entries are counted with its ~120 bytes of
# overhead each, a table's as stored): in a thread they hold the GIL ~1 us per entry, most
# of their cost for small entries (single puts). Larger entries (record batches as values)
# cost a thread little GIL (checksums and writes of large buffers release it), and in the
# process they only added CPU on a two-core machine (the worker's start-up, a flush's WAL
# replay re-reading every byte): measured with batches of 100 KB, 0.95-1.08M records/s
# against 1.16-1.28M in threads, in interleaved runs.
PROCESS_MAX_ENTRY_BYTES = 1024


@attrs.define
class Backoff:
    """When work that met a full disk may be tried again (times on the Trio clock)."""

    limit: float
    delay: float = RETRY_MIN_SECONDS
    retry_at: float = -math.inf
    error: DiskFullError | None = None

    def failed(self, error: DiskFullError, now: float) -> None:
        self.error = error
        self.retry_at = now + self.delay
        self.delay = min(self.delay * 2, self.limit)

    def succeeded(self) -> None:
        self.error = None
        self.delay = RETRY_MIN_SECONDS
        self.retry_at = -math.inf


class TableReader(SSTableReader):
    """The engine's table reader: closes its file once nothing refers to it any more.

    A compaction retires tables that a published ReadView (or a scan still iterating an
    old one) may go on reading, so nobody can know when to close them explicitly; the last
    reference going away can. Without this every compaction leaked one descriptor per input
    table for the life of the process. The Store closes the live ones at shutdown.
    """

    def __del__(self) -> None:
        self.close()


class _DamagedInput(Exception):
    """A compaction input failed a check while being read: which table, and the error.
    Raised in the worker thread by the input's scan and caught by the Compactor."""

    def __init__(self, number: int, error: CorruptionError) -> None:
        super().__init__(str(error))
        self.number = number
        self.error = error

    def __reduce__(self) -> tuple[Any, ...]:
        return _DamagedInput, (self.number, self.error)  # from a worker process: its fields


@attrs.frozen
class FlushMemtable:
    """From MemtableOwner: write this frozen memtable to an L0 table."""

    memtable: Memtable


@attrs.define(slots=True, eq=False)
class CompactAll(Request[None]):
    """From Store: manual compaction, pushing every table down to the last level."""


@attrs.define(slots=True, eq=False)
class Reclaim(Request[int]):
    """From Store: rewrite the resting tables that hold obsolete data (answer: how many)."""

    ranges: tuple[tuple[bytes, bytes], ...]


#: What the Compactor's mailbox takes (FlushMemtable from the MemtableOwner, the rest from Store).
CompactorMessage = FlushMemtable | CompactAll | Reclaim


@attrs.frozen
class CompactionStatistics:
    flushes: int
    compactions: int
    trivial_moves: int
    bytes_read: int
    bytes_written: int
    seconds: float


class Compactor(Actor[CompactorMessage]):
    # Unbounded: at most max_immutable_memtables flushes (plus rare manual requests) are
    # ever queued, because the MemtableOwner stalls rather than freeze more memtables.
    mailbox_capacity = math.inf

    def __init__(
        self,
        *,
        directory: Path,
        manifest: Manifest,
        state: ManifestState,
        tables: dict[int, SSTableReader],
        options: StorageOptions,
        wal: WalWriter,
        notify: Callable[[MemtableFlushed | VersionInstalled | CompactorBlocked], None],
        run_in_thread: RunInThread | None = None,
        run_in_process: RunInProcess | None = None,
    ) -> None:
        super().__init__("compactor")
        self._thread: Callable[..., Awaitable[Any]] = run_in_thread or trio.to_thread.run_sync
        # Compactions (pure: table files in, table files out) run here when given (see
        # _compaction_runner), off this process's GIL, and flushes of small entries (_flush).
        self._process = run_in_process
        self._directory = directory
        self._manifest = manifest
        self._version = state.version
        self._tables = tables
        self._options = options
        self._wal = wal
        self._notify = notify
        self._compact_pointers: dict[int, bytes] = {}
        self._closing = False
        # Memtables to flush, oldest first: each stays here until its flush succeeds.
        self._to_flush: collections.deque[Memtable] = collections.deque()
        self._flush_backoff = Backoff(FLUSH_RETRY_MAX_SECONDS)
        self._compaction_backoff = Backoff(COMPACTION_RETRY_MAX_SECONDS)
        # Tables a compaction found damaged, by number (live for as long as the store runs:
        # no plan rewrites or deletes them), and the same as a snapshot for other threads.
        self._damaged: dict[int, CorruptionError] = {}
        self.damaged_tables: tuple[CorruptionError, ...] = ()
        #: Why writes that need room are refused now (damage holds L0 at its bound), else None.
        self.needs_repair: StorageNeedsRepair | None = None
        self._l0_checked: Version | None = None  # the version _check_l0 last looked at
        self._flushes = 0
        self._compactions = 0
        self._trivial_moves = 0
        self._bytes_read = 0
        self._bytes_written = 0
        self._seconds = 0.0

    @property
    def version(self) -> Version:
        """The version last made durable (the published view may lag it briefly)."""
        return self._version

    def compaction_statistics(self) -> CompactionStatistics:
        return CompactionStatistics(
            flushes=self._flushes,
            compactions=self._compactions,
            trivial_moves=self._trivial_moves,
            bytes_read=self._bytes_read,
            bytes_written=self._bytes_written,
            seconds=self._seconds,
        )

    def close(self) -> None:
        # Finish queued flushes, but start no new background compaction.
        self._closing = True
        super().close()

    @property
    def disk_full(self) -> DiskFullError | None:
        """The disk-full error flushes or compactions are meeting now, else None."""
        return self._flush_backoff.error or self._compaction_backoff.error

    @property
    def flush_blocked(self) -> DiskFullError | None:
        """The disk-full error flushes are meeting now (writes soon have nowhere to go)."""
        return self._flush_backoff.error

    async def serve(self) -> None:
        while True:
            self._check_l0()
            message = self.try_receive()
            if message is not None:
                await self.handle(message)
                self._in_flight = []
                continue
            now = trio.current_time()
            if self._to_flush:
                if now >= self._flush_backoff.retry_at:
                    if await self._attempt(self._flush, self._to_flush[0], self._flush_backoff):
                        self._to_flush.popleft()
                    elif self._closing:
                        return  # the WAL keeps the data: the next open replays it
                    continue
                plan = None  # flushes first: they unblock writers
            else:
                plan = (
                    None
                    if self._closing
                    else pick_compaction(
                        self._version, self._options.compaction, self._compact_pointers, self._damaged
                    )
                )
                if plan is not None and now >= self._compaction_backoff.retry_at:
                    await self._attempt(self._compact, plan, self._compaction_backoff, plan.input_bytes)
                    continue
            wake = min(
                self._flush_backoff.retry_at if self._to_flush else math.inf,
                self._compaction_backoff.retry_at if plan is not None else math.inf,
            )
            message = None
            with trio.move_on_at(wake):
                message = await self.receive()
                if message is None:
                    return  # closed and drained (a retry still waiting is given up)
            if message is not None:
                await self.handle(message)
                self._in_flight = []

    async def _attempt(
        self, work: Callable[[Any], Awaitable[object]], item: Any, backoff: Backoff, need: int = 0
    ) -> bool:
        """Run one flush or compaction; on a full disk report it, back off, return False."""
        try:
            if backoff.error is not None:
                await self._thread(probe_free_space, self._directory)
                free = await self._thread(free_bytes, self._directory) if need else 0
                if free < need:
                    raise DiskFullError(
                        str(self._directory), f"{need} bytes are needed to compact, {free} are free"
                    )
            await work(item)
        except DiskFullError as exc:
            self._blocked(backoff, exc)
            return False
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            self._blocked(backoff, disk_full_error(self._directory, exc))
            return False
        backoff.succeeded()
        return True

    def _blocked(self, backoff: Backoff, error: DiskFullError) -> None:
        backoff.failed(error, trio.current_time())
        self._notify(CompactorBlocked(error))

    async def handle(self, message: CompactorMessage) -> None:
        match message:
            case FlushMemtable():
                self._to_flush.append(message.memtable)  # serve() flushes in order
            case CompactAll():
                try:
                    await self._compact_all()
                except (DiskFullError, StorageNeedsRepair) as exc:
                    message.reply.fail(exc)
                    return
                message.reply.set(None)
            case Reclaim():
                try:
                    message.reply.set(await self._reclaim(message.ranges))
                except DiskFullError as exc:
                    message.reply.fail(exc)
            case _:
                assert_never(message)

    async def _compact_all(self) -> None:
        while self._to_flush:
            await self._flush(self._to_flush[0])
            self._to_flush.popleft()
        # Each plan moves at least one file a level down, or finds a table damaged (which no
        # later plan includes): this ends. Damage may hold files back; sweep again while
        # anything moved, since a damaged table moved down may have freed the way above it.
        moved = True
        while moved:
            moved = False
            for level in range(NUM_LEVELS - 1):
                while plan := compaction_for_level(
                    self._version, level, self._compact_pointers, self._damaged
                ):
                    moved |= await self._compact(plan)
        held = sum(len(self._version.files(level)) for level in range(NUM_LEVELS - 1))
        if held:
            assert self._damaged, "only damage keeps a table above the last level"
            raise self._repair_error(
                min(self._damaged),
                f"compaction cannot merge this damaged table, and it holds {held} table(s) "
                "above the last level",
            )

    async def _reclaim(self, ranges: tuple[tuple[bytes, bytes], ...]) -> int:
        obsolete = self._options.compaction_filter
        if obsolete is None:
            return 0
        plans = reclaim_plans(self._version, ranges, obsolete, self._damaged)
        rewritten = 0
        for plan in plans:  # each rewrites only its own table: the others stay valid
            # A table found damaged now keeps its obsolete entries (reported; skipped).
            rewritten += await self._compact(plan)
        return rewritten

    def _check_l0(self) -> None:
        """Tell the MemtableOwner when damage holds L0 at its stop-writes bound: it would
        otherwise stall writes for a compaction that can never come. Once per version: each
        new version the owner gets clears the notice, so it is sent again while it holds."""
        version = self._version
        if version is self._l0_checked:
            return
        self._l0_checked = version
        error = None
        if (
            self._damaged
            and len(version.files(0)) >= self._options.compaction.l0_stop_writes_trigger
            and compaction_for_level(version, 0, self._compact_pointers, self._damaged) is None
        ):
            blocker = l0_blockers(version, self._damaged)[0]
            error = self._repair_error(
                blocker.number,
                f"L0 has reached its limit of {self._options.compaction.l0_stop_writes_trigger} tables "
                "and compaction cannot merge them past this damaged table, so writes are refused",
            )
            if self.needs_repair is None:
                logger.error("%s", error)
            self._notify(CompactorBlocked(error))
        self.needs_repair = error

    def _repair_error(self, number: int, consequence: str) -> StorageNeedsRepair:
        damage = self._damaged[number]
        more = len(self._damaged) - 1
        others = f" ({more} other damaged table(s) too: see the log)" if more else ""
        return StorageNeedsRepair(
            damage.source,
            damage.position,
            f"{damage.detail}; {consequence}{others}; restore the file from a backup and restart",
        )

    def _mark_damaged(self, number: int, error: CorruptionError) -> None:
        if number in self._damaged:
            return
        self._damaged[number] = error
        self.damaged_tables = tuple(self._damaged.values())
        self._l0_checked = None  # what L0 can do has changed
        logger.error(
            "compaction met a damaged table: %s; the table is kept as it is (its other blocks "
            "stay readable) and left out of compactions: restore it from a backup",
            error,
        )

    async def _flush(self, memtable: Memtable) -> None:
        started = time.perf_counter()
        added: list[FileMeta] = []
        if len(memtable):
            # One L0 table per memtable, however large: L0 tables are ordered by number,
            # and one flush must not produce two tables of the same age.
            from_wal = None
            first_seq, last_seq = memtable.first_seq, memtable.last_seq
            if (
                self._process is not None
                and first_seq is not None
                and last_seq is not None
                and memtable.approximate_bytes <= len(memtable) * PROCESS_MAX_ENTRY_BYTES
            ):
                job = FlushJob(
                    directory=self._directory,
                    wal_number=memtable.wal_number,
                    count=len(memtable),
                    first_seq=first_seq,
                    last_seq=last_seq,
                    number=self._manifest.new_file_number(),
                    block_size=self._options.block_size,
                    bloom_bits_per_key=self._options.bloom_bits_per_key,
                )
                from_wal = await self._process(run_flush, job)
            added = (
                from_wal
                if from_wal is not None
                else await self._thread(
                    write_tables, self._directory, self._manifest, self._options, memtable.scan(), None
                )
            )
        edit = VersionEdit(
            added=tuple((0, meta) for meta in added),
            log_number=memtable.wal_number + 1,
            last_sequence=memtable.last_seq,
        )
        await self._install(edit, added)
        self._flushes += 1
        self._bytes_written += sum(meta.size for meta in added)
        self._seconds += time.perf_counter() - started
        self._notify(MemtableFlushed(memtable, self._version, self._tables_view()))
        try:
            await self._wal.cast(DeleteWalsBelow(memtable.wal_number + 1))
        except ActorClosed:
            pass  # shutting down: the next open deletes the segments instead

    async def _compact(self, plan: Compaction) -> bool:
        """Run one compaction; False if an input turned out to be damaged (it is marked and
        reported, and nothing changed)."""
        started = time.perf_counter()
        inputs = plan.all_inputs()
        if plan.is_trivial_move:
            (meta,) = plan.inputs
            edit = VersionEdit(deleted=((plan.level, meta.number),), added=((plan.output_level, meta),))
            await self._install(edit, [])
            self._trivial_moves += 1
        else:
            run, keep = self._compaction_runner(plan)
            target = self._options.compaction.target_file_bytes
            new_number = self._manifest.new_file_number
            job = CompactionJob(
                directory=self._directory,
                inputs=tuple(f.number for f in plan.inputs),
                overlaps=tuple(f.number for f in plan.overlaps),
                drop_tombstones=plan.drop_tombstones,
                # Enough for any outcome: every table but the last holds >= target bytes of
                # keys and values, and the inputs hold fewer than their file sizes.
                numbers=tuple(new_number() for _ in range(plan.input_bytes // target + 1)),
                target_bytes=target,
                block_size=self._options.block_size,
                bloom_bits_per_key=self._options.bloom_bits_per_key,
                obsolete=keep,
            )
            try:
                added = await run(run_compaction, job)
            except _DamagedInput as exc:
                # run_compaction deleted what it wrote; no edit was made: the version stands.
                self._mark_damaged(exc.number, exc.error)
                self._seconds += time.perf_counter() - started
                return False
            edit = VersionEdit(
                deleted=tuple((level, meta.number) for level, meta in inputs),
                added=tuple((plan.output_level, meta) for meta in added),
            )
            await self._install(edit, added)
            obsolete = [meta.number for _level, meta in inputs]
            for number in obsolete:
                self._tables.pop(number, None)
            await self._thread(delete_tables, self._directory, obsolete)
            self._compactions += 1
            self._bytes_read += plan.input_bytes
            self._bytes_written += sum(meta.size for meta in added)
        if plan.level > 0 and not plan.in_place:
            self._compact_pointers[plan.level] = max(meta.max_key for meta in plan.inputs)
        self._seconds += time.perf_counter() - started
        self._notify(VersionInstalled(self._version, self._tables_view()))
        return True

    async def _install(self, edit: VersionEdit, added: list[FileMeta]) -> None:
        """Make the edit durable, then open readers for the tables it adds. On a full disk
        the edit is not made and its new tables are deleted (DiskFullError)."""
        try:
            if added:
                await self._thread(fsync_dir, self._directory)
            state = await self._thread(self._manifest.log_and_apply, edit)
        except (DiskFullError, OSError) as exc:
            if not is_disk_full(exc):
                raise
            await self._thread(delete_tables, self._directory, [meta.number for meta in added])
            raise disk_full_error(self._directory, exc) from exc
        self._version = state.version
        for meta in added:
            self._tables[meta.number] = await self._thread(
                TableReader.open, sst_path(self._directory, meta.number)
            )

    def _compaction_runner(
        self, plan: Compaction
    ) -> tuple[Callable[..., Awaitable[Any]], Callable[[bytes], bool] | None]:
        """Where a compaction runs, and the compaction filter it applies: the worker process
        when the store has one and the inputs' entries are small (PROCESS_MAX_ENTRY_BYTES),
        with the filter's ``snapshot()`` (its answers now, as plain data: a worker process
        cannot read the live state a filter asks, such as the broker's topics and log
        starts); else a worker thread, as without a process or with a filter that offers
        no snapshot."""
        obsolete = self._options.compaction_filter
        entries = sum(meta.count for _level, meta in plan.all_inputs())
        if self._process is None or plan.input_bytes > entries * PROCESS_MAX_ENTRY_BYTES:
            return self._thread, obsolete
        if obsolete is None:
            return self._process, None
        snapshot: Callable[[], Callable[[bytes], bool] | None] | None = getattr(obsolete, "snapshot", None)
        if snapshot is None:
            return self._thread, obsolete
        return self._process, snapshot()

    def _tables_view(self) -> Mapping[int, SSTableReader]:
        return MappingProxyType(dict(self._tables))

    def close_tables(self) -> None:
        """Close every live table reader: only once the whole storage tree has stopped."""
        for reader in self._tables.values():
            reader.close()


@attrs.frozen
class FlushJob:
    """One flush, as a pure job for the worker process: the memtable's WAL segment replayed
    into one table numbered ``number``, if it holds exactly the memtable (plain data)."""

    directory: Path
    wal_number: int
    #: What the memtable holds: its key count and seq range. A segment that replays to
    #: anything else is not flushed from (see run_flush).
    count: int
    first_seq: int
    last_seq: int
    number: int
    block_size: int
    bloom_bits_per_key: int


def run_flush(job: FlushJob) -> list[FileMeta] | None:
    """Write a frozen memtable's table from its WAL segment, in the worker process: the
    store's process keeps its GIL (the memtable is in its memory, the segment on disk).

    A frozen memtable holds the records of exactly one segment, all written to the OS
    before it was frozen (the rotation waits for every pending write): the segment
    replays to the same keys, seqs and values, with the same newest-wins rule. That is
    checked, not assumed: a segment that does not replay whole (damage, a torn frame) or
    whose replay differs in key count or seq range (a memtable recovery built from several
    segments) gives None, and the caller flushes the memtable from memory instead. The WAL
    frames are checksummed, so a replay matching in count and seqs holds the same data."""
    try:
        replay = replay_wal(wal_path(job.directory, job.wal_number))
    except (FileNotFoundError, CorruptionError):
        return None
    if replay.tail_error is not None:
        return None
    # The memtable keeps each key's newest seq; replay_wal has checked that seqs rise through
    # the segment (within a batch they are consecutive), so the last write of a key wins.
    # A dict and one sort: a quarter of the CPU of a skip-list insert per entry.
    latest: dict[bytes, tuple[int, bytes | None]] = {}
    for batch in replay.batches:
        for key, seq, value in batch:
            latest[key] = (seq, value)
    if not replay.batches:
        return None
    seqs = (replay.batches[0][0][1], replay.last_seq)
    if (len(latest), *seqs) != (job.count, job.first_seq, job.last_seq):
        return None
    entries = [(key, *latest[key]) for key in sorted(latest)]
    options = StorageOptions(block_size=job.block_size, bloom_bits_per_key=job.bloom_bits_per_key)
    return write_tables(job.directory, NumbersGiven((job.number,)), options, iter(entries), None)


class FileNumbers(Protocol):
    """Where new table numbers come from: the manifest, or numbers it handed out ahead."""

    def new_file_number(self) -> int: ...


@attrs.define
class NumbersGiven:
    """File numbers allocated ahead by the manifest's owner, for a job in a worker process."""

    numbers: tuple[int, ...]
    used: int = 0

    def new_file_number(self) -> int:
        if self.used == len(self.numbers):
            raise RuntimeError(f"a compaction needed more than its {len(self.numbers)} file numbers")
        self.used += 1
        return self.numbers[self.used - 1]


@attrs.frozen
class CompactionJob:
    """One compaction, as a pure job: merge these tables of ``directory`` into new ones.

    Plain data (it is pickled to a worker process): the input tables by number, newest
    first, each its own merge source; the tables they overlap one level down, in key order
    (one chained source); the output numbers allocated ahead (unused ones are never named
    by any version; gaps in table numbers are harmless); and the table parameters."""

    directory: Path
    inputs: tuple[int, ...]
    overlaps: tuple[int, ...]
    drop_tombstones: bool
    numbers: tuple[int, ...]
    target_bytes: int
    block_size: int
    bloom_bits_per_key: int
    obsolete: Callable[[bytes], bool] | None = None


def run_compaction(job: CompactionJob) -> list[FileMeta]:
    """Run a compaction job: open its inputs, merge them (newest wins, through the
    compaction filter ``job.obsolete``) and write fsynced tables of about
    ``job.target_bytes`` each. In a worker thread or a worker process: it touches nothing
    but the files it names. A damaged input raises :class:`_DamagedInput` (and, like any
    failure, leaves no output table behind)."""
    readers: dict[int, SSTableReader] = {}
    try:
        for number in (*job.inputs, *job.overlaps):
            try:
                # No block cache: a compaction reads every block once.
                readers[number] = SSTableReader.open(sst_path(job.directory, number), block_cache_blocks=0)
            except CorruptionError as exc:
                raise _DamagedInput(number, exc) from exc
        sources: list[Iterator[Entry]] = [_checked_scan(number, readers[number]) for number in job.inputs]
        sources.append(_chain_scans([(number, readers[number]) for number in job.overlaps]))
        merged = merge_entries(sources, drop_tombstones=job.drop_tombstones)
        if job.obsolete is not None:
            merged = _filtered(merged, job.obsolete, drop=job.drop_tombstones)
        options = StorageOptions(block_size=job.block_size, bloom_bits_per_key=job.bloom_bits_per_key)
        return write_tables(job.directory, NumbersGiven(job.numbers), options, merged, job.target_bytes)
    finally:
        for reader in readers.values():
            reader.close()


def write_tables(
    directory: Path,
    manifest: FileNumbers,
    options: StorageOptions,
    entries: Iterator[Entry],
    target_bytes: int | None,
) -> list[FileMeta]:
    """Write entries into fsynced tables, starting a new one every ``target_bytes`` of
    keys and values (None: one table). Runs in a worker thread (or process); the only
    shared state it may touch is the manifest's file-number counter, which only its
    owner's jobs use.

    If anything fails (a full disk, a damaged input met half-way) every table it wrote is
    deleted before the error propagates: no version names them, and none ever will."""
    written: list[FileMeta] = []
    writer: SSTableWriter | None = None
    number = 0
    entries = iter(entries)
    try:
        # A table is started only for an entry: no entries, no table (and no file number).
        for key, seq, value in entries:
            number = manifest.new_file_number()
            writer = SSTableWriter(
                sst_path(directory, number),
                block_size=options.block_size,
                bloom_bits_per_key=options.bloom_bits_per_key,
            )
            writer.add(key, seq, value)
            writer.add_from(entries, target_bytes)
            written.append(_meta(number, writer.finish()))
            writer = None
    except BaseException as exc:
        # The tables finished so far belong to work that did not happen (and on a full disk
        # they would only hold space the disk lacks).
        delete_tables(directory, [meta.number for meta in written])
        if isinstance(exc, OSError) and is_disk_full(exc):
            raise disk_full_error(sst_path(directory, number), exc) from exc
        raise
    finally:
        if writer is not None:
            writer.abandon()
    return written


def delete_tables(directory: Path, numbers: list[int]) -> None:
    if not numbers:
        return
    for number in numbers:
        try:
            os.unlink(sst_path(directory, number))
        except FileNotFoundError:
            pass
    try:
        fsync_dir(directory)
    except OSError as exc:
        # Only a crash could bring the names back, and the next open deletes such orphans.
        if not is_disk_full(exc):
            raise


def _filtered(entries: Iterator[Entry], obsolete: Callable[[bytes], bool], *, drop: bool) -> Iterator[Entry]:
    """Apply the compaction filter: an obsolete entry is dropped where nothing older can
    exist below (the compaction reaches the bottom of the key range), else it becomes a
    tombstone so it keeps hiding older versions deeper in the tree."""
    for entry in entries:
        if entry[2] is not None and obsolete(entry[0]):
            if drop:
                continue
            yield entry[0], entry[1], None
        else:
            yield entry


def _checked_scan(number: int, reader: SSTableReader) -> Iterator[Entry]:
    """The table's entries; a damaged block raises _DamagedInput naming the table."""
    try:
        yield from reader.scan()
    except CorruptionError as exc:
        raise _DamagedInput(number, exc) from exc


def _chain_scans(readers: list[tuple[int, SSTableReader]]) -> Iterator[Entry]:
    for number, reader in readers:
        yield from _checked_scan(number, reader)


def _meta(number: int, info: SSTableInfo) -> FileMeta:
    return FileMeta(
        number=number,
        size=info.file_size,
        count=info.count,
        min_key=info.min_key,
        max_key=info.max_key,
        max_seq=info.max_seq,
    )
