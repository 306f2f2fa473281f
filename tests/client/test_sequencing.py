"""The producer's pure sequencing core: what may fly, numbering, what an answer means."""

from __future__ import annotations

import pytest

from sentinel.broker.producer_state import (
    MAX_SEQUENCE,
    RETAINED_BATCHES,
    OutOfOrderSequence,
    ProducerFenced,
)
from sentinel.client.errors import RequestTimeout
from sentinel.client.sequencing import (
    MAX_BATCHES_PER_REQUEST,
    MAX_IN_FLIGHT_BATCHES,
    MAX_IN_FLIGHT_REQUESTS,
    PartitionSequencer,
    Request,
    stamp_producer,
)
from sentinel.errors import InvalidArgument, Unavailable
from sentinel.records import RecordBatch, build_batch

Seq = PartitionSequencer[str]


def bound(retries: int = 3) -> Seq:
    sequencer = Seq(idempotent=True, retries=retries)
    assert sequencer.needs_binding()
    sequencer.bind(7, 0)
    return sequencer


def acknowledged(retries: int = 3) -> Seq:
    """A binding the broker has state for: requests may fly together."""
    sequencer = bound(retries)
    first = sequencer.form([1], "warm-up")
    sequencer.succeeded(first)
    return sequencer


def test_batches_are_numbered_per_partition_from_zero_when_formed() -> None:
    sequencer = bound()
    first = sequencer.form([3, 2], "a")
    assert first.base_sequences == (0, 3)
    assert (first.binding and first.binding.producer_id, first.binding and first.binding.producer_epoch) == (
        7,
        0,
    )
    sequencer.succeeded(first)
    second = sequencer.form([4], "b")
    assert second.base_sequences == (5,)


def test_sequences_wrap_at_two_to_the_31() -> None:
    sequencer = bound()
    assert sequencer.binding is not None
    sequencer.binding.next_sequence = MAX_SEQUENCE - 1
    request = sequencer.form([1, 5, 2], "wraps")
    assert request.base_sequences == (MAX_SEQUENCE - 1, MAX_SEQUENCE, 4)
    assert sequencer.binding.next_sequence == 6


def test_the_first_request_of_a_binding_flies_alone_then_half_the_window_per_request() -> None:
    assert MAX_IN_FLIGHT_BATCHES == RETAINED_BATCHES  # all the broker remembers, no more
    assert (MAX_IN_FLIGHT_BATCHES, MAX_BATCHES_PER_REQUEST, MAX_IN_FLIGHT_REQUESTS) == (64, 32, 5)
    sequencer = bound()
    assert sequencer.room() == MAX_BATCHES_PER_REQUEST
    first = sequencer.form([1, 1], "first")
    assert sequencer.room() == 0  # the broker has no state for us yet
    sequencer.succeeded(first)
    assert sequencer.room() == MAX_BATCHES_PER_REQUEST
    a = sequencer.form([1] * MAX_BATCHES_PER_REQUEST, "a")
    # Half the window flies: the next request may still go while the broker appends a.
    assert sequencer.room() == MAX_BATCHES_PER_REQUEST
    b = sequencer.form([1] * (MAX_BATCHES_PER_REQUEST - 2), "b")
    assert sequencer.room() == 2 and b.behind and not a.behind
    with pytest.raises(AssertionError, match="3 batches formed with room for 2"):
        sequencer.form([1, 1, 1], "too many")
    sequencer.succeeded(a)
    assert sequencer.room() == MAX_BATCHES_PER_REQUEST


def test_at_most_five_requests_fly_however_small() -> None:
    sequencer = acknowledged()
    requests = [sequencer.form([1], name) for name in "abcde"]
    assert len(requests) == MAX_IN_FLIGHT_REQUESTS and sequencer.room() == 0
    sequencer.succeeded(requests[0])
    assert sequencer.room() == MAX_BATCHES_PER_REQUEST


