"""``sentinel bench cluster``: a replicated cluster's throughput, latency and failover.

Three local ``sentinel run`` nodes (``LocalCluster``, sync ``interval``), the client roles
in their own processes (``sentinel.bench.workers``), 100-byte records, one partition per
topic:

- ``rf1`` / ``rf3``: produce throughput (acks=all) and send->ack latency at a fixed rate,
  to a topic with one replica and to one with three, in the same run: what replication
  costs (the target: RF=3 at least half of RF=1's records/s);
- ``failover``: a probe producer sends a record every few milliseconds to an RF=3 topic
  while its partition leader is SIGKILLed; the outage is the time from the kill to the
  next acknowledgement (a new leader elected, the client redirected). Repeated over
  several trials (the killed node restarted and caught up in between); p50 and max.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

from sentinel.bench.broker import RECORD_BYTES, WARMUP_RECORDS, _rates
from sentinel.bench.process import Worker, process_cpu_seconds, run_worker
from sentinel.client import Admin
from sentinel.cluster.local import LocalCluster
from sentinel.errors import SentinelError

WORKER_TIMEOUT_S = 600.0
READY_TIMEOUT_S = 60.0


def _quiet(_: str) -> None:
    pass


async def _prepare(bootstrap: str, topics: dict[str, int]) -> dict[str, int]:
    """Wait for the cluster, create the topics (name -> replication factor) and return each
    one's leader."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with Admin(bootstrap, request_timeout_ms=5000) as admin:
        while len((await _metadata_or_none(admin)) or ()) < 3:
            if time.monotonic() > deadline:
                raise SentinelError("the cluster did not form in time")
            await asyncio.sleep(0.2)
        for name, rf in topics.items():
            await admin.create_topic(name, 1, rf)
        while True:
            leaders = {p.topic: p.leader for p in (await admin.cluster_status()).partitions}
            if all(leaders.get(name, -1) > 0 for name in topics):
                return {name: leaders[name] for name in topics}
            if time.monotonic() > deadline:
                raise SentinelError("the benchmark topics got no leaders in time")
            await asyncio.sleep(0.2)


async def _leader_now(bootstrap: str, topic: str) -> int:
    """The partition's leader as the cluster reports it right now (an earlier trial's kill
    and restart moves leaderships: a leader known from before may no longer lead)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with Admin(bootstrap, request_timeout_ms=5000) as admin:
        while True:
            try:
                leaders = {p.topic: p.leader for p in (await admin.cluster_status()).partitions}
            except SentinelError:
                leaders = {}
            if leaders.get(topic, -1) > 0:
                return leaders[topic]
            if time.monotonic() > deadline:
                raise SentinelError(f"{topic} has no leader")
            await asyncio.sleep(0.2)


async def _metadata_or_none(admin: Admin) -> Any:
    try:
        return (await admin.fetch_metadata()).brokers
    except SentinelError:
        return None


def _cpu(cluster: LocalCluster) -> float:
    total = 0.0
    for node in cluster.nodes.values():
        if node.process is not None:
            total += process_cpu_seconds(node.process.pid) or 0.0
    return total


def _throughput(cluster: LocalCluster, topic: str, seconds: float) -> dict[str, Any]:
    params = {
        "address": cluster.bootstrap,
        "topic": topic,
        "record_bytes": RECORD_BYTES,
        "acks": "all",
        "linger_ms": 5.0,
        "batch_size": 16384,
        "seconds": seconds,
    }
    before = _cpu(cluster)
    result = run_worker("produce", params, timeout=WORKER_TIMEOUT_S)
    row = _rates(result["records"], result["seconds"], RECORD_BYTES)
    row["client_cpu_s"] = round(result["client_cpu_s"], 2)
    row["cluster_cpu_s"] = round(_cpu(cluster) - before, 2)
    return row


def _latency(cluster: LocalCluster, topic: str, rate: int, seconds: float) -> dict[str, Any]:
    params = {
        "address": cluster.bootstrap,
        "topic": topic,
        "record_bytes": RECORD_BYTES,
        "acks": "all",
        "linger_ms": 1.0,
        "rate": rate,
        "seconds": seconds,
        "warmup": WARMUP_RECORDS,
    }
    result = run_worker("produce-rate", params, timeout=WORKER_TIMEOUT_S)
    return {"rate": rate, "achieved_rate": result["achieved_rate"], "latency_ms": result["latency_ms"]}


def _failover_trial(cluster: LocalCluster, topic: str, leader: int, seconds: float) -> float:
    probe = Worker(
        "probe", {"address": cluster.bootstrap, "topic": topic, "interval_ms": 5, "seconds": seconds}
    )
    try:
        probe.wait_for("started")
        time.sleep(seconds / 3)
        killed_at = time.monotonic()
        cluster.nodes[leader].kill()
        result = probe.result(WORKER_TIMEOUT_S)
    finally:
        probe.kill()
    # The first acknowledgement of a record sent after the kill: it went to the new leader
    # (an answer the old leader sent just before it died would say nothing).
    after = sorted(acked for sent, acked in result["acked"] if sent > killed_at)
    if not after:
        raise SentinelError(f"no acknowledgement arrived in the {seconds * 2 / 3:.1f} s after the kill")
    cluster.nodes[leader].start()
    return after[0] - killed_at


def run_cluster_bench(*, quick: bool = False, progress: Callable[[str], None] = _quiet) -> dict[str, Any]:
    from sentinel.bench.machine import machine_info

    seconds = 2.0 if quick else 5.0
    rate = 2000
    trials = 2 if quick else 5
    run = uuid.uuid4().hex[:6]
    names = {"rf1": f"bench-rf1-{run}", "rf3": f"bench-rf3-{run}"}
    result: dict[str, Any] = {
        "machine": machine_info(),
        "nodes": 3,
        "record_bytes": RECORD_BYTES,
        "sync": "interval",
    }
    with (
        tempfile.TemporaryDirectory(prefix="sentinel-bench-cluster-") as tmp,
        LocalCluster(3, tmp) as cluster,
    ):
        progress("starting three nodes")
        failover_topics = {f"bench-failover-{run}-{i}": 3 for i in range(trials)}
        asyncio.run(_prepare(cluster.bootstrap, {names["rf1"]: 1, names["rf3"]: 3, **failover_topics}))
        for key, topic in names.items():
            progress(f"{key}: throughput for {seconds:g} s")
            row = _throughput(cluster, topic, seconds)
            progress(f"{key}: latency at {rate} records/s")
            row["latency"] = _latency(cluster, topic, rate, seconds)
            result[key] = row
        result["rf3_vs_rf1"] = round(
            result["rf3"]["records_per_s"] / max(result["rf1"]["records_per_s"], 1), 2
        )
        outages = []
        for i, topic in enumerate(failover_topics):
            leader = asyncio.run(_leader_now(cluster.bootstrap, topic))
            progress(f"failover trial {i + 1}/{trials}: SIGKILL node {leader}, the leader")
            outages.append(_failover_trial(cluster, topic, leader, seconds=6.0))
            # The restarted node catches up before the next trial kills another leader.
            time.sleep(2.0)
        result["failover_s"] = {
            "trials": [round(o, 3) for o in outages],
            "p50": round(statistics.median(outages), 3),
            "max": round(max(outages), 3),
        }
    return result
