"""Sentinel's Python client library (asyncio): Producer, Consumer, Admin.

Each is an async context manager taking the bootstrap address (``"host:port"``) first::

    async with Producer("localhost:9092") as producer:
        metadata = await producer.send_and_wait("orders", b"hello", key=b"customer-1")

    async with Consumer("localhost:9092", group_id="billing", auto_offset_reset="earliest") as consumer:
        consumer.subscribe(["orders"])
        async for record in consumer:
            ...

Errors are the typed errors of ``sentinel.errors`` (see ``sentinel.client.errors``); damaged
stored data a consumer meets is ``CorruptRecordBatch``, naming topic, partition and offset;
an idempotent producer's batch may fail with ``OutOfOrderSequence`` or ``ProducerFenced``.
A broker that does not answer at all (connection refused, reset or lost) is
``BrokerUnreachable``, an ``Unavailable``; one that answers "not now" is a plain
``Unavailable``; a request whose deadline passed is ``RequestTimeout``.
"""

from sentinel.client.admin import Admin
from sentinel.client.consumer import Consumer
from sentinel.client.errors import (
    BrokerUnreachable,
    CorruptRecordBatch,
    OutOfOrderSequence,
    ProducerFenced,
    RequestTimeout,
)
from sentinel.client.producer import Producer
from sentinel.client.types import (
    BatchMetadata,
    BrokerInfo,
    ClusterMetadata,
    ConsumerRebalanceListener,
    ConsumerRecord,
    GroupInfo,
    GroupMemberInfo,
    OffsetAndTimestamp,
    PartitionInfo,
    PartitionLag,
    RecordMetadata,
    TopicInfo,
    TopicPartition,
)

__all__ = [
    "Admin",
    "BatchMetadata",
    "BrokerInfo",
    "BrokerUnreachable",
    "ClusterMetadata",
    "Consumer",
    "ConsumerRebalanceListener",
    "ConsumerRecord",
    "CorruptRecordBatch",
    "GroupInfo",
    "GroupMemberInfo",
    "OffsetAndTimestamp",
    "OutOfOrderSequence",
    "PartitionInfo",
    "PartitionLag",
    "Producer",
    "ProducerFenced",
    "RecordMetadata",
    "RequestTimeout",
    "TopicInfo",
    "TopicPartition",
]
