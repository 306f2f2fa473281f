"""The CLI's one error boundary: every failure is one ``error: ...`` line on stderr.

- Typed errors (and OSError, and a Trio exception group holding one of them) from a
  command: ``error: <message>``, exit code 1 (:func:`readable_errors`).
- Usage errors (a missing or unknown option, a value of the wrong type, an option check a
  command makes itself): ``error: <message> (see '<command> --help')``, exit code 2, the
  code click uses for them (:func:`usage_line`, :class:`OneLineErrors`).
- Ctrl-C that ends a command before it is done: ``error: interrupted``, exit code 130
  (128 + SIGINT, what a shell reports for a process the signal ended).

Never a traceback for any of these: a traceback means a bug.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final, NoReturn, TypeVar

import typer
import typer.core

from sentinel.errors import SentinelError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130  # 128 + SIGINT


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
