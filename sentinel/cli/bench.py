"""``sentinel bench ...``: benchmarks that print figures (human-readable or --json)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import trio
import typer

from sentinel.bench.machine import machine_info
from sentinel.cli.errors import readable_errors
from sentinel.cli.output import usage_error
from sentinel.client.connection import parse_bootstrap
from sentinel.errors import InvalidArgument
from sentinel.storage.options import SyncMode

app = typer.Typer(help="Measure Sentinel's performance on this machine.", no_args_is_help=True)


_JSON = typer.Option(False, "--json", help="Print one JSON object instead of a table.")
_QUICK = typer.Option(False, "--quick", help="Short runs (smoke test); noisy figures.")


def _print_storage(result: dict) -> None:
    machine = result["machine"]
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, Python {machine['python']}")
    print(f"skip list ({result['skiplist_keys']:,} random 16-byte keys)")
    print(f"  put                      {result['skiplist_put_ops_per_s']:>12,} ops/s")
    print(f"  get                      {result['skiplist_get_ops_per_s']:>12,} ops/s")
    writers = result["lsm_put_concurrent_writers"]
    print(f"lsm single put, 100-byte values, WAL, {writers} concurrent writers")
    for mode, ops in result["lsm_put_ops_per_s"].items():
        latency = result["lsm_put_latency_ms"][mode]
        print(
            f"  sync {mode:<9}           {ops:>12,} ops/s"
            f"   p50 {latency['p50']:.3f} ms  p99 {latency['p99']:.3f} ms"
        )
    print("lsm batched append (sync interval)")
    print(
        f"  record batches of 1000   {result['lsm_batch_records_per_s']:>12,} records/s"
        f"  ({result['lsm_batch_mb_per_s']} MB/s)"
    )
    print(f"  write batches of 1000    {result['lsm_writebatch_records_per_s']:>12,} records/s")
    print(f"memtable overhead          {result['memtable_overhead_bytes_per_entry']:>12} bytes/entry")


@app.command()
@readable_errors
def storage(json_output: bool = _JSON, quick: bool = _QUICK) -> None:
    """Skip list, LSM put at each sync mode, batched append, memtable overhead."""
    from sentinel.bench.storage import run_storage_bench

    progress = _progress(json_output)
    result = trio.run(lambda: run_storage_bench(quick=quick, progress=progress))
    _emit(result, json_output, _print_storage)


# -- broker benchmarks -------------------------------------------------------------------------

_BROKER_HELP = "Benchmark this running broker (host:port) instead of starting one."
_SYNC_HELP = "WAL sync mode of the broker started for the run."


def _progress(json_output: bool) -> Callable[[str], None]:
    def progress(stage: str) -> None:
        if not json_output:
            typer.echo(f"... {stage}", err=True)

    return progress


def _print_header(result: dict) -> None:
    machine = result["machine"]
    broker = result["broker"]
    where = f"external broker {broker['address']}" if broker["external"] else f"sync {broker['sync']}"
    if broker.get("cpu") is not None:
        where += f", on CPU {broker['cpu']}"
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, Python {machine['python']}")
    print(f"one broker ({where}), one client process, {result['record_bytes']}-byte records, 1 partition")


def _cpu(row: dict) -> str:
    broker = row.get("broker_cpu_s")
    return f"cpu: client {row['client_cpu_s']:.1f} s, broker " + (
        f"{broker:.1f} s" if broker is not None else "?"
    )


def _cpu_per_record(row: dict) -> str:
    client, broker = row.get("client_cpu_us_per_record"), row.get("broker_cpu_us_per_record")
    broker_text = f"{broker:.2f} us" if broker is not None else "?"
    return f"per record: client {client:.2f} us, broker {broker_text}"


def _latency(figures: dict) -> str:
    return (
        f"p50 {figures['p50']:.2f} ms  p99 {figures['p99']:.2f} ms  p99.9 {figures['p999']:.2f} ms"
        f"  max {figures['max']:.2f} ms"
    )


def _print_produce(result: dict) -> None:
    _print_header(result)
    for row in result["throughput"]:
        print(
            f"produce acks={row['acks']:<4} batch {row['batch_size']:>9,} B, linger {row['linger_ms']:g} ms"
            f"  {row['records_per_s']:>10,} records/s  {row['mb_per_s']:>7.2f} MB/s"
            f"  ({row['records']:,} in {row['seconds']:.1f} s; {_cpu(row)}; {_cpu_per_record(row)})"
        )
    for row in result["send_batch"]:
        print(
            f"send_batch acks={row['acks']:<4} ({row['batch_records']} records per call)         "
            f"  {row['records_per_s']:>10,} records/s  {row['mb_per_s']:>7.2f} MB/s"
            f"  ({row['records']:,} in {row['seconds']:.1f} s; {_cpu(row)})"
        )
    lat = result["latency"]
    print(
        f"produce latency at {lat['rate']:,} records/s (acks={lat['acks']}, linger {lat['linger_ms']:g} ms,"
        f" achieved {lat['achieved_rate']:,}/s, {lat['failures']} failed)"
    )
    print(f"  send -> ack  {_latency(lat['latency_ms'])}  ({_cpu(lat)})")


def _print_consume(result: dict) -> None:
    _print_header(result)
    pre = result["preload"]
    print(f"preload                 {pre['records_per_s']:>10,} records/s  ({pre['records']:,} records)")
    for label, key in (("getmany", "consume"), ("async for", "async_for")):
        row = result[key]
        broker_us = row["broker_cpu_us_per_record"]
        print(
            f"consume, {label:<9}      {row['records_per_s']:>10,} records/s  {row['mb_per_s']:>7.2f} MB/s"
            f"  ({row['records']:,} in {row['seconds']:.1f} s; {_cpu(row)};"
            f" per record: client {row['client_cpu_us_per_record']:.2f} us, broker "
            + (f"{broker_us:.2f} us)" if broker_us is not None else "? us)")
        )


def _print_e2e(result: dict) -> None:
    _print_header(result)
    print(
        f"producer at {result['rate']:,} records/s (acks={result['acks']}, linger {result['linger_ms']:g} ms,"
        f" achieved {result['achieved_rate']:,}/s), consumer following; {result['records']:,} records"
    )
    print(f"  send -> ack        {_latency(result['produce_ms'])}")
    print(f"  send -> consumer   {_latency(result['end_to_end_ms'])}")


def _emit(result: dict, json_output: bool, printer: Callable[[dict], None]) -> None:
    result["machine"] = machine_info()
    if json_output:
        print(json.dumps(result))
    else:
        printer(result)


_BROKER = typer.Option(None, "--broker", help=_BROKER_HELP)


def _check_broker(broker: str | None) -> None:
    """A malformed --broker is a usage error now, not a worker's failure after a preload."""
    if broker is not None:
        try:
            parse_bootstrap(broker)
        except InvalidArgument as exc:
            usage_error(f"--broker: {exc}")


