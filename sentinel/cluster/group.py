"""What every Raft-group actor shares: its storage's write side, and handling one Ready.

A group actor (the controller, a partition replica) owns a ``RaftNode`` and a
``GroupStorage``; after feeding the node its inputs it calls ``handle_ready``, which keeps
the Ready contract (``sentinel/raft/core.py``): send the early messages, persist (with the
actor's own state in the same atomic write), send the responses that promise durability,
then hand back the Ready for the actor to apply before it calls ``advance``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

import trio

from sentinel.errors import DiskFullError
from sentinel.raft.core import RaftNode, Ready
from sentinel.raft.messages import Message
from sentinel.raft.storage import MemoryStorage, RaftStorage

logger = logging.getLogger(__name__)
Ops = Sequence[tuple[bytes, bytes | None]]
# Backoff while the disk is full (a persist that cannot be written is retried, never dropped).
_RETRY_INITIAL_SECONDS = 0.05
_RETRY_MAX_SECONDS = 2.0
Send = Callable[[int, Message], None]  # (group, message): never blocks


class GroupStorage(RaftStorage, Protocol):
    async def persist(self, rd: Ready, extra: Ops = ()) -> None:
        """Make the Ready's snapshot, entries and hard state (and ``extra``) durable at once."""
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

    async def compact(self, index: int, data: bytes) -> None:  # type: ignore[override]
        await trio.lowlevel.checkpoint()
        MemoryStorage.compact(self, index, data)


async def handle_ready(
    node: RaftNode,
    storage: GroupStorage,
    group: int,
    send: Send,
    before_persist: Callable[[Ready], Ops] | None = None,
) -> Ready:
    """Take the node's Ready, send and persist it per the contract; the caller applies it
    (snapshot, then committed entries) and calls ``node.advance(rd)``. ``before_persist``
    sees the Ready first and returns the owner's own ops to write atomically with it."""
    rd = node.ready()
    extra = before_persist(rd) if before_persist is not None else ()
    for m in rd.messages:
        send(group, m)
    if rd.entries or rd.hard_state is not None or rd.snapshot is not None or extra:
        delay = _RETRY_INITIAL_SECONDS
        while True:
            try:
                await storage.persist(rd, extra)
                break
            except DiskFullError as exc:
                # A Ready cannot be abandoned (the core counts on it being persisted before
                # anything else): the group waits for space, then goes on where it stopped.
                # Its peers carry on without it meanwhile; its producers are refused up front.
                logger.warning("raft group %d waits for disk space: %s", group, exc)
                await trio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_SECONDS)
    for m in rd.messages_after_persist:
        send(group, m)
    return rd
