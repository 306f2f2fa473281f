"""Compression codecs of a record batch's records section, with bounded decompression.

gzip uses the standard library; lz4 (``lz4.frame``), zstd (``zstandard``) and snappy
(``cramjam``) are optional packages, imported lazily on each use so a missing one only
matters to batches that use it and the error names the package to install.

Snappy comes in the two shapes Kafka clients write: the Java client (xerial snappy-java)
frames raw snappy blocks behind the ``\x82SNAPPY\x00`` magic (each block a 4-byte big-endian
length and a raw block); librdkafka and others may send one raw snappy block. Both decode;
Sentinel writes the xerial framing, which every Kafka client reads.

Invariants:
- ``decompress`` never returns more than ``max_size`` bytes and never lets a small input
  (a "zip bomb") allocate much more: a raw snappy block declares its length up front and is
  checked before it is decompressed; zlib and lz4 stop at ``max_size + 1`` output bytes;
  zstd either trusts a frame's declared content size after checking it against the limit
  (libzstd then refuses to write past it) or is fed input in slices small enough that one
  slice cannot expand past the limit (with a floor of 64 input bytes, i.e. 2 MiB of output,
  for tiny limits), so at most about twice ``max(max_size, 2 MiB)`` is ever held.
- ``decompress`` accepts exactly one complete compressed stream: truncated streams and
  bytes after the end of the stream are errors, never silently dropped.
- Build-side failures raise ``InvalidArgument`` (the caller asked for something we cannot
  do); read-side failures raise ``InvalidRecordBatch`` (the bytes cannot be decoded).
"""

from __future__ import annotations

import enum
import importlib
import zlib
from types import ModuleType
from typing import Final

from sentinel.errors import InvalidArgument, InvalidRecordBatch
from sentinel.records import batch_format as fmt

# Default cap on the decompressed size of one records section. Well above any batch a
# producer sends (batches are capped at 16 MiB on the wire), low enough that a hostile
# batch cannot exhaust a broker's or a consumer's memory.
DEFAULT_MAX_UNCOMPRESSED_BYTES: Final = 64 * 1024 * 1024

# The gzip container (not raw deflate, not zlib): what Kafka's Java and librdkafka clients write.
_GZIP_WBITS: Final = 16 + zlib.MAX_WBITS
# zlib's levels: -1 is its default (6), 0 stores, 9 is the slowest.
_GZIP_MIN_LEVEL: Final = zlib.Z_DEFAULT_COMPRESSION
_GZIP_MAX_LEVEL: Final = zlib.Z_BEST_COMPRESSION
# LZ4 cannot expand one input byte into more than ~255 output bytes (a match length is
# extended one 255-step per byte). Inputs small enough that even this ratio stays under the
# limit are decompressed in one unbounded call, which lz4.frame does ~10x faster than a
# call with max_length.
_LZ4_MAX_EXPANSION: Final = 256
# zstd's worst case: an RLE block of 128 KiB output from 4 input bytes.
_ZSTD_MAX_EXPANSION: Final = 32 * 1024
# Smallest input slice fed to the zstd stream decoder, so tiny limits do not mean
# byte-by-byte calls.
_ZSTD_MIN_SLICE: Final = 64


class Compression(enum.IntEnum):
    """Codec ids of attributes bits 0-2 (values from batch_format)."""

    NONE = fmt.CODEC_NONE
    GZIP = fmt.CODEC_GZIP
    SNAPPY = fmt.CODEC_SNAPPY
    LZ4 = fmt.CODEC_LZ4
    ZSTD = fmt.CODEC_ZSTD

    def is_available(self) -> bool:
        """True when this process can both compress and decompress with this codec."""
        package = _OPTIONAL_PACKAGES.get(self)
        if package is None:
            return True
        try:
            importlib.import_module(package[0])
        except ImportError:
            return False
        return True


# codec -> (module to import, distribution name to install)
_OPTIONAL_PACKAGES: Final[dict[Compression, tuple[str, str]]] = {
    Compression.LZ4: ("lz4.frame", "lz4"),
    Compression.ZSTD: ("zstandard", "zstandard"),
    Compression.SNAPPY: ("cramjam", "cramjam"),
}

# xerial snappy-java's stream header: magic, then version and minimum compatible version
# (both 1 as Kafka's Java client writes them), then blocks of int32 length + raw snappy.
_XERIAL_MAGIC: Final = b"\x82SNAPPY\x00"
_XERIAL_HEADER: Final = _XERIAL_MAGIC + (1).to_bytes(4, "big") + (1).to_bytes(4, "big")
_XERIAL_BLOCK_LENGTH: Final = 4
# snappy-java's default block size: what Kafka's Java producer frames.
_XERIAL_BLOCK_SIZE: Final = 32 * 1024


def available_codecs() -> tuple[Compression, ...]:
    """Every codec this process can use, NONE first."""
    return tuple(codec for codec in Compression if codec.is_available())


