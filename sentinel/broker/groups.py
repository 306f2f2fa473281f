"""The consumer-group coordinator: one state machine per group, and a container of groups.

A pure core (no Trio, no clock, no IO): every call takes the current time ``now`` in seconds
from a monotonic clock, and what the coordinator has to say to long-polling clients comes out
as effects (``JoinResult``, ``JoinFailed``) drained by ``poll(now)``. The actor shell owns the
RPCs: it parks each JoinGroup call until ``poll`` yields an effect for that member, answers
heartbeats and commits from the return values here, and calls ``poll`` again at
``next_deadline()``.

The protocol is Kafka's eager rebalance with the coordinator computing the assignment, so the
JoinGroup and SyncGroup rounds collapse into one long-polled join:

- states: Empty (no members) -> PreparingRebalance (waiting for members to (re)join) -> Stable
  (every member holds the assignment of the current generation); Dead once deleted;
- a join from a new member, a changed subscription, a leave, a session expiry or
  ``request_rebalance`` (topic metadata changed) starts a rebalance; members learn of it from
  their heartbeat (REBALANCE_IN_PROGRESS) and rejoin;
- a rebalance completes when every member has rejoined, or when the rebalance timeout passes
  (members that did not rejoin are removed); completion bumps the generation and hands every
  member its assignment;
- a member's session times out when neither a join nor a heartbeat (nor a commit) arrives
  within its session timeout; members parked in a join are exempt (the rebalance timeout
  bounds them instead).

Invariants (checked by the randomized simulation in tests/broker/test_groups.py):
- the generation only grows, by one per completed rebalance (also when the group empties);
- after a rebalance completes, every partition of every subscribed topic is assigned to exactly
  one member, only to a member subscribed to its topic, and members with identical
  subscriptions hold partition counts that differ by at most one;
- an offset commit is accepted only from a member holding the current generation's
  assignment (which stays valid while the next rebalance is being prepared, so members can
  commit what they processed before rejoining), or from a memberless standalone consumer
  (member id "" and generation -1) when the group has no members.
"""

from __future__ import annotations

import enum
import heapq
import math
import random
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import TypeAlias

import attrs

from sentinel.broker.names import validate_group_id, validate_topic_name
from sentinel.errors import FailedPrecondition, InvalidArgument, NotFound

__all__ = [
    "MAX_REBALANCE_TIMEOUT",
    "MAX_SESSION_TIMEOUT",
    "NO_GENERATION",
    "ConsumerGroup",
    "ConsumerGroups",
    "GroupDescription",
    "GroupState",
    "HeartbeatResult",
    "JoinEffect",
    "JoinFailed",
    "JoinResult",
    "MemberDescription",
    "PartitionsOf",
    "TopicPartition",
    "assign_round_robin",
    "unknown_member",
]

TopicPartition: TypeAlias = tuple[str, int]
# Partition count of a topic; 0 or NotFound for a topic that does not exist (yet).
PartitionsOf: TypeAlias = Callable[[str], int]

# The generation a standalone consumer (no group membership) commits with, as in Kafka.
NO_GENERATION = -1
# Kafka's group.max.session.timeout.ms default (30 min): a longer session hides dead consumers.
MAX_SESSION_TIMEOUT = 1800.0
# Bounds how long one slow member can stall a whole group's rebalance.
MAX_REBALANCE_TIMEOUT = 1800.0
# Client ids become part of member ids; the same bound as group ids keeps them printable keys.
MAX_CLIENT_ID_LENGTH = 255
# Member id prefix when the client sent no client id.
DEFAULT_CLIENT_ID = "consumer"


class GroupState(enum.Enum):
    """Where a group is in its rebalance cycle (values are Kafka's state names)."""

    EMPTY = "Empty"
    PREPARING_REBALANCE = "PreparingRebalance"
    STABLE = "Stable"
    DEAD = "Dead"


