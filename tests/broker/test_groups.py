"""Consumer-group coordinator: joins, rebalances, heartbeats, expiry, commit fencing, and a
seeded random simulation that checks the assignment and fencing invariants."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable

import attrs
import pytest

from sentinel.broker.groups import (
    MAX_SESSION_TIMEOUT,
    ConsumerGroup,
    ConsumerGroups,
    GroupState,
    HeartbeatResult,
    JoinEffect,
    JoinFailed,
    JoinResult,
    MemberDescription,
    PartitionsOf,
    assign_round_robin,
)
from sentinel.errors import FailedPrecondition, InvalidArgument, NotFound

SESSION = 10.0
REBALANCE = 30.0


def partitions_from(counts: dict[str, int]) -> PartitionsOf:
    def partitions_of(topic: str) -> int:
        if topic not in counts:
            raise NotFound(f"topic {topic!r} does not exist")
        return counts[topic]

    return partitions_of


def make_group(counts: dict[str, int] | None = None, seed: int = 0, **kwargs: float) -> ConsumerGroup:
    return ConsumerGroup("g", partitions_from(counts or {"t": 6}), rng=random.Random(seed), **kwargs)


def join(
    group: ConsumerGroup,
    member_id: str | None,
    now: float = 0.0,
    topics: Iterable[str] = ("t",),
    client_id: str = "c",
    session: float = SESSION,
    rebalance: float = REBALANCE,
) -> str:
    return group.join(member_id, client_id, list(topics), session, rebalance, now)


def results(effects: list[JoinEffect]) -> dict[str, JoinResult]:
    out = {}
    for effect in effects:
        assert isinstance(effect, JoinResult), effect
        out[effect.member_id] = effect
    return out


def stable_group_of(
    n: int, counts: dict[str, int] | None = None, now: float = 0.0
) -> tuple[ConsumerGroup, list[str]]:
    """A Stable group of ``n`` members built one join at a time, the others rejoining each time."""
    group = make_group(counts)
    members: list[str] = []
    for _ in range(n):
        new = join(group, None, now)
        for member in members:
            assert group.heartbeat(member, group.generation, now) is HeartbeatResult.REBALANCE_IN_PROGRESS
            assert join(group, member, now) == member
        members.append(new)
        done = results(group.poll(now))
        assert sorted(done) == sorted(members)
    assert group.state is GroupState.STABLE
    return group, sorted(members)


def assignment_of(group: ConsumerGroup) -> dict[str, tuple[tuple[str, int], ...]]:
    return {m.member_id: m.assignment for m in group.describe().members}


# -- joins and assignment --------------------------------------------------------------------


def test_first_join_completes_at_once_with_every_partition() -> None:
    group = make_group()
    assert group.state is GroupState.EMPTY and group.generation == 0
    member = join(group, None)
    (result,) = group.poll(0.0)
    assert result == JoinResult("g", member, 1, member, tuple(("t", p) for p in range(6)))
    assert result.is_leader
    assert group.state is GroupState.STABLE and group.generation == 1
    assert group.poll(0.0) == []  # effects are drained once


def test_six_partitions_over_three_members_two_each_round_robin() -> None:
    group, (a, b, c) = stable_group_of(3)
    assert group.generation == 3
    assert assignment_of(group) == {
        a: (("t", 0), ("t", 3)),
        b: (("t", 1), ("t", 4)),
        c: (("t", 2), ("t", 5)),
    }


def test_members_joining_together_within_the_initial_delay_share_one_generation() -> None:
    group = make_group(initial_rebalance_delay=3.0)
    ids = [join(group, None, now=t) for t in (0.0, 1.0, 2.0)]
    assert group.state is GroupState.PREPARING_REBALANCE
    assert group.next_deadline() == 3.0
    assert group.poll(2.9) == []
    done = results(group.poll(3.0))
    assert sorted(done) == sorted(ids)
    assert {r.generation for r in done.values()} == {1}
    assert sorted(len(r.assignment) for r in done.values()) == [2, 2, 2]


def test_join_during_stable_triggers_a_rebalance_and_others_must_rejoin() -> None:
    group, (a, b) = stable_group_of(2)
    gen = group.generation
    assert group.heartbeat(a, gen, 1.0) is HeartbeatResult.OK
    c = join(group, None, now=1.0)
    assert group.state is GroupState.PREPARING_REBALANCE
    assert group.poll(1.0) == []  # c is parked until a and b rejoin
    assert group.heartbeat(a, gen, 2.0) is HeartbeatResult.REBALANCE_IN_PROGRESS
    assert group.heartbeat(b, gen, 2.0) is HeartbeatResult.REBALANCE_IN_PROGRESS
    assert HeartbeatResult.REBALANCE_IN_PROGRESS.must_rejoin and not HeartbeatResult.OK.must_rejoin
    join(group, a, now=2.0)
    assert group.poll(2.0) == []
    join(group, b, now=2.5)
    done = results(group.poll(2.5))
    assert sorted(done) == sorted([a, b, c])
    assert {r.generation for r in done.values()} == {gen + 1}
    assert all(r.leader_id == a for r in done.values())  # the leader stays while it is a member
    assert group.heartbeat(c, gen + 1, 3.0) is HeartbeatResult.OK


def test_heartbeat_errors() -> None:
    group, (a, _b) = stable_group_of(2)
    assert group.heartbeat("nobody", group.generation, 0.0) is HeartbeatResult.UNKNOWN_MEMBER
    assert group.heartbeat(a, group.generation - 1, 0.0) is HeartbeatResult.ILLEGAL_GENERATION
    assert group.heartbeat(a, group.generation + 1, 0.0) is HeartbeatResult.ILLEGAL_GENERATION
    assert group.heartbeat(a, group.generation, 0.0) is HeartbeatResult.OK


def test_a_leaving_member_moves_its_partitions() -> None:
    group, (a, b, c) = stable_group_of(3)
    gen = group.generation
    assert group.leave(b, 1.0) is True
    assert group.leave(b, 1.0) is False
    assert group.state is GroupState.PREPARING_REBALANCE
    assert group.heartbeat(b, gen, 1.0) is HeartbeatResult.UNKNOWN_MEMBER
    for member in (a, c):
        assert group.heartbeat(member, gen, 1.5) is HeartbeatResult.REBALANCE_IN_PROGRESS
        join(group, member, now=1.5)
    done = results(group.poll(1.5))
    assert sorted(done) == [a, c]
    assert done[a].assignment == (("t", 0), ("t", 2), ("t", 4))
    assert done[c].assignment == (("t", 1), ("t", 3), ("t", 5))
    assert done[a].generation == gen + 1


def test_a_member_leaving_while_parked_in_a_join_gets_its_join_failed() -> None:
    group, (a, b) = stable_group_of(2)
    join(group, a, now=1.0)  # subscription unchanged, Stable: answered at once
    assert results(group.poll(1.0))[a].generation == group.generation
    c = join(group, None, now=2.0)
    assert group.leave(c, 2.5)
    assert group.poll(2.5) == [JoinFailed("g", c, f"member {c!r} was removed: it left the group")]
    # c was the only reason for the rebalance, but a and b must still rejoin it.
    assert group.state is GroupState.PREPARING_REBALANCE
    join(group, a, now=3.0)
    join(group, b, now=3.0)
    assert sorted(results(group.poll(3.0))) == [a, b]


def test_last_member_leaving_empties_the_group_and_bumps_the_generation() -> None:
    group, (a,) = stable_group_of(1)
    assert group.leave(a, 1.0)
    assert group.state is GroupState.EMPTY
    assert group.generation == 2
    assert group.leader_id is None
    assert group.next_deadline() is None
    assert group.poll(100.0) == []


def test_session_expiry_moves_partitions() -> None:
    group, (a, b, c) = stable_group_of(3)
    gen = group.generation
    assert group.heartbeat(a, gen, 6.0) is HeartbeatResult.OK
    assert group.heartbeat(b, gen, 6.0) is HeartbeatResult.OK
    assert group.next_deadline() == 10.0  # c's session, joined at 0
    assert group.expire(9.99) == []
    assert group.expire(10.0) == [c]
    assert group.state is GroupState.PREPARING_REBALANCE
    assert group.heartbeat(c, gen, 10.0) is HeartbeatResult.UNKNOWN_MEMBER
    join(group, a, now=11.0)
    join(group, b, now=11.0)
    done = results(group.poll(11.0))
    assert {m: len(r.assignment) for m, r in done.items()} == {a: 3, b: 3}
    covered = sorted(tp for r in done.values() for tp in r.assignment)
    assert covered == [("t", p) for p in range(6)]


def test_members_parked_in_a_join_do_not_expire() -> None:
    group, (a, b) = stable_group_of(2)
    join(group, a, now=1.0, topics=["t", "u"])  # changed subscription: rebalance, a parked
    assert group.state is GroupState.PREPARING_REBALANCE
    group.heartbeat(b, group.generation, 8.0)
    assert group.next_deadline() == 18.0  # b's session; a is bounded by the rebalance deadline (31)
    group.heartbeat(b, group.generation, 16.0)
    assert group.expire(20.0) == []  # a last seen at 1.0, session 10: parked, so kept
    assert a in group.member_ids


def test_rebalance_timeout_removes_members_that_did_not_rejoin() -> None:
    group, (a, b) = stable_group_of(2)
    gen = group.generation
    c = join(group, None, now=1.0)
    assert group.next_deadline() == 10.0  # a's and b's sessions come before the deadline (31)
    join(group, a, now=2.0)
    # b stays alive (heartbeats within its session) but never rejoins.
    for t in (5.0, 12.0, 19.0, 26.0):
        assert group.heartbeat(b, gen, t) is HeartbeatResult.REBALANCE_IN_PROGRESS
        assert group.poll(t) == []
    assert group.next_deadline() == 31.0
    assert group.poll(30.9) == []
    effects = group.poll(31.0)
    done = results(effects)
    assert sorted(done) == sorted([a, c])
    assert b not in group.member_ids
    assert group.heartbeat(b, gen, 31.5) is HeartbeatResult.UNKNOWN_MEMBER
    assert group.generation == gen + 1


def test_expire_reports_members_removed_by_the_rebalance_timeout() -> None:
    group, (a, b) = stable_group_of(2)
    join(group, a, now=0.0, topics=["t", "u"])
    group.heartbeat(b, group.generation, 9.0)
    group.heartbeat(b, group.generation, 18.0)
    group.heartbeat(b, group.generation, 27.0)
    assert group.expire(30.0) == [b]
    assert group.state is GroupState.STABLE


def test_rebalance_deadline_uses_the_largest_rebalance_timeout() -> None:
    group = make_group()
    a = join(group, None, rebalance=5.0)
    group.poll(0.0)
    join(group, None, now=1.0, rebalance=50.0)
    group.heartbeat(a, group.generation, 2.0)
    group.heartbeat(a, group.generation, 10.0)
    assert group.poll(10.0) == []  # deadline is 1 + max(5, 50) = 51, not 6


def test_stable_rejoin_with_unchanged_subscription_is_answered_at_once() -> None:
    group, (a, b) = stable_group_of(2)
    gen = group.generation
    before = assignment_of(group)
    assert join(group, b, now=1.0) == b
    (result,) = group.poll(1.0)
    assert result == JoinResult("g", b, gen, a, before[b])
    assert group.generation == gen and group.state is GroupState.STABLE


def test_changed_subscription_triggers_a_rebalance() -> None:
    group, (a, b) = stable_group_of(2, counts={"t": 2, "u": 2})
    join(group, b, now=1.0, topics=["u", "t", "u"])  # duplicates and order do not matter
    assert group.state is GroupState.PREPARING_REBALANCE
    join(group, a, now=1.0)
    done = results(group.poll(1.0))
    assert done[a].assignment == (("t", 0),)
    assert done[b].assignment == (("t", 1), ("u", 0), ("u", 1))
    assert group.describe().members[1].topics == ("t", "u")


def test_subscriptions_to_different_topics() -> None:
    group = make_group({"a": 4, "b": 2}, initial_rebalance_delay=1.0)
    ids = {
        "x": join(group, None, topics=["a"], client_id="x"),
        "y": join(group, None, topics=["a", "b"], client_id="y"),
        "z": join(group, None, topics=["b"], client_id="z"),
    }
    done = results(group.poll(1.0))
    got = {name: done[mid].assignment for name, mid in ids.items()}
    # Member ids sort as x-..., y-..., z-...; a's partitions alternate x, y; then b goes to the
    # least loaded of its subscribers (z, with nothing).
    assert got == {
        "x": (("a", 0), ("a", 2)),
        "y": (("a", 1), ("a", 3)),
        "z": (("b", 0), ("b", 1)),
    }


def test_unknown_topics_have_no_partitions_until_a_requested_rebalance() -> None:
    counts = {"t": 2}
    group = ConsumerGroup("g", partitions_from(counts), rng=random.Random(0))
    a = join(group, None, topics=["t", "later"])
    assert results(group.poll(0.0))[a].assignment == (("t", 0), ("t", 1))
    counts["later"] = 1
    assert group.request_rebalance(1.0) is True
    assert group.request_rebalance(1.0) is False  # already preparing
    assert group.heartbeat(a, 1, 1.5) is HeartbeatResult.REBALANCE_IN_PROGRESS
    join(group, a, now=1.5, topics=["t", "later"])
    assert results(group.poll(1.5))[a].assignment == (("later", 0), ("t", 0), ("t", 1))


def test_request_rebalance_of_an_empty_group_does_nothing() -> None:
    group = make_group()
    assert group.request_rebalance(0.0) is False
    assert group.state is GroupState.EMPTY


# -- member ids -----------------------------------------------------------------------------


def test_member_ids_are_deterministic_under_a_seed() -> None:
    g1, g2 = make_group(seed=5), make_group(seed=5)
    ids1 = [join(g1, None, client_id="app", now=t) for t in range(3)]
    ids2 = [join(g2, None, client_id="app", now=t) for t in range(3)]
    assert ids1 == ids2
    assert len(set(ids1)) == 3
    assert all(m.startswith("app-") and len(m) == len("app-") + 36 for m in ids1)
    assert make_group(seed=6).join(None, "app", ["t"], SESSION, REBALANCE, 0.0) != ids1[0]


def test_member_id_without_client_id_and_rejoin_with_an_unknown_id() -> None:
    group = make_group()
    a = join(group, "", client_id="")
    assert a.startswith("consumer-")
    b = join(group, "forgotten-member", now=1.0, client_id="app")
    assert b != "forgotten-member" and b.startswith("app-")
    assert group.member_ids == sorted([a, b])


# -- commit fencing ---------------------------------------------------------------------------


def test_commit_generation_fencing() -> None:
    group, (a, b) = stable_group_of(2)
    gen = group.generation  # 2
    group.validate_commit(a, gen)
    with pytest.raises(FailedPrecondition) as info:
        group.validate_commit(a, gen - 1)
    assert str(info.value) == (
        f"stale generation 1 (current 2) for member {a!r} in group 'g': rejoin the group"
    )
    with pytest.raises(FailedPrecondition, match="unknown generation 3 \\(current 2\\)"):
        group.validate_commit(a, gen + 1)

    # A rebalance is being prepared: the previous generation may still commit, before and after
    # rejoining, so nothing it processed has to be delivered again.
    c = join(group, None, now=1.0)
    group.validate_commit(a, gen)
    join(group, a, now=1.0)
    group.validate_commit(a, gen)
    group.validate_commit(b, gen)
    with pytest.raises(FailedPrecondition) as info:
        group.validate_commit(c, gen)
    assert str(info.value) == (
        f"member {c!r} of group 'g' has no assignment yet (generation 2 given, current 2): "
        "wait for its join to complete"
    )

    # The rebalance completes: the old generation is fenced off.
    join(group, b, now=2.0)
    assert group.generation == gen + 1
    with pytest.raises(FailedPrecondition, match=f"stale generation 2 \\(current 3\\) for member {a!r}"):
        group.validate_commit(a, gen)
    for member in (a, b, c):
        group.validate_commit(member, gen + 1)

    with pytest.raises(FailedPrecondition) as info:
        group.validate_commit("ghost", gen + 1)
    assert str(info.value) == (
        "unknown member 'ghost' in group 'g' (it left or its session expired): rejoin the group"
    )


def test_standalone_commits_only_when_the_group_has_no_members() -> None:
    group = make_group()
    group.validate_commit(None, -1)
    group.validate_commit("", -1)
    with pytest.raises(InvalidArgument) as info:
        group.validate_commit("", 3)
    assert "names generation 3 but no member id" in str(info.value)
    a = join(group, None)
    with pytest.raises(FailedPrecondition) as fp:
        group.validate_commit(None, -1)
    assert str(fp.value) == (
        "group 'g' has 1 active member(s): only a member with its generation may commit offsets"
    )
    group.leave(a, 1.0)
    group.validate_commit(None, -1)


def test_a_commit_keeps_the_member_alive() -> None:
    group, (a,) = stable_group_of(1)
    group.validate_commit(a, group.generation, now=8.0)
    assert group.expire(12.0) == []
    assert group.next_deadline() == 18.0
    group.validate_commit(a, group.generation)  # no time given: no sign of life
    assert group.expire(18.0) == [a]


# -- validation, describe, dead groups ------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"topics": []}, InvalidArgument, "a member of group 'g' must subscribe to at least one topic"),
        ({"topics": ["ok", "bad topic"]}, InvalidArgument, "invalid topic name 'bad topic'"),
        (
            {"session": 0.0},
            InvalidArgument,
            "session timeout must be more than 0 and at most 1800 seconds, got 0.0",
        ),
        ({"session": MAX_SESSION_TIMEOUT + 1}, InvalidArgument, "session timeout must be more than 0"),
        ({"session": float("nan")}, InvalidArgument, "session timeout must be more than 0"),
        ({"rebalance": -1.0}, InvalidArgument, "rebalance timeout must be more than 0"),
        (
            {"client_id": "bad\x01"},
            InvalidArgument,
            "invalid client id 'bad\\x01': only printable characters",
        ),
        ({"client_id": "c" * 256}, InvalidArgument, "must be at most 255 characters, got 256"),
    ],
)
def test_join_validates_its_arguments(kwargs: dict, error: type[Exception], message: str) -> None:
    group = make_group()
    with pytest.raises(error) as info:
        join(group, None, **kwargs)
    assert message in str(info.value)
    assert group.member_ids == [] and group.state is GroupState.EMPTY


def test_join_rejects_a_string_as_the_topic_list() -> None:
    with pytest.raises(InvalidArgument) as info:
        make_group().join(None, "c", "t", SESSION, REBALANCE, 0.0)
    assert str(info.value) == "topics must be a list of topic names, got the string 't'"


def test_internal_topics_may_be_subscribed() -> None:
    group = make_group({"__internal": 1})
    a = join(group, None, topics=["__internal"])
    assert results(group.poll(0.0))[a].assignment == (("__internal", 0),)


def test_describe() -> None:
    group, (a, b) = stable_group_of(2, counts={"t": 3})
    description = group.describe()
    assert description.group_id == "g"
    assert description.state is GroupState.STABLE
    assert description.state.value == "Stable"
    assert description.generation == 2
    assert description.leader_id == a
    assert description.members == (
        MemberDescription(a, "c", ("t",), (("t", 0), ("t", 2))),
        MemberDescription(b, "c", ("t",), (("t", 1),)),
    )


def test_group_id_is_validated() -> None:
    with pytest.raises(InvalidArgument, match="invalid group id '': must not be empty"):
        ConsumerGroup("", partitions_from({}))


def test_container_lifecycle() -> None:
    groups = ConsumerGroups(partitions_from({"t": 4, "u": 1}), rng=random.Random(1))
    with pytest.raises(NotFound, match="consumer group 'g1' does not exist"):
        groups.get("g1")
    g1 = groups.group("g1")
    assert groups.group("g1") is g1 and groups.get("g1") is g1 and "g1" in groups
    g2 = groups.group("g2")
    a = g1.join(None, "c", ["t"], SESSION, REBALANCE, 0.0)
    b = g2.join(None, "c", ["u"], 5.0, REBALANCE, 0.0)
    effects = groups.poll(0.0)
    assert {(e.group_id, e.member_id) for e in effects} == {("g1", a), ("g2", b)}
    assert groups.group_ids() == ["g1", "g2"] and len(groups) == 2
    assert groups.next_deadline() == 5.0

    assert groups.request_rebalance("u", 1.0) == ["g2"]
    assert g2.state is GroupState.PREPARING_REBALANCE and g1.state is GroupState.STABLE

    with pytest.raises(FailedPrecondition, match="group 'g1' is not empty: it has 1 active member"):
        groups.delete("g1")
    g1.leave(a, 1.0)
    groups.delete("g1")
    assert "g1" not in groups and g1.state is GroupState.DEAD
    with pytest.raises(FailedPrecondition, match="group 'g1' has been deleted"):
        g1.join(None, "c", ["t"], SESSION, REBALANCE, 2.0)
    with pytest.raises(FailedPrecondition, match="group 'g1' has been deleted"):
        g1.validate_commit(None, -1)
    assert g1.heartbeat(a, 1, 2.0) is HeartbeatResult.UNKNOWN_MEMBER
    with pytest.raises(NotFound):
        groups.delete("g1")
    assert groups.group("g1") is not g1  # a new, empty group under the same id
    with pytest.raises(InvalidArgument):
        groups.group("bad\x00id")


# -- assignment function --------------------------------------------------------------------


def test_assign_round_robin_identical_subscriptions_is_plain_round_robin() -> None:
    plan = assign_round_robin({"b": ["x", "y"], "a": ["y", "x"], "c": ["x", "y"]}, {"x": 2, "y": 2})
    assert plan == {"a": [("x", 0), ("y", 1)], "b": [("x", 1)], "c": [("y", 0)]}


def test_assign_round_robin_keeps_identical_subscriptions_balanced() -> None:
    # Kafka's RoundRobinAssignor gives a two partitions and c none here: its cursor jumps past c
    # while serving topic "b" to d. Least-loaded dealing keeps a and c within one.
    subscriptions = {"a": ["a", "c"], "b": ["b"], "c": ["a", "c"], "d": ["b"]}
    plan = assign_round_robin(subscriptions, {"a": 1, "b": 2, "c": 1})
    assert plan == {"a": [("a", 0)], "b": [("b", 0)], "c": [("c", 0)], "d": [("b", 1)]}


def test_assign_round_robin_edge_cases() -> None:
    assert assign_round_robin({}, {"t": 3}) == {}
    assert assign_round_robin({"a": ["t"], "b": ["t"]}, {}) == {"a": [], "b": []}
    assert assign_round_robin({"a": ["t"], "b": ["t"], "c": ["t"]}, {"t": 1}) == {
        "a": [("t", 0)],
        "b": [],
        "c": [],
    }


# -- randomized simulation --------------------------------------------------------------------


@attrs.define
class SimClient:
    name: int
    topics: tuple[str, ...]
    session: float
    rebalance: float
    member_id: str | None = None
    generation: int = -1
    assignment: tuple[tuple[str, int], ...] = ()
    phase: str = "joining"  # joining | stable | crashed
    ignore_next_result: bool = False


class Simulation:
    TOPICS = ("t0", "t1", "t2", "missing")

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.counts = {t: self.rng.randrange(1, 9) for t in self.TOPICS[:3]}
        self.group = ConsumerGroup(
            "sim",
            partitions_from(self.counts),
            rng=random.Random(seed),
            initial_rebalance_delay=self.rng.choice([0.0, 0.0, 2.0]),
        )
        self.now = 0.0
        self.clients: dict[int, SimClient] = {}
        self.by_member: dict[str, SimClient] = {}
        self.next_name = 0
        self.completions = 0
        self.last_completed_generation = 0
        self.last_seen_generation = 0
        # What the run exercised (the test checks each path was taken).
        self.stats: Counter[str] = Counter()

    # client actions ------------------------------------------------------------------------

    def random_topics(self) -> tuple[str, ...]:
        # A few distinct subscriptions, so identical ones are common.
        return self.rng.choice([("t0",), ("t1",), ("t0", "t2"), ("t1", "t2", "missing"), ("t0", "t1", "t2")])

    def do_join(self, client: SimClient, member_id: str | None) -> None:
        gen_before = self.group.generation
        new_id = self.group.join(
            member_id, f"c{client.name}", list(client.topics), client.session, client.rebalance, self.now
        )
        if client.member_id != new_id:
            # A new membership (the old one was forgotten): nothing of the old one is valid.
            if client.member_id is not None:
                self.by_member.pop(client.member_id, None)
            client.generation = -1
            client.assignment = ()
        client.member_id = new_id
        client.phase = "joining"
        self.by_member[new_id] = client
        self.after_call(gen_before)

    def step(self) -> None:
        rng = self.rng
        members = set(self.group.member_ids)
        for client in list(self.clients.values()):
            if client.phase == "crashed" and client.member_id not in members:
                self.forget(client)  # the coordinator noticed: the crashed process is gone
        live = [c for c in self.clients.values() if c.phase != "crashed"]
        action = rng.random()
        if action < 0.08 and len(self.clients) < 9:
            client = SimClient(self.next_name, self.random_topics(), rng.uniform(6, 12), rng.uniform(4, 20))
            self.next_name += 1
            self.clients[client.name] = client
            self.do_join(client, None)
        elif action < 0.12 and live:
            client = rng.choice(live)
            gen_before = self.group.generation
            assert client.member_id is not None
            self.group.leave(client.member_id, self.now)
            self.forget(client)
            self.after_call(gen_before)
        elif action < 0.14 and live:
            rng.choice(live).phase = "crashed"  # stops talking; its session will expire
        elif action < 0.17 and live:
            client = rng.choice(live)
            client.topics = self.random_topics()
            self.do_join(client, client.member_id)
        elif action < 0.19 and live:
            rng.choice(live).ignore_next_result = True  # its join response will be lost
        elif action < 0.21:
            self.counts[rng.choice(self.TOPICS[:3])] = rng.randrange(1, 9)
            gen_before = self.group.generation
            self.group.request_rebalance(self.now)
            self.after_call(gen_before)
        elif action < 0.70:
            # Most live, idle clients heartbeat (a few skip this round).
            for client in live:
                if client.phase == "stable" and rng.random() < 0.85:
                    self.heartbeat(client)
        else:
            self.now += rng.choice([0.1, 0.5, 1.0, 2.0, 4.0])
            gen_before = self.group.generation
            self.stats["removed by timeouts"] += len(self.group.expire(self.now))
            self.after_call(gen_before)
        self.check_commit_fencing()

    def heartbeat(self, client: SimClient) -> None:
        assert client.member_id is not None
        answer = self.group.heartbeat(client.member_id, client.generation, self.now)
        member_known = client.member_id in self.group.member_ids
        assert (answer is HeartbeatResult.UNKNOWN_MEMBER) == (not member_known)
        if answer is HeartbeatResult.OK:
            assert self.group.state is GroupState.STABLE and client.generation == self.group.generation
            return
        if answer is HeartbeatResult.ILLEGAL_GENERATION:
            assert self.group.state is GroupState.STABLE and client.generation != self.group.generation
        if answer is HeartbeatResult.REBALANCE_IN_PROGRESS:
            assert self.group.state is GroupState.PREPARING_REBALANCE
        self.do_join(client, client.member_id if member_known else None)

    def forget(self, client: SimClient) -> None:
        self.clients.pop(client.name, None)
        if client.member_id is not None:
            self.by_member.pop(client.member_id, None)

    # checks ------------------------------------------------------------------------------

    def after_call(self, gen_before: int) -> None:
        group = self.group
        effects = group.poll(self.now)
        assert group.generation >= self.last_seen_generation
        completed = group.generation > gen_before
        if completed:
            # One call completes at most one rebalance, and it bumps the generation by one.
            assert group.generation == gen_before + 1
        self.last_seen_generation = group.generation
        batch: dict[str, JoinResult] = {}
        for effect in effects:
            client = self.by_member.get(effect.member_id)
            if isinstance(effect, JoinFailed):
                self.stats["joins failed"] += 1
                if client is not None:
                    self.forget(client)
                continue
            batch[effect.member_id] = effect
            if client is None:
                continue  # the simulated client already left
            if client.ignore_next_result:
                client.ignore_next_result = False
                client.phase = "stable" if client.phase != "crashed" else "crashed"
                continue
            client.generation = effect.generation
            client.assignment = effect.assignment
            if client.phase != "crashed":
                client.phase = "stable"
        if completed and group.state is GroupState.STABLE:
            self.check_completed_rebalance(batch)
        elif not completed:
            # Answers outside a completion are immediate answers to a retried join.
            for result in batch.values():
                self.stats["immediate answers"] += 1
                assert result.generation == group.generation
                assert group.describe().members[group.member_ids.index(result.member_id)].assignment == (
                    result.assignment
                )

    def check_completed_rebalance(self, batch: dict[str, JoinResult]) -> None:
        group = self.group
        self.completions += 1
        assert group.generation > self.last_completed_generation
        self.last_completed_generation = group.generation
        assert sorted(batch) == group.member_ids
        assert {r.generation for r in batch.values()} == {group.generation}
        assert {r.leader_id for r in batch.values()} == {group.leader_id}
        description = {m.member_id: m for m in group.describe().members}
        # Every partition of every subscribed topic is owned by exactly one subscribed member.
        owners = Counter(tp for r in batch.values() for tp in r.assignment)
        subscribed = {t for m in description.values() for t in m.topics}
        expected = {(t, p) for t in subscribed if t in self.counts for p in range(self.counts[t])}
        assert set(owners) == expected
        assert all(n == 1 for n in owners.values())
        for member_id, result in batch.items():
            assert all(t in description[member_id].topics for t, _ in result.assignment)
            assert list(result.assignment) == sorted(result.assignment)
        # Members with identical subscriptions differ by at most one partition.
        by_subscription: dict[tuple[str, ...], list[int]] = {}
        for member_id, result in batch.items():
            by_subscription.setdefault(description[member_id].topics, []).append(len(result.assignment))
        for sizes in by_subscription.values():
            assert max(sizes) - min(sizes) <= 1

    def check_commit_fencing(self) -> None:
        """Members whose commits would be accepted own pairwise disjoint partitions, and are
        exactly the members holding the group's current generation."""
        owned: Counter[tuple[str, int]] = Counter()
        for client in self.clients.values():
            if client.member_id is None or client.generation < 0:  # never had an assignment
                continue
            try:
                self.group.validate_commit(client.member_id, client.generation)
            except FailedPrecondition:
                assert (
                    client.generation != self.group.generation
                    or client.member_id not in self.group.member_ids
                )
                continue
            assert client.generation == self.group.generation
            if self.group.state is GroupState.PREPARING_REBALANCE:
                self.stats["commits accepted while preparing"] += 1
            owned.update(client.assignment)
        assert all(n == 1 for n in owned.values()), owned


@pytest.mark.parametrize("seed", range(6))
def test_random_simulation_keeps_the_invariants(seed: int) -> None:
    sim = Simulation(seed)
    for _ in range(4000):
        sim.step()
    # The simulation must actually exercise rebalances, expiries and departures.
    assert sim.completions > 200
    assert sim.next_name > 200
    assert sim.group.generation >= sim.completions
    for path in (
        "removed by timeouts",
        "joins failed",
        "immediate answers",
        "commits accepted while preparing",
    ):
        assert sim.stats[path] > 0, (path, sim.stats)
