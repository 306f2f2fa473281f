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

from collections.abc import Iterator
from pathlib import Path

import attrs
import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from sentinel.broker.broker import Broker, BrokerOptions, ObsoleteData
from sentinel.broker.coordinator import GroupCoordinator
from sentinel.metrics import Metrics
from sentinel.server.bridge import AsyncioThread
from sentinel.server.frontend import GrpcFrontEnd
from sentinel.server.handlers import Handlers
from sentinel.server.service import SentinelService
from sentinel.storage.manifest import NUM_LEVELS
from sentinel.storage.options import StorageOptions, SyncMode
from sentinel.storage.store import Store

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Longest a graceful stop waits for each stage before moving on (the storage engine has
# its own bound): SIGTERM always ends the process in bounded time.
STOP_STAGE_SECONDS = 10.0


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
        self.frontend: GrpcFrontEnd | None = None

    def stop(self) -> None:
        """Begin a graceful shutdown; ``run`` returns once it is complete."""
        self._stop.set()

    async def run(self, *, task_status: trio.TaskStatus[NodeAddresses] = trio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        obsolete = ObsoleteData()
        storage_options = StorageOptions(
            sync=config.sync,
            memtable_bytes=config.memtable_bytes,
            compaction_filter=obsolete,
            accept_data_loss=config.accept_data_loss,
            on_wal_fsync=self.metrics.wal_fsync.observe,
        )
        async with trio.open_nursery() as nursery:
            store = self.store = await nursery.start(Store(config.data_dir, storage_options).run)
            broker = self.broker = Broker(
                store,
                BrokerOptions(
                    node_id=config.node_id,
                    auto_create_topics=config.auto_create_topics,
                    default_partitions=config.default_partitions,
                    default_retention_ms=config.default_retention_ms,
                    default_retention_bytes=config.default_retention_bytes,
                ),
                on_append=self.metrics.record_produced,
            )
            obsolete.bind(broker)
            await nursery.start(broker.run)
            coordinator = self.coordinator = GroupCoordinator(
                store,
                broker,
                min_session_timeout=config.group_min_session_timeout_ms / 1000,
                max_session_timeout=config.group_max_session_timeout_ms / 1000,
            )
            await nursery.start(coordinator.run)

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
            task_status.started(NodeAddresses(grpc_port=grpc_port, metrics_port=metrics_port))

            await self._stop.wait()
            with trio.CancelScope(shield=True):
                with trio.move_on_after(STOP_STAGE_SECONDS):
                    frontend.close()
                    await frontend_stopped.wait()
                for actor in (coordinator, broker):
                    with trio.move_on_after(STOP_STAGE_SECONDS):
                        actor.close()
                        await actor.wait_stopped()
                await store.aclose()
            nursery.cancel_scope.cancel()

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
                lag.add_metric([group, entry.topic, str(entry.partition)], entry.lag)
        yield lag
