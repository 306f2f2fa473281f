"""The controller's metadata state machine: deterministic apply, placement, snapshots."""

from __future__ import annotations

import pytest

from sentinel.cluster import metadata as md
from sentinel.cluster.metadata import ClusterMetadata, TopicConfig, assign_replicas
from sentinel.errors import AlreadyExists, InvalidArgument, NotFound


def cluster(*nodes: int) -> ClusterMetadata:
    m = ClusterMetadata()
    for i, n in enumerate(nodes, 1):
        assert m.apply(i, md.register_broker(n, "127.0.0.1", 9000 + n)) is None
    return m


def test_placement_spreads_replicas_and_rotates_leaders_across_topics() -> None:
    m = cluster(1, 2, 3)
    first = assign_replicas([1, 2, 3], 2, 3, m.image().topics)
    assert first == [[1, 2, 3], [2, 3, 1]]
    assert isinstance(m.apply(4, md.create_topic("a", first, TopicConfig(), 0)), md.TopicMeta)
    # The next topic continues the rotation: its first partition's leader is not node 1 again.
    second = assign_replicas([3, 1, 2], 2, 2, m.image().topics)
    assert second == [[3, 1], [1, 2]]
    with pytest.raises(InvalidArgument, match="replication factor 4 is larger than the 3 registered brokers"):
        assign_replicas([1, 2, 3], 1, 4, {})


def test_every_node_applying_the_same_entries_holds_the_same_metadata() -> None:
    entries = [
        md.register_broker(1, "h1", 9092),
        md.register_broker(2, "h2", 9092),
        md.create_topic("orders", [[1, 2], [2, 1]], TopicConfig(retention_ms=60_000), 1234),
        md.create_topic("orders", [[1, 2]], TopicConfig(), 99),  # a second create: refused
        b"",  # a leader's no-op
        md.commit_offsets("billing", [("orders", 1, 42, "m")]),
        md.delete_topic("nope"),
    ]
    images = []
    for _ in range(2):
        m = ClusterMetadata()
        results = [m.apply(i, e) for i, e in enumerate(entries, 1)]
        images.append(m.snapshot())
    assert images[0] == images[1]
    assert isinstance(results[3], AlreadyExists) and isinstance(results[6], NotFound)
    image = ClusterMetadata.restore(images[0]).image()
    assert image.topics["orders"].topic_id == 1 and image.topics["orders"].replicas == ((1, 2), (2, 1))
    assert image.offsets[("billing", "orders", 1)] == (42, "m")
    assert image.applied_index == len(entries) and image.next_topic_id == 2


def test_a_create_naming_unknown_brokers_or_uneven_replicas_changes_nothing() -> None:
    m = cluster(1, 2)
    bad = m.apply(3, md.create_topic("t", [[1, 5]], TopicConfig(), 0))
    assert isinstance(bad, InvalidArgument) and "unknown brokers [5]" in str(bad)
    bad = m.apply(4, md.create_topic("t", [[1, 2], [1]], TopicConfig(), 0))
    assert isinstance(bad, InvalidArgument) and "need 2 distinct" in str(bad)
    assert m.image().topics == {} and m.image().next_topic_id == 1


def test_offsets_for_unknown_topics_or_partitions_are_refused_whole() -> None:
    m = cluster(1)
    m.apply(2, md.create_topic("t", [[1]], TopicConfig(), 0))
    result = m.apply(3, md.commit_offsets("g", [("t", 0, 5, ""), ("t", 3, 1, "")]))
    assert isinstance(result, InvalidArgument) and "partition 3 does not exist" in str(result)
    assert m.image().offsets == {}
    assert m.apply(4, md.commit_offsets("g", [("t", 0, 5, "")])) is None
    assert m.apply(5, md.delete_topic("t")) is None
    assert m.image().offsets == {}  # a deleted topic's committed offsets go with it


