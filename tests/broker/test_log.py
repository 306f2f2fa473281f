"""LocalPartitionLog on the real storage engine: offsets, acks, reads, long polls,
timestamps, retention and restart.

The logs are the broker's own (``topic.logs[p]`` of a topic the Broker created), so the
keys, the partition state and the compaction filter are wired exactly as in a node.
"""

from __future__ import annotations

import itertools
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio
import trio.testing

from sentinel.broker import keys
from sentinel.broker import log as log_module
from sentinel.broker.broker import TopicConfig
from sentinel.errors import DataLoss, InvalidArgument, OffsetOutOfRange, StorageNeedsRepair
from sentinel.records import RecordBatch, build_batch, split_batches
from sentinel.storage.compaction import CompactionOptions
from sentinel.storage.options import SyncMode
from sentinel.storage.sstable_format import (
    BLOCK_HEADER_SIZE,
    FOOTER_TRAILER,
    FOOTER_TRAILER_SIZE,
    decode_footer_body,
)
from sentinel.storage.wal import WalFile
from sentinel.varint import decode_uvarint

if TYPE_CHECKING:
    from conftest import NodeFactory


def batch(*values: bytes, timestamp: int = 1_000, base_offset: int = 0) -> RecordBatch:
    return RecordBatch(build_batch([(None, v, (), timestamp) for v in values], base_offset=base_offset))


def timed_batch(*records: tuple[bytes, int]) -> RecordBatch:
    """One batch of ``(value, timestamp_ms)`` records."""
    return RecordBatch(build_batch([(None, v, (), ts) for v, ts in records]))


def values_of(data: bytes) -> list[tuple[int, bytes | None]]:
    """``(offset, value)`` of every record in concatenated batches (CRC checked)."""
    return [(r.offset, r.value) for b in split_batches(data) for r in b.records()]


# -- offsets -----------------------------------------------------------------------------


