"""``sentinel consume``: print records of a topic, by offset or as a consumer-group member.

Without ``--follow`` the command stops once it has caught up: every assigned partition's
position has reached the high watermark (taken from the last fetch, or asked for with
ListOffsets after a short wait that brought nothing). With ``--follow`` it waits for new
records until Ctrl-C, which ends it quietly with exit code 0 (a group member commits what
it printed and leaves the group first).

A broker that cannot be reached (the client reports it once requests to it have spent
their retries, or one timed out): without ``--follow`` that ends the command with one
``error:`` line, exit code 1. With ``--follow`` the command goes on retrying (a broker
restart must not end a follow) and says so: one ``warning: ...; retrying`` line per
outage and one line when the broker answers again. Ctrl-C during an outage is ``error:
interrupted``, exit code 130: a group member's last commit and leave cannot reach the
broker, so they are given up after GOODBYE_GRACE_S.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterable
from typing import Any, Final

import typer

from sentinel.cli.errors import ClientLog, client_log, exit_interrupted, readable_errors
from sentinel.cli.output import (
    CLIENT_ID,
    OutputFormat,
    Progress,
    StdoutClosed,
    broker_option,
    exit_stdout_closed,
    format_option,
    is_terminal,
    json_bytes,
    on_interrupt,
    preflight,
    text_value,
    usage_error,
    write_lines,
)
from sentinel.client import Consumer, ConsumerRecord, TopicPartition
from sentinel.client.admin import INT32_MAX, INT64_MAX
from sentinel.client.errors import RETRIABLE_ERRORS
from sentinel.errors import FailedPrecondition, InvalidArgument, Unavailable

# Without --follow: how long a poll that brings nothing may wait before the command checks
# whether it has caught up. With --follow: how long one poll waits (any record ends it early).
IDLE_WAIT_MS: Final = 500
FOLLOW_WAIT_MS: Final = 1000
MAX_POLL_RECORDS: Final = 500
# A group member commits what it printed this often (and when it stops), so ``groups
# describe`` shows a following consumer's progress.
AUTO_COMMIT_INTERVAL_MS: Final = 1000
# With --follow, after a poll failed (its request had spent its retries: a re-join, a
# position lookup): how long to wait before polling again.
FOLLOW_RETRY_S: Final = 1.0
# Ctrl-C while the broker cannot be reached: how long a group member's last commit and
# leave may try before they are given up (the broker cannot hear them, and the session
# expires on its own). Then the connections are closed all the same.
GOODBYE_GRACE_S: Final = 1.0
# How often a cancellation is made again until the task has ended (_cancel_until_done).
_CANCEL_STEP_S: Final = 0.05


class _Printer:
    def __init__(self, *, json_output: bool, progress: Progress) -> None:
        self.json_output = json_output
        self.progress = progress
        self.count = 0

    def emit(self, records: list[ConsumerRecord]) -> None:
        if self.json_output:
            lines = [
                json.dumps(
                    {
                        "topic": r.topic,
                        "partition": r.partition,
                        "offset": r.offset,
                        "timestamp": r.timestamp,
                        "key": json_bytes(r.key),
                        "value": json_bytes(r.value),
                        "headers": [[name, json_bytes(value)] for name, value in r.headers],
                    },
                    ensure_ascii=False,
                )
                for r in records
            ]
        else:
            lines = [text_value(r.value) for r in records]
        write_lines(lines)
        self.count += len(records)
        self.progress.advance(len(records))


async def _caught_up(consumer: Consumer, tps: Iterable[TopicPartition], *, polled_empty: bool) -> bool:
    """True when every partition's position has reached its high watermark."""
    tps = list(tps)
    if polled_empty:
        ends = await consumer.end_offsets(tps)
    else:
        known = {tp: consumer.highwater(tp) for tp in tps}
        if any(hw is None for hw in known.values()):
            return False
        ends = {tp: hw for tp, hw in known.items() if hw is not None}
    for tp in tps:
        try:
            position = await consumer.position(tp)
        except FailedPrecondition:  # reassigned meanwhile: look again on the next poll
            return False
        if position < ends[tp]:
            return False
    return True


