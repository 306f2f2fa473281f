"""Producer.send_batch: many records as one RecordBatch with one future (fake broker)."""

from __future__ import annotations

import pytest
from client_fakes import FakeSentinel, run
from grpclib.const import Status

from sentinel.broker.partitioner import partition_for_key
from sentinel.client import BatchMetadata, Producer, RecordMetadata
from sentinel.errors import InvalidArgument

# Each test runs once per build of sentinel.client.appending (see conftest.py).
pytestmark = pytest.mark.usefixtures("appending_build")


def test_a_batch_lands_at_consecutive_offsets_in_order_with_one_metadata() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("b", 1)
        values = [b"v%03d" % i for i in range(100)]
        async with Producer(fake.address) as producer:
            meta = await (await producer.send_batch("b", values, timestamp_ms=1234))
        assert meta == BatchMetadata("b", 0, 0, 100, 1234)
        assert fake.topics["b"][0].records() == [(i, None, v) for i, v in enumerate(values)]

    run(scenario)


def test_batches_and_single_records_keep_send_order_on_a_partition() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("m", 1)
        async with Producer(fake.address, linger_ms=50) as producer:
            first = [await producer.send("m", b"s%d" % i) for i in range(3)]
            batch = await producer.send_batch("m", [b"b%d" % i for i in range(5)])
            last = [await producer.send("m", b"t%d" % i) for i in range(2)]
            await producer.flush()
        assert [f.result().offset for f in first] == [0, 1, 2]
        assert isinstance(first[0].result(), RecordMetadata)
        assert (batch.result().base_offset, batch.result().record_count) == (3, 5)
        assert [f.result().offset for f in last] == [8, 9]
        stored = [v for _, _, v in fake.topics["m"][0].records()]
        assert stored == [b"s0", b"s1", b"s2", b"b0", b"b1", b"b2", b"b3", b"b4", b"t0", b"t1"]

    run(scenario)


def test_partition_choice_key_explicit_and_round_robin() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("p", 4)
        async with Producer(fake.address) as producer:
            keyed = await (await producer.send_batch("p", [b"x", b"y"], key=b"user-7"))
            explicit = await (await producer.send_batch("p", [b"z"], partition=2, key=b"user-7"))
            spread = [(await (await producer.send_batch("p", [b"r"]))).partition for _ in range(4)]
        assert keyed.partition == partition_for_key(b"user-7", 4)
        assert [k for _, k, _ in fake.topics["p"][keyed.partition].records()][:2] == [b"user-7"] * 2
        assert explicit.partition == 2
        assert sorted(spread) == [0, 1, 2, 3]  # one partition per call, round-robin

    run(scenario)


def test_acks_zero_reports_no_offsets() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("z", 1)
        async with Producer(fake.address, acks=0) as producer:
            meta = await (await producer.send_batch("z", [b"a", b"b"]))
        assert (meta.base_offset, meta.record_count) == (-1, 2)

    run(scenario)


def test_bad_batches_are_refused_before_anything_is_sent() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("e", 1)
        async with Producer(fake.address, max_request_bytes=4096) as producer:
            with pytest.raises(InvalidArgument, match="non-empty sequence"):
                await producer.send_batch("e", [])
            with pytest.raises(InvalidArgument, match="non-empty sequence"):
                await producer.send_batch("e", b"not a list")  # type: ignore[arg-type]
            with pytest.raises(InvalidArgument, match=r"a batch of 100 records is \d+ bytes.*split it"):
                await producer.send_batch("e", [b"x" * 100] * 100)
        assert fake.calls.get("produce", 0) == 0

    run(scenario)


def test_a_failed_request_fails_the_batch_future_with_the_typed_error() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("f", 1)
        fake.fail_next("produce", Status.INVALID_ARGUMENT, "bad batch")
        async with Producer(fake.address) as producer:
            future = await producer.send_batch("f", [b"a", b"b"])
            with pytest.raises(InvalidArgument, match="bad batch"):
                await future
            # The partition keeps working afterwards.
            assert (await (await producer.send_batch("f", [b"c"]))).base_offset == 0

    run(scenario)
