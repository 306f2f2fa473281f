"""Producer against the in-memory fake broker: order, partitioning, batching, back-pressure,
retries, compression, auto-creation."""

from __future__ import annotations

import asyncio
import random

import pytest
from client_fakes import NODE_ID, FakeSentinel, fake_broker, run
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from sentinel.broker.partitioner import partition_for_key
from sentinel.client import Consumer, Producer, RecordMetadata, TopicPartition
from sentinel.client.producer import POLL_FRESH_S
from sentinel.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from sentinel.generated.sentinel import v1 as pb
from sentinel.records import Compression, RecordBatch, iter_batches

# Each test runs once per build of sentinel.client.appending (see conftest.py).
pytestmark = pytest.mark.usefixtures("appending_build")


def test_offsets_are_contiguous_per_partition_and_follow_send_order() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("orders", 3)
        rng = random.Random(7)
        async with Producer(fake.address, linger_ms=1, batch_size=200) as producer:
            futures = []
            for i in range(90):
                partition = rng.randrange(3)
                futures.append((partition, i, await producer.send("orders", b"v%d" % i, partition=partition)))
            results = [(p, i, await f) for p, i, f in futures]
        for partition in range(3):
            sent = [(i, md) for p, i, md in results if p == partition]
            assert [md.offset for _, md in sent] == list(range(len(sent)))
            assert all(md.topic == "orders" and md.partition == partition for _, md in sent)
            stored = [value for _, _, value in fake.topics["orders"][partition].records()]
            assert stored == [b"v%d" % i for i, _ in sent]
        # batch_size=200 split each partition's records into several batches.
        assert sum(len(list(iter_batches(r.record_batches))) for r in fake.produce_requests) > 6

    run(scenario)


def test_same_key_same_partition_as_partition_for_key() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("users", 4)
        keys = [b"user-%d" % i for i in range(20)]
        async with Producer(fake.address) as producer:
            first = {k: await producer.send_and_wait("users", b"a", key=k) for k in keys}
            second = {k: await producer.send_and_wait("users", b"b", key=k) for k in keys}
        for key in keys:
            assert first[key].partition == second[key].partition == partition_for_key(key, 4)
        assert len({md.partition for md in first.values()}) > 1  # keys did spread

    run(scenario)


def test_explicit_partition_wins_over_key_and_is_validated() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("t", 4)
        key = b"k"
        other = (partition_for_key(key, 4) + 1) % 4
        async with Producer(fake.address) as producer:
            md = await producer.send_and_wait("t", b"x", key=key, partition=other)
            assert md.partition == other
            expected = r"partition 4 does not exist in topic 't': valid partitions are 0\.\.3"
            with pytest.raises(InvalidArgument, match=expected):
                await producer.send("t", b"x", partition=4)
            # Partition 1 has a sender now: a 1.0 or True that equals it is still refused.
            await producer.send_and_wait("t", b"x", partition=1)
            for wrong in (1.0, True):
                with pytest.raises(InvalidArgument, match="partition must be an int"):
                    await producer.send("t", b"x", partition=wrong)  # type: ignore[arg-type]

    run(scenario)


def test_records_to_alternating_partitions_land_where_each_names() -> None:
    """The last partition's sender is kept at hand (an identity test on the topic and
    partition objects): a send naming another partition, or an equal topic string built
    anew, still goes where it says."""

    async def scenario(fake: FakeSentinel) -> None:
        fake.create("ab", 3)
        async with Producer(fake.address, linger_ms=0) as producer:
            wanted = [0, 1, 1, 2, 0, 0, 2, 1]
            futures = []
            for i, partition in enumerate(wanted):
                topic = "".join(["a", "b"]) if i % 2 else "ab"  # equal, not the same object
                futures.append(await producer.send(topic, b"%d" % i, partition=partition))
            landed = [(await f).partition for f in futures]
        assert landed == wanted
        assert fake.topics["ab"][1].records() == [(0, None, b"1"), (1, None, b"2"), (2, None, b"7")]

    run(scenario)


