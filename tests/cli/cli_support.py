"""Helpers for the CLI tests: the client tests' in-memory broker, served from a thread.

The CLI commands call ``asyncio.run`` themselves, so the fake broker cannot share their
event loop: it runs on its own loop in a daemon thread, and the commands reach it over a
real socket, exactly as they would reach a real broker.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from typer.testing import CliRunner, Result

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "client"))

from client_fakes import FakeSentinel, fake_broker

from sentinel.cli.main import app

T = TypeVar("T")


class ThreadedFake:
    """A FakeSentinel on its own event loop in a daemon thread."""

    def __init__(self, default_partitions: int) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.fake: FakeSentinel | None = None
        self._thread = threading.Thread(target=self._run, args=(default_partitions,), daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "fake broker did not start"

    def _run(self, default_partitions: int) -> None:
        async def main() -> None:
            async with fake_broker(default_partitions=default_partitions) as fake:
                self.fake = fake
                self._stop = asyncio.Event()
                self._ready.set()
                await self._stop.wait()

        self._loop.run_until_complete(main())
        self._loop.close()

    @property
    def address(self) -> str:
        assert self.fake is not None
        return self.fake.address

    def call(self, fn: Callable[[FakeSentinel], T]) -> T:
        """Run ``fn(fake)`` on the fake's loop (its state is only touched from there)."""
        assert self.fake is not None
        fake = self.fake

        async def on_loop() -> T:
            return fn(fake)

        return asyncio.run_coroutine_threadsafe(on_loop(), self._loop).result(10)

    def wait(self, fn: Callable[[FakeSentinel], Awaitable[T]]) -> T:
        """Run the coroutine ``fn(fake)`` on the fake's loop and wait for its result."""
        assert self.fake is not None
        return asyncio.run_coroutine_threadsafe(fn(self.fake), self._loop).result(10)

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def invoke(*args: str, input: Any = None) -> Result:
    """Run the ``sentinel`` app in-process; stdout and stderr are kept apart."""
    return CliRunner().invoke(app, list(args), input=input, prog_name="sentinel")


def error_line(result: Result) -> str:
    """The one ``error: ...`` line a failed command must print (and nothing else on stderr)."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]
