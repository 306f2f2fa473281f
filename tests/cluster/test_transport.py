"""Peer links on real loopback sockets: delivery both ways, coalescing, reconnection after
a peer restarts, and hostile connections refused without harm. Each wait is bounded by a
generous deadline that only keeps a broken test from hanging: nothing asserts speed."""

from __future__ import annotations

import itertools
from collections import defaultdict

import pytest
import trio

from sentinel.cluster import frames
from sentinel.cluster.transport import PeerNetwork
from sentinel.raft.messages import Entry, Message, MsgType

DEADLINE = 20.0
CLUSTER = 42


class Inbox:
    def __init__(self) -> None:
        self.items: list[tuple[int, Message]] = []
        self._changed = trio.Event()

    def deliver(self, group: int, m: Message) -> None:
        self.items.append((group, m))
        self._changed.set()

    async def wait_for(self, count: int) -> None:
        with trio.fail_after(DEADLINE):
            while len(self.items) < count:
                self._changed = trio.Event()
                await self._changed.wait()


def free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def heartbeat(frm: int, to: int, commit: int) -> Message:
    return Message(MsgType.HEARTBEAT, frm, to, 1, commit=commit)


async def start(
    nursery: trio.Nursery, node: int, ports: list[int], inbox: Inbox, **kw: object
) -> PeerNetwork:
    peers = {i + 1: ("127.0.0.1", p) for i, p in enumerate(ports)}
    network = PeerNetwork(node, CLUSTER, peers, inbox.deliver, **kw)  # type: ignore[arg-type]
    await nursery.start(network.run, "127.0.0.1", ports[node - 1])
    return network


async def test_three_nodes_exchange_messages_of_many_groups_both_ways_coalesced() -> None:
    ports = free_ports(3)
    inboxes = defaultdict(Inbox)
    async with trio.open_nursery() as nursery:
        nets = {i: await start(nursery, i, ports, inboxes[i]) for i in (1, 2, 3)}
        for group in range(50):
            for frm in (1, 2, 3):
                for to in (1, 2, 3):
                    if frm != to:
                        nets[frm].send(group, heartbeat(frm, to, group))
        for i in (1, 2, 3):
            await inboxes[i].wait_for(100)
            assert sorted((g, m.frm) for g, m in inboxes[i].items) == sorted(
                (g, f) for g in range(50) for f in (1, 2, 3) if f != i
            )
        # Per link, in order, and far fewer frames than messages (coalesced).
        for i in (1, 2, 3):
            from_1 = [g for g, m in inboxes[i].items if m.frm == 1]
            assert from_1 == sorted(from_1)
        assert sum(s.frames_sent for s in nets[1].statistics()) < 100
        nursery.cancel_scope.cancel()


async def test_idle_groups_heartbeats_cost_a_group_id_each_after_the_first_round() -> None:
    ports = free_ports(2)
    inbox1, inbox2 = Inbox(), Inbox()
    groups = 500
    async with trio.open_nursery() as nursery:
        net1 = await start(nursery, 1, ports, inbox1)
        await start(nursery, 2, ports, inbox2)
        sent_after: list[int] = []
        for rnd in range(4):
            for group in range(groups):
                net1.send(group, heartbeat(1, 2, 7))
            await inbox2.wait_for(groups * (rnd + 1))
            sent_after.append(net1.links[2].statistics().bytes_sent)
        # The first round carries term and commit (25 bytes a group); every later round of
        # the same idle groups, 8 bytes a group plus the frame's few bytes.
        assert sent_after[0] > groups * 25
        for before, after in itertools.pairwise(sent_after):
            assert after - before <= groups * 8 + 100
        assert all(m == heartbeat(1, 2, 7) and g == i % groups for i, (g, m) in enumerate(inbox2.items))
        nursery.cancel_scope.cancel()


async def test_a_restarted_peer_is_reconnected_and_traffic_resumes() -> None:
    ports = free_ports(2)
    inbox1, inbox2 = Inbox(), Inbox()
    async with trio.open_nursery() as nursery:
        net1 = await start(nursery, 1, ports, inbox1)
        with trio.CancelScope() as peer_scope:
            async with trio.open_nursery() as inner:
                net2 = await start(inner, 2, ports, inbox2)
                net1.send(0, heartbeat(1, 2, 1))
                await inbox2.wait_for(1)
                net2.send(0, heartbeat(2, 1, 1))
                await inbox1.wait_for(1)
                peer_scope.cancel()
        # Node 2 is down: node 1 keeps queueing (bounded); node 2 comes back on its port.
        for commit in range(2, 12):
            net1.send(0, heartbeat(1, 2, commit))
        inbox2b = Inbox()
        net2 = await start(nursery, 2, ports, inbox2b)
        await inbox2b.wait_for(1)
        net2.send(0, heartbeat(2, 1, 99))
        await inbox1.wait_for(2)
        assert inbox1.items[-1][1].commit == 99
        # Whatever node 1 sent while node 2 was down arrives in order (or was dropped by a
        # broken connection: Raft retransmits), never out of order.
        commits = [m.commit for _, m in inbox2b.items]
        assert commits == sorted(commits)
        assert net1.links[2].statistics().connects >= 2
        nursery.cancel_scope.cancel()