def test_a_retriable_failure_makes_later_ones_wait_and_they_go_again_in_order_alone() -> None:
    sequencer = acknowledged()
    a, b, c = (sequencer.form([1], name) for name in "abc")
    assert sequencer.failed(a, Unavailable("lost the leader")) is True
    assert sequencer.room() == 0 and sequencer.next_retry() is None  # b and c still fly
    # The broker refuses what follows the hole a left: explained, not an error.
    assert sequencer.failed(c, OutOfOrderSequence("sent 3, expected 1")) is True
    assert sequencer.failed(b, OutOfOrderSequence("sent 2, expected 1")) is True
    assert [r.payload for r in sequencer.waiting] == ["a", "b", "c"]
    assert (a.attempts, b.attempts, c.attempts) == (1, 0, 0)
    sent = []
    while (retry := sequencer.next_retry()) is not None:
        assert sequencer.resend(retry) is False  # same binding, same numbers
        assert sequencer.next_retry() is None  # alone
        # New requests wait for every retry; behind the last one they may fly again.
        assert sequencer.room() == (0 if sequencer.waiting else MAX_BATCHES_PER_REQUEST)
        sent.append((retry.payload, retry.base_sequences))
        sequencer.succeeded(retry)
    assert sent == [("a", (1,)), ("b", (2,)), ("c", (3,))]
    assert sequencer.room() == MAX_BATCHES_PER_REQUEST


def test_out_of_order_for_a_request_sent_alone_fails_it_and_breaks_the_binding() -> None:
    sequencer = acknowledged()
    lone = sequencer.form([1], "lone")  # nothing before it unanswered: nothing explains it
    assert sequencer.failed(lone, OutOfOrderSequence("sent 1, expected 3")) is False
    assert sequencer.binding is not None and sequencer.binding.broken
    assert sequencer.room() == 0 and sequencer.needs_binding()
    sequencer.bind(8, 0)
    fresh = sequencer.form([2], "fresh")
    assert fresh.binding is not None and (fresh.binding.producer_id, fresh.base_sequences) == (8, (0,))


def test_requests_after_a_hole_move_to_a_new_binding_once_the_broker_proves_them_unappended() -> None:
    sequencer = acknowledged()
    a, b, c = (sequencer.form([2], name) for name in "abc")
    assert sequencer.failed(a, InvalidArgument("bad record")) is False  # refused for good
    assert sequencer.failed(b, OutOfOrderSequence("gap")) is True
    assert sequencer.failed(c, OutOfOrderSequence("gap")) is True
    assert not sequencer.needs_binding()  # b is not proven unappended yet: it goes as it was
    retry = sequencer.next_retry()
    assert retry is b and sequencer.resend(b) is False and b.base_sequences == (3,)
    assert sequencer.failed(b, OutOfOrderSequence("sent 3, expected 1")) is True  # the proof
    assert sequencer.needs_binding()
    sequencer.bind(8, 0)
    assert sequencer.next_retry() is b and sequencer.resend(b) is True
    assert b.binding is not None and (b.binding.producer_id, b.base_sequences) == (8, (0,))
    sequencer.succeeded(b)
    assert sequencer.next_retry() is c and not sequencer.needs_binding()
    assert sequencer.resend(c) is True and c.base_sequences == (2,)  # after b, same new binding
    sequencer.succeeded(c)
    assert sequencer.room() == MAX_BATCHES_PER_REQUEST and sequencer.form([1], "d").base_sequences == (4,)


def test_a_fenced_producer_fails_the_request_and_needs_a_new_binding() -> None:
    sequencer = acknowledged()
    request = sequencer.form([1], "x")
    assert sequencer.failed(request, ProducerFenced("epoch 0 is fenced by epoch 1")) is False
    assert sequencer.needs_binding()


def test_retries_are_bounded_and_exhausting_them_breaks_the_binding() -> None:
    sequencer = acknowledged(retries=1)
    request = sequencer.form([1], "x")
    assert sequencer.failed(request, RequestTimeout("timed out")) is True
    retry = sequencer.next_retry()
    assert retry is request
    sequencer.resend(request)
    assert sequencer.failed(request, RequestTimeout("timed out")) is False
    assert sequencer.needs_binding()


