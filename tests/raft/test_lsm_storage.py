"""Raft groups on the LSM store: what a persisted Ready leaves on disk, and what a restart
reads back. Real files (the store on tmp_path), real clock: nothing here waits on time."""

from __future__ import annotations

import random
import struct
import sys
from pathlib import Path

import pytest
import trio.testing

from sentinel.raft import format as fmt
from sentinel.raft.core import Config, RaftNode, Ready
from sentinel.raft.lsm_storage import LsmRaftStorage, compaction_filter, entry_key
from sentinel.raft.messages import Entry, HardState, Role, Snapshot
from sentinel.raft.storage import LogCompacted, LogUnavailable
from sentinel.storage.options import StorageOptions, SyncMode
from sentinel.storage.store import open_store

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "storage"))

from disk_faults import FillingDisk

OPTIONS = StorageOptions(sync=SyncMode.NONE)


class NumberedLayout:
    """Payloads ``b"P<n>..."`` live under ``b"L" + n`` (as a partition's batches live under
    their last offset); anything else stays inline."""

    def place(self, data: bytes) -> bytes | None:
        if data.startswith(b"P"):
            return b"L" + struct.pack(">Q", int(data[1:].split(b":")[0]))
        return None


def ready(
    *,
    entries: list[Entry] | None = None,
    hard_state: HardState | None = None,
    snapshot: Snapshot | None = None,
) -> Ready:
    rd = Ready()
    rd.entries = list(entries or [])
    rd.hard_state = hard_state
    rd.snapshot = snapshot
    return rd


def entries(term: int, lo: int, hi: int, payload: str = "e") -> list[Entry]:
    return [Entry(term, i, f"{payload}{i}".encode()) for i in range(lo, hi + 1)]


async def test_a_persisted_ready_reopens_exactly(tmp_path: Path) -> None:
    async with open_store(tmp_path, OPTIONS) as store:
        s = LsmRaftStorage(store, 7)
        await s.persist(ready(entries=entries(1, 1, 3) + entries(2, 4, 5), hard_state=HardState(2, 3, 4)))
    async with open_store(tmp_path, OPTIONS) as store:
        s = LsmRaftStorage(store, 7)
        assert s.initial_state() == HardState(2, 3, 4)
        assert (s.first_index(), s.last_index()) == (1, 5)
        assert [s.term(i) for i in range(0, 6)] == [0, 1, 1, 1, 2, 2]
        assert s.entries(1, 6, 1 << 20) == entries(1, 1, 3) + entries(2, 4, 5)
        # Another group in the same store is untouched and empty.
        other = LsmRaftStorage(store, 8)
        assert (other.initial_state(), other.first_index(), other.last_index()) == (HardState(), 1, 0)


async def test_a_commit_taken_without_a_write_goes_with_the_next_write_or_write_deferred(
    tmp_path: Path,
) -> None:
    async with open_store(tmp_path, OPTIONS) as store:
        s = LsmRaftStorage(store, 7)
        await s.persist(ready(entries=entries(1, 1, 3), hard_state=HardState(1, 1, 0)))
        writes = store.statistics().wal.appends
        await s.persist_soon(ready(hard_state=HardState(1, 1, 3)))
        assert s.initial_state() == HardState(1, 1, 3)  # what the group acts on from now on
        assert store.statistics().wal.appends == writes  # nothing written for it yet
        # The next write carries it, though its Ready has no hard state of its own.
        await s.persist(ready(entries=entries(1, 4, 4)))
        assert store.statistics().wal.appends == writes + 1
        await s.persist_soon(ready(hard_state=HardState(1, 1, 4)))
    async with open_store(tmp_path, OPTIONS) as store:
        s = LsmRaftStorage(store, 7)
        # The last one was never written (no write followed): the commit on disk lags.
        assert s.initial_state() == HardState(1, 1, 3)
        assert s.entries(1, 5, 1 << 20) == entries(1, 1, 4)
        await s.persist_soon(ready(hard_state=HardState(1, 1, 4)))
        await s.write_deferred()
        await s.write_deferred()  # nothing left to write: no second write
    async with open_store(tmp_path, OPTIONS) as store:
        assert LsmRaftStorage(store, 7).initial_state() == HardState(1, 1, 4)
        with pytest.raises(ValueError, match="changes the hard state alone"):
            await LsmRaftStorage(store, 7).persist_soon(ready(entries=entries(1, 5, 5)))


async def test_a_deferred_commit_whose_write_failed_goes_with_the_next_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = FillingDisk(monkeypatch)
    async with open_store(tmp_path, OPTIONS) as store:
        s = LsmRaftStorage(store, 7)
        await s.persist(ready(entries=entries(1, 1, 2), hard_state=HardState(1, 1, 0)))
        await s.persist_soon(ready(hard_state=HardState(1, 1, 2)))
        disk.fill(0)
        await s.write_deferred()
        await trio.testing.wait_all_tasks_blocked()  # its write is refused: the disk is full
        disk.free()
        await s.persist(ready(entries=entries(1, 3, 3)))  # carries the commit again
    async with open_store(tmp_path, OPTIONS) as store:
        assert LsmRaftStorage(store, 7).initial_state() == HardState(1, 1, 2)


