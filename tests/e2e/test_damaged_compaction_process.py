"""End to end: a ``sentinel run`` broker whose SSTable has a damaged data block, through
compaction after compaction.

The broker flushes small memtables (``--memtable-bytes``), so its L0 fills quickly. With
the process stopped, one byte of a data block of its first table is flipped. Restarted,
it is sent data for another topic round after round: from the fourth L0 table on every
flush triggers a compaction; the first one meets the damage, which the broker logs once
(file and byte), and from then on compactions leave that table (and the newer L0 tables
overlapping it: every broker table does) alone. The broker keeps serving the other topic,
reads and writes, until L0 reaches its stop-writes bound of 12 tables; then a produce is
refused with RESOURCE_EXHAUSTED ``storage needs repair: <file> at byte <n>: ...`` (the CLI
prints it as one ``error:`` line), reads go on, and the metrics say so. A restart does the
same again: no crash, no crash loop.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest
from broker_process import BrokerProcess, sentinel_command, subprocess_env
from fault_support import metric, read_partition

from sentinel.client import Producer
from sentinel.errors import ResourceExhausted
from sentinel.storage.sstable_format import (
    BLOCK_HEADER_SIZE,
    FOOTER_TRAILER,
    FOOTER_TRAILER_SIZE,
    decode_footer_body,
)
from sentinel.varint import decode_uvarint

MEMTABLE_BYTES = 32 * 1024
L0_STOP_WRITES = 12  # CompactionOptions' default
RECORD = b"o" * 1000
ROUND = 40  # records per round: a little more than one memtable


def block_position(table: Path, number: int) -> int:
    """Where data block ``number`` of a table starts (from the documented format)."""
    data = table.read_bytes()
    footer_len, _crc, _magic = FOOTER_TRAILER.unpack_from(data, len(data) - FOOTER_TRAILER_SIZE)
    footer_start = len(data) - FOOTER_TRAILER_SIZE - footer_len
    footer = decode_footer_body(data[footer_start : footer_start + footer_len])
    index = data[footer.index_offset + BLOCK_HEADER_SIZE : footer.index_offset + footer.index_size]
    pos = 0
    for _block in range(number + 1):
        for _key in range(2):
            n, pos = decode_uvarint(index, pos)
            pos += n
        position, pos = decode_uvarint(index, pos)
        _size, pos = decode_uvarint(index, pos)
    return position


def l0_tables(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    match = re.search(r'^sentinel_sstables\{level="0"\} (\S+)$', text, re.MULTILINE)
    assert match, text
    return float(match.group(1))


async def produce_events(address: str) -> None:
    async with Producer(address) as producer:
        for n in range(40):
            await (
                await producer.send_batch(
                    "events", [b"e-%04d-" % (n * 10 + i) + b"x" * 90 for i in range(10)]
                )
            )


async def produce_round(address: str, acked: list[bytes]) -> ResourceExhausted | None:
    """One round of ``other`` records; the refusal, if the broker refused them."""
    async with Producer(address, acks="all") as producer:
        values = [b"%06d:" % (len(acked) + i) + RECORD for i in range(ROUND)]
        try:
            await (await producer.send_batch("other", values, partition=0))
        except ResourceExhausted as exc:
            return exc
    acked.extend(values)
    return None


def other_values(address: str) -> list[bytes | None]:
    return [value for _offset, value in asyncio.run(read_partition(address, "other", 0))]


def damage_lines(broker: BrokerProcess, where: str) -> list[str]:
    return [line for line in broker.log if f"compaction met a damaged table: corruption in {where}" in line]


@pytest.mark.slow
def test_a_broker_with_a_damaged_table_serves_other_topics_through_compactions_then_refuses_writes(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    broker = BrokerProcess(data, extra_args=["--memtable-bytes", str(MEMTABLE_BYTES)], metrics=True)
    broker.start()
    try:
        asyncio.run(produce_events(broker.address))
        broker.stop()
        [table] = sorted(data.glob("sst-*.sst"))[:1]
        position = block_position(table, 1)
        with table.open("r+b") as f:
            f.seek(position + BLOCK_HEADER_SIZE + 100)
            byte = f.read(1)[0]
            f.seek(position + BLOCK_HEADER_SIZE + 100)
            f.write(bytes([byte ^ 0x10]))
        where = f"{table} at byte {position}"
        damaged = table.read_bytes()

        broker.start()
        assert broker.metrics_port is not None
        acked: list[bytes] = []
        triggers = 0
        refused = None
        for _round in range(3 * L0_STOP_WRITES):
            refused = asyncio.run(produce_round(broker.address, acked))
            if refused is not None:
                break
            assert broker.process is not None and broker.process.poll() is None
            triggers += l0_tables(broker.metrics_port) >= 4  # each such flush tries a compaction
            assert other_values(broker.address) == acked  # the other topic is served throughout
        assert refused is not None, "L0 never reached its bound"
        assert triggers >= 5
        assert str(refused) == (
            f"storage needs repair: {where}: data block 1 checksum mismatch; L0 has reached its limit "
            f"of {L0_STOP_WRITES} tables and compaction cannot merge them past this damaged table, so "
            "writes are refused; restore the file from a backup and restart"
        ), refused
        # L0 may overshoot its limit by the memtables already frozen when it was reached.
        assert L0_STOP_WRITES <= l0_tables(broker.metrics_port) <= L0_STOP_WRITES + 1
        assert len(damage_lines(broker, where)) == 1
        assert metric(broker.metrics_port, "sentinel_storage_damaged_tables") == 1
        assert metric(broker.metrics_port, "sentinel_storage_needs_repair") == 1
        assert metric(broker.metrics_port, "sentinel_storage_writes_refused_total") >= 1
        cli = subprocess.run(
            sentinel_command(
                "produce", "--broker", broker.address, "--topic", "other", "--message", "m" * MEMTABLE_BYTES
            ),
            capture_output=True,
            text=True,
            timeout=60,
            env=subprocess_env(),
            stdin=subprocess.DEVNULL,
        )
        assert (cli.returncode, cli.stderr.splitlines()) == (1, [f"error: {refused}"]), cli
        assert other_values(broker.address) == acked  # reads go on

        broker.stop()  # a clean stop, and a restart that behaves the same
        broker.log.clear()
        broker.start()
        assert other_values(broker.address) == acked
        # The first round goes into the empty memtable; the next needs room in L0.
        refused_again = asyncio.run(produce_round(broker.address, acked)) or asyncio.run(
            produce_round(broker.address, acked)
        )
        assert refused_again is not None and str(refused_again).startswith(f"storage needs repair: {where}")
        assert other_values(broker.address) == acked
        assert len(damage_lines(broker, where)) == 1
        assert table.read_bytes() == damaged  # kept exactly as it was
        broker.stop()
    finally:
        broker.close()
