"""Broker benchmarks: produce throughput and latency, consume throughput, end-to-end latency.

One broker process (``sentinel run``, started here on a temporary data directory unless an
address is given), one producer process and one consumer process (``sentinel.bench.workers``),
100-byte records on a one-partition topic. Every figure comes with the CPU seconds the
broker and the client process spent on it, so a run also says which side was the
bottleneck (on a 2-core machine, a process near 1 CPU second per second is saturated).

- ``produce``: Producer throughput with acks=1 and acks=all (the client's batching
  defaults unless overridden), acks=all again with 1 MB batches (``LARGE_BATCH_SIZE``, the
  batch size librdkafka defaults to), each with the client's and the broker's CPU
  microseconds per record, the same records through ``Producer.send_batch`` (one
  RecordBatch per call: no per-record work after encoding, so close to what the broker
  alone sustains; the gap is the per-record API's cost), then send->ack latency at a fixed
  rate (acks=all). Each run gets a fresh broker, so none inherits the flush and compaction
  work of data an earlier run wrote.
- ``consume``: preload a topic (pre-built batches), then a Consumer reads it from offset 0,
  once with ``getmany`` and once with ``async for`` (a fresh consumer process each, started
  once the broker's background work from the preload has ended: ``settle``), with the
  client's and the broker's CPU microseconds per record.
- ``e2e``: a producer at a fixed rate and a consumer following the topic: send -> receipt.

MB/s counts record values only (1 MB = 10^6 bytes), not keys, framing or protocol bytes.
Latencies are measured from the ``send()`` call (the producer paces in ~1 ms steps; the
achieved rate is reported beside them).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sentinel.bench.process import BrokerProcess, Worker, run_worker
from sentinel.errors import InvalidArgument

RECORD_BYTES = 100
# Run lengths (a throughput run then flushes what is buffered, ~0.5 s more).
DEFAULT_PRODUCE_SECONDS = 5.0
QUICK_PRODUCE_SECONDS = 1.0
DEFAULT_RATE = 10_000
DEFAULT_LATENCY_SECONDS = 5.0
QUICK_LATENCY_SECONDS = 1.0
# The fixed-rate runs: a short linger, as a latency-sensitive producer would configure.
DEFAULT_LATENCY_LINGER_MS = 1.0
DEFAULT_CONSUME_RECORDS = 2_000_000
QUICK_CONSUME_RECORDS = 50_000
WARMUP_RECORDS = 100
# The send_batch rows of the produce bench: records sent.
DEFAULT_PREBUILT_RECORDS = 2_000_000
QUICK_PREBUILT_RECORDS = 100_000
# The second acks=all throughput run: librdkafka's default batch.size (1,000,000 bytes),
# which a throughput-minded Kafka user sets; the first run uses the Producer's default.
LARGE_BATCH_SIZE = 1_000_000
# Bytes a 100-byte record takes in a batch beyond its value (length, attributes, deltas...).
RECORD_FRAMING = 9
# Generous bounds on a worker's run time: a worker that hangs fails the bench instead.
WORKER_TIMEOUT_S = 600.0

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


class _Broker:
    """Either a broker started here or an external one (``address`` given)."""

    def __init__(self, address: str | None, sync: str, cpu: int | None = None) -> None:
        self.external = address is not None
        self.sync = sync if address is None else "external"
        self.cpu = cpu
        self.process = None if address is not None else BrokerProcess(sync=sync, cpu=cpu)
        self.address = address or ""

    def cpu_seconds(self) -> float | None:
        return self.process.cpu_seconds() if self.process is not None else None

    def describe(self) -> dict[str, Any]:
        return {"address": self.address, "external": self.external, "sync": self.sync, "cpu": self.cpu}


@contextmanager
def _broker(address: str | None, sync: str, cpu: int | None = None) -> Iterator[_Broker]:
    broker = _Broker(address, sync, cpu)
    if broker.process is None:
        yield broker
        return
    with broker.process:
        broker.address = broker.process.address
        yield broker


def _check_positive(**values: float | None) -> None:
    for name, value in values.items():
        if value is not None and not value > 0:
            raise InvalidArgument(f"--{name.replace('_', '-')} must be > 0, got {value}")


def _topic(kind: str) -> str:
    return f"bench-{kind}-{uuid.uuid4().hex[:8]}"


def _rates(records: int, seconds: float, record_bytes: int) -> dict[str, Any]:
    return {
        "records": records,
        "seconds": round(seconds, 3),
        "records_per_s": round(records / seconds) if seconds > 0 else 0,
        "mb_per_s": round(records * record_bytes / seconds / 1e6, 2) if seconds > 0 else 0.0,
    }


def _per_record_cpu(records: int, client_cpu_s: float, broker_cpu_s: float | None) -> dict[str, Any]:
    """CPU microseconds per record of each process (the broker's None if unknown)."""
    per = 1e6 / records if records else 0.0
    return {
        "client_cpu_us_per_record": round(client_cpu_s * per, 3),
        "broker_cpu_us_per_record": round(broker_cpu_s * per, 3) if broker_cpu_s is not None else None,
    }


def _cpu_per_record(cpu_s: float | None, records: int) -> float | None:
    """CPU microseconds per record (None when the CPU time is unknown)."""
    return round(cpu_s / records * 1e6, 3) if cpu_s is not None and records else None


# Before each consume run the bench waits until the broker's background work from the
# preload (memtable flushes, the compaction of their tables) is done: its CPU over a window
# below this share of a core, for at most SETTLE_TIMEOUT_S. Otherwise the first run's
# figures include that work (the broker's CPU per record) and its competition for the
# machine's cores (the client's: 0.65-0.69 against 0.51-0.53 us a record settled).
SETTLE_IDLE_SHARE = 0.05
SETTLE_WINDOW_S = 1.0
SETTLE_TIMEOUT_S = 30.0


def settle(
    cpu_seconds: Callable[[], float | None],
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> float | None:
    """Wait until a process is quiet: its CPU seconds (``cpu_seconds``) grew by less than
    SETTLE_IDLE_SHARE of a core over SETTLE_WINDOW_S, or SETTLE_TIMEOUT_S passed. The
    seconds waited; None (at once) when its CPU cannot be read (an external broker)."""
    started = clock()
    last = cpu_seconds()
    if last is None:
        return None
    while clock() - started < SETTLE_TIMEOUT_S:
        sleep(SETTLE_WINDOW_S)
        now = cpu_seconds()
        if now is None or now - last < SETTLE_IDLE_SHARE * SETTLE_WINDOW_S:
            break
        last = now
    return round(clock() - started, 1)


def _measured(broker: _Broker, role: str, params: dict[str, Any]) -> tuple[dict[str, Any], float | None]:
    """Run a worker; also return the broker's CPU seconds over the run (None if unknown)."""
    before = broker.cpu_seconds()
    result = run_worker(role, params, timeout=WORKER_TIMEOUT_S)
    after = broker.cpu_seconds()
    return result, (round(after - before, 2) if before is not None and after is not None else None)


def _latency_run(
    broker: _Broker, *, rate: int, seconds: float, acks: str | int, linger_ms: float, record_bytes: int
) -> dict[str, Any]:
    params = {
        "address": broker.address,
        "topic": _topic("latency"),
        "record_bytes": record_bytes,
        "acks": acks,
        "linger_ms": linger_ms,
        "rate": rate,
        "seconds": seconds,
        "warmup": WARMUP_RECORDS,
    }
    result, broker_cpu = _measured(broker, "produce-rate", params)
    return {
        "acks": str(acks),
        "rate": rate,
        "linger_ms": linger_ms,
        "records": result["records"],
        "failures": result["failures"],
        "achieved_rate": result["achieved_rate"],
        "latency_ms": result["latency_ms"],
        "client_cpu_s": round(result["client_cpu_s"], 2),
        "broker_cpu_s": broker_cpu,
    }


def run_produce_bench(
    *,
    broker_address: str | None = None,
    sync: str = "interval",
    quick: bool = False,
    seconds: float | None = None,
    records: int | None = None,
    batch_size: int | None = None,
    linger_ms: float | None = None,
    rate: int = DEFAULT_RATE,
    latency_seconds: float | None = None,
    latency_linger_ms: float = DEFAULT_LATENCY_LINGER_MS,
    record_bytes: int = RECORD_BYTES,
    progress: Progress = _quiet,
) -> dict[str, Any]:
    """Producer throughput with acks=1 and acks=all, then latency at a fixed rate (acks=all)."""
    from sentinel.client.producer import DEFAULT_BATCH_SIZE, DEFAULT_LINGER_MS

    _check_positive(
        seconds=seconds, records=records, batch_size=batch_size, rate=rate, latency_seconds=latency_seconds
    )
    if (linger_ms is not None and linger_ms < 0) or latency_linger_ms < 0:
        raise InvalidArgument("--linger-ms and --latency-linger-ms must be >= 0")
    seconds = seconds or (QUICK_PRODUCE_SECONDS if quick else DEFAULT_PRODUCE_SECONDS)
    prebuilt_records = QUICK_PREBUILT_RECORDS if quick else DEFAULT_PREBUILT_RECORDS
    latency_seconds = latency_seconds or (QUICK_LATENCY_SECONDS if quick else DEFAULT_LATENCY_SECONDS)
    batch_size = batch_size or DEFAULT_BATCH_SIZE
    linger_ms = DEFAULT_LINGER_MS if linger_ms is None else linger_ms
    result: dict[str, Any] = {"bench": "produce", "record_bytes": record_bytes}
    # Each run gets a broker of its own (when this bench starts it): no run inherits the
    # flush and compaction work of the data an earlier one wrote.
    throughput = []
    runs: list[tuple[int | str, int]] = [(1, batch_size), ("all", batch_size)]
    if batch_size != LARGE_BATCH_SIZE:
        runs.append(("all", LARGE_BATCH_SIZE))
    for acks, run_batch_size in runs:
        progress(f"produce throughput, acks={acks}, batch {run_batch_size:,} B")
        with _broker(broker_address, sync) as broker:
            result["broker"] = broker.describe()
            params = {
                "address": broker.address,
                "topic": _topic("produce"),
                "record_bytes": record_bytes,
                "acks": acks,
                "linger_ms": linger_ms,
                "batch_size": run_batch_size,
                "seconds": seconds,
                "records": records,
            }
            run, broker_cpu = _measured(broker, "produce", params)
        throughput.append(
            {
                "acks": str(acks),
                "batch_size": run_batch_size,
                "linger_ms": linger_ms,
                **_rates(run["records"], run["seconds"], record_bytes),
                "client_cpu_s": round(run["client_cpu_s"], 2),
                "broker_cpu_s": broker_cpu,
                "client_cpu_us_per_record": _cpu_per_record(run["client_cpu_s"], run["records"]),
                "broker_cpu_us_per_record": _cpu_per_record(broker_cpu, run["records"]),
            }
        )
    result["throughput"] = throughput
    # The same records through Producer.send_batch, one RecordBatch of about batch_size
    # bytes per call, in the Producer's ~1 MB requests with one in flight: no per-record
    # client work after encoding. The gap to the rows above is the per-record API's cost.
    prebuilt = []
    per_batch = max(1, batch_size // (record_bytes + RECORD_FRAMING))
    for acks in (1, "all"):
        progress(f"Producer.send_batch, acks={acks}")
        with _broker(broker_address, sync) as broker:
            params = {
                "address": broker.address,
                "topic": _topic("prebuilt"),
                "record_bytes": record_bytes,
                "records": prebuilt_records,
                "acks": acks,
                "batch_records": per_batch,
                "linger_ms": linger_ms,
            }
            run, broker_cpu = _measured(broker, "produce-batches", params)
        prebuilt.append(
            {
                "acks": str(acks),
                "batch_records": per_batch,
                **_rates(run["records"], run["seconds"], record_bytes),
                "client_cpu_s": round(run["client_cpu_s"], 2),
                "broker_cpu_s": broker_cpu,
            }
        )
    result["send_batch"] = prebuilt
    progress(f"produce latency at {rate:,} records/s, acks=all")
    with _broker(broker_address, sync) as broker:
        result["latency"] = _latency_run(
            broker,
            rate=rate,
            seconds=latency_seconds,
            acks="all",
            linger_ms=latency_linger_ms,
            record_bytes=record_bytes,
        )
    return result


def run_consume_bench(
    *,
    broker_address: str | None = None,
    sync: str = "interval",
    quick: bool = False,
    records: int | None = None,
    fetch_max_bytes: int | None = None,
    max_poll_records: int | None = None,
    record_bytes: int = RECORD_BYTES,
    progress: Progress = _quiet,
) -> dict[str, Any]:
    """Preload a topic, then one consumer process reads it all from offset 0."""
    _check_positive(records=records, fetch_max_bytes=fetch_max_bytes, max_poll_records=max_poll_records)
    count = records or (QUICK_CONSUME_RECORDS if quick else DEFAULT_CONSUME_RECORDS)
    result: dict[str, Any] = {"bench": "consume", "record_bytes": record_bytes}
    with _broker(broker_address, sync) as broker:
        result["broker"] = broker.describe()
        topic = _topic("consume")
        progress(f"preloading {count:,} records")
        loaded = run_worker(
            "preload",
            {"address": broker.address, "topic": topic, "record_bytes": record_bytes, "records": count},
            timeout=WORKER_TIMEOUT_S,
        )
        result["preload"] = _rates(loaded["records"], loaded["seconds"], record_bytes)
        # Each way of reading gets a fresh consumer process over the same preloaded topic:
        # getmany (500 records per call by default) and ``async for`` (one record a step).
        for key, mode in (("consume", "getmany"), ("async_for", "async-for")):
            progress("waiting for the broker's background work (flushes, compaction) to end")
            settled_after = settle(broker.cpu_seconds)
            progress(f"consuming {loaded['records']:,} records ({mode})")
            params = {
                "address": broker.address,
                "topic": topic,
                "records": loaded["records"],
                "fetch_max_bytes": fetch_max_bytes,
                "max_poll_records": max_poll_records,
                "mode": mode,
            }
            run, broker_cpu = _measured(broker, "consume", params)
            result[key] = {
                "mode": mode,
                **_rates(run["records"], run["seconds"], record_bytes),
                "client_cpu_s": round(run["client_cpu_s"], 2),
                "broker_cpu_s": broker_cpu,
                **_per_record_cpu(run["records"], run["client_cpu_s"], broker_cpu),
                "settled_after_s": settled_after,
            }
    return result


def run_e2e_bench(
    *,
    broker_address: str | None = None,
    sync: str = "interval",
    quick: bool = False,
    rate: int = DEFAULT_RATE,
    seconds: float | None = None,
    acks: str = "all",
    linger_ms: float = DEFAULT_LATENCY_LINGER_MS,
    record_bytes: int = RECORD_BYTES,
    progress: Progress = _quiet,
) -> dict[str, Any]:
    """A producer process at a fixed rate and a consumer process following the topic:
    the time from each ``send()`` to the consumer holding the record."""
    _check_positive(rate=rate, seconds=seconds)
    if linger_ms < 0:
        raise InvalidArgument("--linger-ms must be >= 0")
    seconds = seconds or (QUICK_LATENCY_SECONDS if quick else DEFAULT_LATENCY_SECONDS)
    total = int(rate * seconds)
    if total < 1:
        raise InvalidArgument(f"--rate {rate} for {seconds} s sends no record")
    result: dict[str, Any] = {"bench": "e2e", "record_bytes": record_bytes}
    with _broker(broker_address, sync) as broker:
        result["broker"] = broker.describe()
        topic = _topic("e2e")
        common = {"address": broker.address, "topic": topic}
        follower = Worker("follow", {**common, "records": WARMUP_RECORDS + total, "skip": WARMUP_RECORDS})
        try:
            follower.wait_for("ready")
            progress(f"producing {total:,} records at {rate:,}/s, consumer following")
            before = broker.cpu_seconds()
            produced = run_worker(
                "produce-rate",
                {
                    **common,
                    "record_bytes": record_bytes,
                    "acks": acks,
                    "linger_ms": linger_ms,
                    "rate": rate,
                    "seconds": seconds,
                    "warmup": WARMUP_RECORDS,
                    "stamp": True,
                },
                timeout=WORKER_TIMEOUT_S,
            )
            followed = follower.result(WORKER_TIMEOUT_S)
            after = broker.cpu_seconds()
        finally:
            follower.kill()
    result.update(
        {
            "rate": rate,
            "acks": acks,
            "linger_ms": linger_ms,
            "records": followed["records"],
            "achieved_rate": produced["achieved_rate"],
            "end_to_end_ms": followed["latency_ms"],
            "produce_ms": produced["latency_ms"],
            "broker_cpu_s": round(after - before, 2) if before is not None and after is not None else None,
        }
    )
    return result
