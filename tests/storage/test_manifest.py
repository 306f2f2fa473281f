"""Manifest: edit codec, Version.apply rules, open/append/reopen, rollover, counters, damage."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sentinel.errors import CorruptionError, StorageError
from sentinel.storage import manifest as manifest_module
from sentinel.storage.files import CURRENT, manifest_path, sst_path, wal_path
from sentinel.storage.framing import FRAME_HEADER_SIZE, frame
from sentinel.storage.manifest import (
    NUM_LEVELS,
    FileMeta,
    Manifest,
    ManifestState,
    Version,
    VersionEdit,
    decode_edit,
    encode_edit,
)


def meta(number: int, min_key: bytes, max_key: bytes, *, size: int = 1000, max_seq: int = 0) -> FileMeta:
    return FileMeta(number=number, size=size, count=10, min_key=min_key, max_key=max_key, max_seq=max_seq)


def numbers(files: tuple[FileMeta, ...]) -> list[int]:
    return [f.number for f in files]


def manifest_files(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.startswith("MANIFEST-"))


# -- the edit codec ----------------------------------------------------------------------

_u64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
_keys = st.binary(max_size=12)


@st.composite
def file_metas(draw: st.DrawFn) -> FileMeta:
    a, b = sorted((draw(_keys), draw(_keys)))
    return FileMeta(draw(_u64), draw(_u64), draw(_u64), a, b, draw(_u64))


edits = st.builds(
    VersionEdit,
    added=st.lists(st.tuples(st.integers(0, NUM_LEVELS - 1), file_metas()), max_size=5).map(tuple),
    deleted=st.lists(st.tuples(st.integers(0, NUM_LEVELS - 1), _u64), max_size=5).map(tuple),
    log_number=st.none() | _u64,
    next_file_number=st.none() | _u64,
    last_sequence=st.none() | _u64,
)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(edits)
def test_edit_round_trip(edit: VersionEdit) -> None:
    assert decode_edit(encode_edit(edit)) == edit


def test_empty_edit_round_trips_to_empty_bytes() -> None:
    assert encode_edit(VersionEdit()) == b""
    assert decode_edit(b"") == VersionEdit()


def test_decode_rejects_malformed_edits() -> None:
    good = encode_edit(VersionEdit(added=((1, meta(7, b"a", b"z")),)))
    with pytest.raises(ValueError, match="unknown edit tag 9"):
        decode_edit(b"\x09\x01")
    with pytest.raises(ValueError, match="truncated varint"):
        decode_edit(good[:6])  # cut inside the fixed fields of the added table
    with pytest.raises(ValueError, match="runs past the end of the record"):
        decode_edit(good[:-1])  # cut inside max_key
    swapped = encode_edit(VersionEdit(added=((1, FileMeta(7, 1, 1, b"z", b"a", 0)),)))
    with pytest.raises(ValueError, match="table 7 has min_key > max_key"):
        decode_edit(swapped)


# -- Version.apply -----------------------------------------------------------------------


def test_l0_is_newest_first_and_l1_in_key_order() -> None:
    version = Version().apply(
        VersionEdit(
            added=(
                (0, meta(3, b"a", b"z")),
                (0, meta(9, b"a", b"c")),
                (0, meta(5, b"m", b"n")),
                (1, meta(4, b"p", b"q")),
                (1, meta(2, b"a", b"b")),
                (1, meta(6, b"c", b"d")),
            )
        )
    )
    assert numbers(version.files(0)) == [9, 5, 3]  # overlapping L0 files are allowed
    assert numbers(version.files(1)) == [2, 6, 4]
    version = version.apply(VersionEdit(added=((0, meta(11, b"x", b"y")),), deleted=((0, 5),)))
    assert numbers(version.files(0)) == [11, 9, 3]
    assert version.all_numbers() == {2, 3, 4, 6, 9, 11}
    assert version.level_bytes(1) == 3000
    assert numbers(tuple(version.overlapping(1, b"b", b"c"))) == [2, 6]  # both ends inclusive
    assert version.overlapping(1, b"e", b"o") == []


def test_apply_does_not_change_the_original() -> None:
    base = Version().apply(VersionEdit(added=((1, meta(1, b"a", b"b")),)))
    base.apply(VersionEdit(deleted=((1, 1),)))
    assert numbers(base.files(1)) == [1]


@pytest.mark.parametrize(
    ("existing", "added", "message"),
    [
        ([(1, b"a", b"f")], (2, b"f", b"k"), "tables 1 and 2 overlap on L1"),  # shared boundary key
        ([(1, b"c", b"f")], (2, b"a", b"z"), "tables 2 and 1 overlap on L1"),  # contains it
        ([(1, b"c", b"f")], (2, b"d", b"e"), "tables 1 and 2 overlap on L1"),  # inside it
        ([(1, b"c", b"f")], (2, b"a", b"c"), "tables 2 and 1 overlap on L1"),
    ],
)
def test_overlap_on_l1_is_rejected(
    existing: list[tuple[int, bytes, bytes]], added: tuple[int, bytes, bytes], message: str
) -> None:
    version = Version().apply(VersionEdit(added=tuple((1, meta(*f)) for f in existing)))
    with pytest.raises(ValueError, match=message):
        version.apply(VersionEdit(added=((1, meta(*added)),)))


def test_apply_rejects_inconsistent_edits() -> None:
    version = Version().apply(VersionEdit(added=((0, meta(1, b"a", b"b")), (2, meta(2, b"a", b"b")))))
    with pytest.raises(ValueError, match="edit deletes table 7 which is not on L0"):
        version.apply(VersionEdit(deleted=((0, 7),)))
    with pytest.raises(ValueError, match="edit deletes table 2 which is not on L1"):
        version.apply(VersionEdit(deleted=((1, 2),)))  # it lives on L2
    with pytest.raises(ValueError, match="edit deletes table 1 which is not on L0"):
        version.apply(VersionEdit(deleted=((0, 1), (0, 1))))  # twice in one edit
    with pytest.raises(ValueError, match="edit adds table 1 which is already live"):
        version.apply(VersionEdit(added=((3, meta(1, b"x", b"y")),)))
    with pytest.raises(ValueError, match="edit adds table 5 which is already live"):
        version.apply(VersionEdit(added=((0, meta(5, b"x", b"y")), (1, meta(5, b"x", b"y")))))
    with pytest.raises(ValueError, match=f"edit adds table 5 to level {NUM_LEVELS}"):
        version.apply(VersionEdit(added=((NUM_LEVELS, meta(5, b"x", b"y")),)))
    with pytest.raises(ValueError, match=f"edit deletes table 2 from level {NUM_LEVELS}"):
        version.apply(VersionEdit(deleted=((NUM_LEVELS, 2),)))


def test_trivial_move_deletes_and_adds_the_same_number() -> None:
    version = Version().apply(VersionEdit(added=((0, meta(4, b"a", b"b")),)))
    moved = version.apply(VersionEdit(deleted=((0, 4),), added=((1, meta(4, b"a", b"b")),)))
    assert moved.files(0) == ()
    assert numbers(moved.files(1)) == [4]


# -- the manifest file -------------------------------------------------------------------


def test_open_fresh_directory(tmp_path: Path) -> None:
    manifest, state = Manifest.open(tmp_path)
    try:
        assert state == ManifestState(Version(), 0, 2, 0)
        assert state.version.all_numbers() == set()
        assert manifest.path == manifest_path(tmp_path, 1)
        assert (tmp_path / CURRENT).read_text() == "MANIFEST-000001\n"
        assert manifest.recovery_report is None
        assert manifest.new_file_number() == 2
        assert manifest.new_file_number() == 3
    finally:
        manifest.close()


def test_log_and_apply_then_reopen_gives_the_same_state(tmp_path: Path) -> None:
    manifest, _ = Manifest.open(tmp_path)
    n1, n2, n3 = manifest.new_file_number(), manifest.new_file_number(), manifest.new_file_number()
    manifest.log_and_apply(VersionEdit(added=((0, meta(n1, b"a", b"m", max_seq=10)),), last_sequence=10))
    manifest.log_and_apply(
        VersionEdit(added=((0, meta(n2, b"c", b"z", max_seq=20)),), log_number=5, last_sequence=20)
    )
    state = manifest.log_and_apply(
        VersionEdit(deleted=((0, n1), (0, n2)), added=((1, meta(n3, b"a", b"z", size=77)),))
    )
    manifest.close()
    assert numbers(state.version.files(1)) == [n3]
    assert (state.log_number, state.last_sequence, state.next_file_number) == (5, 20, n3 + 1)

    reopened, again = Manifest.open(tmp_path)
    try:
        assert again.version.levels == state.version.levels
        assert again == state
        assert reopened.recovery_report is None
        # Appending after a reopen must go to the end of the file, not overwrite its start.
        reopened.log_and_apply(VersionEdit(last_sequence=99))
    finally:
        reopened.close()
    third, final = Manifest.open(tmp_path)
    third.close()
    assert final.version.levels == state.version.levels
    assert final.last_sequence == 99


def test_refused_edit_is_a_storage_error_and_changes_nothing(tmp_path: Path) -> None:
    manifest, _ = Manifest.open(tmp_path)
    size = manifest.path.stat().st_size
    with pytest.raises(StorageError, match="refusing an inconsistent manifest edit: edit deletes table 42"):
        manifest.log_and_apply(VersionEdit(deleted=((0, 42),)))
    assert manifest.path.stat().st_size == size
    manifest.close()
    with pytest.raises(StorageError, match="is closed"):
        manifest.log_and_apply(VersionEdit())


def test_rollover_keeps_state_and_removes_old_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manifest_module, "MANIFEST_ROLL_BYTES", 200)
    manifest, _ = Manifest.open(tmp_path)
    first_path = manifest.path
    live: set[int] = set()
    state = manifest.state
    paths = {first_path}
    for i in range(40):
        number = manifest.new_file_number()
        key = b"%04d" % i
        state = manifest.log_and_apply(VersionEdit(added=((1, meta(number, key, key)),), last_sequence=i))
        live.add(number)
        paths.add(manifest.path)
    # The snapshot alone soon outgrows 200 bytes: rolling must not then happen on every edit
    # (a full snapshot, a CURRENT switch and two directory fsyncs per edit).
    assert 2 <= len(paths) <= 6, sorted(p.name for p in paths)
    assert manifest_files(tmp_path) == [manifest.path.name]  # every older manifest is gone
    assert (tmp_path / CURRENT).read_text() == manifest.path.name + "\n"
    assert state.version.all_numbers() == live
    manifest_number = int(manifest.path.name.split("-")[1])
    assert manifest_number not in live  # the manifest took its own number from the counter
    next_number = manifest.new_file_number()
    assert next_number > max(live | {manifest_number})
    manifest.close()

    reopened, again = Manifest.open(tmp_path)
    reopened.close()
    assert again.version.levels == state.version.levels
    assert again.last_sequence == 39
    assert again.next_file_number >= next_number


def test_file_numbers_are_raised_above_files_on_disk(tmp_path: Path) -> None:
    manifest, state = Manifest.open(tmp_path)
    manifest.close()
    # A crash after tables and a WAL segment took numbers but before any edit recorded them.
    sst_path(tmp_path, 40).write_bytes(b"orphan")
    wal_path(tmp_path, 57).write_bytes(b"")
    (tmp_path / "sst-000099.sst.tmp").write_bytes(b"not a numbered file")
    reopened, state = Manifest.open(tmp_path)
    try:
        assert state.next_file_number == 58
        assert reopened.new_file_number() == 58
        # The counter is persisted with every edit: after a reopen it keeps counting up.
        reopened.new_file_number()
        reopened.log_and_apply(VersionEdit())
    finally:
        reopened.close()
    sst_path(tmp_path, 40).unlink()
    wal_path(tmp_path, 57).unlink()
    third, state = Manifest.open(tmp_path)
    third.close()
    assert state.next_file_number == 60


def test_fresh_directory_counts_above_stray_manifests(tmp_path: Path) -> None:
    # A crash during the first open, after the manifest was written but before CURRENT.
    manifest_path(tmp_path, 1).write_bytes(frame(encode_edit(VersionEdit(next_file_number=2))))
    manifest, state = Manifest.open(tmp_path)
    manifest.close()
    assert manifest.path == manifest_path(tmp_path, 2)
    assert state.next_file_number == 3
    assert manifest_files(tmp_path) == ["MANIFEST-000002"]


def test_stale_manifests_are_deleted_on_open(tmp_path: Path) -> None:
    manifest, _ = Manifest.open(tmp_path)
    manifest.log_and_apply(VersionEdit(added=((0, meta(manifest.new_file_number(), b"a", b"b")),)))
    live = manifest.path
    manifest.close()
    # Left by a crashed rollover: an older manifest (CURRENT already switched) and a newer,
    # complete one that CURRENT never came to name.
    manifest_path(tmp_path, 0).write_bytes(b"old")
    manifest_path(tmp_path, 30).write_bytes(frame(encode_edit(VersionEdit(next_file_number=31))))
    reopened, state = Manifest.open(tmp_path)
    reopened.close()
    assert manifest_files(tmp_path) == [live.name]
    assert len(state.version.files(0)) == 1
    assert state.next_file_number == 31  # still counts above the deleted file's number


def _three_record_manifest(directory: Path) -> tuple[Path, list[int]]:
    """A closed manifest with a snapshot and two edits; returns it and each record's offset."""
    manifest, _ = Manifest.open(directory)
    manifest.log_and_apply(VersionEdit(added=((0, meta(10, b"a", b"b")),), last_sequence=5))
    manifest.log_and_apply(VersionEdit(added=((0, meta(11, b"c", b"d")),), last_sequence=9))
    manifest.close()
    data = manifest.path.read_bytes()
    offsets = []
    pos = 0
    while pos < len(data):
        offsets.append(pos)
        pos += FRAME_HEADER_SIZE + int.from_bytes(data[pos + 4 : pos + 8], "little")
    assert pos == len(data)
    assert len(offsets) == 3
    return manifest.path, offsets


