"""Acknowledged means durable: SIGKILL a real broker under a producer using acks=all.

A child process (tests/e2e/producer_child.py) produces continuously over 3 partitions and
prints every acknowledgement (topic, partition, offset, value) and every failure. After a
seeded number of acknowledgements the broker is SIGKILLed while the producer is still
sending; the producer must then report errors (never a false ack). After a restart on the
same data directory, every acknowledged record is readable at its exact offset with its
exact value, and each partition's offsets are contiguous from 0.

Both sync modes count: with ``--sync always`` an ack waits for the fsync; with the default
``interval`` it waits for the WAL write to reach the OS (fsync follows within the sync
interval), which a process crash cannot undo — only a power loss could. So under both
modes nothing acknowledged may be lost to SIGKILL.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from broker_process import BrokerProcess
from fault_support import JsonLines, read_partition, spawn_child

from sentinel.client import Admin

TOPIC = "payments"
PARTITIONS = 3
WAIT = 30.0


@pytest.mark.slow
@pytest.mark.parametrize(("sync", "seed"), [("always", 101), ("interval", 202)])
def test_acknowledged_records_survive_sigkill(tmp_path: Path, sync: str, seed: int) -> None:
    kill_after = random.Random(seed).randint(100, 400)
    broker = BrokerProcess(tmp_path / "data", extra_args=["--sync", sync])
    broker.start()
    try:
        address = broker.address

        async def create_topic() -> None:
            async with Admin(address) as admin:
                await admin.create_topic(TOPIC, PARTITIONS)

        asyncio.run(create_topic())
        child = JsonLines(spawn_child("producer_child.py", address, TOPIC, str(PARTITIONS)))
        try:
            child.wait_for(
                lambda items: sum("offset" in item for item in items) >= kill_after,
                WAIT,
                f"{kill_after} acknowledgements",
            )
            broker.kill()  # mid-run: the child is still sending
            assert child.wait_eof(WAIT) == 0, "".join(child.other)
        finally:
            child.kill()

        items = child.snapshot()
        acks = [item for item in items if "offset" in item]
        errors = [item for item in items if "error" in item]
        assert items[-1] == {"done": True, "acked": len(acks), "failed": len(errors)}, child.other
        assert len(acks) >= kill_after
        # The producer saw the crash as errors (after its retries), typed as retriable ones.
        assert errors, "the producer never noticed the broker died"
        # (BrokerUnreachable: the Unavailable of a connection refused, reset or lost.)
        retriable = {"Unavailable", "BrokerUnreachable", "RequestTimeout"}
        assert {e["error"] for e in errors} <= retriable, errors[:3]
        assert all(a["topic"] == TOPIC for a in acks)
        # Per partition, acknowledged offsets follow send order.
        for p in range(PARTITIONS):
            ordered = sorted((int(a["value"][1:]), a["offset"]) for a in acks if a["partition"] == p)
            offsets = [o for _i, o in ordered]
            assert offsets == sorted(set(offsets)), f"partition {p}: offsets not increasing in send order"

        broker.start()

        async def read_all() -> dict[int, list[tuple[int, bytes | None]]]:
            return {p: await read_partition(address, TOPIC, p) for p in range(PARTITIONS)}

        logs = asyncio.run(read_all())
        for p, records in logs.items():
            assert [o for o, _v in records] == list(range(len(records))), f"partition {p} has gaps"
        stored = {(p, o): v for p, records in logs.items() for o, v in records}
        lost = [a for a in acks if stored.get((a["partition"], a["offset"])) != a["value"].encode()]
        assert not lost, f"{len(lost)} acknowledged records lost or changed, e.g. {lost[:3]}"
        # Every stored record is one the producer sent, stored once (no retry duplicated it).
        values = [v for v in stored.values()]
        assert len(values) == len(set(values))
        broker.stop()
    finally:
        broker.close()
