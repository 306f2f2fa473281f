"""SSTable writer and reader: immutable sorted files of ``(key, seq, value | None)`` entries.

The byte layout is in ``sstable_format.py``. Invariants of a table:

- at most one entry per key, keys strictly ascending in bytes order (the writer refuses
  anything else with ValueError); ``value is None`` is a tombstone;
- a table holds at least one entry: ``finish()`` on an empty writer raises ValueError,
  because an empty table has no key range to record in the manifest and is never useful;
- once ``finish()`` returned, the file is complete and fsynced; it is never modified
  again. The directory entry is NOT fsynced: the caller creates several tables and
  fsyncs the directory once before recording them in the manifest.

Reading trusts nothing it has not checksummed. ``SSTableReader.open`` verifies the magic,
the footer CRC, the bloom and index block CRCs and the structure of the index (blocks
contiguous from offset 0 to the bloom block, key ranges ascending and disjoint, matching
the footer's min/max keys). Each data block is verified when it is read, and its entries
must decode exactly, be strictly ascending and match the index's first/last keys. Any
failure raises ``CorruptionError(path, byte_offset, detail)``; a corrupt data block fails
only the reads that touch it. A scan given ``on_damage`` reports a corrupt data block
there (:class:`DamagedBlock`: the error and the block's key range from the verified index)
and goes on with the next block instead, so a reader of a merged scan can serve what
precedes the damage and say exactly which of its keys are missing. A missing file raises
``FileNotFoundError`` (it is not corruption of the table but a missing table; the caller
decides what that means).

The reader holds one file descriptor and reads with ``os.pread`` only, so there is no
shared file position: any number of scans and lookups may interleave (and run from
several threads). A small LRU of decoded blocks serves repeated point lookups; scans do
not fill it (a compaction or a long consumer read would only evict the hot blocks).
"""

from __future__ import annotations

import os
import zlib
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

import attrs

from sentinel.errors import CorruptionError
from sentinel.storage import builds
from sentinel.storage.bloom import BloomFilter
from sentinel.storage.files import disk
from sentinel.storage.sstable_blocks import TableBuilder
from sentinel.storage.sstable_format import (
    BLOCK_HEADER,
    BLOCK_HEADER_SIZE,
    BLOCK_SIZE,
    FOOTER_TRAILER,
    FOOTER_TRAILER_SIZE,
    MAGIC,
    MIN_FILE_SIZE,
    MIN_FOOTER_LEN,
    Footer,
    decode_footer_body,
    encode_footer,
)
from sentinel.varint import decode_uvarint

Entry = tuple[bytes, int, bytes | None]

# Bytes of finished blocks gathered before one os.write: fewer syscalls than one per 4 KiB
# block, small enough not to matter for memory.
WRITE_BUFFER_BYTES = 256 * 1024
# Decoded blocks a reader keeps for point lookups. Measured on a 100k-entry table: a hit
# costs ~2 us against ~30 us for read + verify + decode. 64 blocks of ~4 KiB each bound the
# decoded size to roughly 1 MiB per open table.
DEFAULT_BLOCK_CACHE_BLOCKS = 64
# ``add_from`` without a data limit: more than any table holds (a machine-word int, so the
# compiled loop compares it natively).
_NO_LIMIT = 1 << 60


@attrs.frozen
class DamagedBlock:
    """A data block a scan skipped because it failed its checks.

    ``first_key`` and ``last_key`` come from the index, which was verified when the table
    was opened: the block's entries (unreadable now) are all within them.
    """

    error: CorruptionError
    first_key: bytes
    last_key: bytes


@attrs.frozen
class SSTableInfo:
    """What a finished table is: enough for the manifest's FileMeta."""

    path: Path
    file_size: int
    count: int
    min_key: bytes
    max_key: bytes
    max_seq: int


