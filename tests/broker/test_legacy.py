"""A data directory written by the single-node broker of an earlier version opens as a
cluster of one: its topics (``T`` keys), topic-id counter (``C``) and committed offsets
(``O``) move to the controller (``sentinel/broker/legacy.py``); the partitions' data (``L``)
and state (``S``) keys are read where they are.

The old directory is written here with the old key encoders (``sentinel/broker/keys.py``)
and the old topic metadata JSON, byte for byte what that broker wrote.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import trio
import trio.testing
from conftest import frozen

from sentinel.broker import keys
from sentinel.broker.broker import Topic, TopicConfig
from sentinel.broker.replica import ApplyRetention, PartitionReplica
from sentinel.records import RecordBatch, build_batch, split_batches
from sentinel.storage.options import StorageOptions, SyncMode
from sentinel.storage.store import Store

if TYPE_CHECKING:
    from conftest import NodeFactory, Running

CREATED_MS = 1_700_000_000_000


def old_topic(topic_id: int, partitions: int, config: TopicConfig) -> bytes:
    """The old broker's topic metadata value (its ``_encode_topic``)."""
    return json.dumps(
        {
            "id": topic_id,
            "partitions": partitions,
            "replication_factor": 1,
            "retention_ms": config.retention_ms,
            "retention_bytes": config.retention_bytes,
            "created_ms": CREATED_MS,
        },
        sort_keys=True,
    ).encode()


def stored_batch(base_offset: int, *values: bytes) -> bytes:
    """A batch as the old partition log stored it: its base offset written in."""
    return build_batch([(None, v, (), 1_000) for v in values], base_offset=base_offset)


def old_partition(
    topic_id: int, partition: int, batches: list[list[bytes]], log_start: int = 0
) -> tuple[list[tuple[bytes, bytes | None]], list[tuple[int, bytes]]]:
    """The data and state keys of one old partition (batches below ``log_start`` were removed
    by retention but are still on disk), and its readable ``(offset, value)`` records."""
    ops: list[tuple[bytes, bytes | None]] = []
    records: list[tuple[int, bytes]] = []
    offset = size = 0
    for values in batches:
        data = stored_batch(offset, *values)
        ops.append((keys.data_key(topic_id, partition, offset + len(values) - 1), data))
        if offset >= log_start:
            records.extend((offset + i, v) for i, v in enumerate(values))
            size += len(data)
        offset += len(values)
    ops.append(
        (keys.state_key(topic_id, partition), keys.encode_state(keys.PartitionState(offset, log_start, size)))
    )
    return ops, records


async def write_old_directory(node: NodeFactory) -> dict[tuple[str, int], list[tuple[int, bytes]]]:
    """What the old broker left: topics "orders" (id 2, 2 partitions, retention by time)
    and "events" (id 5); ids 1, 3, 4, 6 and 7 belonged to deleted topics (the data of 3
    and 7 still on disk: 7 above every live id, so only the counter remembers it);
    committed offsets of two groups, one of them for a deleted topic (the old broker
    deleted a topic's offsets in a second write, after the topic)."""
    orders_0, orders_0_records = old_partition(2, 0, [[b"o0", b"o1"], [b"o2"]])
    orders_1, orders_1_records = old_partition(2, 1, [[b"p0"], [b"p1", b"p2", b"p3"], [b"p4"]], log_start=1)
    events_0, events_0_records = old_partition(5, 0, [[b"e0"]])
    dead, _ = old_partition(3, 0, [[b"gone"]])
    newest_dead, _ = old_partition(7, 0, [[b"gone too"]])
    ops = [
        *orders_0,
        *orders_1,
        *events_0,
        *dead[:-1],  # deleted topics' data, their state deleted with their metadata
        *newest_dead[:-1],
        (keys.topic_key("orders"), old_topic(2, 2, TopicConfig(retention_ms=60_000))),
        (keys.topic_key("events"), old_topic(5, 1, TopicConfig())),
        (keys.COUNTERS, keys.encode_counters(8)),
        (keys.offset_key("billing", "orders", 0), keys.encode_offset(2, "checkpoint")),
        (keys.offset_key("billing", "orders", 1), keys.encode_offset(4, "")),
        (keys.offset_key("audit", "events", 0), keys.encode_offset(1, "")),
        (keys.offset_key("audit", "deleted", 0), keys.encode_offset(7, "")),
    ]
    async with trio.open_nursery() as nursery:
        with frozen(node.clock):
            store = await nursery.start(Store(node.directory, StorageOptions(sync=SyncMode.NONE)).run)
            await store.write(ops)
            await store.aclose()
    return {("orders", 0): orders_0_records, ("orders", 1): orders_1_records, ("events", 0): events_0_records}


def records_of(topic: Topic, partition: int) -> list[tuple[int, bytes | None]]:
    log = topic.logs[partition]
    data = log.read(log.log_start_offset, 1 << 30).data
    return [(r.offset, r.value) for b in split_batches(data) for r in b.records()]


