"""`sentinel run` on a corrupt WAL: refuses with one line naming file and offset, unless accepted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sentinel.storage.files import wal_path
from sentinel.storage.options import StorageOptions
from sentinel.storage.recovery import recover, unlock_directory
from sentinel.storage.wal_format import encode_wal_record

RUN = [sys.executable, "-c", "from sentinel.cli.main import app; app()", "run"]


@pytest.mark.slow
def test_run_refuses_a_corrupt_wal_and_accepts_the_loss_on_request(tmp_path: Path) -> None:
    recovered = recover(tmp_path, StorageOptions())
    recovered.manifest.close()
    unlock_directory(recovered.lock_fd)
    frames = [encode_wal_record(seq, [(b"k%d" % seq, b"v" * 20)]) for seq in range(1, 11)]
    damaged_at = sum(len(f) for f in frames[:5])
    data = bytearray(b"".join(frames))
    data[damaged_at + 10] ^= 0x01
    path = wal_path(tmp_path, recovered.wal_segment)  # the segment a broker would be writing
    path.write_bytes(bytes(data))
    args = [*RUN, "--data", str(tmp_path), "--port", "0", "--metrics-port", "-1"]
    refused = subprocess.run(args, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert refused.returncode != 0
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert lines[0].startswith(f"error: corruption in {path} at byte {damaged_at}: ")
    assert "would be lost" in lines[0]
    assert path.read_bytes() == bytes(data)
    # Accepted: the broker starts, says what it dropped, and is stopped by SIGTERM.
    with subprocess.Popen(
        [*args, "--accept-data-loss"], stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL
    ) as proc:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        proc.terminate()
        proc.wait(timeout=60)
    assert first.startswith(f"recovery: {path.name}: accepted data loss at byte {damaged_at}: ")
