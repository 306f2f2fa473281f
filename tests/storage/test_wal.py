"""WAL: the write-batch codec, replay (clean, torn, corrupt), tail truncation and WalFile."""

from __future__ import annotations

import os
import random
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sentinel.errors import CorruptionError, StorageClosed, StorageError
from sentinel.storage import builds
from sentinel.storage import wal as wal_module
from sentinel.storage.framing import FRAME_HEADER_SIZE, MAX_FRAME_PAYLOAD, frame, scan_frames
from sentinel.storage.wal import WalFile, WalReplay, replay_wal, truncate_wal_tail
from sentinel.storage.wal_format import (
    BATCH_HEADER,
    BATCH_HEADER_SIZE,
    GROUP_RECORD_BYTES,
    KIND_DELETE,
    KIND_PUT,
    MAX_SEQ,
)

# Every test runs once per build of the WAL record codec (tests/storage/conftest.py): replay
# decodes with the build under test, and the tests encode with it.
pytestmark = pytest.mark.usefixtures("storage_build")


def wal_codec() -> ModuleType:
    """The build of ``sentinel.storage.wal_format`` under test (the fixture switched it)."""
    return builds.wal_format


Ops = list[tuple[bytes, bytes | None]]


def expected(first_seq: int, ops: Ops) -> list[tuple[bytes, int, bytes | None]]:
    return [(key, first_seq + i, value) for i, (key, value) in enumerate(ops)]


def random_ops(rng: random.Random, count: int) -> Ops:
    ops: Ops = []
    for _ in range(count):
        key = rng.randbytes(rng.choice([0, 1, 16, 127, 128, 300]))
        value = (
            None
            if rng.random() < 0.2
            else rng.randbytes(rng.choice([0, 1, 100, 127, 128, 16383, 16384, 70000]))
        )
        ops.append((key, value))
    return ops


# -- codec -------------------------------------------------------------------------------


def test_round_trip_across_varint_widths() -> None:
    rng = random.Random(3)
    for first_seq in [0, 1, 1 << 40, MAX_SEQ - 49]:
        ops = random_ops(rng, 50)
        assert wal_codec().decode_write_batch(
            wal_codec().encode_write_batch(first_seq, ops), "w"
        ) == expected(first_seq, ops)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(
    st.integers(0, MAX_SEQ - 20),
    st.lists(
        st.tuples(st.binary(max_size=200), st.none() | st.binary(max_size=300)), min_size=1, max_size=20
    ),
)
def test_round_trip_property(first_seq: int, ops: Ops) -> None:
    assert wal_codec().decode_write_batch(wal_codec().encode_write_batch(first_seq, ops), "w") == expected(
        first_seq, ops
    )


def test_encoding_layout() -> None:
    payload = wal_codec().encode_write_batch(7, [(b"k", b"vv"), (b"d", None)])
    assert (
        payload
        == BATCH_HEADER.pack(7, 2)
        + bytes([KIND_PUT, 1])
        + b"k"
        + bytes([2])
        + b"vv"
        + bytes([KIND_DELETE, 1])
        + b"d"
    )
    # A 200-byte key takes a two-byte uvarint length: 200 = 0x48 | 0x80, then 1.
    long_key = wal_codec().encode_write_batch(0, [(b"x" * 200, None)])
    assert long_key[BATCH_HEADER_SIZE : BATCH_HEADER_SIZE + 3] == bytes([KIND_DELETE, 0xC8, 0x01])
    assert wal_codec().encode_wal_record(7, [(b"k", b"vv"), (b"d", None)]) == frame(payload)


def test_encode_rejects_bad_batches() -> None:
    with pytest.raises(ValueError, match="a write batch needs at least one operation"):
        wal_codec().encode_write_batch(1, [])
    with pytest.raises(ValueError, match=r"seqs -1\.\.-1 do not fit in a u64"):
        wal_codec().encode_write_batch(-1, [(b"k", None)])
    with pytest.raises(ValueError, match=f"seqs {MAX_SEQ}..{MAX_SEQ + 1} do not fit in a u64"):
        wal_codec().encode_write_batch(MAX_SEQ, [(b"k", None), (b"j", None)])


