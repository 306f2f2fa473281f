"""Build hook: compile the records-section decoder (sentinel/records/decode.py), the
consumer's per-partition state and ``async for`` step (sentinel/client/partition.py), the
producer's per-record path (sentinel/client/appending.py) and the storage write path's pure
cores (see sentinel/storage/builds.py) with mypyc.

Everything else is declared in pyproject.toml. The extension is optional: without a C
compiler, or with SENTINEL_NO_COMPILE=1, the install goes on and the Python source runs
(the decoder about four times slower per record; sentinel.records.decoder says which build
is active). Beside each compiled module, ``<name>.source-sha256`` records the source it was
built from: a build whose source has changed since is not used.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

_MODULES = {
    "sentinel.records.decode": os.path.join("sentinel", "records", "decode.py"),
    "sentinel.client.partition": os.path.join("sentinel", "client", "partition.py"),
    "sentinel.client.appending": os.path.join("sentinel", "client", "appending.py"),
    # The storage write path's pure cores (sentinel.storage.builds picks the build).
    "sentinel.storage.skiplist": os.path.join("sentinel", "storage", "skiplist.py"),
    "sentinel.storage.wal_format": os.path.join("sentinel", "storage", "wal_format.py"),
    "sentinel.storage.sstable_blocks": os.path.join("sentinel", "storage", "sstable_blocks.py"),
    "sentinel.storage.bloom": os.path.join("sentinel", "storage", "bloom.py"),
}


def _extensions() -> list[Any]:
    if os.environ.get("SENTINEL_NO_COMPILE"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        return []
    try:
        # The modules they import are analysed for their types, but their errors are not
        # the build's: pip's isolated build environment has none of the dependencies, so
        # mypy sees some of their types as Any (the tests run against the compiled builds).
        # No cache: a local .mypy_cache (made with the dependencies) must not make a build
        # differ from a clean one.
        extensions = mypycify(
            ["--follow-imports=silent", "--cache-dir=/dev/null", *_MODULES.values()], opt_level="3"
        )
    except (SystemExit, Exception) as exc:  # mypyc exits on a type error
        import sys

        print(f"sentinel: not compiling {', '.join(_MODULES)} ({exc!r}): the sources run", file=sys.stderr)
        return []
    for extension in extensions:
        extension.optional = True  # a failed compile leaves the pure-Python module in charge
    return extensions


class _BuildExt(build_ext):
    """build_ext, then each source's digest beside its compiled module (if it was built)."""

    def run(self) -> None:
        super().run()
        names = {e.name for e in self.extensions}
        for module, path in _MODULES.items():
            built = self.get_ext_fullpath(module)
            if module in names and os.path.exists(built):
                with open(path, "rb") as source:
                    digest = hashlib.sha256(source.read()).hexdigest()
                stamp = os.path.splitext(os.path.basename(path))[0] + ".source-sha256"
                with open(os.path.join(os.path.dirname(built), stamp), "w") as out:
                    out.write(digest + "\n")


setup(ext_modules=_extensions(), cmdclass={"build_ext": _BuildExt})
