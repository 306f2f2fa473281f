"""The Broker on the real storage engine, in a cluster of one: topic admin (proposals to the
controller), auto-creation, the produce path, partitioning, deletion (and what compaction
does with a deleted topic's data) and restart."""

from __future__ import annotations

import json
import pickle
from typing import TYPE_CHECKING

import attrs
import pytest
import trio
import trio.testing

from sentinel.broker import keys
from sentinel.broker.broker import Broker, ObsoleteKeys, Topic, TopicConfig, describe
from sentinel.broker.partitioner import partition_for_key
from sentinel.broker.replica import ApplyRetention, PartitionReplica, partition_group, producers_key
from sentinel.cluster import metadata as md
from sentinel.errors import AlreadyExists, CorruptionError, InvalidArgument, NotFound
from sentinel.raft import lsm_storage
from sentinel.records import RecordBatch, build_batch, split_batches

if TYPE_CHECKING:
    from conftest import NodeFactory


def batch(*values: bytes, key: bytes | None = None) -> RecordBatch:
    return RecordBatch(build_batch([(key, v, (), 1_000) for v in values]))


def values_of(data: bytes) -> list[tuple[int, bytes | None]]:
    return [(r.offset, r.value) for b in split_batches(data) for r in b.records()]


def read_all(topic: Topic, partition: int) -> list[tuple[int, bytes | None]]:
    log = topic.logs[partition]
    return values_of(log.read(log.log_start_offset, 1 << 30).data)


# -- topic admin -------------------------------------------------------------------------


async def test_create_list_describe_delete(node: NodeFactory, clock: trio.testing.MockClock) -> None:
    async with node.run() as running:
        broker = running.broker
        assert dict(broker.topics) == {}
        orders = await broker.create_topic("orders", 3, 1, TopicConfig(retention_ms=60_000))
        logs = await broker.create_topic("logs.app-1_x", 1)
        assert sorted(broker.topics) == ["logs.app-1_x", "orders"]
        assert broker.topic("orders") is orders
        assert (orders.topic_id, logs.topic_id) == (1, 2)
        # The topics are the controller's metadata, not keys of the broker's own (no T keys).
        assert sorted(running.controller.view.image.topics) == ["logs.app-1_x", "orders"]
        assert list(running.store.scan(keys.TOPIC, keys.prefix_end(keys.TOPIC))) == []
        await orders.logs[2].produce([batch(b"a", b"b")])
        assert describe(orders) == {
            "name": "orders",
            "partitions": [
                {
                    "partition": 0,
                    "replicas": [1],
                    "leader": 1,
                    "log_start_offset": 0,
                    "high_watermark": 0,
                    "size_bytes": 0,
                },
                {
                    "partition": 1,
                    "replicas": [1],
                    "leader": 1,
                    "log_start_offset": 0,
                    "high_watermark": 0,
                    "size_bytes": 0,
                },
                {
                    "partition": 2,
                    "replicas": [1],
                    "leader": 1,
                    "log_start_offset": 0,
                    "high_watermark": 2,
                    "size_bytes": orders.logs[2].size_bytes,
                },
            ],
            "replication_factor": 1,
            "retention_ms": 60_000,
            "retention_bytes": 0,
        }
        assert orders.logs[2].size_bytes > 0
        await running.flush()  # a table the compaction below rewrites (no trivial move)

        with pytest.raises(AlreadyExists, match=r"^topic 'orders' already exists$"):
            await broker.create_topic("orders", 5)
        assert broker.topic("orders").partitions == 3  # unchanged

        await broker.delete_topic("orders")
        assert sorted(broker.topics) == ["logs.app-1_x"]
        assert sorted(running.controller.view.image.topics) == ["logs.app-1_x"]
        for log in orders.logs:  # the deleted topic's replicas stop (waking their readers)
            assert isinstance(log, PartitionReplica)
            await log.wait_stopped()
            assert log.view.closed
        with pytest.raises(NotFound, match=r"^topic 'orders' does not exist$"):
            broker.topic("orders")
        with pytest.raises(NotFound, match=r"^topic 'orders' does not exist$"):
            await broker.delete_topic("orders")
        # The deleted topic's partition state, producer table and Raft records are obsolete:
        # compaction drops them. The other topic's stay.
        deleted = [
            keys.state_key(orders.topic_id, 2),
            producers_key(orders.topic_id, 2),
            *(k for k, _ in running.store.scan(*group_range(orders.topic_id, 2))),
        ]
        kept = [
            keys.state_key(logs.topic_id, 0),
            *(k for k, _ in running.store.scan(*group_range(logs.topic_id, 0))),
        ]
        assert running.store.get(deleted[0]) is not None and len(deleted) > 2 and len(kept) > 1
        assert all(broker.is_obsolete(k) for k in deleted)
        assert not any(broker.is_obsolete(k) for k in kept)
        await running.compact()
        assert [k for k in deleted if running.store.get(k) is not None] == []
        assert [k for k in kept if running.store.get(k) is None] == []


