"""The CLI's one error boundary: typed errors become one readable line and exit code 1."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from sentinel.errors import SentinelError

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def readable_errors(func: F) -> F:
    """Turn expected failures into ``error: ...`` on stderr and a non-zero exit; no traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BaseExceptionGroup as group:
            # Trio nurseries wrap a child's failure: report the one expected error inside.
            leaf = _single_leaf(group)
            if not isinstance(leaf, SentinelError | OSError | KeyboardInterrupt):
                raise
            _report(leaf)
        except (SentinelError, OSError, KeyboardInterrupt) as exc:
            _report(exc)

    return wrapper  # type: ignore[return-value]


def _single_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _report(exc: BaseException) -> None:
    if isinstance(exc, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        sys.exit(130)
    if isinstance(exc, OSError) and not isinstance(exc, SentinelError):
        fail(f"{exc.strerror or exc} ({exc.filename})" if exc.filename else str(exc))
    fail(str(exc))
