"""`sentinel run` on a filesystem that really fills up (a small tmpfs).

Produce until the disk is full: the producer gets RESOURCE_EXHAUSTED naming a file under
the data directory, the broker keeps running and serves every acknowledged record, the
CLI says so in one line; free space and producing works again; restart while the disk is
full and the broker starts, serves reads and refuses writes; free space and it accepts
them; nothing acknowledged is ever lost.

Mounting a tmpfs needs root (or CAP_SYS_ADMIN): where that is not allowed the test is
skipped (the same paths are covered through the file seam in tests/storage and
tests/broker).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from broker_process import BrokerProcess, sentinel_command, subprocess_env
from fault_support import metric, read_partition

from sentinel.client import Producer
from sentinel.errors import ResourceExhausted

FILESYSTEM_BYTES = 16 * 1024 * 1024
# Left free after the ballast: a few memtables' worth, so the disk fills in a second or two.
ROOM_BYTES = 3 * 1024 * 1024
MEMTABLE_BYTES = 512 * 1024
RECORD = b"r" * 1000
BATCH = 100  # records per produce request: ~100 KB


@contextmanager
def tmpfs(mount: Path) -> Iterator[Path]:
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FILESYSTEM_BYTES}", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(ballast: Path, leave: int) -> None:
    """Grow ``ballast`` until the filesystem has at most ``leave`` bytes free."""
    stats = os.statvfs(ballast.parent)
    free = stats.f_bavail * stats.f_frsize
    with ballast.open("ab") as out:
        chunk = b"\0" * (64 * 1024)
        try:
            while free > leave:
                out.write(chunk[: min(len(chunk), free - leave)])
                out.flush()
                free -= min(len(chunk), free - leave)
        except OSError:
            pass  # full already


async def produce_until_refused(address: str, acked: list[bytes], limit: int = 200) -> ResourceExhausted:
    """Produce numbered records in batches until the broker refuses one; ``acked`` gets
    every record acknowledged on the way. Returns the refusal."""
    async with Producer(address, acks="all") as producer:
        for _ in range(limit):
            values = [b"%08d:" % (len(acked) + i) + RECORD for i in range(BATCH)]
            future = await producer.send_batch("t", values, partition=0)
            try:
                await future
            except ResourceExhausted as exc:
                return exc
            acked.extend(values)
    raise AssertionError(f"{limit} batches were accepted: the filesystem never filled")


async def produce_once(address: str, acked: list[bytes], tries: int = 40) -> None:
    """Produce one batch, retrying while the broker still refuses it (space was just
    freed: a flush may have to go through first); bounded."""
    async with Producer(address, acks="all") as producer:
        for _ in range(tries):
            values = [b"%08d:" % (len(acked) + i) + RECORD for i in range(BATCH)]
            try:
                await (await producer.send_batch("t", values, partition=0))
            except ResourceExhausted:
                await asyncio.sleep(0.1)
                continue
            acked.extend(values)
            return
    raise AssertionError("writes were still refused after space was freed")


def stored(address: str) -> list[bytes | None]:
    return [value for _offset, value in asyncio.run(read_partition(address, "t", 0))]


@pytest.mark.slow
def test_a_full_filesystem_refuses_writes_serves_reads_and_recovers(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs") as mount:
        data, ballast = mount / "data", mount / "ballast"
        broker = BrokerProcess(data, extra_args=["--memtable-bytes", str(MEMTABLE_BYTES)], metrics=True)
        broker.start()
        try:
            acked: list[bytes] = []
            fill(ballast, leave=ROOM_BYTES)
            refused = asyncio.run(produce_until_refused(broker.address, acked))
            assert str(refused).startswith(f"disk full: {data}/"), refused
            assert broker.process is not None and broker.process.poll() is None  # still running
            assert stored(broker.address) == acked  # reads are served
            assert broker.metrics_port is not None
            assert metric(broker.metrics_port, "sentinel_storage_writes_refused_total") >= 1
            assert metric(broker.metrics_port, "sentinel_storage_disk_full") == 1

            # Not a byte left (a tiny record could still fit in the WAL's last page): the CLI
            # says so in one line.
            fill(ballast, leave=0)
            message = "m" * 10_000
            cli = subprocess.run(
                sentinel_command("produce", "--broker", broker.address, "--topic", "t", "--message", message),
                capture_output=True,
                text=True,
                timeout=60,
                env=subprocess_env(),
                stdin=subprocess.DEVNULL,
            )
            assert cli.returncode == 1
            assert cli.stderr.splitlines() == [f"error: {refused}"], cli.stderr

            ballast.unlink()
            asyncio.run(produce_once(broker.address, acked))
            assert stored(broker.address) == acked
            broker.stop()

            fill(ballast, leave=0)  # restart while the disk is completely full
            broker.start()
            assert stored(broker.address) == acked
            refused = asyncio.run(produce_until_refused(broker.address, acked, limit=1))
            assert str(refused).startswith(f"disk full: {data}/"), refused
            ballast.unlink()
            asyncio.run(produce_once(broker.address, acked))
            broker.stop()

            broker.start()  # and everything acknowledged is still there
            assert stored(broker.address) == acked
            broker.stop()
        finally:
            broker.close()
        assert not any("Traceback" in line for line in broker.log), "".join(broker.log)
