"""End to end: the ``sentinel`` client commands as real processes against a real broker.

The README quick start (produce 10 records, consume them back in order), JSON output that
round-trips between produce and consume, topic and group administration, Ctrl-C and a
closed stdout, the one-line errors, and the broker's metrics counting what the CLI did.
Independent commands run concurrently: each CLI process spends most of its time starting.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import signal
import socket
import subprocess
import threading
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from broker_process import BrokerProcess, sentinel_command, subprocess_env

TIMEOUT_S = 30


def start(*args: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.Popen[str]:
    return subprocess.Popen(
        sentinel_command(*args),
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )


def cli(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        sentinel_command(*args),
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=TIMEOUT_S,
    )


def cli_all(
    *commands: Sequence[str], inputs: Mapping[int, str] | None = None
) -> list[subprocess.CompletedProcess[str]]:
    """Run independent commands at the same time (``inputs``: stdin by command index); their
    results in order."""
    inputs = inputs or {}
    processes = [
        start(*command, stdin=subprocess.PIPE if i in inputs else subprocess.DEVNULL)
        for i, command in enumerate(commands)
    ]
    results = []
    for i, (command, process) in enumerate(zip(commands, processes, strict=True)):
        out, err = process.communicate(inputs.get(i), timeout=TIMEOUT_S)
        results.append(subprocess.CompletedProcess(list(command), process.returncode, out, err))
    return results


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}: exit {result.returncode}: {result.stderr}"
    assert "Traceback" not in result.stderr
    return result.stdout


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, f"{result.args} succeeded: {result.stdout}"
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{result.args}: {result.stderr!r}"
    return lines[0]


def metric(broker: BrokerProcess, name: str, topic: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{broker.metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    pattern = re.compile(rf'^{name}\{{(?=[^}}]*topic="{re.escape(topic)}")[^}}]*\}} (\S+)$', re.MULTILINE)
    return sum(float(value) for value in pattern.findall(text))


@pytest.mark.slow
def test_quick_start_json_round_trip_pipes_and_metrics(broker: BrokerProcess) -> None:
    b = ("--broker", broker.address)
    # README quick start: 10 records in, the same 10 out, in order.
    assert ok(cli("produce", "--topic", "events", "--message", "hello", "--count", "10", *b)) == (
        "produced 10 records to events\n  partition 0: offsets 0..9\n"
    )
    lines = [f"line {i}" for i in range(5)]
    acks = [
        json.loads(line)
        for line in ok(
            cli("produce", "--topic", "events", "--format", "json", *b, input="\n".join(lines) + "\n")
        ).splitlines()
    ]
    assert [(a["partition"], a["offset"], a["value"]) for a in acks] == [
        (0, 10 + i, v) for i, v in enumerate(lines)
    ]

    text, as_json = cli_all(
        ("consume", "--topic", "events", "--from-beginning", *b),
        ("consume", "--topic", "events", "--from-beginning", "--format", "json", *b),
    )
    assert ok(text).splitlines() == ["hello"] * 10 + lines
    assert text.stderr == ""
    records = [json.loads(line) for line in ok(as_json).splitlines()]
    assert [r["offset"] for r in records] == list(range(15))
    # What produce reported as acknowledged is exactly what consume reads back.
    assert records[10:] == acks

    assert metric(broker, "sentinel_messages_produced_total", "events") == 15
    assert metric(broker, "sentinel_messages_consumed_total", "events") == 30  # two full reads
    with urllib.request.urlopen(f"http://127.0.0.1:{broker.metrics_port}/metrics", timeout=10) as response:
        scraped = response.read().decode()
    produce_ok = re.search(r'^sentinel_requests_total\{method="produce",status="OK"\} (\S+)$', scraped, re.M)
    assert produce_ok is not None and float(produce_ok.group(1)) >= 2  # at least one per produce run

    # A closed stdout ends a following consumer quietly (exit 141, like SIGPIPE), and
    # Ctrl-C ends another one quietly with exit 0.
    piped = start("consume", "--topic", "events", "--from-beginning", "--follow", *b)
    interrupted = start("consume", "--topic", "events", "--from-beginning", "--follow", *b)
    for process in (piped, interrupted):
        assert process.stdout is not None
        assert [process.stdout.readline() for _ in range(15)][-1] == "line 4\n"
    assert piped.stdout is not None
    piped.stdout.close()
    interrupted.send_signal(signal.SIGINT)
    ok(cli("produce", "--topic", "events", "--message", "one more", *b))  # written to the closed pipe
    assert piped.wait(TIMEOUT_S) == 141
    assert piped.stderr is not None and piped.stderr.read() == ""
    _, err = interrupted.communicate(timeout=TIMEOUT_S)
    assert (interrupted.returncode, err) == (0, "")

    # `produce --format json | head -1`: a closed stdout stops the producer quietly too.
    producer = start(
        "produce", "--topic", "piped", "--message", "x", "--count", "100000", "--format", "json", *b
    )
    assert producer.stdout is not None and producer.stderr is not None
    assert json.loads(producer.stdout.readline())["offset"] == 0
    producer.stdout.close()
    assert producer.wait(TIMEOUT_S) == 141
    assert producer.stderr.read() == ""

    assert metric(broker, "sentinel_messages_produced_total", "events") == 16


@pytest.mark.slow
def test_topics_and_groups(broker: BrokerProcess) -> None:
    b = ("--broker", broker.address)
    assert ok(cli("topics", "create", "orders", "--partitions", "3", "--retention-ms", "3600000", *b)) == (
        "created topic orders: 3 partitions, replication factor 1, retention 1h / unlimited per partition\n"
    )
    produced = ok(cli("produce", "--topic", "orders", "--message", "o", "--count", "6", *b))
    assert produced.startswith("produced 6 records to orders\n")

    listing, described, consumed = cli_all(
        ("topics", "list", *b),
        ("topics", "describe", "orders", "--format", "json", *b),
        ("consume", "--topic", "orders", "--group", "billing", "--from-beginning", *b),
    )
    assert ok(listing).splitlines() == [
        "TOPIC   PARTITIONS  REPLICATION  RECORDS  RETENTION",
        "orders  3           1            6        1h / unlimited",
    ]
    document = json.loads(ok(described))
    assert document["retention_ms"] == 3_600_000
    assert [p["partition"] for p in document["partitions"]] == [0, 1, 2]
    assert all(p["leader"] == 1 and p["replicas"] == [1] for p in document["partitions"])
    assert sum(p["high_watermark"] - p["log_start_offset"] for p in document["partitions"]) == 6
    assert ok(consumed).splitlines() == ["o"] * 6

    # A following member shows up in `groups describe`; Ctrl-C commits and leaves quietly.
    follower = start("consume", "--topic", "orders", "--group", "live", "--from-beginning", "--follow", *b)
    assert follower.stdout is not None
    assert [follower.stdout.readline() for _ in range(6)] == ["o\n"] * 6
    groups, live, billing = cli_all(
        ("groups", "list", *b),
        ("groups", "describe", "live", "--format", "json", *b),
        ("groups", "describe", "billing", *b),
    )
    assert [row.split()[0] for row in ok(groups).splitlines()] == ["GROUP", "billing", "live"]
    live_doc = json.loads(ok(live))
    assert len(live_doc["members"]) == 1
    assert sorted(tp["partition"] for tp in live_doc["members"][0]["assignment"]) == [0, 1, 2]
    billing_text = ok(billing).splitlines()
    assert billing_text[0].startswith("group billing: Empty, generation ")
    # TOPIC PARTITION COMMITTED HIGH-WATERMARK LAG: everything committed, no lag.
    rows = [row.split() for row in billing_text if row.startswith("orders")]
    assert [(row[2], row[4]) for row in rows] == [(row[3], "0") for row in rows]
    assert sum(int(row[2]) for row in rows) == 6
    follower.send_signal(signal.SIGINT)
    out, err = follower.communicate(timeout=TIMEOUT_S)
    assert (follower.returncode, out, err) == (0, "", "")
    live_after = json.loads(ok(cli("groups", "describe", "live", "--format", "json", *b)))
    assert live_after["members"] == []
    assert sum(o["committed_offset"] for o in live_after["offsets"]) == 6

    assert ok(cli("topics", "delete", "orders", *b)) == "deleted topic orders\n"
    assert json.loads(ok(cli("topics", "list", "--format", "json", *b))) == []


@pytest.mark.slow
def test_errors_are_one_line(broker: BrokerProcess) -> None:
    b = ("--broker", broker.address)
    # "single" does not exist yet: the producer creates it with the broker's default of one
    # partition, then refuses partition 99.
    unknown, bad_name, bad_partition, too_big, big = cli_all(
        ("consume", "--topic", "nope", *b),
        ("topics", "create", "bad/name", *b),
        ("produce", "--topic", "single", "--partition", "99", "--message", "x", *b),
        ("produce", "--topic", "huge", "--max-request-bytes", "1048576", *b),  # stdin: 2 MB
        ("produce", "--topic", "big", *b),  # the default limit is the broker's: 2 MB goes
        inputs={3: "x" * 2_000_000 + "\n", 4: "y" * 2_000_000 + "\n"},
    )
    assert one_error_line(unknown) == "error: topic 'nope' does not exist"
    assert one_error_line(bad_name).startswith("error: invalid topic name 'bad/name'")
    assert one_error_line(bad_partition) == (
        "error: partition 99 does not exist in topic 'single': valid partitions are 0..0"
    )
    assert "larger than one request can carry: max_request_bytes is 1048576" in one_error_line(too_big)
    for result in (unknown, bad_name, bad_partition, too_big):
        assert result.returncode == 1 and result.stdout == ""
    assert ok(big) == "produced 1 record to big\n  partition 0: offset 0\n"
    assert ok(cli("consume", "--topic", "big", "--from-beginning", *b)) == "y" * 2_000_000 + "\n"
    # Refused before its topic was looked up: "huge" was never auto-created.
    assert sorted(t["name"] for t in json.loads(ok(cli("topics", "list", "--format", "json", *b)))) == [
        "big",
        "single",
    ]

    broker.stop()
    down = cli_all(("topics", "list", *b), ("produce", "--topic", "single", "--message", "x", *b))
    for result in down:
        assert f"cannot reach broker {broker.address}" in one_error_line(result)


@pytest.mark.slow
def test_no_auto_create_topics_governs_every_client_path(tmp_path: Path) -> None:
    broker = BrokerProcess(tmp_path / "data", extra_args=["--no-auto-create-topics"])
    broker.start()
    try:
        b = ("--broker", broker.address)
        for args in (
            ("produce", "--topic", "nope", "--message", "x", *b),
            ("consume", "--topic", "nope", "--from-beginning", *b),
        ):
            result = cli(*args)
            assert result.returncode == 1, result
            assert result.stderr.splitlines() == [result.stderr.strip()]  # one line
            assert result.stderr.startswith("error: ") and "topic 'nope' does not exist" in result.stderr
        assert json.loads(ok(cli("topics", "list", "--format", "json", *b))) == []
        # An explicit creation still works; --partitions 0 is refused before anything is sent.
        zero = cli("topics", "create", "zp", "--partitions", "0", *b)
        assert zero.returncode == 2 and "--partitions must be >= 1, got 0" in zero.stderr
        ok(cli("topics", "create", "made", *b))
        ok(cli("produce", "--topic", "made", "--message", "x", *b))
        assert [t["name"] for t in json.loads(ok(cli("topics", "list", "--format", "json", *b)))] == ["made"]
    finally:
        broker.close()


@pytest.mark.slow
def test_a_broker_killed_under_produce_is_one_error_line(broker: BrokerProcess) -> None:
    # A lost broker is retried until the delivery timeout (a failover takes 1-2 s); 2 s here.
    producer = start(
        "produce",
        "--topic",
        "k",
        "--format",
        "json",
        "--delivery-timeout-ms",
        "2000",
        "--broker",
        broker.address,
        stdin=subprocess.PIPE,
    )
    assert producer.stdin is not None and producer.stdout is not None and producer.stderr is not None
    acknowledged = threading.Event()

    def feed() -> None:  # lines as fast as the producer takes them, until it has exited
        chunk = "record\n" * 1000
        with contextlib.suppress(BrokenPipeError, ValueError, OSError):
            while producer.poll() is None:
                producer.stdin.write(chunk)
                producer.stdin.flush()

    def drain() -> None:  # acknowledgements, so the producer never blocks on stdout
        for _ in producer.stdout:
            acknowledged.set()

    threads = [threading.Thread(target=feed, daemon=True), threading.Thread(target=drain, daemon=True)]
    for thread in threads:
        thread.start()
    assert acknowledged.wait(TIMEOUT_S), "nothing was acknowledged"
    broker.kill()  # SIGKILL: the connection is lost under requests in flight
    assert producer.wait(TIMEOUT_S) == 1
    for thread in threads:
        thread.join(TIMEOUT_S)
    # grpclib's writes to the lost connection used to add asyncio's "socket.send() raised
    # exception." lines before the error.
    lines = producer.stderr.read().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot reach broker {broker.address}: "), lines


@pytest.mark.slow
def test_ctrl_c_ends_a_command_with_error_interrupted(broker: BrokerProcess) -> None:
    typing = start(
        "produce", "--topic", "typed", "--format", "json", "--broker", broker.address, stdin=subprocess.PIPE
    )
    with socket.socket() as silent:  # accepts connections, never answers: the preflight waits
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        silent.settimeout(TIMEOUT_S)
        waiting = start("topics", "list", "--broker", f"127.0.0.1:{silent.getsockname()[1]}")
        connection, _ = silent.accept()  # it is waiting for the answer now
        waiting.send_signal(signal.SIGINT)
        assert waiting.communicate(timeout=TIMEOUT_S) == ("", "error: interrupted\n")
        assert waiting.returncode == 130
        connection.close()
    # Once a line is acknowledged, produce is reading stdin (left open): Ctrl-C stops it.
    assert typing.stdin is not None and typing.stdout is not None
    typing.stdin.write("first\n")
    typing.stdin.flush()
    assert json.loads(typing.stdout.readline())["value"] == "first"
    typing.send_signal(signal.SIGINT)
    assert typing.communicate(timeout=TIMEOUT_S) == ("", "error: interrupted\n")
    assert typing.returncode == 130


class StderrLines:
    """A process's stderr read line by line on a thread, so a test can wait for the next line
    with a bound (a line that never comes fails the test instead of hanging it)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        self._lines: queue.Queue[str] = queue.Queue()
        self._stream = process.stderr
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stream:
            self._lines.put(line.rstrip("\n"))

    def next(self) -> str:
        try:
            return self._lines.get(timeout=TIMEOUT_S)
        except queue.Empty:
            raise AssertionError(f"no line on stderr within {TIMEOUT_S} s") from None

    def rest(self) -> list[str]:
        """Every line still to come (the process has exited)."""
        self._thread.join(TIMEOUT_S)
        lines = []
        while not self._lines.empty():
            lines.append(self._lines.get())
        return lines


