"""The gRPC front end over real sockets: a toy service behind ``GrpcFrontEnd`` on
127.0.0.1:0, called by a real ``SentinelStub`` on a second asyncio loop (a client bridge).

Real sockets need the real clock: ``fail_after`` is only a safety net. Every wait is on a
condition the other side signals (events, the connection-count callback).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest
import trio
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from hyperframe.frame import PingFrame, SettingsFrame

from sentinel.errors import (
    ActorClosed,
    AlreadyExists,
    CorruptionError,
    FailedPrecondition,
    InvalidArgument,
    InvalidRecordBatch,
    MailboxFull,
    NotFound,
    ResourceExhausted,
    StorageClosed,
    StorageError,
    Unavailable,
)
from sentinel.generated.sentinel import v1 as pb
from sentinel.server.bridge import AsyncioThread, TrioPortal
from sentinel.server.frontend import SHUTTING_DOWN_MESSAGE, GrpcFrontEnd
from sentinel.server.status import INTERNAL_ERROR_MESSAGE

SAFETY = 10  # seconds: only reached when something is broken
HOST = "127.0.0.1"
TOPICS = ["orders", "payments"]

# Errors the toy backend raises for Fetch, keyed by topic name: what the client must see.
ERRORS: dict[str, tuple[BaseException, Status, str]] = {
    "invalid": (
        InvalidArgument("partition -7 is out of range"),
        Status.INVALID_ARGUMENT,
        "partition -7 is out of range",
    ),
    "bad-batch": (
        InvalidRecordBatch("batch 0: CRC mismatch"),
        Status.INVALID_ARGUMENT,
        "batch 0: CRC mismatch",
    ),
    "missing": (
        NotFound("topic 'missing' does not exist"),
        Status.NOT_FOUND,
        "topic 'missing' does not exist",
    ),
    "exists": (AlreadyExists("topic 'exists' exists"), Status.ALREADY_EXISTS, "topic 'exists' exists"),
    "stale": (
        FailedPrecondition("generation 3 is stale"),
        Status.FAILED_PRECONDITION,
        "generation 3 is stale",
    ),
    "quota": (ResourceExhausted("too many bytes"), Status.RESOURCE_EXHAUSTED, "too many bytes"),
    "busy": (MailboxFull("broker mailbox is full"), Status.UNAVAILABLE, "broker mailbox is full"),
    "follower": (
        Unavailable("not the leader for orders/0", leader="2"),
        Status.UNAVAILABLE,
        "not the leader for orders/0 [leader=2]",
    ),
    "stopped": (ActorClosed("broker is not running"), Status.UNAVAILABLE, "broker is not running"),
    "closed": (StorageClosed("storage is closed"), Status.UNAVAILABLE, "storage is closed"),
    "corrupt": (
        CorruptionError("wal-000001.log", 4096, "CRC mismatch"),
        Status.DATA_LOSS,
        "corruption in wal-000001.log at byte 4096: CRC mismatch",
    ),
    "disk": (StorageError("fsync failed: EIO"), Status.INTERNAL, "fsync failed: EIO"),
    "slow-replica": (
        TimeoutError("replication timed out"),
        Status.DEADLINE_EXCEEDED,
        "replication timed out",
    ),
    "bug": (ZeroDivisionError("division by zero"), Status.INTERNAL, INTERNAL_ERROR_MESSAGE),
}


class Backend:
    """The Trio side of the toy service: what real handlers would be."""

    def __init__(self) -> None:
        self.produced: list[pb.ProduceRequest] = []
        self.entered = trio.Event()  # a blocking call has started
        self.release = trio.Event()  # lets blocking calls finish
        self.cancelled = trio.Event()  # a blocking call was cancelled

    async def list_topics(self) -> pb.ListTopicsResponse:
        await trio.lowlevel.checkpoint()
        return pb.ListTopicsResponse(topics=[pb.TopicDescription(name=name) for name in TOPICS])

    async def produce(self, request: pb.ProduceRequest) -> pb.ProduceResponse:
        await trio.lowlevel.checkpoint()
        if request.topic not in TOPICS:
            raise NotFound(f"topic {request.topic!r} does not exist")
        self.produced.append(request)
        return pb.ProduceResponse(
            topic=request.topic, partition=request.partition, base_offset=len(request.record_batches)
        )

    async def fetch(self, request: pb.ConsumeRequest) -> pb.ConsumeResponse:
        await trio.lowlevel.checkpoint()
        if request.topic in ERRORS:
            raise ERRORS[request.topic][0]
        if request.topic == "block":
            return await self.block(request.offset)
        return pb.ConsumeResponse(topic=request.topic, next_offset=request.offset + 1)

    async def block(self, offset: int) -> pb.ConsumeResponse:
        """Wait for ``release``; record a cancellation."""
        self.entered.set()
        try:
            await self.release.wait()
        except trio.Cancelled:
            self.cancelled.set()
            raise
        return pb.ConsumeResponse(topic="block", next_offset=offset + 1)


class ToyService(pb.SentinelBase):
    """The asyncio side: every RPC is a portal call into the backend."""

    def __init__(self, portal: TrioPortal, backend: Backend) -> None:
        self.portal = portal
        self.backend = backend
        self.stream_produced = 0  # Consume messages generated (read from Trio after a probe)
        self.stream_target: tuple[int, trio.Event] | None = None

    async def list_topics(self, message: pb.ListTopicsRequest) -> pb.ListTopicsResponse:
        return await self.portal.call(self.backend.list_topics)

    async def produce(self, message: pb.ProduceRequest) -> pb.ProduceResponse:
        return await self.portal.call(self.backend.produce, message)

    async def fetch(self, message: pb.ConsumeRequest) -> pb.ConsumeResponse:
        return await self.portal.call(self.backend.fetch, message)

    async def consume(self, message: pb.ConsumeRequest) -> AsyncIterator[pb.ConsumeResponse]:
        if message.topic == "firehose":
            # As fast as the transport takes it: max_bytes-sized messages, `offset` of them.
            payload = b"x" * message.max_bytes
            for offset in range(message.offset):
                self.stream_produced += 1
                if self.stream_target is not None and self.stream_produced == self.stream_target[0]:
                    self.portal.call_soon(self.stream_target[1].set)
                yield pb.ConsumeResponse(topic="firehose", record_batches=payload, next_offset=offset + 1)
            return
        # One immediate message, then the next one waits in Trio (for `release`).
        yield pb.ConsumeResponse(topic=message.topic, next_offset=message.offset + 1)
        yield await self.portal.call(self.backend.block, message.offset + 1)


class ConnectionCounts:
    """Records ``on_connections_changed`` (called on the Trio thread) and waits for a value."""

    def __init__(self) -> None:
        self.history: list[int] = []
        self.current = 0
        self._changed = trio.Event()

    def __call__(self, count: int) -> None:
        self.history.append(count)
        self.current = count
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, count: int) -> None:
        while self.current != count:
            await self._changed.wait()


class Harness:
    """A front end serving ``ToyService`` plus a client loop, inside one test."""

    def __init__(self, front_end: GrpcFrontEnd, port: int, client: AsyncioThread, backend: Backend) -> None:
        self.front_end = front_end
        self.port = port
        self.client = client
        self.backend = backend
        self.service: ToyService = front_end._services[0]  # type: ignore[assignment]
        self.counts: ConnectionCounts = front_end._on_connections_changed  # type: ignore[assignment]
        self.channels: list[Channel] = []
        self.stopped = trio.Event()  # set when the front end's run returns

    async def on_client(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any:
        return await self.client.run_asyncio(fn, *args)

    async def open_channel(self) -> Channel:
        """A channel on the client loop, connected (one ListTopics call made)."""

        async def open_() -> Channel:
            channel = Channel(HOST, self.port)
            await pb.SentinelStub(channel).list_topics(pb.ListTopicsRequest())
            return channel

        channel: Channel = await self.on_client(open_)
        self.channels.append(channel)
        return channel

    async def close_channel(self, channel: Channel) -> None:
        async def close() -> None:
            channel.close()

        await self.on_client(close)

    async def call(self, method: str, request: Any, *, channel: Channel | None = None, **kwargs: Any) -> Any:
        """One unary call, on ``channel`` or on a fresh connection."""

        async def go() -> Any:
            if channel is not None:
                return await getattr(pb.SentinelStub(channel), method)(request, **kwargs)
            async with Channel(HOST, self.port) as fresh:
                return await getattr(pb.SentinelStub(fresh), method)(request, **kwargs)

        return await self.on_client(go)


async def start_harness(
    nursery: trio.Nursery, *, scope: trio.CancelScope | None = None, **front_end_options: Any
) -> Harness:
    """Start a client loop and a front end. With ``scope``, the front end runs inside it (so
    a test can cancel the front end alone)."""
    client: AsyncioThread = await nursery.start(AsyncioThread("test-client").run)
    backend = Backend()
    bridge = AsyncioThread("test-server")
    counts = ConnectionCounts()
    front_end = GrpcFrontEnd(
        [ToyService(bridge.portal, backend)],
        HOST,
        0,
        bridge=bridge,
        on_connections_changed=counts,
        **front_end_options,
    )

    stopped = trio.Event()

    async def run_front_end(*, task_status: trio.TaskStatus[int]) -> None:
        try:
            with scope if scope is not None else trio.CancelScope():
                await front_end.run(task_status=task_status)
        finally:
            stopped.set()

    port: int = await nursery.start(run_front_end)
    harness = Harness(front_end, port, client, backend)
    harness.stopped = stopped
    return harness


@pytest.fixture
async def harness(nursery: trio.Nursery) -> AsyncIterator[Harness]:
    h = await start_harness(nursery)
    yield h
    for channel in h.channels:
        await h.close_channel(channel)


async def wait_rpcs_finished(harness: Harness) -> None:
    """Wait on the server's loop until no call is in flight (handler tasks end there, after
    the events a test waits for)."""

    async def poll() -> None:
        # Each sleep(0) lets every ready task of the loop run a step: the cancelled handler
        # tasks get to finish. Bounded by the caller's fail_after.
        while harness.front_end.statistics().active_rpcs:  # noqa: ASYNC110
            await asyncio.sleep(0)

    await harness.front_end.bridge.run_asyncio(poll)


def problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Log lines nobody should see in normal operation: warnings and worse anywhere,
    info from grpclib (its per-cancellation lines are demoted to debug)."""
    return [
        f"{r.name}:{r.levelname}:{r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.WARNING or (r.levelno >= logging.INFO and r.name.startswith("grpclib"))
    ]


