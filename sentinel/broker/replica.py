"""PartitionReplica: the one owner of a partition replica's state.

The actor owns the partition's Raft group (``RaftNode`` + ``LsmRaftStorage``), its offset
arithmetic (``PartitionCore``) and its idempotent-producer table. Produce, retention,
leadership transfer, ticks and inbound Raft messages reach it as messages of one typed
union; readers take the immutable ``ReplicaView`` it publishes (one attribute read) and
read record batches straight from the store, never past the view's high watermark.

The partition's Raft log is its log (``sentinel/raft/DESIGN.md``): the leader assigns a
batch's offsets when it proposes it (writing the base offset and its term, as Kafka's
partition leader epoch, into the header; neither is under the batch CRC), the batch is
stored once under its last offset, and the high watermark is the offset after the last
committed batch. So:

* acks=all is answered when the batch commits (a majority holds it durably), acks=1 when
  the leader's own write of it is durable, acks=0 at once;
* a leader serves produce only once an entry of its own term has committed
  (``leader_ready``): before that it does not know the committed prefix, nor the
  replicated producer table;
* the partition-state key (log end, log start, size) is written in the same atomic write
  as every Ready's entries, and the producer table with its applied index every
  ``PRODUCER_SNAPSHOT_EVERY`` entries: a restart reads a few keys and replays at most that
  many entries, never the whole log.
"""

from __future__ import annotations

import logging
import random
import struct
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, Final, assert_never

import attrs
import trio

from sentinel.actors import Actor, Reply, Request
from sentinel.broker import keys
from sentinel.broker.partition_core import BatchSpan, PartitionCore, batch_span
from sentinel.broker.producer_state import (
    NO_PRODUCER_ID,
    OutOfOrderSequence,
    ProducerStateTable,
    check_request,
    record_batch,
)
from sentinel.broker.reader import PartitionReader, ReadResult
from sentinel.cluster.group import (
    HandOff,
    Inbound,
    RaftObservers,
    RaftStats,
    Send,
    Tick,
    hand_off,
    handle_ready,
    raft_stats,
)
from sentinel.errors import (
    ActorClosed,
    CorruptionError,
    InvalidArgument,
    MailboxFull,
    SentinelError,
    Unavailable,
    WriteRefused,
)
from sentinel.raft.core import Config, NotLeader, ProposalDropped, RaftNode, Ready
from sentinel.raft.lsm_storage import LsmRaftStorage
from sentinel.raft.messages import NONE, Entry, Message, Role, Snapshot
from sentinel.raft.storage import LogUnavailable
from sentinel.records import RecordBatch
from sentinel.storage.store import Store

logger = logging.getLogger(__name__)
ACKS_NONE: Final = 0
ACKS_LEADER: Final = 1
ACKS_ALL: Final = -1
GROUP_SHIFT: Final = 32
# Applied entries between two writes of the producer table (what a restart replays at most).
PRODUCER_SNAPSHOT_EVERY: Final = 1000
_BATCH: Final = 256
# Bytes of entries read per step of a retention scan.
_SCAN_BYTES: Final = 4 * 1024 * 1024
_PRODUCERS = b"P"
_APPLIED = struct.Struct(">Q")
_SNAPSHOT = struct.Struct(">BQQ")  # version, log start offset, applied index; then producers
_SNAPSHOT_VERSION: Final = 1


def partition_group(topic_id: int, partition: int) -> int:
    """The Raft group id of a partition (group 0 is the controller; topic ids start at 1)."""
    return (topic_id << GROUP_SHIFT) | partition


def producers_key(topic_id: int, partition: int) -> bytes:
    return _PRODUCERS + struct.pack(">II", topic_id, partition)


class PartitionLayout:
    """A partition's batches live under its data keys (``keys.data_key``, by last offset):
    the key the fetch path seeks, so a batch is written once and read by offset."""

    def __init__(self, topic_id: int, partition: int) -> None:
        self.topic_id = topic_id
        self.partition = partition

    def place(self, data: bytes) -> bytes | None:
        span = batch_span(0, data)
        if span is None:
            return None
        return keys.data_key(self.topic_id, self.partition, span.end_offset - 1)


