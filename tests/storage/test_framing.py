"""CRC frames (scan_frames: clean logs, torn tails, checksum failures) and storage file names."""

from __future__ import annotations

import random
import re
import struct
import zlib
from pathlib import Path

import pytest

from sentinel.storage import framing
from sentinel.storage.files import (
    manifest_path,
    parse_file_name,
    sst_path,
    wal_path,
    write_file_atomically,
)
from sentinel.storage.framing import FRAME_HEADER_SIZE, frame, iter_frames, scan_frames


def test_frame_layout() -> None:
    payload = b"hello"
    framed = frame(payload)
    crc, length = struct.unpack_from("<II", framed)
    assert length == 5
    assert framed[FRAME_HEADER_SIZE:] == payload
    # The CRC covers the length bytes, then the payload.
    assert crc == zlib.crc32(struct.pack("<I", 5) + payload)
    assert len(frame(b"")) == FRAME_HEADER_SIZE


def test_clean_log_round_trips() -> None:
    rng = random.Random(1)
    payloads = [rng.randbytes(rng.randrange(0, 300)) for _ in range(50)] + [b""]
    data = b"".join(frame(p) for p in payloads)
    scan = scan_frames(data)
    assert scan.payloads == payloads
    assert (scan.valid_bytes, scan.total_bytes, scan.dropped_bytes) == (len(data), len(data), 0)
    assert scan.tail_error is None
    assert scan_frames(memoryview(data)) == scan
    offsets = [0]
    for p in payloads[:-1]:
        offsets.append(offsets[-1] + FRAME_HEADER_SIZE + len(p))
    assert list(iter_frames(data)) == list(zip(offsets, payloads, strict=True))


def test_empty_input() -> None:
    assert scan_frames(b"") == framing.FrameScan(payloads=[], valid_bytes=0, total_bytes=0, tail_error=None)


def test_torn_tail_at_every_cut_point() -> None:
    head = frame(b"first") + frame(b"second")
    last = frame(b"the last record, torn by a crash")
    for cut in range(1, len(last)):
        scan = scan_frames(head + last[:cut])
        assert scan.payloads == [b"first", b"second"], cut
        assert scan.valid_bytes == len(head)
        assert scan.dropped_bytes == cut
        if cut < FRAME_HEADER_SIZE:
            assert scan.tail_error == f"torn frame header at byte {len(head)} ({cut} of 8 bytes)"
        else:
            present = cut - FRAME_HEADER_SIZE
            assert (
                scan.tail_error
                == f"torn frame at byte {len(head)}: payload needs 32 bytes, {present} present"
            )


def test_flipped_byte_anywhere_in_a_frame_stops_the_scan_there() -> None:
    frames = [frame(b"alpha"), frame(b"beta-beta"), frame(b"gamma")]
    data = b"".join(frames)
    start = len(frames[0])
    for pos in range(start, start + len(frames[1])):
        damaged = bytearray(data)
        damaged[pos] ^= 0x10
        scan = scan_frames(bytes(damaged))
        # Nothing after a bad frame is trusted: its order relative to the lost one is unknown.
        assert scan.payloads == [b"alpha"], pos
        assert scan.valid_bytes == start
        assert scan.tail_error is not None
        assert f"at byte {start}" in scan.tail_error
        if pos not in (start + 4, start + 5, start + 6, start + 7):  # crc or payload byte
            assert scan.tail_error == f"checksum mismatch in frame at byte {start}"


def test_implausible_length_is_not_allocated() -> None:
    header = struct.pack("<II", 0, framing.MAX_FRAME_PAYLOAD + 1)
    scan = scan_frames(frame(b"ok") + header + b"x" * 10)
    assert scan.payloads == [b"ok"]
    assert scan.tail_error == f"implausible frame length {framing.MAX_FRAME_PAYLOAD + 1} at byte 10"
    assert scan.dropped_bytes == 18


def test_zero_filled_tail_of_every_length_is_torn() -> None:
    """A file system may extend a file and never write the data (power loss under a lazy
    sync): zeros from a frame boundary to the end are a torn tail, not corruption."""
    head = frame(b"first") + frame(b"second")
    for zeros in range(1, 3 * FRAME_HEADER_SIZE + 40):
        scan = scan_frames(head + bytes(zeros))
        assert scan.payloads == [b"first", b"second"], zeros
        assert (scan.valid_bytes, scan.dropped_bytes) == (len(head), zeros)
        assert scan.tail_error == f"zero-filled tail of {zeros} bytes at byte {len(head)}"
        assert scan.torn and scan.following == ()
    assert scan_frames(bytes(4096)).torn  # not even the first frame reached the disk


def test_zeros_followed_by_a_valid_frame_are_corruption() -> None:
    head = frame(b"first")
    last = frame(b"after the hole")
    for zeros in (1, FRAME_HEADER_SIZE, 100):
        scan = scan_frames(head + bytes(zeros) + last)
        assert scan.payloads == [b"first"]
        assert not scan.torn, zeros
        assert scan.following == ((len(head) + zeros, b"after the hole"),)


