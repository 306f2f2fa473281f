"""``sentinel consume`` on damaged stored data: it prints every good record before the damage,
then one ``error:`` line naming the topic, partition and offset, and exits 1."""

from __future__ import annotations

import pytest
from cli_support import ThreadedFake, error_line, invoke
from client_fakes import POISON_DETAIL, FakeSentinel, poison_batch

from sentinel.records import Compression, RecordBatch, build_batch

DAMAGED = (
    "error: corruption in topic 'events' partition 0 at offset 3: the stored record batch of offsets "
    f"3 to 5 cannot be decoded: {POISON_DETAIL}"
)


def _store_damaged(fake: FakeSentinel, codec: Compression) -> None:
    """events[0]: a, b, c (0..2), a damaged batch (3..5), d (6): stored unchecked."""
    (part,) = fake.create("events", 1)
    part.append(
        RecordBatch(build_batch([(None, v, (), 1_000) for v in (b"a", b"b", b"c")], compression=codec))
    )
    part.append(poison_batch(codec))
    part.append(RecordBatch(build_batch([(None, b"d", (), 1_000)], compression=codec)))


@pytest.mark.parametrize("codec", [Compression.NONE, Compression.GZIP], ids=lambda c: c.name)
def test_consume_prints_the_good_records_then_one_error_line(fake: ThreadedFake, codec: Compression) -> None:
    fake.call(lambda f: _store_damaged(f, codec))
    result = invoke("consume", "-b", fake.address, "-t", "events", "--from-beginning")
    assert result.exit_code == 1
    assert result.stdout == "a\nb\nc\n"
    assert error_line(result) == DAMAGED
    # Skipping the damage is the user's explicit choice, and works.
    result = invoke("consume", "-b", fake.address, "-t", "events", "-p", "0", "-o", "6")
    assert (result.exit_code, result.stdout) == (0, "d\n")


def test_consume_as_a_group_member_reports_the_damage_and_commits_what_it_printed(fake: ThreadedFake) -> None:
    fake.call(lambda f: _store_damaged(f, Compression.NONE))
    base = ("consume", "-b", fake.address, "-t", "events", "--group", "billing", "--from-beginning")
    result = invoke(*base, "-f", "json")
    assert result.exit_code == 1
    assert [line.count('"offset": ') for line in result.stdout.splitlines()] == [1, 1, 1]
    assert error_line(result) == DAMAGED
    assert fake.call(lambda f: dict(f.groups["billing"].offsets)) == {("events", 0): 3}
    # The next run resumes at the damage and says so at once.
    result = invoke(*base)
    assert (result.exit_code, result.stdout) == (1, "")
    assert error_line(result) == DAMAGED
