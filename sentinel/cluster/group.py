"""What every Raft-group actor shares: its storage's write side, and handling one Ready.

A group actor (the controller, a partition replica) owns a ``RaftNode`` and a
``GroupStorage``; after feeding the node its inputs it calls ``handle_ready``, which keeps
the Ready contract (``sentinel/raft/core.py``): send the early messages, persist (with the
actor's own state in the same atomic write), send the responses that promise durability,
then hand back the Ready for the actor to apply before it calls ``advance``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import attrs
import trio

from sentinel.actors import Request
from sentinel.errors import WriteRefused
from sentinel.raft.core import RaftNode, Ready
from sentinel.raft.messages import Message, Role
from sentinel.raft.storage import MemoryStorage, RaftStorage

logger = logging.getLogger(__name__)
Ops = Sequence[tuple[bytes, bytes | None]]
# Backoff while the disk is full (a persist that cannot be written is retried, never dropped).
_RETRY_INITIAL_SECONDS = 0.05
_RETRY_MAX_SECONDS = 2.0
Send = Callable[[int, Message], None]  # (group, message): never blocks


# -- the messages every Raft group's actor takes (a partition replica, the controller) -------


@attrs.define(slots=True, eq=False)
class Tick:
    """From the RaftTicker: one logical tick."""


@attrs.define(slots=True, eq=False)
class Inbound:
    """From the peer links: a Raft message of the actor's group."""

    message: Message


@attrs.define(slots=True, eq=False)
class HandOff(Request[int]):
    """From a graceful shutdown: transfer leadership to the most caught-up follower that was
    heard from recently (``hand_off``); answered with its id (0: not leading, or nobody to
    hand to)."""


class GroupStorage(RaftStorage, Protocol):
    async def persist(self, rd: Ready, extra: Ops = ()) -> None:
        """Make the Ready's snapshot, entries and hard state (and ``extra``) durable at once."""
        ...

    async def persist_soon(self, rd: Ready) -> None:
        """Take ``rd`` (a Ready that needs no sync: a commit index change alone) without
        waiting for it to be durable: it is written behind everything written before it,
        at the latest with the group's next write or ``write_deferred``."""
        ...

    async def write_deferred(self) -> None:
        """Start writing what ``persist_soon`` took and no write has carried yet."""
        ...

    async def compact(self, index: int, data: bytes) -> None:
        """Truncate the log through ``index``; ``data`` is the snapshot at that point."""
        ...


class MemoryGroupStorage(MemoryStorage):
    """A GroupStorage in memory: the "disk" of actor-level tests on MockClock (no threads)."""

    def __init__(self) -> None:
        super().__init__()
        self.extra: dict[bytes, bytes] = {}

    async def persist(self, rd: Ready, extra: Ops = ()) -> None:
        await trio.lowlevel.checkpoint()
        self.persist_ready(rd.snapshot, rd.entries, rd.hard_state)
        for key, value in extra:
            if value is None:
                self.extra.pop(key, None)
            else:
                self.extra[key] = value

    async def persist_soon(self, rd: Ready) -> None:
        self.persist_ready(rd.snapshot, rd.entries, rd.hard_state)

    async def write_deferred(self) -> None:
        pass  # persist_soon wrote at once

    async def compact(self, index: int, data: bytes) -> None:  # type: ignore[override]
        await trio.lowlevel.checkpoint()
        MemoryStorage.compact(self, index, data)


@attrs.frozen
class RaftStats:
    """What a group publishes for metrics with its view (immutable, read by the metrics thread)."""

    elections: int = 0
    leader_changes: int = 0
    commit: int = 0
    follower_lag: tuple[tuple[int, int], ...] = ()  # (follower, entries behind), leaders only


def raft_stats(node: RaftNode, previous: RaftStats, previous_leader: int) -> RaftStats:
    lag: tuple[tuple[int, int], ...] = ()
    if node.role is Role.LEADER:
        last = node.log.last_index()
        lag = tuple((peer, last - node.prs[peer].match) for peer in node.peers)
    changes = previous.leader_changes + (1 if node.lead and node.lead != previous_leader else 0)
    return RaftStats(node.elections, changes, node.log.committed, lag)


def _no_observation(seconds: float) -> None:
    pass


@attrs.frozen
class RaftObservers:
    """Where a group reports its latencies (the node's histograms; nothing in tests)."""

    persist: Callable[[float], None] = _no_observation  # seconds to persist a Ready
    commit: Callable[[float], None] = _no_observation  # seconds from proposal to commit


async def handle_ready(
    node: RaftNode,
    storage: GroupStorage,
    group: int,
    send: Send,
    before_persist: Callable[[Ready], Ops] | None = None,
    on_persist: Callable[[float], None] = _no_observation,
    *,
    defer_commit: bool = False,
) -> Ready:
    """Take the node's Ready, send and persist it per the contract; the caller applies it
    (snapshot, then committed entries) and calls ``node.advance(rd)``. ``before_persist``
    sees the Ready first and returns the owner's own ops to write atomically with it.

    A Ready that only moves the commit index is not waited for: its write is queued at
    once, or with ``defer_commit`` left to the group's next write (the caller then calls
    ``storage.write_deferred()`` now and then, so an idle group's commit is written too)."""
    rd = node.ready()
    extra = before_persist(rd) if before_persist is not None else ()
    for m in rd.messages:
        send(group, m)
    if (
        not rd.must_sync
        and rd.hard_state is not None
        and not (rd.entries or rd.snapshot is not None or extra)
    ):
        # A commit index change alone (a leader's commit, a follower learning it): Raft
        # asks no sync for it (the core recomputes the commit after a restart from the log
        # and its peers), so the group applies and answers at once and the commit goes to
        # storage with its next write (or write_deferred), instead of a storage round trip
        # per commit (a group of one made two per produce: its entry, then its commit).
        # Until then, or if that write fails, the commit on disk lags: safe.
        await storage.persist_soon(rd)
        if not defer_commit:
            await storage.write_deferred()
    elif rd.entries or rd.hard_state is not None or rd.snapshot is not None or extra:
        delay = _RETRY_INITIAL_SECONDS
        started = time.perf_counter()
        while True:
            try:
                await storage.persist(rd, extra)
                on_persist(time.perf_counter() - started)
                break
            except WriteRefused as exc:
                # A Ready cannot be abandoned (the core counts on it being persisted before
                # anything else): the group waits for space, then goes on where it stopped.
                # Its peers carry on without it meanwhile; its producers are refused up front.
                logger.warning("raft group %d waits for disk space: %s", group, exc)
                await trio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_SECONDS)
    for m in rd.messages_after_persist:
        send(group, m)
    return rd


def hand_off(node: RaftNode) -> int:
    """Start a leadership transfer to the best follower: caught up furthest, heard from
    within the last check-quorum period. Returns its id, 0 if there is none."""
    if node.role is not Role.LEADER:
        return 0
    best, best_match = 0, -1
    for peer in node.peers:
        pr = node.prs[peer]
        if pr.recent_active and pr.match > best_match:
            best, best_match = peer, pr.match
    if best:
        node.transfer_leadership(best)
    return best
