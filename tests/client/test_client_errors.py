"""The client's error boundary: gRPC statuses and transport failures become typed errors."""

from __future__ import annotations

import pytest
from client_fakes import FakeSentinel, run
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from sentinel.client import Admin, BrokerUnreachable, RequestTimeout
from sentinel.client.connection import parse_address, parse_bootstrap, retry_delay
from sentinel.client.errors import (
    OutOfOrderSequence,
    ProducerFenced,
    error_from_status,
    is_retriable,
    rpc_errors,
    translate_error,
)
from sentinel.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OffsetOutOfRange,
    ResourceExhausted,
    SentinelError,
    Unavailable,
)
from sentinel.generated.sentinel import v1 as pb
from sentinel.records import build_batch
from sentinel.server.status import status_of


@pytest.mark.parametrize(
    ("status", "error_type", "retriable"),
    [
        (Status.INVALID_ARGUMENT, InvalidArgument, False),
        (Status.NOT_FOUND, NotFound, False),
        (Status.ALREADY_EXISTS, AlreadyExists, False),
        (Status.FAILED_PRECONDITION, FailedPrecondition, False),
        (Status.RESOURCE_EXHAUSTED, ResourceExhausted, False),
        (Status.UNAVAILABLE, Unavailable, True),
        (Status.OUT_OF_RANGE, OffsetOutOfRange, False),
        (Status.DEADLINE_EXCEEDED, RequestTimeout, True),
    ],
)
def test_status_maps_to_typed_error(status: Status, error_type: type[SentinelError], retriable: bool) -> None:
    error = error_from_status(status, "the detail")
    assert type(error) is error_type
    assert str(error) == "the detail"
    assert is_retriable(error) is retriable


def test_other_statuses_are_plain_sentinel_errors_naming_the_status() -> None:
    error = error_from_status(Status.INTERNAL, "boom")
    assert type(error) is SentinelError
    assert str(error) == "INTERNAL: boom"
    assert not is_retriable(error)
    assert str(error_from_status(Status.UNAVAILABLE, None)) == "UNAVAILABLE"


def test_out_of_range_recovers_the_valid_range_from_the_message() -> None:
    message = "offset 99 is out of range for t[0]: valid offsets are 3 to 17 (17 is the next offset)"
    error = error_from_status(Status.OUT_OF_RANGE, message)
    assert isinstance(error, OffsetOutOfRange)
    assert (error.log_start_offset, error.high_watermark) == (3, 17)
    bare = error_from_status(Status.OUT_OF_RANGE, "out of range")
    assert isinstance(bare, OffsetOutOfRange)
    assert (bare.log_start_offset, bare.high_watermark) == (-1, -1)


def test_unavailable_carries_the_leader_hint_of_the_message_suffix() -> None:
    error = error_from_status(Status.UNAVAILABLE, "not the leader of t[0] [leader=2]")
    assert isinstance(error, Unavailable)
    assert (str(error), error.leader) == ("not the leader of t[0]", "2")
    plain = error_from_status(Status.UNAVAILABLE, "shutting down")
    assert isinstance(plain, Unavailable) and plain.leader is None


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (OutOfOrderSequence("producer 7 epoch 0 sent sequence 9, expected 4"), Status.ABORTED),
        (
            ProducerFenced("producer 7 epoch 0 is fenced by epoch 1: a newer producer exists"),
            Status.FAILED_PRECONDITION,
        ),
    ],
)
def test_idempotence_errors_travel_as_the_broker_raised_them(error: SentinelError, status: Status) -> None:
    sent = status_of(error)  # the server's one mapping
    assert sent.status is status and sent.expected
    received = error_from_status(sent.status, sent.message)
    assert type(received) is type(error) and str(received) == str(error)
    assert not is_retriable(received)
    # Other errors of the same status stay what they were.
    other = status_of(FailedPrecondition("stale generation 3 for member 'm'"))
    assert type(error_from_status(other.status, other.message)) is FailedPrecondition


def test_request_timeout_is_both_a_sentinel_error_and_a_timeout_error() -> None:
    error = translate_error(TimeoutError(), "h:1")
    assert isinstance(error, RequestTimeout)
    assert isinstance(error, TimeoutError) and isinstance(error, SentinelError)
    assert str(error) == "request to h:1 timed out"


def test_transport_failures_are_unavailable_and_other_exceptions_pass() -> None:
    for exc in (ConnectionRefusedError("refused"), StreamTerminatedError("Connection closed")):
        error = translate_error(exc, "h:1")
        # No answer at all: BrokerUnreachable, an Unavailable (a broker's own UNAVAILABLE
        # answer is the plain class: the admin client waits on one, passes over the other).
        assert type(error) is BrokerUnreachable and isinstance(error, Unavailable)
        assert str(error).startswith("cannot reach broker h:1: ")
    answered = error_from_status(Status.UNAVAILABLE, "no group coordinator right now")
    assert type(answered) is Unavailable
    assert translate_error(ValueError("bug"), "h:1") is None
    assert translate_error(NotFound("x"), "h:1") is None
    with pytest.raises(ValueError, match="bug"), rpc_errors("h:1"):
        raise ValueError("bug")
    with pytest.raises(NotFound, match="gone") as info, rpc_errors("h:1"):
        raise GRPCError(Status.NOT_FOUND, "gone")
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_addresses_are_parsed_strictly() -> None:
    assert parse_address("localhost:9092") == ("localhost", 9092)
    assert parse_address("[::1]:9092") == ("::1", 9092)
    assert parse_bootstrap("a:1, b:2") == [("a", 1), ("b", 2)]
    for bad in ("localhost", ":9092", "host:port", "host:0", "host:70000"):
        with pytest.raises(InvalidArgument, match=r"broker (address must be host:port|port must be in)"):
            parse_address(bad)
    with pytest.raises(InvalidArgument, match="bootstrap names no broker address"):
        parse_bootstrap(" , ")


