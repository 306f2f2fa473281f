"""Which build of the storage engine's compiled cores runs: mypyc's, or the Python source.

``setup.py`` compiles the pure, self-contained cores of the write path with mypyc, as it
does the records decoder (see :mod:`sentinel.records.decoder`): the skip list behind every
memtable (``skiplist.py``), the WAL record codec (``wal_format.py``), the SSTable data-block
codec that flushes and compactions write and read (``sstable_blocks.py``) and the bloom
filter every table carries (``bloom.py``). They are plain typed Python; compiled, the same
code runs 1.5-3x faster.

The engine takes them from this module's attributes, read when it builds an object (a
memtable, a WAL encoder, a table writer or reader) or decodes a WAL record, never from a
direct import: Python would import a compiled module even when it is stale. One build
runs for all of them: the compiled one when every module was compiled from its current
source (each ``<name>.source-sha256`` stamp matches), else the source of every one (an
edit without a rebuild, no C compiler, ``SENTINEL_NO_COMPILE=1`` at install time). The
builds never mix, so a compiled module only ever meets compiled objects of the others.

``using("source")`` / ``using("compiled")`` switch the build for the objects made inside
the block: the tests of these cores run once per build (one format of record, two builds).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import ModuleType
from typing import Final

from sentinel.records.decoder import is_compiled, is_fresh, load_source, stamp_of
from sentinel.storage import bloom as _bloom_imported
from sentinel.storage import skiplist as _skiplist_imported
from sentinel.storage import sstable_blocks as _sstable_blocks_imported
from sentinel.storage import wal_format as _wal_format_imported

#: The builds a core can have.
BUILDS: Final = ("source", "compiled")

# Each core as Python imported it: its compiled build if one is installed (fresh or not),
# else its source.
_IMPORTED: Final = {
    "skiplist": _skiplist_imported,
    "wal_format": _wal_format_imported,
    "sstable_blocks": _sstable_blocks_imported,
    "bloom": _bloom_imported,
}
_DIRECTORY: Final = os.path.dirname(__file__)
_builds: dict[str, dict[str, ModuleType]] = {}


def builds() -> dict[str, dict[str, ModuleType]]:
    """``{build: {core name: module}}``: "source" always, "compiled" when every core has a
    fresh compiled build installed."""
    if not _builds:
        _builds.update(choose_builds(_IMPORTED, _DIRECTORY, "sentinel.storage"))
    return _builds


def choose_builds(
    imported: Mapping[str, ModuleType], directory: str, package: str
) -> dict[str, dict[str, ModuleType]]:
    """The builds of the modules ``imported`` (by name; their sources are ``<name>.py`` in
    ``directory``): "source" always, "compiled" only when EVERY one is a compiled build
    stamped with its current source. A source module whose compiled build Python imported
    instead is loaded as ``<package>._<name>_source``."""
    source: dict[str, ModuleType] = {}
    compiled: dict[str, ModuleType] = {}
    for name, module in imported.items():
        path = os.path.join(directory, name + ".py")
        if is_compiled(module):
            if is_fresh(stamp_of(path), path):
                compiled[name] = module
            source[name] = load_source(path, f"{package}._{name}_source")
        else:
            source[name] = module
    found = {"source": source}
    if len(compiled) == len(imported):
        found["compiled"] = compiled
    return found


def _initial() -> str:
    return "compiled" if "compiled" in builds() else "source"


#: The build in use: "compiled" or "source".
active: str = _initial()
skiplist: ModuleType = builds()[active]["skiplist"]
wal_format: ModuleType = builds()[active]["wal_format"]
sstable_blocks: ModuleType = builds()[active]["sstable_blocks"]
bloom: ModuleType = builds()[active]["bloom"]


def _switch(build: str) -> None:
    global active, skiplist, wal_format, sstable_blocks, bloom
    modules = builds()[build]
    active = build
    skiplist = modules["skiplist"]
    wal_format = modules["wal_format"]
    sstable_blocks = modules["sstable_blocks"]
    bloom = modules["bloom"]


@contextmanager
def using(build: str) -> Iterator[None]:
    """Objects made inside the block use ``build`` ("source" or "compiled") of every core:
    for tests. LookupError if that build is not installed."""
    if build not in builds():
        raise LookupError(f"no {build} build of the storage cores is installed")
    previous = active
    _switch(build)
    try:
        yield
    finally:
        _switch(previous)