async def test_compacting_writes_the_hard_state_so_the_commit_on_disk_covers_the_snapshot(
    tmp_path: Path,
) -> None:
    async with open_store(tmp_path, OPTIONS) as store:
        s = LsmRaftStorage(store, 7)
        await s.persist(ready(entries=entries(1, 1, 4), hard_state=HardState(1, 1, 0)))
        await s.persist_soon(ready(hard_state=HardState(1, 1, 3)))  # not written yet
        await s.compact(3, b"snap")
    async with open_store(tmp_path, OPTIONS) as store:
        s = LsmRaftStorage(store, 7)
        assert s.initial_state().commit == 3 and s.first_index() == 4
        assert s.entries(s.initial_state().commit + 1, 5, 1 << 20) == entries(1, 4, 4)


async def test_replacing_a_suffix_deletes_the_replaced_entries_and_their_payload_keys(tmp_path: Path) -> None:
    """A follower's conflicting suffix is replaced: the truncated batches' offsets (payload
    keys) disappear with them, so a later seek by offset can never find a stale batch."""
    async with open_store(tmp_path, OPTIONS) as store:
        s = LsmRaftStorage(store, 1, layout=NumberedLayout())
        old = [Entry(1, 1, b"P10:a"), Entry(1, 2, b"P20:b"), Entry(1, 3, b"P30:c"), Entry(1, 4, b"P40:d")]
        await s.persist(ready(entries=old))
        assert store.get(b"L" + struct.pack(">Q", 40)) == b"P40:d"
        new = [Entry(2, 3, b"P25:x"), Entry(2, 4, b"noop")]
        await s.persist(ready(entries=new))
        assert store.get(b"L" + struct.pack(">Q", 30)) is None
        assert store.get(b"L" + struct.pack(">Q", 40)) is None
        assert store.get(b"L" + struct.pack(">Q", 25)) == b"P25:x"
        assert store.get(b"L" + struct.pack(">Q", 20)) == b"P20:b"
        assert s.entries(1, 5, 1 << 20) == old[:2] + new
    async with open_store(tmp_path, OPTIONS) as store:
        s = LsmRaftStorage(store, 1, layout=NumberedLayout())
        assert s.entries(1, 5, 1 << 20) == old[:2] + new
        assert s.last_index() == 4 and s.term(4) == 2


async def test_installing_a_snapshot_discards_the_tail_above_the_persisted_commit(tmp_path: Path) -> None:
    async with open_store(tmp_path, OPTIONS) as store:
        s = LsmRaftStorage(store, 1, layout=NumberedLayout())
        log = [Entry(1, i, b"P%d:v" % (i * 10)) for i in range(1, 6)]
        await s.persist(ready(entries=log, hard_state=HardState(1, 0, 2)))
        await s.persist(ready(snapshot=Snapshot(9, 3, b"start=90"), hard_state=HardState(3, 0, 9)))
        for i in (3, 4, 5):
            assert store.get(entry_key(1, i)) is None
            assert store.get(b"L" + struct.pack(">Q", i * 10)) is None
        assert (s.first_index(), s.last_index(), s.term(9)) == (10, 9, 3)
        await s.persist(ready(entries=[Entry(3, 10, b"P95:w")], hard_state=HardState(3, 0, 10)))
    async with open_store(tmp_path, OPTIONS) as store:
        s = LsmRaftStorage(store, 1, layout=NumberedLayout())
        assert s.snapshot() == Snapshot(9, 3, b"start=90")
        assert (s.first_index(), s.last_index(), s.term(9), s.term(10)) == (10, 10, 3, 3)
        assert s.entries(10, 11, 100) == [Entry(3, 10, b"P95:w")]
        with pytest.raises(LogCompacted):
            s.term(8)
        with pytest.raises(LogCompacted):
            s.entries(9, 11, 100)


async def test_compact_truncates_from_the_front_and_the_filter_drops_the_records(tmp_path: Path) -> None:
    groups: dict[int, LsmRaftStorage] = {}
    options = StorageOptions(sync=SyncMode.NONE, compaction_filter=compaction_filter(groups.get))
    async with open_store(tmp_path, options) as store:
        s = groups[4] = LsmRaftStorage(store, 4)
        await s.persist(ready(entries=entries(1, 1, 10), hard_state=HardState(1, 0, 8)))
        with pytest.raises(ValueError, match="beyond the persisted commit"):
            await s.compact(9, b"")
        await s.compact(6, b"state@6")
        assert (s.first_index(), s.last_index(), s.term(6)) == (7, 10, 1)
        assert s.snapshot() == Snapshot(6, 1, b"state@6")
        with pytest.raises(LogCompacted):
            s.entries(6, 8, 100)
        assert s.entries(7, 11, 1 << 20) == entries(1, 7, 10)
        # Records below the first index survive until a compaction rewrites them (a
        # flushed table pushed down whole is not rewritten: reclaim asks for it).
        assert store.get(entry_key(4, 3)) is not None
        await store.compact()
        await store.reclaim([s.obsolete_range()])
        assert [i for i in range(1, 11) if store.get(entry_key(4, i)) is not None] == [7, 8, 9, 10]
    async with open_store(tmp_path, OPTIONS) as store:
        s = LsmRaftStorage(store, 4)
        assert (s.first_index(), s.last_index(), s.snapshot()) == (7, 10, Snapshot(6, 1, b"state@6"))


