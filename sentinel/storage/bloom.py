"""A bloom filter over the keys of one SSTable: "definitely absent" or "maybe present".

Invariants: no false negatives (every key given to ``build`` answers True); the false
positive rate for ``bits_per_key`` b is about ``(1 - e^(-k/b))^k`` with k = round(b ln 2)
probes (~1% at 10 bits per key); the serialized form is self-describing and the hash is
deterministic across processes and platforms (so NOT Python's ``hash()``, which is salted
per process).

Serialized form (the payload of an SSTable's bloom block)::

    bits    ceil(num_bits / 8) bytes   bit i is (bits[i >> 3] >> (i & 7)) & 1
    probes  u8                         number of probes k

``num_bits`` is ``8 * len(bits)``: the bit count is always a whole number of bytes.

Hashing is double hashing from one 32-bit hash: ``h = zlib.crc32(key)``, ``delta = h``
rotated right by 17 bits and forced odd, probe i tests bit ``(h + i * delta) % num_bits``.
Measured in CPython 3.11 on 16-byte keys: crc32 + rotate costs ~170 ns, blake2b
(digest_size=8, halves as the two hashes) ~460 ns; false-positive rates at 10 bits per key
(theory 0.82%) were 0.9-1.2% for crc32 and 0.8% for blake2b across sequential, random,
prefixed and variable-length key sets. A false positive costs one block read (tens of
microseconds), so crc32's extra ~0.2% is cheaper than blake2b's extra ~300 ns per probe.
Forcing the delta odd matters: with an even delta the measured rate doubled (~1.6%).
"""

from __future__ import annotations

import math
import zlib
from array import array
from collections.abc import Callable, Iterable

# A filter over very few keys would be a handful of bits, where one collision decides
# the whole answer; 64 bits keeps even a one-key table's false-positive rate low.
MIN_BITS = 64
# Beyond 30 probes a filter only gets slower: that is optimal for ~43 bits per key.
MAX_PROBES = 30
_U32 = 0xFFFFFFFF
# Rotation distance deriving the second hash from the first (any value far from 0 and 32).
_DELTA_ROTATION = 17
# The probe count at the default 10 bits per key (probes_for(10)): built without an inner loop.
_DEFAULT_PROBES = 7
# Turns a byte-per-bit mark (0 or 1) into the digit int(..., 2) reads.
_MARK_DIGITS = bytes.maketrans(b"\x00\x01", b"01")


#: The 32-bit hash a filter is built from; the writer keeps these instead of the keys. The
#: builtin itself, not a function calling it: a table writer hashes every key it writes.
bloom_hash: Callable[[bytes], int] = zlib.crc32


def probes_for(bits_per_key: int) -> int:
    """The probe count minimising the false-positive rate: k = b ln 2, within [1, MAX_PROBES]."""
    return max(1, min(MAX_PROBES, round(bits_per_key * math.log(2))))


class BloomFilter:
    """A decoded filter; ``may_contain`` is the only query."""

    __slots__ = ("_bits", "_num_bits", "_probes")

    def __init__(self, bits: bytes, probes: int) -> None:
        self._bits = bits
        self._num_bits = len(bits) * 8
        self._probes = probes

    @staticmethod
    def build(keys: Iterable[bytes], bits_per_key: int = 10) -> bytes:
        """Serialize a filter over ``keys``."""
        return BloomFilter.build_from_hashes(array("I", map(bloom_hash, keys)), bits_per_key)

    @staticmethod
    def build_from_hashes(hashes: array[int] | list[int], bits_per_key: int = 10) -> bytes:
        """Serialize a filter from ``bloom_hash`` values (one per key; duplicates are harmless)."""
        if bits_per_key < 1:
            raise ValueError(f"bits_per_key must be >= 1, got {bits_per_key}")
        probes = probes_for(bits_per_key)
        num_bits = max(MIN_BITS, len(hashes) * bits_per_key)
        num_bytes = (num_bits + 7) // 8
        num_bits = num_bytes * 8
        # One byte per bit while probing (a store, not a read-modify-write of a bit), then
        # packed in C: the marks reversed (bit 0 last) as ASCII digits are the filter's
        # little-endian bit string read as one base-2 integer. A third cheaper than setting
        # bits in place (measured: 0.67 against 1.0 us per key at 7 probes).
        marks = bytearray(num_bits)
        if probes == _DEFAULT_PROBES:
            # The engine's 10 bits per key, written out: no inner loop (0.49 against 0.68 us
            # per key). Probe i tests bit (h + i * delta) % num_bits, as below.
            for h in hashes:
                delta = (((h >> _DELTA_ROTATION) | (h << (32 - _DELTA_ROTATION))) & _U32) | 1
                marks[h % num_bits] = 1
                h += delta
                marks[h % num_bits] = 1
                h += delta
                marks[h % num_bits] = 1
                h += delta
                marks[h % num_bits] = 1
                h += delta
                marks[h % num_bits] = 1
                h += delta
                marks[h % num_bits] = 1
                h += delta
                marks[h % num_bits] = 1
        else:
            for h in hashes:
                delta = (((h >> _DELTA_ROTATION) | (h << (32 - _DELTA_ROTATION))) & _U32) | 1
                # Probe i tests bit (h + i * delta) % num_bits.
                for pos in range(h, h + probes * delta, delta):
                    marks[pos % num_bits] = 1
        bits = int(marks[::-1].translate(_MARK_DIGITS), 2).to_bytes(num_bytes, "little")
        return bits + bytes((probes,))

    @classmethod
    def from_bytes(cls, data: bytes) -> BloomFilter:
        """Decode a serialized filter; ValueError if it is malformed."""
        if len(data) < 2:
            raise ValueError(f"bloom filter of {len(data)} bytes is too short")
        probes = data[-1]
        if not 1 <= probes <= MAX_PROBES:
            raise ValueError(f"bloom filter probe count {probes} outside [1, {MAX_PROBES}]")
        return cls(bytes(data[:-1]), probes)

    @property
    def num_bits(self) -> int:
        return self._num_bits

    @property
    def probes(self) -> int:
        return self._probes

    def may_contain(self, key: bytes) -> bool:
        h = zlib.crc32(key)
        bits = self._bits
        num_bits = self._num_bits
        delta = (((h >> _DELTA_ROTATION) | (h << (32 - _DELTA_ROTATION))) & _U32) | 1
        for _ in range(self._probes):
            pos = h % num_bits
            if not bits[pos >> 3] & (1 << (pos & 7)):
                return False
            h += delta
        return True
