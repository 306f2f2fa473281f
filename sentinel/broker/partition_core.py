"""A partition replica's offset arithmetic, as a pure object.

A partition's Raft log is its log (``sentinel/raft/DESIGN.md``): each data entry is one
record batch whose offsets the leader assigned when it proposed it. This core follows the
log's entries and answers, without IO:

* ``log_end_offset``: the offset after the last batch in the log (committed or not): where
  the leader assigns the next batch;
* ``high_watermark``: the offset after the last COMMITTED batch: what consumers may read;
* ``log_start_offset``: records below it are gone (retention, or a snapshot install);
* ``size_bytes``: bytes of batches in ``[log_start_offset, log_end_offset)``.

Invariants: ``log_start <= high_watermark <= log_end``; batches are contiguous in offset
order as in index order; a committed batch is never replaced, so the high watermark never
goes back; replacing an uncommitted suffix (a new leader's log wins) moves the log end
back to where the surviving log ends and takes the replaced batches' bytes out of the size.

The core keeps only the uncommitted tail in memory (entries above the commit index, a
handful in steady state): everything else is summarised by the four numbers.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterable
from typing import Final

import attrs

from sentinel.records import batch_format as fmt

_HEADER_PREFIX_SIZE: Final = fmt.RECORDS_OFFSET
_LAST_OFFSET_DELTA = struct.Struct(">i")


@attrs.frozen
class BatchSpan:
    """Where a data entry sits in the offset space."""

    index: int  # its Raft index
    base_offset: int
    end_offset: int  # offset after its last record
    size: int  # bytes of the stored batch
    max_timestamp: int = -1


def batch_span(index: int, data: bytes) -> BatchSpan | None:
    """The span of a data entry (a record batch with its assigned base offset), None for an
    entry that carries no records (a leader's no-op)."""
    if len(data) < _HEADER_PREFIX_SIZE or data[fmt.MAGIC_OFFSET] != fmt.MAGIC:
        return None
    (base,) = fmt.BASE_OFFSET.unpack_from(data, fmt.BASE_OFFSET_OFFSET)
    (delta,) = _LAST_OFFSET_DELTA.unpack_from(data, fmt.LAST_OFFSET_DELTA_OFFSET)
    (max_timestamp,) = fmt.BASE_OFFSET.unpack_from(data, fmt.MAX_TIMESTAMP_OFFSET)
    return BatchSpan(index, base, base + delta + 1, len(data), max_timestamp)


class PartitionCore:
    def __init__(
        self,
        *,
        log_start_offset: int,
        log_end_offset: int,
        size_bytes: int,
        uncommitted: Iterable[BatchSpan] = (),
    ) -> None:
        self.log_start_offset = log_start_offset
        self.log_end_offset = log_end_offset
        self.size_bytes = size_bytes
        self._tail: deque[BatchSpan] = deque(uncommitted)
        self.high_watermark = self._tail[0].base_offset if self._tail else log_end_offset
        if not log_start_offset <= self.high_watermark <= log_end_offset:
            raise ValueError(
                f"inconsistent partition state: start {log_start_offset}, "
                f"high watermark {self.high_watermark}, end {log_end_offset}"
            )

    @property
    def uncommitted(self) -> tuple[BatchSpan, ...]:
        return tuple(self._tail)

    def appended(self, first_index: int, spans: Iterable[BatchSpan]) -> None:
        """Entries from ``first_index`` on are now the log's (replacing whatever was there
        from that index: an uncommitted suffix); ``spans`` are the data entries among them,
        in order."""
        tail = self._tail
        while tail and tail[-1].index >= first_index:
            gone = tail.pop()
            self.size_bytes -= gone.size
            self.log_end_offset = gone.base_offset
        for span in spans:
            if span.base_offset != self.log_end_offset:
                raise ValueError(
                    f"batch at index {span.index} starts at offset {span.base_offset}, "
                    f"the log ends at {self.log_end_offset}"
                )
            tail.append(span)
            self.size_bytes += span.size
            self.log_end_offset = span.end_offset

    def committed_to(self, index: int) -> list[BatchSpan]:
        """The Raft commit index reached ``index``: the batches that became committed (the
        high watermark moved past them), in order."""
        tail = self._tail
        done = []
        while tail and tail[0].index <= index:
            span = tail.popleft()
            self.high_watermark = span.end_offset
            done.append(span)
        return done

    def restored(self, offset: int) -> None:
        """A snapshot replaced the log. A partition's Raft log is truncated only where
        retention moved its start, so the snapshot point is a log start: everything below
        ``offset`` is gone and the log continues from it."""
        self._tail.clear()
        self.log_start_offset = self.log_end_offset = self.high_watermark = offset
        self.size_bytes = 0

    def retention_plan(
        self, spans: Iterable[BatchSpan], *, retention_ms: int, retention_bytes: int, now_ms: int
    ) -> tuple[int, int, int] | None:
        """Which committed batches retention removes, given the batches from the log start
        on (in order): ``(new log start, bytes freed, index of the last batch removed)``, or
        None. A batch goes when all its records are older than ``retention_ms`` or while the
        partition is larger than ``retention_bytes`` (0 disables either); the first batch
        that stays ends the plan, and nothing at or past the high watermark ever goes."""
        if retention_ms <= 0 and retention_bytes <= 0:
            return None
        size = self.size_bytes
        plan = None
        freed = 0
        for span in spans:
            if span.end_offset > self.high_watermark:
                break
            too_old = retention_ms > 0 and span.max_timestamp < now_ms - retention_ms
            too_big = retention_bytes > 0 and size - freed > retention_bytes
            if not (too_old or too_big):
                break
            freed += span.size
            plan = (span.end_offset, freed, span.index)
        return plan

    def retained(self, new_start: int, freed_bytes: int) -> None:
        """Retention moved the log start (only ever within the committed prefix)."""
        if not self.log_start_offset <= new_start <= self.high_watermark:
            raise ValueError(
                f"log start {new_start} outside [{self.log_start_offset}, {self.high_watermark}]"
            )
        self.log_start_offset = new_start
        self.size_bytes -= freed_bytes