async def test_reads_below_the_cached_tail_come_from_the_tree(tmp_path: Path) -> None:
    async with open_store(tmp_path, OPTIONS) as store:
        s = LsmRaftStorage(store, 2, layout=NumberedLayout(), cache_bytes=50)
        placed = [(b"P%d:" % i) + b"x" * 20 for i in range(1, 41)]
        log = [Entry(1 + i // 10, i, placed[i - 1] if i % 2 else b"inline%d" % i) for i in range(1, 41)]
        for lo in range(1, 41, 7):
            await s.persist(ready(entries=log[lo - 1 : lo + 6]))
        assert s.entries(1, 41, 1 << 20) == log
        assert [s.term(i) for i in range(1, 41)] == [e.term for e in log]
        # The byte limit holds across the tree and the cache, and at least one comes back.
        assert s.entries(1, 41, 1) == log[:1]
        assert len(s.entries(30, 41, 120)) == 3  # 32 + 48 + 32 bytes with overheads; a 4th is 48 more


async def test_opening_reads_a_constant_number_of_keys_whatever_the_log_length(tmp_path: Path) -> None:
    """Restart time must not grow with the data stored (issue 9)."""
    counts = []
    for n in (10, 2000):
        directory = tmp_path / str(n)
        async with open_store(directory, OPTIONS) as store:
            s = LsmRaftStorage(store, 1)
            for lo in range(1, n + 1, 500):
                batch = entries(1, lo, min(lo + 499, n))
                await s.persist(ready(entries=batch, hard_state=HardState(1, 1, 0)))
        async with open_store(directory, OPTIONS) as store:
            gets = []
            real_get = store.get

            def counting_get(key: bytes, real_get=real_get, gets=gets) -> bytes | None:
                gets.append(key)
                return real_get(key)

            store.get = counting_get  # type: ignore[method-assign]
            s = LsmRaftStorage(store, 1)
            assert s.last_index() == n and s.term(n) == 1
            counts.append(len(gets))
    assert counts[0] == counts[1] <= 3


async def test_a_damaged_hard_state_is_refused_naming_the_group(tmp_path: Path) -> None:
    async with open_store(tmp_path, OPTIONS) as store:
        s = LsmRaftStorage(store, 5)
        await s.persist(ready(hard_state=HardState(4, 2, 0)))
        key = s._hs_key
        raw = bytearray(store.get(key) or b"")
        raw[3] ^= 0x01
        await store.put(key, bytes(raw))
        expected = r"raft group 5 hard state at byte \d+: checksum mismatch"
        with pytest.raises(fmt.RaftFormatError, match=expected):
            LsmRaftStorage(store, 5)


async def test_a_missing_entry_record_is_reported_not_skipped(tmp_path: Path) -> None:
    async with open_store(tmp_path, OPTIONS) as store:
        s = LsmRaftStorage(store, 3, cache_bytes=0)
        await s.persist(ready(entries=entries(1, 1, 5)))
        await store.delete(entry_key(3, 2))
        with pytest.raises(LogUnavailable, match="raft group 3 entry 2 is missing"):
            s.entries(1, 6, 1 << 20)


async def _drive(node: RaftNode, storage: LsmRaftStorage, applied: list[Entry]) -> None:
    while node.has_ready():
        rd = node.ready()
        assert not rd.messages and not rd.messages_after_persist  # a single voter talks to no one
        await storage.persist(rd)
        applied.extend(rd.committed_entries)
        node.advance(rd)


async def test_a_single_voter_restarts_from_the_lsm_with_term_vote_log_and_commit(tmp_path: Path) -> None:
    applied: list[Entry] = []
    async with open_store(tmp_path, OPTIONS) as store:
        storage = LsmRaftStorage(store, 1)
        node = RaftNode(Config(id=1, voters=(1,)), storage, random.Random(1))
        node.campaign()
        await _drive(node, storage, applied)
        assert node.role is Role.LEADER
        for i in range(20):
            node.propose(b"cmd%d" % i)
            await _drive(node, storage, applied)
        status = node.status()
    assert [e.data for e in applied] == [b""] + [b"cmd%d" % i for i in range(20)]
    async with open_store(tmp_path, OPTIONS) as store:
        storage = LsmRaftStorage(store, 1)
        again = RaftNode(Config(id=1, voters=(1,)), storage, random.Random(2))
        assert (again.term, again.vote) == (status.term, 1)
        assert again.log.committed == status.commit == storage.last_index() == 21
        replayed: list[Entry] = []
        again.campaign()
        await _drive(again, storage, replayed)
        assert again.role is Role.LEADER and again.term == status.term + 1
        assert replayed[:21] == applied  # the committed log, exactly, then the new term's no-op
        assert replayed[21].term == again.term and replayed[21].data == b""
