"""Kafka's RecordBatch v2 layout (magic 2): every offset, size, flag and limit of the format.

This module is the one place the wire/disk layout of a record batch is written down; the
codec in ``batch.py`` and anything else that peeks into a batch import from here.

Batch header (61 bytes, all integers big-endian)::

    offset size field
         0    8 baseOffset            \\ the "log overhead": batchLength does not count these
         8    4 batchLength           /  12 bytes, so a batch is batchLength + 12 bytes long
        12    4 partitionLeaderEpoch
        16    1 magic (= 2)
        17    4 crc (uint32, CRC-32C over bytes 21 .. end)
        21    2 attributes            <- the CRC-covered region starts here
        23    4 lastOffsetDelta
        27    8 baseTimestamp
        35    8 maxTimestamp
        43    8 producerId
        51    2 producerEpoch
        53    4 baseSequence
        57    4 recordCount
        61      records (compressed as one block when the codec in attributes is not 0)

Record (zig-zag varints)::

    length varint (bytes after this field) | attributes int8 | timestampDelta varlong |
    offsetDelta varint | keyLength varint (-1 = null) | key | valueLength varint (-1 = null) |
    value | headersCount varint | headers

Header: ``headerKeyLength varint | key (UTF-8) | headerValueLength varint (-1 = null) | value``.

Invariant worth knowing: the CRC deliberately leaves out baseOffset and partitionLeaderEpoch,
the two fields the partition leader stamps on append, so a broker can assign offsets
without recomputing a checksum over the whole batch.
"""

from __future__ import annotations

import struct
from typing import Final

MAGIC: Final = 2

# --- field offsets inside the batch header -------------------------------------------------
BASE_OFFSET_OFFSET: Final = 0
BATCH_LENGTH_OFFSET: Final = 8
PARTITION_LEADER_EPOCH_OFFSET: Final = 12
MAGIC_OFFSET: Final = 16
CRC_OFFSET: Final = 17
ATTRIBUTES_OFFSET: Final = 21
LAST_OFFSET_DELTA_OFFSET: Final = 23
BASE_TIMESTAMP_OFFSET: Final = 27
MAX_TIMESTAMP_OFFSET: Final = 35
PRODUCER_ID_OFFSET: Final = 43
PRODUCER_EPOCH_OFFSET: Final = 51
BASE_SEQUENCE_OFFSET: Final = 53
RECORD_COUNT_OFFSET: Final = 57
RECORDS_OFFSET: Final = 61

# baseOffset + batchLength: the bytes batchLength does not count.
LOG_OVERHEAD: Final = BATCH_LENGTH_OFFSET + 4
BATCH_HEADER_SIZE: Final = RECORDS_OFFSET
# The smallest legal batchLength: a header with an empty records section.
MIN_BATCH_LENGTH: Final = BATCH_HEADER_SIZE - LOG_OVERHEAD
# The CRC covers everything from the attributes to the end of the batch.
CRC_START: Final = ATTRIBUTES_OFFSET

# --- precompiled structs --------------------------------------------------------------------
# The whole header in one unpack: baseOffset, batchLength, partitionLeaderEpoch, magic, crc,
# attributes, lastOffsetDelta, baseTimestamp, maxTimestamp, producerId, producerEpoch,
# baseSequence, recordCount.
HEADER: Final = struct.Struct(">qiibIhiqqqhii")
# The part before the CRC-covered region: baseOffset, batchLength, partitionLeaderEpoch, magic, crc.
HEADER_PREFIX: Final = struct.Struct(">qiibI")
# The CRC-covered part of the header: attributes .. recordCount.
HEADER_CRC_COVERED: Final = struct.Struct(">hiqqqhii")
BASE_OFFSET: Final = struct.Struct(">q")
BATCH_LENGTH: Final = struct.Struct(">i")
PARTITION_LEADER_EPOCH: Final = struct.Struct(">i")

assert HEADER.size == BATCH_HEADER_SIZE
assert HEADER_PREFIX.size == CRC_START
assert HEADER_PREFIX.size + HEADER_CRC_COVERED.size == BATCH_HEADER_SIZE

# --- attributes (int16) ---------------------------------------------------------------------
COMPRESSION_CODEC_MASK: Final = 0x07  # bits 0-2
TIMESTAMP_TYPE_FLAG: Final = 0x08  # bit 3: 0 = CreateTime, 1 = LogAppendTime
TRANSACTIONAL_FLAG: Final = 0x10  # bit 4
CONTROL_FLAG: Final = 0x20  # bit 5
DELETE_HORIZON_FLAG: Final = 0x40  # bit 6: baseTimestamp is the compaction delete horizon

# Codec ids in attributes bits 0-2.
CODEC_NONE: Final = 0
CODEC_GZIP: Final = 1
CODEC_SNAPPY: Final = 2
CODEC_LZ4: Final = 3
CODEC_ZSTD: Final = 4
MAX_KNOWN_CODEC: Final = CODEC_ZSTD

# --- sentinel values the format reserves ----------------------------------------------------
NO_PRODUCER_ID: Final = -1
NO_PRODUCER_EPOCH: Final = -1
NO_SEQUENCE: Final = -1
NO_PARTITION_LEADER_EPOCH: Final = -1
NO_TIMESTAMP: Final = -1
# keyLength / valueLength / headerValueLength of a null.
NULL_LENGTH: Final = -1

# --- records --------------------------------------------------------------------------------
# The only record attributes value Kafka defines (all bits unused).
RECORD_ATTRIBUTES: Final = 0
# The smallest encoded record: one byte each for length, attributes, timestampDelta,
# offsetDelta, keyLength, valueLength and headersCount. Bounds how many records a records
# section of n bytes can hold, so a lying recordCount is caught before any decoding.
MIN_RECORD_SIZE: Final = 7

# --- integer ranges of the fixed-width fields -----------------------------------------------
INT16_MIN: Final = -(1 << 15)
INT16_MAX: Final = (1 << 15) - 1
INT32_MIN: Final = -(1 << 31)
INT32_MAX: Final = (1 << 31) - 1
INT64_MIN: Final = -(1 << 63)
INT64_MAX: Final = (1 << 63) - 1
