"""The broker layer of one node on real files, for actor-level tests (broker, handlers).

``NodeFactory.run`` starts what ``sentinel.node.Node.run`` starts minus the gRPC front end,
wired the same way (``sentinel.node.NodeCore``): the Store on a test directory with the
broker's compaction filter plugged in, the controller (a one-voter Raft group), the broker
and its partition replicas, the ticker and the group coordinator; the node registers its
client address in the controller before the block runs, as a node does before it serves.
Tests run on Trio's MockClock with ``autojump_threshold=0``: virtual time jumps to the next
deadline whenever every task is blocked, so a session timeout, a long-poll deadline or a
Raft tick costs no real time.

Autojump cannot see worker threads (the engine's recovery, fsyncs, flushes and
compactions run in threads): while one runs every task looks blocked and the clock would
jump, firing deadlines (session timeouts, the store's close bound) that the test did not
mean to reach. :func:`frozen` stops the clock around every step that waits for a thread:
starting and closing the store, ``flush`` and ``compact``. Writes under ``SyncMode.NONE``
(the default here) never use a thread, so the clock may run during everything else.

The fixtures (``clock``, ``node``, ``make_node``) are declared in ``tests/conftest.py``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import attrs
import trio
import trio.testing

from sentinel.broker.broker import Broker, BrokerOptions, ObsoleteData
from sentinel.broker.coordinator import GroupCoordinator
from sentinel.cluster.controller import Controller
from sentinel.metrics import Metrics
from sentinel.node import NodeConfig, NodeCore
from sentinel.storage.compaction import CompactionOptions
from sentinel.storage.options import StorageOptions, SyncMode
from sentinel.storage.store import Store

# No background compaction: a test that wants compaction asks for it (``compact``).
NO_COMPACTION = CompactionOptions(l0_compaction_trigger=1000, l0_stop_writes_trigger=2000)


def mock_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


@contextmanager
def frozen(clock: trio.testing.MockClock) -> Iterator[None]:
    """Stop autojump while the body waits for worker threads (see the module docstring)."""
    previous = clock.autojump_threshold
    clock.autojump_threshold = math.inf
    try:
        yield
    finally:
        clock.autojump_threshold = previous


@attrs.define
class Running:
    """One incarnation of a node's broker layer (what ``Node.run`` starts, minus gRPC)."""

    clock: trio.testing.MockClock
    store: Store
    broker: Broker
    coordinator: GroupCoordinator
    controller: Controller
    #: The node's metrics: the broker counts appends into them as ``Node.run`` wires it.
    metrics: Metrics

    async def flush(self) -> None:
        """Write the memtable to an L0 table (no compaction filter runs)."""
        with frozen(self.clock):
            await self.store.flush()

    async def compact(self) -> None:
        """Flush and push everything to the last level (the compaction filter runs)."""
        with frozen(self.clock):
            await self.store.compact()

    def frozen(self) -> AbstractContextManager[None]:
        return frozen(self.clock)

    def data_keys(self) -> list[bytes]:
        return [key for key, _ in self.store.scan(b"L", b"M")]


@attrs.define
class NodeFactory:
    """Starts (and restarts) the broker layer on one data directory."""

    directory: Path
    clock: trio.testing.MockClock
    options: BrokerOptions = BrokerOptions(retention_check_seconds=math.inf)  # noqa: RUF009
    sync: SyncMode = SyncMode.NONE
    seed: int = 7
    rebalance_timeout: float = 30.0
    compaction: CompactionOptions = NO_COMPACTION
    #: The client address the node registers in the controller (what metadata answers list).
    address: tuple[str, int] = ("127.0.0.1", 9092)

    @asynccontextmanager
    async def run(self, **changes: Any) -> AsyncIterator[Running]:
        """The layer for the duration of the block; a graceful stop in the node's order at
        the end (coordinator, replicas, controller, then the store, which fsyncs the WAL)."""
        assert trio.lowlevel.current_clock() is self.clock, (
            "the test must take the `clock` fixture itself: pytest-trio only runs a test on a "
            "clock passed to the test function"
        )
        options = attrs.evolve(self.options, **changes)
        obsolete = ObsoleteData()
        storage = StorageOptions(sync=self.sync, compaction=self.compaction, compaction_filter=obsolete)
        config = NodeConfig(
            node_id=options.node_id,
            auto_create_topics=options.auto_create_topics,
            default_partitions=options.default_partitions,
            default_replication_factor=options.default_replication_factor,
            default_retention_ms=options.default_retention_ms,
            default_retention_bytes=options.default_retention_bytes,
            retention_check_seconds=options.retention_check_seconds,
        )
        metrics = Metrics()
        async with trio.open_nursery() as nursery:
            with frozen(self.clock):
                store: Store = await nursery.start(Store(self.directory, storage).run)
            core = NodeCore(
                store,
                config,
                on_append=metrics.record_produced,
                rebalance_timeout=self.rebalance_timeout,
                seed=self.seed,
            )
            obsolete.bind(core.broker)
            await core.start(nursery)
            await core.register(nursery, self.address)
            try:
                yield Running(self.clock, store, core.broker, core.coordinator, core.controller, metrics)
            finally:
                with trio.CancelScope(shield=True):
                    await core.stop()
                    with frozen(self.clock):
                        await store.aclose()
                nursery.cancel_scope.cancel()