async def test_offsets_are_contiguous_and_monotonic_across_appends_and_batches(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    rng = random.Random(1234)
    async with node.run() as running:
        log = (await running.broker.create_topic("t", 1)).logs[0]
        expected: list[tuple[int, bytes]] = []
        next_offset = 0
        for request in range(60):
            # 1..4 batches per request, 1..5 records per batch, base offsets the client
            # made up (the log must replace them).
            batches = []
            for b in range(rng.randint(1, 4)):
                values = [b"r%d-%d-%d" % (request, b, i) for i in range(rng.randint(1, 5))]
                batches.append(batch(*values, base_offset=rng.choice([0, 7, 1_000_000])))
            result = await log.append(batches)
            count = sum(b.record_count for b in batches)
            assert (result.base_offset, result.last_offset) == (next_offset, next_offset + count - 1)
            assert result.log_append_time_ms == -1
            for one in batches:
                expected.extend((next_offset + i, r.value) for i, r in enumerate(one.records()))
                next_offset += one.record_count
            assert log.log_end_offset == log.high_watermark == next_offset

        data = log.read(0, 1 << 30).data
        assert values_of(data) == expected
        # Stored batches carry their assigned base offsets, back to back, CRC intact.
        stored = split_batches(data)
        assert stored[0].base_offset == 0
        for left, right in itertools.pairwise(stored):
            assert right.base_offset == left.next_offset


async def test_concurrent_appends_get_disjoint_contiguous_ranges_and_land_where_told(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run() as running:
        log = (await running.broker.create_topic("t", 1)).logs[0]
        results: dict[int, tuple[int, int]] = {}

        async def producer(index: int) -> None:
            for round_ in range(10):
                one = batch(*[b"p%d-%d-%d" % (index, round_, i) for i in range(index + 1)])
                result = await log.append([one])
                results[index * 100 + round_] = (result.base_offset, result.last_offset)

        async with trio.open_nursery() as nursery:
            for index in range(5):
                nursery.start_soon(producer, index)

        ranges = sorted(results.values())
        assert ranges[0][0] == 0
        for (_, last), (base, _) in itertools.pairwise(ranges):
            assert base == last + 1  # no gap, no overlap
        total = sum(10 * (i + 1) for i in range(5))
        assert ranges[-1][1] == total - 1 == log.high_watermark - 1
        # Each producer's records sit at the offsets its append was told.
        by_offset = dict(values_of(log.read(0, 1 << 30).data))
        for key, (base, _last) in results.items():
            index, round_ = divmod(key, 100)
            assert by_offset[base] == b"p%d-%d-0" % (index, round_)


async def test_append_rejects_empty_requests_and_empty_batches(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run() as running:
        log = (await running.broker.create_topic("t", 1)).logs[0]
        with pytest.raises(InvalidArgument, match="a produce request needs at least one record batch"):
            await log.append([])
        # An empty batch (every record compacted away) is valid on the wire, not as input.
        empty = bytearray(batch(b"x").data)
        empty[57:61] = (0).to_bytes(4, "big")  # recordCount
        empty[23:27] = (0xFFFFFFFF).to_bytes(4, "big")  # lastOffsetDelta -1
        with pytest.raises(InvalidArgument, match="record batch holds no records"):
            await log.append([RecordBatch(bytes(empty), verify_crc=False)])
        assert (log.log_end_offset, log.high_watermark) == (0, 0)  # no offset was spent
        assert (await log.append([batch(b"a")])).base_offset == 0


# -- acks --------------------------------------------------------------------------------


async def test_append_without_wait_assigns_offsets_at_once_and_exposes_them_when_durable(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run() as running:
        log = (await running.broker.create_topic("t", 1)).logs[0]
        await log.append([batch(b"first")])
        result = await log.append([batch(b"a", b"b", b"c")], wait=False)
        # Offsets are assigned and the write enqueued, but it is not durable yet: the high
        # watermark (what readers see) has not moved.
        assert (result.base_offset, result.last_offset) == (1, 3)
        assert (log.log_end_offset, log.high_watermark) == (4, 1)
        assert values_of(log.read(1, 1 << 20).data) == []
        with pytest.raises(OffsetOutOfRange):
            log.read(2, 1 << 20)
        await trio.testing.wait_all_tasks_blocked()  # the WAL writer takes it
        assert log.high_watermark == 4
        assert values_of(log.read(1, 1 << 20).data) == [(1, b"a"), (2, b"b"), (3, b"c")]


async def test_append_with_wait_returns_only_after_the_wal_fsync_under_sync_always(
    make_node: Callable[..., NodeFactory], clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, released = threading.Event(), threading.Event()
    gate = {"armed": False}
    original_sync = WalFile.sync

    def gated_sync(self: WalFile) -> None:
        if gate["armed"]:
            entered.set()
            assert released.wait(10), "the gated fsync was never released"
        original_sync(self)

    monkeypatch.setattr(WalFile, "sync", gated_sync)
    async with make_node(sync=SyncMode.ALWAYS).run() as running:
        log = (await running.broker.create_topic("t", 1)).logs[0]
        returned: list[int] = []

        async def produce() -> None:
            returned.append((await log.append([batch(b"x", b"y")])).base_offset)

        with running.frozen():  # the fsync runs in a worker thread
            gate["armed"] = True
            async with trio.open_nursery() as nursery:
                nursery.start_soon(produce)
                assert await trio.to_thread.run_sync(entered.wait, 10)
                await trio.testing.wait_all_tasks_blocked()
                # The fsync is in progress: no ack, nothing visible to readers.
                assert returned == []
                assert (log.log_end_offset, log.high_watermark) == (2, 0)
                assert log.read(0, 1 << 20).data == b""
                gate["armed"] = False
                released.set()
        assert returned == [0]
        assert log.high_watermark == 2


# -- reads -------------------------------------------------------------------------------


async def test_read_from_offset_returns_whole_batches_within_max_bytes(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run() as running:
        log = (await running.broker.create_topic("t", 1)).logs[0]
        batches = [batch(*[b"v%02d-%d" % (n, i) for i in range(3)]) for n in range(10)]  # offsets 3n..3n+2
        await log.append(batches)
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
        await log.append([batch(b"a", b"b")])
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
        await log.append([batch(b"a", b"b", b"c"), batch(b"d", b"e", b"f"), batch(b"g", b"h", b"i")])
        await log.append([batch(b"j")])
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


@attrs.frozen
class DataBlock:
    number: int
    position: int  # byte offset of the framed block in the file
    first: tuple[int, int, int] | None  # the parsed data key of its first and last entries
    last: tuple[int, int, int] | None


def data_blocks(table: Path) -> list[DataBlock]:
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
            bounds.append(keys.parse_data_key(index[pos : pos + n]))
            pos += n
        position, pos = decode_uvarint(index, pos)
        _size, pos = decode_uvarint(index, pos)
        blocks.append(DataBlock(len(blocks), position, bounds[0], bounds[1]))
    return blocks


def flip_byte(path: Path, position: int) -> None:
    """Damage one byte in place, as a failing disk would (open readers see it too)."""
    with path.open("r+b") as f:
        f.seek(position)
        byte = f.read(1)[0]
        f.seek(position)
        f.write(bytes([byte ^ 0x10]))


def padded(offset: int) -> bytes:
    return b"t0-%04d|" % offset + b"." * 240  # about 12 batches per 4 KiB data block


async def test_a_damaged_table_block_serves_every_good_batch_before_it_and_refuses_a_read_at_it(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run() as running:
        t = await running.broker.create_topic("t", 2)
        u = await running.broker.create_topic("u", 1)
        log = t.logs[0]

        async def fill(end: int) -> None:
            for offset in range(log.log_end_offset, end):
                await log.append([batch(padded(offset))])
            for other in (t.logs[1], u.logs[0]):
                await other.append([batch(b"other-%d" % other.log_end_offset)])

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
                await log.append([batch(padded(offset))])
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
            await t.logs[0].append([batch(padded(offset))])

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


async def test_retention_stops_at_a_damaged_block_and_the_broker_stays_up(
    node: NodeFactory, clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with node.run() as running:
        expiring = TopicConfig(retention_ms=1_000)
        log = (await running.broker.create_topic("t", 1, config=expiring)).logs[0]
        other = (await running.broker.create_topic("u", 1, config=expiring)).logs[0]
        for offset in range(40):
            await log.append([batch(padded(offset), timestamp=5)])  # all of them expired
        await other.append([batch(b"u", timestamp=5)] * 3)
        await running.flush()
        [table] = node.directory.glob("sst-*.sst")
        block = data_blocks(table)[1]
        assert block.first is not None and block.last is not None and block.last[:2] == (log.topic_id, 0)
        flip_byte(table, block.position + BLOCK_HEADER_SIZE + 40)
        first, last = block.first[2], block.last[2]

        # What the broker's retention loop runs (an error escaping it fails the broker).
        with running.frozen():
            assert await running.broker.enforce_retention() == first + 3
        # The batches before the damage expired; the damaged ones cannot be judged, so they
        # and what follows them stay. Other topics' retention goes on.
        assert (log.log_start_offset, other.log_start_offset) == (first, 3)
        warning = (
            f"retention of t[0] stops at offset {first}: corruption in {table} at byte {block.position}: "
        )
        assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
            warning + "data block 1 checksum mismatch"
        ]
        with running.frozen():  # the next pass: the same damage is not logged again
            assert await running.broker.enforce_retention() == 0
        assert log.log_start_offset == first and len(caplog.records) == 1
        # The broker still serves reads and takes writes.
        assert values_of(log.read(last + 1, 1 << 20).data)[0] == (last + 1, padded(last + 1))
        partition, result = await running.broker.produce("t", 0, [batch(b"new")])
        assert (partition, result.base_offset) == (0, 40)


async def test_a_compaction_over_a_damaged_block_keeps_the_broker_up(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run() as running:
        log = (await running.broker.create_topic("t", 1)).logs[0]
        for offset in range(40):
            await log.append([batch(padded(offset))])
        await running.flush()
        [table] = node.directory.glob("sst-*.sst")
        block = data_blocks(table)[1]
        flip_byte(table, block.position + BLOCK_HEADER_SIZE + 40)
        await log.append([batch(b"more")])
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
        assert (await log.append([batch(b"after")])).base_offset == 41  # writes go on
        other = (await running.broker.create_topic("u", 1)).logs[0]
        await other.append([batch(b"u0")])
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
        await log.append([batch(b"zero")])
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
            await log.append([batch(b"one")])  # hw 2: wakes offset 1 only
            await trio.testing.wait_all_tasks_blocked()
            assert woke == {"below-hw": 0.0, "at-hw": 2.5}
            await trio.sleep(4)
            await log.append([batch(b"two", b"three")])  # hw 4: offset 3 is now readable
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
        await log.append([timed_batch((b"a", 100), (b"b", 300), (b"c", 200))])  # offsets 0..2
        await log.append([timed_batch((b"d", 250), (b"e", 500))])  # offsets 3..4
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
    monkeypatch.setattr(log_module, "TIME_INDEX_CHUNK_BYTES", 400)  # a chunk per few batches
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
            result = await log.append([timed_batch(*[(b"v", ts) for ts in stamps])])
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
        assert len(log._chunks) > 5  # the index really is chunked
        await check(log)
    async with node.run() as running:  # the disk's chunks come from a lazy scan
        log = running.broker.topic("t").logs[0]
        assert log._chunks == []
        await append_some(log, 30)  # appended chunks first, the disk's prepended later
        await check(log)
        removed = await log.apply_retention(retention_ms=0, retention_bytes=log.size_bytes // 2)
        assert removed > 0 and log._chunks[0].end > log.log_start_offset  # pruned
        await check(log)


async def test_a_long_timestamp_lookup_yields_to_the_event_loop(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run() as running:
        log = (await running.broker.create_topic("t", 1)).logs[0]
        for n in range(300):
            await log.append([timed_batch((b"x", 1_000 + n))])
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


# -- retention ---------------------------------------------------------------------------


async def test_time_retention_moves_log_start_and_compaction_drops_the_data(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run() as running:
        topic = await running.broker.create_topic("t", 2)
        log, other = topic.logs
        now = 1_000_000
        # Batch ages (ms): 10 s, 9 s, 2 s, 8 s (old again, but behind a young one), 1 s.
        batches = [
            timed_batch((b"a%d" % age, now - age - 5), (b"b%d" % age, now - age))
            for age in (10_000, 9_000, 2_000, 8_000, 1_000)
        ]
        for one in batches:
            await log.append([one])
        await other.append([timed_batch((b"old", 1))])
        assert log.size_bytes == sum(len(b.data) for b in batches)
        await running.flush()

        removed = await log.apply_retention(retention_ms=5_000, retention_bytes=0, now_ms=now)
        # Only from the front: the 8 s old batch stays behind the 2 s old one.
        assert removed == 4
        assert log.log_start_offset == 4 and log.high_watermark == 10
        assert log.size_bytes == sum(len(b.data) for b in batches[2:])
        with pytest.raises(OffsetOutOfRange, match=r"valid offsets are 4 to 10 \(10 is the next offset\)"):
            log.read(3, 1 << 20)
        assert values_of(log.read(4, 1 << 20).data)[0] == (4, b"a2000")
        assert await log.offset_for_timestamp(0) == (4, now - 2_005)
        # A second pass at the same time has nothing more to do; retention off: nothing.
        assert await log.apply_retention(retention_ms=5_000, retention_bytes=0, now_ms=now) == 0
        assert await log.apply_retention(retention_ms=0, retention_bytes=0, now_ms=now * 10) == 0

        # The data stays on disk until a compaction rewrites its table: the broker's filter
        # then drops what lies below the log start (published by enforce_retention).
        prefix = keys.data_prefix(topic.topic_id, 0)
        assert sum(k.startswith(prefix) for k in running.data_keys()) == 5
        running.broker._publish_liveness()  # what Broker.enforce_retention does after removals
        await running.compact()  # merges the data table with the newer partition-state table
        left = [keys.parse_data_key(k) for k in running.data_keys() if k.startswith(prefix)]
        assert [last for _, _, last in left] == [5, 7, 9]
        assert values_of(log.read(4, 1 << 20).data)[0] == (4, b"a2000")
        # The other partition kept its (very old) data: no retention was applied to it.
        assert len([k for k in running.data_keys() if k.startswith(keys.data_prefix(topic.topic_id, 1))]) == 1


async def test_size_retention_keeps_at_most_retention_bytes(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run() as running:
        log = (await running.broker.create_topic("t", 1)).logs[0]
        batches = [batch(b"record-%d" % n) for n in range(6)]
        await log.append(batches)
        size = len(batches[0].data)
        assert log.size_bytes == 6 * size

        assert await log.apply_retention(retention_ms=0, retention_bytes=2 * size + 1, now_ms=0) == 4
        assert (log.log_start_offset, log.size_bytes) == (4, 2 * size)
        assert await log.apply_retention(retention_ms=0, retention_bytes=2 * size, now_ms=0) == 0
        assert await log.apply_retention(retention_ms=0, retention_bytes=size, now_ms=0) == 1
        assert (log.log_start_offset, log.size_bytes, log.high_watermark) == (5, size, 6)
        later = batch(b"a longer record than the others")
        await log.append([later])
        assert log.size_bytes == size + len(later.data)


async def test_broker_enforce_retention_applies_topic_configs_and_compaction_removes_data(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run() as running:
        broker = running.broker
        by_time = await broker.create_topic("by-time", 1, config=TopicConfig(retention_ms=60_000))
        default = await broker.create_topic("default", 1)  # the broker default: keep forever
        one = batch(b"x" * 100, timestamp=1)  # 1970: older than any retention
        size = len(one.data)
        by_size = await broker.create_topic("by-size", 1, config=TopicConfig(retention_bytes=2 * size))
        assert default.config == TopicConfig()
        for topic in (by_time, default, by_size):
            await topic.logs[0].append([one] * 4)
        await running.flush()

        assert await broker.enforce_retention() == 4 + 2  # against wall-clock now
        assert by_time.logs[0].log_start_offset == 4
        assert by_size.logs[0].log_start_offset == 2 and by_size.logs[0].size_bytes == 2 * size
        assert default.logs[0].log_start_offset == 0
        await running.compact()
        remaining: dict[int, list[int]] = {}
        for key in running.data_keys():
            topic_id, _, last = keys.parse_data_key(key)
            remaining.setdefault(topic_id, []).append(last)
        assert remaining == {default.topic_id: [0, 1, 2, 3], by_size.topic_id: [2, 3]}


async def test_retention_reclaims_space_of_data_already_in_the_last_level(
    make_node: Callable[..., NodeFactory], clock: trio.testing.MockClock
) -> None:
    small_tables = CompactionOptions(
        l0_compaction_trigger=1000, l0_stop_writes_trigger=2000, target_file_bytes=1024
    )
    async with make_node(compaction=small_tables).run() as running:
        topic = await running.broker.create_topic("t", 1, config=TopicConfig(retention_ms=60_000))
        log = topic.logs[0]
        for n in range(20):
            await log.append([batch(b"%03d" % n + b"." * 200, timestamp=1)])
        await running.flush()
        await log.append([batch(b"new", timestamp=2**42)])  # the year 2109: retention keeps it
        await running.compact()  # everything rests in the last level, in ~1 KiB tables
        assert await running.broker.enforce_retention() == 20
        await running.compact()
        lasts = [keys.parse_data_key(k)[2] for k in running.data_keys()]
        assert lasts == [20]


async def test_retention_loop_runs_on_its_interval(node: NodeFactory, clock: trio.testing.MockClock) -> None:
    async with node.run(retention_check_seconds=30.0) as running:
        start = trio.current_time()
        topic = await running.broker.create_topic("t", 1, config=TopicConfig(retention_ms=1_000))
        log = topic.logs[0]
        await log.append([batch(b"ancient", timestamp=5)])
        await trio.sleep(29.9)
        assert log.log_start_offset == 0
        await trio.sleep(0.2)  # the first check (at 30 s) has run
        assert log.log_start_offset == 1
        assert trio.current_time() - start == pytest.approx(30.1)


# -- restart -----------------------------------------------------------------------------


async def test_restart_keeps_offsets_high_watermark_log_start_and_size(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run() as running:
        topic = await running.broker.create_topic("t", 2)
        log = topic.logs[1]
        await log.append([batch(b"a", b"b", b"c")])
        await log.append([batch(b"d")])
        await log.append([batch(b"e", b"f")])
        assert await log.apply_retention(retention_ms=0, retention_bytes=log.size_bytes - 1, now_ms=0) == 3
        before = (log.log_start_offset, log.high_watermark, log.log_end_offset, log.size_bytes)
        assert before[:3] == (3, 6, 6)
    async with node.run() as running:
        log = running.broker.topic("t").logs[1]
        assert (log.log_start_offset, log.high_watermark, log.log_end_offset, log.size_bytes) == before
        assert running.broker.topic("t").logs[0].high_watermark == 0
        assert values_of(log.read(3, 1 << 20).data) == [(3, b"d"), (4, b"e"), (5, b"f")]
        result = await log.append([batch(b"g")])
        assert result.base_offset == 6
    async with node.run() as running:
        log = running.broker.topic("t").logs[1]
        assert log.high_watermark == 7
        assert values_of(log.read(6, 1 << 20).data) == [(6, b"g")]
