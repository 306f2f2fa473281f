"""Checks shared by the storage model and crash tests."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from sentinel.storage.files import CURRENT, parse_file_name
from sentinel.storage.framing import scan_frames
from sentinel.storage.manifest import NUM_LEVELS, Version, decode_edit


def check_closed_directory(directory: Path) -> None:
    """The directory holds exactly the tables the manifest on disk names (nothing orphaned,
    nothing missing), and L1+ are sorted and disjoint."""
    name = (directory / CURRENT).read_text().strip()
    version = Version()
    for payload in scan_frames((directory / name).read_bytes()).payloads:
        version = version.apply(decode_edit(payload))
    for level in range(1, NUM_LEVELS):
        for left, right in itertools.pairwise(version.files(level)):
            assert left.max_key < right.min_key, (level, left, right)
    tables = {p[1] for name in os.listdir(directory) if (p := parse_file_name(name)) and p[0] == "sst"}
    assert tables == version.all_numbers()