class HeartbeatResult(enum.Enum):
    """The answer to a heartbeat (values are Kafka's error names)."""

    OK = "OK"
    # A rebalance is being prepared: the member must rejoin to get its new assignment.
    REBALANCE_IN_PROGRESS = "REBALANCE_IN_PROGRESS"
    # The member is not in the group (left, session expired, or never joined): join again.
    UNKNOWN_MEMBER = "UNKNOWN_MEMBER"
    # The member's generation is not the group's: its assignment is stale, join again.
    ILLEGAL_GENERATION = "ILLEGAL_GENERATION"

    @property
    def must_rejoin(self) -> bool:
        """True for every answer but OK: the member's view of its assignment is outdated."""
        return self is not HeartbeatResult.OK


@attrs.frozen
class JoinResult:
    """Effect: a member's join completed; answer its parked JoinGroup call with this."""

    group_id: str
    member_id: str
    generation: int
    leader_id: str
    # Sorted by (topic, partition).
    assignment: tuple[TopicPartition, ...]

    @property
    def is_leader(self) -> bool:
        return self.member_id == self.leader_id


@attrs.frozen
class JoinFailed:
    """Effect: a member's parked join will never complete (it left, or the group was deleted);
    answer its JoinGroup call with an error carrying ``reason``."""

    group_id: str
    member_id: str
    reason: str


JoinEffect: TypeAlias = JoinResult | JoinFailed


@attrs.frozen
class MemberDescription:
    member_id: str
    client_id: str
    topics: tuple[str, ...]
    # The member's assignment of its last completed generation (empty for a member whose first
    # join has not completed).
    assignment: tuple[TopicPartition, ...]


@attrs.frozen
class GroupDescription:
    group_id: str
    state: GroupState
    generation: int
    leader_id: str | None
    members: tuple[MemberDescription, ...]  # sorted by member id


def assign_round_robin(
    subscriptions: Mapping[str, Iterable[str]], partition_counts: Mapping[str, int]
) -> dict[str, list[TopicPartition]]:
    """Deal the partitions of the subscribed topics to the members, round-robin.

    Partitions are taken in (topic, partition) order; each goes to the member, among those
    subscribed to its topic, holding the fewest partitions so far, ties to the smallest member
    id. With identical subscriptions this is exactly round-robin over the members sorted by
    id; with mixed subscriptions it keeps members of identical subscriptions within one
    partition of each other (Kafka's RoundRobinAssignor does not: skipping non-subscribers
    advances its cursor unevenly). Topics missing from ``partition_counts`` have no partitions.
    """
    members = sorted(subscriptions)
    result: dict[str, list[TopicPartition]] = {m: [] for m in members}
    subscribers: dict[str, list[int]] = {}
    for index, member in enumerate(members):
        for topic in set(subscriptions[member]):
            subscribers.setdefault(topic, []).append(index)
    loads = [0] * len(members)
    for topic in sorted(subscribers):
        count = partition_counts.get(topic, 0)
        if count <= 0:
            continue
        # A heap of (load, member index) over this topic's subscribers: the least loaded, then
        # the smallest id, is at the top. Only these members' loads change for this topic.
        heap = [(loads[i], i) for i in subscribers[topic]]
        heapq.heapify(heap)
        for partition in range(count):
            load, index = heap[0]
            result[members[index]].append((topic, partition))
            heapq.heapreplace(heap, (load + 1, index))
        for load, index in heap:
            loads[index] = load
    return result


@attrs.define
class _Member:
    member_id: str
    client_id: str
    topics: tuple[str, ...]
    session_timeout: float
    rebalance_timeout: float
    last_seen: float
    # Parked in a join of the rebalance being prepared (meaningful in PreparingRebalance only).
    joined: bool = False
    # The generation whose assignment the member holds; None before its first join completes.
    generation: int | None = None
    assignment: tuple[TopicPartition, ...] = ()


def unknown_member(member_id: str, group_id: str) -> FailedPrecondition:
    """Kafka's UNKNOWN_MEMBER_ID, as every group request from such a member is answered."""
    return FailedPrecondition(
        f"unknown member {member_id!r} in group {group_id!r} (it left or its session expired): "
        "rejoin the group"
    )


