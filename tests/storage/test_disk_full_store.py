"""A full disk, for the storage engine as a whole: refuse writes, keep reading, recover.

Every write path meets ENOSPC through the file seam (``disk_faults.FillingDisk``): the
WAL write, its fsync (``always``, ``interval``), a flush and a compaction, and the writes
recovery makes at start-up. Each time the store keeps running, the refused writes fail
with ``DiskFullError`` naming a file and are never visible, everything acknowledged stays
readable, and once space is freed writes are accepted again; a reopen finds exactly the
acknowledged writes, with nothing reported as damaged.

Clock: a frozen MockClock, as in ``test_store.py``; the storage actors' worker threads are
injected (``Store(..., run_in_thread=threads.run_sync)``) so :meth:`WorkerThreads.settle`
can tell when nothing more can happen until the test acts.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from disk_faults import FillingDisk, except_wal

from sentinel.actors import ObservedReply
from sentinel.errors import DiskFullError
from sentinel.storage import compactor as compactor_module
from sentinel.storage import files
from sentinel.storage.compaction import CompactionOptions
from sentinel.storage.compactor import COMPACTION_RETRY_MAX_SECONDS, FLUSH_RETRY_MAX_SECONDS
from sentinel.storage.files import parse_file_name, wal_path
from sentinel.storage.manifest import Version
from sentinel.storage.memtable_owner import MemtableOwner, Write
from sentinel.storage.options import StorageOptions, SyncMode
from sentinel.storage.store import Store
from sentinel.storage.wal import replay_wal
from sentinel.storage.wal_writer import WalAppend

NO_COMPACTION = CompactionOptions(l0_compaction_trigger=1000, l0_stop_writes_trigger=2000)
# Real seconds a gated worker thread may wait for the test: only a broken test gets near it.
GATE_TIMEOUT = 10.0


class WorkerThreads:
    """The store's thread runner (injected): counts the calls in flight."""

    def __init__(self) -> None:
        self.running = 0
        self._idle = trio.Event()

    async def run_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        self.running += 1
        try:
            return await trio.to_thread.run_sync(fn, *args)
        finally:
            self.running -= 1
            if not self.running:
                self._idle.set()
                self._idle = trio.Event()

    async def settle(self) -> None:
        """Return once every task is blocked and no worker thread runs."""
        while True:
            await trio.testing.wait_all_tasks_blocked()
            if not self.running:
                return
            await self._idle.wait()


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock()  # frozen: time moves only when a test jumps it


@pytest.fixture
def threads() -> WorkerThreads:
    return WorkerThreads()


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> FillingDisk:
    return FillingDisk(monkeypatch)


def options(**changes: Any) -> StorageOptions:
    changes.setdefault("sync", SyncMode.ALWAYS)
    changes.setdefault("compaction", NO_COMPACTION)
    return StorageOptions(**changes)


@asynccontextmanager
async def running(directory: Path, opts: StorageOptions, threads: WorkerThreads) -> AsyncIterator[Store]:
    async with trio.open_nursery() as nursery:
        store: Store = await nursery.start(Store(directory, opts, run_in_thread=threads.run_sync).run)
        try:
            yield store
        finally:
            await store.aclose()


async def reopened(directory: Path, threads: WorkerThreads) -> tuple[dict[bytes, bytes], tuple[str, ...]]:
    """Everything a fresh open reads, and what its recovery reported."""
    async with running(directory, options(), threads) as store:
        return dict(store.scan()), store.recovery_report


def numbered(directory: Path, kind: str) -> list[int]:
    return sorted(p[1] for name in directory.iterdir() if (p := parse_file_name(name.name)) and p[0] == kind)


# -- the WAL ---------------------------------------------------------------------------


@pytest.mark.parametrize("sync", [SyncMode.ALWAYS, SyncMode.INTERVAL, SyncMode.NONE])
async def test_a_write_the_wal_cannot_hold_is_refused_and_never_visible(
    tmp_path: Path, clock: trio.testing.MockClock, threads: WorkerThreads, disk: FillingDisk, sync: SyncMode
) -> None:
    async with running(tmp_path, options(sync=sync), threads) as store:
        await store.put(b"k", b"acknowledged")
        segment = wal_path(tmp_path, store.statistics().wal.segment)
        disk.fill(room=10)  # the next frame is cut short
        with pytest.raises(DiskFullError, match=f"disk full: {segment}: No space left on device"):
            await store.put(b"k", b"refused")
        assert store.get(b"k") == b"acknowledged"
        stats = store.statistics()
        assert stats.writes_refused == 1 and stats.disk_full is not None
        assert replay_wal(segment).tail_error is None  # whole frames only
        disk.free()
        await store.put(b"k", b"after")  # accepted as soon as there is room again
        assert store.get(b"k") == b"after"
        assert store.statistics().disk_full is None
    data, report = await reopened(tmp_path, threads)
    assert (data, report[:1]) == ({b"k": b"after"}, ("replayed 1 keys from 1 WAL segment(s) into L0",))