@attrs.frozen
class AppendResult:
    base_offset: int
    last_offset: int
    log_append_time_ms: int = -1  # records keep their create time


@attrs.frozen(eq=False)
class ReplicaView:
    """What readers of the partition see, published by the replica after every change."""

    topic: str
    partition: int
    leader: int  # node id, NONE (0) when unknown
    role: Role
    term: int
    leader_ready: bool
    log_start_offset: int
    high_watermark: int
    log_end_offset: int
    size_bytes: int
    closed: bool
    stats: RaftStats
    # Set (and replaced in the next view) when the high watermark moves or the replica
    # closes: a reader that found nothing waits on the event of the view it read.
    changed: trio.Event


@attrs.define(slots=True, eq=False)
class Produce(Request[AppendResult]):
    """From the produce handler: validated batches (records checked) to append."""

    batches: Sequence[RecordBatch]
    acks: int = ACKS_ALL


@attrs.define(slots=True, eq=False)
class TransferLeadership(Request[None]):
    """From an admin command or a graceful shutdown."""

    to: int


@attrs.define(slots=True, eq=False)
class ApplyRetention(Request[int]):
    """From the broker's retention pass: move the log start by the topic's retention (0
    disables either bound); answered with the number of records removed."""

    retention_ms: int
    retention_bytes: int
    now_ms: int


ReplicaMessage = Tick | Inbound | Produce | TransferLeadership | ApplyRetention | HandOff


@attrs.define(slots=True, eq=False)
class _Pending:
    """A produce request whose batches are proposed: answered at its last batch's index."""

    request: Produce
    term: int
    last_index: int
    result: AppendResult
    proposed_at: float = attrs.field(factory=time.perf_counter)