_SYNC = typer.Option(SyncMode.INTERVAL, "--sync", help=_SYNC_HELP)


@app.command()
@readable_errors
def produce(
    json_output: bool = _JSON,
    quick: bool = _QUICK,
    broker: str | None = _BROKER,
    sync: SyncMode = _SYNC,
    seconds: float | None = typer.Option(None, "--seconds", help="Length of each throughput run."),
    records: int | None = typer.Option(None, "--records", help="Records per throughput run (not timed)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Producer batch_size in bytes."),
    linger_ms: float | None = typer.Option(None, "--linger-ms", help="Producer linger for throughput."),
    rate: int = typer.Option(10_000, "--rate", help="Records/s of the fixed-rate latency run."),
    latency_linger_ms: float = typer.Option(1.0, "--latency-linger-ms", help="Linger of the latency run."),
) -> None:
    """Producer records/s and MB/s (acks=1, acks=all), then send->ack latency at a fixed rate."""
    from sentinel.bench.broker import run_produce_bench

    _check_broker(broker)
    result = run_produce_bench(
        broker_address=broker,
        sync=sync.value,
        quick=quick,
        seconds=seconds,
        records=records,
        batch_size=batch_size,
        linger_ms=linger_ms,
        rate=rate,
        latency_linger_ms=latency_linger_ms,
        progress=_progress(json_output),
    )
    _emit(result, json_output, _print_produce)


