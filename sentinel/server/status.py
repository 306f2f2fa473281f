"""The one place where Sentinel errors become gRPC statuses (server side).

:func:`status_of` turns whatever escaped an RPC handler into the status, the message and
the trailing metadata the client gets. The way back — a status into the typed error the
server raised, so a caller catches ``NotFound`` rather than comparing status codes — is
the client's (:mod:`sentinel.client.errors`); the round trip is tested in
``tests/server/test_status.py``.

Invariants:

* the message is the error's own text (never a traceback); an exception that is not a
  :class:`~sentinel.errors.SentinelError` is a bug, reported as ``INTERNAL`` with a generic
  message, and flagged ``expected=False`` so the front end logs its traceback once;
* the mapping follows the class hierarchy: the most specific class listed wins
  (``StorageClosed`` is ``UNAVAILABLE`` although its base ``StorageError`` is ``INTERNAL``);
* damaged stored data (``CorruptionError``) and missing stored data (``DataLoss``) are
  ``DATA_LOSS``, never ``INTERNAL`` (a server bug) nor ``INVALID_ARGUMENT`` (the caller's);
* a leader hint (:attr:`Unavailable.leader`) travels twice: in trailing metadata under
  :data:`LEADER_METADATA_KEY` and as a ``[leader=...]`` suffix of the message, because the
  generated stubs raise a bare ``GRPCError`` that does not carry trailing metadata;
* an error a client must tell apart from others of its status carries a reason the same
  two ways (:data:`REASON_METADATA_KEY`, a `` [reason=NAME]`` suffix): today only
  ``ProducerFenced`` (``FAILED_PRECONDITION``, like a stale group generation);
  ``OutOfOrderSequence`` has ``ABORTED`` to itself, gRPC's status for "a sequencer check
  failure".
"""

from __future__ import annotations

import re

import attrs
import trio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from sentinel.broker.producer_state import OutOfOrderSequence, ProducerFenced
from sentinel.errors import (
    ActorClosed,
    AlreadyExists,
    CorruptionError,
    DataLoss,
    DiskFullError,
    FailedPrecondition,
    InvalidArgument,
    InvalidRecordBatch,
    MailboxFull,
    NotFound,
    OffsetOutOfRange,
    ResourceExhausted,
    StorageClosed,
    StorageError,
    Unavailable,
)

#: Trailing-metadata key naming the node to retry against after ``UNAVAILABLE``.
LEADER_METADATA_KEY = "sentinel-leader"

#: Trailing-metadata key naming why an error happened, for errors that share a status.
REASON_METADATA_KEY = "sentinel-reason"

#: What a client sees for an unexpected server exception: the details stay in the server log.
INTERNAL_ERROR_MESSAGE = "internal server error"

_LEADER_SUFFIX = " [leader={}]"
_LEADER_SUFFIX_RE = re.compile(r" \[leader=([^\]]+)\]\Z")
_REASON_SUFFIX = " [reason={}]"

Metadata = tuple[tuple[str, str], ...]


@attrs.frozen
class RpcStatus:
    """What an RPC ends with: a gRPC status, its message and extra trailing metadata."""

    status: Status
    message: str
    metadata: Metadata = ()
    #: False for exceptions that are bugs rather than answers: log them with a traceback.
    expected: bool = True


# Most specific class first is not needed: lookups walk the exception's MRO.
_STATUS_OF_CLASS: dict[type[BaseException], Status] = {
    InvalidArgument: Status.INVALID_ARGUMENT,
    InvalidRecordBatch: Status.INVALID_ARGUMENT,
    OffsetOutOfRange: Status.OUT_OF_RANGE,
    NotFound: Status.NOT_FOUND,
    AlreadyExists: Status.ALREADY_EXISTS,
    FailedPrecondition: Status.FAILED_PRECONDITION,
    ResourceExhausted: Status.RESOURCE_EXHAUSTED,
    DiskFullError: Status.RESOURCE_EXHAUSTED,  # refused, not retried: space must be freed first
    MailboxFull: Status.UNAVAILABLE,  # busy right now: worth a retry
    Unavailable: Status.UNAVAILABLE,
    ActorClosed: Status.UNAVAILABLE,
    StorageClosed: Status.UNAVAILABLE,
    # Stored data that is damaged or missing: gRPC's "unrecoverable data loss or
    # corruption". Neither the caller's fault nor worth a retry; the message says where.
    CorruptionError: Status.DATA_LOSS,
    DataLoss: Status.DATA_LOSS,
    StorageError: Status.INTERNAL,
    TimeoutError: Status.DEADLINE_EXCEEDED,
    trio.TooSlowError: Status.DEADLINE_EXCEEDED,
    # Idempotent produce: a batch whose sequence does not follow its producer's last one.
    # Not retried as it is: the producer decides (an earlier batch may explain it).
    OutOfOrderSequence: Status.ABORTED,
    ProducerFenced: Status.FAILED_PRECONDITION,
}

#: The reason named with errors whose status is not theirs alone (see the module docstring).
_REASON_OF_CLASS: dict[type[BaseException], str] = {
    ProducerFenced: "PRODUCER_FENCED",
}

_DEFAULT_MESSAGE = {
    Status.DEADLINE_EXCEEDED: "deadline exceeded",
    Status.UNAVAILABLE: "service unavailable",
}


def status_of(exc: BaseException) -> RpcStatus:
    """The status an RPC that raised ``exc`` ends with."""
    if isinstance(exc, GRPCError):
        return RpcStatus(exc.status, exc.message or "")
    for cls in type(exc).__mro__:
        status = _STATUS_OF_CLASS.get(cls)
        if status is not None:
            break
    else:
        return RpcStatus(Status.INTERNAL, INTERNAL_ERROR_MESSAGE, expected=False)
    message = str(exc) or _DEFAULT_MESSAGE.get(status, status.name.lower())
    if isinstance(exc, Unavailable) and exc.leader is not None:
        return RpcStatus(
            status,
            message + _LEADER_SUFFIX.format(exc.leader),
            ((LEADER_METADATA_KEY, exc.leader),),
        )
    reason = next((r for cls in type(exc).__mro__ if (r := _REASON_OF_CLASS.get(cls))), None)
    if reason is not None:
        return RpcStatus(status, message + _REASON_SUFFIX.format(reason), ((REASON_METADATA_KEY, reason),))
    return RpcStatus(status, message)


__all__ = [
    "INTERNAL_ERROR_MESSAGE",
    "LEADER_METADATA_KEY",
    "REASON_METADATA_KEY",
    "RpcStatus",
    "status_of",
]
