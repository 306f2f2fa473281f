"""``sentinel produce``: write records from ``--message`` or from stdin lines; report what the
broker acknowledged.

Records are pipelined: every record is handed to ``Producer.send`` at once and its future is
watched; the producer batches them per partition. It is idempotent unless
``--no-idempotence`` (or ``--acks`` other than all) says otherwise: a request retried after
its answer was lost is not appended twice. An acknowledgement is reported when its future
completes: the producer resolves a partition's futures in offset order, so ``--format json``
lines come out in offset order per partition, each flushed as it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import threading
from collections.abc import AsyncIterator
from typing import IO, Final

import attrs
import typer

from sentinel.cli.errors import exit_interrupted, fail, readable_errors
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
    plural,
    preflight,
    usage_error,
    write_lines,
)
from sentinel.client import Producer
from sentinel.client.delivery import RecordFuture
from sentinel.client.producer import DEFAULT_LINGER_MS, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_REQUEST_TIMEOUT_MS
from sentinel.errors import SentinelError

_ACKS: Final[dict[str, str | int]] = {
    "all": "all",
    "-1": "all",
    "1": 1,
    "leader": 1,
    "0": 0,
    "none": 0,
}
_READ_CHUNK: Final = 64 * 1024
_READ_AHEAD_CHUNKS: Final = 16
# The smallest --max-request-bytes worth allowing: a request's framing plus small records.
_MIN_REQUEST_BYTES: Final = 4096
# How long a record may take to be acknowledged, retries included: long enough to ride out
# a leader failover (an election takes 1-2 s), short enough that a command against a broker
# gone for good ends with its error in seconds (the library's default is Kafka's 2 minutes;
# Kafka's console producer also gives up sooner than its library).
DEFAULT_DELIVERY_TIMEOUT_MS: Final = 15_000
_MIN_DELIVERY_TIMEOUT_MS: Final = 100
# While sending --message N times, give the event loop a turn this often (acks get printed,
# Ctrl-C is noticed) even when the producer's buffer never fills.
_YIELD_EVERY: Final = 256


@attrs.define
class _PartitionAcks:
    count: int = 0
    first: int = -1
    last: int = -1


class _Run:
    """What was sent and acknowledged; reports each acknowledgement as it arrives."""

    def __init__(
        self, *, json_output: bool, progress: Progress, headers: tuple[tuple[str, bytes], ...] = ()
    ) -> None:
        self.json_output = json_output
        self.headers = headers  # the same on every record of a run
        self.progress = progress
        self.partitions: dict[int, _PartitionAcks] = {}
        self.sent = 0
        self.acked = 0
        self.pending = 0
        self.error: BaseException | None = None
        self.stdout_closed = False
        self.interrupted = False
        self.stop = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def interrupt(self) -> None:
        self.interrupted = True
        self.stop.set()

    def track(self, future: RecordFuture, key: bytes | None, value: bytes) -> None:
        self.sent += 1
        self.pending += 1
        self._idle.clear()
        future.add_done_callback(lambda f: self._done(f, key, value))

    def _done(self, future: RecordFuture, key: bytes | None, value: bytes) -> None:
        self.pending -= 1
        if self.pending == 0:
            self._idle.set()
        if future.cancelled():
            self.fail_with(SentinelError("a record was cancelled before the broker answered"))
            return
        exc = future.exception()
        if exc is not None:
            self.fail_with(exc)
            return
        meta = future.result()
        self.acked += 1
        acks = self.partitions.get(meta.partition)
        if acks is None:
            acks = self.partitions[meta.partition] = _PartitionAcks(first=meta.offset)
        acks.count += 1
        acks.last = meta.offset
        self.progress.advance(1)
        if self.json_output and not self.stdout_closed:
            line = json.dumps(
                {
                    "topic": meta.topic,
                    "partition": meta.partition,
                    "offset": meta.offset if meta.offset >= 0 else None,
                    "timestamp": meta.timestamp_ms,
                    "key": json_bytes(key),
                    "value": json_bytes(value),
                    "headers": [[name, json_bytes(v)] for name, v in self.headers],
                },
                ensure_ascii=False,
            )
            try:
                write_lines([line])
            except StdoutClosed:
                self.stdout_closed = True
                self.stop.set()

    def fail_with(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.stop.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def summary(self, topic: str, acks_none: bool) -> list[str]:
        if acks_none:
            lines = [
                f"sent {plural(self.acked, 'record')} to {topic} (acks=0: the broker reports no offsets)"
            ]
            lines += [
                f"  partition {p}: {plural(a.count, 'record')}" for p, a in sorted(self.partitions.items())
            ]
            return lines
        lines = [f"produced {plural(self.acked, 'record')} to {topic}"]
        for p, a in sorted(self.partitions.items()):
            span = f"offset {a.first}" if a.count == 1 else f"offsets {a.first}..{a.last}"
            lines.append(f"  partition {p}: {span}")
        return lines


class _StdinLines:
    """Lines of a binary stream, read by a daemon thread (a blocked read can never hold up the
    exit) in chunks of whatever is available, so typed lines go out at once and piped input
    goes out in bulk. Yields lists of lines without their line ending."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._queue: asyncio.Queue[list[bytes] | BaseException | None] = asyncio.Queue()
        # Read-ahead bound, held by the reader thread: released as the loop takes a chunk.
        self._room = threading.Semaphore(_READ_AHEAD_CHUNKS)
        self._loop = asyncio.get_running_loop()
        threading.Thread(target=self._read, name="sentinel-produce-stdin", daemon=True).start()

    def _put(self, item: list[bytes] | BaseException | None) -> None:
        """Hand ``item`` to the loop; raises RuntimeError once the loop is closed. No coroutine
        is made in this thread: one the closed loop never ran would warn at exit."""
        self._room.acquire()
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _read(self) -> None:
        try:
            fd = self._stream.fileno()
        except (AttributeError, OSError, ValueError):  # not a real file (tests)
            read = getattr(self._stream, "read1", self._stream.read)
        else:
            # The file descriptor, not the buffered stream: a thread blocked in a buffered read
            # holds the stream's lock, and the interpreter's exit would abort on it.
            def read(size: int) -> bytes:
                return os.read(fd, size)

        partial: list[bytes] = []
        try:
            while True:
                chunk = read(_READ_CHUNK)
                if not chunk:
                    break
                if b"\n" not in chunk:
                    partial.append(chunk)
                    continue
                lines = chunk.split(b"\n")
                if partial:
                    lines[0] = b"".join([*partial, lines[0]])
                    partial = []
                tail = lines.pop()
                if tail:
                    partial.append(tail)
                self._put([line[:-1] if line.endswith(b"\r") else line for line in lines])
            if partial:
                last = b"".join(partial)
                self._put([last[:-1] if last.endswith(b"\r") else last])
            self._put(None)
        except RuntimeError:  # the loop is closed: the command is over, nobody reads any more
            return
        except BaseException as exc:  # the read failed: the command reports it
            with contextlib.suppress(RuntimeError):
                self._put(exc)

    async def chunks(self, stop: asyncio.Event) -> AsyncIterator[list[bytes]]:
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while True:
                getter = asyncio.ensure_future(self._queue.get())
                await asyncio.wait((getter, stopped), return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    return
                item = getter.result()
                self._room.release()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stopped.cancel()


async def _no_lines() -> AsyncIterator[list[bytes]]:
    return
    yield


async def _produce(
    *,
    broker: str,
    topic: str,
    message: bytes | None,
    key: bytes | None,
    partition: int | None,
    count: int | None,
    acks: str | int,
    idempotence: bool | None,
    max_request_bytes: int,
    delivery_timeout_ms: int,
    run: _Run,
) -> None:
    await preflight(broker)
    async with Producer(
        broker,
        acks=acks,
        client_id=CLIENT_ID,
        max_request_bytes=max_request_bytes,
        enable_idempotence=idempotence,
        delivery_timeout_ms=delivery_timeout_ms,
        # One attempt fits in the delivery timeout (Kafka's rule), linger included.
        request_timeout_ms=min(DEFAULT_REQUEST_TIMEOUT_MS, delivery_timeout_ms - DEFAULT_LINGER_MS),
    ) as producer:
        with on_interrupt(run.interrupt):

            async def send(value: bytes) -> None:
                future = await producer.send(topic, value, key=key, partition=partition, headers=run.headers)
                run.track(future, key, value)

            try:
                if message is not None:
                    for i in range(1 if count is None else count):
                        if run.stop.is_set():
                            break
                        await send(message)
                        if i % _YIELD_EVERY == _YIELD_EVERY - 1:
                            await asyncio.sleep(0)
                else:
                    stdin = sys.stdin.buffer if sys.stdin is not None else None
                    if stdin is None:
                        raise SentinelError("no --message given and there is no stdin to read records from")
                    if is_terminal(sys.stdin):
                        typer.echo("reading records from stdin, one per line (Ctrl-D ends)", err=True)
                    left = count
                    source = _StdinLines(stdin).chunks(run.stop) if left != 0 else _no_lines()
                    async for lines in source:
                        for line in lines if left is None else lines[:left]:
                            if run.stop.is_set():
                                break
                            await send(line)
                        if left is not None:
                            left -= min(left, len(lines))
                            if left == 0:
                                break
                        if run.stop.is_set():
                            break
            except SentinelError as exc:
                run.fail_with(exc)
            # Leaving the block flushes: everything sent is answered before close returns.
    await run.wait_idle()


@readable_errors
def produce(
    topic: str = typer.Option(
        ..., "--topic", "-t", help="Topic to write to (auto-created if the broker allows it)."
    ),
    broker: str = broker_option(),
    message: str | None = typer.Option(
        None,
        "--message",
        "-m",
        help="The value to send (--count times); without it each stdin line is one record.",
    ),
    key: str | None = typer.Option(
        None, "--key", "-k", help="Key of every record (same key: same partition)."
    ),
    partition: int = typer.Option(
        -1, "--partition", "-p", help="Partition to write to; -1 lets the partitioner choose."
    ),
    count: int | None = typer.Option(
        None,
        "--count",
        "-n",
        help="With --message: how many times to send it (default 1). Otherwise: at most this many lines.",
    ),
    header: list[str] = typer.Option(
        [],
        "--header",
        "-H",
        help="A header NAME=VALUE on every record (repeat for several).",
    ),
    acks: str = typer.Option(
        "all",
        "--acks",
        help="all (or -1): every replica; 1 (or leader): the leader; 0 (or none): nobody waits.",
    ),
    idempotence: bool | None = typer.Option(
        None,
        "--idempotence/--no-idempotence",
        help="Idempotent produce: a retry whose first answer was lost is not appended twice. On by "
        "default with --acks all (Kafka's rule: it needs acks=all); --no-idempotence gives at-least-once.",
        show_default=False,
    ),
    max_request_bytes: int = typer.Option(
        DEFAULT_MAX_REQUEST_BYTES,
        "--max-request-bytes",
        help="Largest produce request in bytes, which bounds the largest record. The default is "
        "the broker's default --max-message-bytes (16 MiB); a broker set lower refuses more.",
    ),
    delivery_timeout_ms: int = typer.Option(
        DEFAULT_DELIVERY_TIMEOUT_MS,
        "--delivery-timeout-ms",
        help="How long a record may take to be acknowledged, retries included (a leader failover "
        "costs 1-2 s); after it the command ends with the last error.",
    ),
    output_format: OutputFormat = format_option(
        "text: a summary at the end (records and offsets per partition). json: one object per acknowledged "
        "record, as it is acknowledged: topic, partition, offset (null with --acks 0), timestamp, key, value "
        "and headers (a list of two-element name, value lists), as `sentinel consume --format json` prints "
        'them (bytes as a UTF-8 string, or {"base64": ...} when not valid UTF-8).'
    ),
) -> None:
    """Write records to a topic: --message (repeated --count times) or one record per stdin line."""
    acks_value = _ACKS.get(acks.strip().lower())
    if acks_value is None:
        usage_error(f"--acks must be all, 1 or 0 (or -1, leader, none), got {acks!r}")
    if idempotence and acks_value != "all":
        usage_error(f"--idempotence needs --acks all, got --acks {acks}")
    if partition < -1:
        usage_error(f"--partition must be >= 0, or -1 to let the partitioner choose; got {partition}")
    if count is not None and count < 0:
        usage_error(f"--count must be >= 0, got {count}")
    if max_request_bytes < _MIN_REQUEST_BYTES:
        usage_error(f"--max-request-bytes must be >= {_MIN_REQUEST_BYTES}, got {max_request_bytes}")
    if delivery_timeout_ms < _MIN_DELIVERY_TIMEOUT_MS:
        usage_error(f"--delivery-timeout-ms must be >= {_MIN_DELIVERY_TIMEOUT_MS}, got {delivery_timeout_ms}")
    headers: list[tuple[str, bytes]] = []
    for item in header:
        name, sep, value = item.partition("=")
        if not sep or not name:
            usage_error(f"--header must be NAME=VALUE, got {item!r}")
        headers.append((name, value.encode()))
    json_output = output_format is OutputFormat.json
    expected = (1 if count is None else count) if message is not None else count
    # No bar over records being typed, nor between acknowledgements printed to the terminal.
    interactive = message is None and is_terminal(sys.stdin)
    progress = Progress(
        enabled=is_terminal(sys.stderr) and not interactive and not (json_output and is_terminal(sys.stdout)),
        length=expected,
        label=f"producing to {topic}",
    )
    run = _Run(json_output=json_output, progress=progress, headers=tuple(headers))
    try:
        asyncio.run(
            _produce(
                broker=broker,
                topic=topic,
                message=message.encode() if message is not None else None,
                key=key.encode() if key is not None else None,
                partition=None if partition == -1 else partition,
                count=count,
                acks=acks_value,
                idempotence=idempotence,
                max_request_bytes=max_request_bytes,
                delivery_timeout_ms=delivery_timeout_ms,
                run=run,
            )
        )
    finally:
        progress.close()
    if run.stdout_closed:
        exit_stdout_closed()
    try:
        if not json_output and (run.acked or run.error is None):
            write_lines(run.summary(topic, acks_none=acks_value == 0))
    except StdoutClosed:
        exit_stdout_closed()
    if run.error is not None:
        error = run.error
        if isinstance(error, SentinelError):
            fail(str(error))
        raise error
    if run.interrupted:
        exit_interrupted()
