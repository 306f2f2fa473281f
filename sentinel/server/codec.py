"""The request codec: a strict protobuf wire check before betterproto2 decodes a body.

betterproto2's parser is lenient: a length that claims more bytes than remain is cut short
(a CreateTopic name claiming 100 bytes with 3 present becomes ``abc``), ``ff ff ff`` parses
as an empty message, and invalid UTF-8 or a truncated varint escapes as an unexpected
exception (INTERNAL plus a traceback per request: any client could fill the log).

:func:`check_wire` walks the body against the message schema first: every tag is a
complete varint with a field number above 0 and a wire type protobuf defines (groups are
refused: no Sentinel message has one), every length fits in what remains, a known field
arrives with its type's wire type, string fields are valid UTF-8 and nested messages are
checked the same way. :class:`StrictProtoCodec` runs it, so any body that is not valid
protobuf becomes ``INVALID_ARGUMENT`` naming the field and byte, and is logged at most once
per :data:`LOG_INTERVAL` seconds.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from grpclib.const import Status
from grpclib.encoding.proto import ProtoCodec
from grpclib.exceptions import GRPCError

log = logging.getLogger(__name__)

#: At most one log line per this many seconds about rejected bodies (a client can send
#: malformed bodies as fast as it likes; the log must not grow with them).
LOG_INTERVAL = 10.0

_VARINT, _FIXED64, _LENGTH, _START_GROUP, _END_GROUP, _FIXED32 = 0, 1, 2, 3, 4, 5
#: A varint is at most 10 bytes (64 bits, 7 per byte).
_MAX_VARINT_BYTES = 10

_WIRE_TYPE_OF: dict[str, int] = {
    **dict.fromkeys(("int32", "int64", "uint32", "uint64", "sint32", "sint64", "bool", "enum"), _VARINT),
    **dict.fromkeys(("fixed64", "sfixed64", "double"), _FIXED64),
    **dict.fromkeys(("fixed32", "sfixed32", "float"), _FIXED32),
    **dict.fromkeys(("string", "bytes", "message", "map"), _LENGTH),
}


class MalformedMessage(ValueError):
    """A request body that is not valid protobuf for its message type."""


def _varint(data: bytes, position: int, what: str) -> tuple[int, int]:
    value = shift = 0
    end = min(len(data), position + _MAX_VARINT_BYTES)
    start = position
    while position < end:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
    raise MalformedMessage(f"truncated or overlong varint ({what}) at byte {start}")


def check_wire(data: bytes, message_type: Any, *, base: int = 0) -> None:
    """Raise :class:`MalformedMessage` unless ``data`` is a well-formed ``message_type``.

    ``message_type`` is a betterproto2 message class; ``base`` is the offset of ``data``
    in the outermost body, for the byte positions in messages."""
    meta = message_type._betterproto
    by_number = {field.number: (name, field) for name, field in meta.meta_by_field_name.items()}
    position, end = 0, len(data)
    while position < end:
        tag_at = position
        tag, position = _varint(data, position, "field tag")
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise MalformedMessage(f"field number 0 at byte {base + tag_at}")
        known = by_number.get(number)
        name = known[0] if known else f"#{number}"
        where = f"{message_type.__name__}.{name} at byte {base + tag_at}"
        if known is not None:
            field = known[1]
            expected = _WIRE_TYPE_OF.get(field.proto_type)
            packed = field.repeated and wire_type == _LENGTH
            if expected is not None and wire_type != expected and not packed:
                raise MalformedMessage(f"wrong wire type {wire_type} for {where}")
        if wire_type == _VARINT:
            _, position = _varint(data, position, where)
        elif wire_type in (_FIXED64, _FIXED32):
            position += 8 if wire_type == _FIXED64 else 4
            if position > end:
                raise MalformedMessage(f"truncated fixed-width value for {where}")
        elif wire_type == _LENGTH:
            length, position = _varint(data, position, f"length of {where}")
            if length > end - position:
                raise MalformedMessage(f"{where} claims {length} bytes, only {end - position} present")
            value = data[position : position + length]
            if known is not None:
                _check_value(value, known[1], known[0], message_type, base + position, where)
            position += length
        else:
            raise MalformedMessage(f"unsupported wire type {wire_type} for {where}")


def _check_value(value: bytes, field: Any, name: str, message_type: Any, at: int, where: str) -> None:
    if field.proto_type == "string":
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedMessage(f"invalid UTF-8 in {where} (byte {at + exc.start})") from None
    elif field.proto_type == "message" and field.map_meta is None:
        check_wire(value, message_type._betterproto.cls_by_field[name], base=at)


class _RateLimitedLog:
    """One warning per ``interval`` at most, counting the rejections in between."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._next = 0.0
        self._suppressed = 0

    def warning(self, message: str) -> None:
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return
        suppressed, self._suppressed = self._suppressed, 0
        self._next = now + self._interval
        more = f" ({suppressed} more since the last report)" if suppressed else ""
        log.warning("rejected a malformed request body: %s%s", message, more)


class StrictProtoCodec(ProtoCodec):
    """grpclib's protobuf codec with :func:`check_wire` in front of the decoder."""

    def __init__(self, log_interval: float = LOG_INTERVAL) -> None:
        self._log = _RateLimitedLog(log_interval)

    def decode(self, data: bytes, message_type: Any) -> Any:
        try:
            check_wire(data, message_type)
            return super().decode(data, message_type)
        except Exception as exc:
            message = str(exc) if isinstance(exc, MalformedMessage) else f"{type(exc).__name__}: {exc}"
            self._log.warning(message)
            raise GRPCError(Status.INVALID_ARGUMENT, f"malformed request body: {message}") from None


__all__ = ["LOG_INTERVAL", "MalformedMessage", "StrictProtoCodec", "check_wire"]
