"""A cluster of ``sentinel run`` processes on this machine: for examples, benchmarks and
real-process tests.

``LocalCluster(3, directory)`` picks free ports, starts three brokers with ``--peers``
naming each other, and gives each node's process controls an operator (or a fault
injector) uses: stop (SIGTERM, graceful), kill (SIGKILL), pause and resume (SIGSTOP and
SIGCONT), start again on the same data directory and ports. ``bootstrap`` is the
comma-separated client addresses, as every client command's ``--broker`` takes it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from sentinel.errors import SentinelError

LISTENING = re.compile(r"listening on (\S+):(\d+)")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0


class ClusterError(SentinelError):
    """A node process failed to start or stop (the message carries its last stderr lines)."""


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports free right now (bound and released together, so they are distinct)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "PYTHONUNBUFFERED": "1"}


class LocalNode:
    """One ``sentinel run`` of the cluster: its ports and data directory stay across restarts."""

    def __init__(self, cluster: LocalCluster, node_id: int, port: int, peer_port: int) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.port = port
        self.peer_port = peer_port
        self.data = cluster.directory / f"node{node_id}"
        # The client address other brokers and clients are told (--advertise); None: its own.
        self.advertise: str | None = None
        self.process: subprocess.Popen[str] | None = None
        self.log: list[str] = []
        self._reader: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"{self.cluster.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        c = self.cluster
        return [
            sys.executable,
            "-m",
            "sentinel.cli.main",
            "run",
            "--node-id",
            str(self.node_id),
            "--host",
            c.host,
            "--port",
            str(self.port),
            "--peer-port",
            str(self.peer_port),
            "--peers",
            c.peers,
            "--data",
            str(self.data),
            "--metrics-port",
            "-1",
            "--sync",
            c.sync,
            *(["--advertise", self.advertise] if self.advertise else []),
            *c.extra_args,
        ]

    def start(self, *, wait: bool = True) -> None:
        if self.running:
            raise ClusterError(f"node {self.node_id} is running already")
        self.log = []
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        self._reader = threading.Thread(target=self._drain, args=(self.process,), daemon=True)
        self._reader.start()
        if wait:
            self.wait_listening()

    def _drain(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            self.log.append(line.rstrip("\n"))

    def wait_listening(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(LISTENING.search(line) for line in self.log):
                return
            if not self.running:
                raise ClusterError(f"node {self.node_id} exited at start: {self.tail()}")
            time.sleep(0.02)
        raise ClusterError(f"node {self.node_id} did not start listening in {timeout:g} s: {self.tail()}")

    def tail(self, lines: int = 8) -> str:
        return " | ".join(self.log[-lines:]) or "(no output)"

    def _signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """Graceful: SIGTERM (leadership is handed off first), and wait for the exit."""
        self._signal(signal.SIGTERM)
        return self._wait(timeout)

    def kill(self) -> None:
        """A crash: SIGKILL, no clean-up of any kind."""
        self._signal(signal.SIGKILL)
        self._wait(STOP_TIMEOUT_S)

    def pause(self) -> None:
        """SIGSTOP: the process is frozen (its sockets stay open): a stalled node."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _wait(self, timeout: float) -> int:
        if self.process is None:
            return 0
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        return code


class LocalCluster:
    def __init__(
        self,
        size: int,
        directory: Path | str,
        *,
        host: str = "127.0.0.1",
        sync: str = "interval",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.directory = Path(directory)
        self.host = host
        self.sync = sync
        self.extra_args = list(extra_args)
        ports = free_ports(2 * size, host)
        self.nodes = {i: LocalNode(self, i, ports[2 * (i - 1)], ports[2 * i - 1]) for i in range(1, size + 1)}
        self.peers = ",".join(f"{i}={host}:{n.peer_port}" for i, n in self.nodes.items())

    @property
    def bootstrap(self) -> str:
        return ",".join(n.address for n in self.nodes.values())

    def start(self) -> None:
        # All at once: a node waits for a majority before it is of use, so starting them one
        # by one and waiting for each would only slow the start down.
        for node in self.nodes.values():
            node.start(wait=False)
        for node in self.nodes.values():
            node.wait_listening()

    def stop(self) -> None:
        for node in self.nodes.values():
            node.resume()  # a paused node cannot handle SIGTERM
        for node in self.nodes.values():
            node._signal(signal.SIGTERM)
        for node in self.nodes.values():
            node._wait(STOP_TIMEOUT_S)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
