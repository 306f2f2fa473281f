"""Compression of the records section: codec round trips, batches written by other clients'
settings, bounded decompression of bombs, truncated and trailing streams, snappy and
missing optional packages.

lz4 and zstd tests skip cleanly (``pytest.importorskip``) where those packages are absent.
"""

from __future__ import annotations

import gzip
import random
import struct
import sys
import tracemalloc
import zlib
from collections.abc import Callable

import pytest

from sentinel.errors import InvalidArgument, InvalidRecordBatch
from sentinel.records import (
    DEFAULT_MAX_UNCOMPRESSED_BYTES,
    Compression,
    Record,
    RecordBatch,
    available_codecs,
    build_batch,
)
from sentinel.records import batch_format as fmt
from sentinel.records.compression import compress, decompress

T0 = 1_700_000_000_000
COMPRESSED = [Compression.GZIP, Compression.LZ4, Compression.ZSTD]
_MODULES = {Compression.LZ4: "lz4.frame", Compression.ZSTD: "zstandard"}


def require(codec: Compression) -> None:
    """Skip the test when the codec's optional package is not installed."""
    if codec in _MODULES:
        pytest.importorskip(_MODULES[codec])


def payloads() -> list[bytes]:
    rng = random.Random(7)
    return [
        b"",
        b"x",
        b"hello world " * 50,
        rng.randbytes(10_000),  # incompressible: the stream is larger than its input
        bytes(300_000),  # several 64 KiB lz4 blocks
    ]


def with_records_section(template: bytes, attributes: int, section: bytes) -> bytes:
    """``template``'s header around a new (e.g. differently compressed) records section, CRC fixed."""
    from crc32c import crc32c

    head = bytearray(template[: fmt.RECORDS_OFFSET])
    struct.pack_into(">i", head, fmt.BATCH_LENGTH_OFFSET, fmt.MIN_BATCH_LENGTH + len(section))
    struct.pack_into(">h", head, fmt.ATTRIBUTES_OFFSET, attributes)
    data = head + section
    struct.pack_into(">I", data, fmt.CRC_OFFSET, crc32c(bytes(data[fmt.CRC_START :])))
    return bytes(data)


RECORDS = [(b"key-%d" % i, b"value-%d " % i * 20, [("h", b"%d" % i)], T0 + i) for i in range(50)]


# --------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("codec", COMPRESSED, ids=lambda c: c.name)
def test_compress_decompress_round_trip(codec: Compression) -> None:
    require(codec)
    for payload in payloads():
        packed = compress(codec, payload)
        assert decompress(codec, packed, len(payload)) == payload
        assert decompress(codec, memoryview(packed), len(payload)) == payload


@pytest.mark.parametrize("codec", COMPRESSED, ids=lambda c: c.name)
def test_compressed_batch_holds_the_uncompressed_section_compressed(codec: Compression) -> None:
    require(codec)
    plain = build_batch(RECORDS)
    packed = build_batch(RECORDS, compression=codec)
    assert len(packed) < len(plain)
    batch = RecordBatch.parse(packed)
    assert batch.compression is codec
    assert batch.attributes == codec.value
    assert batch.record_count == 50
    # Header fields match the uncompressed batch except batchLength, attributes and the CRC.
    assert (
        packed[fmt.ATTRIBUTES_OFFSET + 2 : fmt.RECORDS_OFFSET]
        == plain[fmt.ATTRIBUTES_OFFSET + 2 : fmt.RECORDS_OFFSET]
    )
    assert decompress(codec, packed[fmt.RECORDS_OFFSET :], 1 << 20) == plain[fmt.RECORDS_OFFSET :]
    assert batch.decode_records() == RecordBatch.parse(plain).decode_records()


def test_gzip_section_is_a_standard_gzip_member() -> None:
    packed = build_batch(RECORDS, compression=Compression.GZIP)
    plain = build_batch(RECORDS)
    assert packed[fmt.RECORDS_OFFSET : fmt.RECORDS_OFFSET + 2] == b"\x1f\x8b"  # gzip magic
    assert gzip.decompress(packed[fmt.RECORDS_OFFSET :]) == plain[fmt.RECORDS_OFFSET :]


