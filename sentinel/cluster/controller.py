"""Controller: the actor that runs Raft group 0 and applies the cluster metadata.

Every node runs one; they form one Raft group over all the nodes. The actor owns the
group's ``RaftNode``, its storage and the ``ClusterMetadata`` state machine, and nothing
else touches them. Others:

* read ``view`` (an immutable ``ControllerView``: leader, term, role and the metadata
  image) with one attribute read, and wait on ``wait_changed`` for the next one;
* ``propose(command)``: on the leader, append a metadata command and answer with what
  applying it returned (an error result is raised) once it is committed and applied;
  elsewhere UNAVAILABLE naming the leader;
* the transport delivers Raft messages (``deliver``), the ticker ticks (``tick_nowait``).

The controller log is compacted every ``SNAPSHOT_EVERY`` applied entries with a metadata
snapshot, so a restart replays at most that many entries and a lagging node catches up
from the snapshot.
"""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable
from typing import assert_never

import attrs
import trio

from sentinel.actors import Actor, Request
from sentinel.cluster.group import (
    GroupStorage,
    HandOff,
    Inbound,
    RaftObservers,
    RaftStats,
    Send,
    Tick,
    hand_off,
    handle_ready,
    raft_stats,
)
from sentinel.cluster.metadata import ClusterMetadata, MetadataImage, Result, TopicConfig, TopicMeta
from sentinel.errors import ActorClosed, MailboxFull, SentinelError, Unavailable
from sentinel.raft.core import Config, NotLeader, ProposalDropped, RaftNode
from sentinel.raft.messages import NONE, Message, Role

CONTROLLER_GROUP = 0
# Applied entries between metadata snapshots (each compacts the controller log).
SNAPSHOT_EVERY = 1000
# Inputs handled between two Readys: a burst of messages is stepped, then persisted once.
_BATCH = 256


@attrs.frozen
class ControllerView:
    node_id: int
    leader: int  # NONE (0) when unknown
    term: int
    role: Role
    commit: int
    image: MetadataImage
    stats: RaftStats = attrs.field(factory=RaftStats)


@attrs.define(slots=True, eq=False)
class Propose(Request[Result]):
    """From the node's services: append a metadata command (``metadata.*`` encoders)."""

    command: bytes


ControllerMessage = Tick | Inbound | Propose | HandOff


