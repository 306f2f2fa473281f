"""Idempotent produce against a real ``sentinel run``: the connection is cut after the broker
appended a produce request but before its answer reaches the producer, the producer retries,
and the partition holds every record exactly once (without idempotence: twice, which is how
these tests show they can tell).

A small TCP proxy (produce_cutter.py) stands between the producer and the broker and cuts
the connection in place of the first ProduceResponse: the broker sends one only once the
batch is committed, so the cut comes after the append, and the client just sees its
connection lost. The cluster's version of this test, where the retry meets a new leader, is
in test_cluster_process.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from broker_process import BrokerProcess, sentinel_command, subprocess_env
from fault_support import read_partition
from produce_cutter import ProduceAnswerCutter

from sentinel.client import Admin, Producer


def values(count: int, tag: bytes) -> list[bytes]:
    return [tag + b" %05d " % i + b"x" * 80 for i in range(count)]


async def produce_through_cutter(address: str, topic: str, idempotent: bool) -> tuple[list[bytes], int]:
    """Send numbered records through a cutting proxy; (what was sent, Produce calls seen)."""
    sent = values(2000, topic.encode())
    async with ProduceAnswerCutter(address) as cutter:
        # batch_size 2 KiB: requests of several batches, several in flight, so the real
        # partition checks requests of several batches from a producer it knows.
        async with Producer(
            cutter.address, batch_size=2048, retry_backoff_ms=20, enable_idempotence=idempotent
        ) as producer:
            futures = [await producer.send(topic, value, partition=0) for value in sent]
            offsets = [(await future).offset for future in futures]
        assert cutter.cut, "the proxy never cut a Produce answer"
        assert offsets == sorted(offsets)
        if idempotent:
            assert offsets == list(range(len(sent)))  # the retry got the original offsets
        return sent, cutter.produce_calls


@pytest.mark.slow
def test_a_produce_whose_answer_is_cut_off_is_retried_and_stored_once(broker: BrokerProcess) -> None:
    async def main() -> None:
        async with Admin(broker.address) as admin:
            for topic in ("idempotent", "at-least-once"):
                await admin.create_topic(topic, 1)
        sent, calls = await produce_through_cutter(broker.address, "idempotent", idempotent=True)
        assert calls >= 2
        stored = [value for _, value in await read_partition(broker.address, "idempotent", 0)]
        assert stored == sent  # every record once, in send order

        sent, _ = await produce_through_cutter(broker.address, "at-least-once", idempotent=False)
        stored = [value for _, value in await read_partition(broker.address, "at-least-once", 0)]
        assert len(stored) > len(sent) and set(stored) == set(sent)  # the first request twice

    asyncio.run(main())


@pytest.mark.slow
def test_sentinel_produce_is_idempotent_unless_told_otherwise(broker: BrokerProcess, tmp_path: Path) -> None:
    async def cli(topic: str, *flags: str) -> str:
        async with ProduceAnswerCutter(broker.address) as cutter:
            command = sentinel_command(
                "produce",
                "--broker",
                cutter.address,
                "--topic",
                topic,
                "--message",
                "m",
                "--count",
                "50",
                *flags,
            )
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=subprocess_env(),
            )
            out, err = await asyncio.wait_for(process.communicate(), 60)
            assert process.returncode == 0, err.decode()
            assert cutter.cut
        return out.decode()

    async def main() -> None:
        assert "partition 0: offsets 0..49" in await cli("cli-default")
        assert len(await read_partition(broker.address, "cli-default", 0)) == 50
        assert "partition 0: offsets 50..99" in await cli("cli-plain", "--no-idempotence")
        assert len(await read_partition(broker.address, "cli-plain", 0)) == 100

    asyncio.run(main())
