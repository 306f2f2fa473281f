"""Processes of a broker benchmark: a ``sentinel run`` broker and client worker processes.

The benchmark's own process only orchestrates: the broker runs as ``sentinel run`` on a
temporary data directory (``--port 0``, the address read from its "listening on" line),
and each client role runs in its own Python process (``python -m sentinel.bench.workers``)
that prints one JSON line with its figures. So the broker, the producer and the consumer
each get their own interpreter and GIL, as they would in production.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, Self

from sentinel.errors import SentinelError

LISTENING = re.compile(r"listening on (\S+):(\d+)")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class BenchError(SentinelError):
    """A benchmark process failed (the message carries its stderr's last lines)."""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "PYTHONUNBUFFERED": "1"}


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process used so far (Linux /proc); None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After "pid (comm)": state is field 3; utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


class BrokerProcess:
    """A ``sentinel run`` subprocess on a temporary data directory, stopped with SIGTERM.

    ``with BrokerProcess(sync="interval") as broker: ... broker.address ...``
    """

    def __init__(
        self, *, sync: str = "interval", extra_args: Sequence[str] = (), cpu: int | None = None
    ) -> None:
        self.sync = sync
        self.extra_args = list(extra_args)
        self.cpu = cpu  # the one CPU the broker's threads run on (Linux); None: any
        self.address = ""
        self.process: subprocess.Popen[str] | None = None
        self._dir: str | None = None
        self._log: list[str] = []
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def cpu_seconds(self) -> float | None:
        return process_cpu_seconds(self.pid) if self.process is not None else None

    def start(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="sentinel-bench-")
        command = [
            sys.executable,
            "-m",
            "sentinel.cli.main",
            "run",
            "--port",
            "0",
            "--data",
            str(Path(self._dir) / "data"),
            "--metrics-port",
            "-1",
            "--sync",
            self.sync,
            *self.extra_args,
        ]
        # A child starts with the affinity of the thread that forks it: narrowed for the fork.
        allowed = None
        if self.cpu is not None:
            allowed = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {self.cpu})
        try:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                env=_env(),
            )
        finally:
            if allowed is not None:
                os.sched_setaffinity(0, allowed)
        stderr = self.process.stderr
        assert stderr is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            line = stderr.readline()
            if not line:
                code = self.process.wait()
                self.process = None
                raise BenchError(f"broker exited with {code} before listening: {self._tail()}")
            self._log.append(line)
            match = LISTENING.search(line)
            if match:
                self.address = f"{match.group(1)}:{match.group(2)}"
                break
            if time.monotonic() > deadline:
                raise BenchError(f"broker did not start within {START_TIMEOUT_S:.0f}s: {self._tail()}")
        # Keep draining stderr so the broker never blocks on a full pipe.
        self._reader = threading.Thread(target=self._drain, args=(stderr,), daemon=True)
        self._reader.start()

    def _drain(self, stream: Any) -> None:
        for line in stream:
            self._log.append(line)

    def _tail(self, lines: int = 10) -> str:
        return "".join(self._log[-lines:]).strip()

    def stop(self) -> None:
        """SIGTERM, wait (SIGKILL after a bound), remove the data directory."""
        process, self.process = self.process, None
        try:
            if process is not None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                if self._reader is not None:
                    self._reader.join(5)
        finally:
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class Worker:
    """One client role in its own process: ``python -m sentinel.bench.workers ROLE PARAMS``.

    The worker prints JSON lines on stdout: optional ``{"event": ...}`` lines while it runs
    (``wait_for`` reads them) and its result as the last line (``result``).
    """

    def __init__(self, role: str, params: dict[str, Any]) -> None:
        self.role = role
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sentinel.bench.workers", role, json.dumps(params)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )

    def wait_for(self, event: str) -> dict[str, Any]:
        """Block until the worker prints ``{"event": event, ...}``; that line's fields."""
        stdout = self.process.stdout
        assert stdout is not None
        for line in stdout:
            fields: dict[str, Any] = json.loads(line)
            if fields.get("event") == event:
                return fields
        self._fail()

    def result(self, timeout: float) -> dict[str, Any]:
        try:
            out, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise BenchError(f"{self.role} worker did not finish within {timeout:.0f}s") from None
        lines = [line for line in out.splitlines() if line.strip()]
        if self.process.returncode != 0 or not lines:
            raise BenchError(f"{self.role} worker failed (exit {self.process.returncode}): {_last_line(err)}")
        result: dict[str, Any] = json.loads(lines[-1])
        return result

    def _fail(self) -> NoReturn:
        self.process.wait()
        err = self.process.stderr.read() if self.process.stderr is not None else ""
        raise BenchError(f"{self.role} worker failed (exit {self.process.returncode}): {_last_line(err)}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def run_worker(role: str, params: dict[str, Any], *, timeout: float) -> dict[str, Any]:
    """Run one worker to completion and return its result."""
    worker = Worker(role, params)
    try:
        return worker.result(timeout)
    finally:
        worker.kill()
