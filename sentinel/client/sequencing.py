"""What a partition's sender may send next, and what an answer means: the producer's half of
idempotent produce, as a pure core (no event loop, no IO; the producer's sender task asks
and tells it).

The broker's half (``sentinel/broker/producer_state.py``) keeps the last
``RETAINED_BATCHES`` (64) batches of each producer id per partition; it appends a batch only
when its first sequence number follows that producer's last one, answers a retried batch it
already has with the original offsets, and refuses a gap or a step back with
``OutOfOrderSequence``. Here, per partition:

* **Binding.** The partition's batches carry a producer id and epoch (from InitProducerId)
  and sequence numbers counted per partition from 0, wrapping at 2**31 - 1. A request's
  batches take their numbers when the request is formed and keep them, in byte-identical
  headers, through every retry: that is what lets the broker recognise a retry whose first
  answer was lost.
* **In flight.** At most ``MAX_IN_FLIGHT_BATCHES`` (64, all the broker remembers) batches
  are unanswered at once, so a retry of the oldest is still among the batches the broker
  remembers; at most ``MAX_IN_FLIGHT_REQUESTS`` (5, Kafka's
  ``max.in.flight.requests.per.connection``) requests; and a request carries at most
  ``MAX_BATCHES_PER_REQUEST`` (half the window), so the next request is formed and flies
  while the broker appends the one before it. (Kafka's window is 5 batches, one per
  request; with it, a request of Sentinel's took all five and the partition's requests went
  one at a time, at less than half the records/s with 16 KiB batches: README,
  Performance.) Not idempotent: one request, of any number of batches, as before.
* **The first request of a binding flies alone.** A broker that has no state for a producer
  accepts any sequence, so a second request that overtook the first (the broker's tasks may
  reach the partition in either order) would be appended ahead of it.
* **Recovery, in order.** A request that must be sent again waits until nothing is in
  flight; then the waiting requests go one at a time, in the order they were formed, and
  only after them new ones. ``OutOfOrderSequence`` for a request sent while an earlier one
  was unanswered is explained by that one (it failed, or reached the partition second): the
  request waits its turn, it is not an error. The same answer to a request sent with nothing
  before it unanswered proves the request was not appended (nor anything after it).
* **A broken binding.** A request that fails for good (retries exhausted or its delivery
  deadline passed, a non-retriable error, ``ProducerFenced``, or ``OutOfOrderSequence``
  nothing explains) leaves a hole in its binding's sequence. New requests wait for a new
  binding (a new producer id, from 0) until every request of the old one is settled;
  requests after the hole that the broker proved unappended move to the new binding with
  new numbers (safe: never appended). An ``OutOfOrderSequence`` that nothing explains
  fails its request (the broker lacks a batch it acknowledged, or the client has a bug:
  worth an error); after a broken binding it is the expected proof, and the request moves
  on.

Invariants:
- ``in_flight`` and ``waiting`` are disjoint; ``waiting`` is sorted by formation order.
- Requests of one binding are formed in sequence order, and ``order`` grows with formation:
  settling requests by ``order`` settles each partition's records in offset order.
- Nothing is formed while anything waits, and nothing is sent again while anything flies.
"""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Sequence
from typing import Final, Generic, TypeVar

import attrs
from crc32c import crc32c

from sentinel.broker.producer_state import MAX_SEQUENCE, RETAINED_BATCHES, OutOfOrderSequence
from sentinel.client.errors import is_retriable
from sentinel.errors import SentinelError
from sentinel.records import batch_format as fmt

P = TypeVar("P")

# The broker remembers this many batches per producer: a retry of the oldest unanswered
# batch must still be among them.
MAX_IN_FLIGHT_BATCHES: Final = RETAINED_BATCHES
# Requests in flight per partition (Kafka's max.in.flight.requests.per.connection default).
MAX_IN_FLIGHT_REQUESTS: Final = 5
# Half the window: a second request flies while the broker works on the first.
MAX_BATCHES_PER_REQUEST: Final = MAX_IN_FLIGHT_BATCHES // 2
SEQUENCE_SPACE: Final = MAX_SEQUENCE + 1
# Where a new binding starts counting (a module constant so a test can start near the wrap).
FIRST_SEQUENCE = 0
# A non-idempotent request may carry any number of batches.
UNLIMITED: Final = sys.maxsize

