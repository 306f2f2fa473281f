"""The values the Raft core works with: entries, hard state, snapshots and messages.

These are plain, immutable-by-convention objects with ``__slots__`` (the core builds
thousands of them per second, so they are not attrs classes with validators). Entry
payloads are ``bytes`` passed by reference from ``propose`` through the log, the
messages and the Ready to the application: nothing below the codec copies or re-encodes
them.

Index and term arithmetic (the Raft paper's conventions):

* indices start at 1; index 0 with term 0 is the empty log's sentinel;
* a term of 0 in a message means "no term" only for the hint fields (``log_term`` of a
  rejection whose hint is unknown); every network message carries the sender's term > 0.
"""

from __future__ import annotations

import enum
from typing import Final

NONE: Final = 0  # "no node": no leader known, no vote cast. Node ids are >= 1.


class Role(enum.IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


class MsgType(enum.IntEnum):
    """Network message types. Local operations (campaign, propose, transfer) are methods of
    the node, not messages, so a message from the wire can never trigger them."""

    APP = 1  # leader -> follower: entries after (index, log_term), and the leader's commit
    APP_RESP = 2  # follower -> leader: ack of index, or a reject with a (hint, log_term) backup hint
    VOTE = 3  # candidate -> all: campaign for term, with its last (log_term, index)
    VOTE_RESP = 4
    PRE_VOTE = 5  # pre-candidate -> all: would you vote for me at term (= its term + 1)?
    PRE_VOTE_RESP = 6
    HEARTBEAT = 7  # leader -> follower: term and min(follower's match, commit)
    HEARTBEAT_RESP = 8
    SNAP = 9  # leader -> follower: the application snapshot the follower must install
    TIMEOUT_NOW = 10  # leader -> transfer target: campaign now, without pre-vote


RESPONSE_TYPES: Final = frozenset(
    {MsgType.APP_RESP, MsgType.VOTE_RESP, MsgType.PRE_VOTE_RESP, MsgType.HEARTBEAT_RESP}
)


class Entry:
    """One log entry. ``data`` is opaque to the core; an empty ``data`` is the no-op entry a
    new leader appends to commit its term."""

    __slots__ = ("data", "index", "term")

    def __init__(self, term: int, index: int, data: bytes = b"") -> None:
        self.term = term
        self.index = index
        self.data = data

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Entry)
            and self.term == other.term
            and self.index == other.index
            and self.data == other.data
        )

    def __hash__(self) -> int:
        return hash((self.term, self.index, self.data))

    def __repr__(self) -> str:
        return f"{self.term}/{self.index}" + (
            f" {self.data!r}" if len(self.data) <= 16 else f" <{len(self.data)} B>"
        )


# What an entry costs against the byte limits beyond its payload (its term and index, and
# the framing on the wire): a stream of empty entries is still bounded.
ENTRY_OVERHEAD: Final = 24


def entry_size(entry: Entry) -> int:
    return len(entry.data) + ENTRY_OVERHEAD


class HardState:
    """What must be durable before a node says anything that depends on it: its term, the
    vote it cast in that term, and the commit index it learned (commit alone needs no
    fsync, but it is persisted with the rest so a restart does not re-apply from zero)."""

    __slots__ = ("commit", "term", "vote")

    def __init__(self, term: int = 0, vote: int = NONE, commit: int = 0) -> None:
        self.term = term
        self.vote = vote
        self.commit = commit

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, HardState)
            and self.term == other.term
            and self.vote == other.vote
            and self.commit == other.commit
        )

    def __hash__(self) -> int:
        return hash((self.term, self.vote, self.commit))

    def __repr__(self) -> str:
        return f"HardState(term={self.term} vote={self.vote} commit={self.commit})"