def test_torn_last_record_is_dropped_and_reported(tmp_path: Path) -> None:
    path, offsets = _three_record_manifest(tmp_path)
    whole = path.read_bytes()
    last = offsets[-1]
    for cut in range(last + 1, len(whole)):
        path.write_bytes(whole[:cut])
        manifest, state = Manifest.open(tmp_path)
        try:
            report = manifest.recovery_report
            assert report is not None
            assert report.startswith(f"{path.name}: dropped a torn tail of {cut - last} bytes (torn frame"), (
                cut
            )
            assert f"at byte {last}" in report
            assert numbers(state.version.files(0)) == [10]
            assert state.last_sequence == 5
            assert path.stat().st_size == last  # the tail is cut on disk
            # Appends go after the cut: the next edit is readable after a reopen.
            manifest.log_and_apply(VersionEdit(last_sequence=6))
        finally:
            manifest.close()
        again, state = Manifest.open(tmp_path)
        again.close()
        assert again.recovery_report is None
        assert state.last_sequence == 6


def test_flipped_byte_in_the_last_complete_record_is_corruption(tmp_path: Path) -> None:
    """Was taken for a torn tail (issue 8): the table the record added vanished silently."""
    path, offsets = _three_record_manifest(tmp_path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # the record is whole (its length says so) but fails its checksum
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptionError) as info:
        Manifest.open(tmp_path)
    assert info.value.source == str(path)
    assert info.value.position == offsets[-1]
    assert "not a torn tail" in str(info.value)
    assert f"{len(data) - offsets[-1]} bytes of manifest records would be lost" in str(info.value)
    assert path.read_bytes() == bytes(data)  # refusing changes nothing on disk
    manifest, state = Manifest.open(tmp_path, accept_data_loss=True)
    manifest.close()
    assert manifest.recovery_report is not None
    assert manifest.recovery_report.startswith(f"{path.name}: accepted data loss at byte {offsets[-1]}: ")
    assert manifest.recovery_report.endswith(
        f"{len(data) - offsets[-1]} bytes of manifest records were dropped"
    )
    assert numbers(state.version.files(0)) == [10]
    assert path.stat().st_size == offsets[-1]


