"""`sentinel run` on a filesystem that really fills up (a small tmpfs).

Produce until the disk is full: the producer gets RESOURCE_EXHAUSTED naming a file under
the data directory, the broker keeps running and serves every acknowledged record, the
CLI says so in one line; free space and producing works again; restart while the disk is
full and the broker starts, serves reads and refuses writes; free space and it accepts
them; nothing acknowledged is ever lost, nothing refused is ever visible.

A produce is refused up front while the storage engine meets a full disk. One that got
past that check just as the disk filled is held by its partition's Raft group (a Ready is
never abandoned) and completes once space is back: its producer, with no retries, sees a
timeout, and the batch is in doubt — stored whole, at its place, or not at all.

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

import attrs
import pytest
from broker_process import BrokerProcess, sentinel_command, subprocess_env
from fault_support import metric, read_partition

from sentinel.client import Producer, RequestTimeout
from sentinel.errors import ResourceExhausted, Unavailable

FILESYSTEM_BYTES = 16 * 1024 * 1024
# Left free after the ballast: a few memtables' worth, so the disk fills in a second or two.
ROOM_BYTES = 3 * 1024 * 1024
MEMTABLE_BYTES = 512 * 1024
RECORD = b"r" * 1000
BATCH = 100  # records per produce request: ~100 KB
# A request answered by neither an ack nor a refusal within this is in doubt (see History).
REQUEST_TIMEOUT_MS = 5_000


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


@attrs.define
class History:
    """Every batch produced, in order, with what its producer was told: ``acked``,
    ``refused`` (RESOURCE_EXHAUSTED, or UNAVAILABLE before anything was proposed) or
    ``in_doubt`` (no answer within the request timeout). Values are numbered once, so no
    two batches hold the same record."""

    batches: list[tuple[list[bytes], str]] = attrs.field(factory=list)

    def next_values(self) -> list[bytes]:
        first = sum(len(values) for values, _ in self.batches)
        return [b"%08d:" % (first + i) + RECORD for i in range(BATCH)]

    @property
    def acked(self) -> list[bytes]:
        return [v for values, outcome in self.batches if outcome == "acked" for v in values]

    def check(self, stored: list[bytes | None]) -> None:
        """``stored`` is every acknowledged record in order, never a refused one; a batch in
        doubt is there whole (at its place) or not at all."""
        position = 0
        for values, outcome in self.batches:
            here = stored[position : position + len(values)] == values
            if outcome == "acked":
                assert here, f"acknowledged records missing or out of order at {position}"
            if here and outcome != "refused":
                position += len(values)
        assert position == len(stored), f"{len(stored) - position} records stored that nobody was told about"
        refused = {v for values, outcome in self.batches if outcome == "refused" for v in values}
        assert not refused & set(stored), "a refused batch is visible"


async def produce_one(producer: Producer, history: History) -> BaseException | None:
    """Produce one batch and record what the producer was told; returns the refusal."""
    values = history.next_values()
    try:
        await (await producer.send_batch("t", values, partition=0))
    except RequestTimeout:
        # Accepted just as the disk filled: its partition's Raft group holds the write
        # until space is back (the new architecture: a Ready is never abandoned).
        history.batches.append((values, "in_doubt"))
        return None
    except (ResourceExhausted, Unavailable) as exc:
        history.batches.append((values, "refused"))
        return exc
    history.batches.append((values, "acked"))
    return None


def producer(address: str) -> Producer:
    # No retries: a retry of a request that timed out would be refused while the original
    # waits for space, and the outcome of that batch would be misreported as refused.
    return Producer(address, acks="all", retries=0, request_timeout_ms=REQUEST_TIMEOUT_MS)


async def produce_until_refused(address: str, history: History, limit: int = 200) -> ResourceExhausted:
    """Produce numbered records in batches until the broker refuses one with
    RESOURCE_EXHAUSTED. Returns the refusal."""
    async with producer(address) as p:
        for _ in range(limit):
            refused = await produce_one(p, history)
            if isinstance(refused, ResourceExhausted):
                return refused
            assert refused is None, refused  # UNAVAILABLE: not expected while space runs out
    raise AssertionError(f"{limit} batches were accepted: the filesystem never filled")


async def produce_once(address: str, history: History, tries: int = 40) -> None:
    """Produce one batch, retrying while the broker still refuses it (space was just
    freed: a flush may have to go through first, a held Raft write to complete); bounded."""
    async with producer(address) as p:
        for _ in range(tries):
            if await produce_one(p, history) is None and history.batches[-1][1] == "acked":
                return
            await asyncio.sleep(0.1)
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
            history = History()
            fill(ballast, leave=ROOM_BYTES)
            refused = asyncio.run(produce_until_refused(broker.address, history))
            assert str(refused).startswith(f"disk full: {data}/"), refused
            assert broker.process is not None and broker.process.poll() is None  # still running
            history.check(stored(broker.address))  # reads are served
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
            # The broker refuses a produce up front with the engine's disk-full error of the
            # moment (a flush's table, the WAL, or the directory while it probes for space).
            (line,) = cli.stderr.splitlines()
            assert line.startswith(f"error: disk full: {data}"), cli.stderr
            assert line.endswith("; free space on its filesystem"), cli.stderr

            ballast.unlink()
            asyncio.run(produce_once(broker.address, history))
            history.check(stored(broker.address))
            broker.stop()

            fill(ballast, leave=0)  # restart while the disk is completely full
            broker.start()
            history.check(stored(broker.address))
            refused = asyncio.run(produce_until_refused(broker.address, history, limit=1))
            assert str(refused).startswith(f"disk full: {data}/"), refused
            ballast.unlink()
            asyncio.run(produce_once(broker.address, history))
            broker.stop()

            broker.start()  # and everything acknowledged is still there
            history.check(stored(broker.address))
            broker.stop()
        finally:
            broker.close()
        assert not any("Traceback" in line for line in broker.log), "".join(broker.log)
