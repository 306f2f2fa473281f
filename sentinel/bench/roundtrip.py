"""``sentinel bench roundtrip``: the sequential acks=all round trip, and what each layer costs.

One client process calls ``Producer.send_and_wait`` (acks=all, linger 0, 100-byte records)
in a loop, one call in flight: the latency a request/response application sees. Beside its
percentiles the bench reports where the time goes, layer by layer:

* ``client_cpu_us``: the client process's CPU per call (the client library, grpclib, h2,
  protobuf);
* ``broker_asyncio_cpu_us``: the broker's asyncio thread (HTTP/2, gRPC framing, protobuf,
  the asyncio half of the bridge in ``sentinel/server/bridge.py``);
* ``broker_trio_cpu_us``: the broker's Trio thread (the Trio half of the bridge, the produce
  handler, the partition replica and its Raft group, the storage engine);
* ``grpc``: the floor of HTTP/2 and gRPC alone on this machine: a bare grpclib client and
  server (each its own process, raw-bytes messages of a produce's sizes, no protobuf, nothing
  of Sentinel's; ``sentinel/bench/grpc_floor.py``), as latency and each side's CPU per call;
* measured in process, without gRPC: ``replica`` (a produce through a one-voter partition
  replica: propose, persist, commit, answer) and ``storage`` (one ``Store.write`` of a
  record), each as sequential latency and CPU per call.

The broker's threads are read from ``/proc`` (Linux); elsewhere those figures are None.
The machine runs the client and the broker on its cores alike: with one call in flight
the round trip is roughly the sum of the client's and the broker's CPU per call plus the
wake-ups between them.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from sentinel.bench.broker import RECORD_BYTES, WORKER_TIMEOUT_S, Progress, _broker, _quiet, _topic
from sentinel.bench.process import Worker, run_worker
from sentinel.bench.workers import timed_calls
from sentinel.broker.replica import ACKS_ALL, PartitionReplica
from sentinel.records import RecordBatch, build_batch
from sentinel.storage.options import StorageOptions, SyncMode
from sentinel.storage.store import Store

DEFAULT_CALLS = 5_000
QUICK_CALLS = 500
# Calls made before measuring: the connection, metadata and the allocator settle.
WARMUP_CALLS = 200
# The targets for the gRPC round trip (issue 11), in microseconds.
TARGET_P50_US = 500
TARGET_P99_US = 1_500
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def thread_cpu_seconds(pid: int) -> dict[str, float] | None:
    """CPU seconds of each thread of ``pid`` by role: ``trio`` (the main thread, where
    ``trio.run`` runs), ``asyncio`` (the bridge's thread, named ``sentinel-grpc``) and
    ``other``; None where /proc is not available."""
    out = {"trio": 0.0, "asyncio": 0.0, "other": 0.0}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # the thread ended meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        seconds = (int(fields[11]) + int(fields[12])) / _TICKS
        role = "trio" if tid == str(pid) else "asyncio" if name.startswith("sentinel-grpc") else "other"
        out[role] += seconds
    return out


async def _timed_calls(call: Callable[[], Any], calls: int) -> dict[str, Any]:
    latency_us, cpu_us = await timed_calls(call, calls, WARMUP_CALLS)
    return {"latency_us": latency_us, "cpu_us": cpu_us}


async def bench_storage_layer(calls: int, sync: SyncMode) -> dict[str, Any]:
    """Sequential ``Store.write`` of one 100-byte record: the storage engine's share."""
    value = bytes(RECORD_BYTES)
    counter = iter(range(1 << 62))
    with tempfile.TemporaryDirectory(prefix="sentinel-bench-") as tmp:
        async with trio.open_nursery() as nursery:
            store: Store = await nursery.start(Store(Path(tmp), StorageOptions(sync=sync)).run)
            try:
                return await _timed_calls(lambda: store.write([(b"k%d" % next(counter), value)]), calls)
            finally:
                await store.aclose()


async def bench_replica_layer(calls: int, sync: SyncMode) -> dict[str, Any]:
    """Sequential acks=all produce of one 100-byte record through a one-voter partition
    replica (the broker's path below the handler: Raft propose, persist, commit, answer)."""
    batch = RecordBatch(build_batch([(None, bytes(RECORD_BYTES), [], 0)]))
    with tempfile.TemporaryDirectory(prefix="sentinel-bench-") as tmp:
        async with trio.open_nursery() as nursery:
            store: Store = await nursery.start(Store(Path(tmp), StorageOptions(sync=sync)).run)
            replica = PartitionReplica(
                store,
                topic="bench",
                topic_id=1,
                partition=0,
                node_id=1,
                replicas=(1,),
                send=lambda _group, _message: None,
                rng=random.Random(1),
            )
            await nursery.start(replica.run)
            try:
                while not replica.view.leader_ready:
                    await replica.view.changed.wait()
                return await _timed_calls(lambda: replica.produce([batch], ACKS_ALL), calls)
            finally:
                replica.close()
                await replica.wait_stopped()
                await store.aclose()


def bench_grpc_floor(calls: int) -> dict[str, Any]:
    """Sequential calls of a bare grpclib client to a bare grpclib server (two processes):
    what HTTP/2 and gRPC alone cost per call, each side's CPU beside the latency."""
    params = {"calls": calls, "warmup": WARMUP_CALLS}
    server = Worker("grpc-floor-server", params)
    try:
        port = server.wait_for("listening")["port"]
        client = run_worker("grpc-floor-client", {**params, "port": port}, timeout=WORKER_TIMEOUT_S)
        served = server.result(WORKER_TIMEOUT_S)
    finally:
        server.kill()
    return {
        "latency_us": client["latency_us"],
        "client_cpu_us": client["client_cpu_us"],
        "server_cpu_us": served["server_cpu_us"],
    }


def run_roundtrip_bench(
    *,
    broker_address: str | None = None,
    sync: str = "interval",
    quick: bool = False,
    calls: int | None = None,
    broker_cpu: int | None = None,
    progress: Progress = _quiet,
) -> dict[str, Any]:
    calls = calls or (QUICK_CALLS if quick else DEFAULT_CALLS)
    result: dict[str, Any] = {"bench": "roundtrip", "record_bytes": RECORD_BYTES, "calls": calls}
    with _broker(broker_address, sync, broker_cpu) as broker:
        result["broker"] = broker.describe()
        progress(f"{calls:,} sequential send_and_wait calls, acks=all")
        pid = broker.process.pid if broker.process is not None else None
        before = thread_cpu_seconds(pid) if pid is not None else None
        rpc = run_worker(
            "roundtrip",
            {
                "address": broker.address,
                "topic": _topic("roundtrip"),
                "record_bytes": RECORD_BYTES,
                "calls": calls,
                "warmup": WARMUP_CALLS,
            },
            timeout=WORKER_TIMEOUT_S,
        )
        after = thread_cpu_seconds(pid) if pid is not None else None
    # The broker's CPU includes the worker's warm-up calls: counted in the divisor.
    total = calls + WARMUP_CALLS
    layers: dict[str, Any] = {"client_cpu_us": rpc["client_cpu_us"]}
    for role in ("asyncio", "trio", "other"):
        layers[f"broker_{role}_cpu_us"] = (
            round((after[role] - before[role]) / total * 1e6, 1) if before and after else None
        )
    progress("the HTTP/2 + gRPC floor: a bare grpclib client and server")
    layers["grpc"] = bench_grpc_floor(calls)
    mode = SyncMode(sync) if broker_address is None else SyncMode.INTERVAL
    progress("the replica and storage layers in process")
    layers["replica"] = trio.run(bench_replica_layer, calls, mode)
    layers["storage"] = trio.run(bench_storage_layer, calls, mode)
    result.update(
        {
            "latency_us": rpc["latency_us"],
            "layers": layers,
            "target_us": {"p50": TARGET_P50_US, "p99": TARGET_P99_US},
        }
    )
    return result
