"""SIGKILL a real process in the middle of persisting Readys (issue 9, "Storage"): a node
never forgets a vote it announced (so never votes twice in one term) and never loses an
entry it acknowledged.

The child (``raft_crash_child.py``) runs node 1 of a 3-voter group on the LSM store and
prints every vote grant and acknowledgement the adversary playing nodes 2 and 3 receives,
flushed before the adversary acts on it. The parent kills it after a seeded number of
lines — wherever it is: mid-write, mid-fsync, mid-flush — reads the persisted state back
in a fresh process and checks:

* the last vote announced, (T, C): the persisted term is above T, or it is T with vote C;
* the last acknowledgement received, (J, term): the persisted log holds index J with that
  term (and, by the log matching property the node enforces, everything before it).

Rounds reuse the directory, so each recovers on top of the previous ones.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

CHILD = Path(__file__).with_name("raft_crash_child.py")
ROUNDS = 4
LINES_BEFORE_KILL = (10, 300)
CHILD_TIMEOUT = 60.0  # real seconds; only keeps a broken child from hanging the run


def _check(directory: Path) -> tuple[list[int], list[int]]:
    out = subprocess.run(
        [sys.executable, str(CHILD), "check", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    state = json.loads(out.stdout.strip().splitlines()[-1])
    return state["hard_state"], state["terms"]


@pytest.mark.slow
@pytest.mark.parametrize("sync", ["always", "none"])
def test_sigkill_while_persisting_never_forgets_a_vote_or_an_acknowledged_entry(
    tmp_path: Path, sync: str
) -> None:
    rng = random.Random(f"raft-crash-{sync}")
    directory = tmp_path / "data"
    last_vote: tuple[int, int] | None = None
    last_ack: tuple[int, int] | None = None
    events = 0
    for round_no in range(ROUNDS):
        acked = last_ack[0] if last_ack else 0
        child = subprocess.Popen(
            [
                sys.executable,
                str(CHILD),
                "run",
                str(directory),
                str(rng.randrange(1 << 30)),
                sync,
                str(acked),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        watchdog = threading.Timer(CHILD_TIMEOUT, child.kill)
        watchdog.start()
        kill_after = rng.randrange(*LINES_BEFORE_KILL)
        try:
            assert child.stdout is not None
            lines = 0
            for line in child.stdout:
                if not line.endswith("\n"):
                    break  # cut off by the kill: never received
                event = json.loads(line)
                if "vote" in event:
                    last_vote = (event["vote"][0], event["vote"][1])
                elif "ack" in event:
                    last_ack = (event["ack"][0], event["ack"][1])
                lines += 1
                if lines == kill_after:
                    child.send_signal(signal.SIGKILL)
            child.wait()
        finally:
            watchdog.cancel()
        assert child.returncode == -signal.SIGKILL, (
            f"round {round_no}: {child.stderr.read() if child.stderr else ''}"
        )
        events += lines
        (term, vote, _commit), terms = _check(directory)
        if last_vote is not None:
            vote_term, candidate = last_vote
            assert term > vote_term or (term == vote_term and vote == candidate), (
                f"round {round_no}: announced a vote for {candidate} in term {vote_term}, "
                f"restored term {term} vote {vote}"
            )
        if last_ack is not None:
            index, ack_term = last_ack
            assert len(terms) >= index and terms[index - 1] == ack_term, (
                f"round {round_no}: acknowledged index {index} of term {ack_term}, "
                f"restored {len(terms)} entries"
                + (f", term {terms[index - 1]} there" if len(terms) >= index else "")
            )
    # The test saw work to check: votes and acknowledgements in every mode.
    assert last_vote is not None and last_ack is not None and events >= ROUNDS * LINES_BEFORE_KILL[0]
