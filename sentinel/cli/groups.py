"""``sentinel groups list|describe``: consumer groups, their members and their lag."""

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
    plural,
    table,
    with_admin,
    write_lines,
)
from sentinel.client import Admin, GroupInfo
from sentinel.errors import NotFound

app = typer.Typer(help="List and describe consumer groups.", no_args_is_help=True)


def _print(lines: list[str]) -> None:
    try:
        write_lines(lines)
    except StdoutClosed:
        exit_stdout_closed()


def group_json(group: GroupInfo) -> dict[str, Any]:
    return {
        "group_id": group.group_id,
        "state": group.state,
        "generation": group.generation,
        "members": [
            {
                "member_id": m.member_id,
                "client_id": m.client_id,
                "assignment": [{"topic": tp.topic, "partition": tp.partition} for tp in m.assignment],
            }
            for m in group.members
        ],
        "offsets": [
            {
                "topic": o.topic,
                "partition": o.partition,
                "committed_offset": o.committed_offset if o.committed_offset >= 0 else None,
                "high_watermark": o.high_watermark if o.high_watermark >= 0 else None,
                "lag": o.lag if o.lag >= 0 else None,
            }
            for o in group.offsets
        ],
    }


def describe_lines(group: GroupInfo) -> list[str]:
    members = len(group.members)
    lines = [
        f"group {group.group_id}: {group.state}, generation {group.generation}, {plural(members, 'member')}"
    ]
    if group.members:
        rows = [["MEMBER", "CLIENT", "ASSIGNMENT"]]
        for m in sorted(group.members, key=lambda m: m.member_id):
            assigned = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(m.assignment)) or "-"
            rows.append([m.member_id, m.client_id, assigned])
        lines += ["", *table(rows)]
    if group.offsets:
        rows = [["TOPIC", "PARTITION", "COMMITTED", "HIGH WATERMARK", "LAG"]]
        for o in sorted(group.offsets, key=lambda o: (o.topic, o.partition)):
            committed = str(o.committed_offset) if o.committed_offset >= 0 else "-"
            known = o.high_watermark >= 0
            high_watermark, lag = (str(o.high_watermark), str(o.lag)) if known else ("?", "?")
            rows.append([o.topic, str(o.partition), committed, high_watermark, lag])
        lines += ["", *table(rows)]
    else:
        lines.append("no committed offsets")
    return lines


def total_lag(group: GroupInfo) -> int:
    """The lag of the partitions whose lag is known (a leader that did not answer: unknown)."""
    return sum(o.lag for o in group.offsets if o.lag >= 0)


async def _describe_all(admin: Admin) -> list[GroupInfo]:
    async def describe(name: str) -> GroupInfo | None:
        try:
            return await admin.describe_group(name)
        except NotFound:  # deleted since it was listed
            return None

    names = sorted(await admin.list_groups())
    return [g for g in await asyncio.gather(*(describe(name) for name in names)) if g is not None]


@app.command("list")
@readable_errors
def list_groups(broker: str = broker_option(), output_format: OutputFormat = format_option()) -> None:
    """List the consumer groups: state, members, total lag."""
    groups = asyncio.run(with_admin(broker, _describe_all))
    if output_format is OutputFormat.json:
        _print(
            [
                json.dumps(
                    [
                        {
                            "group_id": g.group_id,
                            "state": g.state,
                            "members": len(g.members),
                            "lag": total_lag(g),
                        }
                        for g in groups
                    ]
                )
            ]
        )
        return
    if not groups:
        typer.echo("no consumer groups", err=True)
        return
    rows = [["GROUP", "STATE", "MEMBERS", "LAG"]]
    for g in groups:
        rows.append([g.group_id, g.state, str(len(g.members)), str(total_lag(g))])
    _print(table(rows))


@app.command()
@readable_errors
def describe(
    group: str = typer.Argument(..., help="Consumer group id."),
    broker: str = broker_option(),
    output_format: OutputFormat = format_option(),
) -> None:
    """Show a group's members and their assignment, and per partition its committed offset and lag."""
    info = asyncio.run(with_admin(broker, lambda admin: admin.describe_group(group)))
    if output_format is OutputFormat.json:
        _print([json.dumps(group_json(info))])
    else:
        _print(describe_lines(info))