async def test_sync_always_a_failed_fsync_refuses_its_group_and_cuts_it_back(
    tmp_path: Path, clock: trio.testing.MockClock, threads: WorkerThreads, disk: FillingDisk
) -> None:
    async with running(tmp_path, options(), threads) as store:
        await store.put(b"a", b"1")
        segment = wal_path(tmp_path, store.statistics().wal.segment)
        size = segment.stat().st_size
        disk.fsync_fails = True
        with pytest.raises(DiskFullError, match=f"disk full: {segment}"):
            await store.put(b"b", b"2")
        assert store.get(b"b") is None
        assert segment.stat().st_size == size  # nothing of it can come back after a crash
        disk.free()
        await store.put(b"c", b"3")
    data, _ = await reopened(tmp_path, threads)
    assert data == {b"a": b"1", b"c": b"3"}


async def test_sync_interval_a_failed_fsync_refuses_writes_until_a_sync_succeeds(
    tmp_path: Path, clock: trio.testing.MockClock, threads: WorkerThreads, disk: FillingDisk
) -> None:
    opts = options(sync=SyncMode.INTERVAL, sync_interval=0.5)
    async with running(tmp_path, opts, threads) as store:
        await store.put(b"a", b"1")  # acknowledged before its fsync
        disk.fsync_fails = True
        clock.jump(opts.sync_interval)
        await threads.settle()  # the periodic fsync failed: "a" may not be durable yet
        with pytest.raises(DiskFullError):
            await store.put(b"b", b"2")
        assert (store.get(b"a"), store.get(b"b")) == (b"1", None)
        disk.free()
        await store.put(b"c", b"3")  # the retried fsync goes first
        clock.jump(opts.sync_interval)
        await threads.settle()
    data, _ = await reopened(tmp_path, threads)
    assert data == {b"a": b"1", b"c": b"3"}


async def test_a_write_is_visible_only_once_the_wal_has_made_it_durable(
    tmp_path: Path, clock: trio.testing.MockClock, threads: WorkerThreads, disk: FillingDisk
) -> None:
    entered, release = threading.Event(), threading.Event()

    def gate(path: str) -> None:
        if path.endswith(files.WAL_SUFFIX):
            entered.set()
            assert release.wait(GATE_TIMEOUT)

    async with running(tmp_path, options(), threads) as store:
        disk.before_fsync = gate
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.put, b"k", b"v")
            assert await trio.to_thread.run_sync(entered.wait, GATE_TIMEOUT)
            assert store.get(b"k") is None  # written, not yet durable: not visible
            release.set()
        assert store.get(b"k") == b"v"


async def test_writes_submitted_before_a_failure_fail_too_even_if_space_returns(
    tmp_path: Path, clock: trio.testing.MockClock, threads: WorkerThreads, disk: FillingDisk
) -> None:
    """A pipelining writer (a partition log) must see a failed suffix, never a hole."""
    entered, release = threading.Event(), threading.Event()

    def fail_first(path: str) -> None:
        if path.endswith(files.WAL_SUFFIX) and not entered.is_set():
            entered.set()
            assert release.wait(GATE_TIMEOUT)
            disk.fsync_fails = True  # this fsync fails...

    async with running(tmp_path, options(), threads) as store:
        disk.before_fsync = fail_first
        first = await store.submit([(b"offset-0", b"x")])
        assert await trio.to_thread.run_sync(entered.wait, GATE_TIMEOUT)
        second = await store.submit([(b"offset-1", b"y")])  # queued behind the failing one
        await trio.testing.wait_all_tasks_blocked()
        release.set()
        with pytest.raises(DiskFullError):
            await first.wait()
        disk.fsync_fails = False  # ...and space is back before the second is written
        with pytest.raises(DiskFullError):
            await second.wait()
        await store.put(b"offset-0", b"z")  # submitted after the failure was reported
        assert dict(store.scan()) == {b"offset-0": b"z"}
    data, _ = await reopened(tmp_path, threads)
    assert data == {b"offset-0": b"z"}


