"""How the broker lays its data out in the storage engine's key space (the broker's format).

Keys are chosen so the LSM tree's key order is the order reads want:

    b"L" topic_id u32 BE | partition u32 BE | last_offset u64 BE  -> one record batch
    b"S" topic_id u32 BE | partition u32 BE                       -> partition state
    b"T" topic name (utf-8)                                       -> topic metadata
    b"C"                                                          -> broker counters
    b"O" group (utf-8) 0x00 topic (utf-8) 0x00 partition u32 BE   -> committed offset

A batch is keyed by its LAST offset, so "the batch holding offset N" is the first key at or
after ``L|tp|N``: a seek in the tree, O(log n), and no in-memory offset index to rebuild on
restart. Topic ids are never reused, so the data of a deleted topic can be recognised (and
dropped by compaction) by its id alone. Big-endian integers make byte order numeric order.
"""

from __future__ import annotations

import struct

import attrs

from sentinel.errors import CorruptionError

DATA = b"L"
STATE = b"S"
TOPIC = b"T"
COUNTERS = b"C"
OFFSETS = b"O"

_TP = struct.Struct(">II")
_DATA_KEY = struct.Struct(">cIIQ")
_DATA_KEY_SIZE = _DATA_KEY.size
MAX_OFFSET = (1 << 63) - 1
_STATE_VALUE = struct.Struct(">QQQ")  # next_offset, log_start_offset, size_bytes
_COUNTERS_VALUE = struct.Struct(">I")  # next topic id
_OFFSET_VALUE = struct.Struct(">q")  # committed offset, then utf-8 metadata


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix`` (a scan's end)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def data_key(topic_id: int, partition: int, last_offset: int) -> bytes:
    return _DATA_KEY.pack(DATA, topic_id, partition, last_offset)


def data_prefix(topic_id: int, partition: int) -> bytes:
    return DATA + _TP.pack(topic_id, partition)


def topic_data_range(topic_id: int) -> tuple[bytes, bytes]:
    """``[start, end)`` covering every data key of a topic."""
    return DATA + struct.pack(">I", topic_id), DATA + struct.pack(">I", topic_id + 1)


def parse_data_key(key: bytes) -> tuple[int, int, int] | None:
    """``(topic_id, partition, last_offset)`` of a data key, None for any other key."""
    if len(key) != _DATA_KEY_SIZE or key[:1] != DATA:
        return None
    _, topic_id, partition, last_offset = _DATA_KEY.unpack(key)
    return topic_id, partition, last_offset


def state_key(topic_id: int, partition: int) -> bytes:
    return STATE + _TP.pack(topic_id, partition)


@attrs.frozen
class PartitionState:
    next_offset: int = 0  # the log end offset: the offset the next record gets
    log_start_offset: int = 0  # records below it are deleted (retention) or never existed
    size_bytes: int = 0  # bytes of record batches between log start and log end


def encode_state(state: PartitionState) -> bytes:
    return _STATE_VALUE.pack(state.next_offset, state.log_start_offset, state.size_bytes)


def decode_state(value: bytes, source: str) -> PartitionState:
    if len(value) != _STATE_VALUE.size:
        raise CorruptionError(source, None, f"partition state of {len(value)} bytes, expected 24")
    return PartitionState(*_STATE_VALUE.unpack(value))


def topic_key(name: str) -> bytes:
    return TOPIC + name.encode()


def encode_counters(next_topic_id: int) -> bytes:
    return _COUNTERS_VALUE.pack(next_topic_id)


def decode_counters(value: bytes) -> int:
    (next_topic_id,) = _COUNTERS_VALUE.unpack(value)
    return int(next_topic_id)


def offset_key(group: str, topic: str, partition: int) -> bytes:
    return OFFSETS + group.encode() + b"\0" + topic.encode() + b"\0" + struct.pack(">I", partition)


def group_offsets_range(group: str) -> tuple[bytes, bytes]:
    prefix = OFFSETS + group.encode() + b"\0"
    return prefix, prefix[:-1] + b"\1"


def parse_offset_key(key: bytes) -> tuple[str, str, int]:
    group, rest = key[1:].split(b"\0", 1)
    topic, partition = rest[:-5], rest[-4:]  # topic, NUL, u32 partition
    return group.decode(), topic.decode(), struct.unpack(">I", partition)[0]


def encode_offset(offset: int, metadata: str) -> bytes:
    return _OFFSET_VALUE.pack(offset) + metadata.encode()


def decode_offset(value: bytes) -> tuple[int, str]:
    (offset,) = _OFFSET_VALUE.unpack_from(value)
    return int(offset), value[_OFFSET_VALUE.size :].decode()
