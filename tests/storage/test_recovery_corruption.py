"""Recovery tells a torn tail (truncate, report) from corruption (refuse unless accepted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sentinel.errors import CorruptionError
from sentinel.storage.files import wal_path
from sentinel.storage.framing import FRAME_HEADER_SIZE
from sentinel.storage.options import StorageOptions
from sentinel.storage.recovery import recover, unlock_directory
from sentinel.storage.wal_format import encode_wal_record


def _segment(directory: Path, number: int, first_seq: int, count: int) -> list[int]:
    """A WAL segment of ``count`` one-entry batches; returns each frame's offset."""
    if not (directory / "CURRENT").exists():
        _open(directory)  # a fresh directory with its manifest, as a crashed broker leaves it
    offsets, data = [], b""
    for i in range(count):
        offsets.append(len(data))
        data += encode_wal_record(first_seq + i, [(b"k%03d" % (first_seq + i), b"v" * 20)])
    wal_path(directory, number).write_bytes(data)
    return offsets


def _open(directory: Path, accept: bool = False) -> tuple[int, tuple[str, ...]]:
    recovered = recover(directory, StorageOptions(accept_data_loss=accept))
    try:
        # Counted for the metrics whenever something was dropped, and only then.
        dropped = any("dropped" in line or "accepted" in line for line in recovered.report)
        assert (recovered.drops > 0) == dropped
        return recovered.last_seq, recovered.report
    finally:
        for reader in recovered.tables.values():
            reader.close()
        recovered.manifest.close()
        unlock_directory(recovered.lock_fd)


def test_torn_tail_of_the_newest_segment_is_truncated_and_reported(tmp_path: Path) -> None:
    offsets = _segment(tmp_path, 1, 1, 5)
    path = wal_path(tmp_path, 1)
    data = path.read_bytes()
    path.write_bytes(data[: offsets[-1] + FRAME_HEADER_SIZE + 3])  # the last frame cut short
    recovered = recover(tmp_path, StorageOptions())
    recovered.manifest.close()
    unlock_directory(recovered.lock_fd)
    assert (recovered.drops, recovered.dropped_bytes) == (1, FRAME_HEADER_SIZE + 3)
    last_seq, report = recovered.last_seq, recovered.report
    assert last_seq == 4
    assert any(
        line.startswith(f"{path.name}: dropped a torn tail of {FRAME_HEADER_SIZE + 3} bytes")
        for line in report
    )


def test_flipped_byte_mid_newest_segment_refuses_naming_file_and_offset(tmp_path: Path) -> None:
    offsets = _segment(tmp_path, 1, 1, 10)
    path = wal_path(tmp_path, 1)
    data = bytearray(path.read_bytes())
    data[offsets[4] + FRAME_HEADER_SIZE + 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptionError) as info:
        _open(tmp_path)
    assert info.value.source == str(path)
    assert info.value.position == offsets[4]
    assert info.value.detail == (
        f"checksum mismatch in frame at byte {offsets[4]}: not a torn tail; "
        f"{len(data) - offsets[4]} bytes of WAL records after seq 4 would be lost: "
        "the damaged write batch and 5 intact one(s) after it (seqs 6 to 10)"
    )
    assert path.read_bytes() == bytes(data)  # refusing changes nothing
    recovered = recover(tmp_path, StorageOptions(accept_data_loss=True))
    recovered.manifest.close()
    unlock_directory(recovered.lock_fd)
    assert recovered.last_seq == 4
    dropped = info.value.detail.replace("would be lost", "were dropped")
    assert f"{path.name}: accepted data loss at byte {offsets[4]}: {dropped}" in recovered.report
    assert (recovered.drops, recovered.dropped_bytes) == (1, len(data) - offsets[4])


def test_flipped_byte_in_the_last_complete_frame_is_corruption(tmp_path: Path) -> None:
    _segment(tmp_path, 1, 1, 3)
    path = wal_path(tmp_path, 1)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptionError, match="not a torn tail"):
        _open(tmp_path)


def test_torn_frame_in_an_older_segment_is_corruption(tmp_path: Path) -> None:
    offsets = _segment(tmp_path, 1, 1, 3)
    _segment(tmp_path, 2, 4, 3)
    wal_size = wal_path(tmp_path, 2).stat().st_size
    path = wal_path(tmp_path, 1)
    path.write_bytes(path.read_bytes()[: offsets[-1] + 5])
    with pytest.raises(CorruptionError) as info:
        _open(tmp_path)
    assert info.value.source == str(path)
    assert info.value.detail.endswith(
        f"with the 1 later WAL segment(s) ({wal_size} bytes) that follow the loss"
    )
    last_seq, report = _open(tmp_path, accept=True)
    assert last_seq == 2  # nothing after the loss is replayed: no gap
    assert f"wal-000002.log: dropped {wal_size} bytes after the loss above" in report


