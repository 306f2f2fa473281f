"""The idempotent producer against the fake broker, which applies the broker's own
producer-state rules (``sentinel.broker.producer_state``): producer ids, sequence numbers,
retries that are recognised instead of appended twice, order kept with five requests in
flight, the wrap of sequence numbers, fencing and what follows a batch that failed."""

from __future__ import annotations

import asyncio
import functools

import pytest
from client_fakes import FakeSentinel, run
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from sentinel.broker.producer_state import MAX_SEQUENCE, BatchMetadata, OutOfOrderSequence, ProducerFenced
from sentinel.client import Producer, RecordMetadata, sequencing
from sentinel.errors import FailedPrecondition, InvalidArgument, Unavailable
from sentinel.generated.sentinel import v1 as pb
from sentinel.records import RecordBatch, iter_batches

# Each test runs once per build of sentinel.client.appending (see conftest.py).
pytestmark = pytest.mark.usefixtures("appending_build")

NO_ID = -1


def sent_batches(fake: FakeSentinel, partition: int = 0) -> list[RecordBatch]:
    """Every batch of every produce request to ``partition``, retries included."""
    return [
        b for r in fake.produce_requests if r.partition == partition for b in iter_batches(r.record_batches)
    ]


def stored(fake: FakeSentinel, topic: str, partition: int = 0) -> list[bytes | None]:
    return [value for _, _, value in fake.topics[topic][partition].records()]


async def sent_and_parked(
    fake: FakeSentinel, producer: Producer, values: list[bytes]
) -> list[asyncio.Future]:
    """Send each value as a request of its own (linger 0) that the fake parks at its gate."""
    futures = []
    for value in values:
        futures.append(await producer.send("t", value, partition=0))
        await fake.wait_parked(len(fake.parked) + 1)
    return futures


def completion_order(futures: list[asyncio.Future[RecordMetadata]]) -> list[int]:
    order: list[int] = []
    for i, future in enumerate(futures):
        future.add_done_callback(functools.partial(_done_at, order, i))
    return order


def _done_at(order: list[int], index: int, _future: object) -> None:
    order.append(index)


def test_batches_carry_one_producer_id_and_sequences_numbered_per_partition() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("t", 2)
        async with Producer(fake.address, linger_ms=0, batch_size=100) as producer:
            assert producer.idempotent
            assert fake.calls["init_producer_id"] == 0  # lazily: before the first request
            for i in range(12):
                await producer.send_and_wait("t", b"record %02d" % i, partition=i % 2)
            batch = await (await producer.send_batch("t", [b"w1", b"w2", b"w3"], partition=1))
            assert batch.record_count == 3
        assert fake.calls["init_producer_id"] == 1
        for partition, records in ((0, 6), (1, 9)):
            batches = sent_batches(fake, partition)
            assert {(b.producer_id, b.producer_epoch) for b in batches} == {(1, 0)}
            expected, sequence = [], 0
            for b in batches:
                expected.append(sequence)
                sequence += b.record_count
            assert [b.base_sequence for b in batches] == expected and sequence == records
        assert sent_batches(fake, 1)[-1].record_count == 3  # send_batch: one batch, one range

    run(scenario)


@pytest.mark.parametrize("idempotent", [True, False])
def test_a_request_whose_answer_is_lost_is_retried_and_not_appended_twice(idempotent: bool) -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("t", 1)
        async with Producer(
            fake.address,
            linger_ms=0,
            request_timeout_ms=300,
            retry_backoff_ms=1,
            enable_idempotence=idempotent,
        ) as producer:
            first = await producer.send_and_wait("t", b"first")
            fake.lose_answers(1)
            lost = await producer.send_and_wait("t", b"answer lost")
            after = await producer.send_and_wait("t", b"after")
        assert fake.appended_unanswered == 1
        attempt, retry = fake.produce_requests[1:3]
        assert attempt.record_batches == retry.record_batches  # byte-identical, headers included
        if idempotent:
            assert [first.offset, lost.offset, after.offset] == [0, 1, 2]  # the original offset
            assert stored(fake, "t") == [b"first", b"answer lost", b"after"]
        else:  # at least once: the retry is appended again (what this test must be able to see)
            assert [first.offset, lost.offset, after.offset] == [0, 2, 3]
            assert stored(fake, "t") == [b"first", b"answer lost", b"answer lost", b"after"]
            assert {b.producer_id for b in sent_batches(fake)} == {NO_ID}
            assert fake.calls["init_producer_id"] == 0

    run(scenario)


