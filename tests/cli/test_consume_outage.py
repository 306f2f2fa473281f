"""``sentinel consume`` when the broker cannot be reached, and the client library's warnings.

With ``--follow`` an outage is one ``warning: ...; retrying`` line when it starts and one
line when the broker answers again, and the follow goes on; without, it is one ``error:``
line and exit code 1. Any other client warning is one ``warning:`` line, never logging's
output (the real-process side, a broker killed and restarted under a follow, is in
tests/e2e/test_cli_process.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from cli_support import ThreadedFake, error_line, invoke
from client_fakes import FakeSentinel
from grpclib.const import Status

from sentinel.generated.sentinel import v1 as pb
from sentinel.records import RecordBatch, build_batch


def _store(fake: FakeSentinel, topic: str, values: list[bytes]) -> None:
    if topic not in fake.topics:
        fake.create(topic, 1)
    fake.topics[topic][0].append(RecordBatch(build_batch([(None, v, (), 1_000) for v in values])))


def test_follow_says_once_that_the_broker_is_away_and_once_that_it_is_back(fake: ThreadedFake) -> None:
    # Was silent: the client retried its fetches for as long as the broker was away.
    fake.call(lambda f: _store(f, "events", [b"a", b"b"]))
    # Twelve failures in a row: the client reports the outage after its five retries, once.
    fake.call(lambda f: f.fail_next("fetch", Status.UNAVAILABLE, "shutting down", times=12))
    result = invoke("consume", "-b", fake.address, "-t", "events", "--from-beginning", "--follow", "-n", "2")
    assert (result.exit_code, result.stdout) == (0, "a\nb\n")
    assert result.stderr.splitlines() == [
        f"warning: broker {fake.address}: shutting down; retrying",
        f"broker {fake.address} answers again",
    ]


def test_without_follow_an_unreachable_broker_is_one_error_line(fake: ThreadedFake) -> None:
    # Everything the consumer sends after the preflight fails.
    fake.call(lambda f: _store(f, "events", [b"a"]))
    for rpc in ("fetch", "list_offsets"):
        fake.call(lambda f, rpc=rpc: f.fail_next(rpc, Status.UNAVAILABLE, "shutting down", times=100))
    result = invoke("consume", "-b", fake.address, "-t", "events", "-p", "0", "-o", "0")
    assert (result.exit_code, result.stdout) == (1, "")
    # Names the broker (the client's report), and no warning line before it.
    assert error_line(result) == f"error: broker {fake.address}: shutting down"


@pytest.fixture
def fast_heartbeats(monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadedFake]:
    """A fake whose JoinGroup answers ask for a heartbeat every 20 ms (the CLI has no option
    for it, and the client's default is 3 s)."""
    join_group = FakeSentinel.join_group

    async def joined(self: FakeSentinel, message: pb.JoinGroupRequest) -> pb.JoinGroupResponse:
        response = await join_group(self, message)
        response.heartbeat_interval_ms = 20
        return response

    monkeypatch.setattr(FakeSentinel, "join_group", joined)
    server = ThreadedFake(default_partitions=1)
    try:
        yield server
    finally:
        server.stop()


def test_a_failed_heartbeat_is_one_warning_line(fast_heartbeats: ThreadedFake) -> None:
    # Was logging's default output: the bare message, over as many lines as it had.
    fake = fast_heartbeats
    fake.call(lambda f: f.create("events", 1))
    fake.call(
        lambda f: f.fail_next("heartbeat", Status.INTERNAL, "coordinator failed:\n  at line two", times=1)
    )

    def produce_once_a_heartbeat_has_failed() -> None:
        # The second heartbeat comes after the first one's failure was handled (and logged).
        fake.wait(lambda f: f.wait_for_calls("heartbeat", 2))
        fake.call(lambda f: _store(f, "events", [b"x"]))

    producer = threading.Thread(target=produce_once_a_heartbeat_has_failed, daemon=True)
    producer.start()
    result = invoke(
        "consume", "-b", fake.address, "-t", "events", "-g", "g", "--from-beginning", "--follow", "-n", "1"
    )
    producer.join(10)
    assert (result.exit_code, result.stdout) == (0, "x\n")
    assert result.stderr.splitlines() == [
        "warning: heartbeat of group g failed: INTERNAL: coordinator failed: at line two; re-joining"
    ]
