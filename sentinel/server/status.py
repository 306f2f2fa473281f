"""The one place where Sentinel errors become gRPC statuses, and back.

Server side, :func:`status_of` turns whatever escaped an RPC handler into the status, the
message and the trailing metadata the client gets. Client side, :func:`error_of` turns a
:class:`grpclib.GRPCError` back into the typed error the server raised, so a caller of the
client library catches ``NotFound`` rather than comparing status codes.

Invariants:

* the message is the error's own text (never a traceback); an exception that is not a
  :class:`~sentinel.errors.SentinelError` is a bug, reported as ``INTERNAL`` with a generic
  message, and flagged ``expected=False`` so the front end logs its traceback once;
* the mapping follows the class hierarchy: the most specific class listed wins
  (``StorageClosed`` is ``UNAVAILABLE`` although its base ``StorageError`` is ``INTERNAL``);
* a leader hint (:attr:`Unavailable.leader`) travels twice: in trailing metadata under
  :data:`LEADER_METADATA_KEY` and as a ``[leader=...]`` suffix of the message, because the
  generated stubs raise a bare ``GRPCError`` that does not carry trailing metadata.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import attrs
import trio
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from sentinel.errors import (
    ActorClosed,
    AlreadyExists,
    CorruptionError,
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

#: Trailing-metadata key naming the node to retry against after ``UNAVAILABLE``.
LEADER_METADATA_KEY = "sentinel-leader"

#: What a client sees for an unexpected server exception: the details stay in the server log.
INTERNAL_ERROR_MESSAGE = "internal server error"

_LEADER_SUFFIX = " [leader={}]"
_LEADER_SUFFIX_RE = re.compile(r" \[leader=([^\]]+)\]\Z")

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
    MailboxFull: Status.RESOURCE_EXHAUSTED,
    Unavailable: Status.UNAVAILABLE,
    ActorClosed: Status.UNAVAILABLE,
    StorageClosed: Status.UNAVAILABLE,
    CorruptionError: Status.INTERNAL,
    StorageError: Status.INTERNAL,
    TimeoutError: Status.DEADLINE_EXCEEDED,
    trio.TooSlowError: Status.DEADLINE_EXCEEDED,
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
    return RpcStatus(status, message)


_ERROR_OF_STATUS: dict[Status, type[SentinelError]] = {
    Status.INVALID_ARGUMENT: InvalidArgument,
    Status.NOT_FOUND: NotFound,
    Status.ALREADY_EXISTS: AlreadyExists,
    Status.FAILED_PRECONDITION: FailedPrecondition,
    Status.RESOURCE_EXHAUSTED: ResourceExhausted,
}


def error_of(
    status: Status, message: str | None, metadata: Iterable[tuple[str, str | bytes]] | None = None
) -> Exception:
    """The typed error a client raises for a non-OK status (client side of :func:`status_of`).

    ``UNAVAILABLE`` becomes :class:`Unavailable` with its leader hint (from ``metadata`` when
    given, else from the message suffix); ``DEADLINE_EXCEEDED`` becomes :class:`TimeoutError`
    (what grpclib raises itself when the client's own deadline passes); statuses with no
    Sentinel meaning (``INTERNAL``, ``UNKNOWN``, ``UNIMPLEMENTED``...) become a plain
    :class:`SentinelError` naming the status.
    """
    if status is Status.OK:
        raise ValueError("an OK status is not an error")
    text = message or ""
    error_class = _ERROR_OF_STATUS.get(status)
    if error_class is not None:
        return error_class(text)
    if status is Status.UNAVAILABLE:
        leader = None
        match = _LEADER_SUFFIX_RE.search(text)
        if match is not None:
            leader = match.group(1)
            text = text[: match.start()]
        for key, value in metadata or ():
            if key == LEADER_METADATA_KEY:
                leader = value.decode() if isinstance(value, bytes) else value
        return Unavailable(text or _DEFAULT_MESSAGE[status], leader=leader)
    if status is Status.DEADLINE_EXCEEDED:
        return TimeoutError(text or _DEFAULT_MESSAGE[status])
    return SentinelError(f"{status.name}: {text}" if text else status.name)


def client_error_of(exc: BaseException) -> BaseException:
    """Translate what a grpclib client call raised into a Sentinel error; anything this
    module does not know is returned unchanged.

    A reset stream or a refused/broken connection means "try again, maybe elsewhere":
    :class:`Unavailable`. The client's own deadline stays the :class:`TimeoutError` grpclib
    raised.
    """
    if isinstance(exc, GRPCError):
        return error_of(exc.status, exc.message)
    if isinstance(exc, StreamTerminatedError):
        return Unavailable(f"the server ended the call: {exc}")
    if isinstance(exc, TimeoutError):  # an OSError subclass: keep it a timeout
        return exc
    if isinstance(exc, OSError):
        return Unavailable(f"cannot reach the server: {exc}")
    return exc


__all__ = [
    "INTERNAL_ERROR_MESSAGE",
    "LEADER_METADATA_KEY",
    "RpcStatus",
    "client_error_of",
    "error_of",
    "status_of",
]
