"""A node whose storage lost durable state (damage found at start-up, truncated) rejoins
without voting: it grants no votes, never campaigns, its leader counts neither its
acknowledgements toward commit nor its activity toward check-quorum, and it turns into an
ordinary voter only once it holds everything its leader had committed when it first heard
from it (issue 10, "Operations": never elected with a shorter log, only then counting
toward quorums)."""

from __future__ import annotations

import attrs
from helpers import Network, Peer, new_node, new_storage

from sentinel.raft.messages import HardState, Message, MsgType, Role


def recovering(peer: Peer) -> Peer:
    """Restart ``peer`` as a node that found its storage damaged (its disk as it is now)."""
    config = attrs.evolve(peer.config, recovering=True)
    return Peer.start(config, peer.storage, peer.rng)


def elect(net: Network, leader: int) -> None:
    net[leader].node.campaign()
    net.stabilize()
    assert net[leader].node.role is Role.LEADER


def propose(net: Network, leader: int, *datas: bytes) -> None:
    for data in datas:
        net[leader].node.propose(data)
    net.stabilize()


def test_a_recovering_node_grants_no_vote_and_never_campaigns() -> None:
    node = new_node(1, (1, 2, 3), recovering=True)
    assert not node.node.promotable
    for _ in range(100):
        node.node.tick()
    assert node.node.role is Role.FOLLOWER and node.node.term == 0
    node.step(Message(MsgType.VOTE, 2, 1, 5, index=10, log_term=5))
    handled = node.handle_ready()
    (answer,) = handled.after
    assert answer.type is MsgType.VOTE_RESP and answer.reject and answer.recovering
    assert node.node.vote == 0  # nothing recorded: it may have forgotten a vote in term 5


def test_its_leader_forgets_what_it_acknowledged_and_brings_it_up_to_date() -> None:
    """The leader's match for the damaged node is void (it lost what it acknowledged): the
    first message flagged recovering resets its progress and the leader repairs its log
    from wherever it ends. Once it holds the leader's commit, it votes and counts again."""
    net = Network.of((1, 2, 3), check_quorum=False)
    elect(net, 1)
    propose(net, 1, b"a", b"b")
    assert net[1].node.prs[3].match == 3
    net.crash(3)
    net.peers[3] = recovering(Peer.start(net[3].config, new_storage(), net[3].rng))
    net.crashed.discard(3)
    net.crash(2)  # node 3 is needed for any commit now
    net[1].node.propose(b"c")
    net.stabilize()
    held = net[3].storage.entries(1, net[3].storage.last_index() + 1, 1 << 20)
    assert [e.data for e in held] == [b"", b"a", b"b", b"c"]
    assert not net[3].node.recovering and net[3].node.promotable
    assert net[1].node.log.committed == 4  # counted once caught up


def test_a_recovering_node_is_never_elected_with_a_shorter_log() -> None:
    """The damaged node lost the committed entries; the other up-to-date node is down: the
    cluster must not elect the damaged node (it would lose committed entries)."""
    net = Network.of((1, 2, 3), check_quorum=False, pre_vote=False)
    elect(net, 1)
    propose(net, 1, b"a", b"b", b"c")
    committed = net[1].node.log.committed
    net.crash(1)
    net.crash(3)
    # Node 3 restarts with an empty, recovering disk and node 2 is up to date: node 3 can
    # never win (it rejects votes and never campaigns), node 2 cannot win without node 3's
    # vote -- no leader, and no committed entry is lost.
    net.peers[3] = recovering(
        Peer.start(net[3].config, new_storage(hard_state=HardState(1, 1, 0)), net[3].rng)
    )
    net.crashed.discard(3)
    for _ in range(50):
        for p in net.live():
            p.node.tick()
        net.stabilize()
    assert all(p.node.role is not Role.LEADER for p in net.live())
    # Node 1 comes back: it or node 2 leads, node 3 catches up and is a voter again.
    net.restart(1)
    for _ in range(50):
        for p in net.live():
            p.node.tick()
        net.stabilize()
    leaders = [p for p in net.live() if p.node.role is Role.LEADER]
    assert len(leaders) == 1 and leaders[0].id in (1, 2)
    assert net[3].node.log.committed >= committed and not net[3].node.recovering


def test_a_recovering_follower_does_not_keep_a_partitioned_leader_alive() -> None:
    """Check-quorum counts only voters it can trust: a leader that hears only from a
    recovering node steps down."""
    net = Network.of((1, 2, 3), check_quorum=True)
    elect(net, 1)
    propose(net, 1, b"x")
    net.peers[3] = recovering(net[3])
    net.crash(2)
    leader = net[1].node
    # The recovering node answers, but the leader must not count it as its majority.
    net.drop = lambda m: False
    for _ in range(3 * leader.config.election_tick):
        leader.tick()
        net.stabilize()
        if leader.role is not Role.LEADER:
            break
    # Node 3 may have caught up meanwhile (it holds the leader's commit): then it counts.
    assert leader.role is not Role.LEADER or not net[3].node.recovering


def test_the_flag_travels_on_the_wire() -> None:
    from sentinel.raft import format as fmt

    m = Message(MsgType.APP_RESP, 3, 1, 4, index=7, recovering=True)
    decoded, _ = fmt.decode_message(fmt.encode_message(m))
    assert decoded == m and decoded.recovering


def test_a_heartbeat_trusting_a_stale_match_does_not_break_a_recovering_node() -> None:
    """Right after the restart its leader still has the old match: the heartbeat's commit
    may lie beyond what the damaged log now holds. Recovering, the node ignores it (an
    ordinary node would rightly treat that as a broken invariant) and answers flagged."""
    net = Network.of((1, 2, 3), check_quorum=False)
    elect(net, 1)
    propose(net, 1, b"a", b"b", b"c")
    net.crash(3)
    net.peers[3] = recovering(Peer.start(net[3].config, new_storage(), net[3].rng))
    net.crashed.discard(3)
    leader = net[1].node
    for _ in range(leader.config.heartbeat_tick):
        leader.tick()  # a heartbeat to node 3 with commit min(old match 4, commit 4) = 4
    net.stabilize()
    assert not net[3].node.recovering and net[3].node.log.committed == leader.log.committed
