"""The two builds of the records-section decoder: which one runs, and that they agree."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

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


def test_a_build_is_used_only_for_the_source_it_was_built_from(tmp_path: Path) -> None:
    # decode.py edited without a rebuild: the source runs rather than a stale build.
    source, stamp = tmp_path / "decode.py", tmp_path / "decode.source-sha256"
    source.write_bytes(b"def decode(): ...\n")
    stamp.write_text(hashlib.sha256(source.read_bytes()).hexdigest() + "\n")
    assert decoder.is_fresh(str(stamp), str(source))
    source.write_bytes(b"def decode(): return 1\n")
    assert not decoder.is_fresh(str(stamp), str(source))
    assert not decoder.is_fresh(str(tmp_path / "no-stamp"), str(source))  # not built by setup.py


def test_the_installed_build_is_stamped_with_its_source_when_compiled() -> None:
    compiled = decoder.compiled()
    if compiled is None:
        pytest.skip("no compiled records decoder installed")
    stamp = Path(compiled.__file__ or "").parent / "decode.source-sha256"
    source = Path(decoder.pure().__file__ or "")
    assert stamp.read_text().strip() == hashlib.sha256(source.read_bytes()).hexdigest()
