"""Partitioner: murmur2 known answers, Kafka key placement, round-robin, explicit partitions."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import Counter

import pytest

from sentinel.broker import partitioner
from sentinel.broker.partitioner import (
    ANY_PARTITION,
    RoundRobinPartitioner,
    choose_partition,
    murmur2,
    partition_for_key,
    to_positive,
)
from sentinel.errors import InvalidArgument

# Known-answer vectors, signed 32-bit as Java returns them. Checked with the `search` tool:
# - Kafka clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java, testMurmur2
#   ("21" .. "abc"), as quoted verbatim by several Kafka client ports (kafka_ex
#   test/kafka_ex/support/murmur_test.exs, kafkajs, a Dart port of librdkafka's table);
# - librdkafka src/rdmurmur2.c unit test ("kafka" = 0xd067cf64 .. "" = 0x106e08d9);
# - akka cluster-sharding Murmur2Spec.scala, "expected correct hash values from the kafka
#   murmur2 impl" ("1" .. "12345").
# Together they cover every tail length (0-3 trailing bytes) with and without whole words.
KAFKA_VECTORS: list[tuple[bytes, int]] = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
]
LIBRDKAFKA_VECTORS: list[tuple[bytes, int]] = [
    (b"kafka", -798503068),  # 0xd067cf64
    (b"giberish123456789", -1890243828),  # 0x8f552b0c
    (b"1234", -1614185708),  # 0x9fc97b14
    (b"234", -406844982),  # 0xe7c009ca
    (b"34", -2026295078),  # 0x873930da
    (b"4", 1514888353),  # 0x5a4b5ca1
    (b"PreAmbleWillBeRemoved,ThePrePartThatIs", 2017611548),  # 0x78424f1c
    (b"reAmbleWillBeRemoved,ThePrePartThatIs", 1247982455),  # 0x4a62b377
    (b"eAmbleWillBeRemoved,ThePrePartThatIs", -521871202),  # 0xe0e4e09e
    (b"AmbleWillBeRemoved,ThePrePartThatIs", 1656271935),  # 0x62b8b43f
    (b"", 275646681),  # 0x106e08d9
]
AKKA_VECTORS: list[tuple[bytes, int]] = [
    (b"1", -1993445489),
    (b"12", 126087238),
    (b"123", -267702483),
    (b"1234", -1614185708),
    (b"12345", -1188365604),
]
ALL_VECTORS = KAFKA_VECTORS + LIBRDKAFKA_VECTORS + AKKA_VECTORS


@pytest.mark.parametrize(("data", "expected"), ALL_VECTORS, ids=[repr(d) for d, _ in ALL_VECTORS])
def test_murmur2_matches_kafka_known_answers(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


def test_murmur2_accepts_bytes_like() -> None:
    for data, expected in ALL_VECTORS:
        assert murmur2(bytearray(data)) == expected
        assert murmur2(memoryview(data)) == expected


def test_murmur2_of_a_long_key_uses_every_word() -> None:
    base = bytes(range(256)) * 40  # 10 KiB: many words, past the per-length unpacker cache
    changed = bytearray(base)
    changed[5000] ^= 1
    assert murmur2(base) != murmur2(bytes(changed))
    assert murmur2(base) == murmur2(bytearray(base))


def test_to_positive_clears_only_the_sign_bit() -> None:
    assert to_positive(-790332482) == 1357151166
    assert to_positive(-(2**31)) == 0  # Java's abs() would overflow here
    assert to_positive(2**31 - 1) == 2**31 - 1
    assert to_positive(0xFFFFFFFF) == 0x7FFFFFFF


def test_partition_for_key_known_answers() -> None:
    # toPositive(-790332482) = 1357151166; 1357151166 % 50 = 16 and % 10 = 6.
    assert partition_for_key(b"foobar", 50) == 16
    assert partition_for_key(b"foobar", 10) == 6
    assert partition_for_key(b"foobar", 1) == 0
    for data, expected in ALL_VECTORS:
        for n in (1, 3, 7, 12, 100, 10_000):
            assert partition_for_key(data, n) == (expected & 0x7FFFFFFF) % n


def test_partition_for_key_memo_never_changes_answers() -> None:
    rng = random.Random(7)
    keys = [rng.randbytes(rng.randrange(0, 200)) for _ in range(3000)]
    first = [partition_for_key(k, 24) for k in keys]
    # Overflow the memo so it is cleared at least once, then ask again (hits and misses).
    for i in range(partitioner._HASH_MEMO_MAX_ENTRIES + 10):
        partition_for_key(b"filler-%d" % i, 24)
    assert [partition_for_key(k, 24) for k in keys] == first
    assert [(murmur2(k) & 0x7FFFFFFF) % 24 for k in keys] == first
    assert len(partitioner._hash_memo) <= partitioner._HASH_MEMO_MAX_ENTRIES
    assert all(len(k) <= partitioner._HASH_MEMO_MAX_KEY_BYTES for k in partitioner._hash_memo)


def test_partition_for_key_accepts_bytes_like() -> None:
    assert partition_for_key(bytearray(b"foobar"), 50) == 16
    assert partition_for_key(memoryview(b"foobar"), 50) == 16


def test_partition_for_key_is_stable_across_processes() -> None:
    # A different PYTHONHASHSEED changes hash(); key placement must not change.
    code = (
        "from sentinel.broker.partitioner import partition_for_key as p;"
        "print([p(k, 97) for k in (b'foobar', b'user-1', b'', b'x' * 300)])"
    )
    expected = str([partition_for_key(k, 97) for k in (b"foobar", b"user-1", b"", b"x" * 300)])
    for seed in ("1", "12345"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == expected


def test_partition_for_key_spreads_keys_evenly() -> None:
    counts = Counter(partition_for_key(b"user-%d" % i, 12) for i in range(24_000))
    assert sorted(counts) == list(range(12))
    assert max(counts.values()) < 2000 * 1.1 and min(counts.values()) > 2000 * 0.9


@pytest.mark.parametrize("n", [0, -1])
def test_partition_for_key_rejects_a_partition_count_below_one(n: int) -> None:
    with pytest.raises(InvalidArgument, match=f"partition count must be at least 1, got {n}"):
        partition_for_key(b"k", n)


def test_round_robin_cycles_per_topic() -> None:
    rr = RoundRobinPartitioner()
    assert [rr.next_partition("a", 3) for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    # Each topic has its own counter.
    assert [rr.next_partition("b", 2) for _ in range(3)] == [0, 1, 0]
    assert rr.next_partition("a", 3) == 1
    rr.forget("a")
    assert rr.next_partition("a", 3) == 0
    rr.forget("never-seen")


def test_round_robin_follows_a_changed_partition_count() -> None:
    rr = RoundRobinPartitioner()
    assert [rr.next_partition("t", 2) for _ in range(3)] == [0, 1, 0]
    assert [rr.next_partition("t", 5) for _ in range(3)] == [3, 4, 0]


def test_round_robin_seeded_start_is_deterministic_and_covers_all_partitions() -> None:
    a = RoundRobinPartitioner(random.Random(42))
    b = RoundRobinPartitioner(random.Random(42))
    seq_a = [a.next_partition("t", 6) for _ in range(12)]
    assert seq_a == [b.next_partition("t", 6) for _ in range(12)]
    assert Counter(seq_a) == dict.fromkeys(range(6), 2)
    assert seq_a[1] == (seq_a[0] + 1) % 6


def test_round_robin_counter_wraps_without_going_negative() -> None:
    rr = RoundRobinPartitioner()
    rr._counters["t"] = 0x7FFFFFFF
    assert rr.next_partition("t", 10) == 0x7FFFFFFF % 10
    assert rr.next_partition("t", 10) == 0


def test_round_robin_rejects_a_partition_count_below_one() -> None:
    with pytest.raises(InvalidArgument, match="partition count of topic 'orders' must be at least 1, got 0"):
        RoundRobinPartitioner().next_partition("orders", 0)


def test_choose_partition_explicit_partition_wins_over_key() -> None:
    rr = RoundRobinPartitioner()
    assert choose_partition("t", b"foobar", 3, 50, rr) == 3
    assert choose_partition("t", None, 0, 1, rr) == 0
    assert rr._counters == {}  # the round-robin counter was not consumed


@pytest.mark.parametrize("unset", [None, ANY_PARTITION])
def test_choose_partition_hashes_the_key_when_no_partition_is_given(unset: int | None) -> None:
    rr = RoundRobinPartitioner()
    assert choose_partition("t", b"foobar", unset, 50, rr) == 16
    # An empty key is a key (Kafka: only a null key is keyless): hashed, not round-robin.
    assert choose_partition("t", b"", unset, 50, rr) == 275646681 % 50
    assert rr._counters == {}


def test_choose_partition_round_robins_keyless_records() -> None:
    rr = RoundRobinPartitioner()
    assert [choose_partition("t", None, ANY_PARTITION, 4, rr) for _ in range(5)] == [0, 1, 2, 3, 0]


@pytest.mark.parametrize("bad", [6, 7, 1000, -2])
def test_choose_partition_rejects_a_partition_out_of_range(bad: int) -> None:
    with pytest.raises(InvalidArgument) as info:
        choose_partition("orders", b"k", bad, 6, RoundRobinPartitioner())
    assert str(info.value) == (
        f"partition {bad} does not exist in topic 'orders': valid partitions are 0..5 "
        "(or -1 to let the partitioner choose)"
    )


def test_choose_partition_rejects_a_partition_count_below_one() -> None:
    with pytest.raises(InvalidArgument, match="partition count of topic 'orders' must be at least 1, got 0"):
        choose_partition("orders", b"k", None, 0, RoundRobinPartitioner())
