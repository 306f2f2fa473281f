"""The Trio side of every RPC: protobuf request in, protobuf response out.

Each handler validates its request, calls the broker (or the group coordinator) and builds
the response. Handlers raise the typed errors of ``sentinel.errors``; the front end turns
them into gRPC statuses in one place. They run as Trio tasks the bridge spawns, so a
client that vanishes cancels its handler.

Record data stays in RecordBatch bytes end to end: produce validates each batch's header
and CRC and stores it verbatim with its new base offset; fetch returns stored batches
verbatim.
"""

from __future__ import annotations

import contextlib
import enum
import time
from collections.abc import Callable, Sequence

import trio

from sentinel.actors import Reply
from sentinel.broker.broker import Broker, Topic, TopicConfig
from sentinel.broker.coordinator import GroupCoordinator
from sentinel.broker.replica import (
    ACKS_ALL,
    ACKS_LEADER,
    ACKS_NONE,
    AppendResult,
    PartitionReplica,
    ReplicaView,
)
from sentinel.cluster import metadata as md
from sentinel.cluster.controller import ControllerView
from sentinel.cluster.transport import LinkStatistics
from sentinel.errors import InvalidArgument, NotFound, SentinelError, Unavailable
from sentinel.generated.sentinel import v1 as pb
from sentinel.metrics import Metrics
from sentinel.records import RecordBatch, iter_batches
from sentinel.server.status import status_of

_ACKS = {pb.Acks.ALL: ACKS_ALL, pb.Acks.LEADER: ACKS_LEADER, pb.Acks.NONE: ACKS_NONE}
DEFAULT_FETCH_MAX_BYTES = 1024 * 1024
# How long TransferLeader waits for the new leader (a transfer is abandoned after one
# election timeout, about 1 s with the default 100 ms tick).
TRANSFER_WAIT_SECONDS = 3.0
# A single fetch response never carries more than this (the client can ask for less). A
# larger max_bytes is capped, not refused, as Kafka caps it by the broker's fetch.max.bytes:
# max_bytes is a budget, and a smaller response is always a valid answer to it.
MAX_FETCH_BYTES = 16 * 1024 * 1024
# The longest a fetch may long-poll: a client wanting longer asks again. Refused above it (a
# silent cap would hide a client bug: a wait computed in seconds or microseconds).
MAX_WAIT_MS = 30_000
# Kafka's offset.metadata.max.bytes: the metadata string committed with an offset is kept
# in storage and returned by every FetchOffsets, so it is bounded.
MAX_OFFSET_METADATA_BYTES = 4096


class ProduceNeedsTask(Exception):
    """``Handlers.produce_nowait`` cannot serve this produce (nothing was done): call
    ``Handlers.produce`` in a Trio task instead."""


