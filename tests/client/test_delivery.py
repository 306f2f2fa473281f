"""The futures ``Producer.send`` returns (``sentinel.client.delivery``): the asyncio Future
protocol over runs of records settled a part at a time, and what the producer keeps of them."""

from __future__ import annotations

import asyncio
import contextvars
import sys

import pytest
from client_fakes import FakeSentinel, run
from grpclib.const import Status

from sentinel.client import Producer, RecordMetadata, accumulator, delivery
from sentinel.client.delivery import RecordFuture
from sentinel.errors import InvalidArgument, Unavailable
from sentinel.records import iter_batches

# Each test runs once per build of sentinel.client.appending (see conftest.py).
pytestmark = pytest.mark.usefixtures("appending_build")


def new_run(loop: asyncio.AbstractEventLoop, topic: str, partition: int) -> delivery.RecordRun:
    """A run of the build under test (``delivery.RecordRun`` is the build in use at import)."""
    run_: delivery.RecordRun = accumulator.appending.RecordRun(loop, topic, partition)
    return run_


def futures_of(run_: delivery.RecordRun, count: int, timestamp: int = 7) -> list[RecordFuture]:
    new = accumulator.appending.RecordFuture
    return [new(run_, i, timestamp + i) for i in range(count)]


def test_parts_settle_in_order_and_build_each_records_metadata() -> None:
    async def scenario() -> None:
        records = new_run(asyncio.get_running_loop(), "t", 3)
        first, second, third = futures_of(records, 3)
        assert not first.done()
        with pytest.raises(asyncio.InvalidStateError):
            first.result()
        records.resolve(0, 2, 100, 0)  # records 0-1 at offsets 100-101, create time
        assert first.result() == RecordMetadata("t", 3, 100, 7)
        assert second.result() == RecordMetadata("t", 3, 101, 8) and not third.done()
        error = Unavailable("gone")
        records.fail(2, 1, error)
        assert third.done() and third.exception() is error
        with pytest.raises(Unavailable):
            await third
        with pytest.raises(AssertionError):  # out of order: a bug, loudly
            records.resolve(1, 1, 5, 0)

    asyncio.run(scenario())


def test_log_append_time_and_acks_zero() -> None:
    async def scenario() -> None:
        records = new_run(asyncio.get_running_loop(), "t", 0)
        a, b = futures_of(records, 2)
        records.resolve(0, 1, -1, 0)  # acks=0: no offsets
        records.resolve(1, 1, 9, 555)  # the broker's log append time replaces the record's
        assert (a.result().offset, b.result()) == (-1, RecordMetadata("t", 0, 9, 555))

    asyncio.run(scenario())


def test_the_asyncio_future_protocol_gather_wait_for_callbacks_and_cancel() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        records = new_run(loop, "t", 0)
        futures = futures_of(records, 4)
        assert all(asyncio.isfuture(f) and f.get_loop() is loop for f in futures)
        calls: list[tuple[int, str]] = []
        marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="none")
        context = contextvars.copy_context()
        context.run(marker.set, "theirs")
        futures[0].add_done_callback(
            lambda f: calls.append((f.result().offset, marker.get())), context=context
        )

        def unwanted(future: RecordFuture) -> None:
            calls.append((-1, "removed"))

        futures[1].add_done_callback(unwanted)
        assert futures[1].remove_done_callback(unwanted) == 1
        gathered = asyncio.gather(*futures[:2])
        loop.call_later(0.01, records.resolve, 0, 2, 40, 0)
        assert [m.offset for m in await gathered] == [40, 41]
        await asyncio.sleep(0)
        assert calls == [(40, "theirs")]  # through the loop, in the context given; not the removed one

        # wait_for cancels a future that times out; the record is still settled later.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(futures[2], 0.01)
        assert futures[2].cancelled() and not futures[2].cancel()
        with pytest.raises(asyncio.CancelledError):
            futures[2].result()
        # A task awaiting a future is cancelled: the future is cancelled with it.
        waiting = asyncio.ensure_future(_await(futures[3]))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert futures[3].cancelled()
        records.resolve(2, 2, 42, 0)  # settling cancelled futures is no error
        assert records.watchers == []  # nothing is kept for settled or cancelled futures

    asyncio.run(scenario())


async def _await(future: RecordFuture) -> RecordMetadata:
    return await future


def test_the_producer_keeps_no_reference_to_a_records_future() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("t", 1)
        async with Producer(fake.address, linger_ms=60_000) as producer:
            future = await producer.send("t", b"x", partition=0)
            # Only this frame and getrefcount's argument: dropping it frees it at once,
            # whatever the garbage collector does (it held one asyncio.Future per record).
            assert sys.getrefcount(future) == 2
            await producer.flush()
            assert (await future).offset == 0

    run(scenario)


def test_batch_size_bounds_each_batch_and_a_request_carries_several() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("t", 1)
        # 116-byte records (estimate): 8 to a 1000-byte batch.
        async with Producer(fake.address, linger_ms=60_000, batch_size=1000) as producer:
            await producer.send("t", b"warm-up")
            await producer.flush()  # the producer id, the first request of it alone
            fake.produce_requests.clear()
            futures = [await producer.send("t", b"%03d" % i + b"v" * 97) for i in range(200)]
            await producer.flush()
            assert [(await f).offset for f in futures] == list(range(1, 201))
        batches = [list(iter_batches(r.record_batches)) for r in fake.produce_requests]
        assert all(len(b.data) <= 1000 for request in batches for b in request)  # batch.size kept
        assert max(len(request) for request in batches) > 1  # several batches to a request
        assert sum(b.record_count for request in batches for b in request) == 200

        # A request bound (max_request_bytes) cuts between batches, not the batch size.
        fake.produce_requests.clear()
        limit = 4000
        async with Producer(
            fake.address,
            linger_ms=60_000,
            batch_size=1_000_000,
            max_request_bytes=limit,
            enable_idempotence=False,
        ) as producer:
            futures = [await producer.send("t", b"v" * 100) for _ in range(100)]
            await producer.flush()
            assert all(f.done() and f.exception() is None for f in futures)
        assert len(fake.produce_requests) > 1
        assert all(len(bytes(r)) <= limit for r in fake.produce_requests)

    run(scenario)


def test_a_failed_request_fails_every_record_of_its_parts() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("t", 1)
        async with Producer(fake.address, linger_ms=60_000, retries=0) as producer:
            await producer.send("t", b"warm-up")
            await producer.flush()  # the producer id, the first request of it alone
            fake.fail_next("produce", Status.INVALID_ARGUMENT)
            futures = [await producer.send("t", b"x%d" % i) for i in range(5)]
            await producer.flush()
            assert all(isinstance(f.exception(), InvalidArgument) for f in futures)
            later = await producer.send("t", b"after")  # a new run, unaffected
            await producer.flush()
            assert (await later).offset == 1

    run(scenario)
