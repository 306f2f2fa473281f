"""File naming and the few durable-filesystem primitives the engine needs.

A storage directory holds numbered files sharing one counter (the manifest's
``next_file_number``), so a number names exactly one file of any kind:

    wal-000007.log        write-ahead log segment
    sst-000012.sst        sorted string table
    MANIFEST-000003       version-edit log
    CURRENT               names the live manifest (replaced atomically)
    LOCK                  held while a process owns the directory
"""

from __future__ import annotations

import os
import re
from pathlib import Path

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
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomically(path: Path, data: bytes) -> None:
    """Write-temp, fsync, rename, fsync-dir: readers see the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
