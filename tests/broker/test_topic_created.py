"""A group subscribed to a topic before it exists rebalances once the topic is created.

Event-driven end to end through the real actors (Store on real files, Controller, Broker,
GroupCoordinator, wired as the Node wires them: the coordinator hears of a topic when the
broker applies the controller's metadata that created it): no timing is involved, only
the order of calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio.testing

from sentinel.broker.coordinator import GroupCoordinator
from sentinel.generated.sentinel import v1 as pb

if TYPE_CHECKING:
    from conftest import NodeFactory


async def _rebalance_needed(coordinator: GroupCoordinator, member: pb.JoinGroupResponse) -> bool:
    beat = await coordinator.heartbeat(
        pb.HeartbeatRequest(group_id="g", member_id=member.member_id, generation=member.generation)
    )
    return beat.rebalance_needed


async def test_creating_a_subscribed_topic_rebalances_the_group(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run(default_partitions=4) as running:
        broker, coordinator = running.broker, running.coordinator
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
