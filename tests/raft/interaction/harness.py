"""Data-driven interaction tests for the Raft core, in the style of etcd-io/raft's
``interaction_test.go`` (our own format and harness; nothing is shared with etcd's code).

Every ``testdata/*.txt`` file is a script of stanzas::

    # comment lines (kept as they are on rewrite)
    command arg key=value key=(a,b)
    ----
    expected output, one or more lines, ended by a blank line

A file's stanzas run in order against one fresh ``InteractionEnv``: a group of
``RaftNode``s, each on its own ``MemoryStorage`` (its "disk"), with a network of
per-recipient message queues that only moves when a command says so. The output prints
every Ready a node handles, in the order the Ready contract (``sentinel/raft/core.py``)
prescribes, so the ordering duties are visible::

    Ready MustSync=true:
    HardState Term:2 Vote:1 Commit:11     (persisted; absent when unchanged)
    Snapshot Index:17 Term:1              (installed)
    Entries:                              (persisted; entry i replaces the suffix from i)
    CommittedEntries:                     (applied, after the persist)
    Messages:                             (sent at once, before the persist)
    MessagesAfterPersist:                 (sent only after the persist: acks, vote grants)

Messages print with ``messages.describe_message``, e.g. ``1->2 APP Term:2 Log:1/5 Commit:5
Entries:[2/6 b'x']``; entries as ``term/index`` and their data. A node whose role, term or
known leader changes prints ``N is <role> at term T, leader L``.

To regenerate the expected output after a deliberate change, run::

    SENTINEL_REWRITE=1 pytest tests/raft/test_interaction.py

and then READ the diff: a rewritten scenario is only right if its comments still hold.

Commands (node ids start at 1; ``N...`` means one or more ids):

``add-nodes N [voters=(1,2,3)] [pre-vote=false] [check-quorum=false] [index=K]
[election-tick=3] [heartbeat-tick=1] [inflight=K] [max-size-per-msg=B]``
    Add N nodes (ids continue from the existing ones). ``voters`` defaults to all the ids
    added. ``index=K`` starts every log at a snapshot of index K, term 1 (so the first
    leader's no-op is 1/K+1). Defaults are etcd's test stub (election 3 ticks, heartbeat 1,
    no limits on message size or window, pre-vote and check-quorum off): each scenario
    says which features it turns on.
``campaign N`` / ``propose N data`` / ``transfer-leadership from=A to=B``
    The node's input; a refusal (NotLeader, ProposalDropped) is printed.
``tick-election N...`` / ``tick-heartbeat N...`` / ``tick N count``
    Tick an election timeout (election-tick ticks; the randomized timeout may be longer),
    a heartbeat interval, or ``count`` ticks.
``set-randomized-election-timeout N timeout=T``
    Pin the node's randomized timeout (until its next role change draws a new one).
``process-ready N...``
    Handle one Ready on each node: print it, send ``messages``, persist snapshot,
    entries and hard state, send ``messages_after_persist``, apply, ``advance``.
``deliver-msgs N... [drop=(N,...)] [type=APP] [from=A] [count=K]``
    Step the queued messages to each listed node, in the order they were sent; ``drop``
    discards the queues of those nodes instead; ``type``/``from``/``count`` select which
    messages (the others stay queued, in order).
``stabilize [N...]``
    Handle Readys and deliver messages among the nodes (all by default) until nothing
    is left to do.
``isolate N`` / ``cut A B`` / ``heal``
    Lose every message to or from N / between A and B: those sent while the link is down
    and those already queued when it is delivered. ``heal`` restores every link. Lost
    messages are printed as ``dropped: ...``.
``report-unreachable A B``
    A's transport reports that B is unreachable.
``compact N index``
    Node N's storage drops its log up to ``index`` (applied), keeping a snapshot there.
``load-log N terms=(1,1,4,...) [term=T] [commit=C]``
    Replace node N's disk by a log holding entries of those terms after the base index
    and restart it (a hard state at term T, by default the last entry's, no vote, commit C,
    by default the base index): how a scenario builds divergent logs such as Figure 7's.
``restart N``
    Restart node N from its disk (what was not persisted is lost).
``log-level none`` / ``log-level all``
    Hide the output of the commands that follow (set-up steps; errors still fail), or
    show it again.
``raft-log N`` / ``raft-state`` / ``status N``
    Print the persisted log, every node's role/term/leader, or one node's view (and a
    leader's progress of each follower: state, match, next, ``paused``, the in-flight
    appends, and ``inactive`` when not heard from since the last check-quorum sample).

Two safety checks run throughout: no two nodes ever become leader in the same term (§5.2
Election Safety, checked on every role change), and no two nodes apply different entries
at one index (§5.4.3 State Machine Safety, checked on every apply). A violation fails
the test with the file, line and command where it happened.
"""

