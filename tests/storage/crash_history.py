"""The crash test's checker: is a recovered store a legal outcome of the writes it was sent?

Pure: it takes the child's event log (``begin``/``ack`` lines, in the order the child
printed them), the state the round started from, and the recovered state, and either
returns the history that explains the recovered state or raises ``HistoryViolation``
naming what cannot be explained.

The model (what the engine promises, see ``sentinel/storage/DESIGN.md``):

* Sequence numbers are handed out contiguously from ``base_last_seq + 1``, one range per
  write batch, in the order batches reach the MemtableOwner. Every seq range belongs to a
  batch whose ``begin`` the child printed (it prints before it calls ``Store.write``). (A
  batch the WAL fails, on a full disk, leaves its seqs unused; the child never sees one:
  a failed write ends it before the kill, and the crash test fails on that.)
* The WAL holds batches in seq order (a group commit is one write of several batches, in
  seq order), a kill cuts it at some point, and recovery drops the torn tail: what
  survives is every batch up to some seq ``S`` and nothing after (batches are atomic).
  ``S`` is at least the highest acknowledged seq, and the recovered ``last_seq`` is ``S``.
* A batch whose ``begin`` was printed after some ``ack`` got seqs above that ack's.

The acknowledged batches' seqs are known from their acks; an in-flight batch (begun, not
acknowledged) has unknown seqs: it may fill a gap between acknowledged ranges (it was
durable, only its ack was not printed: the group commit answered another writer first,
and the parent killed on reading that writer's ack), come after all of them, or never
have reached the store. The checker tries every placement of the in-flight batches (at
most one per writer, so a handful) that fills the gaps exactly and respects the order
above, and every cut ``S`` at a batch boundary at or above the last acknowledged seq, and
accepts exactly when one of them, applied to the base, gives the recovered entries with
their seqs. Values are unique (they name the round, writer, write and op), so a
recovered value pins the in-flight batch it came from to its seqs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence

import attrs

Op = tuple[str, str | None]  # (key, value), None for a delete
Entry = tuple[int, str]  # a live entry: (seq, value)


class HistoryViolation(AssertionError):
    """The recovered state is no legal outcome of the writes."""


@attrs.frozen
class Begin:
    writer: int
    ops: tuple[Op, ...]


@attrs.frozen
class Ack:
    writer: int
    last_seq: int


Event = Begin | Ack


def parse_event(line: str) -> Event:
    """One line of the child's output (``begin <writer> <json ops>`` or ``ack <writer> <seq>``)."""
    kind, writer, rest = line.rstrip("\n").split(" ", 2)
    if kind == "begin":
        return Begin(int(writer), tuple((key, value) for key, value in json.loads(rest)))
    assert kind == "ack", line
    return Ack(int(writer), int(rest))


def format_event(event: Event) -> str:
    """The child's line for ``event`` (``parse_event``'s inverse)."""
    match event:
        case Begin(writer, ops):
            return f"begin {writer} {json.dumps(ops)}"
        case Ack(writer, last_seq):
            return f"ack {writer} {last_seq}"


@attrs.frozen
class Write:
    """One write batch of the log."""

    writer: int
    ops: tuple[Op, ...]
    # Seqs of every write acknowledged before this one began are at most this: its own
    # seqs are above it.
    after_seq: int
    last_seq: int | None  # None: in flight at the kill (begun, never acknowledged)

    @property
    def first_seq(self) -> int:
        assert self.last_seq is not None
        return self.last_seq - len(self.ops) + 1

    def describe(self) -> str:
        where = "in flight" if self.last_seq is None else f"seqs {self.first_seq}..{self.last_seq}"
        return f"writer {self.writer}'s write ({where}) {list(self.ops)!r}"


def writes_of(events: Iterable[Event]) -> list[Write]:
    """The writes of a log: acknowledged ones in ack order, then the in-flight ones."""
    begun: dict[int, tuple[tuple[Op, ...], int]] = {}
    done: list[Write] = []
    acked_up_to = 0
    for event in events:
        match event:
            case Begin(writer, ops):
                assert writer not in begun, f"writer {writer} began a write with one in flight"
                begun[writer] = (ops, acked_up_to)
            case Ack(writer, last_seq):
                ops, after = begun.pop(writer)
                done.append(Write(writer, ops, after, last_seq))
                acked_up_to = max(acked_up_to, last_seq)
    return done + [Write(writer, ops, after, None) for writer, (ops, after) in begun.items()]