# producerId, producerEpoch, baseSequence: consecutive in the RecordBatch header.
_PRODUCER_FIELDS: Final = struct.Struct(">qhi")
_CRC: Final = struct.Struct(">I")


def stamp_producer(data: bytes, producer_id: int, producer_epoch: int, base_sequence: int) -> bytes:
    """One encoded RecordBatch with its producer fields set and its CRC recomputed (they
    are inside the CRC-covered part of the header)."""
    out = bytearray(data)
    _PRODUCER_FIELDS.pack_into(out, fmt.PRODUCER_ID_OFFSET, producer_id, producer_epoch, base_sequence)
    _CRC.pack_into(out, fmt.CRC_OFFSET, crc32c(memoryview(out)[fmt.CRC_START :]))
    return bytes(out)


@attrs.define(eq=False)
class Binding:
    """A producer id and epoch as one partition uses them, with its next sequence number."""

    producer_id: int
    producer_epoch: int
    next_sequence: int
    #: The broker acknowledged a batch of this binding: it has state for it now, and
    #: requests may fly together.
    acknowledged: bool = False
    #: A request of this binding failed for good: its sequence has a hole.
    broken: bool = False
    #: Requests formed at or after this order were never appended (an OutOfOrderSequence
    #: answer to a request sent alone proved it): they may move to a new binding.
    unappended_from: int | None = None


@attrs.define(eq=False)
class Request(Generic[P]):
    """One produce request of a partition, from its formation to its last answer."""

    order: int  # formation order within the partition
    batch_counts: tuple[int, ...]  # records per batch
    payload: P  # the producer's: records, futures, encoded batches
    binding: Binding | None = None  # None: not idempotent
    base_sequences: tuple[int, ...] = ()  # one per batch, with a binding
    attempts: int = 0  # retriable failures so far
    #: After this time (the producer's clock) a retriable failure fails the request for good:
    #: the delivery timeout from its formation has passed.
    deadline: float = math.inf
    #: Sent while an earlier request was unanswered: an OutOfOrderSequence answer is
    #: explained by that one.
    behind: bool = False
    error: SentinelError | None = None  # the last failure


