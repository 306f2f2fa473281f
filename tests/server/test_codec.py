"""Request bodies that are not valid protobuf: INVALID_ARGUMENT, at most one log line.

The wire check is tested directly, then over a real HTTP/2 gRPC call: a grpclib client
with a raw-bytes codec sends the exact bytes to the front end (the toy service of
test_frontend) on 127.0.0.1.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError
from test_frontend import HOST, SAFETY, Harness, harness

from sentinel.generated.sentinel import v1 as pb
from sentinel.server.codec import MalformedMessage, StrictProtoCodec, check_wire

__all__ = ["harness"]  # the fixture

# name claims 100 bytes, 3 present
CLAIMS_MORE = b"\x0a\x64abc"
BAD_BODIES = {
    "invalid utf-8 in a string": (pb.CreateTopicRequest, b"\x0a\x02\xff\xfe"),
    "truncated varint": (pb.CreateTopicRequest, b"\x10\xff"),
    "length beyond the body": (pb.CreateTopicRequest, CLAIMS_MORE),
    "ff ff ff": (pb.ProduceRequest, b"\xff\xff\xff"),
    "field number 0": (pb.ProduceRequest, b"\x00\x01"),
    "group wire type": (pb.ProduceRequest, b"\x0b"),
    "wrong wire type": (pb.CreateTopicRequest, b"\x08\x01"),
    "bad nested message": (pb.CreateTopicRequest, b"\x22\x02\x0a\x05"),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_malformed_bodies_are_refused(case: str) -> None:
    message_type, body = BAD_BODIES[case]
    with pytest.raises(MalformedMessage):
        check_wire(body, message_type)


def test_valid_bodies_pass() -> None:
    for message in [
        pb.CreateTopicRequest(name="orders", partitions=3, config=pb.TopicConfig()),
        pb.ProduceRequest(topic="orders", partition=-1, record_batches=b"\x00" * 70),
        pb.MetadataRequest(topics=["a", "b\u00e9"]),
    ]:
        body = bytes(message)
        check_wire(body, type(message))
        assert type(message).parse(body) == message


def test_the_message_names_field_and_byte() -> None:
    with pytest.raises(
        MalformedMessage, match=r"CreateTopicRequest\.name at byte 0 claims 100 bytes, only 3"
    ):
        check_wire(CLAIMS_MORE, pb.CreateTopicRequest)


def test_rejections_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    codec = StrictProtoCodec(log_interval=3600)
    with caplog.at_level(logging.WARNING, logger="sentinel.server.codec"):
        for _ in range(100):
            with pytest.raises(GRPCError) as caught:
                codec.decode(b"\xff\xff\xff", pb.ProduceRequest)
            assert caught.value.status is Status.INVALID_ARGUMENT
    assert len(caplog.records) == 1


class RawCodec(CodecBase):
    """Sends bytes as they are (the test's malformed bodies), decodes nothing."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        assert isinstance(message, bytes)
        return message

    def decode(self, data: bytes, message_type: Any) -> Any:
        return data


async def call_raw(port: int, method: str, body: bytes) -> GRPCError | None:
    channel = Channel(HOST, port, codec=RawCodec())
    try:
        async with channel.request(
            f"/sentinel.v1.Sentinel/{method}", Cardinality.UNARY_UNARY, bytes, bytes, timeout=SAFETY
        ) as stream:
            await stream.send_message(body, end=True)
            await stream.recv_message()
            await stream.recv_trailing_metadata()
    except GRPCError as exc:
        return exc
    finally:
        channel.close()
    return None


async def test_over_http2_every_malformed_body_is_invalid_argument(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG), trio.fail_after(SAFETY):
        for _ in range(3):
            for case in sorted(BAD_BODIES):
                message_type, body = BAD_BODIES[case]
                method = "Produce" if message_type is pb.ProduceRequest else "Fetch"
                error = await harness.on_client(call_raw, harness.port, method, body)
                assert error is not None, case
                assert error.status is Status.INVALID_ARGUMENT, (case, error)
                assert "malformed request body" in (error.message or "")
    assert harness.backend.produced == []
    lines = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert len(lines) <= 1, [r.getMessage() for r in lines]
