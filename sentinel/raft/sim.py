"""A deterministic simulation of whole clusters of pure Raft cores, and its checker.

One run is one seed. A cluster of 3 or 5 nodes hosts several Raft groups over the same
nodes; each node has a simulated disk (one ``MemoryStorage`` per group: the only state
that survives a crash) and the nodes talk over a simulated network. Everything random —
the fault mix, every fault, every latency, every node's election timer — comes from one
``random.Random(seed)``; there is no wall clock, no thread and no Trio, so a seed replays
exactly (``RunResult.trace_hash`` proves it, and ``trace=True`` prints the events).

Time is logical: a tick is ``STEPS_PER_TICK`` steps, messages take a random number of
steps, and each node ticks at its own offset within the tick. Faults, in the manner of
TigerBeetle's VOPR with its "swarm" options (RAFT-NOTES.md §5): per seed, each fault kind is
switched on or off and given a rate, so seeds differ in *which* faults dominate. The kinds:
message loss, duplication (up to half), reordering (random latency); partitions that heal
(symmetric, one-way, the leader isolated, a bridge node between two sides); node crashes
that lose whatever was not persisted — including a crash between taking a Ready and
persisting it (optionally torn: a prefix of its writes done, as the Ready contract allows),
and between persisting and advancing; a power loss of every node at once; "strikes" that
isolate or crash a leader the moment it is elected (leaving the conflicting uncommitted
tails Figure 8 is made of); pauses (a node that neither ticks nor processes for a while);
slow disks (a Ready whose persist or advance is late); leadership transfers; forced
campaigns; the transport reporting unreachable peers and failed snapshots; log compaction
(followers then need snapshots); proposals throughout, each with a unique payload. The
state machine is a running digest of the applied entries; a snapshot carries it.

Each node drives each of its groups exactly as core.py's docstring says: step the queued
inputs, take a Ready, send ``messages``, persist (snapshot, entries, hard state), send
``messages_after_persist``, apply, ``advance``. Inputs that arrive while a Ready is out are
queued.

Two phases: a safety phase under faults, then a liveness phase (heal everything, restart
every crashed node, stop the faults) in which every group must elect a leader and commit a
new proposal within ``LIVENESS_TIMEOUTS`` election timeouts (plus the round trips needed to
ship the backlog a slow configuration left), and every replica must then catch up within
``LIVENESS_TIMEOUTS`` election timeouts more (with the same allowance).

The checker (``SimViolation`` names the rule, the tick and the seed) asserts:

* election safety: at most one leader per term per group; a node's persisted vote never
  changes within a term (§5.2);
* durability promises: a vote grant or an append acknowledgement leaves a node only when
  its disk holds the vote or the entries (thesis §3.8);
* a committed entry never changes or disappears: every node's commit index is observed
  after every step and the entries up to it are recorded once per group; any later
  observation (on any node, any incarnation, any snapshot) must agree;
* leader completeness: a leader of term T holds every entry whose commit was observed at a
  term below T (§5.4); and, checked whenever a group's commit advances, no node state that
  lacks a committed entry (in memory, or on disk to restart from) is as up to date as a
  majority, i.e. could be elected and overwrite it — this catches Figure 8 at the unsafe
  commit itself;
* commit indices never go backwards within a node's life; the persisted commit never goes
  backwards, never points past the persisted log, and after a restart covers everything
  the node had applied;
* state machine safety: each node incarnation applies indices in order, without gaps or
  repeats, each equal to the recorded committed entry; an installed snapshot equals the
  committed state at its index; no proposal is committed twice;
* log matching: entries with the same index and term are preceded by the same log (§5.3),
  checked across the nodes of a group;
* at the end, every proposal reported committed (in a node's ``committed_entries`` at the
  index and term it was proposed with) is in every replica's log at that index.
"""

from __future__ import annotations

import hashlib
import heapq
import random
import struct
import traceback
from array import array
from collections.abc import Callable, Iterable
from typing import Any, Final

import attrs

from sentinel.raft.core import Config, NotLeader, ProposalDropped, RaftNode, Ready
from sentinel.raft.messages import NONE, Entry, HardState, Message, MsgType, Role, Snapshot, describe_message
from sentinel.raft.storage import MemoryStorage

__all__ = [
    "FAULT_KINDS",
    "LIVENESS_TIMEOUTS",
    "STEPS_PER_TICK",
    "NodeFactory",
    "RunResult",
    "SimViolation",
    "Simulation",
    "Swarm",
    "run_seed",
    "run_seeds",
    "summarize",
]

# Sub-steps per tick: message latencies and disk delays are finer than a tick, so messages
# overtake each other and land between two ticks of a node.
STEPS_PER_TICK: Final = 4
# How long a healed cluster may take, in election timeouts, to elect and commit in every
# group (and again to bring every replica up to date). An election needs at most ~2 ET
# (randomized timeout) plus the check-quorum lease (up to ~2 ET); 10 leaves room for a
# split vote or two and for a transfer that must first time out.
LIVENESS_TIMEOUTS: Final = 10
# The default length of the safety phase, in ticks.
SAFETY_TICKS: Final = 300
# Log-matching over the uncommitted tails, every this many ticks (whole logs at the end).
_CHECK_EVERY: Final = 10
# A node steps through at most this many Readies per step: a bound, not a tuning knob
# (a node with nothing new to do stops earlier).
_READIES_PER_STEP: Final = 8
_HUGE: Final = 1 << 62
_CHAIN0: Final = bytes(16)
_ENTRY_KEY = struct.Struct("<QQ")
_SNAP_DATA = struct.Struct("<Q16s")

NodeFactory = Callable[[Config, MemoryStorage, random.Random], RaftNode]

FAULT_KINDS: Final = (
    "drop",
    "duplicate",
    "partition_symmetric",
    "partition_one_way",
    "partition_leader_isolated",
    "partition_bridge",
    "crash",
    "crash_before_persist",
    "crash_before_advance",
    "strike_new_leader",
    "torn_write",
    "power_loss",
    "pause",
    "slow_disk",
    "campaign",
    "transfer",
    "compaction",
    "unreachable_report",
)
_COUNTERS: Final = (
    *FAULT_KINDS,
    "restart",
    "proposals",
    "proposals_refused",
    "commits",
    "elections",
    "leader_changes",
    "snapshots_installed",
    "messages",
    "readies",
)


class SimViolation(AssertionError):
    """A rule of Raft was broken (or the core raised): the run fails with its seed."""


def _chain(prev: bytes, term: int, index: int, data: bytes) -> bytes:
    """The state machine's digest after applying one more entry: two replicas with equal
    digests at an index applied the same entries up to it."""
    h = hashlib.blake2b(prev, digest_size=16)
    h.update(_ENTRY_KEY.pack(term, index))
    h.update(data)
    return h.digest()


# == the fault mix of a run ===================================================================


