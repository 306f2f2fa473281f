"""Every CLI failure path is one ``error:`` line and a non-zero exit code, never a traceback:
typer's own usage errors (exit 2), option values ``sentinel run`` and ``sentinel bench``
check before starting anything (exit 2), a busy or foreign listen address (exit 1), and
Ctrl-C inside a command (exit 130). Each command run in-process (typer's CliRunner)."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
import typer
from cli_support import error_line, invoke

from sentinel.cli.errors import client_log, readable_errors, usage_line


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["produce", "-m", "x"], "error: missing option '--topic' / '-t' (see 'sentinel produce --help')"),
        (
            ["produce", "-t", "t", "-p", "abc"],
            "error: invalid value for '--partition' / '-p': Input should be a valid integer, unable to "
            "parse string as an integer (see 'sentinel produce --help')",
        ),
        (["consume", "-t", "t", "--bogus"], "error: no such option: --bogus (see 'sentinel consume --help')"),
        (
            ["topics", "list", "--format", "xml"],
            "error: invalid value for '--format' / '-f': Value error, 'xml' is not one of 'text', 'json' "
            "(see 'sentinel topics list --help')",
        ),
        (["topics", "create"], "error: missing argument 'name' (see 'sentinel topics create --help')"),
        (["groups", "nope"], "error: no such command 'nope' (see 'sentinel groups --help')"),
        (["nope"], "error: no such command 'nope' (see 'sentinel --help')"),
        (
            ["run", "--sync", "sometimes"],
            "error: invalid value for '--sync' (env var: 'SENTINEL_SYNC'): Value error, 'sometimes' is not "
            "one of 'always', 'interval', 'none' (see 'sentinel run --help')",
        ),
    ],
)
def test_typer_usage_errors_are_one_line_exit_2(args: list[str], line: str) -> None:
    # Was typer's block: "Usage: ...", "Try '... --help' for help.", "", "Error: ...".
    result = invoke(*args)
    assert result.exit_code == 2
    assert error_line(result) == line
    assert result.stdout == ""


def test_a_group_without_a_command_still_shows_its_help() -> None:
    result = invoke("topics")
    assert result.exit_code == 2
    assert result.stderr.startswith("Usage: sentinel topics [OPTIONS] COMMAND [ARGS]...")
    assert "create" in result.stderr and "error:" not in result.stderr


def test_usage_line_words_click_messages_like_the_cli() -> None:
    assert usage_line("Missing option '--topic'.", "sentinel produce") == (
        "error: missing option '--topic' (see 'sentinel produce --help')"
    )
    assert (
        usage_line("Got unexpected extra\nargument (x)", None) == "error: got unexpected extra argument (x)"
    )
    assert usage_line("NOT lowered", "s") == "error: NOT lowered (see 's --help')"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], "--port must be between 0 and 65535, got 70000"),
        (["--port", "-1"], "--port must be between 0 and 65535, got -1"),
        (["--metrics-port", "-2"], "--metrics-port must be between -1 and 65535, got -2"),
        (["--node-id", "0"], "--node-id must be >= 1, got 0"),  # Raft's 0 is "no node"
        (["--default-partitions", "0"], "--default-partitions must be between 1 and 10000, got 0"),
        (["--retention-ms", "-1"], "--retention-ms must be >= 0, got -1"),
        (["--retention-bytes", "-1"], "--retention-bytes must be >= 0, got -1"),
        (["--max-message-bytes", "1"], "--max-message-bytes must be between 1024 and 2147483647, got 1"),
        (["--memtable-bytes", "4095"], "--memtable-bytes must be >= 4096, got 4095"),
    ],
)
def test_run_refuses_out_of_range_options_before_starting(
    args: list[str], message: str, tmp_path: Path
) -> None:
    # Were a traceback (ports, --max-message-bytes) or accepted (a broker whose every
    # auto-created topic then failed, a negative retention, a memtable flushed per write).
    data = tmp_path / "data"
    result = invoke("run", "--data", str(data), *args)
    assert result.exit_code == 2
    assert error_line(result) == f"error: {message}"
    assert not data.exists()  # nothing was started


def test_run_data_that_is_a_file_is_named(tmp_path: Path) -> None:
    # Was "error: File exists (<path>)".
    file = tmp_path / "file"
    file.write_text("")
    result = invoke("run", "--data", str(file))
    assert result.exit_code == 2
    assert error_line(result) == f"error: --data {file} is not a directory"


def test_busy_grpc_port_names_the_port_and_option(tmp_path: Path) -> None:
    # Was "error: [Errno 98] error while attempting to bind on address (...): address already in use".
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = invoke("run", "--port", str(port), "--metrics-port", "-1", "--data", str(tmp_path / "d"))
    assert result.exit_code == 1
    assert error_line(result) == f"error: gRPC port 127.0.0.1:{port} is in use (--port)"


@pytest.mark.parametrize("command", ["produce", "consume", "e2e"])
def test_bench_refuses_a_malformed_broker_before_starting(command: str) -> None:
    # Was a progress line, then a worker's failure after the preload had started.
    result = invoke("bench", command, "--quick", "--broker", "localhost")
    assert result.exit_code == 2
    assert error_line(result) == "error: --broker: broker address must be host:port, got 'localhost'"


def test_ctrl_c_inside_a_command_is_error_interrupted_exit_130(capsys: pytest.CaptureFixture[str]) -> None:
    @readable_errors
    def command() -> None:
        raise KeyboardInterrupt

    with pytest.raises(typer.Exit) as exited:
        command()
    assert exited.value.exit_code == 130
    assert capsys.readouterr().err == "error: interrupted\n"


def _outage(logger: logging.Logger, address: str, *, reachable: bool, message: str) -> None:
    level = logging.INFO if reachable else logging.WARNING
    logger.log(level, "%s", message, extra={"broker": address, "broker_reachable": reachable})


@pytest.mark.parametrize("report_outages", [True, False])
def test_client_log_records_are_command_lines(
    report_outages: bool, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # Were logging's default output: the bare message, over as many lines as it had.
    reachability = logging.getLogger("sentinel.client.reachability")
    consumer = logging.getLogger("sentinel.client.consumer")
    with caplog.at_level(logging.DEBUG), client_log() as log:
        log.report_outages = report_outages
        consumer.warning("auto-commit of group g failed: INTERNAL: boom\n  at line two")
        consumer.info("ev[0]: offset out of range; resetting to earliest")  # not for the user
        _outage(reachability, "a:1", reachable=False, message="cannot reach broker a:1: refused")
        assert log.outage == "cannot reach broker a:1: refused"
        # The same outage again: a commit, a leave that could not reach the broker.
        _outage(reachability, "a:1", reachable=False, message="cannot reach broker a:1: refused")
        consumer.warning("leaving group g failed: cannot reach broker a:1: refused")
        _outage(reachability, "a:1", reachable=True, message="broker a:1 answers again")
        assert log.outage is None
        log.warn("a warning of the command's own")
    outage_lines = ["warning: cannot reach broker a:1: refused; retrying", "broker a:1 answers again"]
    assert capsys.readouterr().err.splitlines() == [
        "warning: auto-commit of group g failed: INTERNAL: boom at line two",
        *(outage_lines if report_outages else []),
        "warning: a warning of the command's own",
    ]
    assert caplog.records == []  # routed to the command only, not also to the root logger's handlers
    client = logging.getLogger("sentinel.client")
    assert (client.handlers, client.propagate, client.level) == ([], True, logging.NOTSET)
