"""The Trio-side RPC handlers against a real node's broker layer (``tests/node_harness.py``:
the Store on real files, the controller, the broker and its partition replicas, the group
coordinator, as ``sentinel.node.Node`` wires them), on the autojumping MockClock: every
happy path, and every error mapped to the exception the handler raises and the gRPC status
the front end sends for it (``sentinel.server.status.status_of``).

The node is a cluster of one (node 3) that registered ``broker.test:9999`` as its client
address: metadata answers list the brokers and the controller leader from the controller.
"""

from __future__ import annotations

import math
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from node_harness import NodeFactory, Running

from sentinel.actors import Reply
from sentinel.broker.broker import Broker, BrokerOptions
from sentinel.broker.coordinator import GroupCoordinator
from sentinel.broker.groups import unknown_member
from sentinel.broker.partitioner import partition_for_key
from sentinel.broker.reader import PartitionReader, ReadResult
from sentinel.broker.replica import AppendResult, ApplyRetention, PartitionReplica
from sentinel.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    InvalidRecordBatch,
    NotFound,
    OffsetOutOfRange,
    SentinelError,
)
from sentinel.generated.sentinel import v1 as pb
from sentinel.metrics import Metrics
from sentinel.records import build_batch, split_batches
from sentinel.server import handlers as handlers_module
from sentinel.server.handlers import Handlers, ProduceNeedsTask
from sentinel.server.status import status_of

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "client"))

from client_fakes import FakeSentinel

MAX_BATCH_BYTES = 64 * 1024
NODE_ID = 3
ADDRESS = ("broker.test", 9999)


@attrs.define
class Stack:
    running: Running
    handlers: Handlers

    @property
    def broker(self) -> Broker:
        return self.running.broker

    @property
    def coordinator(self) -> GroupCoordinator:
        return self.running.coordinator

    @property
    def metrics(self) -> Metrics:
        return self.running.metrics


@asynccontextmanager
async def serving(directory: Path, clock: trio.testing.MockClock, **options: Any) -> AsyncIterator[Stack]:
    """What ``Node.run`` starts behind the gRPC front end, stopped in the node's order."""
    node = NodeFactory(
        directory / "data",
        clock,
        options=BrokerOptions(node_id=NODE_ID, retention_check_seconds=math.inf),
        seed=5,
        address=ADDRESS,
    )
    async with node.run(**options) as running:
        handlers = Handlers(
            running.broker,
            running.coordinator,
            running.metrics,
            host=ADDRESS[0],
            port=ADDRESS[1],
            max_batch_bytes=MAX_BATCH_BYTES,
        )
        yield Stack(running, handlers)


def batch_bytes(*values: bytes, key: bytes | None = None, timestamp: int = 1_000) -> bytes:
    return build_batch([(key, v, (), timestamp) for v in values])


def values_of(data: bytes) -> list[tuple[int, bytes | None]]:
    return [(r.offset, r.value) for b in split_batches(data) for r in b.records()]


def produce_request(
    topic: str, partition: int, *batches: bytes, acks: pb.Acks = pb.Acks.ALL
) -> pb.ProduceRequest:
    return pb.ProduceRequest(topic=topic, partition=partition, record_batches=b"".join(batches), acks=acks)


def sample(stack: Stack, name: str, topic: str, partition: int) -> float | None:
    return stack.metrics.registry.get_sample_value(name, {"topic": topic, "partition": str(partition)})


class Fails:
    """``async with Fails(error_class, status, message)``: the handler raises ``error_class``
    whose text contains ``message``, and the front end answers ``status`` with that text."""

    def __init__(self, error: type[SentinelError], status: Status, message: str) -> None:
        self.error, self.status, self.message = error, status, message

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        assert exc is not None, f"expected {self.error.__name__}: {self.message}, nothing was raised"
        assert type(exc) is self.error, f"expected {self.error.__name__}, got {exc!r}"
        assert self.message in str(exc), f"{self.message!r} not in {str(exc)!r}"
        rpc = status_of(exc)
        assert (rpc.status, rpc.message, rpc.expected) == (self.status, str(exc), True)
        return True


# -- produce -----------------------------------------------------------------------------