def test_keyless_records_go_round_robin() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("rr", 4)
        async with Producer(fake.address) as producer:
            futures = [await producer.send("rr", b"%d" % i) for i in range(40)]
            partitions = [(await f).partition for f in futures]
        assert sorted(partitions.count(p) for p in range(4)) == [10, 10, 10, 10]
        # Consecutive keyless records cycle through the partitions.
        assert all(partitions[i + 1] == (partitions[i] + 1) % 4 for i in range(39))

    run(scenario)


def test_full_buffer_makes_send_wait_not_raise() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("bp", 1)
        fake.hold_produce()
        value = b"x" * 100  # ~116 estimated bytes: two fit in 300, a third does not
        async with Producer(fake.address, max_buffer_bytes=300, linger_ms=0) as producer:
            first = await producer.send("bp", value)
            second = await producer.send("bp", value)
            third = asyncio.ensure_future(producer.send("bp", value))
            try:
                await fake.produce_parked.wait()  # the broker holds the first request
                for _ in range(20):
                    await asyncio.sleep(0)  # let the third send run as far as it can
                blocked = not third.done()
            finally:
                fake.release_produce()  # even on failure: close() must not wait forever
            assert blocked  # waited for memory instead of failing or overfilling the buffer
            third_future = await third
            assert [(await f).offset for f in (first, second, third_future)] == [0, 1, 2]

    run(scenario)


def test_retriable_error_is_retried_then_succeeds() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("r", 1)
        fake.fail_next("produce", Status.UNAVAILABLE, "not the leader")
        async with Producer(fake.address, retry_backoff_ms=1) as producer:
            md = await producer.send_and_wait("r", b"once")
        assert md == RecordMetadata("r", 0, 0, md.timestamp_ms)
        assert fake.calls["produce"] == 2
        assert fake.topics["r"][0].records() == [(0, None, b"once")]  # stored exactly once

    run(scenario)


def test_retries_exhausted_fail_the_future_with_the_typed_error() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("r", 1)
        fake.fail_next("produce", Status.UNAVAILABLE, "the broker is busy", times=3)
        async with Producer(fake.address, retries=2, retry_backoff_ms=1) as producer:
            with pytest.raises(Unavailable, match="the broker is busy"):
                await producer.send_and_wait("r", b"x")
            assert fake.calls["produce"] == 3
            # The partition keeps working after a failed request.
            assert (await producer.send_and_wait("r", b"y")).offset == 0

    run(scenario)


def test_the_defaults_ride_out_an_outage_longer_than_five_retries() -> None:
    # A leader failover answers UNAVAILABLE for 1-2 s: more attempts than the five retries
    # the producer used to default to (all of them a record lost). Kafka's defaults bound
    # retries by the delivery timeout instead.
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("r", 1)
        fake.fail_next("produce", Status.UNAVAILABLE, "no leader yet", times=7)
        async with Producer(fake.address, retry_backoff_ms=1) as producer:
            md = await producer.send_and_wait("r", b"once")
        assert md.offset == 0
        assert fake.calls["produce"] == 8
        assert fake.topics["r"][0].records() == [(0, None, b"once")]

    run(scenario)


def test_retries_stop_when_the_delivery_timeout_has_passed() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("r", 1)
        fake.fail_next("produce", Status.UNAVAILABLE, "no leader yet", times=100)
        async with Producer(
            fake.address,
            linger_ms=0,
            request_timeout_ms=100,
            delivery_timeout_ms=400,
            retries=1_000_000,
            retry_backoff_ms=20,
        ) as producer:
            with pytest.raises(Unavailable, match="no leader yet"):
                await producer.send_and_wait("r", b"x")
            attempts = fake.calls["produce"]
            assert attempts >= 2
            # The partition keeps working: the next record is a new request with its own clock.
            fake.failures["produce"].clear()
            assert (await producer.send_and_wait("r", b"y")).offset == 0
        assert fake.topics["r"][0].records() == [(0, None, b"y")]

    run(scenario)


