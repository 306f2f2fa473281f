"""The GroupCoordinator actor with a real Broker, Controller and Store (a cluster of one),
on the autojumping MockClock: joins and generations, leaves, session and rebalance
timeouts, commit fencing, committed offsets (controller metadata) across restarts, lag,
and the group listing.

Members are driven like the client library drives them: join (a long poll), then
heartbeat every ``heartbeat_interval_ms`` and rejoin when told a rebalance is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs
import pytest
import trio
import trio.testing

from sentinel.broker import keys
from sentinel.broker.coordinator import GroupCoordinator
from sentinel.errors import FailedPrecondition, InvalidArgument, NotFound
from sentinel.generated.sentinel import v1 as pb
from sentinel.records import RecordBatch, build_batch

if TYPE_CHECKING:
    from conftest import NodeFactory, Running

GROUP = "g"
SESSION_MS = 9_000  # heartbeat interval: 3 s


def batch(*values: bytes) -> RecordBatch:
    return RecordBatch(build_batch([(None, v, (), 1_000) for v in values]))


@attrs.define
class Member:
    """A simulated group member (what sentinel.client's consumer does)."""

    coordinator: GroupCoordinator
    client_id: str
    topics: list[str]
    member_id: str = ""
    generation: int = -1
    assignment: list[tuple[str, int]] = attrs.Factory(list)
    joins: list[tuple[float, int]] = attrs.Factory(list)  # (time answered, generation)
    heartbeating: bool = True
    beat_every: float | None = None  # seconds; None: the interval the coordinator asks for
    rejoining: bool = True
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)

    async def join(self) -> pb.JoinGroupResponse:
        response = await self.coordinator.join(
            pb.JoinGroupRequest(
                group_id=GROUP,
                member_id=self.member_id,
                topics=self.topics,
                session_timeout_ms=SESSION_MS,
                client_id=self.client_id,
            )
        )
        self.member_id, self.generation = response.member_id, response.generation
        self.assignment = sorted((tp.topic, tp.partition) for tp in response.assignment)
        self.joins.append((trio.current_time(), response.generation))
        return response

    async def heartbeat(self) -> pb.HeartbeatResponse:
        return await self.coordinator.heartbeat(
            pb.HeartbeatRequest(group_id=GROUP, member_id=self.member_id, generation=self.generation)
        )

    async def run(self) -> None:
        """Join, then heartbeat and rejoin as told, until cancelled or stopped."""
        with self.scope:
            response = await self.join()
            while True:
                await trio.sleep(self.beat_every or response.heartbeat_interval_ms / 1000)
                if not self.heartbeating:
                    await trio.sleep_forever()
                try:
                    rejoin = (await self.heartbeat()).rebalance_needed
                except FailedPrecondition:  # unknown member (evicted): rejoin, as the client does
                    rejoin = True
                if rejoin and self.rejoining:
                    response = await self.join()

    async def commit(self, offsets: dict[tuple[str, int], int], generation: int | None = None) -> None:
        await self.coordinator.commit(
            pb.CommitOffsetsRequest(
                group_id=GROUP,
                member_id=self.member_id,
                generation=self.generation if generation is None else generation,
                offsets=[pb.PartitionOffset(topic=t, partition=p, offset=o) for (t, p), o in offsets.items()],
            )
        )


async def describe(running: Running, group: str = GROUP) -> pb.GroupDescription:
    return await running.coordinator.describe(group)


def members_of(description: pb.GroupDescription) -> dict[str, list[tuple[str, int]]]:
    return {m.member_id: sorted((tp.topic, tp.partition) for tp in m.assignment) for m in description.members}


def round_robin(member_ids: list[str], topic: str, partitions: int) -> dict[str, list[tuple[str, int]]]:
    ordered = sorted(member_ids)
    plan: dict[str, list[tuple[str, int]]] = {m: [] for m in ordered}
    for p in range(partitions):
        plan[ordered[p % len(ordered)]].append((topic, p))
    return plan


async def start_three(running: Running, nursery: trio.Nursery, start: float) -> list[Member]:
    """Three members joining at the same instant, c0's join first (Trio runs tasks started
    together in a random order): they settle in generation 2 at +3 s."""
    await running.broker.create_topic("t", 7)
    members = [Member(running.coordinator, f"c{i}", ["t"]) for i in range(3)]
    nursery.start_soon(members[0].run)
    await trio.testing.wait_all_tasks_blocked()
    for member in members[1:]:
        nursery.start_soon(member.run)
    await trio.sleep_until(start + 3.5)
    return members


