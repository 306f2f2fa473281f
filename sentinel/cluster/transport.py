"""Peer links: the Raft traffic between brokers, on plain Trio TCP streams.

One long-lived, bidirectional connection per broker pair: the node with the LOWER id
dials, the other accepts, and both send on it. Each peer has a ``PeerLink`` (the
"Replicator" of the design card) that owns that connection:

* ``send(group, message)`` never blocks the caller (a Raft group's actor): the message
  joins the link's queue, bounded in bytes; over the bound it is DROPPED and counted —
  Raft retransmits what matters, and a group must never stall on a slow peer;
* the sender task drains everything queued into one frame (every group's messages
  coalesced: one syscall, one CRC) up to a byte budget, so ten idle groups' heartbeats
  cost one small frame, not ten writes;
* the receiver task decodes frames and hands each message to ``deliver(group, message)``
  (non-blocking: the node routes it to the group's mailbox);
* a broken connection is closed, the queue kept, and the link redials (or waits for the
  peer to redial) with exponential backoff.

A connection starts with a HELLO each way naming the cluster and both node ids; anything
else (another cluster, an unknown node, a frame that fails its CRC) closes it, logged once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping

import attrs
import trio

from sentinel.cluster import frames
from sentinel.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    SentinelError,
    Unavailable,
)
from sentinel.raft.messages import ENTRY_OVERHEAD, Message

log = logging.getLogger(__name__)

# Queued bytes per peer beyond which messages are dropped (Raft retransmits): a bounded
# buffer for a peer that is down or slow, never unbounded memory.
QUEUE_LIMIT_BYTES = 64 * 1024 * 1024
# Reconnect backoff: first retry soon (a restarting peer is back in about a second),
# doubling to at most a few seconds so a long-dead peer costs little.
BACKOFF_INITIAL_SECONDS = 0.05
BACKOFF_MAX_SECONDS = 2.0
# A connection that does not complete its HELLO in this time is dropped.
HANDSHAKE_TIMEOUT_SECONDS = 5.0
_MESSAGE_OVERHEAD = 80  # header and framing per message, for the queue's byte accounting
# A peer request not answered in this time fails UNAVAILABLE (the caller retries).
REQUEST_TIMEOUT_SECONDS = 10.0
# A request to a peer not connected right now waits this long for the link to (re)connect
# (a node starting up) before it fails UNAVAILABLE: a down peer costs a caller this, not
# the whole request timeout.
CONNECT_GRACE_SECONDS = 0.5

RequestHandler = Callable[[int, int, bytes], Awaitable[bytes]]


@attrs.define
class _Waiter:
    peer: int
    done: trio.Event = attrs.field(factory=trio.Event)
    reply: frames.PeerReply | None = None
    lost: bool = False  # the connection the request went out on broke


# Errors that travel back from a peer request, by name (anything else arrives as itself's
# base class SentinelError with its message).
_ERRORS: dict[str, type[SentinelError]] = {
    cls.__name__: cls
    for cls in (InvalidArgument, NotFound, AlreadyExists, FailedPrecondition, ResourceExhausted, Unavailable)
}


def encode_error(exc: SentinelError) -> bytes:
    leader = exc.leader if isinstance(exc, Unavailable) else None
    return json.dumps({"type": type(exc).__name__, "message": str(exc), "leader": leader}).encode()


def decode_error(payload: bytes) -> SentinelError:
    try:
        doc = json.loads(payload)
        cls = _ERRORS.get(doc["type"], SentinelError)
        if cls is Unavailable:
            return Unavailable(str(doc["message"]), leader=doc.get("leader"))
        return cls(str(doc["message"]))
    except (ValueError, KeyError, TypeError):
        return SentinelError(f"a peer answered with an unreadable error ({len(payload)} bytes)")


@attrs.frozen
class LinkStatistics:
    peer: int
    connected: bool
    frames_sent: int
    bytes_sent: int
    frames_received: int
    bytes_received: int
    connects: int
    dropped_messages: int
    queued_messages: int


class HandshakeError(Exception):
    pass


class _FrameReader:
    """Reads whole frames from a stream, never buffering more than one frame's bound."""

    def __init__(self, stream: trio.abc.ReceiveStream, *, frm: int = 0, to: int = 0) -> None:
        self._stream = stream
        self._buf = bytearray()
        self.bytes_received = 0
        # This connection's memory of the peer's heartbeats (frames.py): it dies with it.
        self._beats = frames.HeartbeatCodec()
        self._frm = frm
        self._to = to

    async def _fill(self, n: int) -> None:
        while len(self._buf) < n:
            chunk = await self._stream.receive_some(max(n - len(self._buf), 65536))
            if not chunk:
                raise trio.BrokenResourceError("peer closed the connection")
            self._buf += chunk
            self.bytes_received += len(chunk)

    async def read_frame(self) -> frames.Frame:
        await self._fill(frames.PREFIX_SIZE)
        length, crc = frames.parse_prefix(bytes(self._buf[: frames.PREFIX_SIZE]))
        await self._fill(frames.PREFIX_SIZE + length)
        body = bytes(self._buf[frames.PREFIX_SIZE : frames.PREFIX_SIZE + length])
        del self._buf[: frames.PREFIX_SIZE + length]
        return frames.decode_body(body, crc, self._beats, frm=self._frm, to=self._to)


