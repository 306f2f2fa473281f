"""``sentinel sim raft``: seeded deterministic simulations of Raft clusters.

Each run is one seed of ``sentinel.raft.sim``: a cluster of pure Raft cores under drawn
faults, a safety checker, then a liveness phase. A failing seed replays exactly:
``sentinel sim raft --seed N --trace`` prints its events.
"""

from __future__ import annotations

import json
import time
from typing import Any

import typer

from sentinel.cli.output import usage_error
from sentinel.raft.sim import FAULT_KINDS, SAFETY_TICKS, RunResult, Simulation, summarize

app = typer.Typer(
    help="Deterministic simulations (seeded; a failing seed replays exactly).", no_args_is_help=True
)

# Progress on stderr every this many runs.
_PROGRESS_EVERY = 100


@app.command()
def raft(
    seeds: int = typer.Option(100, "--seeds", min=1, help="How many seeded runs."),
    first_seed: int = typer.Option(
        0, "--first-seed", min=0, help="The first seed; runs use consecutive seeds."
    ),
    nodes: int = typer.Option(3, "--nodes", help="Voters per cluster: 3 or 5."),
    groups: int | None = typer.Option(
        None, "--groups", min=1, help="Raft groups per cluster (default: 2 to 4, drawn from each seed)."
    ),
    ticks: int = typer.Option(
        SAFETY_TICKS, "--ticks", min=1, help="Ticks of the safety phase (under faults)."
    ),
    seed: int | None = typer.Option(None, "--seed", min=0, help="Run this one seed (ignores --seeds)."),
    trace: bool = typer.Option(False, "--trace", help="With --seed: print the run's events."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
) -> None:
    """Run seeded simulations of Raft clusters under faults; exit 1 on any violation."""
    if nodes not in (3, 5):
        usage_error("--nodes must be 3 or 5")
    if trace and seed is None:
        usage_error("--trace needs --seed (one run)")
    seed_list = [seed] if seed is not None else list(range(first_seed, first_seed + seeds))
    started = time.perf_counter()
    results: list[RunResult] = []
    for s in seed_list:
        result = Simulation(s, nodes=nodes, groups=groups, safety_ticks=ticks, trace=trace).run()
        results.append(result)
        if trace and not json_output and result.trace is not None:
            for line in result.trace:
                print(line)
        # Progress and failures as they happen go to stderr (stdout stays one JSON object).
        if not result.ok:
            typer.echo(f"FAILED {result.describe()}", err=True)
        if len(seed_list) >= _PROGRESS_EVERY and len(results) % _PROGRESS_EVERY == 0:
            failed = sum(not r.ok for r in results)
            typer.echo(f"... {len(results)}/{len(seed_list)} runs, {failed} failed", err=True)
    summary = summarize(results)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    summary.update(nodes=nodes, groups=groups, safety_ticks=ticks, first_seed=seed_list[0])
    if len(results) == 1:
        only = results[0]
        summary["trace_hash"] = only.trace_hash
        summary["swarm"] = _swarm_json(only)
        if trace:
            summary["trace"] = only.trace
    if json_output:
        print(json.dumps(summary))
    else:
        _print(summary, results)
    if summary["failed"]:
        raise typer.Exit(1)


def _swarm_json(result: RunResult) -> dict[str, Any]:
    import attrs

    return attrs.asdict(result.swarm)


def _print(summary: dict[str, Any], results: list[RunResult]) -> None:
    first, last = results[0].seed, results[-1].seed
    seeds = f"seed {first}" if first == last else f"seeds {first}..{last}"
    groups = summary["groups"] or "2-4"
    print(
        f"raft simulation: {summary['runs']:,} runs ({seeds}), {summary['nodes']} nodes, {groups} groups,"
        f" {summary['safety_ticks']} ticks under faults + liveness"
    )
    print(f"  ok {summary['ok']:,}   failed {summary['failed']:,}   ({summary['seconds']:.1f} s)")
    print(
        f"  proposals {summary['proposals']:,} accepted, {summary['commits']:,} committed,"
        f" {summary['proposals_refused']:,} refused"
    )
    print(
        f"  elections {summary['elections']:,}   leader changes {summary['leader_changes']:,}"
        f"   transfers {summary['transfers']:,}   crashes {summary['crashes']:,}"
        f"   snapshots installed {summary['snapshots_installed']:,}"
    )
    print(
        f"  liveness after healing: {summary['liveness_ticks_mean']} ticks mean,"
        f" {summary['liveness_ticks_max']} max (seed {summary['liveness_ticks_max_seed']})"
        " to elect and commit in every group"
    )
    print(
        f"  {summary['messages']:,} messages delivered, {summary['readies']:,} readies,"
        f" {summary['ticks']:,} ticks"
    )
    print("faults injected:")
    width = max(len(kind) for kind in FAULT_KINDS)
    for kind in FAULT_KINDS:
        print(f"  {kind:<{width}}  {summary['faults'][kind]:>12,}")
    if len(results) == 1:
        print(f"trace hash {summary['trace_hash']}")
    else:
        print(f"digest {summary['digest']}")
    if summary["failures"]:
        print("failures:")
        for failure in summary["failures"]:
            print(f"  seed {failure['seed']} ({failure['phase']} phase): {failure['violation']}")
        seed = summary["failures"][0]["seed"]
        print(f"replay one with: sentinel sim raft --seed {seed} --nodes {summary['nodes']} --trace")
