"""Record batches: Kafka's RecordBatch v2 codec (build, validate, decode) and its compression.

The layout is in ``batch_format``; this package re-exports the public API.
"""

from sentinel.records.batch import (
    DEFAULT_MAX_BATCH_BYTES,
    Header,
    Record,
    RecordBatch,
    RecordInput,
    RecordTuple,
    TimestampType,
    build_batch,
    iter_batches,
    split_batches,
)
from sentinel.records.compression import DEFAULT_MAX_UNCOMPRESSED_BYTES, Compression, available_codecs

__all__ = [
    "DEFAULT_MAX_BATCH_BYTES",
    "DEFAULT_MAX_UNCOMPRESSED_BYTES",
    "Compression",
    "Header",
    "Record",
    "RecordBatch",
    "RecordInput",
    "RecordTuple",
    "TimestampType",
    "available_codecs",
    "build_batch",
    "iter_batches",
    "split_batches",
]
