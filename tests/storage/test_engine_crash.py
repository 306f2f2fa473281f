"""Crash test with a real process: SIGKILL a writer at seeded random moments, reopen, check.

The child (``engine_crash_child.py``) writes with sync=always and reports each write before
starting it and once it is acknowledged. The parent kills it after a seeded random number
of acknowledgements (mid-write, mid-flush or mid-compaction, wherever it happens to be),
reopens the store and checks that every acknowledged write is present with its value; the
one write in flight at the kill may be present or absent (atomically: all of a batch or
none of it), and nothing else is invented. Several rounds reuse the directory, so recovery
after recovery is exercised.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from sentinel.storage.store import open_store

CHILD = Path(__file__).with_name("engine_crash_child.py")
ROUNDS = 5


def _apply(model: dict[str, str], op: list) -> None:
    if op[0] == "put":
        model[op[1]] = op[2]
    elif op[0] == "del":
        model.pop(op[1], None)
    else:
        for key, value in op[1]:
            if value is None:
                model.pop(key, None)
            else:
                model[key] = value


def _run_child(directory: Path, seed: int, acks_before_kill: int) -> tuple[list[list], list | None]:
    """Run the child until it has acknowledged ``acks_before_kill`` writes, then SIGKILL it.
    Returns the acknowledged ops in order and the op in flight at the kill (if any)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(directory), str(seed)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout is not None
    acked: list[list] = []
    pending: list | None = None
    try:
        assert child.stdout.readline() == "ready\n"
        for line in child.stdout:
            if line.startswith("begin "):
                pending = json.loads(line[6:])
            elif line == "ack\n":
                assert pending is not None
                acked.append(pending)
                pending = None
                if len(acked) >= acks_before_kill:
                    break
        # Let it start the next write (or not): the kill lands at an arbitrary point.
        child.send_signal(signal.SIGKILL)
        for line in child.stdout:  # lines written before the kill
            if line.startswith("begin "):
                pending = json.loads(line[6:])
            elif line == "ack\n" and pending is not None:
                acked.append(pending)
                pending = None
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    return acked, pending


async def _read_all(directory: Path) -> tuple[dict[str, str], tuple[str, ...]]:
    async with open_store(directory) as store:
        return {k.decode(): v.decode() for k, v in store.scan()}, store.recovery_report


@pytest.mark.slow
def test_every_acknowledged_write_survives_sigkill(tmp_path: Path) -> None:
    rng = random.Random(20261122)
    model: dict[str, str] = {}
    for round_number in range(ROUNDS):
        acked, pending = _run_child(tmp_path, seed=round_number, acks_before_kill=rng.randrange(50, 400))
        for op in acked:
            _apply(model, op)
        actual, _report = trio.run(_read_all, tmp_path)
        if actual != model:
            assert pending is not None, "state differs from the acknowledged writes and nothing was in flight"
            with_pending = dict(model)
            _apply(with_pending, pending)
            assert actual == with_pending, (
                f"round {round_number}: neither without nor with the in-flight write"
            )
            model = with_pending
        assert len(acked) >= 50
