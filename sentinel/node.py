"""Node: the supervisor of one broker process (``sentinel run``).

::

    Node.run (node supervisor nursery)
    ├─ Store            storage supervisor: WalWriter, MemtableOwner, Compactor
    ├─ Broker           topics, partition logs, retention
    ├─ GroupCoordinator consumer groups and committed offsets
    ├─ MetricsServer    GET /metrics (its own thread)
    └─ GrpcFrontEnd     grpclib on an asyncio thread, bridged into Trio

Start-up is ordered (each child reports ``started`` before the next starts) and a failure
anywhere fails the node. Shutdown (:meth:`Node.stop`, or SIGINT/SIGTERM in ``sentinel run``)
runs in a fixed order under a shield: stop accepting RPCs and let in-flight ones finish
(bounded grace period), close the coordinator and the broker, then close the storage
engine, which writes and fsyncs the WAL. Every acknowledged write was already durable.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Protocol

import attrs
import trio
from crc32c import crc32c
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from sentinel.broker.broker import RETENTION_CHECK_SECONDS, Broker, BrokerOptions, ObsoleteData
from sentinel.broker.coordinator import GroupCoordinator
from sentinel.broker.legacy import check_no_legacy_topics, import_legacy_topics
from sentinel.broker.replica import PartitionReplica, ReadRunner
from sentinel.cluster import metadata as md
from sentinel.cluster.controller import CONTROLLER_GROUP, Controller, encode_result
from sentinel.cluster.group import RaftObservers, RaftStats
from sentinel.cluster.ticker import DEFAULT_TICK_SECONDS, RaftTicker
from sentinel.cluster.transport import PeerNetwork
from sentinel.errors import CorruptionError, InvalidArgument, SentinelError
from sentinel.metrics import Metrics
from sentinel.raft.core import Config
from sentinel.raft.lsm_storage import LsmRaftStorage
from sentinel.raft.messages import NONE, Message
from sentinel.server.bridge import AsyncioThread
from sentinel.server.frontend import GrpcFrontEnd
from sentinel.server.handlers import Handlers
from sentinel.server.service import SentinelService
from sentinel.storage.manifest import NUM_LEVELS
from sentinel.storage.options import StorageOptions, SyncMode
from sentinel.storage.processes import WorkerProcess
from sentinel.storage.store import Store

logger = logging.getLogger(__name__)
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Peer requests (sentinel/cluster/transport.py): a follower forwarding a controller proposal.
METHOD_PROPOSE = 1
# Longest a graceful stop waits for each stage before moving on (the storage engine has
# its own bound): SIGTERM always ends the process in bounded time.
STOP_STAGE_SECONDS = 10.0
# A leadership transfer is abandoned after one election timeout (10 ticks of 100 ms): wait
# a little longer than that for all of this node's groups to move.
HAND_OFF_SECONDS = 2.0
# Worker threads fetches read in: enough to overlap a few cold reads, bounded so a burst of
# consumers cannot take every core from the event loop.
READ_THREADS = 4
# How often a recovering node checks whether all its groups have caught up.
RECOVERY_CHECK_SECONDS = 0.5


@attrs.frozen
class NodeConfig:
    node_id: int = 1
    host: str = "127.0.0.1"
    port: int = 9092
    data_dir: Path = Path("sentinel-data")
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9100  # 0 picks a free port; -1 disables /metrics
    sync: SyncMode = SyncMode.INTERVAL
    auto_create_topics: bool = True
    default_partitions: int = 1
    default_retention_ms: int = 0
    default_retention_bytes: int = 0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    memtable_bytes: int = 8 * 1024 * 1024
    group_min_session_timeout_ms: int = 6_000  # Kafka's group.min.session.timeout.ms
    group_max_session_timeout_ms: int = 1_800_000  # Kafka's group.max.session.timeout.ms
    accept_data_loss: bool = False  # let recovery truncate at corruption (reported) instead of refusing
    # The cluster (etcd's initial-cluster): every node's peer address, by node id. Empty: a
    # cluster of one (this node), the same code path with one-voter groups.
    peers: Mapping[int, tuple[str, int]] = attrs.field(factory=dict)
    peer_host: str = "127.0.0.1"
    peer_port: int = 9093
    # The client address other brokers and clients are told (Kafka's advertised.listeners);
    # empty host: --host; port 0: the port the API listens on.
    advertise_host: str = ""
    advertise_port: int = 0
    default_replication_factor: int = 1
    tick_seconds: float = DEFAULT_TICK_SECONDS
    retention_check_seconds: float = RETENTION_CHECK_SECONDS


def cluster_id(peers: Mapping[int, tuple[str, int]]) -> int:
    """The same on every node started with the same --peers: connections from a node of
    another cluster are refused at the handshake."""
    spec = ",".join(f"{i}={host}:{port}" for i, (host, port) in sorted(peers.items()))
    return crc32c(spec.encode())


# Present while this node is repairing damage found at start-up from its peers: every Raft
# group it hosts starts recovering (non-voting) until caught up, across restarts too.
RECOVERING_KEY = b"Xrecovering"


def _raft_config(node_id: int, voters: tuple[int, ...], *, recovering: Callable[[], bool]) -> Config:
    # Ticks, not seconds: the ticker's period sets the wall time (RAFT-NOTES.md defaults).
    return Config(id=node_id, voters=voters, recovering=recovering())


def _nowhere(group: int, message: Message) -> None:
    """A cluster of one sends no Raft messages (its groups have no peers)."""


@attrs.frozen
class NodeAddresses:
    grpc_port: int
    metrics_port: int | None


class Node:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self._stop = trio.Event()
        self.store: Store | None = None
        self.broker: Broker | None = None
        self.coordinator: GroupCoordinator | None = None
        self.controller: Controller | None = None
        self.network: PeerNetwork | None = None
        self.frontend: GrpcFrontEnd | None = None
        self.core: NodeCore | None = None
        #: The damage found at start-up that this node is repairing from its peers ("" if none).
        self.repaired_damage = ""

    def stop(self) -> None:
        """Begin a graceful shutdown; ``run`` returns once it is complete."""
        self._stop.set()

    async def run(self, *, task_status: trio.TaskStatus[NodeAddresses] = trio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        peers = dict(config.peers)
        if peers and config.node_id not in peers:
            raise InvalidArgument(f"--peers names nodes {sorted(peers)} but not this node ({config.node_id})")
        obsolete = ObsoleteData()
        storage_options = StorageOptions(
            sync=config.sync,
            memtable_bytes=config.memtable_bytes,
            compaction_filter=obsolete,
            accept_data_loss=config.accept_data_loss,
            on_wal_fsync=self.metrics.wal_fsync.observe,
        )
        async with trio.open_nursery() as nursery:
            try:
                store = self.store = await nursery.start(
                    Store(config.data_dir, storage_options, run_in_process=WorkerProcess()).run
                )
            except CorruptionError as exc:
                if not peers:
                    raise  # a node on its own has nothing to repair from: the operator decides
                # In a cluster the damage can be repaired from the other replicas: drop what
                # is damaged (reported like --accept-data-loss), then rejoin every group as a
                # recovering replica until the leaders have brought it up to date.
                logger.warning("storage damaged, rejoining as a recovering replica: %s", exc)
                damaged = attrs.evolve(storage_options, accept_data_loss=True)
                store = self.store = await nursery.start(
                    Store(config.data_dir, damaged, run_in_process=WorkerProcess()).run
                )
                await store.put(RECOVERING_KEY, b"1")
                self.repaired_damage = str(exc)
            network = None
            if peers:
                check_no_legacy_topics(store)
                network = self.network = PeerNetwork(
                    config.node_id,
                    cluster_id(peers),
                    {i: address for i, address in peers.items() if i != config.node_id},
                    self._route,
                )
            observers = RaftObservers(
                persist=self.metrics.raft_append_latency.observe,
                commit=self.metrics.raft_commit_latency.observe,
            )
            # Fetches read in at most this many worker threads at once (cold reads hit disk).
            limiter = trio.CapacityLimiter(READ_THREADS)
            core = self.core = NodeCore(
                store,
                config,
                network,
                on_append=self.metrics.record_produced,
                observers=observers,
                read_runner=functools.partial(trio.to_thread.run_sync, limiter=limiter),
            )
            obsolete.bind(core.broker)
            await core.start(nursery)
            if network is not None:
                network.handler = core.serve_peer
                await nursery.start(network.run, config.peer_host, config.peer_port)
            broker, coordinator = self.broker, self.coordinator = core.broker, core.coordinator
            self.controller = core.controller

            metrics_port = None
            if config.metrics_port >= 0:
                self.metrics.add_collector(self._collect)
                metrics_port = await nursery.start(
                    self.metrics.serve, config.metrics_host, config.metrics_port
                )

            bridge = AsyncioThread("sentinel-grpc")
            handlers = Handlers(
                broker,
                coordinator,
                self.metrics,
                host=config.host,
                port=config.port,
                max_batch_bytes=config.max_message_bytes,
                peers=network.statistics if network is not None else list,
            )
            frontend = self.frontend = GrpcFrontEnd(
                [SentinelService(bridge.portal, handlers, on_request=self.metrics.count_request)],
                config.host,
                config.port,
                max_message_bytes=config.max_message_bytes,
                on_connections_changed=self.metrics.active_connections.set,
                bridge=bridge,
            )
            frontend_stopped = trio.Event()

            async def run_frontend(*, task_status: trio.TaskStatus[int]) -> None:
                try:
                    await frontend.run(task_status=task_status)
                finally:
                    frontend_stopped.set()

            grpc_port = await nursery.start(run_frontend)
            handlers.port = grpc_port
            await core.register(
                nursery, (config.advertise_host or config.host, config.advertise_port or grpc_port)
            )
            task_status.started(NodeAddresses(grpc_port=grpc_port, metrics_port=metrics_port))

            await self._stop.wait()
            with trio.CancelScope(shield=True):
                if peers:
                    # First hand every group this node leads to a caught-up peer, while
                    # still serving: clients are redirected, nobody waits for an election.
                    await core.hand_off_leadership(within=HAND_OFF_SECONDS)
                with trio.move_on_after(STOP_STAGE_SECONDS):
                    frontend.close()
                    await frontend_stopped.wait()
                await core.stop()
                await store.aclose()
            nursery.cancel_scope.cancel()

    def _route(self, group: int, message: Message) -> None:
        if self.core is not None:
            self.core.route(group, message)

    def _collect_raft(self, broker: Broker) -> Iterator[Metric]:
        """Per Raft group (the controller, each hosted partition) from the views they
        publish, and per peer link from its counters."""
        term = GaugeMetricFamily("sentinel_raft_term", "Raft term of the group", labels=["group"])
        role = GaugeMetricFamily(
            "sentinel_raft_role", "0 follower, 1 pre-candidate, 2 candidate, 3 leader", labels=["group"]
        )
        commit = GaugeMetricFamily("sentinel_raft_commit_index", "Raft commit index", labels=["group"])
        elections = CounterMetricFamily(
            "sentinel_raft_elections", "Elections this node started for the group", labels=["group"]
        )
        changes = CounterMetricFamily(
            "sentinel_raft_leader_changes", "Leader changes this node saw in the group", labels=["group"]
        )
        lag = GaugeMetricFamily(
            "sentinel_raft_follower_lag",
            "Entries a follower is behind (leaders only)",
            labels=["group", "follower"],
        )
        groups: list[tuple[str, int, int, RaftStats]] = []
        if self.controller is not None:
            view = self.controller.view
            groups.append(("controller", view.term, int(view.role), view.stats))
        for replica in list(broker.replicas.values()):
            v = replica.view
            groups.append((f"{replica.topic}/{replica.partition}", v.term, int(v.role), v.stats))
        for name, group_term, group_role, stats in groups:
            term.add_metric([name], group_term)
            role.add_metric([name], group_role)
            commit.add_metric([name], stats.commit)
            elections.add_metric([name], stats.elections)
            changes.add_metric([name], stats.leader_changes)
            for follower, behind in stats.follower_lag:
                lag.add_metric([name, str(follower)], behind)
        yield from (term, role, commit, elections, changes, lag)
        if self.controller is not None:
            leader = self.controller.view.leader
            yield GaugeMetricFamily(
                "sentinel_cluster_controller_leader",
                "Node id of the controller leader (0: none)",
                value=leader,
            )
        if self.network is not None:
            sent = CounterMetricFamily("sentinel_peer_bytes_sent", "Bytes sent to a peer", labels=["peer"])
            received = CounterMetricFamily(
                "sentinel_peer_bytes_received", "Bytes received from a peer", labels=["peer"]
            )
            reconnects = CounterMetricFamily(
                "sentinel_peer_reconnects", "Connections (re)established with a peer", labels=["peer"]
            )
            for link in self.network.statistics():
                sent.add_metric([str(link.peer)], link.bytes_sent)
                received.add_metric([str(link.peer)], link.bytes_received)
                reconnects.add_metric([str(link.peer)], link.connects)
            yield from (sent, received, reconnects)

    def _collect(self) -> Iterator[Metric]:
        """Scrape-time gauges from the snapshots the actors publish (metrics thread)."""
        store, broker, coordinator = self.store, self.broker, self.coordinator
        if store is None or broker is None or coordinator is None:
            return
        try:
            stats = store.statistics()
        except Exception:  # the store is closing: skip the engine's gauges this scrape
            stats = None
        drops, dropped_bytes = store.recovery_drops
        yield GaugeMetricFamily(
            "sentinel_recovery_drops",
            "Torn tails truncated and losses accepted by recovery at this start",
            value=drops,
        )
        yield GaugeMetricFamily(
            "sentinel_recovery_dropped_bytes", "WAL bytes recovery dropped at this start", value=dropped_bytes
        )
        if stats is not None:
            yield CounterMetricFamily(
                "sentinel_storage_writes_refused",
                "Write batches the storage engine refused (RESOURCE_EXHAUSTED): a full disk, "
                "or a damaged table holding L0 at its bound",
                value=stats.writes_refused,
            )
            yield GaugeMetricFamily(
                "sentinel_storage_disk_full",
                "1 while the storage engine's last write or flush met a full disk, else 0",
                value=int(stats.disk_full is not None),
            )
            yield GaugeMetricFamily(
                "sentinel_storage_damaged_tables",
                "SSTables a compaction found damaged since start (kept as they are, left out of "
                "compactions; the log names file and byte)",
                value=len(stats.damaged_tables),
            )
            yield GaugeMetricFamily(
                "sentinel_storage_needs_repair",
                "1 while a damaged table holds L0 at its stop-writes bound and writes are refused, else 0",
                value=int(stats.needs_repair is not None),
            )
            yield GaugeMetricFamily(
                "sentinel_memtable_bytes", "Bytes in memtables", value=stats.memtable_bytes
            )
            tables = GaugeMetricFamily("sentinel_sstables", "SSTables per level", labels=["level"])
            level_bytes = GaugeMetricFamily(
                "sentinel_sstable_bytes", "SSTable bytes per level", labels=["level"]
            )
            for level in range(NUM_LEVELS):
                tables.add_metric([str(level)], stats.tables_per_level[level])
                level_bytes.add_metric([str(level)], stats.bytes_per_level[level])
            yield tables
            yield level_bytes
            compaction = stats.compaction
            yield GaugeMetricFamily(
                "sentinel_compaction_bytes_read", "Bytes read by compactions", value=compaction.bytes_read
            )
            yield GaugeMetricFamily(
                "sentinel_compaction_bytes_written",
                "Bytes written by flushes and compactions",
                value=compaction.bytes_written,
            )
        yield from self._collect_raft(broker)
        hw = GaugeMetricFamily(
            "sentinel_partition_high_watermark", "Partition high watermark", labels=["topic", "partition"]
        )
        for topic in list(broker.topics.values()):
            for log in topic.logs:
                hw.add_metric([topic.name, str(log.partition)], log.high_watermark)
        yield hw
        lag = GaugeMetricFamily(
            "sentinel_partition_lag",
            "Committed-offset lag of a consumer group",
            labels=["group", "topic", "partition"],
        )
        for group in coordinator.committed_offsets:  # snapshots only: this is the metrics thread
            for entry in coordinator.lag(group):
                if entry.lag >= 0:  # else no replica here: the nodes that hold one report it
                    lag.add_metric([group, entry.topic, str(entry.partition)], entry.lag)
        yield lag


class Network(Protocol):
    """What a node's groups need of the peer links (PeerNetwork; an in-memory one in tests)."""

    def send(self, group: int, m: Message) -> None: ...

    async def request(self, peer: int, method: int, payload: bytes) -> bytes: ...