def _check_timeout(what: str, value: float, maximum: float) -> float:
    if not (isinstance(value, int | float) and math.isfinite(value) and 0 < value <= maximum):
        raise InvalidArgument(f"{what} must be more than 0 and at most {maximum:g} seconds, got {value!r}")
    return float(value)


def _check_client_id(client_id: str) -> str:
    if len(client_id) > MAX_CLIENT_ID_LENGTH:
        raise InvalidArgument(
            f"invalid client id {client_id[:64]!r}...: must be at most {MAX_CLIENT_ID_LENGTH} characters, "
            f"got {len(client_id)}"
        )
    if not client_id.isprintable():
        raise InvalidArgument(f"invalid client id {client_id!r}: only printable characters are allowed")
    return client_id


class ConsumerGroup:
    """The coordinator state machine of one consumer group (see the module docstring).

    ``partitions_of(topic)`` gives a topic's partition count at rebalance time (0 or NotFound:
    no partitions). ``rng`` makes member ids deterministic in tests. ``initial_rebalance_delay``
    (Kafka's group.initial.rebalance.delay.ms) holds the first rebalance of an empty group open
    that long, so consumers starting together land in one generation instead of one each.
    """

    def __init__(
        self,
        group_id: str,
        partitions_of: PartitionsOf,
        *,
        rng: random.Random | None = None,
        initial_rebalance_delay: float = 0.0,
    ) -> None:
        self._group_id = validate_group_id(group_id)
        self._partitions_of = partitions_of
        self._rng = rng if rng is not None else random.Random()
        if not (math.isfinite(initial_rebalance_delay) and initial_rebalance_delay >= 0):
            raise InvalidArgument(
                "initial rebalance delay must be a finite number of seconds >= 0, "
                f"got {initial_rebalance_delay!r}"
            )
        self._initial_rebalance_delay = initial_rebalance_delay
        self._state = GroupState.EMPTY
        self._generation = 0
        self._members: dict[str, _Member] = {}
        self._leader_id: str | None = None
        self._rebalance_deadline: float | None = None
        # Completion is held back until this time (initial rebalance delay), even if all joined.
        self._hold_until: float | None = None
        self._effects: list[JoinEffect] = []

    # -- read-only views ------------------------------------------------------------------

    @property
    def group_id(self) -> str:
        return self._group_id

    @property
    def state(self) -> GroupState:
        return self._state

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def leader_id(self) -> str | None:
        return self._leader_id

    @property
    def member_ids(self) -> list[str]:
        return sorted(self._members)

    def __len__(self) -> int:
        return len(self._members)

    def subscribed_topics(self) -> set[str]:
        """The topics at least one member subscribes to."""
        return {topic for m in self._members.values() for topic in m.topics}

    def describe(self) -> GroupDescription:
        """State, generation and members, for DescribeGroup."""
        return GroupDescription(
            group_id=self._group_id,
            state=self._state,
            generation=self._generation,
            leader_id=self._leader_id,
            members=tuple(
                MemberDescription(m.member_id, m.client_id, m.topics, m.assignment)
                for _, m in sorted(self._members.items())
            ),
        )

    # -- requests -------------------------------------------------------------------------

    def join(
        self,
        member_id: str | None,
        client_id: str,
        topics: Iterable[str],
        session_timeout: float,
        rebalance_timeout: float,
        now: float,
    ) -> str:
        """A member (re)joins; returns its member id. Its answer comes later from ``poll``.

        ``member_id`` None or "" is a new member and gets a generated id. An id this group does
        not know (its session expired, it was removed from a rebalance) is treated as a new
        member too: the returned id is the one to use from now on. A known member rejoining a
        Stable group with an unchanged subscription (a retried join) is answered at once with
        its current assignment; anything else starts or joins a rebalance.
        """
        self._check_not_dead()
        client_id = _check_client_id(client_id)
        subscription = self._check_topics(topics)
        session_timeout = _check_timeout("session timeout", session_timeout, MAX_SESSION_TIMEOUT)
        rebalance_timeout = _check_timeout("rebalance timeout", rebalance_timeout, MAX_REBALANCE_TIMEOUT)

        member = self._members.get(member_id) if member_id else None
        if member is None:
            member = _Member(
                member_id=self._new_member_id(client_id),
                client_id=client_id,
                topics=subscription,
                session_timeout=session_timeout,
                rebalance_timeout=rebalance_timeout,
                last_seen=now,
            )
            self._members[member.member_id] = member
            if self._leader_id is None:
                self._leader_id = member.member_id
            changed = True
        else:
            changed = member.topics != subscription
            member.client_id = client_id
            member.topics = subscription
            member.session_timeout = session_timeout
            member.rebalance_timeout = rebalance_timeout
            member.last_seen = now

        if self._state is GroupState.STABLE and not changed:
            self._effects.append(self._result_for(member))
            return member.member_id
        if self._state is not GroupState.PREPARING_REBALANCE:
            self._start_rebalance(now)
        member.joined = True
        self._maybe_complete(now)
        return member.member_id

    def heartbeat(self, member_id: str, generation: int, now: float) -> HeartbeatResult:
        """A member's liveness signal; the answer says whether it must rejoin."""
        member = self._members.get(member_id)
        if member is None:
            return HeartbeatResult.UNKNOWN_MEMBER
        # Any heartbeat from a member keeps it alive, even one answered "rejoin": a member may
        # take up to the rebalance timeout to finish its work and rejoin.
        member.last_seen = now
        if self._state is GroupState.PREPARING_REBALANCE:
            return HeartbeatResult.REBALANCE_IN_PROGRESS
        if generation != self._generation:
            return HeartbeatResult.ILLEGAL_GENERATION
        return HeartbeatResult.OK

    def leave(self, member_id: str, now: float) -> bool:
        """A member leaves (consumer closed); its partitions move at once. False if unknown."""
        member = self._members.get(member_id)
        if member is None:
            return False
        self._remove(member, "it left the group")
        self._membership_changed(now)
        return True

    def validate_commit(self, member_id: str | None, generation: int, now: float | None = None) -> None:
        """Raise unless an offset commit from ``member_id`` at ``generation`` may be applied.

        Accepted: a member holding the current generation's assignment (also while the next
        rebalance is being prepared, before it rejoins), or a standalone consumer (member id
        None/"" and generation -1) when the group has no members. A commit from a member counts
        as a sign of life when ``now`` is given (as in Kafka).
        """
        gid = self._group_id
        if self._state is GroupState.DEAD:
            raise FailedPrecondition(f"group {gid!r} has been deleted")
        if not member_id:
            if generation != NO_GENERATION:
                raise InvalidArgument(
                    f"commit to group {gid!r} names generation {generation} but no member id: members "
                    f"commit with their member id, standalone consumers with generation {NO_GENERATION}"
                )
            if self._members:
                raise FailedPrecondition(
                    f"group {gid!r} has {len(self._members)} active member(s): only a member with its "
                    "generation may commit offsets"
                )
            return
        member = self._members.get(member_id)
        if member is None:
            raise unknown_member(member_id, gid)
        if member.generation is None:
            raise FailedPrecondition(
                f"member {member_id!r} of group {gid!r} has no assignment yet (generation {generation} "
                f"given, current {self._generation}): wait for its join to complete"
            )
        if generation != self._generation or member.generation != generation:
            kind = "stale" if generation < self._generation else "unknown"
            raise FailedPrecondition(
                f"{kind} generation {generation} (current {self._generation}) for member {member_id!r} "
                f"in group {gid!r}: rejoin the group"
            )
        if now is not None and now > member.last_seen:
            member.last_seen = now

    def request_rebalance(self, now: float) -> bool:
        """Start a rebalance of a Stable group (a subscribed topic gained or lost partitions).
        False when there is nothing to do (Empty, already rebalancing, Dead)."""
        if self._state is not GroupState.STABLE:
            return False
        self._start_rebalance(now)
        return True

    def mark_dead(self) -> None:
        """The group is deleted; only an empty group may be. Further joins fail."""
        if self._members:
            raise FailedPrecondition(
                f"group {self._group_id!r} is not empty: it has {len(self._members)} active member(s)"
            )
        self._state = GroupState.DEAD
        self._rebalance_deadline = None
        self._hold_until = None

    # -- time -------------------------------------------------------------------------------

    def expire(self, now: float) -> list[str]:
        """Remove members whose session timed out, and complete a rebalance whose timeout passed
        (removing the members that did not rejoin). Returns the removed member ids."""
        removed: list[str] = []
        if not self._members:
            return removed
        preparing = self._state is GroupState.PREPARING_REBALANCE
        for member in list(self._members.values()):
            if preparing and member.joined:
                continue  # parked in a join: bounded by the rebalance timeout instead
            if member.last_seen + member.session_timeout <= now:
                self._remove(member, "its session timed out")
                removed.append(member.member_id)
        if removed:
            removed.extend(self._membership_changed(now))
        elif preparing:
            removed.extend(self._maybe_complete(now))
        return removed

    def poll(self, now: float) -> list[JoinEffect]:
        """Run the timers (``expire``) and drain the effects produced since the last poll."""
        self.expire(now)
        effects = self._effects
        self._effects = []
        return effects

    def next_deadline(self) -> float | None:
        """When ``poll`` next has something to do on its own (a session or rebalance timeout);
        None when nothing is pending. Every other change comes from a request, so the shell
        also calls ``poll`` right after each request it hands in."""
        deadline = math.inf
        preparing = self._state is GroupState.PREPARING_REBALANCE
        if preparing:
            assert self._rebalance_deadline is not None
            deadline = self._rebalance_deadline
            if self._hold_until is not None:
                deadline = min(deadline, self._hold_until)
        for member in self._members.values():
            if not (preparing and member.joined):
                deadline = min(deadline, member.last_seen + member.session_timeout)
        return None if deadline == math.inf else deadline

    # -- internals --------------------------------------------------------------------------

    def _check_not_dead(self) -> None:
        if self._state is GroupState.DEAD:
            raise FailedPrecondition(f"group {self._group_id!r} has been deleted")

    def _check_topics(self, topics: Iterable[str]) -> tuple[str, ...]:
        if isinstance(topics, str):
            raise InvalidArgument(f"topics must be a list of topic names, got the string {topics!r}")
        subscription = tuple(sorted({validate_topic_name(t) for t in topics}))
        if not subscription:
            raise InvalidArgument(
                f"a member of group {self._group_id!r} must subscribe to at least one topic"
            )
        return subscription

    def _new_member_id(self, client_id: str) -> str:
        prefix = client_id or DEFAULT_CLIENT_ID
        while True:
            member_id = f"{prefix}-{uuid.UUID(int=self._rng.getrandbits(128), version=4)}"
            if member_id not in self._members:
                return member_id

    def _result_for(self, member: _Member) -> JoinResult:
        assert self._leader_id is not None and member.generation is not None
        return JoinResult(
            self._group_id, member.member_id, member.generation, self._leader_id, member.assignment
        )

    def _start_rebalance(self, now: float) -> None:
        was_empty = self._state is GroupState.EMPTY
        self._state = GroupState.PREPARING_REBALANCE
        timeout = max((m.rebalance_timeout for m in self._members.values()), default=0.0)
        self._rebalance_deadline = now + timeout
        self._hold_until = now + self._initial_rebalance_delay if was_empty else None
        for member in self._members.values():
            member.joined = False

    def _remove(self, member: _Member, reason: str) -> None:
        del self._members[member.member_id]
        if self._state is GroupState.PREPARING_REBALANCE and member.joined:
            self._effects.append(
                JoinFailed(
                    self._group_id, member.member_id, f"member {member.member_id!r} was removed: {reason}"
                )
            )
        if self._leader_id == member.member_id:
            self._leader_id = min(self._members) if self._members else None

    def _membership_changed(self, now: float) -> list[str]:
        """After a removal: rebalance a Stable group, or see whether a preparing one is done."""
        if self._state is GroupState.STABLE:
            self._start_rebalance(now)
        return self._maybe_complete(now)

    def _maybe_complete(self, now: float) -> list[str]:
        """Complete the rebalance being prepared if everyone rejoined (and the initial delay is
        over) or the rebalance timeout passed. Returns the members removed for not rejoining."""
        if self._state is not GroupState.PREPARING_REBALANCE:
            return []
        assert self._rebalance_deadline is not None
        timed_out = now >= self._rebalance_deadline
        if not timed_out:
            if any(not m.joined for m in self._members.values()):
                return []
            if self._hold_until is not None and now < self._hold_until:
                return []
        removed = [m for m in self._members.values() if not m.joined]
        for member in removed:
            self._remove(member, "it did not rejoin within the rebalance timeout")
        self._complete(now)
        return [m.member_id for m in removed]

    def _complete(self, now: float) -> None:
        self._generation += 1
        self._rebalance_deadline = None
        self._hold_until = None
        if not self._members:
            self._state = GroupState.EMPTY
            self._leader_id = None
            return
        counts: dict[str, int] = {}
        for member in self._members.values():
            for topic in member.topics:
                if topic not in counts:
                    counts[topic] = self._partition_count(topic)
        plan = assign_round_robin({m.member_id: m.topics for m in self._members.values()}, counts)
        if self._leader_id not in self._members:
            self._leader_id = min(self._members)
        self._state = GroupState.STABLE
        for member_id in sorted(self._members):
            member = self._members[member_id]
            member.assignment = tuple(plan[member_id])
            member.generation = self._generation
            member.joined = False
            # The session restarts with the answer: the member spent the wait parked in a join.
            member.last_seen = now
            self._effects.append(self._result_for(member))

    def _partition_count(self, topic: str) -> int:
        try:
            count = self._partitions_of(topic)
        except NotFound:
            return 0
        return max(count, 0)