class Snapshot:
    """The application state at ``index`` (whose entry had ``term``): what a follower needs
    to resume from ``index + 1`` when the leader no longer has the entries before it. The
    core never looks inside ``data`` (a partition's new start offset, the controller's
    metadata)."""

    __slots__ = ("data", "index", "term")

    def __init__(self, index: int, term: int, data: bytes = b"") -> None:
        self.index = index
        self.term = term
        self.data = data

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Snapshot)
            and self.index == other.index
            and self.term == other.term
            and self.data == other.data
        )

    def __hash__(self) -> int:
        return hash((self.index, self.term, self.data))

    def __repr__(self) -> str:
        return f"Snapshot(index={self.index} term={self.term} {len(self.data)} B)"


class Message:
    """One Raft message. Which fields mean something depends on ``type``:

    ====================  =====================================================================
    APP                   index/log_term: the entry before ``entries``; commit: leader's commit
    APP_RESP              index: highest index now matching the leader's log (ack), or the
                          rejected ``index``; reject, reject_hint, log_term: the backup hint
    VOTE, PRE_VOTE        index/log_term: the candidate's last entry; transfer: campaign ordered
                          by a leadership transfer (bypasses the leader lease)
    *_VOTE_RESP           reject
    HEARTBEAT             commit: min(follower's match, leader's commit)
    SNAP                  snapshot
    TIMEOUT_NOW           (term only)
    ====================  =====================================================================
    """

    __slots__ = (
        "commit",
        "entries",
        "frm",
        "index",
        "log_term",
        "recovering",
        "reject",
        "reject_hint",
        "snapshot",
        "term",
        "to",
        "transfer",
        "type",
    )

    def __init__(
        self,
        type: MsgType,
        frm: int,
        to: int,
        term: int,
        *,
        index: int = 0,
        log_term: int = 0,
        commit: int = 0,
        entries: list[Entry] | None = None,
        reject: bool = False,
        reject_hint: int = 0,
        snapshot: Snapshot | None = None,
        transfer: bool = False,
        recovering: bool = False,
    ) -> None:
        self.type = type
        self.frm = frm
        self.to = to
        self.term = term
        self.index = index
        self.log_term = log_term
        self.commit = commit
        self.entries: list[Entry] = entries if entries is not None else []
        self.reject = reject
        self.reject_hint = reject_hint
        self.snapshot = snapshot
        self.transfer = transfer
        # The sender lost durable state (damage found at start-up) and has not caught up
        # since: it must not count toward any quorum (see RaftNode's ``recovering``).
        self.recovering = recovering

    def _key(self) -> tuple[object, ...]:
        return (
            self.type,
            self.frm,
            self.to,
            self.term,
            self.index,
            self.log_term,
            self.commit,
            tuple(self.entries),
            self.reject,
            self.reject_hint,
            self.snapshot,
            self.transfer,
            self.recovering,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Message) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return describe_message(self)


def describe_message(m: Message) -> str:
    """One readable line, the form the scenario tests print (``1->2 APP Term:2 Log:1/5 ...``)."""
    parts = [f"{m.frm}->{m.to} {m.type.name} Term:{m.term}"]
    if m.recovering:
        parts.append("Recovering")
    t = m.type
    if t is MsgType.APP:
        parts.append(f"Log:{m.log_term}/{m.index} Commit:{m.commit}")
        if m.entries:
            parts.append("Entries:[" + ", ".join(repr(e) for e in m.entries) + "]")
    elif t is MsgType.APP_RESP:
        if m.reject:
            parts.append(f"Rejected:{m.index} Hint:{m.log_term}/{m.reject_hint}")
        else:
            parts.append(f"Index:{m.index}")
    elif t in (MsgType.VOTE, MsgType.PRE_VOTE):
        parts.append(f"Log:{m.log_term}/{m.index}")
        if m.transfer:
            parts.append("Transfer")
    elif t in (MsgType.VOTE_RESP, MsgType.PRE_VOTE_RESP):
        parts.append("Rejected" if m.reject else "Granted")
    elif t is MsgType.HEARTBEAT:
        parts.append(f"Commit:{m.commit}")
    elif t is MsgType.SNAP and m.snapshot is not None:
        parts.append(f"Snapshot:{m.snapshot.term}/{m.snapshot.index}")
    return " ".join(parts)