@pytest.mark.parametrize("level", [-1, 0, 1, 9])
def test_gzip_levels(level: int) -> None:
    data = build_batch(RECORDS, compression=Compression.GZIP, compression_level=level)
    assert len(RecordBatch.parse(data).decode_records()) == 50


@pytest.mark.parametrize(
    ("codec", "level", "message"),
    [
        (Compression.GZIP, 10, r"^gzip compression level must be in \[-1, 9\], got 10$"),
        (Compression.GZIP, -2, r"^gzip compression level must be in \[-1, 9\], got -2$"),
        (Compression.GZIP, "9", r"^compression level must be an int or None, got '9'$"),
        (Compression.ZSTD, 23, r"^zstd compression level 23 is not supported"),
        (Compression.LZ4, 1.5, r"^compression level must be an int or None, got 1.5$"),
    ],
)
def test_bad_compression_levels_are_invalid_arguments(
    codec: Compression, level: object, message: str
) -> None:
    require(codec)
    with pytest.raises(InvalidArgument, match=message):
        build_batch(RECORDS, compression=codec, compression_level=level)  # type: ignore[arg-type]


def test_zstd_and_lz4_levels() -> None:
    for codec, levels in ((Compression.ZSTD, [-5, 1, 19]), (Compression.LZ4, [0, 3, 16])):
        require(codec)
        for level in levels:
            data = build_batch(RECORDS, compression=codec, compression_level=level)
            assert len(RecordBatch.parse(data).decode_records()) == 50


# --------------------------------------------------------------------------------------------
# Sections written by other clients' settings


def test_gzip_written_by_the_gzip_module_with_a_header_name() -> None:
    plain = build_batch(RECORDS)
    section = gzip.compress(plain[fmt.RECORDS_OFFSET :], compresslevel=5, mtime=12345)
    data = with_records_section(plain, fmt.CODEC_GZIP, section)
    assert RecordBatch.parse(data).decode_records() == RecordBatch.parse(plain).decode_records()


def test_zstd_streamed_frame_without_content_size() -> None:
    # Kafka's Java client streams its zstd frames: no content size in the frame header.
    zstandard = pytest.importorskip("zstandard")
    plain = build_batch(RECORDS)
    compressor = zstandard.ZstdCompressor(write_checksum=True).compressobj()
    section = compressor.compress(plain[fmt.RECORDS_OFFSET :]) + compressor.flush()
    assert zstandard.frame_content_size(section) == -1
    data = with_records_section(plain, fmt.CODEC_ZSTD, section)
    assert RecordBatch.parse(data).decode_records() == RecordBatch.parse(plain).decode_records()


def test_lz4_frame_with_content_size_linked_blocks_and_checksum() -> None:
    lz4_frame = pytest.importorskip("lz4.frame")
    plain = build_batch(RECORDS)
    section = lz4_frame.compress(
        plain[fmt.RECORDS_OFFSET :], store_size=True, block_linked=True, content_checksum=True
    )
    data = with_records_section(plain, fmt.CODEC_LZ4, section)
    assert RecordBatch.parse(data).decode_records() == RecordBatch.parse(plain).decode_records()


def test_lz4_frame_header_lying_about_a_huge_content_size_allocates_nothing() -> None:
    lz4_frame = pytest.importorskip("lz4.frame")
    compressor = lz4_frame.LZ4FrameCompressor(auto_flush=True)
    # Declares 8 GiB, holds 100 bytes; endmark written by hand since the compressor refuses.
    section = compressor.begin(source_size=8 << 30) + compressor.compress(bytes(100)) + bytes(4)
    with pytest.raises(InvalidRecordBatch, match=r"^lz4: invalid compressed data: .*frameSize_wrong"):
        decompress(Compression.LZ4, section, DEFAULT_MAX_UNCOMPRESSED_BYTES)


# --------------------------------------------------------------------------------------------
# Decompression bombs


def _bomb(codec: Compression, size: int) -> bytes:
    """``size`` zero bytes compressed; zstd both with (its default) and without content size."""
    return compress(codec, bytes(size))


