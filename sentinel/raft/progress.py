"""What a leader knows of each follower's log, and the flow control of appends to it.

A follower's progress is in one of three states (etcd-raft's design, Raft thesis §4.2.1
and §10.2.1):

* PROBE: the leader does not know where the follower's log ends. It sends at most one
  append per heartbeat interval (``paused`` after each send, cleared by a response or a
  heartbeat response) and walks ``next`` back on rejects with the fast-backup hint.
* REPLICATE: the follower is in sync; appends are pipelined optimistically (``next``
  advances on send) within a window of ``max_inflight`` messages and
  ``max_inflight_bytes`` bytes. A full window pauses sending; an ack frees it; a heartbeat
  response lets one append through even with a full window, so appends that were dropped
  are found out (the follower rejects the next one) and the window recovers.
* SNAPSHOT: the entries the follower needs are truncated; a snapshot is on its way and
  nothing else is sent until the follower acknowledges it or the transport reports its
  failure.

Invariants: ``match < next``; ``match`` only grows (within a term); in REPLICATE every
in-flight append ends at an index in ``(match, next)``.
"""

from __future__ import annotations

import enum
from collections import deque


class ProgressState(enum.IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


class Inflights:
    """The appends in flight to one follower: (last index, bytes) in send order."""

    __slots__ = ("bytes", "max_bytes", "max_count", "queue")

    def __init__(self, max_count: int, max_bytes: int) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.queue: deque[tuple[int, int]] = deque()
        self.bytes = 0

    def add(self, last_index: int, size: int) -> None:
        self.queue.append((last_index, size))
        self.bytes += size

    def free_le(self, index: int) -> None:
        """Everything up to ``index`` was acknowledged."""
        q = self.queue
        while q and q[0][0] <= index:
            self.bytes -= q.popleft()[1]

    def full(self) -> bool:
        return len(self.queue) >= self.max_count or (self.max_bytes > 0 and self.bytes >= self.max_bytes)

    def reset(self) -> None:
        self.queue.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.queue)


class Progress:
    __slots__ = (
        "inflights",
        "match",
        "next",
        "paused",
        "pending_snapshot",
        "recent_active",
        "recovering",
        "state",
    )

    def __init__(self, next_index: int, max_inflight: int, max_inflight_bytes: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.paused = False
        self.pending_snapshot = 0
        # Heard from within the current check-quorum period.
        self.recent_active = False
        # The follower said it lost durable state and has not caught up: its match does not
        # count toward commit, nor its activity toward check-quorum.
        self.recovering = False
        self.inflights = Inflights(max_inflight, max_inflight_bytes)

    def __repr__(self) -> str:
        return (
            f"{self.state.name} match={self.match} next={self.next}"
            + (" paused" if self.paused else "")
            + (f" pending_snap={self.pending_snapshot}" if self.state is ProgressState.SNAPSHOT else "")
            + (f" inflight={len(self.inflights)}" if self.inflights.queue else "")
        )

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.paused = False
        self.pending_snapshot = 0
        self.inflights.reset()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.paused = False
        self.pending_snapshot = 0
        self.inflights.reset()

    def become_snapshot(self, snapshot_index: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = snapshot_index
        self.next = snapshot_index + 1
        self.paused = False
        self.inflights.reset()

    def is_paused(self) -> bool:
        if self.state is ProgressState.SNAPSHOT:
            return True
        return self.paused

    def sent_entries(self, last_index: int, size: int) -> None:
        """An append whose last entry is ``last_index`` was sent (``size`` bytes)."""
        if self.state is ProgressState.REPLICATE:
            if last_index >= self.next:
                self.next = last_index + 1
                self.inflights.add(last_index, size)
            self.paused = self.inflights.full()
        else:
            # PROBE: one message per round trip (or heartbeat interval).
            self.paused = True

    def maybe_update(self, index: int) -> bool:
        """The follower acknowledged everything up to ``index``; True if that is news."""
        updated = index > self.match
        if updated:
            self.match = index
            self.paused = False
        if index + 1 > self.next:
            self.next = index + 1
        return updated

    def maybe_decrease_to(self, rejected: int, match_hint: int) -> bool:
        """The follower rejected an append after ``rejected``; its log may match ours up to
        ``match_hint``. False when the reject is stale (out of order)."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False  # acknowledged since: an old reject
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False  # not the probe we sent last
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.paused = False
        return True


def quorum_index(matches: list[int]) -> int:
    """The highest index held by a majority, given each voter's match."""
    ordered = sorted(matches, reverse=True)
    return ordered[len(ordered) // 2]
