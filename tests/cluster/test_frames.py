"""The peer link's frames: round trips, and every damaged or hostile frame refused with
the byte where it went wrong."""

from __future__ import annotations

import pytest

from sentinel.cluster import frames
from sentinel.raft.messages import Entry, Message, MsgType, Snapshot


def sample() -> list[tuple[int, Message]]:
    return [
        (1, Message(MsgType.HEARTBEAT, 1, 2, 5, commit=9)),
        (
            2**40,
            Message(MsgType.APP, 1, 2, 5, index=3, log_term=4, commit=3, entries=[Entry(5, 4, b"x" * 100)]),
        ),
        (0, Message(MsgType.SNAP, 1, 2, 5, snapshot=Snapshot(10, 4, b"state"))),
        (7, Message(MsgType.APP_RESP, 1, 2, 5, index=3, reject=True, reject_hint=2, log_term=1)),
    ]


def split(frame: bytes) -> tuple[bytes, int]:
    length, crc = frames.parse_prefix(frame[: frames.PREFIX_SIZE])
    assert length == len(frame) - frames.PREFIX_SIZE
    return frame[frames.PREFIX_SIZE :], crc


def test_a_raft_frame_round_trips_every_group_and_message() -> None:
    body, crc = split(frames.encode_raft(sample()))
    assert frames.decode_body(body, crc) == sample()


def test_a_hello_round_trips() -> None:
    body, crc = split(frames.encode_hello(77, 1, 3))
    assert frames.decode_body(body, crc) == frames.Hello(77, 1, 3)


def test_every_flipped_byte_is_refused() -> None:
    frame = frames.encode_raft(sample())
    body, crc = split(frame)
    for i in range(len(body)):
        damaged = bytearray(body)
        damaged[i] ^= 0x40
        with pytest.raises(frames.FrameError, match="checksum mismatch"):
            frames.decode_body(bytes(damaged), crc)


def test_structural_damage_with_a_valid_checksum_is_refused_naming_a_byte() -> None:
    from crc32c import crc32c

    body, _ = split(frames.encode_raft(sample()))
    for cut in range(2, len(body)):
        short = body[:cut]
        with pytest.raises(frames.FrameError, match=r"at byte \d+"):
            frames.decode_body(short, crc32c(short))
    extra = body + b"\x00"
    with pytest.raises(frames.FrameError, match="1 bytes after the last message"):
        frames.decode_body(extra, crc32c(extra))
    huge_count = body[:2] + (10**9).to_bytes(4, "little") + body[6:]
    with pytest.raises(frames.FrameError, match="cannot fit"):
        frames.decode_body(huge_count, crc32c(huge_count))
    bad_kind = body[:1] + b"\x09" + body[2:]
    with pytest.raises(frames.FrameError, match="unknown frame kind 9"):
        frames.decode_body(bad_kind, crc32c(bad_kind))


def test_a_length_out_of_bounds_is_refused_before_anything_is_buffered() -> None:
    with pytest.raises(frames.FrameError, match="outside"):
        frames.parse_prefix((frames.MAX_FRAME_BYTES + 1).to_bytes(4, "little") + b"\0\0\0\0")
    with pytest.raises(frames.FrameError, match="outside"):
        frames.parse_prefix(b"\x01\0\0\0\0\0\0\0")
