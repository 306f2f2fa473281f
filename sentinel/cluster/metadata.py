"""The cluster's metadata as a pure, replicated state machine: what the controller Raft
group agrees on.

State: the brokers (their client addresses), the topics (id, config, and each partition's
replicas, the first being the preferred leader), and the consumer groups' committed
offsets. It changes only through ``apply(command)``, called on every node for every
committed controller entry in log order, so every node that applied the same prefix holds
the same metadata. ``snapshot()`` / ``restore()`` carry it across log truncation.

Determinism is the rule everything here follows: ``apply`` never reads a clock, a random
number or anything outside the state and the command. Decisions that need choice — which
brokers hold a new topic's replicas — are made by the proposer (``assign_replicas``, also
pure) and carried inside the command, then checked at apply.

A command that cannot apply (a topic that exists already, an unknown broker) changes
nothing and returns the error as its result: the proposer reports it; the other nodes
ignore it. Commands are small JSON documents, versioned (controller traffic is a few
entries a second; readability in a dump beats compactness).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

import attrs

from sentinel.broker.names import validate_group_id, validate_partition_count, validate_topic_name
from sentinel.errors import AlreadyExists, InvalidArgument, NotFound, SentinelError

COMMAND_VERSION: Final = 1
SNAPSHOT_VERSION: Final = 1


@attrs.frozen
class BrokerInfo:
    node_id: int
    host: str
    port: int


@attrs.frozen
class TopicConfig:
    retention_ms: int = 0
    retention_bytes: int = 0


@attrs.frozen
class TopicMeta:
    name: str
    topic_id: int
    replicas: tuple[tuple[int, ...], ...]  # per partition; [0] is the preferred leader
    config: TopicConfig
    created_ms: int

    @property
    def partitions(self) -> int:
        return len(self.replicas)

    @property
    def replication_factor(self) -> int:
        return len(self.replicas[0]) if self.replicas else 0


OffsetKey = tuple[str, str, int]  # group, topic, partition
LeaderKey = tuple[int, int]  # topic id, partition
# What applying a command returns to its proposer: an error (nothing changed), the topic a
# create made, a producer id, or None.
Result = SentinelError | TopicMeta | int | None


@attrs.frozen
class MetadataImage:
    """An immutable picture of the metadata (what readers on other tasks get)."""

    brokers: Mapping[int, BrokerInfo]
    topics: Mapping[str, TopicMeta]
    next_topic_id: int
    offsets: Mapping[OffsetKey, tuple[int, str]]
    applied_index: int
    # The leader (node, term) each partition's leader last reported: how a node that holds
    # no replica of a partition tells a client where its leader is.
    leaders: Mapping[LeaderKey, tuple[int, int]] = MappingProxyType({})

    def leader_of(self, topic_id: int, partition: int, replicas: tuple[int, ...]) -> int:
        """The reported leader of a partition, else its preferred leader (a guess)."""
        reported = self.leaders.get((topic_id, partition))
        return reported[0] if reported is not None and reported[0] in replicas else replicas[0]


# -- commands -----------------------------------------------------------------------------


def register_broker(node_id: int, host: str, port: int) -> bytes:
    return _encode({"op": "register_broker", "node_id": node_id, "host": host, "port": port})


def create_topic(
    name: str, replicas: list[list[int]], config: TopicConfig, created_ms: int, *, if_absent: bool = False
) -> bytes:
    return _encode(
        {
            "op": "create_topic",
            "name": name,
            "replicas": replicas,
            "retention_ms": config.retention_ms,
            "retention_bytes": config.retention_bytes,
            "created_ms": created_ms,
            "if_absent": if_absent,
        }
    )


def import_topic(
    name: str, topic_id: int, replicas: list[list[int]], config: TopicConfig, created_ms: int
) -> bytes:
    """A topic that existed before the controller did (a single-node data directory from
    an earlier version), with its own id: its data is already stored under that id."""
    return _encode(
        {
            "op": "import_topic",
            "name": name,
            "id": topic_id,
            "replicas": replicas,
            "retention_ms": config.retention_ms,
            "retention_bytes": config.retention_bytes,
            "created_ms": created_ms,
        }
    )


def reserve_topic_ids(next_topic_id: int) -> bytes:
    """Never hand out ids below ``next_topic_id`` (ids an imported directory used, deleted
    topics' included: their data may still be on disk)."""
    return _encode({"op": "reserve_topic_ids", "next": next_topic_id})


def allocate_producer_id() -> bytes:
    """A new idempotent producer's id (never handed out twice, across leaders and restarts)."""
    return _encode({"op": "allocate_producer_id"})


def delete_topic(name: str) -> bytes:
    return _encode({"op": "delete_topic", "name": name})


def commit_offsets(group: str, offsets: list[tuple[str, int, int, str]]) -> bytes:
    """``offsets``: (topic, partition, offset, metadata) items."""
    return _encode({"op": "commit_offsets", "group": group, "offsets": [list(o) for o in offsets]})


def report_leaders(node_id: int, leaders: list[tuple[int, int, int]]) -> bytes:
    """Node ``node_id`` leads these ``(topic id, partition, term)`` groups."""
    return _encode({"op": "report_leaders", "node_id": node_id, "leaders": [list(x) for x in leaders]})


def _encode(command: dict[str, Any]) -> bytes:
    command["v"] = COMMAND_VERSION
    return json.dumps(command, sort_keys=True, separators=(",", ":")).encode()


# -- placement ------------------------------------------------------------------------------


def assign_replicas(
    brokers: list[int], partitions: int, replication_factor: int, existing: Mapping[str, TopicMeta]
) -> list[list[int]]:
    """Spread a new topic's replicas over the brokers, leaders balanced: partition p's
    replicas are consecutive brokers (in id order) starting at ``(start + p)``, where
    ``start`` continues from where the existing topics' partitions left off, so successive
    topics rotate preferred leaders over the cluster rather than all starting at the
    lowest id."""
    ids = sorted(brokers)
    if replication_factor < 1:
        raise InvalidArgument(f"replication factor must be at least 1, got {replication_factor}")
    if replication_factor > len(ids):
        raise InvalidArgument(
            f"replication factor {replication_factor} is larger than the {len(ids)} registered brokers"
        )
    start = sum(t.partitions for t in existing.values())
    n = len(ids)
    return [[ids[(start + p + j) % n] for j in range(replication_factor)] for p in range(partitions)]


# -- the state machine ----------------------------------------------------------------------


class ClusterMetadata:
    def __init__(self) -> None:
        self._brokers: dict[int, BrokerInfo] = {}
        self._topics: dict[str, TopicMeta] = {}
        self._next_topic_id = 1
        self._next_producer_id = 1
        self._offsets: dict[OffsetKey, tuple[int, str]] = {}
        self._leaders: dict[LeaderKey, tuple[int, int]] = {}
        self.applied_index = 0
        self._image: MetadataImage | None = None

    def image(self) -> MetadataImage:
        """The current state as an immutable value (cached until the next apply)."""
        if self._image is None:
            self._image = MetadataImage(
                brokers=MappingProxyType(dict(self._brokers)),
                topics=MappingProxyType(dict(self._topics)),
                next_topic_id=self._next_topic_id,
                offsets=MappingProxyType(dict(self._offsets)),
                applied_index=self.applied_index,
                leaders=MappingProxyType(dict(self._leaders)),
            )
        return self._image

    def apply(self, index: int, data: bytes) -> Result:
        """Apply the committed entry at ``index``. Empty entries (a leader's no-op) change
        nothing. Returns the command's result: an error (state unchanged), the topic a
        create made, or None."""
        if index <= self.applied_index:
            raise ValueError(f"entry {index} applied twice (applied up to {self.applied_index})")
        self.applied_index = index
        self._image = None
        if not data:
            return None
        try:
            command = json.loads(data)
            if not isinstance(command, dict) or command.get("v") != COMMAND_VERSION:
                raise ValueError(
                    f"unknown command version {command.get('v') if isinstance(command, dict) else '?'}"
                )
            op = command["op"]
            if op == "register_broker":
                self._register_broker(command)
                return None
            if op == "create_topic":
                return self._create_topic(command)
            if op == "import_topic":
                return self._create_topic(command, topic_id=int(command["id"]))
            if op == "allocate_producer_id":
                self._next_producer_id += 1
                return self._next_producer_id - 1
            if op == "reserve_topic_ids":
                self._next_topic_id = max(self._next_topic_id, int(command["next"]))
                return None
            if op == "delete_topic":
                return self._delete_topic(command)
            if op == "commit_offsets":
                return self._commit_offsets(command)
            if op == "report_leaders":
                self._report_leaders(command)
                return None
            raise ValueError(f"unknown command {op!r}")
        except (ValueError, KeyError, TypeError) as exc:
            # A command this version cannot read changes nothing, on every node alike.
            return InvalidArgument(f"controller entry {index} is not a valid command: {exc}")

    def _register_broker(self, c: dict[str, Any]) -> None:
        node_id, host, port = int(c["node_id"]), str(c["host"]), int(c["port"])
        if node_id < 1 or not 0 < port < 65536:
            raise ValueError(f"broker {node_id} at {host}:{port} is not a valid address")
        self._brokers[node_id] = BrokerInfo(node_id, host, port)

    def _create_topic(self, c: dict[str, Any], topic_id: int | None = None) -> SentinelError | TopicMeta:
        name = str(c["name"])
        validate_topic_name(name)
        existing = self._topics.get(name)
        if existing is not None:
            if c.get("if_absent"):
                return existing
            return AlreadyExists(f"topic {name!r} already exists")
        replicas = tuple(tuple(int(b) for b in r) for r in c["replicas"])
        validate_partition_count(len(replicas))
        rf = len(replicas[0])
        for p, r in enumerate(replicas):
            if len(r) != rf or len(set(r)) != rf:
                return InvalidArgument(
                    f"partition {p} of {name!r} has replicas {list(r)}: need {rf} distinct"
                )
            unknown = [b for b in r if b not in self._brokers]
            if unknown:
                return InvalidArgument(f"partition {p} of {name!r} is assigned to unknown brokers {unknown}")
        config = TopicConfig(int(c["retention_ms"]), int(c["retention_bytes"]))
        if config.retention_ms < 0 or config.retention_bytes < 0:
            return InvalidArgument("retention_ms and retention_bytes must be >= 0 (0 keeps data forever)")
        if topic_id is None:
            topic_id = self._next_topic_id
        elif topic_id < 1 or any(t.topic_id == topic_id for t in self._topics.values()):
            return InvalidArgument(f"topic id {topic_id} of {name!r} is invalid or taken")
        topic = TopicMeta(name, topic_id, replicas, config, int(c["created_ms"]))
        # Ids are never reused: imported ids move the counter past them.
        self._next_topic_id = max(self._next_topic_id, topic_id + 1)
        self._topics[name] = topic
        return topic

    def _report_leaders(self, c: dict[str, Any]) -> None:
        """A report is a fact as of its term: it replaces only an older term's, and a report
        naming a node that holds no replica (or a topic since deleted) changes nothing."""
        node = int(c["node_id"])
        by_id = {t.topic_id: t for t in self._topics.values()}
        for topic_id, partition, term in c["leaders"]:
            meta = by_id.get(int(topic_id))
            key = (int(topic_id), int(partition))
            if meta is None or not 0 <= key[1] < meta.partitions or node not in meta.replicas[key[1]]:
                continue
            known = self._leaders.get(key)
            if known is None or int(term) > known[1]:
                self._leaders[key] = (node, int(term))

    def _delete_topic(self, c: dict[str, Any]) -> SentinelError | None:
        name = str(c["name"])
        meta = self._topics.pop(name, None)
        if meta is None:
            return NotFound(f"topic {name!r} does not exist")
        for leader_key in [k for k in self._leaders if k[0] == meta.topic_id]:
            del self._leaders[leader_key]
        for key in [k for k in self._offsets if k[1] == name]:
            del self._offsets[key]
        return None

    def _commit_offsets(self, c: dict[str, Any]) -> SentinelError | None:
        group = validate_group_id(str(c["group"]))
        items = [(str(t), int(p), int(o), str(m)) for t, p, o, m in c["offsets"]]
        for topic, partition, offset, _meta in items:
            meta = self._topics.get(topic)
            if meta is None:
                return NotFound(f"topic {topic!r} does not exist")
            if not 0 <= partition < meta.partitions:
                return InvalidArgument(f"partition {partition} does not exist in topic {topic!r}")
            if offset < 0:
                return InvalidArgument(f"offset {offset} for {topic}[{partition}] must be >= 0")
        for topic, partition, offset, metadata in items:
            self._offsets[(group, topic, partition)] = (offset, metadata)
        return None

    # -- snapshots ----------------------------------------------------------------------

    def snapshot(self) -> bytes:
        return json.dumps(
            {
                "v": SNAPSHOT_VERSION,
                "applied_index": self.applied_index,
                "next_topic_id": self._next_topic_id,
                "next_producer_id": self._next_producer_id,
                "brokers": [[b.node_id, b.host, b.port] for b in sorted(self._brokers.values(), key=_node)],
                "topics": [
                    {
                        "name": t.name,
                        "id": t.topic_id,
                        "replicas": [list(r) for r in t.replicas],
                        "retention_ms": t.config.retention_ms,
                        "retention_bytes": t.config.retention_bytes,
                        "created_ms": t.created_ms,
                    }
                    for t in sorted(self._topics.values(), key=_topic_id)
                ],
                "offsets": [[g, t, p, o, m] for (g, t, p), (o, m) in sorted(self._offsets.items())],
                "leaders": [[t, p, n, term] for (t, p), (n, term) in sorted(self._leaders.items())],
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()

    @classmethod
    def restore(cls, data: bytes) -> ClusterMetadata:
        try:
            s = json.loads(data)
            if s.get("v") != SNAPSHOT_VERSION:
                raise ValueError(f"unknown snapshot version {s.get('v')}")
            md = cls()
            md.applied_index = int(s["applied_index"])
            md._next_topic_id = int(s["next_topic_id"])
            md._next_producer_id = int(s.get("next_producer_id", 1))
            md._brokers = {int(n): BrokerInfo(int(n), str(h), int(p)) for n, h, p in s["brokers"]}
            for t in s["topics"]:
                meta = TopicMeta(
                    str(t["name"]),
                    int(t["id"]),
                    tuple(tuple(int(b) for b in r) for r in t["replicas"]),
                    TopicConfig(int(t["retention_ms"]), int(t["retention_bytes"])),
                    int(t["created_ms"]),
                )
                md._topics[meta.name] = meta
            md._offsets = {(str(g), str(t), int(p)): (int(o), str(m)) for g, t, p, o, m in s["offsets"]}
            md._leaders = {(int(t), int(p)): (int(n), int(term)) for t, p, n, term in s.get("leaders", [])}
            return md
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"controller snapshot is not valid: {exc}") from None


def _node(b: BrokerInfo) -> int:
    return b.node_id


def _topic_id(t: TopicMeta) -> int:
    return t.topic_id
