"""What the client commands share: options, the broker check, output, progress and Ctrl-C.

Output rules (every client command):

- Results go to stdout, one line per item; hints, progress and errors go to stderr.
- ``--format json`` prints JSON: one object per line for streams (produce, consume), one
  document for ``list`` / ``describe``.
- Bytes in JSON (keys, values, header values) are a string when they are valid UTF-8, else
  an object ``{"base64": "..."}``; ``null`` when absent. The object form keeps the rule
  unambiguous: a string is always the text itself, never an encoding of it.
- A closed stdout (``sentinel consume ... | head``) ends the command quietly with exit code
  141 (128 + SIGPIPE, what a Unix tool killed by SIGPIPE reports).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final, NoReturn, TypeVar

import typer

from sentinel.cli.errors import EXIT_INTERRUPTED as EXIT_INTERRUPTED  # consume uses it from here
from sentinel.cli.errors import EXIT_USAGE, fail
from sentinel.client import Admin, RequestTimeout, TopicInfo
from sentinel.errors import SentinelError, Unavailable

T = TypeVar("T")

DEFAULT_BROKER: Final = "localhost:9092"
# How long the first request may take before the broker counts as unreachable. The client's
# own request timeout (30 s, retried) suits a broker under load, not a wrong address.
CONNECT_TIMEOUT_MS: Final = 5000
CLIENT_ID: Final = "sentinel-cli"
EXIT_BROKEN_PIPE: Final = 141  # 128 + SIGPIPE
# A run shows a progress bar only once it has lasted this long (and stderr is a terminal).
PROGRESS_DELAY_S: Final = 1.0
_PROGRESS_RENDER_S: Final = 0.1


class OutputFormat(enum.StrEnum):
    text = "text"
    json = "json"


def broker_option() -> Any:
    return typer.Option(
        DEFAULT_BROKER,
        "--broker",
        "-b",
        envvar="SENTINEL_BROKER",
        help="Bootstrap broker address host:port (comma-separate several).",
    )


def format_option(help_text: str = "text for people, json for programs.") -> Any:
    return typer.Option(OutputFormat.text, "--format", "-f", case_sensitive=False, help=help_text)


def usage_error(message: str) -> NoReturn:
    """A bad option value or combination: one ``error:`` line and exit code 2 (click's usage code)."""
    fail(message, EXIT_USAGE)


# -- bytes and JSON -----------------------------------------------------------------------------


def json_bytes(data: bytes | None) -> str | dict[str, str] | None:
    """Bytes for JSON: the text when valid UTF-8, else ``{"base64": ...}``; None stays null."""
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


def text_value(data: bytes | None) -> str:
    """A value for text output: UTF-8 with undecodable bytes replaced; null prints as empty."""
    return "" if data is None else data.decode("utf-8", errors="replace")


def plural(count: int, noun: str) -> str:
    """``1 record``, ``2 records``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def format_ms(ms: int) -> str:
    """A retention in milliseconds for people: ``forever``, ``7d``, ``36h``, ``90s``..."""
    if ms <= 0:
        return "forever"
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def format_bytes(count: int) -> str:
    if count <= 0:
        return "unlimited"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            value = count / size
            return f"{value:g}{unit}" if count % size == 0 else f"{value:.1f}{unit}"
    return f"{count}B"


def topic_json(topic: TopicInfo) -> dict[str, Any]:
    return {
        "name": topic.name,
        "partitions": [
            {
                "partition": p.partition,
                "leader": p.leader,
                "replicas": list(p.replicas),
                "in_sync_replicas": list(p.in_sync_replicas),
                "log_start_offset": p.log_start_offset,
                "high_watermark": p.high_watermark,
            }
            for p in topic.partitions
        ],
        "replication_factor": topic.replication_factor,
        "retention_ms": topic.retention_ms,
        "retention_bytes": topic.retention_bytes,
    }


def table(rows: list[list[str]]) -> list[str]:
    """Left-aligned columns two spaces apart (the first row is the header)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


# -- stdout ---------------------------------------------------------------------------------------


class StdoutClosed(Exception):
    """The reader of stdout went away (a closed pipe)."""


def write_lines(lines: list[str]) -> None:
    """Write lines to stdout and flush at once (a reader sees them as they happen)."""
    if not lines:
        return
    try:
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        raise StdoutClosed from None


def exit_stdout_closed() -> NoReturn:
    """End quietly after a closed stdout; the interpreter's final flush must not complain."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    raise typer.Exit(EXIT_BROKEN_PIPE)


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


# -- progress -------------------------------------------------------------------------------------


def _endless() -> Iterator[None]:
    """An iterable without a length hint (click wants an iterable or a length)."""
    yield from ()


class Progress:
    """A progress bar on stderr for long runs: shown only when ``enabled`` (stderr is a
    terminal and stdout is not busy printing records to the same terminal) and only once the
    run has lasted PROGRESS_DELAY_S; redrawn at most every 100 ms."""

    def __init__(self, *, enabled: bool, length: int | None, label: str) -> None:
        self.enabled = enabled
        self.length = length
        self.label = label
        self.done = 0
        self._start = time.monotonic()
        self._bar: Any = None
        self._shown = 0
        self._rendered_at = 0.0

    def advance(self, count: int) -> None:
        self.done += count
        if not self.enabled:
            return
        now = time.monotonic()
        if self._bar is None:
            if now - self._start < PROGRESS_DELAY_S:
                return
            iterable = None if self.length is not None else _endless()
            self._bar = typer.progressbar(
                iterable,
                length=self.length,
                label=self.label,
                file=sys.stderr,
                show_pos=True,
                show_eta=self.length is not None,
                # Without a known end a bar says nothing: show the count alone.
                bar_template="%(label)s  [%(bar)s]  %(info)s"
                if self.length is not None
                else "%(label)s  %(info)s",
            )
            self._bar.__enter__()
        if now - self._rendered_at >= _PROGRESS_RENDER_S:
            self._render(now)

    def _render(self, now: float) -> None:
        self._bar.update(self.done - self._shown)
        self._shown = self.done
        self._rendered_at = now

    def close(self) -> None:
        if self._bar is not None:
            self._render(time.monotonic())
            self._bar.__exit__(None, None, None)
            self._bar = None


# -- running --------------------------------------------------------------------------------------


async def preflight(broker: str, topic: str | None = None) -> TopicInfo | None:
    """One quick request before the real work, so a wrong or dead address fails within
    CONNECT_TIMEOUT_MS with one clear message instead of retrying for minutes. With ``topic``
    it also checks that the topic exists (NotFound) and returns its description."""
    try:
        async with Admin(broker, request_timeout_ms=CONNECT_TIMEOUT_MS) as admin:
            if topic is not None:
                return await admin.describe_topic(topic)
            await admin.fetch_metadata()
            return None
    except RequestTimeout:
        raise Unavailable(f"broker {broker} did not answer within {CONNECT_TIMEOUT_MS / 1000:g} s") from None
    except SentinelError as exc:
        if type(exc) is SentinelError:  # an untyped status: probably not a Sentinel broker
            raise SentinelError(
                f"unexpected answer from {broker} (is it a Sentinel broker?): {exc}"
            ) from None
        raise


async def with_admin(broker: str, call: Callable[[Admin], Awaitable[T]]) -> T:
    """Check the broker (``preflight``), then run one admin call."""
    await preflight(broker)
    async with Admin(broker) as admin:
        return await call(admin)


@contextlib.contextmanager
def on_interrupt(callback: Callable[[], None]) -> Iterator[None]:
    """Within the block, the first Ctrl-C calls ``callback`` (stop gracefully); the second
    raises KeyboardInterrupt (give up at once)."""
    loop = asyncio.get_running_loop()
    presses = 0

    def handler() -> None:
        nonlocal presses
        presses += 1
        if presses > 1:
            raise KeyboardInterrupt
        callback()

    try:
        loop.add_signal_handler(signal.SIGINT, handler)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or Windows
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)