def _message_size(m: Message) -> int:
    size = _MESSAGE_OVERHEAD
    for e in m.entries:
        size += len(e.data) + ENTRY_OVERHEAD
    if m.snapshot is not None:
        size += len(m.snapshot.data)
    return size


class PeerLink:
    def __init__(
        self,
        network: PeerNetwork,
        peer: int,
        address: tuple[str, int],
        *,
        queue_limit_bytes: int = QUEUE_LIMIT_BYTES,
    ) -> None:
        self.network = network
        self.peer = peer
        self.address = address
        self.dials = network.node_id < peer
        # Raft messages (group, message), or an encoded request/reply frame (bytes).
        self._queue: list[tuple[int, Message] | bytes] = []
        self._queued_bytes = 0
        self._queue_limit = queue_limit_bytes
        self._wakeup = trio.Event()
        self._connected_event = trio.Event()
        self._accepted_send, self._accepted_receive = trio.open_memory_channel[trio.SocketStream](1)
        self.connected = False
        self.frames_sent = self.bytes_sent = self.frames_received = 0
        self._bytes_received = 0
        self.connects = 0
        self.dropped = 0
        # A newer connection from the peer (it redialed: it saw the old one break before we
        # did) replaces the one being served.
        self._replacement: trio.SocketStream | None = None

    def send(self, group: int, m: Message) -> None:
        size = _message_size(m)
        if self._queued_bytes + size > self._queue_limit:
            self.dropped += 1
            return
        self._queue.append((group, m))
        self._queued_bytes += size
        self._wakeup.set()

    def send_frame(self, frame: bytes) -> None:
        """Queue an encoded request or reply frame (never dropped: requests time out)."""
        self._queue.append(frame)
        self._queued_bytes += len(frame)
        self._wakeup.set()

    def hand_over(self, stream: trio.SocketStream) -> bool:
        """The listener accepted this peer's connection: use it (False if one is pending)."""
        try:
            self._accepted_send.send_nowait(stream)
        except trio.WouldBlock:
            return False
        return True

    def statistics(self) -> LinkStatistics:
        return LinkStatistics(
            peer=self.peer,
            connected=self.connected,
            frames_sent=self.frames_sent,
            bytes_sent=self.bytes_sent,
            frames_received=self.frames_received,
            bytes_received=self._bytes_received,
            connects=self.connects,
            dropped_messages=self.dropped,
            queued_messages=len(self._queue),
        )

    async def run(self) -> None:
        backoff = BACKOFF_INITIAL_SECONDS
        while True:
            try:
                if self._replacement is not None:
                    stream, self._replacement = self._replacement, None
                else:
                    stream = await (self._dial() if self.dials else self._accepted_receive.receive())
            except (
                OSError,
                trio.BrokenResourceError,
                HandshakeError,
                frames.FrameError,
                trio.TooSlowError,
            ) as exc:
                log.debug("peer %d: connect failed: %s", self.peer, exc)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
                continue
            backoff = BACKOFF_INITIAL_SECONDS
            self.connects += 1
            self.connected = True
            self._connected_event.set()
            try:
                await self._serve(stream)
            finally:
                self.connected = False
                self._connected_event = trio.Event()
                self._connection_lost()
                with trio.CancelScope(shield=True):
                    await stream.aclose()
            if self.dials:
                await trio.sleep(backoff)

    async def wait_connected(self) -> None:
        await self._connected_event.wait()

    def _connection_lost(self) -> None:
        """Requests and replies queued for the broken connection are dropped (their callers
        are told now, and a request must not run late on the peer after its caller gave
        up); Raft messages stay queued (Raft retransmits anyway, and order is kept)."""
        frames_queued = [item for item in self._queue if isinstance(item, bytes)]
        if frames_queued:
            self._queue = [item for item in self._queue if not isinstance(item, bytes)]
            self._queued_bytes -= sum(len(f) for f in frames_queued)
        self.network.connection_lost(self.peer)

    async def _dial(self) -> trio.SocketStream:
        host, port = self.address
        stream = await trio.open_tcp_stream(host, port)
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT_SECONDS):
                net = self.network
                await stream.send_all(frames.encode_hello(net.cluster, net.node_id, self.peer))
                net.check_hello(await _FrameReader(stream).read_frame(), expect_from=self.peer)
        except BaseException:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            raise
        return stream

    async def _serve(self, stream: trio.SocketStream) -> None:
        """Send and receive on ``stream`` until either direction fails (or a newer
        connection replaces it); the failure is logged, not raised: the link reconnects."""
        failure: BaseException | None = None

        async def guarded(loop: Callable[[trio.SocketStream], Awaitable[None]]) -> None:
            nonlocal failure
            try:
                await loop(stream)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, frames.FrameError) as exc:
                failure = failure or exc
            nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(guarded, self._receive_loop)
            nursery.start_soon(guarded, self._send_loop)
            if not self.dials:
                nursery.start_soon(self._watch_for_replacement, nursery.cancel_scope)
        if failure is not None:
            log.info("peer %d: connection lost: %s", self.peer, failure)

    async def _receive_loop(self, stream: trio.SocketStream) -> None:
        me = self.network.node_id
        reader = _FrameReader(stream, frm=self.peer, to=me)
        deliver = self.network.deliver
        while True:
            items = await reader.read_frame()
            self._bytes_received = reader.bytes_received
            self.frames_received += 1
            if isinstance(items, frames.Hello):
                raise frames.FrameError(0, "a second hello after the handshake")
            if isinstance(items, frames.PeerRequest):
                self.network.serve_request(self, items)
                continue
            if isinstance(items, frames.PeerReply):
                self.network.resolve(self.peer, items)
                continue
            for group, m in items:
                if m.frm != self.peer or m.to != me:
                    raise frames.FrameError(0, f"message {m!r} does not belong on link {self.peer}")
                deliver(group, m)

    async def _watch_for_replacement(self, scope: trio.CancelScope) -> None:
        self._replacement = await self._accepted_receive.receive()
        log.info("peer %d: replaced by a newer connection", self.peer)
        scope.cancel()

    async def _send_loop(self, stream: trio.SocketStream) -> None:
        beats = frames.HeartbeatCodec()  # what the peer's reader of this connection remembers
        while True:
            if not self._queue:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
            queue = self._queue
            first = queue[0]
            if isinstance(first, bytes):
                del queue[0]
                self._queued_bytes -= len(first)
                data = first
            else:
                # Every Raft message queued, up to the budget, in one frame.
                batch: list[tuple[int, Message]] = []
                size = taken = 0
                while taken < len(queue) and (not batch or size < frames.FRAME_BUDGET_BYTES):
                    item = queue[taken]
                    if isinstance(item, bytes):
                        break
                    batch.append(item)
                    size += _message_size(item[1])
                    taken += 1
                del queue[:taken]
                self._queued_bytes -= size
                data = frames.encode_raft(batch, beats)
            await stream.send_all(data)
            self.frames_sent += 1
            self.bytes_sent += len(data)


