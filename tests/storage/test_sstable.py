"""SSTable writer and reader: layout, round trips, bounded reads, and every kind of damage."""

from __future__ import annotations

import bisect
import random
import zlib
from pathlib import Path

import attrs
import pytest

from sentinel.errors import CorruptionError
from sentinel.storage import builds
from sentinel.storage.sstable import DamagedBlock, SSTableInfo, SSTableReader, SSTableWriter
from sentinel.storage.sstable_format import (
    BLOCK_HEADER,
    BLOCK_HEADER_SIZE,
    BLOCK_SIZE,
    FOOTER_TRAILER,
    FOOTER_TRAILER_SIZE,
    MAGIC,
    MAX_SEQ,
    MIN_FILE_SIZE,
    Footer,
    decode_footer_body,
    encode_footer,
)
from sentinel.varint import decode_uvarint

Entry = tuple[bytes, int, bytes | None]

# Every test runs once per build of the block codec and bloom filter (tests/storage/conftest.py).
pytestmark = pytest.mark.usefixtures("storage_build")


def make_entries(seed: int, count: int, *, tombstones: float = 0.1, max_value: int = 300) -> list[Entry]:
    rng = random.Random(seed)
    keys = sorted({rng.randbytes(rng.randrange(1, 24)) for _ in range(count)})
    entries: list[Entry] = []
    for key in keys:
        seq = rng.choice([0, 1, 127, 128, rng.randrange(1 << 20), rng.randrange(1 << 63)])
        value = None if rng.random() < tombstones else rng.randbytes(rng.randrange(0, max_value))
        entries.append((key, seq, value))
    return entries


def write_table(path: Path, entries: list[Entry], **options: int) -> SSTableInfo:
    with SSTableWriter(path, **options) as writer:
        for key, seq, value in entries:
            writer.add(key, seq, value)
        return writer.finish()


@attrs.frozen
class Block:
    offset: int
    size: int
    first_key: bytes
    last_key: bytes


@attrs.frozen
class Layout:
    footer: Footer
    footer_start: int
    blocks: list[Block]


def read_layout(path: Path) -> Layout:
    """Decode a table's structure straight from the documented format, not via the reader."""
    data = path.read_bytes()
    footer_len, _crc, magic = FOOTER_TRAILER.unpack_from(data, len(data) - FOOTER_TRAILER_SIZE)
    assert magic == MAGIC
    footer_start = len(data) - FOOTER_TRAILER_SIZE - footer_len
    footer = decode_footer_body(data[footer_start : footer_start + footer_len])
    index = data[footer.index_offset + BLOCK_HEADER_SIZE : footer.index_offset + footer.index_size]
    blocks = []
    pos = 0
    while pos < len(index):
        fields: list[bytes | int] = []
        for _ in range(2):
            n, pos = decode_uvarint(index, pos)
            fields.append(index[pos : pos + n])
            pos += n
        offset, pos = decode_uvarint(index, pos)
        size, pos = decode_uvarint(index, pos)
        blocks.append(Block(offset, size, fields[0], fields[1]))  # type: ignore[arg-type]
    return Layout(footer, footer_start, blocks)


def flip(path: Path, pos: int, mask: int = 0x01) -> bytes:
    """Flip bits of one byte in place; returns the original file contents."""
    data = path.read_bytes()
    damaged = bytearray(data)
    damaged[pos] ^= mask
    path.write_bytes(bytes(damaged))
    return data


def in_range(entries: list[Entry], start: bytes | None, end: bytes | None) -> list[Entry]:
    return [e for e in entries if (start is None or e[0] >= start) and (end is None or e[0] < end)]


@pytest.fixture(scope="module", params=builds.BUILDS)
def big_table(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[Entry], SSTableInfo]:
    """A table written by each build (and read, in the tests, by each: the two agree)."""
    if request.param not in builds.builds():
        pytest.skip("no compiled storage cores installed (pip install -e . with a C compiler)")
    path = tmp_path_factory.mktemp("sst") / "sst-000001.sst"
    entries = make_entries(1, 6000)
    with builds.using(request.param):
        return path, entries, write_table(path, entries)


# -- layout and round trip ---------------------------------------------------------------


