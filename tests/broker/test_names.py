"""Name and size validation: Kafka's topic rules, group ids, partition counts, replication."""

from __future__ import annotations

import pytest

from sentinel.broker.names import (
    MAX_GROUP_ID_LENGTH,
    MAX_PARTITIONS,
    MAX_TOPIC_NAME_LENGTH,
    is_internal_topic,
    topic_collision_key,
    validate_group_id,
    validate_new_topic_name,
    validate_partition_count,
    validate_replication_factor,
    validate_topic_name,
)
from sentinel.errors import InvalidArgument


@pytest.mark.parametrize(
    "name",
    ["a", "orders", "Orders.v2", "my_topic-1", "...", ".a", "a..b", "-", "_", "x" * MAX_TOPIC_NAME_LENGTH],
)
def test_valid_topic_names(name: str) -> None:
    assert validate_topic_name(name) == name
    assert validate_new_topic_name(name) == name


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "invalid topic name '': must not be empty"),
        (".", "invalid topic name '.': '.' and '..' are not allowed"),
        ("..", "invalid topic name '..': '.' and '..' are not allowed"),
        (
            "a b",
            "invalid topic name 'a b': only ASCII letters, digits, '.', '_' and '-' are allowed "
            "(found ' ' at index 1)",
        ),
        (
            "a/b",
            "invalid topic name 'a/b': only ASCII letters, digits, '.', '_' and '-' are allowed (found '/'",
        ),
        ("café", "(found 'é' at index 3)"),
        ("tab\t", "(found '\\t' at index 3)"),
        ("line\n", "(found '\\n' at index 4)"),  # `$` in a regex would have let this through
        ("ab\u0662", "(found '\u0662' at index 2)"),  # a Unicode digit is not an ASCII digit
        (
            "x" * (MAX_TOPIC_NAME_LENGTH + 1),
            f"invalid topic name '{'x' * 64}'... (250 characters): must be at most 249 characters, got 250",
        ),
    ],
)
def test_invalid_topic_names(name: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_topic_name(name)
    assert message in str(info.value)
    with pytest.raises(InvalidArgument):
        validate_new_topic_name(name)


def test_topic_name_must_be_a_string() -> None:
    with pytest.raises(InvalidArgument, match="invalid topic name b'orders': must be a string"):
        validate_topic_name(b"orders")  # type: ignore[arg-type]


def test_internal_topic_names_are_valid_but_not_creatable() -> None:
    assert is_internal_topic("__consumer_offsets")
    assert not is_internal_topic("_single")
    assert validate_topic_name("__consumer_offsets") == "__consumer_offsets"
    with pytest.raises(InvalidArgument) as info:
        validate_new_topic_name("__consumer_offsets")
    assert str(info.value) == (
        "invalid topic name '__consumer_offsets': names starting with '__' are reserved for internal topics"
    )
    assert validate_new_topic_name("_single") == "_single"


def test_topic_collision_key_equates_dot_and_underscore() -> None:
    assert topic_collision_key("a.b") == topic_collision_key("a_b")
    assert topic_collision_key("a.b") != topic_collision_key("a-b")


@pytest.mark.parametrize("group_id", ["g", "my group", "équipe-1", "a" * MAX_GROUP_ID_LENGTH, "x/y:z"])
def test_valid_group_ids(group_id: str) -> None:
    assert validate_group_id(group_id) == group_id


@pytest.mark.parametrize(
    ("group_id", "message"),
    [
        ("", "invalid group id '': must not be empty"),
        (
            "a\x00b",
            "invalid group id 'a\\x00b': only printable characters are allowed (found '\\x00' at index 1)",
        ),
        ("tab\there", "(found '\\t' at index 3)"),
        ("z" * 256, "must be at most 255 characters, got 256"),
    ],
)
def test_invalid_group_ids(group_id: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_group_id(group_id)
    assert message in str(info.value)


def test_group_id_must_be_a_string() -> None:
    with pytest.raises(InvalidArgument, match="must be a string"):
        validate_group_id(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("count", [1, 2, MAX_PARTITIONS])
def test_valid_partition_counts(count: int) -> None:
    assert validate_partition_count(count) == count


@pytest.mark.parametrize("count", [0, -1, MAX_PARTITIONS + 1])
def test_partition_count_out_of_range(count: int) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_partition_count(count)
    assert str(info.value) == f"partition count must be between 1 and 10000, got {count}"


@pytest.mark.parametrize("bad", [True, 1.0, "3"])
def test_partition_count_must_be_an_int(bad: object) -> None:
    with pytest.raises(InvalidArgument, match="partition count must be an integer, got"):
        validate_partition_count(bad)  # type: ignore[arg-type]


def test_replication_factor() -> None:
    assert validate_replication_factor(1) == 1
    assert validate_replication_factor(3, brokers=3) == 3
    with pytest.raises(InvalidArgument, match="replication factor must be at least 1, got 0"):
        validate_replication_factor(0)
    with pytest.raises(InvalidArgument) as info:
        validate_replication_factor(3, brokers=1)
    assert str(info.value) == "replication factor 3 exceeds the number of brokers: the cluster has 1 broker"
    with pytest.raises(InvalidArgument, match="the cluster has 2 brokers"):
        validate_replication_factor(3, brokers=2)
    with pytest.raises(InvalidArgument, match="replication factor must be an integer, got False"):
        validate_replication_factor(False)
