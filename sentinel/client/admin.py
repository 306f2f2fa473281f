"""The asyncio admin client: topics, consumer groups and cluster metadata.

Every call is one RPC to a bootstrap broker (any broker can answer these; a cluster routes
them to the controller itself). Nothing is retried: creating or deleting a topic is not
safe to repeat blindly, and an operator wants to see a failure rather than wait it out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Final, Self, TypeVar

from sentinel.client.connection import COORDINATOR_WAIT_S, Cluster, Connection, retry_delay
from sentinel.client.convert import group_info, topic_from_description
from sentinel.client.errors import BrokerUnreachable, RequestTimeout
from sentinel.client.types import (
    BrokerInfo,
    BrokerStatus,
    ClusterMetadata,
    ClusterStatus,
    GroupInfo,
    PartitionStatus,
    TopicInfo,
    TopicPartition,
)
from sentinel.errors import FailedPrecondition, InvalidArgument, SentinelError, Unavailable
from sentinel.generated.sentinel import v1 as pb

__all__ = ["Admin"]

DEFAULT_REQUEST_TIMEOUT_MS: Final = 30_000
# Between asking again while no broker can name the group coordinator (an election).
_COORDINATOR_BACKOFF_S: Final = 0.1

T = TypeVar("T")
INT32_MAX: Final = 2**31 - 1
INT64_MAX: Final = 2**63 - 1
# Each broker's status answer is waited for this long: an unreachable one is reported as such.
STATUS_TIMEOUT_S: Final = 3.0


def _partition_status(group: pb.GroupStatus) -> PartitionStatus:
    return PartitionStatus(
        topic=group.topic,
        partition=group.partition,
        leader=group.leader,
        replicas=tuple(group.replicas),
        term=group.term,
        commit_index=group.commit_index,
        high_watermark=group.high_watermark,
        followers=tuple((f.node_id, f.lag) for f in group.followers),
    )


class Admin:
    """``async with Admin("host:port") as admin: await admin.create_topic("orders", 6)``."""

    def __init__(self, bootstrap: str, *, request_timeout_ms: int = DEFAULT_REQUEST_TIMEOUT_MS) -> None:
        if not isinstance(request_timeout_ms, int) or request_timeout_ms <= 0:
            raise InvalidArgument(f"request_timeout_ms must be an int > 0, got {request_timeout_ms!r}")
        self._bootstrap = bootstrap
        self._timeout_s = request_timeout_ms / 1000
        self._cluster: Cluster | None = None
        self._closed = False

    async def start(self) -> None:
        """Open the connection (lazily: the first call connects)."""
        if self._cluster is not None or self._closed:
            raise FailedPrecondition("admin client is already started or closed")
        self._cluster = Cluster(self._bootstrap, request_timeout_s=self._timeout_s)

    async def close(self) -> None:
        if self._cluster is not None:
            self._cluster.close()
        self._closed = True

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _cluster_or_fail(self) -> Cluster:
        if self._cluster is None or self._closed:
            raise FailedPrecondition(
                "admin client is closed" if self._closed else "admin client is not started"
            )
        return self._cluster

    # -- topics ----------------------------------------------------------------------------

    async def create_topic(
        self,
        name: str,
        partitions: int | None = None,
        replication_factor: int | None = None,
        retention_ms: int = 0,
        retention_bytes: int = 0,
    ) -> TopicInfo:
        """Create a topic. ``partitions`` and ``replication_factor`` left out (None) take the
        broker's defaults; given, they must be at least 1. 0 retention keeps data forever.
        AlreadyExists if the name is taken."""
        # None travels as an omitted field (the broker's default); 0 would be refused there.
        # The upper bounds are the wire's (int32, int64): protobuf would wrap a larger value.
        for what, count in (("partitions", partitions), ("replication_factor", replication_factor)):
            if count is not None and (type(count) is not int or not 1 <= count <= INT32_MAX):
                raise InvalidArgument(
                    f"{what} must be an int from 1 to {INT32_MAX}, or None for the broker's default; "
                    f"got {count!r}"
                )
        for what, value in (("retention_ms", retention_ms), ("retention_bytes", retention_bytes)):
            if type(value) is not int or not 0 <= value <= INT64_MAX:
                raise InvalidArgument(f"{what} must be an int from 0 to {INT64_MAX}, got {value!r}")
        request = pb.CreateTopicRequest(
            name=name,
            partitions=partitions,
            replication_factor=replication_factor,
            config=pb.TopicConfig(retention_ms=retention_ms, retention_bytes=retention_bytes),
        )
        response = await self._cluster_or_fail().any_broker(
            lambda conn: conn.stub.create_topic(request, timeout=self._timeout_s)
        )
        if response.topic is None:
            raise SentinelError(f"broker created topic {name!r} but did not describe it")
        return topic_from_description(response.topic)

    async def delete_topic(self, name: str) -> None:
        await self._cluster_or_fail().any_broker(
            lambda conn: conn.stub.delete_topic(pb.DeleteTopicRequest(name=name), timeout=self._timeout_s)
        )

    async def list_topics(self) -> list[TopicInfo]:
        response = await self._cluster_or_fail().any_broker(
            lambda conn: conn.stub.list_topics(pb.ListTopicsRequest(), timeout=self._timeout_s)
        )
        return [topic_from_description(t) for t in response.topics]

    async def describe_topic(self, name: str) -> TopicInfo:
        response = await self._cluster_or_fail().any_broker(
            lambda conn: conn.stub.describe_topic(pb.DescribeTopicRequest(name=name), timeout=self._timeout_s)
        )
        return topic_from_description(response)

    # -- groups ----------------------------------------------------------------------------

    async def list_groups(self) -> list[str]:
        response = await self._to_coordinator(
            lambda conn: conn.stub.list_groups(pb.ListGroupsRequest(), timeout=self._timeout_s)
        )
        return list(response.group_ids)

    async def describe_group(self, group_id: str) -> GroupInfo:
        """The group's state and members (from its coordinator) and, per committed
        partition, its lag: the coordinator's own where it holds a replica, else the
        partition leader's high watermark (-1 where that leader does not answer)."""
        response = await self._to_coordinator(
            lambda conn: conn.stub.describe_group(
                pb.DescribeGroupRequest(group_id=group_id), timeout=self._timeout_s
            )
        )
        unknown = [o for o in response.offsets if o.high_watermark < 0]
        if unknown:
            await asyncio.gather(*(self._fill_lag(o) for o in unknown))
        return group_info(response)

    async def _fill_lag(self, entry: pb.PartitionLag) -> None:
        cluster = self._cluster_or_fail()
        request = pb.ListOffsetsRequest(
            topic=entry.topic, partition=entry.partition, spec=pb.OffsetSpec.LATEST
        )
        try:
            if cluster.topic(entry.topic) is None:
                await cluster.fetch_metadata([entry.topic])
            conn = cluster.leader(TopicPartition(entry.topic, entry.partition))
            with conn.errors:
                answer = await conn.stub.list_offsets(request, timeout=self._timeout_s)
        except SentinelError:
            return  # left unknown: the describe itself succeeded
        entry.high_watermark = answer.offset
        entry.lag = max(0, answer.offset - entry.committed_offset)

    async def _to_coordinator(self, call: Callable[[Connection], Awaitable[T]]) -> T:
        """``call`` on the group coordinator (the controller leader), which alone knows the
        groups' members. A broker that is not it names it, and the call goes there; while
        none can be named (an election) the call is repeated for ``COORDINATOR_WAIT_S``.
        Brokers that do not answer at all are passed over in turn, and once the named
        coordinator and every bootstrap broker have not answered, that error is raised."""
        cluster = self._cluster_or_fail()
        loop = asyncio.get_running_loop()
        started = loop.time()
        silent = attempt = 0
        while True:
            try:
                with cluster.to_coordinator() as conn, conn.errors:
                    return await call(conn)
            except (BrokerUnreachable, RequestTimeout):
                silent += 1
                if silent > cluster.bootstrap_count:
                    raise
            except Unavailable as exc:  # an answer: "the coordinator is node N", or none yet
                silent = 0
                if loop.time() - started >= COORDINATOR_WAIT_S:
                    raise
                if exc.leader is None:
                    attempt += 1
                    await asyncio.sleep(retry_delay(_COORDINATOR_BACKOFF_S, attempt))

    # -- cluster ---------------------------------------------------------------------------

    async def fetch_metadata(self, topics: Sequence[str] | None = None) -> ClusterMetadata:
        """Brokers, controller and the metadata of ``topics`` (default: every topic)."""
        return await self._cluster_or_fail().fetch_metadata(topics)

    async def cluster_status(self) -> ClusterStatus:
        """Every registered broker's own view, merged: whether it answers, the controller
        leader, and each partition as its leader reports it (commit index, high watermark,
        each follower's lag)."""
        cluster = self._cluster_or_fail()
        metadata = await cluster.fetch_metadata()
        answers: dict[int, pb.ClusterStatusResponse] = {}

        async def ask(broker: BrokerInfo) -> None:
            conn = cluster.connection(broker.host, broker.port)
            try:
                with conn.errors:
                    answers[broker.node_id] = await conn.stub.cluster_status(
                        pb.ClusterStatusRequest(), timeout=min(self._timeout_s, STATUS_TIMEOUT_S)
                    )
            except SentinelError:
                pass  # unreachable: reported as such

        await asyncio.gather(*(ask(b) for b in metadata.brokers))
        brokers = tuple(BrokerStatus(b.node_id, b.address, b.node_id in answers) for b in metadata.brokers)
        controllers = [a.controller_id for a in answers.values() if a.controller_id > 0]
        controller = max(set(controllers), key=controllers.count) if controllers else metadata.controller_id
        best: dict[tuple[str, int], tuple[int, pb.GroupStatus]] = {}
        for answer in answers.values():
            for group in answer.groups:
                # The leader's own report wins; else the highest term seen.
                rank = (2 if group.role == "leader" else 1) * (1 << 62) + group.term
                key = (group.topic, group.partition)
                if key not in best or rank > best[key][0]:
                    best[key] = (rank, group)
        statuses = {key: _partition_status(group) for key, (_rank, group) in best.items()}
        return ClusterStatus(
            controller=controller,
            brokers=brokers,
            controller_group=statuses.pop(("", 0), None),
            partitions=tuple(statuses[k] for k in sorted(statuses)),
        )

    async def transfer_leader(self, topic: str, partition: int, to: int) -> int:
        """Move a partition's leadership to node ``to`` (one of its replicas, caught up);
        returns the new leader once it leads."""
        cluster = self._cluster_or_fail()
        await cluster.fetch_metadata([topic])
        conn = cluster.leader(TopicPartition(topic, partition))
        request = pb.TransferLeaderRequest(topic=topic, partition=partition, to=to)
        with conn.errors:
            response = await conn.stub.transfer_leader(request, timeout=self._timeout_s)
        return response.leader