@pytest.mark.parametrize("record", [0, 1])
def test_flipped_byte_before_the_last_record_is_corruption(tmp_path: Path, record: int) -> None:
    path, offsets = _three_record_manifest(tmp_path)
    whole = path.read_bytes()
    start, end = offsets[record], offsets[record + 1]
    for pos in range(start, end):
        data = bytearray(whole)
        data[pos] ^= 0x01
        path.write_bytes(bytes(data))
        with pytest.raises(CorruptionError) as info:
            Manifest.open(tmp_path)
        assert info.value.source == str(path)
        assert info.value.position == start, pos
        assert str(info.value).startswith(f"corruption in {path} at byte {start}: ")
        assert path.read_bytes() == bytes(data)  # nothing was truncated


def test_zero_filled_tail_of_every_length_is_dropped_and_reported(tmp_path: Path) -> None:
    path, _ = _three_record_manifest(tmp_path)
    whole = path.read_bytes()
    for zeros in [*range(1, 40), 4096]:
        path.write_bytes(whole + bytes(zeros))
        manifest, state = Manifest.open(tmp_path)
        manifest.close()
        assert manifest.recovery_report == (
            f"{path.name}: dropped a torn tail of {zeros} bytes "
            f"(zero-filled tail of {zeros} bytes at byte {len(whole)})"
        ), zeros
        assert numbers(state.version.files(0)) == [11, 10]
        assert path.read_bytes() == whole  # cut on disk