class PeerNetwork:
    """All of a node's peer links, and the listener that accepts the lower-id peers."""

    def __init__(
        self,
        node_id: int,
        cluster: int,
        peers: Mapping[int, tuple[str, int]],
        deliver: Callable[[int, Message], None],
        *,
        queue_limit_bytes: int = QUEUE_LIMIT_BYTES,
    ) -> None:
        self.node_id = node_id
        self.cluster = cluster
        self.deliver = deliver
        self.links = {
            peer: PeerLink(self, peer, address, queue_limit_bytes=queue_limit_bytes)
            for peer, address in peers.items()
            if peer != node_id
        }
        self.port = 0
        #: Serves requests from peers: (peer, method, payload) -> reply payload; a
        #: SentinelError it raises travels back and is raised at the caller.
        self.handler: RequestHandler | None = None
        self._next_request = 1
        self._waiting: dict[int, _Waiter] = {}
        self._nursery: trio.Nursery | None = None

    async def request(
        self, peer: int, method: int, payload: bytes, *, reply_within: float = REQUEST_TIMEOUT_SECONDS
    ) -> bytes:
        """Send a request to ``peer`` and wait for its reply; Unavailable if no reply comes
        in ``reply_within`` seconds (the peer is down or the link is broken: the caller may retry)."""
        link = self.links.get(peer)
        if link is None:
            raise Unavailable(f"node {peer} is not a peer of node {self.node_id}")
        if not link.connected:
            with trio.move_on_after(min(reply_within, CONNECT_GRACE_SECONDS)):
                await link.wait_connected()
            if not link.connected:
                raise Unavailable(f"node {peer} is not connected (down, or starting)")
        request_id = self._next_request
        self._next_request += 1
        waiter = self._waiting[request_id] = _Waiter(peer)
        try:
            link.send_frame(frames.encode_request(request_id, method, payload))
            with trio.move_on_after(reply_within):
                await waiter.done.wait()
        finally:
            del self._waiting[request_id]
        reply = waiter.reply
        if reply is None:
            if waiter.lost:
                raise Unavailable(f"the connection to node {peer} broke before it answered")
            raise Unavailable(f"node {peer} did not answer within {reply_within:g} s")
        if not reply.ok:
            raise decode_error(reply.payload)
        return reply.payload

    def connection_lost(self, peer: int) -> None:
        """Every request waiting on ``peer`` fails now: its answer cannot come."""
        for waiter in self._waiting.values():
            if waiter.peer == peer and waiter.reply is None:
                waiter.lost = True
                waiter.done.set()

    def resolve(self, peer: int, reply: frames.PeerReply) -> None:
        waiter = self._waiting.get(reply.request_id)
        if waiter is not None and waiter.peer == peer:
            waiter.reply = reply
            waiter.done.set()

    def serve_request(self, link: PeerLink, request: frames.PeerRequest) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self._answer, link, request)

    async def _answer(self, link: PeerLink, request: frames.PeerRequest) -> None:
        try:
            if self.handler is None:
                raise Unavailable(f"node {self.node_id} is not ready for requests")
            payload = await self.handler(link.peer, request.method, request.payload)
            frame = frames.encode_reply(request.request_id, True, payload)
        except SentinelError as exc:
            frame = frames.encode_reply(request.request_id, False, encode_error(exc))
        link.send_frame(frame)

    def send(self, group: int, m: Message) -> None:
        link = self.links.get(m.to)
        if link is not None:
            link.send(group, m)

    def check_hello(self, hello: frames.Frame, *, expect_from: int | None = None) -> int:
        if not isinstance(hello, frames.Hello):
            raise HandshakeError("expected a hello frame first")
        cluster, frm, to = hello.cluster, hello.frm, hello.to
        if cluster != self.cluster:
            raise HandshakeError(f"peer is in cluster {cluster}, this node in {self.cluster}")
        if to != self.node_id:
            raise HandshakeError(f"peer {frm} thinks it is talking to node {to}, this is node {self.node_id}")
        if frm not in self.links or (expect_from is not None and frm != expect_from):
            raise HandshakeError(f"node {frm} is not an expected peer of node {self.node_id}")
        return int(frm)

    async def run(
        self, host: str, port: int, *, task_status: trio.TaskStatus[PeerNetwork] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for link in self.links.values():
                nursery.start_soon(link.run)
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, nursery)
            task_status.started(self)

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        async with listener:
            while True:
                stream = await listener.accept()
                nursery.start_soon(self._handshake, stream)

    async def _handshake(self, stream: trio.SocketStream) -> None:
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT_SECONDS):
                frm = self.check_hello(await _FrameReader(stream).read_frame())
                link = self.links[frm]
                if link.dials:
                    raise HandshakeError(
                        f"node {frm} dialed, but node {self.node_id} is the one that dials it"
                    )
                await stream.send_all(frames.encode_hello(self.cluster, self.node_id, frm))
            if link.hand_over(stream):
                return
            raise HandshakeError(f"node {frm} already has a connection being set up")
        except (
            OSError,
            trio.BrokenResourceError,
            trio.TooSlowError,
            HandshakeError,
            frames.FrameError,
        ) as exc:
            log.warning("peer connection refused: %s", exc)
        with trio.CancelScope(shield=True):
            await stream.aclose()

    def statistics(self) -> list[LinkStatistics]:
        return [link.statistics() for link in self.links.values()]
