"""The transport the client's grpclib connections write to (``sentinel.client.connection``):
the writes of one event-loop step leave as one, in order; nothing is written once the
transport is closing; ``close`` writes what was gathered first, ``abort`` drops it."""

from __future__ import annotations

import asyncio
from typing import Any

from client_fakes import FakeSentinel, run

from sentinel.client import Producer
from sentinel.client.connection import _LiveTransport
from sentinel.server.writes import GATHER_FROM


class RecordingTransport:
    """The few transport methods grpclib uses, recording what reaches them."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.events.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True
        self.events.append("close")

    def abort(self) -> None:
        self.closing = True
        self.events.append("abort")

    def get_extra_info(self, name: str) -> str:
        return f"info {name}"


def live(transport: RecordingTransport) -> _LiveTransport:
    return _LiveTransport(transport)  # type: ignore[arg-type]


FRAME = b"D" * GATHER_FROM  # a full DATA frame


def test_the_writes_of_one_loop_step_leave_together_at_the_next() -> None:
    async def scenario() -> None:
        raw = RecordingTransport()
        transport = live(raw)
        transport.write(b"HEADERS")  # small, nothing gathered: at once
        assert raw.events == [b"HEADERS"]
        transport.write(bytearray(FRAME))  # a full frame: gathering starts
        transport.write(memoryview(FRAME))
        transport.write(b"WINDOW_UPDATE")  # after a gathered write: in order, with it
        assert raw.events == [b"HEADERS"]  # nothing more before control returns to the loop
        await asyncio.sleep(0)
        assert raw.events == [b"HEADERS", FRAME + FRAME + b"WINDOW_UPDATE"]
        transport.write(FRAME)
        await asyncio.sleep(0)
        assert raw.events == [b"HEADERS", FRAME + FRAME + b"WINDOW_UPDATE", FRAME]
        assert transport.get_extra_info("peername") == "info peername"  # the rest passes through

    asyncio.run(scenario())


def test_a_small_write_with_nothing_gathered_is_not_held_back_by_a_busy_loop() -> None:
    # A consumer working through a buffered answer may not yield to the loop for a while:
    # the WINDOW_UPDATE that lets the broker send the next answer must not wait for it.
    async def scenario() -> None:
        raw = RecordingTransport()
        transport = live(raw)
        transport.write(b"WINDOW_UPDATE")
        transport.write(b"HEADERS+DATA of a fetch")
        assert raw.events == [b"WINDOW_UPDATE", b"HEADERS+DATA of a fetch"]

    asyncio.run(scenario())


def test_close_writes_what_was_gathered_first_and_abort_drops_it() -> None:
    async def scenario() -> None:
        raw = RecordingTransport()
        transport = live(raw)
        transport.write(FRAME)
        transport.write(b"GOAWAY")
        transport.close()
        transport.write(b"too late")  # closing: dropped
        await asyncio.sleep(0)
        assert raw.events == [FRAME + b"GOAWAY", "close"]

        raw = RecordingTransport()
        transport = live(raw)
        transport.write(FRAME)
        transport.write(b"RST_STREAM")
        transport.abort()
        await asyncio.sleep(0)
        assert raw.events == ["abort"]

    asyncio.run(scenario())


def test_writes_gathered_before_the_transport_started_closing_are_not_written() -> None:
    async def scenario() -> None:
        raw = RecordingTransport()
        transport = live(raw)
        transport.write(FRAME)
        raw.closing = True  # the connection was lost meanwhile: asyncio would drop it (and warn)
        await asyncio.sleep(0)
        assert raw.events == []

    asyncio.run(scenario())


def test_a_mebibyte_request_reaches_the_broker_whole() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("big", 1)
        value = bytes(range(256)) * 4000  # 1,024,000 bytes: 63 DATA frames of 16 KiB
        async with Producer(fake.address) as producer:
            metadata = await producer.send_and_wait("big", value, partition=0)
            second = await producer.send_and_wait("big", b"after", partition=0)
        assert (metadata.offset, second.offset) == (0, 1)
        assert [v for _, _, v in fake.topics["big"][0].records()] == [value, b"after"]

    run(scenario)
