"""Three nodes' cores (controller, broker, replicas, coordinator) in one Trio program on
MockClock, each on its own real store (sync none: no worker threads while running), joined
by an in-memory network that can cut nodes off. Topic creation from any node, replicated
produce, failover of a partition leader and of the controller, graceful hand-off."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from sentinel.broker.broker import RemotePartition
from sentinel.broker.replica import ACKS_ALL, PartitionReplica
from sentinel.cluster.controller import encode_result
from sentinel.errors import Unavailable
from sentinel.generated.sentinel import v1 as pb
from sentinel.node import METHOD_PROPOSE, NodeConfig, NodeCore
from sentinel.raft.messages import Message
from sentinel.records import RecordBatch, build_batch
from sentinel.storage.options import StorageOptions, SyncMode
from sentinel.storage.store import Store

NODES = (1, 2, 3)
PEERS = {i: ("127.0.0.1", 19000 + i) for i in NODES}
DEADLINE = 60.0  # virtual seconds


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


@contextmanager
def frozen(clock: trio.testing.MockClock) -> Iterator[None]:
    previous = clock.autojump_threshold
    clock.autojump_threshold = math.inf
    try:
        yield
    finally:
        clock.autojump_threshold = previous


def batch(n: int, tag: str = "v") -> RecordBatch:
    return RecordBatch(build_batch([(None, f"{tag}{i}".encode(), [], 1000) for i in range(n)]))


class MemoryNetwork:
    """What PeerNetwork does, in memory: messages to cores, proposals forwarded."""

    def __init__(self, cluster: Cluster, node: int) -> None:
        self.cluster = cluster
        self.node = node

    def send(self, group: int, m: Message) -> None:
        if self.cluster.reachable(m.frm, m.to):
            core = self.cluster.cores.get(m.to)
            if core is not None:
                core.route(group, m)

    async def request(self, peer: int, method: int, payload: bytes) -> bytes:
        core = self.cluster.cores.get(peer)
        if core is None or not self.cluster.reachable(self.node, peer):
            raise Unavailable(f"node {peer} did not answer")
        assert method == METHOD_PROPOSE
        return encode_result(await core.controller.propose_here(payload))


class Cluster:
    def __init__(self, nursery: trio.Nursery, clock: trio.testing.MockClock, directory: Path) -> None:
        self.nursery = nursery
        self.clock = clock
        self.directory = directory
        self.cores: dict[int, NodeCore] = {}
        self.scopes: dict[int, trio.CancelScope] = {}
        self.stopped: dict[int, trio.Event] = {}
        self.cut: set[int] = set()

    def reachable(self, a: int, b: int) -> bool:
        return a not in self.cut and b not in self.cut

    async def start(self, i: int) -> NodeCore:
        done = self.stopped[i] = trio.Event()

        async def run(*, task_status: trio.TaskStatus[NodeCore]) -> None:
            with trio.CancelScope() as scope:
                self.scopes[i] = scope
                try:
                    async with trio.open_nursery() as inner:
                        with frozen(self.clock):
                            store: Store = await inner.start(
                                Store(self.directory / f"n{i}", StorageOptions(sync=SyncMode.NONE)).run
                            )
                        config = NodeConfig(node_id=i, peers=PEERS, default_replication_factor=3)
                        core = NodeCore(store, config, MemoryNetwork(self, i), seed=i)
                        await core.start(inner)
                        await core.register(inner, ("127.0.0.1", 9090 + i))
                        task_status.started(core)
                        try:
                            await trio.sleep_forever()
                        finally:
                            with trio.CancelScope(shield=True), frozen(self.clock):
                                await store.aclose()
                finally:
                    done.set()

        core: NodeCore = await self.nursery.start(run)
        self.cores[i] = core
        return core

    async def kill(self, i: int) -> None:
        self.scopes.pop(i).cancel()
        del self.cores[i]
        await self.stopped[i].wait()

    async def until(self, condition: object, what: str) -> None:
        with trio.fail_after(DEADLINE):
            while not condition():  # type: ignore[operator]  # noqa: ASYNC110 -- MockClock polling
                await trio.sleep(0.05)

    def replica(self, i: int, topic: str, partition: int) -> PartitionReplica:
        log = self.cores[i].broker.topic(topic).log(partition)
        assert isinstance(log, PartitionReplica)
        return log

    def leader_of(self, topic: str, partition: int) -> PartitionReplica | None:
        for i, core in self.cores.items():
            if topic not in core.broker.topics:
                continue  # a restarted node that has not caught up with the metadata yet
            r = self.replica(i, topic, partition)
            if r.view.role.name == "LEADER" and r.view.leader_ready:
                return r
        return None


@asynccontextmanager
async def cluster_of_three(clock: trio.testing.MockClock, tmp_path: Path) -> AsyncIterator[Cluster]:
    async with trio.open_nursery() as nursery:
        c = Cluster(nursery, clock, tmp_path)
        for i in NODES:
            await c.start(i)
        await c.until(
            lambda: all(len(core.controller.view.image.brokers) == 3 for core in c.cores.values()),
            "registered",
        )
        yield c
        nursery.cancel_scope.cancel()


async def produce(c: Cluster, topic: str, partition: int, n: int, tag: str = "v") -> tuple[int, int]:
    """Produce at whichever node leads, retrying redirects as a client does."""
    with trio.fail_after(DEADLINE):
        while True:
            leader = c.leader_of(topic, partition)
            if leader is not None:
                try:
                    result = await leader.produce([batch(n, tag)], ACKS_ALL)
                    return result.base_offset, result.last_offset
                except Unavailable:
                    pass
            await trio.sleep(0.05)


async def test_a_topic_created_at_any_node_is_replicated_and_its_leaders_spread(
    clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with cluster_of_three(clock, tmp_path) as c:
        topic = await c.cores[2].broker.create_topic("orders", 3, 3)  # node 2: forwarded if not leading
        assert topic.replicas == ((1, 2, 3), (2, 3, 1), (3, 1, 2))
        await c.until(lambda: all("orders" in core.broker.topics for core in c.cores.values()), "applied")
        await c.until(lambda: all(c.leader_of("orders", p) for p in range(3)), "leaders")
        assert {c.leader_of("orders", p).node_id for p in range(3)} == {1, 2, 3}  # type: ignore[union-attr]
        for p in range(3):
            assert await produce(c, "orders", p, 5) == (0, 4)
        await c.until(
            lambda: all(c.replica(i, "orders", p).view.high_watermark == 5 for i in NODES for p in range(3)),
            "hw",
        )


async def test_killing_a_partition_leader_and_the_controller_leader_loses_nothing(
    clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with cluster_of_three(clock, tmp_path) as c:
        await c.cores[1].broker.create_topic("t", 1, 3)
        await c.until(lambda: all("t" in core.broker.topics for core in c.cores.values()), "applied")
        assert await produce(c, "t", 0, 10) == (0, 9)
        victim = c.leader_of("t", 0)
        assert victim is not None
        await c.kill(victim.node_id)
        started = trio.current_time()
        assert await produce(c, "t", 0, 5) == (10, 14)
        assert trio.current_time() - started < 5  # a new leader within a couple of election timeouts
        controller = next(core for core in c.cores.values() if core.controller.leading)
        await c.kill(controller.config.node_id)
        # One node is left of three: no majority, so nothing commits; bring a node back.
        await c.start(victim.node_id)
        assert await produce(c, "t", 0, 1) == (15, 15)
        await c.until(
            lambda: all(c.replica(i, "t", 0).view.high_watermark == 16 for i in c.cores), "caught up"
        )
        # And the metadata still works with the controller elsewhere (UNAVAILABLE while the
        # controller elects is what a client retries).
        with trio.fail_after(DEADLINE):
            while True:
                try:
                    await c.cores[victim.node_id].broker.create_topic("after", 1, 2)
                    break
                except Unavailable:
                    await trio.sleep(0.1)


async def test_a_graceful_hand_off_moves_every_leadership_without_an_election(
    clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with cluster_of_three(clock, tmp_path) as c:
        await c.cores[1].broker.create_topic("h", 3, 3)
        await c.until(lambda: all(c.leader_of("h", p) for p in range(3)), "leaders")
        for p in range(3):
            await produce(c, "h", p, 3)
        leaving = c.cores[1]
        term_before = {p: c.replica(2, "h", p).view.term for p in range(3)}
        still = await leaving.hand_off_leadership(within=2.0)
        assert still == 0
        assert not leaving.controller.leading
        for p in range(3):
            assert not c.replica(1, "h", p).leading
            # A transfer is one election at term + 1, never a storm of terms.
            assert c.replica(2, "h", p).view.term <= term_before[p] + 1
        await c.kill(1)
        for p in range(3):
            assert await produce(c, "h", p, 1) == (3, 3)


async def test_a_node_without_a_replica_names_the_leader_its_leader_reported(
    clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with cluster_of_three(clock, tmp_path) as c:
        topic = await c.cores[1].broker.create_topic("two", 1, 2)
        preferred, other = topic.replicas[0]
        outsider = next(i for i in NODES if i not in topic.replicas[0])
        await c.until(lambda: c.leader_of("two", 0) is not None, "a leader")
        await c.until(lambda: c.cores[outsider].broker.topic("two").log(0).leader == preferred, "reported")
        # Leadership moves to the other replica: the outsider's metadata follows it, and its
        # redirect names the new leader's address, not the preferred one's.
        await c.replica(preferred, "two", 0).transfer_leadership(other)
        await c.until(lambda: c.cores[outsider].broker.topic("two").log(0).leader == other, "re-reported")
        remote = c.cores[outsider].broker.topic("two").log(0)
        with pytest.raises(Unavailable) as info:
            remote.check_leader()
        assert info.value.leader == f"127.0.0.1:{9090 + other}"


async def test_groups_are_listed_and_described_by_the_coordinator_others_name_it(
    clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with cluster_of_three(clock, tmp_path) as c:
        await c.cores[1].broker.create_topic("events", 1, 3)
        await c.until(lambda: c.cores[1].controller.view.leader != 0, "a controller leader")
        leader = c.cores[1].controller.view.leader
        other = next(i for i in NODES if i != leader)
        coordinator = c.cores[leader].coordinator
        joined = await coordinator.join(
            pb.JoinGroupRequest(
                group_id="g", topics=["events"], session_timeout_ms=30_000, client_id="member-1"
            )
        )
        # A member that has committed nothing: only the coordinator knows the group.
        assert (await coordinator.list_groups()).group_ids == ["g"]
        description = await coordinator.describe("g")
        assert description.state == "Stable"
        assert [m.member_id for m in description.members] == [joined.member_id]
        # Any other node names the coordinator instead of answering without the members
        # (it would have listed no group, and described "g" as Empty).
        for call in (c.cores[other].coordinator.list_groups(), c.cores[other].coordinator.describe("g")):
            with pytest.raises(Unavailable) as info:
                await call
            assert info.value.leader == f"127.0.0.1:{9090 + leader}"
        # Committed partitions the coordinator holds no replica of have no lag it can know:
        # -1, for the admin client to ask their leaders (tests/client/test_client_errors.py).
        single = await c.cores[1].broker.create_topic("single", 3, 1)
        hosted = {p for p, replicas in enumerate(single.replicas) if leader in replicas}
        here = c.cores[leader].broker
        await c.until(
            lambda: (
                here.topics.get("single") is not None
                and all(here.topic("single").log(p).high_watermark >= 0 for p in hosted)
            ),
            "the topic at the coordinator",
        )
        await coordinator.commit(
            pb.CommitOffsetsRequest(
                group_id="manual",
                generation=-1,
                offsets=[pb.PartitionOffset(topic="single", partition=p, offset=0) for p in range(3)],
            )
        )
        lags = {
            o.partition: (o.high_watermark, o.lag) for o in (await coordinator.describe("manual")).offsets
        }
        assert {p for p, (hw, lag) in lags.items() if hw == -1 and lag == -1} == {0, 1, 2} - hosted
        assert all(lags[p] == (0, 0) for p in hosted)


async def test_a_metadata_change_leaves_a_topic_that_did_not_change_as_it_was(
    clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    # A node publishes a new Topic only when the topic changed: a long-polling fetch treats
    # a new Topic object of the same name as "deleted while the fetch waited". Each metadata
    # change (an offset commit, a leader report, another topic) once made a new Topic of
    # every topic with partitions held elsewhere, and a consumer following a topic of RF 1
    # on three nodes failed with that error.
    async with cluster_of_three(clock, tmp_path) as c:
        await c.cores[1].broker.create_topic("single", 3, 1)
        await c.until(
            lambda: all("single" in c.cores[i].broker.topics for i in NODES), "the topic everywhere"
        )
        before = {i: c.cores[i].broker.topics["single"] for i in NODES}
        assert all(any(isinstance(log, RemotePartition) for log in topic.logs) for topic in before.values())
        await c.cores[2].broker.create_topic("other", 1, 3)
        await c.until(
            lambda: all("other" in c.cores[i].broker.topics for i in NODES), "the change everywhere"
        )
        assert all(c.cores[i].broker.topics["single"] is before[i] for i in NODES)
