"""The storage engine as a whole: the Store supervisor and its three actors on real files.

Clock. Every test runs on Trio's MockClock. Real file IO runs in worker threads, and
autojump cannot see threads: with ``autojump_threshold=0`` the clock jumps to the next
deadline whenever every *task* is blocked, including while an fsync runs in a thread.
Measured: a plain ``aclose`` then always "took" its full 30 s close bound (the deadline
fired mid-close and cancelled a half-finished compaction). So most tests use a frozen
MockClock (time moves only when the test jumps it) and reach a quiescent point with
:meth:`WorkerThreads.settle`: every task blocked *and* no worker thread running. Only the
bounded-close test uses autojump, and it asserts the bound, which holds either way.

Blocking a step on purpose: a ``threading.Event`` for code running in a worker thread
(fsync), a ``trio.Event`` for an actor's own task (the compactor's flush).
"""

from __future__ import annotations

import errno
import gc
import itertools
import os
import re
import threading
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from sentinel.errors import ActorClosed, CorruptionError, InvalidArgument, StorageClosed, StorageError
from sentinel.storage import compactor as compactor_module
from sentinel.storage import recovery as recover_module
from sentinel.storage import store as store_module
from sentinel.storage import wal as wal_module
from sentinel.storage.compaction import CompactionOptions
from sentinel.storage.compactor import Compactor
from sentinel.storage.files import CURRENT, parse_file_name
from sentinel.storage.framing import scan_frames
from sentinel.storage.manifest import NUM_LEVELS, Version, decode_edit
from sentinel.storage.memtable import Memtable
from sentinel.storage.memtable_owner import MemtableOwner
from sentinel.storage.options import StorageOptions, SyncMode
from sentinel.storage.store import Store, open_store
from sentinel.storage.wal import WalFile, replay_wal

# No background compaction unless a test asks for it: L0 may grow this far.
NO_COMPACTION = CompactionOptions(l0_compaction_trigger=1000, l0_stop_writes_trigger=2000)
# Small budgets so a few hundred KiB of data fill several levels.
SMALL_LEVELS = CompactionOptions(
    l0_compaction_trigger=2,
    l0_stop_writes_trigger=6,
    l1_max_bytes=8 * 1024,
    level_size_multiplier=2,
    target_file_bytes=2 * 1024,
)
# A worker-thread step a test blocks on purpose is released well within this (real seconds);
# the bound only keeps a broken test from hanging the run.
GATE_TIMEOUT = 10.0


