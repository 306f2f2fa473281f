"""WAL segment files: a synchronous append-only writer, replay, and tail truncation.

Role: the WalWriter actor owns one :class:`WalFile` (the live segment) and does group commit
on top of it: it collects framed records (:func:`sentinel.storage.wal_format.encode_wal_record`)
from many writers, hands them to :meth:`WalFile.append_many` as ONE ``write`` syscall, and
calls :meth:`WalFile.sync` according to the sync policy. Recovery calls :func:`replay_wal`
on each live segment, applies the batches to a memtable, and cuts a torn tail with
:func:`truncate_wal_tail` (or :meth:`WalFile.open_for_append` when it keeps writing there).

Invariants:

- Bytes reach the file only by appending, in the order given; ``size`` is the file length.
- A segment's batches have strictly increasing seqs (the engine assigns seqs in the order it
  appends). :func:`replay_wal` checks this: a checksum-valid frame that breaks it, or whose
  payload does not decode, is corruption (software bug or a lying disk) and raises
  :class:`CorruptionError` naming the file and position. Where the frames stop being valid
  is reported in :class:`WalReplay`, not raised: whether that is a torn tail (an incomplete
  last frame or a zero-filled end, ``framing.scan_frames``) or damage, and what a cut there
  would lose, is the engine's call to make and report.
- After a failed ``write`` or ``fsync`` a :class:`WalFile` refuses further use: the file's
  contents are unknown, and after a failed fsync the kernel may already have dropped the
  dirty pages, so retrying could report success for data that is gone. Except for a full
  disk (ENOSPC, EDQUOT: :class:`DiskFullError`): a failed ``write`` is cut back to the last
  whole frame (a half frame would later read as damage), and a failed ``fsync`` leaves the
  file as it was, for the owner to decide (:meth:`WalFile.cut_back` what was not made
  durable, or retry the sync). The file stays usable; if the cut itself fails, the next
  append retries it first and nothing is appended after a half frame.
- A missing segment makes :func:`replay_wal` raise ``FileNotFoundError`` unchanged: whether
  that is corruption (the manifest names it) or expected is the engine's call.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import attrs

from sentinel.errors import CorruptionError, DiskFullError, StorageClosed, StorageError
from sentinel.storage import builds
from sentinel.storage.files import disk, disk_full_error, fsync_dir, is_disk_full
from sentinel.storage.framing import FRAME_HEADER_SIZE, scan_frames


def _datasync(fd: int) -> None:
    # fdatasync skips flushing metadata that reading the data does not need (mtime), but
    # does flush a file-size change, which is all an append needs (through the test seam).
    disk.fdatasync(fd)


_NEW_FILE_MODE = 0o644


class WalFile:
    """The append-only writer of one WAL segment. Not thread-safe: one owner."""

    __slots__ = ("_cut_to", "_failure", "_fd", "_path", "_size")

    def __init__(self, path: Path, fd: int, size: int) -> None:
        """Use :meth:`create` or :meth:`open_for_append`."""
        self._path = path
        self._fd: int | None = fd
        self._size = size
        self._failure: str | None = None
        # Set while bytes past ``_size`` (a frame cut short by a full disk) still await the
        # truncate that removes them: nothing may be appended after them.
        self._cut_to: int | None = None

    @classmethod
    def create(cls, path: Path) -> WalFile:
        """Create a new, empty segment; ``FileExistsError`` if ``path`` exists, and
        :class:`DiskFullError` when the disk has no room for it (then no file is left).

        The directory is fsynced so the new name survives a crash: otherwise records
        acknowledged after a later ``sync`` could vanish with the whole file.
        """
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, _NEW_FILE_MODE)
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full_error(path, exc) from exc
            raise
        try:
            fsync_dir(path.parent)
        except BaseException as exc:
            os.close(fd)
            # Gone again, so a retry can create it (and recovery never meets a segment that
            # was never used, nor a name whose creation was not durable).
            path.unlink(missing_ok=True)
            if isinstance(exc, OSError) and is_disk_full(exc):
                raise disk_full_error(path, exc) from exc
            raise
        return cls(path, fd, 0)

    @classmethod
    def open_for_append(cls, path: Path, valid_bytes: int) -> WalFile:
        """Reopen an existing segment, cut to its first ``valid_bytes`` (durably), at its end."""
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            _truncate_fd(fd, path, valid_bytes)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, valid_bytes)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def size(self) -> int:
        """Bytes in the file: the valid prefix it was opened with plus everything appended."""
        return self._size

    @property
    def closed(self) -> bool:
        return self._fd is None

    def _usable_fd(self) -> int:
        if self._fd is None:
            raise StorageClosed(f"WAL {self._path} is closed")
        if self._failure is not None:
            raise StorageError(f"WAL {self._path} is unusable after an earlier failure: {self._failure}")
        return self._fd

    def append(self, framed: bytes) -> None:
        """Write one framed record (not durable until :meth:`sync`)."""
        self._write(framed)

    def append_many(self, frames: Sequence[bytes]) -> None:
        """Write several framed records with a single ``write`` syscall (group commit)."""
        self._write(b"".join(frames))

    def _write(self, data: bytes) -> None:
        fd = self._usable_fd()
        if self._cut_to is not None:
            self.cut_back(self._cut_to)
        try:
            written = disk.write(fd, data)
            if written < len(data):
                # Regular files write short only when the disk fills or past the kernel's
                # per-call limit (~2 GiB); finish the record or fail with the real error.
                view = memoryview(data)[written:]
                while view:
                    written = disk.write(fd, view)
                    if written == 0:
                        raise OSError(f"write made no progress with {len(view)} bytes left")
                    view = view[written:]
        except OSError as exc:
            if is_disk_full(exc):
                # Part of the data may have reached the file: cut it (or remember to).
                self._cut_to = self._size
                try:
                    self.cut_back(self._size)
                except DiskFullError:
                    pass
                raise disk_full_error(self._path, exc) from exc
            self._failure = f"write failed: {exc}"
            raise StorageError(f"WAL {self._path}: write at byte {self._size} failed: {exc}") from exc
        self._size += len(data)

    def sync(self) -> None:
        """Make every appended byte durable (fdatasync where available, else fsync).

        On a full disk raises :class:`DiskFullError` and keeps the file usable: the caller
        either cuts the unsynced bytes (:meth:`cut_back`) or retries the sync later."""
        fd = self._usable_fd()
        try:
            _datasync(fd)
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full_error(self._path, exc) from exc
            self._failure = f"sync failed: {exc}"
            raise StorageError(f"WAL {self._path}: sync failed: {exc}") from exc

    def cut_back(self, size: int) -> None:
        """Drop every byte past ``size`` (a frame boundary at or below :attr:`size`).

        Not fsynced here: the next successful sync makes the cut durable together with
        what follows it, and until then a crash can only bring back whole frames that
        were never acknowledged, or a torn tail. If the truncate fails the cut stays
        pending and the next append retries it first (:class:`DiskFullError` until then).
        """
        fd = self._usable_fd()
        if not 0 <= size <= self._size:
            raise ValueError(f"cannot cut {self._path} back to {size} bytes (it holds {self._size})")
        try:
            disk.ftruncate(fd, size)
        except OSError as exc:
            self._cut_to = size
            if is_disk_full(exc):
                raise disk_full_error(self._path, exc) from exc
            self._failure = f"truncate failed: {exc}"
            raise StorageError(f"WAL {self._path}: cutting back to byte {size} failed: {exc}") from exc
        self._size = size
        self._cut_to = None

    def close(self) -> None:
        """Close the file (idempotent). Does NOT sync: call :meth:`sync` first if needed."""
        fd = self._fd
        if fd is not None:
            self._fd = None
            os.close(fd)

    def __enter__(self) -> WalFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@attrs.frozen
class WalReplay:
    """What :func:`replay_wal` recovered from one segment."""

    batches: list[list[tuple[bytes, int, bytes | None]]]  # decoded, in file order
    valid_bytes: int  # length of the prefix of whole, valid frames
    total_bytes: int
    tail_error: str | None  # why reading stopped early (torn / checksum), None if it did not
    last_seq: int | None  # seq of the last entry of the last batch, None if no batches
    torn: bool = False  # reading stopped at a torn tail (incomplete last frame, zero fill)
    #: Checksum-valid write batches found after the damage (never after a torn tail): what
    #: cutting at ``valid_bytes`` would lose besides the damaged bytes.
    lost_batches: int = 0
    #: The seqs those batches hold, ``(first, last)``; None when none of them decodes.
    lost_seqs: tuple[int, int] | None = None

    @property
    def dropped_bytes(self) -> int:
        """Bytes past ``valid_bytes``: the tail recovery drops."""
        return self.total_bytes - self.valid_bytes


def replay_wal(path: Path) -> WalReplay:
    """Read and decode a whole segment, stopping at a torn or corrupt tail.

    Reads the file in one go: a segment is bounded by the memtable size it backs. Raises
    ``FileNotFoundError`` if it is missing and :class:`CorruptionError` for a checksum-valid
    frame whose payload is malformed or whose seqs do not follow the previous batch's.
    """
    data = path.read_bytes()
    scan = scan_frames(data)
    source = str(path)
    batches: list[list[tuple[bytes, int, bytes | None]]] = []
    last_seq: int | None = None
    offset = 0
    for payload in scan.payloads:
        batch = builds.wal_format.decode_write_batch(payload, source, offset + FRAME_HEADER_SIZE)
        first = batch[0][1]
        if last_seq is not None and first <= last_seq:
            raise CorruptionError(
                source,
                offset,
                f"write batch starts at seq {first}, not after the previous batch's last seq {last_seq}",
            )
        last_seq = batch[-1][1]
        batches.append(batch)
        offset += FRAME_HEADER_SIZE + len(payload)
    lost_seqs = _seqs_of(scan.following, source)
    return WalReplay(
        batches=batches,
        valid_bytes=scan.valid_bytes,
        total_bytes=scan.total_bytes,
        tail_error=scan.tail_error,
        last_seq=last_seq,
        torn=scan.torn,
        lost_batches=len(scan.following),
        lost_seqs=lost_seqs,
    )


def _seqs_of(frames: Sequence[tuple[int, bytes]], source: str) -> tuple[int, int] | None:
    """The seq range of the write batches in ``frames`` (valid frames after damage), for the
    report of what a cut would lose; a frame that does not decode adds nothing to it."""
    seqs: list[int] = []
    for offset, payload in frames:
        try:
            batch = builds.wal_format.decode_write_batch(payload, source, offset + FRAME_HEADER_SIZE)
        except CorruptionError:
            continue
        seqs += (batch[0][1], batch[-1][1])
    return (min(seqs), max(seqs)) if seqs else None


def truncate_wal_tail(path: Path, valid_bytes: int) -> None:
    """Cut ``path`` to its first ``valid_bytes`` and fsync, so the dropped tail stays gone."""
    fd = os.open(path, os.O_WRONLY)
    try:
        _truncate_fd(fd, path, valid_bytes)
    finally:
        os.close(fd)


def _truncate_fd(fd: int, path: Path, valid_bytes: int) -> None:
    size = os.fstat(fd).st_size
    if not 0 <= valid_bytes <= size:
        # Truncating "up" would append zeros that replay would then report as a torn tail.
        raise ValueError(f"cannot cut {path} ({size} bytes) to {valid_bytes} bytes")
    if valid_bytes < size:
        disk.ftruncate(fd, valid_bytes)
        # Durable before anything new is appended: if a crash undid the cut, stale frames
        # of the old tail could reappear after the new records and be replayed out of order.
        disk.fsync(fd)
