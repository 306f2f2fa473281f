"""Paper tests: each test checks a few sentences of the Raft paper (Ongaro and Ousterhout,
"In Search of an Understandable Consensus Algorithm", extended version) against the core,
in the style of etcd-io/raft's ``raft_paper_test.go``: set a node up, drive it with
``step`` / ``tick`` / ``propose``, check what it sends and what it asks the application to
persist and apply.

Nodes run the paper's rules (helpers.PAPER: no pre-vote, no check-quorum) unless a test
says otherwise. Every Ready goes through ``helpers.Peer.handle_ready``, which also checks
the ordering duties of core.py's docstring; the last section tests those duties directly.
"""

from __future__ import annotations

import pytest
from helpers import (
    BIG,
    Network,
    Peer,
    accept_and_reply,
    app,
    commit_noop,
    entries,
    follower_at,
    heartbeat,
    ids,
    make_candidate,
    make_leader,
    new_node,
    new_storage,
    vote_resp,
)

from sentinel.raft.core import RaftNode
from sentinel.raft.log import RaftLogError
from sentinel.raft.messages import NONE, Entry, HardState, Message, MsgType, Role

APP = MsgType.APP
APP_RESP = MsgType.APP_RESP
VOTE = MsgType.VOTE
VOTE_RESP = MsgType.VOTE_RESP
HEARTBEAT = MsgType.HEARTBEAT

ET = 10  # the election timeout of every test node, in ticks


def vote(frm: int, to: int, term: int, last_index: int = 0, last_term: int = 0) -> Message:
    return Message(VOTE, frm, to, term, index=last_index, log_term=last_term)


def app_resp(frm: int, to: int, term: int, index: int) -> Message:
    return Message(APP_RESP, frm, to, term, index=index)


def in_role(peer: Peer, role: str) -> Peer:
    """A node of 1..3 at term 1 in ``role``."""
    if role == "follower":
        return follower_at(peer, 1, 2)
    if role == "candidate":
        return make_candidate(peer)
    make_leader(peer)
    peer.drain()
    return peer


def elect(net: Network, id: int, attempts: int = 3) -> None:
    """Campaign at ``id`` until it wins (a campaign can lose to votes already cast)."""
    for _ in range(attempts):
        net[id].node.campaign()
        net.stabilize()
        if net[id].node.role is Role.LEADER:
            return
    raise AssertionError(f"node {id} was not elected: {net[id].node.status()}")


# == §5.1 Raft basics ====================================================================


@pytest.mark.parametrize("role", ["follower", "candidate", "leader"])
@pytest.mark.parametrize(("mtype", "lead"), [(APP, 2), (HEARTBEAT, 2), (VOTE, NONE)])
def test_update_term_from_message(role: str, mtype: MsgType, lead: int) -> None:
    """§5.1: "If one server's current term is smaller than the other's, then it updates its
    current term to the larger value. If a candidate or leader discovers that its term is
    out of date, it immediately reverts to follower state." A message from the leader of
    the new term also names the leader; a vote request names none."""
    p = in_role(new_node(), role)
    assert p.node.term == 1

    p.step(Message(mtype, 2, 1, 2))

    assert (p.node.term, p.node.role, p.node.lead) == (2, Role.FOLLOWER, lead)
    if mtype is not VOTE:
        assert p.node.vote == NONE  # a vote cast in term 1 is no vote in term 2
    p.drain()
    assert p.storage.hard_state.term == 2


@pytest.mark.parametrize(
    ("settings", "answers"),
    [
        # The paper's Raft drops the request: the sender learns our term from elsewhere.
        ({}, []),
        # With pre-vote or check-quorum a stale leader is answered with our term, or a node
        # stuck behind a lease would never learn of it (etcd TestFreeStuckCandidateWithCheckQuorum).
        ({"pre_vote": True, "check_quorum": True}, [app_resp(1, 2, 2, 0), app_resp(1, 2, 2, 0)]),
    ],
    ids=["paper", "prevote-checkquorum"],
)
def test_reject_stale_term_message(settings: dict[str, bool], answers: list[Message]) -> None:
    """§5.1: "If a server receives a request with a stale term number, it rejects the
    request." Nothing of a stale request is acted on: no entries, no commit, no leader, no
    vote, and the election timer is not reset."""
    p = new_node(storage=new_storage(hard_state=HardState(term=2)), **settings)
    for _ in range(3):
        p.node.tick()

    p.step(app(2, 1, 1, 0, 0, entries(1, 1), commit=1))
    p.step(heartbeat(2, 1, 1))
    p.step(vote(2, 1, 1))

    node = p.node
    assert (node.term, node.vote, node.lead, node.role) == (2, NONE, NONE, Role.FOLLOWER)
    assert (node.log.last_index(), node.log.committed, node.election_elapsed) == (0, 0, 3)
    assert p.drain_messages() == answers
    assert p.storage.hard_state == HardState(term=2)


