"""`sentinel run` on a damaged WAL: what a real broker does at the next start.

One broker (``--sync always``) acknowledges 20 records with acks=all, one request each, is
stopped cleanly (its restart flushes them into a table), acknowledges 20 more (offsets
20-39, in the newest segment: each batch in one WAL frame with the Raft entry that holds
it, then frames of Raft state) and is SIGKILLed. Each test damages a copy of that data
directory the way issue 8 names and restarts on it:

- damage (a flipped byte mid-segment, in a payload or in a length field; a deleted newest
  segment): the start is refused with ONE stderr line naming the file, the byte and what
  would be lost, exit 1, nothing changed; ``--accept-data-loss`` then starts, prints the
  drop, counts it in the metrics, and serves exactly the surviving prefix;
- a torn tail (the segment cut short inside its last frame, or a zero-filled end): cut and
  reported, and the broker starts without being asked to accept anything;
- a frame missing from the middle (which the WAL itself cannot notice: seq gaps are
  legal; with it goes a committed Raft entry, which the partition's replica reports and
  skips as it opens): the partition serves the records before the hole, then refuses the
  read at it with DATA_LOSS naming the partition and offsets, never skipping it.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker_process import BrokerProcess, sentinel_command, subprocess_env
from fault_support import metric, read_partition

from sentinel.broker.keys import parse_data_key
from sentinel.client import Consumer, Producer, TopicPartition
from sentinel.client.errors import DataLoss
from sentinel.storage.framing import FRAME_HEADER_SIZE, scan_frames
from sentinel.storage.wal_format import decode_write_batch

TOPIC = "events"
BEFORE_RESTART = 20  # offsets 0-19: flushed into a table by the clean restart
TOTAL = 40  # offsets 20-39: in the newest WAL segment
DAMAGED = 30  # the offset whose frame each test damages


def value(offset: int) -> bytes:
    return b"value-%d" % offset


async def produce(address: str, offsets: range) -> None:
    async with Producer(address, acks="all", linger_ms=0) as producer:
        for offset in offsets:
            metadata = await (await producer.send(TOPIC, value(offset), partition=0))
            assert metadata.offset == offset


@pytest.fixture(scope="module")
def crashed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The data directory of a broker SIGKILLed after acknowledging offsets 0-39."""
    data = tmp_path_factory.mktemp("crashed") / "data"
    broker = BrokerProcess(data, extra_args=["--sync", "always"])
    try:
        broker.start()
        asyncio.run(produce(broker.address, range(BEFORE_RESTART)))
        broker.stop()
        broker.start()
        asyncio.run(produce(broker.address, range(BEFORE_RESTART, TOTAL)))
        broker.kill()
    finally:
        broker.close()
    return data


