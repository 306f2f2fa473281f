"""The peer link's wire format: length-prefixed, CRC'd frames between two brokers.

Every frame::

    u32 length (of the body) | u32 crc32c(body) | body
    body: u8 version | u8 kind | kind-specific

Kinds:

* HELLO (the first frame each side sends): ``u64 cluster | u32 from | u32 to`` — who is
  speaking, to whom, in which cluster; a mismatch closes the connection.
* RAFT: ``u32 count`` then ``count`` times ``u64 group | u32 length | message``
  (``sentinel.raft.format``): every Raft message queued for the peer, of every group,
  coalesced into one frame (one syscall, one CRC); then the frame's heartbeats, compacted::

      u32 n | n x ( u64 group | u8 type | u64 term | u64 commit )   # a heartbeat that changed
      u32 n | n x u64 group      # a heartbeat as the last one of its group on this connection
      u32 n | n x u64 group      # a heartbeat response likewise

  A plain heartbeat (or its response: no flags, nothing but term and commit) of a group whose
  term and commit have not moved since the last one on this connection travels as its group
  id alone, 8 bytes, as Redpanda does; an idle partition costs next to nothing per tick. The
  sender's and receiver's memory of "the last one" (``HeartbeatCodec``) lives and dies with
  one connection, whose bytes arrive in order, so both sides always agree.
* REQUEST: ``u64 request id | u16 method | payload``; REPLY: ``u64 request id | u8 ok |
  payload``: a small request/reply protocol between brokers (a follower forwarding a
  controller proposal to the leader, say). Payloads are the method's own encoding.

Frames are bounded (``MAX_FRAME_BYTES``): a reader never buffers more than that on a
length it has not checked, so a corrupt or hostile length cannot make it allocate
gigabytes. Decoding validates everything and raises FrameError naming the byte.
"""

from __future__ import annotations

import struct
from typing import Final

import attrs
from crc32c import crc32c

from sentinel.raft import format as raft_format
from sentinel.raft.messages import Message, MsgType

VERSION: Final = 2  # 2: compact heartbeats in RAFT frames
KIND_HELLO: Final = 1
KIND_RAFT: Final = 2
KIND_REQUEST: Final = 3
KIND_REPLY: Final = 4

# One Raft append carries up to 1 MiB by default; a frame carries many messages of many
# groups, and the encoder stops adding messages at the soft budget below.
MAX_FRAME_BYTES: Final = 64 * 1024 * 1024
FRAME_BUDGET_BYTES: Final = 4 * 1024 * 1024

_PREFIX = struct.Struct("<II")
_BODY_HEADER = struct.Struct("<BB")
_HELLO = struct.Struct("<QII")
_COUNT = struct.Struct("<I")
_ITEM = struct.Struct("<QI")
_REQUEST = struct.Struct("<QH")
_REPLY = struct.Struct("<QB")
_BEAT = struct.Struct("<QBQQ")
_GROUP = struct.Struct("<Q")
PREFIX_SIZE: Final = _PREFIX.size


@attrs.frozen
class Hello:
    cluster: int
    frm: int
    to: int


@attrs.frozen
class PeerRequest:
    request_id: int
    method: int
    payload: bytes


@attrs.frozen
class PeerReply:
    request_id: int
    ok: bool
    payload: bytes


RaftItems = list[tuple[int, Message]]
Frame = Hello | RaftItems | PeerRequest | PeerReply

_HEARTBEAT: Final = MsgType.HEARTBEAT
_HEARTBEAT_RESP: Final = MsgType.HEARTBEAT_RESP
_BEAT_TYPES: Final = frozenset({int(_HEARTBEAT), int(_HEARTBEAT_RESP)})


def _compactable(m: Message) -> bool:
    """A heartbeat or heartbeat response carrying nothing but its term and commit."""
    return (
        (m.type is _HEARTBEAT or m.type is _HEARTBEAT_RESP)
        and not (m.reject or m.transfer or m.recovering or m.entries or m.snapshot is not None)
        and m.index == 0
        and m.log_term == 0
        and m.reject_hint == 0
    )


