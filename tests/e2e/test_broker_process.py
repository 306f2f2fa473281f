"""End to end against a real ``sentinel run`` process: the Python client produces and
consumes over a real socket, and SIGTERM ends the broker cleanly with exit 0."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sentinel.client import Admin, Consumer, Producer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_produce_consume_restart_and_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    address = f"127.0.0.1:{port}"
    command = [sys.executable, "-c", "from sentinel.cli.main import main; main()", "run"]
    args = ["--port", str(port), "--metrics-port", "-1", "--data", str(tmp_path / "data")]

    def start() -> subprocess.Popen[str]:
        broker = subprocess.Popen(
            command + args,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        assert broker.stderr is not None
        assert "listening on" in broker.stderr.readline()
        return broker

    def stop(broker: subprocess.Popen[str]) -> None:
        broker.send_signal(signal.SIGTERM)
        assert broker.wait(timeout=30) == 0

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

    broker = start()
    try:
        # Auto-created on first produce, one partition by default: offsets 0..9 in order.
        assert asyncio.run(produce()) == [(0, i) for i in range(10)]
        assert asyncio.run(consume()) == [f"msg {i}".encode() for i in range(10)]
        assert asyncio.run(topics()) == ["events"]
    finally:
        stop(broker)
    broker = start()  # everything acknowledged survives a restart
    try:
        assert asyncio.run(consume()) == [f"msg {i}".encode() for i in range(10)]
        assert asyncio.run(produce()) == [(0, 10 + i) for i in range(10)]
    finally:
        stop(broker)