class ScriptedWal:
    """Stands in for the WalWriter: keeps what the owner hands it; the test reports on it."""

    has_segment = True

    def __init__(self) -> None:
        self.appends: list[WalAppend] = []

    def cast_nowait(self, message: WalAppend) -> None:
        self.appends.append(message)

    async def cast(self, message: WalAppend) -> None:
        self.appends.append(message)


async def test_failures_are_reported_in_submission_order(clock: trio.testing.MockClock) -> None:
    """A write refused because of an earlier failure is answered only after every write
    submitted before it, even one still in the WAL: a pipelining writer sees the first
    failure of its sequence first (and so takes its end back to the right offset)."""
    wal = ScriptedWal()
    owner = MemtableOwner(
        options=options(),
        wal=wal,  # type: ignore[arg-type]
        request_flush=lambda memtable: None,
        publish=lambda view: None,
        last_seq=0,
        wal_segment=0,
        version=Version(),
        tables={},
    )
    answered: list[str] = []

    def write(name: str) -> Write:
        return Write(
            [(name.encode(), b"v")], epoch=owner.epoch, reply=ObservedReply(lambda _: answered.append(name))
        )

    full = DiskFullError("wal-000000.log", "No space left on device")
    async with trio.open_nursery() as nursery:
        await nursery.start(owner.run)
        owner.cast_nowait(write("other writer"))
        await trio.testing.wait_all_tasks_blocked()
        owner.cast_nowait(earlier := write("earlier"))  # same epoch: handed on, not yet written
        stale = write("later")  # submitted before the failure below is reported...
        await trio.testing.wait_all_tasks_blocked()
        owner.wal_written(wal.appends[0], full)
        await trio.testing.wait_all_tasks_blocked()
        owner.cast_nowait(stale)  # ...and reaching the owner after it
        await trio.testing.wait_all_tasks_blocked()
        assert answered == ["other writer"] and not earlier.reply.done
        for append in wal.appends[1:]:  # the WAL fails what is left, in order
            owner.wal_written(append, full)
        await trio.testing.wait_all_tasks_blocked()
        assert answered == ["other writer", "earlier", "later"]
        owner.close()


# -- flushes and compactions -----------------------------------------------------------------


async def test_a_flush_on_a_full_disk_is_retried_and_writes_are_refused_at_the_memory_bound(
    tmp_path: Path, clock: trio.testing.MockClock, threads: WorkerThreads, disk: FillingDisk
) -> None:
    opts = options(sync=SyncMode.NONE, memtable_bytes=2048, max_immutable_memtables=1)
    acknowledged: dict[bytes, bytes] = {}
    async with running(tmp_path, opts, threads) as store:
        disk.fill(room=0, files=except_wal)  # the WAL has room, tables and the manifest do not
        refused = None
        for i in range(200):
            key, value = b"k%04d" % i, b"v" * 64
            try:
                await store.put(key, value)
            except DiskFullError as exc:
                refused = exc
                break
            acknowledged[key] = value
            await threads.settle()
        assert refused is not None, "writes went on past the memory bound"
        assert str(refused).startswith(f"disk full: {tmp_path}")
        stats = store.statistics()
        assert stats.immutable_memtables == 1 and stats.tables_per_level[0] == 0
        assert dict(store.scan()) == acknowledged  # the memtables keep everything readable
        for _ in range(3):  # retried with back-off while the disk stays full
            clock.jump(FLUSH_RETRY_MAX_SECONDS)
            await threads.settle()
        assert store.statistics().tables_per_level[0] == 0
        assert numbered(tmp_path, "sst") == []
        with pytest.raises(DiskFullError):
            await store.put(b"still", b"full")
        disk.free()
        clock.jump(FLUSH_RETRY_MAX_SECONDS)
        await threads.settle()
        stats = store.statistics()
        assert stats.tables_per_level[0] == 1 and stats.disk_full is None
        await store.put(b"after", b"freed")
        acknowledged[b"after"] = b"freed"
        assert stats.writes_refused == 2
    data, _ = await reopened(tmp_path, threads)
    assert data == acknowledged


async def test_a_compaction_on_a_full_disk_fails_cleanly_and_the_store_goes_on(
    tmp_path: Path, clock: trio.testing.MockClock, threads: WorkerThreads, disk: FillingDisk
) -> None:
    async with running(tmp_path, options(sync=SyncMode.NONE), threads) as store:
        for i in range(3):
            await store.put(b"k%d" % i, b"v")
            await store.flush()
        tables = numbered(tmp_path, "sst")
        disk.fill(room=0, files=except_wal)
        with pytest.raises(DiskFullError):
            await store.compact()
        assert numbered(tmp_path, "sst") == tables  # no half-written output left
        await store.put(b"k9", b"v")
        disk.free()
        await store.compact()
        assert store.statistics().tables_per_level[0] == 0
    data, _ = await reopened(tmp_path, threads)
    assert data == {b"k0": b"v", b"k1": b"v", b"k2": b"v", b"k9": b"v"}


