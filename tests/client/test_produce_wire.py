"""The producer's own serialization of ProduceRequest (``sentinel.client.convert``): the
bytes betterproto2 writes for the same message, whatever the field values."""

from __future__ import annotations

import dataclasses

from grpclib.encoding.proto import ProtoCodec
from hypothesis import given, settings
from hypothesis import strategies as st

from sentinel.client.convert import WireProduceRequest, produce_request_wire
from sentinel.generated.sentinel import v1 as pb

INT32 = st.integers(-(2**31), 2**31 - 1)


@settings(max_examples=500, derandomize=True, database=None, deadline=None)
@given(
    topic=st.text(max_size=300),
    partition=INT32,
    record_batches=st.binary(max_size=3000),
    acks=st.sampled_from(list(pb.Acks)),
    timeout_ms=st.integers(0, 2**32 - 1),
)
def test_the_wire_form_is_betterproto2s_bytes(
    topic: str, partition: int, record_batches: bytes, acks: pb.Acks, timeout_ms: int
) -> None:
    fields = {
        "topic": topic,
        "partition": partition,
        "record_batches": record_batches,
        "acks": acks,
        "timeout_ms": timeout_ms,
    }
    reference = bytes(pb.ProduceRequest(**fields))
    wire = WireProduceRequest(**fields)
    assert produce_request_wire(wire) == bytes(wire) == reference
    assert pb.ProduceRequest.parse(reference) == pb.ProduceRequest(**fields)


def test_grpclib_sends_the_wire_form() -> None:
    message = WireProduceRequest(topic="t", partition=-1, record_batches=b"x" * 200, timeout_ms=30_000)
    sent = ProtoCodec().encode(message, pb.ProduceRequest)
    assert sent == bytes(
        pb.ProduceRequest(topic="t", partition=-1, record_batches=b"x" * 200, timeout_ms=30_000)
    )


def test_the_wire_form_knows_every_field_of_the_message() -> None:
    # produce_request_wire writes these five fields by hand: a field added to
    # ProduceRequest in the .proto would be silently left out of every request. This fails
    # first, so the encoder (and the strategy above) gain the field with it.
    fields = [
        (f.name, f.metadata["betterproto"].number, f.metadata["betterproto"].proto_type)
        for f in dataclasses.fields(pb.ProduceRequest)
    ]
    assert fields == [
        ("topic", 1, "string"),
        ("partition", 2, "int32"),
        ("record_batches", 3, "bytes"),
        ("acks", 4, "enum"),
        ("timeout_ms", 5, "uint32"),
    ]
