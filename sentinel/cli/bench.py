"""``sentinel bench ...``: benchmarks that print figures (human-readable or --json)."""

from __future__ import annotations

import json

import trio
import typer

from sentinel.bench.machine import machine_info
from sentinel.cli.errors import readable_errors

app = typer.Typer(help="Measure Sentinel's performance on this machine.", no_args_is_help=True)


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
def storage(
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    quick: bool = typer.Option(False, "--quick", help="Shorter runs (for smoke tests); noisier figures."),
) -> None:
    """Skip list, LSM put at each sync mode, batched append, memtable overhead."""
    from sentinel.bench.storage import run_storage_bench

    def progress(stage: str) -> None:
        if not json_output:
            typer.echo(f"... {stage}", err=True)

    result = trio.run(lambda: run_storage_bench(quick=quick, progress=progress))
    result["machine"] = machine_info()
    if json_output:
        print(json.dumps(result))
    else:
        _print_storage(result)
