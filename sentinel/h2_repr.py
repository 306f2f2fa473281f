"""Bound the cost of h2's per-frame debug ``repr`` (imported for its effect by the gRPC
front end and the client's connections).

h2 (4.x) logs every frame it receives with ``logger.trace("Received frame: %s",
repr(frame))``: the ``repr`` is built before the call, even with logging off. For a DATA
frame hyperframe's ``repr`` copies the frame's payload (``serialize_body``) and hex-encodes
all of it, then keeps the first 20 hex digits. That is three passes over every byte
received; measured, 13% of the broker's CPU while ingesting produce requests at full speed.

:func:`install` replaces the two hyperframe functions involved with versions that produce
the same text from the first 11 bytes only. Idempotent; safe if hyperframe changes (it
then leaves it alone).
"""

from __future__ import annotations

import binascii
from typing import Any

_installed = False


def _raw_data_repr(data: bytes | memoryview | None) -> str:
    # hyperframe's own, reading at most the 11 bytes it can show (20 hex digits + "...").
    if not data:
        return "None"
    shown = binascii.hexlify(data[:11]).decode("ascii")
    if len(shown) > 20:
        shown = shown[:20] + "..."
    return "<hex:" + shown + ">"


def _data_frame_body_repr(frame: Any) -> str:
    # Frame._body_repr serializes the body first (a copy of the payload); unpadded, the
    # serialized body is exactly the payload.
    if "PADDED" in frame.flags:
        return _raw_data_repr(frame.serialize_body())
    return _raw_data_repr(frame.data)


def install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    try:
        from hyperframe import frame as hf
    except ImportError:
        return
    original = getattr(hf, "_raw_data_repr", None)
    data_frame = getattr(hf, "DataFrame", None)
    if original is None or data_frame is None or "_body_repr" in vars(data_frame):
        return  # not the hyperframe this was written for: leave it alone
    hf._raw_data_repr = _raw_data_repr
    data_frame._body_repr = _data_frame_body_repr


install()
