"""The error <-> gRPC status mapping, both directions, without a server."""

from __future__ import annotations

import pytest
import trio
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from sentinel.client.errors import RequestTimeout, error_from_status, is_retriable, translate_error
from sentinel.errors import (
    ActorClosed,
    AlreadyExists,
    CorruptionError,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    InvalidRecordBatch,
    MailboxFull,
    NotFound,
    OffsetOutOfRange,
    ResourceExhausted,
    SentinelError,
    StorageClosed,
    StorageError,
    Unavailable,
)
from sentinel.server.status import INTERNAL_ERROR_MESSAGE, LEADER_METADATA_KEY, RpcStatus, status_of


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        (
            InvalidArgument("partition -7 is out of range"),
            Status.INVALID_ARGUMENT,
            "partition -7 is out of range",
        ),
        (InvalidRecordBatch("batch 0: bad CRC"), Status.INVALID_ARGUMENT, "batch 0: bad CRC"),
        (
            OffsetOutOfRange("offset 20 is out of range", log_start_offset=3, high_watermark=17),
            Status.OUT_OF_RANGE,
            "offset 20 is out of range",
        ),
        (NotFound("topic 'orders' does not exist"), Status.NOT_FOUND, "topic 'orders' does not exist"),
        (AlreadyExists("topic 'orders' exists"), Status.ALREADY_EXISTS, "topic 'orders' exists"),
        (FailedPrecondition("stale generation 3"), Status.FAILED_PRECONDITION, "stale generation 3"),
        (ResourceExhausted("too many bytes"), Status.RESOURCE_EXHAUSTED, "too many bytes"),
        (MailboxFull("broker mailbox is full"), Status.UNAVAILABLE, "broker mailbox is full"),
        (Unavailable("shutting down"), Status.UNAVAILABLE, "shutting down"),
        (ActorClosed("broker is not running"), Status.UNAVAILABLE, "broker is not running"),
        (StorageClosed("storage closed"), Status.UNAVAILABLE, "storage closed"),
        (
            CorruptionError("sst-000007.sst", 4096, "data block 1 checksum mismatch"),
            Status.DATA_LOSS,
            "corruption in sst-000007.sst at byte 4096: data block 1 checksum mismatch",
        ),
        (
            DataLoss("offsets 3 to 5 of t[0] are missing from storage"),
            Status.DATA_LOSS,
            "offsets 3 to 5 of t[0] are missing from storage",
        ),
        (StorageError("fsync failed: EIO"), Status.INTERNAL, "fsync failed: EIO"),
        (TimeoutError("replication timed out"), Status.DEADLINE_EXCEEDED, "replication timed out"),
        (TimeoutError(), Status.DEADLINE_EXCEEDED, "deadline exceeded"),
        (trio.TooSlowError(), Status.DEADLINE_EXCEEDED, "deadline exceeded"),
        (GRPCError(Status.UNIMPLEMENTED, "Method not found"), Status.UNIMPLEMENTED, "Method not found"),
    ],
)
def test_status_of_typed_errors(error: BaseException, status: Status, message: str) -> None:
    assert status_of(error) == RpcStatus(status, message)


def test_storage_closed_is_unavailable_although_storage_error_is_internal() -> None:
    # The most specific class wins, whatever order the table is written in.
    assert issubclass(StorageClosed, StorageError)
    assert status_of(StorageClosed("x")).status is Status.UNAVAILABLE
    assert status_of(StorageError("x")).status is Status.INTERNAL


@pytest.mark.parametrize(
    "error",
    [
        CorruptionError("/data/sst-000007.sst", 4096, "data block 1 checksum mismatch"),
        DataLoss(
            "offsets 120 to 131 of events[0] cannot be read: corruption in /data/sst-000007.sst at byte 4096"
        ),
    ],
    ids=["damaged", "missing"],
)
def test_damaged_or_missing_stored_data_reaches_the_client_as_data_loss_with_its_message(
    error: SentinelError,
) -> None:
    # Not INTERNAL (a server bug) and not the caller's fault: the client raises DataLoss,
    # keeps the message that says where, and does not retry.
    status = status_of(error)
    assert status == RpcStatus(Status.DATA_LOSS, str(error))
    restored = error_from_status(status.status, status.message)
    assert type(restored) is DataLoss and str(restored) == str(error)
    assert not isinstance(restored, InvalidArgument) and not is_retriable(restored)