# == §5.2 Leader election ================================================================


def test_start_as_follower() -> None:
    """§5.2: "When servers start up, they begin as followers." A restarted node too, with
    the term and vote it persisted, and no leader."""
    p = new_node()
    assert (p.node.role, p.node.term, p.node.vote, p.node.lead) == (Role.FOLLOWER, 0, NONE, NONE)

    p = new_node(storage=new_storage(entries(1, 1, 5), HardState(5, 1, 1)))
    assert (p.node.role, p.node.term, p.node.vote, p.node.lead) == (Role.FOLLOWER, 5, 1, NONE)
    assert p.node.log.committed == 1


@pytest.mark.parametrize("heartbeat_tick", [1, 3])
def test_leader_bcast_beat(heartbeat_tick: int) -> None:
    """§5.2: "Leaders send periodic heartbeats (AppendEntries RPCs that carry no log
    entries) to all followers in order to maintain their authority." One per heartbeat
    interval, to every follower, even while appends are waiting (the followers are being
    probed here, so no append may go)."""
    p = make_leader(new_node(heartbeat_tick=heartbeat_tick))
    p.drain()
    for i in range(10):
        p.node.propose(b"data %d" % i)
    p.drain()

    for _ in range(heartbeat_tick - 1):
        p.node.tick()
    assert p.drain_messages() == []
    p.node.tick()

    assert p.drain_messages() == [heartbeat(1, 2, 1, commit=0), heartbeat(1, 3, 1, commit=0)]


@pytest.mark.parametrize("role", ["follower", "candidate"])
def test_nonleader_start_election(role: str) -> None:
    """§5.2: "If a follower receives no communication over a period of time called the
    election timeout, then it ... begins an election ... increments its current term and
    transitions to candidate state. It then votes for itself and issues RequestVote RPCs in
    parallel to each of the other servers." And for a candidate: "If ... no one wins the
    election ... each candidate will time out and start a new election by incrementing its
    term and initiating another round of RequestVote RPCs." """
    p = in_role(new_node(), role)

    for _ in range(2 * ET - 1):  # the randomized timeout is below 2 * ET
        p.node.tick()
    sent = p.drain_messages()

    assert (p.node.term, p.node.role) == (2, Role.CANDIDATE)
    assert p.storage.hard_state == HardState(2, 1, 0)  # the vote for itself, durable
    assert sent == [vote(1, 2, 2), vote(1, 3, 2)]
    # The vote for itself counts: one more grant is a majority of three.
    p.step(vote_resp(2, 1, 2))
    assert p.node.role is Role.LEADER


@pytest.mark.parametrize(
    ("size", "votes", "role"),
    [
        # wins with the votes of a majority (its own included)
        (1, {}, Role.LEADER),
        (3, {2: True, 3: True}, Role.LEADER),
        (3, {2: True}, Role.LEADER),
        (5, {2: True, 3: True, 4: True, 5: True}, Role.LEADER),
        (5, {2: True, 3: True, 4: True}, Role.LEADER),
        (5, {2: True, 3: True}, Role.LEADER),
        # loses when a majority denies it
        (3, {2: False, 3: False}, Role.FOLLOWER),
        (5, {2: False, 3: False, 4: False, 5: False}, Role.FOLLOWER),
        (5, {2: True, 3: False, 4: False, 5: False}, Role.FOLLOWER),
        # neither: stays a candidate until it times out
        (3, {}, Role.CANDIDATE),
        (3, {2: False}, Role.CANDIDATE),
        (5, {2: True}, Role.CANDIDATE),
        (5, {2: False, 3: False}, Role.CANDIDATE),
        (5, {}, Role.CANDIDATE),
    ],
)
def test_leader_election_in_one_round_rpc(size: int, votes: dict[int, bool], role: Role) -> None:
    """§5.2: "A candidate wins an election if it receives votes from a majority of the
    servers in the full cluster for the same term"; it returns to follower when it cannot
    win any more; otherwise "a candidate neither wins nor loses the election" in this
    round."""
    p = new_node(1, ids(size))
    p.node.campaign()
    p.drain()
    for v, granted in votes.items():
        p.step(vote_resp(v, 1, 1, granted=granted))

    assert (p.node.role, p.node.term) == (role, 1)