def test_round_trip_many_keys(big_table: tuple[Path, list[Entry], SSTableInfo]) -> None:
    path, entries, info = big_table
    assert info == SSTableInfo(
        path=path,
        file_size=path.stat().st_size,
        count=len(entries),
        min_key=entries[0][0],
        max_key=entries[-1][0],
        max_seq=max(e[1] for e in entries),
    )
    with SSTableReader.open(path) as reader:
        assert (reader.count, reader.min_key, reader.max_key, reader.max_seq) == (
            info.count,
            info.min_key,
            info.max_key,
            info.max_seq,
        )
        assert reader.file_size == info.file_size
        assert reader.num_blocks > 100
        assert list(reader) == entries
        for key, seq, value in entries:
            assert reader.get(key) == (seq, value)
        assert any(value is None for _, _, value in entries)  # tombstones were in the mix


def test_blocks_follow_the_documented_layout(big_table: tuple[Path, list[Entry], SSTableInfo]) -> None:
    path, entries, _ = big_table
    layout = read_layout(path)
    data = path.read_bytes()
    footer = layout.footer
    assert (footer.count, footer.min_key, footer.max_key) == (len(entries), entries[0][0], entries[-1][0])
    assert layout.blocks[0].offset == 0
    keys = [e[0] for e in entries]
    for i, block in enumerate(layout.blocks):
        crc_len = BLOCK_HEADER.unpack_from(data, block.offset)
        payload_len = crc_len[1]
        assert payload_len == block.size - BLOCK_HEADER_SIZE
        # A block closes once its payload reaches the target: only the last one is short, and
        # none overshoots by more than its last entry (< 8 + 24 + 300 bytes here).
        if i < len(layout.blocks) - 1:
            assert BLOCK_SIZE <= payload_len < BLOCK_SIZE + 400
            assert layout.blocks[i + 1].offset == block.offset + block.size
        first = bisect.bisect_left(keys, block.first_key)
        assert keys[first] == block.first_key
    assert layout.blocks[-1].offset + layout.blocks[-1].size == footer.bloom_offset
    assert footer.bloom_offset + footer.bloom_size == footer.index_offset
    assert footer.index_offset + footer.index_size == layout.footer_start
    assert data.endswith(b"SNTLSST1")


def test_small_block_size_and_edge_values(tmp_path: Path) -> None:
    entries: list[Entry] = [
        (b"", 0, b""),  # the empty key, seq 0, an empty value
        (b"\x00", 1, None),
        (b"big", MAX_SEQ, b"v" * (3 * BLOCK_SIZE + 17)),  # a ten-byte seq; a value of several blocks
        (b"big2", 5, b"w" * 100_000),
        (b"k" * 300, 7, b"x" * 130),  # multi-byte key and value lengths
        (b"\xff" * 5, 8, None),
    ]
    path = tmp_path / "sst-000002.sst"
    info = write_table(path, entries, block_size=64)
    with SSTableReader.open(path) as reader:
        assert list(reader.scan()) == entries
        for key, seq, value in entries:
            assert reader.get(key) == (seq, value)
        assert reader.get(b"bi") is None
        assert info.max_seq == MAX_SEQ
    layout = read_layout(path)
    # The 100 KB value sits alone in its block.
    assert [b.first_key for b in layout.blocks if b.first_key == b.last_key and b.size > 100_000] == [b"big2"]


def test_single_entry_table(tmp_path: Path) -> None:
    path = tmp_path / "sst-000003.sst"
    write_table(path, [(b"only", 3, None)])
    with SSTableReader.open(path) as reader:
        assert reader.num_blocks == 1
        assert list(reader) == [(b"only", 3, None)]
        assert reader.get(b"only") == (3, None)
        assert reader.get(b"onl") is None
        assert reader.get(b"only!") is None
    assert path.stat().st_size >= MIN_FILE_SIZE


def test_get_of_absent_keys(big_table: tuple[Path, list[Entry], SSTableInfo]) -> None:
    path, entries, _ = big_table
    present = {e[0] for e in entries}
    layout = read_layout(path)
    # Below the minimum, above the maximum, inside blocks, and in the gap between two blocks.
    probes = [b"", entries[0][0][:-1], entries[-1][0] + b"\x00", b"\xff" * 30]
    probes += [block.last_key + b"\x00" for block in layout.blocks]
    rng = random.Random(4)
    probes += [rng.randbytes(rng.randrange(1, 24)) for _ in range(3000)]
    with SSTableReader.open(path) as reader:
        for probe in probes:
            if probe not in present:
                assert reader.get(probe) is None, probe