async def test_produce_happy_paths_and_acks(tmp_path: Path, clock: trio.testing.MockClock) -> None:
    async with serving(tmp_path, clock, default_partitions=4) as stack:
        h = stack.handlers
        # Auto-created; two batches in one request get contiguous offsets.
        response = await h.produce(produce_request("t", 2, batch_bytes(b"a", b"b"), batch_bytes(b"c")))
        assert (response.topic, response.partition, response.base_offset) == ("t", 2, 0)
        assert response.log_append_time_ms == -1
        assert stack.broker.topic("t").partitions == 4
        response = await h.produce(produce_request("t", 2, batch_bytes(b"d"), acks=pb.Acks.LEADER))
        assert response.base_offset == 3  # LEADER waits like ALL on a single node

        # acks=NONE: no offset in the answer, answered once proposed (before the replica
        # has written it): nothing visible yet; written and committed a moment later.
        response = await h.produce(produce_request("t", 2, batch_bytes(b"e"), acks=pb.Acks.NONE))
        assert (response.partition, response.base_offset) == (2, -1)
        log = stack.broker.topic("t").logs[2]
        assert log.high_watermark == 4
        assert (await h.fetch(pb.ConsumeRequest(topic="t", partition=2, offset=4))).record_batches == b""
        await trio.testing.wait_all_tasks_blocked()
        assert (log.log_end_offset, log.high_watermark) == (5, 5)

        fetched = await h.fetch(pb.ConsumeRequest(topic="t", partition=2, offset=0))
        assert values_of(fetched.record_batches) == [(0, b"a"), (1, b"b"), (2, b"c"), (3, b"d"), (4, b"e")]

        # partition -1: the broker places by key hash (Kafka's), else round-robin.
        for key in (b"alpha", b"beta", b"gamma"):
            response = await h.produce(produce_request("t", -1, batch_bytes(b"v", key=key)))
            assert response.partition == partition_for_key(key, 4)
        keyless = [(await h.produce(produce_request("t", -1, batch_bytes(b"v")))).partition for _ in range(5)]
        assert keyless == [0, 1, 2, 3, 0]
        keyed_to_2 = sum(partition_for_key(k, 4) == 2 for k in (b"alpha", b"beta", b"gamma"))
        assert sample(stack, "sentinel_messages_produced_total", "t", 2) == 5 + keyed_to_2 + 1


