"""Broker: the topics this node serves and the partition replicas it hosts.

The cluster's topics are the controller's (``sentinel/cluster/controller.py``): creating or
deleting one is a proposal to it, from any node. The Broker follows the controller's
published metadata and keeps this node's partition replicas in step with it: it starts a
``PartitionReplica`` for every partition assigned here and closes those of deleted topics.
After each change it publishes an immutable ``topics`` mapping; produce and fetch look
their partition up in it without a round trip through any actor and go straight to the
replica (``topic.log(p)``), which answers UNAVAILABLE naming the leader when it does not
lead. A partition hosted elsewhere is a ``RemotePartition`` that says where to go.

Data of a deleted topic, records below a replica's log start (retention) and Raft entries
below a group's first index are dropped by the storage engine's compaction through
``is_obsolete``, the compaction filter: nothing scans or rewrites records to delete them.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import attrs
import trio

from sentinel.actors import Reply
from sentinel.broker import keys
from sentinel.broker.names import (
    validate_new_topic_name,
    validate_partition_count,
    validate_replication_factor,
    validate_topic_name,
)
from sentinel.broker.partitioner import ANY_PARTITION, RoundRobinPartitioner, partition_for_key
from sentinel.broker.reader import ReadResult
from sentinel.broker.replica import (
    ACKS_ALL,
    AppendResult,
    ApplyRetention,
    PartitionReplica,
    ReadRunner,
    partition_group,
)
from sentinel.cluster import metadata as md
from sentinel.cluster.controller import Controller, ControllerView
from sentinel.cluster.group import RaftObservers, Send
from sentinel.errors import (
    ActorClosed,
    InvalidArgument,
    InvalidRecordBatch,
    NotFound,
    SentinelError,
    Unavailable,
    WriteRefused,
)
from sentinel.raft import lsm_storage
from sentinel.raft.core import Config
from sentinel.raft.messages import NONE, Message, Role
from sentinel.records import RecordBatch
from sentinel.storage.store import Store

logger = logging.getLogger(__name__)

# Retention is enforced this often; deleting old data is never urgent.
RETENTION_CHECK_SECONDS = 30.0
# How often a node reports the partitions it has come to lead to the controller.
LEADER_REPORT_SECONDS = 0.5
# How long a topic change waits for this node to have applied it (a create answered before
# the topic is usable here would make the very next produce fail).
APPLY_WAIT_SECONDS = 10.0

TopicConfig = md.TopicConfig


@attrs.frozen
class BrokerOptions:
    node_id: int = 1
    auto_create_topics: bool = True
    default_partitions: int = 1
    default_replication_factor: int = 1
    default_retention_ms: int = 0  # 0: keep forever
    default_retention_bytes: int = 0
    retention_check_seconds: float = RETENTION_CHECK_SECONDS


class RemotePartition:
    """A partition this node holds no replica of: every data request is sent elsewhere."""

    def __init__(
        self,
        topic: str,
        partition: int,
        replicas: tuple[int, ...],
        address_of: Callable[[int], str | None],
        leader_of: Callable[[], int],
    ):
        self.topic = topic
        self.partition = partition
        self.replicas = replicas
        self._address_of = address_of
        self._leader_of = leader_of

    high_watermark = log_start_offset = log_end_offset = size_bytes = -1

    @property
    def leader(self) -> int:
        """The leader its leader last reported to the controller (else the preferred one)."""
        return self._leader_of()

    def _elsewhere(self) -> Unavailable:
        return Unavailable(
            f"this node holds no replica of {self.topic}[{self.partition}] (replicas: nodes "
            f"{', '.join(map(str, self.replicas))})",
            leader=self._address_of(self.leader),
        )

    def check_leader(self) -> None:
        raise self._elsewhere()

    def read(self, offset: int, max_bytes: int) -> ReadResult:
        raise self._elsewhere()

    async def fetch(self, offset: int, max_bytes: int) -> ReadResult:
        raise self._elsewhere()

    async def wait_for_data(self, offset: int) -> None:
        raise self._elsewhere()

    async def offset_for_timestamp(self, timestamp_ms: int) -> tuple[int, int]:
        raise self._elsewhere()

    async def produce(self, batches: Sequence[RecordBatch], acks: int = ACKS_ALL) -> AppendResult:
        raise self._elsewhere()

    def produce_nowait(self, batches: Sequence[RecordBatch], acks: int, reply: Reply[AppendResult]) -> bool:
        raise self._elsewhere()


Partition = PartitionReplica | RemotePartition


@attrs.frozen
class Topic:
    name: str
    topic_id: int
    replicas: tuple[tuple[int, ...], ...]
    config: TopicConfig
    created_ms: int
    logs: tuple[Partition, ...]

    @property
    def partitions(self) -> int:
        return len(self.logs)

    @property
    def replication_factor(self) -> int:
        return len(self.replicas[0]) if self.replicas else 0

    def log(self, partition: int) -> Partition:
        if not 0 <= partition < len(self.logs):
            raise InvalidArgument(
                f"partition {partition} does not exist in topic {self.name!r} "
                f"(valid partitions are 0..{len(self.logs) - 1})"
            )
        return self.logs[partition]


@attrs.frozen
class _Liveness:
    """What decides whether stored data is obsolete, published by the broker as one value
    (the compaction filter reads it from worker threads: one attribute read)."""

    live_ids: frozenset[int]
    #: Every topic id below this that is not live belongs to a deleted topic.
    next_topic_id: int
    log_starts: Mapping[tuple[int, int], int]
    raft: Mapping[int, lsm_storage.LsmRaftStorage]


class ObsoleteData:
    """The storage engine's compaction filter for a node's data.

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

    def snapshot(self) -> ObsoleteKeys | None:
        """The answers of this filter now, picklable (None: nothing is obsolete yet): what a
        compaction in the store's worker process applies (``StorageOptions.compaction_filter``)."""
        broker = self._broker
        return None if broker is None else broker.obsolete_keys()