def test_scan_with_bounds(big_table: tuple[Path, list[Entry], SSTableInfo]) -> None:
    path, entries, _ = big_table
    keys = [e[0] for e in entries]
    layout = read_layout(path)
    rng = random.Random(8)
    bounds: list[bytes | None] = [None, b"", b"\xff" * 30, keys[0], keys[-1], keys[100], keys[100] + b"\x00"]
    bounds += [layout.blocks[3].first_key, layout.blocks[3].last_key, layout.blocks[4].first_key]
    bounds += [rng.randbytes(rng.randrange(1, 4)) for _ in range(12)]
    with SSTableReader.open(path) as reader:
        for start in bounds:
            for end in bounds:
                assert list(reader.scan(start, end)) == in_range(entries, start, end), (start, end)


def test_interleaved_scans_and_gets(big_table: tuple[Path, list[Entry], SSTableInfo]) -> None:
    path, entries, _ = big_table
    with SSTableReader.open(path) as reader:
        a, b = reader.scan(), reader.scan(entries[3000][0])
        got_a, got_b = [], []
        for _ in range(2000):
            got_a.append(next(a))
            got_b.append(next(b))
            assert reader.get(entries[5000][0]) == entries[5000][1:]
        assert got_a == entries[:2000]
        assert got_b == entries[3000:5000]


def test_may_contain_false_positive_rate(big_table: tuple[Path, list[Entry], SSTableInfo]) -> None:
    path, entries, _ = big_table
    present = {e[0] for e in entries}
    rng = random.Random(12)
    with SSTableReader.open(path) as reader:
        assert all(reader.may_contain(key) for key in present)
        assert not reader.may_contain(b"")  # outside [min_key, max_key]: no bloom probe needed
        assert not reader.may_contain(b"\xff" * 30)
        # Absent keys inside the key range, so only the bloom filter can reject them.
        probes = [k for k in (rng.randbytes(20) for _ in range(30_000)) if k not in present]
        probes = [k for k in probes if entries[0][0] < k < entries[-1][0]]
        rate = sum(map(reader.may_contain, probes)) / len(probes)
    assert 0.002 < rate < 0.025, rate  # configured: 10 bits per key, ~0.8% in theory


def test_bloom_bits_per_key_is_honoured(tmp_path: Path) -> None:
    entries = make_entries(2, 3000)
    rates = []
    for bits in (4, 20):
        path = tmp_path / f"sst-{bits:06d}.sst"
        write_table(path, entries, bloom_bits_per_key=bits)
        rng = random.Random(1)
        with SSTableReader.open(path) as reader:
            probes = [rng.randbytes(20) for _ in range(20_000)]
            rates.append(sum(map(reader.may_contain, probes)) / len(probes))
    assert rates[0] > 0.05 > 0.002 > rates[1]


# -- writer contract ---------------------------------------------------------------------


def test_writer_rejects_bad_input_and_stays_usable(tmp_path: Path) -> None:
    path = tmp_path / "sst-000004.sst"
    with SSTableWriter(path) as writer:
        writer.add(b"b", 1, b"x")
        with pytest.raises(ValueError, match=r"keys must be strictly ascending: b'b' after b'b'"):
            writer.add(b"b", 2, b"y")
        with pytest.raises(ValueError, match=r"keys must be strictly ascending: b'a' after b'b'"):
            writer.add(b"a", 2, b"y")
        with pytest.raises(ValueError, match="sequence number -1 is outside the u64 range"):
            writer.add(b"c", -1, b"y")
        # Wider than the reader decodes: the table would be unreadable.
        with pytest.raises(ValueError, match=f"sequence number {1 << 70} is outside the u64 range"):
            writer.add(b"c", 1 << 70, b"y")
        with pytest.raises(TypeError):
            writer.add(b"c", 2, 5)  # type: ignore[arg-type]
        writer.add(b"c", 2, None)
        assert writer.count == 2
        writer.finish()
    with SSTableReader.open(path) as reader:
        assert list(reader) == [(b"b", 1, b"x"), (b"c", 2, None)]
    with pytest.raises(RuntimeError, match="is finished"):
        writer.add(b"d", 3, None)
    with pytest.raises(FileExistsError):
        SSTableWriter(path)  # numbers are never reused: never overwrite a table


