"""The two builds of sentinel.client.appending (the producer's per-record path): which one
producers use, and ``send``'s compiled fast path handing every other record to the full one."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
from client_fakes import FakeSentinel, run

from sentinel.client import Producer, accumulator, delivery
from sentinel.errors import FailedPrecondition, InvalidArgument


def test_producers_use_the_compiled_per_record_path_when_a_fresh_build_is_installed() -> None:
    builds = accumulator.appending_builds()
    assert (builds["source"].__file__ or "").endswith("appending.py")  # always at hand
    compiled = builds.get("compiled")
    if compiled is None:
        pytest.skip("no compiled sentinel.client.appending installed")
    assert accumulator.appending is compiled
    assert (
        delivery.RecordFuture is compiled.RecordFuture
        and accumulator.PartitionQueue is compiled.PartitionQueue
    )
    producer = Producer("127.0.0.1:1")
    assert isinstance(producer._fast, compiled.SendFastPath) and producer.send == producer._fast.send
    assert isinstance(producer._acc.account, compiled.BufferAccount)
    stamp = Path(compiled.__file__ or "").parent / "appending.source-sha256"
    source = Path(builds["source"].__file__ or "")
    assert stamp.read_text().strip() == hashlib.sha256(source.read_bytes()).hexdigest()


def test_a_producer_created_under_a_build_takes_all_its_parts_from_it(appending_build: str) -> None:
    module = accumulator.appending
    producer = Producer("127.0.0.1:1")
    assert producer._acc.build is module
    assert isinstance(producer._fast, module.SendFastPath) and producer.send == producer._fast.send
    assert isinstance(producer._acc.account, module.BufferAccount)
    assert isinstance(producer._acc.queue(("t", 0)), module.PartitionQueue)  # type: ignore[arg-type]


def test_records_the_fast_path_does_not_take_go_the_full_way_in_order(appending_build: str) -> None:
    """One partition, records alternating between the fast path (bytes, explicit partition
    with a sender, room in the buffer) and the full one (a bytearray value, a key that is a
    memoryview, headers, a timestamp of their own, an unknown partition object): offsets
    follow send order and each record's metadata and contents are its own."""

    async def scenario(fake: FakeSentinel) -> None:
        fake.create("mix", 2)
        async with Producer(fake.address, linger_ms=1, batch_size=300) as producer:
            futures = [await producer.send("mix", b"first", partition=0)]  # starts the sender
            for i in range(12):
                futures.append(await producer.send("mix", b"fast %d" % i, partition=0))
                futures.append(await producer.send("mix", bytearray(b"array %d" % i), partition=0))  # type: ignore[arg-type]
                futures.append(await producer.send("mix", b"k", key=memoryview(b"key"), partition=0))  # type: ignore[arg-type]
                futures.append(await producer.send("mix", b"h", headers=[("n", b"%d" % i)], partition=0))
                futures.append(await producer.send("mix", b"t", timestamp_ms=1_000 + i, partition=0))
                futures.append(await producer.send("mix", b"other", partition=1))  # the other sender
            results = await asyncio.gather(*futures)
        on_zero = [md for md in results if md.partition == 0]
        assert [md.offset for md in on_zero] == list(range(len(on_zero)))
        assert [md.timestamp_ms for md in on_zero][5::5] == [1_000 + i for i in range(12)]
        stored = fake.topics["mix"][0].records()
        assert [value for _, _, value in stored][:7] == [
            b"first",
            b"fast 0",
            b"array 0",
            b"k",
            b"h",
            b"t",
            b"fast 1",
        ]
        assert [key for _, key, _ in stored][3] == b"key"
        assert len(fake.topics["mix"][1].records()) == 12

    run(scenario)


def test_the_fast_path_refuses_what_the_full_send_refuses(appending_build: str) -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("v", 1)
        async with Producer(fake.address, max_request_bytes=3000) as producer:
            await producer.send_and_wait("v", b"x", partition=0)  # the partition has a sender
            with pytest.raises(InvalidArgument, match="value must be bytes or None, got str"):
                await producer.send("v", "text", partition=0)  # type: ignore[arg-type]
            with pytest.raises(InvalidArgument, match="larger than one request can carry"):
                await producer.send("v", b"x" * 2000, partition=0)
            with pytest.raises(InvalidArgument, match="partition 1 does not exist"):
                await producer.send("v", b"x", partition=1)
            with pytest.raises(InvalidArgument, match="partition must be an int"):
                await producer.send("v", b"x", partition=True)
        with pytest.raises(FailedPrecondition, match="producer is closed"):
            await producer.send("v", b"late", partition=0)
        assert len(fake.topics["v"][0].records()) == 1

    run(scenario)
