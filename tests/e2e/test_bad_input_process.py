"""Bad input against a real ``sentinel run`` process: every request gets a precise error, and
the broker keeps serving everyone else.

Requests are sent with grpclib directly (the client library refuses much of this before
sending it): the point is that the SERVER answers bad input with the right gRPC status and
a message naming the problem. Where the client library would send the request, its typed
error is checked too. After each case a normal produce + consume must still work, and at
the end the broker must still stop cleanly (exit 0) after all the abuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import re
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any

import pytest
from broker_process import BrokerProcess
from fault_support import JsonLines, eventually, metric, spawn_child
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from sentinel.client import Consumer, Producer, TopicPartition
from sentinel.errors import InvalidArgument, NotFound, ResourceExhausted
from sentinel.generated.sentinel import v1 as pb
from sentinel.records import build_batch

MAX_MESSAGE_BYTES = 64 * 1024
TOPIC = "good"  # 2 partitions, created by the fixture
WAIT = 30.0
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
GOAWAY = 0x7
HEADERS = 0x1

_serial = itertools.count()


@pytest.fixture(scope="module")
def bad_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """One broker for the whole module (start-up is the expensive part)."""
    broker = BrokerProcess(
        tmp_path_factory.mktemp("bad-input") / "data",
        extra_args=["--max-message-bytes", str(MAX_MESSAGE_BYTES)],
        metrics=True,
    )
    broker.start()
    try:

        async def create() -> None:
            async with raw_stub(broker.address) as stub:
                await stub.create_topic(pb.CreateTopicRequest(name=TOPIC, partitions=2))

        asyncio.run(create())
        yield broker
        broker.stop()  # still exits 0, in bounded time, after everything below
    finally:
        broker.close()


@contextlib.asynccontextmanager
async def raw_stub(address: str) -> AsyncIterator[pb.SentinelStub]:
    host, port = address.rsplit(":", 1)
    channel = Channel(host, int(port))
    try:
        yield pb.SentinelStub(channel)
    finally:
        channel.close()


async def rejected(call: Awaitable[Any], status: Status, message: str) -> None:
    """``call`` must fail with ``status`` and a message matching the regex ``message``."""
    with pytest.raises(GRPCError) as caught:
        await call
    assert caught.value.status is status, caught.value
    assert caught.value.message is not None and re.fullmatch(message, caught.value.message), (
        caught.value.message
    )


async def first_response(stub: pb.SentinelStub, request: pb.ConsumeRequest) -> pb.ConsumeResponse:
    """The first message of a streaming Consume (the call is dropped after it)."""
    async for response in stub.consume(request, timeout=WAIT):
        return response
    raise AssertionError("the stream ended without a response")


def batch(value: bytes) -> bytes:
    return build_batch([(None, value, (), int(time.time() * 1000))])


async def serves_normally(address: str) -> None:
    """A normal produce and consume round trip still works."""
    value = f"still serving {next(_serial)}".encode()
    async with Producer(address) as producer:
        meta = await producer.send_and_wait(TOPIC, value, partition=0)
    tp = TopicPartition(TOPIC, 0)
    async with Consumer(address, fetch_max_wait_ms=100) as consumer:
        consumer.assign([tp])
        consumer.seek(tp, meta.offset)
        got = await consumer.getmany(tp, timeout_ms=WAIT * 1000, max_records=1)
    assert [r.value for r in got[tp]] == [value]


@pytest.mark.slow
def test_unknown_topic(bad_broker: BrokerProcess) -> None:
    address = bad_broker.address
    missing = r"topic 'nope' does not exist"

    async def main() -> None:
        async with raw_stub(address) as stub:
            await rejected(stub.fetch(pb.ConsumeRequest(topic="nope")), Status.NOT_FOUND, missing)
            await rejected(
                first_response(stub, pb.ConsumeRequest(topic="nope", follow=True)), Status.NOT_FOUND, missing
            )
            await rejected(stub.list_offsets(pb.ListOffsetsRequest(topic="nope")), Status.NOT_FOUND, missing)
            await rejected(
                stub.describe_topic(pb.DescribeTopicRequest(name="nope")), Status.NOT_FOUND, missing
            )
        # The client library: a typed error from getmany, with the server's message.
        async with Consumer(address, auto_offset_reset="earliest") as consumer:
            consumer.assign([("nope", 0)])
            with pytest.raises(NotFound, match=f"^{missing}$"):
                await consumer.getmany(timeout_ms=WAIT * 1000)
        await serves_normally(address)

    asyncio.run(main())


@pytest.mark.slow
def test_bad_partition(bad_broker: BrokerProcess) -> None:
    address = bad_broker.address

    def no_such(p: int) -> str:
        return rf"partition {p} does not exist in topic 'good' \(valid partitions are 0\.\.1\)"

    async def main() -> None:
        async with raw_stub(address) as stub:
            for p in (2, 99, -1, -7):
                request = pb.ConsumeRequest(topic=TOPIC, partition=p)
                await rejected(stub.fetch(request), Status.INVALID_ARGUMENT, no_such(p))
                request.follow = True
                await rejected(first_response(stub, request), Status.INVALID_ARGUMENT, no_such(p))
                await rejected(
                    stub.list_offsets(pb.ListOffsetsRequest(topic=TOPIC, partition=p)),
                    Status.INVALID_ARGUMENT,
                    no_such(p),
                )
            # Produce: -1 means "the broker picks"; other negatives and unknown ones are errors.
            for p in (2, 99, -2, -7):
                produce = pb.ProduceRequest(topic=TOPIC, partition=p, record_batches=batch(b"x"))
                await rejected(stub.produce(produce), Status.INVALID_ARGUMENT, no_such(p))
        await serves_normally(address)

    asyncio.run(main())


@pytest.mark.slow
def test_bad_offset(bad_broker: BrokerProcess) -> None:
    address = bad_broker.address

    async def main() -> None:
        await serves_normally(address)  # partition 0 has at least one record now
        async with raw_stub(address) as stub:
            end = (await stub.list_offsets(pb.ListOffsetsRequest(topic=TOPIC, partition=0))).offset
            for offset in (-1, -(2**63)):
                request = pb.ConsumeRequest(topic=TOPIC, partition=0, offset=offset)
                negative = rf"offset must be >= 0, got {offset}"
                await rejected(stub.fetch(request), Status.INVALID_ARGUMENT, negative)
                request.follow = True
                await rejected(first_response(stub, request), Status.INVALID_ARGUMENT, negative)
            beyond = pb.ConsumeRequest(topic=TOPIC, partition=0, offset=end + 5)
            await rejected(
                stub.fetch(beyond),
                Status.OUT_OF_RANGE,
                rf"offset {end + 5} is out of range for good\[0\]: "
                rf"valid offsets are 0 to {end} \({end} is the next offset\)",
            )
            # The end itself is valid: an empty answer after the (short) long poll.
            at_end = await stub.fetch(pb.ConsumeRequest(topic=TOPIC, partition=0, offset=end, max_wait_ms=10))
            assert (at_end.record_batches, at_end.next_offset, at_end.high_watermark) == (b"", end, end)
        await serves_normally(address)

    asyncio.run(main())


@pytest.mark.slow
def test_oversized_message(bad_broker: BrokerProcess) -> None:
    address = bad_broker.address
    too_big = rf"request message of \d+ bytes exceeds the limit of {MAX_MESSAGE_BYTES} bytes"

    async def main() -> None:
        async with raw_stub(address) as stub:
            request = pb.ProduceRequest(topic=TOPIC, partition=0, record_batches=batch(b"z" * 100_000))
            await rejected(stub.produce(request), Status.RESOURCE_EXHAUSTED, too_big)
            # Far bigger than the limit (and than one flow-control window): refused before
            # the server buffers it, and the connection stays usable.
            request.record_batches = batch(b"z" * (6 * 1024 * 1024))
            await rejected(stub.produce(request), Status.RESOURCE_EXHAUSTED, too_big)
            meta = await stub.fetch_metadata(pb.MetadataRequest(topics=[TOPIC]))
            assert [t.name for t in meta.topics] == [TOPIC]
        # The client library sends it (it is below the client's own request limit) and gets
        # the typed error with the server's message at once: a retry would only repeat it.
        async with Producer(address, retry_backoff_ms=60_000) as producer:
            with pytest.raises(ResourceExhausted, match=too_big):
                await producer.send_and_wait(TOPIC, b"y" * 100_000, partition=1)
        await serves_normally(address)

    asyncio.run(main())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("bad/name", r"only ASCII letters, digits, '\.', '_' and '-' are allowed \(found '/' at index 3\)"),
        ("", r"must not be empty"),
        ("x" * 300, r"must be at most 249 characters, got 300"),
    ],
    ids=["slash", "empty", "300-chars"],
)
def test_invalid_topic_name(bad_broker: BrokerProcess, name: str, problem: str) -> None:
    address = bad_broker.address
    shown = re.escape(repr(name) if len(name) <= 64 else f"{name[:64]!r}... ({len(name)} characters)")
    invalid = rf"invalid topic name {shown}: {problem}"

    async def main() -> None:
        async with raw_stub(address) as stub:
            await rejected(
                stub.create_topic(pb.CreateTopicRequest(name=name, partitions=1)),
                Status.INVALID_ARGUMENT,
                invalid,
            )
            produce = pb.ProduceRequest(topic=name, partition=0, record_batches=batch(b"x"))
            await rejected(stub.produce(produce), Status.INVALID_ARGUMENT, invalid)
            await rejected(stub.fetch(pb.ConsumeRequest(topic=name)), Status.INVALID_ARGUMENT, invalid)
            await rejected(
                stub.list_offsets(pb.ListOffsetsRequest(topic=name)), Status.INVALID_ARGUMENT, invalid
            )
            listed = await stub.list_topics(pb.ListTopicsRequest())
            assert [t.name for t in listed.topics] == [TOPIC], "an invalid topic was created"
        if name:  # the client library refuses an empty name itself
            async with Producer(address, retries=0) as producer:
                with pytest.raises(InvalidArgument, match=f"^{invalid}$"):
                    await producer.send_and_wait(name, b"x")
        await serves_normally(address)

    asyncio.run(main())


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    """(type, payload) of each complete HTTP/2 frame in ``data``."""
    frames = []
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        frames.append((data[3], data[9 : 9 + length]))
        data = data[9 + length :]
    return frames


def _garbage(seed: int, size: int = 4096) -> bytes:
    return random.Random(seed).randbytes(size)


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


# A client's valid connection start: the preface and an empty SETTINGS frame.
HELLO = HTTP2_PREFACE + _frame(0x4, 0, 0, b"")


def _read_until_closed(port: int, payload: bytes, within: float) -> bytes | None:
    """Send ``payload`` on a fresh connection; what the server sent before closing it, or
    None if it was still open after ``within`` seconds."""
    with socket.create_connection(("127.0.0.1", port), timeout=within) as sock:
        sock.sendall(payload)
        answer = b""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return answer  # dropped with a reset: closed just as well
            except TimeoutError:
                return None
            if not chunk:
                return answer
            answer += chunk
        return None


@pytest.mark.slow
@pytest.mark.parametrize(
    "payload",
    [
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n",
        _garbage(7),
        # After a valid start: a SETTINGS frame whose length is not a multiple of 6, DATA on
        # stream 0, a HEADERS frame whose header block is random bytes.
        HELLO + _frame(0x4, 0, 0, b"abcde"),
        HELLO + _frame(0x0, 0, 0, b"abcd"),
        HELLO + _frame(HEADERS, 0x4, 1, _garbage(9, 64)),
    ],
    ids=["http1", "random-bytes", "bad-settings", "data-on-stream-0", "garbage-hpack"],
)
def test_garbage_on_the_grpc_port(bad_broker: BrokerProcess, payload: bytes) -> None:
    answer = _read_until_closed(bad_broker.port, payload, WAIT)
    assert answer is not None, "the server kept a garbage-speaking connection open"
    # The server never answered as if it had understood a request: at most its own
    # connection preface (SETTINGS...), and if it said goodbye, it was a PROTOCOL_ERROR.
    frames = _frames(answer)
    assert all(kind != HEADERS for kind, _ in frames), frames
    for kind, body in frames:
        if kind == GOAWAY:
            assert int.from_bytes(body[4:8], "big") in (0x1, 0x6), f"GOAWAY error code {body[4:8].hex()}"
    asyncio.run(serves_normally(bad_broker.address))


@pytest.mark.slow
def test_frame_header_announcing_an_oversized_frame_is_refused_at_once(bad_broker: BrokerProcess) -> None:
    """A frame header announcing ~16 MiB (far above SETTINGS_MAX_FRAME_SIZE) gets GOAWAY with
    FRAME_SIZE_ERROR as soon as the header arrives: the server does not wait for the body."""
    oversized = (2**24 - 1).to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01" + b"x" * 100
    for split in (None, len(HELLO) + 2):  # the header in one read, and split across two
        with socket.create_connection(("127.0.0.1", bad_broker.port), timeout=WAIT) as sock:
            payload = HELLO + oversized
            if split is None:
                sock.sendall(payload)
            else:
                sock.sendall(payload[:split])
                time.sleep(0.05)  # (only to make a separate read likely; either way must work)
                sock.sendall(payload[split:])
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        goaway = [body for kind, body in _frames(answer) if kind == GOAWAY]
        assert goaway, f"no GOAWAY in {_frames(answer)}"
        assert int.from_bytes(goaway[0][4:8], "big") == 0x6  # FRAME_SIZE_ERROR
        assert goaway[0][8:] == f"frame of {2**24 - 1} bytes exceeds the maximum frame size".encode()
    asyncio.run(serves_normally(bad_broker.address))


@pytest.mark.slow
def test_client_killed_mid_stream(bad_broker: BrokerProcess) -> None:
    address = bad_broker.address
    assert bad_broker.metrics_port is not None
    metrics_port = bad_broker.metrics_port
    topic = "streamed"

    def connections() -> float:
        return metric(metrics_port, "sentinel_active_connections")

    async def produce(count: int) -> None:
        async with Producer(address) as producer:
            futures = [await producer.send(topic, b"v" * 200, partition=0) for _ in range(count)]
            await asyncio.gather(*futures)

    async def main() -> None:
        await produce(50)
        # Every earlier client of this module has closed: the gauge settles at its baseline.
        await eventually(lambda: connections() == 0, WAIT, "no client connections")
        host, port = address.rsplit(":", 1)
        child = JsonLines(spawn_child("stream_child.py", host, port, topic))
        try:
            await asyncio.to_thread(
                child.wait_for, lambda items: bool(items) and items[-1].get("received", 0) > 0, WAIT, "data"
            )
            assert connections() == 1
            await produce(50)  # the stream is live: the server sends these as they commit
            child.process.send_signal(signal.SIGKILL)
            await asyncio.to_thread(child.wait_eof, WAIT)
        finally:
            child.kill()
        # produce() above opened and closed its own connection: back to 0 means the killed
        # client's connection is gone too.
        await eventually(lambda: connections() == 0, WAIT, "the killed client's connection closed")
        await serves_normally(address)

    asyncio.run(main())