async def test_garbage_and_strangers_on_the_peer_port_are_refused_without_harm() -> None:
    ports = free_ports(2)
    inbox1, inbox2 = Inbox(), Inbox()
    async with trio.open_nursery() as nursery:
        net1 = await start(nursery, 1, ports, inbox1)
        await start(nursery, 2, ports, inbox2)
        # Node 2 accepts node 1 only. A stranger with garbage, another cluster, a wrong id:
        for payload in (
            b"\xff" * 64,
            frames.encode_hello(CLUSTER + 1, 1, 2),
            frames.encode_hello(CLUSTER, 9, 2),
            frames.encode_hello(CLUSTER, 1, 3),
        ):
            with trio.fail_after(DEADLINE):
                stranger = await trio.open_tcp_stream("127.0.0.1", ports[1])
                await stranger.send_all(payload)
                assert await stranger.receive_some(100) == b""  # closed on us
                await stranger.aclose()
        net1.send(3, heartbeat(1, 2, 5))
        await inbox2.wait_for(1)
        assert inbox2.items == [(3, heartbeat(1, 2, 5))]
        nursery.cancel_scope.cancel()


async def test_a_down_peer_costs_bounded_memory_messages_over_the_bound_are_dropped() -> None:
    ports = free_ports(2)
    async with trio.open_nursery() as nursery:
        net1 = await start(nursery, 1, ports, Inbox(), queue_limit_bytes=10_000)
        big = Message(MsgType.APP, 1, 2, 1, index=0, entries=[Entry(1, 1, b"x" * 3000)])
        for _ in range(10):
            net1.send(0, big)
        stats = net1.links[2].statistics()
        assert stats.queued_messages == 3 and stats.dropped_messages == 7
        nursery.cancel_scope.cancel()


async def test_a_peer_request_is_answered_and_an_error_travels_back_typed() -> None:
    from sentinel.errors import AlreadyExists

    ports = free_ports(2)
    async with trio.open_nursery() as nursery:
        net1 = await start(nursery, 1, ports, Inbox())
        net2 = await start(nursery, 2, ports, Inbox())

        async def handler(peer: int, method: int, payload: bytes) -> bytes:
            if method == 2:
                raise AlreadyExists(f"{payload.decode()} exists")
            return b"%d:%d:" % (peer, method) + payload

        net2.handler = handler
        with trio.fail_after(DEADLINE):
            assert await net1.request(2, 1, b"hello") == b"1:1:hello"
            with pytest.raises(AlreadyExists, match="topic exists"):
                await net1.request(2, 2, b"topic")
        nursery.cancel_scope.cancel()


async def test_a_request_to_a_down_peer_fails_unavailable_in_bounded_time() -> None:
    from sentinel.errors import Unavailable

    ports = free_ports(2)
    async with trio.open_nursery() as nursery:
        net1 = await start(nursery, 1, ports, Inbox())
        with (
            trio.fail_after(DEADLINE),
            pytest.raises(Unavailable, match=r"node 2 is not connected \(down, or starting\)"),
        ):
            await net1.request(2, 1, b"x", reply_within=1000)
        nursery.cancel_scope.cancel()


async def test_a_silent_peer_times_out_and_one_that_dies_fails_its_requests_at_once() -> None:
    from sentinel.errors import Unavailable

    ports = free_ports(2)
    async with trio.open_nursery() as nursery:
        net1 = await start(nursery, 1, ports, Inbox())
        with trio.CancelScope() as peer_scope:
            async with trio.open_nursery() as inner:
                net2 = await start(inner, 2, ports, Inbox())
                handling = trio.Event()

                async def handler(peer: int, method: int, payload: bytes) -> bytes:
                    handling.set()
                    await trio.sleep_forever()
                    raise AssertionError("unreachable")

                net2.handler = handler
                with trio.fail_after(DEADLINE):
                    with pytest.raises(Unavailable, match=r"node 2 did not answer within 0\.2 s"):
                        await net1.request(2, 1, b"x", reply_within=0.2)

                    async def kill_peer() -> None:
                        await handling.wait()
                        peer_scope.cancel()

                    handling = trio.Event()
                    nursery.start_soon(kill_peer)
                    # Waits far longer than the test's deadline unless the broken connection
                    # fails it.
                    with pytest.raises(Unavailable, match="connection to node 2 broke before it answered"):
                        await net1.request(2, 1, b"y", reply_within=1000)
        nursery.cancel_scope.cancel()
