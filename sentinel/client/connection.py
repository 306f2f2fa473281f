"""Connections to brokers, the cached cluster metadata, leader routing and the retry policy.

A :class:`Cluster` owns one grpclib ``Channel`` per broker it talks to (grpclib multiplexes
concurrent RPCs over one HTTP/2 connection, so one per broker is enough) and the metadata
the producer and consumer route by: each topic's partitions and their leaders.

Routing: data requests for a partition go to its leader's advertised address. With a single
broker in the metadata, or while a leader is unknown, they go to the bootstrap connection:
a single-node broker often advertises an address only valid on its own host (``0.0.0.0``,
a container name), and the bootstrap address is known to work. A broker that is not the
leader answers UNAVAILABLE; the caller refreshes metadata and retries.

Invariants:
- Every RPC runs inside the connection's ``rpc_errors`` boundary: callers see typed errors.
- Concurrent refreshes coalesce: a caller that waited for another refresh started after its
  own request does not fetch again.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from typing import Final, TypeVar

from grpclib.client import Channel

from sentinel.client.convert import cluster_metadata
from sentinel.client.errors import RETRIABLE_ERRORS, rpc_errors
from sentinel.client.types import ClusterMetadata, TopicInfo, TopicPartition
from sentinel.errors import InvalidArgument, SentinelError, Unavailable
from sentinel.generated.sentinel import v1 as pb
from sentinel.server.compat import wrap_client_transport  # also checks grpclib/h2 versions

T = TypeVar("T")

# The longest a retry waits (Kafka's retry.backoff.max.ms is 1 s). Shorter here: the usual
# reason to retry is a leader change, and a Raft election completes 1-2 s after a leader
# dies; with 1 s steps a client found the new leader up to a second late (failover measured
# 2.5 s, with 250 ms steps under 2 s), for a few more requests a second during an outage.
MAX_RETRY_BACKOFF_S: Final = 0.25
# Node id the metadata uses for "no leader right now" (an election is in progress).
NO_LEADER: Final = -1


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6-host]:port``) as a (host, port) pair; InvalidArgument if malformed."""
    text = address.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise InvalidArgument(f"broker address must be host:port, got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_text)
    if not 0 < port < 65536:
        raise InvalidArgument(f"broker port must be in 1..65535, got {port} in {address!r}")
    return host, port


def parse_bootstrap(bootstrap: str) -> list[tuple[str, int]]:
    """One or more comma-separated ``host:port`` addresses."""
    if not isinstance(bootstrap, str):
        raise InvalidArgument(f"bootstrap must be a 'host:port' string, got {type(bootstrap).__name__}")
    addresses = [parse_address(part) for part in bootstrap.split(",") if part.strip()]
    if not addresses:
        raise InvalidArgument("bootstrap names no broker address")
    return addresses


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def retry_delay(backoff_s: float, attempt: int) -> float:
    """Exponential backoff for retry number ``attempt`` (1-based), capped."""
    return min(backoff_s * (2 ** (attempt - 1)), max(backoff_s, MAX_RETRY_BACKOFF_S))


# A group request (join, commit, committed offsets) keeps trying this long after its first
# retriable failure, whatever ``retries`` says: the coordinator moves with the controller
# leader, and finding the next one takes an election (1-2 s) plus the brokers' metadata
# catching up. (Kafka's clients wait for a coordinator up to default.api.timeout.ms.)
COORDINATOR_WAIT_S: Final = 15.0
# A consumer's request to a partition's leader (ListOffsets: a seek to the end, a position
# reset) keeps trying this long, for the same reason: the leader may be in an election.
LEADER_WAIT_S: Final = 15.0


async def with_retries(
    operation: Callable[[], Awaitable[T]],
    *,
    retries: int,
    backoff_s: float,
    on_retry: Callable[[SentinelError], Awaitable[None]] | None = None,
    at_least_s: float = 0.0,
) -> T:
    """Run ``operation``; on a retriable error try again up to ``retries`` more times, and
    in any case for ``at_least_s`` seconds after the first failure."""
    attempt = 0
    first_failure: float | None = None
    while True:
        try:
            return await operation()
        except RETRIABLE_ERRORS as exc:
            now = asyncio.get_running_loop().time()
            first_failure = now if first_failure is None else first_failure
            if attempt >= retries and now - first_failure >= at_least_s:
                raise
            attempt += 1
            if on_retry is not None:
                await on_retry(exc)
            await asyncio.sleep(retry_delay(backoff_s, attempt))


# The size of a write from which the writes of an event-loop step are gathered: a DATA
# frame of HTTP/2's default 16 KiB size is one.
GATHER_FROM: Final = 16 * 1024
_FRAME_HEADER_BYTES: Final = 9
_DATA: Final = 0x0
_HEADERS: Final = 0x1
_END_STREAM: Final = 0x1


def opens_a_message(data: bytes | bytearray | memoryview) -> bool:
    """``data`` starts with a HEADERS frame whose stream goes on (frames of the message, or
    its trailers, follow)."""
    return len(data) >= _FRAME_HEADER_BYTES and data[3] == _HEADERS and not data[4] & _END_STREAM


def ends_a_stream(data: bytes | bytearray | memoryview) -> bool:
    """The last whole frame of ``data`` ends its stream (END_STREAM on a DATA or HEADERS
    frame): a request's or an answer's last frame."""
    position, end, last = 0, len(data), -1
    while position + _FRAME_HEADER_BYTES <= end:
        last = position
        position += _FRAME_HEADER_BYTES + int.from_bytes(data[position : position + 3], "big")
    return (
        last >= 0
        and position == end
        and data[last + 3] in (_DATA, _HEADERS)
        and bool(data[last + 4] & _END_STREAM)
    )


class _LiveTransport:
    """The transport grpclib writes to: it gathers a request's frames into one write, and
    drops writes once the transport is closing.

    Gathering. grpclib writes each HTTP/2 frame as it makes it, each a ``send`` system call
    of its own: a unary call's request is a HEADERS frame, then a DATA frame per 16 KiB.
    On loopback a ``send`` runs the receiver's side of TCP in the sender's system call and
    wakes the receiving thread: the broker woke for the HEADERS alone, went back to sleep
    and was woken again for the DATA (``strace`` over 2,000 sequential produce calls: 2
    sends a call from the client and ~7.7 futex calls a call in the broker; gathered, 1
    and ~5.1). Gathering starts at a write that opens a message whose frames follow (a
    HEADERS frame without END_STREAM) or at a large one (``GATHER_FROM`` bytes: a full
    DATA frame); the writes made until control returns to the event loop join it, in
    order, and leave as one write at the loop's next step (``call_soon``): what the frames
    would have become on the wire anyway (a 1 MiB request was 64 ``send`` calls).
    A small message leaves as soon as it is whole (a write that ends its stream, nothing
    large gathered): a consumer's fetch, written in a task's step, must not wait for the
    rest of the loop's step, the application's work on the records before it (consume fell
    from ~1.5-1.9M to ~0.84-1.08M records/s). Large requests wait for the step's end: the
    producer's 1 MiB requests of one step leave together. Any other write with nothing
    gathered goes out at once, above all a WINDOW_UPDATE, which lets the broker go on
    sending, and which a consumer working through a buffered answer without yielding to
    the loop would otherwise hold back for milliseconds (consume fell from ~2.0M to ~1.25M
    records/s when every write was gathered). ``close`` writes what is gathered first;
    ``abort`` drops it, as asyncio's does. (The broker's transport is not wrapped: with
    its answers gathered the same way, consume measured ~15% fewer records/s in the median
    of interleaved runs.)

    Closing. When a broker dies, grpclib goes on writing to the lost connection (a reset
    for each stream it ends, requests already on their way), and asyncio's transport
    answers every write past the fifth with a WARNING "socket.send() raised exception." on
    stderr: a user of ``sentinel produce`` saw those lines before the one error that
    mattered. A closing transport delivers nothing new anyway (lost: asyncio drops it;
    closed by us: the channel's streams are over), so the write is not made; the failure
    still reaches the caller as grpclib's own "connection lost" (Unavailable)."""

    __slots__ = ("_gathered", "_holds_large", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._gathered: list[bytes | bytearray | memoryview] | None = None
        # What is gathered holds a large write: it waits for the loop's next step even when a
        # stream ends (the requests of one step leave in one write).
        self._holds_large = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._transport.is_closing():
            return
        gathered = self._gathered
        large = len(data) >= GATHER_FROM
        if gathered is not None:
            gathered.append(data)
            if large:
                self._holds_large = True
            elif not self._holds_large and ends_a_stream(data):
                self._flush()  # a small message is whole: nothing to wait for
        elif large or (opens_a_message(data) and not ends_a_stream(data)):
            self._gathered = [data]
            self._holds_large = large
            self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        gathered, self._gathered = self._gathered, None
        if gathered and not self._transport.is_closing():
            self._transport.write(gathered[0] if len(gathered) == 1 else b"".join(gathered))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._gathered = None
        self._transport.abort()

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)


class Connection:
    """One broker: a grpclib channel, its stub and its error boundary.

    Use as ``with conn.errors: response = await conn.stub.produce(request, timeout=...)``.
    """

    __slots__ = ("address", "channel", "errors", "stub")

    def __init__(self, host: str, port: int) -> None:
        self.address = format_address(host, port)
        self.channel = Channel(host, port)
        wrap_client_transport(self.channel, _LiveTransport)
        self.stub = pb.SentinelStub(self.channel)
        self.errors = rpc_errors(self.address)

    def close(self) -> None:
        self.channel.close()


class Cluster:
    """The brokers a client talks to and the metadata it routes by."""

    def __init__(self, bootstrap: str, *, request_timeout_s: float, allow_auto_create: bool = False) -> None:
        self.request_timeout_s = request_timeout_s
        # Ask the broker to auto-create requested topics (producers and consumers, as Kafka's
        # clients do; never an admin's look-up). The broker's own setting decides.
        self.allow_auto_create = allow_auto_create
        self._connections: dict[tuple[str, int], Connection] = {}
        self._bootstrap = [self._connection(host, port) for host, port in parse_bootstrap(bootstrap)]
        self._current = 0  # index of the bootstrap connection that last answered
        # The group coordinator's address as a broker last named it (None: ask a bootstrap
        # broker; one that is not the coordinator answers UNAVAILABLE naming it).
        self._coordinator: tuple[str, int] | None = None
        self._brokers: dict[int, tuple[str, int]] = {}
        self._topics: dict[str, TopicInfo] = {}
        # topic -> partition count, kept beside _topics for the producer's per-record lookup
        # (the producer holds this very dict: it is mutated, never rebound).
        self.partition_counts: dict[str, int] = {}
        self._leaders: dict[TopicPartition, int] = {}
        self._refresh_lock = asyncio.Lock()
        self._refreshes = 0  # completed refreshes, to coalesce concurrent ones
        self._refreshed_at = -math.inf  # loop time the last refresh ended
        self._closed = False

    def _connection(self, host: str, port: int) -> Connection:
        conn = self._connections.get((host, port))
        if conn is None:
            conn = self._connections[(host, port)] = Connection(host, port)
        return conn

    def connection(self, host: str, port: int) -> Connection:
        """The (shared) connection to one broker."""
        return self._connection(host, port)

    @property
    def bootstrap_count(self) -> int:
        return len(self._bootstrap)

    @property
    def bootstrap(self) -> Connection:
        """The connection for requests any broker can answer (metadata, admin, groups)."""
        return self._bootstrap[self._current]

    @property
    def coordinator(self) -> Connection:
        """The connection for group requests (join, heartbeat, commit, committed offsets):
        the coordinator a broker last named, else the bootstrap connection."""
        if self._coordinator is not None:
            return self._connection(*self._coordinator)
        return self._bootstrap[self._current]

    @contextlib.contextmanager
    def to_coordinator(self) -> Iterator[Connection]:
        """``with cluster.to_coordinator() as conn, conn.errors: ...``: a group request to
        the coordinator. An UNAVAILABLE answer naming the coordinator (the broker asked is
        not it: the controller leader moved) points the next attempt there; a coordinator
        that cannot be reached is forgotten, so the next attempt asks a bootstrap broker
        (after a failover, one that knows the new coordinator names it)."""
        try:
            yield self.coordinator
        except Unavailable as exc:
            hint = exc.leader
            try:
                self._coordinator = parse_address(hint) if hint else None
            except InvalidArgument:
                self._coordinator = None
            if self._coordinator is None:
                self._current = (self._current + 1) % len(self._bootstrap)
            raise
        except RETRIABLE_ERRORS:
            self._coordinator = None
            self._current = (self._current + 1) % len(self._bootstrap)
            raise

    def leader_id(self, tp: TopicPartition) -> int:
        """The node the metadata last named as ``tp``'s leader; NO_LEADER when none."""
        return self._leaders.get(tp, NO_LEADER)

    def leader(self, tp: TopicPartition) -> Connection:
        """The connection to send data requests for ``tp`` to."""
        if len(self._brokers) > 1:
            address = self._brokers.get(self._leaders.get(tp, NO_LEADER))
            if address is not None:
                return self._connection(*address)
        return self._bootstrap[self._current]

    def topic(self, name: str) -> TopicInfo | None:
        """The cached metadata of ``name``; None when unknown (not fetched, or absent)."""
        return self._topics.get(name)

    def partition_count(self, name: str) -> int | None:
        return self.partition_counts.get(name)

    def forget(self, name: str) -> None:
        """Drop a topic's cached metadata (it was deleted, or an answer proved it stale)."""
        info = self._topics.pop(name, None)
        self.partition_counts.pop(name, None)
        if info is not None:
            for p in info.partitions:
                self._leaders.pop(TopicPartition(name, p.partition), None)

    async def fetch_metadata(self, topics: Sequence[str] | None = None) -> ClusterMetadata:
        """Ask the cluster (any bootstrap broker that answers) and update the cache.

        Requested topics that the answer lacks are dropped from the cache.
        """
        request = pb.MetadataRequest(topics=list(topics or ()), allow_auto_create=self.allow_auto_create)
        response = await self.any_broker(
            lambda conn: conn.stub.fetch_metadata(request, timeout=self.request_timeout_s)
        )
        metadata = cluster_metadata(response)
        self._update(metadata, topics)
        return metadata

    async def init_producer_id(self) -> tuple[int, int]:
        """A new idempotent producer id and its epoch (the controller allocates it; any
        broker asks it)."""
        response = await self.any_broker(
            lambda conn: conn.stub.init_producer_id(
                pb.InitProducerIdRequest(), timeout=self.request_timeout_s
            )
        )
        return response.producer_id, response.producer_epoch

    async def any_broker(self, call: Callable[[Connection], Awaitable[T]]) -> T:
        """``call``, a request any broker answers (metadata, admin), on the bootstrap broker
        that answered last, else on the next ones in turn: a dead one in the list costs a
        refused connection, not the request. The last retriable error if none answers."""
        last_error: SentinelError | None = None
        count = len(self._bootstrap)
        for i in range(count):
            index = (self._current + i) % count
            conn = self._bootstrap[index]
            try:
                with conn.errors:
                    response = await call(conn)
            except RETRIABLE_ERRORS as exc:
                last_error = exc
                continue
            self._current = index
            return response
        assert last_error is not None
        raise last_error

    def _update(self, metadata: ClusterMetadata, requested: Sequence[str] | None) -> None:
        if metadata.brokers:
            self._brokers = {b.node_id: (b.host, b.port) for b in metadata.brokers}
        for name in requested or ():
            self.forget(name)
        for info in metadata.topics:
            self.forget(info.name)
            self._topics[info.name] = info
            if info.partitions:
                self.partition_counts[info.name] = len(info.partitions)
            for p in info.partitions:
                self._leaders[TopicPartition(info.name, p.partition)] = p.leader

    async def refresh(self, topics: Collection[str], *, fresh_for: float = 0.0) -> None:
        """Re-fetch the metadata of ``topics`` unless a refresh started meanwhile did it, or
        one ended less than ``fresh_for`` seconds ago (partitions polling for a new leader
        make one request per such interval between them, not one each)."""
        seen = self._refreshes
        async with self._refresh_lock:
            loop = asyncio.get_running_loop()
            if all(t in self._topics for t in topics) and (
                self._refreshes != seen or loop.time() - self._refreshed_at < fresh_for
            ):
                return
            try:
                await self.fetch_metadata(sorted(topics))
            finally:
                self._refreshes += 1
                self._refreshed_at = loop.time()

    async def refresh_quietly(self, topics: Collection[str], *, fresh_for: float = 0.0) -> None:
        """``refresh`` for a retry path: a failure here is not the error worth reporting."""
        try:
            await self.refresh(topics, fresh_for=fresh_for)
        except SentinelError:
            pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for conn in self._connections.values():
            conn.close()
        self._connections.clear()
