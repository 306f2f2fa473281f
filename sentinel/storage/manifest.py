"""The manifest: which SSTables are live on which level, as a durable version-edit log.

A ``MANIFEST-N`` file is a sequence of CRC frames (``framing.py``), each holding one
encoded :class:`VersionEdit`. The first edit of a manifest is a snapshot of the whole
state; later edits are deltas. ``CURRENT`` names the live manifest and is only ever
replaced atomically (write-temp, fsync, rename, fsync-dir), so an open always finds a
complete manifest.

Invariants:

* an edit is appended and fsynced before :meth:`Manifest.log_and_apply` returns; only then
  may the caller act on it (open readers, delete the files the edit removed);
* L0 files are kept newest first (highest number first: flushes take increasing numbers);
  L1.. files are disjoint and kept in key order;
* the file-number counter is persisted in every edit and, on open, is raised above every
  numbered file present on disk, so a number is never handed out twice even after a crash
  between allocating a number and logging it;
* a torn tail (``framing.scan_frames``: an incomplete last frame, or zero bytes from a frame
  boundary to the end, with no valid frame after it) is cut and reported: a crash
  mid-append, the edit it held was never acknowledged, so nothing relied on it. Appends are
  sequential and each is fsynced before the next, so a crash can damage only the last one.
  Anything else (a complete frame failing its checksum, even the last; garbage; a bad
  frame with valid ones after it) is a :class:`CorruptionError` naming the file and byte,
  because truncating there would silently forget live tables, unless the caller accepts
  the loss (then it is cut and reported the same way);
* when the manifest outgrows ``MANIFEST_ROLL_BYTES`` (and twice its opening snapshot, so a
  large version does not roll on every edit) a new one is started with a snapshot, so
  opening never replays an unbounded history. Open deletes every manifest CURRENT does not
  name (left by a crash during a rollover or during the first open).
"""

from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path

import attrs

from sentinel.errors import CorruptionError, DiskFullError, StorageError
from sentinel.storage.files import (
    CURRENT,
    disk,
    disk_full_error,
    fsync_dir,
    is_disk_full,
    manifest_path,
    parse_file_name,
    write_file_atomically,
)
from sentinel.storage.framing import FRAME_HEADER_SIZE, frame, scan_frames
from sentinel.varint import decode_uvarint, encode_uvarint

NUM_LEVELS = 7
# Start a fresh manifest (one snapshot record) once the edit log reaches this size: replaying
# a few MiB of edits on open is instant, and rollover is rare enough to cost nothing.
MANIFEST_ROLL_BYTES = 4 * 1024 * 1024
# ...and once it holds this many times its opening snapshot: rewriting the snapshot then costs
# at most a constant factor over the edits appended since, however large the version is.
_ROLL_SNAPSHOT_FACTOR = 2

# Edit record tags (the manifest's on-disk format).
_TAG_LOG_NUMBER = 1
_TAG_NEXT_FILE_NUMBER = 2
_TAG_LAST_SEQUENCE = 3
_TAG_DELETED = 4
_TAG_ADDED = 5


@attrs.frozen
class FileMeta:
    """One live SSTable, as the manifest records it."""

    number: int
    size: int
    count: int
    min_key: bytes
    max_key: bytes
    max_seq: int


@attrs.frozen
class VersionEdit:
    """A change to the version: tables added ``(level, meta)``, removed ``(level, number)``,
    and counters (None: unchanged)."""

    added: tuple[tuple[int, FileMeta], ...] = ()
    deleted: tuple[tuple[int, int], ...] = ()
    log_number: int | None = None
    next_file_number: int | None = None
    last_sequence: int | None = None


