"""A full disk at the broker layer: no actor crashes, reads go on, nothing acknowledged or
held is lost, and offsets stay contiguous once space is freed.

The first write to meet a full disk is a Raft group's (a partition's or the controller's):
a group cannot drop what it has appended, so it holds that write, and the request waiting
on it, until space is back. From then on (the store knows the disk is full) every write
path answers RESOURCE_EXHAUSTED naming the file up front.

The disk fills through the storage engine's file seam (``sentinel.storage.files.disk``):
under the broker tests' ``SyncMode.NONE`` every WAL write goes through ``disk.write``.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing
from grpclib.const import Status

from sentinel.broker.broker import Topic, TopicConfig
from sentinel.broker.replica import ACKS_ALL, ACKS_NONE, AppendResult
from sentinel.errors import DiskFullError
from sentinel.generated.sentinel import v1 as pb
from sentinel.records import RecordBatch, build_batch, split_batches
from sentinel.server.status import status_of
from sentinel.storage import files

if TYPE_CHECKING:
    from conftest import NodeFactory


class FullDisk:
    """While ``full``, every write through the seam fails with ENOSPC."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = False
        real_write = files.disk.write

        def write(fd: int, data: bytes | memoryview) -> int:
            if self.full:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write(fd, data)

        monkeypatch.setattr(files.disk, "write", write)


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> FullDisk:
    return FullDisk(monkeypatch)


def batch(*values: bytes, timestamp: int = 1_000) -> RecordBatch:
    return RecordBatch(build_batch([(None, v, (), timestamp) for v in values]))


def read_all(topic: Topic, partition: int = 0) -> list[tuple[int, bytes | None]]:
    log = topic.logs[partition]
    data = log.read(log.log_start_offset, 1 << 30).data
    return [(r.offset, r.value) for b in split_batches(data) for r in b.records()]


def assert_disk_full(exc: BaseException) -> None:
    answer = status_of(exc)
    assert answer.status is Status.RESOURCE_EXHAUSTED
    assert answer.message.startswith("disk full: ") and "wal-" in answer.message


async def test_produce_on_a_full_disk_is_held_then_refused_reads_go_on_and_offsets_stay_contiguous(
    node: NodeFactory, clock: trio.testing.MockClock, disk: FullDisk
) -> None:
    async with node.run() as running:
        broker = running.broker
        topic = await broker.create_topic("t", 1)
        log = topic.logs[0]
        await broker.produce("t", 0, [batch(b"a", b"b")])
        await trio.testing.wait_all_tasks_blocked()  # every write of it done
        disk.full = True
        held: list[AppendResult] = []

        async def produce_held() -> None:
            held.append((await broker.produce("t", 0, [batch(b"held")]))[1])

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(produce_held)
                # The first write to meet the full disk is the replica's Raft write: a Raft
                # group cannot drop what it has appended, so it holds it until space is back.
                await trio.sleep(5)
                assert held == [] and running.store.disk_full is not None
                # From then on the broker refuses produce up front, on every path.
                with pytest.raises(DiskFullError) as refused:
                    await broker.produce("t", 0, [batch(b"lost")])
                assert_disk_full(refused.value)
                for partition, acks in ((0, ACKS_NONE), (-1, ACKS_ALL)):
                    with pytest.raises(DiskFullError):
                        await broker.produce("t", partition, [batch(b"x")], acks=acks)
                # The held batch is not readable; reads are served meanwhile.
                assert log.high_watermark == 2
                assert read_all(topic) == [(0, b"a"), (1, b"b")]
                disk.full = False
        assert held == [AppendResult(2, 2)]  # held, then appended: nothing lost
        _, result = await broker.produce("t", 0, [batch(b"c")])
        assert result.base_offset == 3  # the refused requests spent no offset: no gap
        assert read_all(topic) == [(0, b"a"), (1, b"b"), (2, b"held"), (3, b"c")]
        size = log.size_bytes
    async with node.run() as running:  # and that is what a restart finds
        topic = running.broker.topic("t")
        assert read_all(topic) == [(0, b"a"), (1, b"b"), (2, b"held"), (3, b"c")]
        assert topic.logs[0].size_bytes == size


