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


def beats(groups: range, *, commit: int = 9, frm: int = 1, to: int = 2) -> list[tuple[int, Message]]:
    out: list[tuple[int, Message]] = []
    for g in groups:
        out.append((g, Message(MsgType.HEARTBEAT, frm, to, 5, commit=commit)))
        out.append((g, Message(MsgType.HEARTBEAT_RESP, frm, to, 5)))
    return out


def by_group(item: tuple[int, Message]) -> tuple[int, int]:
    return item[0], int(item[1].type)


def test_an_idle_groups_heartbeat_travels_as_its_group_id_once_both_sides_have_seen_it() -> None:
    sender, receiver = frames.HeartbeatCodec(), frames.HeartbeatCodec()
    first = frames.encode_raft(beats(range(1000)), sender)
    again = frames.encode_raft(beats(range(1000)), sender)
    # The first heartbeat of a group carries its term and commit; a repeat is 8 bytes.
    assert len(first) > 2000 * 25
    assert len(again) <= 2000 * 8 + 64
    for frame in (first, again):
        body, crc = split(frame)
        decoded = frames.decode_body(body, crc, receiver, frm=1, to=2)
        assert isinstance(decoded, list)
        assert sorted(decoded, key=by_group) == sorted(beats(range(1000)), key=by_group)
    assert len(receiver) == 2000


def test_a_heartbeat_whose_commit_moved_carries_it_and_other_messages_keep_their_place() -> None:
    sender, receiver = frames.HeartbeatCodec(), frames.HeartbeatCodec()
    for frame in (frames.encode_raft(beats(range(3)), sender), frames.encode_raft(beats(range(3)), sender)):
        frames.decode_body(*split(frame), receiver, frm=1, to=2)
    moved = [*sample(), *beats(range(1), commit=10), *beats(range(1, 3))]
    body, crc = split(frames.encode_raft(moved, sender))
    decoded = frames.decode_body(body, crc, receiver, frm=1, to=2)
    # Full messages first, in order; then the heartbeats, the changed one with its new commit.
    assert isinstance(decoded, list)
    assert decoded[:3] == [m for m in sample() if m[1].type is not MsgType.HEARTBEAT][:3]
    assert sorted(decoded, key=by_group) == sorted(moved, key=by_group)
    assert (0, Message(MsgType.HEARTBEAT, 1, 2, 5, commit=10)) in decoded


def test_a_flagged_heartbeat_response_is_never_compacted() -> None:
    sender, receiver = frames.HeartbeatCodec(), frames.HeartbeatCodec()
    recovering = [(4, Message(MsgType.HEARTBEAT_RESP, 1, 2, 5, recovering=True))]
    for _ in range(2):
        body, crc = split(frames.encode_raft(recovering, sender))
        assert frames.decode_body(body, crc, receiver, frm=1, to=2) == recovering
    assert len(sender) == 0


def test_a_repeat_of_a_heartbeat_the_receiver_never_saw_is_refused() -> None:
    sender = frames.HeartbeatCodec()
    frames.encode_raft(beats(range(1)), sender)  # sent on a connection that then broke
    body, crc = split(frames.encode_raft(beats(range(1)), sender))
    with pytest.raises(frames.FrameError, match="repeated heartbeat of group 0 never sent"):
        frames.decode_body(body, crc, frames.HeartbeatCodec(), frm=1, to=2)


def test_a_compact_heartbeat_of_another_type_is_refused() -> None:
    from crc32c import crc32c

    body, _ = split(frames.encode_raft(beats(range(1)), frames.HeartbeatCodec()))
    # The first changed heartbeat's type byte: header 2, count 4, n 4, group 8.
    bad = bytearray(body)
    assert bad[18] == int(MsgType.HEARTBEAT)
    bad[18] = int(MsgType.APP)
    with pytest.raises(frames.FrameError, match="is not a heartbeat"):
        frames.decode_body(bytes(bad), crc32c(bytes(bad)), frames.HeartbeatCodec(), frm=1, to=2)