class SSTableWriter:
    """Builds one table, entry by entry in ascending key order.

    Use ``finish()`` to complete it or ``abandon()`` to close and delete the partial file.
    As a context manager, leaving the block by an exception abandons the file; leaving it
    normally without ``finish()`` or ``abandon()`` abandons it and raises RuntimeError
    (a forgotten ``finish()`` must not pass silently).

    The file is created with O_EXCL: table files are immutable and their numbers are never
    reused, so an existing file at ``path`` is a bug upstream, not something to overwrite.
    """

    def __init__(self, path: Path, *, block_size: int = BLOCK_SIZE, bloom_bits_per_key: int = 10) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if bloom_bits_per_key < 1:
            raise ValueError(f"bloom_bits_per_key must be >= 1, got {bloom_bits_per_key}")
        self._path = Path(path)
        self._bloom_bits_per_key = bloom_bits_per_key
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self._state = "open"  # "open" -> "finished" | "abandoned"
        # The blocks, index and bloom hashes (pure, compiled when built): this class adds the file.
        self._builder: TableBuilder = builds.sstable_blocks.TableBuilder(block_size)
        self._bloom_filter = builds.bloom.BloomFilter
        self._written = 0  # bytes already written to the file

    @property
    def path(self) -> Path:
        return self._path

    @property
    def count(self) -> int:
        return self._builder.count

    @property
    def estimated_size(self) -> int:
        """Bytes of data blocks so far (for callers that cut tables at a target size)."""
        return self._builder.estimated_size

    def add(self, key: bytes, seq: int, value: bytes | None) -> None:
        """Append one entry; ``key`` must be greater than every key added before.

        A rejected entry (ValueError, TypeError) leaves the writer as it was.
        """
        if self._state != "open":
            raise RuntimeError(f"SSTableWriter for {self._path} is {self._state}")
        if self._builder.add(key, seq, value) >= WRITE_BUFFER_BYTES:
            self._flush()

    def add_from(self, entries: Iterator[Entry], data_limit: int | None = None) -> bool:
        """``add`` every entry of the iterator (True), or stop once the keys and values added
        reach ``data_limit`` bytes (False: the iterator holds the rest, for the next table).
        The loop runs in the block codec (compiled when built): no Python call per entry."""
        if self._state != "open":
            raise RuntimeError(f"SSTableWriter for {self._path} is {self._state}")
        builder = self._builder
        limit = _NO_LIMIT if data_limit is None else data_limit
        while builder.data_bytes < limit:
            done = builder.add_from(entries, WRITE_BUFFER_BYTES, limit)
            if builder.pending_bytes >= WRITE_BUFFER_BYTES:
                self._flush()
            if done:
                return True
        return False

    @property
    def data_bytes(self) -> int:
        """Bytes of keys and values added so far."""
        return self._builder.data_bytes

    def _flush(self) -> None:
        out = self._builder.take()
        view = memoryview(out)
        try:
            while view:
                written = disk.write(self._fd, view)
                view = view[written:]
                self._written += written
        finally:
            view.release()

    def finish(self) -> SSTableInfo:
        """Write the bloom, index and footer, fsync and close the file."""
        if self._state != "open":
            raise RuntimeError(f"SSTableWriter for {self._path} is {self._state}")
        builder = self._builder
        min_key = builder.min_key
        if builder.count == 0 or min_key is None:
            raise ValueError(f"refusing to finish an empty SSTable {self._path}: a table holds >= 1 entry")
        try:
            builder.finish_block()
            bloom = self._bloom_filter.build_from_hashes(builder.hashes, self._bloom_bits_per_key)
            bloom_offset, bloom_size = builder.append_framed(bloom)
            index_offset, index_size = builder.append_framed(builder.index)
            builder.append_raw(
                encode_footer(
                    Footer(
                        index_offset=index_offset,
                        index_size=index_size,
                        bloom_offset=bloom_offset,
                        bloom_size=bloom_size,
                        count=builder.count,
                        max_seq=builder.max_seq,
                        min_key=min_key,
                        max_key=builder.last_key,
                    )
                )
            )
            self._flush()
            disk.fsync(self._fd)
        except BaseException:
            self.abandon()
            raise
        os.close(self._fd)
        self._fd = -1
        self._state = "finished"
        return SSTableInfo(
            path=self._path,
            file_size=self._written,
            count=builder.count,
            min_key=min_key,
            max_key=builder.last_key,
            max_seq=builder.max_seq,
        )

    def abandon(self) -> None:
        """Close and delete the partial file. Idempotent; does nothing after ``finish()``."""
        if self._state != "open":
            return
        self._state = "abandoned"
        fd, self._fd = self._fd, -1
        try:
            os.close(fd)
        finally:
            self._path.unlink(missing_ok=True)

    def __enter__(self) -> SSTableWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._state != "open":
            return
        self.abandon()
        if exc_type is None:
            raise RuntimeError(f"SSTableWriter for {self._path} left without finish() or abandon()")


