"""CRC-framed records: the log format shared by the WAL and the manifest.

A frame is ``crc32 (u32 LE) | length (u32 LE) | payload``. The CRC (zlib's CRC-32)
covers the four length bytes and the payload, so a flipped length is caught as surely as
a flipped payload byte. Frames are appended back to back; there is no block padding.

Recovery reads frames until the first one that is incomplete (a torn write) or fails
its checksum. Everything from that point on is the "tail" that recovery drops: after a
crash only the last frame can be torn, and a corrupt frame in the middle makes every
later frame untrustworthy (their order relative to the lost one is unknown).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

import attrs

FRAME_HEADER = struct.Struct("<II")  # crc32, payload length
FRAME_HEADER_SIZE = FRAME_HEADER.size
# A frame larger than this is treated as garbage rather than allocated: no WAL or
# manifest record Sentinel writes comes near it (a record batch is capped far lower).
MAX_FRAME_PAYLOAD = 256 * 1024 * 1024
_U32 = struct.Struct("<I")


def frame(payload: bytes) -> bytes:
    """``crc32 | length | payload``. ValueError above ``MAX_FRAME_PAYLOAD``: a reader would
    take such a frame for garbage and drop it with everything after it."""
    size = len(payload)
    if size > MAX_FRAME_PAYLOAD:
        raise ValueError(f"payload of {size} bytes exceeds the {MAX_FRAME_PAYLOAD}-byte frame limit")
    length = _U32.pack(size)
    return _U32.pack(zlib.crc32(payload, zlib.crc32(length))) + length + payload


@attrs.frozen
class FrameScan:
    """The result of reading a framed log from start to finish."""

    payloads: list[bytes]
    valid_bytes: int  # length of the prefix made of whole, checksum-valid frames
    total_bytes: int
    # Why reading stopped before total_bytes (None when the whole input was valid).
    tail_error: str | None
    # True when reading stopped at an incomplete last frame (header or payload cut short:
    # a crash mid-append). A complete frame that fails its checksum, or an implausible
    # length, is NOT torn: it is corruption, even when it is the last frame.
    torn: bool = False

    @property
    def dropped_bytes(self) -> int:
        return self.total_bytes - self.valid_bytes


def iter_frames(data: bytes | memoryview) -> Iterator[tuple[int, bytes]]:
    """Yield ``(offset, payload)`` for each valid frame; stop silently at the tail.

    Use :func:`scan_frames` to learn why reading stopped.
    """
    scan = scan_frames(data)
    pos = 0
    for payload in scan.payloads:
        yield pos, payload
        pos += FRAME_HEADER_SIZE + len(payload)


def scan_frames(data: bytes | memoryview) -> FrameScan:
    view = memoryview(data)
    total = len(view)
    pos = 0
    payloads: list[bytes] = []
    error: str | None = None
    torn = False
    while pos < total:
        if total - pos < FRAME_HEADER_SIZE:
            error = f"torn frame header at byte {pos} ({total - pos} of {FRAME_HEADER_SIZE} bytes)"
            torn = True
            break
        crc, length = FRAME_HEADER.unpack_from(view, pos)
        if length > MAX_FRAME_PAYLOAD:
            error = f"implausible frame length {length} at byte {pos}"
            break
        start = pos + FRAME_HEADER_SIZE
        end = start + length
        if end > total:
            error = f"torn frame at byte {pos}: payload needs {length} bytes, {total - start} present"
            torn = True
            break
        actual = zlib.crc32(view[start:end], zlib.crc32(view[pos + 4 : start]))
        if actual != crc:
            error = f"checksum mismatch in frame at byte {pos}"
            break
        payloads.append(bytes(view[start:end]))
        pos = end
    return FrameScan(payloads=payloads, valid_bytes=pos, total_bytes=total, tail_error=error, torn=torn)
