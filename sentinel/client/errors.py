"""The client's one error boundary: gRPC statuses and transport failures become typed errors.

Every RPC the client makes runs inside :func:`rpc_errors`, so application code only ever
sees the ``sentinel.errors`` tree (plus :class:`RequestTimeout`, which is both a
``SentinelError`` and a builtin ``TimeoutError``):

==================== ==========================
gRPC status          raised
==================== ==========================
INVALID_ARGUMENT     InvalidArgument
NOT_FOUND            NotFound
ALREADY_EXISTS       AlreadyExists
FAILED_PRECONDITION  FailedPrecondition (ProducerFenced with `` [reason=PRODUCER_FENCED]``)
ABORTED              OutOfOrderSequence
RESOURCE_EXHAUSTED   ResourceExhausted
UNAVAILABLE          Unavailable
OUT_OF_RANGE         OffsetOutOfRange
DATA_LOSS            DataLoss
DEADLINE_EXCEEDED    RequestTimeout
anything else        SentinelError
==================== ==========================

An UNAVAILABLE message ending in the server's `` [leader=<node>]`` hint becomes
``Unavailable(text, leader=<node>)``; a message ending in `` [reason=<NAME>]`` becomes the
error that reason names, without the suffix (``sentinel/server/status.py`` adds both). A
broker that cannot be reached (connection refused, reset, HTTP/2 protocol failure) is
``Unavailable``; a client-side deadline is ``RequestTimeout``. Retriable: ``Unavailable``
(which includes a busy broker) and ``RequestTimeout``; ``ResourceExhausted`` means a
request over a limit (too large), which a retry would only repeat. ``OutOfOrderSequence``
and ``ProducerFenced`` (idempotent produce, the broker's own classes) are not retriable as
such: the producer decides what they mean.

Bad data a fetch returns is not the caller's fault, so it is never ``InvalidArgument``: a
stored batch that does not decode is :class:`CorruptRecordBatch` (a ``CorruptionError``)
naming the topic, partition and offset. Stored data the broker cannot read (missing, or
damaged on its disk) is DATA_LOSS, ``DataLoss``: not retried, the message says where.
"""

from __future__ import annotations

import re
from types import TracebackType
from typing import Final, Literal

from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from sentinel.broker.producer_state import OutOfOrderSequence, ProducerFenced
from sentinel.errors import (
    AlreadyExists,
    CorruptionError,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OffsetOutOfRange,
    ResourceExhausted,
    SentinelError,
    Unavailable,
)

__all__ = [
    "RETRIABLE_ERRORS",
    "BrokerUnreachable",
    "CorruptRecordBatch",
    "OutOfOrderSequence",
    "ProducerFenced",
    "RequestTimeout",
    "error_from_status",
    "is_retriable",
    "rpc_errors",
    "translate_error",
]


class BrokerUnreachable(Unavailable):
    """No answer at all: the connection to the broker was refused, reset or lost (an
    Unavailable that a broker answered is the plain class); retriable."""


class RequestTimeout(SentinelError, TimeoutError):
    """A request's deadline passed (DEADLINE_EXCEEDED, or the client's own timeout); retriable."""


