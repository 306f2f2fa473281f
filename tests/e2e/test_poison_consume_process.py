"""End to end: a damaged batch stored behind good records, read by ``sentinel consume``.

The broker now refuses such a batch on produce, so the test writes it the way data written
before that check exists: with the broker process stopped, through the partition replica
of a one-voter node on its data directory (``tests/node_harness.py``: the same controller,
broker and replicas as ``sentinel run``; the replica stores what its leader is given, the
broker's produce is what validates records). Then, against the restarted ``sentinel run``:
``sentinel consume --from-beginning`` prints every good record before the damage and one
``error:`` line naming topic, partition and offset, exit 1; a group member does the same and
commits exactly what it printed. One topic is uncompressed, the other snappy: its good
records come from the client's snappy producer through the real broker, and are read back.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio
import trio.testing
from broker_process import BrokerProcess, sentinel_command, subprocess_env
from crc32c import crc32c
from node_harness import NodeFactory, mock_clock

from sentinel.broker.replica import PartitionReplica
from sentinel.client import Consumer, Producer, TopicPartition
from sentinel.records import Compression, RecordBatch, build_batch, iter_batches
from sentinel.records import batch_format as fmt
from sentinel.records.compression import compress

TIMEOUT_S = 30
GOOD_BEFORE = 5  # offsets 0..4; the damaged batch holds 5..7
DAMAGED = (5, 7)
POISON_DETAIL = "malformed record 0 at byte 0 of the records section: offsetDelta: expected 0, found 63"
TOPICS = {"plain": Compression.NONE, "packed": Compression.SNAPPY}


def poison_batch(codec: Compression) -> RecordBatch:
    """Valid header and CRC, garbage records: record 0 claims offsetDelta 63."""
    count = DAMAGED[1] - DAMAGED[0] + 1
    good = build_batch([(None, b"lost %d" % i, (), 1_000) for i in range(count)])
    section = bytearray(good[fmt.RECORDS_OFFSET :])
    section[3] = 0x7E  # record 0's offsetDelta (after one-byte length, attributes, timestampDelta)
    payload = bytes(section) if codec is Compression.NONE else compress(codec, section)
    length = fmt.RECORDS_OFFSET + len(payload) - fmt.LOG_OVERHEAD
    fields = (0, length, -1, fmt.MAGIC, 0, int(codec), count - 1, 1_000, 1_000, -1, -1, -1, count)
    data = bytearray(fmt.HEADER.pack(*fields) + payload)
    data[fmt.CRC_OFFSET : fmt.CRC_START] = crc32c(bytes(data[fmt.CRC_START :])).to_bytes(4, "big")
    return RecordBatch(bytes(data))


async def store_poison_offline(data_dir: Path, port: int) -> dict[str, set[Compression]]:
    """Append a damaged batch to partition 0 of every topic, as the partition's replica
    stores any batch; returns the codecs of the batches that were there before."""
    clock = trio.lowlevel.current_clock()
    assert isinstance(clock, trio.testing.MockClock)
    # The node registers the address it has when it runs, so metadata stays right.
    node = NodeFactory(data_dir, clock, address=("127.0.0.1", port))
    codecs: dict[str, set[Compression]] = {}
    async with node.run() as running:
        for topic, codec in TOPICS.items():
            log = running.broker.topic(topic).logs[0]
            assert isinstance(log, PartitionReplica)
            read = log.read(0, 1 << 20)
            codecs[topic] = {batch.compression for batch in iter_batches(read.data)}
            result = await log.produce([poison_batch(codec)])
            assert (result.base_offset, result.last_offset) == DAMAGED
    return codecs


async def produce(address: str, prefix: str, count: int) -> None:
    for topic, codec in TOPICS.items():
        compression = "snappy" if codec is Compression.SNAPPY else "none"
        async with Producer(address, compression=compression, linger_ms=50) as producer:
            futures = [
                await producer.send(topic, b"%s-%d" % (prefix.encode(), i), partition=0) for i in range(count)
            ]
            await producer.flush()
            for future in futures:
                await future


async def committed(address: str, group: str, topic: str) -> int | None:
    async with Consumer(address, group_id=group) as consumer:
        return await consumer.committed(TopicPartition(topic, 0))


def cli_all(*commands: Sequence[str]) -> list[subprocess.CompletedProcess[str]]:
    """Independent commands at once: each CLI process spends most of its time starting."""
    processes = [
        subprocess.Popen(
            sentinel_command(*command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=subprocess_env(),
        )
        for command in commands
    ]
    results = []
    for command, process in zip(commands, processes, strict=True):
        out, err = process.communicate(timeout=TIMEOUT_S)
        results.append(subprocess.CompletedProcess(list(command), process.returncode, out, err))
    return results


def damaged_line(topic: str) -> str:
    first, last = DAMAGED
    return (
        f"error: corruption in topic {topic!r} partition 0 at offset {first}: the stored record batch "
        f"of offsets {first} to {last} cannot be decoded: {POISON_DETAIL}"
    )


@pytest.mark.slow
def test_consume_prints_every_good_record_before_a_stored_poison_batch_then_one_error(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    broker = BrokerProcess(data_dir)
    broker.start()
    try:
        asyncio.run(produce(broker.address, "before", GOOD_BEFORE))
        broker.stop()
        codecs = trio.run(store_poison_offline, data_dir, broker.port, clock=mock_clock())
        assert codecs == {"plain": {Compression.NONE}, "packed": {Compression.SNAPPY}}
        broker.start()
        asyncio.run(produce(broker.address, "after", 2))  # offsets 8, 9

        address = ("--broker", broker.address)
        results = cli_all(
            *[("consume", *address, "--topic", topic, "--from-beginning") for topic in TOPICS],
            ("consume", *address, "--topic", "plain", "--group", "billing", "--from-beginning"),
            ("consume", *address, "--topic", "packed", "--partition", "0", "--offset", "8"),
        )
        before = "".join(f"before-{i}\n" for i in range(GOOD_BEFORE))
        for topic, result in zip([*TOPICS, "plain"], results[:3], strict=True):
            assert result.returncode == 1, result
            assert result.stdout == before, result
            assert result.stderr.splitlines() == [damaged_line(topic)], result.stderr
        # The group member committed what it printed: the next one resumes at the damage.
        assert asyncio.run(committed(broker.address, "billing", "plain")) == DAMAGED[0]
        # Past the damage the partition still reads (snappy, produced after the restart).
        assert (results[3].returncode, results[3].stdout, results[3].stderr) == (0, "after-0\nafter-1\n", "")
        broker.stop()
    finally:
        broker.close()