@pytest.mark.parametrize(
    ("voted", "candidate", "granted"),
    [(NONE, 2, True), (NONE, 3, True), (2, 2, True), (3, 3, True), (2, 3, False), (3, 2, False)],
)
def test_follower_vote(voted: int, candidate: int, granted: bool) -> None:
    """§5.2: "Each server will vote for at most one candidate in a given term, on a
    first-come-first-served basis." A repeated request from the candidate it voted for is
    granted again (the first grant may have been lost). A grant leaves only once the vote
    is durable (a restart must not vote twice in the term)."""
    p = new_node(storage=new_storage(hard_state=HardState(term=1, vote=voted)))

    p.step(vote(candidate, 1, 1))
    h = p.handle_ready()

    assert h.messages == []
    assert h.after == [vote_resp(1, candidate, 1, granted=granted)]
    assert p.storage.hard_state.vote == (candidate if granted else voted)


@pytest.mark.parametrize("term", [1, 2])
def test_candidate_fallback(term: int) -> None:
    """§5.2: "If the leader's term (included in its RPC) is at least as large as the
    candidate's current term, then the candidate recognizes the leader as legitimate and
    returns to follower state." """
    p = make_candidate(new_node())
    assert (p.node.role, p.node.term) == (Role.CANDIDATE, 1)

    p.step(app(2, 1, term, 0, 0))

    assert (p.node.role, p.node.term, p.node.lead) == (Role.FOLLOWER, term, 2)


@pytest.mark.parametrize("role", ["follower", "candidate"])
def test_election_timeout_randomized(role: str) -> None:
    """§5.2: "election timeouts are chosen randomly from a fixed interval": over many
    rounds every timeout in [ET, 2 * ET) ticks occurs, and no other."""
    p = new_node(seed=7)
    timeouts = set()
    for _ in range(50 * ET):
        if role == "follower":
            follower_at(p, p.node.term + 1, 2)
        else:
            make_candidate(p)
        term = p.node.term
        ticks = 0
        while p.node.term == term:
            p.node.tick()
            ticks += 1
            assert ticks < 4 * ET
        p.drain()
        timeouts.add(ticks)

    assert timeouts == set(range(ET, 2 * ET))


@pytest.mark.parametrize("role", ["follower", "candidate"])
def test_election_timeout_nonconflict(role: str) -> None:
    """§5.2: randomized timeouts spread the servers out "so that in most cases only a
    single server will time out": of five nodes reset together, two or more time out on
    the same tick in at most 30% of the rounds (etcd's bound)."""
    voters = ids(5)
    peers = [new_node(v, voters, seed=100 + v) for v in voters]
    conflicts = 0
    rounds = 1000
    for _ in range(rounds):
        term = max(p.node.term for p in peers) + 1
        for p in peers:
            if role == "follower":
                follower_at(p, term, p.id % 5 + 1)
            else:
                make_candidate(p)
        start = {p.id: p.node.term for p in peers}
        timed_out = 0
        for _ in range(2 * ET):
            for p in peers:
                p.node.tick()
            timed_out = sum(1 for p in peers if p.node.term != start[p.id])
            if timed_out:
                break
        assert timed_out, "no node timed out within 2 * ET ticks"
        if timed_out > 1:
            conflicts += 1
        for p in peers:
            p.drain()

    assert conflicts / rounds <= 0.3


# == §5.3 Log replication ================================================================


def test_leader_start_replication() -> None:
    """§5.3: "The leader appends the command to its log as a new entry, then issues
    AppendEntries RPCs in parallel to each of the other servers to replicate the entry ...
    the leader includes the index and term of the entry in its log that immediately
    precedes the new entries." And it hands the entry out to be written to stable storage;
    the appends may leave before that write (Raft thesis §10.2.1)."""
    p = make_leader(new_node())
    commit_noop(p)
    li = p.node.log.last_index()

    p.node.propose(b"some data")
    h = p.handle_ready()

    assert p.node.log.last_index() == li + 1
    assert p.node.log.committed == li
    new = [Entry(1, li + 1, b"some data")]
    assert h.messages == [app(1, 2, 1, li, 1, new, commit=li), app(1, 3, 1, li, 1, new, commit=li)]
    assert h.entries == new and h.must_sync
    assert p.storage.last_index() == li + 1


