"""The controller actor on MockClock: three nodes on an in-memory network elect, apply the
same metadata, fail over, and catch a lagging node up from a snapshot."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from sentinel.cluster import metadata as md
from sentinel.cluster.controller import Controller, ControllerView, encode_result
from sentinel.cluster.group import MemoryGroupStorage
from sentinel.cluster.metadata import TopicConfig
from sentinel.cluster.ticker import RaftTicker
from sentinel.errors import AlreadyExists, Unavailable
from sentinel.raft.messages import Message, Role

VOTERS = (1, 2, 3)


class Cluster:
    """Three controllers, their disks, and a network that can cut nodes off."""

    def __init__(self, nursery: trio.Nursery, snapshot_every: int = 1000, forwarding: bool = False) -> None:
        self.nursery = nursery
        self.disks = {i: MemoryGroupStorage() for i in VOTERS}
        self.nodes: dict[int, Controller] = {}
        self.scopes: dict[int, trio.CancelScope] = {}
        self.cut: set[int] = set()
        self.snapshot_every = snapshot_every
        self.forwarding = forwarding
        self.seed = 0

    async def forward(self, leader: int, command: bytes) -> bytes:
        """What the peer link does: the leader's node proposes it there."""
        if leader in self.cut or leader not in self.nodes:
            raise Unavailable(f"node {leader} did not answer")
        return encode_result(await self.nodes[leader].propose_here(command))

    def send(self, group: int, m: Message) -> None:
        assert group == 0
        if m.frm in self.cut or m.to in self.cut:
            return
        node = self.nodes.get(m.to)
        if node is not None:
            node.deliver(m)

    async def start(self, i: int) -> Controller:
        self.seed += 1
        node = Controller(
            i,
            VOTERS,
            self.disks[i],
            self.send,
            rng=random.Random(self.seed),
            address_of=lambda n: f"host{n}:9092",
            snapshot_every=self.snapshot_every,
            forward=self.forward if self.forwarding else None,
        )

        async def run(*, task_status: trio.TaskStatus[None]) -> None:
            with trio.CancelScope() as scope:
                self.scopes[i] = scope
                await node.run(task_status=task_status)

        await self.nursery.start(run)
        self.nodes[i] = node
        return node

    def stop(self, i: int) -> None:
        self.scopes.pop(i).cancel()
        del self.nodes[i]

    async def leader(self, among: set[int] | None = None) -> Controller:
        with trio.fail_after(30):
            while True:
                for i, node in self.nodes.items():
                    if (among is None or i in among) and node.view.role is Role.LEADER:
                        return node
                await trio.sleep(0.1)

    async def converged(self, index: int) -> list[ControllerView]:
        with trio.fail_after(30):
            # Polling on MockClock: deterministic, and simpler than waiting on three views.
            while not all(n.view.image.applied_index >= index for n in self.nodes.values()):  # noqa: ASYNC110
                await trio.sleep(0.1)
        return [n.view for n in self.nodes.values()]


async def start_cluster(nursery: trio.Nursery, **kw: int | bool) -> Cluster:
    cluster = Cluster(nursery, **kw)
    for i in VOTERS:
        await cluster.start(i)
    ticker = RaftTicker(lambda: list(cluster.nodes.values()))
    await nursery.start(ticker.run)
    return cluster


async def create(controller: Controller, name: str) -> md.TopicMeta:
    image = controller.view.image
    replicas = md.assign_replicas(list(image.brokers), 3, 3, image.topics)
    result = await controller.propose(md.create_topic(name, replicas, TopicConfig(), 0))
    assert isinstance(result, md.TopicMeta)
    return result


async def register_all(leader: Controller) -> None:
    for i in VOTERS:
        await leader.propose(md.register_broker(i, f"host{i}", 9092))


