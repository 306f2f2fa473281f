"""The builds of the storage cores: which one the engine uses, and that they never mix."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import ModuleType

import pytest

from sentinel.records.decoder import is_compiled
from sentinel.storage import builds
from sentinel.storage.memtable import Memtable
from sentinel.storage.sstable import SSTableWriter

CORES = ("skiplist", "wal_format", "sstable_blocks", "bloom")


def test_the_source_build_is_plain_python() -> None:
    source = builds.builds()["source"]
    assert sorted(source) == sorted(CORES)
    for name, module in source.items():
        assert (module.__file__ or "").endswith(f"{name}.py")


def test_the_compiled_build_runs_when_installed_and_is_stamped_with_its_source() -> None:
    compiled = builds.builds().get("compiled")
    if compiled is None:
        assert builds.active == "source"
        pytest.skip("no compiled storage cores installed")
    assert builds.active == "compiled"
    assert builds.skiplist is compiled["skiplist"] and builds.wal_format is compiled["wal_format"]
    for name, module in compiled.items():
        assert is_compiled(module)
        source = Path(builds.builds()["source"][name].__file__ or "")
        stamp = Path(module.__file__ or "").parent / f"{name}.source-sha256"
        assert stamp.read_text().strip() == hashlib.sha256(source.read_bytes()).hexdigest()


@pytest.mark.usefixtures("storage_build")
def test_engine_objects_are_made_with_the_build_in_use(storage_build: str, tmp_path: Path) -> None:
    assert builds.active == storage_build
    assert all(
        is_compiled(m) == (storage_build == "compiled") for m in builds.builds()[storage_build].values()
    )
    memtable = Memtable(0)
    assert type(memtable._list) is builds.skiplist.SkipList
    with SSTableWriter(tmp_path / "t.sst") as writer:
        assert type(writer._builder) is builds.sstable_blocks.TableBuilder
        writer.add(b"k", 1, b"v")
        writer.finish()


def _fake_compiled(directory: Path, name: str) -> ModuleType:
    module = ModuleType(name)
    module.__file__ = str(directory / f"{name}.cpython-311-x86_64-linux-gnu.so")
    return module


def _stamp(directory: Path, name: str) -> None:
    digest = hashlib.sha256((directory / f"{name}.py").read_bytes()).hexdigest()
    (directory / f"{name}.source-sha256").write_text(digest + "\n")


def test_the_compiled_build_is_used_only_when_every_core_is_fresh(tmp_path: Path) -> None:
    for name in ("one", "two"):
        (tmp_path / f"{name}.py").write_text(f"NAME = {name!r}\n")
        _stamp(tmp_path, name)
    imported = {name: _fake_compiled(tmp_path, name) for name in ("one", "two")}
    found = builds.choose_builds(imported, str(tmp_path), "fake")
    assert found["compiled"] == imported
    assert found["source"]["one"].NAME == "one" and found["source"]["two"].__name__ == "fake._two_source"
    # One source edited without a rebuild: neither compiled module is used (no mixing).
    (tmp_path / "two.py").write_text("NAME = 'two, edited'\n")
    found = builds.choose_builds(imported, str(tmp_path), "fake")
    assert "compiled" not in found
    assert found["source"]["two"].NAME == "two, edited"
    # Never stamped (not built by setup.py): the source too.
    (tmp_path / "two.source-sha256").unlink()
    assert "compiled" not in builds.choose_builds(imported, str(tmp_path), "fake")


def test_using_an_absent_build_is_refused() -> None:
    if "compiled" in builds.builds():
        pytest.skip("the compiled build is installed")
    with pytest.raises(LookupError, match="no compiled build"), builds.using("compiled"):
        pass
