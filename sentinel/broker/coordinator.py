"""GroupCoordinator: the actor shell around the consumer-group state machine (``groups.py``).

It owns every group's membership state and the committed offsets. JoinGroup calls are
long polls: the actor parks each one until the state machine's ``poll`` yields that
member's result (the rebalance completed) or failure. Between messages it sleeps until the
state machine's next deadline (a session or rebalance timeout), read from Trio's clock, so
tests drive it with MockClock.

It serves only while this node leads the controller (the coordinator moves with the
controller's leadership, as Kafka's moves with its group's partition); other nodes answer
UNAVAILABLE naming the leader, and when leadership moves away the groups held here are
dropped so their members rejoin at the new coordinator. Committed offsets are cluster
metadata: a commit is validated here, then proposed to the controller and answered once
it is committed (so a broker failure loses no committed offset); reads come from the
controller's published metadata image.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from types import MappingProxyType

import attrs
import trio

from sentinel.actors import Actor, Reply, Request
from sentinel.broker.broker import Broker
from sentinel.broker.groups import ConsumerGroups, HeartbeatResult, JoinFailed, JoinResult, unknown_member
from sentinel.broker.names import validate_group_id
from sentinel.cluster import metadata as md
from sentinel.cluster.controller import Controller
from sentinel.errors import (
    ActorClosed,
    FailedPrecondition,
    InvalidArgument,
    MailboxFull,
    NotFound,
    Unavailable,
)
from sentinel.generated.sentinel import v1 as pb

# How long a rebalance waits for members to rejoin before dropping them (Kafka's
# max.poll.interval default is 5 min; a shorter bound keeps a group from stalling long
# behind a consumer that died without leaving).
DEFAULT_REBALANCE_TIMEOUT = 30.0
DEFAULT_SESSION_TIMEOUT = 10.0
# Kafka's group.min.session.timeout.ms and group.max.session.timeout.ms defaults: a shorter
# session turns heartbeats into load and flaps membership on any pause; a longer one hides
# dead consumers for too long. Configurable per broker (``sentinel run`` options).
DEFAULT_MIN_SESSION_TIMEOUT = 6.0
DEFAULT_MAX_SESSION_TIMEOUT = 1800.0
# Members are told to heartbeat this many times per session timeout.
HEARTBEATS_PER_SESSION = 3

TopicPartition = tuple[str, int]


@attrs.define(slots=True, eq=False)
class Join(Request[pb.JoinGroupResponse]):
    request: pb.JoinGroupRequest


@attrs.define(slots=True, eq=False)
class Heartbeat(Request[pb.HeartbeatResponse]):
    request: pb.HeartbeatRequest


@attrs.define(slots=True, eq=False)
class Leave(Request[pb.LeaveGroupResponse]):
    request: pb.LeaveGroupRequest


@attrs.define(slots=True, eq=False)
class Commit(Request[None]):
    """Validate a commit against the group's generation; the caller proposes it."""

    request: pb.CommitOffsetsRequest


@attrs.define(slots=True, eq=False)
class ForgetTopic(Request[None]):
    topic: str


@attrs.define(slots=True, eq=False)
class TopicCreated:
    topic: str


@attrs.define(slots=True, eq=False)
class LeadershipLost:
    """From the coordinator's own watcher: this node no longer leads the controller."""


