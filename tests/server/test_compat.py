"""sentinel.server.compat: h2's per-frame debug repr keeps its text but no longer reads the
whole payload of a DATA frame."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = r"""
import binascii, json
from hyperframe.frame import DataFrame, HeadersFrame, PingFrame

hexlified = []
original_hexlify = binascii.hexlify
def hexlify(data, *args):
    hexlified.append(len(data))
    return original_hexlify(data, *args)
binascii.hexlify = hexlify

frames = [DataFrame(1, b"x" * n) for n in (0, 1, 10, 11, 12, 1_000_000)]
padded = DataFrame(1, b"hello world, padded", flags=["PADDED"])
padded.pad_length = 3
frames += [padded, HeadersFrame(1, b"\x82\x86" * 30), PingFrame(0, b"12345678")]
before = [repr(f) for f in frames]
read_before, hexlified[:] = max(hexlified), []
import sentinel.server.compat
after = [repr(f) for f in frames]
print(json.dumps({"same": before == after, "read_before": read_before, "read_after": max(hexlified)}))
"""


def test_frame_reprs_unchanged_and_bounded() -> None:
    # A fresh interpreter: the patch is process-wide and must be compared to the original.
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["same"]
    assert result["read_before"] == 1_000_000  # hyperframe alone hex-encodes the whole payload
    assert result["read_after"] <= 24  # the padded frame's header + 11 bytes at most


def test_supported_versions_are_the_installed_ones() -> None:
    from sentinel.server.compat import SUPPORTED, check_versions, installed_versions

    check_versions(installed_versions())
    assert set(SUPPORTED) == {"grpclib", "h2", "hyperframe"}


def test_a_mismatching_version_is_refused_with_what_to_do() -> None:
    import pytest

    from sentinel.server.compat import SUPPORTED, UnsupportedVersion, check_versions

    installed = {**SUPPORTED, "grpclib": "0.5.0", "hyperframe": None}
    with pytest.raises(UnsupportedVersion) as caught:
        check_versions(installed)
    message = str(caught.value)
    assert "grpclib 0.5.0 (supported: 0.4.9)" in message
    assert "hyperframe not installed (supported: 6.1.0)" in message
    assert "h2 " not in message.replace("h2 and", "")  # the matching one is not named
    assert "pip install grpclib==0.4.9 h2==4.4.1 hyperframe==6.1.0" in message
    assert "pyproject.toml" in message
