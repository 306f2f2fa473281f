"""A TCP proxy that cuts a connection in place of the first ProduceResponse going through it:
the broker has appended (and, with acks=all, committed) the batch, the client only sees its
connection lost and retries. Used to show idempotent produce stores a retried batch once.

It reads the HTTP/2 frames going both ways (HPACK-decoding the client's header blocks to spot
Produce calls) and, for the first Produce call answered with a message, closes both
connections when the message (a DATA frame) arrives instead of forwarding it. (An error
answer carries no message: a new partition may answer UNAVAILABLE while it elects its
leader, and that is passed on as it is.) ``on_cut`` runs at the cut, before the connections
close: a test kills the broker there to make the retry meet a new leader.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Iterator

import hpack

PRODUCE_PATH = "/sentinel.v1.Sentinel/Produce"
CLIENT_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = struct.Struct(">3sBBI")  # length (24 bits), type, flags, stream id (31 bits)
DATA, HEADERS, CONTINUATION = 0x0, 0x1, 0x9
END_HEADERS, PADDED, PRIORITY = 0x4, 0x8, 0x20


class _Frames:
    """One direction of an HTTP/2 connection as frames: bytes in, complete frames out."""

    def __init__(self, preface: bytes = b"") -> None:
        self._buffer = bytearray()
        self._preface = len(preface)

    def feed(self, data: bytes) -> Iterator[tuple[int, int, int, bytes, bytes]]:
        """(type, flags, stream id, payload, raw frame) of each frame ``data`` completes;
        the preface, if any, comes out as a raw frame of type -1."""
        self._buffer += data
        if self._preface:
            if len(self._buffer) < self._preface:
                return
            raw = bytes(self._buffer[: self._preface])
            del self._buffer[: self._preface]
            self._preface = 0
            yield -1, 0, 0, b"", raw
        while len(self._buffer) >= FRAME_HEADER.size:
            length_bytes, frame_type, flags, stream = FRAME_HEADER.unpack_from(self._buffer)
            end = FRAME_HEADER.size + int.from_bytes(length_bytes, "big")
            if len(self._buffer) < end:
                return
            raw = bytes(self._buffer[:end])
            del self._buffer[:end]
            yield frame_type, flags, stream & 0x7FFFFFFF, raw[FRAME_HEADER.size :], raw


def _header_block(frame_type: int, flags: int, payload: bytes) -> bytes:
    """The header block fragment of a HEADERS frame (padding and priority removed)."""
    if frame_type != HEADERS:
        return payload
    start, end = 0, len(payload)
    if flags & PADDED:
        start, end = 1, end - payload[0]
    if flags & PRIORITY:
        start += 5
    return payload[start:end]


class ProduceAnswerCutter:
    """A TCP proxy to ``upstream`` that cuts the connection in place of delivering the first
    ProduceResponse that goes through it; everything else passes unchanged."""

    def __init__(self, upstream: str, on_cut: Callable[[], None] | None = None) -> None:
        host, port = upstream.rsplit(":", 1)
        self.on_cut = on_cut
        self.upstream = (host, int(port))
        self.address = ""
        self.produce_calls = 0  # Produce calls seen, on every connection
        self.cut = False
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> ProduceAnswerCutter:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            broker_reader, broker_writer = await asyncio.open_connection(*self.upstream)
        except OSError:  # the broker is down (killed by a test): so is this connection
            client_writer.transport.abort()
            return
        produce_streams: set[int] = set()
        done = asyncio.Event()

        def close_both() -> None:
            client_writer.transport.abort()
            broker_writer.transport.abort()
            done.set()

        async def from_client() -> None:
            frames = _Frames(CLIENT_PREFACE)
            decoder = hpack.Decoder()
            block = bytearray()
            while data := await client_reader.read(65536):
                for frame_type, flags, stream, payload, _ in frames.feed(data):
                    if frame_type in (HEADERS, CONTINUATION):
                        block += _header_block(frame_type, flags, payload)
                        if flags & END_HEADERS:
                            headers = dict(decoder.decode(bytes(block)))
                            block.clear()
                            if headers.get(":path") == PRODUCE_PATH:
                                produce_streams.add(stream)
                                self.produce_calls += 1
                broker_writer.write(data)  # parsed first: a Produce stream is known before its answer
                await broker_writer.drain()
            close_both()

        async def from_broker() -> None:
            frames = _Frames()
            while data := await broker_reader.read(65536):
                out = bytearray()
                for frame_type, _, stream, _, raw in frames.feed(data):
                    if not self.cut and stream in produce_streams and frame_type == DATA:
                        self.cut = True  # a ProduceResponse: the batch is appended
                        if self.on_cut is not None:
                            self.on_cut()
                        client_writer.write(bytes(out))
                        close_both()
                        return
                    out += raw
                client_writer.write(bytes(out))
                await client_writer.drain()
            close_both()

        tasks = [asyncio.ensure_future(from_client()), asyncio.ensure_future(from_broker())]
        try:
            await done.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            close_both()
