"""Progress: what a leader knows of one follower's log, and the flow control of appends
(progress.py's states; etcd tracker/progress.go and inflights.go)."""

from __future__ import annotations

import pytest

from sentinel.raft.progress import Inflights, Progress, ProgressState, quorum_index

PROBE, REPLICATE, SNAPSHOT = ProgressState.PROBE, ProgressState.REPLICATE, ProgressState.SNAPSHOT


def progress(state: ProgressState, match: int, next: int, *, count: int = 256, size: int = 0) -> Progress:
    pr = Progress(next, count, size)
    pr.match = match
    if state is REPLICATE:
        pr.become_replicate()
        pr.next = next
    elif state is SNAPSHOT:
        pr.become_snapshot(next - 1)
    return pr


# -- state transitions --------------------------------------------------------------------


def test_new_progress_probes() -> None:
    """A new leader knows nothing of a follower's log: it probes from its own last index."""
    pr = Progress(11, 256, 0)
    assert (pr.state, pr.match, pr.next, pr.is_paused()) == (PROBE, 0, 11, False)


@pytest.mark.parametrize(
    ("state", "match", "next", "pending", "want_next"),
    [
        (REPLICATE, 1, 5, 0, 2),  # optimistic sends since match are forgotten
        (PROBE, 1, 5, 0, 2),
        (SNAPSHOT, 1, 11, 10, 11),  # the snapshot's index is assumed delivered
        (SNAPSHOT, 12, 11, 10, 13),  # unless the follower acknowledged more meanwhile
    ],
)
def test_become_probe(state: ProgressState, match: int, next: int, pending: int, want_next: int) -> None:
    pr = progress(state, match, next)
    pr.inflights.add(next, 10)
    pr.paused = True

    pr.become_probe()

    assert (pr.state, pr.match, pr.next, pr.paused) == (PROBE, match, want_next, False)
    assert pr.pending_snapshot == 0
    assert len(pr.inflights) == 0 and pr.inflights.bytes == 0


def test_become_replicate() -> None:
    pr = progress(PROBE, 5, 4)
    pr.paused = True
    pr.become_replicate()
    assert (pr.state, pr.next, pr.paused) == (REPLICATE, 6, False)


def test_become_snapshot_pauses_until_reported() -> None:
    pr = progress(REPLICATE, 3, 7)
    pr.inflights.add(6, 100)

    pr.become_snapshot(20)

    assert (pr.state, pr.pending_snapshot, pr.next, pr.is_paused()) == (SNAPSHOT, 20, 21, True)
    assert len(pr.inflights) == 0
    pr.paused = False  # a heartbeat response does not let appends through a snapshot
    assert pr.is_paused()


# -- probe: one append per round trip ------------------------------------------------------


def test_probe_sends_one_append_per_round_trip() -> None:
    pr = progress(PROBE, 0, 5)
    assert not pr.is_paused()

    pr.sent_entries(7, 30)

    assert pr.is_paused()
    assert pr.next == 5  # probing does not advance next on send
    assert len(pr.inflights) == 0
    assert not pr.maybe_update(0)  # no news: still paused
    assert pr.is_paused()
    assert pr.maybe_update(7)
    assert (pr.match, pr.next, pr.is_paused()) == (7, 8, False)


# -- replicate: the inflight window ---------------------------------------------------------


def test_inflight_window_by_count() -> None:
    """At most ``max_inflight`` appends are in flight; an acknowledgement frees a slot."""
    pr = progress(REPLICATE, 0, 1, count=3)
    for last in (2, 4, 6):
        assert not pr.is_paused()
        pr.sent_entries(last, 10)
    assert pr.is_paused()
    assert (pr.next, len(pr.inflights), pr.inflights.bytes) == (7, 3, 30)

    assert pr.maybe_update(4)
    pr.inflights.free_le(4)
    assert (len(pr.inflights), pr.inflights.bytes) == (1, 10)
    assert not pr.is_paused() and not pr.inflights.full()


