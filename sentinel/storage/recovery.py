"""Opening a storage directory: lock it, load the manifest, replay the WAL, clean up.

Runs synchronously (in a worker thread) before any storage actor starts:

1. take an exclusive ``flock`` on ``LOCK``: two processes must never share a directory;
2. open the manifest (``Manifest.open`` truncates a torn tail of the manifest itself);
3. open a reader for every table the version names (a missing or corrupt table is a
   :class:`CorruptionError` naming it: we never start on top of half a database);
4. replay every WAL segment numbered at or above the manifest's log number, in order.
   Only the newest segment may end in a torn or corrupt frame (rotation fsyncs a segment
   before the next one starts), so its tail is truncated and reported; a bad tail in an
   older segment means acknowledged data is damaged, which is a CorruptionError;
5. flush what was replayed to an L0 table and record the new log number, so recovery
   time stays bounded by the memtable size, never by the amount of data stored; on a full
   disk, keep it in memory instead (``Recovered.unflushed``, readable at once, flushed by
   the Compactor once space is freed) and change nothing the WAL segments are needed for;
6. delete what no version names: old WAL segments, orphan tables from an interrupted
   flush or compaction, temporary files.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import attrs

from sentinel.errors import CorruptionError, DiskFullError, StorageError
from sentinel.storage.compactor import TableReader, delete_tables, write_tables
from sentinel.storage.files import (
    CURRENT,
    LOCK,
    disk_full_error,
    fsync_dir,
    is_disk_full,
    parse_file_name,
    sst_path,
    wal_path,
)
from sentinel.storage.manifest import FileMeta, Manifest, ManifestState, VersionEdit
from sentinel.storage.memtable import Memtable
from sentinel.storage.options import StorageOptions
from sentinel.storage.sstable import SSTableReader
from sentinel.storage.wal import WalFile, replay_wal, truncate_wal_tail


@attrs.frozen
class Recovered:
    lock_fd: int
    manifest: Manifest
    state: ManifestState
    tables: dict[int, SSTableReader]
    wal_segment: int  # the segment the WalWriter creates and writes next
    last_seq: int
    report: tuple[str, ...]  # what recovery dropped or repaired, for the operator
    #: What recovery dropped (torn tails, accepted losses): counted in the node's metrics.
    dropped_bytes: int = 0
    drops: int = 0
    #: What was replayed but could not be written to a table (a full disk), frozen.
    unflushed: Memtable | None = None


def lock_directory(directory: Path) -> int:
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StorageError(f"data directory {directory} is in use by another process") from None
    return fd


def unlock_directory(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def recover(directory: Path, options: StorageOptions) -> Recovered:
    directory.mkdir(parents=True, exist_ok=True)
    lock_fd = lock_directory(directory)
    try:
        return _recover_locked(directory, options, lock_fd)
    except BaseException:
        unlock_directory(lock_fd)
        raise


def _recover_locked(directory: Path, options: StorageOptions, lock_fd: int) -> Recovered:
    existed = (directory / CURRENT).exists()
    manifest, state = Manifest.open(directory, accept_data_loss=options.accept_data_loss)

    tables: dict[int, SSTableReader] = {}
    try:
        return _recover_opened(directory, options, lock_fd, manifest, state, tables, existed)
    except BaseException:
        # A failed open must not leak the descriptors it took (a node may retry the open).
        for reader in tables.values():
            reader.close()
        manifest.close()
        raise


def _recover_opened(
    directory: Path,
    options: StorageOptions,
    lock_fd: int,
    manifest: Manifest,
    state: ManifestState,
    tables: dict[int, SSTableReader],
    existed: bool,
) -> Recovered:
    """Steps 3-6 with the manifest open; fills ``tables`` as it opens them."""
    report: list[str] = []
    dropped_bytes = drops = 0
    if manifest.recovery_report:
        report.append(manifest.recovery_report)
        drops += 1
    last_seq = state.last_sequence
    for level, meta in _all_files(state):
        path = sst_path(directory, meta.number)
        try:
            tables[meta.number] = TableReader.open(path)
        except FileNotFoundError:
            raise CorruptionError(
                str(path), None, f"the manifest names this L{level} table but the file is missing"
            ) from None
        last_seq = max(last_seq, meta.max_seq)

    numbered = [parsed for name in os.listdir(directory) if (parsed := parse_file_name(name))]
    segments = sorted(n for kind, n in numbered if kind == "wal" and n >= state.log_number)
    # Numbered past every segment on disk, also those an accepted loss drops (garbage
    # collection below then removes them, so a later start cannot replay them over a gap).
    next_segment = max([state.log_number, *(s + 1 for s in segments)])
    on_disk = list(segments)
    if existed:
        reported = len(report)
        segments = _check_segments_present(directory, options, state, segments, report)
        drops += len(report) > reported
    memtable = Memtable(next_segment - 1)  # the segments it holds end below next_segment
    stop_after: int | None = None
    for position, segment in enumerate(segments):
        if stop_after is not None and position > stop_after:
            break
        path = wal_path(directory, segment)
        replay = replay_wal(path)
        if replay.tail_error is not None:
            newest = position == len(segments) - 1
            if newest and replay.torn:
                report.append(
                    f"{path.name}: dropped a torn tail of {replay.dropped_bytes} bytes ({replay.tail_error})"
                )
            else:
                where = "" if newest else " in a WAL segment older than the newest one"
                after = f" after seq {replay.last_seq}" if replay.last_seq is not None else ""
                detail = (
                    f"{replay.tail_error}{where}: not a torn tail; "
                    f"{replay.dropped_bytes} bytes of WAL records{after} would be lost"
                )
                if not options.accept_data_loss:
                    raise CorruptionError(str(path), replay.valid_bytes, detail)
                report.append(f"{path.name}: accepted data loss at byte {replay.valid_bytes}: {detail}")
                if not newest:
                    # Later segments follow the lost records: replaying them would leave a gap.
                    _report_dropped(directory, segments[position + 1 :], report)
                    stop_after = position
            truncate_wal_tail(path, replay.valid_bytes)
            dropped_bytes += replay.dropped_bytes
            drops += 1
        for batch in replay.batches:
            memtable.apply(batch)
        if replay.last_seq is not None:
            last_seq = max(last_seq, replay.last_seq)

    unflushed: Memtable | None = None
    try:
        # The segment the WalWriter will write exists before any manifest edit names it, so a
        # missing segment the manifest's log number covers is damage. (On a first start the fresh
        # manifest names it a moment before this creates it: a crash in between is the one false
        # alarm, and no write can have been acknowledged before it.)
        if not wal_path(directory, next_segment).exists():
            WalFile.create(wal_path(directory, next_segment)).close()
        if segments or next_segment != state.log_number:
            added = write_tables(directory, manifest, options, memtable.scan(), None) if len(memtable) else []
            if added:
                fsync_dir(directory)
                report.append(f"replayed {len(memtable)} keys from {len(segments)} WAL segment(s) into L0")
            state = manifest.log_and_apply(
                VersionEdit(
                    added=tuple((0, meta) for meta in added),
                    log_number=next_segment,
                    last_sequence=last_seq,
                )
            )
            for meta in added:
                tables[meta.number] = TableReader.open(sst_path(directory, meta.number))
    except (DiskFullError, OSError) as exc:
        replayed = segments if stop_after is None else segments[: stop_after + 1]
        if not is_disk_full(exc) or replayed != on_disk:
            raise  # an accepted loss must delete the segments after it: that needs the edit
        # A full disk: serve what was replayed from memory; the Compactor writes it once
        # space is freed. The manifest is unchanged, so every replayed segment is kept.
        error = disk_full_error(directory, exc)
        if len(memtable):
            memtable.freeze()
            unflushed = memtable
        report.append(
            f"{error} (recovery keeps the {len(memtable)} replayed keys in memory until it can write them)"
        )
        next_gc = state.log_number
    else:
        next_gc = next_segment

    _collect_garbage(directory, state, next_gc, report)
    return Recovered(
        lock_fd=lock_fd,
        manifest=manifest,
        state=state,
        tables=tables,
        wal_segment=next_segment,
        last_seq=last_seq,
        report=tuple(report),
        dropped_bytes=dropped_bytes,
        drops=drops,
        unflushed=unflushed,
    )


def _check_segments_present(
    directory: Path, options: StorageOptions, state: ManifestState, segments: list[int], report: list[str]
) -> list[int]:
    """Every segment from the manifest's log number to the newest must exist (they are
    numbered consecutively and each is created before the manifest or a newer one names it).

    A missing one is corruption: refused, or with ``accept_data_loss`` the segments after
    the hole are dropped too (replaying them would leave a gap). Returns what to replay.
    """
    newest = max(segments, default=state.log_number)
    present = set(segments)
    missing = [n for n in range(state.log_number, newest + 1) if n not in present]
    if not missing:
        return segments
    path = wal_path(directory, missing[0])
    detail = (
        f"WAL segment missing (the manifest's log number is {state.log_number}, the newest segment "
        f"present is {newest}): the records it held, written after seq {state.last_sequence}, would be lost"
    )
    if not options.accept_data_loss:
        raise CorruptionError(str(path), None, detail)
    report.append(f"{path.name}: accepted data loss: {detail}")
    kept = [n for n in segments if n < missing[0]]
    _report_dropped(directory, segments[len(kept) :], report)
    return kept


def _report_dropped(directory: Path, later: list[int], report: list[str]) -> None:
    """Segments after an accepted loss are not replayed (they would leave a gap): say so."""
    for segment in later:
        report.append(f"{wal_path(directory, segment).name}: dropped after the loss above")


def _all_files(state: ManifestState) -> list[tuple[int, FileMeta]]:
    return [(level, meta) for level, files in enumerate(state.version.levels) for meta in files]


def _collect_garbage(directory: Path, state: ManifestState, next_segment: int, report: list[str]) -> None:
    live = state.version.all_numbers()
    orphans: list[int] = []
    removed_wals = 0
    for name in os.listdir(directory):
        parsed = parse_file_name(name)
        if name.endswith(".tmp"):
            os.unlink(directory / name)
        elif parsed is None:
            continue
        elif parsed[0] == "sst" and parsed[1] not in live:
            orphans.append(parsed[1])
        elif parsed[0] == "wal" and parsed[1] < next_segment:
            os.unlink(directory / name)
            removed_wals += 1
    if orphans:
        report.append(f"deleted {len(orphans)} orphan table(s) left by an interrupted flush or compaction")
        delete_tables(directory, orphans)
    elif removed_wals:
        fsync_dir(directory)
