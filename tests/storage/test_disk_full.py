"""A full disk (ENOSPC) is a recoverable, typed condition: the file-level pieces.

Faults are injected through the one file seam (``sentinel.storage.files.disk``, see
``disk_faults.py``) rather than by filling a real filesystem. The engine as a whole (the
actors, start-up) is in ``test_disk_full_store.py``; a real process on a real full
filesystem in ``tests/e2e/test_disk_full_process.py``.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from disk_faults import FillingDisk
from grpclib.const import Status

from sentinel.errors import DiskFullError
from sentinel.server.status import status_of
from sentinel.storage import files
from sentinel.storage import manifest as manifest_module
from sentinel.storage.compactor import write_tables
from sentinel.storage.manifest import FileMeta, Manifest, VersionEdit
from sentinel.storage.options import StorageOptions
from sentinel.storage.wal import WalFile, replay_wal
from sentinel.storage.wal_format import encode_wal_record


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> FillingDisk:
    return FillingDisk(monkeypatch)


def meta(number: int) -> FileMeta:
    return FileMeta(number=number, size=1, count=1, min_key=b"a", max_key=b"b", max_seq=1)


def record(seq: int, size: int = 100) -> bytes:
    return encode_wal_record(seq, [(b"key-%d" % seq, b"v" * size)])


def test_disk_full_is_resource_exhausted_naming_the_path() -> None:
    answer = status_of(DiskFullError("/data/wal-000003.log", "No space left on device"))
    assert answer.status is Status.RESOURCE_EXHAUSTED
    assert answer.message.startswith("disk full: /data/wal-000003.log: No space left")


def test_is_disk_full_follows_the_cause_chain() -> None:
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as wrapped:
        assert files.is_disk_full(wrapped)
    assert not files.is_disk_full(OSError(errno.EIO, "Input/output error"))


# -- the WAL file --------------------------------------------------------------------------


def test_a_wal_write_cut_short_by_a_full_disk_leaves_whole_frames_only(
    tmp_path: Path, disk: FillingDisk
) -> None:
    path = tmp_path / "wal-000001.log"
    with WalFile.create(path) as wal:
        wal.append(record(1))
        disk.fill(room=30)  # part of the next frame fits, then the disk is full
        with pytest.raises(DiskFullError, match=f"disk full: {path}: No space left on device"):
            wal.append(record(2))
        assert wal.size == len(record(1)) == path.stat().st_size
        replay = replay_wal(path)
        assert (len(replay.batches), replay.tail_error) == (1, None)  # no half frame to misread
        disk.free()
        wal.append(record(3))  # still usable: the next write follows the last whole frame
        wal.sync()
    replay = replay_wal(path)
    assert replay.tail_error is None
    assert [batch[0][1] for batch in replay.batches] == [1, 3]


def test_a_cut_that_fails_too_is_retried_before_anything_is_appended(
    tmp_path: Path, disk: FillingDisk
) -> None:
    path = tmp_path / "wal-000001.log"
    with WalFile.create(path) as wal:
        wal.append(record(1))
        disk.fill(room=30)
        disk.truncate_fails = True
        with pytest.raises(DiskFullError):
            wal.append(record(2))
        assert path.stat().st_size == len(record(1)) + 30  # the half frame is still there...
        with pytest.raises(DiskFullError):
            wal.append(record(3))  # ...so nothing is appended after it
        disk.free()
        wal.append(record(4))
        wal.sync()
    replay = replay_wal(path)
    assert replay.tail_error is None
    assert [batch[0][1] for batch in replay.batches] == [1, 4]


def test_a_wal_sync_on_a_full_disk_keeps_the_file_usable(tmp_path: Path, disk: FillingDisk) -> None:
    path = tmp_path / "wal-000001.log"
    with WalFile.create(path) as wal:
        wal.append(record(1))
        disk.fsync_fails = True
        with pytest.raises(DiskFullError, match=f"disk full: {path}"):
            wal.sync()
        disk.free()
        wal.sync()
        wal.append(record(2))
        wal.cut_back(len(record(1)))  # what a failed group under sync=always does
        wal.append(record(3))
        wal.sync()
    assert [batch[0][1] for batch in replay_wal(path).batches] == [1, 3]


def test_a_segment_that_cannot_be_made_durable_is_not_left_behind(tmp_path: Path, disk: FillingDisk) -> None:
    path = tmp_path / "wal-000004.log"
    disk.fsync_fails = True  # the directory fsync that makes the new name durable
    with pytest.raises(DiskFullError, match=f"disk full: {path}"):
        WalFile.create(path)
    assert not path.exists()
    disk.free()
    WalFile.create(path).close()  # a retry can create it


# -- the manifest ----------------------------------------------------------------------


def test_manifest_edit_refused_on_a_full_disk_is_not_half_applied(tmp_path: Path, disk: FillingDisk) -> None:
    manifest, _ = Manifest.open(tmp_path)
    try:
        first, second = manifest.new_file_number(), manifest.new_file_number()
        manifest.log_and_apply(VersionEdit(added=((0, meta(first)),), last_sequence=1))
        disk.fill(room=5)
        with pytest.raises(DiskFullError, match=f"disk full: {manifest.path}: "):
            manifest.log_and_apply(VersionEdit(added=((0, meta(second)),), last_sequence=2))
        assert manifest.state.version.all_numbers() == {first}
        disk.free()
        # Still usable: the retried edit follows the last whole one.
        manifest.log_and_apply(VersionEdit(added=((0, meta(second)),), last_sequence=2))
    finally:
        manifest.close()
    reopened, state = Manifest.open(tmp_path)
    reopened.close()
    assert reopened.recovery_report is None  # no torn half-edit was left behind
    assert state.version.all_numbers() == {first, second}
    assert state.last_sequence == 2


def test_a_manifest_rollover_refused_on_a_full_disk_keeps_the_old_manifest(
    tmp_path: Path, disk: FillingDisk, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest, _ = Manifest.open(tmp_path)
    old_path = manifest.path
    monkeypatch.setattr(manifest_module, "MANIFEST_ROLL_BYTES", 1)
    try:
        manifest.log_and_apply(VersionEdit(last_sequence=1))
        manifest.log_and_apply(VersionEdit(last_sequence=2))  # twice the snapshot: the next rolls
        disk.fill(room=0)
        with pytest.raises(DiskFullError, match=r"disk full: .*MANIFEST-"):
            manifest.log_and_apply(VersionEdit(last_sequence=3))
        assert manifest.path == old_path and manifest.state.last_sequence == 2
        assert sorted(p.name for p in tmp_path.iterdir()) == ["CURRENT", old_path.name]
        disk.free()
        manifest.log_and_apply(VersionEdit(last_sequence=3))  # the retry rolls over
    finally:
        manifest.close()
    reopened, state = Manifest.open(tmp_path)
    reopened.close()
    assert state.last_sequence == 3


def test_a_new_directory_on_a_full_disk_is_refused_with_the_path(tmp_path: Path, disk: FillingDisk) -> None:
    disk.fill(room=0)
    with pytest.raises(DiskFullError, match=r"disk full: .*MANIFEST-000001: No space left"):
        Manifest.open(tmp_path)
    assert sorted(os.listdir(tmp_path)) == []


# -- tables ------------------------------------------------------------------------------


def test_tables_cut_short_by_a_full_disk_are_all_removed(tmp_path: Path, disk: FillingDisk) -> None:
    manifest, _ = Manifest.open(tmp_path)
    entries = [(b"k%05d" % i, i + 1, b"v" * 100) for i in range(400)]
    disk.fill(room=20_000, files=lambda path: path.endswith(files.SST_SUFFIX))  # one table fits
    with pytest.raises(DiskFullError, match=r"disk full: .*sst-\d+\.sst: No space left"):
        write_tables(tmp_path, manifest, StorageOptions(), iter(entries), 8 * 1024)
    manifest.close()
    # The finished tables too: no version names them, and they hold space the disk lacks.
    assert [p.name for p in tmp_path.iterdir() if p.suffix == files.SST_SUFFIX] == []