def _load(codec: Compression, error: type[InvalidArgument]) -> ModuleType:
    module_name, distribution = _OPTIONAL_PACKAGES[codec]
    try:
        # Imported on every call (a dict lookup once loaded) rather than cached, so an
        # environment without the package fails here with a message, never at import time.
        return importlib.import_module(module_name)
    except ImportError:
        raise error(
            f"{codec.name.lower()} compression needs the {distribution!r} package, which is not "
            f"installed (pip install {distribution}, or sentinel-streaming[compression])"
        ) from None


def compress(codec: Compression, data: bytes | bytearray, level: int | None = None) -> bytes:
    """Compress a records section. ``level`` is the codec's own level (None: its default).

    Levels: gzip -1 (default) .. 9; zstd up to its maximum (22), negative for its fast
    modes; lz4 any int (clamped by lz4, <= 0 is the fast default).
    """
    if level is not None and type(level) is not int:
        raise InvalidArgument(f"compression level must be an int or None, got {level!r}")
    if codec is Compression.GZIP:
        if level is not None and not _GZIP_MIN_LEVEL <= level <= _GZIP_MAX_LEVEL:
            raise InvalidArgument(
                f"gzip compression level must be in [{_GZIP_MIN_LEVEL}, {_GZIP_MAX_LEVEL}], got {level}"
            )
        compressor = zlib.compressobj(
            zlib.Z_DEFAULT_COMPRESSION if level is None else level, wbits=_GZIP_WBITS
        )
        return compressor.compress(data) + compressor.flush()
    if codec is Compression.LZ4:
        lz4_frame = _load(codec, InvalidArgument)
        # Kafka's Java client writes 64 KiB independent blocks and no content size; writing
        # the same keeps our batches readable by every Kafka client.
        return bytes(
            lz4_frame.compress(
                data,
                compression_level=level or 0,
                block_size=lz4_frame.BLOCKSIZE_MAX64KB,
                block_linked=False,
                store_size=False,
            )
        )
    if codec is Compression.ZSTD:
        zstandard = _load(codec, InvalidArgument)
        try:
            compressor = (
                zstandard.ZstdCompressor() if level is None else zstandard.ZstdCompressor(level=level)
            )
        except (ValueError, zstandard.ZstdError) as exc:
            raise InvalidArgument(f"zstd compression level {level} is not supported: {exc}") from None
        return bytes(compressor.compress(data))
    if codec is Compression.SNAPPY:
        if level is not None:
            raise InvalidArgument(f"snappy has no compression levels, got level {level}")
        return _snappy_compress(_load(codec, InvalidArgument), data)
    raise InvalidArgument(f"codec {codec!r} does not compress")


def decompress(codec: Compression, data: bytes | memoryview, max_size: int) -> bytes:
    """Decompress one complete stream of ``codec``; more than ``max_size`` output bytes is an error."""
    if max_size < 0:
        # zlib would read a max_length of 0 (max_size + 1) as "no limit".
        raise InvalidArgument(f"max_uncompressed_bytes must be >= 0, got {max_size}")
    if codec is Compression.GZIP:
        return _gunzip(data, max_size)
    if codec is Compression.LZ4:
        return _lz4_decompress(_load(codec, InvalidRecordBatch), data, max_size)
    if codec is Compression.ZSTD:
        return _zstd_decompress(_load(codec, InvalidRecordBatch), data, max_size)
    if codec is Compression.SNAPPY:
        return _snappy_decompress(_load(codec, InvalidRecordBatch), data, max_size)
    raise InvalidRecordBatch(f"codec {codec!r} does not decompress")


def _too_big(codec: str, max_size: int) -> InvalidRecordBatch:
    return InvalidRecordBatch(
        f"{codec}: records section decompresses to more than the limit of {max_size} bytes"
    )


def _trailing(codec: str, count: int) -> InvalidRecordBatch:
    return InvalidRecordBatch(f"{codec}: {count} trailing bytes after the end of the compressed stream")


def _truncated(codec: str) -> InvalidRecordBatch:
    return InvalidRecordBatch(f"{codec}: compressed stream is truncated (no end of stream)")


def _gunzip(data: bytes | memoryview, max_size: int) -> bytes:
    decompressor = zlib.decompressobj(_GZIP_WBITS)
    try:
        # One output byte beyond the limit tells "exactly at the limit" from "over it".
        out = decompressor.decompress(data, max_size + 1)
    except zlib.error as exc:
        raise InvalidRecordBatch(f"gzip: invalid compressed data: {exc}") from None
    if len(out) > max_size:
        raise _too_big("gzip", max_size)
    if not decompressor.eof:
        raise _truncated("gzip")
    if decompressor.unused_data:
        raise _trailing("gzip", len(decompressor.unused_data))
    return out