def test_leader_commit_entry() -> None:
    """§5.3: "When the entry has been safely replicated ... the leader applies the entry to
    its state machine ... The leader keeps track of the highest index it knows to be
    committed, and it includes that index in future AppendEntries RPCs ... so that the
    other servers eventually find out." """
    p = make_leader(new_node())
    commit_noop(p)
    li = p.node.log.last_index()
    p.node.propose(b"some data")

    for m in p.handle_ready().messages:
        p.step(accept_and_reply(m))

    assert p.node.log.committed == li + 1
    h = p.handle_ready()
    assert h.committed == [Entry(1, li + 1, b"some data")]
    assert h.hard_state == HardState(1, 1, li + 1)
    assert [(m.to, m.type, m.commit) for m in h.messages] == [(2, APP, li + 1), (3, APP, li + 1)]


@pytest.mark.parametrize(
    ("size", "acceptors", "committed"),
    [
        (1, set(), True),
        (2, set(), False),
        (2, {2}, True),
        (3, set(), False),
        (3, {2}, True),
        (3, {2, 3}, True),
        (4, {2}, False),
        (4, {2, 3}, True),
        (4, {2, 3, 4}, True),
        (5, set(), False),
        (5, {2}, False),
        (5, {2, 3}, True),
        (5, {2, 3, 4}, True),
        (5, {2, 3, 4, 5}, True),
    ],
)
def test_leader_acknowledge_commit(size: int, acceptors: set[int], committed: bool) -> None:
    """§5.3: "A log entry is committed once the leader that created the entry has
    replicated it on a majority of the servers" (the leader's own durable copy counts)."""
    p = make_leader(new_node(1, ids(size)))
    commit_noop(p)
    li = p.node.log.last_index()
    p.node.propose(b"some data")

    for m in p.handle_ready().messages:
        if m.to in acceptors:
            p.step(accept_and_reply(m))

    assert (p.node.log.committed > li) == committed


@pytest.mark.parametrize(
    "previous",
    [[], entries(1, 2), entries(1, 1, 2), entries(1, 1)],
    ids=["empty", "2", "1-2", "1"],
)
def test_leader_commit_preceding_entries(previous: list[Entry]) -> None:
    """§5.3: "This also commits all preceding entries in the leader's log, including
    entries created by previous leaders", and they are applied in log order."""
    p = new_node(storage=new_storage(previous, HardState(term=2)))
    make_leader(p)
    assert p.node.term == 3
    p.node.propose(b"some data")

    commit_noop(p)

    li = len(previous)
    assert p.applied == [*previous, Entry(3, li + 1), Entry(3, li + 2, b"some data")]


@pytest.mark.parametrize(
    ("ents", "commit"),
    [
        (entries(1, 1, data=b"some data"), 1),
        ([Entry(1, 1, b"some data"), Entry(1, 2, b"some data2")], 2),
        ([Entry(1, 1, b"some data2"), Entry(1, 2, b"some data")], 2),
        ([Entry(1, 1, b"some data"), Entry(1, 2, b"some data2")], 1),
    ],
)
def test_follower_commit_entry(ents: list[Entry], commit: int) -> None:
    """§5.3: "Once a follower learns that a log entry is committed, it applies the entry to
    its local state machine (in log order)." """
    p = follower_at(new_node(), 1, 2)

    p.step(app(2, 1, 1, 0, 0, ents, commit=commit))
    p.drain()

    assert p.node.log.committed == commit
    assert p.applied == ents[:commit]


def test_follower_commit_from_heartbeat() -> None:
    """§5.3: the leader includes its commit index "in future AppendEntries RPCs
    (including heartbeats) so that the other servers eventually find out": a heartbeat
    alone commits what the follower holds."""
    p = follower_at(new_node(), 1, 2)
    p.step(app(2, 1, 1, 0, 0, entries(1, 1, 1)))
    p.drain()
    assert p.node.log.committed == 0

    p.step(heartbeat(2, 1, 1, commit=2))
    h = p.handle_ready()

    assert h.committed == entries(1, 1, 1)
    assert h.hard_state == HardState(1, NONE, 2)
    assert h.after == [Message(MsgType.HEARTBEAT_RESP, 1, 2, 1)]


