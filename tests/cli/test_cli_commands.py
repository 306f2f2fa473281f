"""The client commands in-process (typer's CliRunner) against the in-memory fake broker:
argument validation, output formats, and one readable error line for every expected failure."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator

import pytest
from cli_support import ThreadedFake, error_line, invoke
from client_fakes import FakeSentinel
from grpclib.const import Status
from typer.testing import CliRunner

from sentinel.cli import output
from sentinel.client import Producer
from sentinel.client.producer import DEFAULT_MAX_REQUEST_BYTES
from sentinel.generated.sentinel import v1 as pb
from sentinel.node import DEFAULT_MAX_MESSAGE_BYTES


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["consume", "-t", "t", "--offset", "-1"], f"--offset must be between 0 and {2**63 - 1}, got -1"),
        (["consume", "-t", "t", "--offset", "3", "--from-beginning"], "mutually exclusive"),
        (["consume", "-t", "t", "--partition", "-2"], "--partition must be between 0 and 2147483647, got -2"),
        # Larger than the wire's int64 / int32: an offset of 2**64 + 1 used to be read from 1.
        (
            ["consume", "-t", "t", "--offset", "999999999999999999999"],
            f"--offset must be between 0 and {2**63 - 1}, got 999999999999999999999",
        ),
        (["consume", "-t", "t", "--offset", str(2**64 + 1)], f"--offset must be between 0 and {2**63 - 1}"),
        (
            ["consume", "-t", "t", "--partition", str(2**31)],
            f"--partition must be between 0 and 2147483647, got {2**31}",
        ),
        # Was the client's "group_id must be a non-empty string or None" (after a connection).
        (["consume", "-t", "t", "--group", ""], "--group must name a consumer group, got ''"),
        (["consume", "-t", "t", "--group", "  "], "--group must name a consumer group, got '  '"),
        (["consume", "-t", "t", "--max-messages", "0"], "--max-messages must be >= 1"),
        (["consume", "-t", "t", "--group", "g", "--partition", "0"], "--group assigns partitions"),
        (["consume", "-t", "t", "--group", "g", "--offset", "0"], "--group assigns partitions"),
        (["produce", "-t", "t", "-m", "x", "--acks", "2"], "--acks must be all, 1 or 0"),
        (["produce", "-t", "t", "-m", "x", "--partition", "-2"], "--partition must be >= 0, or -1"),
        (["produce", "-t", "t", "-m", "x", "--count", "-1"], "--count must be >= 0"),
        (["topics", "create", "t", "--partitions", "-1"], "--partitions must be >= 1, got -1"),
        (["topics", "create", "t", "--partitions", "0"], "--partitions must be >= 1, got 0"),
        (["topics", "create", "t", "--replication-factor", "0"], "--replication-factor must be >= 1"),
        (["topics", "create", "t", "--retention-ms", "-5"], "--retention-ms must be between 0 and"),
        # Larger than the wire's int32 / int64: protobuf used to wrap them into other values.
        (["topics", "create", "t", "--partitions", str(2**31)], "--partitions must be at most 2147483647"),
        (["topics", "create", "t", "-r", str(2**31)], "--replication-factor must be at most 2147483647"),
        (
            ["topics", "create", "t", "--retention-ms", str(2**63)],
            f"--retention-ms must be between 0 and {2**63 - 1}",
        ),
    ],
)
def test_bad_option_combinations_are_usage_errors(args: list[str], message: str, closed_port: int) -> None:
    # Checked before any connection: a dead broker address must not be what is reported.
    result = invoke(*args, "--broker", f"127.0.0.1:{closed_port}")
    assert result.exit_code == 2
    assert message in error_line(result)
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args",
    [
        ["produce", "-t", "t", "-m", "x"],
        ["consume", "-t", "t"],
        ["topics", "list"],
        ["topics", "describe", "t"],
        ["topics", "create", "t"],
        ["groups", "list"],
        ["groups", "describe", "g"],
    ],
)
def test_unreachable_broker_fails_fast_with_one_line(args: list[str], closed_port: int) -> None:
    started = time.monotonic()
    result = invoke(*args, "--broker", f"127.0.0.1:{closed_port}")
    assert result.exit_code == 1
    assert f"cannot reach broker 127.0.0.1:{closed_port}" in error_line(result)
    assert time.monotonic() - started < 2.0  # no retry loop before the first answer


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel's backlog) but never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


def test_silent_broker_times_out_with_one_line(silent_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(output, "CONNECT_TIMEOUT_MS", 300)
    for args in (["produce", "-t", "t", "-m", "x"], ["consume", "-t", "t"], ["groups", "list"]):
        started = time.monotonic()
        result = invoke(*args, "--broker", f"127.0.0.1:{silent_port}")
        assert result.exit_code == 1
        assert error_line(result) == f"error: broker 127.0.0.1:{silent_port} did not answer within 0.3 s"
        assert time.monotonic() - started < 3.0


def test_broker_address_from_environment(fake: ThreadedFake, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTINEL_BROKER", fake.address)
    result = invoke("produce", "-t", "env", "-m", "x")
    assert result.exit_code == 0, result.output
    assert fake.call(lambda f: f.topics["env"][0].records()) == [(0, None, b"x")]


def test_produce_message_count_prints_a_summary(fake: ThreadedFake) -> None:
    result = invoke("produce", "-b", fake.address, "-t", "events", "-m", "hello", "-n", "10")
    assert result.exit_code == 0, result.output
    assert result.stdout == "produced 10 records to events\n  partition 0: offsets 0..9\n"
    assert result.stderr == ""
    records = fake.call(lambda f: f.topics["events"][0].records())
    assert records == [(i, None, b"hello") for i in range(10)]
    # Without --count, --message is sent once.
    result = invoke("produce", "-b", fake.address, "-t", "events", "-m", "once")
    assert result.stdout == "produced 1 record to events\n  partition 0: offset 10\n"


def test_produce_stdin_lines_as_json_acknowledgements(fake: ThreadedFake) -> None:
    fake.call(lambda f: f.create("events", 1))
    stdin = "alpha\nbeta\r\n\ngamma"  # CRLF stripped, the empty line is a record, no final newline
    result = invoke("produce", "-b", fake.address, "-t", "events", "-k", "k1", "-f", "json", input=stdin)
    assert result.exit_code == 0, result.output
    acks = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(a["partition"], a["offset"], a["key"], a["value"]) for a in acks] == [
        (0, 0, "k1", "alpha"),
        (0, 1, "k1", "beta"),
        (0, 2, "k1", ""),
        (0, 3, "k1", "gamma"),
    ]
    assert all(a["topic"] == "events" and isinstance(a["timestamp"], int) for a in acks)
    # The same fields as ``consume --format json`` prints, headers included.
    assert list(acks[0]) == ["topic", "partition", "offset", "timestamp", "key", "value", "headers"]
    assert acks[0]["headers"] == []
    stored = fake.call(lambda f: f.topics["events"][0].records())
    assert stored == [(0, b"k1", b"alpha"), (1, b"k1", b"beta"), (2, b"k1", b""), (3, b"k1", b"gamma")]


def test_produce_headers_are_sent_and_printed_like_consume_prints_them(fake: ThreadedFake) -> None:
    fake.call(lambda f: f.create("events", 1))
    result = invoke(
        "produce",
        "-b",
        fake.address,
        "-t",
        "events",
        "-m",
        "v",
        "-H",
        "trace=abc",
        "-H",
        "empty=",
        "-f",
        "json",
    )
    assert result.exit_code == 0, result.output
    produced = json.loads(result.stdout)
    assert produced["headers"] == [["trace", "abc"], ["empty", ""]]
    result = invoke("consume", "-b", fake.address, "-t", "events", "--from-beginning", "-f", "json")
    consumed = json.loads(result.stdout)
    assert {k: consumed[k] for k in ("key", "value", "headers")} == {
        k: produced[k] for k in ("key", "value", "headers")
    }
    result = invoke("produce", "-b", fake.address, "-t", "events", "-m", "v", "-H", "novalue")
    assert result.exit_code != 0 and "--header must be NAME=VALUE, got 'novalue'" in result.output


def test_produce_count_limits_stdin_lines(fake: ThreadedFake) -> None:
    result = invoke("produce", "-b", fake.address, "-t", "events", "-n", "2", input="a\nb\nc\nd\n")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "produced 2 records to events"
    assert fake.call(lambda f: f.topics["events"][0].records()) == [(0, None, b"a"), (1, None, b"b")]


def test_produce_to_an_explicit_partition_and_with_acks_0(fake: ThreadedFake) -> None:
    fake.call(lambda f: f.create("multi", 3))
    result = invoke("produce", "-b", fake.address, "-t", "multi", "-p", "2", "-m", "x", "-n", "3")
    assert result.exit_code == 0, result.output
    assert result.stdout == "produced 3 records to multi\n  partition 2: offsets 0..2\n"
    result = invoke(
        "produce", "-b", fake.address, "-t", "multi", "-p", "1", "-m", "y", "--acks", "none", "-f", "json"
    )
    assert result.exit_code == 0, result.output
    ack = json.loads(result.stdout)
    assert (ack["partition"], ack["offset"], ack["value"]) == (1, None, "y")
    result = invoke(
        "produce", "-b", fake.address, "-t", "multi", "-p", "1", "-m", "z", "-n", "2", "--acks", "0"
    )
    assert result.stdout == (
        "sent 2 records to multi (acks=0: the broker reports no offsets)\n  partition 1: 2 records\n"
    )
    stored = fake.call(lambda f: [p.records() for p in f.topics["multi"]])
    assert stored == [
        [],
        [(0, None, b"y"), (1, None, b"z"), (2, None, b"z")],
        [(i, None, b"x") for i in range(3)],
    ]
    assert fake.call(lambda f: [r.acks for r in f.produce_requests]) == [
        pb.Acks.ALL,
        pb.Acks.NONE,
        pb.Acks.NONE,
    ]


def test_produce_failure_is_one_error_line(fake: ThreadedFake) -> None:
    fake.call(lambda f: f.create("events", 1))
    fake.call(lambda f: f.fail_next("produce", Status.INVALID_ARGUMENT, "record batch too large"))
    result = invoke("produce", "-b", fake.address, "-t", "events", "-m", "x")
    assert result.exit_code == 1
    assert error_line(result) == "error: record batch too large"
    assert result.stdout == ""  # nothing was acknowledged: no summary
    result = invoke("produce", "-b", fake.address, "-t", "events", "-p", "99", "-m", "x")
    assert result.exit_code == 1
    assert "partition 99 does not exist in topic 'events'" in error_line(result)
    assert fake.call(lambda f: f.topics["events"][0].records()) == []


def test_produce_rides_out_an_outage_and_gives_up_at_its_delivery_timeout(fake: ThreadedFake) -> None:
    fake.call(lambda f: f.create("events", 1))
    # Seven refusals in a row, as during a leader failover: more than five retries.
    fake.call(lambda f: f.fail_next("produce", Status.UNAVAILABLE, "no leader yet", times=7))
    result = invoke("produce", "-b", fake.address, "-t", "events", "-m", "x")
    assert result.exit_code == 0, result.output
    assert fake.call(lambda f: f.topics["events"][0].records()) == [(0, None, b"x")]
    fake.call(lambda f: f.fail_next("produce", Status.UNAVAILABLE, "no leader yet", times=100))
    result = invoke("produce", "-b", fake.address, "-t", "events", "-m", "y", "--delivery-timeout-ms", "600")
    assert result.exit_code == 1
    assert error_line(result) == "error: no leader yet"
    fake.call(lambda f: f.failures["produce"].clear())
    result = invoke("produce", "-b", fake.address, "-t", "events", "-m", "z", "--delivery-timeout-ms", "99")
    assert result.exit_code == 2
    assert error_line(result) == "error: --delivery-timeout-ms must be >= 100, got 99"
    assert fake.call(lambda f: f.topics["events"][0].records()) == [(0, None, b"x")]


def test_produce_size_limit_is_the_brokers_and_checked_before_the_topic_is_created(
    fake: ThreadedFake,
) -> None:
    # The default limit is the broker's default --max-message-bytes: a 2 MB record goes.
    assert DEFAULT_MAX_REQUEST_BYTES == DEFAULT_MAX_MESSAGE_BYTES == 16 * 1024 * 1024
    big = "x" * 2_000_000
    result = invoke("produce", "-b", fake.address, "-t", "big", "-m", big)
    assert (result.exit_code, result.stderr) == (0, "")
    assert fake.call(lambda f: [len(v or b"") for _, _, v in f.topics["big"][0].records()]) == [2_000_000]
    # Over the limit (here lowered): refused before the topic is looked up, so not created;
    # from stdin as from --message.
    for args, stdin in (
        (["-m", big], None),
        ([], big + "\nsmall\n"),
    ):
        result = invoke(
            "produce", "-b", fake.address, "-t", "fresh", "--max-request-bytes", "1048576", *args, input=stdin
        )
        assert result.exit_code == 1
        assert error_line(result) == (
            "error: record of ~2000016 bytes is larger than one request can carry: "
            "max_request_bytes is 1048576 (at most 1047491 per record)"
        )
        assert "fresh" not in fake.call(lambda f: list(f.topics)), args
    result = invoke("produce", "-b", fake.address, "-t", "t", "-m", "x", "--max-request-bytes", "100")
    assert result.exit_code == 2
    assert error_line(result) == "error: --max-request-bytes must be >= 4096, got 100"


def _produce(address: str, topic: str, records: list[tuple[int, bytes | None, bytes | None, tuple]]) -> None:
    async def main() -> None:
        async with Producer(address) as producer:
            for partition, key, value, headers in records:
                await producer.send_and_wait(topic, value, key=key, partition=partition, headers=headers)

    asyncio.run(main())


def test_consume_text_and_json(fake: ThreadedFake) -> None:
    fake.call(lambda f: f.create("events", 1))
    _produce(
        fake.address,
        "events",
        [
            (0, None, b"first", ()),
            (0, b"k", b"\xffbinary", (("trace", b"abc"), ("raw", b"\x00\xff"), ("none", None))),
            (0, None, None, ()),
            (0, None, "dernière".encode(), ()),
        ],
    )
    result = invoke("consume", "-b", fake.address, "-t", "events", "--from-beginning")
    assert result.exit_code == 0, result.output
    assert result.stdout == "first\n\ufffdbinary\n\ndernière\n"
    assert result.stderr == ""
    result = invoke("consume", "-b", fake.address, "-t", "events", "--from-beginning", "-f", "json")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["offset"] for r in records] == [0, 1, 2, 3]
    assert list(records[0]) == ["topic", "partition", "offset", "timestamp", "key", "value", "headers"]
    assert records[0]["value"] == "first" and records[0]["key"] is None and records[0]["headers"] == []
    assert records[1]["key"] == "k"
    assert records[1]["value"] == {"base64": "/2JpbmFyeQ=="}
    assert records[1]["headers"] == [["trace", "abc"], ["raw", {"base64": "AP8="}], ["none", None]]
    assert records[2]["value"] is None
    assert records[3]["value"] == "dernière"


def test_consume_positions_and_limits(fake: ThreadedFake) -> None:
    fake.call(lambda f: f.create("multi", 3))
    _produce(fake.address, "multi", [(p, None, f"p{p}-{i}".encode(), ()) for p in range(3) for i in range(4)])
    base = ("consume", "-b", fake.address, "-t", "multi")
    # Every partition by default, each in order.
    result = invoke(*base, "--from-beginning")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert sorted(lines) == sorted(f"p{p}-{i}" for p in range(3) for i in range(4))
    for p in range(3):
        assert [v for v in lines if v.startswith(f"p{p}-")] == [f"p{p}-{i}" for i in range(4)]
    result = invoke(*base, "--partition", "1", "--offset", "2")
    assert result.stdout == "p1-2\np1-3\n"
    result = invoke(*base, "--offset", "3")  # every partition from offset 3
    assert sorted(result.stdout.splitlines()) == ["p0-3", "p1-3", "p2-3"]
    result = invoke(*base, "--partition", "2", "--from-beginning", "--max-messages", "2")
    assert result.stdout == "p2-0\np2-1\n"
    # Without --from-beginning: only new records, so a caught-up run prints nothing and ends.
    started = time.monotonic()
    result = invoke(*base)
    assert (result.exit_code, result.stdout) == (0, "")
    assert time.monotonic() - started < 5
    result = invoke(*base, "--partition", "0", "--offset", "4")  # the end itself is a valid start
    assert (result.exit_code, result.stdout) == (0, "")


def test_consume_errors(fake: ThreadedFake) -> None:
    fake.call(lambda f: f.create("events", 1))
    result = invoke("consume", "-b", fake.address, "-t", "nope")
    assert result.exit_code == 1
    assert error_line(result) == "error: topic 'nope' does not exist"
    result = invoke("consume", "-b", fake.address, "-t", "events", "-p", "5")
    assert result.exit_code == 1
    assert error_line(result) == (
        "error: partition 5 does not exist in topic 'events': valid partitions are 0..0"
    )
    result = invoke("consume", "-b", fake.address, "-t", "events", "-p", "0", "-o", "7")
    assert result.exit_code == 1
    assert "valid offsets are 0 to 0 (0 is the next offset)" in error_line(result)  # never silently reset


def test_consume_as_group_member_commits_what_it_printed(fake: ThreadedFake) -> None:
    fake.call(lambda f: f.create("events", 2))
    _produce(fake.address, "events", [(p, None, f"v{p}{i}".encode(), ()) for p in range(2) for i in range(3)])
    base = ("consume", "-b", fake.address, "-t", "events", "--group", "billing")
    result = invoke(*base, "--from-beginning", "--max-messages", "4")
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 4
    committed = fake.call(lambda f: dict(f.groups["billing"].offsets))
    assert sum(committed.values()) == 4
    # The next member of the group resumes after what was committed: the rest, no repeats.
    result = invoke(*base, "--from-beginning")
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 2
    assert fake.call(lambda f: dict(f.groups["billing"].offsets)) == {("events", 0): 3, ("events", 1): 3}

    result = invoke("groups", "list", "-b", fake.address)
    assert result.stdout.splitlines() == ["GROUP    STATE  MEMBERS  LAG", "billing  Empty  0        0"]
    result = invoke("groups", "describe", "billing", "-b", fake.address, "-f", "json")
    document = json.loads(result.stdout)
    assert document["group_id"] == "billing"
    assert [(o["partition"], o["committed_offset"], o["lag"]) for o in document["offsets"]] == [
        (0, 3, 0),
        (1, 3, 0),
    ]
    result = invoke("groups", "describe", "billing", "-b", fake.address)
    head, *rest = result.stdout.splitlines()
    assert head.startswith("group billing: Empty, generation ") and head.endswith(", 0 members")
    assert [line.split() for line in rest[-2:]] == [
        ["events", "0", "3", "3", "0"],
        ["events", "1", "3", "3", "0"],
    ]
    result = invoke("groups", "list", "-b", fake.address, "-f", "json")
    assert json.loads(result.stdout) == [{"group_id": "billing", "state": "Empty", "members": 0, "lag": 0}]
    result = invoke("groups", "describe", "nope", "-b", fake.address)
    assert result.exit_code == 1
    assert error_line(result) == "error: group 'nope' does not exist"


def test_a_lag_nobody_could_report_is_shown_unknown_not_guessed(fake: ThreadedFake) -> None:
    # The coordinator lacks a replica of events[1] and its leader does not answer: "?" in
    # the table, null in JSON, and the group's total counts only the lag that is known.
    fake.call(lambda f: f.create("events", 2))
    _produce(fake.address, "events", [(p, None, b"v", ()) for p in range(2) for _ in range(3)])

    def setup(f: FakeSentinel) -> None:
        f.groups["billing"].offsets.update({("events", 0): 1, ("events", 1): 1})
        f.unhosted.add(("events", 1))
        f.fail_next("list_offsets", Status.UNAVAILABLE, "no leader", times=3)

    fake.call(setup)
    result = invoke("groups", "describe", "billing", "-b", fake.address)
    assert [line.split() for line in result.stdout.splitlines()[-2:]] == [
        ["events", "0", "1", "3", "2"],
        ["events", "1", "1", "?", "?"],
    ]
    result = invoke("groups", "describe", "billing", "-b", fake.address, "-f", "json")
    offsets = json.loads(result.stdout)["offsets"]
    assert [(o["partition"], o["high_watermark"], o["lag"]) for o in offsets] == [(0, 3, 2), (1, None, None)]
    result = invoke("groups", "list", "-b", fake.address, "-f", "json")
    assert json.loads(result.stdout) == [{"group_id": "billing", "state": "Empty", "members": 0, "lag": 2}]


def test_topics_commands(fake: ThreadedFake) -> None:
    b = ("-b", fake.address)
    result = invoke("topics", "list", *b)
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "no topics\n")
    assert json.loads(invoke("topics", "list", *b, "-f", "json").stdout) == []
    result = invoke("topics", "create", "orders", "--partitions", "3", *b)
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "created topic orders: 3 partitions, replication factor 1, "
        "retention forever / unlimited per partition\n"
    )
    result = invoke("topics", "create", "orders", *b)
    assert result.exit_code == 1
    assert error_line(result) == "error: topic 'orders' already exists"
    invoke("produce", *b, "-t", "orders", "-p", "1", "-m", "x", "-n", "5")
    result = invoke("topics", "list", *b)
    assert result.stdout.splitlines() == [
        "TOPIC   PARTITIONS  REPLICATION  RECORDS  RETENTION",
        "orders  3           1            5        forever / unlimited",
    ]
    result = invoke("topics", "describe", "orders", *b)
    assert result.stdout.splitlines()[2:] == [
        "0          1       1         1        0          0               0",
        "1          1       1         1        0          5               5",
        "2          1       1         1        0          0               0",
    ]
    document = json.loads(invoke("topics", "describe", "orders", *b, "-f", "json").stdout)
    assert [p["high_watermark"] for p in document["partitions"]] == [0, 5, 0]
    assert json.loads(invoke("topics", "list", *b, "-f", "json").stdout)[0]["name"] == "orders"
    result = invoke("topics", "delete", "orders", *b)
    assert (result.exit_code, result.stdout) == (0, "deleted topic orders\n")
    result = invoke("topics", "describe", "orders", *b)
    assert result.exit_code == 1
    assert error_line(result) == "error: topic 'orders' does not exist"
    result = invoke("topics", "delete", "orders", *b)
    assert result.exit_code == 1


def test_busy_metrics_port_names_the_port(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Was "error: [Errno 98] Address already in use": no port, no option.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = invoke("run", "--port", "0", "--data", str(tmp_path / "d"), "--metrics-port", str(port))
    assert result.exit_code == 1
    assert error_line(result) == f"error: metrics port 127.0.0.1:{port} is in use (--metrics-port)"


def test_every_option_has_help_and_names_fit_80_columns() -> None:
    import typer.core
    import typer.main

    from sentinel.cli.main import app

    root = typer.main.get_command(app)

    def commands(cmd: typer.core.TyperCommand, path: list[str]):  # type: ignore[no-untyped-def]
        if isinstance(cmd, typer.core.TyperGroup):
            for name, sub in cmd.commands.items():
                yield from commands(sub, [*path, name])
        else:
            yield path, cmd

    for path, cmd in commands(root, []):
        result = CliRunner(env={"COLUMNS": "80"}).invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
        assert result.exit_code == 0, (path, result.output)
        text = " ".join(result.output.split())
        for param in cmd.params:
            if not isinstance(param, typer.core.TyperOption) or param.hidden:
                continue
            assert param.help, f"{' '.join(path)} {param.opts[0]} has no help"
            for name in [*param.opts, *param.secondary_opts]:
                assert name in text, (path, name, result.output)
            envvar = param.envvar
            if isinstance(envvar, str):
                assert envvar in text, (path, envvar, result.output)


def test_a_dead_broker_first_in_the_list_costs_nothing_when_another_answers(
    fake: ThreadedFake, closed_port: int
) -> None:
    """Every command takes a bootstrap list of which any live broker is enough (Kafka's
    bootstrap.servers): the admin calls and the consume preflight included."""
    brokers = f"127.0.0.1:{closed_port},{fake.address}"
    for args in (
        ["topics", "create", "listed", "--partitions", "1"],
        ["topics", "list"],
        ["topics", "describe", "listed"],
        ["produce", "-t", "listed", "-m", "x", "-n", "3"],
        ["consume", "-t", "listed", "--from-beginning"],
        ["groups", "list"],
        ["topics", "delete", "listed"],
    ):
        result = invoke(*args, "--broker", brokers)
        assert result.exit_code == 0, (args, result.output)
        if args[0] == "consume":
            assert result.stdout == "x\nx\nx\n"