def test_zeros_followed_by_a_valid_record_are_corruption(tmp_path: Path) -> None:
    path, _ = _three_record_manifest(tmp_path)
    whole = path.read_bytes()
    for zeros in (1, FRAME_HEADER_SIZE, 300):
        damaged = whole + bytes(zeros) + frame(encode_edit(VersionEdit(last_sequence=12)))
        path.write_bytes(damaged)
        with pytest.raises(CorruptionError) as info:
            Manifest.open(tmp_path)
        assert info.value.position == len(whole)
        assert f"1 valid record(s) follow it, the first at byte {len(whole) + zeros}" in info.value.detail
        assert path.read_bytes() == damaged


def test_a_zero_byte_inside_the_last_record_is_corruption(tmp_path: Path) -> None:
    path, offsets = _three_record_manifest(tmp_path)
    whole = path.read_bytes()
    for pos in range(offsets[-1], len(whole)):
        if whole[pos] == 0:
            continue
        damaged = bytearray(whole)
        damaged[pos] = 0
        path.write_bytes(bytes(damaged))
        with pytest.raises(CorruptionError, match="not a torn tail") as info:
            Manifest.open(tmp_path)
        assert info.value.position == offsets[-1], pos


def test_a_bad_length_in_a_middle_record_is_corruption(tmp_path: Path) -> None:
    path, offsets = _three_record_manifest(tmp_path)
    data = bytearray(path.read_bytes())
    data[offsets[1] + 7] ^= 0x01  # the record now claims 16 MiB more than the file holds
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptionError) as info:
        Manifest.open(tmp_path)
    assert info.value.position == offsets[1]
    assert f"1 valid record(s) follow it, the first at byte {offsets[2]}" in info.value.detail


