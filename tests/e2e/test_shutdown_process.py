"""SIGTERM a real broker while producers (acks=all) and consumers are busy.

Two producers send continuously; two follow-mode streaming Consume calls (raw grpclib) and
one library Consumer (long-polled Fetch) read. After a seeded number of acknowledgements
the broker gets SIGTERM. Required:

- the broker exits 0 within SHUTDOWN_BOUND seconds;
- every client ends in bounded time with an error or a clean end, never a hang: producers
  get typed errors for what was not acknowledged, streams end (UNAVAILABLE "shutting down"
  or a closed connection), the Consumer's polls keep returning;
- after a restart every acknowledged record is at its offset with its value, offsets are
  contiguous from 0, and everything the consumers saw before the shutdown is stored (they
  only ever see committed data).
"""

from __future__ import annotations

import asyncio
import functools
import random
import time

import pytest
from broker_process import BrokerProcess
from fault_support import eventually, read_partition
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from sentinel.client import Admin, Consumer, Producer, RecordMetadata, TopicPartition
from sentinel.client.fetching import records_from_batches
from sentinel.errors import SentinelError
from sentinel.generated.sentinel import v1 as pb

TOPIC = "ledger"
PARTITIONS = 2
SHUTDOWN_BOUND = 15.0
CLIENT_BOUND = 20.0  # how long any client may take to notice the broker is gone
WAIT = 30.0
SEED = 4242

Seen = tuple[int, int, bytes | None]  # (partition, offset, value)


