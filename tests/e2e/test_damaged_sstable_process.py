"""End to end: one flipped byte in a data block of a ``sentinel run`` broker's SSTable.

The broker flushes what it is sent to SSTables itself (a small ``--memtable-bytes``); with
the process stopped, one byte inside a data block holding part of ``events[0]`` is flipped,
as a failing disk would. Against the restarted broker, ``sentinel consume --from-beginning``
prints every record before the damaged block and then one ``error:`` line naming topic,
partition, offset, the offsets the block held, the file and the byte, exit 1. The rest of
the partition (from past the damage), another topic in the same table, and new writes are
still served by the same broker process.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import attrs
import pytest
from broker_process import BrokerProcess, sentinel_command, subprocess_env

from sentinel.broker import keys
from sentinel.client import Producer
from sentinel.storage.sstable_format import (
    BLOCK_HEADER_SIZE,
    FOOTER_TRAILER,
    FOOTER_TRAILER_SIZE,
    decode_footer_body,
)
from sentinel.varint import decode_uvarint

TIMEOUT_S = 30
BATCHES = 40
RECORDS_PER_BATCH = 10
# Small enough that the broker writes the first part of what it is sent to an SSTable.
MEMTABLE_BYTES = 32 * 1024


def value(offset: int) -> str:
    return f"r-{offset:04d}-" + "x" * 90


@attrs.frozen
class DataBlock:
    number: int
    position: int  # byte offset of the framed block in the file
    first: tuple[int, int, int] | None  # parsed data keys of its first and last entries
    last: tuple[int, int, int] | None


def data_blocks(table: Path) -> list[DataBlock]:
    """A table's data blocks, decoded from the documented format (sstable_format.py)."""
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


async def produce(address: str) -> None:
    async with Producer(address, linger_ms=0) as producer:
        for n in range(BATCHES):
            offsets = range(n * RECORDS_PER_BATCH, (n + 1) * RECORDS_PER_BATCH)
            future = await producer.send_batch("events", [value(o).encode() for o in offsets], partition=0)
            await future  # one stored batch per call, in order
            if n == 0:  # "events" is topic 1, "other" topic 2, both in the first table
                await (await producer.send("other", b"unrelated", partition=0))


async def produce_one(address: str) -> int:
    async with Producer(address) as producer:
        return (await (await producer.send("events", b"after the damage", partition=0))).offset


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        sentinel_command(*args),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=TIMEOUT_S,
    )


@pytest.mark.slow
def test_consume_prints_the_records_before_a_damaged_sstable_block_then_one_error_line(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    broker = BrokerProcess(data_dir, extra_args=["--memtable-bytes", str(MEMTABLE_BYTES)])
    broker.start()
    try:
        asyncio.run(produce(broker.address))
        broker.stop()

        # An inner block of the table that holds only events[0] batches (topic id 1).
        tables = sorted(data_dir.glob("sst-*.sst"))
        assert tables, "the broker wrote no SSTable"
        table = tables[0]
        assert b"unrelated" in table.read_bytes()  # the other topic's record is in it too
        block = next(
            b
            for b in data_blocks(table)
            if b.first is not None
            and b.last is not None
            and b.first[:2] == b.last[:2] == (1, 0)
            and b.number > 0
        )
        with table.open("r+b") as f:
            f.seek(block.position + BLOCK_HEADER_SIZE + 100)
            byte = f.read(1)[0]
            f.seek(block.position + BLOCK_HEADER_SIZE + 100)
            f.write(bytes([byte ^ 0x10]))
        # Keys hold a batch's last offset: the block's batches start after its first key's
        # predecessor batch, i.e. at a batch boundary.
        first = block.first[2] - RECORDS_PER_BATCH + 1  # type: ignore[index]
        last = block.last[2]  # type: ignore[index]
        assert 0 < first <= last < BATCHES * RECORDS_PER_BATCH - 1

        broker.start()
        address = ("--broker", broker.address)
        result = cli("consume", *address, "--topic", "events", "--from-beginning")
        assert result.returncode == 1, result
        assert result.stdout == "".join(value(o) + "\n" for o in range(first)), result
        assert result.stderr.splitlines() == [
            f"error: cannot read topic 'events' partition 0 at offset {first}: offsets {first} to {last} of "
            f"events[0] cannot be read: corruption in {table} at byte {block.position}: "
            f"data block {block.number} checksum mismatch"
        ], result.stderr

        # The same broker process still serves the rest of the partition, another topic
        # whose data sits in the same table, and new writes.
        after = cli("consume", *address, "--topic", "events", "--partition", "0", "--offset", str(last + 1))
        end = BATCHES * RECORDS_PER_BATCH
        assert (after.returncode, after.stderr) == (0, ""), after
        assert after.stdout == "".join(value(o) + "\n" for o in range(last + 1, end))
        other = cli("consume", *address, "--topic", "other", "--from-beginning")
        assert (other.returncode, other.stdout, other.stderr) == (0, "unrelated\n", ""), other
        assert asyncio.run(produce_one(broker.address)) == end
        # The operator hears of the damage once, in the broker's log.
        damage_lines = [line for line in broker.log if "cannot be read: corruption in" in line]
        assert len(damage_lines) == 1 and str(table) in damage_lines[0], broker.log
        broker.stop()
    finally:
        broker.close()
