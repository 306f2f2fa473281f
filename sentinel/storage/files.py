"""File naming and the few durable-filesystem primitives the engine needs.

A storage directory holds numbered files sharing one counter (the manifest's
``next_file_number``), so a number names exactly one file of any kind:

    wal-000007.log        write-ahead log segment
    sst-000012.sst        sorted string table
    MANIFEST-000003       version-edit log
    CURRENT               names the live manifest (replaced atomically)
    LOCK                  held while a process owns the directory

Every write, fsync and truncate the engine makes goes through :data:`disk`, the one seam
where a test makes the filesystem fail (``OSError(ENOSPC)`` on demand) without filling a
real disk. :func:`is_disk_full` tells a full disk (recoverable: refuse writes, keep
serving reads) from other IO errors (fatal for the node).
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from sentinel.errors import DiskFullError

# The errnos of "no room": the filesystem is full, or this user's quota is.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})

# A file of this size is written and removed to learn whether space was freed.
PROBE_BYTES = 64 * 1024


class Disk:
    """The engine's file operations that can fail for lack of space. One shared instance
    (:data:`disk`); tests replace its methods to inject faults."""

    def write(self, fd: int, data: bytes | memoryview) -> int:
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        # fdatasync skips metadata reading the data does not need (mtime); not everywhere.
        getattr(os, "fdatasync", os.fsync)(fd)

    def ftruncate(self, fd: int, length: int) -> None:
        os.ftruncate(fd, length)


disk = Disk()


def is_disk_full(exc: BaseException) -> bool:
    """True if ``exc`` (or an error it was raised from) is ENOSPC or EDQUOT."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, DiskFullError):
            return True
        if isinstance(seen, OSError) and seen.errno in DISK_FULL_ERRNOS:
            return True
        seen = seen.__cause__
    return False


def disk_full_error(path: Path | str, exc: BaseException) -> DiskFullError:
    """The typed error for a full disk met while writing ``path``."""
    if isinstance(exc, DiskFullError):
        return exc
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__
    detail = os.strerror(cause.errno) if isinstance(cause, OSError) and cause.errno else str(exc)
    return DiskFullError(str(path), detail)


def free_bytes(directory: Path) -> int:
    """Bytes the filesystem holding ``directory`` has free for an unprivileged writer."""
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


def probe_free_space(directory: Path) -> None:
    """Write, fsync and remove a small file: raises OSError while the disk is still full.
    The ``.tmp`` suffix makes a leftover one garbage the next open deletes."""
    path = directory / "space-probe.tmp"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(bytes(PROBE_BYTES))
        while view:
            view = view[disk.write(fd, view) :]
        disk.fsync(fd)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)


WAL_SUFFIX = ".log"
SST_SUFFIX = ".sst"
CURRENT = "CURRENT"
LOCK = "LOCK"

# Each kind with its own suffix only, ASCII digits only (``\d`` and ``int()`` accept any
# Unicode digit), matched in full (``$`` would accept a trailing newline).
_NUMBERED = re.compile(r"(?:(wal)-([0-9]{6,})\.log|(sst)-([0-9]{6,})\.sst|(MANIFEST)-([0-9]{6,}))")


def wal_path(directory: Path, number: int) -> Path:
    return directory / f"wal-{number:06d}{WAL_SUFFIX}"


def sst_path(directory: Path, number: int) -> Path:
    return directory / f"sst-{number:06d}{SST_SUFFIX}"


def manifest_path(directory: Path, number: int) -> Path:
    return directory / f"MANIFEST-{number:06d}"


def parse_file_name(name: str) -> tuple[str, int] | None:
    """``("wal"|"sst"|"MANIFEST", number)`` for an engine file name, else None."""
    match = _NUMBERED.fullmatch(name)
    if match is None:
        return None
    kind, number = (group for group in match.groups() if group is not None)
    return kind, int(number)


def fsync_dir(directory: Path) -> None:
    """Make a directory's entries (creates, renames, deletes) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        disk.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomically(path: Path, data: bytes) -> None:
    """Write-temp, fsync, rename, fsync-dir: readers see the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = disk.write(fd, view)
            view = view[written:]
        disk.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
