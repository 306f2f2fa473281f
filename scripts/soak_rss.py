#!/usr/bin/env python3
"""Soak a real broker with bursts of one kind of call and print its RSS after each burst.

For each kind of call, starts ``sentinel run`` (free ports, a temporary data directory;
one broker per kind unless ``--shared-broker``), produces a few records to a topic, runs
``--rounds`` rounds of ``--calls`` calls and reads the broker's resident set size
(``/proc/PID/status`` VmRSS) after each round. A broker that releases what a call held
plateaus after the first round or two (the allocator's high-water mark); steady growth
round after round is retention.

The client speaks HTTP/2 directly (h2 over a blocking socket, one connection per kind kept
open across its rounds: what a call held must go when the call ends, not with the
connection) so it controls exactly when a stream is reset. Kinds:

* ``completed``: unary Fetch answered at once with data;
* ``expired``:   Fetch long-polls at the end of the log until its ``max_wait_ms`` expires;
* ``cancelled``: Fetch long-polls (30 s) and the client resets the stream (RST_STREAM
  CANCEL) while the broker is waiting on it;
* ``deadline``:  Fetch long-polls (30 s) with a short ``grpc-timeout``: the broker ends it;
* ``reset``:     the client sends a Fetch's HEADERS and DATA and resets the stream in the
  same write, before the broker has done anything with it;
* ``stream``:    a follow-mode Consume is reset after its first message.

Loopback only; bounded in calls and time. Example::

    python scripts/soak_rss.py --rounds 6 --calls 2000
    python scripts/soak_rss.py --kinds cancelled,reset --json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

from sentinel.generated.sentinel import v1 as pb
from sentinel.records.batch import build_batch

HOST = "127.0.0.1"
TOPIC = "soak"
SERVICE = "/sentinel.v1.Sentinel/"
KINDS = ("completed", "expired", "cancelled", "deadline", "reset", "stream")
LISTENING = re.compile(r"listening on [^:]+:(\d+)")
# Calls in flight at once on the connection: enough to keep the broker busy, and room for
# one more under the 100 concurrent streams grpclib allows.
WINDOW = 90
# Every wait in the client gives up after this long: the script never hangs.
STEP_TIMEOUT = 60.0
RECORDS = 50


# -- a minimal gRPC-over-h2 client ---------------------------------------------------------


@dataclass
class Call:
    stream_id: int
    messages: int = 0
    ended: bool = False  # trailers or END_STREAM received
    reset: bool = False  # the server reset it
    status: str | None = None
    buffer: bytearray = field(default_factory=bytearray)


class H2Client:
    """gRPC calls over one HTTP/2 connection, driven synchronously."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(STEP_TIMEOUT)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        # Large windows: responses never stall on flow control.
        self.conn.increment_flow_control_window(2**30)
        self.calls: dict[int, Call] = {}
        self.pings_acked = 0
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def start(self, method: str, request: bytes, *, timeout: str | None = None, flush: bool = True) -> Call:
        stream_id = self.conn.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", SERVICE + method),
            (":authority", f"{HOST}"),
            ("content-type", "application/grpc+proto"),
            ("te", "trailers"),
        ]
        if timeout is not None:
            headers.append(("grpc-timeout", timeout))
        self.conn.send_headers(stream_id, headers)
        self.conn.send_data(stream_id, b"\x00" + len(request).to_bytes(4, "big") + request, end_stream=True)
        call = self.calls[stream_id] = Call(stream_id)
        if flush:
            self.flush()
        return call

    def cancel(self, call: Call, *, flush: bool = True) -> None:
        try:
            self.conn.reset_stream(call.stream_id, h2.errors.ErrorCodes.CANCEL)
        except h2.exceptions.StreamClosedError:
            pass  # it ended meanwhile
        self.calls.pop(call.stream_id, None)
        if flush:
            self.flush()

    def pump(self) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("the broker closed the connection")
        for event in self.conn.receive_data(data):
            self._on_event(event)
        self.flush()

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            if event.flow_controlled_length:
                try:
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                except h2.exceptions.StreamClosedError:
                    pass
            call = self.calls.get(event.stream_id)
            if call is not None:
                call.buffer += event.data
                while len(call.buffer) >= 5:
                    size = int.from_bytes(call.buffer[1:5], "big")
                    if len(call.buffer) < 5 + size:
                        break
                    del call.buffer[: 5 + size]
                    call.messages += 1
        elif isinstance(event, h2.events.TrailersReceived | h2.events.ResponseReceived):
            call = self.calls.get(event.stream_id)
            if call is not None:
                for name, value in event.headers:
                    if name in (b"grpc-status", "grpc-status"):
                        call.status = value.decode() if isinstance(value, bytes) else value
        elif isinstance(event, h2.events.StreamEnded):
            call = self.calls.pop(event.stream_id, None)
            if call is not None:
                call.ended = True
        elif isinstance(event, h2.events.StreamReset):
            call = self.calls.pop(event.stream_id, None)
            if call is not None:
                call.reset = True
        elif isinstance(event, h2.events.PingAckReceived):
            self.pings_acked += 1

    def wait(self, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + STEP_TIMEOUT
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError("the broker did not answer in time")
            self.pump()

    def sync(self) -> None:
        """PING and wait for the ACK: the broker has read every frame sent before it."""
        target = self.pings_acked + 1
        self.conn.ping(b"soak-rss")
        self.flush()
        self.wait(lambda: self.pings_acked >= target)

    def unary(self, method: str, request: bytes) -> Call:
        call = self.start(method, request)
        self.wait(lambda: call.ended or call.reset)
        return call

    def close(self) -> None:
        try:
            self.conn.close_connection()
            self.flush()
        except (OSError, h2.exceptions.ProtocolError):
            pass
        self.sock.close()


# -- the kinds of calls ----------------------------------------------------------------------


def fetch(offset: int, *, max_wait_ms: int = 0) -> bytes:
    return bytes(
        pb.ConsumeRequest(topic=TOPIC, partition=0, offset=offset, max_bytes=4096, max_wait_ms=max_wait_ms)
    )


def _windows(count: int) -> Iterable[int]:
    while count > 0:
        yield min(WINDOW, count)
        count -= WINDOW


def _all_answered(client: H2Client, calls: list[Call]) -> None:
    client.wait(lambda: all(c.ended or c.reset for c in calls))
    failed = [c.status for c in calls if c.status not in ("0", None)]
    if failed and failed[0] != "4":  # DEADLINE_EXCEEDED is the deadline kind's answer
        raise RuntimeError(f"calls failed with grpc-status {failed[0]}")


def run_completed(client: H2Client, count: int, end: int) -> None:
    for size in _windows(count):
        calls = [client.start("Fetch", fetch(0), flush=False) for _ in range(size)]
        client.flush()
        _all_answered(client, calls)


def run_expired(client: H2Client, count: int, end: int) -> None:
    for size in _windows(count):
        calls = [client.start("Fetch", fetch(end, max_wait_ms=20), flush=False) for _ in range(size)]
        client.flush()
        _all_answered(client, calls)


def run_deadline(client: H2Client, count: int, end: int) -> None:
    for size in _windows(count):
        calls = [
            client.start("Fetch", fetch(end, max_wait_ms=30_000), timeout="20m", flush=False)
            for _ in range(size)
        ]
        client.flush()
        _all_answered(client, calls)


def run_cancelled(client: H2Client, count: int, end: int) -> None:
    for size in _windows(count):
        calls = [client.start("Fetch", fetch(end, max_wait_ms=30_000), flush=False) for _ in range(size)]
        client.flush()
        # A call started after them and answered means the broker has taken them in (the
        # handlers start in order): they are long-polling in Trio when the resets arrive.
        probe = client.unary("Fetch", fetch(0))
        assert probe.ended
        for call in calls:
            client.cancel(call, flush=False)
        client.flush()
    client.sync()


def run_reset(client: H2Client, count: int, end: int) -> None:
    for size in _windows(count):
        for _ in range(size):
            call = client.start("Fetch", fetch(end, max_wait_ms=30_000), flush=False)
            client.cancel(call, flush=False)
        client.flush()
        client.sync()


def _first_message_of_each(calls: list[Call]) -> Callable[[], bool]:
    return lambda: all(c.messages >= 1 or c.reset or c.ended for c in calls)


def run_stream(client: H2Client, count: int, end: int) -> None:
    request = bytes(pb.ConsumeRequest(topic=TOPIC, partition=0, offset=0, max_bytes=512, follow=True))
    for size in _windows(count):
        calls = [client.start("Consume", request, flush=False) for _ in range(size)]
        client.flush()
        client.wait(_first_message_of_each(calls))
        for call in calls:
            client.cancel(call, flush=False)
        client.flush()
    client.sync()


RUNNERS: dict[str, Callable[[H2Client, int, int], None]] = {
    "completed": run_completed,
    "expired": run_expired,
    "cancelled": run_cancelled,
    "deadline": run_deadline,
    "reset": run_reset,
    "stream": run_stream,
}


# -- the broker process ----------------------------------------------------------------------


class Broker:
    def __init__(self, data_dir: Path, extra_args: list[str]) -> None:
        command = [sys.executable, "-c", "from sentinel.cli.main import main; main()", "run"]
        command += ["--port", "0", "--metrics-port", "-1", "--data", str(data_dir), *extra_args]
        self.log: list[str] = []
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)
            match = LISTENING.search(line)
            if match:
                self.port = int(match.group(1))
                break
        else:
            raise RuntimeError(f"the broker exited before listening:\n{''.join(self.log)}")
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)

    def rss_bytes(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        assert match is not None
        return int(match.group(1)) * 1024

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def settle(client: H2Client) -> None:
    """Let the broker finish what the last calls left (a PING round trip and a short pause),
    so RSS is read with nothing in flight."""
    client.sync()
    time.sleep(0.2)
    client.sync()


def prepare(port: int) -> int:
    """Produce a few records to the soak topic; returns the end offset."""
    client = H2Client(port)
    try:
        batch = build_batch([(b"k", b"v" * 100, (), int(time.time() * 1000)) for _ in range(RECORDS)])
        produced = client.unary(
            "Produce", bytes(pb.ProduceRequest(topic=TOPIC, partition=0, record_batches=batch))
        )
        if produced.status != "0":
            raise RuntimeError(f"produce failed with grpc-status {produced.status}")
    finally:
        client.close()
    return RECORDS


@dataclass
class Soak:
    calls_per_round: int
    # kind -> RSS in bytes before its first round, then after each round
    kinds: dict[str, list[int]] = field(default_factory=dict)
    # broker ("all", or the kind it ran alone) -> RSS in bytes after it was idle, at the end
    idle_rss: dict[str, int] = field(default_factory=dict)


def soak_one_broker(kinds: list[str], rounds: int, extra_args: list[str], idle: float, result: Soak) -> None:
    calls = result.calls_per_round
    with tempfile.TemporaryDirectory(prefix="soak-rss-") as tmp:
        broker = Broker(Path(tmp) / "data", extra_args)
        try:
            end = prepare(broker.port)
            for kind in kinds:
                client = H2Client(broker.port)
                try:
                    settle(client)
                    samples = result.kinds[kind] = [broker.rss_bytes()]
                    for _ in range(rounds):
                        RUNNERS[kind](client, calls, end)
                        settle(client)
                        samples.append(broker.rss_bytes())
                        report_round(kind, samples, calls)
                finally:
                    client.close()
            if idle > 0:
                time.sleep(idle)
                result.idle_rss[kinds[0] if len(kinds) == 1 else "all"] = broker.rss_bytes()
        finally:
            code = broker.stop()
            if code != 0:
                print(f"broker exited with {code}:\n{''.join(broker.log[-20:])}", file=sys.stderr)


def soak(kinds: list[str], rounds: int, calls: int, extra_args: list[str], idle: float, shared: bool) -> Soak:
    result = Soak(calls_per_round=calls)
    if shared:
        soak_one_broker(kinds, rounds, extra_args, idle, result)
    else:
        for kind in kinds:
            soak_one_broker([kind], rounds, extra_args, idle, result)
    return result


def report_round(kind: str, samples: list[int], calls: int) -> None:
    grown = samples[-1] - samples[-2]
    print(
        f"{kind:>9} round {len(samples) - 1}: rss {samples[-1] / 2**20:7.1f} MiB "
        f"({grown / 1024:+8.0f} KiB, {grown / calls:+7.0f} B/call)",
        file=sys.stderr,
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per kind (default 5)")
    parser.add_argument("--calls", type=int, default=2000, help="calls per round (default 2000)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    parser.add_argument(
        "--idle", type=float, default=0.0, help="seconds each broker idles at the end, then RSS is read"
    )
    parser.add_argument(
        "--shared-broker",
        action="store_true",
        help="one broker for every kind, in turn (default: a fresh broker per kind)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON on stdout")
    parser.add_argument("broker_args", nargs="*", help="extra `sentinel run` arguments (after --)")
    args = parser.parse_args()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in RUNNERS]
    if unknown or args.rounds < 1 or args.calls < 1:
        parser.error(f"unknown kind {unknown[0]}" if unknown else "--rounds and --calls must be positive")
    result = soak(kinds, args.rounds, args.calls, args.broker_args, args.idle, args.shared_broker)
    if args.json:
        print(json.dumps(dataclasses.asdict(result), indent=2))
    else:
        print(f"RSS in MiB after each round of {args.calls} calls (round 0: before the first)")
        for kind, samples in result.kinds.items():
            figures = " ".join(f"{s / 2**20:7.1f}" for s in samples)
            growth = (samples[-1] - samples[1]) / (args.calls * max(1, len(samples) - 2))
            print(f"{kind:>9}: {figures}   after round 1: {growth:+.0f} B/call")
        for broker, rss in result.idle_rss.items():
            print(f"{broker:>9}: after {args.idle:.0f} s idle: {rss / 2**20:.1f} MiB")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
