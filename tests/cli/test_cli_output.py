"""The CLI's shared output rules, progress bar and stdin line reader (no broker needed)."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import threading
from collections.abc import Iterator

import pytest
import typer

from sentinel.cli import output
from sentinel.cli.groups import describe_lines as group_lines
from sentinel.cli.groups import group_json
from sentinel.cli.output import (
    StdoutClosed,
    exit_stdout_closed,
    format_bytes,
    format_ms,
    json_bytes,
    plural,
    table,
    text_value,
    topic_json,
    write_lines,
)
from sentinel.cli.produce import _StdinLines
from sentinel.cli.topics import describe_lines as topic_lines
from sentinel.client import GroupInfo, GroupMemberInfo, PartitionInfo, PartitionLag, TopicInfo, TopicPartition
from sentinel.client.errors import translate_error
from sentinel.errors import Unavailable


def test_json_bytes_is_text_when_utf8_else_tagged_base64() -> None:
    assert json_bytes(None) is None
    assert json_bytes(b"") == ""
    assert json_bytes("héllo ✓".encode()) == "héllo ✓"
    raw = b"\xff\x00\xfe"
    encoded = json_bytes(raw)
    assert isinstance(encoded, dict)
    assert base64.b64decode(encoded["base64"]) == raw
    # A string that merely looks like base64 stays a string: the two forms never collide.
    assert json_bytes(b"aGVsbG8=") == "aGVsbG8="


def test_text_value_replaces_undecodable_bytes() -> None:
    assert text_value(None) == ""
    assert text_value(b"plain") == "plain"
    assert text_value(b"ok\xffok") == "ok\ufffdok"


def test_human_formats() -> None:
    assert format_ms(0) == "forever"
    assert format_ms(604_800_000) == "7d"
    assert format_ms(7_200_000) == "2h"
    assert format_ms(90_000) == "90s"
    assert format_ms(1500) == "1500ms"
    assert format_bytes(0) == "unlimited"
    assert format_bytes(1 << 30) == "1GiB"
    assert format_bytes(1536) == "1.5KiB"
    assert format_bytes(100) == "100B"
    assert plural(1, "record") == "1 record"
    assert plural(0, "record") == "0 records"
    assert plural(2, "partition") == "2 partitions"
    assert table([["A", "LONG HEADER"], ["value", "x"]]) == ["A      LONG HEADER", "value  x"]


def _topic() -> TopicInfo:
    return TopicInfo(
        name="orders",
        partitions=(
            PartitionInfo(0, 1, (1,), (1,), 0, 10),
            PartitionInfo(1, -1, (1, 2), (), 4, 6),
        ),
        replication_factor=2,
        retention_ms=86_400_000,
        retention_bytes=0,
    )


def test_topic_describe_text_and_json() -> None:
    lines = topic_lines(_topic())
    assert lines[0] == (
        "topic orders: 2 partitions, replication factor 2, retention 1d / unlimited per partition"
    )
    assert lines[1].split() == [
        "PARTITION",
        "LEADER",
        "REPLICAS",
        "IN-SYNC",
        "LOG",
        "START",
        "HIGH",
        "WATERMARK",
        "RECORDS",
    ]
    assert lines[2].split() == ["0", "1", "1", "1", "0", "10", "10"]
    assert lines[3].split() == ["1", "none", "1,2", "-", "4", "6", "2"]
    assert topic_json(_topic()) == {
        "name": "orders",
        "partitions": [
            {
                "partition": 0,
                "leader": 1,
                "replicas": [1],
                "in_sync_replicas": [1],
                "log_start_offset": 0,
                "high_watermark": 10,
            },
            {
                "partition": 1,
                "leader": -1,
                "replicas": [1, 2],
                "in_sync_replicas": [],
                "log_start_offset": 4,
                "high_watermark": 6,
            },
        ],
        "replication_factor": 2,
        "retention_ms": 86_400_000,
        "retention_bytes": 0,
    }


def test_group_describe_text_and_json() -> None:
    group = GroupInfo(
        group_id="billing",
        state="Stable",
        generation=3,
        members=(
            GroupMemberInfo(
                "m-1", "sentinel-cli", (TopicPartition("orders", 1), TopicPartition("orders", 0))
            ),
        ),
        offsets=(PartitionLag("orders", 1, -1, 6, 6), PartitionLag("orders", 0, 7, 10, 3)),
    )
    lines = group_lines(group)
    assert lines[0] == "group billing: Stable, generation 3, 1 member"
    assert lines[3].split() == ["m-1", "sentinel-cli", "orders[0],", "orders[1]"]
    assert [line.split() for line in lines[6:]] == [
        ["orders", "0", "7", "10", "3"],
        ["orders", "1", "-", "6", "6"],
    ]
    document = group_json(group)
    assert document["members"] == [
        {
            "member_id": "m-1",
            "client_id": "sentinel-cli",
            "assignment": [{"topic": "orders", "partition": 1}, {"topic": "orders", "partition": 0}],
        }
    ]
    assert document["offsets"][0] == {
        "topic": "orders",
        "partition": 1,
        "committed_offset": None,
        "high_watermark": 6,
        "lag": 6,
    }
    empty = GroupInfo("idle", "Empty", 0, (), ())
    assert group_lines(empty) == ["group idle: Empty, generation 0, 0 members", "no committed offsets"]


class _ClosedPipe(io.StringIO):
    def write(self, s: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_write_lines_reports_a_closed_stdout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdout", _ClosedPipe())
    with pytest.raises(StdoutClosed):
        write_lines(["x"])
    write_lines([])  # nothing to write: nothing to fail


def test_exit_stdout_closed_exits_141_quietly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdout", io.StringIO())  # no file descriptor: nothing to redirect
    with pytest.raises(typer.Exit) as exit_info:
        exit_stdout_closed()
    assert exit_info.value.exit_code == 141
    assert capsys.readouterr().err == ""


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_when_enabled_and_after_the_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    quiet = output.Progress(enabled=False, length=10, label="consuming t")
    quiet.advance(10)
    quiet.close()
    assert terminal.getvalue() == ""
    monkeypatch.setattr(output, "PROGRESS_DELAY_S", 3600.0)
    short = output.Progress(enabled=True, length=10, label="consuming t")
    short.advance(10)  # a short run never shows a bar
    short.close()
    assert terminal.getvalue() == ""
    monkeypatch.setattr(output, "PROGRESS_DELAY_S", 0.0)
    for length in (10, None):
        bar = output.Progress(enabled=True, length=length, label=f"run {length}")
        bar.advance(4)
        bar.advance(6)
        bar.close()
        assert f"run {length}" in terminal.getvalue()
        assert "10" in terminal.getvalue()


def _read_lines(
    stream: object, writes: list[bytes] | None = None, write_fd: int | None = None
) -> list[bytes]:
    async def main() -> list[bytes]:
        reader = _StdinLines(stream)  # type: ignore[arg-type]
        if writes is not None:
            assert write_fd is not None

            def writer() -> None:
                for chunk in writes:
                    os.write(write_fd, chunk)
                os.close(write_fd)

            threading.Thread(target=writer, daemon=True).start()
        got: list[bytes] = []
        async with asyncio.timeout(10):
            async for lines in reader.chunks(asyncio.Event()):
                got.extend(lines)
        return got

    return asyncio.run(main())


def test_stdin_lines_from_a_buffer() -> None:
    data = b"one\r\ntwo\n\nthree"
    assert _read_lines(io.BytesIO(data)) == [b"one", b"two", b"", b"three"]
    assert _read_lines(io.BytesIO(b"")) == []
    assert _read_lines(io.BytesIO(b"last\n")) == [b"last"]


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_fd, write_fd = os.pipe()
    try:
        yield read_fd, write_fd
    finally:
        os.close(read_fd)


def test_stdin_lines_from_a_pipe_in_pieces(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    long_line = b"x" * 200_000  # longer than one read: assembled across chunks
    writes = [b"fir", b"st\nsec", b"ond\r", b"\n", long_line[:70_000], long_line[70_000:] + b"\nend"]
    with open(read_fd, "rb", buffering=0, closefd=False) as stream:
        assert _read_lines(stream, writes, write_fd) == [b"first", b"second", long_line, b"end"]


def test_a_grpclib_connection_lost_mid_request_is_unavailable() -> None:
    """grpclib can hand out a connection that lost its transport (AttributeError): the client's
    error boundary must make it a retriable Unavailable, not a crash that reaches the CLI."""
    try:
        object().__getattribute__("_transport")
    except AttributeError as exc:
        translated = translate_error(exc, "127.0.0.1:9092")
    assert isinstance(translated, Unavailable)
    assert "cannot reach broker 127.0.0.1:9092" in str(translated)
    assert translate_error(AttributeError("other"), "127.0.0.1:9092") is None