async def test_produce_nowait_is_produce_without_a_task_and_hands_back_what_needs_one(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    good = batch_bytes(b"ok")
    async with serving(tmp_path, clock) as stack:
        h = stack.handlers

        async def nowait(request: pb.ProduceRequest) -> AppendResult:
            reply: Reply[AppendResult] = Reply()
            h.produce_nowait(reply, request)  # synchronous: queued for the replica, not awaited
            return await reply.wait()

        # A topic to create, or a partition for the broker to pick: only produce can (it
        # waits), so the fast path hands the request back having done nothing.
        with pytest.raises(ProduceNeedsTask):
            await nowait(produce_request("t", 0, good))
        assert "t" not in stack.broker.topics
        await stack.broker.create_topic("t", 2)
        with pytest.raises(ProduceNeedsTask):
            await nowait(produce_request("t", -1, good))
        log = stack.broker.topic("t").logs[1]
        assert log.log_end_offset == 0

        assert await nowait(produce_request("t", 1, good, batch_bytes(b"a", b"b"))) == AppendResult(0, 2)
        assert (await nowait(produce_request("t", 1, good, acks=pb.Acks.NONE))).base_offset == 3
        response = h.produce_response(produce_request("t", 1, good), 1, AppendResult(4, 4), 0.0)
        assert (response.partition, response.base_offset) == (1, 4)
        await trio.testing.wait_all_tasks_blocked()
        assert (log.log_end_offset, log.high_watermark) == (4, 4)
        assert values_of(
            (await h.fetch(pb.ConsumeRequest(topic="t", partition=1, offset=0))).record_batches
        ) == [
            (0, b"ok"),
            (1, b"a"),
            (2, b"b"),
            (3, b"ok"),
        ]
        # Bad requests fail as they do through produce, before anything is queued.
        with Fails(InvalidArgument, Status.INVALID_ARGUMENT, "produce request carries no record batches"):
            await nowait(pb.ProduceRequest(topic="t", partition=0))
        with Fails(InvalidRecordBatch, Status.INVALID_ARGUMENT, "batch at byte 0: truncated: 5 bytes left"):
            await nowait(pb.ProduceRequest(topic="t", partition=0, record_batches=b"junk!"))
        with Fails(InvalidArgument, Status.INVALID_ARGUMENT, "partition 2 does not exist in topic 't'"):
            await nowait(produce_request("t", 2, good))
        assert log.log_end_offset == 4


async def test_produce_errors(tmp_path: Path, clock: trio.testing.MockClock) -> None:
    good = batch_bytes(b"ok")
    async with serving(tmp_path, clock) as stack:
        h = stack.handlers
        await stack.broker.create_topic("t", 2)
        log = stack.broker.topic("t").logs[0]

        with Fails(InvalidArgument, Status.INVALID_ARGUMENT, "produce request carries no record batches"):
            await h.produce(pb.ProduceRequest(topic="t", partition=0))
        # An enum value the schema does not define (protobuf keeps it) is refused, not guessed.
        unknown_acks = pb.ProduceRequest().parse(
            bytes(pb.ProduceRequest(topic="t", record_batches=good)) + b"\x20\x09"
        )
        with Fails(
            InvalidArgument, Status.INVALID_ARGUMENT, "unknown acks 9: expected one of ALL (0), LEADER (1)"
        ):
            await h.produce(unknown_acks)
        assert log.log_end_offset == 0
        with Fails(InvalidRecordBatch, Status.INVALID_ARGUMENT, "batch at byte 0: truncated: 5 bytes left"):
            await h.produce(pb.ProduceRequest(topic="t", partition=0, record_batches=b"junk!"))
        corrupt = bytearray(good)
        corrupt[-1] ^= 0xFF
        with Fails(
            InvalidRecordBatch, Status.INVALID_ARGUMENT, f"batch at byte {len(good)}: CRC-32C mismatch"
        ):
            # The first batch is fine, the second is not: nothing is appended.
            await h.produce(produce_request("t", 0, good, bytes(corrupt)))
        huge = batch_bytes(b"x" * MAX_BATCH_BYTES)
        with Fails(
            InvalidRecordBatch, Status.INVALID_ARGUMENT, f"exceeds the limit of {MAX_BATCH_BYTES} bytes"
        ):
            await h.produce(produce_request("t", 0, huge))
        with Fails(InvalidArgument, Status.INVALID_ARGUMENT, "partition 2 does not exist in topic 't'"):
            await h.produce(produce_request("t", 2, good))
        with Fails(InvalidArgument, Status.INVALID_ARGUMENT, "partition -5 does not exist in topic 't'"):
            await h.produce(produce_request("t", -5, good))
        with Fails(InvalidArgument, Status.INVALID_ARGUMENT, "invalid topic name 'no spaces please'"):
            await h.produce(produce_request("no spaces please", 0, good))
        assert (log.log_end_offset, sorted(stack.broker.topics)) == (0, ["t"])

    async with serving(tmp_path, clock, auto_create_topics=False) as stack:
        with Fails(NotFound, Status.NOT_FOUND, "topic 'other' does not exist (auto-creation is disabled)"):
            await stack.handlers.produce(produce_request("other", 0, good))
        assert (await stack.handlers.produce(produce_request("t", 1, good))).base_offset == 0


# -- fetch -------------------------------------------------------------------------------


async def test_fetch_returns_stored_batches_verbatim_and_follows_next_offset(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with serving(tmp_path, clock) as stack:
        h = stack.handlers
        await stack.broker.create_topic("t", 1)
        sizes = []
        for n in range(4):
            data = batch_bytes(b"m%d-0" % n, b"m%d-1" % n)
            sizes.append(len(data))
            await h.produce(produce_request("t", 0, data))
        response = await h.fetch(pb.ConsumeRequest(topic="t", partition=0, offset=3, max_bytes=sizes[0]))
        assert (response.topic, response.partition) == ("t", 0)
        assert values_of(response.record_batches) == [(2, b"m1-0"), (3, b"m1-1")]
        assert (response.next_offset, response.high_watermark, response.log_start_offset) == (4, 8, 0)
        (stored,) = split_batches(response.record_batches)
        assert stored.base_offset == 2 and len(response.record_batches) == sizes[1]
        response = await h.fetch(pb.ConsumeRequest(topic="t", partition=0, offset=4))  # default max
        assert [o for o, _ in values_of(response.record_batches)] == [4, 5, 6, 7]
        assert response.next_offset == 8
        # Counted from the offset asked for: offset 2 came along but is not consumed.
        assert sample(stack, "sentinel_messages_consumed_total", "t", 0) == 1 + 4


async def test_fetch_long_polls_until_data_arrives_or_max_wait(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with serving(tmp_path, clock) as stack:
        h = stack.handlers
        await stack.broker.create_topic("t", 1)
        start = trio.current_time()
        response = await h.fetch(pb.ConsumeRequest(topic="t", partition=0, offset=0, max_wait_ms=1_500))
        assert trio.current_time() - start == pytest.approx(1.5)
        assert (response.record_batches, response.next_offset, response.high_watermark) == (b"", 0, 0)

        got: list[tuple[float, pb.ConsumeResponse]] = []

        async def consumer() -> None:
            began = trio.current_time()
            response = await h.fetch(pb.ConsumeRequest(topic="t", partition=0, offset=0, max_wait_ms=10_000))
            got.append((trio.current_time() - began, response))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consumer)
            await trio.sleep(4)
            assert got == []
            await h.produce(produce_request("t", 0, batch_bytes(b"late")))
        ((waited, response),) = got
        assert waited == pytest.approx(4) and values_of(response.record_batches) == [(0, b"late")]

        # MAX_WAIT_MS (30 s) is the longest one fetch waits.
        start = trio.current_time()
        response = await h.fetch(pb.ConsumeRequest(topic="t", partition=0, offset=1, max_wait_ms=30_000))
        assert trio.current_time() - start == pytest.approx(30) and response.record_batches == b""


async def test_fetch_bounds_max_wait_and_caps_max_bytes(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with serving(tmp_path, clock) as stack:
        h = stack.handlers
        await stack.broker.create_topic("t", 1)
        await h.produce(produce_request("t", 0, batch_bytes(b"a", b"b")))
        # A wait above 30 s is refused (not silently cut), at once: no long poll first. A
        # negative int32 written into the uint32 field arrives as 2**32 - 1.
        negative = pb.ConsumeRequest().parse(
            bytes(pb.ConsumeRequest(topic="t", offset=2)) + b"\x28" + b"\xff" * 9 + b"\x01"
        )
        for request, shown in (
            (pb.ConsumeRequest(topic="t", offset=2, max_wait_ms=30_001), 30_001),
            (pb.ConsumeRequest(topic="t", offset=2, max_wait_ms=600_000), 600_000),
            (negative, 2**32 - 1),
        ):
            start = trio.current_time()
            with Fails(
                InvalidArgument,
                Status.INVALID_ARGUMENT,
                f"max_wait_ms must be between 0 and 30000, got {shown}: to wait longer, fetch again",
            ):
                await h.fetch(request)
            assert trio.current_time() == start
        # max_bytes is a budget: above 16 MiB it is capped, as Kafka caps it by its
        # fetch.max.bytes, and the answer is served.
        huge = await h.fetch(pb.ConsumeRequest(topic="t", offset=0, max_bytes=2**32 - 1))
        assert values_of(huge.record_batches) == [(0, b"a"), (1, b"b")]
        assert handlers_module.MAX_FETCH_BYTES == 16 * 1024 * 1024


async def test_a_long_poll_on_a_topic_deleted_meanwhile_ends_with_not_found(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with serving(tmp_path, clock) as stack:
        h = stack.handlers
        await stack.broker.create_topic("t", 1)
        outcome: list[BaseException] = []

        async def consumer() -> None:
            try:
                await h.fetch(pb.ConsumeRequest(topic="t", partition=0, offset=0, max_wait_ms=10_000))
            except NotFound as exc:
                outcome.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consumer)
            await trio.sleep(1)
            await stack.broker.delete_topic("t")
            await stack.broker.create_topic("t", 1)  # the same name again: a different topic
        assert [str(e) for e in outcome] == ["topic 't' was deleted while the fetch waited"]


async def test_consume_latency_counts_the_reads_not_the_long_poll(
    tmp_path: Path, clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    class VirtualTime:
        @staticmethod
        def perf_counter() -> float:
            return trio.current_time()

    original_read = PartitionReader.read

    def slow_read(self: PartitionReader, offset: int, max_bytes: int) -> ReadResult:
        clock.jump(0.25)  # every read "takes" 250 ms of virtual time
        return original_read(self, offset, max_bytes)

    monkeypatch.setattr(handlers_module, "time", VirtualTime)
    monkeypatch.setattr(PartitionReader, "read", slow_read)
    async with serving(tmp_path, clock) as stack:
        h = stack.handlers
        await stack.broker.create_topic("t", 1)

        async def produce_later() -> None:
            await trio.sleep(4)
            await h.produce(produce_request("t", 0, batch_bytes(b"x")))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce_later)
            # An empty read, a 4 s long poll, then the read that finds the record.
            response = await h.fetch(pb.ConsumeRequest(topic="t", partition=0, offset=0, max_wait_ms=10_000))
        assert values_of(response.record_batches) == [(0, b"x")]
        assert stack.metrics.registry.get_sample_value(
            "sentinel_consume_latency_seconds_sum"
        ) == pytest.approx(0.5)


async def test_fetch_errors(tmp_path: Path, clock: trio.testing.MockClock) -> None:

    async with serving(tmp_path, clock) as stack:
        h = stack.handlers
        await stack.broker.create_topic("t", 2)
        await h.produce(produce_request("t", 0, batch_bytes(b"a", b"b")))
        with Fails(NotFound, Status.NOT_FOUND, "topic 'missing' does not exist"):
            await h.fetch(pb.ConsumeRequest(topic="missing", partition=0, offset=0))
        with Fails(InvalidArgument, Status.INVALID_ARGUMENT, "invalid topic name 'no such/name'"):
            await h.fetch(pb.ConsumeRequest(topic="no such/name", partition=0, offset=0))
        with Fails(InvalidArgument, Status.INVALID_ARGUMENT, "partition 2 does not exist in topic 't'"):
            await h.fetch(pb.ConsumeRequest(topic="t", partition=2, offset=0))
        with Fails(InvalidArgument, Status.INVALID_ARGUMENT, "offset must be >= 0, got -1"):
            await h.fetch(pb.ConsumeRequest(topic="t", partition=0, offset=-1))
        with Fails(
            OffsetOutOfRange,
            Status.OUT_OF_RANGE,
            "offset 3 is out of range for t[0]: valid offsets are 0 to 2 (2 is the next offset)",
        ):
            # Out of range is answered at once, not after the long poll.
            start = trio.current_time()
            try:
                await h.fetch(pb.ConsumeRequest(topic="t", partition=0, offset=3, max_wait_ms=5_000))
            finally:
                assert trio.current_time() == start


# -- metadata and offsets ------------------------------------------------------------------


async def test_metadata_and_topic_admin(tmp_path: Path, clock: trio.testing.MockClock) -> None:

    async with serving(tmp_path, clock, default_partitions=2, default_retention_ms=7_000) as stack:
        h = stack.handlers
        created = await h.create_topic(pb.CreateTopicRequest(name="b"))  # every default
        assert created.topic.name == "b" and created.topic.replication_factor == 1
        assert len(created.topic.partitions) == 2
        assert (created.topic.config.retention_ms, created.topic.config.retention_bytes) == (7_000, 0)
        explicit = await h.create_topic(
            pb.CreateTopicRequest(
                name="a", partitions=3, replication_factor=1, config=pb.TopicConfig(retention_bytes=4096)
            )
        )
        assert (explicit.topic.config.retention_ms, explicit.topic.config.retention_bytes) == (0, 4096)
        await h.produce(produce_request("a", 1, batch_bytes(b"x", b"y")))

        metadata = await h.fetch_metadata(pb.MetadataRequest())
        assert metadata.brokers == [pb.BrokerInfo(node_id=3, host="broker.test", port=9999)]
        assert metadata.controller_id == 3
        assert [t.name for t in metadata.topics] == ["a", "b"]
        a = metadata.topics[0]
        assert [(p.partition, p.leader, p.replicas, p.in_sync_replicas) for p in a.partitions] == [
            (p, 3, [3], [3]) for p in range(3)
        ]
        assert [p.high_watermark for p in a.partitions] == [0, 2, 0]
        # A requested topic is never left out: a missing or invalid one carries its error.
        only = await h.fetch_metadata(pb.MetadataRequest(topics=["b", "unknown", "bad/name"]))
        assert [(t.name, t.error_code) for t in only.topics] == [
            ("b", 0),
            ("unknown", Status.NOT_FOUND.value),
            ("bad/name", Status.INVALID_ARGUMENT.value),
        ]
        assert only.topics[1].error_message == "topic 'unknown' does not exist"
        assert only.topics[2].error_message.startswith("invalid topic name 'bad/name'")
        assert "unknown" not in stack.broker.topics  # not created: the client did not ask
        # Asked (a producer or consumer): created by the broker's own auto-create setting.
        created = await h.fetch_metadata(pb.MetadataRequest(topics=["fresh"], allow_auto_create=True))
        assert (created.topics[0].name, created.topics[0].error_code) == ("fresh", 0)
        assert "fresh" in stack.broker.topics
        await stack.broker.delete_topic("fresh")

        listed = await h.list_topics(pb.ListTopicsRequest())
        assert [t.name for t in listed.topics] == ["a", "b"]
        described = await h.describe_topic(pb.DescribeTopicRequest(name="a"))
        assert described == explicit.topic.__class__(
            name="a",
            replication_factor=1,
            partitions=a.partitions,
            config=pb.TopicConfig(retention_ms=0, retention_bytes=4096),
        )

        with Fails(AlreadyExists, Status.ALREADY_EXISTS, "topic 'a' already exists"):
            await h.create_topic(pb.CreateTopicRequest(name="a"))
        with Fails(InvalidArgument, Status.INVALID_ARGUMENT, "invalid topic name 'bad/name'"):
            await h.create_topic(pb.CreateTopicRequest(name="bad/name"))
        with Fails(InvalidArgument, Status.INVALID_ARGUMENT, "partition count must be between 1 and 10000"):
            await h.create_topic(pb.CreateTopicRequest(name="c", partitions=10_001))
        with Fails(InvalidArgument, Status.INVALID_ARGUMENT, "retention_ms and retention_bytes must be >= 0"):
            await h.create_topic(pb.CreateTopicRequest(name="c", config=pb.TopicConfig(retention_ms=-1)))
        with Fails(NotFound, Status.NOT_FOUND, "topic 'c' does not exist"):
            await h.describe_topic(pb.DescribeTopicRequest(name="c"))
        with Fails(NotFound, Status.NOT_FOUND, "topic 'c' does not exist"):
            await h.delete_topic(pb.DeleteTopicRequest(name="c"))

        await h.delete_topic(pb.DeleteTopicRequest(name="a"))
        assert [t.name for t in (await h.list_topics(pb.ListTopicsRequest())).topics] == ["b"]


async def test_create_topic_counts_omitted_are_defaults_zero_or_negative_are_refused(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with serving(tmp_path, clock, default_partitions=3) as stack:
        h = stack.handlers
        for field in ("partitions", "replication_factor"):
            for value in (0, -1):
                request = pb.CreateTopicRequest(name="z", **{field: value})
                # On the wire the field is present (proto3 `optional`), so the broker sees it.
                assert getattr(pb.CreateTopicRequest.parse(bytes(request)), field) == value
                with Fails(
                    InvalidArgument,
                    Status.INVALID_ARGUMENT,
                    f"{field} must be at least 1, got {value} (omit the field for the broker's default)",
                ):
                    await h.create_topic(request)
        assert "z" not in stack.broker.topics
        omitted = await h.create_topic(pb.CreateTopicRequest(name="z"))
        assert omitted.topic is not None
        assert (len(omitted.topic.partitions), omitted.topic.replication_factor) == (3, 1)
        one = await h.create_topic(pb.CreateTopicRequest(name="one", partitions=1, replication_factor=1))
        assert one.topic is not None and len(one.topic.partitions) == 1


async def test_list_offsets(tmp_path: Path, clock: trio.testing.MockClock) -> None:

    async with serving(tmp_path, clock) as stack:
        h = stack.handlers
        await stack.broker.create_topic("t", 1)
        for n, timestamp in enumerate((100, 200, 300)):
            await h.produce(produce_request("t", 0, batch_bytes(b"v%d" % n, timestamp=timestamp)))

        async def offsets(spec: pb.OffsetSpec, timestamp_ms: int = 0) -> tuple[int, int]:
            response = await h.list_offsets(
                pb.ListOffsetsRequest(topic="t", partition=0, spec=spec, timestamp_ms=timestamp_ms)
            )
            return response.offset, response.timestamp_ms

        assert await offsets(pb.OffsetSpec.EARLIEST) == (0, -1)
        assert await offsets(pb.OffsetSpec.LATEST) == (3, -1)
        assert await offsets(pb.OffsetSpec.TIMESTAMP, 150) == (1, 200)
        assert await offsets(pb.OffsetSpec.TIMESTAMP, 0) == (0, 100)
        assert await offsets(pb.OffsetSpec.TIMESTAMP, 301) == (3, -1)
        log = stack.broker.topic("t").logs[0]
        assert isinstance(log, PartitionReplica)
        retention = ApplyRetention(retention_ms=0, retention_bytes=log.size_bytes - 1, now_ms=0)
        assert await log.call(retention) == 1  # one record removed
        assert await offsets(pb.OffsetSpec.EARLIEST) == (1, -1)
        assert await offsets(pb.OffsetSpec.TIMESTAMP, 0) == (1, 200)

        with Fails(InvalidArgument, Status.INVALID_ARGUMENT, "timestamp_ms must be >= 0, got -1"):
            await offsets(pb.OffsetSpec.TIMESTAMP, -1)
        with Fails(NotFound, Status.NOT_FOUND, "topic 'nope' does not exist"):
            await h.list_offsets(pb.ListOffsetsRequest(topic="nope", partition=0))
        unknown_spec = pb.ListOffsetsRequest().parse(bytes(pb.ListOffsetsRequest(topic="t")) + b"\x18\x07")
        with Fails(InvalidArgument, Status.INVALID_ARGUMENT, "unknown spec 7: expected one of LATEST (0)"):
            await h.list_offsets(unknown_spec)
        with Fails(InvalidArgument, Status.INVALID_ARGUMENT, "partition 1 does not exist in topic 't'"):
            await h.list_offsets(pb.ListOffsetsRequest(topic="t", partition=1))


# -- consumer groups -----------------------------------------------------------------------


async def test_group_handlers_and_their_errors(tmp_path: Path, clock: trio.testing.MockClock) -> None:

    async with serving(tmp_path, clock) as stack:
        h = stack.handlers
        await stack.broker.create_topic("t", 2)
        await h.produce(produce_request("t", 0, batch_bytes(b"a", b"b", b"c")))
        joined = await h.join_group(pb.JoinGroupRequest(group_id="g", topics=["t"], client_id="cli"))
        assert joined.generation == 1 and len(joined.assignment) == 2
        beat = await h.heartbeat(
            pb.HeartbeatRequest(group_id="g", member_id=joined.member_id, generation=joined.generation)
        )
        assert (beat.rebalance_needed, beat.generation) == (False, 1)
        await h.commit_offsets(
            pb.CommitOffsetsRequest(
                group_id="g",
                member_id=joined.member_id,
                generation=1,
                offsets=[pb.PartitionOffset(topic="t", partition=0, offset=1, metadata="m")],
            )
        )
        fetched = await h.fetch_offsets(pb.FetchOffsetsRequest(group_id="g"))
        assert fetched.offsets == [pb.PartitionOffset(topic="t", partition=0, offset=1, metadata="m")]
        assert (await h.list_groups(pb.ListGroupsRequest())).group_ids == ["g"]
        description = await h.describe_group(pb.DescribeGroupRequest(group_id="g"))
        assert (description.state, description.generation, len(description.members)) == ("Stable", 1, 1)
        assert [(e.partition, e.committed_offset, e.high_watermark, e.lag) for e in description.offsets] == [
            (0, 1, 3, 2)
        ]

        with Fails(FailedPrecondition, Status.FAILED_PRECONDITION, "stale generation 0 (current 1)"):
            await h.commit_offsets(
                pb.CommitOffsetsRequest(group_id="g", member_id=joined.member_id, generation=0)
            )
        with Fails(NotFound, Status.NOT_FOUND, "consumer group 'other' does not exist"):
            await h.describe_group(pb.DescribeGroupRequest(group_id="other"))
        with Fails(InvalidArgument, Status.INVALID_ARGUMENT, "invalid group id '': must not be empty"):
            await h.heartbeat(pb.HeartbeatRequest(group_id="", member_id="x"))
        with Fails(InvalidArgument, Status.INVALID_ARGUMENT, "invalid group id '': must not be empty"):
            await h.fetch_offsets(pb.FetchOffsetsRequest(group_id=""))

        too_long = pb.PartitionOffset(topic="t", partition=0, offset=2, metadata="m" * 4097)
        with Fails(
            InvalidArgument,
            Status.INVALID_ARGUMENT,
            "metadata of the offset committed for t[0] is 4097 bytes, more than the limit of 4096",
        ):
            await h.commit_offsets(
                pb.CommitOffsetsRequest(
                    group_id="g", member_id=joined.member_id, generation=1, offsets=[too_long]
                )
            )
        assert (await h.fetch_offsets(pb.FetchOffsetsRequest(group_id="g"))).offsets[0].offset == 1

        # Deleting a topic drops the groups' committed offsets for it.
        await h.delete_topic(pb.DeleteTopicRequest(name="t"))
        assert (await h.fetch_offsets(pb.FetchOffsetsRequest(group_id="g"))).offsets == []
        await h.leave_group(pb.LeaveGroupRequest(group_id="g", member_id=joined.member_id))
        assert (await h.describe_group(pb.DescribeGroupRequest(group_id="g"))).members == []


async def test_an_unknown_member_or_group_is_told_alike_by_every_group_request(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with serving(tmp_path, clock) as stack:
        h = stack.handlers
        await stack.broker.create_topic("t", 1)
        joined = await h.join_group(pb.JoinGroupRequest(group_id="g", topics=["t"]))
        await h.leave_group(pb.LeaveGroupRequest(group_id="g", member_id=joined.member_id))
        for group_id, member_id in (("g", joined.member_id), ("g", "stranger"), ("nogroup", "m")):
            message = str(unknown_member(member_id, group_id))
            assert message.startswith(f"unknown member {member_id!r} in group {group_id!r}")
            with Fails(FailedPrecondition, Status.FAILED_PRECONDITION, message):
                await h.leave_group(pb.LeaveGroupRequest(group_id=group_id, member_id=member_id))
            with Fails(FailedPrecondition, Status.FAILED_PRECONDITION, message):
                await h.heartbeat(pb.HeartbeatRequest(group_id=group_id, member_id=member_id, generation=1))
            with Fails(FailedPrecondition, Status.FAILED_PRECONDITION, message):
                await h.commit_offsets(
                    pb.CommitOffsetsRequest(group_id=group_id, member_id=member_id, generation=1)
                )
            # The client tests' fake broker answers the same status and text.
            fake = FakeSentinel()
            fake.groups["g"]  # an existing (empty) group, as on the real broker
            for call in (
                fake.leave_group(pb.LeaveGroupRequest(group_id=group_id, member_id=member_id)),
                fake.heartbeat(pb.HeartbeatRequest(group_id=group_id, member_id=member_id, generation=1)),
            ):
                with pytest.raises(GRPCError) as answered:
                    await call
                assert (answered.value.status, answered.value.message) == (
                    Status.FAILED_PRECONDITION,
                    message,
                )
        assert "nogroup" not in stack.coordinator.group_ids()
        with Fails(InvalidArgument, Status.INVALID_ARGUMENT, "invalid group id '': must not be empty"):
            await h.leave_group(pb.LeaveGroupRequest(group_id="", member_id="x"))
