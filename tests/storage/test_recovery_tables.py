"""Start-up on damaged tables, CURRENT and MANIFEST: refused naming the file, nothing changed.

A damaged table is refused even when data loss is accepted (recovery.py says why); a
damaged data block is found only when read, and fails just the reads that touch it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing
from test_sstable import read_layout

from sentinel.errors import CorruptionError
from sentinel.storage.compaction import CompactionOptions
from sentinel.storage.files import CURRENT, wal_path
from sentinel.storage.manifest import FileMeta
from sentinel.storage.options import StorageOptions, SyncMode
from sentinel.storage.recovery import Recovered, recover, unlock_directory
from sentinel.storage.sstable_format import BLOCK_HEADER_SIZE, FOOTER_TRAILER_SIZE
from sentinel.storage.store import open_store
from sentinel.storage.wal_format import encode_wal_record

# Small blocks: each table spans many, so one damaged block leaves others to read.
OPTIONS = StorageOptions(
    block_size=256,
    sync=SyncMode.ALWAYS,
    compaction=CompactionOptions(l0_compaction_trigger=1000, l0_stop_writes_trigger=2000),
)
PER_TABLE = 200


def _key(prefix: bytes, i: int) -> bytes:
    return b"%s%04d" % (prefix, i)


def _close(recovered: Recovered) -> None:
    for reader in recovered.tables.values():
        reader.close()
    recovered.manifest.close()
    unlock_directory(recovered.lock_fd)


def _two_tables(directory: Path) -> list[tuple[Path, FileMeta]]:
    """A closed directory holding two L0 tables (keys a0000.., then b0000..), newest first."""
    recovered = recover(directory, OPTIONS)
    _close(recovered)
    seq = 1
    for prefix in (b"a", b"b"):
        records = [encode_wal_record(seq + i, [(_key(prefix, i), b"v" * 30)]) for i in range(PER_TABLE)]
        seq += PER_TABLE
        wal_path(directory, recovered.wal_segment).write_bytes(b"".join(records))
        recovered = recover(directory, OPTIONS)
        _close(recovered)
    files = recovered.state.version.files(0)
    assert len(files) == 2
    return [(directory / f"sst-{meta.number:06d}.sst", meta) for meta in files]


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory)) if name != "LOCK"}


def _flip(path: Path, pos: int) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate_middle(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


TABLE_DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing": (Path.unlink, "the manifest names this L0 table but the file is missing"),
    "zero-length": (lambda path: path.write_bytes(b""), "truncated file (size 0 < minimum"),
    "truncated": (_truncate_middle, "bad magic"),
    "footer byte": (
        lambda path: _flip(path, path.stat().st_size - FOOTER_TRAILER_SIZE - 3),
        "footer checksum mismatch",
    ),
    "index byte": (
        lambda path: _flip(path, read_layout(path).footer.index_offset + BLOCK_HEADER_SIZE + 1),
        "index block checksum mismatch",
    ),
    "bloom byte": (
        lambda path: _flip(path, read_layout(path).footer.bloom_offset + BLOCK_HEADER_SIZE + 1),
        "bloom block checksum mismatch",
    ),
}


@pytest.mark.parametrize("damage", sorted(TABLE_DAMAGE))
@pytest.mark.parametrize("accept", [False, True])
def test_a_damaged_table_refuses_start_up_naming_it_and_what_it_holds(
    tmp_path: Path, damage: str, accept: bool
) -> None:
    (_newest, _), (path, meta) = _two_tables(tmp_path)
    original = path.read_bytes()
    change, detail = TABLE_DAMAGE[damage]
    change(path)
    before = _snapshot(tmp_path)
    with pytest.raises(CorruptionError) as info:
        recover(tmp_path, StorageOptions(accept_data_loss=accept, block_size=256))
    assert info.value.source == str(path)
    assert detail in info.value.detail
    assert info.value.detail.endswith(
        f"its {PER_TABLE} entries ({meta.size} bytes, seqs up to {PER_TABLE}) would be lost; "
        "a damaged table is never dropped, even when data loss is accepted: restore it from a backup"
    )
    assert str(info.value).startswith(f"corruption in {path}")
    assert _snapshot(tmp_path) == before  # refusing changes nothing on disk
    path.write_bytes(original)  # restored from a backup: starts again, nothing lost
    recovered = recover(tmp_path, OPTIONS)
    _close(recovered)
    assert recovered.last_seq == 2 * PER_TABLE


@pytest.mark.parametrize(
    ("damage", "file", "detail"),
    [
        ("missing CURRENT", CURRENT, "missing, but the directory holds 3 data file(s)"),
        ("empty CURRENT", CURRENT, "does not name a manifest: ''"),
        ("missing MANIFEST", "MANIFEST", "named by CURRENT but missing"),
        ("empty MANIFEST", "MANIFEST", "the manifest holds no complete record"),
        ("zero-filled MANIFEST", "MANIFEST", "the manifest holds no complete record"),
    ],
)
@pytest.mark.parametrize("accept", [False, True])
def test_a_missing_or_empty_current_or_manifest_refuses_start_up(
    tmp_path: Path, damage: str, file: str, detail: str, accept: bool
) -> None:
    _two_tables(tmp_path)
    manifest = tmp_path / (tmp_path / CURRENT).read_text().strip()
    path = tmp_path / CURRENT if file == CURRENT else manifest
    if damage.startswith("missing"):
        path.unlink()
    elif damage.startswith("empty"):
        path.write_bytes(b"")
    else:
        path.write_bytes(bytes(path.stat().st_size))
    before = _snapshot(tmp_path)
    with pytest.raises(CorruptionError) as info:
        recover(tmp_path, StorageOptions(accept_data_loss=accept))
    assert info.value.source == str(path)
    assert detail in info.value.detail
    assert _snapshot(tmp_path) == before


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Frozen virtual time: nothing here waits on a timer (sync always, no compaction)."""
    return trio.testing.MockClock()


async def test_a_damaged_data_block_fails_only_the_reads_that_touch_it(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    """Data blocks are checked when read, not at start-up (that would read the whole
    database): the store starts, a read of the block is refused naming the file and the
    block's byte, and every other key of that table and of the others still reads."""
    (_, _), (path, _) = _two_tables(tmp_path)
    block = read_layout(path).blocks[3]
    _flip(path, block.offset + BLOCK_HEADER_SIZE + 7)
    damaged = {_key(b"a", i) for i in range(PER_TABLE) if block.first_key <= _key(b"a", i) <= block.last_key}
    assert damaged
    async with open_store(tmp_path, OPTIONS) as store:
        for key in sorted(damaged):
            with pytest.raises(CorruptionError) as info:
                store.get(key)
            assert (info.value.source, info.value.position) == (str(path), block.offset)
            assert str(info.value).startswith(f"corruption in {path} at byte {block.offset}: data block 3 ")
        with pytest.raises(CorruptionError):
            list(store.scan(_key(b"a", 0), _key(b"a", PER_TABLE)))
        for i in range(PER_TABLE):
            for prefix in (b"a", b"b"):
                key = _key(prefix, i)
                if key not in damaged:
                    assert store.get(key) == b"v" * 30
        assert len(list(store.scan(_key(b"b", 0)))) == PER_TABLE
        keys = [_key(b"a", i) for i in range(PER_TABLE)]
        first_damaged = keys.index(min(damaged))
        assert [key for key, _ in store.scan(None, keys[first_damaged])] == keys[:first_damaged]