def test_an_unreadable_entry_changes_nothing_on_any_node() -> None:
    m = cluster(1)
    for i, junk in enumerate([b"{", b"[]", b'{"v":9,"op":"x"}', b'{"v":1,"op":"teleport"}'], 2):
        result = m.apply(i, junk)
        assert isinstance(result, InvalidArgument) and f"controller entry {i} is not a valid command" in str(
            result
        )
    assert m.image().topics == {} and m.applied_index == 5


def test_entries_apply_once_in_order() -> None:
    m = cluster(1)
    with pytest.raises(ValueError, match="applied twice"):
        m.apply(1, b"")


def test_the_image_is_immutable_and_cached_until_the_next_apply() -> None:
    m = cluster(1)
    image = m.image()
    assert m.image() is image
    with pytest.raises(TypeError):
        image.brokers[5] = None  # type: ignore[index]
    m.apply(2, b"")
    assert m.image() is not image and image.applied_index == 1


def test_a_damaged_snapshot_is_refused() -> None:
    data = cluster(1, 2).snapshot()
    with pytest.raises(ValueError, match="controller snapshot is not valid"):
        ClusterMetadata.restore(data[:-3])
    with pytest.raises(ValueError, match="unknown snapshot version"):
        ClusterMetadata.restore(data.replace(b'"v":1', b'"v":7'))


def test_an_imported_topic_keeps_its_id_and_ids_are_never_reused() -> None:
    m = cluster(1)
    imported = m.apply(2, md.import_topic("old", 7, [[1]], TopicConfig(), 5))
    assert isinstance(imported, md.TopicMeta) and imported.topic_id == 7
    fresh = m.apply(3, md.create_topic("new", [[1]], TopicConfig(), 6))
    assert isinstance(fresh, md.TopicMeta) and fresh.topic_id == 8
    taken = m.apply(4, md.import_topic("again", 7, [[1]], TopicConfig(), 5))
    assert isinstance(taken, InvalidArgument) and "topic id 7" in str(taken)


def test_reserved_ids_are_never_handed_out() -> None:
    m = cluster(1)
    assert m.apply(2, md.reserve_topic_ids(40)) is None
    assert m.apply(3, md.reserve_topic_ids(10)) is None  # never backwards
    made = m.apply(4, md.create_topic("t", [[1]], TopicConfig(), 0))
    assert isinstance(made, md.TopicMeta) and made.topic_id == 40


def test_a_reported_leader_replaces_only_an_older_terms_and_survives_a_snapshot() -> None:
    m = cluster(1, 2, 3)
    topic = m.apply(4, md.create_topic("t", [[1, 2], [2, 3]], TopicConfig(), 0))
    assert isinstance(topic, md.TopicMeta)
    tid = topic.topic_id
    assert m.image().leader_of(tid, 0, (1, 2)) == 1  # nothing reported: the preferred leader
    m.apply(5, md.report_leaders(2, [(tid, 0, 3), (tid, 1, 1)]))
    assert m.image().leaders == {(tid, 0): (2, 3), (tid, 1): (2, 1)}
    assert m.image().leader_of(tid, 0, (1, 2)) == 2
    m.apply(6, md.report_leaders(1, [(tid, 0, 2)]))  # an older term's report, arriving late
    m.apply(7, md.report_leaders(1, [(tid, 1, 9)]))  # node 1 holds no replica of partition 1
    m.apply(8, md.report_leaders(3, [(tid, 5, 9), (999, 0, 9)]))  # no such partition, topic
    assert m.image().leaders == {(tid, 0): (2, 3), (tid, 1): (2, 1)}
    m.apply(9, md.report_leaders(1, [(tid, 0, 4)]))
    assert m.image().leaders[(tid, 0)] == (1, 4)
    restored = ClusterMetadata.restore(m.snapshot())
    assert restored.image().leaders == m.image().leaders
    m.apply(10, md.delete_topic("t"))
    assert m.image().leaders == {}
