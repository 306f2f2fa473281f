"""Conversions between the generated protobuf messages and the client's value types."""

from __future__ import annotations

from sentinel.client.types import (
    BrokerInfo,
    ClusterMetadata,
    GroupInfo,
    GroupMemberInfo,
    PartitionInfo,
    PartitionLag,
    TopicInfo,
    TopicPartition,
)
from sentinel.generated.sentinel import v1 as pb


def partition_info(message: pb.PartitionMetadata) -> PartitionInfo:
    return PartitionInfo(
        partition=message.partition,
        leader=message.leader,
        replicas=tuple(message.replicas),
        in_sync_replicas=tuple(message.in_sync_replicas),
        log_start_offset=message.log_start_offset,
        high_watermark=message.high_watermark,
    )


def _sorted_partitions(partitions: list[pb.PartitionMetadata]) -> tuple[PartitionInfo, ...]:
    return tuple(partition_info(p) for p in sorted(partitions, key=lambda p: p.partition))


def topic_from_description(message: pb.TopicDescription) -> TopicInfo:
    config = message.config
    return TopicInfo(
        name=message.name,
        partitions=_sorted_partitions(message.partitions),
        replication_factor=message.replication_factor,
        retention_ms=config.retention_ms if config is not None else 0,
        retention_bytes=config.retention_bytes if config is not None else 0,
    )


def topic_from_metadata(message: pb.TopicMetadata) -> TopicInfo:
    return TopicInfo(
        name=message.name,
        partitions=_sorted_partitions(message.partitions),
        replication_factor=message.replication_factor,
    )


def cluster_metadata(message: pb.MetadataResponse) -> ClusterMetadata:
    return ClusterMetadata(
        brokers=tuple(BrokerInfo(b.node_id, b.host, b.port) for b in message.brokers),
        topics=tuple(topic_from_metadata(t) for t in message.topics if not t.error_code),
        controller_id=message.controller_id,
        topic_errors=tuple((t.name, t.error_code, t.error_message) for t in message.topics if t.error_code),
    )


def topic_partitions(messages: list[pb.TopicPartition]) -> tuple[TopicPartition, ...]:
    return tuple(TopicPartition(m.topic, m.partition) for m in messages)


def group_info(message: pb.GroupDescription) -> GroupInfo:
    return GroupInfo(
        group_id=message.group_id,
        state=message.state,
        generation=message.generation,
        members=tuple(
            GroupMemberInfo(m.member_id, m.client_id, topic_partitions(m.assignment)) for m in message.members
        ),
        offsets=tuple(
            PartitionLag(o.topic, o.partition, o.committed_offset, o.high_watermark, o.lag)
            for o in message.offsets
        ),
    )
