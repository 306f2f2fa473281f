"""The writes of one HTTP/2 connection, gathered so a message's frames leave together.

grpclib writes each HTTP/2 frame as it makes it, each a ``send`` system call of its own: a
unary call's request is a HEADERS frame then a DATA frame per 16 KiB, its answer HEADERS,
DATA and the trailers' HEADERS. On loopback a ``send`` runs the receiver's side of TCP in
the sender's system call, and wakes the receiving thread if it sleeps: the first frame of
a message woke the receiver, which took that frame alone, went back to sleep and was woken
again for the next (measured with ``strace`` over 2,000 sequential produce calls: the
client made 2 sends and 2 receives a call, the broker 5 sends, ~6 receives and ~13
epoll waits).

``GatheringTransport`` wraps the asyncio transport grpclib writes to. Gathering starts at
a write that opens a message whose frames follow (a HEADERS frame without END_STREAM) or,
on the client, at a large one (``GATHER_FROM`` bytes: a full DATA frame); the writes made
until control returns to the event loop join it, in order, and leave as one write at the
loop's next step (``call_soon``): what the frames would have become on the wire anyway.
Two exceptions, both measured:

* A small message leaves as soon as it is whole (a write that ends its stream, nothing
  large gathered): a consumer's fetch, written in a task's step, must not wait for the
  rest of the loop's step, the application's work on the records before it (consume fell
  from ~1.5-1.9M to ~0.84-1.08M records/s). Large requests still wait for the step's end:
  the producer's 1 MiB requests of one step leave together (flushing each at its end cost
  the producer 0.12-0.23 µs of CPU a record).
* The broker's transport (``gather_large=False``) sends a large write at once, with what
  was gathered before it: a fetch's answer streams out frame by frame as it is made.

Any other write with nothing gathered goes out at once — above all a WINDOW_UPDATE, which
lets the peer go on sending, and which a consumer working through a buffered answer
without yielding to the loop would otherwise hold back for milliseconds (consume fell from
~2.0M to ~1.25M records/s when every write was gathered). ``close`` writes what is
gathered first; ``abort`` drops it, as asyncio's does.
"""

from __future__ import annotations

import asyncio
from typing import Final

# The size of a write from which the writes of an event-loop step are gathered: a DATA
# frame of HTTP/2's default 16 KiB size is one.
GATHER_FROM: Final = 16 * 1024
_FRAME_HEADER_BYTES: Final = 9
_DATA: Final = 0x0
_HEADERS: Final = 0x1
_END_STREAM: Final = 0x1


def opens_a_message(data: bytes | bytearray | memoryview) -> bool:
    """``data`` starts with a HEADERS frame whose stream goes on (frames of the message, or
    its trailers, follow)."""
    return len(data) >= _FRAME_HEADER_BYTES and data[3] == _HEADERS and not data[4] & _END_STREAM


def ends_a_stream(data: bytes | bytearray | memoryview) -> bool:
    """The last whole frame of ``data`` ends its stream (END_STREAM on a DATA or HEADERS
    frame): a request's or an answer's last frame."""
    position, end, last = 0, len(data), -1
    while position + _FRAME_HEADER_BYTES <= end:
        last = position
        position += _FRAME_HEADER_BYTES + int.from_bytes(data[position : position + 3], "big")
    return (
        last >= 0
        and position == end
        and data[last + 3] in (_DATA, _HEADERS)
        and bool(data[last + 4] & _END_STREAM)
    )


class GatheringTransport:
    """An asyncio transport whose writes are gathered as the module docstring says."""

    __slots__ = ("_gathered", "_holds_large", "_large", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, *, gather_large: bool = True) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._gathered: list[bytes | bytearray | memoryview] | None = None
        # False: a large write goes at once, with what is gathered before it (the broker's
        # answers to fetches stream out frame by frame, as the consumer takes them in).
        self._large = gather_large
        # What is gathered holds a large write: it waits for the loop's next step even when a
        # stream ends (the requests of one step leave in one write).
        self._holds_large = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        gathered = self._gathered
        large = len(data) >= GATHER_FROM
        if gathered is not None:
            gathered.append(data)
            if large:
                if not self._large:
                    self._flush()  # an answer's frames stream out as they are made
                else:
                    self._holds_large = True
            elif not self._holds_large and ends_a_stream(data):
                self._flush()  # a small message is whole: nothing to wait for
        elif not (opens_a_message(data) or (large and self._large)) or (not large and ends_a_stream(data)):
            self._transport.write(data)
        else:
            self._gathered = [data]
            self._holds_large = large
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        gathered, self._gathered = self._gathered, None
        if gathered:
            self._transport.write(gathered[0] if len(gathered) == 1 else b"".join(gathered))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._gathered = None
        self._transport.abort()

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)