@app.command()
@readable_errors
def consume(
    json_output: bool = _JSON,
    quick: bool = _QUICK,
    broker: str | None = _BROKER,
    sync: SyncMode = _SYNC,
    records: int | None = typer.Option(None, "--records", help="Records to preload and read."),
    fetch_max_bytes: int | None = typer.Option(None, "--fetch-max-bytes", help="Consumer fetch size."),
    max_poll_records: int | None = typer.Option(None, "--max-poll-records", help="Records per getmany."),
) -> None:
    """Preload a topic, then consumer processes read it from offset 0 (getmany, async for):
    records/s, MB/s and CPU per record."""
    from sentinel.bench.broker import run_consume_bench

    _check_broker(broker)
    result = run_consume_bench(
        broker_address=broker,
        sync=sync.value,
        quick=quick,
        records=records,
        fetch_max_bytes=fetch_max_bytes,
        max_poll_records=max_poll_records,
        progress=_progress(json_output),
    )
    _emit(result, json_output, _print_consume)


@app.command()
@readable_errors
def e2e(
    json_output: bool = _JSON,
    quick: bool = _QUICK,
    broker: str | None = _BROKER,
    sync: SyncMode = _SYNC,
    rate: int = typer.Option(10_000, "--rate", help="Records/s the producer sends."),
    seconds: float | None = typer.Option(None, "--seconds", help="Length of the run."),
    linger_ms: float = typer.Option(1.0, "--linger-ms", help="Producer linger."),
) -> None:
    """Producer at a fixed rate, consumer following: end-to-end latency (send -> receipt)."""
    from sentinel.bench.broker import run_e2e_bench

    _check_broker(broker)
    result = run_e2e_bench(
        broker_address=broker,
        sync=sync.value,
        quick=quick,
        rate=rate,
        seconds=seconds,
        linger_ms=linger_ms,
        progress=_progress(json_output),
    )
    _emit(result, json_output, _print_e2e)


def _print_roundtrip(result: dict) -> None:
    _print_header(result)
    lat, layers, target = result["latency_us"], result["layers"], result["target_us"]
    print(f"{result['calls']:,} sequential send_and_wait calls (acks=all, linger 0), one in flight")
    print(
        f"  round trip  p50 {lat['p50']:,.0f} us  p99 {lat['p99']:,.0f} us  p99.9 {lat['p999']:,.0f} us"
        f"  (targets: p50 <= {target['p50']:,} us, p99 <= {target['p99']:,} us)"
    )

    def cpu(value: float | None) -> str:
        return "?" if value is None else f"{value:,.0f} us"

    print("  CPU per call, by layer:")
    rows = (
        ("client process (client library, grpclib, h2, protobuf)", "client_cpu_us"),
        ("broker asyncio thread (HTTP/2, gRPC, protobuf, bridge)", "broker_asyncio_cpu_us"),
        ("broker Trio thread (bridge, handler, replica, storage)", "broker_trio_cpu_us"),
        ("broker other threads (fsync, metrics)", "broker_other_cpu_us"),
    )
    for label, key in rows:
        print(f"    {label:<58} {cpu(layers[key])}")
    floor = layers["grpc"]
    print(
        f"  HTTP/2 + gRPC alone (bare grpclib client and server, raw bytes): p50"
        f" {floor['latency_us']['p50']:,.0f} us, p99 {floor['latency_us']['p99']:,.0f} us,"
        f" CPU {floor['client_cpu_us']:,.0f} us client + {floor['server_cpu_us']:,.0f} us server per call"
    )
    for name, what in (
        ("replica", "partition replica (Raft + storage)"),
        ("storage", "storage (Store.write)"),
    ):
        row = layers[name]
        print(
            f"  in process, {what}: p50 {row['latency_us']['p50']:,.0f} us,"
            f" p99 {row['latency_us']['p99']:,.0f} us, CPU {row['cpu_us']:,.0f} us per call"
        )


