"""Gathered HTTP/2 writes (``sentinel.server.writes``): a message's frames leave in one write
at the event loop's next step; a write that opens nothing goes at once."""

from __future__ import annotations

import asyncio
from typing import Any

from hyperframe.frame import DataFrame, HeadersFrame, WindowUpdateFrame

from sentinel.server.writes import GATHER_FROM, GatheringTransport, ends_a_stream, opens_a_message


class RecordingTransport:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def write(self, data: bytes) -> None:
        self.events.append(bytes(data))

    def close(self) -> None:
        self.events.append("close")

    def abort(self) -> None:
        self.events.append("abort")


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
        transport = GatheringTransport(raw)  # type: ignore[arg-type]
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
        transport = GatheringTransport(raw)  # type: ignore[arg-type]
        opening, body = headers(end_stream=False), data(b"first of a stream of answers")
        transport.write(opening)
        transport.write(body)
        assert raw.events == []
        await asyncio.sleep(0)
        assert raw.events == [opening + body]

    asyncio.run(scenario())


def test_without_gathering_large_writes_a_full_frame_goes_at_once_with_what_came_before() -> None:
    async def scenario() -> None:
        raw = RecordingTransport()
        transport = GatheringTransport(raw, gather_large=False)  # type: ignore[arg-type]
        opening, frame = headers(end_stream=False), data(bytes(GATHER_FROM))
        transport.write(opening)
        transport.write(frame)  # an answer's frames stream out as they are made
        assert raw.events == [opening + frame]
        transport.write(frame)
        transport.write(headers(end_stream=True))
        assert raw.events == [opening + frame, frame, headers(end_stream=True)]

    asyncio.run(scenario())


def test_a_full_data_frame_starts_gathering_and_close_writes_the_gathered_first() -> None:
    async def scenario() -> None:
        raw = RecordingTransport()
        transport = GatheringTransport(raw)  # type: ignore[arg-type]
        big = data(bytes(GATHER_FROM))
        transport.write(big)
        transport.write(WINDOW_UPDATE)
        transport.close()
        assert raw.events == [big + WINDOW_UPDATE, "close"]
        await asyncio.sleep(0)  # the scheduled flush finds nothing left
        assert raw.events == [big + WINDOW_UPDATE, "close"]

        raw = RecordingTransport()
        transport = GatheringTransport(raw)  # type: ignore[arg-type]
        transport.write(headers(end_stream=False))
        transport.abort()
        await asyncio.sleep(0)
        assert raw.events == ["abort"]

    asyncio.run(scenario())


def test_large_requests_of_one_step_leave_together_at_the_next() -> None:
    async def scenario() -> None:
        raw = RecordingTransport()
        transport = GatheringTransport(raw)  # type: ignore[arg-type]
        first = [headers(end_stream=False), data(bytes(GATHER_FROM), end_stream=True)]
        second = [headers(end_stream=False), data(b"small", end_stream=True)]
        for write in (*first, *second):
            transport.write(write)
        assert raw.events == []  # a large request's end does not send the step's writes
        await asyncio.sleep(0)
        assert raw.events == [b"".join((*first, *second))]

    asyncio.run(scenario())