def test_retry_delay_is_exponential_and_capped() -> None:
    assert [retry_delay(0.05, n) for n in (1, 2, 3)] == pytest.approx([0.05, 0.1, 0.2])
    assert retry_delay(0.1, 30) == 0.25  # MAX_RETRY_BACKOFF_S: a leader change is the usual cause
    assert retry_delay(2.0, 3) == 2.0  # a backoff above the cap is used as is


def test_admin_topics_and_groups() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        async with Admin(fake.address) as admin:
            created = await admin.create_topic("orders", 3, retention_ms=0)
            assert created.name == "orders" and created.partition_count == 3
            assert [p.partition for p in created.partitions] == [0, 1, 2]
            with pytest.raises(AlreadyExists, match="topic 'orders' already exists"):
                await admin.create_topic("orders", 3)
            for bad in (-1, 0, 2**31):
                with pytest.raises(
                    InvalidArgument, match=f"partitions must be an int from 1 to 2147483647, .*; got {bad}"
                ):
                    await admin.create_topic("bad", bad)
            with pytest.raises(
                InvalidArgument, match=f"retention_ms must be an int from 0 to {2**63 - 1}, got {2**63}"
            ):
                await admin.create_topic("bad", retention_ms=2**63)
            defaulted = await admin.create_topic("logs")
            assert defaulted.partition_count == 2  # the broker's default
            assert [t.name for t in await admin.list_topics()] == ["logs", "orders"]
            assert (await admin.describe_topic("orders")).partitions[2].leader == 1
            metadata = await admin.fetch_metadata(["orders", "missing"])
            assert [t.name for t in metadata.topics] == ["orders"]
            assert metadata.brokers[0].address == fake.address
            assert metadata.topic("missing") is None
            assert metadata.topic_errors == (("missing", 5, "topic 'missing' does not exist"),)
            assert "missing" not in fake.topics  # an admin's look-up never creates a topic
            await admin.delete_topic("orders")
            with pytest.raises(NotFound, match="topic 'orders' does not exist"):
                await admin.describe_topic("orders")
            with pytest.raises(NotFound, match="topic 'orders' does not exist"):
                await admin.delete_topic("orders")
            fake.groups["g"].offsets[("logs", 0)] = 0
            assert await admin.list_groups() == ["g"]
            group = await admin.describe_group("g")
            assert (group.group_id, group.state, group.members) == ("g", "Empty", ())
            assert [(o.topic, o.partition, o.lag) for o in group.offsets] == [("logs", 0, 0)]
            with pytest.raises(NotFound, match="group 'nope' does not exist"):
                await admin.describe_group("nope")
        with pytest.raises(FailedPrecondition, match="admin client is closed"):
            await admin.list_topics()

    run(scenario, default_partitions=2)


def test_admin_asks_a_partitions_leader_for_the_lag_the_coordinator_cannot_know() -> None:
    # In a cluster the coordinator holds no replica of some partitions: it reports their
    # high watermark as unknown, and the admin client asks each one's leader; where that
    # leader does not answer the lag stays unknown (-1) and the describe still succeeds.
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("logs", 2)
        await fake.produce(
            pb.ProduceRequest(
                topic="logs", partition=1, record_batches=build_batch([(None, b"x", [], 0)] * 5)
            )
        )
        fake.groups["g"].offsets.update({("logs", 0): 0, ("logs", 1): 2})
        fake.unhosted.add(("logs", 1))
        async with Admin(fake.address) as admin:
            group = await admin.describe_group("g")
            lags = [(o.partition, o.high_watermark, o.lag) for o in group.offsets]
            assert lags == [(0, 0, 0), (1, 5, 3)]
            assert fake.calls["list_offsets"] == 1  # only the partition the coordinator lacks
            fake.fail_next("list_offsets", Status.UNAVAILABLE, "no leader")
            group = await admin.describe_group("g")
            assert [(o.partition, o.high_watermark, o.lag) for o in group.offsets] == [(0, 0, 0), (1, -1, -1)]

    run(scenario)


def test_admin_group_calls_follow_the_coordinator_and_wait_out_an_election() -> None:
    # Only the group coordinator (the controller leader) knows a group's members: another
    # broker names it, and during an election none can. A broker that does not answer at
    # all is passed over, and with none answering the error comes at once.
    async def scenario(fake: FakeSentinel) -> None:
        fake.groups["g"].offsets[("logs", 0)] = 0
        async with Admin(f"127.0.0.1:1,{fake.address}") as admin:
            election = "no group coordinator right now (controller election in progress)"
            fake.fail_next("list_groups", Status.UNAVAILABLE, election, times=3)
            assert await admin.list_groups() == ["g"]
            assert fake.calls["list_groups"] == 4
            named = f"the group coordinator is node 1 [leader={fake.address}]"
            fake.fail_next("describe_group", Status.UNAVAILABLE, named)
            assert (await admin.describe_group("g")).group_id == "g"
            assert fake.calls["describe_group"] == 2
        async with Admin("127.0.0.1:1") as admin:
            with pytest.raises(Unavailable, match=r"cannot reach broker 127\.0\.0\.1:1"):
                await admin.list_groups()

    run(scenario)
