"""The producer's batch encoder (``sentinel.records.builder``) writes exactly what the codec of
record (``build_batch``) writes, whichever builder it uses, so every codec, corruption and
property test of ``build_batch``'s batches holds for what the producer sends.

Deterministic: ``derandomize=True`` and no example database.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentinel.errors import InvalidArgument
from sentinel.records import Compression, RecordBatch, available_codecs, build_batch
from sentinel.records.builder import compiled_builder, encode_batch

SETTINGS = settings(
    max_examples=200,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

keys = st.one_of(st.none(), st.binary(max_size=40))
values = st.one_of(st.none(), st.binary(max_size=300))  # one- and two-byte length varints
headers = st.lists(st.tuples(st.text(max_size=12), st.one_of(st.none(), st.binary(max_size=20))), max_size=3)
timestamps = st.integers(0, 1 << 50)


@st.composite
def record_lists(draw: st.DrawFn) -> list[tuple[bytes | None, bytes | None, tuple, int]]:
    first = draw(timestamps)
    n = draw(st.integers(1, 20))
    deltas = st.one_of(st.integers(-100, 10_000), st.integers(-first, 1 << 40))
    return [
        (draw(keys), draw(values), tuple(draw(headers)), first if i == 0 else first + draw(deltas))
        for i in range(n)
    ]


producer_fields = st.fixed_dictionaries(
    {
        "producer_id": st.one_of(st.just(-1), st.integers(0, (1 << 63) - 1)),
        "producer_epoch": st.one_of(st.just(-1), st.integers(0, (1 << 15) - 1)),
        "base_sequence": st.one_of(st.just(-1), st.integers(0, (1 << 31) - 1)),
    }
)


def test_the_compiled_builder_is_installed() -> None:
    # aiokafka is a dependency: without its extension the producer silently loses ~1 µs
    # per record, which this makes visible.
    assert compiled_builder() is not None


@SETTINGS
@given(records=record_lists(), fields=producer_fields, compression=st.sampled_from(available_codecs()))
def test_encode_batch_writes_what_build_batch_writes(
    records: list[tuple[bytes | None, bytes | None, tuple, int]],
    fields: dict[str, int],
    compression: Compression,
) -> None:
    encoded = encode_batch(records, compression=compression, **fields)
    if compression is Compression.NONE:
        assert encoded == build_batch(records, compression=compression, **fields)
    batch = RecordBatch.parse(encoded)  # compressed output may differ in bytes, never in records
    assert [(r.key, r.value, r.headers, r.timestamp) for r in batch.records()] == list(records)
    assert (batch.producer_id, batch.producer_epoch, batch.base_sequence) == (
        fields["producer_id"],
        fields["producer_epoch"],
        fields["base_sequence"],
    )


def test_many_records_take_every_varint_width_alike() -> None:
    records = [(None, b"v" * (i % 300), (), 1_700_000_000_000 + i) for i in range(20_000)]
    assert encode_batch(records, producer_id=5, producer_epoch=1, base_sequence=7) == build_batch(
        records, producer_id=5, producer_epoch=1, base_sequence=7
    )


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (("key", b"v", (), 1), "record 0: key must be bytes or None, got str"),
        ((None, b"v", (("\udc80", b""),), 1), "record 0: header key"),
        ((None, b"v", (), 1 << 64), "record 0: timestamp must be a 64-bit int"),
    ],
)
def test_what_the_compiled_builder_refuses_is_named_by_build_batch(record: tuple, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(")):
        encode_batch([record])