# -- joins and generations -----------------------------------------------------------------


async def test_three_members_get_a_balanced_round_robin_assignment(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run() as running, trio.open_nursery() as nursery:
        start = trio.current_time()
        members = await start_three(running, nursery, start)
        first, second, third = members
        # The first join completes at once (generation 1, alone); the two others start a
        # rebalance that completes when the first rejoins, told so by its first heartbeat.
        assert first.joins == [(start, 1), (start + 3, 2)]
        assert second.joins == [(start + 3, 2)] and third.joins == [(start + 3, 2)]
        ids = [m.member_id for m in members]
        assert len(set(ids)) == 3 and all(m.member_id.startswith(m.client_id + "-") for m in members)
        plan = round_robin(ids, "t", 7)
        assert {m.member_id: m.assignment for m in members} == plan
        assert sorted(len(a) for a in plan.values()) == [2, 2, 3]

        description = await describe(running)
        assert (description.state, description.generation) == ("Stable", 2)
        assert members_of(description) == plan
        assert {m.client_id for m in description.members} == {"c0", "c1", "c2"}

        await trio.sleep(30)  # heartbeats keep everyone in the group: nothing changes
        assert (await describe(running)).generation == 2
        assert all(len(m.joins) == (2 if m is first else 1) for m in members)
        nursery.cancel_scope.cancel()


async def test_a_retried_join_in_a_stable_group_is_answered_at_once_with_the_same_assignment(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run() as running:
        await running.broker.create_topic("t", 3)
        member = Member(running.coordinator, "solo", ["t"])
        await member.join()
        before = (member.member_id, member.generation, member.assignment)
        response = await member.join()
        assert (
            (member.member_id, member.generation, member.assignment)
            == before
            == (
                member.member_id,
                1,
                [("t", 0), ("t", 1), ("t", 2)],
            )
        )
        assert response.heartbeat_interval_ms == SESSION_MS // 3


async def test_a_member_leaving_triggers_a_rebalance_over_the_others(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run() as running, trio.open_nursery() as nursery:
        start = trio.current_time()
        members = await start_three(running, nursery, start)
        leaver = members[1]
        leaver.scope.cancel()
        await running.coordinator.leave(pb.LeaveGroupRequest(group_id=GROUP, member_id=leaver.member_id))
        description = await describe(running)
        assert description.state == "PreparingRebalance" and len(description.members) == 2

        await trio.sleep(3)  # the others' next heartbeats tell them to rejoin
        stayers = [members[0], members[2]]
        assert [m.generation for m in stayers] == [3, 3]
        assert {m.member_id: m.assignment for m in stayers} == round_robin(
            [m.member_id for m in stayers], "t", 7
        )
        description = await describe(running)
        assert (description.state, description.generation) == ("Stable", 3)
        assert leaver.member_id not in members_of(description)

        # The member that left is unknown now: heartbeat and commit answer it alike (rejoin).
        unknown = rf"unknown member '{leaver.member_id}' in group 'g' \(it left or its session expired\)"
        with pytest.raises(FailedPrecondition, match=unknown):
            await leaver.heartbeat()
        with pytest.raises(FailedPrecondition, match=unknown):
            await leaver.commit({("t", 0): 1})
        nursery.cancel_scope.cancel()


async def test_a_member_missing_heartbeats_is_evicted_at_its_session_timeout(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run() as running, trio.open_nursery() as nursery:
        start = trio.current_time()
        members = await start_three(running, nursery, start)
        silent, stayers = members[2], members[:2]
        silent.heartbeating = False  # alive as a task, but no more heartbeats
        for member in stayers:
            # Heartbeats at 6, 8.5, 11, 13.5: none at the eviction instant (12), so what
            # the group looks like just after it is not a race with their rejoins.
            member.beat_every = 2.5
        # The silent member's session restarted when generation 2 completed (start + 3).
        await trio.sleep_until(start + 3 + 9 - 0.001)
        assert silent.member_id in members_of(await describe(running))
        await trio.sleep_until(start + 3 + 9 + 0.001)
        description = await describe(running)
        assert silent.member_id not in members_of(description)
        assert (description.state, description.generation) == ("PreparingRebalance", 2)

        await trio.sleep_until(start + 13.5 + 0.001)  # the stayers' next heartbeats: rejoin
        description = await describe(running)
        assert (description.state, description.generation) == ("Stable", 3)
        assert members_of(description) == round_robin([m.member_id for m in stayers], "t", 7)
        assert [m.generation for m in stayers] == [3, 3]
        with pytest.raises(FailedPrecondition, match="unknown member"):
            await silent.commit({("t", 0): 1}, generation=2)
        nursery.cancel_scope.cancel()


async def test_a_member_not_rejoining_is_dropped_at_the_rebalance_timeout(
    make_node: Callable[..., NodeFactory], clock: trio.testing.MockClock
) -> None:
    async with make_node(rebalance_timeout=20.0).run() as running, trio.open_nursery() as nursery:
        start = trio.current_time()
        members = await start_three(running, nursery, start)
        slow = members[0]
        slow.rejoining = False  # keeps heartbeating (so its session never expires) but never rejoins
        late = Member(running.coordinator, "late", ["t"])
        nursery.start_soon(late.run)
        await trio.sleep(0.5)
        rebalance_started = start + 3.5
        assert (await describe(running)).state == "PreparingRebalance"
        await trio.sleep_until(rebalance_started + 20 - 0.001)
        assert (await describe(running)).state == "PreparingRebalance"
        assert late.joins == []
        await trio.sleep_until(rebalance_started + 20 + 0.001)
        description = await describe(running)
        assert (description.state, description.generation) == ("Stable", 3)
        assert late.joins == [(rebalance_started + 20, 3)]
        assert sorted(members_of(description)) == sorted(m.member_id for m in (*members[1:], late))
        nursery.cancel_scope.cancel()


async def test_a_second_join_supersedes_a_parked_one_and_shutdown_fails_parked_joins(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    outcomes: list[object] = []
    async with node.run() as running:
        await running.broker.create_topic("t", 2)
        holder = Member(running.coordinator, "holder", ["t"])
        await holder.join()  # generation 1; it will never rejoin
        newcomer = Member(running.coordinator, "new", ["t"])

        async def join(member_id: str) -> None:
            try:
                outcomes.append(
                    await running.coordinator.join(
                        pb.JoinGroupRequest(
                            group_id=GROUP, member_id=member_id, topics=["t"], client_id="new"
                        )
                    )
                )
            except FailedPrecondition as exc:
                outcomes.append(str(exc))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(join, "")
            await trio.testing.wait_all_tasks_blocked()
            (newcomer.member_id,) = (
                m.member_id for m in (await describe(running)).members if m.client_id == "new"
            )
            nursery.start_soon(join, newcomer.member_id)  # the same member joins again
            await trio.testing.wait_all_tasks_blocked()
            assert outcomes == ["superseded by a newer join from the same member"]
            running.coordinator.close()  # stopping: the parked join can never complete
        assert outcomes[1] == "the group coordinator is shutting down; rejoin"


async def test_invalid_joins_and_heartbeats_fail_the_caller_not_the_coordinator(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run() as running:
        coordinator = running.coordinator
        cases = [
            (pb.JoinGroupRequest(group_id="", topics=["t"]), "invalid group id '': must not be empty"),
            (pb.JoinGroupRequest(group_id="g", topics=[]), "must subscribe to at least one topic"),
            (pb.JoinGroupRequest(group_id="g", topics=["bad name"]), "invalid topic name 'bad name'"),
            (
                pb.JoinGroupRequest(group_id="g", topics=["t"], session_timeout_ms=3_600_000),
                "session_timeout_ms 3600000 is outside the broker's allowed range 6000 to 1800000 ms",
            ),
            # Kafka's group.min.session.timeout.ms: a 1 ms session (heartbeat every 0 ms) is refused.
            (
                pb.JoinGroupRequest(group_id="g", topics=["t"], session_timeout_ms=1),
                "session_timeout_ms 1 is outside the broker's allowed range 6000 to 1800000 ms",
            ),
            (
                pb.JoinGroupRequest(group_id="g", topics=["t"], session_timeout_ms=-5),
                "session_timeout_ms -5 is outside the broker's allowed range",
            ),
        ]
        for request, message in cases:
            with pytest.raises(InvalidArgument) as info:
                await coordinator.join(request)
            assert message in str(info.value)
        with pytest.raises(InvalidArgument, match="invalid group id '': must not be empty"):
            await coordinator.heartbeat(pb.HeartbeatRequest(group_id="", member_id="m", generation=1))
        with pytest.raises(InvalidArgument, match="invalid group id"):
            await coordinator.commit(pb.CommitOffsetsRequest(group_id="\x00", generation=-1))
        with pytest.raises(FailedPrecondition, match="unknown member 'ghost' in group 'phantom'"):
            await coordinator.commit(
                pb.CommitOffsetsRequest(group_id="phantom", member_id="ghost", generation=1)
            )
        # Still serving; a heartbeat to a group that does not exist is answered as a commit is.
        with pytest.raises(FailedPrecondition, match="unknown member 'm' in group 'nope'"):
            await coordinator.heartbeat(pb.HeartbeatRequest(group_id="nope", member_id="m", generation=1))
        # No request above left a group behind.
        assert (await coordinator.list_groups()).group_ids == []
        await running.broker.create_topic("t", 1)
        assert (await Member(coordinator, "ok", ["t"]).join()).generation == 1


# -- commits -------------------------------------------------------------------------------


async def test_commits_are_fenced_by_generation(node: NodeFactory, clock: trio.testing.MockClock) -> None:
    async with node.run() as running, trio.open_nursery() as nursery:
        start = trio.current_time()
        members = await start_three(running, nursery, start)
        first = members[0]
        await first.commit({("t", 0): 5})  # generation 2: current
        with pytest.raises(
            FailedPrecondition,
            match=rf"^stale generation 1 \(current 2\) for member '{first.member_id}' in group 'g': "
            "rejoin the group$",
        ):
            await first.commit({("t", 0): 6}, generation=1)
        with pytest.raises(FailedPrecondition, match=r"^unknown generation 3 \(current 2\)"):
            await first.commit({("t", 0): 6}, generation=3)
        # A standalone consumer cannot commit into a group that has members...
        with pytest.raises(FailedPrecondition, match=r"group 'g' has 3 active member\(s\)"):
            await running.coordinator.commit(
                pb.CommitOffsetsRequest(
                    group_id=GROUP,
                    generation=-1,
                    offsets=[pb.PartitionOffset(topic="t", partition=0, offset=9)],
                )
            )
        # ...and a member-less commit must say generation -1.
        with pytest.raises(InvalidArgument, match="names generation 4 but no member id"):
            await running.coordinator.commit(pb.CommitOffsetsRequest(group_id=GROUP, generation=4))
        # Bad offsets and partitions are refused whole.
        with pytest.raises(InvalidArgument, match=r"cannot commit a negative offset \(-1\) for t\[1\]"):
            await first.commit({("t", 0): 7, ("t", 1): -1})
        with pytest.raises(InvalidArgument, match="partition 7 does not exist in topic 't'"):
            await first.commit({("t", 7): 1})
        with pytest.raises(NotFound, match="topic 'nope' does not exist"):
            await first.commit({("nope", 0): 1})
        assert running.coordinator.committed(GROUP) == {("t", 0): (5, "")}

        # While a rebalance is prepared, members may still commit with the generation they hold.
        await running.coordinator.leave(pb.LeaveGroupRequest(group_id=GROUP, member_id=members[2].member_id))
        members[2].scope.cancel()
        assert (await describe(running)).state == "PreparingRebalance"
        await first.commit({("t", 0): 8})
        assert running.coordinator.committed(GROUP)[("t", 0)] == (8, "")
        await trio.sleep(3)  # generation 3: the old one is fenced now
        with pytest.raises(FailedPrecondition, match=r"stale generation 2 \(current 3\)"):
            await first.commit({("t", 0): 9}, generation=2)
        nursery.cancel_scope.cancel()


async def test_committed_offsets_survive_restarts_and_lag_follows_the_high_watermark(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run() as running:
        broker, coordinator = running.broker, running.coordinator
        await broker.create_topic("t", 3)
        await broker.create_topic("u", 1)
        for partition, count in ((0, 10), (1, 4), (2, 0)):
            for n in range(count):
                await broker.produce("t", partition, [batch(b"r%d" % n)])
        await broker.produce("u", 0, [batch(b"a", b"b")])
        # A standalone consumer (no membership) commits into a group that has no members.
        await coordinator.commit(
            pb.CommitOffsetsRequest(
                group_id="standalone",
                generation=-1,
                offsets=[
                    pb.PartitionOffset(topic="t", partition=0, offset=3, metadata="first"),
                    pb.PartitionOffset(topic="t", partition=1, offset=4),
                    pb.PartitionOffset(topic="u", partition=0, offset=9),  # past the end: lag 0
                ],
            )
        )
        await coordinator.commit(
            pb.CommitOffsetsRequest(
                group_id="standalone",
                generation=-1,
                offsets=[pb.PartitionOffset(topic="t", partition=0, offset=6, metadata="second")],
            )
        )
        # Committed offsets are cluster metadata (the controller's), not keys of the store.
        assert dict(running.controller.view.image.offsets) == {
            ("standalone", "t", 0): (6, "second"),
            ("standalone", "t", 1): (4, ""),
            ("standalone", "u", 0): (9, ""),
        }
        assert list(running.store.scan(keys.OFFSETS, keys.prefix_end(keys.OFFSETS))) == []

    async with node.run() as running:
        coordinator = running.coordinator
        assert coordinator.group_ids() == ["standalone"]
        fetched = await coordinator.fetch_offsets(pb.FetchOffsetsRequest(group_id="standalone"))
        assert [(o.topic, o.partition, o.offset, o.metadata) for o in fetched.offsets] == [
            ("t", 0, 6, "second"),
            ("t", 1, 4, ""),
            ("u", 0, 9, ""),
        ]
        fetched = await coordinator.fetch_offsets(
            pb.FetchOffsetsRequest(
                group_id="standalone",
                partitions=[
                    pb.TopicPartition(topic="t", partition=2),
                    pb.TopicPartition(topic="t", partition=1),
                ],
            )
        )
        assert [(o.partition, o.offset) for o in fetched.offsets] == [(2, -1), (1, 4)]

        def lag() -> list[tuple[str, int, int, int, int]]:
            return [
                (e.topic, e.partition, e.committed_offset, e.high_watermark, e.lag)
                for e in coordinator.lag("standalone")
            ]

        assert lag() == [("t", 0, 6, 10, 4), ("t", 1, 4, 4, 0), ("u", 0, 9, 2, 0)]
        await running.broker.produce("t", 1, [batch(b"x", b"y", b"z")])
        assert lag()[1] == ("t", 1, 4, 7, 3)
        description = await coordinator.describe("standalone")
        assert (description.state, description.generation, description.members) == ("Empty", 0, [])
        assert [(e.partition, e.lag) for e in description.offsets] == [(0, 4), (1, 3), (0, 0)]


async def test_deleting_a_topic_drops_its_committed_offsets_durably(
    node: NodeFactory, clock: trio.testing.MockClock
) -> None:
    async with node.run() as running:
        await running.broker.create_topic("t", 1)
        await running.broker.create_topic("u", 1)
        for group in ("a", "b"):
            await running.coordinator.commit(
                pb.CommitOffsetsRequest(
                    group_id=group,
                    generation=-1,
                    offsets=[
                        pb.PartitionOffset(topic="t", partition=0, offset=1),
                        pb.PartitionOffset(topic="u", partition=0, offset=2),
                    ],
                )
            )
        await running.broker.delete_topic("t")
        # Deleting the topic in the metadata drops its offsets in the same entry (forget_topic
        # no longer writes anything: it rebalances the groups subscribed to it).
        for group in ("a", "b"):
            assert running.coordinator.committed(group) == {("u", 0): (2, "")}
        await running.coordinator.forget_topic("t")
        assert running.coordinator.committed("a") == {("u", 0): (2, "")}
    async with node.run() as running:
        await running.broker.create_topic("t", 1)  # recreated: no offsets come back
        for group in ("a", "b"):
            assert running.coordinator.committed(group) == {("u", 0): (2, "")}


# -- listing -------------------------------------------------------------------------------


async def test_list_and_describe_groups(node: NodeFactory, clock: trio.testing.MockClock) -> None:
    async with node.run() as running:
        coordinator = running.coordinator
        assert (await coordinator.list_groups()).group_ids == []
        with pytest.raises(NotFound, match=r"^consumer group 'nope' does not exist$"):
            await coordinator.describe("nope")
        with pytest.raises(InvalidArgument, match="invalid group id ''"):
            await coordinator.describe("")
        await running.broker.create_topic("t", 2)
        member = Member(coordinator, "m", ["t"])
        await member.join()
        await coordinator.commit(
            pb.CommitOffsetsRequest(
                group_id="offsets-only", generation=-1, offsets=[pb.PartitionOffset(topic="t", partition=1)]
            )
        )
        assert (await coordinator.list_groups()).group_ids == [GROUP, "offsets-only"]
        description = await coordinator.describe(GROUP)
        assert (description.group_id, description.state, description.generation) == (GROUP, "Stable", 1)
        assert members_of(description) == {member.member_id: [("t", 0), ("t", 1)]}
        assert description.offsets == []
        await coordinator.leave(pb.LeaveGroupRequest(group_id=GROUP, member_id=member.member_id))
        description = await coordinator.describe(GROUP)
        # Emptied: the rebalance completes with nobody (the generation still counts it).
        assert (description.state, description.generation, description.members) == ("Empty", 2, [])
        assert (await coordinator.list_groups()).group_ids == [GROUP, "offsets-only"]
