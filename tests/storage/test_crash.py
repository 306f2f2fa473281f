"""Crash test with a real process: SIGKILL concurrent writers at seeded moments, recover, check.

The child (``crash_child.py``) runs four concurrent writers with group commit, a tiny
memtable and small compaction budgets, and reports every write it starts and every
acknowledgement with the write's sequence numbers. The parent kills it with SIGKILL after a
seeded random number of acknowledgements (wherever it then is: mid-fsync, mid-rotation,
mid-flush, mid-compaction), reopens the directory in-process and checks, by sequence number:

* every acknowledged write is present: for each key, the newest acknowledged op (by seq)
  is what the store holds, unless a newer write that was still in flight overwrote it;
* nothing is invented: every entry comes from an acknowledged op or an in-flight one;
* an in-flight batch is all or nothing: if one of its ops is visible, so are the others
  (or something newer replaced them).

Five rounds reuse one directory, so every round recovers on top of earlier recoveries;
the recovered state (with its sequence numbers) is the base the next round is checked
against. Under ``always`` an acknowledged write was fsynced; under ``interval`` and ``none``
it was written to the OS before the acknowledgement, which is all a process crash needs, so
the same checks apply to all three modes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import attrs
import pytest
import trio
from storage_checks import check_closed_directory

from sentinel.errors import StorageError
from sentinel.storage.options import SyncMode
from sentinel.storage.store import open_store

CHILD = Path(__file__).with_name("crash_child.py")
ROUNDS = 5
# Kill after this many acknowledgements (seeded per round): from the very first flushes to
# well into multi-level compaction.
ACKS_BEFORE_KILL = (20, 600)
# A child that stops producing output for this long (real seconds) is killed and the test fails.
CHILD_TIMEOUT = 30.0

Entry = tuple[int, str | None]  # (seq, value or None for a delete)


@attrs.frozen
class Write:
    writer: int
    ops: tuple[tuple[str, str | None], ...]
    last_seq: int | None  # None: never acknowledged (in flight at the kill)

    def op_seqs(self) -> list[int]:
        assert self.last_seq is not None
        first = self.last_seq - len(self.ops) + 1
        return [first + i for i in range(len(self.ops))]


@attrs.frozen
class ChildRun:
    acknowledged: list[Write]
    in_flight: list[Write]


def run_child(
    directory: Path, sync: SyncMode, seed: int, tag: str, kill_after: int, *, check_lock: bool = False
) -> ChildRun:
    """Run the child until ``kill_after`` acknowledgements, SIGKILL it, collect its report."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(directory), sync.value, str(seed), tag],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    watchdog = threading.Timer(CHILD_TIMEOUT, child.kill)
    watchdog.start()
    begun: dict[int, tuple[tuple[str, str | None], ...]] = {}
    acknowledged: list[Write] = []
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n", "the child failed to open the store"
        if check_lock:
            # While the child owns the directory, another process cannot open it.
            with pytest.RaisesGroup(pytest.RaisesExc(StorageError, match="is in use by another process")):
                trio.run(read_back, directory)
        killed = False
        for line in child.stdout:
            kind, writer, rest = line.rstrip("\n").split(" ", 2)
            if kind == "begin":
                begun[int(writer)] = tuple((k, v) for k, v in json.loads(rest))
            else:
                assert kind == "ack", line
                ops = begun.pop(int(writer))
                acknowledged.append(Write(int(writer), ops, int(rest)))
                if not killed and len(acknowledged) >= kill_after:
                    # Keep reading: whatever the child printed before it died counts.
                    child.send_signal(signal.SIGKILL)
                    killed = True
    finally:
        watchdog.cancel()
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL, "the child died before the planned kill"
    assert len(acknowledged) >= kill_after
    in_flight = [Write(writer, ops, None) for writer, ops in begun.items()]
    return ChildRun(acknowledged, in_flight)


async def read_back(directory: Path) -> tuple[dict[str, Entry], int]:
    """Recover the directory; the live entries with their seqs, and the last seq."""
    entries: dict[str, Entry] = {}
    async with open_store(directory) as store:
        for key, seq, value in store.scan_entries():
            assert value is not None  # scans drop tombstones
            entries[key.decode()] = (seq, value.decode())
        last_seq = store.statistics().last_seq
    check_closed_directory(directory)
    return entries, last_seq


