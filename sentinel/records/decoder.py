"""Which build of the records-section decoder (``sentinel.records.decode``) runs.

``setup.py`` compiles ``decode.py`` with mypyc into an extension module beside it; Python
then imports the extension in place of the source. A compiled module is used only when it
was built from this very source (the SHA-256 that ``setup.py`` wrote beside it matches
``decode.py``): after an edit without a rebuild (``pip install -e .`` again) the source
runs, slower but never stale. Where nothing was compiled (no C compiler,
``SENTINEL_NO_COMPILE=1`` at install time) the source runs too.

``active`` is the module every ``RecordBatch`` decodes with. ``pure()`` loads the source as
a module of its own whatever was compiled, so the record tests run against both builds
(``using`` swaps ``active`` for the duration of a test): one codec of record, two builds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from sentinel.records import decode as _imported

_SOURCE = os.path.join(os.path.dirname(__file__), "decode.py")


def is_compiled(module: ModuleType) -> bool:
    """True for the mypyc build (an extension module), False for the source."""
    return not (module.__file__ or "").endswith(".py")


def is_fresh(stamp: str, source: str) -> bool:
    """True when the digest in the ``stamp`` file is the SHA-256 of the ``source`` file."""
    try:
        with open(stamp) as f:
            recorded = f.read().strip()
        with open(source, "rb") as f:
            actual = hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return False  # no stamp: not built by setup.py; no source: nothing to vouch for it
    return recorded == actual


def load_source(path: str, name: str) -> ModuleType:
    """The Python source at ``path`` run as a module named ``name``, whatever was compiled
    from it (Python would import a compiled build beside the source in its place)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stamp_of(source: str) -> str:
    """The stamp file ``setup.py`` writes beside the build of ``source`` (``x.py``:
    ``x.source-sha256``)."""
    return os.path.splitext(source)[0] + ".source-sha256"


_sources: dict[str, ModuleType] = {}


def builds_of(imported: ModuleType, source: str, name: str) -> dict[str, ModuleType]:
    """The builds at hand of a module that ``setup.py`` compiles (``imported``, as Python
    imported it, from ``source``): "source" always (the Python source, loaded once as a
    module named ``name`` when the import found a compiled build), "compiled" when the
    compiled build was made from this very source."""
    builds: dict[str, ModuleType] = {}
    if is_compiled(imported):
        if is_fresh(stamp_of(source), source):
            builds["compiled"] = imported
        loaded = _sources.get(name)
        if loaded is None:
            loaded = _sources[name] = load_source(source, name)
        builds["source"] = loaded
    else:
        builds["source"] = imported
    return builds


def pure() -> ModuleType:
    """``decode.py`` run as Python source (loaded once, under a name of its own)."""
    return builds_of(_imported, _SOURCE, "sentinel.records._decode_source")["source"]


def compiled() -> ModuleType | None:
    """The mypyc build of ``decode.py`` if one is installed and up to date, else None."""
    return builds_of(_imported, _SOURCE, "sentinel.records._decode_source").get("compiled")


active: ModuleType = compiled() or pure()


@contextmanager
def using(module: ModuleType) -> Iterator[None]:
    """Decode with ``module`` (``compiled()`` or ``pure()``) inside the block: for tests."""
    global active
    previous, active = active, module
    try:
        yield
    finally:
        active = previous
