"""The stdin reader of ``sentinel produce`` ends quietly when the command ends under it."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import warnings

from sentinel.cli.produce import _StdinLines


def test_the_reader_thread_ends_quietly_after_the_loop_closes() -> None:
    # What happens when the broker dies under `sentinel produce` fed from a pipe: the command
    # fails and its loop closes while the reader thread still has lines to hand over.
    read_fd, write_fd = os.pipe()
    stream = os.fdopen(read_fd, "rb", buffering=0)

    async def main() -> list[bytes]:
        lines = _StdinLines(stream)
        os.write(write_fd, b"first\n")
        async for chunk in lines.chunks(asyncio.Event()):
            return chunk
        return []

    assert asyncio.run(main()) == [b"first"]
    reader = next(t for t in threading.enumerate() if t.name == "sentinel-produce-stdin")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        os.write(write_fd, b"more\n" * 3)
        os.close(write_fd)
        reader.join(timeout=10)
        gc.collect()
    stream.close()
    assert not reader.is_alive()
    assert [str(w.message) for w in caught] == []  # no "coroutine ... was never awaited"
