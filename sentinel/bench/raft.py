"""``sentinel bench raft``: what the Raft core itself costs.

A 3-voter group of pure cores in one process: messages go from one node's Ready straight
into another's ``step`` (no network, no codec) and "persisting" is either nothing (the
core's own cost) or the node's LsmRaftStorage on a real Store per node (sync
``interval``). The leader keeps a window of proposals in flight, as a partition leader
with many producers does; each proposal is one payload (a record batch) passed by
reference from ``propose`` to the committed entry — never copied.

Figures: proposals committed per second, payload bytes committed per second, and the
commit latency (propose -> the leader hands the entry out as committed), for 100-byte and
100 KB payloads. ``profile=True`` adds the functions where the time goes (cProfile).
"""

from __future__ import annotations

import cProfile
import io
import pstats
import random
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from sentinel.raft.core import Config, RaftNode
from sentinel.raft.lsm_storage import LsmRaftStorage
from sentinel.raft.messages import Message, Role
from sentinel.raft.storage import MemoryStorage
from sentinel.storage.options import StorageOptions, SyncMode
from sentinel.storage.store import open_store

VOTERS = (1, 2, 3)
WINDOW = 256  # proposals in flight at the leader


class _Group:
    def __init__(self, storages: dict[int, Any], lsm: bool) -> None:
        self.lsm = lsm
        self.storages = storages
        self.nodes = {i: RaftNode(Config(id=i, voters=VOTERS), storages[i], random.Random(i)) for i in VOTERS}
        self.queue: list[Message] = []
        self.committed = 0
        self.proposed_at: dict[int, float] = {}
        self.latencies: list[float] = []

    async def handle(self, node: RaftNode) -> None:
        storage = self.storages[node.id]
        leader = node.role is Role.LEADER
        while node.has_ready():
            rd = node.ready()
            self.queue.extend(rd.messages)
            if self.lsm:
                await storage.persist(rd)
            else:
                if rd.snapshot is not None:
                    storage.apply_snapshot(rd.snapshot)
                storage.append(rd.entries)
                if rd.hard_state is not None:
                    storage.set_hard_state(rd.hard_state)
            self.queue.extend(rd.messages_after_persist)
            if leader and rd.committed_entries:
                now = time.perf_counter()
                for e in rd.committed_entries:
                    started = self.proposed_at.pop(e.index, None)
                    if started is not None:
                        self.committed += 1
                        self.latencies.append(now - started)
            node.advance(rd)

    async def round(self) -> None:
        for node in self.nodes.values():
            await self.handle(node)
        messages, self.queue = self.queue, []
        nodes = self.nodes
        for m in messages:
            nodes[m.to].step(m)

    async def elect(self) -> RaftNode:
        self.nodes[1].campaign()
        for _ in range(20):
            await self.round()
        leader = self.nodes[1]
        assert leader.role is Role.LEADER, "no leader elected"
        return leader


async def _run_one(payload_bytes: int, proposals: int, lsm: bool, directory: Path | None) -> dict[str, float]:
    async with AsyncExitStack() as stack:
        if lsm:
            assert directory is not None
            storages: dict[int, Any] = {}
            for i in VOTERS:
                store = await stack.enter_async_context(
                    open_store(directory / f"node{i}", StorageOptions(sync=SyncMode.INTERVAL))
                )
                storages[i] = LsmRaftStorage(store, 1)
        else:
            storages = {i: MemoryStorage() for i in VOTERS}
        group = _Group(storages, lsm)
        leader = await group.elect()
        payload = b"x" * payload_bytes
        proposed = 0
        started = time.perf_counter()
        while group.committed < proposals:
            now = time.perf_counter()
            while proposed < proposals and len(group.proposed_at) < WINDOW:
                group.proposed_at[leader.propose(payload)] = now
                proposed += 1
            await group.round()
        seconds = time.perf_counter() - started
    lat = sorted(group.latencies)
    return {
        "proposals_per_s": round(proposals / seconds),
        "mb_per_s": round(proposals * payload_bytes / seconds / 1e6, 1),
        "latency_p50_ms": round(lat[len(lat) // 2] * 1000, 3),
        "latency_p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 3),
    }


async def run_raft_bench(
    *, quick: bool = False, profile: bool = False, progress: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    from sentinel.bench.machine import machine_info

    counts = {100: 20_000 if quick else 200_000, 100_000: 2_000 if quick else 20_000}
    result: dict[str, Any] = {"machine": machine_info(), "voters": len(VOTERS), "window": WINDOW, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="sentinel-bench-raft-") as tmp:
        for storage in ("memory", "lsm"):
            for size, count in counts.items():
                if storage == "lsm":
                    count = max(count // 4, 1000)
                name = f"{storage}_{size}B"
                progress(f"{name}: {count:,} proposals")
                directory = Path(tmp) / name
                result["runs"][name] = await _run_one(size, count, storage == "lsm", directory)
                result["runs"][name].update(storage=storage, payload_bytes=size, proposals=count)
        if profile:
            progress("profile: memory_100B")
            profiler = cProfile.Profile()
            profiler.enable()
            await _run_one(100, counts[100] // 2, False, None)
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
            result["profile"] = out.getvalue()
    return result
