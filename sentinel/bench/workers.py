"""Client roles of the broker benchmarks, each run in its own process.

``python -m sentinel.bench.workers ROLE '{"address": ..., ...}'`` runs one role and prints
its result as one JSON line on stdout (after optional ``{"event": ...}`` lines). Roles:

- ``produce``: send 100-byte records as fast as the Producer takes them for a fixed time
  (or count), then flush: records/s.
- ``produce-rate``: send at a fixed rate; latency of each record from ``send()`` to its
  acknowledgement. With ``stamp`` the value starts with the send time (``time.monotonic_ns``,
  the same clock in every process on the machine) for the end-to-end consumer.
- ``preload``: fill a topic fast (one pre-built batch sent over and over), bypassing the
  Producer: also how fast the broker takes batches when the client costs nothing per record.
- ``consume``: read N records from offset 0 with the Consumer (``getmany`` or ``async for``):
  records/s.
- ``follow``: the end-to-end consumer: positioned at the end, it reports ``ready``, then
  reads N stamped records and measures the time from each send to its receipt.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import struct
import sys
import time
from array import array
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sentinel.errors import AlreadyExists

STAMP = struct.Struct(">Q")
# A produce run checks the clock once per this many records.
_CLOCK_EVERY = 1000


def percentiles_ms(
    samples_ns: Sequence[float], points: Sequence[float] = (0.5, 0.99, 0.999)
) -> dict[str, float]:
    """Nearest-rank percentiles of nanosecond samples, in milliseconds (plus max and mean)."""
    ordered = sorted(samples_ns)
    n = len(ordered)
    out: dict[str, float] = {}
    for q in points:
        label = "p" + f"{q * 100:g}".replace(".", "")
        out[label] = round(ordered[max(0, math.ceil(q * n) - 1)] / 1e6, 3) if n else 0.0
    out["max"] = round(ordered[-1] / 1e6, 3) if n else 0.0
    out["mean"] = round(sum(ordered) / n / 1e6, 3) if n else 0.0
    return out


async def timed_calls(
    call: Callable[[], Awaitable[object]], calls: int, warmup: int
) -> tuple[dict[str, float], float]:
    """``warmup`` calls of ``call``, then ``calls`` more one after another, timed: their
    latency percentiles in microseconds and the process's CPU microseconds per call."""
    for _ in range(warmup):
        await call()
    latencies: list[int] = []
    clock = time.perf_counter_ns
    cpu = time.process_time()
    for _ in range(calls):
        started = clock()
        await call()
        latencies.append(clock() - started)
    cpu = time.process_time() - cpu
    latency_us = {key: round(value * 1000, 1) for key, value in percentiles_ms(latencies).items()}
    return latency_us, round(cpu / calls * 1e6, 1)


def emit_event(name: str, **fields: Any) -> None:
    """One ``{"event": name, ...}`` line for the orchestrator (``Worker.wait_for``)."""
    print(json.dumps({"event": name, **fields}), flush=True)


async def _ensure_topic(address: str, topic: str) -> None:
    from sentinel.client import Admin

    async with Admin(address) as admin:
        try:
            await admin.create_topic(topic, partitions=1)
        except AlreadyExists:
            pass


def _value(size: int) -> bytes:
    # Not all zeros, not random: compression is off, so only the length matters.
    return bytes(i % 251 for i in range(size))


async def produce(p: dict[str, Any]) -> dict[str, Any]:
    from sentinel.client import Producer

    address, topic = p["address"], p["topic"]
    await _ensure_topic(address, topic)
    value = _value(p["record_bytes"])
    seconds: float = p.get("seconds") or 0.0
    limit: int = p.get("records") or 0
    async with Producer(
        address, acks=p["acks"], linger_ms=p["linger_ms"], batch_size=p["batch_size"]
    ) as producer:
        first = await producer.send_and_wait(topic, value, partition=0)  # warm: connection, metadata
        send = producer.send
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        deadline = t0 + seconds
        sent = 0
        future = None
        while True:
            chunk = min(_CLOCK_EVERY, limit - sent) if limit else _CLOCK_EVERY
            for _ in range(chunk):
                future = await send(topic, value, partition=0)
            sent += chunk
            if (limit and sent >= limit) or (not limit and time.perf_counter() >= deadline):
                break
        await producer.flush()
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        assert future is not None
        last = future.result()  # raises the delivery error of the last record, if any
    if p["acks"] != 0 and last.offset - first.offset != sent:
        raise RuntimeError(f"sent {sent} records but offsets advanced by {last.offset - first.offset}")
    return {"records": sent, "seconds": elapsed, "client_cpu_s": cpu}


