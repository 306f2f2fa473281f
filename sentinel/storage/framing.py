"""CRC-framed records: the log format shared by the WAL and the manifest.

A frame is ``crc32 (u32 LE) | length (u32 LE) | payload``. The CRC (zlib's CRC-32)
covers the four length bytes and the payload, so a flipped length is caught as surely as
a flipped payload byte. Frames are appended back to back; there is no block padding.

:func:`scan_frames` reads frames until the first one that is incomplete or fails its
checksum, and classifies what stops it, because recovery must tell the two apart:

- a **torn tail**: the rest of the input is one incomplete frame (its header, or fewer
  payload bytes than its length says: a crash mid-append), or zero bytes only from the
  frame boundary to the end (a file system that extended the file but never wrote the
  data: a power loss under a lazy sync). Nothing valid can follow a torn tail;
- anything else is **damage**: a complete frame whose checksum fails (even the last one),
  an implausible length, nonzero garbage, and any bad frame that a complete,
  checksum-valid frame follows (a flipped length bit can make a frame in the middle look
  incomplete; a crash can only cut the last one). The valid frames found after the damage
  are returned too, so the caller can say what a truncation there would lose.

Zeros never form a valid frame (the CRC-32 of a zero length is 0x2144DF1C, not 0), so a
zero-filled tail cannot hide a record.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from typing import NamedTuple

import attrs

FRAME_HEADER = struct.Struct("<II")  # crc32, payload length
FRAME_HEADER_SIZE = FRAME_HEADER.size
# A frame larger than this is treated as garbage rather than allocated: no WAL or
# manifest record Sentinel writes comes near it (a record batch is capped far lower).
MAX_FRAME_PAYLOAD = 256 * 1024 * 1024
_U32 = struct.Struct("<I")
# How many bytes the search for valid frames after damage may checksum (see _Search): about
# 0.2 s of CRC-32, many times what finding the next frame after a bad length field needs.
SEARCH_CHECKSUM_BYTES = 256 * 1024 * 1024


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
    # True when what stopped reading is a torn tail (module docstring): an incomplete last
    # frame or a zero-filled end, with no valid frame after it. False for damage.
    torn: bool = False
    # ``(offset, payload)`` of the complete, checksum-valid frames after the damage, in
    # order: records a truncation at ``valid_bytes`` would lose. Empty for a torn tail.
    following: tuple[tuple[int, bytes], ...] = ()

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
    run = _read_frames(view, 0)
    pos, error = run.end, run.error
    torn = False
    following: tuple[tuple[int, bytes], ...] = ()
    if error is not None:
        if _all_zero(view[pos:]):
            error = f"zero-filled tail of {total - pos} bytes at byte {pos}"
            torn = True
        else:
            search = _Search(view)
            following = tuple(search.frames_after(pos + 1))
            torn = run.cut_short and not following
            if search.gave_up is not None and not following:
                error += f" (no valid frame follows up to byte {search.gave_up}; not searched further)"
    return FrameScan(
        payloads=run.payloads,
        valid_bytes=pos,
        total_bytes=total,
        tail_error=error,
        torn=torn,
        following=following,
    )


class _Run(NamedTuple):
    """Consecutive valid frames: their payloads, where they end, why reading stopped
    (None: at the end of the input), and whether it stopped at a frame the end cut short."""

    payloads: list[bytes]
    end: int
    error: str | None
    cut_short: bool


def _read_frames(view: memoryview, pos: int) -> _Run:
    total = len(view)
    payloads: list[bytes] = []
    while pos < total:
        if total - pos < FRAME_HEADER_SIZE:
            error = f"torn frame header at byte {pos} ({total - pos} of {FRAME_HEADER_SIZE} bytes)"
            return _Run(payloads, pos, error, cut_short=True)
        crc, length = FRAME_HEADER.unpack_from(view, pos)
        if length > MAX_FRAME_PAYLOAD:
            return _Run(payloads, pos, f"implausible frame length {length} at byte {pos}", cut_short=False)
        start = pos + FRAME_HEADER_SIZE
        end = start + length
        if end > total:
            error = f"torn frame at byte {pos}: payload needs {length} bytes, {total - start} present"
            return _Run(payloads, pos, error, cut_short=True)
        if zlib.crc32(view[start:end], zlib.crc32(view[pos + 4 : start])) != crc:
            return _Run(payloads, pos, f"checksum mismatch in frame at byte {pos}", cut_short=False)
        payloads.append(bytes(view[start:end]))
        pos = end
    return _Run(payloads, pos, None, cut_short=False)


class _Search:
    """Finds the complete, checksum-valid frames after damage: tries each byte offset as a
    frame start, follows the frames chained after a hit, and searches again past the next
    damage.

    A candidate (an offset whose length field fits in the input) costs a checksum over its
    claimed length, so checking every candidate in a span of random bytes (compressed
    records) grows with the cube of the span: an 8 MiB torn frame took 7 s. The search
    stops after checksumming ``SEARCH_CHECKSUM_BYTES`` and records where (``gave_up``);
    what it did not reach counts as holding nothing. Offsets are tried in order, so the
    case the search exists for, a bad length field in a frame followed by ordinary frames,
    is settled within one frame of the damage, long before the budget runs out (in a WAL
    segment, which the memtable size bounds, candidates cost a few KiB per offset).
    """

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._budget = SEARCH_CHECKSUM_BYTES
        self.gave_up: int | None = None

    def frames_after(self, pos: int) -> Iterator[tuple[int, bytes]]:
        view = self._view
        total = len(view)
        unpack = FRAME_HEADER.unpack_from
        crc32 = zlib.crc32
        last_header = total - FRAME_HEADER_SIZE
        while pos <= last_header:
            crc, length = unpack(view, pos)
            body = pos + FRAME_HEADER_SIZE
            if body + length > total:
                pos += 1
                continue
            self._budget -= length
            if self._budget < 0:
                self.gave_up = pos
                return
            if crc32(view[body : body + length], crc32(view[pos + 4 : body])) != crc:
                pos += 1
                continue
            run = _read_frames(view, pos)
            for payload in run.payloads:
                yield pos, payload
                pos += FRAME_HEADER_SIZE + len(payload)
            if run.error is None:
                return
            pos = run.end + 1


def _all_zero(view: memoryview) -> bool:
    tail = view.tobytes()
    return len(tail) > 0 and tail.count(0) == len(tail)