@pytest.mark.parametrize(
    ("log_term", "index", "answer"),
    [
        # below or at the follower's commit: everything up to it matches already
        (0, 0, app_resp(1, 2, 2, 1)),
        (1, 1, app_resp(1, 2, 2, 1)),
        # matches an uncommitted entry
        (2, 2, app_resp(1, 2, 2, 2)),
        # mismatches an entry: reject, hinting at the last entry with a term <= 1
        (1, 2, Message(APP_RESP, 1, 2, 2, index=2, reject=True, reject_hint=1, log_term=1)),
        # an entry the follower does not have: reject, hinting at its last entry
        (3, 3, Message(APP_RESP, 1, 2, 2, index=3, reject=True, reject_hint=2, log_term=2)),
    ],
)
def test_follower_check_msg_app(log_term: int, index: int, answer: Message) -> None:
    """§5.3: "If the follower does not find an entry in its log with the same index and
    term, then it refuses the new entries." Otherwise it accepts them. A refusal carries
    the fast-backup hint (§5.3's closing optimisation: the term of the conflicting entry)."""
    p = new_node(storage=new_storage(entries(1, 1, 2), HardState(term=2, commit=1)))
    follower_at(p, 2, 2)

    p.step(app(2, 1, 2, index, log_term))
    h = p.handle_ready()

    assert h.messages == []
    assert h.after == [answer]


@pytest.mark.parametrize(
    ("index", "log_term", "ents", "log", "unstable"),
    [
        (2, 2, entries(3, 3), entries(1, 1, 2, 3), entries(3, 3)),
        (1, 1, entries(2, 3, 4), entries(1, 1, 3, 4), entries(2, 3, 4)),
        (0, 0, entries(1, 1), entries(1, 1, 2), []),
        (0, 0, entries(1, 3), entries(1, 3), entries(1, 3)),
    ],
)
def test_follower_append_entries(
    index: int, log_term: int, ents: list[Entry], log: list[Entry], unstable: list[Entry]
) -> None:
    """§5.3: "If an existing entry conflicts with a new one (same index but different
    terms), delete the existing entry and all that follow it; append any new entries not
    already in the log" — and only those: an append that holds nothing new rewrites
    nothing. The new entries are handed out to be written to stable storage, replacing the
    stored suffix from their first index."""
    p = new_node(storage=new_storage(entries(1, 1, 2)))
    follower_at(p, 2, 2)

    p.step(app(2, 1, 2, index, log_term, ents))

    assert p.log_entries() == log
    assert p.handle_ready().entries == unstable
    assert p.storage.entries(1, p.storage.last_index() + 1, BIG) == log


FIGURE_7_LEADER = entries(1, 1, 1, 1, 4, 4, 5, 5, 6, 6, 6)
FIGURE_7_FOLLOWERS = {
    "a": entries(1, 1, 1, 1, 4, 4, 5, 5, 6, 6),
    "b": entries(1, 1, 1, 1, 4),
    "c": entries(1, 1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6),
    "d": entries(1, 1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7),
    "e": entries(1, 1, 1, 1, 4, 4, 4, 4),
    "f": entries(1, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3),
}


@pytest.mark.parametrize("follower_log", FIGURE_7_FOLLOWERS.values(), ids=FIGURE_7_FOLLOWERS.keys())
def test_leader_sync_follower_log(follower_log: list[Entry]) -> None:
    """§5.3, Figure 7: "the leader handles inconsistencies by forcing the followers' logs
    to duplicate its own": each of the six follower logs (a)-(f), missing entries, holding
    extra uncommitted ones, or both, ends equal to the leader's, with the same commit.
    With the fast-backup hint each needs at most one rejected append.

    The group has three voters: node 3 takes no part but its vote, because (c) and (d)
    hold logs more up to date than the leader's and refuse to elect it."""
    leader_term = 8
    net = Network.of(
        ids(3),
        {
            1: new_storage(FIGURE_7_LEADER, HardState(term=leader_term, commit=len(FIGURE_7_LEADER))),
            2: new_storage(follower_log, HardState(term=leader_term - 1)),
        },
    )
    net.crash(3)
    lead, follower = net[1], net[2]

    lead.node.campaign()
    net.stabilize()
    lead.step(vote_resp(3, 1, leader_term + 1))
    assert lead.node.role is Role.LEADER
    lead.node.propose(b"some data")
    net.stabilize()

    assert follower.log_entries() == lead.log_entries()
    assert follower.node.log.committed == lead.node.log.committed == lead.node.log.last_index()
    rejects = [m for m in net.delivered if m.type is APP_RESP and m.reject]
    assert len(rejects) <= 1, rejects


