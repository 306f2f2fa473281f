"""A compaction that meets a damaged data block: nothing crashes, nothing is dropped.

A table whose data block fails its checksum (one flipped byte, as a failing disk leaves
it) is a compaction input, at L0 and at a deeper level. Each time the store keeps running:
the compaction that read it changes nothing (no table it wrote is left, no manifest edit
names one), the damaged table stays as it is, it is reported once (a log line naming file
and byte, ``StorageStatistics.damaged_tables``) and left out of later compactions, other
compactions still happen, good keys read back, the damaged block's keys are refused, and
writes are refused (``StorageNeedsRepair``, naming the file) only once L0 reaches its
stop-writes bound. A restart finds the same damage again and behaves the same.

Clock and threads as in ``test_disk_full_store.py``: a frozen MockClock, and the storage
actors' worker threads injected so :meth:`WorkerThreads.settle` knows when all is quiet.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from storage_checks import check_closed_directory

from sentinel.errors import CorruptionError, StorageNeedsRepair
from sentinel.storage.compaction import CompactionOptions
from sentinel.storage.files import sst_path
from sentinel.storage.manifest import NUM_LEVELS, FileMeta
from sentinel.storage.options import StorageOptions, SyncMode
from sentinel.storage.sstable import DamagedBlock
from sentinel.storage.sstable_format import (
    BLOCK_HEADER_SIZE,
    FOOTER_TRAILER,
    FOOTER_TRAILER_SIZE,
    decode_footer_body,
)
from sentinel.storage.store import Store
from sentinel.varint import decode_uvarint

VALUE_BYTES = 200  # about 20 entries per 4 KiB data block
# Flushes only when a test asks (or when a test fills this much on purpose).
MEMTABLE_BYTES = 256 * 1024
L0 = CompactionOptions(l0_compaction_trigger=3, l0_stop_writes_trigger=6, target_file_bytes=4096)
MANUAL = CompactionOptions(l0_compaction_trigger=1000, l0_stop_writes_trigger=2000, target_file_bytes=8192)


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


def options(**changes: Any) -> StorageOptions:
    changes.setdefault("sync", SyncMode.NONE)  # durability is not what these tests check
    changes.setdefault("memtable_bytes", MEMTABLE_BYTES)
    changes.setdefault("compaction", L0)
    return StorageOptions(**changes)


@asynccontextmanager
async def running(directory: Path, opts: StorageOptions, threads: WorkerThreads) -> AsyncIterator[Store]:
    async with trio.open_nursery() as nursery:
        store: Store = await nursery.start(Store(directory, opts, run_in_thread=threads.run_sync).run)
        try:
            yield store
        finally:
            await store.aclose()


@attrs.frozen
class Block:
    position: int  # byte offset of the block in the file
    first_key: bytes
    last_key: bytes


def data_blocks(table: Path) -> list[Block]:
    """A table's data blocks, decoded from the documented format (not through the reader)."""
    data = table.read_bytes()
    footer_len, _crc, _magic = FOOTER_TRAILER.unpack_from(data, len(data) - FOOTER_TRAILER_SIZE)
    footer_start = len(data) - FOOTER_TRAILER_SIZE - footer_len
    footer = decode_footer_body(data[footer_start : footer_start + footer_len])
    index = data[footer.index_offset + BLOCK_HEADER_SIZE : footer.index_offset + footer.index_size]
    blocks = []
    pos = 0
    while pos < len(index):
        bounds = []
        for _ in range(2):
            n, pos = decode_uvarint(index, pos)
            bounds.append(index[pos : pos + n])
            pos += n
        position, pos = decode_uvarint(index, pos)
        _size, pos = decode_uvarint(index, pos)
        blocks.append(Block(position, bounds[0], bounds[1]))
    return blocks


def flip_byte(path: Path, position: int) -> None:
    """Damage one byte in place, as a failing disk would (open readers see it too)."""
    with path.open("r+b") as f:
        f.seek(position)
        byte = f.read(1)[0]
        f.seek(position)
        f.write(bytes([byte ^ 0x10]))


def damage(table: Path, block: int) -> tuple[Block, str]:
    """Flip a byte inside data block ``block``; returns it and where readers will say it is."""
    found = data_blocks(table)[block]
    flip_byte(table, found.position + BLOCK_HEADER_SIZE + 10)
    return found, f"{table} at byte {found.position}: data block {block} checksum mismatch"


async def put_keys(store: Store, model: dict[bytes, bytes], keys: list[bytes], tag: bytes) -> None:
    for key in keys:
        value = tag + b"-" + key + b"." * (VALUE_BYTES - len(tag) - len(key) - 1)
        await store.put(key, value)
        model[key] = value


def keys(prefix: bytes, numbers: range) -> list[bytes]:
    return [prefix + b"%03d" % i for i in numbers]


