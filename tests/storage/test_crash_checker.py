"""The crash test's checker (``crash_history.py``) on hand-built event logs.

Each log is written as the child prints it (``begin <writer> <ops>`` / ``ack <writer>
<last_seq>``, in print order), so a case reads like what the parent saw before the kill.
The legal cases include the group-commit outcome the first checker rejected; the illegal
ones are losses a broken engine would produce, several of which the first checker let pass.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from crash_history import (
    Ack,
    Begin,
    Entry,
    Event,
    HistoryViolation,
    Outcome,
    case_json,
    check_case_json,
    check_recovery,
    parse_event,
    writes_of,
)


def check(
    log: str,
    recovered: Mapping[str, Entry],
    last_seq: int,
    base: Mapping[str, Entry] | None = None,
    base_last_seq: int = 0,
) -> Outcome:
    events = [parse_event(line.strip()) for line in log.strip().splitlines()]
    return check_recovery(base or {}, base_last_seq, writes_of(events), recovered, last_seq)


# Writer 0's a+b batch is acknowledged at seqs 1..2; writer 1's c+d batch is in flight.
SIMPLE = """
begin 0 [["a", "1"], ["b", "2"]]
ack 0 2
begin 1 [["c", "3"], ["d", "4"]]
"""
SIMPLE_STATE: dict[str, Entry] = {"a": (1, "1"), "b": (2, "2")}


def test_an_in_flight_write_may_be_applied_or_not() -> None:
    assert check(SIMPLE, SIMPLE_STATE, 2).in_flight_applied() == []
    applied = check(SIMPLE, {**SIMPLE_STATE, "c": (3, "3"), "d": (4, "4")}, 4).in_flight_applied()
    assert [w.writer for w in applied] == [1]


def test_an_in_flight_write_followed_by_an_acknowledged_delete_in_one_group_commit() -> None:
    """The false positive seen on a loaded machine (the first checker said "half of an
    in-flight batch"): writer 0's batch and writer 1's delete went out in one group commit,
    seqs 1..2 and 3; the WalWriter answered both, writer 1 printed its ack first, and the
    parent killed on reading it, before writer 0 printed its own. So writer 0's batch is
    durable but in flight, and b is gone because an acknowledged delete with a higher seq
    removed it, not because the batch was torn."""
    log = """
    begin 0 [["a", "w0.0"], ["b", "w0.1"]]
    begin 1 [["b", null]]
    ack 1 3
    """
    outcome = check(log, {"a": (1, "w0.0")}, 3)
    assert [(p.write.writer, p.first_seq) for p in outcome.applied] == [(0, 1), (1, 3)]


def test_a_recorded_false_positive() -> None:
    """The tail of a real run (six keys instead of 150 so that batches share keys often;
    values shortened) that the first checker rejected with "half of an in-flight batch".
    Writers 3 and 2 were durable at seqs 700 and 701..708 but their acks unprinted when the
    parent killed on writer 0's ack (710); writer 1's delete of k000 (709, acknowledged)
    removed the k000 that writer 2's batch had put."""
    log = "\n".join(
        [
            'begin 3 [["k003", "r0.w3.n85.0:"]]',
            'begin 2 [["k005", null], ["k000", "r0.w2.n85.1:"], ["k000", "r0.w2.n85.2:"],'
            ' ["k001", "r0.w2.n85.3:"], ["k004", null], ["k004", "r0.w2.n85.5:"],'
            ' ["k003", "r0.w2.n85.6:"], ["k002", null]]',
            'begin 1 [["k000", null]]',
            'begin 0 [["k005", "r0.w0.n85.0:"]]',
            "ack 0 710",
            'begin 0 [["k000", "r0.w0.n86.0:"], ["k002", "r0.w0.n86.1:"], ["k000", "r0.w0.n86.2:"],'
            ' ["k003", "r0.w0.n86.3:"], ["k001", "r0.w0.n86.4:"], ["k000", "r0.w0.n86.5:"],'
            ' ["k003", null], ["k002", null]]',
            "ack 1 709",
        ]
    )
    base: dict[str, Entry] = {
        "k000": (691, "r0.w1.n84.0:"),
        "k001": (687, "r0.w0.n83.4:"),
        "k002": (697, "r0.w1.n84.6:"),
        "k003": (699, "r0.w0.n84.0:"),
        "k005": (696, "r0.w1.n84.5:"),
    }
    recovered: dict[str, Entry] = {
        "k001": (704, "r0.w2.n85.3:"),
        "k003": (707, "r0.w2.n85.6:"),
        "k004": (706, "r0.w2.n85.5:"),
        "k005": (710, "r0.w0.n85.0:"),
    }
    outcome = check(log, recovered, 710, base=base, base_last_seq=699)
    assert [(p.write.writer, p.first_seq) for p in outcome.applied] == [
        (3, 700),
        (2, 701),
        (1, 709),
        (0, 710),
    ]
    # The same run with k001 gone too would have lost writer 2's put with nothing newer.
    with pytest.raises(HistoryViolation, match=r"half of an in-flight batch: .* leaves k001 = \(704"):
        check(log, {k: v for k, v in recovered.items() if k != "k001"}, 710, base=base, base_last_seq=699)


def test_a_durable_in_flight_write_fills_the_gap_between_acknowledged_seqs() -> None:
    log = """
    begin 0 [["a", "w0"]]
    begin 1 [["a", "w1.0"], ["b", "w1.1"]]
    begin 2 [["b", null]]
    ack 0 1
    ack 2 4
    """
    # Writer 1's batch holds seqs 2..3, between the acks: the only place it fits.
    assert check(log, {"a": (2, "w1.0")}, 4).in_flight_applied()[0].writer == 1


def test_an_in_flight_delete_after_the_acknowledged_put() -> None:
    log = """
    begin 0 [["k", "v"]]
    ack 0 1
    begin 0 [["k", null]]
    """
    assert check(log, {}, 2).in_flight_applied()[0].ops == (("k", None),)
    assert check(log, {"k": (1, "v")}, 1).in_flight_applied() == []


def test_an_acknowledged_write_missing_with_nothing_newer_is_a_loss() -> None:
    with pytest.raises(HistoryViolation, match=r"acknowledged b = \(2, '2'\) is missing"):
        check(SIMPLE, {"a": (1, "1")}, 2)


def test_an_in_flight_delete_that_came_before_the_put_does_not_explain_it() -> None:
    """The first checker let any in-flight delete of a key explain an acknowledged put of it
    missing. Here the delete is pinned below the put: the gap at seq 2 between the two acks
    fits only it (so it is older than the put at seq 3)."""
    log = """
    begin 0 [["k", null]]
    begin 1 [["x", "1"]]
    begin 2 [["k", "v"]]
    ack 2 3
    ack 1 1
    """
    check(log, {"x": (1, "1"), "k": (3, "v")}, 3)
    with pytest.raises(HistoryViolation, match=r"acknowledged k = \(3, 'v'\) is missing"):
        check(log, {"x": (1, "1")}, 3)
    # Pinned instead by its own recovered value: j at seq 1 puts the delete at seq 2.
    pinned = """
    begin 0 [["j", "x"], ["k", null]]
    begin 1 [["k", "v"]]
    ack 1 3
    """
    with pytest.raises(HistoryViolation, match=r"acknowledged k = \(3, 'v'\) is missing"):
        check(pinned, {"j": (1, "x")}, 3)


def test_a_write_begun_after_an_ack_cannot_fill_a_gap_below_it() -> None:
    log = """
    begin 0 [["a", "1"]]
    begin 2 [["c", "3"]]
    ack 0 1
    ack 2 3
    begin 1 [["b", "2"]]
    """
    with pytest.raises(HistoryViolation, match="no order of the in-flight writes fills the seqs"):
        check(log, {"a": (1, "1"), "c": (3, "3")}, 3)


def test_half_of_an_atomic_batch_is_rejected() -> None:
    with pytest.raises(
        HistoryViolation, match=r"half of an in-flight batch: .* leaves d = \(4, '4'\), found None"
    ):
        check(SIMPLE, {**SIMPLE_STATE, "c": (3, "3")}, 4)
    with pytest.raises(HistoryViolation, match="half of an in-flight batch"):
        check(SIMPLE, {**SIMPLE_STATE, "c": (3, "3")}, 3)


def test_half_of_an_atomic_batch_is_not_excused_by_an_older_in_flight_delete() -> None:
    """The first checker excused a missing op of a seen in-flight batch by any in-flight
    delete of the key. Writer 1's delete must take seq 2 (writer 2's batch is seen from
    seq 3), so it is older than writer 2's b and cannot hide it."""
    log = """
    begin 0 [["x", "1"]]
    begin 1 [["b", null]]
    begin 2 [["a", "w2.0"], ["b", "w2.1"]]
    ack 0 1
    """
    check(log, {"x": (1, "1"), "a": (3, "w2.0"), "b": (4, "w2.1")}, 4)
    with pytest.raises(HistoryViolation, match=r"half of an in-flight batch: .* leaves b = \(4, 'w2.1'\)"):
        check(log, {"x": (1, "1"), "a": (3, "w2.0")}, 4)


def test_invented_misplaced_and_rolled_back_entries_are_rejected() -> None:
    with pytest.raises(HistoryViolation, match="was never written"):
        check(SIMPLE, {**SIMPLE_STATE, "e": (5, "5")}, 5)
    with pytest.raises(HistoryViolation, match="was never written"):
        check(SIMPLE, {"a": (1, "9"), "b": (2, "2")}, 2)
    with pytest.raises(HistoryViolation, match="holds a value written to a"):
        check(SIMPLE, {"a": (1, "1"), "b": (1, "1")}, 2)
    with pytest.raises(HistoryViolation, match=r"wrong seq: the value was acknowledged at seq 2"):
        check(SIMPLE, {"a": (1, "1"), "b": (7, "2")}, 7)
    rewritten = """
    begin 0 [["a", "old"]]
    ack 0 1
    begin 0 [["a", "new"]]
    ack 0 2
    """
    with pytest.raises(
        HistoryViolation, match=r"a lost the acknowledged seq \(2, 'new'\) \(holds \(1, 'old'\)\)"
    ):
        check(rewritten, {"a": (1, "old")}, 2)
    with pytest.raises(
        HistoryViolation, match=r"a = \(7, 'base'\) survived the acknowledged delete at seq 8"
    ):
        check(
            'begin 0 [["a", null]]\nack 0 8', {"a": (7, "base")}, 8, base={"a": (7, "base")}, base_last_seq=7
        )
    with pytest.raises(HistoryViolation, match=r"the base held \(7, 'base'\) and no write touched it"):
        check("", {}, 7, base={"a": (7, "base")}, base_last_seq=7)


def test_the_last_seq_must_end_the_recovered_history() -> None:
    with pytest.raises(
        HistoryViolation, match="the recovered last seq is 3, the recovered entries end at seq 2"
    ):
        check(SIMPLE, SIMPLE_STATE, 3)


def test_acknowledged_seqs_must_be_fresh() -> None:
    with pytest.raises(HistoryViolation, match="reuses seqs at or below 5"):
        check(SIMPLE, SIMPLE_STATE, 2, base={"z": (5, "z")}, base_last_seq=5)


def test_a_saved_case_replays() -> None:
    events: list[Event] = [Begin(0, (("a", "1"),)), Begin(1, (("a", None),)), Ack(1, 2)]
    saved = case_json({"z": (5, "z")}, 5, events, {"z": (5, "z")}, 5)
    with pytest.raises(HistoryViolation, match="reuses seqs"):
        check_case_json(saved)
    saved = case_json({}, 0, events, {}, 2)
    assert [p.write.writer for p in check_case_json(saved).applied] == [0, 1]
