"""A filesystem that fills up, through the engine's one file-operation seam.

:class:`FillingDisk` replaces the methods of ``sentinel.storage.files.disk`` (every write,
fsync and truncate the engine makes goes through it) so a test can fill the disk, let it
fill part-way through a write, and free it again, without a real full filesystem:

* ``fill(room=0, files=...)``: writes to the files ``files`` selects (by path; all by
  default) store at most ``room`` more bytes; the write that reaches the limit stores what
  fits and returns short, as a filling filesystem does, and the next one fails with ENOSPC;
* ``fsync_fails`` / ``truncate_fails``: fsync (and fdatasync) / ftruncate fail with ENOSPC;
* ``free()``: everything succeeds again.

File creation itself (``open(O_CREAT)``) is not refused: an empty file fits on a full disk
(a failing directory fsync stands in for a create that cannot be made durable).
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable

import pytest

from sentinel.storage import files

NO_SPACE = os.strerror(errno.ENOSPC)


def no_space() -> OSError:
    return OSError(errno.ENOSPC, NO_SPACE)


def path_of(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


class FillingDisk:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.room: int | None = None
        self.selects: Callable[[str], bool] = lambda path: True
        self.fsync_fails = False
        self.truncate_fails = False
        # Called (in whatever thread fsyncs) before each fsync: a test may block it there.
        self.before_fsync: Callable[[str], None] = lambda path: None
        self._lock = threading.Lock()  # worker threads write too
        real = files.Disk()

        def write(fd: int, data: bytes | memoryview) -> int:
            with self._lock:
                if self.room is None or not self.selects(path_of(fd)):
                    return real.write(fd, data)
                fits = min(len(data), self.room)
                if not fits:
                    raise no_space()
                written = real.write(fd, memoryview(data)[:fits])
                self.room -= written
                return written

        def fsync(fd: int) -> None:
            self.before_fsync(path_of(fd))
            if self.fsync_fails:
                raise no_space()
            real.fsync(fd)

        def ftruncate(fd: int, length: int) -> None:
            if self.truncate_fails:
                raise no_space()
            real.ftruncate(fd, length)

        monkeypatch.setattr(files.disk, "write", write)
        monkeypatch.setattr(files.disk, "fsync", fsync)
        monkeypatch.setattr(files.disk, "fdatasync", fsync)
        monkeypatch.setattr(files.disk, "ftruncate", ftruncate)

    def fill(self, room: int = 0, files: Callable[[str], bool] | None = None) -> None:
        """From now on the selected files (all by default) take ``room`` more bytes."""
        with self._lock:
            self.room = room
            self.selects = files or (lambda path: True)

    def free(self) -> None:
        with self._lock:
            self.room = None
        self.fsync_fails = False
        self.truncate_fails = False


def except_wal(path: str) -> bool:
    """Every file but the WAL segments: flushes and compactions fail, writes go on."""
    return not path.endswith(files.WAL_SUFFIX)