def test_five_in_flight_with_a_failure_in_the_middle_keep_their_order() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("t", 1)
        async with Producer(fake.address, linger_ms=0, retry_backoff_ms=1) as producer:
            await producer.send_and_wait("t", b"r0")  # the producer id's first request, alone
            fake.hold_produce()
            futures = await sent_and_parked(fake, producer, [b"r1", b"r2", b"r3", b"r4", b"r5"])
            futures.append(await producer.send("t", b"r6"))
            order = completion_order(futures)
            for _ in range(20):
                await asyncio.sleep(0)
            assert len(fake.parked) == 5  # five requests fly; r6 waits for room
            failed: list[int] = []

            def fail_r3_once(message: pb.ProduceRequest, batches: list[RecordBatch]) -> None:
                if batches[0].base_sequence == 3 and not failed:
                    failed.append(3)  # refused before the append: r4 and r5 become a gap
                    raise GRPCError(Status.UNAVAILABLE, "not the leader any more")

            fake.before_append = fail_r3_once
            fake.release_produce()
            offsets = [(await f).offset for f in futures]
        assert offsets == [1, 2, 3, 4, 5, 6]
        assert order == [0, 1, 2, 3, 4, 5]  # futures resolve in offset order
        assert stored(fake, "t") == [b"r%d" % i for i in range(7)]
        # r3 was sent twice; r4 and r5 were refused as out of order and sent again after it.
        sequences = [b.base_sequence for b in sent_batches(fake)]
        assert sequences == [0, 1, 2, 3, 4, 5, 3, 4, 5, 6]

    run(scenario)


def test_a_request_that_overtook_an_earlier_one_is_sent_again_after_it() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("t", 1)
        async with Producer(fake.address, linger_ms=0) as producer:
            await producer.send_and_wait("t", b"a")
            fake.hold_produce()
            futures = await sent_and_parked(fake, producer, [b"b", b"c"])
            await fake.release_parked(1)  # c reaches the partition first: out of order
            assert stored(fake, "t") == [b"a"]
            fake.release_produce()
            assert [(await f).offset for f in futures] == [1, 2]
        assert stored(fake, "t") == [b"a", b"b", b"c"]

    run(scenario)


def test_the_first_request_of_a_producer_id_flies_alone() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("t", 1)
        fake.hold_produce()
        async with Producer(fake.address, linger_ms=0) as producer:
            first = await producer.send("t", b"first")
            await fake.wait_parked(1)
            second = await producer.send("t", b"second")
            for _ in range(20):
                await asyncio.sleep(0)
            # A broker with no state for the id would take "second" first if it got there first.
            assert len(fake.parked) == 1
            fake.release_produce()
            assert [(await first).offset, (await second).offset] == [0, 1]

    run(scenario)