def level_numbers(store: Store, level: int) -> list[int]:
    return [meta.number for meta in store.view.version.files(level)]


def check_reads(store: Store, model: dict[bytes, bytes], refused: set[bytes], where: str) -> None:
    """Every key of ``model`` reads back, except ``refused`` ones (only in the damaged block
    at ``where``): those raise, and a full scan reports the block and serves the rest."""
    for key, value in model.items():
        if key in refused:
            with pytest.raises(CorruptionError, match="checksum mismatch"):
                store.get(key)
        else:
            assert store.get(key) == value, key
    reported: list[DamagedBlock] = []
    assert dict(store.scan(on_damage=reported.append)) == {k: v for k, v in model.items() if k not in refused}
    assert [str(d.error) for d in reported] == [f"corruption in {where}"]


def damage_lines(caplog: pytest.LogCaptureFixture, where: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if where in r.getMessage() and "left out of compactions" in r.getMessage()
    ]


# -- L0 ----------------------------------------------------------------------------------


@attrs.frozen
class DamagedL0:
    model: dict[bytes, bytes]
    table: Path  # the damaged L0 table
    where: str  # "<file> at byte <n>: data block 1 checksum mismatch"
    refused: set[bytes]  # the keys of the damaged block


async def make_damaged_l0(store: Store, threads: WorkerThreads, directory: Path) -> DamagedL0:
    """L0 = [T2, T1, T0] with T1 damaged: T0 (a000-a099, c000-c049) is older than T1
    (b000-b199) and overlaps its range, T2 (b100-b150) is newer and overlaps it. The third
    table triggers an L0 compaction, which meets the damage."""
    model: dict[bytes, bytes] = {}
    await put_keys(store, model, keys(b"a", range(100)) + keys(b"c", range(50)), b"t0")
    await store.flush()
    await put_keys(store, model, keys(b"b", range(200)), b"t1")
    await store.flush()
    await threads.settle()
    [t1, _t0] = level_numbers(store, 0)
    table = sst_path(directory, t1)
    block, where = damage(table, 1)
    refused = {k for k in model if block.first_key <= k <= block.last_key}
    assert len(refused) > 10
    await put_keys(store, model, keys(b"b", range(100, 151)), b"t2")
    await store.flush()
    await threads.settle()
    return DamagedL0(model, table, where, refused)