# == §5.4.1 Election restriction =========================================================


@pytest.mark.parametrize(("ents", "term"), [(entries(1, 1), 2), (entries(1, 1, 2), 3)])
def test_vote_request(ents: list[Entry], term: int) -> None:
    """§5.4.1: "The RequestVote RPC ... includes information about the candidate's log":
    the index and term of its last entry; and it goes to every other server."""
    p = new_node()
    p.step(app(2, 1, term - 1, 0, 0, ents))
    p.drain()

    for _ in range(2 * ET - 1):
        p.node.tick()

    last = ents[-1]
    assert p.drain_messages() == [vote(1, v, term, last.index, last.term) for v in (2, 3)]


@pytest.mark.parametrize(
    ("ents", "last_term", "last_index", "granted"),
    [
        # same last term: the longer log is more up to date
        (entries(1, 1), 1, 1, True),
        (entries(1, 1), 1, 2, True),
        (entries(1, 1, 1), 1, 1, False),
        # the candidate's last term is higher: up to date whatever the lengths
        (entries(1, 1), 2, 1, True),
        (entries(1, 1), 2, 2, True),
        (entries(1, 1, 1), 2, 1, True),
        # the voter's last term is higher: not up to date whatever the lengths
        (entries(1, 2), 1, 1, False),
        (entries(1, 2), 1, 2, False),
        (entries(1, 2, 2), 1, 1, False),
        (entries(1, 1, 1), 1, 1, False),
    ],
)
def test_voter(ents: list[Entry], last_term: int, last_index: int, granted: bool) -> None:
    """§5.4.1: "the voter denies its vote if its own log is more up-to-date than that of
    the candidate ... If the logs have last entries with different terms, then the log
    with the later term is more up-to-date. If the logs end with the same term, then
    whichever log is longer is more up-to-date." """
    p = new_node(1, (1, 2), new_storage(ents))

    p.step(vote(2, 1, 3, last_index, last_term))

    assert p.drain_messages() == [vote_resp(1, 2, 3, granted=granted)]


# == §5.4.2 Committing entries from previous terms =======================================


@pytest.mark.parametrize(("acked", "committed"), [(1, 0), (2, 0), (3, 3)])
def test_leader_only_commits_log_from_current_term(acked: int, committed: int) -> None:
    """§5.4.2: "Raft never commits log entries from previous terms by counting replicas.
    Only log entries from the leader's current term are committed by counting replicas."
    Entries 1 (term 1) and 2 (term 2) on both voters of two commit nothing; entry 3 (the
    new leader's, term 3) on both commits 1-3."""
    p = new_node(1, (1, 2), new_storage(entries(1, 1, 2), HardState(term=2)))
    make_leader(p)
    p.drain()
    p.node.propose(b"")
    p.drain()

    p.step(app_resp(2, 1, 3, acked))

    assert p.node.log.committed == committed


