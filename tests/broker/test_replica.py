"""Partition replicas on MockClock: three replicas of one partition, each on its own real
store (sync none: no worker threads, so autojump sees every wait), joined by an in-memory
network that can cut nodes off. Leadership, acks, idempotence, failover and restart."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio
import trio.testing
from conftest import frozen

from sentinel.broker import keys
from sentinel.broker.producer_state import OutOfOrderSequence
from sentinel.broker.replica import ACKS_ALL, ACKS_LEADER, AppendResult, ApplyRetention, PartitionReplica
from sentinel.cluster.ticker import RaftTicker
from sentinel.errors import Unavailable
from sentinel.raft.lsm_storage import LsmRaftStorage
from sentinel.raft.messages import Message, Role
from sentinel.records import RecordBatch, build_batch
from sentinel.storage.options import StorageOptions, SyncMode
from sentinel.storage.store import Store

REPLICAS = (1, 2, 3)
TOPIC_ID = 5


def batch(n: int, *, pid: int = -1, epoch: int = -1, seq: int = -1, tag: str = "v") -> RecordBatch:
    records = [(None, f"{tag}{i}".encode(), [], 1000 + i) for i in range(n)]
    return RecordBatch(build_batch(records, producer_id=pid, producer_epoch=epoch, base_sequence=seq))


class Partition:
    def __init__(self, nursery: trio.Nursery, clock: trio.testing.MockClock, directory: Path) -> None:
        self.nursery = nursery
        self.clock = clock
        self.directory = directory
        self.replicas: dict[int, PartitionReplica] = {}
        self.stores: dict[int, Store] = {}
        self.scopes: dict[int, trio.CancelScope] = {}
        self.cut: set[int] = set()
        self.stopped: dict[int, trio.Event] = {}
        self.seed = 0

    def send(self, group: int, m: Message) -> None:
        if m.frm in self.cut or m.to in self.cut:
            return
        replica = self.replicas.get(m.to)
        if replica is not None:
            replica.deliver(m)

    async def start(self, i: int) -> PartitionReplica:
        self.seed += 1
        done = self.stopped[i] = trio.Event()

        async def run(*, task_status: trio.TaskStatus[PartitionReplica]) -> None:
            with trio.CancelScope() as scope:
                self.scopes[i] = scope
                async with trio.open_nursery() as inner:
                    with frozen(self.clock):
                        store = await inner.start(
                            Store(self.directory / f"node{i}", StorageOptions(sync=SyncMode.NONE)).run
                        )
                    self.stores[i] = store
                    replica = PartitionReplica(
                        store,
                        topic="t",
                        topic_id=TOPIC_ID,
                        partition=0,
                        node_id=i,
                        replicas=REPLICAS,
                        send=self.send,
                        rng=random.Random(self.seed),
                        address_of=lambda n: f"host{n}:9092",
                    )
                    await inner.start(replica.run)
                    task_status.started(replica)
                    try:
                        await trio.sleep_forever()
                    finally:
                        with trio.CancelScope(shield=True), frozen(self.clock):
                            await store.aclose()
                        done.set()

        replica: PartitionReplica = await self.nursery.start(run)
        self.replicas[i] = replica
        return replica

    async def stop(self, i: int) -> None:
        """A crash of node i: its actors are cancelled (the store's WAL keeps what it acknowledged)."""
        self.scopes.pop(i).cancel()
        del self.replicas[i]
        await self.stopped.pop(i).wait()

    async def leader(self, among: set[int] | None = None) -> PartitionReplica:
        with trio.fail_after(30):
            while True:
                for i, r in self.replicas.items():
                    if (among is None or i in among) and r.view.role is Role.LEADER and r.view.leader_ready:
                        return r
                await trio.sleep(0.1)

    async def hw_everywhere(self, hw: int) -> None:
        with trio.fail_after(30):
            while any(r.view.high_watermark < hw for r in self.replicas.values()):  # noqa: ASYNC110
                await trio.sleep(0.1)

    def stored(self, i: int) -> list[tuple[int, int]]:
        """(base offset, last offset) of every batch in node i's store."""
        out = []
        prefix = keys.data_prefix(TOPIC_ID, 0)
        for key, value in self.stores[i].scan(prefix, keys.prefix_end(prefix)):
            b = RecordBatch(value)
            out.append((b.base_offset, keys.parse_data_key(key)[2]))  # type: ignore[index]
        return out


async def start_partition(nursery: trio.Nursery, clock: trio.testing.MockClock, tmp_path: Path) -> Partition:
    p = Partition(nursery, clock, tmp_path)
    for i in REPLICAS:
        await p.start(i)
    ticker = RaftTicker(lambda: list(p.replicas.values()))
    await nursery.start(ticker.run)
    return p


async def test_the_preferred_leader_leads_and_acks_all_reach_every_replica(
    clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with trio.open_nursery() as nursery:
        p = await start_partition(nursery, clock, tmp_path)
        leader = await p.leader()
        assert leader.node_id == 1  # the first replica campaigns at once
        first = await leader.produce([batch(3)])
        second = await leader.produce([batch(2), batch(4)])
        assert (first, second) == (AppendResult(0, 2), AppendResult(3, 8))
        await p.hw_everywhere(9)
        for i in REPLICAS:
            assert p.stored(i) == [(0, 2), (3, 4), (5, 8)]
            stored = RecordBatch(p.stores[i].get(keys.data_key(TOPIC_ID, 0, 2)) or b"")
            assert stored.partition_leader_epoch == leader.view.term  # the term, as Kafka's leader epoch
            assert [r.value for r in stored.records()] == [b"v0", b"v1", b"v2"]
        nursery.cancel_scope.cancel()


async def test_a_follower_refuses_produce_naming_the_leader(
    clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with trio.open_nursery() as nursery:
        p = await start_partition(nursery, clock, tmp_path)
        await p.leader()
        await p.hw_everywhere(0)
        with trio.fail_after(30):
            while p.replicas[2].view.leader != 1:  # noqa: ASYNC110
                await trio.sleep(0.1)
        with pytest.raises(Unavailable, match=r"not the leader of t\[0\] \(leader: node 1\)") as err:
            await p.replicas[2].produce([batch(1)])
        assert err.value.leader == "host1:9092"
        nursery.cancel_scope.cancel()


async def test_a_retried_batch_is_answered_with_its_original_offsets_and_stored_once(
    clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with trio.open_nursery() as nursery:
        p = await start_partition(nursery, clock, tmp_path)
        leader = await p.leader()
        original = await leader.produce([batch(3, pid=7, epoch=0, seq=0)])
        await leader.produce([batch(2, pid=7, epoch=0, seq=3)])
        again = await leader.produce([batch(3, pid=7, epoch=0, seq=0)])
        assert again == original == AppendResult(0, 2)
        with pytest.raises(OutOfOrderSequence, match="sent sequence 9, expected 5"):
            await leader.produce([batch(1, pid=7, epoch=0, seq=9)])
        await p.hw_everywhere(5)
        assert p.stored(1) == [(0, 2), (3, 4)]
        nursery.cancel_scope.cancel()


async def test_acks_one_answers_on_the_leaders_write_acks_all_waits_for_a_majority(
    clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with trio.open_nursery() as nursery:
        p = await start_partition(nursery, clock, tmp_path)
        leader = await p.leader()
        await leader.produce([batch(1)])
        p.cut.update({2, 3})
        assert await leader.produce([batch(2)], ACKS_LEADER) == AppendResult(1, 2)
        # acks=all cannot commit without a follower: the leader steps down (check-quorum)
        # and the request fails, retriable; it is never answered as if committed.
        with pytest.raises(Unavailable):
            await leader.produce([batch(1)], ACKS_ALL)
        assert leader.view.high_watermark == 1
        nursery.cancel_scope.cancel()


async def test_failover_continues_the_offsets_and_the_old_leader_rejoins_truncated(
    clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with trio.open_nursery() as nursery:
        p = await start_partition(nursery, clock, tmp_path)
        leader = await p.leader()
        await leader.produce([batch(4)])
        await p.hw_everywhere(4)
        # The old leader takes a write no one else sees (acks=1), then dies.
        p.cut.add(1)
        await leader.produce([batch(10, tag="lost")], ACKS_LEADER)
        await p.stop(1)
        p.cut.clear()
        new = await p.leader(among={2, 3})
        assert await new.produce([batch(2, tag="kept")]) == AppendResult(4, 5)
        await p.start(1)
        await p.hw_everywhere(6)
        for i in REPLICAS:
            assert p.stored(i) == [(0, 3), (4, 5)]  # the unacknowledged tail is gone from node 1 too
        nursery.cancel_scope.cancel()


async def test_a_restart_restores_offsets_and_the_producer_table(
    clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with trio.open_nursery() as nursery:
        p = await start_partition(nursery, clock, tmp_path)
        leader = await p.leader()
        await leader.produce([batch(3, pid=9, epoch=1, seq=0)])
        await leader.produce([batch(3)])
        await p.hw_everywhere(6)
        for i in REPLICAS:
            await p.stop(i)
        for i in REPLICAS:
            await p.start(i)
        leader = await p.leader()
        assert (leader.view.high_watermark, leader.view.log_end_offset) == (6, 6)
        assert await leader.produce([batch(3, pid=9, epoch=1, seq=0)]) == AppendResult(0, 2)  # still known
        assert await leader.produce([batch(1, pid=9, epoch=1, seq=3)]) == AppendResult(6, 6)
        nursery.cancel_scope.cancel()


async def test_retention_moves_the_start_and_a_lagging_replica_catches_up_by_snapshot(
    clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with trio.open_nursery() as nursery:
        p = await start_partition(nursery, clock, tmp_path)
        leader = await p.leader()
        await leader.produce([batch(2)])
        await p.hw_everywhere(2)
        p.cut.add(3)
        for _ in range(10):
            await leader.produce([batch(5)])  # offsets 2..51, ~1 KiB per batch
        size = leader.view.size_bytes
        removed = await leader.call(ApplyRetention(0, size // 2, 0))
        assert removed > 0 and leader.view.log_start_offset == removed
        await p.replicas[2].call(ApplyRetention(0, size // 2, 0))
        assert p.stores[1] and p.replicas[1].storage.first_index() > 2  # the Raft log was truncated too
        p.cut.clear()
        await leader.produce([batch(1, tag="after")])
        await p.hw_everywhere(53)
        lagging = p.replicas[3].view
        # Node 3 never received the truncated entries: it starts where the leader's log starts.
        assert lagging.log_start_offset == leader.view.log_start_offset
        assert p.stored(3)[-1] == (52, 52)
        # What it held from before the cut (offsets 0-1) waits for the compaction filter;
        # nothing between that and the new start was ever written on it.
        assert [b for b in p.stored(3) if b[0] < lagging.log_start_offset] == [(0, 1)]
        nursery.cancel_scope.cancel()


async def test_a_group_of_one_answers_after_one_write_and_its_commit_reaches_the_disk_on_a_tick(
    clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with trio.open_nursery() as nursery:
        with frozen(clock):
            store = await nursery.start(Store(tmp_path, StorageOptions(sync=SyncMode.NONE)).run)
        replica = PartitionReplica(
            store, topic="t", topic_id=TOPIC_ID, partition=0, node_id=1, replicas=(1,), send=lambda g, m: None
        )
        await nursery.start(replica.run)
        while not replica.view.leader_ready:
            await replica.view.changed.wait()
        await trio.testing.wait_all_tasks_blocked()
        writes = store.statistics().wal.appends
        assert await replica.produce([batch(2)]) == AppendResult(0, 1)
        await trio.testing.wait_all_tasks_blocked()
        # One write: the entry. The commit that answered the produce is not written yet...
        assert store.statistics().wal.appends == writes + 1
        on_disk = LsmRaftStorage(store, replica.group).initial_state().commit
        assert on_disk < replica.node.log.committed == replica.storage.last_index()
        # ...until the next tick (or the next Ready's write) carries it.
        replica.tick_nowait()
        await trio.testing.wait_all_tasks_blocked()
        assert LsmRaftStorage(store, replica.group).initial_state().commit == replica.node.log.committed
        replica.close()
        await replica.wait_stopped()
        with frozen(clock):
            await store.aclose()
        nursery.cancel_scope.cancel()


async def test_a_fetch_reads_through_the_injected_read_runner_never_on_the_actor(
    clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Reads that may hit SSTables run where the node says (worker threads in production:
    sentinel/node.py passes trio.to_thread.run_sync), so a cold read never stalls the loop
    that runs heartbeats, elections and the WAL writer."""
    ran: list[tuple[object, tuple[object, ...]]] = []

    async def runner(fn, *args):  # type: ignore[no-untyped-def]
        ran.append((fn, args))
        return fn(*args)

    async with trio.open_nursery() as nursery:
        with frozen(clock):
            store = await nursery.start(Store(tmp_path, StorageOptions(sync=SyncMode.NONE)).run)
        replica = PartitionReplica(
            store,
            topic="t",
            topic_id=TOPIC_ID,
            partition=0,
            node_id=1,
            replicas=(1,),
            send=lambda g, m: None,
            read_runner=runner,
        )
        await nursery.start(replica.run)
        while not replica.view.leader_ready:
            await replica.view.changed.wait()
        await replica.produce([batch(3)])
        result = await replica.fetch(0, 1 << 20)
        assert result.high_watermark == 3 and result.data
        assert ran == [(replica.reader.read, (0, 1 << 20))]
        replica.close()
        await replica.wait_stopped()
        with frozen(clock):
            await store.aclose()
        nursery.cancel_scope.cancel()
