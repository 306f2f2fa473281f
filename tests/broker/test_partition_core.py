"""The partition replica's offset arithmetic: log end, high watermark, start and size as
Raft entries are appended, replaced, committed, retained and restored."""

from __future__ import annotations

import pytest

from sentinel.broker.partition_core import BatchSpan, PartitionCore, batch_span
from sentinel.records import build_batch


def span(index: int, base: int, count: int, size: int = 100) -> BatchSpan:
    return BatchSpan(index, base, base + count, size)


def test_batch_span_reads_the_assigned_offsets_from_the_batch_header() -> None:
    data = build_batch([(None, b"v%d" % i, [], 1000) for i in range(5)])
    moved = bytes(8) + data[8:]
    assert batch_span(7, moved) == BatchSpan(7, 0, 5, len(data), max_timestamp=1000)
    rebased = (1234).to_bytes(8, "big") + data[8:]
    assert batch_span(7, rebased) == BatchSpan(7, 1234, 1239, len(data), max_timestamp=1000)
    assert batch_span(8, b"") is None  # a leader's no-op


def test_the_high_watermark_follows_the_commit_and_never_goes_back() -> None:
    core = PartitionCore(log_start_offset=0, log_end_offset=0, size_bytes=0)
    core.appended(1, [])  # the leader's no-op at index 1
    core.appended(2, [span(2, 0, 10), span(3, 10, 5)])
    assert (core.log_end_offset, core.high_watermark, core.size_bytes) == (15, 0, 200)
    assert not core.committed_to(1)
    assert core.committed_to(2) and core.high_watermark == 10
    assert core.committed_to(9) and core.high_watermark == 15
    assert not core.committed_to(3) and core.high_watermark == 15


def test_replacing_an_uncommitted_suffix_takes_its_offsets_and_bytes_out() -> None:
    core = PartitionCore(log_start_offset=0, log_end_offset=0, size_bytes=0)
    core.appended(1, [span(1, 0, 10), span(2, 10, 10), span(3, 20, 10)])
    core.committed_to(1)
    # A new leader's log wins from index 2: its batch there starts where index 1 ended.
    core.appended(2, [span(2, 10, 3, size=40)])
    assert (core.log_end_offset, core.high_watermark, core.size_bytes) == (13, 10, 140)
    with pytest.raises(ValueError, match="starts at offset 20, the log ends at 13"):
        core.appended(3, [span(3, 20, 1)])


def test_restart_state_with_an_uncommitted_tail() -> None:
    core = PartitionCore(
        log_start_offset=5, log_end_offset=30, size_bytes=900, uncommitted=[span(8, 20, 5), span(9, 25, 5)]
    )
    assert core.high_watermark == 20
    core.committed_to(8)
    assert core.high_watermark == 25
    with pytest.raises(ValueError, match="inconsistent partition state"):
        PartitionCore(log_start_offset=50, log_end_offset=30, size_bytes=0)


def test_retention_and_snapshots_move_the_start() -> None:
    core = PartitionCore(log_start_offset=0, log_end_offset=0, size_bytes=0)
    core.appended(1, [span(1, 0, 10), span(2, 10, 10)])
    core.committed_to(2)
    core.retained(10, 100)
    assert (core.log_start_offset, core.size_bytes) == (10, 100)
    with pytest.raises(ValueError, match="outside"):
        core.retained(25, 0)  # never past the high watermark
    core.restored(500)
    assert (core.log_start_offset, core.high_watermark, core.log_end_offset, core.size_bytes) == (
        500,
        500,
        500,
        0,
    )
    core.appended(7, [span(7, 500, 2)])
    assert core.log_end_offset == 502


def test_retention_plans_by_age_and_size_within_the_committed_prefix() -> None:
    core = PartitionCore(log_start_offset=0, log_end_offset=0, size_bytes=0)
    spans = [BatchSpan(i, (i - 1) * 10, i * 10, 100, max_timestamp=1000 * i) for i in range(1, 6)]
    core.appended(1, spans)
    core.committed_to(4)  # batch 5 is not committed: never removed
    plan = core.retention_plan
    assert plan(spans, retention_ms=0, retention_bytes=0, now_ms=10**9) is None
    # By age: batches whose newest record is older than now - retention.
    assert plan(spans, retention_ms=1500, retention_bytes=0, now_ms=4000) == (20, 200, 2)
    assert plan(spans, retention_ms=1, retention_bytes=0, now_ms=10**9) == (40, 400, 4)
    # By size: 500 bytes held, keep at most 250: the oldest three go.
    assert plan(spans, retention_ms=0, retention_bytes=250, now_ms=0) == (30, 300, 3)
    # The first batch that stays ends the plan, even if a later one would qualify.
    assert plan(spans, retention_ms=1500, retention_bytes=0, now_ms=1000) is None