class ProducerLoad:
    """Sends ``<name>-<i>`` round-robin over the partitions until a delivery fails."""

    def __init__(self, name: str, address: str) -> None:
        self.name = name
        self.producer = Producer(address, retries=1, retry_backoff_ms=50, request_timeout_ms=5000)
        self.acked: dict[tuple[int, int], bytes] = {}
        self.errors: list[BaseException] = []

    def _outcome(self, value: bytes, future: asyncio.Future[RecordMetadata]) -> None:
        exc = future.exception()
        if exc is None:
            m = future.result()
            self.acked[(m.partition, m.offset)] = value
        else:
            self.errors.append(exc)

    async def run(self) -> None:
        await self.producer.start()
        sent: list[asyncio.Future[RecordMetadata]] = []
        try:
            i = 0
            while not self.errors:
                value = f"{self.name}-{i}".encode()
                future = await self.producer.send(TOPIC, value, partition=i % PARTITIONS)
                future.add_done_callback(functools.partial(self._outcome, value))
                sent.append(future)
                i += 1
                unanswered = [f for f in sent[-64:] if not f.done()]
                if len(unanswered) >= 32:
                    await asyncio.wait(unanswered, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await self.producer.close()
        await asyncio.gather(*sent, return_exceptions=True)


async def stream_partition(address: str, partition: int, seen: list[Seen]) -> BaseException | None:
    """Follow ``partition`` from offset 0; returns how the stream ended (None: cleanly)."""
    host, port = address.rsplit(":", 1)
    channel = Channel(host, int(port))
    stub = pb.SentinelStub(channel)
    tp = TopicPartition(TOPIC, partition)
    offset = 0
    try:
        request = pb.ConsumeRequest(topic=TOPIC, partition=partition, offset=0, follow=True)
        async for response in stub.consume(request):
            for r in records_from_batches(tp, response.record_batches, offset):
                seen.append((partition, r.offset, r.value))
            offset = response.next_offset
        return None
    except (GRPCError, StreamTerminatedError, ConnectionError) as exc:
        return exc
    finally:
        channel.close()


async def poll_with_consumer(address: str, seen: list[Seen], stop: asyncio.Event) -> None:
    """A library Consumer polling every partition; each poll must return in bounded time."""
    tps = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
    async with Consumer(address, auto_offset_reset="earliest", fetch_max_wait_ms=200) as consumer:
        consumer.assign(tps)
        while not stop.is_set():
            got = await asyncio.wait_for(consumer.getmany(timeout_ms=300), CLIENT_BOUND)
            seen.extend((tp.partition, r.offset, r.value) for tp, rs in got.items() for r in rs)


@pytest.mark.slow
def test_sigterm_with_active_producers_and_consumers(broker: BrokerProcess) -> None:
    address = broker.address
    acks_before_sigterm = random.Random(SEED).randint(200, 600)
    producers = [ProducerLoad("p", address), ProducerLoad("q", address)]
    streamed: list[list[Seen]] = [[] for _ in range(PARTITIONS)]
    polled: list[Seen] = []
    stream_endings: list[BaseException | None] = []
    shutdown_seconds = 0.0

    async def main() -> None:
        nonlocal stream_endings, shutdown_seconds
        async with Admin(address) as admin:
            await admin.create_topic(TOPIC, PARTITIONS)
        stop_polling = asyncio.Event()
        producing = [asyncio.create_task(load.run()) for load in producers]
        streams = [asyncio.create_task(stream_partition(address, p, streamed[p])) for p in range(PARTITIONS)]
        polling = asyncio.create_task(poll_with_consumer(address, polled, stop_polling))
        clients = [*producing, *streams, polling]

        def busy() -> bool:
            failed = [t for t in clients if t.done()]
            if failed:
                raise AssertionError(f"a client ended before SIGTERM: {failed[0]!r}")
            acked = sum(len(load.acked) for load in producers)
            return acked >= acks_before_sigterm and all(streamed) and bool(polled)

        await eventually(busy, WAIT, f"{acks_before_sigterm} acks and data at every consumer")

        started = time.monotonic()
        await asyncio.to_thread(broker.stop)  # SIGTERM; asserts exit code 0
        shutdown_seconds = time.monotonic() - started

        # No client hangs: producers fail what was not acknowledged, streams end.
        await asyncio.wait_for(asyncio.gather(*producing), CLIENT_BOUND)
        stream_endings = list(await asyncio.wait_for(asyncio.gather(*streams), CLIENT_BOUND))
        stop_polling.set()
        await asyncio.wait_for(polling, CLIENT_BOUND)

    asyncio.run(main())
    assert shutdown_seconds <= SHUTDOWN_BOUND, f"shutdown took {shutdown_seconds:.1f}s"

    for load in producers:
        assert load.errors, f"producer {load.name} never saw the broker go away"
        assert all(isinstance(e, SentinelError) for e in load.errors), load.errors[:3]
    for ending in stream_endings:
        # A clean end, the server's UNAVAILABLE, or the connection closing under the stream.
        if isinstance(ending, GRPCError):
            assert ending.status is Status.UNAVAILABLE, ending
            assert ending.message == "the server is shutting down", ending

    broker.start()

    async def read_all() -> dict[int, list[tuple[int, bytes | None]]]:
        return {p: await read_partition(address, TOPIC, p) for p in range(PARTITIONS)}

    logs = asyncio.run(read_all())
    for p, records in logs.items():
        assert [o for o, _v in records] == list(range(len(records))), f"partition {p} has gaps"
    stored = {(p, o): v for p, records in logs.items() for o, v in records}
    acked = {key: value for load in producers for key, value in load.acked.items()}
    assert len(acked) >= acks_before_sigterm
    lost = {key: value for key, value in acked.items() if stored.get(key) != value}
    assert not lost, f"{len(lost)} acknowledged records lost or changed, e.g. {sorted(lost.items())[:3]}"
    seen = [*streamed[0], *streamed[1], *polled]
    phantom = [(p, o, v) for p, o, v in seen if stored.get((p, o)) != v]
    assert not phantom, f"consumers saw records that are not stored: {phantom[:3]}"
    for p in range(PARTITIONS):
        assert [o for _p, o, _v in streamed[p]] == list(range(len(streamed[p]))), "stream skipped"
    broker.stop()