@pytest.fixture
def data(crashed: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(crashed, copy)
    (copy / "LOCK").unlink(missing_ok=True)
    return copy


def newest_segment(data: Path) -> Path:
    return max(data.glob("wal-*.log"))


def frame_of(segment: Path, offset: int) -> tuple[int, int]:
    """``(start, end)`` of the WAL frame that holds the record batch ending at ``offset``."""
    scan = scan_frames(segment.read_bytes())
    assert scan.tail_error is None
    pos = 0
    for payload in scan.payloads:
        end = pos + FRAME_HEADER_SIZE + len(payload)
        for key, _seq, _value in decode_write_batch(payload, str(segment)):
            parsed = parse_data_key(key)
            if parsed is not None and parsed[2] == offset:
                return pos, end
        pos = end
    raise AssertionError(f"no frame of {segment} holds offset {offset}")


def frames_from(segment: Path, start: int) -> int:
    """How many WAL frames of ``segment`` begin at or after byte ``start``."""
    pos = count = 0
    for payload in scan_frames(segment.read_bytes()).payloads:
        count += pos >= start
        pos += FRAME_HEADER_SIZE + len(payload)
    return count


def files(data: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(data.iterdir()) if p.name != "LOCK"}


def refused(data: Path) -> str:
    """Start a broker that must refuse; returns its one stderr line."""
    args = ["run", "--data", str(data), "--port", "0", "--metrics-port", "-1"]
    result = subprocess.run(
        sentinel_command(*args),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env=subprocess_env(),
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def started(data: Path) -> Iterator[BrokerProcess]:
    broker = BrokerProcess(data, metrics=True)
    try:
        yield broker
    finally:
        broker.close()


def recovery_lines(broker: BrokerProcess) -> list[str]:
    return [line.rstrip("\n") for line in broker.log if line.startswith("recovery: ")]


def assert_serves_exactly(broker: BrokerProcess, end: int) -> None:
    records = asyncio.run(read_partition(broker.address, TOPIC, 0))
    assert records == [(offset, value(offset)) for offset in range(end)]


def assert_counted(broker: BrokerProcess, drops: int, dropped_bytes: int) -> None:
    assert broker.metrics_port is not None
    assert metric(broker.metrics_port, "sentinel_recovery_drops") == drops
    assert metric(broker.metrics_port, "sentinel_recovery_dropped_bytes") == dropped_bytes


@pytest.mark.slow
@pytest.mark.parametrize("where", ["payload", "length"])
def test_a_flipped_byte_mid_segment_is_refused_until_the_loss_is_accepted(
    data: Path, started: BrokerProcess, where: str
) -> None:
    # A flipped length bit made the frame look cut short: it was dropped with everything
    # after it as a "torn tail", silently (issue 8).
    segment = newest_segment(data)
    start, end = frame_of(segment, DAMAGED)
    # A produce is more than one frame (its Raft entry, then the Raft state that commits
    # it): count the intact ones the damage would take along.
    intact = frames_from(segment, end)
    assert intact >= TOTAL - DAMAGED - 1
    damaged = bytearray(segment.read_bytes())
    damaged[(start + end) // 2 if where == "payload" else start + 6] ^= 0x01
    segment.write_bytes(bytes(damaged))
    before = files(data)
    line = refused(data)
    assert line.startswith(f"error: corruption in {segment} at byte {start}: ")
    lost = f"{len(damaged) - start} bytes of WAL records after seq "
    assert lost in line
    after = f"the damaged write batch and {intact} intact one(s) after it (seqs "
    assert f"would be lost: {after}" in line
    assert files(data) == before  # refusing changes nothing

    started.extra_args = ["--accept-data-loss"]
    started.start()
    report = recovery_lines(started)
    assert report[0].startswith(f"recovery: {segment.name}: accepted data loss at byte {start}: ")
    assert lost in report[0] and f"were dropped: {after}" in report[0]
    assert_counted(started, drops=1, dropped_bytes=len(damaged) - start)
    assert_serves_exactly(started, DAMAGED)
    started.stop()


@pytest.mark.slow
def test_a_deleted_newest_segment_is_refused_until_the_loss_is_accepted(
    data: Path, started: BrokerProcess
) -> None:
    segment = newest_segment(data)
    segment.unlink()
    line = refused(data)
    assert line.startswith(f"error: corruption in {segment}: WAL segment missing ")
    assert "would be lost" in line

    started.extra_args = ["--accept-data-loss"]
    started.start()
    report = recovery_lines(started)
    assert report[0].startswith(f"recovery: {segment.name}: accepted data loss: WAL segment missing ")
    assert_counted(started, drops=1, dropped_bytes=0)  # the bytes went with the file
    assert_serves_exactly(started, BEFORE_RESTART)
    started.stop()


@pytest.mark.slow
@pytest.mark.parametrize("tail", ["cut inside the last frame", "zero-filled"])
def test_a_torn_tail_is_cut_and_reported_and_the_broker_starts(
    data: Path, started: BrokerProcess, tail: str
) -> None:
    segment = newest_segment(data)
    whole = segment.read_bytes()
    if tail == "zero-filled":
        segment.write_bytes(whole + bytes(4096))
        dropped, survivors = 4096, TOTAL
    else:
        start, end = frame_of(segment, DAMAGED)
        segment.write_bytes(whole[: (start + end) // 2])
        dropped, survivors = (start + end) // 2 - start, DAMAGED
    started.start()  # no --accept-data-loss: a crash mid-write loses nothing acknowledged
    report = recovery_lines(started)
    assert report[0].startswith(
        f"recovery: {segment.name}: dropped a torn tail of {dropped} bytes after seq "
    )
    assert_counted(started, drops=1, dropped_bytes=dropped)
    assert_serves_exactly(started, survivors)
    started.stop()


@pytest.mark.slow
def test_records_missing_below_the_high_watermark_are_data_loss_never_skipped(
    data: Path, started: BrokerProcess
) -> None:
    segment = newest_segment(data)
    whole = segment.read_bytes()
    start, end = frame_of(segment, DAMAGED)
    segment.write_bytes(whole[:start] + whole[end:])  # exactly one frame gone: nothing to see
    started.start()
    assert not [line for line in recovery_lines(started) if "dropped" in line or "accepted" in line]

    async def read_until_refused() -> tuple[list[tuple[int, bytes | None]], str]:
        tp = TopicPartition(TOPIC, 0)
        records: list[tuple[int, bytes | None]] = []
        async with Consumer(started.address, fetch_max_wait_ms=50) as consumer:
            consumer.assign([tp])
            consumer.seek(tp, 0)
            with pytest.raises(DataLoss) as info:
                for _ in range(TOTAL):
                    got = await consumer.getmany(tp, timeout_ms=500)
                    records += [(r.offset, r.value) for r in got.get(tp, [])]
        return records, str(info.value)

    records, error = asyncio.run(read_until_refused())
    assert records == [(offset, value(offset)) for offset in range(DAMAGED)]
    missing = f"offsets {DAMAGED} to {DAMAGED} of {TOPIC}[0] are missing from storage"
    assert f"{missing} (below the high watermark {TOTAL})" in error
    started.stop()