async def test_a_damaged_l0_table_is_kept_reported_once_and_left_out_while_other_l0_tables_go_down(
    tmp_path: Path, clock: trio.testing.MockClock, threads: WorkerThreads, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(tmp_path, options(), threads) as store:
        made = await make_damaged_l0(store, threads, tmp_path)
        table_bytes = made.table.read_bytes()
        stats = store.statistics()
        # The compaction of all three failed and changed nothing; T0, older than the damage,
        # then went down alone (nothing in L1: a trivial move); T2 stays above T1.
        assert stats.tables_per_level[:2] == (2, 1)
        assert stats.compaction.trivial_moves == 1 and stats.compaction.compactions == 0
        assert [str(e) for e in stats.damaged_tables] == [f"corruption in {made.where}"]
        assert stats.needs_repair is None  # L0 holds 2 tables, far from its bound of 6
        assert len(damage_lines(caplog, made.where)) == 1
        check_closed_directory(tmp_path)  # no table of the failed compaction is left
        check_reads(store, made.model, made.refused, made.where)

        # A table that overlaps nothing held back goes down, merged with what L1 holds.
        await put_keys(store, made.model, keys(b"c", range(20, 81)), b"t3")
        await store.flush()
        await threads.settle()
        stats = store.statistics()
        assert stats.tables_per_level[0] == 2 and stats.compaction.compactions == 1
        assert level_numbers(store, 0)[1] == int(made.table.stem.split("-")[1])
        check_reads(store, made.model, made.refused, made.where)
        check_closed_directory(tmp_path)

        # Further compactions leave it out: no second report, no second attempt.
        await put_keys(store, made.model, keys(b"c", range(50, 100)), b"t4")
        await store.flush()
        await threads.settle()
        assert store.statistics().compaction.compactions == 2
        assert len(damage_lines(caplog, made.where)) == 1
        assert made.table.read_bytes() == table_bytes  # kept exactly as it is
        await store.put(b"e", b"a write far from the bound")
        assert store.get(b"e") == b"a write far from the bound"
    check_closed_directory(tmp_path)


async def fill_l0_to_its_bound(store: Store, threads: WorkerThreads, made: DamagedL0) -> None:
    """Flush tables overlapping the damaged one until L0 holds l0_stop_writes_trigger."""
    tag = 0
    while len(store.view.version.files(0)) < L0.l0_stop_writes_trigger:
        tag += 1
        await put_keys(store, made.model, keys(b"b", range(tag, 200, 37)), b"u%d" % tag)
        await store.flush()  # allowed below the bound, however many tables are held back
        await threads.settle()
        made.refused.difference_update(made.model.keys() & set(keys(b"b", range(tag, 200, 37))))


async def test_damage_holding_l0_at_its_stop_writes_bound_refuses_writes_naming_the_file_and_reads_go_on(
    tmp_path: Path, clock: trio.testing.MockClock, threads: WorkerThreads
) -> None:
    async with running(tmp_path, options(), threads) as store:
        made = await make_damaged_l0(store, threads, tmp_path)
        await fill_l0_to_its_bound(store, threads, made)
        stats = store.statistics()
        assert stats.tables_per_level[0] == L0.l0_stop_writes_trigger
        assert stats.needs_repair is not None and stats.writes_refused == 0
        expected = (
            f"storage needs repair: {made.where}; L0 has reached its limit of {L0.l0_stop_writes_trigger} "
            "tables and compaction cannot merge them past this damaged table, so writes are refused; "
            "restore the file from a backup and restart"
        )
        assert str(stats.needs_repair) == expected

        # Writes still go into the memtable until it is full: then they are refused.
        accepted: dict[bytes, bytes] = {}
        with pytest.raises(StorageNeedsRepair) as refused:
            for i in range(2 * MEMTABLE_BYTES // VALUE_BYTES):
                await put_keys(store, accepted, [b"f%04d" % i], b"w")
        assert str(refused.value) == expected
        assert refused.value.path == str(made.table)
        assert len(accepted) > 100
        last = b"f%04d" % len(accepted)
        assert store.get(last) is None  # the refused write is not visible
        with pytest.raises(StorageNeedsRepair):
            await store.flush()
        stats = store.statistics()
        assert stats.writes_refused >= 1 and stats.tables_per_level[0] == L0.l0_stop_writes_trigger
        made.model.update(accepted)
        check_reads(store, made.model, made.refused, made.where)
    check_closed_directory(tmp_path)


async def test_after_a_restart_the_same_damage_is_found_again_and_nothing_crashes(
    tmp_path: Path, clock: trio.testing.MockClock, threads: WorkerThreads, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(tmp_path, options(), threads) as store:
        made = await make_damaged_l0(store, threads, tmp_path)
        await fill_l0_to_its_bound(store, threads, made)
        await put_keys(store, made.model, [b"b050x"], b"wal")  # only in the WAL at close
    table_bytes = made.table.read_bytes()
    for restart in range(2):
        caplog.clear()
        async with running(tmp_path, options(), threads) as store:
            await threads.settle()
            # Recovery flushed the WAL to one more L0 table (overlapping the damaged one);
            # the first compaction met the damage again.
            stats = store.statistics()
            assert [str(e) for e in stats.damaged_tables] == [f"corruption in {made.where}"]
            assert len(damage_lines(caplog, made.where)) == 1
            assert stats.tables_per_level[0] == L0.l0_stop_writes_trigger + 1 + restart
            assert stats.needs_repair is not None and made.where in str(stats.needs_repair)
            check_reads(store, made.model, made.refused, made.where)
            await put_keys(store, made.model, [b"b051x"], b"r%d" % restart)  # fits the memtable
            with pytest.raises(StorageNeedsRepair, match=f"storage needs repair: {made.where}"):
                await store.flush()  # freezing it would need room in L0
        assert made.table.read_bytes() == table_bytes
        check_closed_directory(tmp_path)


# -- a deeper level ----------------------------------------------------------------------


async def rest_at_the_last_level(store: Store, model: dict[bytes, bytes]) -> None:
    """k000-k399 in several tables at the last level (two overlapping flushes merged)."""
    await put_keys(store, model, keys(b"k", range(0, 400, 2)), b"v0")
    await store.flush()
    await put_keys(store, model, keys(b"k", range(1, 400, 2)), b"v0")
    await store.compact()
    assert len(store.view.version.files(NUM_LEVELS - 1)) >= 6


async def test_a_damaged_table_at_the_last_level_holds_back_only_what_overlaps_it(
    tmp_path: Path, clock: trio.testing.MockClock, threads: WorkerThreads, caplog: pytest.LogCaptureFixture
) -> None:
    last = NUM_LEVELS - 1
    async with running(tmp_path, options(compaction=MANUAL), threads) as store:
        model: dict[bytes, bytes] = {}
        await rest_at_the_last_level(store, model)
        resting = store.view.version.files(last)
        assert len(resting) >= 6 and store.statistics().tables_per_level[:last] == (0,) * last
        victim: FileMeta = resting[len(resting) // 2]
        table = sst_path(tmp_path, victim.number)
        block, where = damage(table, 0)
        refused = {k for k in model if block.first_key <= k <= block.last_key}

        # Every second key updated (in two overlapping flushes: merged, they make several
        # tables): those in the damaged table's range cannot be merged into it and stay a
        # level above; the rest go down.
        updated = keys(b"k", range(0, 400, 2))
        await put_keys(store, model, updated[::2], b"v1")
        await store.flush()
        await put_keys(store, model, updated[1::2], b"v1")
        with pytest.raises(StorageNeedsRepair) as failed:
            await store.compact()
        assert str(failed.value).startswith(f"storage needs repair: {where}; compaction cannot merge")
        refused -= set(updated)  # newer versions, above the damage, read fine
        version = store.view.version
        held = version.files(last - 1)
        assert held and all(m.min_key <= victim.max_key and victim.min_key <= m.max_key for m in held)
        assert sum(len(version.files(level)) for level in range(last)) == len(held)
        now_resting = {m.number for m in version.files(last)}
        assert victim.number in now_resting
        assert now_resting - {m.number for m in resting}  # merges into the last level happened
        assert len(damage_lines(caplog, where)) == 1
        check_reads(store, model, refused, where)
        check_closed_directory(tmp_path)

        # Other key ranges keep going down; the damage is not read (or reported) again.
        await put_keys(store, model, keys(b"z", range(50)), b"v2")
        with pytest.raises(StorageNeedsRepair):
            await store.compact()
        assert {k for m in store.view.version.files(last) for k in (m.min_key, m.max_key)} >= {b"z049"}
        assert len(damage_lines(caplog, where)) == 1
        check_reads(store, model, refused, where)
    check_closed_directory(tmp_path)


async def test_background_compactions_go_on_beside_a_damaged_table_at_a_deeper_level(
    tmp_path: Path, clock: trio.testing.MockClock, threads: WorkerThreads, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(tmp_path, options(compaction=MANUAL), threads) as store:
        model: dict[bytes, bytes] = {}
        await rest_at_the_last_level(store, model)
        victim = store.view.version.files(NUM_LEVELS - 1)[2]
        block, where = damage(sst_path(tmp_path, victim.number), 0)
        refused = {k for k in model if block.first_key <= k <= block.last_key}
    # Reopened with background compaction: an L0 trigger of 2 and small levels.
    small = CompactionOptions(
        l0_compaction_trigger=2,
        l0_stop_writes_trigger=6,
        l1_max_bytes=2 * 1024,
        level_size_multiplier=2,
        target_file_bytes=4096,
    )
    async with running(tmp_path, options(compaction=small, memtable_bytes=8 * 1024), threads) as store:
        for round_ in range(6):  # every key, round after round: data flows down to the damage
            await put_keys(store, model, keys(b"k", range(round_, 400, 6)), b"r%d" % round_)
            refused -= set(keys(b"k", range(round_, 400, 6)))
        await store.flush()
        await threads.settle()
        stats = store.statistics()
        assert [str(e) for e in stats.damaged_tables] == [f"corruption in {where}"]
        assert stats.compaction.compactions >= 10 and stats.needs_repair is None
        assert stats.tables_per_level[0] < small.l0_stop_writes_trigger
        assert len(damage_lines(caplog, where)) == 1
        check_reads(store, model, refused, where)
        check_closed_directory(tmp_path)


# -- reclaiming --------------------------------------------------------------------------


class Obsolete:
    """A compaction filter: keys below ``below`` are obsolete (read from worker threads)."""

    def __init__(self) -> None:
        self.below = b""

    def __call__(self, key: bytes) -> bool:
        return key < self.below


async def test_reclaim_skips_a_damaged_table_and_rewrites_the_others(
    tmp_path: Path, clock: trio.testing.MockClock, threads: WorkerThreads, caplog: pytest.LogCaptureFixture
) -> None:
    obsolete = Obsolete()
    async with running(tmp_path, options(compaction=MANUAL, compaction_filter=obsolete), threads) as store:
        model: dict[bytes, bytes] = {}
        await rest_at_the_last_level(store, model)
        resting = store.view.version.files(NUM_LEVELS - 1)
        victim = resting[0]
        _block, where = damage(sst_path(tmp_path, victim.number), 0)
        # Retention moved past the first three tables: the damaged one and two others.
        obsolete.below = resting[3].min_key
        assert await store.reclaim([(b"k", obsolete.below)]) == 2
        assert len(damage_lines(caplog, where)) == 1
        numbers = [m.number for m in store.view.version.files(NUM_LEVELS - 1)]
        assert numbers[0] == victim.number and resting[1].number not in numbers
        # The damaged table keeps its obsolete entries (they were unreadable anyway); a
        # reader of live keys never sees them.
        live = {k: v for k, v in model.items() if not obsolete(k)}
        assert dict(store.scan(obsolete.below)) == live
        assert await store.reclaim([(b"k", obsolete.below)]) == 0
        assert len(damage_lines(caplog, where)) == 1
    check_closed_directory(tmp_path)