def test_figure_8() -> None:
    """§5.4.2, Figure 8: "a leader cannot immediately conclude that an entry from a
    previous term is committed once it is stored on a majority of servers."

    The figure's situation is built in storage: (a)-(b) left entry 2 of term 2 on S1 and
    S2, and entry 2 of term 3 on S5, which S3 and S4 voted for in term 3. (c) S5 is down;
    S1 is elected in term 4 and copies its entry 2 to S3 and S4 (its own entry of term 4,
    index 3, is held back by the network): entry 2 of term 2 is on a majority (S1, S3, S4).
    S1 must not commit it. (d) S1 crashes; S5 is elected in term 5 with the votes of S2, S3
    and S4, and replaces entry 2 everywhere. Had S1 committed and applied entry 2, two
    different entries would be applied at index 2; the network checks that none ever is.
    (e) The restarted S1 ends with S5's log."""
    settings = {"max_size_per_msg": 1}  # one entry per append, as the figure draws them
    net = Network.of(
        ids(5),
        {
            1: new_storage(entries(1, 1, 2), HardState(term=2, vote=1, commit=1)),
            2: new_storage(entries(1, 1, 2), HardState(term=2, vote=1, commit=1)),
            3: new_storage(entries(1, 1), HardState(term=3, vote=5, commit=1)),
            4: new_storage(entries(1, 1), HardState(term=3, vote=5, commit=1)),
            5: new_storage(entries(1, 1, 3), HardState(term=3, vote=5, commit=1)),
        },
        **settings,
    )
    s1 = net[1]

    # (c) S1 leads term 4; appends of index 3 reach no follower that could take them.
    net.crash(5)
    net.drop = lambda m: (
        m.type is APP and any(e.index >= 3 for e in m.entries) and net[m.to].node.log.last_index() >= 2
    )
    elect(net, 1)
    assert s1.node.term == 4
    holders = [p.id for p in net.live() if p.node.log.term_or_zero(2) == 2]
    assert holders == [1, 2, 3, 4]
    assert s1.node.status().progress[3].match == s1.node.status().progress[4].match == 2
    assert s1.node.log.committed == 1, "an entry of term 2 was committed by counting replicas"

    # (d) S1 crashes; S5 wins term 5 and overwrites entry 2.
    net.crash(1)
    net.drop = lambda m: False
    net.restart(5)
    elect(net, 5)
    assert net[5].node.term == 5
    assert net[5].node.log.committed == 3
    assert net.applied_at[2] == Entry(3, 2)

    # (e) S1 comes back and its term-2 and term-4 entries are replaced.
    net.restart(1)
    net.stabilize()
    net[5].node.tick()  # a heartbeat reaches S1, which then catches up
    net.stabilize()
    logs = {p.id: p.log_entries() for p in net.live()}
    assert all(log == logs[5] for log in logs.values()), logs
    assert logs[5] == [Entry(1, 1), Entry(3, 2), Entry(5, 3)]


# == The ordering duties of core.py's docstring ==========================================


def test_vote_grant_leaves_only_after_persist() -> None:
    """core.py duty 3 (Raft thesis §3.8): a vote grant promises that the voter will not
    vote again in the term, even after a crash, so it leaves only with the persisted vote:
    in ``messages_after_persist``, in the Ready whose hard state holds the vote."""
    p = new_node()

    p.step(vote(2, 1, 1))
    h = p.handle_ready()

    assert h.messages == []
    assert h.after == [vote_resp(1, 2, 1)]
    assert h.hard_state == HardState(1, 2, 0) and h.must_sync


def test_append_ack_leaves_only_after_persist() -> None:
    """core.py duty 3 (Raft thesis §3.8): an append acknowledgement promises the entries
    survive a crash (the leader counts them toward a majority), so it leaves only in
    ``messages_after_persist``, in the Ready that hands the entries out to persist."""
    p = follower_at(new_node(), 1, 2)

    p.step(app(2, 1, 1, 0, 0, entries(1, 1, 1)))
    h = p.handle_ready()

    assert h.messages == []
    assert h.after == [app_resp(1, 2, 1, 2)]
    assert h.entries == entries(1, 1, 1) and h.must_sync


def test_leader_entries_count_only_after_its_persist() -> None:
    """core.py duty 5 (Raft thesis §10.2.1): the leader sends its appends before its own
    write, but its own copy counts toward the majority only once ``advance()`` reports the
    write. Here follower 2's acknowledgement is stepped before the leader's Ready (as a
    follower faster than the leader's disk would be, were the leader not held to handle
    its Ready first): one durable copy of three is no majority, so nothing commits until
    the leader's own persist."""
    p = make_leader(new_node())
    commit_noop(p)
    index = p.node.propose(b"x")
    assert p.node.status().progress[1].match == index - 1

    p.step(app_resp(2, 1, 1, index))
    assert p.node.log.committed == index - 1

    h = p.handle_ready()
    assert h.entries == [Entry(1, index, b"x")] and h.committed == []
    assert p.node.status().progress[1].match == index
    assert p.node.log.committed == index
    assert p.handle_ready().committed == [Entry(1, index, b"x")]


def test_candidate_vote_counts_only_after_its_persist() -> None:
    """core.py duty 5 (§5.2, thesis §3.8): a candidate's vote for itself is a vote like
    any other and counts only once durable, so no leader exists whose own vote a crash
    could take back. A grant stepped before the candidate's Ready is one vote of the two
    it needs; ``advance()`` adds its own."""
    p = new_node()
    p.node.campaign()
    p.step(vote_resp(2, 1, 1))
    assert p.node.role is Role.CANDIDATE

    h = p.handle_ready()

    assert h.role is Role.CANDIDATE and h.hard_state == HardState(1, 1, 0)
    assert p.node.role is Role.LEADER