def test_record_that_decodes_badly_is_corruption(tmp_path: Path) -> None:
    manifest, _ = Manifest.open(tmp_path)
    manifest.close()
    path = manifest.path
    good = path.read_bytes()
    path.write_bytes(good + frame(b"\x09\x00") + frame(encode_edit(VersionEdit())))
    with pytest.raises(
        CorruptionError, match=f"at byte {len(good)}: bad manifest record: unknown edit tag 9"
    ):
        Manifest.open(tmp_path)
    # A checksum-valid edit that does not fit the version (a software bug) is corruption too.
    path.write_bytes(good + frame(encode_edit(VersionEdit(deleted=((0, 3),)))))
    with pytest.raises(CorruptionError, match="bad manifest record: edit deletes table 3 which is not on L0"):
        Manifest.open(tmp_path)
    path.write_bytes(good + frame(encode_edit(VersionEdit(deleted=((9, 3),)))))
    with pytest.raises(CorruptionError, match="bad manifest record: edit deletes table 3 from level 9"):
        Manifest.open(tmp_path)


def test_current_missing_while_data_files_exist(tmp_path: Path) -> None:
    manifest, _ = Manifest.open(tmp_path)
    manifest.close()
    sst_path(tmp_path, 5).write_bytes(b"")
    (tmp_path / CURRENT).unlink()
    with pytest.raises(
        CorruptionError, match=r"corruption in .*CURRENT: missing, but the directory holds 1 data"
    ):
        Manifest.open(tmp_path)