@pytest.mark.slow
def test_ctrl_c_of_a_follow_with_a_dead_broker_is_error_interrupted(broker: BrokerProcess) -> None:
    # Was silent for as long as it ran (over 55 s watched), then exit 0 on Ctrl-C.
    b = ("--broker", broker.address)
    ok(cli("produce", "--topic", "f", "--message", "before", *b))
    follower = start("consume", "--topic", "f", "--from-beginning", "--follow", *b)
    assert follower.stdout is not None
    stderr = StderrLines(follower)
    assert follower.stdout.readline() == "before\n"
    broker.kill()
    warning = stderr.next()
    assert warning.startswith(f"warning: cannot reach broker {broker.address}: ") and warning.endswith(
        "; retrying"
    ), warning
    follower.send_signal(signal.SIGINT)
    assert follower.wait(TIMEOUT_S) == 130
    assert stderr.rest() == ["error: interrupted"]  # one warning for the whole outage
    assert follower.stdout.read() == ""


@pytest.mark.slow
def test_a_group_follow_goes_on_across_a_broker_restart(broker: BrokerProcess) -> None:
    b = ("--broker", broker.address)
    ok(cli("produce", "--topic", "r", "--message", "before", *b))
    follower = start("consume", "--topic", "r", "--group", "g", "--from-beginning", "--follow", *b)
    assert follower.stdout is not None
    stderr = StderrLines(follower)
    assert follower.stdout.readline() == "before\n"
    broker.kill()
    assert stderr.next().startswith(f"warning: cannot reach broker {broker.address}: ")
    broker.start()  # same data, same port; the group's members are forgotten
    assert stderr.next() == f"broker {broker.address} answers again"
    ok(cli("produce", "--topic", "r", "--message", "after", *b))
    # Re-joined and read on. "before" comes again if the kill beat its auto-commit (at least
    # once: what was not committed is delivered again).
    while (line := follower.stdout.readline()) != "after\n":
        assert line == "before\n"
    follower.send_signal(signal.SIGINT)
    assert follower.wait(TIMEOUT_S) == 0  # the broker is back: Ctrl-C ends a follow quietly
    assert stderr.rest() == []
    assert follower.stdout.read() == ""
    described = json.loads(ok(cli("groups", "describe", "g", "--format", "json", *b)))
    assert sum(o["committed_offset"] for o in described["offsets"]) == 2  # committed on the way out