@attrs.frozen
class Swarm:
    """One run's configuration and fault rates, drawn from its seed. Rates are per tick
    (per node for node faults, per group for group faults); 0 switches a fault off."""

    election_tick: int
    heartbeat_tick: int
    pre_vote: bool
    check_quorum: bool
    max_size_per_msg: int
    max_inflight_msgs: int
    max_uncommitted_bytes: int
    max_committed_size_per_ready: int
    latency: tuple[int, int]  # steps
    drop: float
    duplicate: float
    crash: float
    crash_mid_ready: float  # per Ready taken and per Ready persisted
    strike_new_leader: float  # chance a new leader is isolated (or crashed) as soon as elected
    power_loss: float
    down_ticks: tuple[int, int]
    partition: float
    partition_ticks: tuple[int, int]
    pause: float
    pause_ticks: tuple[int, int]
    transfer: float
    campaign: float
    propose: float
    slow_disk: float
    torn_write: float
    report_unreachable: float
    compact_after: int  # applied entries beyond the snapshot before compacting (0: never)
    compact_keep: int  # entries kept behind the compaction point for slow followers
    durable_apply: bool  # the state machine survives a crash (Config.applied on restart)

    @classmethod
    def draw(cls, rng: random.Random) -> Swarm:
        def rate(p_on: float, lo: float, hi: float) -> float:
            return rng.uniform(lo, hi) if rng.random() < p_on else 0.0

        et = rng.randint(4, 10)
        hb = rng.randint(1, max(1, et // 3))
        # Both on is the default; the other combinations are valid configurations too.
        pre_vote, check_quorum = (
            (True, True) if rng.random() < 0.6 else (rng.random() < 0.5, rng.random() < 0.5)
        )
        lat_hi = rng.randint(1, max(2, et * STEPS_PER_TICK // 4))  # round trip well under ET
        lat_lo = rng.randint(1, lat_hi)
        compact_after = rng.choice((0, 0, 5, 20, 60))
        return cls(
            election_tick=et,
            heartbeat_tick=hb,
            pre_vote=pre_vote,
            check_quorum=check_quorum,
            # 1 byte: one entry per append; otherwise a few entries to a few dozen.
            max_size_per_msg=rng.choice((1, 200, 1000, 1 << 20)),
            max_inflight_msgs=rng.choice((1, 2, 4, 256)),
            # Bounds the backlog a leader accepts faster than a slow configuration ships it
            # (and exercises ProposalDropped).
            max_uncommitted_bytes=rng.choice((1000, 4000, 0)),
            # Small: committed entries are handed out over several Readies.
            max_committed_size_per_ready=rng.choice((1, 300, 64 << 20)),
            latency=(lat_lo, lat_hi),
            drop=rate(0.7, 0.0, 0.3),
            duplicate=rate(0.6, 0.0, 0.5),
            crash=rate(0.7, 0.002, 0.015),
            crash_mid_ready=rate(0.5, 0.0003, 0.002),
            # A leader that appended entries but could not replicate them leaves conflicting
            # tails behind: the raw material of Figure 8 that random crashes rarely produce.
            strike_new_leader=rate(0.5, 0.1, 0.5),
            power_loss=rate(0.3, 0.002, 0.005),
            down_ticks=(1, rng.randint(1, 4) * et),
            partition=rate(0.7, 0.005, 0.04),
            partition_ticks=(et, rng.randint(2, 6) * et),
            pause=rate(0.4, 0.001, 0.01),
            pause_ticks=(1, rng.randint(1, 3) * et),
            transfer=rate(0.6, 0.002, 0.03),
            campaign=rate(0.4, 0.001, 0.01),
            propose=rng.uniform(0.2, 2.0),
            slow_disk=rate(0.6, 0.05, 0.5),
            torn_write=rng.random(),
            report_unreachable=rate(0.5, 0.2, 1.0),
            compact_after=compact_after,
            compact_keep=rng.choice((0, 1, 5)) if compact_after else 0,
            durable_apply=rng.random() < 0.5,
        )


# == results ==================================================================================


@attrs.frozen
class RunResult:
    seed: int
    nodes: int
    groups: int
    ok: bool
    violation: str | None
    phase: str  # where the run ended: "safety", "liveness", "convergence" or "done"
    ticks: int
    liveness_ticks: int  # ticks the healed cluster took to elect and commit in every group
    trace_hash: str
    stats: dict[str, int]
    swarm: Swarm
    trace: list[str] | None = None

    def describe(self) -> str:
        head = f"seed {self.seed} ({self.nodes} nodes, {self.groups} groups)"
        if self.ok:
            return f"{head}: ok after {self.ticks} ticks, hash {self.trace_hash}"
        return f"{head}: VIOLATION in the {self.phase} phase: {self.violation}"


# == per node state ===========================================================================

_TAKEN = 1  # a Ready handed out, not yet persisted
_PERSISTED = 2  # persisted, not yet advanced

# Inputs queued at a replica (processed when no Ready is outstanding).
_IN_MSG = 0
_IN_PROPOSE = 1
_IN_TRANSFER = 2
_IN_CAMPAIGN = 3
_IN_UNREACHABLE = 4
_IN_SNAP_STATUS = 5


class _Replica:
    """One group on one node: the disk, the live core (None while the node is down), and
    the application around it (queued inputs, the Ready in progress, the state machine)."""

    __slots__ = (
        "advance_at",
        "commit_seen",
        "group",
        "inbox",
        "max_applied",
        "pending_ticks",
        "persist_at",
        "phase",
        "raft",
        "rd",
        "sm_base",
        "sm_chains",
        "storage",
    )

    def __init__(self, group: int) -> None:
        self.group = group
        self.storage = MemoryStorage()
        self.raft: RaftNode | None = None
        self.inbox: list[tuple[Any, ...]] = []
        self.pending_ticks = 0
        self.rd: Ready | None = None
        self.phase = 0
        self.persist_at = 0
        self.advance_at = 0
        # The state machine: the digest after each applied index from sm_base on.
        self.sm_base = 0
        self.sm_chains: list[bytes] = [_CHAIN0]
        # Checker memory, kept across crashes (it is the observer's, not the node's).
        self.commit_seen = 0
        self.max_applied = 0

    @property
    def sm_index(self) -> int:
        return self.sm_base + len(self.sm_chains) - 1


class _Node:
    __slots__ = ("id", "incarnation", "paused_until", "replicas", "restart_at", "tick_offset", "up")

    def __init__(self, node_id: int, groups: int, tick_offset: int) -> None:
        self.id = node_id
        self.up = True
        self.incarnation = 0
        self.restart_at = 0
        self.paused_until = 0
        self.tick_offset = tick_offset
        self.replicas = [_Replica(g) for g in range(groups)]


class _Committed:
    """The checker's record of one committed index of a group."""

    __slots__ = ("data", "seen_at", "term")

    def __init__(self, term: int, data: bytes, seen_at: int) -> None:
        self.term = term
        self.data = data
        # The lowest term of a node seen holding it as committed: an upper bound on the
        # term in which it was committed (leader completeness applies above it).
        self.seen_at = seen_at


class _Proposal:
    __slots__ = ("acked", "index", "probe", "term")

    def __init__(self, index: int, term: int, probe: bool) -> None:
        self.index = index
        self.term = term
        self.probe = probe
        self.acked = False


# == the simulation ===========================================================================


class Simulation:
    """One seeded run. ``run()`` never raises for a broken rule: it returns a RunResult
    whose ``violation`` says what broke, where and when."""

    def __init__(
        self,
        seed: int,
        *,
        nodes: int = 3,
        groups: int | None = None,
        safety_ticks: int = SAFETY_TICKS,
        trace: bool = False,
        node_factory: NodeFactory | None = None,
        swarm: Swarm | None = None,
    ) -> None:
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        self.seed = seed
        self.rng = rng = random.Random(seed)
        self.swarm = swarm if swarm is not None else Swarm.draw(rng)
        self.n_groups = groups if groups is not None else rng.randint(2, 4)
        self.safety_ticks = safety_ticks
        self.node_factory: NodeFactory = node_factory or RaftNode
        self.voters = tuple(range(1, nodes + 1))
        self.nodes = {i: _Node(i, self.n_groups, rng.randrange(STEPS_PER_TICK)) for i in self.voters}
        self.now = 0  # steps
        self.tick = 0
        self.phase = "safety"
        self.faults_on = True
        self.net: list[tuple[int, float, int, int, Message, int]] = []
        self._net_seq = 0
        self.blocked: set[tuple[int, int]] = set()
        self._link_last: dict[tuple[int, int], int] = {}  # per link, the last delivery step (healed)
        self.partition_until = 0
        self.stats = dict.fromkeys(_COUNTERS, 0)
        self.trace: list[str] | None = [] if trace else None
        self._hash = hashlib.blake2b(digest_size=16)
        self._hash_buf = array("q")
        # Checker state, per group.
        self.committed: list[list[_Committed | None]] = [[None] for _ in range(self.n_groups)]
        self.chains: list[list[bytes]] = [[_CHAIN0] for _ in range(self.n_groups)]
        self.committed_payloads: list[dict[bytes, int]] = [{} for _ in range(self.n_groups)]
        self.proposals: list[dict[bytes, _Proposal]] = [{} for _ in range(self.n_groups)]
        self.leaders: list[dict[int, int]] = [{} for _ in range(self.n_groups)]
        self.last_leader = [NONE] * self.n_groups
        self._strikes: list[int] = []  # new leaders to isolate or crash at the end of the step
        self._refused: set[bytes] = set()  # proposals a node refused (not leader, or dropped)
        self._durable_checked = [0] * self.n_groups
        self._proposal_seq = 0
        self.liveness_ticks = 0
        for node in self.nodes.values():
            self._start(node)
        self._note(f"seed {seed}: {nodes} nodes, {self.n_groups} groups, {self.swarm}")

    # -- running --------------------------------------------------------------------------

    def run(self) -> RunResult:
        violation = None
        try:
            self._safety_phase()
            self._full_check()
            self.phase = "liveness"
            self._liveness_phase()
            self.phase = "convergence"
            self._convergence_phase()
            self._full_check()
            self._final_check()
            self.phase = "done"
        except SimViolation as exc:
            violation = f"{exc} (tick {self.tick}, seed {self.seed})"
        except Exception as exc:
            # The core raising (e.g. RaftLogError when asked to overwrite a committed
            # entry) is a failure of the run, not of the harness: report it with its origin.
            where = traceback.extract_tb(exc.__traceback__)[-1]
            violation = (
                f"{type(exc).__name__}: {exc} at {where.filename.rsplit('/', 1)[-1]}:{where.lineno}"
                f" (tick {self.tick}, seed {self.seed})"
            )
        if violation is not None:
            self._note(f"VIOLATION: {violation}")
        self._flush_hash()
        return RunResult(
            seed=self.seed,
            nodes=len(self.voters),
            groups=self.n_groups,
            ok=violation is None,
            violation=violation,
            phase=self.phase,
            ticks=self.tick,
            liveness_ticks=self.liveness_ticks,
            trace_hash=self._hash.hexdigest(),
            stats=dict(self.stats),
            swarm=self.swarm,
            trace=self.trace,
        )

    def _safety_phase(self) -> None:
        for _ in range(self.safety_ticks * STEPS_PER_TICK):
            self._step()

    def _liveness_phase(self) -> None:
        """Heal everything and stop the faults; in every group a leader must be elected
        within LIVENESS_TIMEOUTS election timeouts, and commit a fresh proposal within that
        plus the time to ship the backlog."""
        self._heal()
        start = self.tick
        elect_bound = LIVENESS_TIMEOUTS * self.swarm.election_tick
        bound = elect_bound + self._backlog_ticks()
        elected = [False] * self.n_groups
        # The probe last proposed in each group, as (leader, term): a new leader gets its own.
        probed: list[tuple[int, int] | None] = [None] * self.n_groups
        probes: list[list[bytes]] = [[] for _ in range(self.n_groups)]
        done = [False] * self.n_groups
        while True:
            for g in range(self.n_groups):
                if not done[g]:
                    done[g] = any(self.proposals[g][p].acked for p in probes[g] if p in self.proposals[g])
            if all(done):
                break
            if self.tick - start > bound:
                missing = [g for g in range(self.n_groups) if not done[g]]
                detail = "; ".join(f"group {g}: {self._group_state(g)}" for g in missing)
                raise SimViolation(
                    f"liveness: no leader committed a new proposal within {bound} ticks of healing"
                    f" ({self.swarm.election_tick} ticks per election timeout): {detail}"
                )
            for g in range(self.n_groups):
                leader = self._current_leader(g)
                if leader is not None:
                    elected[g] = True
                elif not elected[g] and self.tick - start > elect_bound:
                    # The backlog allowance is for shipping entries: no leader needs none.
                    raise SimViolation(
                        f"liveness: no leader elected within {elect_bound} ticks of healing"
                        f" ({self.swarm.election_tick} ticks per election timeout): "
                        f"group {g}: {self._group_state(g)}"
                    )
                if done[g] or leader is None:
                    continue
                raft = self.nodes[leader].replicas[g].raft
                assert raft is not None
                refused = bool(probes[g]) and probes[g][-1] in self._refused
                if probed[g] != (leader, raft.term) or refused:
                    probed[g] = (leader, raft.term)
                    payload = self._payload(g, probe=True)
                    probes[g].append(payload)
                    self.nodes[leader].replicas[g].inbox.append((_IN_PROPOSE, payload, 1, True))
            for _ in range(STEPS_PER_TICK):
                self._step()
        self.liveness_ticks = self.tick - start

    def _backlog_ticks(self) -> int:
        """Ticks to ship the entries some replica lacks, a window per round trip: a slow
        configuration (one entry per append, one or two appends in flight, reordering that
        turns appends into rejections) with a long tail needs them before the new proposal
        can commit, or before a lagging replica has caught up."""
        backlog = 0
        for g in range(self.n_groups):
            logs = [n.replicas[g].raft.log for n in self.nodes.values()]  # type: ignore[union-attr]
            backlog = max(backlog, max(log.last_index() for log in logs) - min(log.committed for log in logs))
        sw = self.swarm
        round_trip = -(-(2 * sw.latency[1] + 2) // STEPS_PER_TICK)
        # Twice the ideal pipeline: heartbeat-paced probes after a leader change and the
        # window refilling only as acknowledgements return cost up to as much again.
        return 2 * -(-backlog // sw.max_inflight_msgs) * round_trip

    def _convergence_phase(self) -> None:
        """Every replica must catch up with its group's commit and apply it."""
        start = self.tick
        bound = LIVENESS_TIMEOUTS * self.swarm.election_tick + self._backlog_ticks()
        while True:
            lagging = self._lagging()
            if not lagging:
                return
            if self.tick - start > bound:
                raise SimViolation(f"liveness: replicas did not catch up within {bound} ticks: {lagging}")
            for _ in range(STEPS_PER_TICK):
                self._step()

    def _lagging(self) -> str:
        out = []
        for g in range(self.n_groups):
            reps = [n.replicas[g] for n in self.nodes.values()]
            top = max(r.raft.log.committed for r in reps if r.raft is not None)
            for node in self.nodes.values():
                rep = node.replicas[g]
                raft = rep.raft
                if raft is None or raft.log.committed < top or rep.sm_index < top:
                    out.append(f"g{g}/n{node.id} commit {raft.log.committed if raft else '-'} of {top}")
        return ", ".join(out)

    # -- one step ---------------------------------------------------------------------------

    def _step(self) -> None:
        now = self.now
        if now % STEPS_PER_TICK == 0:
            self.tick = now // STEPS_PER_TICK
            self._tick_events()
        for node in self.nodes.values():
            if node.up and node.paused_until <= self.tick and (now - node.tick_offset) % STEPS_PER_TICK == 0:
                for rep in node.replicas:
                    rep.pending_ticks += 1
        self._deliver()
        order = list(self.nodes.values())
        self.rng.shuffle(order)
        for node in order:
            if node.up and node.paused_until <= self.tick:
                for rep in node.replicas:
                    if not node.up:
                        break  # it crashed while handling a Ready
                    if rep.rd is not None or rep.inbox or rep.pending_ticks or rep.raft.has_ready():  # type: ignore[union-attr]
                        self._drive(node, rep)
        self._check_step()
        self.now = now + 1

    def _tick_events(self) -> None:
        tick = self.tick
        for node in self.nodes.values():
            if not node.up and node.restart_at <= tick:
                self._restart(node)
        if self.partition_until and tick >= self.partition_until:
            self._event("heal", "partition healed")
            self.blocked.clear()
            self.partition_until = 0
        if not self.faults_on:
            return
        rng = self.rng
        sw = self.swarm
        if sw.power_loss and rng.random() < sw.power_loss:
            self._event("power_loss", "power loss: every node crashes")
            for node in self.nodes.values():
                if node.up:
                    self._crash(node, rng.randint(*sw.down_ticks))
        for node in self.nodes.values():
            if node.up and sw.crash and rng.random() < sw.crash:
                self._crash(node, rng.randint(*sw.down_ticks))
            if node.up and node.paused_until <= tick and sw.pause and rng.random() < sw.pause:
                node.paused_until = tick + rng.randint(*sw.pause_ticks)
                self._event("pause", f"n{node.id} paused until tick {node.paused_until}")
        if not self.partition_until and sw.partition and rng.random() < sw.partition:
            self._partition()
        for g in range(self.n_groups):
            if sw.transfer and rng.random() < sw.transfer:
                leader = self._current_leader(g)
                if leader is not None:
                    target = rng.choice([v for v in self.voters if v != leader] or [leader])
                    self._note(f"g{g}: transfer n{leader} -> n{target} asked")
                    self.nodes[leader].replicas[g].inbox.append((_IN_TRANSFER, target))
            if sw.campaign and rng.random() < sw.campaign:
                node = self.nodes[rng.choice(self.voters)]
                if node.up:
                    self._event("campaign", f"g{g}: n{node.id} campaigns")
                    node.replicas[g].inbox.append((_IN_CAMPAIGN,))
            n = int(sw.propose) + (rng.random() < sw.propose % 1)
            for _ in range(n):
                self._propose(g)

    def _propose(self, g: int) -> None:
        """A client proposes to the leader it believes in (or anyone), once; a node that is
        not the leader forwards it once to its leader hint."""
        target = self.last_leader[g]
        if target == NONE or self.rng.random() < 0.2:
            target = self.rng.choice(self.voters)
        node = self.nodes[target]
        if node.up:
            node.replicas[g].inbox.append((_IN_PROPOSE, self._payload(g, probe=False), 1, False))

    def _payload(self, g: int, *, probe: bool) -> bytes:
        self._proposal_seq += 1
        # Unique, with a random length so the byte limits of appends and snapshots bite.
        head = f"{'live' if probe else 'p'}{self._proposal_seq}-g{g}:".encode()
        return head + b"x" * self.rng.randrange(64)

    # -- network ----------------------------------------------------------------------------

    def _send(self, g: int, m: Message, sender: _Node) -> None:
        t = m.type
        if (t is MsgType.VOTE_RESP or t is MsgType.APP_RESP) and not m.reject:
            self._check_promise(g, m, sender)
        rng = self.rng
        sw = self.swarm
        if (m.frm, m.to) in self.blocked or not self.nodes[m.to].up:
            # The transport sees a broken connection (it cannot see a lost packet) and
            # sometimes tells the core, as etcd's ReportUnreachable / ReportSnapshot.
            if sw.report_unreachable and rng.random() < sw.report_unreachable:
                self.stats["unreachable_report"] += 1
                inbox = sender.replicas[g].inbox
                inbox.append((_IN_UNREACHABLE, m.to))
                if t is MsgType.SNAP:
                    inbox.append((_IN_SNAP_STATUS, m.to, False))
            return
        if self.faults_on and sw.drop and rng.random() < sw.drop:
            self.stats["drop"] += 1
            return
        copies = 2 if self.faults_on and sw.duplicate and rng.random() < sw.duplicate else 1
        if copies == 2:
            self.stats["duplicate"] += 1
        lo, hi = sw.latency
        for _ in range(copies):
            self._net_seq += 1
            at = self.now + rng.randint(lo, hi)
            if self.faults_on:
                # Random latency, and a random order among messages landing in one step:
                # messages overtake each other, within a link too.
                order = rng.random()
            else:
                # Healed: each link delivers in order, as a TCP connection does (latency
                # still varies). Reordering is a fault, and it turns pipelined appends into
                # rejections and probes, which is slow, not wrong.
                link = (m.frm, m.to)
                at = max(at, self._link_last.get(link, 0))
                self._link_last[link] = at
                order = 0.0
            heapq.heappush(self.net, (at, order, self._net_seq, g, m, sender.incarnation))

    def _deliver(self) -> None:
        net = self.net
        now = self.now
        while net and net[0][0] <= now:
            _, _, _, g, m, src_incarnation = heapq.heappop(net)
            target = self.nodes[m.to]
            if (m.frm, m.to) in self.blocked or not target.up:
                continue  # the link broke, or the node died, while it was in flight
            self.stats["messages"] += 1
            snap = m.snapshot
            last = m.entries[-1].index if m.entries else 0
            self._mix(
                1, g, m.type, m.frm, m.to, m.term, m.index, m.log_term, m.commit, len(m.entries), last,
                m.reject, m.reject_hint, snap.index if snap is not None else -1, m.transfer,
            )  # fmt: skip
            if self.trace is not None:
                self._note(f"g{g} deliver {describe_message(m)}")
            target.replicas[g].inbox.append((_IN_MSG, m))
            if m.type is MsgType.SNAP:
                sender = self.nodes[m.frm]
                if sender.up and sender.incarnation == src_incarnation:
                    sender.replicas[g].inbox.append((_IN_SNAP_STATUS, m.to, True))

    def _partition(self, isolate: int = NONE) -> None:
        rng = self.rng
        others = list(self.voters)
        if len(others) < 2:
            return
        kind = (
            "leader_isolated"
            if isolate
            else rng.choice(("symmetric", "one_way", "leader_isolated", "bridge"))
        )
        blocked: set[tuple[int, int]] = set()
        if kind == "leader_isolated":
            leaders = [ld for g in range(self.n_groups) if (ld := self._current_leader(g)) is not None]
            victim = isolate or (rng.choice(leaders) if leaders else rng.choice(others))
            blocked = {(victim, o) for o in others if o != victim} | {
                (o, victim) for o in others if o != victim
            }
        elif kind == "symmetric" or (kind == "bridge" and len(others) < 3):
            kind = "symmetric"
            rng.shuffle(others)
            cut = rng.randint(1, max(1, len(others) - 1))
            a, b = others[:cut], others[cut:]
            blocked = {(x, y) for x in a for y in b} | {(y, x) for x in a for y in b}
        elif kind == "bridge":
            # One node hears both sides, which cannot hear each other (etcd's disruptive
            # follower; a leader on one side sees the bridge as its quorum partner).
            rng.shuffle(others)
            rest = others[1:]
            cut = rng.randint(1, len(rest) - 1)
            a, b = rest[:cut], rest[cut:]
            blocked = {(x, y) for x in a for y in b} | {(y, x) for x in a for y in b}
        else:
            pairs = [(x, y) for x in others for y in others if x != y]
            blocked = {p for p in pairs if rng.random() < 0.35} or {rng.choice(pairs)}
        if not blocked:
            return
        self.blocked = blocked
        self.partition_until = self.tick + rng.randint(*self.swarm.partition_ticks)
        links = " ".join(f"{x}-x>{y}" for x, y in sorted(blocked))
        self._event(f"partition_{kind}", f"partition ({kind}) until tick {self.partition_until}: {links}")

    def _heal(self) -> None:
        self.faults_on = False
        self.blocked.clear()
        self.partition_until = 0
        for node in self.nodes.values():
            node.paused_until = 0
            if not node.up:
                self._restart(node)
        self._note("heal: faults stop, every node up, network whole")

    # -- the application around one core ----------------------------------------------------

    def _drive(self, node: _Node, rep: _Replica) -> None:
        """Move one replica along the Ready contract as far as its disk delays allow."""
        for _ in range(_READIES_PER_STEP):
            rd = rep.rd
            if rd is not None:
                if rep.phase == _TAKEN:
                    if self.now < rep.persist_at:
                        return
                    self._persist(node, rep, rd, writes=3)
                    rep.phase = _PERSISTED
                    rep.advance_at = self.now + self._disk_delay()
                    if self._crash_mid_ready(node):
                        return
                if self.now < rep.advance_at:
                    return
                self._finish(node, rep, rd)
            raft = rep.raft
            assert raft is not None
            if rep.inbox:
                items = rep.inbox
                rep.inbox = []
                for item in items:
                    self._input(node, rep, raft, item)
            while rep.pending_ticks:
                rep.pending_ticks -= 1
                raft.tick()
            if not raft.has_ready():
                return
            rd = raft.ready()
            self.stats["readies"] += 1
            hs = rd.hard_state
            self._mix(
                2, node.id, rep.group, hs.term if hs else -1, hs.vote if hs else -1, hs.commit if hs else -1,
                rd.append_from, len(rd.entries), len(rd.committed_entries), len(rd.messages),
                len(rd.messages_after_persist), rd.snapshot.index if rd.snapshot else -1,
            )  # fmt: skip
            if self.trace is not None:
                self._note(f"n{node.id} g{rep.group} ready {rd!r}")
            for m in rd.messages:
                self._send(rep.group, m, node)
            rep.rd = rd
            rep.phase = _TAKEN
            rep.persist_at = self.now + self._disk_delay()
            if self._crash_mid_ready(node):
                return

    def _crash_mid_ready(self, node: _Node) -> bool:
        """Maybe kill the node right here: after taking a Ready (its writes lost or torn),
        or after persisting one (not advanced) — the points a SIGKILL hurts most."""
        sw = self.swarm
        if self.faults_on and sw.crash_mid_ready and self.rng.random() < sw.crash_mid_ready:
            self._crash(node, self.rng.randint(*sw.down_ticks))
            return True
        return False

    def _disk_delay(self) -> int:
        sw = self.swarm
        if self.faults_on and sw.slow_disk and self.rng.random() < sw.slow_disk:
            self.stats["slow_disk"] += 1
            return self.rng.randint(1, 2 * STEPS_PER_TICK)
        return 0

    def _input(self, node: _Node, rep: _Replica, raft: RaftNode, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == _IN_MSG:
            raft.step(item[1])
        elif kind == _IN_PROPOSE:
            _, payload, hops, probe = item
            g = rep.group
            try:
                index = raft.propose(payload)
            except NotLeader as exc:
                hint = self.nodes.get(exc.leader)
                if hops and hint is not None and hint.up:
                    hint.replicas[g].inbox.append((_IN_PROPOSE, payload, hops - 1, probe))
                else:
                    self._refuse(payload)
                return
            except ProposalDropped:
                self._refuse(payload)
                return
            self.stats["proposals"] += 1
            self.proposals[g][payload] = _Proposal(index, raft.term, probe)
            if self.trace is not None:
                self._note(f"n{node.id} g{g} proposed {payload[:24]!r} at {raft.term}/{index}")
        elif kind == _IN_TRANSFER:
            if raft.role is Role.LEADER:
                self.stats["transfer"] += 1
                raft.transfer_leadership(item[1])
        elif kind == _IN_CAMPAIGN:
            raft.campaign()
        elif kind == _IN_UNREACHABLE:
            raft.report_unreachable(item[1])
        elif kind == _IN_SNAP_STATUS:
            raft.report_snapshot(item[1], item[2])

    def _refuse(self, payload: bytes) -> None:
        self.stats["proposals_refused"] += 1
        self._refused.add(payload)

    def _persist(self, node: _Node, rep: _Replica, rd: Ready, *, writes: int) -> None:
        """The Ready's writes, in the contract's order; a crash may stop after ``writes``."""
        st = rep.storage
        if rd.snapshot is not None:
            if writes < 1:
                return
            writes -= 1
            st.apply_snapshot(rd.snapshot)
        if rd.entries:
            if writes < 1:
                return
            writes -= 1
            st.append(rd.entries)
        hs = rd.hard_state
        if hs is not None:
            if writes < 1:
                return
            self._check_hard_state(node, rep, st.hard_state, hs)
            st.set_hard_state(hs)

    def _finish(self, node: _Node, rep: _Replica, rd: Ready) -> None:
        for m in rd.messages_after_persist:
            self._send(rep.group, m, node)
        if rd.snapshot is not None:
            self._apply_snapshot(node, rep, rd.snapshot)
        for e in rd.committed_entries:
            self._apply(node, rep, e)
        raft = rep.raft
        assert raft is not None
        raft.advance(rd)
        rep.rd = None
        rep.phase = 0
        self._maybe_compact(node, rep)

    def _maybe_compact(self, node: _Node, rep: _Replica) -> None:
        sw = self.swarm
        if not sw.compact_after:
            return
        st = rep.storage
        if rep.sm_index - st.first_index() + 1 < sw.compact_after + sw.compact_keep:
            return
        index = rep.sm_index - sw.compact_keep
        chain = rep.sm_chains[index - rep.sm_base]
        st.compact(index, _SNAP_DATA.pack(index, chain))
        del rep.sm_chains[: index - rep.sm_base]
        rep.sm_base = index
        self.stats["compaction"] += 1
        self._mix(3, 1, node.id, rep.group, index)

    # -- crash and restart ------------------------------------------------------------------

    def _crash(self, node: _Node, down_ticks: int) -> None:
        """The node dies: its cores, queued inputs and state machine are gone; its disk keeps
        what was persisted (a Ready being persisted may leave a prefix of its writes)."""
        rng = self.rng
        details = []
        for rep in node.replicas:
            rd = rep.rd
            if rd is not None and rep.phase == _TAKEN:
                n_writes = (rd.snapshot is not None) + bool(rd.entries) + (rd.hard_state is not None)
                done = 0
                if n_writes > 1 and rng.random() < self.swarm.torn_write:
                    done = rng.randrange(1, n_writes)
                    self.stats["torn_write"] += 1
                self._persist(node, rep, rd, writes=done)
                self.stats["crash_before_persist"] += 1
                details.append(f"g{rep.group} ready lost ({done}/{n_writes} writes)")
            elif rd is not None:
                self.stats["crash_before_advance"] += 1
                details.append(f"g{rep.group} persisted, not advanced")
            rep.raft = None
            rep.rd = None
            rep.phase = 0
            rep.inbox = []
            rep.pending_ticks = 0
        node.up = False
        node.paused_until = 0
        node.restart_at = self.tick + down_ticks
        lost = f": {'; '.join(details)}" if details else ""
        self._event("crash", f"n{node.id} crashes until tick {node.restart_at}{lost}")

    def _start(self, node: _Node) -> None:
        sw = self.swarm
        for rep in node.replicas:
            st = rep.storage
            snap = st.snapshot()
            if sw.durable_apply and rep.sm_index > snap.index:
                # The state machine survived (it changes only when a Ready is finished, so
                # what it holds is what it had made durable).
                pass
            elif snap.index:
                index, chain = _SNAP_DATA.unpack(snap.data)
                rep.sm_base, rep.sm_chains = index, [chain]
            else:
                rep.sm_base, rep.sm_chains = 0, [_CHAIN0]
            config = Config(
                id=node.id,
                voters=self.voters,
                election_tick=sw.election_tick,
                heartbeat_tick=sw.heartbeat_tick,
                max_size_per_msg=sw.max_size_per_msg,
                max_inflight_msgs=sw.max_inflight_msgs,
                max_uncommitted_bytes=sw.max_uncommitted_bytes,
                max_committed_size_per_ready=sw.max_committed_size_per_ready,
                pre_vote=sw.pre_vote,
                check_quorum=sw.check_quorum,
                applied=rep.sm_index if sw.durable_apply else 0,
            )
            # A fresh timer stream per incarnation, derived from the one seed.
            rep.raft = self.node_factory(config, st, random.Random(self.rng.getrandbits(64)))

    def _restart(self, node: _Node) -> None:
        node.up = True
        node.incarnation += 1
        self._start(node)
        self._event("restart", f"n{node.id} restarts")
        for rep in node.replicas:
            raft = rep.raft
            assert raft is not None
            # "Persisted commit must contain what was reported committed": everything this
            # node applied before it died is still committed, on disk, unchanged.
            if raft.log.committed < rep.max_applied:
                raise SimViolation(
                    f"g{rep.group}: n{node.id} restarted with commit {raft.log.committed} but had "
                    f"applied up to {rep.max_applied}"
                )
            rep.commit_seen = raft.log.committed
            self._check_committed_prefix(node, rep)

    # -- the state machine ------------------------------------------------------------------

    def _apply(self, node: _Node, rep: _Replica, e: Entry) -> None:
        g = rep.group
        if e.index != rep.sm_index + 1:
            raise SimViolation(
                f"g{g}: n{node.id} applied index {e.index} after {rep.sm_index} (a gap or a repeat)"
            )
        raft = rep.raft
        assert raft is not None
        self._record_committed(g, e.index, e.term, e.data, raft.term, node.id)
        rep.sm_chains.append(_chain(rep.sm_chains[-1], e.term, e.index, e.data))
        if e.index > rep.max_applied:
            rep.max_applied = e.index
        if e.data:
            p = self.proposals[g].get(e.data)
            if p is not None and not p.acked:
                if (p.index, p.term) != (e.index, e.term):
                    raise SimViolation(
                        f"g{g}: proposal {e.data[:24]!r} proposed at {p.term}/{p.index} applied at "
                        f"{e.term}/{e.index}"
                    )
                p.acked = True
                if not p.probe:
                    self.stats["commits"] += 1

    def _apply_snapshot(self, node: _Node, rep: _Replica, snap: Snapshot) -> None:
        g = rep.group
        index, chain = _SNAP_DATA.unpack(snap.data)
        if index != snap.index:
            raise SimViolation(f"g{g}: snapshot {snap.index} carries the state at {index}")
        if snap.index <= rep.sm_index:
            raise SimViolation(f"g{g}: n{node.id} installed snapshot {snap.index} at applied {rep.sm_index}")
        chains = self.chains[g]
        if snap.index >= len(chains) or chains[snap.index] != chain:
            raise SimViolation(
                f"g{g}: n{node.id} installed a snapshot at {snap.index} that is not the committed "
                f"state there (committed known up to {len(chains) - 1})"
            )
        rep.sm_base, rep.sm_chains = snap.index, [chain]
        rep.max_applied = max(rep.max_applied, snap.index)
        self.stats["snapshots_installed"] += 1
        self._mix(3, 2, node.id, g, snap.index)

    # -- the checker ------------------------------------------------------------------------

    def _record_committed(self, g: int, index: int, term: int, data: bytes, seen_at: int, who: int) -> None:
        """Entry ``index`` is committed (a node says so): record it, or compare it with the
        record. ``seen_at`` is the observer's term, an upper bound on the term in which the
        entry was committed (for leader completeness)."""
        lst = self.committed[g]
        if index < len(lst):
            cur = lst[index]
            if cur is not None:
                if cur.term != term or cur.data != data:
                    raise SimViolation(
                        f"g{g}: committed entry {index} changed: it was {cur.term}/{index} "
                        f"{cur.data[:24]!r}, n{who} has {term}/{index} {data[:24]!r}"
                    )
                if seen_at < cur.seen_at:
                    cur.seen_at = seen_at
                return
        else:
            lst.extend([None] * (index - len(lst) + 1))
        lst[index] = _Committed(term, data, seen_at)
        if data:
            at = self.committed_payloads[g].setdefault(data, index)
            if at != index:
                raise SimViolation(f"g{g}: payload {data[:24]!r} committed twice, at {at} and {index}")
        chains = self.chains[g]
        while len(chains) < len(lst) and (nxt := lst[len(chains)]) is not None:
            chains.append(_chain(chains[-1], nxt.term, len(chains), nxt.data))

    def _check_step(self) -> None:
        for node in self.nodes.values():
            if not node.up:
                continue
            for rep in node.replicas:
                raft = rep.raft
                assert raft is not None
                log = raft.log
                c = log.committed
                if c != rep.commit_seen:
                    if c < rep.commit_seen:
                        raise SimViolation(
                            f"g{rep.group}: n{node.id}'s commit went back from {rep.commit_seen} to {c}"
                        )
                    lo = max(rep.commit_seen + 1, log.first_index())
                    if lo <= c:
                        for e in log.slice(lo, c + 1, _HUGE):
                            self._record_committed(rep.group, e.index, e.term, e.data, raft.term, node.id)
                    rep.commit_seen = c
                if raft.role is Role.LEADER:
                    self._observe_leader(node, rep, raft)
        if self._strikes:
            self._strike()
        for g in range(self.n_groups):
            top = len(self.committed[g]) - 1
            if top > self._durable_checked[g]:
                self._durable_checked[g] = top
                self._check_commit_durable(g, top)
        if self.now % (_CHECK_EVERY * STEPS_PER_TICK) == 0:
            for g in range(self.n_groups):
                self._check_log_matching(g, tails_only=True)

    def _strike(self) -> None:
        """Isolate (or crash) the leaders just elected, before their first appends land."""
        strikes, self._strikes = self._strikes, []
        rng = self.rng
        for victim in strikes:
            node = self.nodes[victim]
            if not node.up:
                continue
            self.stats["strike_new_leader"] += 1
            if rng.random() < 0.8:
                # Replaces any partition: the previous victim comes back as this one goes.
                self._partition(isolate=victim)
            else:
                self._crash(node, rng.randint(*self.swarm.down_ticks))

    def _check_commit_durable(self, g: int, index: int) -> None:
        """A committed entry can never be lost (§5.4.3): no state a node is in, or would
        restart in, that lacks it may be as up to date (§5.4.1) as a majority — such a node
        could be elected and overwrite the entry. In Raft this always holds: the majority
        that stored the entry's committing term-T entry j (persisted before acknowledging)
        stays at least (T, j), and a log lacking the entry stays below (T, j). It catches an
        unsafe commit when it happens (Figure 8), not only when an election later exploits it.
        Checking the highest committed index covers the rest: by log matching, a log that
        holds it holds every committed entry before it."""
        cur = self.committed[g][index]
        assert cur is not None
        term = cur.term
        lowest: list[tuple[int, int]] = []  # per voter, its least up-to-date state
        lacking: list[tuple[int, str, tuple[int, int]]] = []
        for node in self.nodes.values():
            rep = node.replicas[g]
            st = rep.storage
            last = st.last_index()
            states = [
                (
                    "disk",
                    (st.term(last), last),
                    index < st.first_index() or (index <= last and st.term(index) == term),
                )
            ]
            if node.up:
                log = rep.raft.log  # type: ignore[union-attr]
                states.append(
                    (
                        "memory",
                        (log.last_term(), log.last_index()),
                        index < log.first_index() or (log.term_or_zero(index) == term),
                    )
                )
            lowest.append(min(s[1] for s in states))
            lacking.extend((node.id, where, up_to) for where, up_to, holds in states if not holds)
        quorum = len(self.voters) // 2 + 1
        for nid, where, up_to in lacking:
            if sum(1 for v in lowest if up_to >= v) >= quorum:
                raise SimViolation(
                    f"g{g}: committed entry {term}/{index} could be lost: n{nid}'s {where} log lacks it "
                    f"and, ending at {up_to[0]}/{up_to[1]}, is as up to date as a majority"
                )

    def _observe_leader(self, node: _Node, rep: _Replica, raft: RaftNode) -> None:
        g = rep.group
        term = raft.term
        known = self.leaders[g].get(term)
        if known == node.id:
            return
        if known is not None:
            raise SimViolation(f"g{g}: two leaders in term {term}: n{known} and n{node.id}")
        self.leaders[g][term] = node.id
        self.stats["elections"] += 1
        if self.last_leader[g] not in (NONE, node.id):
            self.stats["leader_changes"] += 1
        self.last_leader[g] = node.id
        sw = self.swarm
        if self.faults_on and sw.strike_new_leader and self.rng.random() < sw.strike_new_leader:
            self._strikes.append(node.id)
        self._mix(4, g, term, node.id)
        self._note(f"g{g}: n{node.id} is leader of term {term}")
        # Leader completeness (§5.4): every entry committed in an earlier term is here.
        # The most recent ones are where a broken rule shows; log matching covers the rest.
        lst = self.committed[g]
        log = raft.log
        floor = log.first_index() - 1
        checked = 0
        for i in range(len(lst) - 1, max(floor, 0) - 1, -1):
            cur = lst[i]
            if cur is None or cur.seen_at >= term:
                continue
            have = log.term_or_zero(i)
            if have != cur.term:
                raise SimViolation(
                    f"g{g}: n{node.id} became leader of term {term} without committed entry "
                    f"{cur.term}/{i} (its log has term {have} there)"
                )
            checked += 1
            if checked >= 32:
                break

    def _check_promise(self, g: int, m: Message, sender: _Node) -> None:
        """A vote grant or an append acknowledgement promises durable state (thesis §3.8):
        when it leaves, the sender's disk must already hold the vote, or the entries up to
        the acknowledged index. (Unless the disk has moved to a later term: then the
        promise is moot, as the receiver's term is behind.)"""
        st = sender.replicas[g].storage
        hs = st.hard_state
        if hs.term > m.term:
            return
        if m.type is MsgType.VOTE_RESP:
            if hs.term != m.term or hs.vote != m.to:
                raise SimViolation(
                    f"g{g}: n{m.frm} granted its vote in term {m.term} to n{m.to} before it was durable "
                    f"(disk: {hs})"
                )
        elif st.last_index() < m.index:
            raise SimViolation(
                f"g{g}: n{m.frm} acknowledged index {m.index} in term {m.term} holding only "
                f"{st.last_index()} on disk"
            )

    def _check_hard_state(self, node: _Node, rep: _Replica, old: HardState, new: HardState) -> None:
        g = rep.group
        if new.term < old.term:
            raise SimViolation(f"g{g}: n{node.id} persisted term {new.term} after {old.term}")
        if new.term == old.term and old.vote != NONE and new.vote != old.vote:
            raise SimViolation(
                f"g{g}: n{node.id} voted twice in term {new.term}: for n{old.vote}, then n{new.vote}"
            )
        if new.commit < old.commit:
            raise SimViolation(f"g{g}: n{node.id} persisted commit {new.commit} after {old.commit}")
        if new.commit > rep.storage.last_index():
            raise SimViolation(
                f"g{g}: n{node.id} persisted commit {new.commit} beyond its persisted log "
                f"(last index {rep.storage.last_index()})"
            )

    def _check_committed_prefix(self, node: _Node, rep: _Replica) -> None:
        """The node's log up to its commit is the recorded committed log."""
        raft = rep.raft
        assert raft is not None
        log = raft.log
        lst = self.committed[rep.group]
        lo = log.first_index()
        if lo > log.committed:
            return
        for e in log.slice(lo, log.committed + 1, _HUGE):
            cur = lst[e.index] if e.index < len(lst) else None
            if cur is not None and (cur.term != e.term or cur.data != e.data):
                raise SimViolation(
                    f"g{rep.group}: n{node.id} holds {e.term}/{e.index} below its commit where "
                    f"{cur.term}/{e.index} was committed"
                )

    def _check_log_matching(self, g: int, *, tails_only: bool) -> None:
        """§5.3 Log Matching: where two logs have an entry with the same index and term,
        they hold the same data there and the same term just before (hence, by induction,
        the same prefix)."""
        logs = [(n.id, n.replicas[g].raft.log) for n in self.nodes.values() if n.up]  # type: ignore[union-attr]
        if len(logs) < 2:
            return
        lo = 1
        if tails_only:
            lo = max(1, min(log.committed for _, log in logs))
        hi = max(log.last_index() for _, log in logs)
        if lo > hi:
            return
        views = []
        for nid, log in logs:
            first = max(lo, log.first_index())
            entries = log.slice(first, log.last_index() + 1, _HUGE) if first <= log.last_index() else []
            views.append((nid, log, first, entries))
        for i in range(lo, hi + 1):
            seen: dict[int, tuple[int, bytes, int]] = {}
            for nid, log, first, entries in views:
                k = i - first
                if k < 0 or k >= len(entries):
                    continue
                e = entries[k]
                prev_term = entries[k - 1].term if k > 0 else log.term_or_zero(i - 1)
                other = seen.get(e.term)
                if other is None:
                    seen[e.term] = (nid, e.data, prev_term)
                elif other[1] != e.data or (prev_term and other[2] and other[2] != prev_term):
                    raise SimViolation(
                        f"g{g}: log matching: n{other[0]} and n{nid} both hold term {e.term} at "
                        f"index {i} but differ there or before"
                    )

    def _full_check(self) -> None:
        for g in range(self.n_groups):
            for node in self.nodes.values():
                if node.up:
                    self._check_committed_prefix(node, node.replicas[g])
            self._check_log_matching(g, tails_only=False)

    def _final_check(self) -> None:
        """Every acknowledged proposal is in every replica's log, at its index and term."""
        for g in range(self.n_groups):
            for payload, p in self.proposals[g].items():
                if not p.acked:
                    continue
                for node in self.nodes.values():
                    rep = node.replicas[g]
                    raft = rep.raft
                    assert raft is not None
                    log = raft.log
                    if p.index > log.committed:
                        raise SimViolation(
                            f"g{g}: n{node.id}'s commit {log.committed} is below acknowledged "
                            f"proposal {p.term}/{p.index}"
                        )
                    if p.index < log.first_index():
                        # Compacted: covered by the snapshot, which must be the committed state.
                        snap = rep.storage.snapshot()
                        index, chain = _SNAP_DATA.unpack(snap.data)
                        if index >= len(self.chains[g]) or self.chains[g][index] != chain:
                            raise SimViolation(
                                f"g{g}: n{node.id}'s snapshot at {index} is not the committed state"
                            )
                        continue
                    e = log.slice(p.index, p.index + 1, _HUGE)[0]
                    if e.term != p.term or e.data != payload:
                        raise SimViolation(
                            f"g{g}: acknowledged proposal {payload[:24]!r} ({p.term}/{p.index}) is lost "
                            f"on n{node.id}, which holds {e.term}/{e.index} there"
                        )

    # -- helpers ----------------------------------------------------------------------------

    def _current_leader(self, g: int) -> int | None:
        """The live leader of the highest term in ``g`` (None if no live node leads)."""
        best: tuple[int, int] | None = None
        for node in self.nodes.values():
            raft = node.replicas[g].raft
            if node.up and raft is not None and raft.role is Role.LEADER:
                if best is None or raft.term > best[0]:
                    best = (raft.term, node.id)
        return best[1] if best is not None else None

    def _group_state(self, g: int) -> str:
        parts = []
        for node in self.nodes.values():
            raft = node.replicas[g].raft
            if raft is None:
                parts.append(f"n{node.id} down")
            else:
                parts.append(
                    f"n{node.id} {raft.role.name.lower()} term {raft.term} lead {raft.lead} "
                    f"commit {raft.log.committed} last {raft.log.last_index()}"
                )
        return ", ".join(parts)

    def _event(self, kind: str, text: str) -> None:
        if kind in self.stats:
            self.stats[kind] += 1
        self._mix(5, FAULT_KINDS.index(kind) if kind in FAULT_KINDS else -1)
        self._note(text)

    def _note(self, text: str) -> None:
        if self.trace is not None:
            self.trace.append(f"[{self.tick}.{self.now % STEPS_PER_TICK}] {text}")

    def _mix(self, *values: int) -> None:
        buf = self._hash_buf
        buf.extend(values)
        if len(buf) > 4096:
            self._flush_hash()

    def _flush_hash(self) -> None:
        self._hash.update(self._hash_buf.tobytes())
        self._hash_buf = array("q")


def run_seed(
    seed: int,
    *,
    nodes: int = 3,
    groups: int | None = None,
    safety_ticks: int = SAFETY_TICKS,
    trace: bool = False,
    node_factory: NodeFactory | None = None,
) -> RunResult:
    """One seeded run (see the module docstring)."""
    return Simulation(
        seed, nodes=nodes, groups=groups, safety_ticks=safety_ticks, trace=trace, node_factory=node_factory
    ).run()


def run_seeds(seeds: Iterable[int], **kwargs: Any) -> list[RunResult]:
    return [run_seed(seed, **kwargs) for seed in seeds]


def summarize(results: Iterable[RunResult]) -> dict[str, Any]:
    """Totals over runs, as ``sentinel sim raft --json`` prints them."""
    results = list(results)
    totals = dict.fromkeys(_COUNTERS, 0)
    for r in results:
        for key, value in r.stats.items():
            totals[key] += value
    liveness = [r.liveness_ticks for r in results if r.ok]
    slowest = max((r for r in results if r.ok), key=lambda r: r.liveness_ticks, default=None)
    digest = hashlib.blake2b(digest_size=16)
    for r in results:
        digest.update(f"{r.seed}:{r.trace_hash};".encode())
    return {
        "runs": len(results),
        "ok": sum(r.ok for r in results),
        "failed": sum(not r.ok for r in results),
        "ticks": sum(r.ticks for r in results),
        "faults": {kind: totals[kind] for kind in FAULT_KINDS},
        "proposals": totals["proposals"],
        "proposals_refused": totals["proposals_refused"],
        "commits": totals["commits"],
        "elections": totals["elections"],
        "leader_changes": totals["leader_changes"],
        "transfers": totals["transfer"],
        "crashes": totals["crash"],
        "restarts": totals["restart"],
        "snapshots_installed": totals["snapshots_installed"],
        "messages": totals["messages"],
        "readies": totals["readies"],
        "liveness_ticks_max": max(liveness, default=0),
        "liveness_ticks_max_seed": slowest.seed if slowest is not None else None,
        "liveness_ticks_mean": round(sum(liveness) / len(liveness), 1) if liveness else 0.0,
        "failures": [
            {"seed": r.seed, "nodes": r.nodes, "groups": r.groups, "phase": r.phase, "violation": r.violation}
            for r in results
            if not r.ok
        ],
        "digest": digest.hexdigest(),
    }