def _flushed_directory(directory: Path) -> None:
    """A directory whose first segment was replayed and flushed: the manifest now names
    segment 2 as the one to replay from, and recovery created it (empty)."""
    _segment(directory, 1, 1, 5)
    assert _open(directory)[0] == 5
    assert wal_path(directory, 2).exists() and not wal_path(directory, 1).exists()


def test_deleted_newest_segment_the_manifest_names_is_refused(tmp_path: Path) -> None:
    _flushed_directory(tmp_path)
    _segment(tmp_path, 2, 6, 5)  # acknowledged writes after the flush
    wal_path(tmp_path, 2).unlink()
    with pytest.raises(CorruptionError) as info:
        _open(tmp_path)
    assert info.value.source == str(wal_path(tmp_path, 2))
    assert "WAL segment missing" in info.value.detail and "after seq 5" in info.value.detail
    last_seq, report = _open(tmp_path, accept=True)
    assert last_seq == 5
    assert any(line.startswith("wal-000002.log: accepted data loss: WAL segment missing") for line in report)
    assert _open(tmp_path)[0] == 5  # accepted once: later starts are clean


def test_missing_middle_segment_is_refused_and_accepting_drops_what_follows_it(tmp_path: Path) -> None:
    _flushed_directory(tmp_path)
    _segment(tmp_path, 2, 6, 3)
    _segment(tmp_path, 3, 9, 3)
    _segment(tmp_path, 4, 12, 3)
    wal_path(tmp_path, 3).unlink()
    with pytest.raises(CorruptionError) as info:
        _open(tmp_path)
    assert info.value.source == str(wal_path(tmp_path, 3))
    last_seq, report = _open(tmp_path, accept=True)
    assert last_seq == 8  # segment 2 replayed; 4 follows the hole and is dropped with it
    assert "wal-000004.log: dropped 141 bytes after the loss above" in report
    assert not wal_path(tmp_path, 4).exists()
    assert _open(tmp_path)[0] == 8


def test_the_only_segment_of_a_directory_that_never_flushed_is_not_deleted_silently(tmp_path: Path) -> None:
    _open(tmp_path)  # the first start made the segment before the manifest named it
    assert _open(tmp_path) == (0, ())
    (current,) = tmp_path.glob("wal-*.log")  # the segment the WalWriter would write
    current.write_bytes(b"".join(encode_wal_record(seq, [(b"k%d" % seq, b"v")]) for seq in (1, 2, 3)))
    current.unlink()  # acknowledged writes, never flushed, deleted
    with pytest.raises(CorruptionError, match="WAL segment missing"):
        _open(tmp_path)


def test_zero_filled_tail_of_the_newest_segment_is_torn(tmp_path: Path) -> None:
    """A power loss under sync interval/none may leave the end of the segment zero-filled:
    a plain crash, so start-up proceeds without accepting a loss, and says what it cut."""
    _segment(tmp_path, 1, 1, 5)
    path = wal_path(tmp_path, 1)
    size = path.stat().st_size
    path.write_bytes(path.read_bytes() + bytes(4096))
    recovered = recover(tmp_path, StorageOptions())
    recovered.manifest.close()
    unlock_directory(recovered.lock_fd)
    assert recovered.last_seq == 5
    assert (recovered.drops, recovered.dropped_bytes) == (1, 4096)
    assert (
        f"{path.name}: dropped a torn tail of 4096 bytes after seq 5 "
        f"(zero-filled tail of 4096 bytes at byte {size})"
    ) in recovered.report


def test_zero_filled_tail_of_an_older_segment_is_corruption(tmp_path: Path) -> None:
    """Rotation fsyncs a segment before the next one starts: zeros there are damage."""
    _segment(tmp_path, 1, 1, 3)
    _segment(tmp_path, 2, 4, 3)
    path = wal_path(tmp_path, 1)
    path.write_bytes(path.read_bytes() + bytes(100))
    with pytest.raises(CorruptionError, match="in a WAL segment older than the newest one: not a torn tail"):
        _open(tmp_path)


def test_bad_length_mid_newest_segment_is_refused_not_cut_as_a_torn_tail(tmp_path: Path) -> None:
    """Was a silent loss (issue 8): the flipped length made the frame look cut short, and
    recovery dropped the five acknowledged batches after it as a torn tail."""
    offsets = _segment(tmp_path, 1, 1, 10)
    path = wal_path(tmp_path, 1)
    data = bytearray(path.read_bytes())
    data[offsets[4] + 6] ^= 0x01  # the frame now claims 64 KiB more than the segment holds
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptionError) as info:
        _open(tmp_path)
    assert info.value.position == offsets[4]
    assert "not a torn tail" in info.value.detail
    assert info.value.detail.endswith("the damaged write batch and 5 intact one(s) after it (seqs 6 to 10)")
    assert path.read_bytes() == bytes(data)
