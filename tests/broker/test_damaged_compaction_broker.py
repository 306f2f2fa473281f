"""A damaged table that holds L0 at its stop-writes bound, at the broker layer.

Every broker table overlaps every other (each write batch also updates its partition's
state key), so a damaged L0 table keeps every newer L0 table from being compacted: L0
fills up to its stop-writes bound, and then the storage engine refuses the writes that
need room with ``StorageNeedsRepair`` (RESOURCE_EXHAUSTED, naming the file and byte).
The broker treats that as any refused write, refused up front (a partition's Raft group
would otherwise hold it until the repair): nothing is appended and no offset is taken,
topic changes and offset commits fail the request, no actor crashes, and every read goes
on. Once the table is restored, a restart takes writes again
at the offset after the last acknowledged one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing
from grpclib.const import Status

from sentinel.broker.broker import Topic
from sentinel.broker.replica import ACKS_LEADER, ACKS_NONE
from sentinel.errors import DataLoss, StorageNeedsRepair
from sentinel.generated.sentinel import v1 as pb
from sentinel.records import RecordBatch, build_batch, split_batches
from sentinel.server.status import status_of
from sentinel.storage.compaction import CompactionOptions
from sentinel.storage.sstable_format import (
    BLOCK_HEADER_SIZE,
    FOOTER_TRAILER,
    FOOTER_TRAILER_SIZE,
    decode_footer_body,
)
from sentinel.varint import decode_uvarint

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import NodeFactory

STOP_WRITES = 4
COMPACTION = CompactionOptions(l0_compaction_trigger=2, l0_stop_writes_trigger=STOP_WRITES)
BIG = b"x" * (256 * 1024)  # the broker tests' memtable is the default 8 MiB


def batch(*values: bytes) -> RecordBatch:
    return RecordBatch(build_batch([(None, v, (), 1_000) for v in values]))


def read_all(topic: Topic, partition: int = 0, start: int = 0) -> list[tuple[int, bytes | None]]:
    data = topic.logs[partition].read(start, 1 << 30).data
    return [(r.offset, r.value) for b in split_batches(data) for r in b.records()]


def second_block_position(table: Path) -> int:
    """Where data block 1 of a table starts (from the documented format)."""
    data = table.read_bytes()
    footer_len, _crc, _magic = FOOTER_TRAILER.unpack_from(data, len(data) - FOOTER_TRAILER_SIZE)
    footer_start = len(data) - FOOTER_TRAILER_SIZE - footer_len
    footer = decode_footer_body(data[footer_start : footer_start + footer_len])
    index = data[footer.index_offset + BLOCK_HEADER_SIZE : footer.index_offset + footer.index_size]
    pos = 0
    for _key in range(2):  # block 0's first and last keys
        n, pos = decode_uvarint(index, pos)
        pos += n
    offset, pos = decode_uvarint(index, pos)
    size, pos = decode_uvarint(index, pos)
    return offset + size


def flip_byte(path: Path, position: int) -> None:
    with path.open("r+b") as f:
        f.seek(position)
        byte = f.read(1)[0]
        f.seek(position)
        f.write(bytes([byte ^ 0x10]))


async def test_damage_holding_l0_at_its_bound_refuses_writes_without_a_hole_and_reads_go_on(
    make_node: Callable[..., NodeFactory], clock: trio.testing.MockClock
) -> None:
    node = make_node(compaction=COMPACTION)
    async with node.run() as running:
        broker = running.broker
        t = await broker.create_topic("t", 1)
        u = await broker.create_topic("u", 1)
        for offset in range(40):
            await broker.produce("t", 0, [batch(b"t-%03d|" % offset + b"." * 240)])
        await running.flush()
        [table] = node.directory.glob("sst-*.sst")
        damaged_at = second_block_position(table)
        flip_byte(table, damaged_at + BLOCK_HEADER_SIZE + 40)
        # Three more tables: the first triggers the compaction that meets the damage; after
        # that every flush is allowed until L0 holds STOP_WRITES tables.
        for i in range(STOP_WRITES - 1):
            await broker.produce("u", 0, [batch(b"u-%d" % i)])
            await running.flush()
        stats = running.store.statistics()
        assert stats.tables_per_level[0] == STOP_WRITES and len(stats.damaged_tables) == 1
        assert stats.needs_repair is not None

        # Appends are refused from now on (acks=0 too): no offset is taken, no hole left.
        log = u.logs[0]
        acknowledged = log.log_end_offset
        with pytest.raises(StorageNeedsRepair) as refused:
            for _ in range(100):
                await broker.produce("u", 0, [batch(BIG)])
                acknowledged += 1
        answer = status_of(refused.value)
        assert answer.status is Status.RESOURCE_EXHAUSTED
        assert answer.message.startswith(f"storage needs repair: {table} at byte {damaged_at}: ")
        assert acknowledged >= STOP_WRITES - 1
        for acks in (ACKS_NONE, ACKS_LEADER):
            with pytest.raises(StorageNeedsRepair):
                await broker.produce("u", 0, [batch(b"a")], acks=acks)
        await trio.testing.wait_all_tasks_blocked()
        assert (log.log_end_offset, log.high_watermark) == (acknowledged, acknowledged)
        # Small writes fill what room is left, then are refused too: topic changes and
        # offset commits fail the request, and the actors go on serving.
        with pytest.raises(StorageNeedsRepair):
            for _ in range(10_000):
                await broker.produce("t", 0, [batch(b"")])
        with pytest.raises(StorageNeedsRepair):
            await broker.create_topic("v" * 200, 8)
        commit = pb.CommitOffsetsRequest(
            group_id="g",
            generation=-1,
            offsets=[pb.PartitionOffset(topic="u", partition=0, offset=1, metadata="m" * 1000)],
        )
        with pytest.raises(StorageNeedsRepair):
            await running.coordinator.commit(commit)
        assert sorted(broker.topics) == ["t", "u"]
        # Every read is served: the other topic entirely, the damaged one around the damage.
        assert [o for o, _ in read_all(u)] == list(range(acknowledged))
        assert read_all(t)[0] == (0, b"t-000|" + b"." * 240)
        with pytest.raises(DataLoss, match=f"corruption in {table} at byte {damaged_at}"):
            read_all(t, start=read_all(t)[-1][0] + 1)
        t_end = t.logs[0].log_end_offset
    flip_byte(table, damaged_at + BLOCK_HEADER_SIZE + 40)  # restored from a backup
    async with node.run() as running:
        u = running.broker.topic("u")
        _, result = await running.broker.produce("u", 0, [batch(b"after")])
        assert result.base_offset == acknowledged  # the refused offsets are reused: no gap
        assert [o for o, _ in read_all(u)] == list(range(acknowledged + 1))
        assert running.broker.topic("t").logs[0].log_end_offset == t_end
        assert len(read_all(running.broker.topic("t"))) == t_end
        await running.compact()  # nothing is in the way any more
        assert running.store.statistics().damaged_tables == ()
