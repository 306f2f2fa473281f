"""The Raft binary formats (format.py): every message type and the hard state round-trip;
malformed bytes are reported as RaftFormatError naming the byte where decoding failed,
never as another exception, a huge allocation or a wrong message.

Messages carry no checksum of their own (the peer link's frames do), so the codec's duty
is structure: every truncation, and every flip of a byte it validates (version, type,
flags, reserved, counts and lengths), is caught at that byte. The hard state reaches disk
and is CRC'd: every flipped byte and bit is caught.

Deterministic: hypothesis with ``derandomize=True`` and no example database.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentinel.raft import format as fmt
from sentinel.raft.format import RaftFormatError
from sentinel.raft.messages import Entry, HardState, Message, MsgType, Snapshot

SETTINGS = settings(
    max_examples=200,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

U32 = (1 << 32) - 1
U64 = (1 << 64) - 1

# Byte offsets of the message header fields (format.py's layout).
VERSION, TYPE, FLAGS, RESERVED = 0, 1, 2, 3
INDEX = 20
N_ENTRIES = 52
HEADER = fmt.MESSAGE_HEADER_SIZE
ENTRY_HEADER = 12  # u64 term | u32 length
SNAPSHOT_HEADER = 20  # u64 index | u64 term | u32 length


@st.composite
def messages(draw: st.DrawFn) -> Message:
    n = draw(st.integers(0, 4))
    index = draw(st.one_of(st.integers(0, 1000), st.integers(0, U64 - n)))
    ents = [Entry(draw(st.integers(0, U64)), index + 1 + i, draw(st.binary(max_size=40))) for i in range(n)]
    snap = draw(
        st.one_of(
            st.none(),
            st.builds(Snapshot, st.integers(0, U64), st.integers(0, U64), st.binary(max_size=40)),
        )
    )
    u32 = st.integers(0, U32)
    u64 = st.integers(0, U64)
    return Message(
        draw(st.sampled_from(MsgType)),
        draw(u32),
        draw(u32),
        draw(u64),
        index=index,
        log_term=draw(u64),
        commit=draw(u64),
        entries=ents,
        reject=draw(st.booleans()),
        reject_hint=draw(u64),
        snapshot=snap,
        transfer=draw(st.booleans()),
    )


def e(term: int, index: int, data: bytes) -> Entry:
    return Entry(term, index, data)


# One realistic message of every type; payloads of bytes >= 0x80, so that a misparse
# that lands in a payload reads a huge length or a bad version, never a valid field.
SAMPLES = {
    "app": Message(
        MsgType.APP,
        1,
        2,
        7,
        index=41,
        log_term=6,
        commit=40,
        entries=[e(6, 42, b"\x80" * 5), e(7, 43, b""), e(7, 44, b"\xff" * 20)],
    ),
    "app-heartbeat": Message(MsgType.APP, 1, 2, 7, index=44, log_term=7, commit=44),
    "app-resp": Message(MsgType.APP_RESP, 2, 1, 7, index=44),
    "app-resp-reject": Message(MsgType.APP_RESP, 2, 1, 7, index=44, reject=True, reject_hint=30, log_term=5),
    "vote": Message(MsgType.VOTE, 3, 1, 8, index=44, log_term=7),
    "vote-transfer": Message(MsgType.VOTE, 3, 1, 8, index=44, log_term=7, transfer=True),
    "vote-resp": Message(MsgType.VOTE_RESP, 1, 3, 8, reject=True),
    "pre-vote": Message(MsgType.PRE_VOTE, 3, 1, 9, index=44, log_term=7),
    "pre-vote-resp": Message(MsgType.PRE_VOTE_RESP, 1, 3, 9),
    "heartbeat": Message(MsgType.HEARTBEAT, 1, 2, 7, commit=40),
    "heartbeat-resp": Message(MsgType.HEARTBEAT_RESP, 2, 1, 7),
    "snap": Message(MsgType.SNAP, 1, 2, 7, snapshot=Snapshot(40, 6, b"\x90" * 9)),
    "snap-empty": Message(MsgType.SNAP, 1, 2, 7, snapshot=Snapshot(40, 6, b"")),
    "timeout-now": Message(MsgType.TIMEOUT_NOW, 1, 2, 7),
}
SAMPLE_IDS = list(SAMPLES)
assert {m.type for m in SAMPLES.values()} == set(MsgType)


def decode_error(buf: bytes, offset: int = 0) -> RaftFormatError:
    with pytest.raises(RaftFormatError) as info:
        fmt.decode_message(buf, offset)
    err = info.value
    assert f"at byte {err.position}:" in str(err)
    return err


def flipped(buf: bytes, at: int, mask: int = 0xFF) -> bytes:
    b = bytearray(buf)
    b[at] ^= mask
    return bytes(b)


def entry_length_offsets(m: Message) -> list[int]:
    """Where each entry's u32 length lies in the encoding of ``m``."""
    offsets, pos = [], HEADER
    for ent in m.entries:
        offsets.append(pos + 8)
        pos += ENTRY_HEADER + len(ent.data)
    return offsets