@app.command()
@readable_errors
def roundtrip(
    json_output: bool = _JSON,
    quick: bool = _QUICK,
    broker: str | None = _BROKER,
    sync: SyncMode = _SYNC,
    calls: int | None = typer.Option(None, "--calls", help="Sequential calls measured."),
    broker_cpu: int | None = typer.Option(
        None,
        "--broker-cpu",
        help="Run the broker started for the run on this one CPU (Linux; as `taskset -c N sentinel run` "
        "would): its gRPC thread and its Trio thread then hand each request over on one core.",
    ),
) -> None:
    """Sequential send_and_wait (acks=all): round-trip p50/p99 and the CPU of each layer."""
    from sentinel.bench.roundtrip import run_roundtrip_bench

    _check_broker(broker)
    if calls is not None and calls < 1:
        usage_error(f"--calls must be >= 1, got {calls}")
    if broker_cpu is not None:
        if broker is not None:
            usage_error("--broker-cpu pins a broker this command starts; it cannot go with --broker")
        allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if not allowed:
            usage_error("--broker-cpu needs Linux (sched_setaffinity)")
        if broker_cpu not in allowed:
            usage_error(f"--broker-cpu must be one of this process's CPUs {allowed}, got {broker_cpu}")
    result = run_roundtrip_bench(
        broker_address=broker,
        sync=sync.value,
        quick=quick,
        calls=calls,
        broker_cpu=broker_cpu,
        progress=_progress(json_output),
    )
    _emit(result, json_output, _print_roundtrip)


# -- raft ---------------------------------------------------------------------------------------


def _print_raft(result: dict) -> None:
    machine = result["machine"]
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, Python {machine['python']}")
    print(f"one {result['voters']}-voter Raft group in one process, {result['window']} proposals in flight")
    for run in result["runs"].values():
        where = "pure cores, no disk" if run["storage"] == "memory" else "LSM storage, sync interval"
        print(
            f"  {run['payload_bytes']:>7,}-byte entries, {where:<27} {run['proposals_per_s']:>9,} proposals/s"
            f"  {run['mb_per_s']:>9,} MB/s  commit p50 {run['latency_p50_ms']:.2f} ms"
            f"  p99 {run['latency_p99_ms']:.2f} ms"
        )
    if "profile" in result:
        print(result["profile"])


@app.command()
@readable_errors
def raft(
    json_output: bool = _JSON,
    quick: bool = _QUICK,
    profile: bool = typer.Option(False, "--profile", help="Also print where the time goes (cProfile)."),
) -> None:
    """Proposals committed per second and commit latency through a 3-voter group."""
    from sentinel.bench.raft import run_raft_bench

    progress = _progress(json_output)
    result = trio.run(lambda: run_raft_bench(quick=quick, profile=profile, progress=progress))
    _emit(result, json_output, _print_raft)


# -- cluster ------------------------------------------------------------------------------------


def _print_cluster(result: dict) -> None:
    machine = result["machine"]
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, Python {machine['python']}")
    print(f"three local nodes (sync {result['sync']}), {result['record_bytes']}-byte records, acks=all")
    for key in ("rf1", "rf3"):
        row = result[key]
        latency = row["latency"]["latency_ms"]
        print(
            f"  {key}: {row['records_per_s']:>9,} records/s ({row['mb_per_s']} MB/s)"
            f"   latency at {row['latency']['rate']}/s:"
            f" p50 {latency['p50']:.2f} ms  p99 {latency['p99']:.2f} ms"
        )
    print(f"  RF=3 / RF=1: {result['rf3_vs_rf1']:.0%}")
    failover = result["failover_s"]
    trials = ", ".join(f"{t:.2f}" for t in failover["trials"])
    print(
        "  failover (SIGKILL of the leader -> acks resume):"
        f" p50 {failover['p50']:.2f} s, max {failover['max']:.2f} s"
    )
    print(f"    trials: {trials}")


@app.command()
@readable_errors
def cluster(json_output: bool = _JSON, quick: bool = _QUICK) -> None:
    """Three local nodes: produce throughput and latency with RF=3 vs RF=1, and failover time."""
    from sentinel.bench.cluster import run_cluster_bench

    result = run_cluster_bench(quick=quick, progress=_progress(json_output))
    _emit(result, json_output, _print_cluster)
