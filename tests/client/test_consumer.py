"""Consumer against the in-memory fake broker: positions, seeks, resets, commits, groups."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from client_fakes import FakeSentinel, run
from grpclib.const import Status

from sentinel.client import (
    Consumer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    OffsetAndTimestamp,
    Producer,
    TopicPartition,
    fetching,
)
from sentinel.client.errors import RequestTimeout
from sentinel.client.fetching import DECODE_AT_LEAST, FetchResult, records_from_batches
from sentinel.client.reachability import Reachability
from sentinel.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from sentinel.records import RecordBatch, build_batch

# Every test here runs against each build of sentinel.client.partition (see conftest.py).
pytestmark = pytest.mark.usefixtures("partition_build")

TP = TopicPartition("events", 0)


async def produce(fake: FakeSentinel, topic: str, values: list[bytes], *, partition: int = 0) -> None:
    """Send ``values`` in one batch (a long linger, then flush)."""
    async with Producer(fake.address, linger_ms=60_000) as producer:
        for v in values:
            await producer.send(topic, v, partition=partition)
        await producer.flush()


def values(records: list[ConsumerRecord]) -> list[bytes | None]:
    return [r.value for r in records]


def test_seek_into_a_batch_skips_the_records_before_the_offset() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("events", 1)
        await produce(fake, "events", [b"r%d" % i for i in range(10)])
        assert len(fake.topics["events"][0].batches) == 1  # offset 4 is inside the batch
        async with Consumer(fake.address) as consumer:
            consumer.assign([TP])
            consumer.seek(TP, 4)
            got = await consumer.getmany(timeout_ms=5000)
            assert [r.offset for r in got[TP]] == [4, 5, 6, 7, 8, 9]
            assert values(got[TP]) == [b"r%d" % i for i in range(4, 10)]
            assert await consumer.position(TP) == 10
            assert consumer.highwater(TP) == 10

    run(scenario)


def test_the_next_answers_are_fetched_while_the_application_works_through_this_one() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("events", 1)
        for name in (b"a", b"b", b"c"):
            await produce(fake, "events", [name + b"%d" % i for i in range(3)])
        one_batch = fake.topics["events"][0].batches[0].size_in_bytes  # one batch per answer
        async with Consumer(fake.address, fetch_max_bytes=one_batch, max_poll_records=1) as consumer:
            consumer.assign([TP])
            consumer.seek(TP, 0)
            got = await consumer.getmany(timeout_ms=5000)
            assert [r.offset for r in got[TP]] == [0]
            # Offsets 1 and 2 are still buffered; the answer from 3 is fetched, and the one
            # from 6 as soon as that one arrived (it says where it ends).
            async with asyncio.timeout(2):
                await fake.wait_for_calls("fetch", 3)
            assert fake.fetched_from[:3] == [0, 3, 6]
            assert await consumer.position(TP) == 1
            rest: list[ConsumerRecord] = []
            while len(rest) < 8:
                rest += (await consumer.getmany(timeout_ms=5000))[TP]
            assert [r.offset for r in rest] == list(range(1, 9))
            assert values(rest) == [b"a1", b"a2", b"b0", b"b1", b"b2", b"c0", b"c1", b"c2"]
            assert await consumer.position(TP) == 9

    run(scenario)


def test_a_seek_drops_the_pipelined_answer() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("events", 1)
        await produce(fake, "events", [b"a%d" % i for i in range(3)])
        await produce(fake, "events", [b"b%d" % i for i in range(3)])
        one_batch = fake.topics["events"][0].batches[0].size_in_bytes
        async with Consumer(fake.address, fetch_max_bytes=one_batch, max_poll_records=1) as consumer:
            consumer.assign([TP])
            consumer.seek(TP, 0)
            await consumer.getmany(timeout_ms=5000)
            async with asyncio.timeout(2):
                await fake.wait_for_calls("fetch", 2)  # the answer from offset 3 is fetched
            consumer.seek(TP, 1)
            got: list[ConsumerRecord] = []
            while len(got) < 5:
                got += (await consumer.getmany(timeout_ms=5000))[TP]
            assert [r.offset for r in got] == [1, 2, 3, 4, 5]
            assert 1 in fake.fetched_from[2:]  # read again from the seek

    run(scenario)


def test_records_from_batches_skips_before_start_and_keeps_order() -> None:
    first = build_batch([(None, b"a", (), 1), (None, b"b", (), 2)], base_offset=10)
    second = build_batch([(b"k", b"c", (), 3)], base_offset=12)
    records = records_from_batches(TP, first + second, 11)
    assert records == [
        ConsumerRecord("events", 0, 11, 2, None, b"b", ()),
        ConsumerRecord("events", 0, 12, 3, b"k", b"c", ()),
    ]
    assert records_from_batches(TP, first + second, 13) == []


def test_partition_state_take_advances_the_position_past_the_answer() -> None:
    state = fetching.partition.PartitionState(TP)
    state.position = 11
    state.records = records_from_batches(
        TP, build_batch([(None, b"%d" % i, (), i) for i in range(5)], base_offset=10), 11
    )
    state.after = 20  # the answer ended at 20 (say, a compacted gap after offset 14)
    assert [r.offset for r in state.take(2)] == [11, 12]
    assert state.position == 13
    assert [r.offset for r in state.take(10)] == [13, 14]
    assert state.position == 20 and state.records == []
    state.records = [ConsumerRecord("events", 0, 20, 0, None, b"x", ())]
    state.reset(5)
    assert (state.position, state.records, state.index) == (5, [], 0)


def test_buffered_batches_are_decoded_one_at_a_time_as_records_are_taken() -> None:
    # A record is built shortly before it is handed out: an answer's later batches stay
    # undecoded bytes until the application reaches them.
    state = fetching.partition.PartitionState(TP)
    state.position = 11
    batches = [
        RecordBatch(build_batch([(None, b"%d" % i, (), i) for i in range(3)], base_offset=10)),
        RecordBatch(build_batch([(None, b"%d" % i, (), i) for i in range(3, 6)], base_offset=13)),
    ]
    state.buffer(FetchResult(11, batches, 16, 16))
    assert len(state.batches) == 2 and state.records == []
    assert [r.offset for r in state.take(1)] == [11]
    assert len(state.batches) == 1 and [r.offset for r in state.records[state.index :]] == [12]
    assert state.position == 12
    assert [r.offset for r in state.take(1)] == [12]
    assert state.position == 13 and len(state.batches) == 1  # the next batch's first offset
    assert [r.offset for r in state.take(5)] == [13, 14, 15]
    assert state.position == 16 and not state.buffered()


def test_a_large_batch_is_decoded_in_pieces_just_ahead_of_the_application() -> None:
    state = fetching.partition.PartitionState(TP)
    state.position = 0
    count = DECODE_AT_LEAST * 2 + 7
    batch = RecordBatch(build_batch([(None, b"v", (), 0)] * count))
    state.buffer(FetchResult(0, [batch], count, count))
    assert [r.offset for r in state.take(1)] == [0]
    assert len(state.records) == DECODE_AT_LEAST  # not all of the batch
    assert state.cursor is not None and state.cursor.remaining == count - DECODE_AT_LEAST
    assert state.position == 1
    taken = state.take(DECODE_AT_LEAST * 3)
    assert [r.offset for r in taken] == list(range(1, count))
    assert state.position == count and not state.buffered()


def test_auto_offset_reset_earliest_reads_everything() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("events", 1)
        await produce(fake, "events", [b"a", b"b", b"c"])
        async with Consumer(fake.address, auto_offset_reset="earliest") as consumer:
            consumer.assign([TP])
            assert values((await consumer.getmany(timeout_ms=5000))[TP]) == [b"a", b"b", b"c"]

    run(scenario)


def test_auto_offset_reset_latest_reads_only_new_records() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("events", 1)
        await produce(fake, "events", [b"old1", b"old2"])
        async with Consumer(fake.address, auto_offset_reset="latest") as consumer:
            consumer.assign([TP])
            assert await consumer.position(TP) == 2
            assert await consumer.getmany(timeout_ms=0) == {}
            await produce(fake, "events", [b"new"])
            got = await consumer.getmany(timeout_ms=5000)
            assert [(r.offset, r.value) for r in got[TP]] == [(2, b"new")]

    run(scenario)


def test_getmany_long_polls_until_data_arrives() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("events", 1)
        async with Consumer(fake.address, fetch_max_wait_ms=50) as consumer:
            consumer.assign([TP])
            waiting = asyncio.ensure_future(consumer.getmany(timeout_ms=5000))
            await fake.wait_for_calls("fetch", 2)  # a poll found nothing, and it polled again
            assert not waiting.done()
            await produce(fake, "events", [b"late"])
            assert values((await waiting)[TP]) == [b"late"]

    run(scenario)


def test_out_of_range_position_resets_by_policy() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("events", 1)
        await produce(fake, "events", [b"a", b"b"])
        async with Consumer(fake.address, auto_offset_reset="earliest") as consumer:
            consumer.assign([TP])
            consumer.seek(TP, 100)
            got = await consumer.getmany(timeout_ms=5000)
            assert [r.offset for r in got[TP]] == [0, 1]

    run(scenario)


def test_commit_and_committed_and_resume_from_committed_offset() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("events", 1)
        await produce(fake, "events", [b"%d" % i for i in range(6)])
        options = {"group_id": "g", "enable_auto_commit": False, "auto_offset_reset": "earliest"}
        async with Consumer(fake.address, **options) as c:  # type: ignore[arg-type]
            c.assign([TP])
            assert await c.committed(TP) is None
            got = await c.getmany(timeout_ms=5000, max_records=4)
            assert [r.offset for r in got[TP]] == [0, 1, 2, 3]
            await c.commit()
            assert await c.committed(TP) == 4
            await c.commit({TP: (2, "meta")})
            assert await c.committed(TP) == 2
        assert fake.groups["g"].offsets == {("events", 0): 2}
        async with Consumer(fake.address, group_id="g", auto_offset_reset="latest") as c:
            c.assign([TP])
            assert [r.offset for r in (await c.getmany(timeout_ms=5000))[TP]] == [2, 3, 4, 5]
        # Auto-commit committed the position on close.
        assert fake.groups["g"].offsets == {("events", 0): 6}

    run(scenario)


def test_commit_without_group_is_refused() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("events", 1)
        async with Consumer(fake.address) as consumer:
            consumer.assign([TP])
            with pytest.raises(FailedPrecondition, match="commit\\(\\) needs a group_id"):
                await consumer.commit({TP: 1})

    run(scenario)


def test_unknown_topic_raises_not_found() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        async with Consumer(fake.address, auto_offset_reset="earliest") as consumer:
            consumer.assign([("nope", 0)])
            with pytest.raises(NotFound, match="topic 'nope' does not exist"):
                await consumer.getmany(timeout_ms=1000)
            fake.create("known", 1)
            consumer.assign([("known", 0)])
            consumer.seek(TopicPartition("known", 0), 0)
            fake.topics.pop("known")
            with pytest.raises(NotFound, match="topic 'known' does not exist"):
                await consumer.getmany(timeout_ms=1000)

    run(scenario)


def test_retriable_fetch_error_is_retried() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("events", 1)
        await produce(fake, "events", [b"x"])
        fake.fail_next("fetch", Status.UNAVAILABLE, "leader moved")
        async with Consumer(fake.address, auto_offset_reset="earliest", retry_backoff_ms=1) as consumer:
            consumer.assign([TP])
            assert values((await consumer.getmany(timeout_ms=5000))[TP]) == [b"x"]
        assert fake.calls["fetch"] >= 2

    run(scenario)


def test_list_offsets_waits_out_a_leader_election_whatever_retries_say() -> None:
    # A seek to the end asks the partition's leader; during a failover none answers for
    # 1-2 s: more refusals than five retries of 1 ms cover.
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("events", 1)
        await produce(fake, "events", [b"x", b"y"])
        fake.fail_next("list_offsets", Status.UNAVAILABLE, "no leader yet", times=12)
        async with Consumer(fake.address, retries=5, retry_backoff_ms=1) as consumer:
            consumer.assign([TP])
            await consumer.seek_to_end()
            assert await consumer.position(TP) == 2
        assert fake.calls["list_offsets"] == 13

    run(scenario)


def test_seek_to_beginning_end_and_offsets_for_times() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("events", 1)
        async with Producer(fake.address) as producer:
            for i in range(5):
                await producer.send_and_wait("events", b"%d" % i, partition=0, timestamp_ms=1000 * (i + 1))
        async with Consumer(fake.address, auto_offset_reset="earliest") as consumer:
            consumer.assign([TP])
            await consumer.seek_to_end()
            assert await consumer.position(TP) == 5
            await consumer.seek_to_beginning(TP)
            assert await consumer.position(TP) == 0
            assert await consumer.offsets_for_times({TP: 2500}) == {TP: OffsetAndTimestamp(2, 3000)}
            assert await consumer.offsets_for_times({TP: 9999}) == {TP: None}
            assert await consumer.beginning_offsets([TP]) == {TP: 0}
            assert await consumer.end_offsets([TP]) == {TP: 5}

    run(scenario)


def test_max_records_and_fair_draining_across_partitions() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("events", 2)
        await produce(fake, "events", [b"a%d" % i for i in range(5)], partition=0)
        await produce(fake, "events", [b"b%d" % i for i in range(5)], partition=1)
        tps = [TopicPartition("events", 0), TopicPartition("events", 1)]
        async with Consumer(fake.address, auto_offset_reset="earliest") as consumer:
            consumer.assign(tps)
            seen: dict[TopicPartition, list[int]] = {tp: [] for tp in tps}
            while sum(map(len, seen.values())) < 10:
                batch = await consumer.getmany(timeout_ms=5000, max_records=3)
                assert sum(map(len, batch.values())) <= 3
                for tp, records in batch.items():
                    seen[tp].extend(r.offset for r in records)
            assert seen == {tps[0]: [0, 1, 2, 3, 4], tps[1]: [0, 1, 2, 3, 4]}

    run(scenario)


def test_async_for_yields_records_in_order_and_commits_what_was_consumed() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("events", 1)
        await produce(fake, "events", [b"%d" % i for i in range(8)])
        async with Consumer(fake.address, group_id="it", auto_offset_reset="earliest") as consumer:
            consumer.assign([TP])
            got = []
            async for record in consumer:
                got.append(record.offset)
                if len(got) == 5:
                    break
            assert got == [0, 1, 2, 3, 4]
            assert await consumer.position(TP) == 5  # not 8: read-ahead is not consumed
        assert fake.groups["it"].offsets == {("events", 0): 5}

    run(scenario)


def test_async_for_keeps_the_position_just_past_each_record_across_batches_and_answers() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("events", 1)
        await produce(fake, "events", [b"a%d" % i for i in range(3)])
        await produce(fake, "events", [b"b%d" % i for i in range(3)])
        one_batch = fake.topics["events"][0].batches[0].size_in_bytes  # one batch per answer
        async with Consumer(
            fake.address, fetch_max_bytes=one_batch, auto_offset_reset="earliest"
        ) as consumer:
            consumer.assign([TP])
            positions = []
            async for record in consumer:
                positions.append((record.offset, await consumer.position(TP)))
                if record.offset == 5:
                    break
            assert positions == [(i, i + 1) for i in range(6)]

    run(scenario)


def test_each_build_of_the_partition_state_is_what_consumers_create() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("events", 1)
        await produce(fake, "events", [b"0", b"1"])
        async with Consumer(fake.address, auto_offset_reset="earliest") as consumer:
            consumer.assign([TP])
            assert isinstance(consumer._states[TP], fetching.partition.PartitionState)
            assert isinstance(aiter(consumer), fetching.partition.RecordIterator)
            assert [(await anext(consumer)).offset, (await anext(consumer)).offset] == [0, 1]

    run(scenario)


def test_close_in_the_loop_body_ends_async_for_before_the_next_buffered_record() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("events", 1)
        await produce(fake, "events", [b"%d" % i for i in range(8)])
        consumer = Consumer(fake.address, auto_offset_reset="earliest")
        await consumer.start()
        consumer.assign([TP])
        got = []
        async for record in consumer:
            got.append(record.offset)
            if len(got) == 2:
                await consumer.close()  # records 2..7 are buffered: none is handed out
        assert got == [0, 1]

    run(scenario)


def test_async_for_auto_commits_as_it_goes_and_never_past_the_record_in_hand() -> None:
    # The async for step checks the consumer's bookkeeping once per decoded chunk, as
    # getmany does once per poll: a due auto-commit runs between chunks, and what it commits
    # is the position of the records handed out so far, never one not yet handed out.
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("events", 1)
        total = 3 * DECODE_AT_LEAST + 7
        await produce(fake, "events", [b"%d" % i for i in range(total)])
        options = {"group_id": "g", "auto_offset_reset": "earliest", "auto_commit_interval_ms": 1}
        committed_seen: set[int] = set()
        async with Consumer(fake.address, **options) as consumer:  # type: ignore[arg-type]
            consumer.subscribe(["events"])
            async for record in consumer:
                committed = fake.groups["g"].offsets.get(("events", 0), 0)
                assert committed <= record.offset  # the record in hand is not committed yet
                committed_seen.add(committed)
                await asyncio.sleep(0.0002)  # the 1 ms interval passes within a chunk
                if record.offset == total - 1:
                    break
            assert await consumer.position(TP) == total
        # Commits went on during the loop (between chunks), not only at the close.
        assert len(committed_seen) >= 3
        assert fake.groups["g"].offsets == {("events", 0): total}

    run(scenario)


def test_anext_of_the_consumer_and_a_new_async_for_continue_where_the_last_left_off() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("events", 1)
        await produce(fake, "events", [b"%d" % i for i in range(6)])
        async with Consumer(fake.address, auto_offset_reset="earliest") as consumer:
            consumer.assign([TP])
            assert (await anext(consumer)).offset == 0
            got = []
            async for record in consumer:
                got.append(record.offset)
                if record.offset == 2:
                    break
            assert (await anext(consumer)).offset == 3
            async for record in consumer:
                got.append(record.offset)
                if record.offset == 5:
                    break
            assert got == [1, 2, 4, 5]
            assert await consumer.position(TP) == 6

    run(scenario)


def test_a_cancelled_async_for_waiting_for_records_loses_none() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("events", 1)
        await produce(fake, "events", [b"0", b"1"])
        async with Consumer(fake.address, auto_offset_reset="earliest") as consumer:
            consumer.assign([TP])
            got = []
            both = asyncio.Event()

            async def iterate() -> None:
                async for record in consumer:
                    got.append(record.offset)
                    if len(got) == 2:
                        both.set()

            task = asyncio.ensure_future(iterate())
            await both.wait()
            await asyncio.sleep(0.05)  # now waiting at the end of the log
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await consumer.position(TP) == 2
            await produce(fake, "events", [b"2"])
            async for record in consumer:
                got.append(record.offset)
                break
            assert got == [0, 1, 2]

    run(scenario)


class RecordingListener(ConsumerRebalanceListener):
    def __init__(self, fake: FakeSentinel, group: str) -> None:
        self.fake = fake
        self.group = group
        self.events: list[tuple[str, frozenset[TopicPartition], dict[tuple[str, int], int]]] = []
        self.changed = asyncio.Event()

    async def on_partitions_revoked(self, revoked: frozenset[TopicPartition]) -> None:
        self.events.append(("revoked", revoked, dict(self.fake.groups[self.group].offsets)))
        self.changed.set()

    async def on_partitions_assigned(self, assigned: frozenset[TopicPartition]) -> None:
        self.events.append(("assigned", assigned, dict(self.fake.groups[self.group].offsets)))
        self.changed.set()


def test_group_subscribe_gets_assignment_and_rebalance_revokes_then_assigns() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("events", 4)
        for p in range(4):
            await produce(fake, "events", [b"p%d-0" % p, b"p%d-1" % p], partition=p)
        every = frozenset(TopicPartition("events", p) for p in range(4))
        options = {"group_id": "g", "auto_offset_reset": "earliest", "heartbeat_interval_ms": 10}
        first_listener = RecordingListener(fake, "g")
        async with Consumer(fake.address, **options) as first:  # type: ignore[arg-type]
            first.subscribe(["events"], listener=first_listener)
            consumed = 0
            while consumed < 8:
                consumed += sum(map(len, (await first.getmany(timeout_ms=5000)).values()))
            assert first.assignment() == every
            assert [e[:2] for e in first_listener.events] == [("assigned", every)]

            async with Consumer(fake.address, **options) as second:  # type: ignore[arg-type]
                second.subscribe(["events"])
                assert await second.getmany(timeout_ms=0) == {}  # joins: the group rebalances
                mine = second.assignment()
                assert len(mine) == 2
                # The first member notices on a heartbeat, inside its next getmany.
                polling = asyncio.ensure_future(first.getmany(timeout_ms=5000))
                while len(first_listener.events) < 3:
                    first_listener.changed.clear()
                    await first_listener.changed.wait()
                polling.cancel()
                revoked, assigned = first_listener.events[1:]
                assert revoked[:2] == ("revoked", every)
                # Auto-commit ran before the revoke callback: everything consumed is committed.
                assert revoked[2] == {("events", p): 2 for p in range(4)}
                assert assigned[:2] == ("assigned", every - mine)
                assert first.assignment() == every - mine
            # The second member left: the first gets everything back.
            while len(first_listener.events) < 5:
                await first.getmany(timeout_ms=100)
            assert first_listener.events[4][:2] == ("assigned", every)
        assert fake.groups["g"].members == {}  # close left the group

    run(scenario)


def test_subscribe_needs_a_group_and_does_not_mix_with_assign() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("events", 1)
        async with Consumer(fake.address) as consumer:
            with pytest.raises(FailedPrecondition, match="subscribe\\(\\) needs a group_id"):
                consumer.subscribe(["events"])
        async with Consumer(fake.address, group_id="g") as consumer:
            consumer.assign([TP])
            with pytest.raises(FailedPrecondition, match="do not mix"):
                consumer.subscribe(["events"])
            with pytest.raises(FailedPrecondition, match=r"partition other\[0\] is not assigned"):
                consumer.seek(("other", 0), 1)

    run(scenario)


def test_close_ends_async_iteration_and_getmany() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("events", 1)
        consumer = Consumer(fake.address)
        await consumer.start()
        consumer.assign([TP])

        async def iterate() -> list[ConsumerRecord]:
            return [record async for record in consumer]

        iterating = asyncio.ensure_future(iterate())
        await fake.wait_for_calls("fetch", 1)
        await consumer.close()
        assert await iterating == []
        with pytest.raises(FailedPrecondition, match="consumer is closed"):
            await consumer.getmany()

    run(scenario)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        # The broker refuses a longer long poll: every fetch used to fail with INVALID_ARGUMENT.
        ({"fetch_max_wait_ms": 30_001}, "fetch_max_wait_ms must be an int from 0 to 30000, got 30001"),
        ({"fetch_max_wait_ms": -1}, "fetch_max_wait_ms must be an int from 0 to 30000, got -1"),
        ({"fetch_max_wait_ms": 0.5}, "fetch_max_wait_ms must be an int from 0 to 30000, got 0.5"),
        # uint32 on the wire: a larger value would be wrapped into another one.
        ({"fetch_max_bytes": 2**32}, f"fetch_max_bytes must be an int from 1 to {2**32 - 1}, got {2**32}"),
        ({"fetch_max_bytes": 0}, f"fetch_max_bytes must be an int from 1 to {2**32 - 1}, got 0"),
        (
            {"session_timeout_ms": 2**32},
            f"session_timeout_ms must be an int from 1 to {2**32 - 1}, got {2**32}",
        ),
        ({"retries": -1}, "retries must be an int >= 0, got -1"),
        ({"retry_backoff_ms": -5}, "retry_backoff_ms must be a number >= 0, got -5"),
        ({"max_poll_records": 0}, "max_poll_records must be an int > 0, got 0"),
    ],
)
def test_constructor_refuses_values_out_of_range_naming_the_parameter_and_bound(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        Consumer("localhost:9092", **options)
    assert str(caught.value) == message


def test_a_fetch_wait_at_the_brokers_limit_is_accepted() -> None:
    Consumer("localhost:9092", fetch_max_wait_ms=30_000)


def test_offsets_beyond_int64_are_refused_not_wrapped() -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("events", 1)
        async with Consumer(fake.address, group_id="g") as consumer:
            consumer.assign([TP])
            bound = f"an int from 0 to {2**63 - 1}"
            with pytest.raises(InvalidArgument, match=f"offset must be {bound}, got {2**64 + 1}"):
                consumer.seek(TP, 2**64 + 1)  # protobuf would send 1
            with pytest.raises(InvalidArgument, match=f"commit offset for .* must be {bound}"):
                await consumer.commit({TP: 2**63})
            with pytest.raises(InvalidArgument, match=f"timestamp for events\\[0\\] must be {bound}"):
                await consumer.offsets_for_times({TP: 2**63})
            assert fake.calls["commit_offsets"] == fake.calls["list_offsets"] == 0

    run(scenario)


def _reachability_records(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, str, bool]]:
    return [
        (r.levelname, r.getMessage(), r.broker, r.broker_reachable)  # type: ignore[attr-defined]
        for r in caplog.records
        if hasattr(r, "broker_reachable")
    ]


def test_a_broker_that_stops_answering_is_logged_once_and_its_return_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Fetches retry without end: they used to fail silently for as long as the broker was away.
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("events", 1)
        await produce(fake, "events", [b"a", b"b"])
        fake.fail_next("fetch", Status.UNAVAILABLE, "shutting down", times=12)
        async with Consumer(fake.address, auto_offset_reset="earliest", retry_backoff_ms=1) as consumer:
            consumer.assign([TP])
            got: list[ConsumerRecord] = []
            while len(got) < 2:
                got += (await consumer.getmany(timeout_ms=5000)).get(TP, [])
            assert values(got) == [b"a", b"b"]
        assert fake.calls["fetch"] >= 13

    with caplog.at_level(logging.DEBUG, logger="sentinel.client"):
        run(scenario)
    records = _reachability_records(caplog)
    address = records[0][2]
    # The default 5 retries: the sixth failure in a row is the outage; the other six say nothing more.
    assert records == [
        ("WARNING", f"broker {address}: shutting down", address, False),
        ("INFO", f"broker {address} answers again", address, True),
    ]


def test_a_blip_the_retries_absorb_is_not_an_outage(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("events", 1)
        await produce(fake, "events", [b"a"])
        fake.fail_next("fetch", Status.UNAVAILABLE, "busy", times=5)
        async with Consumer(fake.address, auto_offset_reset="earliest", retry_backoff_ms=1) as consumer:
            consumer.assign([TP])
            assert values((await consumer.getmany(timeout_ms=5000))[TP]) == [b"a"]

    with caplog.at_level(logging.DEBUG, logger="sentinel.client"):
        run(scenario)
    assert _reachability_records(caplog) == []


def test_reachability_counts_failures_in_a_row_per_broker(caplog: pytest.LogCaptureFixture) -> None:
    tracker = Reachability(threshold=3)
    down = Unavailable("cannot reach broker a:1: Connection refused")
    with caplog.at_level(logging.DEBUG, logger="sentinel.client"):
        tracker.failed("a:1", down)
        tracker.failed("a:1", down)
        tracker.answered("a:1")  # an answer starts the count again
        for _ in range(2):
            tracker.failed("a:1", down)
        tracker.failed("b:2", down)  # another broker's failures are its own
        assert tracker.unreachable == frozenset()
        tracker.failed("a:1", down)
        assert tracker.unreachable == {"a:1"}
        tracker.failed("a:1", down)  # still the same outage
        # An answer naming another leader is routing: the broker is there.
        tracker.failed("a:1", Unavailable("not the leader", leader="2"))
        assert tracker.unreachable == frozenset()
        # A timeout has waited the whole request timeout already: an outage at once.
        tracker.failed("b:2", RequestTimeout("request to b:2 timed out"))
        with tracker.watch("b:2"):
            pass  # an RPC that ended without an error
        with pytest.raises(NotFound), tracker.watch("b:2"):
            raise NotFound("an error status is an answer too")
    assert _reachability_records(caplog) == [
        ("WARNING", "cannot reach broker a:1: Connection refused", "a:1", False),
        ("INFO", "broker a:1 answers again", "a:1", True),
        ("WARNING", "request to b:2 timed out", "b:2", False),
        ("INFO", "broker b:2 answers again", "b:2", True),
    ]


def test_commit_and_committed_wait_out_a_coordinator_that_cannot_be_found_yet() -> None:
    # The coordinator moves with the controller leader: during an election every broker
    # answers UNAVAILABLE. An explicit commit (and a committed() lookup) keeps trying for
    # COORDINATOR_WAIT_S whatever ``retries`` says, as a join does; with one retry of 10 ms
    # it would have given up after the second answer.
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("events", 1)
        options = {"group_id": "g", "retries": 1, "retry_backoff_ms": 10}
        async with Consumer(fake.address, **options) as consumer:  # type: ignore[arg-type]
            fake.fail_next("commit_offsets", Status.UNAVAILABLE, "no controller leader yet", times=6)
            await consumer.commit({TP: 3})
            assert fake.calls["commit_offsets"] == 7
            fake.fail_next("fetch_offsets", Status.UNAVAILABLE, "no controller leader yet", times=6)
            assert await consumer.committed(TP) == 3
            assert fake.calls["fetch_offsets"] == 7
        assert fake.groups["g"].offsets == {("events", 0): 3}

    run(scenario)


def test_a_join_waits_out_a_coordinator_that_cannot_be_found_yet() -> None:
    # As commit does: while no broker can name the coordinator the join keeps trying for
    # COORDINATOR_WAIT_S, whatever ``retries`` says (one retry of 10 ms would give up here).
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("events", 1)
        await produce(fake, "events", [b"a"])
        fake.fail_next("join_group", Status.UNAVAILABLE, "no group coordinator right now", times=5)
        options = {"group_id": "g", "auto_offset_reset": "earliest", "retries": 1, "retry_backoff_ms": 10}
        async with Consumer(fake.address, **options) as consumer:  # type: ignore[arg-type]
            consumer.subscribe(["events"])
            assert values((await consumer.getmany(timeout_ms=5000))[TP]) == [b"a"]
        assert fake.calls["join_group"] == 6

    run(scenario)


def test_an_auto_commit_refused_for_a_member_that_must_rejoin_is_not_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A restarted broker forgets every member: each one's next auto-commit is refused and it
    # re-joins. That was a WARNING (twice per member, per restart) on a CLI user's stderr.
    async def scenario(fake: FakeSentinel) -> None:
        fake.create("events", 1)
        await produce(fake, "events", [b"a"])
        options = {"group_id": "g", "auto_offset_reset": "earliest", "auto_commit_interval_ms": 1}
        async with Consumer(fake.address, **options) as consumer:  # type: ignore[arg-type]
            consumer.subscribe(["events"])
            assert values((await consumer.getmany(timeout_ms=5000))[TP]) == [b"a"]
            fake.fail_next("commit_offsets", Status.FAILED_PRECONDITION, "unknown member 'm' in group 'g'")
            await asyncio.sleep(0.002)  # the 1 ms auto-commit interval has passed
            await consumer.getmany(timeout_ms=0)  # auto-commit: refused, re-join
            assert fake.calls["join_group"] == 2
        assert fake.groups["g"].offsets == {("events", 0): 1}

    with caplog.at_level(logging.INFO, logger="sentinel.client"):
        run(scenario)
    assert [
        (r.levelname, r.getMessage()) for r in caplog.records if r.name.startswith("sentinel.client")
    ] == [("INFO", "auto-commit of group g refused: unknown member 'm' in group 'g'; re-joining")]