# -- basics ---------------------------------------------------------------------------------


async def test_port_zero_binds_a_real_port_and_unary_calls_round_trip(harness: Harness) -> None:
    assert harness.port > 0
    assert harness.front_end.port == harness.port
    with trio.fail_after(SAFETY):
        topics = await harness.call("list_topics", pb.ListTopicsRequest())
        produced = await harness.call(
            "produce", pb.ProduceRequest(topic="orders", partition=3, record_batches=b"\x01" * 300)
        )
    assert [t.name for t in topics.topics] == TOPICS
    assert produced == pb.ProduceResponse(topic="orders", partition=3, base_offset=300)
    assert [r.record_batches for r in harness.backend.produced] == [b"\x01" * 300]


@pytest.mark.parametrize("topic", list(ERRORS))
async def test_typed_errors_become_exact_statuses(
    harness: Harness, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    _, status, message = ERRORS[topic]
    with trio.fail_after(SAFETY):
        with pytest.raises(GRPCError) as raised:
            await harness.call("fetch", pb.ConsumeRequest(topic=topic))
    assert (raised.value.status, raised.value.message) == (status, message)
    logged = [
        (r.levelname, r.getMessage(), r.exc_info is not None)
        for r in caplog.records
        if r.levelno >= logging.INFO
    ]
    if topic == "bug":
        # A bug is logged once, with its traceback; the client learns nothing of it.
        assert logged == [("ERROR", "/sentinel.v1.Sentinel/Fetch failed", True)]
    else:
        assert logged == []


async def test_unimplemented_method_is_unimplemented(harness: Harness) -> None:
    with trio.fail_after(SAFETY), pytest.raises(GRPCError) as raised:
        await harness.call("list_groups", pb.ListGroupsRequest())
    assert raised.value.status is Status.UNIMPLEMENTED


async def test_connection_count_goes_up_and_down(harness: Harness) -> None:
    with trio.fail_after(SAFETY):
        first = await harness.open_channel()
        await harness.counts.wait_for(1)
        second = await harness.open_channel()
        await harness.counts.wait_for(2)
        assert harness.front_end.statistics().connections == 2
        await harness.close_channel(first)
        await harness.counts.wait_for(1)
        await harness.close_channel(second)
        await harness.counts.wait_for(0)
    assert harness.counts.history == [1, 2, 1, 0]
    assert harness.front_end.statistics().connections == 0


# -- request size limit -------------------------------------------------------------------


@pytest.mark.parametrize("body_bytes", [2_000, 10_000_000])
async def test_oversized_request_is_rejected_and_the_server_keeps_serving(
    nursery: trio.Nursery, body_bytes: int, caplog: pytest.LogCaptureFixture
) -> None:
    h = await start_harness(nursery, max_message_bytes=1024)
    request = pb.ProduceRequest(topic="orders", record_batches=b"\x00" * body_bytes)
    size = len(bytes(request))
    with trio.fail_after(SAFETY):
        channel = await h.open_channel()
        with pytest.raises(GRPCError) as raised:
            await h.call("produce", request, channel=channel)
        assert raised.value.status is Status.RESOURCE_EXHAUSTED
        assert raised.value.message == f"request message of {size} bytes exceeds the limit of 1024 bytes"
        assert h.backend.produced == []  # never decoded, never reached Trio
        # Same connection, then a new one: both still served.
        small = pb.ProduceRequest(topic="orders", record_batches=b"\x00" * 100)
        assert (await h.call("produce", small, channel=channel)).base_offset == 100
        assert (await h.call("produce", small)).base_offset == 100
        await h.close_channel(channel)
    assert problems(caplog) == []


async def test_request_at_the_limit_is_accepted(nursery: trio.Nursery) -> None:
    request = pb.ProduceRequest(topic="orders", record_batches=b"\x00" * 1000)
    h = await start_harness(nursery, max_message_bytes=len(bytes(request)))
    with trio.fail_after(SAFETY):
        assert (await h.call("produce", request)).base_offset == 1000


def test_limit_below_the_grpc_prefix_is_refused() -> None:
    with pytest.raises(ValueError, match="max_message_bytes must be at least 5, not 4"):
        GrpcFrontEnd([], HOST, 0, max_message_bytes=4)


# -- bad clients ----------------------------------------------------------------------------

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# An HTTP/2 frame of a type nobody defined (0xAB), which the spec says to ignore.
UNKNOWN_FRAME = b"\x00\x00\x03\xab\x00\x00\x00\x00\x00abc"


async def read_until_closed(stream: trio.SocketStream) -> bytes:
    received = b""
    while True:
        try:
            data = await stream.receive_some()
        except trio.BrokenResourceError:  # reset by the server
            return received
        if not data:
            return received
        received += data


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        bytes(range(256)) * 8,
        # A valid preface, then a DATA frame on stream 0 (a connection error in HTTP/2).
        HTTP2_PREFACE + SettingsFrame(0).serialize() + b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x",
    ],
    ids=["http1", "binary", "bad-frame"],
)
async def test_garbage_drops_that_connection_only(
    harness: Harness, garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(SAFETY):
        good = await harness.open_channel()
        await harness.counts.wait_for(1)
        stream = await trio.open_tcp_stream(HOST, harness.port)
        await harness.counts.wait_for(2)
        await stream.send_all(garbage)
        await read_until_closed(stream)
        await stream.aclose()
        await harness.counts.wait_for(1)
        topics = await harness.call("list_topics", pb.ListTopicsRequest(), channel=good)
    assert [t.name for t in topics.topics] == TOPICS
    assert problems(caplog) == []


@pytest.mark.parametrize("sent", [b"", HTTP2_PREFACE[:10]], ids=["silent", "partial-preface"])
async def test_a_connection_without_a_handshake_is_dropped_after_the_timeout(
    nursery: trio.Nursery, sent: bytes
) -> None:
    h = await start_harness(nursery, handshake_timeout=0.3)
    with trio.fail_after(SAFETY):
        stream = await trio.open_tcp_stream(HOST, h.port)
        await h.counts.wait_for(1)
        await stream.send_all(sent)
        await read_until_closed(stream)  # only the server's SETTINGS, then the close
        await stream.aclose()
        await h.counts.wait_for(0)
        # A real client, slower than the timeout between its calls, is not affected.
        channel = await h.open_channel()
        await trio.sleep(0.6)
        topics = await h.call("list_topics", pb.ListTopicsRequest(), channel=channel)
        await h.close_channel(channel)
    assert [t.name for t in topics.topics] == TOPICS


def test_handshake_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="handshake_timeout must be positive"):
        GrpcFrontEnd([], HOST, 0, handshake_timeout=0)