def test_a_zero_byte_inside_a_good_frame_is_corruption() -> None:
    frames = [frame(b"alpha"), frame(b"beta-beta"), frame(b"gamma-gamma")]
    data = b"".join(frames)
    starts = [0, len(frames[0]), len(frames[0]) + len(frames[1])]
    for which in (1, 2):  # a middle frame and the last one
        start = starts[which]
        for pos in range(start, start + len(frames[which])):
            if data[pos] == 0:
                continue
            damaged = bytearray(data)
            damaged[pos] = 0
            scan = scan_frames(bytes(damaged))
            assert scan.valid_bytes == start, pos
            assert not scan.torn, (which, pos)
    # Zeros to the end of the last frame, but not from a frame boundary: corruption too.
    damaged = bytearray(data)
    damaged[starts[2] + FRAME_HEADER_SIZE :] = bytes(len(data) - starts[2] - FRAME_HEADER_SIZE)
    assert not scan_frames(bytes(damaged)).torn


def test_a_bad_length_that_makes_a_middle_frame_look_cut_short_is_corruption() -> None:
    """Was taken for a torn tail (issue 8): a length flipped to more than is left made the
    frame look incomplete, and every valid frame after it was dropped as its tail."""
    frames = [frame(b"one" * 20), frame(b"two" * 20), frame(b"three" * 20), frame(b"four" * 20)]
    data = b"".join(frames)
    start = len(frames[0])
    for length_byte in range(4, 8):
        for bit in range(8):
            damaged = bytearray(data)
            damaged[start + length_byte] ^= 1 << bit
            scan = scan_frames(bytes(damaged))
            assert scan.valid_bytes == start
            assert not scan.torn, (length_byte, bit, scan.tail_error)
            assert [p for _, p in scan.following] == [b"three" * 20, b"four" * 20], (length_byte, bit)
            assert scan.following[0][0] == start + len(frames[1])


def test_frames_after_several_damaged_spots_are_all_found() -> None:
    frames = [frame(bytes([i]) * 30) for i in range(1, 7)]
    data = bytearray(b"".join(frames))
    offsets = [sum(map(len, frames[:i])) for i in range(len(frames))]
    data[offsets[1] + 10] ^= 0x01
    data[offsets[3] + 10] ^= 0x01
    scan = scan_frames(bytes(data))
    assert scan.valid_bytes == offsets[1]
    assert [at for at, _ in scan.following] == [offsets[2], offsets[4], offsets[5]]


def test_an_incomplete_frame_holding_a_valid_frame_is_not_taken_for_torn() -> None:
    """The rule is conservative: bytes that checksum as a frame after the damage make it
    corruption (refused, or an accepted loss) rather than a silently cut tail."""
    inner = frame(b"looks like a record")
    outer = frame(b"x" * 10 + inner + b"y" * 50)
    data = frame(b"first") + outer[: FRAME_HEADER_SIZE + 10 + len(inner) + 5]
    scan = scan_frames(data)
    assert not scan.torn
    assert [p for _, p in scan.following] == [b"looks like a record"]


def test_the_search_after_damage_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checking every candidate frame in a long damaged span costs a checksum each; past
    the budget the search stops and says where, and the unsearched rest holds nothing."""
    rng = random.Random(7)
    torn = frame(rng.randbytes(200_000))[:150_000]
    data = frame(b"first") + torn
    assert scan_frames(data).torn
    monkeypatch.setattr(framing, "SEARCH_CHECKSUM_BYTES", 1000)
    scan = scan_frames(data)
    assert scan.torn
    assert scan.tail_error is not None
    assert re.search(r"\(no valid frame follows up to byte \d+; not searched further\)$", scan.tail_error)


def test_frame_refuses_what_the_reader_would_reject(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(framing, "MAX_FRAME_PAYLOAD", 16)
    assert scan_frames(frame(b"x" * 16)).payloads == [b"x" * 16]
    # A writer that framed this would acknowledge a record that replay then drops.
    with pytest.raises(ValueError, match="payload of 17 bytes exceeds the 16-byte frame limit"):
        frame(b"x" * 17)


# -- files.py ----------------------------------------------------------------------------


def test_file_names_round_trip(tmp_path: Path) -> None:
    assert wal_path(tmp_path, 7).name == "wal-000007.log"
    assert sst_path(tmp_path, 12).name == "sst-000012.sst"
    assert manifest_path(tmp_path, 3).name == "MANIFEST-000003"
    assert sst_path(tmp_path, 1234567).name == "sst-1234567.sst"
    for path, kind, number in [
        (wal_path(tmp_path, 7), "wal", 7),
        (sst_path(tmp_path, 1234567), "sst", 1234567),
        (manifest_path(tmp_path, 0), "MANIFEST", 0),
    ]:
        assert parse_file_name(path.name) == (kind, number)


@pytest.mark.parametrize(
    "name",
    [
        "CURRENT",
        "LOCK",
        "sst-000001.sst.tmp",
        "CURRENT.tmp",
        "wal-00001.log",  # fewer than six digits
        "wal-000001.sst",  # suffix of another kind
        "sst-000001.log",
        "wal-000001",  # missing suffix
        "sst-000001",
        "MANIFEST-000001.log",
        "sst-000001.sst\n",
        "wal-\u0660\u0660\u0660\u0660\u0660\u0661.log",  # Arabic-Indic digits: int() takes them
        "xsst-000001.sst",
    ],
)
def test_parse_file_name_rejects_foreign_names(name: str) -> None:
    assert parse_file_name(name) is None


def test_write_file_atomically(tmp_path: Path) -> None:
    target = tmp_path / "CURRENT"
    write_file_atomically(target, b"one\n")
    assert target.read_bytes() == b"one\n"
    write_file_atomically(target, b"two\n")
    assert target.read_bytes() == b"two\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CURRENT"]  # no temp file left