def test_a_producer_held_back_longer_than_the_delivery_timeout_still_retries() -> None:
    # The timeout counts from a request's formation. A producer at its window's limit for
    # longer than the timeout (a slow broker: the queue never empties) forms requests of
    # records queued all along; a failover then must still be retried, not fail them.
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("r", 1)
        fake.hold_produce()

        async def trickle() -> None:  # the broker answers what it holds every 10 ms
            while True:
                await asyncio.sleep(0.01)
                fake.release_produce()
                fake.hold_produce()

        async with Producer(
            fake.address,
            linger_ms=0,
            batch_size=1024,
            max_buffer_bytes=256 * 1024,
            request_timeout_ms=200,
            delivery_timeout_ms=400,
            retry_backoff_ms=1,
        ) as producer:
            loop = asyncio.get_running_loop()
            broker = asyncio.ensure_future(trickle())
            futures = []
            for seconds, failures in ((0.8, 0), (0.1, 3)):  # twice the timeout, then a failover
                fake.fail_next("produce", Status.UNAVAILABLE, "leader moved", times=failures)
                end = loop.time() + seconds
                while loop.time() < end:
                    futures.append(await producer.send("r", b"x" * 100, partition=0))
            broker.cancel()
            fake.release_produce()
            offsets = [(await f).offset for f in futures]
        assert offsets == list(range(len(futures)))

    run(scenario)


def test_a_retry_goes_at_once_to_a_leader_that_moved() -> None:
    # The backoff is a minute: the retry must not wait for it when the metadata, asked after
    # the UNAVAILABLE, names another leader (the scenario times out after 10 s).
    async def scenario(old: FakeSentinel) -> None:
        async with fake_broker() as new:
            for fake in (old, new):
                fake.create("r", 1)
            host, port = new.address.rsplit(":", 1)
            old.other_brokers = [pb.BrokerInfo(node_id=2, host=host, port=int(port))]

            def moved(request: pb.ProduceRequest, batches: list[RecordBatch]) -> None:
                old.leader_node = 2  # the election ended as the old leader answered
                raise GRPCError(Status.UNAVAILABLE, "not the leader")

            old.before_append = moved
            async with Producer(old.address, retry_backoff_ms=60_000) as producer:
                md = await producer.send_and_wait("r", b"moved")
            assert md.offset == 0
            assert (old.calls["produce"], new.calls["produce"]) == (1, 1)
            assert new.topics["r"][0].records() == [(0, None, b"moved")]

    run(scenario)


def led_by_a_dead_broker(fake: FakeSentinel) -> None:
    """The metadata names node 2 as every partition's leader, at an address that refuses
    connections (a leader that died, its election not over)."""
    fake.other_brokers = [pb.BrokerInfo(node_id=2, host="127.0.0.1", port=1)]
    fake.leader_node = 2


def test_while_the_last_leader_cannot_be_reached_the_metadata_is_polled_during_the_backoff() -> None:
    # The leader died (its address refuses connections): an election follows, and the retry
    # goes to the new leader as soon as the metadata names it, not after a minute's backoff.
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("r", 1)
        led_by_a_dead_broker(fake)
        async with Producer(fake.address, retry_backoff_ms=60_000) as producer:
            future = await producer.send("r", b"x", partition=0)
            asked = fake.calls["fetch_metadata"]
            await fake.wait_for_calls("fetch_metadata", asked + 3)  # polled while it waits
            fake.leader_node = NODE_ID  # elected
            assert (await future).offset == 0
        assert fake.calls["produce"] == 1

    run(scenario)


