"""End to end against a real ``sentinel run`` process: the Python client produces and
consumes over a real socket, and SIGTERM ends the broker cleanly with exit 0."""

from __future__ import annotations

import asyncio

import pytest
from broker_process import BrokerProcess

from sentinel.client import Admin, Consumer, Producer


@pytest.mark.slow
def test_produce_consume_restart_and_sigterm(broker: BrokerProcess) -> None:
    address = broker.address

    async def produce() -> list[tuple[int, int]]:
        async with Producer(address) as producer:
            metas = [await producer.send_and_wait("events", f"msg {i}".encode()) for i in range(10)]
        return [(m.partition, m.offset) for m in metas]

    async def consume() -> list[bytes | None]:
        async with Consumer(address, auto_offset_reset="earliest") as consumer:
            consumer.assign([("events", 0)])
            got = await consumer.getmany(timeout_ms=5000)
        return [r.value for records in got.values() for r in records]

    async def topics() -> list[str]:
        async with Admin(address) as admin:
            return [t.name for t in await admin.list_topics()]

    # Auto-created on first produce, one partition by default: offsets 0..9 in order.
    assert asyncio.run(produce()) == [(0, i) for i in range(10)]
    assert asyncio.run(consume()) == [f"msg {i}".encode() for i in range(10)]
    assert asyncio.run(topics()) == ["events"]
    broker.stop()
    broker.start()  # everything acknowledged survives a restart, on the same address
    assert asyncio.run(consume()) == [f"msg {i}".encode() for i in range(10)]
    assert asyncio.run(produce()) == [(0, 10 + i) for i in range(10)]
    broker.stop()
