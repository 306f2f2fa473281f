"""Flushes and compactions in a worker process (``WorkerProcess``): the broker's and the benchmark's way.

The rest of the storage tests run compactions in worker threads (the same job function,
``compactor.run_compaction``); these run them through a real spawned process: the job and
its answer cross the process boundary, damage met in the child is reported like damage
met in a thread, and the store closes its worker when it stops. Real clock: the child's
work is not something a MockClock can wait for.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from storage_checks import check_closed_directory
from test_damaged_compaction import VALUE_BYTES, damage, flip_byte, keys

from sentinel.client.errors import CorruptRecordBatch
from sentinel.errors import CorruptionError, DiskFullError
from sentinel.storage.compaction import CompactionOptions
from sentinel.storage.compactor import (
    PROCESS_MAX_ENTRY_BYTES,
    CompactionJob,
    NumbersGiven,
    run_compaction,
)
from sentinel.storage.files import sst_path
from sentinel.storage.options import StorageOptions, SyncMode
from sentinel.storage.processes import WorkerProcess
from sentinel.storage.store import Store

L0 = CompactionOptions(l0_compaction_trigger=3, l0_stop_writes_trigger=8, target_file_bytes=8192)
WAIT_SECONDS = 60.0  # for the child: a spawned interpreter's start-up on a busy machine


def options() -> StorageOptions:
    return StorageOptions(sync=SyncMode.NONE, memtable_bytes=1 << 20, compaction=L0)


class Threads:
    """The store's thread runner: records which functions ran in worker threads."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    async def run_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        self.ran.append(getattr(fn, "__name__", repr(fn)))
        return await trio.to_thread.run_sync(fn, *args)


def watched_store(
    directory: Path, threads: Threads, runner: WorkerProcess, opts: StorageOptions | None = None
) -> Store:
    """A store with a worker process whose worker threads ``threads`` records."""
    return Store(directory, opts or options(), run_in_thread=threads.run_sync, run_in_process=runner)


async def put_table(store: Store, model: dict[bytes, bytes], prefixes: bytes, numbers: range) -> None:
    """Flush one table of the keys ``<prefix>NNN`` of each prefix byte."""
    for prefix in prefixes:
        for key in keys(bytes((prefix,)), numbers):
            value = key + b"." * VALUE_BYTES
            await store.put(key, value)
            model[key] = value
    await store.flush()


async def wait_for(condition: Callable[[], bool]) -> None:
    """Poll what the store shows: the child's work has no event of its own to wait on."""
    with trio.fail_after(WAIT_SECONDS):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.01)


async def test_compactions_run_in_the_worker_process_and_the_store_closes_it(tmp_path: Path) -> None:
    runner = WorkerProcess()
    threads = Threads()
    model: dict[bytes, bytes] = {}
    async with trio.open_nursery() as nursery:
        store = await nursery.start(watched_store(tmp_path, threads, runner).run)
        assert not runner.running  # a store that never flushes never starts one
        for table in range(3):  # overlapping L0 tables: the third starts a merging compaction
            await put_table(store, model, b"k", range(table, 300, 2 + table))
        await wait_for(lambda: store.statistics().compaction.compactions >= 1)
        assert runner.running
        assert "run_compaction" not in threads.ran  # not in a thread: in the child
        assert "write_tables" not in threads.ran  # flushes too: from the WAL (below)
        stats = store.statistics()
        assert stats.tables_per_level[0] == 0 and stats.tables_per_level[1] >= 2  # cut at the target
        assert dict(store.scan()) == model
        await store.aclose()
    assert not runner.running  # closed with the store
    with pytest.raises(RuntimeError, match="closed"):
        await runner(os.getpid)
    check_closed_directory(tmp_path)
    async with trio.open_nursery() as nursery:  # what the child wrote is what the manifest holds
        store = await nursery.start(Store(tmp_path, options()).run)
        assert dict(store.scan()) == model
        await store.aclose()


