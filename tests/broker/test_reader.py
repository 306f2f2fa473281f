"""Reading a partition on the real storage engine: whole batches by offset, bounds, data
missing or damaged below the high watermark (refused, never skipped), long polls and
lookups by timestamp.

Reads go through the replica (``topic.logs[p]``: it serves at the leader and reads with
its ``PartitionReader``), on the data the broker's own produce path wrote.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing
from partition_support import (
    DataBlock,
    batch,
    data_blocks,
    flip_byte,
    padded,
    retain,
    timed_batch,
    values_of,
)

from sentinel.broker import keys
from sentinel.broker import reader as reader_module
from sentinel.errors import DataLoss, OffsetOutOfRange, StorageNeedsRepair
from sentinel.storage.sstable_format import BLOCK_HEADER_SIZE

if TYPE_CHECKING:
    from conftest import NodeFactory


# -- reads -------------------------------------------------------------------------------


async def test_read_from_offset_returns_whole_batches_within_max_bytes(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run() as running:
        log = (await running.broker.create_topic("t", 1)).logs[0]
        batches = [batch(*[b"v%02d-%d" % (n, i) for i in range(3)]) for n in range(10)]  # offsets 3n..3n+2
        await log.produce(batches)
        size = len(batches[0].data)
        assert all(len(b.data) == size for b in batches)

        # From the middle of a batch: the whole batch holding the offset comes back.
        result = log.read(4, 1 << 20)
        assert values_of(result.data)[0] == (3, b"v01-0")
        assert result.next_offset == 30 and result.high_watermark == 30 and result.log_start_offset == 0

        # max_bytes caps the number of whole batches...
        result = log.read(0, 2 * size)
        assert len(result.data) == 2 * size and result.next_offset == 6
        result = log.read(0, 2 * size + size // 2)
        assert len(result.data) == 2 * size and result.next_offset == 6
        # ...but the first batch always comes back whole, so a consumer can make progress.
        result = log.read(7, 1)
        assert values_of(result.data) == [(6, b"v02-0"), (7, b"v02-1"), (8, b"v02-2")]
        assert result.next_offset == 9

        # Following next_offset reads every record exactly once.
        seen: list[tuple[int, bytes | None]] = []
        offset = 0
        while offset < log.high_watermark:
            result = log.read(offset, size)
            seen.extend(values_of(result.data))
            offset = result.next_offset
        assert [o for o, _ in seen] == list(range(30))

        # At the high watermark: empty, next offset unchanged.
        result = log.read(30, 1 << 20)
        assert (result.data, result.next_offset) == (b"", 30)


async def test_read_outside_the_log_raises_offset_out_of_range(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run() as running:
        log = (await running.broker.create_topic("t", 1)).logs[0]
        await log.produce([batch(b"a", b"b")])
        with pytest.raises(
            OffsetOutOfRange,
            match=r"offset 3 is out of range for t\[0\]: valid offsets are 0 to 2 \(2 is the next offset\)",
        ):
            log.read(3, 100)
        with pytest.raises(OffsetOutOfRange) as info:
            log.read(-1, 100)
        assert (info.value.log_start_offset, info.value.high_watermark) == (0, 2)


async def test_missing_data_below_the_high_watermark_is_refused_never_skipped(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    # What an accepted loss at recovery can leave behind: batches gone from the middle and
    # from the end of what the partition state says it holds.
    async with node.run() as running:
        log = (await running.broker.create_topic("t", 1)).logs[0]
        await log.produce([batch(b"a", b"b", b"c"), batch(b"d", b"e", b"f"), batch(b"g", b"h", b"i")])
        await log.produce([batch(b"j")])
        size = len(log.read(0, 1).data)
        await running.store.write(
            [(keys.data_key(log.topic_id, 0, 5), None), (keys.data_key(log.topic_id, 0, 9), None)]
        )
        gap = r"offsets {} to {} of t\[0\] are missing from storage \(below the high watermark 10\)"
        # What precedes a gap is served (however much the reader asks for), so a reader gets
        # every good record first; the read that starts at the gap is refused.
        for max_bytes in (size, 1 << 20):
            result = log.read(0, max_bytes)
            assert values_of(result.data) == [(0, b"a"), (1, b"b"), (2, b"c")] and result.next_offset == 3
        with pytest.raises(DataLoss, match=gap.format(3, 5)):
            log.read(3, 1 << 20)
        with pytest.raises(DataLoss, match=gap.format(4, 5)):
            log.read(4, 1 << 20)
        result = log.read(6, 1 << 20)
        assert values_of(result.data) == [(6, b"g"), (7, b"h"), (8, b"i")] and result.next_offset == 9
        assert values_of(log.read(7, size).data)[0] == (6, b"g")
        with pytest.raises(DataLoss, match=gap.format(9, 9)):
            log.read(9, 1 << 20)


# -- damaged storage ---------------------------------------------------------------------


async def test_a_damaged_table_block_serves_every_good_batch_before_it_and_refuses_a_read_at_it(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run() as running:
        t = await running.broker.create_topic("t", 2)
        u = await running.broker.create_topic("u", 1)
        log = t.logs[0]

        async def fill(end: int) -> None:
            for offset in range(log.log_end_offset, end):
                await log.produce([batch(padded(offset))])
            for other in (t.logs[1], u.logs[0]):
                await other.produce([batch(b"other-%d" % other.log_end_offset)])

        await fill(40)  # table A: t[0] offsets 0..39
        await running.flush()
        await fill(70)  # table B: t[0] offsets 40..69
        await running.flush()
        await fill(75)  # offsets 70..74 stay in the memtable
        table_a, table_b = sorted(node.directory.glob("sst-*.sst"))
        # An inner block of table A, and the first block of the newer table B (a scan of
        # the partition opens B's first block before it reaches any of A's batches).
        inner = data_blocks(table_a)[1]
        first = data_blocks(table_b)[0]
        for block in (inner, first):
            assert block.first is not None and block.last is not None
            assert block.first[:2] == block.last[:2] == (t.topic_id, 0)
            flip_byte(table_a if block is inner else table_b, block.position + BLOCK_HEADER_SIZE + 40)
        fa, la = inner.first[2], inner.last[2]  # type: ignore[index]
        fb, lb = first.first[2], first.last[2]  # type: ignore[index]
        assert 0 < fa <= la < 39 and fb == 40 and lb < 69

        def offsets(start: int, end: int) -> list[tuple[int, bytes | None]]:
            return [(o, padded(o)) for o in range(start, end)]

        def damage(start: int, end: int, table: Path, block: DataBlock) -> str:
            return (
                rf"offsets {start} to {end} of t\[0\] cannot be read: corruption in {table} at byte "
                rf"{block.position}: data block {block.number} checksum mismatch"
            )

        # Every good batch before the damage, up to the batch right before the damaged block.
        result = log.read(0, 1 << 20)
        assert values_of(result.data) == offsets(0, fa) and result.next_offset == fa
        result = log.read(fa - 1, 1 << 20)
        assert values_of(result.data) == offsets(fa - 1, fa) and result.next_offset == fa
        # A read that starts at the damage is refused, naming the offsets, the file and the byte.
        with pytest.raises(DataLoss, match=damage(fa, la, table_a, inner)):
            log.read(fa, 1 << 20)
        with pytest.raises(DataLoss, match=damage(fa + 2, la, table_a, inner)):
            log.read(fa + 2, 1 << 20)
        # Past it the partition reads again, up to the next damage (in the other table).
        result = log.read(la + 1, 1 << 20)
        assert values_of(result.data) == offsets(la + 1, 40) and result.next_offset == 40
        with pytest.raises(DataLoss, match=damage(40, lb, table_b, first)):
            log.read(40, 1 << 20)
        result = log.read(lb + 1, 1 << 20)
        assert values_of(result.data) == offsets(lb + 1, 75) and result.next_offset == 75

        # A reader paging through with small reads gets the same records, then the error.
        seen: list[tuple[int, bytes | None]] = []
        position = 0
        with pytest.raises(DataLoss, match=damage(fa, la, table_a, inner)):
            while True:
                result = log.read(position, 1000)
                seen.extend(values_of(result.data))
                position = result.next_offset
        assert seen == offsets(0, fa)

        # Other partitions and topics, in the same tables, are untouched.
        for other in (t.logs[1], u.logs[0]):
            result = other.read(0, 1 << 20)
            assert [v for _, v in values_of(result.data)] == [b"other-%d" % i for i in range(3)]
            assert result.next_offset == 3


async def test_a_damaged_block_shared_by_two_partitions_refuses_only_the_offsets_it_held(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run() as running:
        t = await running.broker.create_topic("t", 2)
        for log in t.logs:
            for offset in range(30):
                await log.produce([batch(padded(offset))])
        await running.flush()
        [table] = node.directory.glob("sst-*.sst")
        # The block where t[0]'s data ends and t[1]'s begins.
        [block] = [
            b
            for b in data_blocks(table)
            if b.first is not None
            and b.last is not None
            and (b.first[:2], b.last[:2]) == ((t.topic_id, 0), (t.topic_id, 1))
        ]
        flip_byte(table, block.position + BLOCK_HEADER_SIZE + 40)
        first_t0, last_t1 = block.first[2], block.last[2]  # type: ignore[index]
        for offset in range(30, 35):  # newer t[0] batches, in the memtable
            await t.logs[0].produce([batch(padded(offset))])

        def damage(first: int, last: int, partition: int) -> str:
            return (
                rf"offsets {first} to {last} of t\[{partition}\] cannot be read: corruption in {table} at "
                rf"byte {block.position}: data block {block.number} checksum mismatch"
            )

        # The block holds t[0] from offset first_t0 to its end in this table, then t[1]: the
        # newer t[0] batches elsewhere still read (each offset is stored once, so the block
        # cannot hold any of them), and the refused range stops where they begin.
        result = t.logs[0].read(0, 1 << 20)
        assert values_of(result.data) == [(o, padded(o)) for o in range(first_t0)]
        with pytest.raises(DataLoss, match=damage(first_t0, 29, 0)):
            t.logs[0].read(first_t0, 1 << 20)
        result = t.logs[0].read(30, 1 << 20)
        assert values_of(result.data) == [(o, padded(o)) for o in range(30, 35)] and result.next_offset == 35
        # t[1]'s first batches were in the block: refused from 0, and read after it.
        with pytest.raises(DataLoss, match=damage(0, last_t1, 1)):
            t.logs[1].read(0, 1 << 20)
        result = t.logs[1].read(last_t1 + 1, 1 << 20)
        assert values_of(result.data) == [(o, padded(o)) for o in range(last_t1 + 1, 30)]


async def test_a_compaction_over_a_damaged_block_keeps_the_broker_up(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run() as running:
        log = (await running.broker.create_topic("t", 1)).logs[0]
        for offset in range(40):
            await log.produce([batch(padded(offset))])
        await running.flush()
        [table] = node.directory.glob("sst-*.sst")
        block = data_blocks(table)[1]
        flip_byte(table, block.position + BLOCK_HEADER_SIZE + 40)
        await log.produce([batch(b"more")])
        await running.flush()  # a second table overlapping the first: no trivial move
        # The manual compaction cannot merge the damaged table: it says so, naming it; the
        # table is kept as it is and nothing fails.
        with pytest.raises(
            StorageNeedsRepair, match=f"storage needs repair: {table} at byte {block.position}"
        ):
            await running.compact()
        assert table.exists()
        assert values_of(log.read(0, 1 << 20).data)[0] == (0, padded(0))
        first, last = block.first[2], block.last[2]  # type: ignore[index]
        with pytest.raises(DataLoss, match=f"offsets {first} to {last} of t\\[0\\] cannot be read"):
            log.read(first, 1 << 20)
        result = log.read(last + 1, 1 << 20)
        assert values_of(result.data)[-1] == (40, b"more")
        assert (await log.produce([batch(b"after")])).base_offset == 41  # writes go on
        other = (await running.broker.create_topic("u", 1)).logs[0]
        await other.produce([batch(b"u0")])
        assert values_of(other.read(0, 1 << 20).data) == [(0, b"u0")]
    async with node.run() as running:  # a restart finds the same damage: no crash, same reads
        log = running.broker.topic("t").logs[0]
        with pytest.raises(StorageNeedsRepair):
            await running.compact()
        assert values_of(log.read(0, 1 << 20).data)[0] == (0, padded(0))
        assert values_of(log.read(41, 1 << 20).data) == [(41, b"after")]


# -- long polls --------------------------------------------------------------------------


async def test_wait_for_data_wakes_exactly_when_data_becomes_durable(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run() as running:
        log = (await running.broker.create_topic("t", 1)).logs[0]
        await log.produce([batch(b"zero")])
        woke: dict[str, float] = {}
        start = trio.current_time()

        async def waiter(name: str, offset: int) -> None:
            await log.wait_for_data(offset)
            woke[name] = trio.current_time() - start

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter, "at-hw", 1)
            nursery.start_soon(waiter, "further", 3)
            nursery.start_soon(waiter, "below-hw", 0)  # data is there: returns at once
            await trio.sleep(2.5)
            assert woke == {"below-hw": 0.0}
            await log.produce([batch(b"one")])  # hw 2: wakes offset 1 only
            await trio.testing.wait_all_tasks_blocked()
            assert woke == {"below-hw": 0.0, "at-hw": 2.5}
            await trio.sleep(4)
            await log.produce([batch(b"two", b"three")])  # hw 4: offset 3 is now readable
        assert woke == {"below-hw": 0.0, "at-hw": 2.5, "further": 6.5}


async def test_wait_for_data_times_out_on_the_mock_clock_and_close_wakes_it(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run() as running:
        log = (await running.broker.create_topic("t", 1)).logs[0]
        start = trio.current_time()
        with trio.move_on_after(7) as scope:
            await log.wait_for_data(0)
        assert scope.cancelled_caught and trio.current_time() - start == 7

        done = trio.Event()

        async def waiter() -> None:
            await log.wait_for_data(0)
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set()
            log.close()  # topic deleted / broker stopping
        assert done.is_set() and log.high_watermark == 0


# -- timestamps --------------------------------------------------------------------------


async def test_offset_for_timestamp_finds_the_first_record_at_or_after(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run() as running:
        log = (await running.broker.create_topic("t", 1)).logs[0]
        assert await log.offset_for_timestamp(0) == (0, -1)  # empty log
        await log.produce([timed_batch((b"a", 100), (b"b", 300), (b"c", 200))])  # offsets 0..2
        await log.produce([timed_batch((b"d", 250), (b"e", 500))])  # offsets 3..4
        assert await log.offset_for_timestamp(0) == (0, 100)
        assert await log.offset_for_timestamp(100) == (0, 100)
        assert await log.offset_for_timestamp(101) == (1, 300)
        # Offset order, not timestamp order: the first record at or after 200 is offset 1.
        assert await log.offset_for_timestamp(200) == (1, 300)
        assert await log.offset_for_timestamp(301) == (4, 500)
        assert await log.offset_for_timestamp(500) == (4, 500)
        assert await log.offset_for_timestamp(501) == (5, -1)  # none: the high watermark


def reference_lookup(records: list[tuple[int, int]], start: int, at: int, hw: int) -> tuple[int, int]:
    """What offset_for_timestamp must answer, by brute force over (offset, timestamp)."""
    for offset, ts in records:
        if offset >= start and ts >= at:
            return offset, ts
    return hw, -1


async def test_timestamp_lookups_through_the_chunk_index_match_a_full_scan_also_after_restart(
    node: NodeFactory, clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reader_module, "TIME_INDEX_CHUNK_BYTES", 400)  # a chunk per few batches
    rng = random.Random(11)
    records: list[tuple[int, int]] = []
    clock_ms = 1_000

    async def append_some(log: Any, batches: int) -> None:
        nonlocal clock_ms
        for _ in range(batches):
            stamps = []
            for _ in range(rng.randint(1, 4)):
                clock_ms += rng.randint(0, 50)
                # Mostly rising, sometimes late (an older timestamp), as producers do.
                stamps.append(clock_ms - (rng.randint(0, 400) if rng.random() < 0.2 else 0))
            result = await log.produce([timed_batch(*[(b"v", ts) for ts in stamps])])
            records.extend((result.base_offset + i, ts) for i, ts in enumerate(stamps))

    def probes() -> list[int]:
        return [0, 999, *(rng.randint(900, clock_ms + 100) for _ in range(60)), clock_ms, clock_ms + 1]

    async def check(log: Any) -> None:
        for probe in probes():
            expected = reference_lookup(records, log.log_start_offset, probe, log.high_watermark)
            assert await log.offset_for_timestamp(probe) == expected, probe

    async with node.run() as running:
        log = (await running.broker.create_topic("t", 1)).logs[0]
        await append_some(log, 60)
        assert len(log.reader._chunks) > 5  # the index really is chunked
        await check(log)
    async with node.run() as running:  # the disk's chunks come from a lazy scan
        log = running.broker.topic("t").logs[0]
        assert log.reader._chunks == []
        await append_some(log, 30)  # appended chunks first, the disk's prepended later
        await check(log)
        removed = await retain(log, retention_ms=0, retention_bytes=log.size_bytes // 2)
        assert removed > 0 and log.reader._chunks[0].end > log.log_start_offset  # pruned
        await check(log)


async def test_a_long_timestamp_lookup_yields_to_the_event_loop(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run() as running:
        log = (await running.broker.create_topic("t", 1)).logs[0]
        for n in range(300):
            await log.produce([timed_batch((b"x", 1_000 + n))])
    async with node.run() as running:
        log = running.broker.topic("t").logs[0]
        ticks = 0
        done = False

        async def ticker() -> None:
            nonlocal ticks
            while not done:
                await trio.lowlevel.checkpoint()
                ticks += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            await trio.lowlevel.checkpoint()
            before = ticks
            assert await log.offset_for_timestamp(1_299) == (299, 1_299)
            during = ticks - before
            done = True
        assert during >= 300 // 64  # the index scan and the lookup let others run