def old_keys(running: Running) -> list[bytes]:
    """The keys only the old broker wrote: topic metadata, committed offsets, the id counter."""
    store = running.store
    found = [
        k for prefix in (keys.TOPIC, keys.OFFSETS) for k, _ in store.scan(prefix, keys.prefix_end(prefix))
    ]
    return found + ([keys.COUNTERS] if store.get(keys.COUNTERS) is not None else [])


async def test_an_old_single_node_directory_opens_with_its_topics_offsets_and_committed_offsets(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    expected = await write_old_directory(node)
    async with node.run() as running:
        broker, coordinator = running.broker, running.coordinator
        assert sorted(broker.topics) == ["events", "orders"]
        orders, events = broker.topic("orders"), broker.topic("events")
        assert (orders.topic_id, orders.partitions, orders.config, orders.created_ms) == (
            2,
            2,
            TopicConfig(retention_ms=60_000),
            CREATED_MS,
        )
        assert (events.topic_id, events.partitions, events.replicas) == (5, 1, ((1,),))
        # The partitions read where the old broker left them: offsets, log start, size.
        for (name, partition), records in expected.items():
            assert records_of(broker.topic(name), partition) == records
        log = orders.logs[1]
        assert (log.log_start_offset, log.high_watermark, log.log_end_offset) == (1, 5, 5)
        # Committed offsets are the controller's now; the one of a deleted topic is dropped.
        assert coordinator.group_ids() == ["audit", "billing"]
        assert dict(coordinator.committed("billing")) == {
            ("orders", 0): (2, "checkpoint"),
            ("orders", 1): (4, ""),
        }
        assert dict(coordinator.committed("audit")) == {("events", 0): (1, "")}
        assert sorted(running.controller.view.image.offsets) == [
            ("audit", "events", 0),
            ("billing", "orders", 0),
            ("billing", "orders", 1),
        ]
        # The old keys are gone: the controller is the only authority from now on.
        assert old_keys(running) == []
        # Appends continue each partition's offsets, through its Raft group.
        _, result = await broker.produce("orders", 0, [RecordBatch(build_batch([(None, b"new", (), 2_000)]))])
        assert (result.base_offset, result.last_offset) == (3, 3)
        assert records_of(orders, 0) == [*expected[("orders", 0)], (3, b"new")]
        # The old counter goes on: no id the old broker handed out is used again, and the
        # data of its deleted topics is recognised as obsolete.
        assert (await broker.create_topic("fresh", 1)).topic_id == 8
        assert running.controller.view.image.next_topic_id == 9
        assert all(broker.is_obsolete(keys.data_key(i, 0, 0)) for i in (1, 3, 4, 6, 7))
        assert not any(broker.is_obsolete(keys.data_key(i, 0, 0)) for i in (2, 5, 8, 9))

    async with node.run() as running:  # imported once: a restart finds it all in the controller
        broker = running.broker
        assert sorted(broker.topics) == ["events", "fresh", "orders"]
        assert [broker.topic(n).topic_id for n in ("orders", "events", "fresh")] == [2, 5, 8]
        assert records_of(broker.topic("orders"), 0) == [*expected[("orders", 0)], (3, b"new")]
        assert records_of(broker.topic("orders"), 1) == expected[("orders", 1)]
        assert dict(running.coordinator.committed("billing")) == {
            ("orders", 0): (2, "checkpoint"),
            ("orders", 1): (4, ""),
        }
        assert old_keys(running) == []
        await running.compact()  # the deleted topic's old data goes; the imported topics' stays
        ids = {keys.parse_data_key(k)[0] for k in running.data_keys()}  # type: ignore[index]
        assert sorted(ids) == [2, 5]
        assert (await broker.create_topic("later", 1)).topic_id == 9


async def test_retention_over_an_old_partition_and_its_raft_log_continuing_it(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    """A partition's first batches may predate its Raft group (no Raft entry holds them):
    retention walks those first, then the Raft log."""
    expected = await write_old_directory(node)
    async with node.run() as running:
        log = running.broker.topic("orders").logs[1]
        assert isinstance(log, PartitionReplica)
        new = RecordBatch(build_batch([(None, b"p5", (), 1_000)]))
        await log.produce([new, new])  # offsets 5 and 6, Raft entries
        size = len(new.data)
        # Keep the two new batches' worth: the old batches (offsets 1..3 and 4) go.
        removed = await log.call(ApplyRetention(retention_ms=0, retention_bytes=2 * size, now_ms=0))
        assert removed == 4 and log.log_start_offset == 5
        assert records_of(running.broker.topic("orders"), 1) == [(5, b"p5"), (6, b"p5")]
        assert expected[("orders", 1)][-1][0] == 4  # the last old record went
    async with node.run() as running:
        log = running.broker.topic("orders").logs[1]
        assert (log.log_start_offset, log.high_watermark) == (5, 7)
        assert records_of(running.broker.topic("orders"), 1) == [(5, b"p5"), (6, b"p5")]