async def test_damage_met_in_the_worker_process_is_reported_like_damage_met_in_a_thread(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model: dict[bytes, bytes] = {}
    async with trio.open_nursery() as nursery:
        store = await nursery.start(Store(tmp_path, options(), run_in_process=WorkerProcess()).run)
        await put_table(store, model, b"a", range(200))
        await put_table(store, model, b"b", range(200))
        [_newer, older] = [meta.number for meta in store.view.version.files(0)]
        table = sst_path(tmp_path, older)
        _block, where = damage(table, 1)
        await put_table(store, model, b"a", range(100, 150))  # the third: a compaction meets it
        await wait_for(lambda: bool(store.statistics().damaged_tables))
        [error] = store.statistics().damaged_tables
        assert type(error) is CorruptionError and str(error) == f"corruption in {where}"
        assert (error.source, error.position) == (str(table), int(where.split("at byte ")[1].split(":")[0]))
        assert [r.getMessage() for r in caplog.records if "left out of compactions" in r.getMessage()]
        assert store.get(b"a120") == model[b"a120"]  # the store goes on
        await store.aclose()
    check_closed_directory(tmp_path)  # nothing the failed compaction wrote is left


@attrs.frozen
class DropPrefix:
    """A picklable compaction filter: the keys starting with ``prefix`` are obsolete."""

    prefix: bytes

    def __call__(self, key: bytes) -> bool:
        return key.startswith(self.prefix)


class LiveFilter:
    """A filter asking live state (here an attribute), like the broker's, and its snapshot."""

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix

    def __call__(self, key: bytes) -> bool:
        return key.startswith(self.prefix)

    def snapshot(self) -> DropPrefix:
        return DropPrefix(self.prefix)


@pytest.mark.parametrize("with_snapshot", [True, False])
async def test_a_compaction_filter_goes_to_the_worker_process_as_its_snapshot(
    tmp_path: Path, with_snapshot: bool
) -> None:
    live = LiveFilter(b"a")
    threads = Threads()
    opts = attrs.evolve(options(), compaction_filter=live if with_snapshot else live.__call__)
    model: dict[bytes, bytes] = {}
    async with trio.open_nursery() as nursery:
        store = await nursery.start(watched_store(tmp_path, threads, WorkerProcess(), opts).run)
        for table in range(3):  # the third starts a compaction of all three
            await put_table(store, model, b"ab", range(table, 100, 2 + table))
        await wait_for(lambda: store.statistics().compaction.compactions >= 1)
        # Where it ran: with a snapshot the child applied it; without, a thread asked the filter.
        assert ("run_compaction" in threads.ran) is not with_snapshot
        live.prefix = b"b"  # too late for what was compacted
        assert dict(store.scan()) == {k: v for k, v in model.items() if not k.startswith(b"a")}
        await store.aclose()


async def test_flushes_are_written_from_the_wal_in_the_worker_process(tmp_path: Path) -> None:
    threads = Threads()
    model: dict[bytes, bytes] = {}
    async with trio.open_nursery() as nursery:
        store = await nursery.start(watched_store(tmp_path, threads, WorkerProcess()).run)
        await put_table(store, model, b"ab", range(50))  # flushed on its own: one table
        for i in range(0, 50, 3):  # overwrites, deletes and batches: newest wins in the replay
            key = b"a%03d" % i
            await store.write([(key, None), (b"c%03d" % i, b"new")])
            await store.put(key, b"again")
            await store.delete(b"b%03d" % i)
            model[key] = b"again"
            model[b"c%03d" % i] = b"new"
            del model[b"b%03d" % i]
        await store.flush()
        assert "write_tables" not in threads.ran
        assert store.statistics().tables_per_level[0] == 2
        assert dict(store.scan()) == model
        await store.aclose()
    check_closed_directory(tmp_path)
    async with trio.open_nursery() as nursery:
        store = await nursery.start(Store(tmp_path, options()).run)
        assert dict(store.scan()) == model
        await store.aclose()


async def test_large_entries_are_flushed_and_compacted_in_threads(tmp_path: Path) -> None:
    # A thread writing large values holds the GIL little; in the worker they would only add
    # CPU (its start-up, the replay of every byte): PROCESS_MAX_ENTRY_BYTES.
    threads = Threads()
    runner = WorkerProcess()
    large = b"v" * (PROCESS_MAX_ENTRY_BYTES + 1)
    model: dict[bytes, bytes] = {}
    async with trio.open_nursery() as nursery:
        store = await nursery.start(watched_store(tmp_path, threads, runner).run)
        for table in range(3):  # the third starts a compaction
            for key in keys(b"k", range(table, 30, 1 + table)):
                await store.put(key, large + key)
                model[key] = large + key
            await store.flush()
        await wait_for(lambda: store.statistics().compaction.compactions >= 1)
        assert threads.ran.count("write_tables") == 3 and "run_compaction" in threads.ran
        assert not runner.running
        assert dict(store.scan()) == model
        await store.aclose()


def damage_active_segment(directory: Path) -> None:
    segment = max(directory.glob("wal-*.log"))
    flip_byte(segment, segment.stat().st_size // 2)


async def test_a_segment_that_does_not_replay_to_the_memtable_is_flushed_from_memory(tmp_path: Path) -> None:
    threads = Threads()
    model: dict[bytes, bytes] = {}
    async with trio.open_nursery() as nursery:
        store = await nursery.start(watched_store(tmp_path, threads, WorkerProcess()).run)
        for key in keys(b"k", range(100)):
            await store.put(key, key * 10)
            model[key] = key * 10
        damage_active_segment(tmp_path)  # a record the memtable already has
        await store.flush()
        assert threads.ran.count("write_tables") == 1  # the replay was refused: from memory
        assert dict(store.scan()) == model
        await store.aclose()
    check_closed_directory(tmp_path)
    async with trio.open_nursery() as nursery:  # the table holds the memtable, not the damage
        store = await nursery.start(Store(tmp_path, options()).run)
        assert dict(store.scan()) == model
        await store.aclose()


def test_sentinel_errors_cross_a_process_boundary_with_their_fields() -> None:
    errors = [
        CorruptionError("sst-000007.sst", 4096, "data block 1 checksum mismatch"),
        DiskFullError("sst-000008.sst", "No space left on device"),
        CorruptRecordBatch("orders", 3, 120, (100, 140), "bad crc"),
    ]
    for error in errors:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
        assert copy.__dict__ == error.__dict__


def test_a_compaction_job_uses_only_the_file_numbers_it_was_given(tmp_path: Path) -> None:
    numbers = NumbersGiven((7, 9))
    assert [numbers.new_file_number(), numbers.new_file_number()] == [7, 9]
    with pytest.raises(RuntimeError, match="more than its 2 file numbers"):
        numbers.new_file_number()
    job = CompactionJob(
        directory=tmp_path,
        inputs=(),
        overlaps=(),
        drop_tombstones=True,
        numbers=(),
        target_bytes=1024,
        block_size=4096,
        bloom_bits_per_key=10,
    )
    assert run_compaction(pickle.loads(pickle.dumps(job))) == []  # plain data: it pickles
