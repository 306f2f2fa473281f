"""An in-memory Sentinel broker for the client tests: a grpclib server on 127.0.0.1:0.

It implements the wire contract (protos/sentinel/v1/sentinel.proto) the way the client
expects the real broker to: offsets assigned contiguously per partition, batches stored
verbatim with their base offset rewritten, fetch long-polls, OUT_OF_RANGE outside
``[log_start, high_watermark]``, auto-creation on produce and a trivial group coordinator.
Idempotent produce follows the broker's own rules: InitProducerId hands out ids from 1,
and each partition checks and records batches with ``sentinel.broker.producer_state`` (the
functions the partition replica calls), its errors sent as ``sentinel.server.status`` maps
them. Fault injection: ``fail_next(rpc, status)`` makes the next calls of an RPC fail;
``hold_produce()`` parks produce requests until ``release_produce()`` (or
``release_parked``, in any order); ``before_append`` may refuse a request as the partition
sees it; ``lose_answers(n)`` appends the next n requests and never answers them (the
client's deadline ends the call). Like the real broker it validates every record of a
produced batch, so damaged data (``poison_batch``) gets in only as data stored before that
check did: through ``FakePartition.append``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from crc32c import crc32c
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server

from sentinel.broker.groups import unknown_member
from sentinel.broker.partitioner import RoundRobinPartitioner, partition_for_key
from sentinel.broker.producer_state import ProducerStateTable, check_request, record_batch
from sentinel.errors import InvalidRecordBatch, SentinelError
from sentinel.generated.sentinel import v1 as pb
from sentinel.records import Compression, RecordBatch, build_batch, iter_batches
from sentinel.records import batch_format as fmt
from sentinel.records.compression import compress
from sentinel.server.status import status_of

# The address the fake advertises in its metadata; the client routes single-broker
# clusters to the bootstrap address anyway.
NODE_ID = 1


# Byte of record 0's offsetDelta in a records section of one-byte varints (length,
# attributes, timestampDelta 0 come first).
_RECORD0_OFFSET_DELTA = 3
POISON_DETAIL = "malformed record 0 at byte 0 of the records section: offsetDelta: expected 0, found 63"


def poison_batch(codec: Compression = Compression.NONE, count: int = 3) -> RecordBatch:
    """A batch with a valid header and CRC whose records are garbage (record 0 claims
    offsetDelta 63): what a broker stored before it validated records. Decoding it fails
    with ``POISON_DETAIL``, compressed or not."""
    good = build_batch([(None, b"poison %d" % i, (), 1_000) for i in range(count)])
    section = bytearray(good[fmt.RECORDS_OFFSET :])
    section[_RECORD0_OFFSET_DELTA] = 0x7E  # zig-zag 63
    payload = bytes(section) if codec is Compression.NONE else compress(codec, section)
    length = fmt.RECORDS_OFFSET + len(payload) - fmt.LOG_OVERHEAD
    # baseOffset, batchLength, leader epoch, magic, crc (below), attributes, lastOffsetDelta,
    # base and max timestamp, producer id, epoch, base sequence, recordCount.
    fields = (0, length, -1, fmt.MAGIC, 0, int(codec), count - 1, 1_000, 1_000, -1, -1, -1, count)
    data = bytearray(fmt.HEADER.pack(*fields) + payload)
    crc = crc32c(bytes(data[fmt.CRC_START :]))
    data[fmt.CRC_OFFSET : fmt.CRC_START] = crc.to_bytes(4, "big")
    return RecordBatch(bytes(data))


class FakePartition:
    def __init__(self) -> None:
        self.batches: list[RecordBatch] = []  # with their assigned base offsets
        self.log_start = 0
        self.next_offset = 0
        self.arrived = asyncio.Event()
        self.producers = ProducerStateTable()

    def leader_change(self) -> None:
        """What a new leader knows of the producers: the table restored from its encoding
        (the replica's snapshot and saved state)."""
        self.producers = ProducerStateTable.decode(self.producers.encode())

    def append(self, batch: RecordBatch) -> int:
        base = self.next_offset
        self.batches.append(RecordBatch(batch.with_base_offset(base)))
        self.next_offset = base + batch.record_count
        self.arrived.set()
        self.arrived = asyncio.Event()
        return base

    def records(self) -> list[tuple[int, bytes | None, bytes | None]]:
        return [(r.offset, r.key, r.value) for b in self.batches for r in b.records()]


class FakeGroup:
    def __init__(self) -> None:
        self.generation = 0
        self.members: dict[str, list[str]] = {}  # member id -> topics
        self.joined_generation: dict[str, int] = {}
        self.assignment: dict[str, list[tuple[str, int]]] = {}
        self.offsets: dict[tuple[str, int], int] = {}


class FakeSentinel(pb.SentinelBase):
    def __init__(self, *, default_partitions: int = 1, auto_create_topics: bool = True) -> None:
        self.default_partitions = default_partitions
        self.auto_create_topics = auto_create_topics
        self.topics: dict[str, list[FakePartition]] = {}
        self.groups: dict[str, FakeGroup] = defaultdict(FakeGroup)
        self.calls: Counter[str] = Counter()
        self.produce_requests: list[pb.ProduceRequest] = []
        self.fetched_from: list[int] = []  # the offset each fetch asked for, in arrival order
        self.failures: dict[str, deque[GRPCError]] = defaultdict(deque)
        self.produce_gate: asyncio.Event | None = None
        self.produce_parked = asyncio.Event()  # set when a produce request waits at the gate
        self.parked: list[tuple[pb.ProduceRequest, asyncio.Event]] = []  # waiting at the gate
        # Called with each produce request and its batches once past the gate, before the
        # partition checks them: raising GRPCError refuses the request.
        self.before_append: Callable[[pb.ProduceRequest, list[RecordBatch]], None] | None = None
        self.lost_answers = 0
        self.appended_unanswered = 0  # requests appended whose answer was lost
        self.next_producer_id = 1
        self.joined = asyncio.Event()  # set (and replaced) on every JoinGroup answer
        # Partitions the fake, as a group coordinator, holds no replica of: it describes their
        # lag as unknown (-1), as a cluster's coordinator does.
        self.unhosted: set[tuple[str, int]] = set()
        # What the metadata names as every partition's leader, and the brokers it lists
        # besides this one (a test of leader moves points both at another fake).
        self.leader_node = NODE_ID
        self.other_brokers: list[pb.BrokerInfo] = []
        self.address = ""
        self._called = asyncio.Event()  # set (and replaced) on every RPC
        self._round_robin = RoundRobinPartitioner()
        self._member_ids = 0

    # -- test controls -------------------------------------------------------------------

    def create(self, name: str, partitions: int) -> list[FakePartition]:
        self.topics[name] = [FakePartition() for _ in range(partitions)]
        return self.topics[name]

    def fail_next(self, rpc: str, status: Status, message: str = "injected", times: int = 1) -> None:
        for _ in range(times):
            self.failures[rpc].append(GRPCError(status, message))

    def hold_produce(self) -> None:
        self.produce_gate = asyncio.Event()

    def release_produce(self) -> None:
        """Open the gate: parked requests go on in arrival order, and new ones pass."""
        assert self.produce_gate is not None
        for _, event in self.parked:
            event.set()
        self.parked.clear()
        self.produce_gate.set()
        self.produce_gate = None

    async def wait_parked(self, count: int) -> None:
        """Return once ``count`` produce requests wait at the gate."""
        while len(self.parked) < count:
            await self._called.wait()

    async def release_parked(self, index: int) -> None:
        """Let the ``index``-th parked request (in arrival order) reach its partition now
        and finish there (the gate stays closed for the others)."""
        _, event = self.parked.pop(index)
        event.set()
        for _ in range(5):  # past the gate, the check and the append run without awaiting
            await asyncio.sleep(0)

    def lose_answers(self, count: int = 1) -> None:
        """The next ``count`` produce requests are appended and never answered."""
        self.lost_answers += count

    def trigger_rebalance(self, group_id: str) -> None:
        """Bump the generation: every member's next heartbeat says rebalance_needed."""
        self.groups[group_id].generation += 1

    async def wait_for_calls(self, rpc: str, count: int) -> None:
        """Return once ``rpc`` was called at least ``count`` times."""
        while self.calls[rpc] < count:
            await self._called.wait()

    def _enter(self, rpc: str) -> None:
        self.calls[rpc] += 1
        self._called.set()
        self._called = asyncio.Event()
        if self.failures[rpc]:
            raise self.failures[rpc].popleft()

    def _partition(self, topic: str, partition: int) -> FakePartition:
        parts = self.topics.get(topic)
        if parts is None:
            raise GRPCError(Status.NOT_FOUND, f"topic {topic!r} does not exist")
        if not 0 <= partition < len(parts):
            raise GRPCError(Status.NOT_FOUND, f"partition {partition} of {topic!r} does not exist")
        return parts[partition]

    def _metadata(self, name: str) -> list[pb.PartitionMetadata]:
        return [
            pb.PartitionMetadata(
                partition=i,
                leader=self.leader_node,
                replicas=[NODE_ID],
                in_sync_replicas=[NODE_ID],
                log_start_offset=p.log_start,
                high_watermark=p.next_offset,
            )
            for i, p in enumerate(self.topics[name])
        ]

    def _describe(self, name: str) -> pb.TopicDescription:
        return pb.TopicDescription(
            name=name, replication_factor=1, partitions=self._metadata(name), config=pb.TopicConfig()
        )

    # -- data ----------------------------------------------------------------------------

    async def produce(self, message: pb.ProduceRequest) -> pb.ProduceResponse:
        self._enter("produce")
        self.produce_requests.append(message)
        try:
            batches = list(iter_batches(message.record_batches))
            for batch in batches:
                batch.validate_records()
        except InvalidRecordBatch as exc:
            raise GRPCError(Status.INVALID_ARGUMENT, str(exc)) from None
        if message.topic not in self.topics:
            if not self.auto_create_topics:
                raise GRPCError(Status.NOT_FOUND, f"topic {message.topic!r} does not exist")
            self.create(message.topic, self.default_partitions)
        partition = message.partition
        if partition < 0:
            first = batches[0].decode_records()[0]
            count = len(self.topics[message.topic])
            partition = (
                partition_for_key(first.key, count)
                if first.key is not None
                else self._round_robin.next_partition(message.topic, count)
            )
        part = self._partition(message.topic, partition)
        if self.produce_gate is not None:
            event = asyncio.Event()
            self.parked.append((message, event))
            self.produce_parked.set()
            self._called.set()
            self._called = asyncio.Event()
            await event.wait()
        if self.before_append is not None:
            self.before_append(message, batches)
        try:
            originals = check_request(part.producers, batches)
        except SentinelError as exc:  # as the real broker answers it
            status = status_of(exc)
            raise GRPCError(status.status, status.message) from None
        if originals is not None:  # a retry of appended batches: the original offsets
            base = originals[0].base_offset
        else:
            base = -1
            for batch in batches:
                offset = part.append(batch)
                record_batch(part.producers, batch, offset, offset + batch.last_offset_delta)
                base = offset if base < 0 else base
        if self.lost_answers:
            self.lost_answers -= 1
            self.appended_unanswered += 1
            await asyncio.Event().wait()  # until the client's deadline cancels the call
        return pb.ProduceResponse(
            topic=message.topic,
            partition=partition,
            base_offset=base if message.acks != pb.Acks.NONE else -1,
            log_append_time_ms=-1,
        )

    async def fetch(self, message: pb.ConsumeRequest) -> pb.ConsumeResponse:
        self.fetched_from.append(message.offset)
        self._enter("fetch")
        part = self._partition(message.topic, message.partition)
        offset = message.offset
        if offset < part.log_start or offset > part.next_offset:
            raise GRPCError(
                Status.OUT_OF_RANGE,
                f"offset {offset} is out of range for {message.topic}[{message.partition}]: "
                f"valid offsets are {part.log_start} to {part.next_offset} "
                f"({part.next_offset} is the next offset)",
            )
        if offset == part.next_offset and message.max_wait_ms:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(message.max_wait_ms / 1000):
                    await part.arrived.wait()
        chunks: list[bytes] = []
        size = 0
        next_offset = offset
        for batch in part.batches:
            if batch.next_offset <= offset or batch.base_offset < part.log_start:
                continue
            if chunks and size + batch.size_in_bytes > (message.max_bytes or 1 << 20):
                break
            chunks.append(batch.data)
            size += batch.size_in_bytes
            next_offset = batch.next_offset
        return pb.ConsumeResponse(
            topic=message.topic,
            partition=message.partition,
            record_batches=b"".join(chunks),
            high_watermark=part.next_offset,
            log_start_offset=part.log_start,
            next_offset=next_offset,
        )

    async def list_offsets(self, message: pb.ListOffsetsRequest) -> pb.ListOffsetsResponse:
        self._enter("list_offsets")
        part = self._partition(message.topic, message.partition)
        if message.spec == pb.OffsetSpec.EARLIEST:
            return pb.ListOffsetsResponse(offset=part.log_start, timestamp_ms=-1)
        if message.spec == pb.OffsetSpec.TIMESTAMP:
            for batch in part.batches:
                for record in batch.records():
                    if record.offset >= part.log_start and record.timestamp >= message.timestamp_ms:
                        return pb.ListOffsetsResponse(offset=record.offset, timestamp_ms=record.timestamp)
            return pb.ListOffsetsResponse(offset=part.next_offset, timestamp_ms=-1)
        return pb.ListOffsetsResponse(offset=part.next_offset, timestamp_ms=-1)

    async def init_producer_id(self, message: pb.InitProducerIdRequest) -> pb.InitProducerIdResponse:
        self._enter("init_producer_id")
        producer_id = self.next_producer_id
        self.next_producer_id += 1
        return pb.InitProducerIdResponse(producer_id=producer_id, producer_epoch=0)

    # -- metadata and admin ----------------------------------------------------------------

    async def fetch_metadata(self, message: pb.MetadataRequest) -> pb.MetadataResponse:
        self._enter("fetch_metadata")
        if message.allow_auto_create and self.auto_create_topics:  # as the real handler does
            for name in message.topics:
                if name not in self.topics:
                    self.create(name, self.default_partitions)
        host, port = self.address.rsplit(":", 1)
        names = message.topics or sorted(self.topics)
        return pb.MetadataResponse(
            brokers=[pb.BrokerInfo(node_id=NODE_ID, host=host, port=int(port)), *self.other_brokers],
            topics=[
                pb.TopicMetadata(name=n, partitions=self._metadata(n), replication_factor=1)
                if n in self.topics
                else pb.TopicMetadata(
                    name=n, error_code=Status.NOT_FOUND.value, error_message=f"topic {n!r} does not exist"
                )
                for n in names
            ],
            controller_id=NODE_ID,
        )

    async def create_topic(self, message: pb.CreateTopicRequest) -> pb.CreateTopicResponse:
        self._enter("create_topic")
        if message.name in self.topics:
            raise GRPCError(Status.ALREADY_EXISTS, f"topic {message.name!r} already exists")
        for field, value in (
            ("partitions", message.partitions),
            ("replication_factor", message.replication_factor),
        ):
            if value is not None and value < 1:  # omitted (None) is the default, as on the real broker
                raise GRPCError(Status.INVALID_ARGUMENT, f"{field} must be at least 1, got {value}")
        self.create(
            message.name, self.default_partitions if message.partitions is None else message.partitions
        )
        return pb.CreateTopicResponse(topic=self._describe(message.name))

    async def delete_topic(self, message: pb.DeleteTopicRequest) -> pb.DeleteTopicResponse:
        self._enter("delete_topic")
        if self.topics.pop(message.name, None) is None:
            raise GRPCError(Status.NOT_FOUND, f"topic {message.name!r} does not exist")
        return pb.DeleteTopicResponse()

    async def list_topics(self, message: pb.ListTopicsRequest) -> pb.ListTopicsResponse:
        self._enter("list_topics")
        return pb.ListTopicsResponse(topics=[self._describe(n) for n in sorted(self.topics)])

    async def describe_topic(self, message: pb.DescribeTopicRequest) -> pb.TopicDescription:
        self._enter("describe_topic")
        if message.name not in self.topics:
            raise GRPCError(Status.NOT_FOUND, f"topic {message.name!r} does not exist")
        return self._describe(message.name)

    # -- groups --------------------------------------------------------------------------

    def _rebalance(self, group: FakeGroup) -> None:
        group.generation += 1
        members = sorted(group.members)
        group.assignment = {m: [] for m in members}
        if not members:
            return
        topics = sorted({t for ts in group.members.values() for t in ts})
        tps = [(t, p) for t in topics if t in self.topics for p in range(len(self.topics[t]))]
        for i, tp in enumerate(tps):
            group.assignment[members[i % len(members)]].append(tp)

    async def join_group(self, message: pb.JoinGroupRequest) -> pb.JoinGroupResponse:
        self._enter("join_group")
        group = self.groups[message.group_id]
        member_id = message.member_id
        if member_id and member_id not in group.members:
            raise GRPCError(Status.NOT_FOUND, f"unknown member {member_id!r}")
        if not member_id:
            self._member_ids += 1
            member_id = f"member-{self._member_ids}"
        if group.members.get(member_id) != list(message.topics):
            group.members[member_id] = list(message.topics)
            self._rebalance(group)
        group.joined_generation[member_id] = group.generation
        self.joined.set()
        self.joined = asyncio.Event()
        return pb.JoinGroupResponse(
            member_id=member_id,
            generation=group.generation,
            assignment=[
                pb.TopicPartition(topic=t, partition=p) for t, p in group.assignment.get(member_id, [])
            ],
        )

    def _member_of(self, group_id: str, member_id: str) -> FakeGroup:
        """The group of a known member; else FAILED_PRECONDITION, exactly as the real
        coordinator answers a heartbeat, leave or commit from an unknown member or group."""
        group = self.groups.get(group_id)
        if group is None or member_id not in group.members:
            raise GRPCError(Status.FAILED_PRECONDITION, str(unknown_member(member_id, group_id)))
        return group

    async def heartbeat(self, message: pb.HeartbeatRequest) -> pb.HeartbeatResponse:
        self._enter("heartbeat")
        group = self._member_of(message.group_id, message.member_id)
        return pb.HeartbeatResponse(
            rebalance_needed=message.generation != group.generation, generation=group.generation
        )

    async def leave_group(self, message: pb.LeaveGroupRequest) -> pb.LeaveGroupResponse:
        self._enter("leave_group")
        group = self._member_of(message.group_id, message.member_id)
        del group.members[message.member_id]
        self._rebalance(group)
        return pb.LeaveGroupResponse()

    async def commit_offsets(self, message: pb.CommitOffsetsRequest) -> pb.CommitOffsetsResponse:
        self._enter("commit_offsets")
        group = self.groups[message.group_id]
        if message.member_id:
            # A member may commit with the generation it last joined (what it owns), even
            # while a rebalance is pending: that is how it commits before revoking.
            if group.joined_generation.get(message.member_id) != message.generation:
                raise GRPCError(
                    Status.FAILED_PRECONDITION,
                    f"stale generation {message.generation} for member {message.member_id!r}",
                )
        elif message.generation != -1:
            raise GRPCError(Status.FAILED_PRECONDITION, "a standalone commit uses generation -1")
        for o in message.offsets:
            group.offsets[(o.topic, o.partition)] = o.offset
        return pb.CommitOffsetsResponse()

    async def fetch_offsets(self, message: pb.FetchOffsetsRequest) -> pb.FetchOffsetsResponse:
        self._enter("fetch_offsets")
        group = self.groups[message.group_id]
        return pb.FetchOffsetsResponse(
            offsets=[
                pb.PartitionOffset(
                    topic=tp.topic,
                    partition=tp.partition,
                    offset=group.offsets.get((tp.topic, tp.partition), -1),
                )
                for tp in message.partitions
            ]
        )

    async def list_groups(self, message: pb.ListGroupsRequest) -> pb.ListGroupsResponse:
        self._enter("list_groups")
        return pb.ListGroupsResponse(group_ids=sorted(self.groups))

    async def describe_group(self, message: pb.DescribeGroupRequest) -> pb.GroupDescription:
        self._enter("describe_group")
        if message.group_id not in self.groups:
            raise GRPCError(Status.NOT_FOUND, f"group {message.group_id!r} does not exist")
        group = self.groups[message.group_id]
        return pb.GroupDescription(
            group_id=message.group_id,
            state="Stable" if group.members else "Empty",
            generation=group.generation,
            members=[
                pb.GroupMember(
                    member_id=m,
                    client_id="",
                    assignment=[
                        pb.TopicPartition(topic=t, partition=p) for t, p in group.assignment.get(m, [])
                    ],
                )
                for m in sorted(group.members)
            ],
            offsets=[
                pb.PartitionLag(
                    topic=t,
                    partition=p,
                    committed_offset=o,
                    high_watermark=-1 if (t, p) in self.unhosted else self.topics[t][p].next_offset,
                    lag=-1 if (t, p) in self.unhosted else self.topics[t][p].next_offset - o,
                )
                for (t, p), o in sorted(group.offsets.items())
                if t in self.topics
            ],
        )


@contextlib.asynccontextmanager
async def fake_broker(**kwargs: Any) -> AsyncIterator[FakeSentinel]:
    fake = FakeSentinel(**kwargs)
    # IPPROTO_TCP explicitly: grpclib only sets TCP_NODELAY on sockets that say so, and
    # without it every RPC pays a ~40 ms delayed-ACK stall.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    fake.address = f"127.0.0.1:{sock.getsockname()[1]}"
    server = Server([fake])
    await server.start(sock=sock)
    try:
        yield fake
    finally:
        server.close()
        await server.wait_closed()


# Every scenario must finish well within this; a hang fails the test instead of the suite.
SCENARIO_TIMEOUT_S = 10


def run(scenario: Callable[[FakeSentinel], Awaitable[None]], **kwargs: Any) -> None:
    """Run ``scenario(fake)`` on a fresh event loop with a fresh fake broker."""

    async def main() -> None:
        async with asyncio.timeout(SCENARIO_TIMEOUT_S), fake_broker(**kwargs) as fake:
            await scenario(fake)

    asyncio.run(main())
