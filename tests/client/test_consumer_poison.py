"""The consumer meets damaged stored data: every good record before it, then an error naming
the topic, partition and offset; stored data is never blamed on the caller (no
InvalidArgument), never skipped, and never a silent stall.

The damage is put into the fake broker's partitions directly (``FakePartition.append``), as
data stored before the broker validated records would be: its produce path refuses it.
"""

from __future__ import annotations

import asyncio
import sys

import pytest
from client_fakes import POISON_DETAIL, FakeSentinel, poison_batch, run
from grpclib.const import Status

from sentinel.client import Consumer, ConsumerRecord, CorruptRecordBatch, TopicPartition
from sentinel.client.fetching import decode_answer
from sentinel.errors import (
    CorruptionError,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    SentinelError,
)
from sentinel.records import Compression, RecordBatch, available_codecs, build_batch

# Every test here runs against each build of sentinel.client.partition (see conftest.py).
pytestmark = pytest.mark.usefixtures("partition_build")

TP = TopicPartition("events", 0)


def good(*values: bytes, codec: Compression = Compression.NONE) -> RecordBatch:
    return RecordBatch(build_batch([(None, v, (), 1_000) for v in values], compression=codec))


def stored(fake: FakeSentinel, topic: str, partitions: int, *batches: tuple[int, RecordBatch]) -> None:
    """Create ``topic`` and store each ``(partition, batch)`` as it is, unchecked."""
    parts = fake.create(topic, partitions)
    for partition, batch in batches:
        parts[partition].append(batch)


def damaged_message(offset: int, first: int = 3, last: int = 5) -> str:
    return (
        f"corruption in topic 'events' partition 0 at offset {offset}: the stored record batch of "
        f"offsets {first} to {last} cannot be decoded: {POISON_DETAIL}"
    )


def offsets_and_values(records: list[ConsumerRecord]) -> list[tuple[int, bytes | None]]:
    return [(r.offset, r.value) for r in records]


def test_decode_answer_keeps_the_records_before_a_damaged_batch() -> None:
    answer = (
        build_batch([(None, v, (), 1_000) for v in (b"a", b"b")], base_offset=0)
        + poison_batch().with_base_offset(2)  # offsets 2..4
        + build_batch([(None, b"c", (), 1_000)], base_offset=5)
    )
    records, error, error_offset = decode_answer(TP, answer, 1)
    assert offsets_and_values(records) == [(1, b"b")]
    assert error_offset == 2
    assert isinstance(error, CorruptRecordBatch)
    assert (error.topic, error.partition, error.offset, error.batch_offsets) == ("events", 0, 2, (2, 4))
    assert decode_answer(TP, answer, 5) == ([ConsumerRecord("events", 0, 5, 1_000, None, b"c", ())], None, -1)


@pytest.mark.parametrize("codec", available_codecs(), ids=lambda c: c.name)
def test_getmany_returns_every_good_record_then_raises_naming_topic_partition_offset(
    codec: Compression,
) -> None:
    async def scenario(fake: FakeSentinel) -> None:
        stored(
            fake,
            "events",
            1,
            (0, good(b"a", b"b", b"c", codec=codec)),
            (0, poison_batch(codec)),  # offsets 3..5
            (0, good(b"d", b"e", codec=codec)),
        )
        async with Consumer(fake.address, auto_offset_reset="earliest") as consumer:
            consumer.assign([TP])
            got = await consumer.getmany(timeout_ms=5000)
            assert offsets_and_values(got[TP]) == [(0, b"a"), (1, b"b"), (2, b"c")]
            assert await consumer.position(TP) == 3
            for _ in range(2):  # met again on every call: never skipped, never silent
                with pytest.raises(CorruptRecordBatch) as caught:
                    await consumer.getmany(timeout_ms=60_000)
                error = caught.value
                assert str(error) == damaged_message(3)
                assert isinstance(error, CorruptionError) and not isinstance(error, InvalidArgument)
                assert (error.topic, error.partition, error.offset, error.batch_offsets) == (
                    "events",
                    0,
                    3,
                    (3, 5),
                )
                assert await consumer.position(TP) == 3
            # The application may choose to skip the batch; what follows it reads.
            assert error.batch_offsets is not None
            consumer.seek(TP, error.batch_offsets[1] + 1)
            got = await consumer.getmany(timeout_ms=5000)
            assert offsets_and_values(got[TP]) == [(6, b"d"), (7, b"e")]

    run(scenario)


