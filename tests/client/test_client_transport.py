"""The transport the client's grpclib connections write to (``sentinel.client.connection``):
the writes of one event-loop step leave as one, in order; nothing is written once the
transport is closing; ``close`` writes what was gathered first, ``abort`` drops it."""

from __future__ import annotations

import asyncio
from typing import Any

from client_fakes import FakeSentinel, run
from hyperframe.frame import DataFrame, HeadersFrame, WindowUpdateFrame

from sentinel.client import Producer
from sentinel.client.connection import GATHER_FROM, _LiveTransport, ends_a_stream, opens_a_message


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


def headers(*, end_stream: bool) -> bytes:
    frame = HeadersFrame(1)
    frame.data = b"\x88"  # HPACK: ":status: 200"
    frame.flags.add("END_HEADERS")
    if end_stream:
        frame.flags.add("END_STREAM")
    return bytes(frame.serialize())


def data(payload: bytes, *, end_stream: bool = False) -> bytes:
    frame = DataFrame(1)
    frame.data = payload
    if end_stream:
        frame.flags.add("END_STREAM")
    return bytes(frame.serialize())


WINDOW_UPDATE = bytes(WindowUpdateFrame(0, window_increment=1024).serialize())


def test_only_a_headers_frame_whose_stream_goes_on_opens_a_message() -> None:
    assert opens_a_message(headers(end_stream=False))
    assert not opens_a_message(headers(end_stream=True))  # a trailers-only answer: complete
    assert not opens_a_message(data(b"x"))
    assert not opens_a_message(WINDOW_UPDATE)
    assert not opens_a_message(b"\x00\x00")  # too short to be a frame header


def test_the_end_of_a_stream_is_the_last_frame_of_a_write_with_end_stream() -> None:
    assert ends_a_stream(data(b"x", end_stream=True))
    assert ends_a_stream(headers(end_stream=True))
    assert ends_a_stream(headers(end_stream=False) + data(b"x", end_stream=True))
    assert not ends_a_stream(data(b"x", end_stream=True) + headers(end_stream=False))
    assert not ends_a_stream(data(b"x"))
    assert not ends_a_stream(data(b"x", end_stream=True)[:-1])  # its last frame is not whole


def test_a_message_opened_by_headers_leaves_whole_at_its_end() -> None:
    async def scenario() -> None:
        raw = RecordingTransport()
        transport = live(raw)
        opening, body, trailers = headers(end_stream=False), data(b"answer"), headers(end_stream=True)
        transport.write(opening)
        transport.write(body)
        assert raw.events == []
        transport.write(trailers)  # the stream ends: out at once, not at the loop's next step
        assert raw.events == [opening + body + trailers]
        await asyncio.sleep(0)
        assert raw.events == [opening + body + trailers]
        transport.write(WINDOW_UPDATE)  # nothing gathered, opens nothing: at once
        whole = headers(end_stream=False) + data(b"request", end_stream=True)
        transport.write(whole)  # opens and ends a stream: at once
        assert raw.events[1:] == [WINDOW_UPDATE, whole]

    asyncio.run(scenario())


def test_an_unfinished_message_leaves_at_the_next_step_of_the_loop() -> None:
    async def scenario() -> None:
        raw = RecordingTransport()
        transport = live(raw)
        opening, body = headers(end_stream=False), data(b"first of a stream of answers")
        transport.write(opening)
        transport.write(body)
        assert raw.events == []
        await asyncio.sleep(0)
        assert raw.events == [opening + body]

    asyncio.run(scenario())


def test_large_requests_of_one_step_leave_together_at_the_next() -> None:
    async def scenario() -> None:
        raw = RecordingTransport()
        transport = live(raw)
        first = [headers(end_stream=False), data(bytes(GATHER_FROM), end_stream=True)]
        second = [headers(end_stream=False), data(b"small", end_stream=True)]
        for write in (*first, *second):
            transport.write(write)
        assert raw.events == []  # a large request's end does not send the step's writes
        await asyncio.sleep(0)
        assert raw.events == [b"".join((*first, *second))]

    asyncio.run(scenario())