class PartitionSequencer(Generic[P]):
    """The send order and the idempotence bookkeeping of one partition (see the module
    docstring). The caller forms requests when ``room()`` allows, sends again what
    ``next_retry()`` returns, binds when ``needs_binding()``, and reports every answer."""

    def __init__(self, *, idempotent: bool, retries: int, delivery_timeout: float = math.inf) -> None:
        self.idempotent = idempotent
        self.retries = retries
        #: How long a request is retried after it is formed, and how long the partition may
        #: fail (retriable failures with no success between them) before a failure is final
        #: for every request: behind a partition that stays down, what is queued fails at its
        #: first attempt instead of each request waiting the whole timeout in turn.
        self.delivery_timeout = delivery_timeout
        #: When the partition's current run of retriable failures began; None after a success.
        self.failing_since: float | None = None
        self.binding: Binding | None = None
        self.in_flight: list[Request[P]] = []
        self.waiting: list[Request[P]] = []
        self._next_order = 0

    # -- what may be sent --------------------------------------------------------------------

    def room(self) -> int:
        """How many batches a new request may carry now; 0: form none now."""
        if self.waiting:
            return 0
        if not self.idempotent:
            return 0 if self.in_flight else UNLIMITED
        binding = self.binding
        in_flight = self.in_flight
        if binding is None or binding.broken or (in_flight and not binding.acknowledged):
            return 0
        if len(in_flight) >= MAX_IN_FLIGHT_REQUESTS:
            return 0
        left = MAX_IN_FLIGHT_BATCHES - sum(len(r.batch_counts) for r in in_flight)
        return min(left, MAX_BATCHES_PER_REQUEST)

    def needs_binding(self) -> bool:
        """Nothing can go before a new binding (``bind``): there is none yet, or the current
        one is broken and none of its requests flies, and what goes next needs one."""
        if not self.idempotent or self.in_flight:
            return False
        if self.waiting and not self._moves(self.waiting[0]):
            return False
        return self.binding is None or self.binding.broken

    def bind(self, producer_id: int, producer_epoch: int) -> None:
        assert self.needs_binding()
        self.binding = Binding(producer_id, producer_epoch, FIRST_SEQUENCE)

    def form(self, batch_counts: Sequence[int], payload: P, *, now: float = 0.0) -> Request[P]:
        """A new request of ``batch_counts`` records per batch, formed at time ``now`` and
        sent at once: its batches take the next sequence numbers."""
        if not 0 < len(batch_counts) <= self.room():
            raise AssertionError(f"{len(batch_counts)} batches formed with room for {self.room()}")
        request = Request(
            self._next_order,
            tuple(batch_counts),
            payload,
            deadline=now + self.delivery_timeout,
            behind=bool(self.in_flight),
        )
        self._next_order += 1
        self._number(request)
        self.in_flight.append(request)
        return request

    def next_retry(self) -> Request[P] | None:
        """The request to send again now (the oldest waiting, once nothing flies)."""
        return self.waiting[0] if self.waiting and not self.in_flight else None

    def resend(self, request: Request[P]) -> bool:
        """``next_retry()`` goes again, alone. True when it moved to the current binding
        (new sequence numbers: the caller re-stamps its batches)."""
        assert self.waiting and self.waiting[0] is request and not self.in_flight
        del self.waiting[0]
        moved = self._moves(request)
        if moved:
            assert self.binding is not None and not self.binding.broken
            self._number(request)
        request.behind = False
        self.in_flight.append(request)
        return moved

    def drop(self, request: Request[P]) -> None:
        """Give up ``next_retry()`` without sending it (it could not get a new binding)."""
        assert self.waiting and self.waiting[0] is request
        del self.waiting[0]

    # -- answers -----------------------------------------------------------------------------

    def succeeded(self, request: Request[P]) -> None:
        self.in_flight.remove(request)
        self.failing_since = None
        if request.binding is not None:
            request.binding.acknowledged = True

    def failed(self, request: Request[P], error: SentinelError, *, now: float = 0.0) -> bool:
        """The request failed with ``error`` at time ``now``: True if it will be sent again
        (it waits its turn), False if it failed for good (fail its records with ``error``).
        A retriable error is retried ``retries`` times, and not once the request's
        ``deadline`` has passed or the partition has failed for ``delivery_timeout``."""
        self.in_flight.remove(request)
        request.error = error
        binding = request.binding
        if binding is not None and isinstance(error, OutOfOrderSequence):
            if request.behind:
                self._wait(request)  # explained by the earlier request: try again after it
                return True
            # Sent alone: neither this request nor any later one of its binding was appended.
            explained = binding.broken
            binding.broken = True
            if binding.unappended_from is None or request.order < binding.unappended_from:
                binding.unappended_from = request.order
            if explained:  # the hole an earlier failure left: move on to a new binding
                self._wait(request)
                return True
            return False
        if is_retriable(error):
            if self.failing_since is None:
                self.failing_since = now  # a run of failures begins
            give_up_at = min(request.deadline, self.failing_since + self.delivery_timeout)
            if request.attempts < self.retries and now < give_up_at:
                request.attempts += 1
                self._wait(request)
                return True
        if binding is not None:
            binding.broken = True
        return False

    # -- internals ---------------------------------------------------------------------------

    def _moves(self, request: Request[P]) -> bool:
        """The request goes again under a new binding: its own was proven not to have it."""
        binding = request.binding
        return (
            binding is not None
            and binding.unappended_from is not None
            and request.order >= binding.unappended_from
        )

    def _number(self, request: Request[P]) -> None:
        binding = self.binding
        if not self.idempotent:
            return
        assert binding is not None
        sequence = binding.next_sequence
        bases = []
        for count in request.batch_counts:
            bases.append(sequence)
            sequence = (sequence + count) % SEQUENCE_SPACE
        binding.next_sequence = sequence
        request.binding = binding
        request.base_sequences = tuple(bases)

    def _wait(self, request: Request[P]) -> None:
        waiting = self.waiting
        index = len(waiting)
        while index and waiting[index - 1].order > request.order:
            index -= 1
        waiting.insert(index, request)