def test_add_from_adds_an_iterator_until_the_data_limit_and_leaves_the_rest(tmp_path: Path) -> None:
    entries = make_entries(11, 3000)
    entries_bytes = [len(k) + (0 if v is None else len(v)) for k, _, v in entries]
    rest = iter(entries)
    with SSTableWriter(tmp_path / "sst-000011.sst", block_size=512) as writer:
        assert writer.add_from(rest, 20_000) is False
        count = writer.count
        # Stopped at the entry that reached the limit, not one before or after.
        assert sum(entries_bytes[: count - 1]) < 20_000 <= sum(entries_bytes[:count]) == writer.data_bytes
        assert writer.add_from(rest, 20_000) is False  # already at the limit: adds nothing
        assert writer.count == count
        writer.finish()
    assert list(rest) == entries[count:]
    with SSTableReader.open(tmp_path / "sst-000011.sst") as reader:
        assert list(reader) == entries[:count]
    # Without a limit: everything, across many write buffers (the same table as add by add).
    many = make_entries(12, 20_000, max_value=100)
    with SSTableWriter(tmp_path / "sst-000012.sst") as writer:
        assert writer.add_from(iter(many)) is True
        writer.finish()
    assert (tmp_path / "sst-000012.sst").read_bytes() == _bytes_of(tmp_path / "sst-000013.sst", many)


def _bytes_of(path: Path, entries: list[Entry]) -> bytes:
    write_table(path, entries)
    return path.read_bytes()


def test_add_from_refuses_a_bad_entry_and_keeps_what_came_before(tmp_path: Path) -> None:
    path = tmp_path / "sst-000014.sst"
    with SSTableWriter(path) as writer:
        entries = iter([(b"a", 1, b"x"), (b"c", 2, None), (b"b", 3, b"y"), (b"d", 4, b"z")])
        with pytest.raises(ValueError, match=r"keys must be strictly ascending: b'b' after b'c'"):
            writer.add_from(entries)
        assert writer.count == 2
        assert writer.add_from(entries) is True  # the rest: (b"d", ...)
        writer.finish()
    with SSTableReader.open(path) as reader:
        assert list(reader) == [(b"a", 1, b"x"), (b"c", 2, None), (b"d", 4, b"z")]


def test_writer_refuses_an_empty_table(tmp_path: Path) -> None:
    path = tmp_path / "sst-000005.sst"
    writer = SSTableWriter(path)
    with pytest.raises(ValueError, match="refusing to finish an empty SSTable"):
        writer.finish()
    writer.abandon()
    assert not path.exists()
    with pytest.raises(ValueError, match="block_size must be >= 1, got 0"):
        SSTableWriter(tmp_path / "x.sst", block_size=0)
    with pytest.raises(ValueError, match="bloom_bits_per_key must be >= 1, got 0"):
        SSTableWriter(tmp_path / "y.sst", bloom_bits_per_key=0)


def test_writer_context_manager_abandons(tmp_path: Path) -> None:
    path = tmp_path / "sst-000006.sst"
    with pytest.raises(KeyError), SSTableWriter(path) as writer:
        writer.add(b"a", 1, b"x")
        raise KeyError("boom")
    assert not path.exists()
    with pytest.raises(RuntimeError, match="left without finish"), SSTableWriter(path) as writer:
        writer.add(b"a", 1, b"x")
    assert not path.exists()


def test_closed_reader_refuses_reads(big_table: tuple[Path, list[Entry], SSTableInfo]) -> None:
    path, entries, _ = big_table
    reader = SSTableReader.open(path)
    assert reader.get(entries[10][0]) == entries[10][1:]  # now cached
    reader.close()
    reader.close()  # idempotent
    with pytest.raises(ValueError, match="read from closed SSTableReader"):
        reader.get(entries[10][0])
    with pytest.raises(ValueError, match="read from closed SSTableReader"):
        list(reader.scan())


# -- damage ------------------------------------------------------------------------------


@pytest.fixture
def damaged_table(tmp_path: Path) -> tuple[Path, list[Entry], Layout]:
    path = tmp_path / "sst-000007.sst"
    entries = make_entries(5, 400, max_value=100)
    write_table(path, entries, block_size=512)
    layout = read_layout(path)
    assert len(layout.blocks) >= 8
    return path, entries, layout


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        SSTableReader.open(tmp_path / "sst-000099.sst")


