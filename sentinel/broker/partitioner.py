"""Which partition a produced record goes to: key hash, round-robin, or the caller's choice.

Imported by both the client library and the broker, so the two agree on key placement.
Keyed placement is Kafka's default partitioner -- ``toPositive(murmur2(key)) % partitions``
-- so a key lands on the same partition as it would with a Java Kafka producer, and the
mapping is stable across processes, hosts and Python versions (never Python's ``hash()``,
which is salted per process).

Invariants:
- ``partition_for_key(key, n)`` depends only on the key bytes and ``n``; it is in ``0..n-1``.
- An explicit partition always wins over the key and is validated against the topic's
  partition count; -1 (``ANY_PARTITION``, the wire default) or ``None`` means "you pick".
- A record without a key (``None``) goes round-robin per topic; an empty key ``b""`` is a
  key like any other and is hashed (Kafka's rule: only a null key is keyless).

murmur2 is implemented from the algorithm's description (Austin Appleby's MurmurHash2,
32-bit, as Kafka's ``Utils.murmur2`` parameterises it: seed 0x9747b28c, m = 0x5bd1e995,
r = 24, little-endian 4-byte words, tail bytes folded in high-to-low, final avalanche
``h ^= h >> 13; h *= m; h ^= h >> 15``). Known-answer values are checked in
tests/broker/test_partitioner.py against the vectors of Kafka's ``UtilsTest.testMurmur2``
and librdkafka's ``rdmurmur2.c`` unit test.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

from sentinel.errors import InvalidArgument

__all__ = [
    "ANY_PARTITION",
    "RoundRobinPartitioner",
    "choose_partition",
    "murmur2",
    "partition_for_key",
    "to_positive",
]

# The wire value (ProduceRequest.partition) meaning "the producer did not choose".
ANY_PARTITION = -1

# MurmurHash2 parameters as Kafka fixes them; changing any of them moves every key.
MURMUR2_SEED = 0x9747B28C
MURMUR2_M = 0x5BD1E995
MURMUR2_R = 24
_MASK32 = 0xFFFFFFFF
# Kafka's toPositive: clear the sign bit (not abs(), which overflows on INT_MIN).
_POSITIVE_MASK = 0x7FFFFFFF

# Keyed records usually repeat keys (entity ids), and pure-Python murmur2 costs ~0.15 µs per
# 4-byte word, so partition_for_key memoises hashes: a hit costs ~60 ns instead of ~1-2 µs for
# a typical 10-40 byte key. Bounded (cleared wholesale when full: cheaper per miss than LRU
# bookkeeping) and limited to short keys so it never pins much memory (<= ~1.5 MiB).
_HASH_MEMO_MAX_ENTRIES = 8192
_HASH_MEMO_MAX_KEY_BYTES = 128
_hash_memo: dict[bytes, int] = {}

# One precompiled "<nI" unpacker per word count: unpacking all words in one C call is the
# fastest way to get them into Python ints (measured against memoryview.cast and
# struct.iter_unpack).
_word_unpackers: dict[int, Callable[[bytes], tuple[int, ...]]] = {}


def _words_unpacker(count: int) -> Callable[[bytes], tuple[int, ...]]:
    unpack = _word_unpackers.get(count)
    if unpack is None:
        unpack = struct.Struct(f"<{count}I").unpack_from
        if count <= 4096:  # don't keep a compiled struct per length for huge keys
            _word_unpackers[count] = unpack
    return unpack


def _murmur2_u32(data: bytes) -> int:
    """MurmurHash2 of ``data`` as an unsigned 32-bit int (Kafka's value mod 2**32)."""
    n = len(data)
    h = MURMUR2_SEED ^ n
    words = n >> 2
    if words:
        # The constants are written as literals in the loop: LOAD_CONST beats a global or
        # even a local lookup, and this loop is the whole cost of keyed produce placement.
        # `h*m ^ k*m` is masked once: XOR commutes with truncation to 32 bits.
        for k in _words_unpacker(words)(data):
            k = (k * 0x5BD1E995) & 0xFFFFFFFF
            h = (h * 0x5BD1E995 ^ (k ^ (k >> 24)) * 0x5BD1E995) & 0xFFFFFFFF
    tail = n & 3
    if tail:
        i = words << 2
        if tail == 3:
            h ^= data[i + 2] << 16
        if tail >= 2:
            h ^= data[i + 1] << 8
        h = ((h ^ data[i]) * MURMUR2_M) & _MASK32
    h ^= h >> 13
    h = (h * MURMUR2_M) & _MASK32
    return h ^ (h >> 15)


def murmur2(data: bytes | bytearray | memoryview) -> int:
    """Kafka's ``Utils.murmur2(data)``: a signed 32-bit int, exactly as the Java client returns."""
    h = _murmur2_u32(data if type(data) is bytes else bytes(data))
    return h - 0x1_0000_0000 if h & 0x8000_0000 else h


def to_positive(number: int) -> int:
    """Kafka's ``Utils.toPositive``: the low 31 bits (works for signed or unsigned 32-bit input)."""
    return number & _POSITIVE_MASK


def _check_partition_count(num_partitions: int, topic: str | None = None) -> None:
    if num_partitions < 1:
        where = f" of topic {topic!r}" if topic is not None else ""
        raise InvalidArgument(f"partition count{where} must be at least 1, got {num_partitions}")


def partition_for_key(key: bytes | bytearray | memoryview, num_partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``key``: murmur2, sign bit cleared, mod n."""
    if num_partitions < 1:
        _check_partition_count(num_partitions)
    if type(key) is not bytes:
        # bytearray / memoryview: hash the same bytes; unhashable, so no memo.
        return (_murmur2_u32(bytes(key)) & _POSITIVE_MASK) % num_partitions
    memo = _hash_memo
    cached = memo.get(key)
    if cached is None:
        cached = _murmur2_u32(key) & _POSITIVE_MASK
        if len(key) <= _HASH_MEMO_MAX_KEY_BYTES:
            if len(memo) >= _HASH_MEMO_MAX_ENTRIES:
                memo.clear()
            memo[key] = cached
    return cached % num_partitions


class RoundRobinPartitioner:
    """Spreads keyless records over a topic's partitions, one counter per topic.

    With an injected ``rng`` each topic's counter starts at a random point, so many short-lived
    producers do not all pile their first records onto partition 0; without one it starts at 0
    (deterministic, for tests). Not thread-safe: one per producer (or per actor).
    """

    __slots__ = ("_counters", "_rng")

    def __init__(self, rng: random.Random | None = None) -> None:
        self._counters: dict[str, int] = {}
        self._rng = rng

    def next_partition(self, topic: str, num_partitions: int) -> int:
        """The partition for the next keyless record of ``topic``; advances its counter."""
        _check_partition_count(num_partitions, topic)
        counter = self._counters.get(topic)
        if counter is None:
            # 31 bits like Kafka's counter (toPositive keeps it non-negative on wrap-around).
            counter = self._rng.getrandbits(31) if self._rng is not None else 0
        self._counters[topic] = (counter + 1) & _POSITIVE_MASK
        return counter % num_partitions

    def forget(self, topic: str) -> None:
        """Drop a topic's counter (the topic was deleted); a no-op for unknown topics."""
        self._counters.pop(topic, None)


def choose_partition(
    topic: str,
    key: bytes | None,
    partition: int | None,
    num_partitions: int,
    rr: RoundRobinPartitioner,
) -> int:
    """The partition a record (or batch) goes to.

    An explicit ``partition`` (>= 0) always wins and must be in ``0..num_partitions-1``;
    ``None`` or ``ANY_PARTITION`` (-1) means: hash ``key`` if there is one, else round-robin.
    Raises InvalidArgument naming the topic and the valid range.
    """
    _check_partition_count(num_partitions, topic)
    if partition is not None and partition != ANY_PARTITION:
        if 0 <= partition < num_partitions:
            return partition
        raise InvalidArgument(
            f"partition {partition} does not exist in topic {topic!r}: valid partitions are "
            f"0..{num_partitions - 1} (or {ANY_PARTITION} to let the partitioner choose)"
        )
    if key is not None:
        return partition_for_key(key, num_partitions)
    return rr.next_partition(topic, num_partitions)