def test_async_for_yields_the_good_records_then_raises() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        stored(fake, "events", 1, (0, good(b"a", b"b", b"c")), (0, poison_batch()), (0, good(b"d")))
        async with Consumer(fake.address, auto_offset_reset="earliest", max_poll_records=2) as consumer:
            consumer.assign([TP])
            seen = []
            with pytest.raises(CorruptRecordBatch, match="^" + damaged_message(3) + "$"):
                async for record in consumer:
                    seen.append(record.value)
            assert seen == [b"a", b"b", b"c"]

    run(scenario)


def test_damage_met_when_its_batch_is_decoded_drops_the_answer_fetched_past_it() -> None:
    # Batches are decoded as the application reaches them, and the answer after the
    # buffered one is fetched meanwhile: damage found late must still stop the position.
    async def scenario(fake: FakeSentinel) -> None:
        first, poison = good(b"a", b"b", b"c"), poison_batch()
        stored(fake, "events", 1, (0, first), (0, poison), (0, good(b"d", b"e")))
        two_batches = first.size_in_bytes + poison.size_in_bytes
        options = {"auto_offset_reset": "earliest", "max_poll_records": 2, "fetch_max_bytes": two_batches}
        async with Consumer(fake.address, **options) as consumer:  # type: ignore[arg-type]
            consumer.assign([TP])
            got = await consumer.getmany(timeout_ms=5000)
            assert offsets_and_values(got[TP]) == [(0, b"a"), (1, b"b")]
            async with asyncio.timeout(2):
                await fake.wait_for_calls("fetch", 2)
            assert fake.fetched_from[:2] == [0, 6]  # the damage is not decoded yet
            got = await consumer.getmany(timeout_ms=5000)
            assert offsets_and_values(got[TP]) == [(2, b"c")]
            for _ in range(2):
                with pytest.raises(CorruptRecordBatch, match="^" + damaged_message(3) + "$"):
                    await consumer.getmany(timeout_ms=60_000)
                assert await consumer.position(TP) == 3  # not 6: the answer from 6 was dropped
            assert 3 in fake.fetched_from[2:]  # read again from the damage, not past it

    run(scenario)


def test_damage_at_the_position_raises_at_once_and_names_the_offset_inside_the_batch() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        stored(fake, "events", 1, (0, good(b"a", b"b", b"c")), (0, poison_batch()), (0, good(b"d")))
        async with Consumer(fake.address) as consumer:
            consumer.assign([TP])
            consumer.seek(TP, 4)  # inside the damaged batch (3..5)
            # A long timeout: the error must not wait for it (the scenario's bound would fail).
            with pytest.raises(CorruptRecordBatch, match="^" + damaged_message(4) + "$"):
                await consumer.getmany(timeout_ms=60_000)

    run(scenario)


def test_a_batch_failing_its_crc_is_reported_where_the_good_records_end() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        stored(fake, "events", 1, (0, good(b"a", b"b")), (0, good(b"c", b"d")), (0, good(b"e")))
        part = fake.topics["events"][0]
        damaged = bytearray(part.batches[1].data)
        damaged[-1] ^= 0x01
        part.batches[1] = RecordBatch(bytes(damaged), verify_crc=False)
        async with Consumer(fake.address, auto_offset_reset="earliest") as consumer:
            consumer.assign([TP])
            got = await consumer.getmany(timeout_ms=5000)
            assert offsets_and_values(got[TP]) == [(0, b"a"), (1, b"b")]
            with pytest.raises(CorruptRecordBatch) as caught:
                await consumer.getmany(timeout_ms=60_000)
        assert str(caught.value).startswith(
            "corruption in topic 'events' partition 0 at offset 2: the stored data is not a valid "
            "record batch: batch at byte "
        )
        assert "CRC-32C mismatch" in str(caught.value)
        assert caught.value.batch_offsets is None

    run(scenario)