class ConsumerGroups:
    """All consumer groups a coordinator owns, created on first use.

    One ``rng`` for all groups keeps member ids deterministic under a seed.
    """

    def __init__(
        self,
        partitions_of: PartitionsOf,
        *,
        rng: random.Random | None = None,
        initial_rebalance_delay: float = 0.0,
    ) -> None:
        self._partitions_of = partitions_of
        self._rng = rng if rng is not None else random.Random()
        self._initial_rebalance_delay = initial_rebalance_delay
        self._groups: dict[str, ConsumerGroup] = {}

    def group(self, group_id: str) -> ConsumerGroup:
        """The group named ``group_id``, created (Empty) if it does not exist yet."""
        group = self._groups.get(group_id)
        if group is None:
            group = ConsumerGroup(
                group_id,
                self._partitions_of,
                rng=self._rng,
                initial_rebalance_delay=self._initial_rebalance_delay,
            )
            self._groups[group_id] = group
        return group

    def get(self, group_id: str) -> ConsumerGroup:
        """The existing group named ``group_id``; NotFound otherwise."""
        group = self._groups.get(group_id)
        if group is None:
            raise NotFound(f"consumer group {group_id!r} does not exist")
        return group

    def __contains__(self, group_id: object) -> bool:
        return group_id in self._groups

    def __len__(self) -> int:
        return len(self._groups)

    def group_ids(self) -> list[str]:
        return sorted(self._groups)

    def delete(self, group_id: str) -> None:
        """Delete an empty group (NotFound if absent, FailedPrecondition if it has members)."""
        group = self.get(group_id)
        group.mark_dead()
        del self._groups[group_id]

    def request_rebalance(self, topic: str, now: float) -> list[str]:
        """A topic's partitions changed: rebalance the Stable groups subscribed to it.
        Returns the ids of the groups that started a rebalance."""
        started = []
        for group_id, group in sorted(self._groups.items()):
            if topic in group.subscribed_topics() and group.request_rebalance(now):
                started.append(group_id)
        return started

    def poll(self, now: float) -> list[JoinEffect]:
        """``poll`` every group; effects carry their group id."""
        effects: list[JoinEffect] = []
        for group in self._groups.values():
            effects.extend(group.poll(now))
        return effects

    def next_deadline(self) -> float | None:
        deadlines = [d for g in self._groups.values() if (d := g.next_deadline()) is not None]
        return min(deadlines, default=None)
