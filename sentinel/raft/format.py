"""The binary formats of Raft: messages on the wire, and the hard state and entry
headers on disk. One module, struct-based, every layout versioned.

Why not protobuf: a message per append with per-entry submessages costs ~45 µs per 1000
small submessages in betterproto2 (ARCHITECTURE.md §4); these layouts cost one struct
call per message plus one per entry, and entry payloads are never re-encoded: encoding
yields the payload objects themselves as parts (join or writev them), decoding slices
them out of the received buffer.

Message (version 1), little-endian::

    u8 version | u8 type | u8 flags | u8 reserved(0) | u32 from | u32 to
    u64 term | u64 index | u64 log_term | u64 commit | u64 reject_hint | u32 n_entries
    n_entries x ( u64 term | u32 length | length bytes )     # indices: index+1, index+2, ...
    if flags & HAS_SNAPSHOT: u64 index | u64 term | u32 length | length bytes

Messages travel inside the peer link's frames, which carry a CRC of their own; the
codec validates structure (version, type, lengths, counts) and reports the byte where a
malformed message went wrong.

Hard state (version 1), as stored::

    u8 version | u64 term | u32 vote | u64 commit | u32 crc32c(of the preceding bytes)

Entry header, as stored before the payload::

    u8 version | u64 term | u8 kind
"""

from __future__ import annotations

import struct
from typing import Final

from crc32c import crc32c

from sentinel.raft.messages import Entry, HardState, Message, MsgType, Snapshot

MESSAGE_VERSION: Final = 1
HARD_STATE_VERSION: Final = 1
ENTRY_VERSION: Final = 1

FLAG_REJECT: Final = 0x01
FLAG_TRANSFER: Final = 0x02
FLAG_HAS_SNAPSHOT: Final = 0x04
FLAG_RECOVERING: Final = 0x08
_KNOWN_FLAGS: Final = FLAG_REJECT | FLAG_TRANSFER | FLAG_HAS_SNAPSHOT | FLAG_RECOVERING

_HEADER = struct.Struct("<BBBBIIQQQQQI")
_ENTRY = struct.Struct("<QI")
_SNAPSHOT = struct.Struct("<QQI")
_HARD_STATE = struct.Struct("<BQIQ")
_CRC = struct.Struct("<I")
_ENTRY_HEADER = struct.Struct("<BQB")

MESSAGE_HEADER_SIZE: Final = _HEADER.size
HARD_STATE_SIZE: Final = _HARD_STATE.size + _CRC.size
ENTRY_HEADER_SIZE: Final = _ENTRY_HEADER.size
_MAX_U64: Final = 0xFFFFFFFFFFFFFFFF
_TYPES: Final = frozenset(int(t) for t in MsgType)


class RaftFormatError(ValueError):
    """Bytes that are not a valid encoding; ``position`` is where decoding failed."""

    def __init__(self, what: str, position: int, detail: str) -> None:
        self.position = position
        super().__init__(f"malformed {what} at byte {position}: {detail}")


def encode_message_parts(m: Message, out: list[bytes]) -> int:
    """Append the encoding of ``m`` to ``out`` as parts (payloads by reference); returns the
    number of bytes appended."""
    flags = (
        (FLAG_REJECT if m.reject else 0)
        | (FLAG_TRANSFER if m.transfer else 0)
        | (FLAG_RECOVERING if m.recovering else 0)
    )
    snap = m.snapshot
    if snap is not None:
        flags |= FLAG_HAS_SNAPSHOT
    entries = m.entries
    out.append(
        _HEADER.pack(
            MESSAGE_VERSION,
            m.type,
            flags,
            0,
            m.frm,
            m.to,
            m.term,
            m.index,
            m.log_term,
            m.commit,
            m.reject_hint,
            len(entries),
        )
    )
    size = _HEADER.size
    expected = m.index + 1
    pack_entry = _ENTRY.pack
    for e in entries:
        if e.index != expected:
            raise ValueError(f"entries of a message must follow index {m.index} contiguously, got {e.index}")
        expected += 1
        data = e.data
        out.append(pack_entry(e.term, len(data)))
        out.append(data)
        size += _ENTRY.size + len(data)
    if snap is not None:
        out.append(_SNAPSHOT.pack(snap.index, snap.term, len(snap.data)))
        out.append(snap.data)
        size += _SNAPSHOT.size + len(snap.data)
    return size


def encode_message(m: Message) -> bytes:
    parts: list[bytes] = []
    encode_message_parts(m, parts)
    return b"".join(parts)