def test_a_retriable_failure_after_the_delivery_deadline_is_final_whatever_retries_are_left() -> None:
    sequencer = Seq(idempotent=True, retries=1_000, delivery_timeout=100.0)
    sequencer.bind(7, 0)
    warm = sequencer.form([1], "warm", now=0.0)
    sequencer.succeeded(warm)
    request = sequencer.form([2], "x", now=5.0)  # retried until 105
    assert sequencer.failed(request, Unavailable("no leader"), now=60.0) is True
    sequencer.resend(request)
    assert sequencer.failed(request, Unavailable("no leader"), now=104.999) is True
    sequencer.resend(request)
    assert sequencer.failed(request, Unavailable("no leader"), now=105.0) is False  # for good
    assert request.attempts == 2
    assert sequencer.needs_binding()  # the hole breaks the binding, as exhausted retries do


def test_behind_a_partition_failing_for_the_whole_timeout_a_new_request_fails_at_once() -> None:
    # Without idempotence one request flies at a time: behind a partition that stays down,
    # each queued request would otherwise wait the whole timeout in turn.
    sequencer = Seq(idempotent=False, retries=1_000, delivery_timeout=100.0)
    a = sequencer.form([1], "a", now=0.0)
    assert sequencer.failed(a, Unavailable("down"), now=10.0) is True  # failing since 10
    sequencer.resend(a)
    assert sequencer.failed(a, Unavailable("down"), now=100.0) is False  # its own deadline
    b = sequencer.form([1], "b", now=101.0)  # its own deadline would be 201
    assert sequencer.failed(b, Unavailable("down"), now=102.0) is True  # down since 10: < 110
    sequencer.resend(b)
    assert sequencer.failed(b, Unavailable("down"), now=110.0) is False  # down for 100
    c = sequencer.form([1], "c", now=111.0)
    assert sequencer.failed(c, Unavailable("down"), now=111.5) is False  # at its first failure
    # A success ends the run of failures: the next one starts a new one.
    d = sequencer.form([1], "d", now=112.0)
    sequencer.succeeded(d)
    e = sequencer.form([1], "e", now=113.0)
    assert sequencer.failed(e, Unavailable("down again"), now=114.0) is True


def test_a_request_formed_without_a_deadline_is_bounded_by_retries_alone() -> None:
    sequencer = acknowledged(retries=2)
    request = sequencer.form([1], "x")
    for _ in range(2):
        assert sequencer.failed(request, Unavailable("busy"), now=1e12) is True
        sequencer.resend(request)
    assert sequencer.failed(request, Unavailable("busy"), now=1e12) is False


def test_a_request_out_of_order_only_because_it_overtook_an_earlier_one_goes_again() -> None:
    sequencer = acknowledged()
    a, b = sequencer.form([1], "a"), sequencer.form([1], "b")
    assert sequencer.failed(b, OutOfOrderSequence("sent 2, expected 1")) is True  # arrived first
    sequencer.succeeded(a)
    retry = sequencer.next_retry()
    assert retry is b and sequencer.resend(b) is False and not b.behind
    sequencer.succeeded(b)
    assert not sequencer.binding.broken  # type: ignore[union-attr]


def test_without_idempotence_one_request_flies_and_nothing_is_numbered() -> None:
    sequencer = Seq(idempotent=False, retries=2)
    assert not sequencer.needs_binding()
    request = sequencer.form([3, 4, 5, 6, 7, 8], "many batches")
    assert request.binding is None and request.base_sequences == ()
    assert sequencer.room() == 0
    assert sequencer.failed(request, Unavailable("x")) is True
    assert sequencer.room() == 0 and sequencer.next_retry() is request
    sequencer.resend(request)
    sequencer.succeeded(request)
    assert sequencer.room() > MAX_IN_FLIGHT_BATCHES


def test_stamp_producer_sets_the_fields_and_a_valid_crc() -> None:
    data = build_batch([(b"k", b"v%d" % i, (), 1_000 + i) for i in range(3)])
    stamped = RecordBatch(stamp_producer(data, 42, 3, MAX_SEQUENCE))  # parsing checks the CRC
    assert (stamped.producer_id, stamped.producer_epoch, stamped.base_sequence) == (42, 3, MAX_SEQUENCE)
    assert [r.value for r in stamped.records()] == [b"v0", b"v1", b"v2"]
    assert len(stamped.data) == len(data)


def test_request_records_its_last_error() -> None:
    sequencer = acknowledged()
    request: Request[str] = sequencer.form([1], "x")
    error = Unavailable("busy")
    sequencer.failed(request, error)
    assert request.error is error
