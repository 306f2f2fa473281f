"""The Raft consensus core: one group's state machine, on logical time, with no IO.

The application drives a ``RaftNode`` with four inputs — ``tick()`` (logical time),
``step(message)`` (a message from a peer), ``propose(data)`` and
``transfer_leadership(to)`` — and takes its effects out as a ``Ready``. Handling a Ready
has an order, and the safety of the protocol depends on it:

1. ``ready.messages`` may be sent at once (before persisting): the leader's appends and
   heartbeats, vote requests, snapshots and timeout-nows promise nothing about this node's
   own durable state (a leader's entries count toward a quorum only once its own persist
   is reported, Raft thesis §10.2.1; a candidate's vote for itself only counts once
   persisted, below).
2. Persist ``ready.snapshot``, then ``ready.entries`` (writing entry *i* discards every
   persisted entry at or after *i*: that is how a conflicting suffix is replaced), then
   ``ready.hard_state`` — atomically, or in that order. ``ready.must_sync`` says whether
   an fsync is needed before going on (entries, snapshot, term or vote changed; a commit
   change alone is not).
3. Only now send ``ready.messages_after_persist``: the responses that promise durability
   (vote grants — one vote per term survives a crash — and append acknowledgements — an
   acknowledged entry survives a crash). Holding them here, not trusting the caller to
   sort messages, is how the core enforces the rule.
4. Apply ``ready.snapshot`` (if any), then ``ready.committed_entries`` in order.
5. Call ``advance(ready)``. Only then does the core learn that the persist happened: the
   leader counts its own entries toward the commit quorum and a candidate counts its own
   vote (self-addressed messages are stepped here, never before).

Between ``ready()`` and ``advance()`` nothing else may be called on the node (each input
raises ``RuntimeError``): the application queues messages and proposals meanwhile. That
keeps "what was handed out" and "what is durable" one and the same.

Roles switch by swapping the step and tick functions (``_step_role``, ``_tick_role``),
never by testing the role everywhere. The rules implemented, with their sources, are in
the method docstrings; the paper tests in ``tests/raft`` cite the paper's sections.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import attrs

from sentinel.raft.log import RaftLog
from sentinel.raft.messages import (
    NONE,
    Entry,
    HardState,
    Message,
    MsgType,
    Role,
    Snapshot,
)
from sentinel.raft.progress import Progress, ProgressState, quorum_index
from sentinel.raft.storage import LogCompacted, RaftStorage

_APP = MsgType.APP
_APP_RESP = MsgType.APP_RESP
_VOTE = MsgType.VOTE
_VOTE_RESP = MsgType.VOTE_RESP
_PRE_VOTE = MsgType.PRE_VOTE
_PRE_VOTE_RESP = MsgType.PRE_VOTE_RESP
_HEARTBEAT = MsgType.HEARTBEAT
_HEARTBEAT_RESP = MsgType.HEARTBEAT_RESP
_SNAP = MsgType.SNAP
_TIMEOUT_NOW = MsgType.TIMEOUT_NOW
_FROM_LEADER = frozenset({_APP, _HEARTBEAT, _SNAP})

MIB = 1024 * 1024


class RaftError(Exception):
    """Base of the errors the core raises at its callers."""


class NotLeader(RaftError):
    """A proposal or transfer reached a node that is not the leader. ``leader`` is the
    leader this node knows of (NONE if none): the hint a client retries against."""

    def __init__(self, leader: int) -> None:
        self.leader = leader
        super().__init__(f"not the leader (leader: {leader if leader != NONE else 'unknown'})")


class ProposalDropped(RaftError):
    """The leader refuses proposals for now (a leadership transfer is in progress, or too
    much is uncommitted); retry later, possibly at another leader."""


class RaftMessageError(RaftError):
    """A message that cannot belong to this group (unknown sender, wrong recipient)."""


@attrs.frozen
class Config:
    """One node's settings for one group. Defaults are RAFT-NOTES.md's: a 100 ms tick
    (the application's choice) with a heartbeat every tick and an election timeout of
    10 ticks; 1 MiB per append message; 256 appends and 32 MiB in flight per follower."""

    id: int
    voters: tuple[int, ...]
    election_tick: int = 10
    heartbeat_tick: int = 1
    max_size_per_msg: int = 1 * MIB
    max_inflight_msgs: int = 256
    max_inflight_bytes: int = 32 * MIB
    # Committed entries handed out per Ready (at least one).
    max_committed_size_per_ready: int = 64 * MIB
    # Bytes of proposals the leader holds uncommitted before it drops new ones (0: no limit).
    max_uncommitted_bytes: int = 0
    pre_vote: bool = True
    check_quorum: bool = True
    # The index the application has applied already (it keeps its state elsewhere, e.g. a
    # partition log whose entries are the data): committed entries up to here are not
    # handed out again after a restart.
    applied: int = 0
    # This node's storage lost durable state (damage found at start-up, truncated): it may
    # have forgotten entries it acknowledged and the vote it cast. Until it has caught up
    # with a leader's commit index it neither votes nor campaigns, and its leader does not
    # count it toward any quorum (it says so in every message). ``recovering`` turns False
    # by itself once caught up; the application persists that.
    recovering: bool = False

    def validate(self) -> None:
        if self.id == NONE:
            raise ValueError("node id must be >= 1")
        if self.id not in self.voters:
            raise ValueError(f"node {self.id} is not among the voters {self.voters}")
        if len(set(self.voters)) != len(self.voters) or NONE in self.voters:
            raise ValueError(f"voters must be distinct ids >= 1: {self.voters}")
        if self.heartbeat_tick < 1:
            raise ValueError("heartbeat_tick must be >= 1")
        if self.election_tick <= self.heartbeat_tick:
            raise ValueError("election_tick must be greater than heartbeat_tick")
        if self.max_size_per_msg < 1 or self.max_inflight_msgs < 1 or self.max_inflight_bytes < 0:
            raise ValueError("message and in-flight limits must be positive")


@attrs.frozen
class FollowerStatus:
    match: int
    next: int
    state: str
    recent_active: bool


@attrs.frozen
class Status:
    """An immutable picture of a node, for metrics and admin commands."""

    id: int
    term: int
    vote: int
    leader: int
    role: Role
    commit: int
    applied: int
    first_index: int
    last_index: int
    lead_transferee: int
    progress: dict[int, FollowerStatus]


class Ready:
    """What the application must do next, in the order the module docstring gives."""

    __slots__ = (
        "committed_entries",
        "entries",
        "hard_state",
        "leader",
        "messages",
        "messages_after_persist",
        "must_sync",
        "role",
        "snapshot",
    )

    def __init__(self) -> None:
        self.hard_state: HardState | None = None  # None: unchanged since the last Ready
        self.entries: list[Entry] = []
        self.snapshot: Snapshot | None = None
        self.committed_entries: list[Entry] = []
        self.messages: list[Message] = []
        self.messages_after_persist: list[Message] = []
        self.must_sync = False
        self.leader = NONE
        self.role = Role.FOLLOWER

    @property
    def append_from(self) -> int:
        """The index from which persisted entries are replaced (0: nothing to append)."""
        return self.entries[0].index if self.entries else 0

    def __repr__(self) -> str:
        return (
            f"Ready(hs={self.hard_state} entries={self.entries} snap={self.snapshot} "
            f"committed={self.committed_entries} msgs={self.messages} after={self.messages_after_persist})"
        )


class RaftNode:
    def __init__(self, config: Config, storage: RaftStorage, rng: random.Random) -> None:
        config.validate()
        self.config = config
        self.id = config.id
        self.voters = tuple(sorted(config.voters))
        self.peers = tuple(v for v in self.voters if v != self.id)
        self.recovering = config.recovering
        self.promotable = not config.recovering
        self._catch_up_target = -1  # the leader commit a recovering node must reach (-1: unknown)
        self._rng = rng
        self.log = RaftLog(storage)
        hs = storage.initial_state()
        if hs.commit:
            if hs.commit > self.log.last_index():
                raise ValueError(
                    f"persisted commit {hs.commit} is beyond the last index {self.log.last_index()}"
                )
            self.log.commit_to(hs.commit)
        if config.applied:
            self.log.applied_to(min(config.applied, self.log.committed))
        self.term = hs.term
        self.vote = hs.vote
        self._persisted_hs = HardState(hs.term, hs.vote, self.log.committed)
        self.lead = NONE
        self.role = Role.FOLLOWER
        self.prs: dict[int, Progress] = {}
        self._votes: dict[int, bool] = {}
        self._msgs: list[Message] = []
        self._msgs_after: list[Message] = []
        self._self_steps: list[Message] = []
        self._outstanding: Ready | None = None
        self._pending_bcast = False  # new entries to send to followers (at ready())
        self._bcast_commit = False  # the commit advanced: tell followers (at ready())
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = config.election_tick
        self.lead_transferee = NONE
        self.uncommitted_bytes = 0
        self.elections = 0  # real candidacies started (pre-votes not counted): for metrics
        self._step_role: Callable[[Message], None] = self._step_follower
        self._tick_role: Callable[[], None] = self._tick_election
        self._become_follower(self.term, NONE)

    # == inputs ============================================================================

    def tick(self) -> None:
        """One unit of logical time (the application's RaftTicker turns wall time into these)."""
        self._check_no_outstanding_ready()
        self._tick_role()

    def campaign(self) -> None:
        """Start an election now (with pre-vote when configured), as an election timeout would."""
        self._check_no_outstanding_ready()
        if self.role is not Role.LEADER:
            self._campaign(transfer=False)

    def propose(self, data: bytes) -> int:
        """Append ``data`` to the log as the leader; returns its index. The entry is
        committed when a Ready hands it out in ``committed_entries`` with the term
        ``self.term`` had at this call; a different term at that index means it was lost."""
        self._check_no_outstanding_ready()
        if self.role is not Role.LEADER:
            raise NotLeader(self.lead)
        if self.lead_transferee != NONE:
            raise ProposalDropped(f"leadership is being transferred to node {self.lead_transferee}")
        limit = self.config.max_uncommitted_bytes
        if limit and self.uncommitted_bytes and self.uncommitted_bytes + len(data) > limit:
            raise ProposalDropped(
                f"the leader holds {self.uncommitted_bytes} uncommitted bytes (limit {limit})"
            )
        return self._append_entry(data)

    def transfer_leadership(self, to: int) -> None:
        """Hand leadership to ``to`` (etcd's MsgTransferLeader, Raft thesis §3.10): stop
        accepting proposals, bring ``to`` up to date, then tell it to campaign at once. The
        transfer is abandoned after one election timeout."""
        self._check_no_outstanding_ready()
        if self.role is not Role.LEADER:
            raise NotLeader(self.lead)
        if to not in self.voters:
            raise ValueError(f"node {to} is not a voter of this group")
        if to == self.id or to == self.lead_transferee:
            return
        self.lead_transferee = to
        self.election_elapsed = 0  # the transfer's deadline: one election timeout from now
        pr = self.prs[to]
        if pr.match == self.log.last_index():
            self._send_timeout_now(to)
        else:
            self._send_append(to)

    def report_unreachable(self, peer: int) -> None:
        """The transport failed to deliver to ``peer``: stop pipelining to it blindly."""
        self._check_no_outstanding_ready()
        pr = self.prs.get(peer)
        if self.role is Role.LEADER and pr is not None and pr.state is ProgressState.REPLICATE:
            pr.become_probe()

    def report_snapshot(self, peer: int, ok: bool) -> None:
        """The transport finished sending a snapshot to ``peer`` (or failed to)."""
        self._check_no_outstanding_ready()
        pr = self.prs.get(peer)
        if self.role is not Role.LEADER or pr is None or pr.state is not ProgressState.SNAPSHOT:
            return
        if not ok:
            pr.pending_snapshot = 0
        pr.become_probe()
        # Wait for the follower's answer (or the next heartbeat) before probing again.
        pr.paused = True

    def step(self, m: Message) -> None:
        """A message from a peer. Term rules first (§5.1; pre-vote and the leader lease of
        check-quorum, Raft thesis §9.6), then the vote rules (§5.2, §5.4.1), then the role."""
        self._check_no_outstanding_ready()
        if m.to != self.id or (m.frm not in self.voters):
            raise RaftMessageError(f"message {m!r} is not for node {self.id} of voters {self.voters}")
        t = m.type
        if m.term > self.term:
            if t is _VOTE or t is _PRE_VOTE:
                in_lease = (
                    self.config.check_quorum
                    and self.lead != NONE
                    and self.election_elapsed < self.config.election_tick
                )
                if in_lease and not m.transfer:
                    # We heard from a live leader within an election timeout: a node that
                    # campaigns now is partitioned or disruptive, not a replacement.
                    return
            if t is _PRE_VOTE or (t is _PRE_VOTE_RESP and not m.reject):
                pass  # pre-votes never change a term: a grant carries the term to campaign at
            elif t in _FROM_LEADER:
                self._become_follower(m.term, m.frm)
            else:
                self._become_follower(m.term, NONE)
        elif m.term < self.term:
            if (self.config.check_quorum or self.config.pre_vote) and (t is _HEARTBEAT or t is _APP):
                # A leader of an old term: our term in the answer makes it step down. Without
                # this a node stuck behind a lease or a pre-vote could never be freed.
                self._respond(Message(_APP_RESP, self.id, m.frm, self.term))
            elif t is _PRE_VOTE:
                self._respond(Message(_PRE_VOTE_RESP, self.id, m.frm, self.term, reject=True))
            return
        if t is _VOTE or t is _PRE_VOTE:
            self._handle_vote_request(m)
        else:
            self._step_role(m)

    # == output ============================================================================

    def has_ready(self) -> bool:
        if self._outstanding is not None:
            return False
        log = self.log
        if (
            self._msgs
            or self._msgs_after
            or self._self_steps
            or log.unstable_entries
            or log.unstable_snapshot is not None
            or log.committed > log.applied
            or self._pending_bcast
            or self._bcast_commit
        ):
            return True
        hs = self._persisted_hs
        return hs.term != self.term or hs.vote != self.vote or hs.commit != log.committed

    def ready(self) -> Ready:
        self._check_no_outstanding_ready()
        self._flush_broadcasts()
        log = self.log
        rd = Ready()
        rd.entries = list(log.unstable_entries)
        rd.snapshot = log.unstable_snapshot
        prev = self._persisted_hs
        if prev.term != self.term or prev.vote != self.vote or prev.commit != log.committed:
            rd.hard_state = HardState(self.term, self.vote, log.committed)
            rd.must_sync = prev.term != self.term or prev.vote != self.vote
        if rd.entries or rd.snapshot is not None:
            rd.must_sync = True
        if rd.snapshot is None and log.committed > log.applied:
            rd.committed_entries = log.next_committed_entries(self.config.max_committed_size_per_ready)
        if self.recovering:
            for m in self._msgs:
                m.recovering = True
            for m in self._msgs_after:
                m.recovering = True
        rd.messages = self._msgs
        rd.messages_after_persist = self._msgs_after
        self._msgs = []
        self._msgs_after = []
        rd.leader = self.lead
        rd.role = self.role
        self._outstanding = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """The application did everything ``rd`` asked (persisted, sent, applied)."""
        if rd is not self._outstanding:
            raise RuntimeError("advance() must be given the Ready returned by the last ready()")
        self._outstanding = None
        log = self.log
        if rd.hard_state is not None:
            self._persisted_hs = rd.hard_state
        if rd.snapshot is not None:
            log.stable_snapshot_to(rd.snapshot.index)
        if rd.entries:
            last = rd.entries[-1]
            log.stable_to(last.index, last.term)
        if rd.committed_entries:
            log.applied_to(rd.committed_entries[-1].index)
            if self.role is Role.LEADER and self.uncommitted_bytes:
                done = sum(len(e.data) for e in rd.committed_entries)
                self.uncommitted_bytes = max(0, self.uncommitted_bytes - done)
        if self.role is Role.LEADER and rd.entries:
            # §10.2.1: the leader's own entries count toward the quorum once durable.
            if self.prs[self.id].maybe_update(self._persisted_index()) and self._maybe_commit():
                self._bcast_commit = True
        steps = self._self_steps
        if steps:
            self._self_steps = []
            for m in steps:
                self.step(m)

    def status(self) -> Status:
        progress = {}
        if self.role is Role.LEADER:
            progress = {
                i: FollowerStatus(pr.match, pr.next, pr.state.name.lower(), pr.recent_active)
                for i, pr in self.prs.items()
            }
        return Status(
            id=self.id,
            term=self.term,
            vote=self.vote,
            leader=self.lead,
            role=self.role,
            commit=self.log.committed,
            applied=self.log.applied,
            first_index=self.log.first_index(),
            last_index=self.log.last_index(),
            lead_transferee=self.lead_transferee,
            progress=progress,
        )

    @property
    def leader_ready(self) -> bool:
        """A leader whose own term has an entry committed: only then does it know the whole
        committed prefix (§5.4.2, §8) and may it serve reads and trust replicated state."""
        return self.role is Role.LEADER and self.log.term_or_zero(self.log.committed) == self.term

    # == roles =============================================================================

    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.config.election_tick + self._rng.randrange(
            self.config.election_tick
        )
        self.lead_transferee = NONE
        self._votes = {}
        self.prs = {}
        self._pending_bcast = False
        self._bcast_commit = False
        self.uncommitted_bytes = 0

    def _become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self.lead = lead
        self.role = Role.FOLLOWER
        self._step_role = self._step_follower
        self._tick_role = self._tick_election

    def _become_pre_candidate(self) -> None:
        # Neither the term nor the vote changes: a pre-candidacy that fails leaves no trace
        # (etcd-io/etcd#8334: it must forget the leader, though, or no one is elected).
        self._votes = {}
        self.lead = NONE
        self.prs = {}
        self.role = Role.PRE_CANDIDATE
        self._step_role = self._step_candidate
        self._tick_role = self._tick_election

    def _become_candidate(self) -> None:
        self.elections += 1
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE
        self._step_role = self._step_candidate
        self._tick_role = self._tick_election

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.lead = self.id
        self.role = Role.LEADER
        self._step_role = self._step_leader
        self._tick_role = self._tick_heartbeat
        cfg = self.config
        next_index = self.log.last_index() + 1
        self.prs = {
            v: Progress(next_index, cfg.max_inflight_msgs, cfg.max_inflight_bytes) for v in self.voters
        }
        own = self.prs[self.id]
        own.match = self._persisted_index()
        own.become_replicate()
        own.recent_active = True
        # §5.4.2 / §8: an entry of the new term, so that the entries of earlier terms can
        # commit with it (a leader never commits them by counting replicas).
        self._append_entry(b"")

    def _persisted_index(self) -> int:
        log = self.log
        if log.unstable_snapshot is not None:
            return log.storage.last_index()
        return log.unstable_offset - 1

    # == elections =========================================================================

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self._campaign(transfer=False)

    def _campaign(self, *, transfer: bool) -> None:
        if not self.promotable:
            return
        if self.config.pre_vote and not transfer:
            self._become_pre_candidate()
            self._request_votes(_PRE_VOTE, self.term + 1, transfer=False)
        else:
            self._become_candidate()
            self._request_votes(_VOTE, self.term, transfer=transfer)

    def _request_votes(self, kind: MsgType, term: int, *, transfer: bool) -> None:
        response = _PRE_VOTE_RESP if kind is _PRE_VOTE else _VOTE_RESP
        # Our own vote is a self-addressed response stepped in advance(): it counts only
        # once the vote (term, vote) it stands for is durable.
        self._self_steps.append(Message(response, self.id, self.id, term))
        last_index = self.log.last_index()
        last_term = self.log.last_term()
        for peer in self.peers:
            self._msgs.append(
                Message(kind, self.id, peer, term, index=last_index, log_term=last_term, transfer=transfer)
            )

    def _handle_vote_request(self, m: Message) -> None:
        """§5.2: one vote per term, first come first served; §5.4.1: only for a log at least
        as up to date as ours. A pre-vote is answered as the vote would be at its term,
        without changing anything here."""
        is_pre = m.type is _PRE_VOTE
        if self.recovering:
            # Its log may lack entries it once acknowledged, and its vote may be forgotten.
            response = _PRE_VOTE_RESP if is_pre else _VOTE_RESP
            self._respond(Message(response, self.id, m.frm, self.term, reject=True))
            return
        can_vote = (
            self.vote == m.frm or (self.vote == NONE and self.lead == NONE) or (is_pre and m.term > self.term)
        )
        response = _PRE_VOTE_RESP if is_pre else _VOTE_RESP
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            # The grant carries the candidate's term: a pre-vote grant must match the term
            # the pre-candidate will campaign at.
            self._respond(Message(response, self.id, m.frm, m.term))
            if not is_pre:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self._respond(Message(response, self.id, m.frm, self.term, reject=True))

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        if t in _FROM_LEADER:
            # A leader exists for our term (§5.2: the candidate returns to follower).
            self._become_follower(m.term, m.frm)
            self._step_follower(m)
            return
        expected = _PRE_VOTE_RESP if self.role is Role.PRE_CANDIDATE else _VOTE_RESP
        if t is not expected:
            return
        self._votes.setdefault(m.frm, not m.reject)
        granted = sum(1 for v in self._votes.values() if v)
        rejected = len(self._votes) - granted
        quorum = len(self.voters) // 2 + 1
        if granted >= quorum:
            if self.role is Role.PRE_CANDIDATE:
                self._become_candidate()
                self._request_votes(_VOTE, self.term, transfer=False)
            else:
                self._become_leader()
        elif len(self.voters) - rejected < quorum:
            self._become_follower(self.term, NONE)

    # == follower ==========================================================================

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t is _APP:
            self.election_elapsed = 0
            self.lead = m.frm
            if self.recovering and self._catch_up_target < 0:
                self._catch_up_target = m.commit
            self._handle_append(m)
            if self.recovering:
                self._check_caught_up()
        elif t is _HEARTBEAT:
            self.election_elapsed = 0
            self.lead = m.frm
            if not self.recovering:
                # A recovering node's leader may still believe in entries it lost (its match
                # is stale until our flagged answer resets it): take commits from appends only.
                self.log.commit_to(m.commit)
            self._respond(Message(_HEARTBEAT_RESP, self.id, m.frm, self.term))
        elif t is _SNAP:
            self.election_elapsed = 0
            self.lead = m.frm
            if self.recovering and self._catch_up_target < 0 and m.snapshot is not None:
                self._catch_up_target = m.snapshot.index
            self._handle_snapshot(m)
            if self.recovering:
                self._check_caught_up()
        elif t is _TIMEOUT_NOW:
            # The leader hands over: campaign at once, skipping pre-vote (the others still
            # hear from their leader and would refuse it).
            self._campaign(transfer=True)

    def _check_caught_up(self) -> None:
        """A recovering node holds every entry its leader had committed when it first heard
        from it: nothing it acknowledged before the damage can be missing any more."""
        if 0 <= self._catch_up_target <= self.log.committed:
            self.recovering = False
            self.promotable = True

    def _handle_append(self, m: Message) -> None:
        """§5.3: accept entries only after the (index, log_term) consistency check, replacing
        only a conflicting suffix; commit up to what this message proves matches."""
        log = self.log
        if m.index < log.committed:
            # Old news: everything up to our commit matches the leader's log already.
            self._respond(Message(_APP_RESP, self.id, m.frm, self.term, index=log.committed))
            return
        last_new = log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            self._respond(Message(_APP_RESP, self.id, m.frm, self.term, index=last_new))
            return
        # Fast backup: the largest index at or below the probe whose term is <= the
        # leader's term there: the leader can skip every entry of a term we do not share.
        hint_index, hint_term = log.find_conflict_by_term(min(m.index, log.last_index()), m.log_term)
        self._respond(
            Message(
                _APP_RESP,
                self.id,
                m.frm,
                self.term,
                index=m.index,
                reject=True,
                reject_hint=hint_index,
                log_term=hint_term,
            )
        )

    def _handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        if snap is None:
            return
        log = self.log
        if snap.index <= log.committed:
            ack = log.committed  # we are past it already
        elif log.match_term(snap.index, snap.term):
            log.commit_to(snap.index)  # we hold its last entry: the snapshot adds nothing
            ack = log.committed
        else:
            log.restore(snap)
            ack = snap.index
        self._respond(Message(_APP_RESP, self.id, m.frm, self.term, index=ack))

    # == leader ============================================================================

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        cfg = self.config
        if self.election_elapsed >= cfg.election_tick:
            self.election_elapsed = 0
            if cfg.check_quorum:
                # Step down if a majority has not been heard from in an election timeout:
                # a partitioned leader must not keep clients waiting on it.
                if not self._quorum_active():
                    self._become_follower(self.term, NONE)
                    return
            if self.lead_transferee != NONE:
                self.lead_transferee = NONE  # the transfer did not finish in time
            for pr in self.prs.values():
                if pr.state is ProgressState.SNAPSHOT:
                    # A snapshot not acknowledged within an election timeout was lost:
                    # probe again (which sends a new one if still needed).
                    pr.become_probe()
        if self.heartbeat_elapsed >= cfg.heartbeat_tick:
            self.heartbeat_elapsed = 0
            committed = self.log.committed
            for peer in self.peers:
                pr = self.prs[peer]
                # Never a commit beyond the follower's match: it may not hold those entries.
                self._msgs.append(
                    Message(_HEARTBEAT, self.id, peer, self.term, commit=min(pr.match, committed))
                )

    def _quorum_active(self) -> bool:
        active = 0
        for i, pr in self.prs.items():
            if i == self.id or (pr.recent_active and not pr.recovering):
                active += 1
            if i != self.id:
                pr.recent_active = False
        return active >= len(self.voters) // 2 + 1

    def _append_entry(self, data: bytes) -> int:
        log = self.log
        index = log.last_index() + 1
        log.unstable_entries.append(Entry(self.term, index, data))
        self.uncommitted_bytes += len(data)
        self._pending_bcast = True
        return index

    def _flush_broadcasts(self) -> None:
        """Send what proposals and commit changes since the last Ready call for: one append
        per follower for any number of proposals (coalescing is why this waits for ready())."""
        if self.role is not Role.LEADER:
            self._pending_bcast = self._bcast_commit = False
            return
        if not (self._pending_bcast or self._bcast_commit):
            return
        send_if_empty = self._bcast_commit
        self._pending_bcast = self._bcast_commit = False
        for peer in self.peers:
            if self._send_append(peer, send_if_empty=send_if_empty):
                while self._send_append(peer, send_if_empty=False):
                    pass

    def _send_append(self, to: int, *, send_if_empty: bool = True) -> bool:
        pr = self.prs[to]
        if pr.is_paused():
            return False
        log = self.log
        prev_index = pr.next - 1
        try:
            prev_term = log.term(prev_index)
            if pr.state is ProgressState.REPLICATE and pr.inflights.full():
                # Only a heartbeat response lets an append through a full window: it must
                # carry no entries, or a slow follower's window grows on every heartbeat.
                entries = []
            else:
                entries = log.entries(pr.next, self.config.max_size_per_msg)
        except LogCompacted:
            return self._send_snapshot(to, pr)
        if not entries and not send_if_empty:
            return False
        self._msgs.append(
            Message(
                _APP,
                self.id,
                to,
                self.term,
                index=prev_index,
                log_term=prev_term,
                commit=log.committed,
                entries=entries,
            )
        )
        if entries:
            pr.sent_entries(entries[-1].index, sum(len(e.data) for e in entries))
        else:
            pr.sent_entries(prev_index, 0)
        return True

    def _send_snapshot(self, to: int, pr: Progress) -> bool:
        if not pr.recent_active:
            return False  # not heard from this term: it may be down; do not ship a snapshot blind
        snap = self.log.storage.snapshot()
        pr.become_snapshot(snap.index)
        self._msgs.append(Message(_SNAP, self.id, to, self.term, snapshot=snap))
        return True

    def _send_timeout_now(self, to: int) -> None:
        self._msgs.append(Message(_TIMEOUT_NOW, self.id, to, self.term))

    def _maybe_commit(self) -> bool:
        """§5.3/§5.4.2: commit the highest index stored on a majority, but only if its entry
        is of the current term (Figure 8): earlier terms' entries commit with it."""
        log = self.log
        index = quorum_index([0 if pr.recovering else pr.match for pr in self.prs.values()])
        if index > log.committed and log.term_or_zero(index) == self.term:
            log.commit_to(index)
            return True
        return False

    def _step_leader(self, m: Message) -> None:
        pr = self.prs.get(m.frm)
        if pr is None:
            return
        if m.recovering and not pr.recovering:
            # The follower lost what it had acknowledged: what we know of its log (its
            # match) is void. Probe it again from our end, as if it were new.
            pr.match = 0
            pr.become_probe()
            # A rejection carried in this very message then walks it back (fast backup).
            rejected = m.type is _APP_RESP and m.reject
            pr.next = m.index + 1 if rejected else self.log.last_index() + 1
            if not rejected:
                self._send_append(m.frm)
        pr.recovering = m.recovering
        t = m.type
        if t is _APP_RESP:
            pr.recent_active = True
            if m.reject:
                self._handle_append_reject(m, pr)
            else:
                self._handle_append_ack(m, pr)
        elif t is _HEARTBEAT_RESP:
            pr.recent_active = True
            # Lets one append through even a full window, so a window of dropped appends is
            # found out (the follower rejects the next one) instead of stalling forever.
            pr.paused = False
            if pr.match < self.log.last_index() or pr.state is ProgressState.PROBE:
                self._send_append(m.frm)

    def _handle_append_reject(self, m: Message, pr: Progress) -> None:
        next_probe = m.reject_hint
        if m.log_term > 0:
            # The follower's log has term m.log_term at the hint: skip to the last index
            # of ours with a term at most that, one probe per term instead of per entry.
            next_probe = self.log.find_conflict_by_term(m.reject_hint, m.log_term)[0]
        if pr.maybe_decrease_to(m.index, next_probe):
            if pr.state is ProgressState.REPLICATE:
                pr.become_probe()
            self._send_append(m.frm)

    def _handle_append_ack(self, m: Message, pr: Progress) -> None:
        if not (pr.maybe_update(m.index) or (pr.match == m.index and pr.state is ProgressState.PROBE)):
            return
        if pr.state is ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state is ProgressState.SNAPSHOT:
            if pr.match + 1 >= self.log.first_index():
                pr.become_replicate()
        else:
            pr.inflights.free_le(m.index)
        if self._maybe_commit():
            self._bcast_commit = True
        while self._send_append(m.frm, send_if_empty=False):
            pass
        if m.frm == self.lead_transferee and pr.match == self.log.last_index():
            self._send_timeout_now(m.frm)

    # == helpers ===========================================================================

    def _respond(self, m: Message) -> None:
        self._msgs_after.append(m)

    def _check_no_outstanding_ready(self) -> None:
        if self._outstanding is not None:
            raise RuntimeError("a Ready is outstanding: handle it and call advance() first")