from __future__ import annotations

import functools
import os
import random
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import attrs

from sentinel.raft.core import Config, RaftError, RaftNode, Ready
from sentinel.raft.messages import (
    NONE,
    Entry,
    HardState,
    Message,
    MsgType,
    Role,
    Snapshot,
    describe_message,
)
from sentinel.raft.progress import ProgressState
from sentinel.raft.storage import LogCompacted, MemoryStorage

REWRITE_ENV = "SENTINEL_REWRITE"

# etcd's interaction stub: short timeouts keep scripts short; no size or window limits
# unless a scenario sets them.
DEFAULT_ELECTION_TICK = 3
DEFAULT_HEARTBEAT_TICK = 1
UNLIMITED = 1 << 62
# stabilize gives up after this many rounds: a livelock is a failure, not a hang.
MAX_STABILIZE_ROUNDS = 1000


class ScenarioError(Exception):
    """A script or the harness went wrong (bad command, broken safety property)."""


# == the file format ==========================================================================


@attrs.define
class Stanza:
    preamble: list[str]  # comment and blank lines before the command, kept on rewrite
    line: int  # 1-based line of the command, for error messages
    command: str
    expected: list[str]


def parse_script(text: str) -> tuple[list[Stanza], list[str]]:
    """The stanzas of a script, and the lines after the last one."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    stanzas: list[Stanza] = []
    pending: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.lstrip().startswith("#"):
            pending.append(line)
            i += 1
            continue
        start = i
        i += 1
        if i >= len(lines) or lines[i] != "----":
            raise ScenarioError(f"line {start + 1}: expected '----' after the command {line!r}")
        i += 1
        expected: list[str] = []
        while i < len(lines) and lines[i] != "":
            expected.append(lines[i])
            i += 1
        i += 1  # the blank line that ends the stanza
        stanzas.append(Stanza(pending, start + 1, line, expected))
        pending = []
    return stanzas, pending


def render_script(stanzas: list[Stanza], outputs: list[list[str]], trailer: list[str]) -> str:
    out: list[str] = []
    for stanza, output in zip(stanzas, outputs, strict=True):
        out.extend(stanza.preamble)
        out.append(stanza.command)
        out.append("----")
        out.extend(output)
        out.append("")
    # The blank line ending the last stanza was written above; keep any trailing comments.
    while trailer and trailer[0] == "":
        trailer = trailer[1:]
    out.extend(trailer)
    return "\n".join(out).rstrip("\n") + "\n"


_TOKEN = re.compile(r"\S+=\([^)]*\)|\S+")


def parse_command(line: str) -> tuple[str, list[str], dict[str, str]]:
    tokens = _TOKEN.findall(line)
    positional = [t for t in tokens[1:] if "=" not in t]
    keyed = dict(t.split("=", 1) for t in tokens[1:] if "=" in t)
    return tokens[0], positional, keyed


def _ids(value: str) -> list[int]:
    value = value.strip()
    if value.startswith("(") and value.endswith(")"):
        value = value[1:-1]
    return [int(v) for v in re.split(r"[,\s]+", value) if v]


def _bool(value: str) -> bool:
    if value not in ("true", "false"):
        raise ScenarioError(f"expected true or false, got {value!r}")
    return value == "true"


# == the environment ==========================================================================


@attrs.define
class Node:
    id: int
    config: Config
    storage: MemoryStorage
    rng: random.Random
    raft: RaftNode
    applied: list[Entry] = attrs.Factory(list)
    # What the output last said about the node: (role, term, leader).
    shown: tuple[Role, int, int] = (Role.FOLLOWER, 0, NONE)


class InteractionEnv:
    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {}
        self.queues: dict[int, list[Message]] = {}
        self.cut_links: set[frozenset[int]] = set()
        self.isolated: set[int] = set()
        self.base_index = 0
        self.leaders: dict[int, int] = {}  # term -> the node that became leader in it
        self.applied_at: dict[int, Entry] = {}  # index -> the entry applied there
        self.out: list[str] = []
        self._indent = 0
        self._handlers: dict[str, Callable[[list[str], dict[str, str]], None]] = {
            "add-nodes": self._add_nodes,
            "campaign": self._campaign,
            "propose": self._propose,
            "transfer-leadership": self._transfer_leadership,
            "tick-election": self._tick_election,
            "tick-heartbeat": self._tick_heartbeat,
            "tick": self._tick,
            "set-randomized-election-timeout": self._set_timeout,
            "process-ready": self._process_ready_cmd,
            "deliver-msgs": self._deliver_msgs,
            "stabilize": self._stabilize,
            "isolate": self._isolate,
            "cut": self._cut,
            "heal": self._heal,
            "report-unreachable": self._report_unreachable,
            "compact": self._compact,
            "load-log": self._load_log,
            "restart": self._restart,
            "raft-log": self._raft_log,
            "raft-state": self._raft_state,
            "status": self._status,
            "log-level": self._log_level,
        }
        self.quiet = False

    # Keyword arguments each command takes: a misspelt one (``prevote=true``) must fail
    # the script, not silently run a scenario without the feature it claims to show.
    _KEYS: dict[str, frozenset[str]] = {
        "add-nodes": frozenset(
            {
                "voters",
                "index",
                "pre-vote",
                "check-quorum",
                "election-tick",
                "heartbeat-tick",
                "inflight",
                "max-size-per-msg",
            }
        ),
        "transfer-leadership": frozenset({"from", "to"}),
        "set-randomized-election-timeout": frozenset({"timeout"}),
        "deliver-msgs": frozenset({"drop", "type", "from", "count"}),
        "load-log": frozenset({"terms", "term", "commit"}),
    }

    # -- running a command -----------------------------------------------------------------

    def handle(self, line: str) -> list[str]:
        cmd, args, kwargs = parse_command(line)
        handler = self._handlers.get(cmd)
        if handler is None:
            raise ScenarioError(f"unknown command {cmd!r}")
        unknown = set(kwargs) - self._KEYS.get(cmd, frozenset())
        if unknown:
            raise ScenarioError(f"{cmd} takes no argument {', '.join(sorted(unknown))}")
        self.out = []
        self._indent = 0
        handler(args, kwargs)
        if self.quiet:
            return ["ok"]
        return self.out or ["ok"]

    def _print(self, text: str) -> None:
        self.out.append("  " * self._indent + text)

    def _node(self, value: str | int) -> Node:
        node = self.nodes.get(int(value))
        if node is None:
            raise ScenarioError(f"no node {value}")
        return node

    def _note_state(self, node: Node) -> None:
        """Print a change of role, term or known leader (etcd prints these as log lines)."""
        r = node.raft
        now = (r.role, r.term, r.lead)
        if now == node.shown:
            return
        node.shown = now
        lead = str(r.lead) if r.lead != NONE else "none"
        role = r.role.name.lower().replace("_", "-")
        self._print(f"{node.id} is {role} at term {r.term}, leader {lead}")
        if r.role is Role.LEADER:
            other = self.leaders.setdefault(r.term, node.id)
            if other != node.id:
                raise ScenarioError(f"election safety: {other} and {node.id} both lead term {r.term}")

    def _guarded(self, node: Node, action: Callable[[], object]) -> None:
        """Run an input; print the core's refusal (as the application would see it)."""
        try:
            action()
        except RaftError as e:
            self._print(f"{type(e).__name__}: {e}")
        self._note_state(node)

    # -- nodes -------------------------------------------------------------------------------

    def _add_nodes(self, args: list[str], kw: dict[str, str]) -> None:
        n = int(args[0])
        first = len(self.nodes) + 1
        ids = list(range(first, first + n))
        voters = tuple(_ids(kw["voters"])) if "voters" in kw else tuple(ids)
        index = int(kw.get("index", "0"))
        if self.nodes and index != self.base_index:
            raise ScenarioError("every node must start at the same index")
        self.base_index = index
        for node_id in ids:
            config = Config(
                id=node_id,
                voters=voters,
                election_tick=int(kw.get("election-tick", DEFAULT_ELECTION_TICK)),
                heartbeat_tick=int(kw.get("heartbeat-tick", DEFAULT_HEARTBEAT_TICK)),
                max_size_per_msg=int(kw.get("max-size-per-msg", UNLIMITED)),
                max_inflight_msgs=int(kw.get("inflight", UNLIMITED)),
                max_inflight_bytes=0,
                pre_vote=_bool(kw.get("pre-vote", "false")),
                check_quorum=_bool(kw.get("check-quorum", "false")),
                applied=index,
            )
            storage = MemoryStorage()
            if index:
                storage.apply_snapshot(Snapshot(index, 1, b""))
            # One seeded generator per node: the randomized timeouts are the same on every run.
            rng = random.Random(node_id)
            self.nodes[node_id] = Node(node_id, config, storage, rng, RaftNode(config, storage, rng))
            self.queues[node_id] = []

    def _restart_node(self, node: Node) -> None:
        hs = node.storage.initial_state()
        applied = max(self.base_index, node.applied[-1].index if node.applied else 0)
        node.config = attrs.evolve(node.config, applied=min(applied, max(hs.commit, self.base_index)))
        node.raft = RaftNode(node.config, node.storage, node.rng)
        node.shown = (Role.FOLLOWER, -1, NONE)  # always print the state after a restart
        self._note_state(node)

    def _restart(self, args: list[str], kw: dict[str, str]) -> None:
        self._restart_node(self._node(args[0]))

    def _load_log(self, args: list[str], kw: dict[str, str]) -> None:
        node = self._node(args[0])
        terms = _ids(kw["terms"])
        storage = MemoryStorage()
        if self.base_index:
            storage.apply_snapshot(Snapshot(self.base_index, 1, b""))
        storage.append([Entry(t, self.base_index + i + 1) for i, t in enumerate(terms)])
        last_term = terms[-1] if terms else 1
        term = int(kw.get("term", last_term))
        commit = int(kw.get("commit", self.base_index))
        storage.set_hard_state(HardState(term, NONE, commit))
        node.storage = storage
        node.applied = []
        self._restart_node(node)

    # -- inputs ------------------------------------------------------------------------------

    def _campaign(self, args: list[str], kw: dict[str, str]) -> None:
        node = self._node(args[0])
        self._guarded(node, node.raft.campaign)

    def _propose(self, args: list[str], kw: dict[str, str]) -> None:
        node = self._node(args[0])
        data = args[1].encode() if len(args) > 1 else b""
        self._guarded(node, lambda: node.raft.propose(data))

    def _transfer_leadership(self, args: list[str], kw: dict[str, str]) -> None:
        node = self._node(kw["from"])
        to = int(kw["to"])
        self._guarded(node, lambda: node.raft.transfer_leadership(to))

    def _ticks(self, node: Node, count: int) -> None:
        for _ in range(count):
            node.raft.tick()
            self._note_state(node)

    def _tick_election(self, args: list[str], kw: dict[str, str]) -> None:
        for a in args:
            node = self._node(a)
            self._ticks(node, node.config.election_tick)

    def _tick_heartbeat(self, args: list[str], kw: dict[str, str]) -> None:
        for a in args:
            node = self._node(a)
            self._ticks(node, node.config.heartbeat_tick)

    def _tick(self, args: list[str], kw: dict[str, str]) -> None:
        self._ticks(self._node(args[0]), int(args[1]))

    def _set_timeout(self, args: list[str], kw: dict[str, str]) -> None:
        self._node(args[0]).raft.randomized_election_timeout = int(kw["timeout"])

    def _report_unreachable(self, args: list[str], kw: dict[str, str]) -> None:
        node = self._node(args[0])
        node.raft.report_unreachable(int(args[1]))

    # -- Ready handling ----------------------------------------------------------------------

    def _process_ready_cmd(self, args: list[str], kw: dict[str, str]) -> None:
        for a in args:
            node = self._node(a)
            if len(args) > 1:
                self._print(f"> {node.id} handling Ready")
                self._indent += 1
            self.process_ready(node)
            if len(args) > 1:
                self._indent -= 1

    def process_ready(self, node: Node) -> None:
        """Handle one Ready in the contract's order (core.py's module docstring)."""
        r = node.raft
        if not r.has_ready():
            self._print("no Ready")
            return
        rd = r.ready()
        self._describe_ready(rd)
        # 1. Messages that promise nothing about this node's disk go out at once.
        self._send(rd.messages)
        # 2. Persist: snapshot, then entries (replacing the suffix), then the hard state.
        if rd.snapshot is not None:
            node.storage.apply_snapshot(rd.snapshot)
        if rd.entries:
            node.storage.append(rd.entries)
        if rd.hard_state is not None:
            node.storage.set_hard_state(rd.hard_state)
        # 3. Only now the messages that promise durability.
        self._send(rd.messages_after_persist)
        # 4. Apply.
        for e in rd.committed_entries:
            self._apply(node, e)
        # 5. Advance: the core learns of the persist (self-acks, own vote are stepped here).
        r.advance(rd)
        self._note_state(node)

    def _describe_ready(self, rd: Ready) -> None:
        self._print(f"Ready MustSync={str(rd.must_sync).lower()}:")
        if rd.hard_state is not None:
            hs = rd.hard_state
            self._print(f"HardState Term:{hs.term} Vote:{hs.vote} Commit:{hs.commit}")
        if rd.snapshot is not None:
            self._print(f"Snapshot Index:{rd.snapshot.index} Term:{rd.snapshot.term}")
        for title, items in (
            ("Entries:", [repr(e) for e in rd.entries]),
            ("CommittedEntries:", [repr(e) for e in rd.committed_entries]),
            ("Messages:", [describe_message(m) for m in rd.messages]),
            ("MessagesAfterPersist:", [describe_message(m) for m in rd.messages_after_persist]),
        ):
            if items:
                self._print(title)
                for item in items:
                    self._print(item)

    def _apply(self, node: Node, entry: Entry) -> None:
        seen = self.applied_at.setdefault(entry.index, entry)
        if seen != entry:
            raise ScenarioError(
                f"state machine safety: node {node.id} applies {entry!r} where {seen!r} was applied"
            )
        node.applied.append(entry)

    # -- the network -------------------------------------------------------------------------

    def _send(self, messages: Iterable[Message]) -> None:
        for m in messages:
            if m.to not in self.queues:
                raise ScenarioError(f"message to unknown node: {describe_message(m)}")
            if self._link_down(m):
                # Lost on a partitioned link: it never arrives, even after a heal.
                self._print(f"dropped: {describe_message(m)}")
                continue
            self.queues[m.to].append(m)

    def _link_down(self, m: Message) -> bool:
        return m.frm in self.isolated or m.to in self.isolated or frozenset((m.frm, m.to)) in self.cut_links

    def deliver(self, to: int, select: Callable[[Message], bool], limit: int | None = None) -> int:
        """Step the selected queued messages to ``to``, in order; returns how many."""
        node = self._node(to)
        queue = self.queues[to]
        taken: list[Message] = []
        kept: list[Message] = []
        for m in queue:
            if select(m) and (limit is None or len(taken) < limit):
                taken.append(m)
            else:
                kept.append(m)
        self.queues[to] = kept
        for m in taken:
            if self._link_down(m):
                self._print(f"dropped: {describe_message(m)}")
                continue
            self._print(describe_message(m))
            self._guarded(node, functools.partial(node.raft.step, m))
        return len(taken)

    def _deliver_msgs(self, args: list[str], kw: dict[str, str]) -> None:
        msg_type = MsgType[kw["type"]] if "type" in kw else None
        frm = int(kw["from"]) if "from" in kw else None
        limit = int(kw["count"]) if "count" in kw else None

        def select(m: Message) -> bool:
            return (msg_type is None or m.type is msg_type) and (frm is None or m.frm == frm)

        n = 0
        for a in args:
            n += self.deliver(int(a), select, limit)
        for d in _ids(kw.get("drop", "()")):
            queue = self.queues[self._node(d).id]
            keep = [m for m in queue if not select(m)]
            for m in queue:
                if select(m):
                    self._print(f"dropped: {describe_message(m)}")
                    n += 1
            self.queues[d] = keep
        if n == 0:
            self._print("no messages")

    def _stabilize(self, args: list[str], kw: dict[str, str]) -> None:
        ids = [int(a) for a in args] or sorted(self.nodes)
        for _ in range(MAX_STABILIZE_ROUNDS):
            done = True
            for i in ids:
                node = self._node(i)
                if node.raft.has_ready():
                    done = False
                    self._print(f"> {i} handling Ready")
                    self._indent += 1
                    self.process_ready(node)
                    self._indent -= 1
            for i in ids:
                if self.queues[i]:
                    done = False
                    self._print(f"> {i} receiving messages")
                    self._indent += 1
                    self.deliver(i, lambda m: True)
                    self._indent -= 1
            if done:
                return
        raise ScenarioError(f"stabilize did not settle in {MAX_STABILIZE_ROUNDS} rounds")

    def _isolate(self, args: list[str], kw: dict[str, str]) -> None:
        self.isolated.update(int(a) for a in args)

    def _cut(self, args: list[str], kw: dict[str, str]) -> None:
        self.cut_links.add(frozenset((int(args[0]), int(args[1]))))

    def _heal(self, args: list[str], kw: dict[str, str]) -> None:
        self.isolated.clear()
        self.cut_links.clear()

    # -- storage -----------------------------------------------------------------------------

    def _compact(self, args: list[str], kw: dict[str, str]) -> None:
        node = self._node(args[0])
        index = int(args[1])
        if index > node.raft.log.applied:
            raise ScenarioError(f"node {node.id} has applied only up to {node.raft.log.applied}")
        node.storage.compact(index, f"snapshot@{index}".encode())
        self._print_log(node)

    # -- inspection --------------------------------------------------------------------------

    def _print_log(self, node: Node) -> None:
        s = node.storage
        first, last = s.first_index(), s.last_index()
        if first > 1:
            snap = s.snapshot()
            self._print(f"snapshot {snap.term}/{snap.index}")
        if last < first:
            self._print(f"log is empty: first index={first}, last index={last}")
            return
        try:
            for e in s.entries(first, last + 1, UNLIMITED):
                self._print(repr(e))
        except LogCompacted as e:  # cannot happen for first..last; say so if it does
            raise ScenarioError(f"storage of node {node.id} is inconsistent: {e}") from e

    def _log_level(self, args: list[str], kw: dict[str, str]) -> None:
        if args[0] not in ("none", "all"):
            raise ScenarioError("log-level is none or all")
        self.quiet = args[0] == "none"

    def _raft_log(self, args: list[str], kw: dict[str, str]) -> None:
        self._print_log(self._node(args[0]))

    def _raft_state(self, args: list[str], kw: dict[str, str]) -> None:
        for i in sorted(self.nodes):
            r = self.nodes[i].raft
            cut = " (isolated)" if i in self.isolated else ""
            self._print(f"{i}: {r.role.name} term={r.term} lead={r.lead}{cut}")

    def _status(self, args: list[str], kw: dict[str, str]) -> None:
        r = self._node(args[0]).raft
        st = r.status()
        extra = f" transferee={st.lead_transferee}" if st.lead_transferee != NONE else ""
        self._print(
            f"{st.id}: {st.role.name} term={st.term} vote={st.vote} lead={st.leader} "
            f"commit={st.commit} applied={st.applied} log={st.first_index}..{st.last_index}{extra}"
        )
        if r.role is not Role.LEADER:
            return
        for peer, pr in sorted(r.prs.items()):
            line = f"  {peer}: {pr.state.name} match={pr.match} next={pr.next}"
            if pr.state is ProgressState.SNAPSHOT:
                line += f" pending_snapshot={pr.pending_snapshot}"
            if pr.is_paused() and pr.state is not ProgressState.SNAPSHOT:
                line += " paused"
            if pr.inflights.queue:
                line += f" inflight={len(pr.inflights)}" + ("[full]" if pr.inflights.full() else "")
            if not pr.recent_active and peer != r.id:
                line += " inactive"
            self._print(line)


# == running a script =========================================================================


class ScriptFailed(Exception):
    """A stanza raised a ScenarioError; the message names the file, line and command."""


def run_script(path: Path) -> tuple[str, str]:
    """Run the script at ``path``; return (the file's text, the text with actual output)."""
    text = path.read_text()
    stanzas, trailer = parse_script(text)
    env = InteractionEnv()
    outputs: list[list[str]] = []
    for stanza in stanzas:
        try:
            outputs.append(env.handle(stanza.command))
        except ScenarioError as e:
            shown = "\n".join(env.out)
            raise ScriptFailed(f"{path.name}:{stanza.line}: {stanza.command}\n{shown}\nerror: {e}") from None
    return text, render_script(stanzas, outputs, trailer)


def rewrite_requested() -> bool:
    return os.environ.get(REWRITE_ENV, "") not in ("", "0")