def test_flipped_byte_in_a_data_block_fails_only_reads_of_that_block(
    damaged_table: tuple[Path, list[Entry], Layout],
) -> None:
    path, entries, layout = damaged_table
    bad = 3
    block = layout.blocks[bad]
    original = path.read_bytes()
    for pos, detail in [
        (block.offset, f"data block {bad} checksum mismatch"),  # crc field
        (block.offset + 4, f"data block {bad} length"),  # length field
        (block.offset + BLOCK_HEADER_SIZE + 5, f"data block {bad} checksum mismatch"),  # payload
        (block.offset + block.size - 1, f"data block {bad} checksum mismatch"),
    ]:
        path.write_bytes(original)
        flip(path, pos)
        with SSTableReader.open(path) as reader:  # data blocks are verified when read
            in_bad = [e for e in entries if block.first_key <= e[0] <= block.last_key]
            with pytest.raises(CorruptionError) as info:
                reader.get(in_bad[0][0])
            assert info.value.source == str(path)
            assert info.value.position == block.offset
            assert str(info.value).startswith(f"corruption in {path} at byte {block.offset}: {detail}")
            with pytest.raises(CorruptionError, match=f"data block {bad} "):
                list(reader.scan())
            # A failed read caches nothing: asking again fails again.
            with pytest.raises(CorruptionError):
                reader.get(in_bad[-1][0])
            # Every other block still reads, by point lookup and by bounded scan.
            for key, seq, value in entries:
                if not block.first_key <= key <= block.last_key:
                    assert reader.get(key) == (seq, value)
            before = layout.blocks[bad - 1].last_key + b"\x00"
            after = layout.blocks[bad + 1].first_key
            assert list(reader.scan(None, before)) == in_range(entries, None, before)
            assert list(reader.scan(after)) == in_range(entries, after, None)


def test_a_scan_with_on_damage_reports_a_damaged_block_skips_it_and_goes_on(
    damaged_table: tuple[Path, list[Entry], Layout],
) -> None:
    path, entries, layout = damaged_table
    bad = 3
    block = layout.blocks[bad]
    flip(path, block.offset + BLOCK_HEADER_SIZE + 5)
    outside = [e for e in entries if not block.first_key <= e[0] <= block.last_key]
    with SSTableReader.open(path) as reader:
        reported: list[DamagedBlock] = []
        seen = []
        for entry in reader.scan(on_damage=reported.append):
            # Reported before any entry at or after the block's first key is yielded.
            assert bool(reported) == (entry[0] > block.first_key)
            seen.append(entry)
        assert seen == outside
        [damage] = reported
        assert (damage.first_key, damage.last_key) == (block.first_key, block.last_key)
        assert (damage.error.source, damage.error.position) == (str(path), block.offset)
        # A scan that starts inside the damaged block reports it at once.
        reported.clear()
        inside = block.first_key + b"\x00"
        assert list(reader.scan(inside, on_damage=reported.append)) == in_range(outside, inside, None)
        assert [(d.first_key, d.error.position) for d in reported] == [(block.first_key, block.offset)]
        # A bounded scan that ends before the block never reads it.
        reported.clear()
        assert list(reader.scan(None, block.first_key, on_damage=reported.append)) == in_range(
            entries, None, block.first_key
        )
        assert reported == []
        # Without on_damage the scan raises, as before.
        with pytest.raises(CorruptionError, match=f"data block {bad} checksum mismatch"):
            list(reader.scan())


def test_checksum_valid_but_malformed_block(damaged_table: tuple[Path, list[Entry], Layout]) -> None:
    path, _, layout = damaged_table
    block = layout.blocks[1]
    data = bytearray(path.read_bytes())
    payload_at = block.offset + BLOCK_HEADER_SIZE
    # The first entry's key starts after its one-byte length: change its first byte and
    # recompute the CRC, as a software bug writing wrong bytes would.
    data[payload_at + 1] ^= 0x80
    payload = bytes(data[payload_at : block.offset + block.size])
    BLOCK_HEADER.pack_into(data, block.offset, zlib.crc32(payload), len(payload))
    path.write_bytes(bytes(data))
    with SSTableReader.open(path) as reader:
        with pytest.raises(CorruptionError, match=r"at byte \d+: data block 1 malformed: "):
            reader.get(layout.blocks[1].last_key)
        assert reader.get(layout.blocks[2].first_key) is not None