class Version:
    """An immutable set of live tables per level."""

    __slots__ = ("levels",)

    def __init__(self, levels: tuple[tuple[FileMeta, ...], ...] | None = None) -> None:
        self.levels: tuple[tuple[FileMeta, ...], ...] = levels or tuple(() for _ in range(NUM_LEVELS))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self.levels == other.levels

    def __hash__(self) -> int:
        return hash(self.levels)

    def files(self, level: int) -> tuple[FileMeta, ...]:
        return self.levels[level]

    def level_bytes(self, level: int) -> int:
        return sum(f.size for f in self.levels[level])

    def all_numbers(self) -> set[int]:
        return {f.number for files in self.levels for f in files}

    def overlapping(self, level: int, start: bytes, end: bytes) -> list[FileMeta]:
        """Files on ``level`` whose key range meets ``[start, end]`` (both inclusive)."""
        return [f for f in self.levels[level] if not (f.max_key < start or f.min_key > end)]

    def apply(self, edit: VersionEdit) -> Version:
        """The version after ``edit``; raises ValueError if the edit does not fit."""
        levels = [list(files) for files in self.levels]
        for level, number in edit.deleted:
            if not 0 <= level < NUM_LEVELS:
                raise ValueError(f"edit deletes table {number} from level {level}")
            kept = [f for f in levels[level] if f.number != number]
            if len(kept) == len(levels[level]):
                raise ValueError(f"edit deletes table {number} which is not on L{level}")
            levels[level] = kept
        present = self.all_numbers() - {number for _, number in edit.deleted}
        for level, meta in edit.added:
            if not 0 <= level < NUM_LEVELS:
                raise ValueError(f"edit adds table {meta.number} to level {level}")
            if meta.number in present:
                raise ValueError(f"edit adds table {meta.number} which is already live")
            present.add(meta.number)
            levels[level].append(meta)
        levels[0].sort(key=lambda f: f.number, reverse=True)
        for level in range(1, NUM_LEVELS):
            files = levels[level]
            files.sort(key=lambda f: f.min_key)
            for left, right in itertools.pairwise(files):
                if left.max_key >= right.min_key:
                    raise ValueError(f"tables {left.number} and {right.number} overlap on L{level}")
        return Version(tuple(tuple(files) for files in levels))

    def __repr__(self) -> str:
        counts = ", ".join(f"L{i}={len(files)}" for i, files in enumerate(self.levels) if files)
        return f"Version({counts or 'empty'})"


@attrs.frozen
class ManifestState:
    version: Version
    log_number: int  # WAL segments below this are no longer needed
    next_file_number: int
    last_sequence: int


# -- encoding ----------------------------------------------------------------------------


def _put_bytes(out: bytearray, data: bytes) -> None:
    out += encode_uvarint(len(data))
    out += data


def encode_edit(edit: VersionEdit) -> bytes:
    out = bytearray()
    for tag, value in (
        (_TAG_LOG_NUMBER, edit.log_number),
        (_TAG_NEXT_FILE_NUMBER, edit.next_file_number),
        (_TAG_LAST_SEQUENCE, edit.last_sequence),
    ):
        if value is not None:
            out += encode_uvarint(tag)
            out += encode_uvarint(value)
    for level, number in edit.deleted:
        out += encode_uvarint(_TAG_DELETED)
        out += encode_uvarint(level)
        out += encode_uvarint(number)
    for level, meta in edit.added:
        out += encode_uvarint(_TAG_ADDED)
        for n in (level, meta.number, meta.size, meta.count, meta.max_seq):
            out += encode_uvarint(n)
        _put_bytes(out, meta.min_key)
        _put_bytes(out, meta.max_key)
    return bytes(out)


def decode_edit(data: bytes) -> VersionEdit:
    """Decode one edit; ValueError describes what is malformed."""
    pos = 0
    counters: dict[int, int] = {}
    added: list[tuple[int, FileMeta]] = []
    deleted: list[tuple[int, int]] = []

    def uvarint() -> int:
        nonlocal pos
        value, pos = decode_uvarint(data, pos)
        return value

    def blob() -> bytes:
        nonlocal pos
        length = uvarint()
        if pos + length > len(data):
            raise ValueError(f"key of {length} bytes runs past the end of the record")
        value = data[pos : pos + length]
        pos += length
        return value

    while pos < len(data):
        tag = uvarint()
        if tag in (_TAG_LOG_NUMBER, _TAG_NEXT_FILE_NUMBER, _TAG_LAST_SEQUENCE):
            counters[tag] = uvarint()
        elif tag == _TAG_DELETED:
            deleted.append((uvarint(), uvarint()))
        elif tag == _TAG_ADDED:
            level, number, size, count, max_seq = (uvarint() for _ in range(5))
            min_key, max_key = blob(), blob()
            if min_key > max_key:
                raise ValueError(f"table {number} has min_key > max_key")
            added.append((level, FileMeta(number, size, count, min_key, max_key, max_seq)))
        else:
            raise ValueError(f"unknown edit tag {tag}")
    return VersionEdit(
        added=tuple(added),
        deleted=tuple(deleted),
        log_number=counters.get(_TAG_LOG_NUMBER),
        next_file_number=counters.get(_TAG_NEXT_FILE_NUMBER),
        last_sequence=counters.get(_TAG_LAST_SEQUENCE),
    )


def _apply_counters(state: ManifestState, edit: VersionEdit, version: Version) -> ManifestState:
    return ManifestState(
        version=version,
        log_number=state.log_number if edit.log_number is None else edit.log_number,
        next_file_number=state.next_file_number if edit.next_file_number is None else edit.next_file_number,
        last_sequence=state.last_sequence if edit.last_sequence is None else edit.last_sequence,
    )


