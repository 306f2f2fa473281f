"""Smoke test of ``sentinel bench roundtrip --json``: run as a user would (a subprocess that
starts its own broker and client process), one JSON object with every layer's figure."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from sentinel.bench.grpc_floor import listening_socket
from sentinel.bench.process import BrokerProcess

TIMEOUT_S = 180


@pytest.mark.slow
def test_roundtrip_bench_json() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sentinel.cli.main", "bench", "roundtrip", "--calls", "500", "--json"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    result = json.loads(done.stdout)
    assert (result["bench"], result["calls"], result["record_bytes"]) == ("roundtrip", 500, 100)
    assert result["broker"]["external"] is False and result["broker"]["sync"] == "interval"
    assert result["target_us"] == {"p50": 500, "p99": 1500}
    latency = result["latency_us"]
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    layers = result["layers"]
    assert layers["client_cpu_us"] > 0
    # The broker's threads, read from /proc: its Trio thread and its asyncio (gRPC) thread
    # both work on every call.
    assert layers["broker_trio_cpu_us"] > 0 and layers["broker_asyncio_cpu_us"] > 0
    # The floor of HTTP/2 + gRPC alone: a bare grpclib call, each side's CPU.
    floor = layers["grpc"]
    assert 0 < floor["latency_us"]["p50"] <= floor["latency_us"]["max"]
    assert floor["client_cpu_us"] > 0 and floor["server_cpu_us"] > 0
    for name in ("replica", "storage"):
        assert 0 < layers[name]["latency_us"]["p50"] <= layers[name]["latency_us"]["max"]
        assert layers[name]["cpu_us"] > 0


def test_roundtrip_calls_must_be_positive() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sentinel.cli.main", "bench", "roundtrip", "--calls", "0"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "error: --calls must be >= 1, got 0"


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sentinel.cli.main", "bench", "roundtrip", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )


def test_broker_cpu_is_checked_before_anything_starts() -> None:
    done = _bench("--broker-cpu", "0", "--broker", "127.0.0.1:1")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: --broker-cpu pins a broker this command starts; it cannot go with --broker"
    )
    allowed = sorted(os.sched_getaffinity(0))
    done = _bench("--broker-cpu", "4096")
    assert done.returncode == 2
    expected = f"error: --broker-cpu must be one of this process's CPUs {allowed}, got 4096"
    assert done.stderr.strip() == expected


def _allowed_cpus(pid: int, tid: int | None = None) -> str:
    path = f"/proc/{pid}/task/{tid}/status" if tid is not None else f"/proc/{pid}/status"
    with open(path) as status:
        return next(line.split()[1] for line in status if line.startswith("Cpus_allowed_list:"))


def test_a_broker_process_on_one_cpu_runs_every_thread_there_and_leaves_the_caller_as_it_was() -> None:
    cpu = max(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    with BrokerProcess(cpu=cpu) as broker:
        threads = [int(t) for t in os.listdir(f"/proc/{broker.pid}/task")]
        assert len(threads) > 1  # the Trio thread, the gRPC thread and others
        assert {_allowed_cpus(broker.pid, t) for t in threads} == {str(cpu)}
    assert os.sched_getaffinity(0) == before


def test_the_grpc_floor_server_listens_on_a_socket_grpclib_sets_nodelay_on() -> None:
    # grpclib sets TCP_NODELAY only where the socket's proto is IPPROTO_TCP: with proto 0
    # the floor measured Nagle's algorithm and the delayed ACK (44 ms a call), not gRPC.
    with listening_socket() as listener:
        assert (listener.family, listener.type, listener.proto) == (
            socket.AF_INET,
            socket.SOCK_STREAM,
            socket.IPPROTO_TCP,
        )