@attrs.frozen
class Placed:
    write: Write
    first_seq: int


@attrs.frozen
class Outcome:
    """A history that explains a recovery: the writes applied, in seq order, up to ``cut``."""

    applied: tuple[Placed, ...]
    cut: int

    def in_flight_applied(self) -> list[Write]:
        return [p.write for p in self.applied if p.write.last_seq is None]


def check_recovery(
    base: Mapping[str, Entry],
    base_last_seq: int,
    writes: Sequence[Write],
    recovered: Mapping[str, Entry],
    last_seq: int,
    where: str = "",
) -> Outcome:
    """The history that explains ``recovered`` (and ``last_seq``) from ``base``, or raise."""
    prefix = f"{where}: " if where else ""
    acked = sorted((w for w in writes if w.last_seq is not None), key=lambda w: w.first_seq)
    in_flight = [w for w in writes if w.last_seq is None]
    _check_acknowledged_seqs(acked, base_last_seq, prefix)
    pins = _pin_in_flight(base, writes, recovered, prefix)
    best: tuple[int, Outcome, list[str]] | None = None
    for outcome in _outcomes(acked, in_flight, pins, base_last_seq):
        problems = _differences(base, outcome, recovered, last_seq)
        if not problems:
            return outcome
        if best is None or len(problems) < best[0]:
            best = (len(problems), outcome, problems)
    if best is None:
        raise HistoryViolation(
            f"{prefix}no order of the in-flight writes fills the seqs between the acknowledged ones"
            f" with each where its values were recovered: {_describe_pins(pins, in_flight)}"
        )
    _count, outcome, problems = best
    raise HistoryViolation(
        prefix + "; ".join(problems) + f" (closest history: up to seq {outcome.cut}, in flight applied:"
        f" {[w.describe() for w in outcome.in_flight_applied()]})"
    )


def case_json(
    base: Mapping[str, Entry],
    base_last_seq: int,
    events: Sequence[Event],
    recovered: Mapping[str, Entry],
    last_seq: int,
) -> str:
    """A round's whole case, for ``check_case_json`` to replay."""
    case = {
        "base": base,
        "base_last_seq": base_last_seq,
        "events": [format_event(e) for e in events],
        "recovered": recovered,
        "last_seq": last_seq,
    }
    return json.dumps(case, indent=1)


def check_case_json(text: str) -> Outcome:
    """Replay a case saved by ``case_json`` through ``check_recovery``."""
    case = json.loads(text)

    def entries(raw: Mapping[str, tuple[int, str]]) -> dict[str, Entry]:
        return {key: (seq, value) for key, (seq, value) in raw.items()}

    return check_recovery(
        entries(case["base"]),
        case["base_last_seq"],
        writes_of(parse_event(line) for line in case["events"]),
        entries(case["recovered"]),
        case["last_seq"],
    )


def _check_acknowledged_seqs(acked: Sequence[Write], base_last_seq: int, prefix: str) -> None:
    """The seqs the engine acknowledged are fresh, disjoint and in causal order."""
    previous_last = base_last_seq
    for write in acked:
        assert write.last_seq is not None
        if write.first_seq <= previous_last:
            raise HistoryViolation(f"{prefix}{write.describe()} reuses seqs at or below {previous_last}")
        if write.first_seq <= write.after_seq:
            raise HistoryViolation(
                f"{prefix}{write.describe()} got seqs at or below {write.after_seq},"
                " acknowledged before it began"
            )
        previous_last = write.last_seq


def _pin_in_flight(
    base: Mapping[str, Entry], writes: Sequence[Write], recovered: Mapping[str, Entry], prefix: str
) -> dict[int, int]:
    """Check where each recovered value comes from; the first seq of every in-flight write
    (by index among the in-flight ones) that a recovered value pins."""
    origin: dict[str, tuple[int, Write, int]] = {}  # value -> (in-flight index or -1, write, op)
    in_flight_index = 0
    for write in writes:
        index = -1
        if write.last_seq is None:
            index, in_flight_index = in_flight_index, in_flight_index + 1
        for i, (_key, value) in enumerate(write.ops):
            if value is not None:
                origin[value] = (index, write, i)
    pins: dict[int, int] = {}
    for key, (seq, value) in sorted(recovered.items()):
        if base.get(key) == (seq, value):
            continue
        if value not in origin:
            raise HistoryViolation(
                f"{prefix}{key} = {(seq, value)} was never written (and is not the base's)"
            )
        index, write, i = origin[value]
        if write.ops[i][0] != key:
            raise HistoryViolation(
                f"{prefix}{key} = {(seq, value)} holds a value written to {write.ops[i][0]}"
            )
        if write.last_seq is not None:
            if seq != write.first_seq + i:
                raise HistoryViolation(
                    f"{prefix}{key} = {(seq, value)} has the wrong seq: the value was acknowledged"
                    f" at seq {write.first_seq + i}"
                )
            continue
        first = seq - i
        if pins.setdefault(index, first) != first:
            raise HistoryViolation(
                f"{prefix}{write.describe()} is seen at two places: from seq {first} and {pins[index]}"
            )
    return pins


