"""Idempotent produce against a real ``sentinel run``: the connection is cut after the broker
appended a produce request but before its answer reaches the producer, the producer retries,
and the partition holds every record exactly once (without idempotence: twice, which is how
these tests show they can tell).

A small TCP proxy stands between the producer and the broker. It reads the HTTP/2 frames
going both ways (HPACK-decoding the client's header blocks to spot Produce calls) and, for
the first Produce call answered with a message, closes both connections when the message
(a DATA frame) arrives instead of forwarding it: the broker sends a ProduceResponse only
once the batch is committed, so the cut comes after the append, and the client just sees
its connection lost. (An error answer carries no message: a new partition may answer
UNAVAILABLE while it elects its leader, and that is passed on as it is.)
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator
from pathlib import Path

import hpack
import pytest
from broker_process import BrokerProcess, sentinel_command, subprocess_env
from fault_support import read_partition

from sentinel.client import Admin, Producer

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

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
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
        broker_reader, broker_writer = await asyncio.open_connection(*self.upstream)
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


def values(count: int, tag: bytes) -> list[bytes]:
    return [tag + b" %05d " % i + b"x" * 80 for i in range(count)]


async def produce_through_cutter(address: str, topic: str, idempotent: bool) -> tuple[list[bytes], int]:
    """Send numbered records through a cutting proxy; (what was sent, Produce calls seen)."""
    sent = values(2000, topic.encode())
    async with ProduceAnswerCutter(address) as cutter:
        # batch_size 2 KiB: requests of up to five batches, several in flight, so the real
        # partition checks requests of several batches from a producer it knows.
        async with Producer(
            cutter.address, batch_size=2048, retry_backoff_ms=20, enable_idempotence=idempotent
        ) as producer:
            futures = [await producer.send(topic, value, partition=0) for value in sent]
            offsets = [(await future).offset for future in futures]
        assert cutter.cut, "the proxy never cut a Produce answer"
        assert offsets == sorted(offsets)
        if idempotent:
            assert offsets == list(range(len(sent)))  # the retry got the original offsets
        return sent, cutter.produce_calls


@pytest.mark.slow
def test_a_produce_whose_answer_is_cut_off_is_retried_and_stored_once(broker: BrokerProcess) -> None:
    async def main() -> None:
        async with Admin(broker.address) as admin:
            for topic in ("idempotent", "at-least-once"):
                await admin.create_topic(topic, 1)
        sent, calls = await produce_through_cutter(broker.address, "idempotent", idempotent=True)
        assert calls >= 2
        stored = [value for _, value in await read_partition(broker.address, "idempotent", 0)]
        assert stored == sent  # every record once, in send order

        sent, _ = await produce_through_cutter(broker.address, "at-least-once", idempotent=False)
        stored = [value for _, value in await read_partition(broker.address, "at-least-once", 0)]
        assert len(stored) > len(sent) and set(stored) == set(sent)  # the first request twice

    asyncio.run(main())


@pytest.mark.slow
def test_sentinel_produce_is_idempotent_unless_told_otherwise(broker: BrokerProcess, tmp_path: Path) -> None:
    async def cli(topic: str, *flags: str) -> str:
        async with ProduceAnswerCutter(broker.address) as cutter:
            command = sentinel_command(
                "produce",
                "--broker",
                cutter.address,
                "--topic",
                topic,
                "--message",
                "m",
                "--count",
                "50",
                *flags,
            )
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=subprocess_env(),
            )
            out, err = await asyncio.wait_for(process.communicate(), 60)
            assert process.returncode == 0, err.decode()
            assert cutter.cut
        return out.decode()

    async def main() -> None:
        assert "partition 0: offsets 0..49" in await cli("cli-default")
        assert len(await read_partition(broker.address, "cli-default", 0)) == 50
        assert "partition 0: offsets 50..99" in await cli("cli-plain", "--no-idempotence")
        assert len(await read_partition(broker.address, "cli-plain", 0)) == 100

    asyncio.run(main())
