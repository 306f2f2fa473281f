"""The CLI's one error boundary: every failure is one ``error: ...`` line on stderr.

- Typed errors (and OSError, and a Trio exception group holding one of them) from a
  command: ``error: <message>``, exit code 1 (:func:`readable_errors`).
- Usage errors (a missing or unknown option, a value of the wrong type, an option check a
  command makes itself): ``error: <message> (see '<command> --help')``, exit code 2, the
  code click uses for them (:func:`usage_line`, :class:`OneLineErrors`).
- Ctrl-C that ends a command before it is done: ``error: interrupted``, exit code 130
  (128 + SIGINT, what a shell reports for a process the signal ended).

Never a traceback for any of these: a traceback means a bug.

The client library's log records are the command's output too, never logging's default
dump: for the run of a command, :class:`ClientLog` prints a client warning as one
``warning: ...`` line and presents an outage (a broker the client reports unreachable) as
the command asks.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, NoReturn, TypeVar

import typer
import typer.core

from sentinel.client.reachability import BROKER, BROKER_REACHABLE
from sentinel.errors import SentinelError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130  # 128 + SIGINT
CLIENT_LOGGER: Final = "sentinel.client"


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def exit_interrupted() -> NoReturn:
    """Ctrl-C ended the command before it was done."""
    fail("interrupted", EXIT_INTERRUPTED)


def readable_errors(func: F) -> F:
    """Turn expected failures into ``error: ...`` on stderr and a non-zero exit; no traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with client_log():
                return func(*args, **kwargs)
        except BaseExceptionGroup as group:
            # Trio nurseries wrap a child's failure: report the one expected error inside.
            leaf = single_leaf(group)
            if not isinstance(leaf, SentinelError | OSError | KeyboardInterrupt):
                raise
            _report(leaf)
        except (SentinelError, OSError, KeyboardInterrupt) as exc:
            _report(exc)

    return wrapper  # type: ignore[return-value]


def single_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _report(exc: BaseException) -> NoReturn:
    if isinstance(exc, KeyboardInterrupt):
        exit_interrupted()
    if isinstance(exc, OSError) and not isinstance(exc, SentinelError):
        fail(f"{exc.strerror or exc} ({exc.filename})" if exc.filename else str(exc))
    fail(str(exc))


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (line breaks too) as one space."""
    return " ".join(text.split())


class ClientLog(logging.Handler):
    """The client library's log records as the command's lines on stderr.

    - WARNING and above: one ``warning: <message>`` line each, a message of several lines
      joined into one.
    - An outage: the client reports a broker unreachable (after a request failed with all
      its retries, or timed out), then answering again. With ``report_outages`` (a command
      that goes on retrying) each is one line, ``warning: <why>; retrying`` and ``broker
      <address> answers again``; without, neither is printed: the command ends with its own
      error line (``outage`` says why; ``on_outage`` is called when one starts), or the
      broker was back before it mattered.
    - While an outage lasts, the client's other warnings (a commit or a leave that could
      not reach the broker) are that same outage again: not printed.
    - Anything else (INFO, DEBUG): nothing.
    """

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.report_outages = False
        self.on_outage: Callable[[], None] | None = None
        self._outages: dict[str, str] = {}  # broker address -> why it is unreachable

    @property
    def outage(self) -> str | None:
        """Why a broker cannot be reached now (the first one's error); None when none."""
        return next(iter(self._outages.values()), None)

    def warn(self, message: str) -> None:
        """A warning of the command's own, under the same rules as the client's."""
        if not self._outages:
            typer.echo(f"warning: {one_line(message)}", err=True)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._present(record)
        except Exception:  # logging's rule: a handler never raises into the caller
            self.handleError(record)

    def _present(self, record: logging.LogRecord) -> None:
        reachable = getattr(record, BROKER_REACHABLE, None)
        message = one_line(record.getMessage())
        if reachable is None:
            if record.levelno >= logging.WARNING:
                self.warn(message)
            return
        address = str(getattr(record, BROKER, ""))
        if reachable:
            if self._outages.pop(address, None) is not None and self.report_outages:
                typer.echo(message, err=True)
        elif address not in self._outages:
            if self.report_outages:
                typer.echo(f"warning: {message}; retrying", err=True)
            self._outages[address] = message
            if self.on_outage is not None:
                self.on_outage()


@contextlib.contextmanager
def client_log() -> Iterator[ClientLog]:
    """Route the client library's log records through a :class:`ClientLog` for the block
    (the one already routing them, when there is one)."""
    logger = logging.getLogger(CLIENT_LOGGER)
    for handler in logger.handlers:
        if isinstance(handler, ClientLog):
            yield handler
            return
    handler = ClientLog()
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)  # the INFO that a broker answers again must get through
    logger.propagate = False  # not also to a root handler (``sentinel run``'s, a test runner's)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def usage_line(message: str, command_path: str | None) -> str:
    """One line for a usage error, worded like the CLI's other errors (lower case, no final
    period) and pointing at the command's help."""
    text = " ".join(message.split()).rstrip(".")
    if text[:1].isupper() and text[1:2].islower():
        text = text[0].lower() + text[1:]
    hint = f" (see '{command_path} --help')" if command_path else ""
    return f"error: {text}{hint}"


class OneLineErrors(typer.core.TyperGroup):
    """The root command: typer's (click's) usage errors become one :func:`usage_line` and
    exit code 2, instead of a usage block, a blank line and ``Error: ...``.

    click raises its errors to the caller when not in standalone mode; this runs the
    command that way and reports what comes out, exactly once. A group run without a
    command still prints its help (click signals that as a usage error too)."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        run = functools.partial(
            super().main, args, prog_name, complete_var, False, windows_expand_args, **extra
        )
        if not standalone_mode:
            return run()
        try:
            result = run()
        except typer.TyperException as exc:  # click's ClickException and UsageError derive from it
            context = getattr(exc, "ctx", None)
            message = exc.format_message()
            if context is not None and message == context.get_help():
                typer.echo(message, err=True)  # no_args_is_help: the help is the answer
            elif context is not None:
                typer.echo(usage_line(message, context.command_path), err=True)
            else:
                typer.echo(f"error: {message}", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            sys.exit(1)
        # Not standalone, click returns a command's exit code (typer.Exit) or its result.
        sys.exit(result if isinstance(result, int) else 0)
