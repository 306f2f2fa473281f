"""Developer sessions: tests, lint, typecheck, proto (regenerate), bench."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("pytest", "-q", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy", "sentinel")


@nox.session(python="3.11")
def proto(session: nox.Session) -> None:
    """Regenerate sentinel/generated from protos/ (never edit the generated code by hand)."""
    session.install("-e", ".[dev]")
    session.run("bash", "scripts/protos.sh", external=True)


@nox.session(name="proto-check", python="3.11")
def proto_check(session: nox.Session) -> None:
    """Fail when sentinel/generated is stale relative to protos/."""
    session.install("-e", ".[dev]")
    session.run("bash", "scripts/protos.sh", "--check", external=True)


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Every benchmark: storage engine, then the broker (produce, consume, end to end).

    Arguments after ``--`` go to each (``nox -s bench -- --quick`` or ``-- --json``).
    """
    session.install("-e", ".[compression]")
    for name in ("storage", "produce", "consume", "e2e"):
        session.run("sentinel", "bench", name, *session.posargs)