def _records(data: bytes) -> list[list[tuple[bytes, int, bytes | None]]]:
    return [wal_codec().decode_write_batch(payload, "w") for payload in scan_frames(data).payloads]


def test_group_encoder_frames_consecutive_batches_as_one_record() -> None:
    rng = random.Random(11)
    batches = [random_ops(rng, rng.randint(1, 5)) for _ in range(20)]
    encoder = wal_codec().WalGroupEncoder()
    assert not encoder
    seq = 100
    wanted: list[tuple[bytes, int, bytes | None]] = []
    for ops in batches:
        assert encoder.add(seq, ops) == len(wal_codec().encode_write_batch(seq, ops)) - BATCH_HEADER_SIZE
        wanted += expected(seq, ops)
        seq += len(ops)
    assert encoder
    data = encoder.take()
    assert _records(data) == [wanted]  # one record: the group is applied all or nothing
    assert not encoder and encoder.take() == b""
    # The same bytes as one write batch of all the ops (one codec of record).
    assert data == wal_codec().encode_wal_record(100, [op for ops in batches for op in ops])


def test_group_encoder_starts_a_record_where_seqs_do_not_follow_on() -> None:
    encoder = wal_codec().WalGroupEncoder()
    encoder.add(1, [(b"a", b"1"), (b"b", b"2")])
    encoder.add(3, [(b"c", None)])
    encoder.add(10, [(b"d", b"4")])  # seqs 4..9 went elsewhere (a refused write, say)
    assert _records(encoder.take()) == [
        [(b"a", 1, b"1"), (b"b", 2, b"2"), (b"c", 3, None)],
        [(b"d", 10, b"4")],
    ]