def _snapshot(state: ManifestState) -> VersionEdit:
    return VersionEdit(
        added=tuple((level, meta) for level, files in enumerate(state.version.levels) for meta in files),
        log_number=state.log_number,
        next_file_number=state.next_file_number,
        last_sequence=state.last_sequence,
    )


# -- the manifest file -------------------------------------------------------------------


class Manifest:
    """The live manifest of one storage directory. One owner (the Compactor, or recovery
    before it starts); ``new_file_number`` alone may be called from a worker thread."""

    def __init__(
        self, directory: Path, number: int, fd: int, size: int, state: ManifestState, snapshot_bytes: int = 0
    ) -> None:
        """Use :meth:`open`."""
        self._directory = directory
        self._number = number
        self._fd: int | None = fd
        self._size = size
        self._snapshot_bytes = snapshot_bytes  # framed size of the manifest's first record
        self._state = state
        self._next_file_number = state.next_file_number
        self._counter_lock = threading.Lock()
        #: What open repaired (a dropped torn tail), for the operator; None if nothing.
        self.recovery_report: str | None = None

    @property
    def path(self) -> Path:
        return manifest_path(self._directory, self._number)

    @property
    def state(self) -> ManifestState:
        return self._state

    @classmethod
    def open(cls, directory: Path, *, accept_data_loss: bool = False) -> tuple[Manifest, ManifestState]:
        """Load the live manifest of ``directory``, creating one for a new directory."""
        names = os.listdir(directory)
        highest = max((p[1] for name in names if (p := parse_file_name(name))), default=0)
        current = directory / CURRENT
        if not current.exists():
            data_files = [n for n in names if (p := parse_file_name(n)) and p[0] != "MANIFEST"]
            if data_files:
                raise CorruptionError(
                    str(current), None, f"missing, but the directory holds {len(data_files)} data file(s)"
                )
            state = ManifestState(Version(), log_number=0, next_file_number=highest + 1, last_sequence=0)
            manifest = cls._create(directory, state)
            _delete_stale_manifests(directory, names, manifest._number)
            return manifest, manifest._state

        name = current.read_bytes().decode("ascii", "replace").strip()
        parsed = parse_file_name(name)
        if parsed is None or parsed[0] != "MANIFEST":
            raise CorruptionError(str(current), 0, f"does not name a manifest: {name!r}")
        path = directory / name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CorruptionError(str(path), None, "named by CURRENT but missing") from None
        state, valid, snapshot_bytes, report = _replay(path, data, accept_data_loss)
        state = attrs.evolve(state, next_file_number=max(state.next_file_number, highest + 1))
        # O_APPEND: every edit lands at the end however the descriptor's offset was left.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            if valid < len(data):
                os.ftruncate(fd, valid)
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        manifest = cls(directory, parsed[1], fd, valid, state, snapshot_bytes)
        manifest.recovery_report = report
        _delete_stale_manifests(directory, names, parsed[1])
        return manifest, state

    @classmethod
    def _create(cls, directory: Path, state: ManifestState) -> Manifest:
        """Write a new manifest holding a snapshot of ``state`` and point CURRENT at it."""
        number = state.next_file_number
        state = attrs.evolve(state, next_file_number=number + 1)
        path = manifest_path(directory, number)
        record = frame(encode_edit(_snapshot(state)))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full_error(path, exc) from exc
            raise
        try:
            _write_all(fd, record)
            disk.fsync(fd)
            write_file_atomically(directory / CURRENT, (path.name + "\n").encode())
        except BaseException as exc:
            os.close(fd)
            if isinstance(exc, OSError) and is_disk_full(exc) and _current_name(directory) != path.name:
                # CURRENT still names the old manifest (or none): the new one is just garbage.
                path.unlink(missing_ok=True)
                (directory / (CURRENT + ".tmp")).unlink(missing_ok=True)
                raise disk_full_error(path, exc) from exc
            raise
        return cls(directory, number, fd, len(record), state, len(record))

    def new_file_number(self) -> int:
        with self._counter_lock:
            number = self._next_file_number
            self._next_file_number += 1
            return number

    def log_and_apply(self, edit: VersionEdit) -> ManifestState:
        """Make ``edit`` durable and return the new state. On a full disk the edit is
        refused (:class:`DiskFullError`) and the manifest is left as it was, usable (a
        half-written edit is cut back, a rollover's new manifest removed). Any other
        failed write or fsync leaves it unusable (StorageError): its on-disk state is unknown."""
        fd = self._usable_fd()
        try:
            version = self._state.version.apply(edit)
        except ValueError as exc:
            raise StorageError(f"refusing an inconsistent manifest edit: {exc}") from None
        with self._counter_lock:
            next_number = self._next_file_number
        edit = attrs.evolve(edit, next_file_number=next_number)
        state = _apply_counters(self._state, edit, version)
        if self._size >= max(MANIFEST_ROLL_BYTES, _ROLL_SNAPSHOT_FACTOR * self._snapshot_bytes):
            self._roll(state)
            return self._state
        record = frame(encode_edit(edit))
        try:
            _write_all(fd, record)
            disk.fsync(fd)
        except OSError as exc:
            if is_disk_full(exc) and self._cut_back(fd):
                # Nothing of the edit remains: the manifest stays usable, the caller retries.
                raise disk_full_error(self.path, exc) from exc
            self.close()
            raise StorageError(f"writing manifest {self.path} failed: {exc}") from exc
        self._size += len(record)
        self._state = state
        return state

    def _roll(self, state: ManifestState) -> None:
        old_path, old_fd = self.path, self._fd
        try:
            fresh = Manifest._create(
                self._directory, attrs.evolve(state, next_file_number=self.new_file_number())
            )
        except DiskFullError:
            # Refused before CURRENT moved: this manifest is still the live one, unchanged.
            raise
        except OSError as exc:
            # CURRENT may already name the new manifest (the rename happened, the directory
            # fsync failed): appending to the old one now would log edits no open reads.
            self.close()
            raise StorageError(f"rolling over manifest {old_path} failed: {exc}") from exc
        self._number, self._fd, self._size, self._state = fresh._number, fresh._fd, fresh._size, fresh._state
        self._snapshot_bytes = fresh._snapshot_bytes
        with self._counter_lock:
            self._next_file_number = max(self._next_file_number, fresh._next_file_number)
        fresh._fd = None
        if old_fd is not None:
            os.close(old_fd)
        try:
            os.unlink(old_path)
            fsync_dir(self._directory)
        except OSError:
            # The new manifest is durable and live; a leftover old one is deleted by the next
            # open, so failing the (already durable) edit here would only mislead the caller.
            pass

    def _cut_back(self, fd: int) -> bool:
        """After a failed append, cut the file back to its last whole edit (durably)."""
        try:
            disk.ftruncate(fd, self._size)
            disk.fsync(fd)
        except OSError:
            return False
        return True

    def _usable_fd(self) -> int:
        if self._fd is None:
            raise StorageError(f"manifest {self.path} is closed")
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _current_name(directory: Path) -> str | None:
    try:
        return (directory / CURRENT).read_text("ascii", "replace").strip()
    except FileNotFoundError:
        return None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = disk.write(fd, view)
        view = view[written:]


