"""Build hook: compile the records-section decoder with mypyc (see sentinel/records/decode.py).

Everything else is declared in pyproject.toml. The extension is optional: without a C
compiler, or with SENTINEL_NO_COMPILE=1, the install goes on and the Python source runs
(about four times slower per record; sentinel.records.decoder says which build is active).
Beside a compiled build, ``decode.source-sha256`` records the source it was built from:
a build whose source has changed since is not used.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

_MODULE = "sentinel.records.decode"
_SOURCE = os.path.join("sentinel", "records", "decode.py")
_STAMP = "decode.source-sha256"


def _extensions() -> list[Any]:
    if os.environ.get("SENTINEL_NO_COMPILE"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        return []
    extensions = mypycify([_SOURCE], opt_level="3")
    for extension in extensions:
        extension.optional = True  # a failed compile leaves the pure-Python module in charge
    return extensions


class _BuildExt(build_ext):
    """build_ext, then the source's digest beside the compiled decoder (if it was built)."""

    def run(self) -> None:
        super().run()
        built = self.get_ext_fullpath(_MODULE)
        if any(e.name == _MODULE for e in self.extensions) and os.path.exists(built):
            with open(_SOURCE, "rb") as source:
                digest = hashlib.sha256(source.read()).hexdigest()
            with open(os.path.join(os.path.dirname(built), _STAMP), "w") as stamp:
                stamp.write(digest + "\n")


setup(ext_modules=_extensions(), cmdclass={"build_ext": _BuildExt})