class PartitionReplica(Actor[ReplicaMessage]):
    mailbox_capacity = 4096

    def __init__(
        self,
        store: Store,
        *,
        topic: str,
        topic_id: int,
        partition: int,
        node_id: int,
        replicas: tuple[int, ...],
        send: Send,
        rng: random.Random | None = None,
        raft_config: Config | None = None,
        address_of: Callable[[int], str | None] = lambda _node: None,
        on_append: Callable[[int, int], None] | None = None,
        observers: RaftObservers | None = None,
        read_runner: ReadRunner | None = None,
    ) -> None:
        super().__init__(f"replica-{topic}-{partition}")
        self._read_runner: ReadRunner = read_runner or _inline
        self._observers = observers or RaftObservers()
        self.store = store
        self.topic = topic
        self.topic_id = topic_id
        self.partition = partition
        self.node_id = node_id
        self.group = partition_group(topic_id, partition)
        self._replicas = replicas
        self._transmit = send
        self._rng = rng or random.Random()
        self._raft_config = raft_config or Config(id=node_id, voters=replicas)
        self._address_of = address_of
        self._on_append = on_append
        self._state_key = keys.state_key(topic_id, partition)
        self._producers_key = producers_key(topic_id, partition)
        self._pending: dict[int, _Pending] = {}  # by the index of the request's last batch
        self._waiting_persist: list[_Pending] = []  # acks=1, answered once durable here
        # Proposals answered otherwise (acks 0/1, retries of in-flight batches): kept until
        # their index commits only to forget their in-flight batches then.
        self._pending_extra: list[_Pending] = []
        self._retention_requests: list[ApplyRetention] = []
        self._ticks = 0
        self._was_leading = False
        self._recovering = False
        # Requests proposed while leading wait this long (ticks) after leadership is lost
        # for the new leader to commit them; then they are answered as unknown.
        self._orphaned_until = 0
        self._damage_reported: CorruptionError | None = None
        self._changed = trio.Event()
        # Built in on_start (they read the store).
        self.storage: LsmRaftStorage
        self.node: RaftNode
        self.core: PartitionCore
        self.reader: PartitionReader
        self.producers = ProducerStateTable()
        self._producers_applied = self._producers_saved_at = 0
        # The leader's view for idempotence: the applied table plus what it proposed since
        # it became ready (None until then); and where each proposed batch sits.
        self._proposed: ProducerStateTable | None = None
        self._inflight_batches: dict[tuple[int, int, int, int], _Pending] = {}
        self.view = self._empty_view()

    # -- entry points for other tasks --------------------------------------------------

    def tick_nowait(self) -> None:
        self.cast_nowait(Tick())

    def deliver(self, message: Message) -> None:
        try:
            self.cast_nowait(Inbound(message))
        except (MailboxFull, ActorClosed):
            pass  # dropped like a lost packet (Raft retransmits), or the group is stopping

    async def produce(self, batches: Sequence[RecordBatch], acks: int = ACKS_ALL) -> AppendResult:
        return await self.call(Produce(batches, acks))

    def produce_nowait(self, batches: Sequence[RecordBatch], acks: int, reply: Reply[AppendResult]) -> bool:
        """Queue a produce answered through ``reply`` (the front end's fast path: no task
        waits for it here); False, having queued nothing, while the mailbox is full."""
        try:
            self.cast_nowait(Produce(batches, acks, reply=reply))
        except MailboxFull:
            return False
        return True

    async def transfer_leadership(self, to: int) -> None:
        await self.call(TransferLeadership(to))

    @property
    def recovering(self) -> bool:
        """Repairing lost state from its leader (not voting yet): read by the node."""
        return self._recovering

    @property
    def leading(self) -> bool:
        return self.view.role is Role.LEADER

    async def hand_off(self) -> int:
        """Transfer leadership to the best follower (graceful shutdown); its id, or 0."""
        return await self.call(HandOff())

    async def wait_not_leading(self) -> None:
        view = self.view
        while view.role is Role.LEADER and not view.closed:
            await view.changed.wait()
            view = self.view

    # -- reads (any task: the published view and the store) ------------------------------

    @property
    def high_watermark(self) -> int:
        return self.view.high_watermark

    @property
    def log_start_offset(self) -> int:
        return self.view.log_start_offset

    @property
    def log_end_offset(self) -> int:
        return self.view.log_end_offset

    @property
    def size_bytes(self) -> int:
        return self.view.size_bytes

    def check_leader(self) -> None:
        """Reads and writes go to the leader: anywhere else is UNAVAILABLE naming it."""
        view = self.view
        if view.role is not Role.LEADER:
            raise self._not_leader()

    def _check_readable(self) -> None:
        # A group of one has no other replica to be stale against: its committed data is
        # served even before it has elected itself again, which takes a write (a full disk).
        if len(self._replicas) > 1:
            self.check_leader()

    def read(self, offset: int, max_bytes: int) -> ReadResult:
        self._check_readable()
        return self.reader.read(offset, max_bytes)

    async def fetch(self, offset: int, max_bytes: int) -> ReadResult:
        """``read`` off the event loop: a read that reaches SSTables (cold data, a large
        fetch) runs in a bounded worker thread, so it never delays heartbeats, elections or
        the WAL writer. (The storage engine's views and tables are safe to read from
        threads: tables are immutable, the memtable skip list is read lock-free.)"""
        self._check_readable()
        return await self._read_runner(self.reader.read, offset, max_bytes)

    async def wait_for_data(self, offset: int) -> None:
        """Return once the high watermark is past ``offset``, the replica closed or it
        stopped leading (the caller then reads and learns which)."""
        view = self.view
        alone = len(self._replicas) == 1
        while view.high_watermark <= offset and not view.closed and (alone or view.role is Role.LEADER):
            await view.changed.wait()
            view = self.view

    async def offset_for_timestamp(self, timestamp_ms: int) -> tuple[int, int]:
        self._check_readable()
        return await self.reader.offset_for_timestamp(timestamp_ms)

    # -- start-up ------------------------------------------------------------------------

    async def on_start(self) -> None:
        store = self.store
        self.storage = storage = LsmRaftStorage(
            store, self.group, layout=PartitionLayout(self.topic_id, self.partition)
        )
        raw = store.get(self._state_key)
        source = f"state of {self.topic}[{self.partition}]"
        state = keys.PartitionState() if raw is None else keys.decode_state(raw, source)
        commit = storage.initial_state().commit
        tail = self._spans(storage.entries(commit + 1, storage.last_index() + 1, 1 << 62))
        self.core = PartitionCore(
            log_start_offset=state.log_start_offset,
            log_end_offset=state.next_offset,
            size_bytes=state.size_bytes,
            uncommitted=tail,
        )
        applied = storage.first_index() - 1
        raw_producers = store.get(self._producers_key)
        if raw_producers is not None:
            (applied,) = _APPLIED.unpack_from(raw_producers)
            self.producers = ProducerStateTable.decode(raw_producers[_APPLIED.size :])
        self._producers_applied = self._producers_saved_at = applied
        # Committed entries the producer table has not seen are applied now, not with the
        # first Ready: one the store lost (a frame missing from the WAL) is reported and
        # skipped, and reads refuse its offsets (DataLoss), instead of the group failing.
        for index in range(applied + 1, commit + 1):
            try:
                (entry,) = storage.entries(index, index + 1, 1 << 62)
            except LogUnavailable as exc:
                logger.error("%s[%d]: %s", self.topic, self.partition, exc)
                self._producers_applied = index
                continue
            self._apply(entry)
        self.node = RaftNode(
            attrs.evolve(self._raft_config, applied=max(applied, commit)), storage, self._rng
        )
        self.reader = PartitionReader(
            store,
            self.topic,
            self.topic_id,
            self.partition,
            lambda: (self.view.log_start_offset, self.view.high_watermark),
            disk_end=self.core.high_watermark,
        )
        if self._replicas[0] == self.node_id or len(self._replicas) == 1:
            # The preferred leader (or a group of one) campaigns at once: a new partition
            # needs no election timeout to get a leader. Pre-vote keeps this harmless when
            # another replica leads already.
            self.node.campaign()
        self._publish()

    def _spans(self, entries: Sequence[Entry]) -> list[BatchSpan]:
        spans = []
        for e in entries:
            span = batch_span(e.index, e.data)
            if span is not None:
                spans.append(span)
        return spans

    # -- the actor loop ------------------------------------------------------------------

    async def serve(self) -> None:
        node = self.node
        try:
            if len(self._replicas) == 1:  # a group of one elects itself now, not on the first tick
                while node.has_ready():
                    await self._handle_ready()
                self._publish()
            while True:
                batch = await self.receive_batch(_BATCH)
                if not batch:
                    break
                ticked = False
                for message in batch:
                    self._dispatch(message)
                    ticked = ticked or type(message) is Tick
                while node.has_ready():
                    await self._handle_ready()
                if ticked:
                    # A commit taken without a write (handle_ready) reaches the disk within
                    # a tick even when no other write carries it.
                    await self.storage.write_deferred()
                leading = node.role is Role.LEADER
                if self._was_leading and not leading:
                    self._after_leadership()
                self._was_leading = leading
                while self._retention_requests:
                    request = self._retention_requests.pop(0)
                    try:
                        request.reply.set(await self._retain(request))
                    except WriteRefused as exc:
                        request.reply.fail(exc)  # the next retention pass tries again
                self._in_flight = []
                self._publish()
        finally:
            for request in self._retention_requests:
                request.reply.fail(Unavailable("the replica stopped"))
            self._fail_all(Unavailable(f"the replica of {self.topic}[{self.partition}] stopped"))
            self.view = attrs.evolve(self.view, closed=True)
            self.view.changed.set()

    async def on_stop(self) -> None:
        try:
            await self.storage.write_deferred()  # queued ahead of the producer table's write
            await self._save_producers()
        except WriteRefused as exc:
            # Only a shortcut for the next start, which replays the entries since the last save.
            logger.warning("%s[%d]: producer table not saved at stop: %s", self.topic, self.partition, exc)

    def _dispatch(self, message: ReplicaMessage) -> None:
        node = self.node
        match message:
            case Tick():
                node.tick()
                self._ticks += 1
                if self._orphaned_until and self._ticks >= self._orphaned_until:
                    self._orphaned_until = 0
                    if self._pending or self._pending_extra:
                        # The new leader did not commit them in time (or we cannot hear it):
                        # their outcome is unknown here. Retriable; idempotent retries dedup.
                        self._fail_all(self._lost())
            case Inbound(message=m):
                node.step(m)
            case Produce():
                self._produce(message)
            case ApplyRetention():
                self._retention_requests.append(message)
            case HandOff():
                message.reply.set(hand_off(node))
            case TransferLeadership(to=to):
                try:
                    node.transfer_leadership(to)
                except NotLeader:
                    message.reply.fail(self._not_leader())
                except ValueError as exc:
                    message.reply.fail(InvalidArgument(str(exc)))
                else:
                    message.reply.set(None)
            case _:
                assert_never(message)

    # -- produce -------------------------------------------------------------------------

    def _produce(self, request: Produce) -> None:
        node = self.node
        if node.role is not Role.LEADER:
            request.reply.fail(self._not_leader())
            return
        if not node.leader_ready:
            request.reply.fail(
                Unavailable(f"the leader of {self.topic}[{self.partition}] is not ready yet (new term)")
            )
            return
        if not request.batches:
            request.reply.fail(InvalidArgument("a produce request needs at least one record batch"))
            return
        if any(batch.record_count <= 0 for batch in request.batches):
            # Valid on the wire (compaction can empty a batch), but it would own no offset.
            request.reply.fail(InvalidArgument("record batch holds no records"))
            return
        if self._proposed is None:
            # Leader-ready: everything in the log is applied, so the applied table is the
            # replicated truth this leader starts from.
            self._proposed = ProducerStateTable.decode(self.producers.encode())
        try:
            duplicate = self._find_duplicate(self._proposed, request.batches)
        except SentinelError as exc:
            request.reply.fail(exc)
            return
        if duplicate is not None:
            original, inflight = duplicate
            if inflight is None or request.acks == ACKS_NONE:
                request.reply.set(original)
            else:
                # The original is not committed yet: the retry is answered with it.
                waiter = _Pending(request, inflight.term, inflight.last_index, original)
                if request.acks == ACKS_LEADER:
                    self._waiting_persist.append(waiter)
                else:
                    self._pending.setdefault(inflight.last_index, waiter)
                    self._pending_extra.append(waiter)
            return
        core = self.core
        term = node.term
        base = offset = core.log_end_offset
        size = 0
        proposed: list[tuple[RecordBatch, BatchSpan]] = []
        try:
            for batch in request.batches:
                data = _assign(batch.data, offset, term)
                index = node.propose(data)
                span = BatchSpan(index, offset, offset + batch.last_offset_delta + 1, len(data))
                core.appended(index, [span])
                proposed.append((batch, span))
                offset = span.end_offset
                size += len(data)
        except ProposalDropped as exc:
            # Raised by the first proposal (a transfer refuses every proposal alike).
            request.reply.fail(Unavailable(f"{self.topic}[{self.partition}]: {exc}"))
            return
        result = AppendResult(base, offset - 1)
        pending = _Pending(request, term, proposed[-1][1].index, result)
        for batch, span in proposed:
            record_batch(self._proposed, batch, span.base_offset, span.end_offset - 1)
            if batch.producer_id != NO_PRODUCER_ID:
                self._inflight_batches[_batch_key(batch)] = pending
        if self._on_append is not None:
            self._on_append(offset - base, size)
        if request.acks == ACKS_NONE:
            request.reply.set(result)
            self._pending_extra.append(pending)  # tracked only to clear _inflight_batches
            return
        if request.acks == ACKS_LEADER:
            self._waiting_persist.append(pending)
            self._pending_extra.append(pending)
        else:
            self._pending[pending.last_index] = pending

    def _find_duplicate(
        self, table: ProducerStateTable, batches: Sequence[RecordBatch]
    ) -> tuple[AppendResult, _Pending | None] | None:
        """Idempotence: a request whose batches were all appended already (a retry) is
        answered with the originals' offsets — after they commit, if they have not yet; a
        gap or a step back is out of order. Raises for a request that mixes both."""
        try:
            originals = check_request(table, batches)
        except OutOfOrderSequence as exc:
            raise OutOfOrderSequence(f"{self.topic}[{self.partition}]: {exc}") from None
        if originals is None:
            return None
        inflight = self._inflight_batches.get(_batch_key(batches[-1]))
        return AppendResult(originals[0].base_offset, originals[-1].last_offset), inflight

    # -- handling a Ready ------------------------------------------------------------------

    def _before_persist(self, rd: Ready) -> list[tuple[bytes, bytes | None]]:
        """Follow the entries this Ready appends (a follower's from its leader, or a
        leader's own proposals again, which changes nothing) and write the partition state
        with them, in the same atomic write."""
        core = self.core
        if rd.snapshot is not None:
            core.restored(_decode_snapshot(rd.snapshot)[0])
        if rd.entries:
            core.appended(rd.entries[0].index, self._spans(rd.entries))
        if rd.entries or rd.snapshot is not None:
            state = keys.PartitionState(core.log_end_offset, core.log_start_offset, core.size_bytes)
            return [(self._state_key, keys.encode_state(state))]
        return []

    async def _handle_ready(self) -> None:
        node = self.node
        rd = await handle_ready(
            node,
            self.storage,
            self.group,
            self._transmit,
            self._before_persist,
            self._observers.persist,
            defer_commit=True,  # written with the next Ready, or on the next tick (serve)
        )
        if rd.snapshot is not None:
            _start, applied, producers = _decode_snapshot(rd.snapshot)
            self.producers = producers
            self._producers_applied = applied
        for entry in rd.committed_entries:
            if entry.index > self._producers_applied:
                self._apply(entry)
        node.advance(rd)
        self._after_ready()
        if self._producers_applied - self._producers_saved_at >= PRODUCER_SNAPSHOT_EVERY:
            await self._save_producers()

    def _apply(self, entry: Entry) -> None:
        """A committed entry, to the producer table (the replica's replicated state)."""
        span = batch_span(entry.index, entry.data)
        if span is not None:
            batch = RecordBatch(entry.data, verify_crc=False)
            record_batch(self.producers, batch, span.base_offset, span.end_offset - 1)
        self._producers_applied = entry.index

    def _after_ready(self) -> None:
        node, core = self.node, self.core
        committed = node.log.committed
        done = core.committed_to(committed)
        if done:
            for span in done:
                self.reader.indexed(span.base_offset, span.end_offset, span.max_timestamp, span.size)
            self._publish()
        if self._waiting_persist and node.role is Role.LEADER:
            durable = node.prs[self.node_id].match if node.prs else 0
            keep = []
            for pending in self._waiting_persist:
                if pending.last_index <= durable and pending.term == node.term:
                    pending.request.reply.set(pending.result)
                else:
                    keep.append(pending)
            self._waiting_persist = keep
        for index in [i for i in self._pending if i <= committed]:
            pending = self._pending.pop(index)
            if node.log.term_or_zero(index) == pending.term:
                self._observers.commit(time.perf_counter() - pending.proposed_at)
                pending.request.reply.set(pending.result)
            else:
                pending.request.reply.fail(self._lost())
            self._forget_inflight(pending)
        if self._pending_extra:
            keep = []
            for pending in self._pending_extra:
                if pending.last_index <= committed:
                    if node.log.term_or_zero(pending.last_index) == pending.term:
                        pending.request.reply.set(pending.result)  # a waiting retry (no-op if answered)
                    else:
                        pending.request.reply.fail(self._lost())
                    self._forget_inflight(pending)
                else:
                    keep.append(pending)
            self._pending_extra = keep
        if node.role is not Role.LEADER and (self._pending or self._pending_extra):
            self._drop_replaced()

    def _drop_replaced(self) -> None:
        """Requests whose entry is gone or replaced (a new leader's log won) are lost."""
        log = self.node.log
        for index, pending in list(self._pending.items()):
            if log.term_or_zero(index) != pending.term:
                pending.request.reply.fail(self._lost())
                del self._pending[index]
        keep = []
        for pending in self._pending_extra:
            if log.term_or_zero(pending.last_index) == pending.term:
                keep.append(pending)
            else:
                pending.request.reply.fail(self._lost())
        self._pending_extra = keep

    def _after_leadership(self) -> None:
        """Not (or no longer) the leader: what this node proposed still commits if the new
        leader's log kept it — those requests are answered as the commit index passes their
        entries; one whose entry is gone or replaced is answered as lost (retriable) now."""
        node = self.node
        if self._proposed is not None or self._pending or self._pending_extra:
            self._orphaned_until = self._ticks + 2 * node.config.election_tick
        self._proposed = None
        self._inflight_batches.clear()  # the new leader dedups from the applied table
        log = node.log
        if self._waiting_persist:
            # acks=1: the write is durable here if the entry is still ours and persisted.
            persisted = self.storage.last_index()
            for pending in self._waiting_persist:
                index = pending.last_index
                if index <= persisted and log.term_or_zero(index) == pending.term:
                    pending.request.reply.set(pending.result)
                else:
                    pending.request.reply.fail(self._not_leader())
            self._waiting_persist = []
        self._drop_replaced()

    def _forget_inflight(self, pending: _Pending) -> None:
        for batch in pending.request.batches:
            if self._inflight_batches.get(_batch_key(batch)) is pending:
                del self._inflight_batches[_batch_key(batch)]

    # -- retention ---------------------------------------------------------------------

    def _committed_spans(self) -> Iterator[BatchSpan]:
        """The committed batches from the log start, in order: first any written before this
        partition's data went through Raft (a single-node data directory from before: no
        Raft index, index 0), then the Raft log's. Raises CorruptionError where a damaged
        block holds the next batch, after yielding every batch before it."""
        core = self.core
        raft = self._raft_spans(self.storage.first_index(), self.node.log.committed)
        first_raft = next(raft, None)
        legacy_end = first_raft.base_offset if first_raft is not None else core.high_watermark
        if core.log_start_offset < legacy_end:
            begin = keys.data_key(self.topic_id, self.partition, core.log_start_offset)
            end = keys.data_key(self.topic_id, self.partition, legacy_end)
            for _key, value in self.store.scan(begin, end):
                span = batch_span(0, value)
                if span is not None:
                    yield span
        if first_raft is not None:
            yield first_raft
            yield from raft

    def _raft_spans(self, index: int, commit: int) -> Iterator[BatchSpan]:
        storage = self.storage
        while index <= commit:
            try:
                entries = storage.entries(index, commit + 1, _SCAN_BYTES)
            except CorruptionError:
                # Entry by entry up to the damaged one: what precedes it is still judged.
                entries = storage.entries(index, index + 1, 1)
            yield from self._spans(entries)
            index = entries[-1].index + 1

    async def _retain(self, request: ApplyRetention) -> int:
        core = self.core
        damage: list[CorruptionError] = []

        def up_to_damage(spans: Iterator[BatchSpan]) -> Iterator[BatchSpan]:
            try:
                yield from spans
            except CorruptionError as exc:
                damage.append(exc)

        plan = core.retention_plan(
            up_to_damage(self._committed_spans()),
            retention_ms=request.retention_ms,
            retention_bytes=request.retention_bytes,
            now_ms=request.now_ms,
        )
        if damage:
            # A damaged block holds what retention would look at next: its age and size
            # cannot be read, so it stays (with everything after it) until an operator acts.
            if self._damage_reported is None:
                stop = core.log_start_offset if plan is None else plan[0]
                logger.warning(
                    "retention of %s[%d] stops at offset %d: %s", self.topic, self.partition, stop, damage[0]
                )
            self._damage_reported = damage[0]
        if plan is None:
            return 0
        new_start, freed, index = plan
        removed = new_start - core.log_start_offset
        # Durable first: on a full disk (DiskFullError) nothing has moved.
        state = keys.PartitionState(core.log_end_offset, new_start, core.size_bytes - freed)
        await self.store.write([(self._state_key, keys.encode_state(state))])
        core.retained(new_start, freed)
        self.reader.pruned(new_start)
        if index >= self.storage.first_index():
            # The Raft log ends its front where the partition's does: a follower that needs
            # what was before gets a snapshot saying the partition starts at new_start.
            await self.storage.compact(
                index, encode_snapshot(new_start, self._producers_applied, self.producers)
            )
        self._publish()
        return removed

    async def _save_producers(self) -> None:
        applied = self._producers_applied
        value = _APPLIED.pack(applied) + self.producers.encode()
        await self.store.write([(self._producers_key, value)])
        self._producers_saved_at = applied

    def _fail_all(self, error: SentinelError) -> None:
        pending = list(self._pending.values()) + self._waiting_persist + self._pending_extra
        self._pending, self._waiting_persist, self._pending_extra = {}, [], []
        self._inflight_batches.clear()
        self._proposed = None
        for p in pending:
            p.request.reply.fail(error)

    def _lost(self) -> Unavailable:
        return Unavailable(
            f"{self.topic}[{self.partition}]: leadership changed before the batch committed; it was not "
            "appended (retry)"
        )

    def _not_leader(self) -> Unavailable:
        leader = self.node.lead
        if leader == NONE:
            return Unavailable(
                f"{self.topic}[{self.partition}] has no leader right now (election in progress)"
            )
        return Unavailable(
            f"node {self.node_id} is not the leader of {self.topic}[{self.partition}] "
            f"(leader: node {leader})",
            leader=self._address_of(leader),
        )

    # -- the published view ------------------------------------------------------------

    def _empty_view(self) -> ReplicaView:
        return ReplicaView(
            topic=self.topic,
            partition=self.partition,
            leader=NONE,
            role=Role.FOLLOWER,
            term=0,
            leader_ready=False,
            log_start_offset=0,
            high_watermark=0,
            log_end_offset=0,
            size_bytes=0,
            closed=False,
            stats=RaftStats(),
            changed=trio.Event(),
        )

    def _publish(self) -> None:
        node, core, old = self.node, self.core, self.view
        self._recovering = node.recovering
        fields = (
            node.lead,
            node.role,
            node.term,
            node.leader_ready,
            core.log_start_offset,
            core.high_watermark,
            core.log_end_offset,
            core.size_bytes,
        )
        stats = raft_stats(node, old.stats, old.leader)
        if stats == old.stats and fields == (
            old.leader,
            old.role,
            old.term,
            old.leader_ready,
            old.log_start_offset,
            old.high_watermark,
            old.log_end_offset,
            old.size_bytes,
        ):
            return
        self.view = ReplicaView(
            self.topic, self.partition, *fields, closed=False, stats=stats, changed=trio.Event()
        )
        old.changed.set()