async def test_a_leader_is_elected_and_every_node_applies_the_same_metadata(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        cluster = await start_cluster(nursery)
        leader = await cluster.leader()
        await register_all(leader)
        topic = await create(leader, "orders")
        assert topic.topic_id == 1 and topic.replicas == ((1, 2, 3), (2, 3, 1), (3, 1, 2))
        with pytest.raises(AlreadyExists):
            await leader.propose(md.create_topic("orders", [[1, 2, 3]], TopicConfig(), 0))
        views = await cluster.converged(leader.view.image.applied_index)
        assert len({id(v.image) for v in views}) == 3  # three nodes, three images...
        assert (
            len({(tuple(v.image.topics), v.image.next_topic_id, v.leader) for v in views}) == 1
        )  # ...one state
        nursery.cancel_scope.cancel()


async def test_a_follower_refuses_proposals_naming_the_leader(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        cluster = await start_cluster(nursery)
        leader = await cluster.leader()
        await cluster.converged(1)
        follower = next(n for n in cluster.nodes.values() if n is not leader)
        with pytest.raises(
            Unavailable, match=f"not the controller leader \\(leader: node {leader.node_id}\\)"
        ) as err:
            await follower.propose(md.register_broker(9, "x", 1))
        assert err.value.leader == f"host{leader.node_id}:9092"
        nursery.cancel_scope.cancel()


async def test_losing_the_leader_elects_another_and_the_old_one_catches_up(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        cluster = await start_cluster(nursery)
        leader = await cluster.leader()
        await register_all(leader)
        await create(leader, "a")
        old = leader.node_id
        cluster.stop(old)
        started = trio.current_time()
        new = await cluster.leader()
        # Detection within 1-2 election timeouts plus a vote round (RAFT-NOTES: 1.0-1.9 s + pre-vote).
        assert new.node_id != old and trio.current_time() - started < 5
        await create(new, "b")
        again = await cluster.start(old)  # restarted from its own disk: term, vote and log
        views = await cluster.converged(new.view.image.applied_index)
        assert {tuple(sorted(v.image.topics)) for v in views} == {("a", "b")}
        assert again.view.role is Role.FOLLOWER
        nursery.cancel_scope.cancel()


async def test_a_node_cut_off_during_many_changes_catches_up_from_a_snapshot(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        cluster = await start_cluster(nursery, snapshot_every=20)
        leader = await cluster.leader()
        await register_all(leader)
        lagging = next(i for i in VOTERS if i != leader.node_id)
        cluster.cut.add(lagging)
        for n in range(60):
            await create(leader, f"t{n}")
        assert cluster.disks[leader.node_id].first_index() > 20  # the log was truncated
        cluster.cut.discard(lagging)
        views = await cluster.converged(leader.view.image.applied_index)
        assert {len(v.image.topics) for v in views} == {60}
        # The lagging node's log now starts after a snapshot, not at index 1.
        assert cluster.disks[lagging].first_index() > 1
        nursery.cancel_scope.cancel()


async def test_a_proposal_caught_in_a_leadership_change_is_answered_not_lost(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        cluster = await start_cluster(nursery)
        leader = await cluster.leader()
        await register_all(leader)
        others = {i for i in VOTERS if i != leader.node_id}
        cluster.cut.add(leader.node_id)  # isolated: it cannot commit, it steps down (check-quorum)
        with pytest.raises(Unavailable):
            await leader.propose(md.register_broker(7, "h", 1))
        cluster.cut.clear()
        new = await cluster.leader(among=others)
        await new.propose(md.register_broker(8, "h", 1))
        views = await cluster.converged(new.view.image.applied_index)
        # The failed proposal was never applied anywhere; the later one everywhere.
        assert all(7 not in v.image.brokers and 8 in v.image.brokers for v in views)
        nursery.cancel_scope.cancel()


async def test_a_follower_forwards_proposals_to_the_leader(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        cluster = await start_cluster(nursery, forwarding=True)
        leader = await cluster.leader()
        await cluster.converged(1)
        follower = next(n for n in cluster.nodes.values() if n is not leader)
        await follower.propose(md.register_broker(1, "h1", 9092))
        topic = await follower.propose(md.create_topic("fw", [[1]], TopicConfig(retention_ms=5), 77))
        assert topic == leader.view.image.topics["fw"]
        with pytest.raises(AlreadyExists, match="topic 'fw' already exists"):
            await follower.propose(md.create_topic("fw", [[1]], TopicConfig(), 0))
        nursery.cancel_scope.cancel()
