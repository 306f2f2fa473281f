"""handle_ready: what a group actor waits for when it hands a Ready to its storage."""

from __future__ import annotations

import random

from sentinel.cluster.group import MemoryGroupStorage, Ops, handle_ready
from sentinel.raft.core import Config, RaftNode, Ready
from sentinel.raft.messages import Message, Role


class RecordingStorage(MemoryGroupStorage):
    """Records how each Ready reached the storage: awaited to durability, or queued."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, bool, bool]] = []  # (how, entries?, hard state?)
        self.deferred_writes = 0

    async def persist(self, rd: Ready, extra: Ops = ()) -> None:
        self.calls.append(("persist", bool(rd.entries), rd.hard_state is not None))
        await super().persist(rd, extra)

    async def persist_soon(self, rd: Ready) -> None:
        self.calls.append(("soon", bool(rd.entries), rd.hard_state is not None))
        await super().persist_soon(rd)

    async def write_deferred(self) -> None:
        self.deferred_writes += 1


async def _drain(
    node: RaftNode, storage: RecordingStorage, sent: list[Message], *, defer_commit: bool = False
) -> list[bytes]:
    applied: list[bytes] = []
    while node.has_ready():
        rd = await handle_ready(node, storage, 1, lambda _group, m: sent.append(m), defer_commit=defer_commit)
        applied += [e.data for e in rd.committed_entries]
        node.advance(rd)
    return applied


async def test_a_commit_alone_is_queued_not_waited_for_and_a_group_of_one_commits_at_once() -> None:
    storage = RecordingStorage()
    node = RaftNode(Config(id=1, voters=(1,)), storage, random.Random(1))
    sent: list[Message] = []
    node.campaign()
    await _drain(node, storage, sent)
    assert node.role is Role.LEADER
    storage.calls.clear()
    storage.deferred_writes = 0
    node.propose(b"x")
    # The entry is persisted and waited for (it must be durable before it counts); the
    # commit that follows at once (no tick: a group of one is its own quorum) is only a
    # commit index change, which Raft persists without a sync: queued, not waited for.
    assert await _drain(node, storage, sent) == [b"x"]
    assert storage.calls == [("persist", True, False), ("soon", False, True)]
    assert storage.deferred_writes == 1  # queued at once
    assert storage.hard_state.commit == node.log.committed == 2
    assert not sent
    # Deferred: left for the group's next write (or its owner's write_deferred).
    storage.calls.clear()
    node.propose(b"y")
    assert await _drain(node, storage, sent, defer_commit=True) == [b"y"]
    assert storage.calls == [("persist", True, False), ("soon", False, True)]
    assert storage.deferred_writes == 1
