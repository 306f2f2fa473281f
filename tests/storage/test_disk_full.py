"""A full disk (ENOSPC) is a recoverable, typed condition, injected through the one file
seam (``sentinel.storage.files.disk``) rather than by filling a real filesystem."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from grpclib.const import Status

from sentinel.errors import DiskFullError
from sentinel.server.status import status_of
from sentinel.storage import files
from sentinel.storage.manifest import FileMeta, Manifest, VersionEdit


class FullDisk:
    """Makes the seam's writes fail with ENOSPC while ``full`` (having written half of the
    buffer, as a filling disk does), and its fsyncs while ``fsync_full``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = False
        self.fsync_full = False
        real_write, real_fsync = files.disk.write, files.disk.fsync

        def write(fd: int, data: bytes | memoryview) -> int:
            if self.full:
                real_write(fd, memoryview(data)[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write(fd, data)

        def fsync(fd: int) -> None:
            if self.fsync_full:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_fsync(fd)

        monkeypatch.setattr(files.disk, "write", write)
        monkeypatch.setattr(files.disk, "fsync", fsync)


def meta(number: int) -> FileMeta:
    return FileMeta(number=number, size=1, count=1, min_key=b"a", max_key=b"b", max_seq=1)


def test_disk_full_is_resource_exhausted_naming_the_path() -> None:
    answer = status_of(DiskFullError("/data/wal-000003.log", "No space left on device"))
    assert answer.status is Status.RESOURCE_EXHAUSTED
    assert answer.message.startswith("disk full: cannot write /data/wal-000003.log: No space left")


def test_is_disk_full_follows_the_cause_chain() -> None:
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as wrapped:
        assert files.is_disk_full(wrapped)
    assert not files.is_disk_full(OSError(errno.EIO, "Input/output error"))


def test_manifest_edit_refused_on_a_full_disk_is_not_half_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = FullDisk(monkeypatch)
    manifest, _ = Manifest.open(tmp_path)
    try:
        first, second = manifest.new_file_number(), manifest.new_file_number()
        manifest.log_and_apply(VersionEdit(added=((0, meta(first)),), last_sequence=1))
        disk.full = True
        with pytest.raises(DiskFullError, match=f"disk full: cannot write {manifest.path}"):
            manifest.log_and_apply(VersionEdit(added=((0, meta(second)),), last_sequence=2))
        assert manifest.state.version.all_numbers() == {first}
        disk.full = False
        # Still usable: the retried edit follows the last whole one.
        manifest.log_and_apply(VersionEdit(added=((0, meta(second)),), last_sequence=2))
    finally:
        manifest.close()
    reopened, state = Manifest.open(tmp_path)
    reopened.close()
    assert reopened.recovery_report is None  # no torn half-edit was left behind
    assert state.version.all_numbers() == {first, second}
    assert state.last_sequence == 2