async def _poll(
    consumer: Consumer, printer: _Printer, log: ClientLog, *, limit: int | None, follow: bool
) -> None:
    while limit is None or printer.count < limit:
        want = MAX_POLL_RECORDS if limit is None else min(MAX_POLL_RECORDS, limit - printer.count)
        try:
            batch = await consumer.getmany(
                timeout_ms=FOLLOW_WAIT_MS if follow else IDLE_WAIT_MS, max_records=want
            )
        except RETRIABLE_ERRORS as exc:
            if not follow:
                raise
            log.warn(f"{exc}; retrying")  # not printed again during an outage already reported
            await asyncio.sleep(FOLLOW_RETRY_S)
            continue
        for records in batch.values():
            printer.emit(records)
        if not follow and await _caught_up(consumer, consumer.assignment(), polled_empty=not batch):
            return


async def _cancel_until_done(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` until it has ended. Once is not always enough: grpclib turns a
    cancellation that arrives as an RPC's deadline passes into that deadline's TimeoutError,
    which the client retries as if nothing had asked it to stop (seen with a frozen broker,
    where a fetch and a ListOffsets time out together)."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=_CANCEL_STEP_S)


async def _close_within(consumer: Consumer, seconds: float) -> None:
    """Close ``consumer``, giving up its goodbye (commit, leave) after ``seconds``: each
    cancellation ends the step in flight, and ``close`` closes the connections whatever
    happens before."""
    closing = asyncio.ensure_future(consumer.close())
    await asyncio.wait({closing}, timeout=seconds)
    await _cancel_until_done(closing)
    if not closing.cancelled():
        closing.result()  # what close itself raised, if anything


async def _consume(
    *,
    broker: str,
    topic: str,
    partition: int | None,
    offset: int | None,
    from_beginning: bool,
    limit: int | None,
    group: str | None,
    follow: bool,
    printer: _Printer,
    log: ClientLog,
) -> bool:
    """Consume; returns True when Ctrl-C ended it."""
    info = await preflight(broker, topic)
    assert info is not None
    count = info.partition_count
    if partition is not None and partition >= count:
        raise InvalidArgument(
            f"partition {partition} does not exist in topic {topic!r}: valid partitions are 0..{count - 1}"
        )
    # An explicit --offset must not be silently replaced: out of range is an error ("none").
    reset = "none" if offset is not None else "earliest" if from_beginning else "latest"
    consumer = Consumer(
        broker,
        group_id=group,
        auto_offset_reset=reset,
        auto_commit_interval_ms=AUTO_COMMIT_INTERVAL_MS,
        client_id=CLIENT_ID,
    )
    await consumer.start()
    interrupted = False
    try:
        if group is not None:
            consumer.subscribe([topic])
        else:
            tps = [TopicPartition(topic, p) for p in ([partition] if partition is not None else range(count))]
            consumer.assign(tps)
            if offset is not None:
                for tp in tps:
                    consumer.seek(tp, offset)
        task = asyncio.ensure_future(_poll(consumer, printer, log, limit=limit, follow=follow))
        stop = asyncio.Event()
        unreachable: str | None = None

        def interrupt() -> None:
            nonlocal interrupted
            interrupted = True
            stop.set()

        def outage() -> None:
            # Fetches retry without end: without --follow an unreachable broker ends the
            # command, as it does at the start (whatever request was waiting on it).
            nonlocal unreachable
            unreachable = log.outage
            stop.set()

        if not follow:
            log.on_outage = outage
        with on_interrupt(interrupt):
            stopping = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if stop.is_set():
                    await _cancel_until_done(task)
            finally:
                stopping.cancel()
            try:
                task.result()
            except asyncio.CancelledError:
                if not stop.is_set():
                    raise
        if unreachable is not None and not interrupted:
            raise Unavailable(unreachable)
    finally:
        log.on_outage = None
        # Closing commits the group's positions (what was printed) and leaves the group;
        # with the broker unreachable that is given up soon.
        if log.outage is not None:
            await _close_within(consumer, GOODBYE_GRACE_S)
        else:
            await consumer.close()
    return interrupted


@readable_errors
def consume(
    topic: str = typer.Option(..., "--topic", "-t", help="Topic to read."),
    broker: str = broker_option(),
    partition: int | None = typer.Option(
        None, "--partition", "-p", help="Read only this partition (default: every partition of the topic)."
    ),
    offset: int | None = typer.Option(
        None,
        "--offset",
        "-o",
        help="Start at this offset (of --partition, or of every partition); out of range is an error.",
    ),
    from_beginning: bool = typer.Option(
        False,
        "--from-beginning",
        help="Start at the oldest record (with --group: when the group has no committed offset). "
        "Default: only records written from now on.",
    ),
    max_messages: int | None = typer.Option(
        None, "--max-messages", "-n", help="Stop after this many records (default: no limit)."
    ),
    group: str | None = typer.Option(
        None,
        "--group",
        "-g",
        help="Consume as a member of this consumer group: the group assigns the partitions, reading "
        "resumes at its committed offsets, and what is printed is committed.",
    ),
    follow: bool = typer.Option(
        False,
        "--follow",
        "-F",
        help="Keep waiting for new records until Ctrl-C (default: stop when caught up). A broker out "
        "of reach is retried, with one warning line when it goes and one when it is back.",
    ),
    output_format: OutputFormat = format_option(
        "text: each value on its own line (UTF-8, undecodable bytes replaced; a null value is an empty "
        "line). json: one object per record with topic, partition, offset, timestamp (ms), key, value "
        "and headers (a list of two-element name, value lists); bytes are a UTF-8 string, or "
        '{"base64": ...} when not valid UTF-8, and null when absent.'
    ),
) -> None:
    """Print records of a topic; stops when caught up, or after --max-messages (or never, with --follow)."""
    # Bounded by the wire's field widths (int64 offsets, int32 partitions): protobuf would
    # wrap a larger value into another one.
    if offset is not None and not 0 <= offset <= INT64_MAX:
        usage_error(f"--offset must be between 0 and {INT64_MAX}, got {offset}")
    if offset is not None and from_beginning:
        usage_error("--offset and --from-beginning are mutually exclusive")
    if partition is not None and not 0 <= partition <= INT32_MAX:
        usage_error(f"--partition must be between 0 and {INT32_MAX}, got {partition}")
    if group is not None and not group.strip():
        usage_error(f"--group must name a consumer group, got {group!r}")
    if max_messages is not None and max_messages < 1:
        usage_error(f"--max-messages must be >= 1, got {max_messages}")
    if group is not None and (partition is not None or offset is not None):
        usage_error("--group assigns partitions and resumes at committed offsets: drop --partition/--offset")
    json_output = output_format is OutputFormat.json
    progress = Progress(
        enabled=is_terminal(sys.stderr) and not is_terminal(sys.stdout),
        length=max_messages,
        label=f"consuming {topic}",
    )
    printer = _Printer(json_output=json_output, progress=progress)
    with client_log() as log:
        log.report_outages = follow
        try:
            interrupted = asyncio.run(
                _consume(
                    broker=broker,
                    topic=topic,
                    partition=partition,
                    offset=offset,
                    from_beginning=from_beginning,
                    limit=max_messages,
                    group=group,
                    follow=follow,
                    printer=printer,
                    log=log,
                )
            )
        except StdoutClosed:
            exit_stdout_closed()
        finally:
            progress.close()
        # Ctrl-C is how a follow ends, unless the broker was out of reach: then it ended
        # with the printed records not committed (or nothing left to wait for).
        if interrupted and (not follow or log.outage is not None):
            exit_interrupted()
