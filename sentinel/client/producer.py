"""The asyncio producer: batches records per partition and sends them, in order, with retries.

Shape (mirrors aiokafka): ``async with Producer("host:port") as producer`` then
``future = await producer.send(topic, value, key=...)`` and ``metadata = await future``.

How it works:

- **Partitioning.** An explicit partition wins. A keyed record goes to
  ``partition_for_key(key, n)`` and a keyless one round-robin per record, both from
  ``sentinel.broker.partitioner``: the broker's own code, so a key lands where the broker
  (and a Java Kafka producer) would put it. The round-robin counter starts at a random
  partition so short-lived producers do not all start on partition 0. (Not Kafka's sticky
  partitioner: with a per-partition linger, round-robin fills batches evenly enough.)
- **Metadata.** Partition counts come from FetchMetadata, cached, refreshed when a send
  names a partition the cache does not know or a request fails with UNAVAILABLE/NOT_FOUND.
  The producer never creates a topic itself: the broker auto-creates a topic named in a
  metadata request when its own ``--auto-create-topics`` setting allows, so that setting
  governs every client; an unknown topic it does not create is NOT_FOUND.
- **Batching.** ``send`` appends to the partition's queue in the accumulator (a pure core)
  and returns at once. One sender task per partition drains the queue when it holds
  ``batch_size`` bytes, when its oldest record has waited ``linger_ms``, or at once while a
  flush, a close or a sender blocked on memory is waiting. ``batch_size`` is Kafka's
  ``batch.size``: the most bytes of one RecordBatch (a larger record goes in a batch of its
  own). One request carries consecutive batches, up to 1 MiB (or one larger record) and
  ``max_request_bytes``; a queue drained because it is full leaves its last, partly filled
  batch to fill up, unless that is all there is.
- **Futures.** ``send`` returns a :class:`~sentinel.client.delivery.RecordFuture`: a light
  Future-like object (``await``, ``result``, ``add_done_callback``, ``asyncio.gather``...)
  that refers to the run of records it was queued with. The producer keeps no per-record
  object, and settles a whole run part with one call when a request is answered; the
  record's metadata is built when asked for (see :mod:`sentinel.client.delivery`).
- **Order.** Offsets follow send order per partition, and each partition's futures are
  resolved in that order. A failed request is sent again before anything formed after it
  (:mod:`sentinel.client.sequencing` decides what goes when).
- **Back-pressure.** Queued and in-flight records reserve their estimated size out of
  ``max_buffer_bytes``; a ``send`` that does not fit waits (FIFO) until acknowledged
  requests release memory. A full buffer never raises. A record larger than the whole
  buffer waits until the buffer is empty and then goes alone, so the buffer is
  back-pressure and never a record size limit.
- **Size limit.** ``max_request_bytes`` bounds a whole ProduceRequest message, as the
  broker's ``--max-message-bytes`` does (the defaults are equal, 16 MiB): a record or
  ``send_batch`` batch that cannot fit in one request raises InvalidArgument in ``send``,
  before its topic is looked up (so before the broker auto-creates it).
- **Whole batches.** ``send_batch`` encodes many records into one RecordBatch at once and
  queues it as one unit with one future: the records go to one partition, are appended
  atomically (all or none) and cost no per-record Python work after encoding — the way
  to produce at the broker's full rate from one Python process.
- **Delivery.** Retriable failures (UNAVAILABLE, which includes a busy broker, a leader
  that moved or died, or a timeout) are retried with exponential backoff for
  ``delivery_timeout_ms`` (Kafka's ``delivery.timeout.ms``, 2 minutes by default) after the
  record's request is formed, or ``retries`` times if that comes first (by default it does
  not, as in Kafka): a leader failover (an election takes 1-2 s) costs a wait, never a
  record. A partition that has failed for the whole timeout, with no success between, fails
  each later request at its first failure: what is queued behind it does not wait the
  timeout again, request after request.
  After an UNAVAILABLE the producer asks the cluster where the leader is now and, when it
  moved, sends there at once. A failed record's future carries the typed error of the
  last attempt.
- **Idempotence** (``enable_idempotence``, on by default with ``acks="all"``, as Kafka's
  producer since 3.0): exactly once per partition, across retries. Before its first request
  the producer asks for a producer id (InitProducerId, once); each batch carries it with a
  sequence number per partition, fixed when the batch is formed and kept by every retry,
  so a retry whose first answer was lost is answered with the original offsets instead of
  being appended again. Up to 64 batches fly per partition (the broker remembers the last
  64 of each producer), in at most 5 requests of at most 32 batches, the first request of a
  producer id alone (``sentinel/client/sequencing.py``). A batch refused as out of order
  because an earlier one failed or arrived second is sent again after it, in order; an
  ``OutOfOrderSequence`` nothing explains, or ``ProducerFenced``, fails that batch's
  futures, and the partition goes on under a new producer id. Without idempotence
  (``enable_idempotence=False``, or acks other than "all" left at the default): one
  request in flight per partition, and a request that timed out after the broker appended
  it is appended again on retry (at least once).
- **Batches under idempotence.** At most 64 batches fly per partition, a request carrying
  at most 32 of them, so with the default ``batch_size`` (16 KiB) two requests of up to
  512 KiB fly, the second formed and sent while the broker appends the first.
  ``send_batch`` batches are whole, so at most 64 of them fly.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import time
from collections import deque
from collections.abc import Iterable, Sequence
from types import MethodType, ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

from grpclib.const import Status

from sentinel.broker.partitioner import RoundRobinPartitioner, partition_for_key
from sentinel.client import accumulator
from sentinel.client.accumulator import (
    BATCH_OVERHEAD,
    RECORD_OVERHEAD,
    Drained,
    Entry,
    PartitionQueue,
    RecordAccumulator,
    WholeBatch,
    estimate_size,
)
from sentinel.client.connection import COORDINATOR_WAIT_S, NO_LEADER, Cluster, retry_delay, with_retries
from sentinel.client.convert import WireProduceRequest
from sentinel.client.delivery import Completion, RecordFuture, WholeBatchDelivery
from sentinel.client.errors import BrokerUnreachable, error_from_status, is_retriable
from sentinel.client.sequencing import PartitionSequencer, Request, stamp_producer
from sentinel.client.types import BatchMetadata, RecordMetadata, TopicPartition
from sentinel.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SentinelError,
    Unavailable,
)
from sentinel.generated.sentinel import v1 as pb
from sentinel.records import Compression, Header, RecordTuple
from sentinel.records.builder import encode_batch

if TYPE_CHECKING:
    from sentinel.client.appending import RecordAppender, SendFastPath

__all__ = ["Producer"]

DEFAULT_LINGER_MS: Final = 5
DEFAULT_BATCH_SIZE: Final = 16 * 1024  # Kafka's batch.size
# Kafka's buffer.memory is 32 MiB. 4 MiB was chosen while every buffered record was an
# asyncio Future that full garbage collections walked; queued records are now plain tuples
# the collector stops tracking, but 32 MiB measured no faster (100-byte records, 1 MB and
# 16 KiB batches: the broker sets the pace) and makes a flush wait longer. 4 MiB still
# holds four full requests.
DEFAULT_MAX_BUFFER_BYTES: Final = 4 * 1024 * 1024
# Kafka's max.request.size: the largest ProduceRequest message. The default is the broker's
# default --max-message-bytes (sentinel.node.DEFAULT_MAX_MESSAGE_BYTES), the largest
# request message it accepts, so a record the broker would take is never refused here.
DEFAULT_MAX_REQUEST_BYTES: Final = 16 * 1024 * 1024
# What a ProduceRequest adds around its record batches (topic name of up to 249 bytes,
# partition, acks, timeout, tags and the batches' length prefix: under 300 bytes), rounded
# up to cover the record size estimates being a little short.
REQUEST_FRAMING_BYTES: Final = 1024
# How much queued data one request gathers, whatever max_request_bytes allows: with few
# requests in flight per partition, a request taking the whole buffer leaves the client idle
# while the broker appends it (measured with 100-byte records: 16 MiB requests made 13-25%
# fewer records/s than 1 MiB ones). A record larger than this still goes, alone.
REQUEST_FILL_BYTES: Final = 1024 * 1024
DEFAULT_REQUEST_TIMEOUT_MS: Final = 30_000
# Kafka's defaults: retries are bounded by the delivery timeout, not counted.
DEFAULT_RETRIES: Final = 2**31 - 1
DEFAULT_DELIVERY_TIMEOUT_MS: Final = 120_000
# While a partition's last leader cannot be reached (it died), the metadata is asked this
# often during a retry's backoff: the attempt follows the election within it (a backoff of
# up to 250 ms alone added 0-250 ms to a failover, 125 on average).
LEADER_POLL_S: Final = 0.05
# Metadata that recent is fresh enough for that poll: many partitions polling at once (the
# dead broker led them all) make one request per this interval between them, not one each.
POLL_FRESH_S: Final = 0.02
DEFAULT_RETRY_BACKOFF_MS: Final = 100
_time_ns = time.time_ns
# FetchMetadata / CreateTopic while resolving a topic: retried this often before giving up.
METADATA_RETRIES: Final = 5

_ACKS: Final[dict[object, pb.Acks]] = {
    "all": pb.Acks.ALL,
    -1: pb.Acks.ALL,
    1: pb.Acks.LEADER,
    0: pb.Acks.NONE,
}
_COMPRESSION: Final[dict[str, Compression]] = {
    "none": Compression.NONE,
    "gzip": Compression.GZIP,
    "snappy": Compression.SNAPPY,
    "lz4": Compression.LZ4,
    "zstd": Compression.ZSTD,
}


class _State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class _Payload:
    """What a request carries besides its place in the sequence: its records and futures,
    its encoded batches (kept: a retry sends the same bytes) and, once decided, its answer."""

    __slots__ = ("drained", "encoded", "message", "outcome", "sent_to")

    def __init__(self, drained: Drained[Completion]) -> None:
        self.drained = drained
        self.encoded: list[bytes] = []
        self.message: pb.ProduceRequest | None = None
        self.outcome: pb.ProduceResponse | SentinelError | None = None
        self.sent_to = NO_LEADER  # the node the last attempt went to, as the metadata named it


class _PartitionSender:
    """The asyncio side of one partition: its sender task, its requests and its counters."""

    __slots__ = ("append", "appender", "completed", "queue", "sequencer", "task", "tp", "unsettled", "wakeup")

    def __init__(
        self,
        tp: TopicPartition,
        queue: PartitionQueue[Completion],
        sequencer: PartitionSequencer[_Payload],
        build: ModuleType,
    ) -> None:
        self.tp = tp
        self.queue = queue  # the accumulator's queue of this partition
        self.sequencer = sequencer
        self.wakeup = asyncio.Event()
        #: ``send``'s per-record step for this partition.
        self.appender: RecordAppender = build.RecordAppender(
            queue, asyncio.get_running_loop(), tp.topic, tp.partition, self.wakeup, time.monotonic
        )
        self.append = self.appender.append  # bound once
        self.task: asyncio.Task[None] | None = None
        self.completed = 0  # entries whose future is resolved (or failed); queue.appended: ever queued
        # Formed requests not yet settled, in formation (offset) order: they settle in it.
        self.unsettled: deque[Request[_Payload]] = deque()


class Producer:
    """Sends records to Sentinel topics; see the module docstring for the guarantees."""

    def __init__(
        self,
        bootstrap: str,
        *,
        acks: str | int = "all",
        linger_ms: float = DEFAULT_LINGER_MS,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        compression: str = "none",
        request_timeout_ms: int = DEFAULT_REQUEST_TIMEOUT_MS,
        retries: int = DEFAULT_RETRIES,
        retry_backoff_ms: float = DEFAULT_RETRY_BACKOFF_MS,
        delivery_timeout_ms: float = DEFAULT_DELIVERY_TIMEOUT_MS,
        client_id: str = "sentinel-producer",
        enable_idempotence: bool | None = None,
    ) -> None:
        try:
            self._acks = _ACKS[acks]
        except (KeyError, TypeError):
            raise InvalidArgument(f"acks must be 'all', 1 or 0, got {acks!r}") from None
        # Kafka's rule: idempotence needs acks=all (a batch acknowledged by the leader alone
        # may be lost by a failover, and the next one would then be refused as out of
        # order); left at its default, it is on exactly when acks is "all".
        if enable_idempotence is None:
            enable_idempotence = self._acks is pb.Acks.ALL
        elif enable_idempotence and self._acks is not pb.Acks.ALL:
            raise InvalidArgument(f"enable_idempotence=True needs acks='all', got acks={acks!r}")
        #: Whether batches carry a producer id and sequence numbers (see the module docstring).
        self.idempotent = bool(enable_idempotence)
        codec = _COMPRESSION.get(compression) if isinstance(compression, str) else None
        if codec is None:
            raise InvalidArgument(f"compression must be one of {sorted(_COMPRESSION)}, got {compression!r}")
        if not codec.is_available():
            raise InvalidArgument(f"compression {compression!r} needs a package that is not installed")
        _check_positive("batch_size", batch_size)
        _check_positive("max_buffer_bytes", max_buffer_bytes)
        framing = REQUEST_FRAMING_BYTES + BATCH_OVERHEAD
        if not isinstance(max_request_bytes, int) or max_request_bytes <= framing:
            raise InvalidArgument(
                f"max_request_bytes must be an int > {framing} (framing), got {max_request_bytes!r}"
            )
        _check_positive("request_timeout_ms", request_timeout_ms)
        if type(retries) is not int or retries < 0:
            raise InvalidArgument(f"retries must be an int >= 0, got {retries!r}")
        for name, value in (("linger_ms", linger_ms), ("retry_backoff_ms", retry_backoff_ms)):
            if not isinstance(value, int | float) or not value >= 0:
                raise InvalidArgument(f"{name} must be a number >= 0, got {value!r}")
        # Kafka's rule: a record may wait its linger and one whole attempt.
        _check_positive("delivery_timeout_ms", delivery_timeout_ms)
        if not delivery_timeout_ms >= linger_ms + request_timeout_ms:
            raise InvalidArgument(
                f"delivery_timeout_ms must be >= linger_ms + request_timeout_ms "
                f"({linger_ms} + {request_timeout_ms}), got {delivery_timeout_ms!r}"
            )
        self._bootstrap = bootstrap
        self._compression = codec
        self._linger_s = linger_ms / 1000
        self._request_timeout_ms = request_timeout_ms
        self._request_timeout_s = request_timeout_ms / 1000
        self._retries = retries
        self._backoff_s = retry_backoff_ms / 1000
        self._delivery_timeout_s = delivery_timeout_ms / 1000
        self.client_id = client_id
        self.max_request_bytes = max_request_bytes
        # The accumulator packs record batches: what a request holds beside them is set aside.
        self._acc: RecordAccumulator[Completion] = RecordAccumulator(
            batch_size=batch_size,
            max_buffer_bytes=max_buffer_bytes,
            max_request_bytes=min(max_request_bytes - REQUEST_FRAMING_BYTES, REQUEST_FILL_BYTES),
            build=accumulator.appending,  # the build of the per-record path in use now
        )
        # The largest record (estimated size) or send_batch batch that fits in one request.
        self.max_record_bytes = max_request_bytes - REQUEST_FRAMING_BYTES - BATCH_OVERHEAD
        self._loop: asyncio.AbstractEventLoop | None = None  # bound in start()
        # The producer id and epoch new bindings take (InitProducerId, asked once, and again
        # only when a partition's binding broke under the current one).
        self._identity: tuple[int, int] | None = None
        self._identity_task: asyncio.Task[tuple[int, int]] | None = None
        self._round_robin = RoundRobinPartitioner(random.Random())
        self._senders: dict[TopicPartition, _PartitionSender] = {}
        # topic -> partition -> sender: the per-record lookup, without building a TopicPartition.
        self._senders_by_topic: dict[str, dict[int, _PartitionSender]] = {}
        # (topic, partition, sender) of the last send to an explicit partition that had one.
        self._last_sender: tuple[object, object, _PartitionSender | None] = (None, None, None)
        self._room_waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._topic_setups: dict[str, asyncio.Task[int]] = {}
        self._progress = asyncio.Event()
        self._flushing = 0
        self._fatal: BaseException | None = None
        self._state = _State.NEW
        # send() as most records take it, compiled (sentinel.client.appending.SendFastPath):
        # it hands every other record to the send written out below (Producer.send), so this
        # instance's ``send`` is the fast path's. Its ``accepting`` flag is the producer's:
        # OPEN and not failed.
        self._fast: SendFastPath = self._acc.build.SendFastPath(
            self._acc.account,
            self._room_waiters,
            self.max_record_bytes,
            batch_size,
            MethodType(Producer.send, self),
        )
        self.send = self._fast.send  # type: ignore[method-assign]
        self._cluster: Cluster | None = None
        self._partition_counts: dict[str, int] = {}

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and fetch the cluster metadata (fails fast on a wrong address)."""
        if self._state is not _State.NEW:
            raise FailedPrecondition(f"producer is {self._state.value}; start() runs once")
        cluster = Cluster(self._bootstrap, request_timeout_s=self._request_timeout_s, allow_auto_create=True)
        try:
            await with_retries(cluster.fetch_metadata, retries=METADATA_RETRIES, backoff_s=self._backoff_s)
        except BaseException:
            cluster.close()
            raise
        self._cluster = cluster
        self._partition_counts = cluster.partition_counts
        self._loop = asyncio.get_running_loop()
        self._state = _State.OPEN
        self._fast.accepting = True

    async def close(self) -> None:
        """Send everything queued, wait for the answers, then disconnect. Idempotent."""
        if self._state in (_State.CLOSING, _State.CLOSED):
            return
        if self._state is _State.NEW:
            self._state = _State.CLOSED
            return
        self._state = _State.CLOSING
        self._fast.accepting = False
        try:
            await self.flush()
        finally:
            tasks: list[asyncio.Task[Any]] = [s.task for s in self._senders.values() if s.task is not None]
            tasks.extend(self._topic_setups.values())
            if self._identity_task is not None:
                tasks.append(self._identity_task)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            assert self._cluster is not None
            self._cluster.close()
            self._state = _State.CLOSED

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- sending ---------------------------------------------------------------------------

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        *,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Iterable[Header] | None = None,
        timestamp_ms: int | None = None,
    ) -> RecordFuture:
        """Queue one record; returns a future (a :class:`RecordFuture`) resolving to its
        RecordMetadata.

        Returns as soon as the record is queued; waits only while the buffer is full.
        Invalid arguments raise here; delivery failures arrive through the future.
        """
        if not self._fast.accepting:
            raise self._not_accepting()
        if type(value) is not bytes and value is not None:
            value = _as_bytes(value, "value")
        if key is not None and type(key) is not bytes:
            key = _as_bytes(key, "key")
        header_items: tuple[Header, ...]
        if headers:
            header_items = _check_headers(headers)
            size = estimate_size(key, value, header_items)
        else:  # the common case, inlined: estimate_size without headers
            header_items = ()
            size = RECORD_OVERHEAD + (len(value) if value is not None else 0)
            if key is not None:
                size += len(key)
        if timestamp_ms is None:
            timestamp_ms = _time_ns() // 1_000_000
        elif type(timestamp_ms) is not int or timestamp_ms < 0:
            raise InvalidArgument(f"timestamp_ms must be an int >= 0, got {timestamp_ms!r}")
        if size > self.max_record_bytes:  # before the topic is looked up (and auto-created)
            raise InvalidArgument(
                f"record of ~{size} bytes is larger than one request can carry: "
                f"max_request_bytes is {self.max_request_bytes} (at most {self.max_record_bytes} per record)"
            )
        # An explicit partition that has a sender was valid when it got one (partitions are
        # never removed): no look-up of the partition count. The last such sender is at hand
        # for the same topic and partition objects (a loop sending to one partition); an
        # identity test, so True or 1.0 never pass for 1.
        last_topic, last_partition, sender = self._last_sender
        if topic is not last_topic or partition is not last_partition:
            senders = self._senders_by_topic.get(topic)
            sender = senders.get(partition) if senders is not None and type(partition) is int else None
            if sender is not None:
                self._last_sender = (topic, partition, sender)
        if sender is None:
            count = self._partition_counts.get(topic) or await self._resolve_topic(topic)
            if partition is None or partition == -1:
                partition = self._default_partition(topic, key, count)
            elif type(partition) is not int or not 0 <= partition < count:
                partition = await self._check_partition(topic, partition)
            senders = self._senders_by_topic.get(topic)
            sender = senders.get(partition) if senders is not None else None
            if sender is None:
                sender = self._start_sender(TopicPartition(topic, partition))
        account = self._acc.account
        # acc.can_reserve / acc.reserve, inlined.
        buffered = account.buffered + size
        if self._room_waiters or buffered > account.max_buffer_bytes:
            await self._wait_for_room(size)
        else:
            account.buffered = buffered
        # The record joins the partition's open run, and its future is its place there.
        return sender.append(key, value, header_items, timestamp_ms, size, self._acc.batch_size)

    async def send_batch(
        self,
        topic: str,
        values: Sequence[bytes | None],
        *,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Iterable[Header] | None = None,
        timestamp_ms: int | None = None,
    ) -> asyncio.Future[BatchMetadata]:
        """Queue ``values`` as one RecordBatch (same key, headers and timestamp for each);
        returns a future resolving to a :class:`BatchMetadata`.

        The records go to one partition — the explicit one, the key's, or the next one
        round-robin — and are appended atomically, in order, at consecutive offsets. The
        encoded batch must fit in one request of ``max_request_bytes`` (split larger
        lists); it may be larger than ``max_buffer_bytes`` (it then waits for an empty
        buffer). Ordered with ``send`` calls to the same partition; waits only while the
        buffer is full.
        """
        if not self._fast.accepting:
            raise self._not_accepting()
        if key is not None and type(key) is not bytes:
            key = _as_bytes(key, "key")
        header_items = _check_headers(headers) if headers else ()
        if timestamp_ms is None:
            timestamp_ms = time.time_ns() // 1_000_000
        elif type(timestamp_ms) is not int or timestamp_ms < 0:
            raise InvalidArgument(f"timestamp_ms must be an int >= 0, got {timestamp_ms!r}")
        if isinstance(values, bytes | str) or not len(values):
            raise InvalidArgument("send_batch needs a non-empty sequence of values")
        data = encode_batch(
            [(key, value, header_items, timestamp_ms) for value in values], compression=self._compression
        )
        acc = self._acc
        size = len(data)
        if size > self.max_record_bytes + BATCH_OVERHEAD:
            raise InvalidArgument(
                f"a batch of {len(values)} records is {size} bytes, larger than one request can carry "
                f"(max_request_bytes is {self.max_request_bytes}): split it"
            )
        count = self._partition_counts.get(topic) or await self._resolve_topic(topic)
        if partition is None or partition == -1:
            partition = self._default_partition(topic, key, count)
        elif type(partition) is not int or not 0 <= partition < count:
            partition = await self._check_partition(topic, partition)
        if self._room_waiters or not self._fits(size):
            await self._wait_for_room(size)
        else:
            acc.reserve(size)
        future: asyncio.Future[BatchMetadata] = asyncio.get_running_loop().create_future()
        delivery = WholeBatchDelivery(future, topic, partition, len(values), timestamp_ms)
        self._enqueue_whole(topic, partition, WholeBatch(data, len(values), timestamp_ms), delivery, size)
        return future

    def _default_partition(self, topic: str, key: bytes | None, count: int) -> int:
        """No explicit partition: the key's (as the broker computes it), else round-robin."""
        if key is not None:
            return partition_for_key(key, count)
        return self._round_robin.next_partition(topic, count)

    def _enqueue_whole(
        self, topic: str, partition: int, batch: WholeBatch, delivery: WholeBatchDelivery, size: int
    ) -> None:
        """Queue a whole batch whose ``size`` is reserved; wake its sender when the queue
        needs a look (first entry, or just reached batch_size)."""
        senders = self._senders_by_topic.get(topic)
        sender = senders.get(partition) if senders is not None else None
        if sender is None:
            sender = self._start_sender(TopicPartition(topic, partition))
        if sender.queue.add_whole(batch, delivery, size, time.monotonic(), self._acc.batch_size):
            sender.wakeup.set()

    def _not_accepting(self) -> SentinelError:
        if self._fatal is not None:
            return Unavailable(f"producer failed: {self._fatal!r}")
        if self._state is _State.NEW:
            return FailedPrecondition("producer is not started")
        return FailedPrecondition(f"producer is {self._state.value}")

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None = None,
        *,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Iterable[Header] | None = None,
        timestamp_ms: int | None = None,
    ) -> RecordMetadata:
        """``send`` and wait for the acknowledgement; raises the delivery error if any."""
        future = await self.send(
            topic, value, key=key, partition=partition, headers=headers, timestamp_ms=timestamp_ms
        )
        return await future

    async def flush(self) -> None:
        """Send at once everything queued so far and wait until all of it is answered.

        Records sent after ``flush`` started are not waited for. Delivery errors are not
        raised here: they are on the records' futures.
        """
        targets = [(s, s.queue.appended) for s in self._senders.values() if s.completed < s.queue.appended]
        if not targets:
            return
        self._flushing += 1
        try:
            for sender, _ in targets:
                sender.wakeup.set()
            while not all(sender.completed >= wanted for sender, wanted in targets):
                await self._progress.wait()
        finally:
            self._flushing -= 1

    async def partitions_for(self, topic: str) -> frozenset[int]:
        """The partition ids of ``topic`` (created with the broker's defaults if unknown)."""
        if not self._fast.accepting:
            raise self._not_accepting()
        count = self._partition_counts.get(topic) or await self._resolve_topic(topic)
        return frozenset(range(count))

    # -- metadata --------------------------------------------------------------------------

    async def _resolve_topic(self, topic: str) -> int:
        """The partition count of a topic the cache does not know, creating the topic if needed.
        Concurrent sends to the same new topic share one resolution."""
        if not isinstance(topic, str) or not topic:
            raise InvalidArgument(f"topic must be a non-empty string, got {topic!r}")
        task = self._topic_setups.get(topic)
        if task is None:
            task = asyncio.ensure_future(self._fetch_or_create(topic))
            self._topic_setups[topic] = task
            task.add_done_callback(lambda _: self._topic_setups.pop(topic, None))
        return await asyncio.shield(task)

    async def _fetch_or_create(self, topic: str) -> int:
        cluster = self._cluster
        assert cluster is not None
        backoff_s = self._backoff_s
        metadata = await with_retries(
            lambda: cluster.fetch_metadata([topic]), retries=METADATA_RETRIES, backoff_s=backoff_s
        )
        count = cluster.partition_count(topic)
        if count:
            return count
        error = metadata.topic_error(topic)
        if error is not None:  # the broker's own word: an invalid name, or no such topic
            raise error_from_status(Status(error[0]), error[1])
        raise NotFound(f"topic {topic!r} does not exist (and the broker does not auto-create topics)")

    async def _check_partition(self, topic: str, partition: object) -> int:
        """Validate an explicit partition, refreshing metadata once in case partitions were added."""
        if type(partition) is not int:
            raise InvalidArgument(f"partition must be an int, got {partition!r}")
        assert self._cluster is not None
        if partition >= 0:
            await self._cluster.refresh_quietly([topic])
        count = self._cluster.partition_count(topic) or 0
        if 0 <= partition < count:
            return partition
        raise InvalidArgument(
            f"partition {partition} does not exist in topic {topic!r}: valid partitions are 0..{count - 1}"
        )

    # -- memory ----------------------------------------------------------------------------

    async def _wait_for_room(self, size: int) -> None:
        """Wait (FIFO) until ``size`` bytes can be reserved; returns with them reserved."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._room_waiters.append((size, waiter))
        self._grant_room()  # first in line into an empty buffer: nothing is left to release
        if not waiter.done():
            self._wake_all()  # lingering batches should go now: memory is what we wait for
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._acc.release(size)  # granted, but we no longer want it
                self._grant_room()
            else:
                with contextlib.suppress(ValueError):
                    self._room_waiters.remove((size, waiter))
            raise

    def _fits(self, size: int) -> bool:
        """``size`` bytes may be reserved now: they fit the buffer, or the buffer is empty (a
        record larger than the whole buffer goes alone; a request bounds it)."""
        return self._acc.can_reserve(size) or self._acc.buffered == 0

    def _grant_room(self) -> None:
        waiters = self._room_waiters
        acc = self._acc
        while waiters:
            size, waiter = waiters[0]
            if waiter.done():  # cancelled
                waiters.popleft()
                continue
            if not self._fits(size):
                return
            waiters.popleft()
            acc.reserve(size)
            waiter.set_result(None)

    # -- producer id -------------------------------------------------------------------------

    async def _producer_identity(self, stale: int | None) -> tuple[int, int]:
        """The producer id and epoch a new binding takes: the current one unless it is
        ``stale`` (a binding of it broke), else a new one from InitProducerId (concurrent
        askers share one call)."""
        identity = self._identity
        if identity is not None and identity[0] != stale:
            return identity
        task = self._identity_task
        if task is None:
            cluster = self._cluster
            assert cluster is not None
            task = asyncio.ensure_future(
                with_retries(
                    cluster.init_producer_id,
                    retries=min(self._retries, METADATA_RETRIES),
                    backoff_s=self._backoff_s,
                    # The controller answers it: through an election, as group requests do.
                    at_least_s=min(COORDINATOR_WAIT_S, self._delivery_timeout_s),
                )
            )
            task.add_done_callback(self._identity_known)
            self._identity_task = task
        return await asyncio.shield(task)

    def _identity_known(self, task: asyncio.Task[tuple[int, int]]) -> None:
        self._identity_task = None
        if not task.cancelled() and task.exception() is None:  # a failure: the next asker tries again
            self._identity = task.result()

    async def _bind(self, sender: _PartitionSender) -> SentinelError | None:
        """Give the partition a new binding; the error instead if no producer id came."""
        sequencer = sender.sequencer
        stale = sequencer.binding.producer_id if sequencer.binding is not None else None
        try:
            producer_id, epoch = await self._producer_identity(stale)
        except SentinelError as exc:
            return exc
        # Nothing of this partition flew meanwhile (a binding is needed only when nothing does).
        sequencer.bind(producer_id, epoch)
        return None

    # -- sender tasks ----------------------------------------------------------------------

    def _start_sender(self, tp: TopicPartition) -> _PartitionSender:
        sequencer: PartitionSequencer[_Payload] = PartitionSequencer(
            idempotent=self.idempotent, retries=self._retries, delivery_timeout=self._delivery_timeout_s
        )
        sender = _PartitionSender(tp, self._acc.queue(tp), sequencer, self._acc.build)
        sender.task = asyncio.get_running_loop().create_task(self._run_sender(sender), name=f"produce {tp}")
        self._senders[tp] = sender
        self._senders_by_topic.setdefault(tp.topic, {})[tp.partition] = sender
        self._fast.appenders.setdefault(tp.topic, {})[tp.partition] = sender.appender
        return sender

    def _wake_all(self) -> None:
        for sender in self._senders.values():
            sender.wakeup.set()

    def _signal_progress(self) -> None:
        event, self._progress = self._progress, asyncio.Event()
        event.set()

    async def _run_sender(self, sender: _PartitionSender) -> None:
        """Form requests from the partition's queue and send them as its sequencer allows;
        send again, in order, what must go again. Requests fly as tasks of this task's
        group: a bug in one fails the producer, and cancelling this cancels them."""
        acc = self._acc
        queue = sender.queue
        wakeup = sender.wakeup
        sequencer = sender.sequencer
        try:
            async with asyncio.TaskGroup() as requests:
                while True:
                    retry = sequencer.next_retry()
                    if retry is not None:
                        await self._send_again(sender, retry, requests)
                        continue
                    if not queue.records or not (sequencer.room() or sequencer.needs_binding()):
                        wakeup.clear()
                        await wakeup.wait()
                        continue
                    # Full: send the full batches, leave the last to fill up. Lingered (or
                    # flushing, closing, memory wanted): send everything.
                    full_only = False
                    if not (self._flushing or self._room_waiters or self._state is not _State.OPEN):
                        delay = queue.first_at + self._linger_s - time.monotonic()
                        if delay > 0:
                            if queue.size < acc.batch_size:
                                wakeup.clear()
                                with contextlib.suppress(TimeoutError):
                                    async with asyncio.timeout(delay):
                                        await wakeup.wait()
                                continue
                            full_only = True
                    if sequencer.needs_binding():
                        error = await self._bind(sender)
                        if error is not None:  # the records this request would have carried fail
                            drained = acc.drain(sender.tp)
                            assert drained is not None
                            self._fail_unsent(sender, drained, error)
                            continue
                    drained = acc.drain(sender.tp, sequencer.room(), full_only=full_only)
                    assert drained is not None
                    request = sequencer.form(
                        drained.batch_record_counts(), _Payload(drained), now=time.monotonic()
                    )
                    sender.unsettled.append(request)
                    self._encode(sender.tp, request)
                    requests.create_task(self._send(sender, request))
        except asyncio.CancelledError:
            self._abandon(sender, FailedPrecondition("producer closed before the record was sent"))
            raise
        except BaseException as exc:  # a bug: fail loudly, never leave futures hanging
            self._fatal = exc
            self._fast.accepting = False
            for other in self._senders.values():
                self._abandon(other, Unavailable(f"producer failed: {exc!r}"))
            raise

    async def _send(self, sender: _PartitionSender, request: Request[_Payload]) -> None:
        """One attempt of ``request``: its answer goes to the sequencer, then whatever is
        decided is settled (in order)."""
        cluster = self._cluster
        assert cluster is not None
        payload = request.payload
        assert payload.message is not None
        payload.sent_to = cluster.leader_id(sender.tp)
        conn = cluster.leader(sender.tp)
        try:
            with conn.errors:
                response = await conn.stub.produce(payload.message, timeout=self._request_timeout_s)
        except SentinelError as exc:
            if not sender.sequencer.failed(request, exc, now=time.monotonic()):
                if isinstance(exc, NotFound):
                    cluster.forget(sender.tp.topic)
                payload.outcome = exc
                self._settle(sender)
        else:
            sender.sequencer.succeeded(request)
            payload.outcome = response
            self._settle(sender)
        sender.wakeup.set()

    async def _send_again(
        self, sender: _PartitionSender, request: Request[_Payload], requests: asyncio.TaskGroup
    ) -> None:
        """Send ``request`` again, alone: after a backoff if it failed retriably, under a new
        binding if its own cannot have it any more."""
        sequencer = sender.sequencer
        error = request.error
        if error is not None and is_retriable(error):
            delay = retry_delay(self._backoff_s, request.attempts)
            if isinstance(error, Unavailable):  # maybe a new leader
                unreachable = isinstance(error, BrokerUnreachable)
                await self._wait_for_leader(sender.tp, request, delay, poll=unreachable)
            else:
                await asyncio.sleep(delay)
        if sequencer.needs_binding():
            bind_error = await self._bind(sender)
            if bind_error is not None:
                sequencer.drop(request)
                request.payload.outcome = bind_error
                self._settle(sender)
                return
        if sequencer.resend(request):
            self._restamp(sender.tp, request)
        requests.create_task(self._send(sender, request))

    async def _wait_for_leader(
        self, tp: TopicPartition, request: Request[_Payload], delay: float, *, poll: bool
    ) -> None:
        """The wait before ``request`` goes again after an UNAVAILABLE: ask the cluster where
        ``tp``'s leader is, and go at once to one that moved; else wait ``delay`` and ask
        again, so the attempt goes where the cluster says after the wait. With ``poll`` (the
        last leader could not be reached at all: it died, and an election follows) ask every
        LEADER_POLL_S during the wait, so the attempt follows the election within that."""
        cluster = self._cluster
        assert cluster is not None
        topic = [tp.topic]
        last = request.payload.sent_to
        loop = asyncio.get_running_loop()
        until = loop.time() + delay
        step = LEADER_POLL_S if poll else delay
        while True:
            await cluster.refresh_quietly(topic, fresh_for=POLL_FRESH_S)
            if cluster.leader_id(tp) not in (NO_LEADER, last):
                return
            left = until - loop.time()
            if left <= 0:
                return
            await asyncio.sleep(min(left, step))

    def _settle(self, sender: _PartitionSender) -> None:
        """Resolve or fail the futures of the oldest requests whose outcome is known, in
        formation order, so a partition's futures complete in offset order."""
        unsettled = sender.unsettled
        acc = self._acc
        settled = False
        while unsettled and unsettled[0].payload.outcome is not None:
            payload = unsettled.popleft().payload
            drained = payload.drained
            outcome = payload.outcome
            if isinstance(outcome, pb.ProduceResponse):
                self._resolve(drained, outcome)
            else:
                assert outcome is not None
                _fail_pieces(drained.pieces, outcome)
            acc.release(drained.size)
            sender.completed += drained.entry_count
            settled = True
        if settled:
            self._grant_room()
            self._signal_progress()

    def _fail_unsent(
        self, sender: _PartitionSender, drained: Drained[Completion], error: SentinelError
    ) -> None:
        _fail_pieces(drained.pieces, error)
        self._acc.release(drained.size)
        sender.completed += drained.entry_count
        self._grant_room()
        self._signal_progress()

    def _abandon(self, sender: _PartitionSender, error: SentinelError) -> None:
        """Fail every record of ``sender`` not yet answered."""
        pieces: list[tuple[Completion, int, int, int]] = []
        for request in sender.unsettled:
            drained = request.payload.drained
            pieces.extend(drained.pieces)
            self._acc.release(drained.size)
        sender.unsettled.clear()
        pieces.extend(self._acc.take_all(sender.tp))
        sender.completed = sender.queue.appended
        _fail_pieces(pieces, error)
        self._grant_room()
        self._signal_progress()

    # -- encoding and answers --------------------------------------------------------------

    def _encode(self, tp: TopicPartition, request: Request[_Payload]) -> None:
        """Encode a new request's batches, with its producer id and sequence numbers, once:
        every retry sends these bytes."""
        payload = request.payload
        drained = payload.drained
        codec = self._compression
        binding = request.binding
        encoded: list[bytes]
        if binding is None:
            if drained.wholes:
                encoded = [
                    batch[0].data
                    if type(batch[0]) is WholeBatch
                    else encode_batch(_records(batch), compression=codec)
                    for batch in drained.batches
                ]
            else:
                encoded = [encode_batch(_records(batch), compression=codec) for batch in drained.batches]
        else:
            producer_id, epoch = binding.producer_id, binding.producer_epoch
            encoded = [
                stamp_producer(batch[0].data, producer_id, epoch, base)
                if type(batch[0]) is WholeBatch
                else encode_batch(
                    _records(batch),
                    compression=codec,
                    producer_id=producer_id,
                    producer_epoch=epoch,
                    base_sequence=base,
                )
                for batch, base in zip(drained.batches, request.base_sequences, strict=True)
            ]
        payload.encoded = encoded
        payload.message = self._message(tp, encoded)

    def _restamp(self, tp: TopicPartition, request: Request[_Payload]) -> None:
        """The request moved to a new binding: the same batches with its new numbers."""
        payload = request.payload
        binding = request.binding
        assert binding is not None
        payload.encoded = [
            stamp_producer(data, binding.producer_id, binding.producer_epoch, base)
            for data, base in zip(payload.encoded, request.base_sequences, strict=True)
        ]
        payload.message = self._message(tp, payload.encoded)

    def _message(self, tp: TopicPartition, encoded: list[bytes]) -> pb.ProduceRequest:
        return WireProduceRequest(
            topic=tp.topic,
            partition=tp.partition,
            record_batches=b"".join(encoded),
            acks=self._acks,
            timeout_ms=self._request_timeout_ms,
        )

    def _resolve(self, drained: Drained[Completion], response: pb.ProduceResponse) -> None:
        """Settle every piece of an answered request: one call per run of records, not per
        record (the records' futures build their metadata when asked)."""
        offset = response.base_offset if self._acks is not pb.Acks.NONE else -1
        append_time = response.log_append_time_ms
        for completion, start, entries, records in drained.pieces:
            completion.resolve(start, entries, offset, append_time)
            if offset >= 0:
                offset += records


def _fail_pieces(pieces: Iterable[tuple[Completion, int, int, int]], error: BaseException) -> None:
    for completion, start, entries, _ in pieces:
        completion.fail(start, entries, error)


def _records(batch: list[Entry]) -> list[RecordTuple]:
    """A batch of records (not a WholeBatch), typed as such."""
    return batch  # type: ignore[return-value]


def _check_positive(name: str, value: object) -> None:
    if not isinstance(value, int | float) or value <= 0:
        raise InvalidArgument(f"{name} must be > 0, got {value!r}")


def _as_bytes(obj: object, what: str) -> bytes:
    if isinstance(obj, bytearray | memoryview):
        return bytes(obj)
    raise InvalidArgument(f"{what} must be bytes or None, got {type(obj).__name__}")


def _check_headers(headers: Iterable[Header]) -> tuple[Header, ...]:
    items: list[Header] = []
    for item in headers:
        if not (isinstance(item, tuple | list) and len(item) == 2 and isinstance(item[0], str)):
            raise InvalidArgument(f"a header must be a (str, bytes | None) pair, got {item!r}")
        name, value = item
        if value is not None and type(value) is not bytes:
            value = _as_bytes(value, f"header {name!r} value")
        items.append((name, value))
    return tuple(items)