def snapshot_length_offset(m: Message) -> int:
    return HEADER + sum(ENTRY_HEADER + len(ent.data) for ent in m.entries) + 16


# -- round trips ------------------------------------------------------------------------


@SETTINGS
@given(messages(), st.binary(max_size=8), st.binary(max_size=8))
def test_message_round_trip(m: Message, before: bytes, after: bytes) -> None:
    """Every type, every field to its full width, at any offset of a larger buffer (a
    frame of coalesced messages)."""
    buf = fmt.encode_message(m)
    assert fmt.decode_message(buf) == (m, len(buf))
    assert fmt.decode_message(before + buf + after, len(before)) == (m, len(before) + len(buf))


def test_messages_back_to_back() -> None:
    frame = b"".join(fmt.encode_message(m) for m in SAMPLES.values())
    decoded, pos = [], 0
    while pos < len(frame):
        m, pos = fmt.decode_message(frame, pos)
        decoded.append(m)
    assert decoded == list(SAMPLES.values())


def test_payloads_are_passed_by_reference() -> None:
    """Encoding yields each entry's payload object itself as a part (no copy); the size
    returned is what the parts add up to."""
    m = SAMPLES["app"]
    parts: list[bytes] = []
    size = fmt.encode_message_parts(m, parts)
    assert size == sum(len(p) for p in parts) == len(fmt.encode_message(m))
    for ent in m.entries:
        assert any(p is ent.data for p in parts)


def test_entries_must_follow_the_index() -> None:
    m = Message(MsgType.APP, 1, 2, 1, index=5, entries=[Entry(1, 6), Entry(1, 8)])
    with pytest.raises(ValueError, match="contiguously"):
        fmt.encode_message(m)


# -- malformed messages -----------------------------------------------------------------


@pytest.mark.parametrize("m", SAMPLES.values(), ids=SAMPLE_IDS)
def test_every_truncation_is_an_error(m: Message) -> None:
    buf = fmt.encode_message(m)
    for cut in range(len(buf)):
        err = decode_error(buf[:cut])
        assert 0 <= err.position <= cut, (cut, err)


@SETTINGS
@given(messages())
def test_every_truncation_is_an_error_property(m: Message) -> None:
    buf = b"\x00\x00" + fmt.encode_message(m)
    for cut in range(2, len(buf)):
        err = decode_error(buf[:cut], 2)
        assert 2 <= err.position <= cut, (cut, err)


@pytest.mark.parametrize("m", SAMPLES.values(), ids=SAMPLE_IDS)
def test_flipped_version_byte(m: Message) -> None:
    buf = fmt.encode_message(m)
    for value in range(256):
        if value != fmt.MESSAGE_VERSION:
            b = bytearray(buf)
            b[VERSION] = value
            assert decode_error(bytes(b)).position == VERSION


@pytest.mark.parametrize("m", SAMPLES.values(), ids=SAMPLE_IDS)
def test_flipped_type_byte(m: Message) -> None:
    """Any value but a known type is refused at the type byte (a known one is a valid
    message of that type: the frame's CRC, not the codec, guards against that)."""
    buf = fmt.encode_message(m)
    for value in range(256):
        b = bytearray(buf)
        b[TYPE] = value
        if value in set(MsgType):
            assert fmt.decode_message(bytes(b))[0].type == value
        else:
            assert decode_error(bytes(b)).position == TYPE
    assert decode_error(flipped(buf, TYPE)).position == TYPE


@pytest.mark.parametrize("m", SAMPLES.values(), ids=SAMPLE_IDS)
def test_flipped_flags_byte(m: Message) -> None:
    buf = fmt.encode_message(m)
    known = fmt.FLAG_REJECT | fmt.FLAG_TRANSFER | fmt.FLAG_HAS_SNAPSHOT | fmt.FLAG_RECOVERING
    for bit in range(8):
        if not (1 << bit) & known:
            assert decode_error(flipped(buf, FLAGS, 1 << bit)).position == FLAGS
    assert decode_error(flipped(buf, FLAGS)).position == FLAGS
    # The snapshot flag set on a message without one: its header is missing at the end.
    if m.snapshot is None:
        assert decode_error(flipped(buf, FLAGS, fmt.FLAG_HAS_SNAPSHOT)).position == len(buf)