class SSTableReader:
    """A verified, open table. Create with ``SSTableReader.open(path)``; ``close()`` when done."""

    def __init__(
        self,
        path: Path,
        fd: int,
        file_size: int,
        footer: Footer,
        bloom: BloomFilter,
        first_keys: list[bytes],
        last_keys: list[bytes],
        offsets: list[int],
        sizes: list[int],
        block_cache_blocks: int,
    ) -> None:
        self._path = path
        self._source = str(path)
        self._fd = fd
        self._file_size = file_size
        self._footer = footer
        self._min_key = footer.min_key
        self._max_key = footer.max_key
        self._bloom = bloom
        self._first_keys = first_keys
        self._last_keys = last_keys
        self._offsets = offsets
        self._sizes = sizes
        self._cache: OrderedDict[int, tuple[list[bytes], list[Entry]]] = OrderedDict()
        self._cache_capacity = block_cache_blocks
        self._blocks = builds.sstable_blocks  # the data-block decoder (compiled when built)

    @classmethod
    def open(cls, path: Path, *, block_cache_blocks: int = DEFAULT_BLOCK_CACHE_BLOCKS) -> SSTableReader:
        """Open and verify a table. FileNotFoundError if missing, CorruptionError if damaged."""
        path = Path(path)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return cls._open_fd(path, fd, block_cache_blocks)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def _open_fd(cls, path: Path, fd: int, block_cache_blocks: int) -> SSTableReader:
        source = str(path)
        size = os.fstat(fd).st_size
        if size < MIN_FILE_SIZE:
            raise CorruptionError(source, size, f"truncated file (size {size} < minimum {MIN_FILE_SIZE})")
        trailer_at = size - FOOTER_TRAILER_SIZE
        trailer = os.pread(fd, FOOTER_TRAILER_SIZE, trailer_at)
        footer_len, footer_crc, magic = FOOTER_TRAILER.unpack(trailer)
        if magic != MAGIC:
            raise CorruptionError(
                source, trailer_at + 8, f"bad magic {magic:#018x} (not an SSTable, or truncated)"
            )
        # Everything before the footer must hold at least a data, a bloom and an index block.
        if not MIN_FOOTER_LEN <= footer_len <= trailer_at - 3 * BLOCK_HEADER_SIZE:
            raise CorruptionError(source, trailer_at, f"implausible footer length {footer_len}")
        footer_start = trailer_at - footer_len
        body = os.pread(fd, footer_len, footer_start)
        if zlib.crc32(trailer[:4], zlib.crc32(body)) != footer_crc:
            raise CorruptionError(source, footer_start, "footer checksum mismatch")
        try:
            footer = decode_footer_body(body)
        except ValueError as exc:
            raise CorruptionError(source, footer_start, f"malformed footer: {exc}") from None
        cls._check_footer(source, footer, footer_start)

        # Bloom and index are adjacent (checked above): one read for both.
        meta = os.pread(fd, footer_start - footer.bloom_offset, footer.bloom_offset)
        if len(meta) != footer_start - footer.bloom_offset:
            raise CorruptionError(source, footer.bloom_offset, "short read of the bloom and index blocks")
        bloom_payload = cls._unframe(source, "bloom", meta, 0, footer.bloom_size, footer.bloom_offset)
        index_payload = cls._unframe(
            source, "index", meta, footer.bloom_size, footer.index_size, footer.index_offset
        )
        try:
            bloom = builds.bloom.BloomFilter.from_bytes(bloom_payload)
        except ValueError as exc:
            raise CorruptionError(source, footer.bloom_offset, f"malformed bloom block: {exc}") from None
        first_keys, last_keys, offsets, sizes = cls._decode_index(source, footer, index_payload)
        return cls(path, fd, size, footer, bloom, first_keys, last_keys, offsets, sizes, block_cache_blocks)

    @staticmethod
    def _check_footer(source: str, footer: Footer, footer_start: int) -> None:
        problem = None
        if footer.index_offset + footer.index_size != footer_start:
            problem = f"index block [{footer.index_offset}, +{footer.index_size}) does not end at the footer"
        elif footer.bloom_offset + footer.bloom_size != footer.index_offset:
            problem = f"bloom block [{footer.bloom_offset}, +{footer.bloom_size}) does not end at the index"
        elif footer.bloom_size < BLOCK_HEADER_SIZE or footer.index_size < BLOCK_HEADER_SIZE:
            problem = "bloom or index block smaller than a block header"
        elif footer.bloom_offset < BLOCK_HEADER_SIZE:
            problem = f"no room for data blocks before the bloom block at {footer.bloom_offset}"
        elif footer.count < 1:
            problem = "entry count is 0"
        elif footer.min_key > footer.max_key:
            problem = "min_key > max_key"
        if problem is not None:
            raise CorruptionError(source, footer_start, f"malformed footer: {problem}")

    @staticmethod
    def _unframe(source: str, what: str, buf: bytes, pos: int, size: int, file_offset: int) -> bytes:
        crc, length = BLOCK_HEADER.unpack_from(buf, pos)
        if length != size - BLOCK_HEADER_SIZE:
            raise CorruptionError(
                source, file_offset, f"{what} block length {length} disagrees with its size {size}"
            )
        payload = buf[pos + BLOCK_HEADER_SIZE : pos + size]
        if zlib.crc32(payload) != crc:
            raise CorruptionError(source, file_offset, f"{what} block checksum mismatch")
        return payload

    @staticmethod
    def _decode_index(
        source: str, footer: Footer, data: bytes
    ) -> tuple[list[bytes], list[bytes], list[int], list[int]]:
        first_keys: list[bytes] = []
        last_keys: list[bytes] = []
        offsets: list[int] = []
        sizes: list[int] = []
        pos = 0
        end = len(data)
        expected_offset = 0
        try:
            while pos < end:
                n, pos = decode_uvarint(data, pos)
                if pos + n > end:
                    raise ValueError("first_key overruns the block")
                first = data[pos : pos + n]
                pos += n
                n, pos = decode_uvarint(data, pos)
                if pos + n > end:
                    raise ValueError("last_key overruns the block")
                last = data[pos : pos + n]
                pos += n
                offset, pos = decode_uvarint(data, pos)
                size, pos = decode_uvarint(data, pos)
                entry = len(offsets)
                if offset != expected_offset:
                    raise ValueError(f"entry {entry}: block offset {offset}, expected {expected_offset}")
                if size <= BLOCK_HEADER_SIZE:
                    raise ValueError(f"entry {entry}: block size {size} holds no entries")
                if first > last:
                    raise ValueError(f"entry {entry}: first_key > last_key")
                if last_keys and first <= last_keys[-1]:
                    raise ValueError(f"entry {entry}: key range overlaps the previous block")
                expected_offset = offset + size
                first_keys.append(first)
                last_keys.append(last)
                offsets.append(offset)
                sizes.append(size)
        except ValueError as exc:
            raise CorruptionError(source, footer.index_offset, f"malformed index block: {exc}") from None
        problem = None
        if not offsets:
            problem = "no data blocks"
        elif expected_offset != footer.bloom_offset:
            problem = f"data blocks end at {expected_offset}, the bloom block starts at {footer.bloom_offset}"
        elif first_keys[0] != footer.min_key or last_keys[-1] != footer.max_key:
            problem = "key range disagrees with the footer's min_key/max_key"
        if problem is not None:
            raise CorruptionError(source, footer.index_offset, f"malformed index block: {problem}")
        return first_keys, last_keys, offsets, sizes

    # -- properties -------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def file_size(self) -> int:
        return self._file_size

    @property
    def count(self) -> int:
        return self._footer.count

    @property
    def min_key(self) -> bytes:
        return self._min_key

    @property
    def max_key(self) -> bytes:
        return self._max_key

    @property
    def max_seq(self) -> int:
        return self._footer.max_seq

    @property
    def num_blocks(self) -> int:
        return len(self._offsets)

    # -- reads ------------------------------------------------------------------------------

    def _read_block(self, i: int) -> tuple[list[bytes], list[Entry]]:
        fd = self._fd
        if fd < 0:
            raise ValueError(f"read from closed SSTableReader {self._source}")
        offset = self._offsets[i]
        size = self._sizes[i]
        raw = os.pread(fd, size, offset)
        if len(raw) != size:
            raise CorruptionError(
                self._source, offset, f"data block {i} short read ({len(raw)} of {size} bytes)"
            )
        crc, length = BLOCK_HEADER.unpack_from(raw)
        if length != size - BLOCK_HEADER_SIZE:
            raise CorruptionError(
                self._source, offset, f"data block {i} length {length} disagrees with the index size {size}"
            )
        if zlib.crc32(memoryview(raw)[BLOCK_HEADER_SIZE:]) != crc:
            # The position names the byte already; "at offset N" in the detail would read as
            # a record offset in a consumer's error line.
            raise CorruptionError(self._source, offset, f"data block {i} checksum mismatch")
        try:
            keys, entries = self._blocks.decode_entries(raw, BLOCK_HEADER_SIZE)
        except self._blocks.MalformedBlock as exc:
            raise CorruptionError(self._source, offset, f"data block {i} malformed: {exc}") from None
        if keys[0] != self._first_keys[i] or keys[-1] != self._last_keys[i]:
            raise CorruptionError(
                self._source, offset, f"data block {i} malformed: key range disagrees with the index"
            )
        return keys, entries

    def _cached_block(self, i: int) -> tuple[list[bytes], list[Entry]]:
        cache = self._cache
        block = cache.get(i)
        if block is not None:
            try:
                cache.move_to_end(i)
            except KeyError:  # evicted by another thread in between: still a valid block
                pass
            return block
        block = self._read_block(i)
        if self._cache_capacity > 0:
            cache[i] = block
            while len(cache) > self._cache_capacity:
                try:
                    cache.popitem(last=False)
                except KeyError:
                    break
        return block

    def may_contain(self, key: bytes) -> bool:
        """False means the key is certainly absent; True means a lookup must read a block."""
        return self._min_key <= key <= self._max_key and self._bloom.may_contain(key)

    def get(self, key: bytes) -> tuple[int, bytes | None] | None:
        """``(seq, value)`` of the key's entry (value None for a tombstone), or None if absent."""
        if not (self._min_key <= key <= self._max_key and self._bloom.may_contain(key)):
            return None
        i = bisect_left(self._last_keys, key)
        # i < num_blocks because key <= max_key == last_keys[-1]; key < first_keys[i] means
        # the key falls in the gap before block i.
        if key < self._first_keys[i]:
            return None
        keys, entries = self._cached_block(i)
        j = bisect_left(keys, key)
        if j < len(keys) and keys[j] == key:
            _, seq, value = entries[j]
            return seq, value
        return None

    def scan(
        self,
        start: bytes | None = None,
        end: bytes | None = None,
        *,
        on_damage: Callable[[DamagedBlock], None] | None = None,
    ) -> Iterator[Entry]:
        """Entries with ``start <= key < end`` ascending (None: unbounded), read block by block.

        A damaged data block raises CorruptionError, or with ``on_damage`` is reported to it
        and skipped: the report comes before any entry at or after the block's first key."""
        last_keys = self._last_keys
        first_keys = self._first_keys
        num_blocks = len(last_keys)
        i = 0 if start is None else bisect_left(last_keys, start)
        first = True
        while i < num_blocks:
            if end is not None and first_keys[i] >= end:
                return
            block = self._cache.get(i)
            if block is None:
                try:
                    block = self._read_block(i)
                except CorruptionError as exc:
                    if on_damage is None:
                        raise
                    on_damage(DamagedBlock(exc, first_keys[i], last_keys[i]))
                    first = False
                    i += 1
                    continue
            keys, entries = block
            lo = bisect_left(keys, start) if first and start is not None else 0
            first = False
            if end is None or last_keys[i] < end:
                yield from (entries[lo:] if lo else entries)
            else:
                yield from entries[lo : bisect_left(keys, end)]
                return
            i += 1

    def __iter__(self) -> Iterator[Entry]:
        return self.scan()

    def close(self) -> None:
        """Release the file; later reads raise ValueError. Idempotent."""
        fd, self._fd = self._fd, -1
        self._cache.clear()
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> SSTableReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SSTableReader({self._source!r}, count={self.count}, blocks={len(self._offsets)})"
