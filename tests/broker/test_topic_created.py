"""A group subscribed to a topic before it exists rebalances once the topic is created.

Event-driven end to end through the real actors (Store on real files, Broker, the
GroupCoordinator, wired as the Node wires them): no timing is involved, only the order of
calls.
"""

from __future__ import annotations

from pathlib import Path

import trio

from sentinel.broker.broker import Broker, BrokerOptions
from sentinel.broker.coordinator import GroupCoordinator
from sentinel.generated.sentinel import v1 as pb
from sentinel.storage.options import StorageOptions, SyncMode
from sentinel.storage.store import Store


async def _rebalance_needed(coordinator: GroupCoordinator, member: pb.JoinGroupResponse) -> bool:
    beat = await coordinator.heartbeat(
        pb.HeartbeatRequest(group_id="g", member_id=member.member_id, generation=member.generation)
    )
    return beat.rebalance_needed


async def test_creating_a_subscribed_topic_rebalances_the_group(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        store = await nursery.start(Store(tmp_path, StorageOptions(sync=SyncMode.NONE)).run)
        broker = Broker(store, BrokerOptions(default_partitions=4))
        await nursery.start(broker.run)
        coordinator = GroupCoordinator(store, broker)
        await nursery.start(coordinator.run)

        join = pb.JoinGroupRequest(group_id="g", topics=["later"], session_timeout_ms=30_000, client_id="c")
        first = await coordinator.join(join)
        assert first.assignment == []  # nothing to assign yet
        assert not await _rebalance_needed(coordinator, first)

        await broker.create_topic("unrelated", 2)
        assert not await _rebalance_needed(coordinator, first)  # not subscribed: no rebalance

        await broker.create_topic("later")  # the default 4 partitions
        assert await _rebalance_needed(coordinator, first)
        join.member_id = first.member_id
        second = await coordinator.join(join)
        assert second.generation > first.generation
        assert sorted(tp.partition for tp in second.assignment) == [0, 1, 2, 3]

        coordinator.close()
        broker.close()
        await store.aclose()
