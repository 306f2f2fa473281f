"""Crash test with a real process: SIGKILL concurrent writers at seeded moments, recover, check.

The child (``crash_child.py``) runs four concurrent writers with group commit, a tiny
memtable and small compaction budgets, and reports every write it starts and every
acknowledgement with the write's sequence numbers. The parent kills it with SIGKILL after a
seeded random number of acknowledgements (wherever it then is: mid-fsync, mid-rotation,
mid-flush, mid-compaction), keeps every line the child printed before it died, reopens the
directory in-process and asks ``crash_history.check_recovery`` whether the recovered
entries (with their seqs) and last seq are exactly what some legal history leaves: every
acknowledged write, the in-flight ones placed where their seqs can be, the WAL cut at a
batch boundary at or above the last acknowledged seq. That catches a lost acknowledged
write, an invented or misplaced value, and half of an atomic batch.

Five rounds reuse one directory, so every round recovers on top of earlier recoveries;
the recovered state (with its sequence numbers) is the base the next round is checked
against. Under ``always`` an acknowledged write was fsynced; under ``interval`` and ``none``
it was written to the OS before the acknowledgement, which is all a process crash needs, so
the same checks apply to all three modes. A failing round leaves its whole case (event log,
base, recovered state) in ``crash-case.json`` under the test's tmp_path, for replaying
through the checker.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import trio
from crash_history import (
    Ack,
    Entry,
    Event,
    HistoryViolation,
    case_json,
    check_recovery,
    parse_event,
    writes_of,
)
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


def run_child(
    directory: Path,
    sync: SyncMode,
    seed: int,
    tag: str,
    keys: int,
    kill_after: int,
    *,
    check_lock: bool = False,
) -> list[Event]:
    """Run the child until ``kill_after`` acknowledgements, SIGKILL it; every line it printed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(directory), sync.value, str(seed), tag, str(keys)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    watchdog = threading.Timer(CHILD_TIMEOUT, child.kill)
    watchdog.start()
    events: list[Event] = []
    acknowledged = 0
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n", "the child failed to open the store"
        if check_lock:
            # While the child owns the directory, another process cannot open it.
            with pytest.RaisesGroup(pytest.RaisesExc(StorageError, match="is in use by another process")):
                trio.run(read_back, directory)
        killed = False
        for line in child.stdout:
            event = parse_event(line)
            events.append(event)
            if isinstance(event, Ack):
                acknowledged += 1
                if not killed and acknowledged >= kill_after:
                    # Keep reading: whatever the child printed before it died counts.
                    child.send_signal(signal.SIGKILL)
                    killed = True
    finally:
        watchdog.cancel()
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL, "the child died before the planned kill"
    assert acknowledged >= kill_after
    return events


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


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sync", "seed", "keys"),
    [
        (SyncMode.ALWAYS, 1000, 150),
        (SyncMode.INTERVAL, 2000, 150),
        (SyncMode.NONE, 3000, 150),
        # Six keys: concurrent batches overlap, so a newer acknowledged write often hides
        # part of an in-flight batch that was durable (the outcome the first checker took
        # for a torn batch: 2 rounds in 150 measured, against none in 285 with 150 keys).
        (SyncMode.ALWAYS, 4000, 6),
    ],
)
def test_acknowledged_writes_survive_sigkill(tmp_path: Path, sync: SyncMode, seed: int, keys: int) -> None:
    rng = random.Random(seed)
    directory = tmp_path / "store"
    base: dict[str, Entry] = {}
    base_last_seq = 0
    acknowledged = 0
    for round_ in range(ROUNDS):
        kill_after = rng.randrange(*ACKS_BEFORE_KILL)
        events = run_child(
            directory, sync, seed + round_, f"r{round_}", keys, kill_after, check_lock=round_ == 0
        )
        recovered, last_seq = trio.run(read_back, directory)
        writes = writes_of(events)
        where = f"{sync.value} ({keys} keys) round {round_}"
        try:
            check_recovery(base, base_last_seq, writes, recovered, last_seq, where)
        except HistoryViolation as error:
            saved = tmp_path / "crash-case.json"
            saved.write_text(case_json(base, base_last_seq, events, recovered, last_seq))
            raise HistoryViolation(f"{error} [case saved in {saved}]") from error
        base, base_last_seq = recovered, last_seq
        acknowledged += sum(w.last_seq is not None for w in writes)
    assert acknowledged >= ROUNDS * ACKS_BEFORE_KILL[0]
    assert base, "the rounds left no data to check"