@pytest.mark.parametrize("region", ["bloom", "index", "footer", "trailer"])
def test_flipped_byte_in_table_metadata_fails_open(
    damaged_table: tuple[Path, list[Entry], Layout], region: str
) -> None:
    path, _, layout = damaged_table
    footer = layout.footer
    size = path.stat().st_size
    start, end, detail = {
        "bloom": (footer.bloom_offset, footer.index_offset, "bloom block"),
        "index": (footer.index_offset, layout.footer_start, "index block"),
        "footer": (layout.footer_start, size - FOOTER_TRAILER_SIZE, "footer checksum mismatch"),
        "trailer": (size - FOOTER_TRAILER_SIZE, size, ""),
    }[region]
    original = path.read_bytes()
    for pos in range(start, end):
        path.write_bytes(original)
        flip(path, pos, 0x20)
        with pytest.raises(CorruptionError) as info:
            SSTableReader.open(path).close()
        assert info.value.source == str(path)
        assert detail in info.value.detail, (pos, info.value.detail)
        if region in ("bloom", "index"):
            assert info.value.position == start
    # The trailer's three fields each have their own diagnosis.
    for pos, detail in [
        (size - 16, "implausible footer length"),
        (size - 12, "footer checksum mismatch"),
        (size - 8, "bad magic"),
    ]:
        path.write_bytes(original)
        flip(path, pos, 0x40)
        with pytest.raises(CorruptionError, match=detail):
            SSTableReader.open(path)


def test_every_single_byte_flip_is_detected(tmp_path: Path) -> None:
    """No flip anywhere in the file yields wrong data: open or a full read must refuse it."""
    path = tmp_path / "sst-000008.sst"
    entries = make_entries(9, 30, max_value=20)
    write_table(path, entries, block_size=128)
    original = path.read_bytes()
    for pos in range(len(original)):
        path.write_bytes(original)
        flip(path, pos, 0x04)
        with pytest.raises(CorruptionError):
            with SSTableReader.open(path) as reader:
                list(reader.scan())


def test_truncated_file(damaged_table: tuple[Path, list[Entry], Layout]) -> None:
    path, _, layout = damaged_table
    original = path.read_bytes()
    for length in [0, 1, MIN_FILE_SIZE - 1]:
        path.write_bytes(original[:length])
        with pytest.raises(
            CorruptionError, match=rf"at byte {length}: truncated file \(size {length} < minimum"
        ):
            SSTableReader.open(path)
    cuts = [MIN_FILE_SIZE, layout.blocks[2].offset, layout.footer.bloom_offset + 3, layout.footer_start]
    cuts += [len(original) - 17, len(original) - 8, len(original) - 1]
    for length in cuts:
        path.write_bytes(original[:length])
        with pytest.raises(CorruptionError, match=r"bad magic .*\(not an SSTable, or truncated\)"):
            SSTableReader.open(path)


def test_wrong_magic(tmp_path: Path) -> None:
    path = tmp_path / "sst-000010.sst"
    write_table(path, [(b"a", 1, b"x")])
    data = path.read_bytes()
    path.write_bytes(data[:-8] + b"SNTLSST2")
    with pytest.raises(CorruptionError) as info:
        SSTableReader.open(path)
    assert info.value.position == len(data) - 8
    assert "bad magic 0x325453534c544e53" in info.value.detail
    path.write_bytes(b"\x00" * 4096)  # not a table at all
    with pytest.raises(CorruptionError, match="bad magic 0x0000000000000000"):
        SSTableReader.open(path)


def test_consistent_but_wrong_footer_is_rejected(tmp_path: Path) -> None:
    """A footer with a valid CRC whose offsets do not describe the file (a writer bug)."""
    path = tmp_path / "sst-000011.sst"
    write_table(path, [(b"a", 1, b"x"), (b"b", 2, None)])
    layout = read_layout(path)
    data = path.read_bytes()
    body = data[: layout.footer_start]
    cases = [
        (attrs.evolve(layout.footer, count=0), "entry count is 0"),
        (
            attrs.evolve(layout.footer, index_offset=layout.footer.index_offset - 1),
            "does not end at the footer",
        ),
        (attrs.evolve(layout.footer, min_key=b"0"), "key range disagrees with the footer"),
        (attrs.evolve(layout.footer, min_key=b"z", max_key=b"y"), "min_key > max_key"),
    ]
    for footer, detail in cases:
        path.write_bytes(body + encode_footer(footer))
        with pytest.raises(CorruptionError, match=detail):
            SSTableReader.open(path)