def check_recovery(
    base: dict[str, Entry], run: ChildRun, recovered: dict[str, Entry], last_seq: int, where: str
) -> None:
    # What the acknowledged writes promise, newest op (by seq) per key, on top of the base.
    expected: dict[str, Entry] = dict(base)
    for write in run.acknowledged:
        for (key, value), seq in zip(write.ops, write.op_seqs(), strict=True):
            if key not in expected or expected[key][0] < seq:
                expected[key] = (seq, value)
    assert last_seq >= max((w.last_seq or 0 for w in run.acknowledged), default=0), where

    in_flight_values = {(k, v) for write in run.in_flight for k, v in write.ops}
    in_flight_deletes = {k for write in run.in_flight for k, v in write.ops if v is None}
    for key in sorted(expected.keys() | recovered.keys()):
        promised = expected.get(key)
        found = recovered.get(key)
        if found is not None and promised is not None and found[0] == promised[0]:
            assert found[1] == promised[1], f"{where}: {key} has the wrong value at seq {found[0]}"
        elif found is not None:
            # Newer than anything acknowledged for the key: must be an in-flight write's.
            assert promised is None or found[0] > promised[0], (
                f"{where}: {key} lost the acknowledged seq {promised} (holds seq {found[0]})"
            )
            assert (key, found[1]) in in_flight_values, f"{where}: {key} = {found} was never written"
        elif promised is not None and promised[1] is not None:
            assert key in in_flight_deletes, f"{where}: acknowledged {key} = {promised} is missing"

    # An in-flight batch is all or nothing: once one op is seen, the batch's seqs are known.
    for write in run.in_flight:
        seen = [
            i for i, (k, v) in enumerate(write.ops) if v is not None and recovered.get(k, (0, None))[1] == v
        ]
        if not seen:
            continue
        first = recovered[write.ops[seen[0]][0]][0] - seen[0]
        for i, (key, value) in enumerate(write.ops):
            found = recovered.get(key)
            if found is not None:
                assert found[0] >= first + i, f"{where}: half of an in-flight batch: {key} = {found}"
            else:
                assert value is None or key in in_flight_deletes, f"{where}: half of an in-flight batch"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sync", "seed"), [(SyncMode.ALWAYS, 1000), (SyncMode.INTERVAL, 2000), (SyncMode.NONE, 3000)]
)
def test_acknowledged_writes_survive_sigkill(tmp_path: Path, sync: SyncMode, seed: int) -> None:
    rng = random.Random(seed)
    base: dict[str, Entry] = {}
    acknowledged = in_flight = 0
    for round_ in range(ROUNDS):
        kill_after = rng.randrange(*ACKS_BEFORE_KILL)
        run = run_child(tmp_path, sync, seed + round_, f"r{round_}", kill_after, check_lock=round_ == 0)
        recovered, last_seq = trio.run(read_back, tmp_path)
        check_recovery(base, run, recovered, last_seq, f"{sync.value} round {round_}")
        base = recovered
        acknowledged += len(run.acknowledged)
        in_flight += len(run.in_flight)
    assert acknowledged >= ROUNDS * ACKS_BEFORE_KILL[0]
    assert base, "the rounds left no data to check"


def test_checker_catches_a_lost_write() -> None:
    """The checker itself can fail: a lost, an invented and a torn-batch recovery."""
    acked = Write(0, (("a", "1"), ("b", "2")), last_seq=2)
    pending = Write(1, (("c", "3"), ("d", "4")), last_seq=None)
    run = ChildRun([acked], [pending])
    good: dict[str, Entry] = {"a": (1, "1"), "b": (2, "2"), "c": (3, "3"), "d": (4, "4")}
    check_recovery({}, run, good, 4, "good")
    check_recovery({}, run, {"a": (1, "1"), "b": (2, "2")}, 2, "in flight lost")
    with pytest.raises(AssertionError, match=r"acknowledged b = .* is missing"):
        check_recovery({}, run, {"a": (1, "1")}, 2, "lost")
    with pytest.raises(AssertionError, match="was never written"):
        check_recovery({}, run, {**good, "e": (5, "5")}, 5, "invented")
    with pytest.raises(AssertionError, match="half of an in-flight batch"):
        check_recovery({}, run, {"a": (1, "1"), "b": (2, "2"), "c": (3, "3")}, 3, "torn")
    with pytest.raises(AssertionError, match="wrong value"):
        check_recovery({}, run, {"a": (1, "9"), "b": (2, "2")}, 2, "changed")
    with pytest.raises(AssertionError, match="lost the acknowledged seq"):
        check_recovery({"a": (7, "old")}, ChildRun([], []), {"a": (6, "older")}, 7, "rolled back")