@pytest.mark.slow
def test_a_consume_without_follow_ends_on_ctrl_c_and_on_a_dead_broker_with_one_line(
    broker: BrokerProcess,
) -> None:
    b = ("--broker", broker.address)
    ok(cli("produce", "--topic", "big", "--message", "x" * 100, "--count", "50000", *b))
    # Each blocks on its full stdout pipe after the first records: both are mid-way.
    interrupted = start("consume", "--topic", "big", "--from-beginning", *b)
    orphaned = start("consume", "--topic", "big", "--from-beginning", *b)
    for process in (interrupted, orphaned):
        assert process.stdout is not None
        assert process.stdout.readline() == "x" * 100 + "\n"
    # Was "interrupted" without the "error:" of every other command.
    interrupted.send_signal(signal.SIGINT)
    out, err = interrupted.communicate(timeout=TIMEOUT_S)
    assert (interrupted.returncode, err) == (130, "error: interrupted\n")
    assert len(out.splitlines()) < 50000 - 1
    broker.kill()
    out, err = orphaned.communicate(timeout=TIMEOUT_S)  # in bounded time
    assert orphaned.returncode == 1
    assert len(out.splitlines()) < 50000 - 1
    assert err.startswith(f"error: cannot reach broker {broker.address}: ") and err.count("\n") == 1, err