class GroupCoordinator(Actor[object]):
    mailbox_capacity = 1024

    def __init__(
        self,
        controller: Controller,
        broker: Broker,
        *,
        rng: random.Random | None = None,
        rebalance_timeout: float = DEFAULT_REBALANCE_TIMEOUT,
        min_session_timeout: float = DEFAULT_MIN_SESSION_TIMEOUT,
        max_session_timeout: float = DEFAULT_MAX_SESSION_TIMEOUT,
    ) -> None:
        super().__init__("group-coordinator")
        self._session_bounds = (min_session_timeout, max_session_timeout)
        self._controller = controller
        self._broker = broker
        self._rebalance_timeout = rebalance_timeout
        self._groups = ConsumerGroups(self._partitions_of, rng=rng)
        broker.on_topic_created.append(self.topic_created)
        self._parked: dict[tuple[str, str], tuple[Reply[pb.JoinGroupResponse], float]] = {}
        self._rng = rng
        # Grouped by group id from the controller's image (cached per image).
        self._offsets_of: tuple[object, Mapping[str, Mapping[TopicPartition, tuple[int, str]]]] = (
            None,
            MappingProxyType({}),
        )

    def _partitions_of(self, topic: str) -> int:
        found = self._broker.topics.get(topic)
        return 0 if found is None else found.partitions

    # -- snapshot reads ----------------------------------------------------------------

    def committed(self, group_id: str) -> Mapping[TopicPartition, tuple[int, str]]:
        return self.committed_offsets.get(group_id, {})

    @property
    def committed_offsets(self) -> Mapping[str, Mapping[TopicPartition, tuple[int, str]]]:
        """Every group's committed offsets: an immutable snapshot (safe from any thread)."""
        image = self._controller.view.image
        cached_image, grouped = self._offsets_of
        if cached_image is not image:
            by_group: dict[str, dict[TopicPartition, tuple[int, str]]] = {}
            for (group, topic, partition), value in image.offsets.items():
                by_group.setdefault(group, {})[(topic, partition)] = value
            grouped = MappingProxyType({g: MappingProxyType(o) for g, o in by_group.items()})
            self._offsets_of = (image, grouped)
        return grouped

    def group_ids(self) -> list[str]:
        return sorted(set(self._groups.group_ids()) | set(self.committed_offsets))

    def check_leading(self) -> None:
        """Group requests are served by the controller leader's coordinator only."""
        view = self._controller.view
        if view.leader != view.node_id:
            if view.leader == 0:
                raise Unavailable("no group coordinator right now (controller election in progress)")
            broker = view.image.brokers.get(view.leader)
            hint = None if broker is None else f"{broker.host}:{broker.port}"
            raise Unavailable(f"the group coordinator is node {view.leader}", leader=hint)

    # -- lifecycle ---------------------------------------------------------------------

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_leadership)
            await self._serve_groups()
            nursery.cancel_scope.cancel()

    async def _watch_leadership(self) -> None:
        view = self._controller.view
        while True:
            was_leading = view.leader == view.node_id
            view = await self._controller.wait_changed(view)
            if was_leading and view.leader != view.node_id:
                try:
                    self.cast_nowait(LeadershipLost())
                except (MailboxFull, ActorClosed):
                    pass

    async def _serve_groups(self) -> None:
        while True:
            deadline = self._groups.next_deadline()
            message = None
            with trio.move_on_at(math.inf if deadline is None else deadline):
                message = await self.receive()
                if message is None:
                    break
            if message is not None:
                try:
                    await self.handle(message)
                finally:
                    self._in_flight = []
            self._deliver(self._groups.poll(trio.current_time()))
        # Stopping: parked joins will never complete here.
        for reply, _ in self._parked.values():
            reply.fail(FailedPrecondition("the group coordinator is shutting down; rejoin"))
        self._parked.clear()

    def _deliver(self, effects: list[JoinResult | JoinFailed]) -> None:
        for effect in effects:
            parked = self._parked.pop((effect.group_id, effect.member_id), None)
            if parked is None:
                continue
            reply, session_timeout = parked
            if isinstance(effect, JoinFailed):
                reply.fail(FailedPrecondition(effect.reason))
                continue
            reply.set(
                pb.JoinGroupResponse(
                    member_id=effect.member_id,
                    generation=effect.generation,
                    assignment=[pb.TopicPartition(topic=t, partition=p) for t, p in effect.assignment],
                    heartbeat_interval_ms=int(session_timeout * 1000 / HEARTBEATS_PER_SESSION),
                )
            )

    # -- requests (from handlers, in the caller's task) ----------------------------------

    async def join(self, request: pb.JoinGroupRequest) -> pb.JoinGroupResponse:
        self.check_leading()
        return await self.call(Join(request))

    async def heartbeat(self, request: pb.HeartbeatRequest) -> pb.HeartbeatResponse:
        self.check_leading()
        return await self.call(Heartbeat(request))

    async def leave(self, request: pb.LeaveGroupRequest) -> pb.LeaveGroupResponse:
        self.check_leading()
        return await self.call(Leave(request))

    async def commit(self, request: pb.CommitOffsetsRequest) -> pb.CommitOffsetsResponse:
        """Validated by the group (generation, member), then committed through the
        controller: answered once a majority holds it."""
        self.check_leading()
        await self.call(Commit(request))
        self._broker.check_disk_space()
        items = [(po.topic, po.partition, po.offset, po.metadata) for po in request.offsets]
        if items:
            await self._controller.propose(md.commit_offsets(request.group_id, items))
        return pb.CommitOffsetsResponse()

    async def forget_topic(self, topic: str) -> None:
        """A topic was deleted (its committed offsets went with it in the metadata)."""
        await self.call(ForgetTopic(topic))

    def topic_created(self, topic: str) -> None:
        """A topic now exists (created or auto-created): groups subscribed to its name before
        it existed were assigned nothing from it, so they rebalance (never blocks)."""
        try:
            self.cast_nowait(TopicCreated(topic))
        except (MailboxFull, ActorClosed):
            pass  # shutting down, or so busy that members will rejoin for other reasons first

    async def fetch_offsets(self, request: pb.FetchOffsetsRequest) -> pb.FetchOffsetsResponse:
        validate_group_id(request.group_id)
        committed = self.committed(request.group_id)
        wanted = [(tp.topic, tp.partition) for tp in request.partitions] or sorted(committed)
        out = []
        for topic, partition in wanted:
            offset, metadata = committed.get((topic, partition), (-1, ""))
            out.append(pb.PartitionOffset(topic=topic, partition=partition, offset=offset, metadata=metadata))
        return pb.FetchOffsetsResponse(offsets=out)

    async def list_groups(self) -> pb.ListGroupsResponse:
        """Served by the coordinator only: another node knows the groups with committed
        offsets but not those whose members have committed nothing yet."""
        self.check_leading()
        return pb.ListGroupsResponse(group_ids=self.group_ids())

    async def describe(self, group_id: str) -> pb.GroupDescription:
        """Served by the coordinator only: another node would describe a live group as
        Empty, without its members."""
        validate_group_id(group_id)
        self.check_leading()
        committed = self.committed(group_id)
        if group_id not in self._groups and not committed:
            raise NotFound(f"consumer group {group_id!r} does not exist")
        state, generation, members = "Empty", 0, []
        if group_id in self._groups:
            description = self._groups.get(group_id).describe()
            state, generation = description.state.value, description.generation
            members = [
                pb.GroupMember(
                    member_id=m.member_id,
                    client_id=m.client_id,
                    assignment=[pb.TopicPartition(topic=t, partition=p) for t, p in m.assignment],
                )
                for m in description.members
            ]
        return pb.GroupDescription(
            group_id=group_id, state=state, generation=generation, members=members, offsets=self.lag(group_id)
        )

    def lag(self, group_id: str) -> list[pb.PartitionLag]:
        """Each committed partition's lag behind its high watermark; -1 for both where this
        node holds no replica of the partition (the admin client asks its leader)."""
        out = []
        for (topic, partition), (offset, _meta) in sorted(self.committed(group_id).items()):
            found = self._broker.topics.get(topic)
            if found is None or partition >= found.partitions:
                continue
            hw = found.logs[partition].high_watermark
            out.append(
                pb.PartitionLag(
                    topic=topic,
                    partition=partition,
                    committed_offset=offset,
                    high_watermark=hw,
                    lag=max(0, hw - offset) if hw >= 0 else -1,
                )
            )
        return out

    # -- the actor's side ----------------------------------------------------------------

    async def handle(self, message: object) -> None:
        now = trio.current_time()
        if isinstance(message, Join):
            self._join(message, now)
        elif isinstance(message, Heartbeat):
            r = message.request
            try:
                validate_group_id(r.group_id)
            except InvalidArgument as exc:
                message.reply.fail(exc)  # the caller's mistake: never a coordinator crash
                return
            # An unknown member (or group) is answered as a commit from it is: rejoin.
            if r.group_id not in self._groups:
                message.reply.fail(unknown_member(r.member_id, r.group_id))
                return
            group = self._groups.get(r.group_id)
            result = group.heartbeat(r.member_id, r.generation, now)
            if result is HeartbeatResult.UNKNOWN_MEMBER:
                message.reply.fail(unknown_member(r.member_id, r.group_id))
                return
            message.reply.set(
                pb.HeartbeatResponse(rebalance_needed=result.must_rejoin, generation=group.generation)
            )
        elif isinstance(message, Leave):
            leave = message.request
            try:
                validate_group_id(leave.group_id)
            except InvalidArgument as exc:
                message.reply.fail(exc)
                return
            # Answered as a heartbeat or a commit from an unknown member is (Kafka's
            # UNKNOWN_MEMBER_ID): a member that already left or expired is told so.
            known = leave.group_id in self._groups
            if not (known and self._groups.get(leave.group_id).leave(leave.member_id, now)):
                message.reply.fail(unknown_member(leave.member_id, leave.group_id))
                return
            message.reply.set(pb.LeaveGroupResponse())
        elif isinstance(message, Commit):
            await self._commit(message, now)
        elif isinstance(message, TopicCreated):
            self._groups.request_rebalance(message.topic, now)
        elif isinstance(message, ForgetTopic):
            self._groups.request_rebalance(message.topic, now)
            message.reply.set(None)
        elif isinstance(message, LeadershipLost):
            # The new controller leader's coordinator takes the groups: members rejoin there.
            for reply, _ in self._parked.values():
                reply.fail(Unavailable("the group coordinator moved: rejoin"))
            self._parked.clear()
            self._groups = ConsumerGroups(self._partitions_of, rng=self._rng)
        else:
            raise TypeError(f"group coordinator got an unexpected message {message!r}")

    def _join(self, message: Join, now: float) -> None:
        r = message.request
        try:
            validate_group_id(r.group_id)
            if not r.topics:
                raise InvalidArgument("a group member must subscribe to at least one topic")
            session = (r.session_timeout_ms or DEFAULT_SESSION_TIMEOUT * 1000) / 1000
            low, high = self._session_bounds
            if not low <= session <= high:
                raise InvalidArgument(
                    f"session_timeout_ms {r.session_timeout_ms} is outside the broker's allowed range "
                    f"{low * 1000:.0f} to {high * 1000:.0f} ms "
                    "(--group-min-session-timeout-ms, --group-max-session-timeout-ms)"
                )
            group = self._groups.group(r.group_id)
            member_id = group.join(
                r.member_id or None, r.client_id, list(r.topics), session, self._rebalance_timeout, now
            )
        except (InvalidArgument, NotFound, FailedPrecondition) as exc:
            unused = self._groups.get(r.group_id) if r.group_id in self._groups else None
            if unused is not None and len(unused) == 0 and unused.generation == 0:
                self._groups.delete(r.group_id)  # a refused first join leaves no group behind
            message.reply.fail(exc)
            return
        previous = self._parked.pop((r.group_id, member_id), None)
        if previous is not None:
            previous[0].fail(FailedPrecondition("superseded by a newer join from the same member"))
        self._parked[(r.group_id, member_id)] = (message.reply, session)

    async def _commit(self, message: Commit, now: float) -> None:
        r = message.request
        try:
            validate_group_id(r.group_id)
            if r.group_id in self._groups:
                self._groups.get(r.group_id).validate_commit(r.member_id or None, r.generation, now)
            elif r.member_id:  # refused without creating the group
                raise unknown_member(r.member_id, r.group_id)
            for po in r.offsets:
                topic = self._broker.topic(po.topic)
                topic.log(po.partition)
                if po.offset < 0:
                    raise InvalidArgument(
                        f"cannot commit a negative offset ({po.offset}) for {po.topic}[{po.partition}]"
                    )
        except (InvalidArgument, NotFound, FailedPrecondition) as exc:
            message.reply.fail(exc)
            return
        message.reply.set(None)
