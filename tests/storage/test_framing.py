"""CRC frames (scan_frames: clean logs, torn tails, checksum failures) and storage file names."""

from __future__ import annotations

import random
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