@attrs.frozen(eq=False)
class ObsoleteKeys:
    """The broker's compaction filter at one moment, as plain data: picklable, so a
    compaction in a worker process applies it. Obsolete data stays obsolete (a deleted
    topic's id is never reused, log starts and Raft first indexes only move up), so this
    copy drops a subset of what the live filter would drop by the time it runs."""

    live_ids: frozenset[int]
    next_topic_id: int
    log_starts: dict[tuple[int, int], int]
    #: Raft group -> its first index (the entries below are obsolete); 0 is the controller's.
    first_indexes: dict[int, int]

    def __call__(self, key: bytes) -> bool:
        return _is_obsolete(key, self.live_ids, self.next_topic_id, self.log_starts, self._entry_obsolete)

    def _entry_obsolete(self, group: int, index: int) -> bool:
        first = self.first_indexes.get(group)
        return first is not None and index < first


def _is_obsolete(
    key: bytes,
    live_ids: frozenset[int],
    next_topic_id: int,
    log_starts: Mapping[tuple[int, int], int],
    entry_obsolete: Callable[[int, int], bool],
) -> bool:
    """The compaction filter's rule (the live one and its snapshots): ``entry_obsolete(group,
    index)`` says whether a live group's Raft entry is below its first index."""
    parsed = keys.parse_data_key(key)
    if parsed is not None:
        topic_id, partition, last_offset = parsed
        if topic_id not in live_ids:
            return topic_id < next_topic_id
        return last_offset < log_starts.get((topic_id, partition), 0)
    entry = lsm_storage.parse_entry_key(key)
    if entry is not None:
        group, index = entry
        if group != 0:
            topic_id = group >> 32
            if topic_id not in live_ids:
                return topic_id < next_topic_id
        return entry_obsolete(group, index)
    owner = _partition_key_topic(key)
    if owner is not None:
        # A deleted topic's partition state, producer table and Raft hard state.
        return owner not in live_ids and owner < next_topic_id
    return False