def test_current_naming_a_missing_manifest(tmp_path: Path) -> None:
    manifest, _ = Manifest.open(tmp_path)
    manifest.close()
    manifest.path.unlink()
    with pytest.raises(CorruptionError, match=r"MANIFEST-000001: named by CURRENT but missing"):
        Manifest.open(tmp_path)


@pytest.mark.parametrize("content", [b"", b"\n", b"sst-000001.sst\n", b"MANIFEST-1\n", b"\xff\xfe"])
def test_current_not_naming_a_manifest(tmp_path: Path, content: bytes) -> None:
    (tmp_path / CURRENT).write_bytes(content)
    with pytest.raises(CorruptionError, match=r"CURRENT at byte 0: does not name a manifest"):
        Manifest.open(tmp_path)


def test_empty_manifest_is_corruption(tmp_path: Path) -> None:
    manifest, _ = Manifest.open(tmp_path)
    manifest.close()
    manifest.path.write_bytes(b"")
    with pytest.raises(
        CorruptionError, match=r"MANIFEST-000001 at byte 0: the manifest holds no complete record"
    ):
        Manifest.open(tmp_path)
    # Only a torn record: CURRENT never names a manifest before its snapshot is durable.
    manifest.path.write_bytes(frame(encode_edit(VersionEdit(log_number=1)))[:-1])
    with pytest.raises(CorruptionError, match="the manifest holds no complete record"):
        Manifest.open(tmp_path)


def test_failed_append_makes_the_manifest_unusable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest, _ = Manifest.open(tmp_path)

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(manifest_module.os, "fsync", failing_fsync)
    with pytest.raises(
        StorageError, match=r"writing manifest .*MANIFEST-000001 failed: .*Input/output error"
    ):
        manifest.log_and_apply(VersionEdit(last_sequence=3))
    monkeypatch.undo()
    assert manifest.state.last_sequence == 0  # the edit was not applied in memory
    with pytest.raises(StorageError, match="is closed"):
        manifest.log_and_apply(VersionEdit(last_sequence=4))


def test_failed_rollover_makes_the_manifest_unusable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest, _ = Manifest.open(tmp_path)
    monkeypatch.setattr(manifest_module, "MANIFEST_ROLL_BYTES", 1)

    def failing_fsync_dir(directory: Path) -> None:
        raise OSError(28, "No space left on device")

    # CURRENT may already name the new manifest when the directory fsync fails: appending
    # to the old one afterwards would write edits that no reopen ever reads.
    monkeypatch.setattr("sentinel.storage.files.fsync_dir", failing_fsync_dir)
    sequence = 0
    with pytest.raises(
        StorageError, match=r"rolling over manifest .*MANIFEST-000001 failed: .*No space left"
    ):
        for sequence in range(1, 10):  # until the log holds twice its snapshot and rolls
            manifest.log_and_apply(VersionEdit(last_sequence=sequence))
    assert sequence > 1
    assert manifest.state.last_sequence == sequence - 1
    with pytest.raises(StorageError, match="is closed"):
        manifest.log_and_apply(VersionEdit(last_sequence=99))