def test_heartbeat_commit_never_beyond_match() -> None:
    """core.py / etcd lagging_commit: a heartbeat carries ``min(match, commit)``: a
    follower that does not hold the leader's committed entries must not be told they are
    committed (it would commit whatever it holds at those indices). Follower 3 never
    acknowledged anything; follower 2 acknowledged everything."""
    p = make_leader(new_node())
    for m in p.handle_ready().messages:
        if m.to == 2:
            p.step(accept_and_reply(m))
    p.node.propose(b"x")
    for m in p.drain_messages():
        if m.type is APP and m.to == 2:
            p.step(accept_and_reply(m))
    p.drain()
    assert p.node.log.committed == 2

    p.node.tick()
    beats = p.drain_messages()

    assert beats == [heartbeat(1, 2, 1, commit=2), heartbeat(1, 3, 1, commit=0)]
    # The lagging follower takes its heartbeat without being pushed past its log.
    f3 = new_node(3)
    f3.step(beats[1])
    assert (f3.node.log.committed, f3.node.lead) == (0, 1)


def test_new_leader_appends_empty_entry_at_once() -> None:
    """§8 and §5.4.2: "a leader ... commit[s] a blank no-op entry into the log at the start
    of its term": the new leader appends an empty entry of its term at once and sends it,
    so the entries of earlier terms commit with it."""
    p = new_node(storage=new_storage(entries(1, 1, 1), HardState(term=1)))
    make_leader(p)
    assert p.node.term == 2

    h = p.handle_ready()

    noop = Entry(2, 3, b"")
    assert h.entries == [noop]
    assert h.messages == [app(1, 2, 2, 2, 1, [noop]), app(1, 3, 2, 2, 1, [noop])]
    for m in h.messages:
        p.step(accept_and_reply(m))
    commit_noop(p)
    assert p.applied == [*entries(1, 1, 1), noop]


def test_single_voter_commits_on_its_own_persist() -> None:
    """A group of one: its own durable copy is the majority, so an entry commits in the
    Ready after the one that persists it (never in the same one), and the node elects
    itself once its own vote is durable."""
    p = new_node(1, (1,))
    p.node.campaign()

    h = p.handle_ready()
    assert h.role is Role.CANDIDATE and h.hard_state == HardState(1, 1, 0)
    assert p.node.role is Role.LEADER

    h = p.handle_ready()
    assert h.entries == [Entry(1, 1)] and h.committed == [] and h.messages == []
    h = p.handle_ready()
    assert h.committed == [Entry(1, 1)] and h.hard_state == HardState(1, 1, 1)

    p.node.propose(b"a")
    p.node.propose(b"b")
    h = p.handle_ready()
    assert h.entries == [Entry(1, 2, b"a"), Entry(1, 3, b"b")] and h.committed == []
    h = p.handle_ready()
    assert h.committed == [Entry(1, 2, b"a"), Entry(1, 3, b"b")]
    assert p.storage.hard_state == HardState(1, 1, 3)
    assert not p.node.has_ready()


def test_nothing_between_ready_and_advance() -> None:
    """core.py: "Between ready() and advance() nothing else may be called on the node":
    every input raises, so what was handed out and what is durable stay one and the same;
    and ``advance`` takes only the Ready it handed out."""
    p = make_leader(new_node())
    node: RaftNode = p.node
    rd = node.ready()

    for call in (
        lambda: node.tick(),
        lambda: node.step(heartbeat(2, 1, 1)),
        lambda: node.propose(b"x"),
        lambda: node.campaign(),
        lambda: node.transfer_leadership(2),
        lambda: node.report_unreachable(2),
        lambda: node.report_snapshot(2, True),
        lambda: node.ready(),
    ):
        with pytest.raises(RuntimeError):
            call()
    assert not node.has_ready()
    with pytest.raises(RuntimeError):
        node.advance(type(rd)())
    node.advance(rd)
    node.tick()


def test_follower_commit_never_beyond_its_log() -> None:
    """§5.3 (AppendEntries receiver, step 5): "set commitIndex = min(leaderCommit, index of
    last new entry)": an append proves the follower's log matches only up to its last
    entry, so a larger leader commit does not commit the follower's older suffix."""
    p = new_node(storage=new_storage(entries(1, 1, 1, 1)))
    follower_at(p, 2, 2)

    p.step(app(2, 1, 2, 1, 1, entries(2, 1), commit=3))

    assert p.node.log.committed == 2
    with pytest.raises(RaftLogError):
        p.node.log.commit_to(4)