def group_range(topic_id: int, partition: int) -> tuple[bytes, bytes]:
    """Every Raft record (hard state, meta, entries) of a partition's group."""
    prefix = lsm_storage.group_prefix(partition_group(topic_id, partition))
    return prefix, keys.prefix_end(prefix)


async def test_topics_and_their_configs_survive_a_restart(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run() as running:
        await running.broker.create_topic("a", 2, config=TopicConfig(retention_ms=5, retention_bytes=7))
        await running.broker.create_topic("gone", 1)
        await running.broker.create_topic("b", 4)
        await running.broker.delete_topic("gone")
    async with node.run() as running:
        topics = running.broker.topics
        assert sorted(topics) == ["a", "b"]
        assert (topics["a"].topic_id, topics["a"].partitions, topics["a"].config) == (1, 2, TopicConfig(5, 7))
        assert (topics["b"].topic_id, topics["b"].partitions) == (3, 4)
        # Topic ids are never reused, also across restarts.
        assert (await running.broker.create_topic("c", 1)).topic_id == 4


async def test_invalid_names_and_sizes_are_rejected_with_precise_errors(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    cases: list[tuple[dict[str, object], str]] = [
        ({"name": ""}, "invalid topic name '': must not be empty"),
        (
            {"name": "has space"},
            "invalid topic name 'has space': only ASCII letters, digits, '.', '_' and "
            "'-' are allowed (found ' ' at index 3)",
        ),
        ({"name": ".."}, "invalid topic name '..': '.' and '..' are not allowed"),
        ({"name": "x" * 250}, "must be at most 249 characters, got 250"),
        (
            {"name": "__internal"},
            "invalid topic name '__internal': names starting with '__' are reserved for internal topics",
        ),
        ({"name": "ok", "partitions": -1}, "partition count must be between 1 and 10000, got -1"),
        ({"name": "ok", "partitions": 10_001}, "partition count must be between 1 and 10000, got 10001"),
        ({"name": "ok", "replication_factor": 0}, "replication factor must be at least 1, got 0"),
        (
            {"name": "ok", "replication_factor": 3},
            "replication factor 3 exceeds the number of brokers: the cluster has 1 broker",
        ),
        (
            {"name": "ok", "config": TopicConfig(retention_ms=-1)},
            "retention_ms and retention_bytes must be >= 0",
        ),
    ]
    async with node.run(default_partitions=2) as running:
        for arguments, message in cases:
            with pytest.raises(InvalidArgument) as info:
                await running.broker.create_topic(**arguments)
            assert message in str(info.value), arguments
        assert dict(running.broker.topics) == {}
        # Nothing was spent on the failures; 0 (the wire default) means the broker default.
        created = await running.broker.create_topic("ok", 0)
        assert (created.topic_id, created.partitions) == (1, 2)
        assert (await running.broker.create_topic("x" * 249, None)).partitions == 2


# -- produce -----------------------------------------------------------------------------


async def test_produce_auto_creates_a_topic_once_with_the_default_partitions(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run(default_partitions=3) as running:
        broker = running.broker
        results: list[tuple[int, int]] = []

        async def produce(n: int) -> None:
            partition, result = await broker.produce("new-topic", 1, [batch(b"v%d" % n)])
            results.append((partition, result.base_offset))

        async with trio.open_nursery() as nursery:  # racing auto-creations
            for n in range(5):
                nursery.start_soon(produce, n)
        topic = broker.topic("new-topic")
        assert (topic.topic_id, topic.partitions) == (1, 3)
        assert sorted(results) == [(1, n) for n in range(5)]
        assert sorted(v for _, v in read_all(topic, 1)) == [b"v%d" % n for n in range(5)]

        with pytest.raises(InvalidArgument, match="reserved for internal topics"):
            await broker.produce("__auto", 0, [batch(b"x")])
        with pytest.raises(InvalidArgument, match="invalid topic name 'a/b'"):
            await broker.produce("a/b", 0, [batch(b"x")])
        assert sorted(broker.topics) == ["new-topic"]


async def test_produce_to_an_unknown_topic_fails_when_auto_creation_is_off(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run(auto_create_topics=False) as running:
        with pytest.raises(NotFound, match=r"^topic 'nope' does not exist \(auto-creation is disabled\)$"):
            await running.broker.produce("nope", 0, [batch(b"x")])
        assert dict(running.broker.topics) == {}
        await running.broker.create_topic("yes", 1)
        partition, result = await running.broker.produce("yes", 0, [batch(b"x")])
        assert (partition, result.base_offset) == (0, 0)


async def test_produce_to_a_partition_that_does_not_exist_fails(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run() as running:
        await running.broker.create_topic("t", 3)
        for partition in (3, 100, -2):
            with pytest.raises(
                InvalidArgument,
                match=rf"^partition {partition} does not exist in topic 't' \(valid partitions are 0..2\)$",
            ):
                await running.broker.produce("t", partition, [batch(b"x")])
        assert all(log.log_end_offset == 0 for log in running.broker.topic("t").logs)


async def test_partitioning_key_hash_round_robin_and_explicit(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run() as running:
        broker = running.broker
        await broker.create_topic("t", 5)
        await broker.create_topic("u", 2)
        keys_ = [b"user-%d" % n for n in range(40)] + [b""]
        placed = {}
        for key in keys_:
            partition, _ = await broker.produce("t", -1, [batch(b"v", key=key)])
            # Kafka's murmur2 placement (an empty key is a key like any other).
            assert partition == partition_for_key(key, 5)
            placed[key] = partition
        assert len(set(placed.values())) == 5  # the keys spread over every partition
        for key in keys_:  # stable: the same key always lands on the same partition
            assert (await broker.produce("t", -1, [batch(b"again", key=key)]))[0] == placed[key]

        # Keyless: round-robin per topic, one counter per topic.
        chosen_t = [(await broker.produce("t", -1, [batch(b"k")]))[0] for _ in range(7)]
        chosen_u = [(await broker.produce("u", -1, [batch(b"k")]))[0] for _ in range(3)]
        assert chosen_t == [0, 1, 2, 3, 4, 0, 1]
        assert chosen_u == [0, 1, 0]

        # An explicit partition wins over the key.
        key = b"user-1"
        other = (placed[key] + 1) % 5
        partition, result = await broker.produce("t", other, [batch(b"explicit", key=key)])
        assert partition == other
        assert values_of(broker.topic("t").logs[other].read(result.base_offset, 1 << 20).data) == [
            (result.base_offset, b"explicit")
        ]
    async with node.run() as running:  # the hash is not salted per process
        for key in keys_:
            assert (await running.broker.produce("t", -1, [batch(b"v", key=key)]))[0] == placed[key]


# -- delete and recreate -----------------------------------------------------------------


async def test_deleted_then_recreated_topic_is_empty_also_after_restart_and_compaction(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run() as running:
        broker = running.broker
        old = await broker.create_topic("t", 2)
        keep = await broker.create_topic("keep", 1)
        for n in range(5):
            await broker.produce("t", n % 2, [batch(b"old-%d" % n)])
        await broker.produce("keep", 0, [batch(b"kept")])
        await running.flush()

        await broker.delete_topic("t")
        new = await broker.create_topic("t", 2)
        assert new.topic_id != old.topic_id
        assert [log.high_watermark for log in new.logs] == [0, 0]
        assert read_all(new, 0) == read_all(new, 1) == []
        partition, result = await broker.produce("t", 1, [batch(b"new")])
        assert (partition, result.base_offset) == (1, 0)
        old_id, new_id = old.topic_id, new.topic_id

    async with node.run() as running:
        topic = running.broker.topic("t")
        assert topic.topic_id == new_id
        assert read_all(topic, 0) == [] and read_all(topic, 1) == [(0, b"new")]
        assert [log.high_watermark for log in topic.logs] == [0, 1]
        # Until a compaction rewrites them, the old records are still on disk...
        assert any(keys.parse_data_key(k)[0] == old_id for k in running.data_keys())
        await running.compact()
        # ...which drops them (the filter knows the topic id is dead); the rest stays.
        ids = [keys.parse_data_key(k)[0] for k in running.data_keys()]
        assert sorted(ids) == sorted([new_id, keep.topic_id])
        assert read_all(topic, 1) == [(0, b"new")]
        assert read_all(running.broker.topic("keep"), 0) == [(0, b"kept")]

    async with node.run() as running:
        topic = running.broker.topic("t")
        assert read_all(topic, 0) == [] and read_all(topic, 1) == [(0, b"new")]
        assert (await running.broker.produce("t", 0, [batch(b"after")]))[1].base_offset == 0


async def test_a_deleted_topic_resting_in_the_last_level_is_reclaimed_by_the_next_retention_pass(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run() as running:
        broker = running.broker
        gone = await broker.create_topic("gone", 1)
        keep = await broker.create_topic("keep", 1)
        for n in range(5):
            await broker.produce("gone", 0, [batch(b"old-%d" % n)])
        await broker.produce("keep", 0, [batch(b"kept")])
        await running.compact()  # everything rests in the last level: no compaction rewrites it
        await broker.delete_topic("gone")
        assert any(keys.parse_data_key(k)[0] == gone.topic_id for k in running.data_keys())
        await broker.enforce_retention()  # the periodic pass reclaims what deletes left behind
        assert [keys.parse_data_key(k)[0] for k in running.data_keys()] == [keep.topic_id]
        assert read_all(broker.topic("keep"), 0) == [(0, b"kept")]


async def test_compaction_filter_decisions(node: NodeFactory, clock: trio.testing.MockClock) -> None:
    async with node.run() as running:
        broker = running.broker
        live = await broker.create_topic("live", 2)
        dead = await broker.create_topic("dead", 1)
        last = batch(b"c")
        await live.logs[1].produce([batch(b"a", b"b"), last])
        retain = ApplyRetention(retention_ms=0, retention_bytes=len(last.data), now_ms=0)
        assert await live.logs[1].call(retain) == 2
        # What enforce_retention does after removing records.
        broker._publish_liveness(running.controller.view.image.next_topic_id)
        await broker.delete_topic("dead")

        # The live filter (worker threads) and its snapshot as a worker process gets it
        # (pickled plain data) answer alike.
        snapshot = pickle.loads(pickle.dumps(broker.obsolete_keys()))
        for obsolete in (broker.is_obsolete, snapshot):
            assert not obsolete(keys.data_key(live.topic_id, 0, 0))
            assert obsolete(keys.data_key(live.topic_id, 1, 1))  # below the log start 2
            assert not obsolete(keys.data_key(live.topic_id, 1, 2))
            assert obsolete(keys.data_key(dead.topic_id, 0, 12345))
            assert not obsolete(keys.data_key(99, 0, 0))  # an id not handed out yet
            # A deleted topic's partition state, producer table and Raft records go with its data
            # (the broker no longer deletes them itself); a live topic's, the controller's, an
            # id not handed out yet and the keys of a single-node data directory stay.
            for gone in (
                keys.state_key(dead.topic_id, 0),
                producers_key(dead.topic_id, 0),
                lsm_storage.entry_key(partition_group(dead.topic_id, 0), 1),
                lsm_storage.group_prefix(partition_group(dead.topic_id, 0)) + b"h",
            ):
                assert obsolete(gone), gone
            for other in (
                keys.state_key(live.topic_id, 0),
                producers_key(live.topic_id, 1),
                lsm_storage.group_prefix(partition_group(live.topic_id, 1)) + b"h",
                lsm_storage.entry_key(partition_group(live.topic_id, 1), 10**6),
                lsm_storage.entry_key(0, 1),
                keys.state_key(99, 0),
                keys.topic_key("dead"),
                keys.COUNTERS,
                keys.offset_key("g", "dead", 0),
            ):
                assert not obsolete(other), other


def test_the_filter_snapshot_drops_raft_entries_below_each_groups_first_index() -> None:
    group = partition_group(4, 0)
    snapshot = ObsoleteKeys(frozenset({4}), 5, {}, {group: 10, 0: 3})
    assert [snapshot(lsm_storage.entry_key(group, i)) for i in (1, 9, 10, 11)] == [True, True, False, False]
    assert [snapshot(lsm_storage.entry_key(0, i)) for i in (2, 3)] == [True, False]  # the controller's
    assert not snapshot(lsm_storage.entry_key(partition_group(4, 1), 1))  # a group it does not know
    assert snapshot(lsm_storage.entry_key(partition_group(3, 0), 10**6))  # a deleted topic's


async def test_compaction_filter_reads_one_immutable_snapshot(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    # Worker threads read the broker's liveness with one attribute access: a snapshot taken
    # before a change stays whole and unchanged, the change arrives as a new snapshot.
    async with node.run() as running:
        broker = running.broker
        topic = await broker.create_topic("t", 1)
        before = broker._liveness
        assert topic.topic_id in before.live_ids and before.next_topic_id == topic.topic_id + 1
        await broker.delete_topic("t")
        after = broker._liveness
        assert topic.topic_id in before.live_ids and topic.topic_id not in after.live_ids
        assert after.next_topic_id == before.next_topic_id
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            after.live_ids = frozenset()  # type: ignore[misc]
        with pytest.raises(TypeError):
            after.log_starts[(topic.topic_id, 0)] = 5  # type: ignore[index]


async def test_compaction_filter_never_drops_live_data_while_the_broker_loads(
    node: NodeFactory, clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The filter runs in compaction worker threads, concurrently with the broker's start
    (it opens a replica per partition as it follows the controller's metadata): it must
    never see the topic-id counter without the live topics."""
    async with node.run() as running:
        for name in ("a", "b", "c"):
            await running.broker.create_topic(name, 1)
        ids = [t.topic_id for t in running.broker.topics.values()]

    seen: list[bool] = []
    original = Broker._start_replica

    async def observed_start_replica(
        self: Broker, name: str, meta: md.TopicMeta, partition: int, assigned: tuple[int, ...]
    ) -> PartitionReplica:
        # What a compaction thread would decide at this instant of the load.
        seen.extend(self.is_obsolete(keys.data_key(i, 0, 0)) for i in ids)
        return await original(self, name, meta, partition, assigned)

    monkeypatch.setattr(Broker, "_start_replica", observed_start_replica)
    async with node.run() as running:
        assert sorted(running.broker.topics) == ["a", "b", "c"]
    assert len(seen) == 9 and not any(seen)


async def test_corrupt_topic_metadata_fails_the_start_loudly(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run() as running:
        await running.broker.create_topic("fine", 1)
        await running.store.put(keys.topic_key("broken"), json.dumps({"id": 9}).encode())
    with pytest.RaisesGroup(
        pytest.RaisesExc(CorruptionError, match=r"corruption in topic metadata of 'broken': 'partitions'"),
        flatten_subgroups=True,
    ):
        async with node.run():
            pass


# -- poison batches ----------------------------------------------------------------------


def _poison() -> RecordBatch:
    """A batch with a valid header and CRC whose records are garbage."""
    import struct

    from crc32c import crc32c

    good = bytearray(build_batch([(None, b"v%d" % i, (), 1_000) for i in range(3)]))
    good[61 + 3] = 0x7E  # record 0's offsetDelta: 63
    struct.pack_into(">I", good, 17, crc32c(bytes(good[21:])))
    return RecordBatch(bytes(good))


@pytest.mark.parametrize("partition", [0, 1, -1])
async def test_a_poison_batch_is_rejected_on_every_produce_path(
    node: NodeFactory, clock: trio.testing.MockClock, partition: int
) -> None:
    async with node.run() as running:
        await running.broker.create_topic("t", 2)
        with pytest.raises(
            InvalidArgument,
            match=r"^batch 1 of the produce request: malformed record 0 at byte 0 of the records "
            r"section: offsetDelta: expected 0, found 63$",
        ):
            await running.broker.produce("t", partition, [batch(b"ok"), _poison()])
        assert all(log.log_end_offset == 0 for log in running.broker.topic("t").logs)


async def test_offset_for_timestamp_answers_despite_a_damaged_stored_batch(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run() as running:
        await running.broker.create_topic("t", 1)
        log = running.broker.topic("t").logs[0]
        early = RecordBatch(build_batch([(None, v, (), 500) for v in (b"a", b"b")]))
        assert isinstance(log, PartitionReplica)
        # The replica takes what it is given: the broker's produce validation is bypassed.
        await log.produce([early])
        await log.produce([_poison()])  # offsets 2..4, timestamps 1_000
        await log.produce([batch(b"c")])
        assert await log.offset_for_timestamp(400) == (0, 500)
        # The damaged batch is the first whose header reaches 1_000: its first offset answers.
        assert await log.offset_for_timestamp(1_000) == (2, 1_000)
        assert await log.offset_for_timestamp(1_001) == (6, -1)
