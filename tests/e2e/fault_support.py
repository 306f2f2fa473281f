"""Helpers shared by the end-to-end fault tests (real ``sentinel run`` processes).

- :func:`spawn_child` starts one of the child scripts beside this file; :class:`JsonLines`
  collects the JSON lines it prints (in a thread) and waits for conditions on them.
- :func:`eventually` waits (asyncio) until a condition holds, with a generous bound.
- :func:`read_partition` reads a partition from offset 0 to its high watermark through the
  client library, for "is every acknowledged record still there" checks.
- :func:`metric` reads one sample from the broker's ``/metrics``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from broker_process import subprocess_env

from sentinel.client import Consumer, TopicPartition

HERE = Path(__file__).parent


def spawn_child(script: str, *args: str) -> subprocess.Popen[str]:
    """Run ``tests/e2e/<script>`` with ``args``; stdout and stderr are one text pipe."""
    return subprocess.Popen(
        [sys.executable, str(HERE / script), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=subprocess_env(),
    )


class JsonLines:
    """Every JSON object a child prints on stdout (other lines are kept for messages)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.items: list[dict[str, Any]] = []
        self.other: list[str] = []
        self.eof = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._cond:
                try:
                    item = json.loads(line)
                except ValueError:
                    item = None
                if isinstance(item, dict):
                    self.items.append(item)
                else:
                    self.other.append(line)
                self._cond.notify_all()
        with self._cond:
            self.eof = True
            self._cond.notify_all()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._cond:
            return list(self.items)

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float, what: str) -> None:
        """Block until ``predicate(items)`` holds; fail (naming ``what``) on timeout or EOF."""
        with self._cond:
            self._cond.wait_for(lambda: predicate(self.items) or self.eof, timeout)
            if not predicate(self.items):
                state = "exited" if self.eof else "still running"
                raise AssertionError(
                    f"child ({state}) never reached: {what}; its other output: {''.join(self.other[-20:])}"
                )

    def wait_eof(self, timeout: float) -> int:
        """Wait for the child to exit and its output to be read; returns the exit code."""
        code = self.process.wait(timeout)
        self._thread.join(timeout)
        assert self.eof, "child output not fully read"
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


async def eventually(condition: Callable[[], bool | Awaitable[bool]], within: float, what: str) -> None:
    """Wait until ``condition()`` (sync or async) is true, checking every 20 ms."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for: {what}")
        await asyncio.sleep(0.02)


async def read_partition(address: str, topic: str, partition: int) -> list[tuple[int, bytes | None]]:
    """``(offset, value)`` of every record of ``topic[partition]`` from 0 to the high watermark."""
    tp = TopicPartition(topic, partition)
    async with Consumer(address, auto_offset_reset="earliest", fetch_max_wait_ms=50) as consumer:
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        consumer.seek(tp, 0)
        out: list[tuple[int, bytes | None]] = []
        deadline = time.monotonic() + 20
        while (out[-1][0] + 1 if out else 0) < end and time.monotonic() < deadline:
            got = await consumer.getmany(tp, timeout_ms=500)
            out.extend((r.offset, r.value) for r in got.get(tp, []))
    return out


def metric(port: int, name: str) -> float:
    """The value of the unlabelled sample ``name`` on the broker's /metrics page."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"/metrics has no sample {name!r}")