async def test_topic_changes_on_a_full_disk_fail_the_request_not_the_broker(
    node: NodeFactory, clock: trio.testing.MockClock, disk: FullDisk
) -> None:
    async with node.run() as running:
        broker = running.broker
        await broker.create_topic("keep", 1)
        await trio.testing.wait_all_tasks_blocked()
        disk.full = True
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                # Topic changes are controller proposals: the first one to meet the full disk
                # is held with the controller's Raft write until space is back...
                nursery.start_soon(broker.create_topic, "held", 1)
                await trio.sleep(5)
                assert running.store.disk_full is not None
                # ...and the next ones are refused up front.
                with pytest.raises(DiskFullError) as refused:
                    await broker.create_topic("new", 2)
                assert_disk_full(refused.value)
                with pytest.raises(DiskFullError):
                    await broker.produce("auto", -1, [batch(b"v")])  # auto-creation is refused too
                with pytest.raises(DiskFullError):
                    await broker.delete_topic("keep")
                assert sorted(broker.topics) == ["keep"]
                disk.full = False
        assert sorted(broker.topics) == ["held", "keep"]
        await broker.create_topic("new", 2)  # the controller and the broker still serve
        await broker.delete_topic("keep")
        assert sorted(broker.topics) == ["held", "new"]


async def test_offset_commits_on_a_full_disk_fail_the_request_not_the_coordinator(
    node: NodeFactory, clock: trio.testing.MockClock, disk: FullDisk
) -> None:
    def commit(offset: int) -> pb.CommitOffsetsRequest:
        return pb.CommitOffsetsRequest(
            group_id="g", generation=-1, offsets=[pb.PartitionOffset(topic="t", partition=0, offset=offset)]
        )

    async with node.run() as running:
        coordinator = running.coordinator
        await running.broker.create_topic("t", 1)
        await coordinator.commit(commit(1))
        await trio.testing.wait_all_tasks_blocked()
        disk.full = True
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                # A commit is a controller proposal: the first one is held with its write...
                nursery.start_soon(coordinator.commit, commit(3))
                await trio.sleep(5)
                assert running.store.disk_full is not None
                # ...the next ones are refused up front.
                with pytest.raises(DiskFullError) as refused:
                    await coordinator.commit(commit(5))
                assert_disk_full(refused.value)
                assert dict(coordinator.committed("g")) == {("t", 0): (1, "")}
                # Forgetting a topic writes nothing now (its offsets go with the topic's
                # deletion in the metadata): it is not refused.
                await coordinator.forget_topic("t")
                disk.full = False
        assert dict(coordinator.committed("g")) == {("t", 0): (3, "")}
        await coordinator.commit(commit(7))
        assert dict(coordinator.committed("g")) == {("t", 0): (7, "")}
    async with node.run() as running:
        assert dict(running.coordinator.committed("g")) == {("t", 0): (7, "")}


async def test_retention_on_a_full_disk_waits_for_the_next_pass(
    node: NodeFactory, clock: trio.testing.MockClock, disk: FullDisk, caplog: pytest.LogCaptureFixture
) -> None:
    async with node.run(retention_check_seconds=30.0) as running:
        topic = await running.broker.create_topic("t", 1, config=TopicConfig(retention_ms=1_000))
        log = topic.logs[0]
        await log.produce([batch(b"ancient", timestamp=5), batch(b"too", timestamp=6)])
        await trio.testing.wait_all_tasks_blocked()  # the commit's hard state is written too
        disk.full = True
        await trio.sleep(30.1)  # a retention pass runs, and cannot record the new log start
        postponed = [
            r.getMessage() for r in caplog.records if r.getMessage().startswith("retention postponed")
        ]
        assert len(postponed) == 1 and "disk full: " in postponed[0]
        assert (log.log_start_offset, log.size_bytes > 0) == (0, True)
        assert read_all(topic) == [(0, b"ancient"), (1, b"too")]
        disk.full = False
        await trio.sleep(30.0)  # the replica (and the retention loop) survived: the next pass does it
        assert (log.log_start_offset, log.size_bytes) == (2, 0)
    async with node.run() as running:
        log = running.broker.topic("t").logs[0]
        assert (log.log_start_offset, log.high_watermark, log.size_bytes) == (2, 2, 0)


async def test_a_node_stops_cleanly_on_a_full_disk(
    node: NodeFactory, clock: trio.testing.MockClock, disk: FullDisk
) -> None:
    async with node.run() as running:
        await running.broker.create_topic("t", 1)
        await running.broker.produce("t", 0, [batch(b"a")])
        await trio.testing.wait_all_tasks_blocked()
        disk.full = True
    # The replicas' last writes at stop (the producer table, a shortcut for the next start)
    # are refused: the stop goes on, and the next start replays what they would have saved.
    disk.full = False
    async with node.run() as running:
        assert read_all(running.broker.topic("t")) == [(0, b"a")]
        assert (await running.broker.produce("t", 0, [batch(b"b")]))[1].base_offset == 1