def _zstd_streamed(size: int) -> bytes:
    zstandard = pytest.importorskip("zstandard")
    compressor = zstandard.ZstdCompressor().compressobj()
    return compressor.compress(bytes(size)) + compressor.flush()


BOMBS: list[tuple[str, Compression, Callable[[int], bytes]]] = [
    ("gzip", Compression.GZIP, lambda n: _bomb(Compression.GZIP, n)),
    ("lz4", Compression.LZ4, lambda n: _bomb(Compression.LZ4, n)),
    ("zstd", Compression.ZSTD, lambda n: _bomb(Compression.ZSTD, n)),
    ("zstd-streamed", Compression.ZSTD, _zstd_streamed),
]


@pytest.mark.parametrize(("name", "codec", "make"), BOMBS, ids=[b[0] for b in BOMBS])
@pytest.mark.parametrize("limit", [0, 1, 1000, 70_000, 300_000])
def test_decompression_stops_exactly_at_the_limit(
    name: str, codec: Compression, make: Callable[[int], bytes], limit: int
) -> None:
    require(codec)
    assert decompress(codec, make(limit), limit) == bytes(limit)
    over = make(limit + 1)
    if name == "zstd":
        expected = rf"^zstd: frame declares {limit + 1} bytes, over the limit of {limit} bytes$"
    else:
        expected = (
            rf"^{codec.name.lower()}: records section decompresses to more than the limit of {limit} bytes$"
        )
    with pytest.raises(InvalidRecordBatch, match=expected):
        decompress(codec, over, limit)


