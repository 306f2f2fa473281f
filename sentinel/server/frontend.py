"""The gRPC front end: a grpclib server on the bridge's asyncio loop, run from Trio.

:class:`GrpcFrontEnd` is what the node supervisor starts (``port = await
nursery.start(front_end.run)``). Services are grpclib servables (``SentinelBase``
subclasses) whose handlers run on the asyncio loop and enter Trio through the bridge's
:class:`~sentinel.server.bridge.TrioPortal`.

grpclib leaves gaps a production server must close; this module closes them on top of
grpclib's own classes (``Server``, ``Handler``, ``H2Protocol``). Every grpclib/h2 internal it
relies on is reached through :mod:`sentinel.server.compat`, which checks the versions.
Request bodies are decoded by :class:`~sentinel.server.codec.StrictProtoCodec`: a body
that is not valid protobuf is ``INVALID_ARGUMENT``.

* **Request size limit, enforced before buffering.** grpclib reads a message as
  ``recv_data(5)`` (the gRPC prefix: compressed flag, 4-byte big-endian length) followed by
  ``recv_data(length)``, and that second read keeps acknowledging DATA (reopening the
  client's flow-control window) until ``length`` bytes are buffered: up to 4 GiB. Each
  accepted HTTP/2 stream's ``recv_data`` is wrapped (in :class:`_Handler.accept`) so a read
  larger than ``max_message_bytes`` fails with ``RESOURCE_EXHAUSTED`` before a byte of the
  body is acknowledged; until then the client can have sent at most one flow-control
  window. (A codec wrapper would be too late: ``decode`` sees the buffered body.)
* **Typed errors.** Every handler is wrapped: whatever it raises becomes the status
  :mod:`sentinel.server.status` gives it; bugs are logged once with a traceback.
* **Clients that vanish.** A reset stream or a lost connection cancels the handler task,
  which cancels the Trio call it waits for (see the portal); it is logged at debug level
  (grpclib's own info-level "Request was cancelled" / "Deadline exceeded" lines are
  demoted to debug too).
* **Garbage on the port.** h2 rejects malformed bytes and grpclib drops the connection;
  anything else that escapes ``data_received`` also just drops that connection. Frames of
  unknown type are ignored, as HTTP/2 requires (grpclib would raise on them).
* **Connection tracking and graceful shutdown** (grpclib's ``Server.close`` cancels every
  handler at once and leaves connections open): on cancellation or :meth:`close`, stop
  listening; answer new calls ``UNAVAILABLE``; end server-streaming calls now (a
  follow-mode consume never ends by itself) with ``UNAVAILABLE``, so the client resumes
  elsewhere; let unary calls finish for up to ``grace_period``; fail the rest with
  ``UNAVAILABLE``; then, per connection, PING and wait for the ACK (grpclib's client drops
  every stream on GOAWAY, even one whose response it has received but not yet delivered),
  send GOAWAY and close (abort what does not close); last, stop the bridge. Bounded by
  ``grace_period`` plus a few fixed timeouts.
* **Back-pressure.** HTTP/2 flow-control windows stay at grpclib's 4 MiB defaults, so a
  server-streaming handler's ``send_message`` blocks while a slow client does not read.
* **Nothing kept per call.** However a call ends (answered, failed, deadline, reset by the
  client before or after its handler started, connection lost), its grpclib stream and
  handler task, h2's stream and the bridge's Trio task are released when its task ends,
  and the flow-control credit of request bytes nobody read goes back to the client (see
  :class:`_Handler`); h2 remembers how at most :data:`CLOSED_STREAMS_REMEMBERED` closed
  streams per connection ended. :meth:`GrpcFrontEnd.call_state` counts what is held.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import h2.errors
import h2.events
import h2.exceptions
import trio
from grpclib.const import Handler as MethodHandler
from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from grpclib.protocol import H2Protocol
from grpclib.server import Handler, Server

from sentinel.server.bridge import AsyncioThread, TrioPortal, raise_sole_exception
from sentinel.server.codec import StrictProtoCodec
from sentinel.server.compat import (
    closed_stream_counts,
    default_status_details_codec,
    event_processors,
    forget_handler_task,
    h2_connection,
    handler_task,
    handler_task_counts,
    limit_closed_streams,
    new_connection_handler,
    release_closed_streams,
    stream_count,
)
from sentinel.server.status import RpcStatus, status_of

if TYPE_CHECKING:
    import grpclib.protocol
    import grpclib.server
    from grpclib._typing import IServable

log = logging.getLogger(__name__)

#: gRPC's own default maximum receive message size; also grpclib's default stream window,
#: so a maximal request fits in one window.
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024

#: How long in-flight unary calls may take to finish once shutdown starts.
DEFAULT_GRACE_PERIOD = 5.0
# A connection must send the HTTP/2 preface and its first frame header within this long, or
# it is dropped: a peer that connects and sends nothing (or trickles bytes) holds no slot.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0

#: The gRPC length-prefixed message header: 1-byte compressed flag + 4-byte length.
GRPC_PREFIX_BYTES = 5

#: After the grace period, how long failed calls get to send their UNAVAILABLE trailers;
#: how long a client gets to answer the PING sent before GOAWAY; how long closing
#: connections get to flush, and grpclib's handlers to finish, before they are cut.
_FAIL_TIMEOUT = 1.0
_PING_TIMEOUT = 1.0
_CLOSE_TIMEOUT = 1.0
#: The whole shutdown's deadline beyond the grace period: the steps above plus slack, so a
#: wedged loop cannot hold node shutdown forever.
_SHUTDOWN_MARGIN = _FAIL_TIMEOUT + _PING_TIMEOUT + 2 * _CLOSE_TIMEOUT + 1.0
#: Opaque data of the PING sent before GOAWAY (HTTP/2 PING payloads are 8 bytes).
_GOODBYE_PING = b"goodbye!"
#: What an HTTP/2 client sends before its first frame.
_CLIENT_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: An HTTP/2 frame header: 24-bit length, type, flags, stream id.
_FRAME_HEADER_BYTES = 9
# The preface and the header of the first frame (the client's SETTINGS): a handshake.
_HANDSHAKE_BYTES = len(_CLIENT_PREFACE) + _FRAME_HEADER_BYTES

SHUTTING_DOWN_MESSAGE = "the server is shutting down"

#: How many closed streams per connection h2 remembers the ending of (it keeps 65,536,
#: about 9 MB per long-lived connection). The record only matters for frames the client
#: sent before it learned a stream was reset (at most one round trip's worth); with at most
#: 100 concurrent streams per connection, a client cannot close this many in that time.
CLOSED_STREAMS_REMEMBERED = 1024

# The exceptions that mean "the peer is gone": nothing left to answer.
_PEER_GONE = (StreamTerminatedError, h2.exceptions.StreamClosedError, ConnectionError)


@attrs.frozen
class FrontEndStatistics:
    """A point-in-time view of the front end (a source for Prometheus gauges)."""

    connections: int
    active_rpcs: int
    streaming_rpcs: int
    draining: bool


@attrs.frozen
class CallState:
    """What the front end holds for calls, summed over its open connections. With no call
    in flight every count is zero, except ``closed_stream_records``, which stays within
    :data:`CLOSED_STREAMS_REMEMBERED` per connection."""

    #: Handler tasks grpclib lists (running, or finished and not yet dropped).
    handler_tasks: int
    #: Cancelled handler tasks grpclib waits for at close (finished ones not yet dropped).
    cancelled_tasks: int
    #: HTTP/2 streams in grpclib's stream tables.
    streams: int
    #: h2's stream objects.
    h2_streams: int
    #: h2's records of how a closed stream ended.
    closed_stream_records: int
    #: Calls inside the error/shutdown guard, and those being failed by a shutdown.
    rpcs: int
    failing: int


class _DemoteCancellationLogs(logging.Filter):
    """grpclib logs every client cancellation and deadline at info level: routine events
    for a streaming server, logged here at debug instead.

    A deadline that passes after grpclib read the headers but before it started the
    handler (a few milliseconds, or a pause of the loop's thread) grpclib logs as an error
    with a traceback ("Timeout occurred"): any client could fill the log with them, and a
    handler that keeps records (a test's) keeps the call's stream through the traceback.
    Guarded handlers turn their own ``TimeoutError`` into a status, so that is the only way
    grpclib logs this message here: also debug, without the traceback."""

    _MESSAGES = frozenset({"Request was cancelled: %s", "Deadline exceeded"})
    _DEADLINE_BEFORE_START = "Timeout occurred"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and record.msg in self._MESSAGES:
            log.debug("grpclib: %s", record.getMessage())
            return False
        if record.msg == self._DEADLINE_BEFORE_START and record.exc_info is not None:
            error = record.exc_info[1]
            if isinstance(error, TimeoutError) and error.args == ("Deadline exceeded",):
                log.debug("grpclib: the deadline passed before the handler started")
                return False
        return True


_GRPCLIB_SERVER_LOG = logging.getLogger("grpclib.server")
if not any(isinstance(f, _DemoteCancellationLogs) for f in _GRPCLIB_SERVER_LOG.filters):
    _GRPCLIB_SERVER_LOG.addFilter(_DemoteCancellationLogs())


def _limit_reads(
    recv_data: Callable[[int], Coroutine[Any, Any, bytes]], limit: int
) -> Callable[[int], Coroutine[Any, Any, bytes]]:
    """Wrap an HTTP/2 stream's ``recv_data`` so a message body above ``limit`` is refused
    before it is read. grpclib asks for the prefix (5 bytes, never above a limit, which is
    at least 5) and then exactly the announced body length."""

    async def recv_data_within_limit(size: int) -> bytes:
        if size > limit:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"request message of {size} bytes exceeds the limit of {limit} bytes",
            )
        return await recv_data(size)

    return recv_data_within_limit


class _Handler(Handler):
    """grpclib's per-connection handler, with the request size limit installed on every
    stream it accepts, and every call's state released as soon as its task ends.

    grpclib frees a call's HTTP/2 stream (its entry in the connection's stream table, and
    the flow-control credit of request bytes nobody read) in a ``finally`` of the
    handler coroutine. A task cancelled before its first step never runs that coroutine:
    a client that resets a stream right after sending it (or a connection lost with calls
    not yet started) left the stream, its buffers and its flow-control credit behind for
    the connection's life. So the release runs again when the task ends (the second run
    is a no-op), the finished task leaves grpclib's tables at once instead of at
    grpclib's next tenth request, and h2 drops its state of the closed stream.
    """

    def __init__(self, *args: Any, max_message_bytes: int) -> None:
        super().__init__(*args)
        self._max_message_bytes = max_message_bytes

    def accept(
        self,
        stream: grpclib.protocol.Stream,
        headers: list[tuple[str, str]],
        release_stream: Callable[[], Any],
    ) -> None:
        stream.recv_data = _limit_reads(  # type: ignore[method-assign,assignment]
            stream.recv_data, self._max_message_bytes
        )
        release = _ReleaseOnce(release_stream)
        super().accept(stream, headers, release)
        task = handler_task(self, stream)
        assert task is not None, "grpclib's accept starts a task per stream"
        task.add_done_callback(functools.partial(self._call_ended, stream, release))

    def cancel(self, stream: grpclib.protocol.Stream) -> None:
        # grpclib's own cancel assumes the task is still listed; a reset that arrives
        # after the call ended (the release came first) has nothing left to cancel.
        if handler_task(self, stream) is not None:
            super().cancel(stream)

    def _call_ended(
        self, stream: grpclib.protocol.Stream, release: _ReleaseOnce, task: asyncio.Task[None]
    ) -> None:
        try:
            release()
        except Exception:  # the connection is being torn down: nothing left to give back
            log.debug("releasing stream %s after its call failed", stream.id, exc_info=True)
        forget_handler_task(self, stream, task)
        release_closed_streams(h2_connection(stream.connection))


class _ReleaseOnce:
    """grpclib's ``release_stream`` for one stream, made idempotent (it is not: a second
    call fails on the stream table)."""

    __slots__ = ("_release",)

    def __init__(self, release: Callable[[], Any]) -> None:
        self._release: Callable[[], Any] | None = release

    def __call__(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


def _ignore_event(event: h2.events.Event) -> None:
    pass


class _Protocol(H2Protocol):
    """grpclib's connection protocol, reporting to the server when it opens and closes,
    ignoring unknown frame types (as HTTP/2 requires; grpclib raises on them), and able to
    close gracefully."""

    def __init__(self, handler: Handler, config: Any, h2_config: Any, server: _AsyncioServer) -> None:
        super().__init__(handler, config, h2_config)
        self._owner = server
        self._transport: asyncio.Transport | None = None
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._received = 0  # bytes, counted until the handshake is complete
        self._goodbye_acked: asyncio.Event | None = None
        # Frame boundaries, followed to refuse an oversized frame from its header (see
        # _oversized_frame): bytes until the next frame header, and a header split by a read.
        self._frame_skip = len(_CLIENT_PREFACE)
        self._frame_header = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._handshake_timer = asyncio.get_running_loop().call_later(
            self._owner.handshake_timeout, self._handshake_timed_out
        )
        super().connection_made(transport)
        limit_closed_streams(h2_connection(self.connection), CLOSED_STREAMS_REMEMBERED)
        processors = event_processors(self.processor)
        processors[h2.events.UnknownFrameReceived] = _ignore_event
        process_ping_ack = processors[h2.events.PingAckReceived]

        def ping_ack_received(event: h2.events.PingAckReceived) -> None:
            process_ping_ack(event)
            if event.ping_data == _GOODBYE_PING and self._goodbye_acked is not None:
                self._goodbye_acked.set()

        processors[h2.events.PingAckReceived] = ping_ack_received
        self._owner._connection_made(self)

    def _handshake_timed_out(self) -> None:
        log.debug("dropping connection from %s: no HTTP/2 handshake in time", self._peer())
        self.abort()

    def data_received(self, data: bytes) -> None:
        if self._handshake_timer is not None:
            self._received += len(data)
            if self._received >= _HANDSHAKE_BYTES:
                self._handshake_timer.cancel()
                self._handshake_timer = None
        try:
            super().data_received(data)
            # After h2, so a connection h2 already refused (a bad preface) is left alone.
            if not self.connection.is_closing():
                oversized = self._oversized_frame(data)
                if oversized is not None:
                    self._refuse_frame(oversized)
        except Exception:
            # h2 reports malformed bytes as ProtocolError, which grpclib already handles;
            # anything else (e.g. an HTTP/2 frame type grpclib has no handler for) is
            # equally the peer's problem: drop this connection, keep serving the others.
            log.debug("dropping connection from %s: cannot handle its input", self._peer(), exc_info=True)
            self.abort()

    def _oversized_frame(self, data: bytes) -> int | None:
        """The length of a frame announced in ``data`` longer than h2 accepts, else None.

        h2 checks a frame's length against SETTINGS_MAX_FRAME_SIZE only once the whole
        frame has arrived, so a header announcing 16 MiB would make the server wait for and
        buffer it all. Following the frame headers here (a few operations per frame) refuses
        it as soon as its header arrives, as RFC 9113 section 4.2 requires."""
        if self._frame_header:
            data = self._frame_header + data
            self._frame_header = b""
        position, end = self._frame_skip, len(data)
        limit = h2_connection(self.connection).max_inbound_frame_size
        while position + _FRAME_HEADER_BYTES <= end:
            length = int.from_bytes(data[position : position + 3], "big")
            if length > limit:
                return length
            position += _FRAME_HEADER_BYTES + length
        if position > end:
            self._frame_skip = position - end
        else:
            self._frame_skip = 0
            self._frame_header = data[position:]
        return None

    def _refuse_frame(self, length: int) -> None:
        """GOAWAY with FRAME_SIZE_ERROR, then close."""
        log.debug("dropping connection from %s: frame of %d bytes announced", self._peer(), length)
        try:
            h2_connection(self.connection).close_connection(
                error_code=h2.errors.ErrorCodes.FRAME_SIZE_ERROR,
                additional_data=f"frame of {length} bytes exceeds the maximum frame size".encode(),
            )
            self.connection.flush()
        except h2.exceptions.ProtocolError:  # the h2 connection is already closed
            pass
        self.processor.close("frame too large")

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        try:
            super().connection_lost(exc)
        finally:
            if self._goodbye_acked is not None:
                self._goodbye_acked.set()  # nobody left to answer the PING
            self._owner._connection_lost(self)

    def _peer(self) -> Any:
        return None if self._transport is None else self._transport.get_extra_info("peername")

    async def close_gracefully(self) -> None:
        """PING, wait (bounded) for the ACK, then GOAWAY and close.

        The ACK proves the client has taken in every frame sent before it, including the
        last responses. It matters: grpclib's client ends every stream of a connection as
        soon as it processes a GOAWAY, even a stream whose response arrived in the same
        read but was not yet handed to the caller.
        """
        connection = self.connection
        if connection.is_closing():
            return
        self._goodbye_acked = asyncio.Event()
        try:
            h2_connection(connection).ping(_GOODBYE_PING)
            connection.flush()
        except h2.exceptions.ProtocolError:  # the h2 connection is already closed
            pass
        else:
            try:
                await asyncio.wait_for(self._goodbye_acked.wait(), _PING_TIMEOUT)
            except TimeoutError:
                log.debug("no PING ACK from %s before closing", self._peer())
        self.goaway_and_close()

    def goaway_and_close(self) -> None:
        """Tell the client no more streams will be served (GOAWAY, NO_ERROR, naming the last
        stream processed), then close after the write buffer drains."""
        connection = self.connection
        if connection.is_closing():
            return
        try:
            h2_connection(connection).close_connection()
            connection.flush()
        except h2.exceptions.ProtocolError:  # the h2 connection is already closed
            pass
        self.processor.close(SHUTTING_DOWN_MESSAGE)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class _GuardedService:
    """A servable whose every method runs inside the server's guard (error mapping,
    in-flight tracking, shutdown)."""

    def __init__(self, service: IServable, server: _AsyncioServer) -> None:
        self._mapping = {
            name: MethodHandler(
                server._guard(handler.func, name, handler.cardinality.server_streaming),
                handler.cardinality,
                handler.request_type,
                handler.reply_type,
            )
            for name, handler in service.__mapping__().items()
        }

    def __mapping__(self) -> dict[str, MethodHandler]:
        return self._mapping


class _AsyncioServer(Server):
    """grpclib's ``Server`` plus connection tracking, the request size limit, error
    mapping and graceful shutdown. Lives on the bridge's loop: every method runs there."""

    def __init__(
        self,
        services: Sequence[IServable],
        *,
        max_message_bytes: int,
        on_connections_changed: Callable[[int], None],
        on_draining: Callable[[], None],
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    ) -> None:
        self._max_message_bytes = max_message_bytes
        self.handshake_timeout = handshake_timeout
        self._on_connections_changed = on_connections_changed
        self._on_draining = on_draining
        self._connections: set[_Protocol] = set()
        # Handler tasks in flight (the guard registers them): task -> server-streaming.
        self._rpcs: dict[asyncio.Task[Any], bool] = {}
        self.streaming_rpcs = 0
        self._failing: set[asyncio.Task[Any]] = set()
        self._rpcs_done: asyncio.Event | None = None
        self._connections_closed: asyncio.Event | None = None
        self.draining = False
        self.port = 0
        super().__init__(
            [_GuardedService(service, self) for service in services],
            codec=StrictProtoCodec(),
            status_details_codec=default_status_details_codec(),
        )

    @property
    def listening(self) -> bool:
        return self._server is not None

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    @property
    def active_rpcs(self) -> int:
        return len(self._rpcs)

    def call_state(self) -> CallState:
        handler_tasks = cancelled_tasks = streams = h2_streams = closed_records = 0
        for protocol in self._connections:
            running, cancelled = handler_task_counts(protocol.handler)
            handler_tasks += running
            cancelled_tasks += cancelled
            streams += stream_count(protocol.processor)
            held, closed = closed_stream_counts(h2_connection(protocol.connection))
            h2_streams += held
            closed_records += closed
        return CallState(
            handler_tasks=handler_tasks,
            cancelled_tasks=cancelled_tasks,
            streams=streams,
            h2_streams=h2_streams,
            closed_stream_records=closed_records,
            rpcs=len(self._rpcs),
            failing=len(self._failing),
        )

    async def start_serving(self, host: str, port: int) -> _AsyncioServer:
        await self.start(host, port)
        assert self._server is not None
        # With port 0 and a host that resolves to several addresses, each socket gets its
        # own port: report the first.
        self.port = self._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    # -- grpclib hooks ------------------------------------------------------------------

    def _protocol_factory(self) -> H2Protocol:
        handler, config, h2_config = new_connection_handler(
            self, _Handler, max_message_bytes=self._max_message_bytes
        )
        return _Protocol(handler, config, h2_config, self)

    def _connection_made(self, protocol: _Protocol) -> None:
        self._connections.add(protocol)
        self._on_connections_changed(len(self._connections))

    def _connection_lost(self, protocol: _Protocol) -> None:
        self._connections.discard(protocol)
        self._on_connections_changed(len(self._connections))
        if not self._connections and self._connections_closed is not None:
            self._connections_closed.set()

    def _guard(
        self,
        func: Callable[[grpclib.server.Stream[Any, Any]], Coroutine[Any, Any, None]],
        method_name: str,
        streaming: bool,
    ) -> Callable[[grpclib.server.Stream[Any, Any]], Coroutine[Any, Any, None]]:
        rpcs = self._rpcs
        failing = self._failing

        async def guarded(stream: grpclib.server.Stream[Any, Any]) -> None:
            task = asyncio.current_task()
            assert task is not None
            rpcs[task] = streaming
            self.streaming_rpcs += streaming
            # The call is over when grpclib's task is: it sends the trailers after we return.
            task.add_done_callback(self._rpc_finished)
            try:
                if self.draining:
                    raise GRPCError(Status.UNAVAILABLE, SHUTTING_DOWN_MESSAGE)
                await func(stream)
            except asyncio.CancelledError:
                if task not in failing:
                    log.debug("%s cancelled: the client went away or its deadline passed", method_name)
                    raise
                # Shutdown cancelled this call: answer it instead of vanishing.
                task.uncancel()
                await _end_call(stream, RpcStatus(Status.UNAVAILABLE, SHUTTING_DOWN_MESSAGE), method_name)
            except _PEER_GONE as exc:
                log.debug("%s: the client went away (%s)", method_name, exc)
            except Exception as exc:
                status = status_of(exc)
                if not status.expected:
                    log.error("%s failed", method_name, exc_info=exc)
                await _end_call(stream, status, method_name)

        guarded.__qualname__ = f"guarded {method_name}"
        return guarded

    def _rpc_finished(self, task: asyncio.Task[Any]) -> None:
        self.streaming_rpcs -= self._rpcs.pop(task)
        self._failing.discard(task)
        if not self._rpcs and self._rpcs_done is not None:
            self._rpcs_done.set()

    # -- shutdown -------------------------------------------------------------------------

    async def shutdown(self, grace_period: float) -> None:
        """Drain and close; see the module docstring for the order."""
        self.draining = True
        self._on_draining()
        try:
            assert self._server is not None
            self._server.close()  # the listening sockets only
            for task, streaming in list(self._rpcs.items()):
                if streaming:
                    self._fail(task)
            await self._wait_rpcs_done(within=grace_period)
            for task in list(self._rpcs):
                self._fail(task)
            await self._wait_rpcs_done(within=_FAIL_TIMEOUT)
        finally:
            await self._close_connections()

    def _fail(self, task: asyncio.Task[Any]) -> None:
        if task not in self._failing:
            self._failing.add(task)
            task.cancel()

    async def _wait_rpcs_done(self, *, within: float) -> None:
        if not self._rpcs:
            return
        self._rpcs_done = asyncio.Event()
        try:
            await asyncio.wait_for(self._rpcs_done.wait(), within)
        except TimeoutError:
            pass

    async def _close_connections(self) -> None:
        self._connections_closed = asyncio.Event()
        if self._connections:
            await asyncio.gather(*(protocol.close_gracefully() for protocol in list(self._connections)))
        if self._connections:
            try:
                await asyncio.wait_for(self._connections_closed.wait(), _CLOSE_TIMEOUT)
            except TimeoutError:
                log.debug("aborting %d connection(s) that did not close", len(self._connections))
                for protocol in list(self._connections):
                    protocol.abort()
        # grpclib's own close: cancels any handler task still around, marks it closed.
        self.close()
        try:
            await asyncio.wait_for(self.wait_closed(), _CLOSE_TIMEOUT)
        except TimeoutError:
            log.warning("grpclib handlers did not finish after cancellation")


