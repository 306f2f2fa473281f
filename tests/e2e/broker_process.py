"""A real ``sentinel run`` process for end-to-end tests (real socket, real files, real signals).

    broker = BrokerProcess(tmp_path / "data")
    broker.start()              # waits for "listening on", learns the ports it bound
    ... broker.address ...      # "127.0.0.1:<port>" for the client and the CLI
    broker.stop()               # SIGTERM; asserts exit 0 within a bound
    broker.kill()               # SIGKILL (crash tests)
    broker.start()              # restart on the same data directory and the same port

Ports are picked by the broker itself (``--port 0``) on first start and then pinned, so a
restart comes back on the same address without racing another test for a free port.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

LISTENING = re.compile(r"listening on [^:]+:(\d+)(?:, metrics on http://[^:]+:(\d+)/metrics)?")
STOP_SECONDS = 30.0


def sentinel_command(*args: str) -> list[str]:
    """The ``sentinel`` CLI as a subprocess command (works without the console script on PATH)."""
    return [sys.executable, "-c", "from sentinel.cli.main import main; main()", *args]


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PYTHONUNBUFFERED": "1"}


class BrokerProcess:
    def __init__(self, data_dir: Path, *, extra_args: Sequence[str] = (), metrics: bool = False) -> None:
        self.data_dir = data_dir
        self.extra_args = list(extra_args)
        self.metrics = metrics
        self.port = 0
        self.metrics_port: int | None = 0 if metrics else None
        self.process: subprocess.Popen[str] | None = None
        self.log: list[str] = []  # every stderr line, for failure messages
        self._reader: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.process is None, "already running"
        args = ["run", "--port", str(self.port), "--data", str(self.data_dir)]
        args += ["--metrics-port", str(self.metrics_port if self.metrics_port is not None else -1)]
        self.process = subprocess.Popen(
            sentinel_command(*args, *self.extra_args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=subprocess_env(),
        )
        assert self.process.stderr is not None
        while True:
            line = self.process.stderr.readline()
            if not line:
                code = self.process.wait()
                self.process = None
                raise AssertionError(f"broker exited with {code} before listening: {''.join(self.log)}")
            self.log.append(line)
            match = LISTENING.search(line)
            if match:
                self.port = int(match.group(1))
                if match.group(2):
                    self.metrics_port = int(match.group(2))
                break
        # Keep draining stderr so the broker never blocks on a full pipe.
        self._reader = threading.Thread(target=self._drain, args=(self.process,), daemon=True)
        self._reader.start()

    def _drain(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            self.log.append(line)

    def _finish(self) -> int:
        assert self.process is not None
        try:
            code = self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"broker did not stop within {STOP_SECONDS}s: {''.join(self.log)}") from None
        finally:
            if self._reader is not None:
                self._reader.join(5)
            self.process = None
        return code

    def stop(self) -> None:
        """SIGTERM and require a clean exit 0 in bounded time."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self._finish()
        assert code == 0, f"broker exited with {code}: {''.join(self.log[-20:])}"

    def kill(self) -> None:
        """SIGKILL: no chance to flush anything (crash tests)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self._finish()

    def close(self) -> None:
        """Teardown: kill whatever is still running (never raises)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
