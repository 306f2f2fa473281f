"""The two builds of the records-section decoder: which one runs, and that they agree."""

from __future__ import annotations

import os
from pathlib import Path

from sentinel.records import Record, RecordBatch, build_batch, decoder

T0 = 1_700_000_000_000


def test_the_active_build_is_the_one_every_batch_decodes_with(record_decoder: str) -> None:
    # The autouse fixture switched ``active`` to this build: the source module, or the
    # extension module mypyc built from it.
    assert decoder.is_compiled(decoder.active) == (record_decoder == "compiled")
    batch = RecordBatch(build_batch([(b"k", b"v", (("h", b"x"),), T0)], base_offset=7))
    assert batch.decode_records() == [Record(7, T0, b"k", b"v", (("h", b"x"),))]


def test_the_source_build_is_plain_python() -> None:
    assert not decoder.is_compiled(decoder.pure())
    assert (decoder.pure().__file__ or "").endswith("decode.py")


def test_a_build_older_than_its_source_is_stale(tmp_path: Path) -> None:
    # decode.py edited without a rebuild: the source runs rather than a stale build.
    source, build = tmp_path / "decode.py", tmp_path / "decode.so"
    source.write_text("")
    build.write_bytes(b"")
    os.utime(source, (1_000, 1_000))
    os.utime(build, (2_000, 2_000))
    assert decoder.is_fresh(str(build), str(source))
    os.utime(source, (3_000, 3_000))
    assert not decoder.is_fresh(str(build), str(source))
    assert not decoder.is_fresh(str(tmp_path / "missing.so"), str(source))
    assert decoder.is_fresh(str(build), str(tmp_path / "no-source.py"))  # an installed wheel
