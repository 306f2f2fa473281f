"""``sentinel topics list|create|describe|delete``: topic administration."""

from __future__ import annotations

import asyncio
import json

import typer

from sentinel.cli.errors import readable_errors
from sentinel.cli.output import (
    OutputFormat,
    StdoutClosed,
    broker_option,
    exit_stdout_closed,
    format_bytes,
    format_ms,
    format_option,
    plural,
    table,
    topic_json,
    usage_error,
    with_admin,
    write_lines,
)
from sentinel.client import TopicInfo
from sentinel.client.admin import INT32_MAX, INT64_MAX

app = typer.Typer(help="Create, list, describe and delete topics.", no_args_is_help=True)


def _print(lines: list[str]) -> None:
    try:
        write_lines(lines)
    except StdoutClosed:
        exit_stdout_closed()


def _retention(topic: TopicInfo) -> str:
    return f"retention {format_ms(topic.retention_ms)} / {format_bytes(topic.retention_bytes)} per partition"


def _nodes(ids: tuple[int, ...]) -> str:
    return ",".join(str(i) for i in ids) or "-"


def describe_lines(topic: TopicInfo) -> list[str]:
    count = topic.partition_count
    head = (
        f"topic {topic.name}: {plural(count, 'partition')}, "
        f"replication factor {topic.replication_factor}, {_retention(topic)}"
    )
    rows = [["PARTITION", "LEADER", "REPLICAS", "IN-SYNC", "LOG START", "HIGH WATERMARK", "RECORDS"]]
    for p in topic.partitions:
        rows.append(
            [
                str(p.partition),
                str(p.leader) if p.leader >= 0 else "none",
                _nodes(p.replicas),
                _nodes(p.in_sync_replicas),
                str(p.log_start_offset),
                str(p.high_watermark),
                str(max(p.high_watermark - p.log_start_offset, 0)),
            ]
        )
    return [head, *table(rows)]


@app.command("list")
@readable_errors
def list_topics(broker: str = broker_option(), output_format: OutputFormat = format_option()) -> None:
    """List the topics: partitions, replication factor, records, retention."""
    topics = asyncio.run(with_admin(broker, lambda admin: admin.list_topics()))
    topics.sort(key=lambda t: t.name)
    if output_format is OutputFormat.json:
        _print([json.dumps([topic_json(t) for t in topics])])
        return
    if not topics:
        typer.echo("no topics", err=True)
        return
    rows = [["TOPIC", "PARTITIONS", "REPLICATION", "RECORDS", "RETENTION"]]
    for t in topics:
        records = sum(max(p.high_watermark - p.log_start_offset, 0) for p in t.partitions)
        retention = f"{format_ms(t.retention_ms)} / {format_bytes(t.retention_bytes)}"
        rows.append([t.name, str(t.partition_count), str(t.replication_factor), str(records), retention])
    _print(table(rows))


@app.command()
@readable_errors
def create(
    name: str = typer.Argument(..., help="Topic name: ASCII letters, digits, '.', '_' and '-'."),
    broker: str = broker_option(),
    partitions: int | None = typer.Option(
        None, "--partitions", "-p", help="Partition count, >= 1 (omit it for the broker's default)."
    ),
    replication_factor: int | None = typer.Option(
        None,
        "--replication-factor",
        "-r",
        help="Replicas per partition, >= 1 (omit it for the broker's default).",
    ),
    retention_ms: int = typer.Option(
        0, "--retention-ms", help="Delete records older than this (0: keep forever)."
    ),
    retention_bytes: int = typer.Option(
        0, "--retention-bytes", help="Keep at most this many bytes per partition (0: no limit)."
    ),
) -> None:
    """Create a topic."""
    # 0 is not "the default": omitting the option is (a typo must not create 1 partition).
    # The upper bounds are the wire's: protobuf would wrap a larger value into another one.
    for option, count in (("--partitions", partitions), ("--replication-factor", replication_factor)):
        if count is not None and count < 1:
            usage_error(f"{option} must be >= 1, got {count} (omit it for the broker's default)")
        if count is not None and count > INT32_MAX:
            usage_error(f"{option} must be at most {INT32_MAX}, got {count}")
    for option, value in (("--retention-ms", retention_ms), ("--retention-bytes", retention_bytes)):
        if not 0 <= value <= INT64_MAX:
            usage_error(f"{option} must be between 0 and {INT64_MAX}, got {value}")
    topic = asyncio.run(
        with_admin(
            broker,
            lambda admin: admin.create_topic(
                name,
                partitions=partitions,  # None: omitted on the wire, the broker's default
                replication_factor=replication_factor,
                retention_ms=retention_ms,
                retention_bytes=retention_bytes,
            ),
        )
    )
    count = topic.partition_count
    _print(
        [
            f"created topic {topic.name}: {plural(count, 'partition')}, "
            f"replication factor {topic.replication_factor}, {_retention(topic)}"
        ]
    )


@app.command()
@readable_errors
def describe(
    name: str = typer.Argument(..., help="Topic name."),
    broker: str = broker_option(),
    output_format: OutputFormat = format_option(),
) -> None:
    """Show a topic's partitions: leader, replicas, log start offset, high watermark; and its retention."""
    topic = asyncio.run(with_admin(broker, lambda admin: admin.describe_topic(name)))
    if output_format is OutputFormat.json:
        _print([json.dumps(topic_json(topic))])
    else:
        _print(describe_lines(topic))


@app.command()
@readable_errors
def delete(name: str = typer.Argument(..., help="Topic name."), broker: str = broker_option()) -> None:
    """Delete a topic and all its records."""
    asyncio.run(with_admin(broker, lambda admin: admin.delete_topic(name)))
    _print([f"deleted topic {name}"])