class HeartbeatCodec:
    """One side's memory of the last heartbeat (and response) of each group on one
    connection: what the encoder sent, or what the decoder received. A new connection
    starts with a new codec on both sides."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: dict[tuple[int, int], tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self._last)


class FrameError(ValueError):
    def __init__(self, position: int, detail: str) -> None:
        self.position = position
        super().__init__(f"malformed peer frame at byte {position}: {detail}")


def _frame(body_parts: list[bytes]) -> list[bytes]:
    body = b"".join(body_parts)
    if len(body) > MAX_FRAME_BYTES:
        raise ValueError(f"a frame of {len(body)} bytes exceeds {MAX_FRAME_BYTES}")
    return [_PREFIX.pack(len(body), crc32c(body)), body]


def encode_hello(cluster: int, frm: int, to: int) -> bytes:
    return b"".join(_frame([_BODY_HEADER.pack(VERSION, KIND_HELLO), _HELLO.pack(cluster, frm, to)]))


def encode_raft(messages: list[tuple[int, Message]], beats: HeartbeatCodec | None = None) -> bytes:
    """One RAFT frame carrying ``(group, message)`` items (payloads joined once, here).

    With ``beats`` (the connection's encoder memory), plain heartbeats and responses go in
    the compact sections, as a bare group id when they repeat the last one of their group.
    The messages of a link all run from this node to the peer, so no heartbeat needs its
    ``frm``/``to``: the decoder takes them from the link."""
    parts = [_BODY_HEADER.pack(VERSION, KIND_RAFT), b""]
    pack_item = _ITEM.pack
    changed: list[bytes] = []
    same_beats: list[bytes] = []
    same_resps: list[bytes] = []
    last = beats._last if beats is not None else None
    count = 0
    for group, m in messages:
        if last is not None and _compactable(m):
            key = (group, int(m.type))
            now = (m.term, m.commit)
            if last.get(key) == now:
                (same_beats if m.type is _HEARTBEAT else same_resps).append(_GROUP.pack(group))
            else:
                last[key] = now
                changed.append(_BEAT.pack(group, int(m.type), m.term, m.commit))
            continue
        count += 1
        slot = len(parts)
        parts.append(b"")
        size = raft_format.encode_message_parts(m, parts)
        parts[slot] = pack_item(group, size)
    parts[1] = _COUNT.pack(count)
    for section in (changed, same_beats, same_resps):
        parts.append(_COUNT.pack(len(section)))
        parts.extend(section)
    return b"".join(_frame(parts))


def encode_request(request_id: int, method: int, payload: bytes) -> bytes:
    return b"".join(
        _frame([_BODY_HEADER.pack(VERSION, KIND_REQUEST), _REQUEST.pack(request_id, method), payload])
    )


def encode_reply(request_id: int, ok: bool, payload: bytes) -> bytes:
    return b"".join(
        _frame([_BODY_HEADER.pack(VERSION, KIND_REPLY), _REPLY.pack(request_id, int(ok)), payload])
    )


def parse_prefix(prefix: bytes) -> tuple[int, int]:
    """(body length, crc) of a frame prefix; FrameError if the length is out of bounds."""
    length, crc = _PREFIX.unpack(prefix)
    if length < _BODY_HEADER.size or length > MAX_FRAME_BYTES:
        raise FrameError(0, f"frame length {length} is outside [{_BODY_HEADER.size}, {MAX_FRAME_BYTES}]")
    return length, crc


def decode_body(
    body: bytes, crc: int, beats: HeartbeatCodec | None = None, *, frm: int = 0, to: int = 0
) -> Frame:
    """A frame body: a Hello, a RAFT frame's ``(group, Message)`` items, a request or a reply.

    A RAFT frame's compact heartbeats are expanded with ``beats`` (the connection's decoder
    memory) into messages from ``frm`` to ``to`` (the link's peer and this node), after the
    frame's other messages; a repeat of a heartbeat the decoder never saw is a FrameError."""
    if crc32c(body) != crc:
        raise FrameError(PREFIX_SIZE, "checksum mismatch")
    version, kind = _BODY_HEADER.unpack_from(body, 0)
    if version != VERSION:
        raise FrameError(PREFIX_SIZE, f"unknown version {version}")
    pos = _BODY_HEADER.size
    if kind == KIND_HELLO:
        if len(body) - pos != _HELLO.size:
            raise FrameError(PREFIX_SIZE + pos, f"hello of {len(body) - pos} bytes, expected {_HELLO.size}")
        return Hello(*_HELLO.unpack_from(body, pos))
    if kind == KIND_REQUEST:
        if len(body) - pos < _REQUEST.size:
            raise FrameError(PREFIX_SIZE + pos, "request header past the end")
        request_id, method = _REQUEST.unpack_from(body, pos)
        return PeerRequest(request_id, method, body[pos + _REQUEST.size :])
    if kind == KIND_REPLY:
        if len(body) - pos < _REPLY.size:
            raise FrameError(PREFIX_SIZE + pos, "reply header past the end")
        request_id, ok = _REPLY.unpack_from(body, pos)
        if ok > 1:
            raise FrameError(PREFIX_SIZE + pos + 8, f"reply status {ok} is neither 0 nor 1")
        return PeerReply(request_id, bool(ok), body[pos + _REPLY.size :])
    if kind != KIND_RAFT:
        raise FrameError(PREFIX_SIZE + 1, f"unknown frame kind {kind}")
    if len(body) - pos < _COUNT.size:
        raise FrameError(PREFIX_SIZE + pos, "message count past the end")
    (count,) = _COUNT.unpack_from(body, pos)
    pos += _COUNT.size
    if count * _ITEM.size > len(body) - pos:
        raise FrameError(PREFIX_SIZE + pos, f"{count} messages cannot fit in {len(body) - pos} bytes")
    out: RaftItems = []
    view = memoryview(body)
    for _ in range(count):
        if len(body) - pos < _ITEM.size:
            raise FrameError(PREFIX_SIZE + pos, "message header past the end")
        group, size = _ITEM.unpack_from(body, pos)
        pos += _ITEM.size
        end = pos + size
        if end > len(body):
            raise FrameError(PREFIX_SIZE + pos, f"message of {size} bytes past the end")
        try:
            m, used = raft_format.decode_message(view[pos:end])  # type: ignore[arg-type]
        except raft_format.RaftFormatError as exc:
            raise FrameError(PREFIX_SIZE + pos + exc.position, str(exc)) from None
        if used != size:
            raise FrameError(PREFIX_SIZE + pos + used, f"{size - used} bytes after the message")
        out.append((group, m))
        pos = end
    last = beats._last if beats is not None else {}
    for section in range(3):
        if len(body) - pos < _COUNT.size:
            raise FrameError(PREFIX_SIZE + pos, "heartbeat count past the end")
        (n,) = _COUNT.unpack_from(body, pos)
        pos += _COUNT.size
        item = _BEAT if section == 0 else _GROUP
        if n * item.size > len(body) - pos:
            raise FrameError(PREFIX_SIZE + pos, f"{n} heartbeats cannot fit in {len(body) - pos} bytes")
        for _ in range(n):
            if section == 0:
                group, type_, term, commit = _BEAT.unpack_from(body, pos)
                if type_ not in _BEAT_TYPES:
                    raise FrameError(PREFIX_SIZE + pos + 8, f"message type {type_} is not a heartbeat")
                last[(group, type_)] = (term, commit)
            else:
                (group,) = _GROUP.unpack_from(body, pos)
                type_ = int(_HEARTBEAT if section == 1 else _HEARTBEAT_RESP)
                previous = last.get((group, type_))
                if previous is None:
                    raise FrameError(PREFIX_SIZE + pos, f"a repeated heartbeat of group {group} never sent")
                term, commit = previous
            out.append((group, Message(MsgType(type_), frm, to, term, commit=commit)))
            pos += item.size
    if pos != len(body):
        raise FrameError(PREFIX_SIZE + pos, f"{len(body) - pos} bytes after the last message")
    return out
