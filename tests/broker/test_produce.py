"""Producing to a partition replica on the real storage engine, in a cluster of one:
offsets, concurrency, validation and acks.

The replicas are the broker's own (``topic.logs[p]`` of a topic the Broker created), so the
keys, the partition state, the Raft group and the compaction filter are wired exactly as
in a node. acks=all is answered when the batch commits (a group of one: its own durable
write), acks=0 at once, with the offsets assigned either way.
"""

from __future__ import annotations

import itertools
import random
import struct
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing
from conftest import frozen
from crc32c import crc32c
from partition_support import batch, replica, values_of

from sentinel.broker.replica import ACKS_ALL, ACKS_LEADER, ACKS_NONE
from sentinel.errors import InvalidArgument, OffsetOutOfRange
from sentinel.records import RecordBatch, split_batches
from sentinel.records import batch_format as fmt
from sentinel.storage.options import SyncMode
from sentinel.storage.wal import WalFile

if TYPE_CHECKING:
    from conftest import NodeFactory


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
            result = await log.produce(batches)
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
                result = await log.produce([one])
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


def empty_batch() -> RecordBatch:
    """A well-formed batch with no records (its CRC valid): what compaction leaves of a
    batch on the wire, never a producer's input."""
    data = bytearray(batch(b"x").data[: fmt.RECORDS_OFFSET])
    struct.pack_into(">i", data, fmt.BATCH_LENGTH_OFFSET, len(data) - fmt.LOG_OVERHEAD)
    struct.pack_into(">i", data, fmt.LAST_OFFSET_DELTA_OFFSET, -1)
    struct.pack_into(">i", data, fmt.RECORD_COUNT_OFFSET, 0)
    struct.pack_into(">I", data, fmt.CRC_OFFSET, crc32c(bytes(data[fmt.CRC_START :])))
    return RecordBatch(bytes(data))


async def test_produce_rejects_empty_requests_and_empty_batches(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run() as running:
        log = replica((await running.broker.create_topic("t", 1)).logs[0])
        with pytest.raises(InvalidArgument, match="a produce request needs at least one record batch"):
            await log.produce([])
        # An empty batch is valid on the wire (its records pass the broker's validation),
        # not as input: it would own no offset. Refused by the replica, on every path.
        empty = empty_batch()
        empty.validate_records()
        with pytest.raises(InvalidArgument, match="record batch holds no records"):
            await log.produce([batch(b"a"), empty])
        with pytest.raises(InvalidArgument, match="record batch holds no records"):
            await running.broker.produce("t", 0, [empty])
        assert (log.log_end_offset, log.high_watermark) == (0, 0)  # no offset was spent
        assert (await log.produce([batch(b"a")])).base_offset == 0


# -- acks --------------------------------------------------------------------------------


async def test_acks_none_assigns_offsets_at_once_and_readers_see_them_once_committed(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run() as running:
        log = replica((await running.broker.create_topic("t", 1)).logs[0])
        await log.produce([batch(b"first")])
        result = await log.produce([batch(b"a", b"b", b"c")], ACKS_NONE)
        # Offsets are assigned and the batch proposed, but it is not committed yet: the
        # high watermark (what readers see) has not moved.
        assert (result.base_offset, result.last_offset) == (1, 3)
        assert log.high_watermark == 1
        assert values_of(log.read(1, 1 << 20).data) == []
        with pytest.raises(OffsetOutOfRange):
            log.read(2, 1 << 20)
        await trio.testing.wait_all_tasks_blocked()  # the Raft group persists and commits it
        assert (log.log_end_offset, log.high_watermark) == (4, 4)
        assert values_of(log.read(1, 1 << 20).data) == [(1, b"a"), (2, b"b"), (3, b"c")]
        # acks=1 (the leader's own durable write) and acks=all (committed) are one and the
        # same in a group of one: answered with the data readable.
        for acks, base in ((ACKS_LEADER, 4), (ACKS_ALL, 5)):
            result = await log.produce([batch(b"x")], acks)
            assert (result.base_offset, log.high_watermark) == (base, base + 1)


async def test_acks_all_returns_only_after_the_wal_fsync_under_sync_always(
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
    # Under sync=always every write (the Raft groups' too) waits for a worker thread: the
    # clock stays still for the whole test, or autojump would fire timers meanwhile.
    with frozen(clock):
        async with make_node(sync=SyncMode.ALWAYS).run() as running:
            log = replica((await running.broker.create_topic("t", 1)).logs[0])
            returned: list[int] = []

            async def produce() -> None:
                returned.append((await log.produce([batch(b"x", b"y")])).base_offset)

            gate["armed"] = True
            async with trio.open_nursery() as nursery:
                nursery.start_soon(produce)
                assert await trio.to_thread.run_sync(entered.wait, 10)
                await trio.testing.wait_all_tasks_blocked()
                # The fsync is in progress: no ack, nothing visible to readers.
                assert returned == []
                assert log.high_watermark == 0
                assert log.read(0, 1 << 20).data == b""
                gate["armed"] = False
                released.set()
            assert returned == [0]
            assert log.high_watermark == 2
