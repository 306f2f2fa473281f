"""Prometheus metrics: one registry per node, served at ``GET /metrics`` from its own thread.

prometheus_client renders in the HTTP server's thread (rendering hundreds of series takes
milliseconds: never on the Trio loop). Hot paths bind label children once per partition
and only increment them. Gauges that mirror engine state (memtable bytes, tables per
level, consumer lag) are computed at scrape time by a collector reading the immutable
snapshots the actors publish, so keeping them current costs the event loop nothing.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from typing import Any

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from sentinel.errors import SentinelError

# Produce/consume latency buckets (seconds): from a fast in-memory ack to a slow fsync.
LATENCY_BUCKETS_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LATENCY_BUCKETS_MS = tuple(b * 1000 for b in LATENCY_BUCKETS_SECONDS)
FSYNC_BUCKETS_SECONDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages_produced = Counter(
            "sentinel_messages_produced", "Records appended", ["topic", "partition"], registry=r
        )
        self.bytes_produced = Counter(
            "sentinel_bytes_produced", "Record-batch bytes appended", ["topic", "partition"], registry=r
        )
        self.messages_consumed = Counter(
            "sentinel_messages_consumed", "Records delivered to consumers", ["topic", "partition"], registry=r
        )
        self.bytes_consumed = Counter(
            "sentinel_bytes_consumed", "Record-batch bytes delivered", ["topic", "partition"], registry=r
        )
        self.active_connections = Gauge("sentinel_active_connections", "Open client connections", registry=r)
        self.produce_latency_ms = Histogram(
            "sentinel_produce_latency_ms",
            "Produce request latency (ms)",
            buckets=LATENCY_BUCKETS_MS,
            registry=r,
        )
        self.produce_latency = Histogram(
            "sentinel_produce_latency_seconds",
            "Produce request latency",
            buckets=LATENCY_BUCKETS_SECONDS,
            registry=r,
        )
        self.consume_latency = Histogram(
            "sentinel_consume_latency_seconds",
            "Fetch/consume response latency (excluding long-poll waits)",
            buckets=LATENCY_BUCKETS_SECONDS,
            registry=r,
        )
        self.wal_fsync = Histogram(
            "sentinel_wal_fsync_seconds", "WAL fsync duration", buckets=FSYNC_BUCKETS_SECONDS, registry=r
        )
        self.raft_append_latency = Histogram(
            "sentinel_raft_append_latency_seconds",
            "Time to persist a Raft Ready (entries, hard state) of any group",
            buckets=FSYNC_BUCKETS_SECONDS,
            registry=r,
        )
        self.raft_commit_latency = Histogram(
            "sentinel_raft_commit_latency_seconds",
            "Time from proposing a produced batch to its commit on a majority",
            buckets=LATENCY_BUCKETS_SECONDS,
            registry=r,
        )
        self.requests = Counter(
            "sentinel_requests", "gRPC requests by method and status", ["method", "status"], registry=r
        )
        self._produced_children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._consumed_children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._request_children: dict[tuple[str, str], Any] = {}

    def record_produced(self, topic: str, partition: int, records: int, size: int) -> None:
        key = (topic, partition)
        children = self._produced_children.get(key)
        if children is None:
            labels = (topic, str(partition))
            children = (self.messages_produced.labels(*labels), self.bytes_produced.labels(*labels))
            self._produced_children[key] = children
        children[0].inc(records)
        children[1].inc(size)

    def record_consumed(self, topic: str, partition: int, records: int, size: int) -> None:
        key = (topic, partition)
        children = self._consumed_children.get(key)
        if children is None:
            labels = (topic, str(partition))
            children = (self.messages_consumed.labels(*labels), self.bytes_consumed.labels(*labels))
            self._consumed_children[key] = children
        children[0].inc(records)
        children[1].inc(size)

    def count_request(self, method: str, status: str) -> None:
        """One handled RPC (any thread: prometheus_client children are thread-safe)."""
        child = self._request_children.get((method, status))
        if child is None:
            child = self._request_children[(method, status)] = self.requests.labels(method, status)
        child.inc()

    def observe_produce(self, seconds: float) -> None:
        self.produce_latency.observe(seconds)
        self.produce_latency_ms.observe(seconds * 1000)

    def add_collector(self, collect: Callable[[], Iterator[Metric]]) -> None:
        """Register a scrape-time collector (runs in the metrics thread: read snapshots only)."""
        self.registry.register(_FunctionCollector(collect))

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve /metrics until cancelled; reports the bound port (0 picks a free one)."""
        try:
            server, thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:  # say which address: "[Errno 98] Address already in use" alone does not
            what = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound: {exc.strerror or exc}"
            raise SentinelError(f"metrics port {host}:{port} {what} (--metrics-port)") from exc
        try:
            task_status.started(server.server_address[1])
            await trio.sleep_forever()
        finally:
            server.shutdown()
            server.server_close()
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(thread.join, 5.0)


class _FunctionCollector(Collector):
    def __init__(self, collect: Callable[[], Iterator[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Metric]:
        return self._collect()