def _delete_stale_manifests(directory: Path, names: list[str], live_number: int) -> None:
    stale = [
        name
        for name in names
        if (parsed := parse_file_name(name)) is not None
        and parsed[0] == "MANIFEST"
        and parsed[1] != live_number
    ]
    for name in stale:
        (directory / name).unlink(missing_ok=True)
    if stale:
        fsync_dir(directory)


def _replay(
    path: Path, data: bytes, accept_data_loss: bool = False
) -> tuple[ManifestState, int, int, str | None]:
    """Apply every edit in ``data``; returns the state, the valid length, the framed size of
    the first record (the snapshot) and a report of what was dropped (None: nothing)."""
    source = str(path)
    scan = scan_frames(data)
    report: str | None = None
    if scan.tail_error is not None:
        if scan.torn:
            report = f"{path.name}: dropped a torn tail of {scan.dropped_bytes} bytes ({scan.tail_error})"
        else:
            # Truncating here would forget the tables these records added (they are live).
            if scan.following:
                first = scan.following[0][0]
                why = f"{len(scan.following)} valid record(s) follow it, the first at byte {first}"
            else:
                why = "a crash mid-append leaves an incomplete last record or zeros, not this"
            detail = (
                f"{scan.tail_error}: not a torn tail ({why}); {scan.dropped_bytes} bytes of manifest records"
            )
            if not accept_data_loss:
                raise CorruptionError(source, scan.valid_bytes, f"{detail} would be lost")
            report = f"{path.name}: accepted data loss at byte {scan.valid_bytes}: {detail} were dropped"
    state: ManifestState | None = None
    pos = 0
    for payload in scan.payloads:
        try:
            edit = decode_edit(payload)
            if state is None:
                state = ManifestState(Version(), 0, 0, 0)
            state = _apply_counters(state, edit, state.version.apply(edit))
        except ValueError as exc:
            raise CorruptionError(source, pos, f"bad manifest record: {exc}") from None
        pos += FRAME_HEADER_SIZE + len(payload)
    if state is None:
        raise CorruptionError(source, 0, "the manifest holds no complete record")
    snapshot_bytes = FRAME_HEADER_SIZE + len(scan.payloads[0])
    return state, scan.valid_bytes, snapshot_bytes, report