async def produce_rate(p: dict[str, Any]) -> dict[str, Any]:
    from sentinel.client import Producer

    address, topic = p["address"], p["topic"]
    await _ensure_topic(address, topic)
    size: int = p["record_bytes"]
    stamp: bool = p.get("stamp", False)
    plain = _value(size)
    padding = plain[STAMP.size :]
    rate: float = p["rate"]
    total = int(rate * p["seconds"])
    latencies = array("d", bytes(8 * total))
    failures = 0
    clock = time.perf_counter_ns

    def done(index: int, start: int, future: asyncio.Future[Any]) -> None:
        nonlocal failures
        if future.exception() is not None:
            failures += 1
        latencies[index] = clock() - start

    async with Producer(address, acks=p["acks"], linger_ms=p["linger_ms"]) as producer:
        for _ in range(p.get("warmup", 100)):  # connection, metadata, first appends
            await producer.send_and_wait(topic, plain, partition=0)
        emit_event("started")
        send = producer.send
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        sent = 0
        while sent < total:
            due = min(total, int((time.perf_counter() - t0) * rate) + 1)
            while sent < due:
                start = clock()
                value = STAMP.pack(time.monotonic_ns()) + padding if stamp else plain
                future = await send(topic, value, partition=0)
                future.add_done_callback(functools.partial(done, sent, start))
                sent += 1
            delay = t0 + sent / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        send_seconds = time.perf_counter() - t0
        await producer.flush()
        await asyncio.sleep(0)  # the done callbacks of the last answers run now
        cpu = time.process_time() - cpu0
    return {
        "records": total,
        "failures": failures,
        "achieved_rate": round(total / send_seconds),
        "seconds": send_seconds,
        "client_cpu_s": cpu,
        "latency_ms": percentiles_ms(latencies),
    }


