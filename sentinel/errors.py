"""The error tree every Sentinel component raises.

Components raise these typed errors; exactly one boundary (the gRPC front end, the CLI)
turns them into a status code or a readable line. Nothing below that boundary formats
errors for humans beyond a precise message.
"""

from __future__ import annotations

from typing import Any


class SentinelError(Exception):
    """Base class of every error Sentinel raises on purpose.

    Picklable whatever a subclass's ``__init__`` takes (its fields are restored as they
    are, not passed back to ``__init__``): a compaction in a worker process reports damage
    and a full disk across the process boundary."""

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_error, (type(self), self.args), self.__dict__


def _rebuild_error(cls: type[SentinelError], args: tuple[Any, ...]) -> SentinelError:
    error = cls.__new__(cls)
    error.args = args
    return error


class InvalidArgument(SentinelError):
    """The caller sent something malformed or out of range."""


class CorruptionError(SentinelError):
    """Bytes on disk (or on the wire) failed a checksum or a structural check.

    Always names where: the file (or source) and the byte position, so an operator can
    find the damage.
    """

    def __init__(self, source: str, position: int | None, detail: str) -> None:
        self.source = source
        self.position = position
        self.detail = detail
        where = source if position is None else f"{source} at byte {position}"
        super().__init__(f"corruption in {where}: {detail}")


class DataLoss(SentinelError):
    """Data that must exist is missing (e.g. offsets below a partition's high watermark
    after an operator accepted a loss at recovery): the read is refused, never skipped."""


class InvalidRecordBatch(InvalidArgument):
    """A record batch failed validation (length, magic, CRC, record count)."""


class StorageError(SentinelError):
    """The storage engine failed; the node cannot continue safely."""


class StorageClosed(StorageError):
    """The storage engine has shut down and takes no more requests."""


class ActorClosed(SentinelError):
    """The actor a request was sent to is no longer running."""


class MailboxFull(SentinelError):
    """A non-blocking send found the actor's mailbox full (back-pressure)."""


class NotFound(SentinelError):
    """The named topic, partition, group or member does not exist."""


class AlreadyExists(SentinelError):
    """The topic (or other named thing) to create exists already."""


class FailedPrecondition(SentinelError):
    """The request is well formed but the system is not in a state to accept it
    (a stale consumer-group generation, a member that must rejoin)."""


class ResourceExhausted(SentinelError):
    """A limit was hit: a message too large, a mailbox full. Retry later or send less."""


class WriteRefused(ResourceExhausted):
    """The storage engine refused a write: nothing of it was stored or became visible, the
    engine goes on serving reads, and it accepts writes again once the cause is gone (the
    subclass says which). A writer that pipelines treats it like any failed write: the
    refused batch and every one after it failed (``Store.submit``)."""


class DiskFullError(WriteRefused):
    """The storage directory's filesystem is full (ENOSPC) or over quota (EDQUOT).

    Not fatal: the write that met it was not acknowledged and nothing of it is visible;
    the node keeps serving reads and accepts writes again once space is freed. ``path``
    names the file the engine could not write."""

    def __init__(self, path: str, detail: str) -> None:
        self.path = path
        super().__init__(f"disk full: {path}: {detail}; free space on its filesystem")


class StorageNeedsRepair(WriteRefused):
    """A damaged table (a data block failing its checksum) keeps compaction from making
    room: L0 has reached its stop-writes bound and no compaction can merge it past the
    damaged table, or a requested compaction could not complete. Reads go on (the damaged
    block's own reads are refused with ``CorruptionError``); writes are refused until an
    operator restores the file and restarts. ``path`` and ``position`` name the damage."""

    def __init__(self, path: str, position: int | None, detail: str) -> None:
        self.path = path
        self.position = position
        where = path if position is None else f"{path} at byte {position}"
        super().__init__(f"storage needs repair: {where}: {detail}")


class Unavailable(SentinelError):
    """The service cannot answer now (shutting down, not the leader); retriable.
    ``leader`` names the node to retry against when known."""

    def __init__(self, message: str, *, leader: str | None = None) -> None:
        self.leader = leader
        super().__init__(message)


class OffsetOutOfRange(InvalidArgument):
    """A fetch asked for an offset outside ``[log_start_offset, high_watermark]``."""

    def __init__(self, message: str, *, log_start_offset: int, high_watermark: int) -> None:
        self.log_start_offset = log_start_offset
        self.high_watermark = high_watermark
        super().__init__(message)