def test_subclass_of_a_mapped_error_maps_like_its_base() -> None:
    class TopicMissing(NotFound):
        pass

    assert status_of(TopicMissing("gone")) == RpcStatus(Status.NOT_FOUND, "gone")


def test_unexpected_exception_is_internal_without_details_and_flagged() -> None:
    status = status_of(ZeroDivisionError("division by zero in secret_function"))
    assert status == RpcStatus(Status.INTERNAL, INTERNAL_ERROR_MESSAGE, expected=False)
    # A bare SentinelError is not in the table either: a bug, not an answer.
    assert status_of(SentinelError("x")).expected is False


def test_leader_hint_goes_into_message_and_metadata() -> None:
    status = status_of(Unavailable("not the leader for orders/0", leader="2@10.0.0.2:9092"))
    assert status == RpcStatus(
        Status.UNAVAILABLE,
        "not the leader for orders/0 [leader=2@10.0.0.2:9092]",
        ((LEADER_METADATA_KEY, "2@10.0.0.2:9092"),),
    )


@pytest.mark.parametrize(
    "error",
    [
        InvalidArgument("partition -7 is out of range"),
        NotFound("topic 'orders' does not exist"),
        AlreadyExists("topic 'orders' exists"),
        FailedPrecondition("stale generation 3"),
        ResourceExhausted("too many bytes"),
    ],
)
def test_round_trip_restores_type_and_message(error: SentinelError) -> None:
    status = status_of(error)
    restored = error_from_status(status.status, status.message)
    assert type(restored) is type(error)
    assert str(restored) == str(error)


def test_round_trip_of_offset_out_of_range_keeps_the_valid_range() -> None:
    error = OffsetOutOfRange(
        "offset 99 is out of range for orders[0]: valid offsets are 3 to 17 (17 is the next offset)",
        log_start_offset=3,
        high_watermark=17,
    )
    status = status_of(error)
    restored = error_from_status(status.status, status.message)
    assert isinstance(restored, OffsetOutOfRange)
    assert (restored.log_start_offset, restored.high_watermark) == (3, 17)


def test_round_trip_of_leader_hint_through_message_alone() -> None:
    status = status_of(Unavailable("not the leader for orders/0", leader="2"))
    restored = error_from_status(status.status, status.message)
    assert isinstance(restored, Unavailable)
    assert str(restored) == "not the leader for orders/0"
    assert restored.leader == "2"


def test_unavailable_without_hint() -> None:
    restored = error_from_status(Status.UNAVAILABLE, "the server is shutting down")
    assert isinstance(restored, Unavailable)
    assert (str(restored), restored.leader) == ("the server is shutting down", None)


def test_deadline_exceeded_becomes_a_retriable_timeout() -> None:
    restored = error_from_status(Status.DEADLINE_EXCEEDED, "deadline exceeded")
    assert isinstance(restored, RequestTimeout)
    assert isinstance(restored, TimeoutError)
    assert is_retriable(restored)


@pytest.mark.parametrize(
    ("status", "message", "text"),
    [
        (Status.INTERNAL, "fsync failed: EIO", "INTERNAL: fsync failed: EIO"),
        (Status.UNIMPLEMENTED, None, "UNIMPLEMENTED"),
        (Status.UNKNOWN, "Internal Server Error", "UNKNOWN: Internal Server Error"),
    ],
)
def test_statuses_without_a_sentinel_meaning(status: Status, message: str | None, text: str) -> None:
    restored = error_from_status(status, message)
    assert type(restored) is SentinelError
    assert str(restored) == text


def test_translate_error_of_transport_failures() -> None:
    not_found = translate_error(GRPCError(Status.NOT_FOUND, "topic 'x' does not exist"), "h:1")
    assert isinstance(not_found, NotFound)
    assert str(not_found) == "topic 'x' does not exist"

    reset = translate_error(StreamTerminatedError("Stream reset by remote party, error_code: 8"), "h:1")
    assert isinstance(reset, Unavailable)
    assert str(reset) == "cannot reach broker h:1: Stream reset by remote party, error_code: 8"

    refused = translate_error(ConnectionRefusedError(111, "Connect call failed"), "h:1")
    assert isinstance(refused, Unavailable)
    assert str(refused).startswith("cannot reach broker h:1: ")

    assert isinstance(translate_error(TimeoutError("Deadline exceeded"), "h:1"), RequestTimeout)
    assert translate_error(KeyError("x"), "h:1") is None
    assert translate_error(NotFound("already typed"), "h:1") is None