def _outcomes(
    acked: Sequence[Write], in_flight: Sequence[Write], pins: Mapping[int, int], base_last_seq: int
) -> Iterator[Outcome]:
    """Every legal history: placements of the in-flight writes that fill the gaps between
    the acknowledged seq ranges exactly (each above what was acknowledged before it began,
    each where a recovered value pins it), and every cut at or above the last acknowledged
    seq that includes every pinned write. Depth-first with an explicit stack: the
    acknowledged writes are hundreds long and only the gaps branch."""
    # (next acknowledged write, next seq, in-flight writes placed so far as (index, first seq))
    stack: list[tuple[int, int, tuple[tuple[int, int], ...]]] = [(0, base_last_seq + 1, ())]
    while stack:
        next_acked, seq, placed = stack.pop()
        while next_acked < len(acked) and acked[next_acked].first_seq == seq:
            last = acked[next_acked].last_seq
            assert last is not None
            seq, next_acked = last + 1, next_acked + 1
        used = {index for index, _first in placed}
        gap_end: int | None = None  # the gap before the next acknowledged write: fill it exactly
        if next_acked < len(acked):
            gap_end = acked[next_acked].first_seq
            if gap_end < seq:
                continue  # an in-flight write placed here would overlap an acknowledged one
        elif used.issuperset(pins):
            yield _outcome(acked, in_flight, placed, seq - 1)
        for index, write in enumerate(in_flight):
            end = seq + len(write.ops)
            if index in used or write.after_seq >= seq or pins.get(index, seq) != seq:
                continue
            if gap_end is not None and end > gap_end:
                continue
            stack.append((next_acked, end, (*placed, (index, seq))))


def _outcome(
    acked: Sequence[Write], in_flight: Sequence[Write], placed: Iterable[tuple[int, int]], cut: int
) -> Outcome:
    applied = [Placed(w, w.first_seq) for w in acked]
    applied += [Placed(in_flight[index], first) for index, first in placed]
    applied.sort(key=lambda p: p.first_seq)
    return Outcome(tuple(applied), cut)


def _differences(
    base: Mapping[str, Entry], outcome: Outcome, recovered: Mapping[str, Entry], last_seq: int
) -> list[str]:
    """How ``recovered`` differs from what ``outcome`` leaves, each named by the write that
    should have decided the key."""
    expected: dict[str, Entry | None] = dict(base)
    decided_by: dict[str, tuple[Placed, int]] = {}
    for placed in outcome.applied:
        for i, (key, value) in enumerate(placed.write.ops):
            seq = placed.first_seq + i
            expected[key] = None if value is None else (seq, value)
            decided_by[key] = (placed, seq)
    problems = []
    for key in sorted(expected.keys() | recovered.keys()):
        want, found = expected.get(key), recovered.get(key)
        if want == found:
            continue
        if key not in decided_by:
            problems.append(f"{key} = {found}, but the base held {want} and no write touched it")
            continue
        placed, seq = decided_by[key]
        write = placed.write
        if write.last_seq is None:
            problems.append(
                f"half of an in-flight batch: {write.describe()} applied from seq {placed.first_seq}"
                f" leaves {key} = {want}, found {found}"
            )
        elif want is None:
            problems.append(f"{key} = {found} survived the acknowledged delete at seq {seq}")
        elif found is None:
            problems.append(f"acknowledged {key} = {want} is missing")
        else:
            problems.append(f"{key} lost the acknowledged seq {want} (holds {found})")
    if last_seq != outcome.cut:
        problems.append(
            f"the recovered last seq is {last_seq}, the recovered entries end at seq {outcome.cut}"
        )
    return problems


def _describe_pins(pins: Mapping[int, int], in_flight: Sequence[Write]) -> str:
    if not pins:
        return "none of their values was recovered"
    return ", ".join(f"{in_flight[index].describe()} seen from seq {first}" for index, first in pins.items())