def test_group_encoder_cuts_records_at_the_group_record_size() -> None:
    encoder = wal_codec().WalGroupEncoder()
    value = b"v" * (GROUP_RECORD_BYTES // 3)
    for seq in range(1, 8):
        encoder.add(seq, [(b"k%d" % seq, value)])
    records = _records(encoder.take())
    assert [[seq for _key, seq, _value in record] for record in records] == [[1, 2, 3], [4, 5, 6], [7]]


def test_group_encoder_refuses_bad_batches_and_keeps_what_it_had() -> None:
    encoder = wal_codec().WalGroupEncoder()
    encoder.add(1, [(b"a", b"1")])
    with pytest.raises(ValueError, match="a write batch needs at least one operation"):
        encoder.add(2, [])
    with pytest.raises(ValueError, match="do not fit in a u64"):
        encoder.add(MAX_SEQ, [(b"k", None), (b"j", None)])
    with pytest.raises(ValueError, match=r"exceeds the \d+-byte record limit"):
        encoder.add(2, [(b"big", bytes(MAX_FRAME_PAYLOAD))])
    encoder.add(2, [(b"b", None)])
    assert _records(encoder.take()) == [[(b"a", 1, b"1"), (b"b", 2, None)]]


def _payload(first_seq: int, count: int, body: bytes) -> bytes:
    return BATCH_HEADER.pack(first_seq, count) + body


@pytest.mark.parametrize(
    ("payload", "offset", "message"),
    [
        (b"\x00" * 11, 0, "write batch of 11 bytes is shorter than its 12-byte header"),
        (_payload(5, 0, b""), 0, "empty write batch (count 0)"),
        (
            _payload(MAX_SEQ, 2, b"\x00\x00" * 2),
            0,
            f"write batch seqs {MAX_SEQ}..{MAX_SEQ + 1} overflow a u64",
        ),
        (_payload(5, 3, b"\x00\x00" * 2), 0, "write batch claims 3 entries but has only 4 bytes for them"),
        (_payload(5, 2, b"\x00\x00\x07\x00"), 14, "unknown entry kind 7 (seq 6)"),
        (
            _payload(5, 1, b"\x01\x05ab"),
            12,
            "write batch entry (seq 5) runs past the end of the 16-byte payload",
        ),
        (_payload(5, 1, b"\x01\x01a\x03bc"), 12, "write batch entry (seq 5) runs past the end"),
        (_payload(5, 1, b"\x01\x01a"), 12, "write batch entry (seq 5) runs past the end"),  # no value length
        (_payload(5, 1, b"\x00\x01a\xff"), 15, "1 unexpected bytes after the last write batch entry"),
        (
            _payload(5, 1, b"\x00" + b"\xff" * 11),
            12,
            "bad length in write batch entry (seq 5): varint longer",
        ),
    ],
)
def test_decode_reports_malformed_payloads_with_position(payload: bytes, offset: int, message: str) -> None:
    with pytest.raises(CorruptionError) as info:
        wal_codec().decode_write_batch(payload, "seg.log", base_position=1000)
    assert info.value.source == "seg.log"
    assert info.value.position == 1000 + offset
    assert message in info.value.detail


# -- replay ------------------------------------------------------------------------------


def write_segment(path: Path, batches: list[tuple[int, Ops]]) -> list[int]:
    """Write framed batches; return each frame's offset."""
    offsets = []
    data = b""
    for first_seq, ops in batches:
        offsets.append(len(data))
        data += wal_codec().encode_wal_record(first_seq, ops)
    path.write_bytes(data)
    return offsets


BATCHES: list[tuple[int, Ops]] = [
    (1, [(b"a", b"1"), (b"b", None)]),
    (3, [(b"c", b"3" * 300)]),
    (10, [(b"d", b""), (b"e", b"5"), (b"a", None)]),
]


def test_replay_clean_segment(tmp_path: Path) -> None:
    path = tmp_path / "wal-000001.log"
    write_segment(path, BATCHES)
    replay = replay_wal(path)
    size = path.stat().st_size
    assert replay == WalReplay(
        batches=[expected(first, ops) for first, ops in BATCHES],
        valid_bytes=size,
        total_bytes=size,
        tail_error=None,
        last_seq=12,
    )
    assert replay.dropped_bytes == 0


def test_replay_empty_segment(tmp_path: Path) -> None:
    path = tmp_path / "wal-000001.log"
    path.write_bytes(b"")
    assert replay_wal(path) == WalReplay(
        batches=[], valid_bytes=0, total_bytes=0, tail_error=None, last_seq=None
    )


def test_torn_tail_at_every_cut_point_is_reported_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "wal-000001.log"
    offsets = write_segment(path, BATCHES)
    whole = path.read_bytes()
    last = offsets[-1]
    for cut in range(last + 1, len(whole)):
        path.write_bytes(whole[:cut])
        replay = replay_wal(path)
        assert replay.batches == [expected(first, ops) for first, ops in BATCHES[:2]], cut
        assert replay.valid_bytes == last
        assert replay.total_bytes == cut
        assert replay.dropped_bytes == cut - last
        assert replay.last_seq == 3
        assert replay.tail_error is not None
        assert replay.tail_error.startswith(f"torn frame {'header ' if cut - last < 8 else ''}at byte {last}")
        assert replay.torn


def test_flipped_byte_in_the_last_complete_frame_is_not_torn(tmp_path: Path) -> None:
    path = tmp_path / "wal-000001.log"
    offsets = write_segment(path, BATCHES)
    whole = path.read_bytes()
    last = offsets[-1]
    for pos in [last, last + 3, *range(last + FRAME_HEADER_SIZE, len(whole))]:  # crc and payload bytes
        damaged = bytearray(whole)
        damaged[pos] ^= 0x40
        path.write_bytes(bytes(damaged))
        replay = replay_wal(path)
        assert len(replay.batches) == 2, pos
        assert replay.valid_bytes == last
        assert replay.dropped_bytes == len(whole) - last
        assert replay.tail_error == f"checksum mismatch in frame at byte {last}"
        assert not replay.torn, pos  # complete frame, bad CRC: corruption for recovery


def test_zero_filled_tail_of_every_length_is_torn(tmp_path: Path) -> None:
    """After a power loss under sync interval/none the file system may leave the end of the
    segment allocated but never written: zeros from a frame boundary to the end are torn."""
    path = tmp_path / "wal-000001.log"
    write_segment(path, BATCHES)
    whole = path.read_bytes()
    for zeros in [*range(1, 64), 4096, 8192 - len(whole) % 4096]:
        path.write_bytes(whole + bytes(zeros))
        replay = replay_wal(path)
        assert replay.batches == [expected(first, ops) for first, ops in BATCHES], zeros
        assert (replay.valid_bytes, replay.dropped_bytes, replay.last_seq) == (len(whole), zeros, 12)
        assert replay.tail_error == f"zero-filled tail of {zeros} bytes at byte {len(whole)}"
        assert replay.torn and replay.lost_batches == 0


def test_zeros_followed_by_a_valid_frame_are_corruption(tmp_path: Path) -> None:
    path = tmp_path / "wal-000001.log"
    write_segment(path, BATCHES)
    whole = path.read_bytes()
    for zeros in (1, FRAME_HEADER_SIZE, 512):
        path.write_bytes(whole + bytes(zeros) + wal_codec().encode_wal_record(20, [(b"z", b"late")]))
        replay = replay_wal(path)
        assert replay.valid_bytes == len(whole)
        assert not replay.torn, zeros
        assert (replay.lost_batches, replay.lost_seqs) == (1, (20, 20))


def test_a_zero_byte_inside_a_good_frame_is_corruption(tmp_path: Path) -> None:
    path = tmp_path / "wal-000001.log"
    offsets = write_segment(path, BATCHES)
    whole = path.read_bytes()
    for frame_start in (offsets[1], offsets[-1]):  # a middle frame, the last one
        end = offsets[offsets.index(frame_start) + 1] if frame_start != offsets[-1] else len(whole)
        for pos in range(frame_start, end):
            if whole[pos] == 0:
                continue
            damaged = bytearray(whole)
            damaged[pos] = 0
            path.write_bytes(bytes(damaged))
            replay = replay_wal(path)
            assert replay.valid_bytes == frame_start, pos
            assert not replay.torn, pos


def test_a_bad_length_in_a_middle_frame_is_corruption_and_says_what_follows(tmp_path: Path) -> None:
    """Was taken for a torn tail (issue 8): a length byte flipped to claim more than the
    segment holds made recovery drop the acknowledged batches after it as a torn frame."""
    path = tmp_path / "wal-000001.log"
    batches = [(seq, [(b"k%d" % seq, b"v" * 40)]) for seq in range(1, 11)]
    offsets = write_segment(path, batches)
    whole = path.read_bytes()
    for length_byte, mask in [(5, 0x80), (6, 0x01), (7, 0x01)]:  # each now claims past the end
        damaged = bytearray(whole)
        damaged[offsets[4] + length_byte] ^= mask
        path.write_bytes(bytes(damaged))
        replay = replay_wal(path)
        assert replay.tail_error is not None
        assert replay.tail_error.startswith(f"torn frame at byte {offsets[4]}: payload needs")
        assert replay.last_seq == 4
        assert not replay.torn, length_byte
        assert (replay.lost_batches, replay.lost_seqs) == (5, (6, 10))


def test_checksum_valid_malformed_payload_is_corruption(tmp_path: Path) -> None:
    path = tmp_path / "wal-000001.log"
    good = wal_codec().encode_wal_record(1, [(b"a", b"1")])
    bad_payload = _payload(2, 1, b"\x09\x01k")  # entry kind 9
    path.write_bytes(good + frame(bad_payload) + wal_codec().encode_wal_record(3, [(b"b", None)]))
    entry_at = len(good) + FRAME_HEADER_SIZE + BATCH_HEADER_SIZE
    with pytest.raises(CorruptionError) as info:
        replay_wal(path)
    assert info.value.source == str(path)
    assert info.value.position == entry_at
    assert str(info.value) == f"corruption in {path} at byte {entry_at}: unknown entry kind 9 (seq 2)"


def test_seq_going_backwards_is_corruption(tmp_path: Path) -> None:
    path = tmp_path / "wal-000001.log"
    offsets = write_segment(path, [(10, [(b"a", b"1"), (b"b", b"2")]), (11, [(b"c", b"3")])])
    with pytest.raises(CorruptionError) as info:
        replay_wal(path)
    assert info.value.position == offsets[1]
    assert "write batch starts at seq 11, not after the previous batch's last seq 11" in str(info.value)
    write_segment(path, [(10, [(b"a", b"1")]), (4, [(b"c", b"3")])])
    with pytest.raises(CorruptionError, match="starts at seq 4, not after the previous batch's last seq 10"):
        replay_wal(path)
    # A gap is fine: a batch whose write failed never reached the WAL.
    write_segment(path, [(10, [(b"a", b"1")]), (20, [(b"c", b"3")])])
    assert replay_wal(path).last_seq == 20


def test_missing_segment_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        replay_wal(tmp_path / "wal-000009.log")


def test_truncate_wal_tail(tmp_path: Path) -> None:
    path = tmp_path / "wal-000001.log"
    offsets = write_segment(path, BATCHES)
    whole = path.read_bytes()
    path.write_bytes(whole[:-5])
    replay = replay_wal(path)
    truncate_wal_tail(path, replay.valid_bytes)
    assert path.read_bytes() == whole[: offsets[-1]]
    assert replay_wal(path).tail_error is None
    truncate_wal_tail(path, offsets[-1])  # already that long: nothing to do
    assert path.stat().st_size == offsets[-1]
    with pytest.raises(
        ValueError, match=rf"cannot cut .*wal-000001.log \({offsets[-1]} bytes\) to 99999 bytes"
    ):
        truncate_wal_tail(path, 99999)
    with pytest.raises(ValueError, match="to -1 bytes"):
        truncate_wal_tail(path, -1)
    assert path.stat().st_size == offsets[-1]


# -- WalFile -----------------------------------------------------------------------------


def test_walfile_append_sync_and_replay(tmp_path: Path) -> None:
    path = tmp_path / "wal-000001.log"
    records = [wal_codec().encode_wal_record(first, ops) for first, ops in BATCHES]
    with WalFile.create(path) as wal:
        assert (wal.path, wal.size, wal.closed) == (path, 0, False)
        wal.append(records[0])
        wal.append_many(records[1:])
        wal.sync()
        assert wal.size == sum(map(len, records))
    assert wal.closed
    assert replay_wal(path).last_seq == 12
    with pytest.raises(FileExistsError):
        WalFile.create(path)


def test_open_for_append_cuts_the_torn_tail_first(tmp_path: Path) -> None:
    path = tmp_path / "wal-000001.log"
    offsets = write_segment(path, BATCHES)
    path.write_bytes(path.read_bytes()[:-3])
    replay = replay_wal(path)
    with WalFile.open_for_append(path, replay.valid_bytes) as wal:
        assert wal.size == offsets[-1]
        wal.append(wal_codec().encode_wal_record(50, [(b"z", b"new")]))
        wal.sync()
    replay = replay_wal(path)
    assert replay.tail_error is None
    assert [batch[0][1] for batch in replay.batches] == [1, 3, 50]


def test_walfile_refuses_use_after_close(tmp_path: Path) -> None:
    wal = WalFile.create(tmp_path / "wal-000001.log")
    wal.close()
    wal.close()  # idempotent
    record = wal_codec().encode_wal_record(1, [(b"k", b"v")])
    for action in (lambda: wal.append(record), lambda: wal.append_many([record]), wal.sync):
        with pytest.raises(StorageClosed, match=r"WAL .*wal-000001.log is closed"):
            action()
    assert (tmp_path / "wal-000001.log").stat().st_size == 0


def test_walfile_refuses_use_after_a_failed_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wal = WalFile.create(tmp_path / "wal-000001.log")
    record = wal_codec().encode_wal_record(1, [(b"k", b"v")])
    wal.append(record)

    def failing_datasync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(wal_module, "_datasync", failing_datasync)
    with pytest.raises(StorageError, match=r"sync failed: .*Input/output error"):
        wal.sync()
    monkeypatch.undo()
    # Retrying could report success for pages the kernel already dropped.
    with pytest.raises(StorageError, match="unusable after an earlier failure: sync failed"):
        wal.sync()
    with pytest.raises(StorageError, match="unusable after an earlier failure"):
        wal.append(record)
    wal.close()


def test_walfile_refuses_use_after_a_failed_write(tmp_path: Path) -> None:
    path = tmp_path / "wal-000001.log"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)  # writes to it fail with EBADF
    wal = WalFile(path, fd, 0)
    record = wal_codec().encode_wal_record(1, [(b"k", b"v")])
    with pytest.raises(StorageError, match=r"wal-000001.log: write at byte 0 failed"):
        wal.append(record)
    assert wal.size == 0
    with pytest.raises(StorageError, match="unusable after an earlier failure: write failed"):
        wal.append(record)
    wal.close()
