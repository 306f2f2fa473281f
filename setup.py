"""Build hook: compile the records-section decoder with mypyc (see sentinel/records/decode.py).

Everything else is declared in pyproject.toml. The extension is optional: without a C
compiler, or with SENTINEL_NO_COMPILE=1, the install goes on and the Python source runs
(about four times slower per record; sentinel.records.decoder says which build is active).
"""

from __future__ import annotations

import os

from setuptools import setup


def _extensions() -> list:
    if os.environ.get("SENTINEL_NO_COMPILE"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        return []
    extensions = mypycify(["sentinel/records/decode.py"], opt_level="3")
    for extension in extensions:
        extension.optional = True  # a failed compile leaves the pure-Python module in charge
    return extensions


setup(ext_modules=_extensions())