class Broker:
    """Not an actor of its own mailbox: a supervisor task that follows the controller's
    views, and a published ``topics`` mapping everything else reads."""

    def __init__(
        self,
        store: Store,
        controller: Controller,
        send: Send,
        options: BrokerOptions | None = None,
        *,
        controller_storage: lsm_storage.LsmRaftStorage | None = None,
        raft_config: Callable[[int, tuple[int, ...]], Config] | None = None,
        on_append: Callable[[str, int, int, int], None] | None = None,
        observers: RaftObservers | None = None,
        read_runner: ReadRunner | None = None,
        seed: int | None = None,
    ) -> None:
        self.store = store
        self._read_runner = read_runner
        self._observers = observers
        self.controller = controller
        self.options = options or BrokerOptions()
        self._send = send
        self._controller_storage = controller_storage
        self._raft_config = raft_config
        self._on_append = on_append
        self._rng = random.Random(seed)
        self._topics: Mapping[str, Topic] = MappingProxyType({})
        self._replicas: Mapping[int, PartitionReplica] = MappingProxyType({})  # by Raft group
        self._round_robin = RoundRobinPartitioner()
        #: Called with a topic's name once it exists here (the group coordinator rebalances
        #: groups subscribed to it).
        self.on_topic_created: list[Callable[[str], None]] = []
        self._reconciled = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._to_reclaim: list[tuple[bytes, bytes]] = []
        # Until the first reconcile publishes one, nothing counts as obsolete.
        self._liveness = _Liveness(frozenset(), 0, MappingProxyType({}), MappingProxyType({}))

    # -- snapshot reads (no actor round trip) -----------------------------------------

    @property
    def topics(self) -> Mapping[str, Topic]:
        return self._topics

    @property
    def replicas(self) -> Mapping[int, PartitionReplica]:
        return self._replicas

    def topic(self, name: str) -> Topic:
        topic = self._topics.get(name)
        if topic is None:
            validate_topic_name(name)  # an invalid name is the client's mistake: say which
            raise NotFound(f"topic {name!r} does not exist")
        return topic

    def address_of(self, node: int) -> str | None:
        broker = self.controller.view.image.brokers.get(node)
        return None if broker is None else f"{broker.host}:{broker.port}"

    def _reported_leader(self, topic_id: int, partition: int, replicas: tuple[int, ...]) -> int:
        return self.controller.view.image.leader_of(topic_id, partition, replicas)

    def deliver(self, group: int, m: Message) -> None:
        """A Raft message for one of this node's partition groups (from the peer links)."""
        replica = self._replicas.get(group)
        if replica is not None:
            replica.deliver(m)
        # else: a group not (yet) created here: dropped like a lost packet; Raft retransmits.

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Broker] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            view = self.controller.view
            # Start with the topics of every entry this node knew committed (a restart: the
            # controller replays them from its own log), so none is missing at first.
            with trio.move_on_after(APPLY_WAIT_SECONDS):
                while view.image.applied_index < view.commit:
                    view = await self.controller.wait_changed(view)
            await self._reconcile(view)
            task_status.started(self)
            nursery.start_soon(self._retention_loop)
            nursery.start_soon(self._leader_report_loop)
            try:
                while True:
                    view = await self.controller.wait_changed(view)
                    await self._reconcile(view)
            finally:
                for replica in self._replicas.values():
                    replica.close()

    async def stop_replicas(self) -> None:
        """Graceful stop: every replica finishes what is queued and stops."""
        replicas = list(self._replicas.values())
        for replica in replicas:
            replica.close()
        for replica in replicas:
            await replica.wait_stopped()

    async def _reconcile(self, view: ControllerView) -> None:
        """Make this node's replicas and published topics match the metadata ``view``."""
        image = view.image
        me = self.options.node_id
        replicas = dict(self._replicas)
        topics: dict[str, Topic] = {}
        created: list[str] = []
        wanted: set[int] = set()
        for name, meta in image.topics.items():
            logs: list[Partition] = []
            previous = self._topics.get(name)
            if previous is not None and previous.topic_id != meta.topic_id:
                previous = None  # deleted and created again: a topic of its own
            kept = previous.logs if previous is not None else ()
            for p, assigned in enumerate(meta.replicas):
                group = partition_group(meta.topic_id, p)
                if me not in assigned:
                    # Kept while its replicas stay: a new object would make a new Topic of an
                    # unchanged one on every metadata change (a commit, a leader report).
                    old = kept[p] if p < len(kept) else None
                    if isinstance(old, RemotePartition) and old.replicas == assigned:
                        logs.append(old)
                        continue
                    leader_of = functools.partial(self._reported_leader, meta.topic_id, p, assigned)
                    logs.append(RemotePartition(name, p, assigned, self.address_of, leader_of))
                    continue
                wanted.add(group)
                replica = replicas.get(group)
                if replica is None:
                    replica = replicas[group] = await self._start_replica(name, meta, p, assigned)
                logs.append(replica)
            if previous is not None and previous.logs == tuple(logs):
                topics[name] = previous  # unchanged: the same object
            else:
                topics[name] = Topic(
                    name, meta.topic_id, meta.replicas, meta.config, meta.created_ms, tuple(logs)
                )
            if previous is None:
                created.append(name)
        for group in [g for g in replicas if g not in wanted]:
            gone = replicas.pop(group)
            gone.close()  # its topic was deleted: wake waiting readers, stop the group
            self._to_reclaim.extend(self._group_ranges(gone.topic_id, gone.partition))
        deleted_ids = {t.topic_id for t in self._topics.values()} - {t.topic_id for t in topics.values()}
        for topic_id in deleted_ids:
            self._to_reclaim.append(keys.topic_data_range(topic_id))
        self._replicas = MappingProxyType(replicas)
        self._topics = MappingProxyType(topics)
        self._publish_liveness(image.next_topic_id)
        self._reconciled.set()
        self._reconciled = trio.Event()
        for name in created:
            for callback in self.on_topic_created:
                callback(name)

    async def _start_replica(
        self, name: str, meta: md.TopicMeta, partition: int, assigned: tuple[int, ...]
    ) -> PartitionReplica:
        me = self.options.node_id
        config = self._raft_config(me, assigned) if self._raft_config is not None else None

        def appended(records: int, size: int) -> None:
            if self._on_append is not None:
                self._on_append(name, partition, records, size)

        replica = PartitionReplica(
            self.store,
            topic=name,
            topic_id=meta.topic_id,
            partition=partition,
            node_id=me,
            replicas=assigned,
            send=self._send,
            rng=random.Random(self._rng.random()),
            raft_config=config,
            address_of=self.address_of,
            on_append=appended,
            observers=self._observers,
            read_runner=self._read_runner,
        )
        assert self._nursery is not None
        await self._nursery.start(replica.run)
        return replica

    def _group_ranges(self, topic_id: int, partition: int) -> list[tuple[bytes, bytes]]:
        prefix = lsm_storage.group_prefix(partition_group(topic_id, partition))
        return [(prefix, keys.prefix_end(prefix))]

    # -- the compaction filter ---------------------------------------------------------

    def _publish_liveness(self, next_topic_id: int) -> None:
        topics = self._topics.values()
        self._liveness = _Liveness(
            live_ids=frozenset(t.topic_id for t in topics),
            next_topic_id=next_topic_id,
            log_starts=MappingProxyType(
                {(r.topic_id, r.partition): r.view.log_start_offset for r in self._replicas.values()}
            ),
            raft=MappingProxyType({g: r.storage for g, r in self._replicas.items()}),
        )

    def is_obsolete(self, key: bytes) -> bool:
        """Compaction filter: data, partition state and Raft records of deleted topics,
        records below a replica's log start, Raft entries below a group's first index."""
        liveness = self._liveness  # one read: one consistent view, whatever else runs

        def entry_obsolete(group: int, index: int) -> bool:
            storage = self._controller_storage if group == 0 else liveness.raft.get(group)
            return storage is not None and storage.is_obsolete(index)

        live = liveness.live_ids
        return _is_obsolete(key, live, liveness.next_topic_id, liveness.log_starts, entry_obsolete)

    def obsolete_keys(self) -> ObsoleteKeys:
        """What :meth:`is_obsolete` answers now, as plain data (for a compaction in a worker
        process, which cannot read the broker's state)."""
        liveness = self._liveness
        first_indexes = {group: storage.first_index() for group, storage in liveness.raft.items()}
        if self._controller_storage is not None:
            first_indexes[0] = self._controller_storage.first_index()
        log_starts = dict(liveness.log_starts)
        return ObsoleteKeys(liveness.live_ids, liveness.next_topic_id, log_starts, first_indexes)

    # -- topic admin (proposals to the controller) ---------------------------------------

    async def create_topic(
        self,
        name: str,
        partitions: int | None = None,
        replication_factor: int | None = None,
        config: TopicConfig | None = None,
        *,
        if_absent: bool = False,
    ) -> Topic:
        (validate_topic_name if if_absent and name in self._topics else validate_new_topic_name)(name)
        count = self.options.default_partitions if not partitions else partitions
        validate_partition_count(count)
        image = self.controller.view.image
        brokers = sorted(image.brokers)
        if replication_factor is None:
            # A default never exceeds the cluster (a one-node cluster gets 1).
            rf = min(self.options.default_replication_factor, max(len(brokers), 1))
        else:
            rf = replication_factor
        validate_replication_factor(rf, brokers=max(len(brokers), 1))
        config = config or TopicConfig(
            self.options.default_retention_ms, self.options.default_retention_bytes
        )
        if config.retention_ms < 0 or config.retention_bytes < 0:
            raise InvalidArgument("retention_ms and retention_bytes must be >= 0 (0 keeps data forever)")
        if not brokers:
            raise Unavailable("the cluster has no registered brokers yet: retry in a moment")
        existing = self._topics.get(name)
        if existing is not None and if_absent:
            return existing
        self.check_disk_space()
        replicas = md.assign_replicas(brokers, count, rf, image.topics)
        created = await self.controller.propose(
            md.create_topic(name, replicas, config, int(time.time() * 1000), if_absent=if_absent)
        )
        assert isinstance(created, md.TopicMeta)
        topic_id = created.topic_id
        topic = await self._wait_applied(name, lambda topic: topic is not None and topic.topic_id == topic_id)
        await self.wait_leaders([topic])
        return topic

    async def delete_topic(self, name: str) -> None:
        validate_topic_name(name)
        self.check_disk_space()
        await self.controller.propose(md.delete_topic(name))
        await self._wait_applied(name, lambda topic: topic is None)

    def check_disk_space(self) -> None:
        """Refuse a write at once while writes would fail for lack of space: a Raft group
        would hold it (and its caller) until space is back."""
        self.store.check_space()

    async def wait_leaders(self, topics: Iterable[Topic]) -> None:
        """Until every replica of ``topics`` hosted here knows its leader and one that leads
        takes produce (``leader_ready``): a topic answered as created, or a node that serves,
        is usable at once. Bounded: past it, clients are told to retry."""
        with trio.move_on_after(APPLY_WAIT_SECONDS):
            for topic in topics:
                for log in topic.logs:
                    if not isinstance(log, PartitionReplica):
                        continue
                    view = log.view
                    while not view.closed and (
                        view.leader == NONE or (view.role is Role.LEADER and not view.leader_ready)
                    ):
                        await view.changed.wait()
                        view = log.view

    async def _wait_applied(self, name: str, done: Callable[[Topic | None], bool]) -> Any:
        with trio.move_on_after(APPLY_WAIT_SECONDS):
            while not done(self._topics.get(name)):
                await self._reconciled.wait()
            return self._topics.get(name)
        raise Unavailable(
            f"the change to topic {name!r} is committed but not yet applied on this node; retry"
        )

    # -- data path (runs in the caller's task) -------------------------------------------

    async def produce(
        self, topic_name: str, partition: int, batches: Sequence[RecordBatch], *, acks: int = ACKS_ALL
    ) -> tuple[int, AppendResult]:
        _validate_records(batches)
        topic = self._topics.get(topic_name)
        if topic is None:
            if not self.options.auto_create_topics:
                raise NotFound(f"topic {topic_name!r} does not exist (auto-creation is disabled)")
            topic = await self.create_topic(topic_name, if_absent=True)
        self.store.check_space()  # refused at once: the replica would wait for space with it queued
        if partition == ANY_PARTITION:
            partition = self._choose_partition(topic, batches)
        return partition, await topic.log(partition).produce(batches, acks)

    def produce_nowait(
        self,
        topic_name: str,
        partition: int,
        batches: Sequence[RecordBatch],
        acks: int,
        reply: Reply[AppendResult],
    ) -> bool:
        """``produce`` without waiting, for the front end's fast path: hands the batches with
        ``reply`` to the partition's replica and returns True, or returns False (having done
        nothing) when the request needs ``produce``'s waits: its topic must be created, the
        broker must pick the partition, or the replica's mailbox is full. Raises what
        ``produce`` would for a bad request, a full disk or a partition led elsewhere."""
        _validate_records(batches)
        topic = self._topics.get(topic_name)
        if topic is None or partition == ANY_PARTITION:
            return False
        self.store.check_space()
        return topic.log(partition).produce_nowait(batches, acks, reply)

    def _choose_partition(self, topic: Topic, batches: Sequence[RecordBatch]) -> int:
        """The broker picks when the producer did not: the first record's key hash, else
        round-robin (the client library always picks itself; this serves simple tools)."""
        first = next(iter(batches[0].records()), None) if batches else None
        if first is not None and first.key is not None:
            return partition_for_key(first.key, topic.partitions)
        return self._round_robin.next_partition(topic.name, topic.partitions)

    # -- retention ---------------------------------------------------------------------

    def unreported_leaderships(self) -> list[tuple[int, int, int]]:
        """``(topic id, partition, term)`` of each partition this node leads (and serves)
        that the controller's metadata does not yet say it leads in that term."""
        me = self.options.node_id
        image = self.controller.view.image
        out = []
        for topic in self._topics.values():
            for p, log in enumerate(topic.logs):
                if not isinstance(log, PartitionReplica):
                    continue
                view = log.view
                if (
                    view.leader == me
                    and view.leader_ready
                    and image.leaders.get((topic.topic_id, p))
                    != (
                        me,
                        view.term,
                    )
                ):
                    out.append((topic.topic_id, p, view.term))
        return out

    async def _leader_report_loop(self) -> None:
        """Tell the controller which partitions this node leads, so that every node, those
        holding no replica of a partition included, names its leader to clients. Reports
        carry the term and never replace a newer one; a failed proposal (no controller
        leader right now) is simply made again the next round."""
        while True:
            await trio.sleep(LEADER_REPORT_SECONDS)
            leaderships = self.unreported_leaderships()
            if leaderships:
                try:
                    await self.controller.propose(md.report_leaders(self.options.node_id, leaderships))
                except SentinelError as exc:
                    logger.debug("leadership report not accepted yet: %s", exc)

    async def _retention_loop(self) -> None:
        while True:
            await trio.sleep(self.options.retention_check_seconds)
            try:
                await self.enforce_retention()
            except WriteRefused as exc:
                logger.warning("retention postponed: %s", exc)

    async def enforce_retention(self, now_ms: int | None = None) -> int:
        """Have every hosted replica move its log start by its topic's retention, then the
        storage engine reclaim the space of everything that became obsolete. Returns the
        number of records removed."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        removed = 0
        for topic in list(self._topics.values()):
            config = topic.config
            if config.retention_ms <= 0 and config.retention_bytes <= 0:
                continue
            for log in topic.logs:
                if not isinstance(log, PartitionReplica):
                    continue
                before = log.view.log_start_offset
                try:
                    count = await log.call(
                        ApplyRetention(config.retention_ms, config.retention_bytes, now_ms)
                    )
                except (ActorClosed, Unavailable):
                    continue  # deleted or stopping meanwhile
                if count:
                    removed += count
                    self._to_reclaim.append(
                        (
                            keys.data_key(topic.topic_id, log.partition, before),
                            keys.data_key(topic.topic_id, log.partition, log.view.log_start_offset),
                        )
                    )
                    self._to_reclaim.append(log.storage.obsolete_range())
        if removed:
            self._publish_liveness(self._liveness.next_topic_id)
        if self._to_reclaim:
            ranges, self._to_reclaim = self._to_reclaim, []
            try:
                await self.store.reclaim(ranges)
            except SentinelError:
                self._to_reclaim[:0] = ranges  # the next pass tries again
                raise
        return removed


_PARTITION_KEY_PREFIXES = (keys.STATE, b"P")


def _partition_key_topic(key: bytes) -> int | None:
    """The topic id of a per-partition record that is not data or a Raft entry: the
    partition state (S), the producer table (P), a Raft group's hard state, meta and
    snapshot (R with a partition's group id)."""
    if len(key) == 9 and key[:1] in _PARTITION_KEY_PREFIXES:
        return int.from_bytes(key[1:5], "big")
    if len(key) == 10 and key[:1] == lsm_storage.RAFT:
        group = int.from_bytes(key[1:9], "big")
        return group >> 32 if group else None
    return None


def describe(topic: Topic) -> dict[str, Any]:
    """A plain-data description (for the CLI's JSON output and tests)."""
    return {
        "name": topic.name,
        "partitions": [
            {
                "partition": p,
                "replicas": list(topic.replicas[p]),
                "leader": log.view.leader if isinstance(log, PartitionReplica) else -1,
                "log_start_offset": log.log_start_offset,
                "high_watermark": log.high_watermark,
                "size_bytes": log.size_bytes,
            }
            for p, log in enumerate(topic.logs)
        ],
        "replication_factor": topic.replication_factor,
        "retention_ms": topic.config.retention_ms,
        "retention_bytes": topic.config.retention_bytes,
    }


def _validate_records(batches: Sequence[RecordBatch]) -> None:
    # Every record of every batch, whichever partition it goes to: a batch stored here is
    # one every consumer can decode (its codec included). Checked before anything is
    # created: a bad request never auto-creates its topic.
    for index, batch in enumerate(batches):
        try:
            batch.validate_records()
        except InvalidRecordBatch as exc:
            raise InvalidRecordBatch(f"batch {index} of the produce request: {exc}") from None


__all__ = [
    "Broker",
    "BrokerOptions",
    "ObsoleteData",
    "ObsoleteKeys",
    "RemotePartition",
    "Topic",
    "TopicConfig",
    "describe",
]