class Controller(Actor[ControllerMessage]):
    mailbox_capacity = 4096

    def __init__(
        self,
        node_id: int,
        voters: tuple[int, ...],
        storage: GroupStorage,
        send: Send,
        *,
        rng: random.Random | None = None,
        config: Config | None = None,
        address_of: Callable[[int], str | None] | None = None,
        snapshot_every: int = SNAPSHOT_EVERY,
        forward: Callable[[int, bytes], Awaitable[bytes]] | None = None,
        observers: RaftObservers | None = None,
    ) -> None:
        super().__init__(f"controller-{node_id}")
        self.node_id = node_id
        self._storage = storage
        self._transmit = send
        snapshot = storage.snapshot()
        self._metadata = ClusterMetadata.restore(snapshot.data) if snapshot.index else ClusterMetadata()
        # The committed log is applied now, not with the first Ready: the metadata is whole
        # before this node has to write anything (a restart on a full disk knows its topics).
        applied, commit = snapshot.index, storage.initial_state().commit
        if commit > applied:
            for entry in storage.entries(applied + 1, commit + 1, 1 << 62):
                self._metadata.apply(entry.index, entry.data)
            applied = commit
        raft_config = config or Config(id=node_id, voters=voters)
        self._node = RaftNode(
            attrs.evolve(raft_config, applied=applied),
            storage,
            rng or random.Random(),
        )
        # A node's client address (host:port) for leader hints; by default from the metadata.
        self._address_of = address_of or self._registered_address
        self._snapshot_every = snapshot_every
        # Sends a proposal to the leader and returns its encoded result (encode_result).
        self._forward = forward
        self._observers = observers or RaftObservers()
        # Proposals of this leader waiting for their entry to apply: index -> (term, request).
        self._pending: dict[int, tuple[int, Propose]] = {}
        self._changed = trio.Event()
        self._recovering = self._node.recovering
        if node_id == min(voters):
            # A cluster of one elects itself at once; in a larger one the lowest id tries
            # at once too (pre-vote makes that harmless if a leader exists), so a fresh
            # cluster has a controller without waiting out an election timeout.
            self._node.campaign()
        self.view = self._make_view()

    # -- the outside world's entry points --------------------------------------------------

    def tick_nowait(self) -> None:
        self.cast_nowait(Tick())

    def deliver(self, message: Message) -> None:
        try:
            self.cast_nowait(Inbound(message))
        except (MailboxFull, ActorClosed):
            pass  # dropped like a lost packet (Raft retransmits), or the group is stopping

    async def propose(self, command: bytes) -> Result:
        """Propose a metadata change from any node: here if this node leads the controller,
        else forwarded to the leader over the peer link (as etcd forwards proposals).
        UNAVAILABLE when no leader is known or it does not answer: retriable."""
        leader = self.view.leader
        if self._forward is None or leader in (NONE, self.node_id):
            return await self.call(Propose(command))
        return decode_result(await self._forward(leader, command))

    async def propose_here(self, command: bytes) -> Result:
        """Propose on this node only (a forwarded proposal: never forwarded again)."""
        return await self.call(Propose(command))

    @property
    def recovering(self) -> bool:
        """Repairing lost state from its leader (not voting yet): read by the node."""
        return self._recovering

    @property
    def leading(self) -> bool:
        return self.view.role is Role.LEADER

    async def hand_off(self) -> int:
        """Transfer leadership to the best follower (graceful shutdown); its id, or 0."""
        return await self.call(HandOff())

    async def wait_not_leading(self) -> None:
        view = self.view
        while view.role is Role.LEADER:
            view = await self.wait_changed(view)

    async def wait_changed(self, than: ControllerView) -> ControllerView:
        """The first view newer than ``than``."""
        while self.view is than:
            await self._changed.wait()
        return self.view

    # -- the actor -------------------------------------------------------------------------

    async def serve(self) -> None:
        node = self._node
        try:
            # The campaign of __init__: a cluster of one leads without waiting for a first
            # message or tick (its first proposals are not refused).
            while node.has_ready():
                await self._handle_ready()
            self._publish()
            while True:
                batch = await self.receive_batch(_BATCH)
                if not batch:
                    break
                for message in batch:
                    self._dispatch(message)
                while node.has_ready():
                    await self._handle_ready()
                self._in_flight = []
                self._publish()
        finally:
            # Proposals already appended wait in _pending, not in the mailbox: answer them too.
            self._fail_all(Unavailable("the controller stopped"))

    def _dispatch(self, message: ControllerMessage) -> None:
        node = self._node
        match message:
            case Tick():
                node.tick()
            case Inbound(message=m):
                node.step(m)
            case Propose():
                try:
                    index = node.propose(message.command)
                except NotLeader:
                    message.reply.fail(self._not_leader())
                except ProposalDropped as exc:
                    message.reply.fail(Unavailable(f"the controller refuses proposals now: {exc}"))
                else:
                    self._pending[index] = (node.term, message)
            case HandOff():
                message.reply.set(hand_off(node))
            case _:
                assert_never(message)

    async def _handle_ready(self) -> None:
        node = self._node
        rd = await handle_ready(
            node, self._storage, CONTROLLER_GROUP, self._transmit, on_persist=self._observers.persist
        )
        if rd.snapshot is not None:
            self._metadata = ClusterMetadata.restore(rd.snapshot.data)
        for entry in rd.committed_entries:
            result = self._metadata.apply(entry.index, entry.data)
            waiting = self._pending.pop(entry.index, None)
            if waiting is not None:
                term, request = waiting
                if term != entry.term:
                    request.reply.fail(
                        Unavailable("the controller lost leadership before the change committed")
                    )
                elif isinstance(result, SentinelError):
                    request.reply.fail(result)
                else:
                    request.reply.set(result)
        node.advance(rd)
        if rd.role is not Role.LEADER and self._pending:
            self._fail_all(self._not_leader())
        applied = self._metadata.applied_index
        if applied - self._storage.first_index() >= self._snapshot_every:
            # Everything applied is committed and its commit persisted with this Ready.
            await self._storage.compact(applied, self._metadata.snapshot())

    def _registered_address(self, node: int) -> str | None:
        broker = self._metadata.image().brokers.get(node)
        return None if broker is None else f"{broker.host}:{broker.port}"

    def _fail_all(self, error: SentinelError) -> None:
        pending, self._pending = self._pending, {}
        for _term, request in pending.values():
            request.reply.fail(error)

    def _not_leader(self) -> Unavailable:
        leader = self._node.lead
        hint = self._address_of(leader) if leader != NONE else None
        where = f"node {leader}" if leader != NONE else "unknown"
        return Unavailable(f"this node is not the controller leader (leader: {where})", leader=hint)

    def _make_view(self, previous: ControllerView | None = None) -> ControllerView:
        node = self._node
        stats = raft_stats(node, previous.stats, previous.leader) if previous is not None else RaftStats()
        return ControllerView(
            node_id=self.node_id,
            leader=node.lead,
            term=node.term,
            role=node.role,
            commit=node.log.committed,
            image=self._metadata.image(),
            stats=stats,
        )

    def _publish(self) -> None:
        old, node = self.view, self._node
        self._recovering = node.recovering
        stats = raft_stats(node, old.stats, old.leader)
        same = (old.leader, old.term, old.role, old.commit, old.stats) == (
            node.lead,
            node.term,
            node.role,
            node.log.committed,
            stats,
        )
        if same and old.image is self._metadata.image():
            return
        self.view = self._make_view(old)
        self._changed.set()
        self._changed = trio.Event()


def encode_result(result: Result) -> bytes:
    """A proposal's result for the node that forwarded it (errors travel as errors)."""
    if result is None or isinstance(result, SentinelError):
        return b""
    if isinstance(result, int):
        return json.dumps({"value": result}).encode()
    return json.dumps(
        {
            "name": result.name,
            "id": result.topic_id,
            "replicas": [list(r) for r in result.replicas],
            "retention_ms": result.config.retention_ms,
            "retention_bytes": result.config.retention_bytes,
            "created_ms": result.created_ms,
        }
    ).encode()


def decode_result(data: bytes) -> Result:
    if not data:
        return None
    try:
        t = json.loads(data)
        if "value" in t:
            return int(t["value"])
        return TopicMeta(
            str(t["name"]),
            int(t["id"]),
            tuple(tuple(int(b) for b in r) for r in t["replicas"]),
            TopicConfig(int(t["retention_ms"]), int(t["retention_bytes"])),
            int(t["created_ms"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise SentinelError(f"the controller leader answered with an unreadable result: {exc}") from None
