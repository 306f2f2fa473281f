"""Smoke tests of the broker benchmarks: ``sentinel bench produce|consume|e2e --quick --json``
run as a user would (a subprocess that starts its own broker and client processes), and
print one JSON object whose figures are all there and positive."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from sentinel.bench.broker import SETTLE_TIMEOUT_S, SETTLE_WINDOW_S, settle
from sentinel.client.producer import DEFAULT_BATCH_SIZE

TIMEOUT_S = 180


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sentinel.cli.main", "bench", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )


def run_json(*args: str) -> dict[str, Any]:
    done = bench(*args, "--quick", "--json")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    assert result["machine"]["cores"] >= 1
    assert result["record_bytes"] == 100
    assert result["broker"]["external"] is False and result["broker"]["sync"] == "interval"
    return result


def assert_rates(row: dict[str, Any]) -> None:
    assert row["records"] > 0 and row["seconds"] > 0
    assert row["records_per_s"] > 0 and row["mb_per_s"] > 0
    # MB/s counts 100-byte values: it follows from records/s.
    assert row["mb_per_s"] == pytest.approx(row["records_per_s"] * 100 / 1e6, rel=0.01, abs=0.01)


def assert_latency(figures: dict[str, float]) -> None:
    assert 0 < figures["p50"] <= figures["p99"] <= figures["p999"] <= figures["max"]


@pytest.mark.slow
def test_produce_bench_json() -> None:
    result = run_json("produce", "--records", "20000", "--rate", "2000")
    assert result["bench"] == "produce"
    # acks=1 and acks=all at the default batch size, then acks=all with 1 MB batches.
    throughput = [(row["acks"], row["batch_size"]) for row in result["throughput"]]
    assert throughput == [("1", DEFAULT_BATCH_SIZE), ("all", DEFAULT_BATCH_SIZE), ("all", 1_000_000)]
    assert [row["acks"] for row in result["send_batch"]] == ["1", "all"]
    for row in result["throughput"]:
        assert_rates(row)
        assert row["records"] == 20000  # --records: a fixed count, not a timed run
        assert row["client_cpu_s"] > 0 and row["broker_cpu_s"] is not None
        # CPU per record follows from the CPU seconds (rounded to 0.01 s) and the count.
        assert row["client_cpu_us_per_record"] == pytest.approx(row["client_cpu_s"] / 20000 * 1e6, abs=1)
        assert row["broker_cpu_us_per_record"] == pytest.approx(row["broker_cpu_s"] / 20000 * 1e6, abs=1)
    for row in result["send_batch"]:
        assert_rates(row)
    latency = result["latency"]
    assert latency["acks"] == "all" and latency["rate"] == 2000 and latency["failures"] == 0
    assert latency["records"] == 2000 and latency["achieved_rate"] > 1000
    assert_latency(latency["latency_ms"])


@pytest.mark.slow
def test_consume_bench_json() -> None:
    result = run_json("consume", "--records", "30000")
    assert result["bench"] == "consume"
    assert_rates(result["preload"])
    # getmany, then async for: everything preloaded (whole requests of pre-built batches) is
    # read back each way, with the CPU each process spent per record.
    for key, mode in (("consume", "getmany"), ("async_for", "async-for")):
        row = result[key]
        assert row["mode"] == mode
        assert_rates(row)
        assert row["records"] == result["preload"]["records"] >= 30000
        rounding = 0.005 * 1e6 / row["records"]  # client_cpu_s is rounded to 10 ms
        assert row["client_cpu_us_per_record"] == pytest.approx(
            row["client_cpu_s"] * 1e6 / row["records"], abs=rounding + 0.001
        )
        assert row["broker_cpu_us_per_record"] is not None and row["broker_cpu_us_per_record"] >= 0
        # Each run started once the broker was quiet (or the wait's bound had passed).
        assert 0 < row["settled_after_s"] <= SETTLE_TIMEOUT_S + SETTLE_WINDOW_S


class FakeProcess:
    """CPU seconds that grow by ``busy`` per second of the fake clock, then stop growing."""

    def __init__(self, busy: list[float]) -> None:
        self.busy = busy
        self.now = 0.0
        self.cpu = 0.0

    def sleep(self, seconds: float) -> None:
        share = self.busy.pop(0) if self.busy else 0.0
        self.cpu += share * seconds
        self.now += seconds

    def clock(self) -> float:
        return self.now


def test_settle_waits_until_the_broker_is_quiet_and_no_longer_than_its_bound() -> None:
    # A broker compacting (a whole core), then finishing (half), then quiet (1% of a core):
    # three windows, then the consume run starts.
    broker = FakeProcess([1.0, 0.5, 0.01])
    assert settle(lambda: broker.cpu, sleep=broker.sleep, clock=broker.clock) == 3 * SETTLE_WINDOW_S
    # A broker that never quiets down: the wait ends at its bound.
    busy = FakeProcess([1.0] * 1000)
    assert settle(lambda: busy.cpu, sleep=busy.sleep, clock=busy.clock) == SETTLE_TIMEOUT_S
    # An external broker's CPU cannot be read: no wait at all.
    external = FakeProcess([])
    assert settle(lambda: None, sleep=external.sleep, clock=external.clock) is None
    assert external.now == 0.0


@pytest.mark.slow
def test_e2e_bench_json() -> None:
    result = run_json("e2e", "--rate", "2000")
    assert result["bench"] == "e2e"
    assert result["records"] == 2000  # every stamped record reached the consumer
    assert_latency(result["end_to_end_ms"])
    assert_latency(result["produce_ms"])


@pytest.mark.slow
def test_unreachable_broker_is_one_error_line() -> None:
    done = bench("produce", "--quick", "--json", "--broker", "127.0.0.1:1")
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "cannot reach broker" in lines[0]