def test_at_most_the_window_flies_and_a_request_carries_half_of_it() -> None:
    window, per_request = sequencing.MAX_IN_FLIGHT_BATCHES, sequencing.MAX_BATCHES_PER_REQUEST
    total = 2 * (2 * window + 10)  # records, 2 to a batch: more batches than the window

    async def scenario(fake: FakeSentinel) -> None:
        fake.create("t", 1)
        async with Producer(fake.address, linger_ms=0, batch_size=130) as producer:
            await producer.send_and_wait("t", b"warm-up")
            fake.hold_produce()
            first = [await producer.send("t", b"%03d" % i + b"x" * 40) for i in range(6)]  # 2 per batch
            await fake.wait_parked(1)
            for _ in range(20):
                await asyncio.sleep(0)
            # A backlog beyond the window waits: batches stay within batch_size.
            rest = [await producer.send("t", b"%03d" % i + b"x" * 40) for i in range(6, total)]
            for _ in range(50):
                await asyncio.sleep(0)
            in_flight = [len(list(iter_batches(m.record_batches))) for m, _ in fake.parked]
            assert sum(in_flight) == window  # the whole window flies, in several requests
            assert len(in_flight) > 1 and max(in_flight) <= per_request
            fake.release_produce()
            assert [(await f).offset for f in [*first, *rest]] == list(range(1, total + 1))
        per_request_sent = [list(iter_batches(r.record_batches)) for r in fake.produce_requests[1:]]
        assert max(len(batches) for batches in per_request_sent) <= per_request
        assert max(b.record_count for batches in per_request_sent for b in batches) == 2  # batch_size kept
        assert sum(b.record_count for batches in per_request_sent for b in batches) == total

    run(scenario)


def test_sequence_numbers_wrap_and_a_retry_across_the_wrap_is_still_recognised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sequencing, "FIRST_SEQUENCE", MAX_SEQUENCE - 2)

    async def scenario(fake: FakeSentinel) -> None:
        fake.create("t", 1)
        async with Producer(
            fake.address, linger_ms=0, request_timeout_ms=300, retry_backoff_ms=1
        ) as producer:
            await producer.send_and_wait("t", b"near the end")  # sequence 2**31 - 3
            fake.lose_answers(1)
            across = await (await producer.send_batch("t", [b"w%d" % i for i in range(4)]))  # -2 .. 1
            fake.topics["t"][0].leader_change()  # the table as a new leader restores it
            last = await producer.send_and_wait("t", b"after the wrap")  # sequence 2
        assert (across.base_offset, across.record_count, last.offset) == (1, 4, 5)
        assert stored(fake, "t") == [b"near the end", b"w0", b"w1", b"w2", b"w3", b"after the wrap"]
        # The batch of four took MAX - 1, MAX, 0, 1 (its retry the same); the next one 2.
        assert [b.base_sequence for b in sent_batches(fake)] == [
            MAX_SEQUENCE - 2,
            MAX_SEQUENCE - 1,
            MAX_SEQUENCE - 1,
            2,
        ]

    run(scenario)


def test_a_fenced_producer_fails_the_batch_clearly_then_goes_on_with_a_new_id() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("t", 1)
        async with Producer(fake.address, linger_ms=0) as producer:
            await producer.send_and_wait("t", b"before")
            # Another instance of producer 1 with a newer epoch appended to the partition.
            fake.topics["t"][0].producers.record(1, 1, BatchMetadata(0, 0, 99, 99, -1))
            with pytest.raises(ProducerFenced, match="producer 1 epoch 0 is fenced by epoch 1") as caught:
                await producer.send_and_wait("t", b"fenced")
            assert isinstance(caught.value, FailedPrecondition)
            after = await producer.send_and_wait("t", b"after")
        assert after.offset == 1
        assert fake.calls["init_producer_id"] == 2
        assert sent_batches(fake)[-1].producer_id == 2
        assert stored(fake, "t") == [b"before", b"after"]

    run(scenario)


def test_an_out_of_order_answer_nothing_explains_fails_the_batch_then_a_new_id_goes_on() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("t", 1)
        part = fake.topics["t"][0]
        async with Producer(fake.address, linger_ms=0) as producer:
            await producer.send_and_wait("t", b"kept")
            remembered = part.producers.encode()
            await producer.send_and_wait("t", b"acknowledged, then forgotten")
            part.producers = type(part.producers).decode(remembered)  # the broker lost a batch
            with pytest.raises(OutOfOrderSequence, match="producer 1 epoch 0 sent sequence 2, expected 1"):
                await producer.send_and_wait("t", b"refused")
            after = await producer.send_and_wait("t", b"after")
        assert after.offset == 2 and sent_batches(fake)[-1].producer_id == 2

    run(scenario)