async def _end_call(stream: grpclib.server.Stream[Any, Any], status: RpcStatus, method_name: str) -> None:
    """Send the final status of a call whose handler failed, if the client still listens."""
    try:
        await stream.send_trailing_metadata(
            status=status.status,
            status_message=status.message,
            metadata=status.metadata or None,
        )
    except (ProtocolError, h2.exceptions.ProtocolError, *_PEER_GONE) as exc:
        log.debug("%s: could not send status %s: %s", method_name, status.status.name, exc)


class GrpcFrontEnd:
    """The node's gRPC server: grpclib on an :class:`AsyncioThread`, started from Trio.

    ``services`` are grpclib servables (e.g. ``SentinelBase`` subclasses) whose handlers
    enter Trio through ``front_end.portal``. Build them before the front end with the
    portal of a ``bridge`` you pass in (not yet running: the front end runs it and stops
    it last during shutdown), or let the front end create its own.

    ``on_connections_changed(count)`` is called on the Trio thread whenever a client
    connection opens or closes.
    """

    def __init__(
        self,
        services: Sequence[IServable],
        host: str,
        port: int,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        grace_period: float = DEFAULT_GRACE_PERIOD,
        on_connections_changed: Callable[[int], None] | None = None,
        bridge: AsyncioThread | None = None,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    ) -> None:
        if max_message_bytes < GRPC_PREFIX_BYTES:
            raise ValueError(
                f"max_message_bytes must be at least {GRPC_PREFIX_BYTES}, not {max_message_bytes}"
            )
        if grace_period < 0:
            raise ValueError(f"grace_period must not be negative, not {grace_period}")
        self._services = list(services)
        self._host = host
        self._requested_port = port
        self._max_message_bytes = max_message_bytes
        self._grace_period = grace_period
        if handshake_timeout <= 0:
            raise ValueError(f"handshake_timeout must be positive, not {handshake_timeout}")
        self._handshake_timeout = handshake_timeout
        self._on_connections_changed = on_connections_changed
        self._bridge = AsyncioThread("sentinel-grpc") if bridge is None else bridge
        self._server: _AsyncioServer | None = None
        self._close_requested = trio.Event()
        self._draining = trio.Event()
        self._ran = False
        self.port: int | None = None

    @property
    def portal(self) -> TrioPortal:
        return self._bridge.portal

    @property
    def bridge(self) -> AsyncioThread:
        return self._bridge

    def statistics(self) -> FrontEndStatistics:
        server = self._server
        if server is None:
            return FrontEndStatistics(0, 0, 0, self._draining.is_set())
        # Counters owned by the loop's thread; reading an int from another thread is safe.
        return FrontEndStatistics(
            connections=server.connection_count,
            active_rpcs=server.active_rpcs,
            streaming_rpcs=server.streaming_rpcs,
            draining=server.draining,
        )

    async def call_state(self) -> CallState:
        """What the server holds for calls now (read on its loop); zeros before it runs."""
        server = self._server
        if server is None:
            return CallState(0, 0, 0, 0, 0, 0, 0)

        async def read() -> CallState:
            return server.call_state()

        return await self._bridge.run_asyncio(read)

    def close(self) -> None:
        """Start a graceful shutdown; ``run`` returns when it is done."""
        self._close_requested.set()

    async def wait_draining(self) -> None:
        """Wait until shutdown has begun: no longer listening, new calls refused."""
        await self._draining.wait()

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled or closed, then shut down gracefully (bounded time).

        Reports the bound port with ``task_status.started(port)`` (port 0 picks one).
        """
        if self._ran:
            raise RuntimeError("a GrpcFrontEnd runs once")
        self._ran = True
        bridge = self._bridge
        portal = bridge.portal
        user_callback = self._on_connections_changed

        def on_connections_changed(count: int) -> None:  # on the loop's thread
            if user_callback is not None:
                portal.call_soon(user_callback, count)

        def on_draining() -> None:  # on the loop's thread
            portal.call_soon(self._draining.set)

        async def start_server() -> _AsyncioServer:
            server = _AsyncioServer(
                self._services,
                max_message_bytes=self._max_message_bytes,
                on_connections_changed=on_connections_changed,
                on_draining=on_draining,
                handshake_timeout=self._handshake_timeout,
            )
            self._server = server
            return await server.start_serving(self._host, self._requested_port)

        try:
            async with trio.open_nursery() as nursery:
                # The bridge is shielded from the cancellation that starts our shutdown: the
                # shutdown itself runs on its loop. We stop it last, explicitly.
                bridge_scope = trio.CancelScope(shield=True)
                await nursery.start(self._run_bridge, bridge_scope)
                try:
                    server = await bridge.run_asyncio(start_server)
                    self.port = server.port
                    task_status.started(server.port)
                    await self._close_requested.wait()
                finally:
                    with trio.CancelScope(shield=True) as shutdown_scope:
                        shutdown_scope.deadline = trio.current_time() + self._grace_period + _SHUTDOWN_MARGIN
                        try:
                            # Also after a start cancelled half-way: it may be listening already.
                            if self._server is not None and self._server.listening:
                                await bridge.run_asyncio(self._server.shutdown, self._grace_period)
                        finally:
                            bridge_scope.cancel()
                    if shutdown_scope.cancelled_caught:
                        log.warning("gRPC front end shutdown overran its deadline; the loop was stopped")
        except BaseExceptionGroup as group:
            raise_sole_exception(group)

    async def _run_bridge(
        self, scope: trio.CancelScope, *, task_status: trio.TaskStatus[AsyncioThread]
    ) -> None:
        with scope:
            await self._bridge.run(task_status=task_status)


__all__ = [
    "CLOSED_STREAMS_REMEMBERED",
    "DEFAULT_GRACE_PERIOD",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "SHUTTING_DOWN_MESSAGE",
    "CallState",
    "FrontEndStatistics",
    "GrpcFrontEnd",
]
