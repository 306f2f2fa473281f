"""A full disk at the broker layer: every write path answers RESOURCE_EXHAUSTED naming the
file, no actor crashes, reads go on, and offsets stay contiguous once space is freed.

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


async def test_produce_on_a_full_disk_is_refused_reads_go_on_and_offsets_stay_contiguous(
    node: NodeFactory, clock: trio.testing.MockClock, disk: FullDisk
) -> None:
    async with node.run() as running:
        broker = running.broker
        topic = await broker.create_topic("t", 1)
        await broker.produce("t", 0, [batch(b"a", b"b")])
        disk.full = True
        with pytest.raises(DiskFullError) as refused:
            await broker.produce("t", 0, [batch(b"lost")])
        assert_disk_full(refused.value)
        # Pipelined appends (acks=0, several in flight): all fail, none leaves a hole.
        log = topic.logs[0]
        await log.append([batch(b"x")], wait=False)
        await log.append([batch(b"y", b"z")], wait=False)
        await trio.testing.wait_all_tasks_blocked()
        assert (log.log_end_offset, log.high_watermark) == (2, 2)
        assert read_all(topic) == [(0, b"a"), (1, b"b")]  # reads are served meanwhile
        disk.full = False
        _, result = await broker.produce("t", 0, [batch(b"c")])
        assert result.base_offset == 2  # the refused offsets are reused: no gap
        assert read_all(topic) == [(0, b"a"), (1, b"b"), (2, b"c")]
        size = log.size_bytes
    async with node.run() as running:  # and that is what a restart finds
        topic = running.broker.topic("t")
        assert read_all(topic) == [(0, b"a"), (1, b"b"), (2, b"c")]
        assert topic.logs[0].size_bytes == size


async def test_topic_changes_on_a_full_disk_fail_the_request_not_the_broker(
    node: NodeFactory, clock: trio.testing.MockClock, disk: FullDisk
) -> None:
    async with node.run() as running:
        broker = running.broker
        await broker.create_topic("keep", 1)
        disk.full = True
        with pytest.raises(DiskFullError) as refused:
            await broker.create_topic("new", 2)
        assert_disk_full(refused.value)
        with pytest.raises(DiskFullError):
            await broker.produce("auto", -1, [batch(b"v")])  # auto-creation is refused too
        with pytest.raises(DiskFullError):
            await broker.delete_topic("keep")
        assert sorted(broker.topics) == ["keep"]
        disk.full = False
        await broker.create_topic("new", 2)  # the actor is still serving
        await broker.delete_topic("keep")
        assert sorted(broker.topics) == ["new"]


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
        disk.full = True
        with pytest.raises(DiskFullError) as refused:
            await coordinator.commit(commit(5))
        assert_disk_full(refused.value)
        with pytest.raises(DiskFullError):
            await coordinator.forget_topic("t")
        assert dict(coordinator.committed("g")) == {("t", 0): (1, "")}
        disk.full = False
        await coordinator.commit(commit(7))
        assert dict(coordinator.committed("g")) == {("t", 0): (7, "")}
    async with node.run() as running:
        assert dict(running.coordinator.committed("g")) == {("t", 0): (7, "")}


async def test_retention_on_a_full_disk_waits_for_the_next_pass(
    node: NodeFactory, clock: trio.testing.MockClock, disk: FullDisk
) -> None:
    async with node.run(retention_check_seconds=30.0) as running:
        topic = await running.broker.create_topic("t", 1, config=TopicConfig(retention_ms=1_000))
        log = topic.logs[0]
        await log.append([batch(b"ancient", timestamp=5), batch(b"too", timestamp=6)])
        disk.full = True
        await trio.sleep(30.1)  # a retention pass runs, and cannot record the new log start
        assert (log.log_start_offset, log.size_bytes > 0) == (0, True)
        assert read_all(topic) == [(0, b"ancient"), (1, b"too")]
        disk.full = False
        await trio.sleep(30.0)  # the broker (and its retention loop) survived: the next pass does it
        assert log.log_start_offset == 2