ReadRunner = Callable[..., Awaitable[ReadResult]]


async def _inline(fn: Callable[..., ReadResult], *args: Any) -> ReadResult:
    """Run a read on the event loop (tests on MockClock, where threads would confuse autojump)."""
    await trio.lowlevel.checkpoint()
    return fn(*args)


def _batch_key(batch: RecordBatch) -> tuple[int, int, int, int]:
    first = batch.base_sequence
    return batch.producer_id, batch.producer_epoch, first, first + batch.last_offset_delta


def _assign(data: bytes, base_offset: int, term: int) -> bytes:
    """The batch with its base offset and partition leader epoch (the Raft term) written
    in: both precede the CRC-covered part of the header, so the CRC stays valid."""
    return struct.pack(">q", base_offset) + data[8:12] + struct.pack(">i", term & 0x7FFFFFFF) + data[16:]


def encode_snapshot(log_start_offset: int, applied: int, producers: ProducerStateTable) -> bytes:
    return _SNAPSHOT.pack(_SNAPSHOT_VERSION, log_start_offset, applied) + producers.encode()


def _decode_snapshot(snapshot: Snapshot) -> tuple[int, int, ProducerStateTable]:
    data = snapshot.data
    if len(data) < _SNAPSHOT.size or data[0] != _SNAPSHOT_VERSION:
        raise ValueError(f"partition snapshot at index {snapshot.index} is not valid ({len(data)} bytes)")
    _version, start, applied = _SNAPSHOT.unpack_from(data)
    return start, applied, ProducerStateTable.decode(data[_SNAPSHOT.size :])
