"""Opening a data directory written by a single-node broker of an earlier version.

Before the controller existed, a broker kept its topics in its own store (``T`` keys: name
-> JSON with the topic id, partition count, config), a topic id counter (``C``) and the
consumer groups' committed offsets (``O`` keys). The partitions' data (``L``) and state
(``S``) keys are unchanged: a replica opens them as they are, its Raft log starting after
the last offset stored.

``import_legacy_topics`` (a cluster of one, at start-up) proposes each such topic to the
controller with its own id (``import_topic``) and its committed offsets, then deletes the
old keys. It is idempotent: a crash half-way imports what is left at the next start (a
topic imported already is skipped by name). A node started with ``--peers`` on such a
directory refuses to start: its topics would collide with the cluster's.
"""

from __future__ import annotations

import json
import logging

from sentinel.broker import keys
from sentinel.cluster import metadata as md
from sentinel.cluster.controller import Controller
from sentinel.errors import CorruptionError, FailedPrecondition
from sentinel.storage.store import Store

logger = logging.getLogger(__name__)


def _legacy_topics(store: Store) -> list[tuple[str, dict[str, int]]]:
    out = []
    for key, value in store.scan(keys.TOPIC, keys.prefix_end(keys.TOPIC)):
        name = key[1:].decode()
        try:
            meta = json.loads(value)
            parsed = {
                "id": int(meta["id"]),
                "partitions": int(meta["partitions"]),
                "retention_ms": int(meta["retention_ms"]),
                "retention_bytes": int(meta["retention_bytes"]),
                "created_ms": int(meta["created_ms"]),
            }
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptionError(f"topic metadata of {name!r}", None, str(exc)) from None
        out.append((name, parsed))
    return out


def check_no_legacy_topics(store: Store) -> None:
    topics = _legacy_topics(store)
    if topics:
        raise FailedPrecondition(
            f"{store.directory} holds {len(topics)} topic(s) of a single-node broker "
            f"({', '.join(sorted(n for n, _ in topics)[:3])}...): start it once without --peers "
            "to move them to the controller, or use a new data directory for a cluster node"
        )


async def import_legacy_topics(store: Store, controller: Controller, node_id: int) -> int:
    """Move an earlier single-node broker's topics and committed offsets to the
    controller; returns how many topics were imported."""
    topics = _legacy_topics(store)
    counters = store.get(keys.COUNTERS)
    if not topics and counters is None:
        return 0
    if counters is not None:
        # Deleted topics' ids too: their data may still be on disk until compaction.
        await controller.propose(md.reserve_topic_ids(keys.decode_counters(counters)))
    image = controller.view.image
    imported = 0
    for name, meta in topics:
        if name in image.topics:
            continue
        replicas = [[node_id]] * meta["partitions"]
        config = md.TopicConfig(meta["retention_ms"], meta["retention_bytes"])
        await controller.propose(md.import_topic(name, meta["id"], replicas, config, meta["created_ms"]))
        imported += 1
    by_group: dict[str, list[tuple[str, int, int, str]]] = {}
    old_offsets: list[bytes] = []
    topics_now = controller.view.image.topics
    for key, value in store.scan(keys.OFFSETS, keys.prefix_end(keys.OFFSETS)):
        group, topic, partition = keys.parse_offset_key(key)
        offset, metadata = keys.decode_offset(value)
        old_offsets.append(key)
        imported_as = topics_now.get(topic)
        if imported_as is None or partition >= imported_as.partitions:
            # The old broker deleted a topic's offsets in a write after the topic's: a crash
            # (or a full disk) between the two left these behind.
            logger.info("dropping group %r's offset of deleted topic %s[%d]", group, topic, partition)
            continue
        by_group.setdefault(group, []).append((topic, partition, offset, metadata))
    for group, items in by_group.items():
        await controller.propose(md.commit_offsets(group, items))
    ops: list[tuple[bytes, bytes | None]] = [(keys.topic_key(name), None) for name, _ in topics]
    ops.extend((key, None) for key in old_offsets)
    ops.append((keys.COUNTERS, None))
    await store.write(ops)
    if imported:
        logger.info("moved %d topic(s) of a single-node data directory to the controller", imported)
    return imported
