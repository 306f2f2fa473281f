"""Tuning knobs of the storage engine, with the reasoning behind each default."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from sentinel.storage.compaction import CompactionOptions

MIB = 1024 * 1024

#: How the storage actors run blocking file work off the event loop: ``trio.to_thread.run_sync``
#: in production; tests pass a wrapper that knows when no worker thread is running.
RunInThread = Callable[..., Awaitable[Any]]
#: How the Compactor runs its flush and compaction jobs (``compactor.run_flush`` and
#: ``run_compaction``, picklable) off the process's GIL: a
#: :class:`sentinel.storage.processes.WorkerProcess` (the broker's and the benchmark's);
#: without one they run through ``RunInThread`` (tests).
RunInProcess = Callable[..., Awaitable[Any]]


class SyncMode(enum.StrEnum):
    """When a WAL write counts as durable (and so when a write is acknowledged)."""

    ALWAYS = "always"  # fsync before acknowledging: survives power loss
    INTERVAL = "interval"  # written to the OS before acknowledging, fsynced every sync_interval
    NONE = "none"  # written to the OS before acknowledging; fsync only on rotation and close


@attrs.frozen
class StorageOptions:
    sync: SyncMode = SyncMode.INTERVAL
    # Kafka-like default: at most this much acknowledged data is exposed to a power loss
    # (a process crash loses nothing: the OS already has it).
    sync_interval: float = 0.05
    # A memtable becomes immutable (and is flushed to an L0 SSTable) at this size. Bigger
    # means fewer, larger L0 files; recovery replays at most a few of these.
    memtable_bytes: int = 8 * MIB
    # Immutable memtables waiting for flush before writes stall (back-pressure).
    max_immutable_memtables: int = 2
    # WAL frames written together in one write (and one fsync): the group-commit cap.
    max_group_commit: int = 4096
    block_size: int = 4096
    bloom_bits_per_key: int = 10
    compaction: CompactionOptions = CompactionOptions()  # noqa: RUF009 -- frozen, safe to share
    # Called (from compaction worker threads) with each key a compaction rewrites: True
    # means the entry is obsolete and is dropped (or turned into a tombstone where older
    # versions may exist deeper). How the broker deletes data of deleted topics and below
    # a partition's log start (retention) without scanning records. Must be thread-safe
    # and fast; None keeps everything. A filter with a ``snapshot()`` method (returning a
    # picklable filter answering as it does now, or None: nothing is obsolete) can be
    # applied by compactions in the store's worker process (``Store(run_in_process=...)``):
    # each takes a snapshot when it starts. Sound when obsolete keys stay obsolete, as the
    # broker's do; a filter without one keeps compactions in worker threads.
    compaction_filter: Callable[[bytes], bool] | None = None
    #: Observes each WAL fsync's duration in seconds (the metrics hook; called on the Trio thread).
    on_wal_fsync: Callable[[float], None] | None = None
    # Recovery meets damage in the WAL or manifest (a complete frame failing its checksum,
    # damage followed by valid records, a missing segment) and refuses to open with a
    # CorruptionError unless this is set: then it truncates at the damage, reports what it
    # dropped and goes on (operator's choice: `sentinel run --accept-data-loss`). A torn
    # tail (incomplete last frame, zero-filled end) is always truncated and reported; a
    # damaged table is always refused (recovery.py says why).
    accept_data_loss: bool = False
