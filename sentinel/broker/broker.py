"""Broker: the actor that owns topic metadata, plus the data path through partition logs.

Topic changes (create, delete) are requests to this actor, served one at a time and made
durable in the storage engine before they are answered. After each change the actor
publishes a new immutable ``topics`` mapping; produce and fetch look their partition log
up in it without a round trip through the actor (the same snapshot idea as the storage
engine's read view), and go straight to the partition log.

Data of a deleted topic, and records below a partition's log start offset (retention),
are dropped by the storage engine's compaction through :meth:`Broker.is_obsolete`, the
compaction filter: nothing scans or rewrites records to delete them.

A full disk (or storage that needs repair) is an answer, not a crash: a topic change the
storage engine refuses (:class:`WriteRefused`) fails that request and changes nothing; a
retention pass that cannot record a new log start or reclaim space leaves it for the next
pass.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import attrs
import trio

from sentinel.actors import Actor, Request
from sentinel.broker import keys
from sentinel.broker.log import AppendResult, LocalPartitionLog
from sentinel.broker.names import (
    validate_new_topic_name,
    validate_partition_count,
    validate_replication_factor,
    validate_topic_name,
)
from sentinel.broker.partitioner import ANY_PARTITION, RoundRobinPartitioner, partition_for_key
from sentinel.errors import (
    AlreadyExists,
    CorruptionError,
    InvalidArgument,
    InvalidRecordBatch,
    NotFound,
    WriteRefused,
)
from sentinel.records import RecordBatch
from sentinel.storage.store import Store

# Retention is enforced this often; deleting old data is never urgent.
RETENTION_CHECK_SECONDS = 30.0

logger = logging.getLogger(__name__)


@attrs.frozen
class BrokerOptions:
    node_id: int = 1
    auto_create_topics: bool = True
    default_partitions: int = 1
    default_retention_ms: int = 0  # 0: keep forever
    default_retention_bytes: int = 0
    retention_check_seconds: float = RETENTION_CHECK_SECONDS


@attrs.frozen
class TopicConfig:
    retention_ms: int = 0
    retention_bytes: int = 0


@attrs.frozen
class Topic:
    name: str
    topic_id: int
    replication_factor: int
    config: TopicConfig
    created_ms: int
    logs: tuple[LocalPartitionLog, ...]

    @property
    def partitions(self) -> int:
        return len(self.logs)

    def log(self, partition: int) -> LocalPartitionLog:
        if not 0 <= partition < len(self.logs):
            raise InvalidArgument(
                f"partition {partition} does not exist in topic {self.name!r} "
                f"(valid partitions are 0..{len(self.logs) - 1})"
            )
        return self.logs[partition]


@attrs.define(slots=True, eq=False)
class CreateTopic(Request[Topic]):
    name: str
    partitions: int
    replication_factor: int
    config: TopicConfig
    # Auto-creation: an existing topic is the answer, not an error.
    if_absent: bool = False


@attrs.define(slots=True, eq=False)
class DeleteTopic(Request[None]):
    name: str


def _encode_topic(
    topic_id: int, partitions: int, replication_factor: int, config: TopicConfig, created_ms: int
) -> bytes:
    return json.dumps(
        {
            "id": topic_id,
            "partitions": partitions,
            "replication_factor": replication_factor,
            "retention_ms": config.retention_ms,
            "retention_bytes": config.retention_bytes,
            "created_ms": created_ms,
        },
        sort_keys=True,
    ).encode()


@attrs.frozen
class _Liveness:
    """What decides whether stored data is obsolete, published by the broker as one value."""

    live_ids: frozenset[int]
    #: Every topic id below this that is not live belongs to a deleted topic.
    next_topic_id: int
    log_starts: Mapping[tuple[int, int], int]


class ObsoleteData:
    """The storage engine's compaction filter for a broker's data.

    The store starts (and may compact) before the broker that knows which data is obsolete
    exists: until :meth:`bind` this keeps everything, then it asks the broker.
    Thread-safe (compactions call it from worker threads): one attribute read.
    """

    __slots__ = ("_broker",)

    def __init__(self) -> None:
        self._broker: Broker | None = None

    def bind(self, broker: Broker) -> None:
        self._broker = broker

    def __call__(self, key: bytes) -> bool:
        broker = self._broker
        return broker is not None and broker.is_obsolete(key)


class Broker(Actor[object]):
    mailbox_capacity = 256

    def __init__(
        self,
        store: Store,
        options: BrokerOptions | None = None,
        *,
        on_append: Callable[[str, int, int, int], None] | None = None,
    ) -> None:
        super().__init__("broker")
        self.store = store
        self.options = options or BrokerOptions()
        self._topics: Mapping[str, Topic] = MappingProxyType({})
        self._next_topic_id = 1
        self._round_robin = RoundRobinPartitioner()
        self._on_append = on_append
        #: Called (synchronously, in the actor) with a topic's name once it exists; the group
        #: coordinator uses it to rebalance groups already subscribed to that name.
        self.on_topic_created: list[Callable[[str], None]] = []
        # Key ranges that became obsolete since the last retention pass (deleted topics,
        # moved log starts): that pass asks the storage engine to reclaim their space.
        self._to_reclaim: list[tuple[bytes, bytes]] = []
        # Read by the compaction filter in storage worker threads: replaced, never mutated.
        # Until ``_load`` publishes the first one, nothing counts as obsolete.
        self._liveness = _Liveness(live_ids=frozenset(), next_topic_id=0, log_starts={})

    # -- snapshot reads (no actor round trip) -----------------------------------------

    @property
    def topics(self) -> Mapping[str, Topic]:
        return self._topics

    def topic(self, name: str) -> Topic:
        topic = self._topics.get(name)
        if topic is None:
            validate_topic_name(name)  # an invalid name is the client's mistake: say which
            raise NotFound(f"topic {name!r} does not exist")
        return topic

    def is_obsolete(self, key: bytes) -> bool:
        """Compaction filter: True for data of deleted topics and below a log start."""
        parsed = keys.parse_data_key(key)
        if parsed is None:
            return False
        topic_id, partition, last_offset = parsed
        liveness = self._liveness  # one read: one consistent view, whatever the actor does
        if topic_id not in liveness.live_ids:
            return topic_id < liveness.next_topic_id
        return last_offset < liveness.log_starts.get((topic_id, partition), 0)

    # -- lifecycle ---------------------------------------------------------------------

    async def on_start(self) -> None:
        self._load()

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._retention_loop)
            await super().serve()
            nursery.cancel_scope.cancel()

    async def on_stop(self) -> None:
        for topic in self._topics.values():
            for log in topic.logs:
                log.close()

    def _load(self) -> None:
        counters = self.store.get(keys.COUNTERS)
        next_topic_id = self._next_topic_id if counters is None else keys.decode_counters(counters)
        topics: dict[str, Topic] = {}
        for key, value in self.store.scan(keys.TOPIC, keys.prefix_end(keys.TOPIC)):
            name = key[1:].decode()
            try:
                meta = json.loads(value)
                logs = tuple(self._open_log(name, meta["id"], p) for p in range(meta["partitions"]))
                topics[name] = Topic(
                    name=name,
                    topic_id=meta["id"],
                    replication_factor=meta["replication_factor"],
                    config=TopicConfig(meta["retention_ms"], meta["retention_bytes"]),
                    created_ms=meta["created_ms"],
                    logs=logs,
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise CorruptionError(f"topic metadata of {name!r}", None, str(exc)) from None
        self._next_topic_id = next_topic_id
        self._publish(topics)

    def _open_log(self, name: str, topic_id: int, partition: int) -> LocalPartitionLog:
        raw = self.store.get(keys.state_key(topic_id, partition))
        state = (
            keys.PartitionState() if raw is None else keys.decode_state(raw, f"state of {name}[{partition}]")
        )

        def appended(records: int, size: int) -> None:
            if self._on_append is not None:
                self._on_append(name, partition, records, size)

        return LocalPartitionLog(self.store, name, topic_id, partition, state, on_append=appended)

    def _publish(self, topics: dict[str, Topic]) -> None:
        self._topics = MappingProxyType(topics)
        self._publish_liveness()

    def _publish_liveness(self) -> None:
        """Publish what the compaction filter reads, as one immutable value."""
        topics = self._topics.values()
        self._liveness = _Liveness(
            live_ids=frozenset(t.topic_id for t in topics),
            next_topic_id=self._next_topic_id,
            log_starts=MappingProxyType(
                {(t.topic_id, log.partition): log.log_start_offset for t in topics for log in t.logs}
            ),
        )

    # -- topic admin (requests served by the actor) -------------------------------------

    async def create_topic(
        self,
        name: str,
        partitions: int | None = None,
        replication_factor: int = 1,
        config: TopicConfig | None = None,
        *,
        if_absent: bool = False,
    ) -> Topic:
        (validate_topic_name if if_absent and name in self._topics else validate_new_topic_name)(name)
        count = self.options.default_partitions if partitions is None or partitions == 0 else partitions
        validate_partition_count(count)
        validate_replication_factor(replication_factor, brokers=1)
        config = config or TopicConfig(
            self.options.default_retention_ms, self.options.default_retention_bytes
        )
        if config.retention_ms < 0 or config.retention_bytes < 0:
            raise InvalidArgument("retention_ms and retention_bytes must be >= 0 (0 keeps data forever)")
        return await self.call(CreateTopic(name, count, replication_factor, config, if_absent))

    async def delete_topic(self, name: str) -> None:
        await self.call(DeleteTopic(name))

    async def handle(self, message: object) -> None:
        if isinstance(message, CreateTopic | DeleteTopic):
            try:
                if isinstance(message, CreateTopic):
                    await self._create(message)
                else:
                    await self._delete(message)
            except WriteRefused as exc:
                # Refused before anything changed (the change is made durable first).
                message.reply.fail(exc)
        else:
            raise TypeError(f"broker got an unexpected message {message!r}")

    async def _create(self, request: CreateTopic) -> None:
        existing = self._topics.get(request.name)
        if existing is not None:
            if request.if_absent:
                request.reply.set(existing)
            else:
                request.reply.fail(AlreadyExists(f"topic {request.name!r} already exists"))
            return
        topic_id = self._next_topic_id
        created_ms = int(time.time() * 1000)
        value = _encode_topic(
            topic_id, request.partitions, request.replication_factor, request.config, created_ms
        )
        await self.store.write(
            [(keys.topic_key(request.name), value), (keys.COUNTERS, keys.encode_counters(topic_id + 1))]
        )
        self._next_topic_id = topic_id + 1
        logs = tuple(self._open_log(request.name, topic_id, p) for p in range(request.partitions))
        topic = Topic(request.name, topic_id, request.replication_factor, request.config, created_ms, logs)
        self._publish({**self._topics, request.name: topic})
        request.reply.set(topic)
        for callback in self.on_topic_created:
            callback(request.name)

    async def _delete(self, request: DeleteTopic) -> None:
        topic = self._topics.get(request.name)
        if topic is None:
            request.reply.fail(NotFound(f"topic {request.name!r} does not exist"))
            return
        ops: list[tuple[bytes, bytes | None]] = [(keys.topic_key(request.name), None)]
        ops.extend((keys.state_key(topic.topic_id, p), None) for p in range(topic.partitions))
        await self.store.write(ops)
        remaining = dict(self._topics)
        del remaining[request.name]
        self._publish(remaining)
        for log in topic.logs:
            log.close()
        self._to_reclaim.append(keys.topic_data_range(topic.topic_id))
        request.reply.set(None)

    # -- data path (runs in the caller's task) -------------------------------------------

    async def produce(
        self, topic_name: str, partition: int, batches: Sequence[RecordBatch], *, wait: bool = True
    ) -> tuple[int, AppendResult]:
        topic = self._topics.get(topic_name)
        if topic is None:
            if not self.options.auto_create_topics:
                raise NotFound(f"topic {topic_name!r} does not exist (auto-creation is disabled)")
            topic = await self.create_topic(topic_name, if_absent=True)
        # Every record of every batch, whichever partition it goes to: a batch stored here is
        # one every consumer can decode (its codec included).
        for index, batch in enumerate(batches):
            try:
                batch.validate_records()
            except InvalidRecordBatch as exc:
                raise InvalidRecordBatch(f"batch {index} of the produce request: {exc}") from None
        if partition == ANY_PARTITION:
            partition = self._choose_partition(topic, batches)
        log = topic.log(partition)
        return partition, await log.append(batches, wait=wait)

    def _choose_partition(self, topic: Topic, batches: Sequence[RecordBatch]) -> int:
        """The broker picks when the producer did not: the first record's key hash, else
        round-robin (the client library always picks itself; this serves simple tools)."""
        first = next(iter(batches[0].records()), None) if batches else None
        if first is not None and first.key is not None:
            return partition_for_key(first.key, topic.partitions)
        return self._round_robin.next_partition(topic.name, topic.partitions)

    # -- retention ---------------------------------------------------------------------

    async def _retention_loop(self) -> None:
        while True:
            await trio.sleep(self.options.retention_check_seconds)
            try:
                await self.enforce_retention()
            except WriteRefused as exc:
                logger.warning("retention pass postponed: %s", exc)

    async def enforce_retention(self, now_ms: int | None = None) -> int:
        """Move log starts by each topic's retention, then have the storage engine reclaim
        the space of everything that became obsolete (retention and deleted topics).
        Returns the number of records removed by retention."""
        removed = 0
        try:
            for topic in list(self._topics.values()):
                for log in topic.logs:
                    before = log.log_start_offset
                    count = await log.apply_retention(
                        retention_ms=topic.config.retention_ms,
                        retention_bytes=topic.config.retention_bytes,
                        now_ms=now_ms,
                    )
                    if count:
                        removed += count
                        start = keys.data_key(topic.topic_id, log.partition, before)
                        self._to_reclaim.append(
                            (start, keys.data_key(topic.topic_id, log.partition, log.log_start_offset))
                        )
        finally:
            # Whatever moved before a full disk stopped the pass is durable: publish it.
            if removed:
                self._publish_liveness()
        if self._to_reclaim:
            ranges = list(self._to_reclaim)
            await self.store.reclaim(ranges)  # on a full disk the ranges wait for the next pass
            del self._to_reclaim[: len(ranges)]
        return removed


def describe(topic: Topic) -> dict[str, Any]:
    """A plain-data description (for the CLI's JSON output and tests)."""
    return {
        "name": topic.name,
        "partitions": [
            {
                "partition": log.partition,
                "log_start_offset": log.log_start_offset,
                "high_watermark": log.high_watermark,
                "size_bytes": log.size_bytes,
            }
            for log in topic.logs
        ],
        "replication_factor": topic.replication_factor,
        "retention_ms": topic.config.retention_ms,
        "retention_bytes": topic.config.retention_bytes,
    }


__all__ = ["Broker", "BrokerOptions", "Topic", "TopicConfig", "describe"]
