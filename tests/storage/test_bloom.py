"""Bloom filter: no false negatives, the configured false-positive rate, a stable format."""

from __future__ import annotations

import math
import random
import zlib
from array import array
from types import ModuleType

import pytest

from sentinel.storage import bloom as bloom_module
from sentinel.storage import builds
from sentinel.storage.bloom import MAX_PROBES, MIN_BITS
from sentinel.storage.options import StorageOptions

# Every test runs once per build of the bloom filter (tests/storage/conftest.py).
pytestmark = pytest.mark.usefixtures("storage_build")


def bloom_build() -> ModuleType:
    """The build of ``sentinel.storage.bloom`` under test (the fixture switched it)."""
    return builds.bloom


def theoretical_rate(bits_per_key: int) -> float:
    k = bloom_build().probes_for(bits_per_key)
    return (1 - math.exp(-k / bits_per_key)) ** k


def keys_of(kind: str, n: int, rng: random.Random) -> list[bytes]:
    if kind == "sequential":  # the broker's offset-ordered keys
        return [b"topic/0/" + i.to_bytes(8, "big") for i in range(n)]
    if kind == "random":
        return [rng.randbytes(16) for _ in range(n)]
    return [rng.randbytes(rng.randrange(1, 40)) for _ in range(n)]


@pytest.mark.parametrize("kind", ["sequential", "random", "variable"])
@pytest.mark.parametrize("bits_per_key", [6, 10, 16])
def test_no_false_negatives_and_rate_close_to_theory(kind: str, bits_per_key: int) -> None:
    rng = random.Random(bits_per_key)
    keys = keys_of(kind, 5000, rng)
    bloom = bloom_build().BloomFilter.from_bytes(bloom_build().BloomFilter.build(keys, bits_per_key))
    assert all(bloom.may_contain(k) for k in keys)
    members = set(keys)
    if kind == "sequential":
        probes = [b"topic/0/" + i.to_bytes(8, "big") for i in range(10_000, 50_000)]
    else:
        probes = [p for p in (rng.randbytes(17) for _ in range(40_000)) if p not in members]
    rate = sum(map(bloom.may_contain, probes)) / len(probes)
    theory = theoretical_rate(bits_per_key)
    # crc32 double hashing measures a little above theory; a broken hash is off by far more.
    assert theory / 3 < rate < theory * 2.5, (rate, theory)


def test_ten_bits_per_key_is_about_one_percent() -> None:
    rng = random.Random(7)
    keys = [rng.randbytes(16) for _ in range(10_000)]
    bloom = bloom_build().BloomFilter.from_bytes(bloom_build().BloomFilter.build(keys))
    rate = sum(bloom.may_contain(rng.randbytes(16)) for _ in range(50_000)) / 50_000
    assert 0.004 < rate < 0.02
    assert bloom.probes == 7
    assert bloom.num_bits == 100_000


def test_serialized_form_is_stable_across_processes() -> None:
    # Pinned bytes: a change here silently breaks every table already on disk.
    data = bloom_build().BloomFilter.build([b"key-%d" % i for i in range(100)])
    assert len(data) == 126  # 1000 bits = 125 bytes, then the probe count
    assert data[-1] == 7
    assert zlib.crc32(data) == 2181266895
    assert bloom_build().bloom_hash(b"abc") == zlib.crc32(b"abc")


def test_build_from_hashes_equals_build() -> None:
    keys = [b"a", b"b", b"c", b"b"]
    hashes = array("I", map(bloom_build().bloom_hash, keys))
    assert bloom_build().BloomFilter.build_from_hashes(hashes, 8) == bloom_build().BloomFilter.build(keys, 8)
    assert bloom_build().BloomFilter.build_from_hashes(list(hashes), 8) == bloom_build().BloomFilter.build(
        keys, 8
    )


def test_small_and_empty_filters_have_min_bits() -> None:
    one = bloom_build().BloomFilter.from_bytes(bloom_build().BloomFilter.build([b"only"]))
    assert one.num_bits == MIN_BITS
    assert one.may_contain(b"only")
    empty = bloom_build().BloomFilter.from_bytes(bloom_build().BloomFilter.build([]))
    assert empty.num_bits == MIN_BITS
    assert not any(empty.may_contain(bytes([i])) for i in range(256))


def test_probes_for() -> None:
    assert [bloom_build().probes_for(b) for b in (1, 2, 10, 20)] == [1, 1, 7, 14]
    assert bloom_build().probes_for(1000) == MAX_PROBES


def test_malformed_filters_are_rejected() -> None:
    with pytest.raises(ValueError, match="bloom filter of 1 bytes is too short"):
        bloom_build().BloomFilter.from_bytes(b"\x07")
    with pytest.raises(ValueError, match=r"bloom filter probe count 0 outside \[1, 30\]"):
        bloom_build().BloomFilter.from_bytes(b"\xff" * 8 + b"\x00")
    with pytest.raises(ValueError, match="probe count 31 outside"):
        bloom_build().BloomFilter.from_bytes(b"\xff" * 8 + bytes([MAX_PROBES + 1]))
    with pytest.raises(ValueError, match="bits_per_key must be >= 1, got 0"):
        bloom_build().BloomFilter.build([b"k"], 0)


def _reference_build(hashes: list[int], bits_per_key: int) -> bytes:
    """The serialized form as the module docstring defines it, one bit at a time."""
    probes = bloom_build().probes_for(bits_per_key)
    num_bytes = (max(MIN_BITS, len(hashes) * bits_per_key) + 7) // 8
    bits = bytearray(num_bytes)
    for h in hashes:
        delta = (((h >> 17) | (h << 15)) & 0xFFFFFFFF) | 1
        for i in range(probes):
            pos = (h + i * delta) % (num_bytes * 8)
            bits[pos >> 3] |= 1 << (pos & 7)
    return bytes(bits) + bytes((probes,))


@pytest.mark.parametrize("bits_per_key", [1, 3, 10, 17, 43])
def test_build_sets_exactly_the_bits_the_format_defines(bits_per_key: int) -> None:
    rng = random.Random(bits_per_key)
    for count in (0, 1, 7, 1000):
        hashes = [rng.getrandbits(32) for _ in range(count)] + [0, 0xFFFFFFFF][: count and 2]
        assert bloom_build().BloomFilter.build_from_hashes(hashes, bits_per_key) == _reference_build(
            hashes, bits_per_key
        )


def test_the_written_out_default_probe_count_is_the_default() -> None:
    # build_from_hashes writes the default's probes out one by one: they must stay in step.
    assert bloom_build().probes_for(StorageOptions().bloom_bits_per_key) == bloom_module._DEFAULT_PROBES == 7