def decode_message(buf: bytes, offset: int = 0) -> tuple[Message, int]:
    """Decode one message at ``offset``; returns it and the offset after it."""
    end = len(buf)
    if end - offset < _HEADER.size:
        raise RaftFormatError("raft message", offset, f"{end - offset} bytes, a header needs {_HEADER.size}")
    (version, mtype, flags, reserved, frm, to, term, index, log_term, commit, hint, n) = _HEADER.unpack_from(
        buf, offset
    )
    if version != MESSAGE_VERSION:
        raise RaftFormatError("raft message", offset, f"unknown version {version}")
    if mtype not in _TYPES:
        raise RaftFormatError("raft message", offset + 1, f"unknown type {mtype}")
    if flags & ~_KNOWN_FLAGS:
        raise RaftFormatError("raft message", offset + 2, f"unknown flags {flags:#x}")
    if reserved:
        raise RaftFormatError("raft message", offset + 3, f"reserved byte is {reserved}, not 0")
    pos = offset + _HEADER.size
    if n * _ENTRY.size > end - pos:
        raise RaftFormatError("raft message", pos, f"{n} entries cannot fit in {end - pos} bytes")
    if n and index + n > _MAX_U64:
        raise RaftFormatError("raft message", offset + 20, f"entry indices overflow after {index}")
    entries: list[Entry] = []
    unpack_entry = _ENTRY.unpack_from
    i = index
    for _ in range(n):
        if end - pos < _ENTRY.size:
            raise RaftFormatError("raft message", pos, "entry header past the end")
        eterm, length = unpack_entry(buf, pos)
        pos += _ENTRY.size
        if length > end - pos:
            raise RaftFormatError(
                "raft message", pos, f"entry of {length} bytes past the end ({end - pos} left)"
            )
        i += 1
        entries.append(Entry(eterm, i, bytes(buf[pos : pos + length])))
        pos += length
    snapshot = None
    if flags & FLAG_HAS_SNAPSHOT:
        if end - pos < _SNAPSHOT.size:
            raise RaftFormatError("raft message", pos, "snapshot header past the end")
        sindex, sterm, length = _SNAPSHOT.unpack_from(buf, pos)
        pos += _SNAPSHOT.size
        if length > end - pos:
            raise RaftFormatError("raft message", pos, f"snapshot of {length} bytes past the end")
        snapshot = Snapshot(sindex, sterm, bytes(buf[pos : pos + length]))
        pos += length
    m = Message(
        MsgType(mtype),
        frm,
        to,
        term,
        index=index,
        log_term=log_term,
        commit=commit,
        entries=entries,
        reject=bool(flags & FLAG_REJECT),
        reject_hint=hint,
        snapshot=snapshot,
        transfer=bool(flags & FLAG_TRANSFER),
        recovering=bool(flags & FLAG_RECOVERING),
    )
    return m, pos


def encode_hard_state(hs: HardState) -> bytes:
    body = _HARD_STATE.pack(HARD_STATE_VERSION, hs.term, hs.vote, hs.commit)
    return body + _CRC.pack(crc32c(body))


def decode_hard_state(buf: bytes, source: str = "hard state") -> HardState:
    if len(buf) != HARD_STATE_SIZE:
        raise RaftFormatError(source, 0, f"{len(buf)} bytes, expected {HARD_STATE_SIZE}")
    body = buf[: _HARD_STATE.size]
    (crc,) = _CRC.unpack_from(buf, _HARD_STATE.size)
    if crc32c(body) != crc:
        raise RaftFormatError(source, _HARD_STATE.size, "checksum mismatch")
    version, term, vote, commit = _HARD_STATE.unpack(body)
    if version != HARD_STATE_VERSION:
        raise RaftFormatError(source, 0, f"unknown version {version}")
    return HardState(term, vote, commit)


def encode_entry_header(term: int, kind: int) -> bytes:
    return _ENTRY_HEADER.pack(ENTRY_VERSION, term, kind)


def decode_entry_header(buf: bytes, source: str = "raft entry") -> tuple[int, int]:
    """(term, kind) of a stored entry whose header starts ``buf``."""
    if len(buf) < _ENTRY_HEADER.size:
        raise RaftFormatError(source, 0, f"{len(buf)} bytes, an entry header needs {_ENTRY_HEADER.size}")
    version, term, kind = _ENTRY_HEADER.unpack_from(buf, 0)
    if version != ENTRY_VERSION:
        raise RaftFormatError(source, 0, f"unknown version {version}")
    return term, kind