class CorruptRecordBatch(CorruptionError):
    """A record batch a fetch returned cannot be decoded: damaged data stored in the
    partition (say, written before the broker validated every record), not a bad request.

    ``offset`` is the first offset the consumer could not deliver. ``batch_offsets`` is the
    damaged batch's (first, last) offset when its header is readable, None when it is not;
    an application that chooses to skip the batch seeks to ``batch_offsets[1] + 1``.
    """

    def __init__(
        self, topic: str, partition: int, offset: int, batch_offsets: tuple[int, int] | None, detail: str
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.batch_offsets = batch_offsets
        if batch_offsets is None:
            what = "the stored data is not a valid record batch"
        else:
            first, last = batch_offsets
            what = f"the stored record batch of offsets {first} to {last} cannot be decoded"
        where = f"topic {topic!r} partition {partition} at offset {offset}"
        super().__init__(where, None, f"{what}: {detail}")


RETRIABLE_ERRORS: Final = (Unavailable, RequestTimeout)

_SIMPLE_STATUS_ERRORS: Final[dict[Status, type[SentinelError]]] = {
    Status.INVALID_ARGUMENT: InvalidArgument,
    Status.NOT_FOUND: NotFound,
    Status.ALREADY_EXISTS: AlreadyExists,
    Status.FAILED_PRECONDITION: FailedPrecondition,
    Status.RESOURCE_EXHAUSTED: ResourceExhausted,
    Status.DATA_LOSS: DataLoss,
    Status.DEADLINE_EXCEEDED: RequestTimeout,
    Status.ABORTED: OutOfOrderSequence,
}
# Errors told apart from others of their status by the server's " [reason=<NAME>]" suffix.
_REASON_ERRORS: Final[dict[str, type[SentinelError]]] = {
    "PRODUCER_FENCED": ProducerFenced,
}
_REASON_SUFFIX: Final = re.compile(r" \[reason=([A-Z_]+)\]\Z")

# The broker's OffsetOutOfRange message names the valid range
# ("valid offsets are 3 to 17 (17 is the next offset)");
# gRPC carries no structured fields for it, so the range is recovered from the text when
# present. Nothing depends on it: a consumer resets with ListOffsets either way.
_VALID_RANGE: Final = re.compile(r"valid offsets are (\d+) to (\d+)")
# The server appends the leader hint of an UNAVAILABLE answer to its message as
# " [leader=<node>]" (sentinel/server/status.py: the generated stubs raise a GRPCError
# without the trailing metadata that carries it too).
_LEADER_SUFFIX: Final = re.compile(r" \[leader=([^\]]+)\]\Z")


def error_from_status(status: Status, message: str | None) -> SentinelError:
    """The typed error for a non-OK gRPC status and its message."""
    text = message or status.name
    if status is Status.UNAVAILABLE:
        match = _LEADER_SUFFIX.search(text)
        if match is None:
            return Unavailable(text)
        return Unavailable(text[: match.start()] or status.name, leader=match.group(1))
    if status is Status.OUT_OF_RANGE:
        match = _VALID_RANGE.search(text)
        start, end = (int(match.group(1)), int(match.group(2))) if match else (-1, -1)
        return OffsetOutOfRange(text, log_start_offset=start, high_watermark=end)
    reason = _REASON_SUFFIX.search(text)
    if reason is not None and reason.group(1) in _REASON_ERRORS:
        return _REASON_ERRORS[reason.group(1)](text[: reason.start()] or status.name)
    error_type = _SIMPLE_STATUS_ERRORS.get(status)
    if error_type is None:
        return SentinelError(f"{status.name}: {message}" if message else status.name)
    return error_type(text)


def translate_error(exc: BaseException, address: str) -> SentinelError | None:
    """The typed error for an exception an RPC to ``address`` raised, or None to let it pass."""
    if isinstance(exc, SentinelError):
        return None
    if isinstance(exc, GRPCError):
        return error_from_status(exc.status, exc.message)
    if isinstance(exc, TimeoutError):
        return RequestTimeout(f"request to {address} timed out")
    if isinstance(exc, OSError | StreamTerminatedError | ProtocolError):
        return BrokerUnreachable(f"cannot reach broker {address}: {exc or type(exc).__name__}")
    if isinstance(exc, AttributeError) and exc.name == "_transport":
        # grpclib reuses a connection that was just lost: its Connection has dropped its
        # transport (grpclib#110). Seen when a broker dies mid-request; a retry reconnects.
        return BrokerUnreachable(f"cannot reach broker {address}: connection lost")
    return None


def is_retriable(exc: BaseException) -> bool:
    return isinstance(exc, RETRIABLE_ERRORS)


class rpc_errors:  # named like the context manager it is
    """``with rpc_errors(address): await stub.method(...)`` raises typed errors only.

    A class rather than ``contextlib.contextmanager``: it sits on every RPC, and entering
    it must not allocate a generator.
    """

    __slots__ = ("address",)

    def __init__(self, address: str) -> None:
        self.address = address

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        if exc is None:
            return False
        translated = translate_error(exc, self.address)
        if translated is None:
            return False
        if isinstance(exc, GRPCError):
            raise translated from None  # the status and message are all there is to say
        raise translated from exc