def test_partitions_polling_for_a_new_leader_share_one_metadata_request_per_interval() -> None:
    # A dead broker led every partition: each one's sender polls while it waits, and between
    # them they ask at most once per POLL_FRESH_S, not once each.
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("r", 20)
        led_by_a_dead_broker(fake)
        loop = asyncio.get_running_loop()
        async with Producer(fake.address, retry_backoff_ms=60_000) as producer:
            futures = [await producer.send("r", b"x", partition=p) for p in range(20)]
            await asyncio.sleep(0.2)  # every sender is polling by now
            asked, start = fake.calls["fetch_metadata"], loop.time()
            await asyncio.sleep(0.5)
            polls = fake.calls["fetch_metadata"] - asked
            elapsed = loop.time() - start
            assert 2 <= polls <= elapsed / POLL_FRESH_S + 2, (polls, elapsed)  # each alone: ~200
            fake.leader_node = NODE_ID
            assert [(await f).offset for f in futures] == [0] * 20
        assert fake.calls["produce"] == 20

    run(scenario)


@pytest.mark.parametrize(
    ("status", "error"),
    [(Status.INVALID_ARGUMENT, InvalidArgument), (Status.RESOURCE_EXHAUSTED, ResourceExhausted)],
)
def test_non_retriable_error_is_not_retried(status: Status, error: type[Exception]) -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("r", 1)
        fake.fail_next("produce", status, "request too large")
        async with Producer(fake.address, retry_backoff_ms=1) as producer:
            with pytest.raises(error, match="request too large"):
                await producer.send_and_wait("r", b"x")
        assert fake.calls["produce"] == 1

    run(scenario)


@pytest.mark.parametrize(
    ("name", "codec"),
    [
        ("gzip", Compression.GZIP),
        ("snappy", Compression.SNAPPY),
        ("zstd", Compression.ZSTD),
        ("lz4", Compression.LZ4),
    ],
)
def test_compression_round_trip(name: str, codec: Compression) -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("z", 1)
        values = [b"value %d " % i * 20 for i in range(50)]
        async with Producer(fake.address, compression=name, linger_ms=60_000) as producer:
            futures = [await producer.send("z", v, key=b"k%d" % i) for i, v in enumerate(values)]
            await producer.flush()
            assert [(await f).offset for f in futures] == list(range(50))
        (request,) = fake.produce_requests
        batches = list(iter_batches(request.record_batches))
        assert {b.compression for b in batches} == {codec}
        assert sum(len(b.data) for b in batches) < sum(map(len, values)) // 4
        async with Consumer(fake.address, auto_offset_reset="earliest") as consumer:
            consumer.assign([TopicPartition("z", 0)])
            got = await consumer.getmany(timeout_ms=5000, max_records=100)
        records = got[TopicPartition("z", 0)]
        assert [(r.key, r.value) for r in records] == [(b"k%d" % i, v) for i, v in enumerate(values)]

    run(scenario)


def test_unknown_topic_is_auto_created_by_the_broker_with_its_default() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        async with Producer(fake.address) as producer:
            mds = await asyncio.gather(*[producer.send_and_wait("fresh", b"%d" % i) for i in range(6)])
        assert fake.calls["create_topic"] == 0  # the broker's metadata answer created it
        assert len(fake.topics["fresh"]) == 3
        assert sorted(md.partition for md in mds) == [0, 0, 1, 1, 2, 2]

    run(scenario, default_partitions=3)


def test_a_producer_never_creates_a_topic_the_broker_would_not_auto_create() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        async with Producer(fake.address) as producer:
            with pytest.raises(NotFound, match="topic 'nope' does not exist"):
                await producer.send_and_wait("nope", b"x")
        assert fake.calls["create_topic"] == 0 and "nope" not in fake.topics

    run(scenario, auto_create_topics=False)


