"""Opening a storage directory: lock it, load the manifest, replay the WAL, clean up.

Runs synchronously (in a worker thread) before any storage actor starts:

1. take an exclusive ``flock`` on ``LOCK``: two processes must never share a directory;
2. open the manifest (``Manifest.open`` cuts a torn tail of the manifest itself and
   refuses damage unless the loss is accepted);
3. open a reader for every table the version names: a missing or damaged table is a
   :class:`CorruptionError` naming it and what it holds, even when a loss is accepted (we
   never start on top of half a database; ``_held`` says why);
4. replay every WAL segment numbered at or above the manifest's log number, in order.
   Only the newest segment may end in a torn tail (an incomplete last frame or a
   zero-filled end, ``framing.scan_frames``; rotation fsyncs a segment before the next one
   starts): it is cut and reported. Damage anywhere else, and a missing segment, is a
   CorruptionError naming the file, the byte and what would be lost, unless the loss is
   accepted: then the segment is cut there, later segments are dropped (they would leave a
   gap), and every drop is reported and counted;
5. flush what was replayed to an L0 table and record the new log number, so recovery
   time stays bounded by the memtable size, never by the amount of data stored; on a full
   disk, keep it in memory instead (``Recovered.unflushed``, readable at once, flushed by
   the Compactor once space is freed) and change nothing the WAL segments are needed for;
6. delete what no version names: old WAL segments (also those an accepted loss dropped),
   orphan tables from an interrupted flush or compaction, temporary files.
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
from sentinel.storage.wal import WalFile, WalReplay, replay_wal, truncate_wal_tail


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
                str(path),
                None,
                f"the manifest names this L{level} table but the file is missing; {_held(meta)}",
            ) from None
        except CorruptionError as exc:
            raise CorruptionError(exc.source, exc.position, f"{exc.detail}; {_held(meta)}") from None
        last_seq = max(last_seq, meta.max_seq)

    numbered = [parsed for name in os.listdir(directory) if (parsed := parse_file_name(name))]
    segments = sorted(n for kind, n in numbered if kind == "wal" and n >= state.log_number)
    # Numbered past every segment on disk, also those an accepted loss drops (garbage
    # collection below then removes them, so a later start cannot replay them over a gap).
    next_segment = max([state.log_number, *(s + 1 for s in segments)])
    on_disk = list(segments)
    if existed:
        kept = _check_segments_present(directory, options, state, segments, report)
        if kept is not segments:
            drops += 1
            dropped_bytes += _report_dropped(directory, segments[len(kept) :], report)
            segments = kept
    memtable = Memtable(next_segment - 1)  # the segments it holds end below next_segment
    for position, segment in enumerate(segments):
        path = wal_path(directory, segment)
        replay = replay_wal(path)
        later = segments[position + 1 :]
        after = replay.last_seq if replay.last_seq is not None else last_seq
        if replay.tail_error is not None:
            if replay.torn and not later:
                report.append(
                    f"{path.name}: dropped a torn tail of {replay.dropped_bytes} bytes after seq {after} "
                    f"({replay.tail_error})"
                )
            elif not options.accept_data_loss:
                detail = _wal_loss(directory, replay, later, after, "would be lost")
                raise CorruptionError(str(path), replay.valid_bytes, detail)
            else:
                detail = _wal_loss(directory, replay, later, after, "were dropped")
                report.append(f"{path.name}: accepted data loss at byte {replay.valid_bytes}: {detail}")
            truncate_wal_tail(path, replay.valid_bytes)
            dropped_bytes += replay.dropped_bytes
            drops += 1
        for batch in replay.batches:
            memtable.apply(batch)
        last_seq = max(last_seq, after)
        if replay.tail_error is not None and later:
            # Later segments follow the lost records: replaying them would leave a gap.
            dropped_bytes += _report_dropped(directory, later, report)
            segments = segments[: position + 1]
            break

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
        if not is_disk_full(exc) or segments != on_disk:
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
    the hole are dropped too (replaying them would leave a gap). Returns what to replay
    (``segments`` itself when nothing is missing).
    """
    newest = max(segments, default=state.log_number)
    present = set(segments)
    missing = [n for n in range(state.log_number, newest + 1) if n not in present]
    if not missing:
        return segments
    path = wal_path(directory, missing[0])
    later = [n for n in segments if n > missing[0]]
    lost = (
        f"WAL segment missing (the manifest's log number is {state.log_number}, the newest segment "
        f"present is {newest}): the records it held, written after seq {state.last_sequence},"
    )
    if not options.accept_data_loss:
        raise CorruptionError(str(path), None, f"{lost} would be lost{_later_segments(directory, later)}")
    report.append(f"{path.name}: accepted data loss: {lost} were dropped{_later_segments(directory, later)}")
    return [n for n in segments if n < missing[0]]


def _wal_loss(directory: Path, replay: WalReplay, later: list[int], after: int, verb: str) -> str:
    """What cutting a segment at its damage loses, for the refusal (``verb`` "would be
    lost") and for the report of an accepted loss ("were dropped")."""
    where = " in a WAL segment older than the newest one" if later else ""
    lost = f"{replay.dropped_bytes} bytes of WAL records after seq {after} {verb}"
    if replay.lost_batches:
        seqs = f" (seqs {replay.lost_seqs[0]} to {replay.lost_seqs[1]})" if replay.lost_seqs else ""
        lost += f": the damaged write batch and {replay.lost_batches} intact one(s) after it{seqs}"
    return f"{replay.tail_error}{where}: not a torn tail; {lost}{_later_segments(directory, later)}"


def _later_segments(directory: Path, later: list[int]) -> str:
    if not later:
        return ""
    size = sum(_size(wal_path(directory, n)) for n in later)
    return f", with the {len(later)} later WAL segment(s) ({size} bytes) that follow the loss"


def _report_dropped(directory: Path, later: list[int], report: list[str]) -> int:
    """Segments after an accepted loss are not replayed (they would leave a gap) and are
    deleted with the old ones: say so. Returns the bytes they held."""
    total = 0
    for segment in later:
        path = wal_path(directory, segment)
        size = _size(path)
        total += size
        report.append(f"{path.name}: dropped {size} bytes after the loss above")
    return total


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _held(meta: FileMeta) -> str:
    # Not dropped even when a loss is accepted: a table holds any mix of keys and ages, so
    # losing one could roll a partition's state back under records that still exist, and the
    # log would then hand out offsets twice. Only a restored file fixes that.
    return (
        f"its {meta.count} entries ({meta.size} bytes, seqs up to {meta.max_seq}) would be lost; "
        "a damaged table is never dropped, even when data loss is accepted: restore it from a backup"
    )


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