def test_other_partitions_keep_flowing_and_the_error_follows_its_good_records() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        stored(
            fake,
            "events",
            2,
            (0, good(b"a")),
            (0, poison_batch()),  # offsets 1..3 of partition 0
            (1, good(b"x", b"y")),
        )
        events: list[object] = []
        async with Consumer(fake.address, auto_offset_reset="earliest") as consumer:
            consumer.assign([TP, TopicPartition("events", 1)])
            for _ in range(6):
                try:
                    got = await consumer.getmany(timeout_ms=5000)
                except CorruptRecordBatch as exc:
                    events.append((exc.partition, exc.offset))
                else:
                    events += [r.value for records in got.values() for r in records]
        assert events.index(b"a") < events.index((0, 1))
        assert sorted(e for e in events if isinstance(e, bytes)) == [b"a", b"x", b"y"]  # each once
        assert events.count((0, 1)) >= 2  # once the others are drained, every call reports it

    run(scenario)


def test_a_group_member_gets_the_error_and_commits_up_to_the_damage() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        stored(fake, "events", 1, (0, good(b"a", b"b", b"c")), (0, poison_batch()), (0, good(b"d")))
        options = {"group_id": "g", "auto_offset_reset": "earliest"}
        async with Consumer(fake.address, **options) as member:  # type: ignore[arg-type]
            member.subscribe(["events"])
            seen = []
            with pytest.raises(CorruptRecordBatch, match="^" + damaged_message(3) + "$"):
                async for record in member:
                    seen.append(record.value)
            assert seen == [b"a", b"b", b"c"]
        # What was delivered is committed, and not one offset more.
        assert fake.groups["g"].offsets == {("events", 0): 3}
        # The next member resumes at the damage and is told so at once, not left waiting.
        async with Consumer(fake.address, **options) as member:  # type: ignore[arg-type]
            member.subscribe(["events"])
            with pytest.raises(CorruptRecordBatch, match="^" + damaged_message(3) + "$"):
                await member.getmany(timeout_ms=60_000)

    run(scenario)


def test_a_codec_this_process_lacks_is_not_reported_as_corruption(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(fake: FakeSentinel) -> None:
        stored(fake, "events", 1, (0, good(b"a")), (0, good(b"b", codec=Compression.LZ4)))
        monkeypatch.setitem(sys.modules, "lz4.frame", None)  # import lz4.frame now fails
        async with Consumer(fake.address, auto_offset_reset="earliest") as consumer:
            consumer.assign([TP])
            assert offsets_and_values((await consumer.getmany(timeout_ms=5000))[TP]) == [(0, b"a")]
            with pytest.raises(FailedPrecondition) as caught:
                await consumer.getmany(timeout_ms=60_000)
        assert str(caught.value).startswith(
            "cannot decode topic 'events' partition 0 at offset 1: lz4 compression needs the 'lz4' package"
        )

    run(scenario)


@pytest.mark.parametrize(
    ("status", "message", "error_type", "expected"),
    [
        (
            Status.DATA_LOSS,
            "offsets 0 to 4 of events[0] are missing from storage",
            DataLoss,
            "cannot read topic 'events' partition 0 at offset 0: offsets 0 to 4 of events[0] are missing "
            "from storage",
        ),
        (
            Status.INTERNAL,
            "corruption in /data/000007.sst at byte 4096: data block checksum mismatch",
            SentinelError,
            "cannot read topic 'events' partition 0 at offset 0: INTERNAL: corruption in /data/000007.sst "
            "at byte 4096: data block checksum mismatch",
        ),
    ],
    ids=["data-loss", "internal"],
)
def test_a_broker_error_about_stored_data_names_topic_partition_and_offset(
    status: Status, message: str, error_type: type[SentinelError], expected: str
) -> None:
    async def scenario(fake: FakeSentinel) -> None:
        stored(fake, "events", 1, (0, good(b"a")))
        fake.fail_next("fetch", status, message)
        async with Consumer(fake.address, auto_offset_reset="earliest") as consumer:
            consumer.assign([TP])
            with pytest.raises(error_type) as caught:
                await consumer.getmany(timeout_ms=5000)
            assert str(caught.value) == expected
            assert not isinstance(caught.value, InvalidArgument)
            # Not sticky: the broker answers again, the consumer reads.
            assert offsets_and_values((await consumer.getmany(timeout_ms=5000))[TP]) == [(0, b"a")]

    run(scenario)