def _lz4_decompress(lz4_frame: ModuleType, data: bytes | memoryview, max_size: int) -> bytes:
    decompressor = lz4_frame.LZ4FrameDecompressor()
    bounded = len(data) * _LZ4_MAX_EXPANSION > max_size
    try:
        out = decompressor.decompress(data, max_length=max_size + 1 if bounded else -1)
    except RuntimeError as exc:  # lz4.frame reports every decoding failure as RuntimeError
        raise InvalidRecordBatch(f"lz4: invalid compressed data: {exc}") from None
    if len(out) > max_size:
        raise _too_big("lz4", max_size)
    if not decompressor.eof:
        raise _truncated("lz4")
    if decompressor.unused_data:
        raise _trailing("lz4", len(decompressor.unused_data))
    return bytes(out)


def _zstd_decompress(zstandard: ModuleType, data: bytes | memoryview, max_size: int) -> bytes:
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as exc:
        raise InvalidRecordBatch(f"zstd: invalid frame header: {exc}") from None
    if declared > max_size:
        raise InvalidRecordBatch(f"zstd: frame declares {declared} bytes, over the limit of {max_size} bytes")
    if declared > 0:
        # libzstd allocates exactly the declared size and fails rather than write past it;
        # allow_extra_data=False rejects anything after the frame.
        try:
            return bytes(zstandard.ZstdDecompressor().decompress(data, allow_extra_data=False))
        except zstandard.ZstdError as exc:
            raise InvalidRecordBatch(f"zstd: invalid compressed data: {exc}") from None
    return _zstd_stream_decompress(zstandard, memoryview(data), max_size)


def _zstd_stream_decompress(zstandard: ModuleType, view: memoryview, max_size: int) -> bytes:
    # No declared size (Kafka's Java client streams its frames): the stream decoder has no
    # output cap, so feed it slices small enough that one cannot expand past max_size.
    step = max(_ZSTD_MIN_SLICE, max_size // _ZSTD_MAX_EXPANSION)
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    chunks: list[bytes] = []
    total = 0
    consumed = 0
    try:
        while consumed < len(view) and not decompressor.eof:
            chunk = decompressor.decompress(view[consumed : consumed + step])
            consumed += step
            total += len(chunk)
            if total > max_size:
                raise _too_big("zstd", max_size)
            chunks.append(chunk)
    except zstandard.ZstdError as exc:
        raise InvalidRecordBatch(f"zstd: invalid compressed data: {exc}") from None
    if not decompressor.eof:
        raise _truncated("zstd")
    trailing = len(decompressor.unused_data) + max(0, len(view) - consumed)
    if trailing:
        raise _trailing("zstd", trailing)
    return b"".join(chunks)


def _snappy_compress(cramjam: ModuleType, data: bytes | bytearray) -> bytes:
    raw = cramjam.snappy.compress_raw
    parts = [_XERIAL_HEADER]
    view = memoryview(data)
    for start in range(0, len(view), _XERIAL_BLOCK_SIZE):
        block = bytes(raw(view[start : start + _XERIAL_BLOCK_SIZE]))
        parts.append(len(block).to_bytes(_XERIAL_BLOCK_LENGTH, "big"))
        parts.append(block)
    return b"".join(parts)


def _snappy_decompress(cramjam: ModuleType, data: bytes | memoryview, max_size: int) -> bytes:
    view = memoryview(data)
    if bytes(view[: len(_XERIAL_MAGIC)]) != _XERIAL_MAGIC:
        return _snappy_block(cramjam, view, max_size, "snappy")
    if len(view) < len(_XERIAL_HEADER):
        raise InvalidRecordBatch(
            f"snappy: xerial stream header truncated: {len(view)} bytes, the header is "
            f"{len(_XERIAL_HEADER)} bytes"
        )
    pos = len(_XERIAL_HEADER)
    chunks: list[bytes] = []
    total = 0
    while pos < len(view):
        if len(view) - pos < _XERIAL_BLOCK_LENGTH:
            raise _truncated("snappy")
        size = int.from_bytes(view[pos : pos + _XERIAL_BLOCK_LENGTH], "big")
        pos += _XERIAL_BLOCK_LENGTH
        if size > len(view) - pos:
            raise InvalidRecordBatch(
                f"snappy: xerial block at byte {pos - _XERIAL_BLOCK_LENGTH} claims {size} bytes, "
                f"{len(view) - pos} left"
            )
        chunk = _snappy_block(cramjam, view[pos : pos + size], max_size - total, "snappy")
        total += len(chunk)
        chunks.append(chunk)
        pos += size
    return b"".join(chunks)


def _snappy_block(cramjam: ModuleType, block: memoryview, max_size: int, codec: str) -> bytes:
    """One raw snappy block; its declared length is checked against the limit first."""
    try:
        declared = cramjam.snappy.decompress_raw_len(block)
    except cramjam.DecompressionError as exc:
        raise InvalidRecordBatch(f"{codec}: invalid compressed data: {exc}") from None
    if declared > max_size:
        raise _too_big(codec, max_size)
    try:
        return bytes(cramjam.snappy.decompress_raw(block))
    except cramjam.DecompressionError as exc:
        raise InvalidRecordBatch(f"{codec}: invalid compressed data: {exc}") from None