async def receive_until(stream: trio.SocketStream, marker: bytes, received: bytes = b"") -> bytes:
    while marker not in received:
        data = await stream.receive_some()
        assert data, "the server closed the connection"
        received += data
    return received


def ping(opaque_data: bytes) -> bytes:
    frame = PingFrame(0)
    frame.opaque_data = opaque_data
    return frame.serialize()


async def test_unknown_frame_types_are_ignored(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(SAFETY):
        stream = await trio.open_tcp_stream(HOST, harness.port)
        await harness.counts.wait_for(1)
        await stream.send_all(
            HTTP2_PREFACE + SettingsFrame(0).serialize() + UNKNOWN_FRAME + ping(b"first...")
        )
        # h2 queues a PING ACK while parsing, before grpclib handles the frames: the first
        # answer would come back even if the unknown frame then killed the connection.
        received = await receive_until(stream, b"first...")
        await stream.send_all(ping(b"second.."))
        await receive_until(stream, b"second..", received)  # the connection survived
        await stream.aclose()
        await harness.counts.wait_for(0)
    assert problems(caplog) == []


@pytest.mark.parametrize("how", ["reset", "disconnect"])
async def test_client_vanishing_mid_stream_cancels_the_trio_task(
    harness: Harness, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    received: list[int] = []

    async def consume_then_vanish() -> None:
        channel = Channel(HOST, harness.port)
        first = asyncio.Event()

        async def consume() -> None:
            stub = pb.SentinelStub(channel)
            async for response in stub.consume(pb.ConsumeRequest(topic="t", offset=7, follow=True)):
                received.append(response.next_offset)
                first.set()

        task = asyncio.get_running_loop().create_task(consume())
        await first.wait()
        await harness.client.portal.call(harness.backend.entered.wait)  # 2nd message blocks in Trio
        if how == "disconnect":
            channel.close()  # the TCP connection goes away under the stream
        task.cancel()  # "reset": the call is cancelled, grpclib sends RST_STREAM
        try:
            await task
        except BaseException:  # CancelledError or StreamTerminatedError: either is fine here
            pass
        channel.close()

    with trio.fail_after(SAFETY):
        await harness.on_client(consume_then_vanish)
        await harness.backend.cancelled.wait()
        await harness.counts.wait_for(0)
        await wait_rpcs_finished(harness)
    assert received == [8]
    assert problems(caplog) == []


async def test_client_deadline_cancels_the_trio_task(harness: Harness) -> None:
    with trio.fail_after(SAFETY):
        with pytest.raises(TimeoutError):
            await harness.call("fetch", pb.ConsumeRequest(topic="block"), timeout=0.2)
        await harness.backend.cancelled.wait()


# -- flow control ------------------------------------------------------------------------

# grpclib's default HTTP/2 windows (stream and connection): what the client lets the server
# send before it reads.
CLIENT_WINDOW = 4 * 1024 * 1024


async def test_slow_consumer_back_pressures_the_streaming_handler(harness: Harness) -> None:
    message_bytes = 60_000
    wire_bytes = len(
        bytes(pb.ConsumeResponse(topic="firehose", record_batches=b"x" * message_bytes, next_offset=9))
    )
    wire_bytes += 5  # gRPC prefix
    in_window = CLIENT_WINDOW // wire_bytes
    # While the client reads nothing after its first message, the server can send at most a
    # window (plus that first message, which reading acknowledged); the generator has then
    # produced one more message, stuck in send_message.
    most_while_paused = in_window + 2
    total = 3 * in_window
    window_filled = trio.Event()
    harness.service.stream_target = (in_window, window_filled)
    resume = trio.Event()

    async def read_slowly() -> int:
        count = 0
        async with Channel(HOST, harness.port) as channel:
            stub = pb.SentinelStub(channel)
            request = pb.ConsumeRequest(topic="firehose", offset=total, max_bytes=message_bytes)
            async for response in stub.consume(request):
                count += 1
                assert response.next_offset == count
                if count == 1:
                    await harness.client.portal.call(resume.wait)
        return count

    async def let_the_server_loop_run() -> None:
        # Many loop iterations: a producer that is not blocked would move on meanwhile.
        for _ in range(200):
            await asyncio.sleep(0)

    with trio.fail_after(SAFETY):
        async with trio.open_nursery() as nursery:
            counts: list[int] = []

            async def client() -> None:
                counts.append(await harness.on_client(read_slowly))

            nursery.start_soon(client)
            await window_filled.wait()
            await harness.front_end.bridge.run_asyncio(let_the_server_loop_run)
            produced_while_paused = harness.service.stream_produced
            resume.set()
    assert in_window <= produced_while_paused <= most_while_paused
    assert counts == [total]
    assert harness.service.stream_produced == total


# -- shutdown -------------------------------------------------------------------------------


async def test_shutdown_lets_an_in_flight_unary_call_finish(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    scope = trio.CancelScope()
    h = await start_harness(nursery, scope=scope, grace_period=SAFETY)
    results: list[Any] = []
    with trio.fail_after(SAFETY / 2):  # well under the grace period: the call's end ends the drain
        in_flight = await h.open_channel()
        other = await h.open_channel()
        await h.counts.wait_for(2)

        async def slow_call() -> None:
            results.append(
                await h.call("fetch", pb.ConsumeRequest(topic="block", offset=1), channel=in_flight)
            )

        async with trio.open_nursery() as calls:
            calls.start_soon(slow_call)
            await h.backend.entered.wait()
            scope.cancel()  # what node shutdown does
            await h.front_end.wait_draining()
            # New calls on a live connection are refused; new connections are not accepted.
            with pytest.raises(GRPCError) as raised:
                await h.call("list_topics", pb.ListTopicsRequest(), channel=other)
            assert (raised.value.status, raised.value.message) == (Status.UNAVAILABLE, SHUTTING_DOWN_MESSAGE)
            with pytest.raises(ConnectionRefusedError):
                await h.call("list_topics", pb.ListTopicsRequest())
            h.backend.release.set()
        await h.stopped.wait()  # drained, GOAWAY sent, connections closed, bridge stopped
    assert results == [pb.ConsumeResponse(topic="block", next_offset=2)]
    assert not h.backend.cancelled.is_set()
    assert h.front_end.statistics().connections == 0
    assert problems(caplog) == []


async def test_shutdown_fails_calls_that_outlast_the_grace_period(nursery: trio.Nursery) -> None:
    grace = 0.3
    scope = trio.CancelScope()
    h = await start_harness(nursery, scope=scope, grace_period=grace)
    errors: list[GRPCError] = []

    async def slow_call() -> None:
        try:
            await h.call("fetch", pb.ConsumeRequest(topic="block"))
        except GRPCError as exc:
            errors.append(exc)

    with trio.fail_after(SAFETY):
        async with trio.open_nursery() as inner:
            inner.start_soon(slow_call)
            await h.backend.entered.wait()
            started = time.monotonic()
            scope.cancel()
            await h.backend.cancelled.wait()  # the Trio side of the call was cancelled
        waited = time.monotonic() - started
        await h.stopped.wait()
    assert [(e.status, e.message) for e in errors] == [(Status.UNAVAILABLE, SHUTTING_DOWN_MESSAGE)]
    assert waited >= grace * 0.9  # it did wait for the grace period first


async def test_shutdown_ends_streaming_calls_at_once(nursery: trio.Nursery) -> None:
    scope = trio.CancelScope()
    h = await start_harness(nursery, scope=scope, grace_period=SAFETY)
    outcome: list[Any] = []

    async def follow() -> None:
        async with Channel(HOST, h.port) as channel:
            stub = pb.SentinelStub(channel)
            try:
                async for response in stub.consume(pb.ConsumeRequest(topic="t", follow=True)):
                    outcome.append(response.next_offset)
            except GRPCError as exc:
                outcome.append((exc.status, exc.message))

    with trio.fail_after(SAFETY / 2):  # far less than the grace period
        async with trio.open_nursery() as inner:
            inner.start_soon(h.on_client, follow)
            await h.backend.entered.wait()
            scope.cancel()
        await h.backend.cancelled.wait()
        await h.stopped.wait()
    assert outcome == [1, (Status.UNAVAILABLE, SHUTTING_DOWN_MESSAGE)]


async def test_close_shuts_down_gracefully_and_run_returns(nursery: trio.Nursery) -> None:
    h = await start_harness(nursery)
    with trio.fail_after(SAFETY):
        await h.open_channel()
        await h.counts.wait_for(1)
        h.front_end.close()
        await h.front_end.wait_draining()
        await h.stopped.wait()
    assert h.counts.current == 0
    assert h.front_end.statistics().draining
    assert not h.front_end.bridge.running


async def test_port_in_use_fails_start(nursery: trio.Nursery) -> None:
    h = await start_harness(nursery)
    other = GrpcFrontEnd([], HOST, h.port)
    with trio.fail_after(SAFETY), pytest.raises(OSError, match="address already in use"):
        await nursery.start(other.run)
    assert not other.bridge.running