def test_linger_batches_and_batch_size_splits_a_request() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("b", 1)
        async with Producer(fake.address, linger_ms=60_000, batch_size=10_000) as producer:
            futures = [await producer.send("b", b"x" * 40) for _ in range(100)]  # ~56 bytes each
            assert fake.calls["produce"] == 0  # below batch_size, lingering
            await producer.flush()
            assert all(f.done() for f in futures)
        (request,) = fake.produce_requests
        batches = list(iter_batches(request.record_batches))
        assert len(batches) == 1 and batches[0].record_count == 100

        fake.produce_requests.clear()
        async with Producer(fake.address, linger_ms=60_000, batch_size=600) as producer:
            futures = [await producer.send("b", b"y" * 40) for _ in range(30)]
            await producer.flush()
            offsets = [(await f).offset for f in futures]
        assert offsets == list(range(100, 130))
        counts = [b.record_count for r in fake.produce_requests for b in iter_batches(r.record_batches)]
        assert sum(counts) == 30 and max(counts) <= 10  # 600 // 56 records per batch

    run(scenario)


def test_batch_size_reached_sends_without_waiting_for_linger() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("b", 1)
        async with Producer(fake.address, linger_ms=60_000, batch_size=500) as producer:
            futures = [await producer.send("b", b"x" * 100) for _ in range(5)]  # crosses 500 bytes
            await futures[3]  # the full batch (4 records): would take a minute if it lingered
            assert not futures[4].done()  # the next batch, not full, lingers (Kafka's batch.size)
            await producer.flush()
            assert [(await f).offset for f in futures] == list(range(5))

    run(scenario)


def test_acks_zero_resolves_without_offsets() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("a", 1)
        async with Producer(fake.address, acks=0) as producer:
            md = await producer.send_and_wait("a", b"x")
        assert md.offset == -1
        assert fake.produce_requests[0].acks == 2  # ACKS_NONE on the wire

    run(scenario)


def test_close_flushes_pending_records_and_then_refuses_sends() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("c", 2)
        producer = Producer(fake.address, linger_ms=60_000)
        await producer.start()
        futures = [await producer.send("c", b"%d" % i, partition=i % 2) for i in range(10)]
        await producer.close()
        assert all(f.done() and f.exception() is None for f in futures)
        assert sum(len(p.records()) for p in fake.topics["c"]) == 10
        with pytest.raises(FailedPrecondition, match="producer is closed"):
            await producer.send("c", b"late")

    run(scenario)


def test_headers_and_timestamps_reach_the_consumer() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("h", 1)
        async with Producer(fake.address) as producer:
            md = await producer.send_and_wait(
                "h",
                b"v",
                key=b"k",
                headers=[("trace", b"abc"), ("empty", None)],
                timestamp_ms=1_700_000_000_000,
            )
        assert md.timestamp_ms == 1_700_000_000_000
        async with Consumer(fake.address, auto_offset_reset="earliest") as consumer:
            consumer.assign([("h", 0)])
            (record,) = (await consumer.getmany(timeout_ms=5000))[TopicPartition("h", 0)]
        assert record.headers == (("trace", b"abc"), ("empty", None))
        assert record.timestamp == 1_700_000_000_000
        assert (record.topic, record.partition, record.offset, record.key) == ("h", 0, 0, b"k")

    run(scenario)


def test_invalid_records_are_rejected_at_send() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("v", 1)
        async with Producer(fake.address, max_request_bytes=3000) as producer:
            with pytest.raises(InvalidArgument, match="value must be bytes or None, got str"):
                await producer.send("v", "text")  # type: ignore[arg-type]
            with pytest.raises(InvalidArgument, match="larger than one request can carry"):
                await producer.send("v", b"x" * 2000)
            with pytest.raises(InvalidArgument, match="larger than one request can carry"):
                await producer.send("not-looked-up", b"x" * 2000)
            with pytest.raises(InvalidArgument, match="a header must be a"):
                await producer.send("v", b"x", headers=[("only-name",)])  # type: ignore[list-item]
        assert fake.calls["produce"] == 0
        assert "not-looked-up" not in fake.topics and fake.calls["fetch_metadata"] == 1  # start() only

    run(scenario)


