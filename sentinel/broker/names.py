"""Validation of user-supplied names and sizes: topic names, group ids, partition counts,
replication factors.

Kafka's rules, so names move between Sentinel and Kafka tooling unchanged:
- a topic name is 1..249 characters of ASCII letters, digits, '.', '_' and '-', and is neither
  "." nor ".." (both would be path components on disk); names starting with "__" are reserved
  for internal topics: they may be read and written but not created by users;
- a group id is 1..255 printable characters;
- a topic has 1..10000 partitions and a replication factor of at least 1 (and at most the
  number of brokers, when the caller knows it).

Every validator returns its (unchanged) input so it composes in expressions, and raises
InvalidArgument with a message naming the value and the rule it broke.
"""

from __future__ import annotations

import re

from sentinel.errors import InvalidArgument

__all__ = [
    "INTERNAL_TOPIC_PREFIX",
    "MAX_GROUP_ID_LENGTH",
    "MAX_PARTITIONS",
    "MAX_TOPIC_NAME_LENGTH",
    "is_internal_topic",
    "topic_collision_key",
    "validate_group_id",
    "validate_new_topic_name",
    "validate_partition_count",
    "validate_replication_factor",
    "validate_topic_name",
]

# Kafka's limit: 255 (a file name) minus room for the "-<partition>" directory suffix.
MAX_TOPIC_NAME_LENGTH = 249
# Kafka does not bound group ids; 255 keeps them storable as one key component and printable.
MAX_GROUP_ID_LENGTH = 255
# One Raft group per partition: beyond this a single topic would swamp the cluster.
MAX_PARTITIONS = 10_000
INTERNAL_TOPIC_PREFIX = "__"

_TOPIC_CHARS = re.compile(r"[a-zA-Z0-9._\-]+")
_TOPIC_BAD_CHAR = re.compile(r"[^a-zA-Z0-9._\-]")
# Long names are shortened in error messages so one bad request cannot produce a huge line.
_SHOWN_NAME_CHARS = 64


def _shown(name: str) -> str:
    if len(name) <= _SHOWN_NAME_CHARS:
        return repr(name)
    return f"{name[:_SHOWN_NAME_CHARS]!r}... ({len(name)} characters)"


def validate_topic_name(name: str) -> str:
    """Check the syntax of a topic name (internal "__" names allowed: reading them is fine)."""
    if not isinstance(name, str):
        raise InvalidArgument(f"invalid topic name {name!r}: must be a string")
    if not name:
        raise InvalidArgument("invalid topic name '': must not be empty")
    if len(name) > MAX_TOPIC_NAME_LENGTH:
        raise InvalidArgument(
            f"invalid topic name {_shown(name)}: must be at most {MAX_TOPIC_NAME_LENGTH} characters, "
            f"got {len(name)}"
        )
    if name in (".", ".."):
        raise InvalidArgument(f"invalid topic name {name!r}: '.' and '..' are not allowed")
    if _TOPIC_CHARS.fullmatch(name) is None:
        bad = _TOPIC_BAD_CHAR.search(name)
        assert bad is not None  # fullmatch failed on a non-empty name, so some character is bad
        raise InvalidArgument(
            f"invalid topic name {_shown(name)}: only ASCII letters, digits, '.', '_' and '-' are "
            f"allowed (found {bad.group()!r} at index {bad.start()})"
        )
    return name


def is_internal_topic(name: str) -> bool:
    """True for names reserved for Sentinel's own topics (prefix "__")."""
    return name.startswith(INTERNAL_TOPIC_PREFIX)


def validate_new_topic_name(name: str) -> str:
    """Check a topic name a user asks to create: the syntax, and not an internal "__" name."""
    validate_topic_name(name)
    if is_internal_topic(name):
        raise InvalidArgument(
            f"invalid topic name {_shown(name)}: names starting with {INTERNAL_TOPIC_PREFIX!r} are "
            "reserved for internal topics"
        )
    return name


def topic_collision_key(name: str) -> str:
    """The key under which two topic names collide: '.' and '_' are the same character in
    metric names, so "a.b" and "a_b" must not both exist (Kafka refuses the second)."""
    return name.replace(".", "_")


def validate_group_id(group_id: str) -> str:
    """Check a consumer group id: 1..255 printable characters."""
    if not isinstance(group_id, str):
        raise InvalidArgument(f"invalid group id {group_id!r}: must be a string")
    if not group_id:
        raise InvalidArgument("invalid group id '': must not be empty")
    if len(group_id) > MAX_GROUP_ID_LENGTH:
        raise InvalidArgument(
            f"invalid group id {_shown(group_id)}: must be at most {MAX_GROUP_ID_LENGTH} characters, "
            f"got {len(group_id)}"
        )
    if not group_id.isprintable():
        index, char = next((i, c) for i, c in enumerate(group_id) if not c.isprintable())
        raise InvalidArgument(
            f"invalid group id {_shown(group_id)}: only printable characters are allowed "
            f"(found {char!r} at index {index})"
        )
    return group_id


def _require_int(what: str, value: int) -> None:
    # bool is an int subclass; True partitions is a caller bug, not 1 partition.
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument(f"{what} must be an integer, got {value!r}")


def validate_partition_count(count: int) -> int:
    """Check a topic's partition count: 1..MAX_PARTITIONS."""
    _require_int("partition count", count)
    if not 1 <= count <= MAX_PARTITIONS:
        raise InvalidArgument(f"partition count must be between 1 and {MAX_PARTITIONS}, got {count}")
    return count


def validate_replication_factor(factor: int, *, brokers: int | None = None) -> int:
    """Check a replication factor: at least 1, and at most ``brokers`` when given."""
    _require_int("replication factor", factor)
    if factor < 1:
        raise InvalidArgument(f"replication factor must be at least 1, got {factor}")
    if brokers is not None and factor > brokers:
        noun = "broker" if brokers == 1 else "brokers"
        raise InvalidArgument(
            f"replication factor {factor} exceeds the number of brokers: the cluster has {brokers} {noun}"
        )
    return factor
