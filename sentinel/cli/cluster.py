"""``sentinel cluster status|transfer-leader``: the replicated cluster as operators see it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import typer

from sentinel.cli.errors import readable_errors
from sentinel.cli.output import (
    OutputFormat,
    StdoutClosed,
    broker_option,
    exit_stdout_closed,
    format_option,
    table,
    with_admin,
    write_lines,
)
from sentinel.client.types import ClusterStatus, PartitionStatus

app = typer.Typer(help="Inspect the cluster and move partition leadership.", no_args_is_help=True)


def _print(lines: list[str]) -> None:
    try:
        write_lines(lines)
    except StdoutClosed:
        exit_stdout_closed()


def _node(node: int) -> str:
    return str(node) if node > 0 else "none"


def _lag(p: PartitionStatus) -> str:
    return ",".join(f"{node}:{lag}" for node, lag in p.followers) or "-"


def status_json(status: ClusterStatus) -> dict[str, Any]:
    """The JSON scripts rely on: ``controller`` (node id, -1 for none), ``brokers`` and
    per-partition objects with ``partition``, ``leader`` and ``replicas``."""

    def partition(p: PartitionStatus) -> dict[str, Any]:
        return {
            "topic": p.topic,
            "partition": p.partition,
            "leader": p.leader,
            "replicas": list(p.replicas),
            "term": p.term,
            "commit_index": p.commit_index,
            "high_watermark": p.high_watermark,
            "followers": [{"node_id": node, "lag": lag} for node, lag in p.followers],
        }

    return {
        "controller": status.controller,
        "brokers": [
            {"node_id": b.node_id, "address": b.address, "reachable": b.reachable} for b in status.brokers
        ],
        "partitions": [partition(p) for p in status.partitions],
    }


def status_lines(status: ClusterStatus) -> list[str]:
    lines = [f"controller: node {_node(status.controller)}"]
    rows = [["BROKER", "ADDRESS", "REACHABLE"]]
    rows += [[str(b.node_id), b.address, "yes" if b.reachable else "NO"] for b in status.brokers]
    lines += table(rows)
    if status.partitions:
        lines.append("")
        rows = [
            ["TOPIC", "PARTITION", "LEADER", "REPLICAS", "TERM", "COMMIT", "HIGH WATERMARK", "FOLLOWER LAG"]
        ]
        for p in status.partitions:
            rows.append(
                [
                    p.topic,
                    str(p.partition),
                    _node(p.leader),
                    ",".join(map(str, p.replicas)),
                    str(p.term),
                    str(p.commit_index),
                    str(p.high_watermark),
                    _lag(p),
                ]
            )
        lines += table(rows)
    return lines


@app.command()
@readable_errors
def status(broker: str = broker_option(), output_format: OutputFormat = format_option()) -> None:
    """Brokers (and whether they answer), the controller leader, and every partition's
    leader, replicas, commit index, high watermark and followers' lag."""
    result = asyncio.run(with_admin(broker, lambda admin: admin.cluster_status()))
    if output_format is OutputFormat.json:
        _print([json.dumps(status_json(result))])
    else:
        _print(status_lines(result))


@app.command("transfer-leader")
@readable_errors
def transfer_leader(
    topic: str = typer.Argument(..., help="Topic name."),
    partition: int = typer.Argument(..., help="Partition number."),
    to: int = typer.Option(..., "--to", help="Node id of the replica to lead (caught up)."),
    broker: str = broker_option(),
    output_format: OutputFormat = format_option(),
) -> None:
    """Move a partition's leadership to another of its replicas (no election storm: the
    target is caught up and campaigns at once)."""
    leader = asyncio.run(with_admin(broker, lambda admin: admin.transfer_leader(topic, partition, to)))
    if output_format is OutputFormat.json:
        _print([json.dumps({"topic": topic, "partition": partition, "leader": leader})])
    else:
        _print([f"{topic}[{partition}]: leader is now node {leader}"])