def test_a_batch_failing_for_good_does_not_take_the_next_ones_with_it() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("t", 1)
        async with Producer(fake.address, linger_ms=0) as producer:
            await producer.send_and_wait("t", b"a")
            fake.hold_produce()
            futures = await sent_and_parked(fake, producer, [b"refused", b"c", b"d"])

            def refuse(message: pb.ProduceRequest, batches: list[RecordBatch]) -> None:
                if batches[0].producer_id == 1 and batches[0].base_sequence == 1:
                    raise GRPCError(Status.INVALID_ARGUMENT, "refused for good")

            fake.before_append = refuse
            fake.release_produce()
            with pytest.raises(InvalidArgument, match="refused for good"):
                await futures[0]
            # c and d followed the hole: never appended under producer 1, they move to 2.
            assert [(await f).offset for f in futures[1:]] == [1, 2]
        assert stored(fake, "t") == [b"a", b"c", b"d"]
        moved = [(b.producer_id, b.base_sequence) for b in sent_batches(fake)[-2:]]
        assert moved == [(2, 0), (2, 1)]

    run(scenario)


def test_retries_exhausted_fail_the_batch_and_the_partition_goes_on_with_a_new_id() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("t", 1)
        async with Producer(fake.address, linger_ms=0, retries=2, retry_backoff_ms=1) as producer:
            await producer.send_and_wait("t", b"a")
            fake.fail_next("produce", Status.UNAVAILABLE, "the broker is busy", times=3)
            with pytest.raises(Unavailable, match="the broker is busy"):
                await producer.send_and_wait("t", b"b")
            assert (await producer.send_and_wait("t", b"c")).offset == 1
        assert fake.calls["init_producer_id"] == 2
        assert stored(fake, "t") == [b"a", b"c"]

    run(scenario)


def test_init_producer_id_failing_fails_those_records_and_is_asked_again() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("t", 1)
        fake.fail_next("init_producer_id", Status.FAILED_PRECONDITION, "no controller today")
        async with Producer(fake.address, linger_ms=0) as producer:
            with pytest.raises(FailedPrecondition, match="no controller today"):
                await producer.send_and_wait("t", b"a")
            assert (await producer.send_and_wait("t", b"b")).offset == 0
        assert fake.calls["init_producer_id"] == 2 and stored(fake, "t") == [b"b"]

    run(scenario)


def test_idempotence_follows_kafkas_rule_for_acks() -> None:
    assert Producer("h:1").idempotent
    assert not Producer("h:1", acks=1).idempotent  # left at its default: off unless acks=all
    assert not Producer("h:1", enable_idempotence=False).idempotent
    with pytest.raises(InvalidArgument, match="enable_idempotence=True needs acks='all', got acks=1"):
        Producer("h:1", acks=1, enable_idempotence=True)


def test_without_idempotence_one_request_flies_and_batches_carry_no_producer_id() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("t", 1)
        fake.hold_produce()
        async with Producer(fake.address, linger_ms=0, enable_idempotence=False) as producer:
            first = await producer.send("t", b"a")
            await fake.wait_parked(1)
            rest = [await producer.send("t", b"%d" % i) for i in range(10)]
            for _ in range(20):
                await asyncio.sleep(0)
            assert len(fake.parked) == 1
            fake.release_produce()
            assert [(await f).offset for f in [first, *rest]] == list(range(11))
        assert len(fake.produce_requests) == 2
        assert {(b.producer_id, b.base_sequence) for b in sent_batches(fake)} == {(NO_ID, NO_ID)}
        assert fake.calls["init_producer_id"] == 0

    run(scenario)