class NodeCore:
    """A node's Raft groups and the services on them, without the gRPC front end: the
    controller, the broker and its partition replicas, the group coordinator and the
    ticker. ``Node.run`` starts one; actor-level tests start one on their own store."""

    def __init__(
        self,
        store: Store,
        config: NodeConfig,
        network: Network | None = None,
        *,
        on_append: Callable[[str, int, int, int], None] | None = None,
        observers: RaftObservers | None = None,
        read_runner: ReadRunner | None = None,
        rebalance_timeout: float | None = None,
        seed: int | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.network = network
        peers = config.peers
        voters = tuple(sorted(peers)) if peers else (config.node_id,)
        send = network.send if network is not None else _nowhere
        self.controller_storage = LsmRaftStorage(store, CONTROLLER_GROUP)
        self.recovering = store.get(RECOVERING_KEY) is not None
        raft_config = functools.partial(_raft_config, recovering=lambda: self.recovering)
        rng = random.Random(seed)
        self.controller = Controller(
            config.node_id,
            voters,
            self.controller_storage,
            send,
            rng=random.Random(rng.random()),
            config=raft_config(config.node_id, voters),
            forward=self._forward if network is not None else None,
            observers=observers,
        )
        self.broker = Broker(
            store,
            self.controller,
            send,
            BrokerOptions(
                node_id=config.node_id,
                auto_create_topics=config.auto_create_topics,
                default_partitions=config.default_partitions,
                default_replication_factor=config.default_replication_factor,
                default_retention_ms=config.default_retention_ms,
                default_retention_bytes=config.default_retention_bytes,
                retention_check_seconds=config.retention_check_seconds,
            ),
            controller_storage=self.controller_storage,
            raft_config=raft_config,
            on_append=on_append,
            observers=observers,
            read_runner=read_runner,
            seed=rng.randrange(1 << 30),
        )
        controller, broker = self.controller, self.broker
        self.ticker = RaftTicker(lambda: [controller, *broker.replicas.values()], config.tick_seconds)
        self._actors: trio.Nursery | None = None
        self._actors_scope = trio.CancelScope()
        self._actors_stopped = trio.Event()
        timeouts = {} if rebalance_timeout is None else {"rebalance_timeout": rebalance_timeout}
        self.coordinator = GroupCoordinator(
            self.controller,
            self.broker,
            rng=random.Random(rng.random()),
            min_session_timeout=config.group_min_session_timeout_ms / 1000,
            max_session_timeout=config.group_max_session_timeout_ms / 1000,
            **timeouts,
        )

    async def start(self, nursery: trio.Nursery) -> None:
        """Start the node's actors in a nursery of their own (under ``nursery``): whatever
        of it a graceful :meth:`stop` could not stop in time is cancelled there, before the
        caller closes the store under it."""
        await nursery.start(self._supervise)

    async def _supervise(self, *, task_status: trio.TaskStatus[None]) -> None:
        try:
            with self._actors_scope:
                async with trio.open_nursery() as nursery:
                    self._actors = nursery
                    if self.recovering:
                        nursery.start_soon(self._finish_recovery)
                    await nursery.start(self.controller.run)
                    await nursery.start(self.broker.run)
                    await nursery.start(self.ticker.run)
                    await nursery.start(self.coordinator.run)
                    task_status.started()
                    await trio.sleep_forever()
        finally:
            self._actors_stopped.set()

    async def register(self, nursery: trio.Nursery, address: tuple[str, int]) -> None:
        """Tell the cluster this node's client address, and keep it told. A cluster of one
        waits until it is registered (it cannot place a topic before) and moves the topics
        of an earlier single-node data directory to the controller."""
        registered = trio.Event()
        (self._actors or nursery).start_soon(self._register, address, registered)
        if not self.config.peers:
            with trio.move_on_after(STOP_STAGE_SECONDS) as waiting:  # a full disk elects nobody
                await registered.wait()
                view = self.controller.view  # known from the log at a restart: wait for a leader too
                while view.leader == NONE:
                    view = await self.controller.wait_changed(view)
            await import_legacy_topics(self.store, self.controller, self.config.node_id)
            if not waiting.cancelled_caught:
                await self.broker.wait_leaders(self.broker.topics.values())  # serve once they lead

    async def _finish_recovery(self) -> None:
        """Once every group this node hosts has caught up (none recovering), the node is
        repaired: forget the marker so a restart starts as an ordinary voter."""
        while True:
            await trio.sleep(RECOVERY_CHECK_SECONDS)
            groups: list[Controller | PartitionReplica] = [self.controller, *self.broker.replicas.values()]
            if all(not g.recovering for g in groups):
                self.recovering = False  # groups created from now on start as voters
                await self.store.delete(RECOVERING_KEY)
                logger.warning("repaired: every Raft group on this node has caught up; voting again")
                return

    async def hand_off_leadership(self, within: float) -> int:
        """Transfer the leadership of every group this node leads to a caught-up peer, and
        wait (at most ``within`` seconds) until none is led here: what a graceful shutdown
        does first, so producers and consumers move on without an election. Returns how
        many groups this node still leads at the end."""
        groups: list[Controller | PartitionReplica] = [self.controller, *self.broker.replicas.values()]
        leading = [g for g in groups if g.leading]
        for group in leading:
            with contextlib.suppress(SentinelError):
                await group.hand_off()
        with trio.move_on_after(within):
            for group in leading:
                await group.wait_not_leading()
        return sum(1 for g in leading if g.leading)

    async def stop(self) -> None:
        """Graceful stop, in order: groups, partition replicas, the controller."""
        with trio.move_on_after(STOP_STAGE_SECONDS):
            self.coordinator.close()
            await self.coordinator.wait_stopped()
        with trio.move_on_after(STOP_STAGE_SECONDS):
            await self.broker.stop_replicas()
        with trio.move_on_after(STOP_STAGE_SECONDS):
            self.controller.close()
            await self.controller.wait_stopped()
        # What did not stop in its stage (a write stuck behind a slow disk) is cancelled
        # now: nothing of the node may still be writing when the caller closes the store.
        self._actors_scope.cancel()
        await self._actors_stopped.wait()

    def route(self, group: int, message: Message) -> None:
        """A Raft message from a peer, to its group (never blocks: a full mailbox drops it)."""
        if group == CONTROLLER_GROUP:
            self.controller.deliver(message)
        else:
            self.broker.deliver(group, message)

    async def _forward(self, leader: int, command: bytes) -> bytes:
        assert self.network is not None
        return await self.network.request(leader, METHOD_PROPOSE, command)

    async def serve_peer(self, peer: int, method: int, payload: bytes) -> bytes:
        if method == METHOD_PROPOSE:
            return encode_result(await self.controller.propose_here(payload))
        raise InvalidArgument(f"node {peer} sent an unknown peer request {method}")

    async def _register(self, address: tuple[str, int], registered: trio.Event) -> None:
        host, port = address
        controller = self.controller
        node_id = self.config.node_id
        view = controller.view
        delay = 0.05
        while True:
            known = view.image.brokers.get(node_id)
            if known is not None and (known.host, known.port) == (host, port):
                registered.set()
                view = await controller.wait_changed(view)
                continue
            try:
                await controller.propose(md.register_broker(node_id, host, port))
                delay = 0.05
            except SentinelError as exc:
                logger.debug("registration not done yet: %s", exc)
                await trio.sleep(delay)
                delay = min(delay * 2, 1.0)
            view = controller.view