async def test_background_compaction_backs_off_and_waits_for_room_for_its_output(
    tmp_path: Path,
    clock: trio.testing.MockClock,
    threads: WorkerThreads,
    disk: FillingDisk,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opts = options(sync=SyncMode.NONE, compaction=CompactionOptions(l0_compaction_trigger=2))
    flushed: set[str] = set()
    attempts: list[str] = []

    def after_two_flushes(path: str) -> bool:
        """The first two tables (the flushes) are written; the compaction's output is not."""
        if not path.endswith(files.SST_SUFFIX) or path in flushed:
            return False
        if len(flushed) < 2:
            flushed.add(path)
            return False
        attempts.append(path)
        return True

    disk.fill(room=0, files=after_two_flushes)
    async with running(tmp_path, opts, threads) as store:
        await store.put(b"a", b"1")
        await store.flush()
        await store.put(b"b", b"2")
        await store.flush()  # two L0 tables: the compaction starts, and fails
        await threads.settle()
        stats = store.statistics()
        assert stats.disk_full is not None and stats.tables_per_level[:2] == (2, 0)
        assert len(attempts) == 1
        # The filesystem says its inputs would not fit: the retries do not even try.
        monkeypatch.setattr(compactor_module, "free_bytes", lambda directory: 10)
        for _ in range(5):
            clock.jump(COMPACTION_RETRY_MAX_SECONDS)
            await threads.settle()
        assert len(attempts) == 1
        assert "bytes are needed to compact, 10 are free" in str(store.statistics().disk_full)
        monkeypatch.undo()
        disk.free()
        clock.jump(COMPACTION_RETRY_MAX_SECONDS)
        await threads.settle()
        stats = store.statistics()
        assert stats.tables_per_level[:2] == (0, 1) and stats.disk_full is None


# -- start-up and shutdown ---------------------------------------------------------------------


@pytest.mark.parametrize("segment_creatable", [True, False])
async def test_start_up_on_a_full_disk_serves_reads_and_refuses_writes(
    tmp_path: Path,
    clock: trio.testing.MockClock,
    threads: WorkerThreads,
    disk: FillingDisk,
    segment_creatable: bool,
) -> None:
    async with running(tmp_path, options(), threads) as store:
        for i in range(20):
            await store.put(b"k%02d" % i, b"v%d" % i)  # in the WAL only: recovery must write a table
    expected = {b"k%02d" % i: b"v%d" % i for i in range(20)}
    disk.fill(room=0)
    disk.fsync_fails = not segment_creatable
    async with running(tmp_path, options(), threads) as store:
        assert dict(store.scan()) == expected
        assert any(line.startswith(f"disk full: {tmp_path}") for line in store.recovery_report)
        with pytest.raises(DiskFullError):
            await store.put(b"new", b"x")
        disk.free()
        await store.put(b"new", b"x")
        expected[b"new"] = b"x"
        clock.jump(FLUSH_RETRY_MAX_SECONDS)  # the compactor retries the replayed data's flush
        await threads.settle()
        assert store.statistics().tables_per_level[0] == 1
        assert dict(store.scan()) == expected
    data, report = await reopened(tmp_path, threads)
    assert data == expected
    assert not any("disk full" in line or "corrupt" in line for line in report)


async def test_closing_on_a_full_disk_is_clean_and_keeps_what_was_acknowledged(
    tmp_path: Path, clock: trio.testing.MockClock, threads: WorkerThreads, disk: FillingDisk
) -> None:
    opts = options(sync=SyncMode.INTERVAL, memtable_bytes=1024)
    async with running(tmp_path, opts, threads) as store:
        disk.fill(room=0, files=except_wal)
        for i in range(12):  # a rotation: a flush is queued, and fails
            await store.put(b"k%02d" % i, b"v" * 64)
        await threads.settle()
        stats = store.statistics()
        assert stats.immutable_memtables >= 1 and stats.tables_per_level[0] == 0
        disk.fsync_fails = True  # the WAL's last fsync fails too
    disk.free()
    data, _ = await reopened(tmp_path, threads)
    assert data == {b"k%02d" % i: b"v" * 64 for i in range(12)}