class Handlers:
    def __init__(
        self,
        broker: Broker,
        coordinator: GroupCoordinator,
        metrics: Metrics,
        *,
        host: str,
        port: int,
        max_batch_bytes: int,
        peers: Callable[[], list[LinkStatistics]] = list,
    ) -> None:
        self.broker = broker
        self.peers = peers
        self.coordinator = coordinator
        self.metrics = metrics
        self.host = host
        self.port = port
        self.max_batch_bytes = max_batch_bytes

    # -- data path ---------------------------------------------------------------------

    async def produce(self, request: pb.ProduceRequest) -> pb.ProduceResponse:
        started = time.perf_counter()
        batches = self._produced_batches(request)
        acks = _ACKS[request.acks]
        partition, result = await self.broker.produce(request.topic, request.partition, batches, acks=acks)
        return self.produce_response(request, partition, result, started)

    def produce_nowait(self, reply: Reply[AppendResult], request: pb.ProduceRequest) -> None:
        """``produce`` without a Trio task: the front end's fast path (``TrioPortal.forward``
        runs this on the Trio thread). ``reply`` is answered with the AppendResult by the
        partition replica; a bad request raises here as it would in ``produce``, and one
        only ``produce`` can serve (a topic to create, a partition to pick, a full replica
        mailbox) raises :class:`ProduceNeedsTask` having done nothing."""
        batches = self._produced_batches(request)
        if not self.broker.produce_nowait(
            request.topic, request.partition, batches, _ACKS[request.acks], reply
        ):
            raise ProduceNeedsTask(request.topic)

    def produce_response(
        self, request: pb.ProduceRequest, partition: int, result: AppendResult, started: float
    ) -> pb.ProduceResponse:
        """The answer to a produce that ``started`` (``time.perf_counter``) and was appended
        as ``result``; observes its latency. Safe on either thread of the bridge."""
        self.metrics.observe_produce(time.perf_counter() - started)
        return pb.ProduceResponse(
            topic=request.topic,
            partition=partition,
            base_offset=result.base_offset if request.acks != pb.Acks.NONE else -1,
            log_append_time_ms=result.log_append_time_ms,
        )

    def _produced_batches(self, request: pb.ProduceRequest) -> list[RecordBatch]:
        if not request.record_batches:
            raise InvalidArgument("produce request carries no record batches")
        known_enum(request.acks, "acks")
        return list(iter_batches(request.record_batches, max_batch_bytes=self.max_batch_bytes))

    async def fetch(self, request: pb.ConsumeRequest) -> pb.ConsumeResponse:
        """One long-polled read: returns as soon as data is committed, or after max_wait."""
        if not 0 <= request.max_wait_ms <= MAX_WAIT_MS:
            raise InvalidArgument(
                f"max_wait_ms must be between 0 and {MAX_WAIT_MS}, got {request.max_wait_ms}: "
                "to wait longer, fetch again"
            )
        topic = self.broker.topic(request.topic)
        log = topic.log(request.partition)
        if request.offset < 0:
            raise InvalidArgument(f"offset must be >= 0, got {request.offset}")
        max_bytes = min(request.max_bytes or DEFAULT_FETCH_MAX_BYTES, MAX_FETCH_BYTES)
        started = time.perf_counter()
        result = await log.fetch(request.offset, max_bytes)
        if not result.data and request.max_wait_ms > 0:
            waiting = time.perf_counter()
            with trio.move_on_after(request.max_wait_ms / 1000):
                await log.wait_for_data(request.offset)
            started += time.perf_counter() - waiting  # the long poll is not latency
            current = self.broker.topics.get(request.topic)
            if current is None or current.topic_id != topic.topic_id:
                raise NotFound(f"topic {request.topic!r} was deleted while the fetch waited")
            result = await log.fetch(request.offset, max_bytes)
        if result.data:
            self.metrics.record_consumed(
                request.topic, request.partition, result.next_offset - request.offset, len(result.data)
            )
        self.metrics.consume_latency.observe(time.perf_counter() - started)
        return pb.ConsumeResponse(
            topic=request.topic,
            partition=request.partition,
            record_batches=result.data,
            high_watermark=result.high_watermark,
            log_start_offset=result.log_start_offset,
            next_offset=result.next_offset,
        )

    # -- metadata and admin ------------------------------------------------------------

    def _partition_metadata(self, topic: Topic) -> list[pb.PartitionMetadata]:
        out = []
        for p, log in enumerate(topic.logs):
            replicas = list(topic.replicas[p])
            if isinstance(log, PartitionReplica):
                view = log.view
                # A replica knows its leader (0 while electing); the client asks again then.
                leader = view.leader if view.leader else -1
            else:
                leader = log.leader  # as its leader reported it to the controller
            out.append(
                pb.PartitionMetadata(
                    partition=p,
                    leader=leader,
                    replicas=replicas,
                    in_sync_replicas=replicas,
                    log_start_offset=log.log_start_offset,
                    high_watermark=log.high_watermark,
                )
            )
        return out

    def _describe(self, topic: Topic) -> pb.TopicDescription:
        return pb.TopicDescription(
            name=topic.name,
            replication_factor=topic.replication_factor,
            partitions=self._partition_metadata(topic),
            config=pb.TopicConfig(
                retention_ms=topic.config.retention_ms, retention_bytes=topic.config.retention_bytes
            ),
        )

    async def fetch_metadata(self, request: pb.MetadataRequest) -> pb.MetadataResponse:
        # A client that asks (Kafka's allow_auto_topic_creation) gets requested topics created
        # here, by the broker's own setting: clients never create topics on their own.
        if request.allow_auto_create and self.broker.options.auto_create_topics:
            for name in request.topics:
                if name not in self.broker.topics:
                    with contextlib.suppress(InvalidArgument):  # reported per topic below
                        await self.broker.create_topic(name, if_absent=True)
        topics = self.broker.topics
        entries = []
        for name in request.topics or sorted(topics):
            topic = topics.get(name)
            if topic is not None:
                entries.append(
                    pb.TopicMetadata(
                        name=name,
                        partitions=self._partition_metadata(topic),
                        replication_factor=topic.replication_factor,
                    )
                )
                continue
            try:  # as the topic's own request would fail: an invalid name, or no such topic
                self.broker.topic(name)
            except SentinelError as exc:
                failed = status_of(exc)
                entries.append(
                    pb.TopicMetadata(name=name, error_code=failed.status.value, error_message=failed.message)
                )
        view = self.broker.controller.view
        brokers = [
            pb.BrokerInfo(node_id=b.node_id, host=b.host, port=b.port) for b in view.image.brokers.values()
        ]
        return pb.MetadataResponse(
            brokers=sorted(brokers, key=lambda b: b.node_id),
            topics=entries,
            controller_id=view.leader if view.leader else -1,
        )

    async def list_offsets(self, request: pb.ListOffsetsRequest) -> pb.ListOffsetsResponse:
        known_enum(request.spec, "spec")
        log = self.broker.topic(request.topic).log(request.partition)
        if request.spec == pb.OffsetSpec.EARLIEST:
            return pb.ListOffsetsResponse(offset=log.log_start_offset, timestamp_ms=-1)
        if request.spec == pb.OffsetSpec.TIMESTAMP:
            if request.timestamp_ms < 0:
                raise InvalidArgument(f"timestamp_ms must be >= 0, got {request.timestamp_ms}")
            offset, timestamp = await log.offset_for_timestamp(request.timestamp_ms)
            return pb.ListOffsetsResponse(offset=offset, timestamp_ms=timestamp)
        return pb.ListOffsetsResponse(offset=log.high_watermark, timestamp_ms=-1)

    async def create_topic(self, request: pb.CreateTopicRequest) -> pb.CreateTopicResponse:
        # Both fields are proto3 `optional`: omitted asks for the broker's default, so a 0 on
        # the wire is a value, and a wrong one (a typo must not create one partition).
        for field, value in (
            ("partitions", request.partitions),
            ("replication_factor", request.replication_factor),
        ):
            if value is not None and value < 1:
                raise InvalidArgument(
                    f"{field} must be at least 1, got {value} (omit the field for the broker's default)"
                )
        config = None
        if request.config is not None:
            config = TopicConfig(request.config.retention_ms, request.config.retention_bytes)
        topic = await self.broker.create_topic(
            request.name,
            request.partitions,
            request.replication_factor,  # omitted (None): the broker's default
            config,
        )
        return pb.CreateTopicResponse(topic=self._describe(topic))

    async def delete_topic(self, request: pb.DeleteTopicRequest) -> pb.DeleteTopicResponse:
        await self.broker.delete_topic(request.name)
        await self.coordinator.forget_topic(request.name)
        return pb.DeleteTopicResponse()

    async def list_topics(self, request: pb.ListTopicsRequest) -> pb.ListTopicsResponse:
        topics = self.broker.topics
        return pb.ListTopicsResponse(topics=[self._describe(topics[name]) for name in sorted(topics)])

    async def describe_topic(self, request: pb.DescribeTopicRequest) -> pb.TopicDescription:
        return self._describe(self.broker.topic(request.name))

    # -- the cluster ---------------------------------------------------------------------

    async def cluster_status(self, request: pb.ClusterStatusRequest) -> pb.ClusterStatusResponse:
        broker = self.broker
        controller = broker.controller.view
        image = controller.image
        groups = [_group_status("", 0, sorted(image.brokers), controller)]
        for topic in list(broker.topics.values()):
            for p, log in enumerate(topic.logs):
                if isinstance(log, PartitionReplica):
                    groups.append(_group_status(topic.name, p, topic.replicas[p], log.view))
        return pb.ClusterStatusResponse(
            node_id=broker.options.node_id,
            controller_id=controller.leader or -1,
            controller_term=controller.term,
            brokers=[
                pb.BrokerInfo(node_id=b.node_id, host=b.host, port=b.port)
                for b in sorted(image.brokers.values(), key=lambda b: b.node_id)
            ],
            peers=[pb.PeerStatus(node_id=link.peer, connected=link.connected) for link in self.peers()],
            groups=groups,
        )

    async def transfer_leader(self, request: pb.TransferLeaderRequest) -> pb.TransferLeaderResponse:
        topic = self.broker.topic(request.topic)
        log = topic.log(request.partition)
        if request.to not in topic.replicas[request.partition]:
            raise InvalidArgument(
                f"node {request.to} holds no replica of {request.topic}[{request.partition}] "
                f"(replicas: {', '.join(map(str, topic.replicas[request.partition]))})"
            )
        log.check_leader()
        assert isinstance(log, PartitionReplica)
        if log.view.leader != request.to:
            await log.transfer_leadership(request.to)
            # A transfer is an election the target wins at once, or abandoned after one
            # election timeout: wait a little longer than that for the outcome.
            with trio.move_on_after(TRANSFER_WAIT_SECONDS):
                view = log.view
                while view.leader != request.to and not view.closed:
                    await view.changed.wait()
                    view = log.view
        leader = log.view.leader
        if leader != request.to:
            raise Unavailable(
                f"the transfer of {request.topic}[{request.partition}] to node {request.to} did not "
                f"complete (leader: {leader or 'none'}); is node {request.to} up and caught up?"
            )
        return pb.TransferLeaderResponse(leader=leader)

    async def init_producer_id(self, request: pb.InitProducerIdRequest) -> pb.InitProducerIdResponse:
        # A controller write: refused up front on a full disk, as produce is (the controller's
        # Raft group would hold it until space is back, and the producer would time out).
        self.broker.check_disk_space()
        producer_id = await self.broker.controller.propose(md.allocate_producer_id())
        assert isinstance(producer_id, int)
        return pb.InitProducerIdResponse(producer_id=producer_id, producer_epoch=0)

    # -- consumer groups ---------------------------------------------------------------

    async def join_group(self, request: pb.JoinGroupRequest) -> pb.JoinGroupResponse:
        return await self.coordinator.join(request)

    async def heartbeat(self, request: pb.HeartbeatRequest) -> pb.HeartbeatResponse:
        return await self.coordinator.heartbeat(request)

    async def leave_group(self, request: pb.LeaveGroupRequest) -> pb.LeaveGroupResponse:
        return await self.coordinator.leave(request)

    async def commit_offsets(self, request: pb.CommitOffsetsRequest) -> pb.CommitOffsetsResponse:
        for po in request.offsets:
            size = len(po.metadata.encode())
            if size > MAX_OFFSET_METADATA_BYTES:
                raise InvalidArgument(
                    f"metadata of the offset committed for {po.topic}[{po.partition}] is {size} bytes, "
                    f"more than the limit of {MAX_OFFSET_METADATA_BYTES}"
                )
        return await self.coordinator.commit(request)

    async def fetch_offsets(self, request: pb.FetchOffsetsRequest) -> pb.FetchOffsetsResponse:
        return await self.coordinator.fetch_offsets(request)

    async def list_groups(self, request: pb.ListGroupsRequest) -> pb.ListGroupsResponse:
        return await self.coordinator.list_groups()

    async def describe_group(self, request: pb.DescribeGroupRequest) -> pb.GroupDescription:
        return await self.coordinator.describe(request.group_id)


def _group_status(
    topic: str, partition: int, replicas: Sequence[int], view: ReplicaView | ControllerView
) -> pb.GroupStatus:
    high_watermark = view.high_watermark if isinstance(view, ReplicaView) else -1
    log_end = view.log_end_offset if isinstance(view, ReplicaView) else -1
    return pb.GroupStatus(
        topic=topic,
        partition=partition,
        leader=view.leader or -1,
        replicas=list(replicas),
        role=view.role.name.lower(),
        term=view.term,
        commit_index=view.stats.commit,
        high_watermark=high_watermark,
        log_end_offset=log_end,
        followers=[pb.FollowerLag(node_id=f, lag=lag) for f, lag in view.stats.follower_lag],
    )


def known_enum(value: enum.Enum, field: str) -> None:
    """Refuse an enum value the schema does not define (protobuf keeps unknown ones)."""
    members = type(value).__members__
    if value.name not in members or members[value.name] is not value:
        names = ", ".join(f"{m.name} ({m.value})" for m in members.values())
        raise InvalidArgument(f"unknown {field} {value.value}: expected one of {names}")