def test_a_request_gathers_at_most_a_mebibyte_whatever_max_request_bytes_allows() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("fill", 1)
        fake.hold_produce()
        async with Producer(fake.address, max_buffer_bytes=8 << 20) as producer:
            first = await producer.send("fill", b"x")
            await fake.produce_parked.wait()  # the first request is held: the rest queue up
            futures = [await producer.send("fill", b"x" * 1000) for _ in range(3000)]  # ~3 MB
            fake.release_produce()
            await asyncio.gather(first, *futures)
        sizes = [len(r.record_batches) for r in fake.produce_requests]
        assert len(sizes) >= 4 and max(sizes) <= 1 << 20  # a 16 MiB limit, yet 1 MiB requests

    run(scenario)


def test_a_record_larger_than_the_buffer_goes_alone_once_the_buffer_is_empty() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("big", 1)
        async with Producer(fake.address, max_buffer_bytes=1000, linger_ms=0) as producer:
            small = await producer.send("big", b"s" * 500)
            large = await producer.send("big", b"L" * 5000)  # waits for the small one's ack
            after = await producer.send("big", b"a")  # waits for the large one's
            assert [(await f).offset for f in (small, large, after)] == [0, 1, 2]
            alone = await producer.send_and_wait("big", b"x" * 5000)  # into an empty buffer at once
            assert alone.offset == 3
        assert [len(r.record_batches) < 1000 for r in fake.produce_requests] == [True, False, True, False]

    run(scenario)


def test_unreachable_broker_is_unavailable() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        with pytest.raises(Unavailable, match=r"cannot reach broker 127\.0\.0\.1:1"):
            await Producer("127.0.0.1:1", retry_backoff_ms=1).start()

    run(scenario)


def test_bad_options_are_rejected() -> None:
    with pytest.raises(InvalidArgument, match="acks must be 'all', 1 or 0, got 2"):
        Producer("h:1", acks=2)
    with pytest.raises(InvalidArgument, match="compression must be one of"):
        Producer("h:1", compression="brotli")
    with pytest.raises(InvalidArgument, match="batch_size must be > 0"):
        Producer("h:1", batch_size=0)
    with pytest.raises(InvalidArgument, match="retries must be an int >= 0, got '3'"):
        Producer("h:1", retries="3")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="linger_ms must be a number >= 0, got nan"):
        Producer("h:1", linger_ms=float("nan"))
    with pytest.raises(InvalidArgument, match="delivery_timeout_ms must be > 0, got 'soon'"):
        Producer("h:1", delivery_timeout_ms="soon")  # type: ignore[arg-type]
    # Kafka's rule: room for the linger and one whole attempt.
    with pytest.raises(
        InvalidArgument,
        match=r"delivery_timeout_ms must be >= linger_ms \+ request_timeout_ms \(5 \+ 30000\), got 30000",
    ):
        Producer("h:1", linger_ms=5, request_timeout_ms=30_000, delivery_timeout_ms=30_000)
    Producer("h:1", linger_ms=5, request_timeout_ms=30_000, delivery_timeout_ms=30_005)


def test_records_in_flight_when_the_producer_is_torn_down_fail_instead_of_hanging() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("t", 1)
        fake.hold_produce()
        producer = Producer(fake.address, linger_ms=0)
        await producer.start()
        in_flight = await producer.send("t", b"a")
        await fake.produce_parked.wait()
        queued = await producer.send("t", b"b")
        closing = asyncio.ensure_future(producer.close())
        await asyncio.sleep(0)  # one step: close() runs until it waits in its flush
        assert producer._flushing == 1
        closing.cancel()  # an impatient caller gives up on the graceful close
        with pytest.raises(asyncio.CancelledError):
            await closing
        for task in [s.task for s in producer._senders.values()]:  # the teardown in close()'s finally
            assert task is not None and task.done()
        for future in (in_flight, queued):
            with pytest.raises(FailedPrecondition, match="producer closed before the record was sent"):
                await future
        fake.release_produce()

    run(scenario)