def test_inflight_window_by_bytes() -> None:
    """The byte bound is soft: the append that crosses it goes, the next one waits."""
    pr = progress(REPLICATE, 0, 1, count=100, size=100)
    pr.sent_entries(1, 60)
    assert not pr.is_paused()
    pr.sent_entries(2, 39)
    assert not pr.is_paused() and pr.inflights.bytes == 99
    pr.sent_entries(3, 50)
    assert pr.is_paused() and pr.inflights.bytes == 149

    pr.maybe_update(2)
    pr.inflights.free_le(2)
    assert pr.inflights.bytes == 50 and not pr.is_paused()


def test_empty_append_takes_no_slot() -> None:
    """An append that carries only a commit (its last index below next) is not in flight."""
    pr = progress(REPLICATE, 4, 5, count=1)
    pr.sent_entries(4, 0)
    assert (len(pr.inflights), pr.next, pr.is_paused()) == (0, 5, False)


def test_inflights() -> None:
    fl = Inflights(4, 0)
    for last, size in ((3, 10), (5, 20), (9, 30)):
        fl.add(last, size)
    fl.free_le(4)
    assert (list(fl.queue), fl.bytes) == ([(5, 20), (9, 30)], 50)
    fl.free_le(4)  # nothing more to free
    assert len(fl) == 2
    fl.free_le(100)
    assert (len(fl), fl.bytes) == (0, 0)
    assert not Inflights(4, 0).full()  # a byte bound of 0 means none


# -- acknowledgements and rejections ------------------------------------------------------


def test_maybe_update() -> None:
    pr = progress(REPLICATE, 5, 10)
    assert not pr.maybe_update(3)  # stale: an older acknowledgement
    assert (pr.match, pr.next) == (5, 10)
    assert pr.maybe_update(7)
    assert (pr.match, pr.next) == (7, 10)  # next stays ahead of what is in flight
    assert pr.maybe_update(12)
    assert (pr.match, pr.next) == (12, 13)


@pytest.mark.parametrize(
    ("match", "next", "rejected", "hint", "changed", "want_next"),
    [
        # a reject of an index at or below match is older than an acknowledgement: stale
        (5, 10, 5, 5, False, 10),
        (5, 10, 3, 0, False, 10),
        # else every optimistic send is void: resend from match + 1
        (5, 10, 9, 9, True, 6),
        (5, 10, 7, 6, True, 6),
    ],
)
def test_maybe_decrease_to_replicate(
    match: int, next: int, rejected: int, hint: int, changed: bool, want_next: int
) -> None:
    pr = progress(REPLICATE, match, next)
    assert pr.maybe_decrease_to(rejected, hint) is changed
    assert pr.next == want_next


@pytest.mark.parametrize(
    ("match", "next", "rejected", "hint", "changed", "want_next"),
    [
        # a reject of anything but the probe just sent (next - 1) is stale
        (0, 10, 5, 5, False, 10),
        (0, 10, 10, 5, False, 10),
        # the follower's hint moves next back, to at most the rejected index...
        (0, 10, 9, 5, True, 6),
        (0, 10, 9, 20, True, 9),
        (0, 10, 9, 0, True, 1),
        # ...and never to or below match
        (3, 10, 9, 1, True, 4),
    ],
)
def test_maybe_decrease_to_probe(
    match: int, next: int, rejected: int, hint: int, changed: bool, want_next: int
) -> None:
    pr = progress(PROBE, match, next)
    pr.paused = True
    assert pr.maybe_decrease_to(rejected, hint) is changed
    assert pr.next == want_next
    assert pr.paused is not changed  # a real reject answers the probe: send again


@pytest.mark.parametrize(
    ("matches", "want"),
    [([5], 5), ([5, 3], 3), ([5, 3, 1], 3), ([1, 5, 3], 3), ([5, 4, 3, 2], 3), ([9, 1, 7, 0, 7], 7)],
)
def test_quorum_index(matches: list[int], want: int) -> None:
    """The highest index a majority holds: the (n//2 + 1)-th highest match."""
    assert quorum_index(matches) == want