async def preload(p: dict[str, Any]) -> dict[str, Any]:
    from sentinel.client.connection import Connection, parse_address
    from sentinel.generated.sentinel import v1 as pb
    from sentinel.records import build_batch

    address, topic = p["address"], p["topic"]
    await _ensure_topic(address, topic)
    value = _value(p["record_bytes"])
    per_batch: int = p.get("batch_records", 1000)
    batches_per_request: int = p.get("batches_per_request", 8)
    now = time.time_ns() // 1_000_000
    batch = build_batch([(None, value, (), now)] * per_batch)
    per_request = per_batch * batches_per_request
    requests = -(-p["records"] // per_request)
    acks = pb.Acks.ALL if p.get("acks", 1) == "all" else pb.Acks.LEADER
    request = pb.ProduceRequest(
        topic=topic, partition=0, record_batches=batch * batches_per_request, acks=acks
    )
    conn = Connection(*parse_address(address))
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    try:
        queue: asyncio.Queue[None] = asyncio.Queue()
        for _ in range(requests):
            queue.put_nowait(None)

        async def pump() -> None:
            while not queue.empty():
                queue.get_nowait()
                with conn.errors:
                    await conn.stub.produce(request, timeout=60)

        await asyncio.gather(*(pump() for _ in range(p.get("in_flight", 4))))
    finally:
        conn.close()
    return {
        "records": requests * per_request,
        "seconds": time.perf_counter() - t0,
        "client_cpu_s": time.process_time() - cpu0,
    }


async def consume(p: dict[str, Any]) -> dict[str, Any]:
    """Read ``records`` records from offset 0 with ``getmany`` (``mode`` "getmany", the
    default) or ``async for`` (``mode`` "async-for"). The records are only counted, as the
    figures this bench is compared with were measured: a record is complete when the
    consumer hands it out (nothing is decoded later, on access), so counting leaves out only
    the application's own work."""
    from sentinel.client import Consumer, TopicPartition

    tp = TopicPartition(p["topic"], 0)
    target: int = p["records"]
    mode: str = p.get("mode", "getmany")
    kwargs = {k: p[k] for k in ("fetch_max_bytes", "max_poll_records") if p.get(k)}
    async with Consumer(p["address"], auto_offset_reset="earliest", **kwargs) as consumer:
        consumer.assign([tp])
        consumer.seek(tp, 0)
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        received = 0
        if mode == "async-for":
            async for _ in consumer:
                received += 1
                if received >= target:
                    break
        else:
            while received < target:
                batch = await consumer.getmany(timeout_ms=10_000)
                if not batch:
                    raise RuntimeError(f"no records for 10 s after {received} of {target}")
                for records in batch.values():
                    received += len(records)
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    return {"records": received, "seconds": elapsed, "client_cpu_s": cpu}


async def follow(p: dict[str, Any]) -> dict[str, Any]:
    from sentinel.client import Consumer, TopicPartition

    tp = TopicPartition(p["topic"], 0)
    await _ensure_topic(p["address"], p["topic"])
    target: int = p["records"]
    skip: int = p.get("skip", 0)  # the producer's warm-up records
    latencies = array("d")
    async with Consumer(p["address"], auto_offset_reset="latest", fetch_max_wait_ms=500) as consumer:
        consumer.assign([tp])
        await consumer.seek_to_end(tp)
        await consumer.position(tp)
        emit_event("ready")
        received = 0
        unpack = STAMP.unpack_from
        now = time.monotonic_ns
        while received < target:
            batch = await consumer.getmany(timeout_ms=30_000)
            if not batch:
                raise RuntimeError(f"no records for 30 s after {received} of {target}")
            arrived = now()
            for records in batch.values():
                for record in records:
                    if received >= skip:
                        value = record.value
                        assert value is not None
                        latencies.append(arrived - unpack(value)[0])
                    received += 1
    return {"records": received - skip, "latency_ms": percentiles_ms(latencies)}


async def produce_batches(p: dict[str, Any]) -> dict[str, Any]:
    """``Producer.send_batch`` of ``batch_records`` values at a time, pipelined."""
    from sentinel.client import Producer

    address, topic = p["address"], p["topic"]
    await _ensure_topic(address, topic)
    values = [_value(p["record_bytes"])] * p["batch_records"]
    total: int = p["records"]
    async with Producer(address, acks=p["acks"], linger_ms=p["linger_ms"]) as producer:
        first = await (await producer.send_batch(topic, values[:1], partition=0))  # warm up
        send_batch = producer.send_batch
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        sent = 0
        future = None
        while sent < total:
            future = await send_batch(topic, values, partition=0)
            sent += len(values)
        await producer.flush()
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        assert future is not None
        last = future.result()
    if p["acks"] != 0 and last.base_offset + last.record_count - (first.base_offset + 1) != sent:
        raise RuntimeError(f"sent {sent} records but offsets do not match")
    return {"records": sent, "seconds": elapsed, "client_cpu_s": cpu}


async def probe(p: dict[str, Any]) -> dict[str, Any]:
    """Send one record every ``interval_ms`` for ``seconds`` (acks=all, retried) and report,
    for each acknowledgement, when its record was sent and when the acknowledgement arrived
    (``time.monotonic``, comparable across processes on one machine): what a failover
    benchmark reads the outage from."""
    from sentinel.client import Producer

    address, topic = p["address"], p["topic"]
    acked: list[tuple[float, float]] = []
    failures = 0

    def done_at(sent: float) -> Callable[[Any], None]:
        def done(future: Any) -> None:
            nonlocal failures
            if future.exception() is None:
                acked.append((sent, time.monotonic()))
            else:
                failures += 1

        return done

    async with Producer(address, acks="all", linger_ms=0, request_timeout_ms=10_000, retries=50) as producer:
        await producer.send_and_wait(topic, b"warm", partition=0)
        emit_event("started")
        interval = p["interval_ms"] / 1000
        deadline = time.monotonic() + p["seconds"]
        while time.monotonic() < deadline:
            sent = time.monotonic()
            future = await producer.send(topic, b"probe", partition=0)
            future.add_done_callback(done_at(sent))
            await asyncio.sleep(interval)
        await producer.flush()
        await asyncio.sleep(0)
    return {"acked": acked, "failures": failures}


async def roundtrip(p: dict[str, Any]) -> dict[str, Any]:
    """``send_and_wait`` (acks=all, linger 0) in a loop, one call in flight: each call's
    round trip and the client's CPU per call (``sentinel bench roundtrip``)."""
    from sentinel.client import Producer

    address, topic = p["address"], p["topic"]
    await _ensure_topic(address, topic)
    value = _value(p["record_bytes"])
    async with Producer(address, acks="all", linger_ms=0) as producer:
        send_and_wait = producer.send_and_wait
        latency_us, cpu_us = await timed_calls(
            lambda: send_and_wait(topic, value, partition=0), p["calls"], p["warmup"]
        )
    return {"latency_us": latency_us, "client_cpu_us": cpu_us}


async def grpc_floor_server(p: dict[str, Any]) -> dict[str, Any]:
    from sentinel.bench import grpc_floor

    return await grpc_floor.serve(p)


async def grpc_floor_client(p: dict[str, Any]) -> dict[str, Any]:
    from sentinel.bench import grpc_floor

    return await grpc_floor.call(p)


ROLES = {
    "produce": produce,
    "produce-batches": produce_batches,
    "produce-rate": produce_rate,
    "preload": preload,
    "consume": consume,
    "follow": follow,
    "probe": probe,
    "roundtrip": roundtrip,
    "grpc-floor-server": grpc_floor_server,
    "grpc-floor-client": grpc_floor_client,
}


def main(argv: Sequence[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    role, params = args[0], json.loads(args[1])
    try:
        result = asyncio.run(ROLES[role](params))
    except Exception as exc:  # one line for the orchestrator to report, no traceback
        print(f"{role}: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