def options(**changes: Any) -> StorageOptions:
    changes.setdefault("sync", SyncMode.ALWAYS)
    changes.setdefault("compaction", NO_COMPACTION)
    return StorageOptions(**changes)


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Frozen virtual time (see the module docstring)."""
    return trio.testing.MockClock()


class WorkerThreads:
    """Wraps ``trio.to_thread.run_sync`` to count the engine's worker-thread calls in flight."""

    def __init__(self, original: Callable[..., Awaitable[Any]]) -> None:
        self._original = original
        self.running = 0
        self._idle = trio.Event()

    async def run_sync(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.running += 1
        try:
            return await self._original(fn, *args, **kwargs)
        finally:
            self.running -= 1
            if self.running == 0:
                self._idle.set()
                self._idle = trio.Event()

    async def settle(self) -> None:
        """Return once every task is blocked and no worker thread runs: with a frozen clock
        nothing can happen any more until the test acts."""
        while True:
            await trio.testing.wait_all_tasks_blocked()
            if self.running == 0:
                return
            await self._idle.wait()


@pytest.fixture
def threads(monkeypatch: pytest.MonkeyPatch) -> WorkerThreads:
    tracker = WorkerThreads(trio.to_thread.run_sync)
    monkeypatch.setattr(trio.to_thread, "run_sync", tracker.run_sync)
    return tracker


class Gate:
    """Blocks a worker thread at a chosen step until the test releases it."""

    def __init__(self) -> None:
        self.armed = False
        self.entered = threading.Event()
        self.released = threading.Event()

    def pass_through(self) -> None:
        if self.armed:
            self.entered.set()
            assert self.released.wait(GATE_TIMEOUT), "a gated worker thread was never released"

    async def wait_entered(self) -> None:
        assert await trio.to_thread.run_sync(self.entered.wait, GATE_TIMEOUT)


def gated_fsync(monkeypatch: pytest.MonkeyPatch) -> tuple[Gate, list[int]]:
    """Route every WAL fsync through a Gate; the list gets the WAL size each fsync made
    durable (the bytes appended before it started), once it is done."""
    gate = Gate()
    synced_sizes: list[int] = []
    original_sync = WalFile.sync

    def gated_sync(self: WalFile) -> None:
        size = self.size
        gate.pass_through()
        original_sync(self)
        synced_sizes.append(size)

    monkeypatch.setattr(WalFile, "sync", gated_sync)
    return gate, synced_sizes


def numbered_files(directory: Path, kind: str) -> set[int]:
    return {
        parsed[1] for name in os.listdir(directory) if (parsed := parse_file_name(name)) and parsed[0] == kind
    }


def durable_manifest(directory: Path) -> tuple[Version, int]:
    """The version and log number the manifest on disk records (read without opening it
    for writing, so it is safe while the engine runs)."""
    name = (directory / CURRENT).read_text().strip()
    version = Version()
    log_number = 0
    for payload in scan_frames((directory / name).read_bytes()).payloads:
        edit = decode_edit(payload)
        version = version.apply(edit)
        if edit.log_number is not None:
            log_number = edit.log_number
    return version, log_number


def open_fds_under(directory: Path) -> list[str]:
    """Targets of this process's open descriptors inside ``directory`` (Linux /proc)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the descriptor listdir itself used
        if target.startswith(str(directory) + "/"):
            found.append(target)
    return found


def leaves(group: BaseException) -> list[BaseException]:
    if isinstance(group, BaseExceptionGroup):
        return [leaf for inner in group.exceptions for leaf in leaves(inner)]
    return [group]


async def assert_aclose_returns_at_once(store: Store) -> None:
    """``aclose`` shields its wait, so a regression would hang the test: detect it instead."""
    returned = False

    async def closer() -> None:
        nonlocal returned
        await store.aclose()
        returned = True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(closer)
        await trio.testing.wait_all_tasks_blocked()
        if not returned:
            store._closed.set()  # release the stuck closer so the failure is reported
    assert returned, "aclose waited for a store that is not running"


def apply_ops(model: dict[bytes, bytes], ops: Iterable[tuple[bytes, bytes | None]]) -> None:
    for key, value in ops:
        if value is None:
            model.pop(key, None)
        else:
            model[key] = value


def assert_matches(store: Store, model: dict[bytes, bytes]) -> None:
    assert dict(store.scan()) == model
    for key, value in model.items():
        assert store.get(key) == value


def assert_levels_well_formed(version: Version) -> None:
    for level in range(1, NUM_LEVELS):
        files = version.files(level)
        for left, right in itertools.pairwise(files):
            assert left.max_key < right.min_key, f"L{level} tables {left.number} and {right.number} overlap"


# -- the basic contract ----------------------------------------------------------------


async def test_put_get_delete_and_overwrite(tmp_path: Path, clock: trio.testing.MockClock) -> None:
    async with open_store(tmp_path, options()) as store:
        assert store.get(b"a") is None
        assert await store.put(b"a", b"1") == 1
        assert await store.put(b"b", b"2") == 2
        assert await store.put(b"a", b"3") == 3
        assert (store.get(b"a"), store.get(b"b")) == (b"3", b"2")
        assert await store.delete(b"a") == 4
        assert store.get(b"a") is None
        assert await store.delete(b"never-written") == 5  # deleting a missing key is fine
        assert await store.put(b"", b"empty key") == 6
        assert await store.put(b"empty value", b"") == 7
        assert list(store.scan()) == [(b"", b"empty key"), (b"b", b"2"), (b"empty value", b"")]
        assert store.statistics().last_seq == 7


async def test_write_hands_the_batch_on_when_called_and_awaiting_waits_for_durability(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with open_store(tmp_path, options()) as store:
        first = store.write([(b"a", b"1")])  # submitted now: seqs follow the call order
        second = store.write([(b"b", b"2"), (b"c", None)])
        assert await second == 3
        assert await first == 1
        assert (store.get(b"a"), store.get(b"b")) == (b"1", b"2")
        with pytest.raises(InvalidArgument, match="keys must be bytes"):
            store.write([("text", b"v")])  # type: ignore[list-item]  # refused by the call itself
    with pytest.raises(StorageClosed):
        store.write([(b"d", b"4")])


async def test_bad_writes_fail_the_caller_not_the_store(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with open_store(tmp_path, options()) as store:
        with pytest.raises(InvalidArgument, match="keys must be bytes and values bytes or None"):
            await store.write([("text", b"v")])  # type: ignore[list-item]
        with pytest.raises(InvalidArgument, match="keys must be bytes and values bytes or None"):
            await store.put(b"k", bytearray(b"v"))  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match="a write batch needs at least one operation"):
            await store.write([])
        assert await store.put(b"k", b"v") == 1  # no sequence number was spent on the failures
        assert list(store.scan()) == [(b"k", b"v")]


async def test_scan_ranges_merge_memtables_and_every_level(
    tmp_path: Path, clock: trio.testing.MockClock, threads: WorkerThreads
) -> None:
    model: dict[bytes, bytes] = {}
    async with open_store(tmp_path, options()) as store:
        # Oldest data pushed to the last level, newer layers on L0 and in the memtable, with
        # overwrites and deletes reaching across layers.
        for i in range(0, 60):
            await store.put(b"k%03d" % i, b"old%d" % i)
            model[b"k%03d" % i] = b"old%d" % i
        await store.compact()
        for i in range(0, 60, 3):
            await store.put(b"k%03d" % i, b"l0-%d" % i)
            model[b"k%03d" % i] = b"l0-%d" % i
        for i in range(1, 60, 7):
            await store.delete(b"k%03d" % i)
            model.pop(b"k%03d" % i)
        await store.flush()
        for i in range(0, 60, 5):
            await store.put(b"k%03d" % i, b"mem%d" % i)
            model[b"k%03d" % i] = b"mem%d" % i
        await store.delete(b"k002")
        model.pop(b"k002")
        await threads.settle()
        levels = store.statistics().tables_per_level
        assert levels[0] == 1 and levels[NUM_LEVELS - 1] >= 1 and store.statistics().memtable_bytes > 0

        bounds = [None, b"", b"k000", b"k001", b"k002", b"k0025", b"k030", b"k059", b"k06", b"zzz"]
        for start in bounds:
            for end in bounds:
                expected = sorted(
                    (k, v)
                    for k, v in model.items()
                    if (start is None or k >= start) and (end is None or k < end)
                )
                assert list(store.scan(start, end)) == expected, (start, end)
        assert_matches(store, model)


# -- atomicity and durability ----------------------------------------------------------


async def test_a_reader_never_sees_half_a_write_batch(
    tmp_path: Path, clock: trio.testing.MockClock, threads: WorkerThreads
) -> None:
    keys = [b"pair-a", b"pair-m", b"pair-z"]
    observed: set[tuple[bytes | None, ...]] = set()
    done = False

    async def reader(store: Store) -> None:
        while not done:
            # Everything a reader does between two checkpoints sees one state of the tree.
            by_get = tuple(store.get(key) for key in keys)
            by_scan = dict(store.scan(b"pair-", b"pair-~"))
            assert len(set(by_get)) == 1, f"half a batch visible: {by_get}"
            assert tuple(by_scan.get(key) for key in keys) == by_get
            observed.add(by_get)
            await trio.lowlevel.checkpoint()

    # A tiny memtable: batches straddle rotations and flushes while the reader watches.
    async with open_store(tmp_path, options(memtable_bytes=512)) as store:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader, store)
            for round_ in range(150):
                if round_ % 10 == 9:
                    last = await store.write([(key, None) for key in keys])
                else:
                    value = b"v%03d" % round_ + b"." * 40
                    last = await store.write([(key, value) for key in keys])
                assert last == 3 * (round_ + 1)  # a batch takes consecutive sequence numbers
            done = True
        await threads.settle()
        assert store.statistics().compaction.flushes >= 10
    assert len(observed) > 100  # the reader really interleaved with the writer


async def test_each_wal_fsync_is_observed_through_the_options_hook(
    tmp_path: Path, clock: trio.testing.MockClock, threads: WorkerThreads
) -> None:
    observed: list[float] = []
    async with open_store(tmp_path, options(on_wal_fsync=observed.append)) as store:
        for i in range(3):
            await store.put(b"k%d" % i, b"v")
        assert len(observed) == store.statistics().wal.fsyncs >= 3
        assert all(seconds >= 0 for seconds in observed)


async def test_write_is_acknowledged_only_after_its_wal_fsync(
    tmp_path: Path, clock: trio.testing.MockClock, threads: WorkerThreads, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate, synced_sizes = gated_fsync(monkeypatch)
    async with open_store(tmp_path, options()) as store:
        segment = store.statistics().wal.segment
        wal_file = tmp_path / f"wal-{segment:06d}.log"
        for i in range(3):
            fsyncs_before = store.statistics().wal.fsyncs
            await store.put(b"k%d" % i, b"v%d" % i)
            # Acknowledged: its record was fsynced first, and nothing unsynced lies before it.
            assert store.statistics().wal.fsyncs == fsyncs_before + 1
            assert synced_sizes[-1] == wal_file.stat().st_size

        acknowledged: list[int] = []

        async def writer() -> None:
            acknowledged.append(await store.put(b"held", b"back"))

        gate.armed = True
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            await gate.wait_entered()  # the record is written; its fsync is stuck
            await trio.testing.wait_all_tasks_blocked()
            assert wal_file.stat().st_size > synced_sizes[-1]
            assert acknowledged == []
            gate.released.set()
        assert acknowledged == [4]
        assert synced_sizes[-1] == wal_file.stat().st_size


async def test_group_commit_one_fsync_for_many_concurrent_writers(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    writers, rounds = 50, 8
    seqs: list[int] = []

    async def writer(i: int) -> None:
        for r in range(rounds):
            seqs.append(await store.put(b"w%02d-%d" % (i, r), b"x" * 20))

    async with open_store(tmp_path, options()) as store:
        before = store.statistics().wal
        async with trio.open_nursery() as nursery:
            for i in range(writers):
                nursery.start_soon(writer, i)
        after = store.statistics().wal
    assert sorted(seqs) == list(range(1, writers * rounds + 1))
    assert after.appends - before.appends == writers * rounds
    # Each round of writes queues up while the previous round's fsync runs: one group each.
    assert after.fsyncs - before.fsyncs == rounds


async def test_writes_queued_together_are_one_wal_record_replayed_whole(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    # A group commit is framed as ONE record (one header and checksum, not one per write),
    # and recovery replays it with every write's own seqs.
    writers = 20
    async with open_store(tmp_path, options(sync=SyncMode.NONE)) as store:
        async with trio.open_nursery() as nursery:
            for i in range(writers):
                nursery.start_soon(store.write, [(b"w%02d" % i, b"x"), (b"v%02d" % i, None)])
    batches = replay_wal(tmp_path / "wal-000000.log").batches
    assert len(batches) == 1
    assert [seq for _key, seq, _value in batches[0]] == list(range(1, 2 * writers + 1))
    assert sorted(key for key, _seq, value in batches[0] if value is not None) == [
        b"w%02d" % i for i in range(writers)
    ]
    async with open_store(tmp_path, options()) as store:
        assert dict(store.scan()) == {b"w%02d" % i: b"x" for i in range(writers)}
        assert store.statistics().last_seq == 2 * writers


async def test_sync_interval_fsyncs_once_per_interval_when_dirty(
    tmp_path: Path, clock: trio.testing.MockClock, threads: WorkerThreads
) -> None:
    opts = options(sync=SyncMode.INTERVAL, sync_interval=0.5)
    async with open_store(tmp_path, opts) as store:
        for i in range(20):
            await store.put(b"k%d" % i, b"v")  # acknowledged without an fsync
        await threads.settle()
        assert store.statistics().wal.fsyncs == 0
        clock.jump(opts.sync_interval)
        await threads.settle()
        assert store.statistics().wal.fsyncs == 1
        clock.jump(opts.sync_interval)  # nothing new written: no fsync
        await threads.settle()
        assert store.statistics().wal.fsyncs == 1
        await store.put(b"late", b"v")
        clock.jump(opts.sync_interval)
        await threads.settle()
        assert store.statistics().wal.fsyncs == 2


async def test_sync_interval_covers_writes_made_during_a_periodic_fsync(
    tmp_path: Path, clock: trio.testing.MockClock, threads: WorkerThreads, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate, synced_sizes = gated_fsync(monkeypatch)
    opts = options(sync=SyncMode.INTERVAL, sync_interval=0.5)
    async with open_store(tmp_path, opts) as store:
        wal_file = tmp_path / f"wal-{store.statistics().wal.segment:06d}.log"
        await store.put(b"first", b"v")
        gate.armed = True
        clock.jump(opts.sync_interval)  # the ticker starts an fsync, which blocks
        await gate.wait_entered()
        gate.armed = False
        await store.put(b"during-the-fsync", b"v")  # acknowledged: written to the OS
        gate.released.set()
        await threads.settle()
        clock.jump(opts.sync_interval)  # the next tick must fsync the second write
        await threads.settle()
        assert synced_sizes[-1] == wal_file.stat().st_size


async def test_sync_none_fsyncs_only_on_rotation_and_close(
    tmp_path: Path, clock: trio.testing.MockClock, threads: WorkerThreads
) -> None:
    async with open_store(tmp_path, options(sync=SyncMode.NONE, memtable_bytes=2048)) as store:
        for i in range(200):
            await store.put(b"k%03d" % i, b"v" * 30)
        await threads.settle()
        stats = store.statistics()
        rotations = stats.wal.segment  # a fresh directory starts at segment 0
        assert rotations >= 3
        assert stats.wal.fsyncs == rotations
    reopened = Store(tmp_path, options(sync=SyncMode.NONE))
    async with trio.open_nursery() as nursery:
        await nursery.start(reopened.run)
        assert reopened.get(b"k199") == b"v" * 30
        await reopened.aclose()


# -- rotation, flush, compaction, garbage ----------------------------------------------


async def test_rotation_and_flush_make_l0_tables_and_delete_old_wal_segments(
    tmp_path: Path, clock: trio.testing.MockClock, threads: WorkerThreads
) -> None:
    model: dict[bytes, bytes] = {}
    async with open_store(tmp_path, options(memtable_bytes=4096)) as store:
        for i in range(400):
            key, value = b"key-%04d" % (i * 7919 % 400), b"value-%d-" % i + b"x" * 30
            await store.put(key, value)
            model[key] = value
        await threads.settle()
        stats = store.statistics()
        assert stats.wal.segment >= 4  # the memtable rotated with its WAL segment
        assert stats.compaction.flushes == stats.wal.segment  # every frozen memtable flushed
        assert stats.tables_per_level[0] == stats.compaction.flushes
        assert stats.immutable_memtables == 0
        assert numbered_files(tmp_path, "wal") == {stats.wal.segment}  # older segments deleted
        assert numbered_files(tmp_path, "sst") == store.view.version.all_numbers()
        version, log_number = durable_manifest(tmp_path)
        assert version.all_numbers() == store.view.version.all_numbers()
        assert log_number == stats.wal.segment

        await store.flush()  # the active memtable too
        await threads.settle()
        after = store.statistics()
        assert after.tables_per_level[0] == stats.tables_per_level[0] + 1
        assert after.memtable_bytes == 0
        assert numbered_files(tmp_path, "wal") == {after.wal.segment}
        assert_matches(store, model)
        await store.flush()  # nothing to flush: no empty table
        assert store.statistics().tables_per_level[0] == after.tables_per_level[0]


async def test_leveled_compaction_moves_data_down_within_budgets(
    tmp_path: Path, clock: trio.testing.MockClock, threads: WorkerThreads
) -> None:
    model: dict[bytes, bytes] = {}
    async with open_store(tmp_path, options(memtable_bytes=2048, compaction=SMALL_LEVELS)) as store:
        for i in range(1500):
            key = b"key-%05d" % (i * 7 % 1200)
            if i % 11 == 0:
                await store.delete(key)
                model.pop(key, None)
            else:
                value = b"v%d-" % i + b"y" * 40
                await store.put(key, value)
                model[key] = value
        await threads.settle()
        stats = store.statistics()
        version = store.view.version
        assert stats.compaction.compactions >= 5
        assert stats.tables_per_level[0] < SMALL_LEVELS.l0_compaction_trigger
        for level in range(1, NUM_LEVELS - 1):
            assert version.level_bytes(level) <= SMALL_LEVELS.max_bytes_for_level(level), level
        assert any(stats.tables_per_level[level] for level in range(3, NUM_LEVELS)), stats.tables_per_level
        assert_levels_well_formed(version)
        assert numbered_files(tmp_path, "sst") == version.all_numbers()
        assert_matches(store, model)

        await store.compact()
        await threads.settle()
        levels = store.statistics().tables_per_level
        assert levels[: NUM_LEVELS - 1] == (0,) * (NUM_LEVELS - 1) and levels[-1] >= 1
        assert numbered_files(tmp_path, "sst") == store.view.version.all_numbers()
        assert_levels_well_formed(store.view.version)
        assert_matches(store, model)
    async with open_store(tmp_path, options(compaction=SMALL_LEVELS)) as store:
        assert_matches(store, model)


async def test_obsolete_files_are_deleted_only_after_the_manifest_drops_them(
    tmp_path: Path, clock: trio.testing.MockClock, threads: WorkerThreads, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[str] = []
    violations: list[str] = []
    real_unlink = os.unlink

    def checked_unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        path = Path(path)
        parsed = parse_file_name(path.name)
        if path.parent == tmp_path and parsed is not None and parsed[0] != "MANIFEST":
            version, log_number = durable_manifest(tmp_path)
            kind, number = parsed
            checked.append(path.name)
            if kind == "sst" and number in version.all_numbers():
                violations.append(f"{path.name} deleted while the manifest names it")
            if kind == "wal" and number >= log_number:
                violations.append(f"{path.name} deleted but the manifest's log number is {log_number}")
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", checked_unlink)
    for _round in range(2):  # the second open also garbage-collects what the first left
        async with open_store(tmp_path, options(memtable_bytes=2048, compaction=SMALL_LEVELS)) as store:
            for i in range(400):
                await store.put(b"key-%05d" % (i * 13 % 300), b"z" * 50)
            await store.compact()
            await threads.settle()
    assert violations == []
    assert sum(name.startswith("sst-") for name in checked) >= 20
    assert sum(name.startswith("wal-") for name in checked) >= 10


async def test_reopen_after_clean_close_keeps_data_and_sequence(
    tmp_path: Path, clock: trio.testing.MockClock, threads: WorkerThreads
) -> None:
    model: dict[bytes, bytes] = {}
    opts = options(memtable_bytes=4096, compaction=SMALL_LEVELS)
    async with open_store(tmp_path, opts) as store:
        for i in range(300):
            ops: list[tuple[bytes, bytes | None]] = [(b"k%03d" % (i % 97), b"v%d" % i)]
            if i % 5 == 0:
                ops.append((b"k%03d" % ((i + 50) % 97), None))
            await store.write(ops)
            apply_ops(model, ops)
        last_seq = store.statistics().last_seq
        await threads.settle()
        assert store.statistics().memtable_bytes > 0  # some data is only in the WAL at close
    async with open_store(tmp_path, opts) as store:
        assert store.recovery_report[-1].startswith("replayed ")
        assert store.statistics().last_seq == last_seq
        assert_matches(store, model)
        assert await store.put(b"after", b"reopen") == last_seq + 1
        model[b"after"] = b"reopen"
    async with open_store(tmp_path, opts) as store:
        assert_matches(store, model)
        assert store.statistics().last_seq == last_seq + 1
    async with open_store(tmp_path, opts) as store:
        assert store.recovery_report == ()  # a store closed right after opening: nothing to repair
        assert_matches(store, model)


async def test_second_store_on_the_same_directory_fails_clearly(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with open_store(tmp_path, options()) as first:
        await first.put(b"k", b"v")
        with pytest.RaisesGroup(
            pytest.RaisesExc(
                StorageError,
                match=rf"^data directory {re.escape(str(tmp_path))} is in use by another process$",
                check=lambda exc: type(exc) is StorageError,
            )
        ):
            async with open_store(tmp_path, options()):
                pytest.fail("a second store opened a locked directory")
        second = Store(tmp_path, options())
        with pytest.RaisesGroup(pytest.RaisesExc(StorageError, match="is in use by another process")):
            async with trio.open_nursery() as nursery:
                await nursery.start(second.run)
        await assert_aclose_returns_at_once(second)  # a store whose start failed is closed
        assert await first.put(b"k", b"still mine") == 2  # the first store is unharmed
        assert first.get(b"k") == b"still mine"


# -- failures --------------------------------------------------------------------------


async def test_wal_fsync_failure_fails_the_store_loudly(
    tmp_path: Path, clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = False
    real_datasync = wal_module._datasync

    def datasync(fd: int) -> None:
        if failing:
            raise OSError(errno.EIO, "Input/output error")
        real_datasync(fd)

    monkeypatch.setattr(wal_module, "_datasync", datasync)
    acknowledged: list[int] = []
    with pytest.raises(BaseExceptionGroup) as caught:
        async with open_store(tmp_path, options()) as store:
            acknowledged.append(await store.put(b"safe", b"1"))
            failing = True
            acknowledged.append(await store.put(b"doomed", b"2"))
    errors = leaves(caught.value)
    storage_errors = [e for e in errors if isinstance(e, StorageError)]
    assert len(storage_errors) == 1
    assert str(storage_errors[0]) == (
        f"WAL {tmp_path}/wal-000000.log: sync failed: [Errno {errno.EIO}] Input/output error"
    )
    # The writer whose fsync failed was told so (not acknowledged, not left waiting).
    assert [type(e) for e in errors if not isinstance(e, StorageError)] == [ActorClosed]
    assert acknowledged == [1]

    failing = False
    async with open_store(tmp_path, options()) as store:  # the lock was released
        assert store.get(b"safe") == b"1"
        assert store.get(b"doomed") in (None, b"2")  # written, never acknowledged


async def test_flush_failure_fails_the_store_loudly(
    tmp_path: Path, clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    def io_error(*args: Any) -> None:
        # Not a full disk (that is refused and retried: test_disk_full_store.py).
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(compactor_module, "write_tables", io_error)
    store = Store(tmp_path, options(memtable_bytes=1024))
    acknowledged = 0
    with pytest.raises(BaseExceptionGroup) as caught:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            for i in range(100):  # the first rotation asks for a flush, which fails
                await store.put(b"k%03d" % i, b"v" * 40)
                acknowledged += 1
            pytest.fail("the store kept running after its flush failed")
    errors = leaves(caught.value)
    failures = [e for e in errors if not isinstance(e, ActorClosed)]
    assert [(type(e), str(e)) for e in failures] == [(OSError, "[Errno 5] Input/output error")]
    assert len(errors) <= 2  # and perhaps the write racing the crash: refused, not left waiting
    with pytest.raises(StorageClosed, match="is not open"):
        await store.put(b"k", b"v")
    await assert_aclose_returns_at_once(store)  # a crashed store is closed

    monkeypatch.undo()
    async with open_store(tmp_path, options()) as store:
        for i in range(acknowledged):
            assert store.get(b"k%03d" % i) == b"v" * 40


async def test_a_crashed_store_releases_every_descriptor(
    tmp_path: Path, clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    def io_error(*args: Any) -> None:
        # Not a full disk (that is refused and retried: test_disk_full_store.py).
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(compactor_module, "write_tables", io_error)
    store = Store(tmp_path, options())
    with pytest.raises(BaseExceptionGroup):
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            await store.put(b"k", b"v")
            await store.flush()
    assert open_fds_under(tmp_path) == []


# -- lifecycle -------------------------------------------------------------------------


async def test_aclose_is_idempotent_and_later_calls_raise_storage_closed(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with trio.open_nursery() as nursery:
        store: Store = await nursery.start(Store(tmp_path, options()).run)
        await store.put(b"k", b"v")
        async with trio.open_nursery() as closers:  # concurrent closes all return
            for _ in range(3):
                closers.start_soon(store.aclose)
        await store.aclose()
    await store.aclose()
    message = rf"^store {re.escape(str(tmp_path))} is not open$"
    for call in (
        lambda: store.put(b"k", b"v"),
        lambda: store.delete(b"k"),
        lambda: store.write([(b"k", b"v")]),
        lambda: store.submit([(b"k", b"v")]),
        store.flush,
        store.compact,
    ):
        with pytest.raises(StorageClosed, match=message):
            await call()
    with pytest.raises(StorageClosed, match=message):
        store.get(b"k")
    with pytest.raises(StorageClosed, match=message):
        list(store.scan())
    with pytest.raises(StorageClosed, match="was already started or closed"):
        await store.run()


async def test_aclose_of_a_store_that_never_ran(tmp_path: Path, clock: trio.testing.MockClock) -> None:
    store = Store(tmp_path, options())
    await assert_aclose_returns_at_once(store)
    await assert_aclose_returns_at_once(store)
    with pytest.raises(StorageClosed, match="was already started or closed"):
        await store.run()
    assert not (tmp_path / "CURRENT").exists()


async def test_aclose_is_bounded_when_an_actor_hangs(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    hang = trio.Event()

    async def hanging_flush(self: Compactor, memtable: Memtable) -> None:
        hang.set()
        await trio.sleep_forever()

    monkeypatch.setattr(Compactor, "_flush", hanging_flush)
    # Room for several frozen memtables: the writes below must not stall on the hung flush.
    async with open_store(tmp_path, options(memtable_bytes=1024, max_immutable_memtables=100)) as store:
        for i in range(60):
            await store.put(b"k%03d" % i, b"v" * 30)
        await hang.wait()
        started = trio.current_time()
    assert trio.current_time() - started == pytest.approx(store_module.CLOSE_TIMEOUT_SECONDS)
    monkeypatch.undo()
    async with open_store(tmp_path, options()) as store:  # every acknowledged write survives
        assert len(list(store.scan())) == 60


async def test_open_store_closes_the_store_when_its_block_raises(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    with pytest.RaisesGroup(pytest.RaisesExc(KeyError, match="from the caller")):
        async with open_store(tmp_path, options()) as store:
            await store.put(b"k", b"v")
            raise KeyError("from the caller")
    with pytest.raises(StorageClosed):
        await store.put(b"k", b"v")
    async with open_store(tmp_path, options()) as store:
        assert store.get(b"k") == b"v"


async def test_close_releases_every_file_descriptor(
    tmp_path: Path, clock: trio.testing.MockClock, threads: WorkerThreads
) -> None:
    for _round in range(3):
        async with open_store(tmp_path, options(memtable_bytes=2048, compaction=SMALL_LEVELS)) as store:
            for i in range(400):
                await store.put(b"k%04d" % i, b"w" * 40)
            await threads.settle()
            assert store.statistics().compaction.compactions > 0
            assert open_fds_under(tmp_path)
    assert open_fds_under(tmp_path) == []


async def test_a_failed_open_releases_the_lock_and_every_descriptor(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with open_store(tmp_path, options()) as store:
        for i in range(50):
            await store.put(b"k%02d" % i, b"v")
        await store.compact()
        (table,) = store.view.version.files(NUM_LEVELS - 1)
        await store.put(b"k00", b"newer")
        await store.flush()  # a second table, opened (and so closed) before the missing one
    os.unlink(tmp_path / f"sst-{table.number:06d}.sst")
    store = Store(tmp_path, options())
    with pytest.RaisesGroup(
        pytest.RaisesExc(
            CorruptionError,
            match=rf"sst-{table.number:06d}\.sst: the manifest names this L{NUM_LEVELS - 1} table "
            "but the file is missing; its 50 entries",
        )
    ):
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
    await assert_aclose_returns_at_once(store)
    assert open_fds_under(tmp_path) == []
    recover_module.unlock_directory(recover_module.lock_directory(tmp_path))  # the lock is free


async def test_compaction_does_not_leak_descriptors_of_retired_tables(
    tmp_path: Path, clock: trio.testing.MockClock, threads: WorkerThreads
) -> None:
    async with open_store(tmp_path, options(memtable_bytes=2048, compaction=SMALL_LEVELS)) as store:
        for i in range(1000):
            await store.put(b"k%04d" % (i % 300), b"w" * 40)
        await threads.settle()
        gc.collect()
        assert store.statistics().compaction.compactions >= 10
        live = {f"{tmp_path}/sst-{n:06d}.sst" for n in store.view.version.all_numbers()}
        tables_open = [target for target in open_fds_under(tmp_path) if "sst-" in target]
        assert sorted(tables_open) == sorted(live)  # each live table once; no deleted ones

        scan = store.scan()  # a reader still iterating keeps its tables readable
        first = next(scan)
        await store.compact()
        await threads.settle()
        assert [first, *scan] == list(store.scan())


# -- back-pressure ---------------------------------------------------------------------


@attrs.define
class FlushGate:
    open: trio.Event = attrs.field(factory=trio.Event)
    waiting: int = 0


async def test_writers_stall_when_flushes_cannot_keep_up(
    tmp_path: Path, clock: trio.testing.MockClock, threads: WorkerThreads, monkeypatch: pytest.MonkeyPatch
) -> None:
    capacity, writers = 16, 100
    monkeypatch.setattr(MemtableOwner, "mailbox_capacity", capacity)
    gate = FlushGate()
    real_flush = Compactor._flush

    async def gated_flush(self: Compactor, memtable: Memtable) -> None:
        gate.waiting += 1
        await gate.open.wait()
        await real_flush(self, memtable)

    monkeypatch.setattr(Compactor, "_flush", gated_flush)
    # Each write fills a memtable, so every write rotates and asks for a flush.
    opts = options(memtable_bytes=64, max_immutable_memtables=2, max_group_commit=4)
    acknowledged: list[int] = []

    async def writer(i: int) -> None:
        acknowledged.append(await store.put(b"w%03d" % i, b"x" * 100))

    async with open_store(tmp_path, opts) as store:
        async with trio.open_nursery() as nursery:
            for i in range(writers):
                nursery.start_soon(writer, i)
            await threads.settle()
            stats = store.statistics()
            # Two frozen memtables wait for the (blocked) flush; the third write filled the
            # active one and its rotation waits: nothing more is applied or acknowledged...
            assert stats.immutable_memtables == 2
            assert stats.last_seq == 3
            assert sorted(acknowledged) == [1, 2, 3]
            # ...and the other writers wait in a full, bounded mailbox or outside it.
            assert MemtableOwner.mailbox_capacity == capacity
            assert store._memtables is not None
            assert store._memtables.statistics().queued == capacity
            assert gate.waiting == 1
            gate.open.set()
        assert sorted(acknowledged) == list(range(1, writers + 1))
        for i in range(writers):
            assert store.get(b"w%03d" % i) == b"x" * 100


async def test_flush_pending_at_close_is_answered(
    tmp_path: Path, clock: trio.testing.MockClock, threads: WorkerThreads, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = FlushGate()
    real_flush = Compactor._flush

    async def gated_flush(self: Compactor, memtable: Memtable) -> None:
        gate.waiting += 1
        await gate.open.wait()
        await real_flush(self, memtable)

    monkeypatch.setattr(Compactor, "_flush", gated_flush)
    outcome: list[str] = []

    async def flusher(store: Store) -> None:
        try:
            await store.flush()
            outcome.append("flushed")
        except (StorageClosed, ActorClosed) as exc:
            outcome.append(type(exc).__name__)

    async with trio.open_nursery() as caller:  # the caller lives outside the store's nursery
        async with trio.open_nursery() as nursery:
            store: Store = await nursery.start(Store(tmp_path, options()).run)
            await store.put(b"k", b"v")
            caller.start_soon(flusher, store)
            await threads.settle()
            assert gate.waiting == 1
            nursery.start_soon(store.aclose)
            assert store._memtables is not None
            await store._memtables.wait_stopped()
            gate.open.set()
        await threads.settle()
        still_waiting = outcome == []
        caller.cancel_scope.cancel()
    assert not still_waiting, "store.flush() still waiting after the store closed"


async def test_compact_returns_once_readers_see_the_compacted_tree(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with open_store(tmp_path, options(memtable_bytes=2048)) as store:
        for round_ in range(8):
            for i in range(40):
                await store.put(b"k%03d" % (i * 3 + round_), b"v%d" % round_ * 10)
            await store.compact()
            levels = store.statistics().tables_per_level
            assert levels[: NUM_LEVELS - 1] == (0,) * (NUM_LEVELS - 1), (round_, levels)
