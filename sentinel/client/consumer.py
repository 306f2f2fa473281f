"""The asyncio consumer: reads partitions by offset, alone or as a consumer-group member.

Shape (mirrors aiokafka): ``async with Consumer("host:port", group_id="g") as consumer``,
then ``consumer.subscribe(["topic"])`` (group member) or ``consumer.assign([...])``
(manual), then ``await consumer.getmany(timeout_ms=...)`` or ``async for record in consumer``.

How it works:

- **Fetching.** Unary ``Fetch`` long polls (``fetch_max_wait_ms``), each answer buffered
  until the application takes it. Fetches are pipelined, two per partition: each answer's
  fetch starts the moment the answer before it arrives (that answer says where it ends),
  so the broker reads and sends the next answers while the application handles this one
  (at most three answers per partition are held: ``fetch_max_bytes`` each). At the end of
  the log one long poll waits at a time. Records are decoded just ahead of the application
  (``sentinel.client.fetching``). Records before the requested offset in the first
  returned batch (a batch is returned whole) are skipped.
- **Positions.** A partition's position is the offset of the next record the application
  will get. A new partition starts at the group's committed offset if there is one, else
  where ``auto_offset_reset`` says (ListOffsets); a fetch answered OUT_OF_RANGE resets by
  the policy. ``seek`` drops what was read ahead.
- **Groups.** JoinGroup returns the member id, the generation and the assignment; a
  heartbeat task keeps the session alive and flags a rebalance. The rebalance itself runs
  inside ``getmany`` on the application's task (like Kafka's ``poll``): commit (with
  auto-commit), ``on_partitions_revoked``, JoinGroup, ``on_partitions_assigned``. So
  auto-commit only ever commits records the application has finished with: it commits the
  positions at the start of a ``getmany``, when the records of the previous one are done.
- **Errors.** Retriable fetch errors back off and retry; anything else (an unknown topic:
  NotFound) is raised from ``getmany``. A broker that stops answering is logged once as a
  WARNING, and its return as an INFO (``sentinel.client.reachability``). Damaged stored
  data is never the caller's fault and never skipped: ``getmany`` returns every record
  before a batch that does not decode, then raises ``CorruptRecordBatch`` naming the
  topic, partition and offset (at once when it has nothing else to return, else on the
  next call, before anything else); the position stays at the damage, so it is met again
  until the application seeks past it.
  A DATA_LOSS answer (stored data missing, or damaged on the broker's disk) is raised as
  ``DataLoss`` naming the topic, partition and offset too, after every record before it.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Final, Self

from grpclib.const import Cardinality

from sentinel.client import fetching
from sentinel.client.connection import COORDINATOR_WAIT_S, LEADER_WAIT_S, Cluster, with_retries
from sentinel.client.errors import is_retriable
from sentinel.client.fetching import (
    Fetch,
    FetchAnswer,
    FetchResult,
    PartitionState,
    RecordIterator,
    ScannedAnswer,
    read_error,
    scan_answer,
)
from sentinel.client.group import GroupMembership
from sentinel.client.reachability import Reachability
from sentinel.client.types import (
    ConsumerRebalanceListener,
    ConsumerRecord,
    OffsetAndTimestamp,
    TopicPartition,
    call_listener,
)
from sentinel.errors import FailedPrecondition, InvalidArgument, NotFound, OffsetOutOfRange, SentinelError
from sentinel.generated.sentinel import v1 as pb

__all__ = ["Consumer"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_POLL_RECORDS: Final = 500  # Kafka's max.poll.records
DEFAULT_FETCH_MAX_BYTES: Final = 1024 * 1024  # per partition, like Kafka's max.partition.fetch.bytes
DEFAULT_FETCH_MAX_WAIT_MS: Final = 500  # Kafka's fetch.max.wait.ms
DEFAULT_REQUEST_TIMEOUT_MS: Final = 30_000
DEFAULT_RETRIES: Final = 5
DEFAULT_RETRY_BACKOFF_MS: Final = 100
# The longest long poll the broker accepts (ConsumeRequest.max_wait_ms): more is refused.
MAX_FETCH_WAIT_MS: Final = 30_000
UINT32_MAX: Final = 2**32 - 1
INT64_MAX: Final = 2**63 - 1  # offsets and timestamps are int64 on the wire
# The ``async for`` loop waits in slices of this long; any wake-up (data, rebalance, close)
# ends a slice early, so the value only bounds how long an idle loop sleeps per getmany.
_ITER_WAIT_MS: Final = 60_000
# FetchOffsets answers -1 for a partition without a committed offset.
_NO_OFFSET: Final = -1

_RESET_POLICIES: Final = ("latest", "earliest", "none")
# The Fetch RPC's route (SentinelStub.fetch's): the consumer calls it with its own reply type.
_FETCH_ROUTE: Final = "/sentinel.v1.Sentinel/Fetch"
_POLICY_SPEC: Final = {"latest": pb.OffsetSpec.LATEST, "earliest": pb.OffsetSpec.EARLIEST}


class _State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


# ``_State.OPEN`` as a plain global: an enum member looked up through its class costs more
# than a global look-up (``_chain_fetch`` runs once per answer).
_OPEN: Final = _State.OPEN


class Consumer:
    """Reads records from Sentinel; see the module docstring."""

    def __init__(
        self,
        bootstrap: str,
        *,
        group_id: str | None = None,
        auto_offset_reset: str = "latest",
        enable_auto_commit: bool = True,
        auto_commit_interval_ms: int = 5000,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3000,
        max_poll_records: int = DEFAULT_MAX_POLL_RECORDS,
        fetch_max_bytes: int = DEFAULT_FETCH_MAX_BYTES,
        fetch_max_wait_ms: int = DEFAULT_FETCH_MAX_WAIT_MS,
        request_timeout_ms: int = DEFAULT_REQUEST_TIMEOUT_MS,
        retries: int = DEFAULT_RETRIES,
        retry_backoff_ms: float = DEFAULT_RETRY_BACKOFF_MS,
        client_id: str = "sentinel-consumer",
    ) -> None:
        if auto_offset_reset not in _RESET_POLICIES:
            raise InvalidArgument(
                f"auto_offset_reset must be one of {_RESET_POLICIES}, got {auto_offset_reset!r}"
            )
        if group_id is not None and (not isinstance(group_id, str) or not group_id):
            raise InvalidArgument(f"group_id must be a non-empty string or None, got {group_id!r}")
        for name, value in (
            ("auto_commit_interval_ms", auto_commit_interval_ms),
            ("heartbeat_interval_ms", heartbeat_interval_ms),
            ("max_poll_records", max_poll_records),
            ("request_timeout_ms", request_timeout_ms),
        ):
            if type(value) is not int or value <= 0:
                raise InvalidArgument(f"{name} must be an int > 0, got {value!r}")
        # Values sent on the wire are bounded by the broker's limit or the field's width:
        # protobuf would wrap a larger one into another value, and the broker refuses a
        # fetch that asks to wait longer (every fetch would fail).
        for name, value, low, high in (
            ("session_timeout_ms", session_timeout_ms, 1, UINT32_MAX),
            ("fetch_max_bytes", fetch_max_bytes, 1, UINT32_MAX),
            ("fetch_max_wait_ms", fetch_max_wait_ms, 0, MAX_FETCH_WAIT_MS),
        ):
            if type(value) is not int or not low <= value <= high:
                raise InvalidArgument(f"{name} must be an int from {low} to {high}, got {value!r}")
        if type(retries) is not int or retries < 0:
            raise InvalidArgument(f"retries must be an int >= 0, got {retries!r}")
        if not isinstance(retry_backoff_ms, int | float) or not retry_backoff_ms >= 0:
            raise InvalidArgument(f"retry_backoff_ms must be a number >= 0, got {retry_backoff_ms!r}")
        self._bootstrap = bootstrap
        self.group_id = group_id
        self.client_id = client_id
        self._auto_offset_reset = auto_offset_reset
        self._auto_commit = enable_auto_commit and group_id is not None
        self._auto_commit_interval_s = auto_commit_interval_ms / 1000
        self._session_timeout_ms = session_timeout_ms
        self._heartbeat_interval_ms = heartbeat_interval_ms
        self._max_poll_records = max_poll_records
        self._fetch_max_bytes = fetch_max_bytes
        self._fetch_max_wait_ms = fetch_max_wait_ms
        self._request_timeout_s = request_timeout_ms / 1000
        self._retries = retries
        self._backoff_s = retry_backoff_ms / 1000
        self._cluster: Cluster | None = None
        # Reports a broker that stops answering (once, as a WARNING) and its return: fetches
        # retry without end, so nothing else would say so.
        self._reachability = Reachability(threshold=retries + 1)
        self._group: GroupMembership | None = None
        self._subscription: tuple[str, ...] | None = None
        self._listener: ConsumerRebalanceListener | None = None
        self._states: dict[TopicPartition, PartitionState] = {}
        self._order: list[PartitionState] = []  # assignment order, rotated for fairness
        self._rotation = 0
        self._waiter: asyncio.Future[None] | None = None
        self._next_auto_commit = 0.0
        self._last_committed: dict[TopicPartition, int] = {}
        self._stale_topics: set[str] = set()
        # The partition the last ``async for`` record came from, where the next step looks
        # first (``sentinel.client.partition``); None unless the consumer is open.
        self._iter_state: PartitionState | None = None
        self._state = _State.NEW

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and fetch the cluster metadata (fails fast on a wrong address)."""
        if self._state is not _State.NEW:
            raise FailedPrecondition(f"consumer is {self._state.value}; start() runs once")
        cluster = Cluster(self._bootstrap, request_timeout_s=self._request_timeout_s, allow_auto_create=True)
        try:
            await with_retries(cluster.fetch_metadata, retries=self._retries, backoff_s=self._backoff_s)
        except BaseException:
            cluster.close()
            raise
        self._cluster = cluster
        self._next_auto_commit = time.monotonic() + self._auto_commit_interval_s
        self._state = _State.OPEN

    async def close(self) -> None:
        """Commit (with auto-commit), leave the group, disconnect. Idempotent."""
        if self._state is not _State.OPEN:
            self._state = _State.CLOSED
            return
        self._state = _State.CLOSED
        self._iter_state = None  # the async for fast path stops here
        self._wake()  # a getmany waiting in another task raises FailedPrecondition
        group = self._group
        try:
            if self._auto_commit:
                await self._commit_quietly()
            if group is not None and group.joined and self._listener is not None:
                revoked = frozenset(self._states)
                self._set_assignment(())
                await call_listener(self._listener.on_partitions_revoked, revoked)
        finally:
            self._group = None
            try:
                if group is not None:
                    await group.leave()
            finally:
                self._set_assignment(())
                assert self._cluster is not None
                self._cluster.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _check_open(self) -> Cluster:
        if self._state is not _State.OPEN:
            raise FailedPrecondition(
                "consumer is not started" if self._state is _State.NEW else "consumer is closed"
            )
        assert self._cluster is not None
        return self._cluster

    # -- assignment ------------------------------------------------------------------------

    def subscribe(self, topics: Iterable[str], listener: ConsumerRebalanceListener | None = None) -> None:
        """Consume ``topics`` as a member of ``group_id``; the group assigns the partitions.

        Joining happens in the next ``getmany`` (or ``async for`` step).
        """
        self._check_open()
        if self.group_id is None:
            raise FailedPrecondition("subscribe() needs a group_id; use assign() to read without a group")
        if self._subscription is None and self._states:
            raise FailedPrecondition(
                "the consumer has a manual assignment; subscribe() and assign() do not mix"
            )
        names = tuple(sorted(set(topics)))
        if not names or not all(isinstance(t, str) and t for t in names):
            raise InvalidArgument(f"subscribe() needs one or more topic names, got {names!r}")
        self._subscription = names
        self._listener = listener
        if self._group is None:
            assert self._cluster is not None
            self._group = GroupMembership(
                self._cluster,
                self.group_id,
                client_id=self.client_id,
                session_timeout_ms=self._session_timeout_ms,
                heartbeat_interval_ms=self._heartbeat_interval_ms,
                retries=self._retries,
                backoff_s=self._backoff_s,
                on_rejoin_needed=self._wake,
                reachability=self._reachability,
            )
        self._group.request_rejoin()

    async def unsubscribe(self) -> None:
        """Stop consuming the subscription: commit (with auto-commit), revoke, leave the group."""
        self._check_open()
        if self._subscription is None:
            return
        if self._auto_commit:
            await self._commit_quietly()
        revoked = frozenset(self._states)
        self._set_assignment(())
        self._subscription = None
        group, self._group = self._group, None
        if group is not None:
            await group.leave()
        if self._listener is not None and revoked:
            await call_listener(self._listener.on_partitions_revoked, revoked)

    def assign(self, partitions: Iterable[TopicPartition | tuple[str, int]]) -> None:
        """Read exactly ``partitions`` (no group membership); positions of partitions that
        stay assigned are kept."""
        self._check_open()
        if self._subscription is not None:
            raise FailedPrecondition("the consumer is subscribed; subscribe() and assign() do not mix")
        tps = []
        for item in partitions:
            topic, partition = item
            if not isinstance(topic, str) or not topic or type(partition) is not int or partition < 0:
                raise InvalidArgument(f"a partition to assign is (topic, partition >= 0), got {item!r}")
            tps.append(TopicPartition(topic, partition))
        self._set_assignment(tps)

    def assignment(self) -> frozenset[TopicPartition]:
        return frozenset(self._states)

    def _set_assignment(self, tps: Iterable[TopicPartition]) -> None:
        old = self._states
        new: dict[TopicPartition, PartitionState] = {}
        for tp in tps:
            state = old.get(tp)
            new[tp] = state if state is not None else fetching.partition.PartitionState(tp)
        for tp, state in old.items():
            if tp not in new:
                state.reset(None)
        self._states = new
        self._order = list(new.values())
        self._iter_state = None
        self._wake()

    def _state_of(self, tp: TopicPartition | tuple[str, int]) -> PartitionState:
        state = self._states.get(TopicPartition(*tp))
        if state is None:
            raise FailedPrecondition(f"partition {tp[0]}[{tp[1]}] is not assigned to this consumer")
        return state

    # -- positions -------------------------------------------------------------------------

    def seek(self, tp: TopicPartition | tuple[str, int], offset: int) -> None:
        """Make ``offset`` the next offset returned for ``tp`` (drops records read ahead)."""
        self._check_open()
        if type(offset) is not int or not 0 <= offset <= INT64_MAX:
            raise InvalidArgument(f"offset must be an int from 0 to {INT64_MAX}, got {offset!r}")
        state = self._state_of(tp)
        state.reset(offset)
        if self._iter_state is state:
            self._iter_state = None
        self._wake()

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        """Seek to the log start offset of ``partitions`` (default: the whole assignment)."""
        offsets = await self.beginning_offsets(partitions or tuple(self._states))
        for tp, offset in offsets.items():
            self.seek(tp, offset)

    async def seek_to_end(self, *partitions: TopicPartition) -> None:
        """Seek to the high watermark of ``partitions`` (default: the whole assignment)."""
        offsets = await self.end_offsets(partitions or tuple(self._states))
        for tp, offset in offsets.items():
            self.seek(tp, offset)

    async def position(self, tp: TopicPartition | tuple[str, int]) -> int:
        """The offset of the next record ``getmany`` will return for ``tp``."""
        self._check_open()
        state = self._state_of(tp)
        if state.position is None:
            await self._reset_positions([state])
        if state.position is None:  # reassigned or reset meanwhile
            raise FailedPrecondition(
                f"partition {tp[0]}[{tp[1]}] has no position: it was reassigned or reset"
            )
        return state.position

    def highwater(self, tp: TopicPartition | tuple[str, int]) -> int | None:
        """The high watermark the last fetch of ``tp`` reported; None before the first fetch."""
        return self._state_of(tp).high_watermark

    async def beginning_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return await self._list_offsets(partitions, pb.OffsetSpec.EARLIEST)

    async def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return await self._list_offsets(partitions, pb.OffsetSpec.LATEST)

    async def offsets_for_times(
        self, timestamps: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, OffsetAndTimestamp | None]:
        """For each partition, the first offset whose record timestamp is >= the timestamp
        given (ms); None when no such record exists."""
        self._check_open()
        items = [(TopicPartition(*tp), ts) for tp, ts in timestamps.items()]
        for tp, ts in items:
            if type(ts) is not int or not 0 <= ts <= INT64_MAX:
                raise InvalidArgument(
                    f"timestamp for {tp.topic}[{tp.partition}] must be an int from 0 to {INT64_MAX}, "
                    f"got {ts!r}"
                )
        answers = await asyncio.gather(
            *(self._list_offset(tp, pb.OffsetSpec.TIMESTAMP, ts) for tp, ts in items)
        )
        return {
            tp: (OffsetAndTimestamp(a.offset, a.timestamp_ms) if a.timestamp_ms >= 0 else None)
            for (tp, _), a in zip(items, answers, strict=True)
        }

    async def _list_offsets(
        self, partitions: Iterable[TopicPartition], spec: pb.OffsetSpec
    ) -> dict[TopicPartition, int]:
        self._check_open()
        tps = [TopicPartition(*tp) for tp in partitions]
        answers = await asyncio.gather(*(self._list_offset(tp, spec) for tp in tps))
        return {tp: a.offset for tp, a in zip(tps, answers, strict=True)}

    async def _list_offset(
        self, tp: TopicPartition, spec: pb.OffsetSpec, timestamp_ms: int = 0
    ) -> pb.ListOffsetsResponse:
        cluster = self._check_open()
        request = pb.ListOffsetsRequest(
            topic=tp.topic, partition=tp.partition, spec=spec, timestamp_ms=timestamp_ms
        )

        async def call() -> pb.ListOffsetsResponse:
            conn = cluster.leader(tp)
            with self._reachability.watch(conn.address), conn.errors:
                return await conn.stub.list_offsets(request, timeout=self._request_timeout_s)

        return await with_retries(
            call,
            retries=self._retries,
            backoff_s=self._backoff_s,
            on_retry=self._refresh_on_retry(tp.topic),
            at_least_s=LEADER_WAIT_S,
        )

    def _refresh_on_retry(self, topic: str) -> Callable[[SentinelError], Awaitable[None]]:
        async def refresh(_: SentinelError) -> None:
            assert self._cluster is not None
            await self._cluster.refresh_quietly([topic])

        return refresh

    async def _reset_positions(self, states: list[PartitionState]) -> None:
        """Give every state without a position one: the committed offset, else the policy."""
        need = [s for s in states if s.position is None]
        if not need:
            return
        lookup = [s for s in need if not s.reset_to_policy] if self.group_id is not None else []
        if lookup:
            committed = await self._fetch_committed([s.tp for s in lookup])
            for s in lookup:
                offset = committed.get(s.tp)
                if offset is not None and s.position is None and self._states.get(s.tp) is s:
                    s.position = offset
        rest = [s for s in need if s.position is None]
        if not rest:
            return
        if self._auto_offset_reset == "none":
            names = ", ".join(f"{s.tp.topic}[{s.tp.partition}]" for s in rest)
            raise FailedPrecondition(f"no committed offset for {names} and auto_offset_reset is 'none'")
        spec = _POLICY_SPEC[self._auto_offset_reset]
        answers = await asyncio.gather(*(self._list_offset(s.tp, spec) for s in rest))
        for s, answer in zip(rest, answers, strict=True):
            if s.position is None and self._states.get(s.tp) is s:
                s.position = answer.offset
                s.reset_to_policy = False

    # -- commits ---------------------------------------------------------------------------

    async def committed(self, tp: TopicPartition | tuple[str, int]) -> int | None:
        """The group's committed offset for ``tp``; None when nothing is committed."""
        self._check_open()
        tp = TopicPartition(*tp)
        return (await self._fetch_committed([tp])).get(tp)

    async def _fetch_committed(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        cluster = self._check_open()
        if self.group_id is None:
            raise FailedPrecondition("committed offsets belong to a group: this consumer has no group_id")
        request = pb.FetchOffsetsRequest(
            group_id=self.group_id, partitions=[pb.TopicPartition(topic=t, partition=p) for t, p in tps]
        )

        async def call() -> pb.FetchOffsetsResponse:
            with cluster.to_coordinator() as conn, self._reachability.watch(conn.address), conn.errors:
                return await conn.stub.fetch_offsets(request, timeout=self._request_timeout_s)

        response = await with_retries(
            call, retries=self._retries, backoff_s=self._backoff_s, at_least_s=COORDINATOR_WAIT_S
        )
        return {
            TopicPartition(o.topic, o.partition): o.offset for o in response.offsets if o.offset != _NO_OFFSET
        }

    async def commit(self, offsets: Mapping[TopicPartition, int | tuple[int, str]] | None = None) -> None:
        """Commit ``offsets`` (the next offset to read, per partition; optionally with a
        metadata string), or the current positions of the whole assignment.

        A member whose generation is stale gets FailedPrecondition (and re-joins on the next
        ``getmany``); a consumer with a manual assignment commits as generation -1. While the
        group's coordinator cannot be found (it moves with the controller leader) the commit
        keeps trying for ``COORDINATOR_WAIT_S`` seconds, whatever ``retries`` says.
        """
        self._check_open()
        await self._commit(offsets, wait_s=COORDINATOR_WAIT_S)

    async def _commit(
        self, offsets: Mapping[TopicPartition, int | tuple[int, str]] | None, *, wait_s: float = 0.0
    ) -> None:
        cluster = self._cluster
        assert cluster is not None
        if self.group_id is None:
            raise FailedPrecondition("commit() needs a group_id")
        if offsets is None:
            offsets = {tp: s.position for tp, s in self._states.items() if s.position is not None}
        entries: list[pb.PartitionOffset] = []
        plain: dict[TopicPartition, int] = {}
        for tp, value in offsets.items():
            offset, metadata = (value, "") if isinstance(value, int) else value
            if type(offset) is not int or not 0 <= offset <= INT64_MAX or not isinstance(metadata, str):
                raise InvalidArgument(
                    f"commit offset for {tp} must be an int from 0 to {INT64_MAX} (and a str), got {value!r}"
                )
            topic, partition = tp
            entries.append(
                pb.PartitionOffset(topic=topic, partition=partition, offset=offset, metadata=metadata)
            )
            plain[TopicPartition(topic, partition)] = offset
        if not entries:
            return
        group = self._group
        if group is not None and group.joined:
            member_id, generation = group.member_id, group.generation
        else:
            member_id, generation = "", -1
        request = pb.CommitOffsetsRequest(
            group_id=self.group_id, member_id=member_id, generation=generation, offsets=entries
        )

        async def call() -> None:
            with cluster.to_coordinator() as conn, self._reachability.watch(conn.address), conn.errors:
                await conn.stub.commit_offsets(request, timeout=self._request_timeout_s)

        try:
            await with_retries(call, retries=self._retries, backoff_s=self._backoff_s, at_least_s=wait_s)
        except FailedPrecondition:
            if group is not None:
                group.request_rejoin()
            raise
        self._last_committed.update(plain)

    async def _commit_quietly(self) -> None:
        """Auto-commit: commit changed positions; a failure is logged, not raised (the
        records will be delivered again, which at-least-once allows)."""
        offsets = {
            tp: s.position
            for tp, s in self._states.items()
            if s.position is not None and self._last_committed.get(tp) != s.position
        }
        if not offsets:
            return
        try:
            # ``retries`` alone: an auto-commit does not hold getmany up through a
            # coordinator failover; the next one commits the positions then.
            await self._commit(offsets)
        except FailedPrecondition as exc:
            # The member must re-join (a rebalance, or a restarted coordinator forgot it): the
            # re-join follows at once, and what was not committed is delivered again. Group
            # life, not a fault: a WARNING here repeated after every broker restart.
            logger.info("auto-commit of group %s refused: %s; re-joining", self.group_id, exc)
        except SentinelError as exc:
            logger.warning("auto-commit of group %s failed: %s", self.group_id, exc)

    # -- polling ---------------------------------------------------------------------------

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: float = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord]]:
        """Records from the assignment (or only from ``partitions``): returns as soon as any
        are available, or an empty dict after ``timeout_ms``. At most ``max_records`` (default
        ``max_poll_records``) records in all."""
        limit = self._max_poll_records if max_records is None else max_records
        if type(limit) is not int or limit <= 0:
            raise InvalidArgument(f"max_records must be an int > 0, got {max_records!r}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout_ms, 0) / 1000
        while True:
            cluster = self._check_open()
            self._waiter = loop.create_future()
            await self._coordinate()
            states = self._select(partitions)
            # An error kept back while records before it were returned goes first.
            self._raise_kept_error(states)
            self._collect(states)
            await self._reset_positions(states)
            result = self._drain(states, limit)
            if self._stale_topics:
                topics, self._stale_topics = self._stale_topics, set()
                await cluster.refresh_quietly(topics)
            self._start_fetches(states)
            if result:
                return result
            self._raise_kept_error(states)
            now = loop.time()
            remaining = deadline - now
            if remaining <= 0:
                return {}
            for s in states:
                if s.retry_at > now:
                    remaining = min(remaining, s.retry_at - now)
            waits: set[asyncio.Future[Any]] = {s.fetches[0].task for s in states if s.fetches}
            waits.add(self._waiter)
            await asyncio.wait(waits, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)

    def __aiter__(self) -> RecordIterator:
        """``async for record in consumer``: one record a step (``sentinel.client.partition``)."""
        iterator: RecordIterator = fetching.partition.RecordIterator(self)
        return iterator

    async def __anext__(self) -> ConsumerRecord:
        return await self.__aiter__().__anext__()

    async def _next_record(self) -> ConsumerRecord:
        """The ``async for`` step when the fast path cannot take it: a ``getmany`` of one
        record (bookkeeping first), whose partition the fast path continues with."""
        while True:
            if self._state is not _State.OPEN:
                raise StopAsyncIteration
            try:
                batch = await self.getmany(timeout_ms=_ITER_WAIT_MS, max_records=1)
            except FailedPrecondition:
                if self._state is not _State.OPEN:
                    raise StopAsyncIteration from None
                raise
            for tp, records in batch.items():
                # Only while open: close() clears it, and the fast path relies on that.
                self._iter_state = self._states.get(tp) if self._state is _State.OPEN else None
                return records[0]

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _coordinate(self) -> None:
        """Auto-commit when due, and run a rebalance when the group asks for one."""
        if self._auto_commit and time.monotonic() >= self._next_auto_commit:
            self._next_auto_commit = time.monotonic() + self._auto_commit_interval_s
            await self._commit_quietly()
        group = self._group
        if group is None or self._subscription is None:
            return
        while group.rejoin_needed and self._state is _State.OPEN:
            if group.joined:
                if self._auto_commit:
                    await self._commit_quietly()
                revoked = frozenset(self._states)
                self._set_assignment(())
                if self._listener is not None:
                    await call_listener(self._listener.on_partitions_revoked, revoked)
            assignment = await group.join(self._subscription)
            self._set_assignment(assignment)
            if self._listener is not None:
                await call_listener(self._listener.on_partitions_assigned, frozenset(assignment))

    def _select(self, partitions: tuple[TopicPartition, ...]) -> list[PartitionState]:
        if partitions:
            return [self._state_of(tp) for tp in partitions]
        order = self._order
        if len(order) > 1:
            # Start each poll at the next partition, so one busy partition cannot starve the others.
            self._rotation = (self._rotation + 1) % len(order)
            return order[self._rotation :] + order[: self._rotation]
        return order

    def _collect(self, states: list[PartitionState]) -> None:
        """Take in finished fetches: buffer their records, or handle their errors."""
        for s in states:
            fetches = s.fetches
            if not fetches or not fetches[0].task.done() or s.buffered():
                continue  # a pipelined answer (or its error) waits until the buffer is empty
            offset, task = fetches.popleft()
            if task.cancelled():
                continue
            exc = task.exception()
            if offset != s.position or exc is not None:
                # Read from where the position no longer is (a seek, or damage before it),
                # or failed: what was chained after it reads from the wrong place.
                s.drop_fetches()
                if offset != s.position:
                    continue
            if exc is None:
                s.buffer(task.result())
            elif isinstance(exc, OffsetOutOfRange):
                if self._auto_offset_reset == "none":
                    raise exc
                logger.info(
                    "%s[%d]: %s; resetting to %s", s.tp.topic, s.tp.partition, exc, self._auto_offset_reset
                )
                s.reset(None, to_policy=True)
            elif is_retriable(exc):
                s.retry_at = asyncio.get_running_loop().time() + self._backoff_s
                self._stale_topics.add(s.tp.topic)
            else:
                if isinstance(exc, NotFound):
                    self._stale_topics.add(s.tp.topic)
                raise exc

    def _raise_kept_error(self, states: list[PartitionState]) -> None:
        for s in states:
            error = s.pop_error()
            if error is not None:
                raise error

    def _drain(self, states: list[PartitionState], limit: int) -> dict[TopicPartition, list[ConsumerRecord]]:
        result: dict[TopicPartition, list[ConsumerRecord]] = {}
        for s in states:
            if s.buffered():
                chunk = s.take(limit)  # empty when the next batch does not decode
                if chunk:
                    result[s.tp] = chunk
                    limit -= len(chunk)
                    if limit == 0:
                        break
        return result

    def _start_fetches(self, states: list[PartitionState]) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for s in states:
            if s.retry_at > now:
                continue
            offset = s.next_fetch_offset()
            while offset is not None:
                task = loop.create_task(self._fetch(s.tp, offset), name=f"fetch {s.tp}")
                # The next fetch starts the moment this one's answer is in (it says where
                # that answer ends), not when the application next calls getmany.
                task.add_done_callback(functools.partial(self._chain_fetch, s))
                s.fetches.append(Fetch(offset, task))
                offset = s.next_fetch_offset()

    def _chain_fetch(self, state: PartitionState, task: asyncio.Task[FetchResult]) -> None:
        """A fetch ended: start the one after it if the pipeline has room (a done callback:
        it runs on the event loop between steps of the application's task, like getmany)."""
        if not task.cancelled() and self._state is _OPEN and self._states.get(state.tp) is state:
            self._start_fetches([state])

    async def _fetch(self, tp: TopicPartition, offset: int) -> FetchResult:
        cluster = self._cluster
        assert cluster is not None
        conn = cluster.leader(tp)
        request = pb.ConsumeRequest(
            topic=tp.topic,
            partition=tp.partition,
            offset=offset,
            max_bytes=self._fetch_max_bytes,
            max_wait_ms=self._fetch_max_wait_ms,
        )
        timeout = self._request_timeout_s + self._fetch_max_wait_ms / 1000
        try:
            with self._reachability.watch(conn.address), conn.errors:
                # The generated stub's call, with the consumer's own reply type (FetchAnswer:
                # the batches are not copied out of the message).
                async with conn.channel.request(
                    _FETCH_ROUTE, Cardinality.UNARY_UNARY, pb.ConsumeRequest, FetchAnswer, timeout=timeout
                ) as stream:
                    await stream.send_message(request, end=True)
                    response = await stream.recv_message()
                    assert response is not None  # a unary call answers once or raises
        except SentinelError as exc:
            named = read_error(exc, tp, offset)
            if named is exc:
                raise
            raise named from None  # the broker's message is all there is to say
        data = response.record_batches
        scanned = scan_answer(tp, data, offset) if data else ScannedAnswer([])
        # Past damage the answer's next offset is not ours to take: the position stops at it.
        next_offset = response.next_offset if scanned.error is None else scanned.error_offset
        return FetchResult(offset, scanned.batches, next_offset, response.high_watermark, scanned.error)