@pytest.mark.parametrize("m", SAMPLES.values(), ids=SAMPLE_IDS)
def test_flipped_reserved_byte(m: Message) -> None:
    buf = fmt.encode_message(m)
    for value in range(1, 256):
        b = bytearray(buf)
        b[RESERVED] = value
        assert decode_error(bytes(b)).position == RESERVED


@pytest.mark.parametrize("m", SAMPLES.values(), ids=SAMPLE_IDS)
def test_flipped_entry_count_byte(m: Message) -> None:
    """A count that cannot fit is refused before anything is allocated for it."""
    buf = fmt.encode_message(m)
    for at in range(N_ENTRIES, N_ENTRIES + 4):
        assert decode_error(flipped(buf, at)).position == HEADER


@pytest.mark.parametrize("m", SAMPLES.values(), ids=SAMPLE_IDS)
def test_flipped_length_byte(m: Message) -> None:
    """Each entry's and the snapshot's length: a flipped byte makes a length that runs
    past the end, reported at the first byte of the payload it claims."""
    buf = fmt.encode_message(m)
    fields = entry_length_offsets(m)
    if m.snapshot is not None:
        fields.append(snapshot_length_offset(m))
    assert len(fields) == len(m.entries) + (m.snapshot is not None)
    for field in fields:
        for at in range(field, field + 4):
            assert decode_error(flipped(buf, at)).position == field + 4, at


def test_entry_indices_must_not_overflow() -> None:
    """The entries' indices follow the message's index: past 2**64 - 1 they cannot."""
    header = struct.pack("<BBBBIIQQQQQI", 1, MsgType.APP, 0, 0, 1, 2, 1, U64, 1, 0, 0, 1)
    buf = header + struct.pack("<QI", 1, 0)
    assert decode_error(buf).position == INDEX


def test_short_header_at_an_offset() -> None:
    buf = b"\x00" * 10 + fmt.encode_message(SAMPLES["heartbeat"])[: HEADER - 1]
    assert decode_error(buf, 10).position == 10


# -- the hard state -----------------------------------------------------------------------


@SETTINGS
@given(st.integers(0, U64), st.integers(0, U32), st.integers(0, U64))
def test_hard_state_round_trip(term: int, vote: int, commit: int) -> None:
    hs = HardState(term, vote, commit)
    buf = fmt.encode_hard_state(hs)
    assert len(buf) == fmt.HARD_STATE_SIZE
    assert fmt.decode_hard_state(buf) == hs


HS = fmt.encode_hard_state(HardState(7, 3, 42))


def test_hard_state_every_flipped_byte_and_bit() -> None:
    """The CRC catches any damage to any byte of it, the CRC's own included."""
    for at in range(len(HS)):
        for mask in (0xFF, *(1 << bit for bit in range(8))):
            with pytest.raises(RaftFormatError, match="hard state at byte 21: checksum"):
                fmt.decode_hard_state(flipped(HS, at, mask))


@pytest.mark.parametrize("size", [0, 1, fmt.HARD_STATE_SIZE - 1, fmt.HARD_STATE_SIZE + 1])
def test_hard_state_wrong_size(size: int) -> None:
    buf = (HS * 2)[:size]
    with pytest.raises(RaftFormatError, match="at byte 0:") as info:
        fmt.decode_hard_state(buf, "raft/7/hard_state")
    assert "raft/7/hard_state" in str(info.value)


def test_hard_state_unknown_version() -> None:
    """A well-checksummed hard state of a version this code does not know."""
    body = struct.pack("<BQIQ", 2, 7, 3, 42)
    buf = body + struct.pack("<I", fmt.crc32c(body))
    with pytest.raises(RaftFormatError, match="at byte 0: unknown version 2"):
        fmt.decode_hard_state(buf)


# -- the stored entry header ------------------------------------------------------------


def test_entry_header() -> None:
    buf = fmt.encode_entry_header(U64, 3)
    assert len(buf) == fmt.ENTRY_HEADER_SIZE
    assert fmt.decode_entry_header(buf + b"payload") == (U64, 3)
    with pytest.raises(RaftFormatError, match="at byte 0:"):
        fmt.decode_entry_header(buf[:-1])
    with pytest.raises(RaftFormatError, match="at byte 0: unknown version"):
        fmt.decode_entry_header(flipped(buf, 0))
