"""Shared helpers for the Raft core tests: building nodes on MemoryStorage, handling a
Ready exactly as core.py's docstring orders it, and a tiny in-memory network.

``handle_ready`` is the reference application loop. Besides doing the work it checks the
contract's promises on every Ready, so every test that goes through it checks them too:

* no response that promises durability (vote grant, append acknowledgement) is in
  ``ready.messages``, the part that may leave before the persist;
* when ``messages_after_persist`` leave, the storage holds what they promise: a vote grant
  for term T to candidate C finds ``(term T, vote C)`` durable, an append acknowledgement
  of index I finds the log durable up to I;
* committed entries are handed out in index order, without gaps, and never beyond the
  durable commit a restart would see;

and the ``Network`` checks State Machine Safety (§5.4.3) as it goes: no two entries are
ever applied at one index by any node, including nodes that crashed since.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence

import attrs

from sentinel.raft.core import Config, RaftNode, Ready
from sentinel.raft.messages import Entry, HardState, Message, MsgType, Role, Snapshot
from sentinel.raft.storage import MemoryStorage

# The paper's Raft: no pre-vote, no check-quorum (both are thesis extensions that change
# what a node does with a higher-term message). Tests of those rules turn them on.
PAPER = {"pre_vote": False, "check_quorum": False}

# Responses that promise durable state (Raft thesis §3.8): they must never leave before
# the persist of the Ready that carries them.
PROMISES = frozenset({MsgType.APP_RESP, MsgType.VOTE_RESP})

BIG = 1 << 60  # a byte limit that cuts nothing
# More Readys in a row than any test needs: a node that never runs out is a bug, reported
# as a failure rather than a hang.
MAX_READYS = 100


def ids(n: int) -> tuple[int, ...]:
    return tuple(range(1, n + 1))


def entries(first_index: int, *terms: int, data: bytes = b"") -> list[Entry]:
    """Entries of ``terms`` from ``first_index`` on (etcd's ``index(i).terms(...)``)."""
    return [Entry(t, first_index + i, data) for i, t in enumerate(terms)]


def new_storage(
    ents: Sequence[Entry] = (), hard_state: HardState | None = None, snapshot: Snapshot | None = None
) -> MemoryStorage:
    storage = MemoryStorage()
    if snapshot is not None:
        storage.apply_snapshot(snapshot)
    storage.append(list(ents))
    if hard_state is not None:
        storage.set_hard_state(hard_state)
    return storage


def new_node(
    id: int = 1,
    voters: Sequence[int] = (1, 2, 3),
    storage: MemoryStorage | None = None,
    *,
    seed: int | None = None,
    **config: object,
) -> Peer:
    """A node with the paper's rules (PAPER) unless ``config`` says otherwise."""
    settings: dict[str, object] = {**PAPER, **config}
    cfg = Config(id=id, voters=tuple(voters), **settings)  # type: ignore[arg-type]
    storage = storage if storage is not None else MemoryStorage()
    rng = random.Random(seed if seed is not None else id)
    return Peer.start(cfg, storage, rng)


@attrs.define
class Handled:
    """What one Ready asked for, as the application saw it."""

    messages: list[Message]
    after: list[Message]
    entries: list[Entry]
    committed: list[Entry]
    hard_state: HardState | None
    snapshot: Snapshot | None
    must_sync: bool
    role: Role

    @property
    def sent(self) -> list[Message]:
        return self.messages + self.after


@attrs.define(eq=False)
class Peer:
    """One node and its "disk"."""

    node: RaftNode
    storage: MemoryStorage
    config: Config
    rng: random.Random
    applied: list[Entry] = attrs.Factory(list)
    applied_index: int = 0

    @property
    def id(self) -> int:
        return self.node.id

    @classmethod
    def start(cls, config: Config, storage: MemoryStorage, rng: random.Random) -> Peer:
        # What the snapshot covers is applied already (the core hands out what follows it).
        return cls(RaftNode(config, storage, rng), storage, config, rng, [], storage.first_index() - 1)

    def step(self, m: Message) -> None:
        self.node.step(m)

    def handle_ready(self) -> Handled:
        """Handle one Ready in the order core.py's docstring gives, checking its promises."""
        node, storage = self.node, self.storage
        rd: Ready = node.ready()
        # 1. ready.messages may leave now: none of them may promise durable state.
        for m in rd.messages:
            assert m.type not in PROMISES, f"{m!r} promises durable state but may leave before the persist"
        # 2. Persist: snapshot, entries (replacing the suffix from entries[0]), hard state.
        if rd.snapshot is not None:
            storage.apply_snapshot(rd.snapshot)
        if rd.entries:
            storage.append(rd.entries)
        if rd.hard_state is not None:
            storage.set_hard_state(rd.hard_state)
        # 3. Only now do the promises leave: check the disk keeps each of them.
        for m in rd.messages_after_persist:
            check_promise(storage, m)
        # 4. Apply: in order, without gaps, never beyond what the disk says is committed.
        if rd.snapshot is not None:
            self.applied_index = max(self.applied_index, rd.snapshot.index)
        for e in rd.committed_entries:
            assert e.index == self.applied_index + 1, (
                f"node {self.id} applies {e!r} after {self.applied_index}"
            )
            assert e.index <= storage.hard_state.commit, (
                f"node {self.id} applies {e!r} beyond its durable commit {storage.hard_state.commit}"
            )
            self.applied_index = e.index
            self.applied.append(e)
        handled = Handled(
            messages=list(rd.messages),
            after=list(rd.messages_after_persist),
            entries=list(rd.entries),
            committed=list(rd.committed_entries),
            hard_state=rd.hard_state,
            snapshot=rd.snapshot,
            must_sync=rd.must_sync,
            role=rd.role,
        )
        # 5. Advance: the core learns the persist happened.
        node.advance(rd)
        return handled

    def drain(self) -> list[Handled]:
        """Handle Readys until there is none (the node gets no input meanwhile)."""
        out = []
        while self.node.has_ready():
            out.append(self.handle_ready())
            assert len(out) < MAX_READYS, f"node {self.id} never runs out of Readys"
        return out

    def drain_messages(self) -> list[Message]:
        return [m for h in self.drain() for m in h.sent]

    def log_entries(self) -> list[Entry]:
        log = self.node.log
        return log.slice(log.first_index(), log.last_index() + 1, BIG)


def check_promise(storage: MemoryStorage, m: Message) -> None:
    if m.reject:
        return
    if m.type is MsgType.VOTE_RESP:
        hs = storage.hard_state
        assert (hs.term, hs.vote) == (m.term, m.to), (
            f"{m!r} sent with the durable hard state at {hs}: the vote is not yet durable"
        )
    elif m.type is MsgType.APP_RESP:
        assert m.index <= storage.last_index(), (
            f"{m!r} acknowledges past the durable last index {storage.last_index()}"
        )


def accept_and_reply(m: Message) -> Message:
    """A follower's acknowledgement of an append whose entries it took (etcd's helper)."""
    assert m.type is MsgType.APP, m
    return Message(MsgType.APP_RESP, m.to, m.frm, m.term, index=m.index + len(m.entries))


def vote_resp(frm: int, to: int, term: int, *, granted: bool = True) -> Message:
    return Message(MsgType.VOTE_RESP, frm, to, term, reject=not granted)


def heartbeat(frm: int, to: int, term: int, commit: int = 0) -> Message:
    return Message(MsgType.HEARTBEAT, frm, to, term, commit=commit)


def app(
    frm: int, to: int, term: int, index: int, log_term: int, ents: Sequence[Entry] = (), commit: int = 0
) -> Message:
    return Message(
        MsgType.APP, frm, to, term, index=index, log_term=log_term, commit=commit, entries=list(ents)
    )


def follower_at(peer: Peer, term: int, lead: int) -> Peer:
    """Make ``peer`` a follower of ``lead`` at ``term`` the way the network would: a
    heartbeat from that leader."""
    peer.step(heartbeat(lead, peer.id, term))
    peer.drain()
    assert (peer.node.role, peer.node.term, peer.node.lead) == (Role.FOLLOWER, term, lead)
    return peer


def make_candidate(peer: Peer) -> Peer:
    """Campaign (no pre-vote) and persist the vote for itself."""
    peer.node.campaign()
    peer.drain()
    return peer


def make_leader(peer: Peer) -> Peer:
    """Campaign and win with the fewest grants (the lowest other ids). The new leader's
    first Ready (its empty entry and the appends carrying it) is left unhandled, except in
    a group of one, which becomes leader while its own vote's Ready is handled."""
    node = peer.node
    node.campaign()
    peer.drain()  # the own vote counts once persisted
    quorum = len(node.voters) // 2 + 1
    for v in node.peers[: quorum - 1]:
        if node.role is Role.LEADER:
            break
        peer.step(vote_resp(v, peer.id, node.term))
    assert node.role is Role.LEADER, node.status()
    return peer


def commit_noop(peer: Peer) -> None:
    """Replicate a new leader's empty entry to every follower and commit it (etcd's
    commitNoopEntry): every append is acknowledged until the leader is quiet."""
    assert peer.node.role is Role.LEADER
    for _ in range(MAX_READYS):
        if not peer.node.has_ready():
            break
        for m in peer.handle_ready().messages:
            if m.type is MsgType.APP:
                peer.step(accept_and_reply(m))
    assert peer.node.log.committed == peer.node.log.last_index()


class Network:
    """Nodes of one group on a loss-free, in-order in-memory network, delivering in rounds:
    every node handles its Readys (``handle_ready``: the contract), then every message sent
    is delivered. ``drop`` filters messages out; messages to a crashed or absent node are
    lost. ``applied_at`` holds every entry any node ever applied, by index."""

    def __init__(self, peers: Iterable[Peer]) -> None:
        self.peers: dict[int, Peer] = {p.id: p for p in peers}
        self.crashed: set[int] = set()
        self.queue: deque[Message] = deque()
        self.drop: Callable[[Message], bool] = lambda m: False
        self.delivered: list[Message] = []
        self.applied_at: dict[int, Entry] = {}

    @classmethod
    def of(
        cls,
        voters: Sequence[int],
        storages: dict[int, MemoryStorage] | None = None,
        **config: object,
    ) -> Network:
        storages = storages or {}
        return cls(new_node(v, voters, storages.get(v), **config) for v in voters)

    def __getitem__(self, id: int) -> Peer:
        return self.peers[id]

    def live(self) -> list[Peer]:
        return [p for i, p in sorted(self.peers.items()) if i not in self.crashed]

    def process_readys(self) -> bool:
        busy = False
        for p in self.live():
            for _ in range(MAX_READYS):
                if not p.node.has_ready():
                    break
                busy = True
                handled = p.handle_ready()
                self.queue.extend(handled.sent)
                for e in handled.committed:
                    seen = self.applied_at.setdefault(e.index, e)
                    assert seen == e, f"State Machine Safety: node {p.id} applies {e!r}, another {seen!r}"
        return busy

    def deliver(self) -> bool:
        busy = bool(self.queue)
        msgs, self.queue = list(self.queue), deque()
        for m in msgs:
            if m.to not in self.peers or m.to in self.crashed or m.frm in self.crashed or self.drop(m):
                continue
            self.delivered.append(m)
            self.peers[m.to].step(m)
        return busy

    def stabilize(self, max_rounds: int = 1000) -> None:
        for _ in range(max_rounds):
            ready = self.process_readys()
            sent = self.deliver()
            if not (ready or sent):
                return
        raise AssertionError(f"the network did not settle in {max_rounds} rounds")

    def crash(self, id: int) -> None:
        """The node stops; its storage (what it persisted) survives."""
        self.crashed.add(id)
        self.queue = deque(m for m in self.queue if m.to != id and m.frm != id)

    def restart(self, id: int) -> None:
        old = self.peers[id]
        self.crashed.discard(id)
        self.peers[id] = Peer.start(old.config, old.storage, old.rng)
