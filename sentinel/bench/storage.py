"""``sentinel bench storage``: the storage engine's figures.

Every LSM figure goes through the same path the broker uses: ``Store.write`` -> the
MemtableOwner actor -> the WalWriter actor (group commit) -> reply, on a real directory
with real fsyncs, flushes and compactions of small entries in a worker process (as a node's
store). Writers are concurrent Trio tasks, as concurrent producers are.

* skiplist put/get: the bare memtable structure, 100k random 16-byte keys;
* lsm put: one 16-byte key + 100-byte value per write, at each sync mode;
* lsm batch: Kafka-style record batches of 1000 x 100-byte records, one batch per write
  (the broker stores a batch verbatim under its base offset: this is its append path);
* lsm write-batch: 1000 separate keys per atomic write batch (a different shape, for
  comparison: each record costs a skip-list insert);
* memtable overhead: bytes of Python heap per entry beyond the key and value bytes.
"""

from __future__ import annotations

import os
import random
import struct
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import trio

from sentinel.records import build_batch
from sentinel.storage import builds
from sentinel.storage.memtable import Memtable
from sentinel.storage.options import StorageOptions, SyncMode
from sentinel.storage.processes import WorkerProcess
from sentinel.storage.store import Store, open_store

KEY = struct.Struct(">QQ")  # 16-byte keys: (writer, counter), ordered like partition/offset
VALUE_SIZE = 100
RECORDS_PER_BATCH = 1000


def _keys(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(16) for _ in range(count)]


def bench_skiplist(count: int) -> dict[str, float]:
    keys = _keys(count, seed=1)
    value = b"v" * VALUE_SIZE
    skiplist = builds.skiplist.SkipList()
    put = skiplist.put
    started = time.perf_counter()
    for seq, key in enumerate(keys, 1):
        put(key, seq, value)
    put_seconds = time.perf_counter() - started
    get = skiplist.get
    random.Random(2).shuffle(keys)
    started = time.perf_counter()
    for key in keys:
        get(key)
    get_seconds = time.perf_counter() - started
    return {"put_ops_per_s": count / put_seconds, "get_ops_per_s": count / get_seconds}


def bench_memtable_overhead(count: int) -> float:
    keys = _keys(count, seed=3)
    values = [os.urandom(VALUE_SIZE) for _ in range(count)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    memtable = Memtable(0)
    for seq, (key, value) in enumerate(zip(keys, values, strict=True), 1):
        memtable.put(key, seq, value)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    # The key and value objects already existed; what the memtable adds is pure overhead
    # (nodes, pointer lists, the seq ints).
    return (after - before) / count


async def _run_writers(
    store: Store,
    writers: int,
    duration: float,
    make_ops: Callable[[int, int], list[tuple[bytes, bytes | None]]],
) -> tuple[int, float, list[float]]:
    """``writers`` concurrent tasks writing until ``duration`` passes; returns
    (writes, seconds, per-write latencies)."""
    done = 0
    latencies: list[float] = []
    deadline = time.perf_counter() + duration

    async def writer(wid: int) -> None:
        nonlocal done
        counter = 0
        perf = time.perf_counter
        while perf() < deadline:
            ops = make_ops(wid, counter)
            t0 = perf()
            await store.write(ops)
            latencies.append(perf() - t0)
            counter += 1
            done += 1

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for wid in range(writers):
            nursery.start_soon(writer, wid)
    return done, time.perf_counter() - started, latencies


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def bench_lsm_put(sync: SyncMode, writers: int, duration: float) -> dict[str, float]:
    value = b"v" * VALUE_SIZE
    pack = KEY.pack
    with tempfile.TemporaryDirectory(prefix="sentinel-bench-") as tmp:
        async with open_store(Path(tmp), StorageOptions(sync=sync), run_in_process=WorkerProcess()) as store:
            writes, seconds, latencies = await _run_writers(
                store, writers, duration, lambda wid, n: [(pack(wid, n), value)]
            )
    return {
        "ops_per_s": writes / seconds,
        "p50_ms": _percentile(latencies, 0.5) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
    }


async def bench_lsm_record_batches(sync: SyncMode, writers: int, duration: float) -> dict[str, float]:
    value = os.urandom(VALUE_SIZE)
    batch = build_batch([(None, value, (), 0)] * RECORDS_PER_BATCH)
    pack = KEY.pack
    with tempfile.TemporaryDirectory(prefix="sentinel-bench-") as tmp:
        async with open_store(Path(tmp), StorageOptions(sync=sync), run_in_process=WorkerProcess()) as store:
            writes, seconds, _ = await _run_writers(
                store, writers, duration, lambda wid, n: [(pack(wid, n * RECORDS_PER_BATCH), batch)]
            )
    return {
        "records_per_s": writes * RECORDS_PER_BATCH / seconds,
        "mb_per_s": writes * len(batch) / seconds / 1e6,
    }


async def bench_lsm_write_batches(sync: SyncMode, writers: int, duration: float) -> dict[str, float]:
    value = b"v" * VALUE_SIZE
    pack = KEY.pack
    with tempfile.TemporaryDirectory(prefix="sentinel-bench-") as tmp:
        async with open_store(Path(tmp), StorageOptions(sync=sync), run_in_process=WorkerProcess()) as store:

            def ops(wid: int, n: int) -> list[tuple[bytes, bytes | None]]:
                base = n * RECORDS_PER_BATCH
                return [(pack(wid, base + i), value) for i in range(RECORDS_PER_BATCH)]

            writes, seconds, _ = await _run_writers(store, writers, duration, ops)
    return {"records_per_s": writes * RECORDS_PER_BATCH / seconds}


async def run_storage_bench(*, quick: bool = False, progress: Callable[[str], None] = lambda _: None) -> dict:
    duration = 1.0 if quick else 3.0
    count = 20_000 if quick else 100_000
    writers = 64
    progress("skip list")
    skiplist = bench_skiplist(count)
    progress("memtable overhead")
    overhead = bench_memtable_overhead(count)
    puts: dict[str, dict[str, float]] = {}
    for sync in (SyncMode.NONE, SyncMode.INTERVAL, SyncMode.ALWAYS):
        progress(f"lsm put, sync {sync}")
        puts[str(sync)] = await bench_lsm_put(sync, writers, duration)
    progress("lsm record batches, sync interval")
    batches = await bench_lsm_record_batches(SyncMode.INTERVAL, 4, duration)
    progress("lsm write batches, sync interval")
    write_batches = await bench_lsm_write_batches(SyncMode.INTERVAL, 4, duration)
    return {
        "skiplist_keys": count,
        "skiplist_put_ops_per_s": round(skiplist["put_ops_per_s"]),
        "skiplist_get_ops_per_s": round(skiplist["get_ops_per_s"]),
        "lsm_put_ops_per_s": {mode: round(r["ops_per_s"]) for mode, r in puts.items()},
        "lsm_put_latency_ms": {
            mode: {"p50": round(r["p50_ms"], 3), "p99": round(r["p99_ms"], 3)} for mode, r in puts.items()
        },
        "lsm_put_concurrent_writers": writers,
        "lsm_batch_records_per_s": round(batches["records_per_s"]),
        "lsm_batch_mb_per_s": round(batches["mb_per_s"], 1),
        "lsm_writebatch_records_per_s": round(write_batches["records_per_s"]),
        "memtable_overhead_bytes_per_entry": round(overhead, 1),
        "duration_s_per_figure": duration,
    }