@pytest.mark.parametrize(("name", "codec", "make"), BOMBS, ids=[b[0] for b in BOMBS])
def test_a_bomb_never_allocates_much_more_than_the_limit(
    name: str, codec: Compression, make: Callable[[int], bytes]
) -> None:
    require(codec)
    bomb = make(32 << 20)  # 32 MiB of zeros: a few KiB to a few dozen KiB compressed
    limit = 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(
            InvalidRecordBatch, match=rf"over the limit of {limit} bytes|more than the limit of {limit}"
        ):
            decompress(codec, bomb, limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The documented bound: about twice max(limit, 2 MiB) (the zstd stream decoder's floor).
    assert peak < 5 << 20, f"{name}: peak {peak} bytes"


@pytest.mark.parametrize("codec", COMPRESSED, ids=lambda c: c.name)
def test_batch_records_are_bounded_by_max_uncompressed_bytes(codec: Compression) -> None:
    require(codec)
    data = build_batch([(None, bytes(100_000), [], T0)], compression=codec)
    batch = RecordBatch.parse(data)
    section_size = len(build_batch([(None, bytes(100_000), [], T0)])) - fmt.RECORDS_OFFSET
    assert len(batch.decode_records(max_uncompressed_bytes=section_size)) == 1
    with pytest.raises(InvalidRecordBatch, match=rf"(more than|over) the limit of {section_size - 1} bytes"):
        batch.records(max_uncompressed_bytes=section_size - 1)


def test_negative_limit_is_a_caller_error() -> None:
    with pytest.raises(InvalidArgument, match=r"^max_uncompressed_bytes must be >= 0, got -1$"):
        decompress(Compression.GZIP, compress(Compression.GZIP, b"x" * 1000), -1)


def test_compressed_record_count_is_checked_against_the_decompressed_size() -> None:
    plain = build_batch([(b"k", b"v", [], T0)])
    head = bytearray(plain[: fmt.RECORDS_OFFSET])
    struct.pack_into(">i", head, fmt.RECORD_COUNT_OFFSET, 1_000_000)
    struct.pack_into(">i", head, fmt.LAST_OFFSET_DELTA_OFFSET, 999_999)
    data = with_records_section(
        bytes(head), fmt.CODEC_GZIP, compress(Compression.GZIP, plain[fmt.RECORDS_OFFSET :])
    )
    batch = RecordBatch.parse(data)  # the count is only checkable after decompression
    with pytest.raises(
        InvalidRecordBatch,
        match=r"^bad recordCount: 1000000 records cannot fit in a 9-byte decompressed records section",
    ):
        batch.records()


# --------------------------------------------------------------------------------------------
# Truncated, trailing and garbage streams


TRUNCATED = {
    Compression.GZIP: r"^gzip: (compressed stream is truncated \(no end of stream\)|invalid compressed data)",
    Compression.LZ4: r"^lz4: (compressed stream is truncated \(no end of stream\)|invalid compressed data)",
    Compression.ZSTD: r"^zstd: (invalid frame header|invalid compressed data)",
}


@pytest.mark.parametrize("codec", COMPRESSED, ids=lambda c: c.name)
def test_every_truncation_of_a_stream_is_rejected(codec: Compression) -> None:
    require(codec)
    packed = compress(codec, b"hello world, " * 40)
    for cut in range(len(packed)):
        with pytest.raises(InvalidRecordBatch, match=TRUNCATED[codec]):
            decompress(codec, packed[:cut], 1 << 20)


@pytest.mark.parametrize("codec", COMPRESSED, ids=lambda c: c.name)
def test_bytes_after_the_stream_are_rejected_not_dropped(codec: Compression) -> None:
    require(codec)
    packed = compress(codec, b"hello world, " * 40)
    name = codec.name.lower()
    for extra in (b"\x00", b"\x00\x00\x00", packed):  # padding, or a second complete stream
        expected = (
            rf"^zstd: invalid compressed data: .*{len(extra)} bytes of unused data"
            if codec is Compression.ZSTD  # a frame with a declared size: libzstd's own check
            else rf"^{name}: {len(extra)} trailing bytes after the end of the compressed stream$"
        )
        with pytest.raises(InvalidRecordBatch, match=expected):
            decompress(codec, packed + extra, 1 << 20)


def test_zstd_streamed_frame_with_trailing_bytes_is_rejected() -> None:
    section = _zstd_streamed(5000)
    for extra in (b"\x00", bytes(100), section):
        with pytest.raises(InvalidRecordBatch, match=rf"^zstd: {len(extra)} trailing bytes after the end"):
            decompress(Compression.ZSTD, section + extra, 1 << 20)
    for cut in range(len(section)):
        with pytest.raises(
            InvalidRecordBatch, match=TRUNCATED[Compression.ZSTD] + "|^zstd: compressed stream is truncated"
        ):
            decompress(Compression.ZSTD, section[:cut], 1 << 20)


@pytest.mark.parametrize("codec", COMPRESSED, ids=lambda c: c.name)
def test_random_garbage_only_ever_raises_invalid_record_batch(codec: Compression) -> None:
    require(codec)
    rng = random.Random(int(codec))
    packed = compress(codec, b"".join(b"record %d;" % i for i in range(200)))
    for _ in range(300):
        if rng.random() < 0.5:
            data = rng.randbytes(rng.randrange(40))
        else:
            flipped = bytearray(packed)
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            data = bytes(flipped)
        try:
            out = decompress(codec, data, 1 << 16)
        except InvalidRecordBatch as exc:
            assert str(exc).startswith(f"{codec.name.lower()}: ")
        else:
            assert len(out) <= 1 << 16


# --------------------------------------------------------------------------------------------
# Snappy and missing packages


def test_snappy_round_trips_in_xerial_framing_and_reads_raw_blocks() -> None:
    cramjam = pytest.importorskip("cramjam")
    assert Compression.SNAPPY in available_codecs()
    records = [(b"k%d" % i, b"value-%d" % i * 20, [], T0 + i) for i in range(500)]
    data = build_batch(records, compression=Compression.SNAPPY)
    section = data[fmt.RECORDS_OFFSET :]
    assert section.startswith(b"\x82SNAPPY\x00")  # what Kafka's Java client writes
    batch = RecordBatch.parse(data)
    assert [r.value for r in batch.records()] == [r[1] for r in records]
    batch.validate_records()
    # librdkafka-style raw snappy (no framing) decodes too.
    plain = build_batch(records)
    raw = bytes(cramjam.snappy.compress_raw(plain[fmt.RECORDS_OFFSET :]))
    other = RecordBatch.parse(with_records_section(plain, fmt.CODEC_SNAPPY, raw))
    assert other.decode_records() == RecordBatch.parse(plain).decode_records()
    with pytest.raises(InvalidArgument, match=r"^snappy has no compression levels"):
        compress(Compression.SNAPPY, b"x", 3)


def test_snappy_bombs_and_garbage_are_rejected() -> None:
    cramjam = pytest.importorskip("cramjam")
    bomb = bytes(cramjam.snappy.compress_raw(bytes(10_000_000)))
    assert len(bomb) < 500_000
    with pytest.raises(InvalidRecordBatch, match=r"^snappy: records section decompresses to more than"):
        decompress(Compression.SNAPPY, bomb, 1_000_000)
    framed = compress(Compression.SNAPPY, bytes(3_000_000))
    with pytest.raises(InvalidRecordBatch, match=r"^snappy: records section decompresses to more than"):
        decompress(Compression.SNAPPY, framed, 1_000_000)
    with pytest.raises(InvalidRecordBatch, match=r"^snappy: xerial block at byte 16 claims"):
        decompress(Compression.SNAPPY, framed[:100], 10_000_000)
    with pytest.raises(InvalidRecordBatch, match=r"^snappy: invalid compressed data"):
        decompress(Compression.SNAPPY, b"\x05\xff\xff garbage", 100)
    data = with_records_section(build_batch([(b"k", b"v", [], T0)]), fmt.CODEC_SNAPPY, b"\x00" * 9)
    with pytest.raises(InvalidRecordBatch, match=r"^snappy: "):
        RecordBatch.parse(data).validate_records()


@pytest.mark.parametrize("codec_id", [5, 6, 7])
def test_unknown_codec_ids_are_rejected_by_parse(codec_id: int) -> None:
    data = with_records_section(
        build_batch([(b"k", b"v", [], T0)]), codec_id | fmt.TIMESTAMP_TYPE_FLAG, b"\x00" * 9
    )
    with pytest.raises(
        InvalidRecordBatch,
        match=rf"^unknown compression codec {codec_id} in attributes 0x000{8 + codec_id:x}$",
    ):
        RecordBatch.parse(data)


def test_available_codecs_lists_none_and_gzip_first() -> None:
    codecs = available_codecs()
    assert codecs[:2] == (Compression.NONE, Compression.GZIP)
    assert Compression.NONE.is_available()
    assert Compression.GZIP.is_available()


@pytest.mark.parametrize(
    ("codec", "module", "package"),
    [(Compression.LZ4, "lz4.frame", "lz4"), (Compression.ZSTD, "zstandard", "zstandard")],
)
def test_a_missing_optional_package_fails_with_what_to_install(
    monkeypatch: pytest.MonkeyPatch, codec: Compression, module: str, package: str
) -> None:
    require(codec)
    data = build_batch([(b"k", b"v", [], T0)], compression=codec)
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    assert not codec.is_available()
    assert codec not in available_codecs()
    message = rf"^{codec.name.lower()} compression needs the '{package}' package, which is not installed"
    with pytest.raises(InvalidArgument, match=message) as build_error:
        build_batch([(b"k", b"v", [], T0)], compression=codec)
    assert type(build_error.value) is InvalidArgument  # the caller's fault, not bad bytes
    batch = RecordBatch.parse(data)  # the header needs no codec
    with pytest.raises(InvalidRecordBatch, match=message):
        batch.records()


def test_zlib_is_the_gzip_container() -> None:
    # zlib's raw-deflate and zlib-wrapped streams are not gzip: Kafka readers would refuse them.
    raw = zlib.compress(b"x" * 100)
    with pytest.raises(InvalidRecordBatch, match=r"^gzip: invalid compressed data: Error -3"):
        decompress(Compression.GZIP, raw, 1000)


def test_records_round_trip_through_every_available_codec() -> None:
    expected = [Record(7 + i, ts, k, v, tuple(h)) for i, (k, v, h, ts) in enumerate(RECORDS)]
    for codec in available_codecs():
        assert (
            RecordBatch.parse(build_batch(RECORDS, base_offset=7, compression=codec)).decode_records()
            == expected
        )
