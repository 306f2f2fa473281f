"""Every use of grpclib, h2 and hyperframe internals, in one place, behind a version check.

The front end closes gaps grpclib leaves (see :mod:`sentinel.server.frontend`) by reaching
into private attributes; h2's per-frame debug ``repr`` is bounded by replacing two
hyperframe functions. Those internals change without notice between releases, so this
module checks the installed versions at import (:func:`check_versions`) and refuses to run
on versions it was not written and tested against, saying what to do. pyproject.toml pins
the same versions: move both together, after running tests/server.

The internals used (nothing outside this module touches them):

* grpclib ``Server._protocol_factory`` (overridden by the front end's server) and the
  attributes it reads: ``_mapping``, ``_codec``, ``_status_details_codec``, ``_config``,
  ``_h2_config``, ``_handlers``, ``__gc_step__``, ``__dispatch__``;
* grpclib ``Channel._protocol_factory`` (wrapped for the client, :func:`wrap_client_transport`)
  and ``H2Protocol.connection_made`` being where grpclib takes the transport it writes to;
* ``Handler.accept`` receiving the HTTP/2 stream, and ``protocol.Stream.recv_data`` being
  the only read path of ``grpclib.stream.recv_message`` (the request size limit);
* ``EventsProcessor.processors``, the h2 event dispatch table (:func:`event_processors`),
  and ``EventsProcessor.streams``, its stream table (:func:`stream_count`);
* ``Connection._connection``, the h2 connection, for PING, GOAWAY and the frame size
  (:func:`h2_connection`);
* ``Handler._tasks`` and ``Handler._cancelled``, grpclib's per-connection table of handler
  tasks, pruned by grpclib only every tenth request (:func:`handler_task`,
  :func:`forget_handler_task`, :func:`handler_task_counts`);
* h2's ``H2Connection._closed_streams`` (how each closed stream ended, 65,536 of them per
  connection) and the side effect of ``open_inbound_streams`` that moves closed streams
  there (:func:`limit_closed_streams`, :func:`release_closed_streams`);
* ``grpclib.encoding.proto._googleapis_available`` (:func:`default_status_details_codec`);
* hyperframe ``_raw_data_repr`` and ``DataFrame._body_repr`` (:func:`install_h2_repr`).
"""

from __future__ import annotations

import asyncio
import binascii
from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

#: The versions these internals were checked against (pinned alike in pyproject.toml).
SUPPORTED: Mapping[str, str] = {"grpclib": "0.4.9", "h2": "4.4.1", "hyperframe": "6.1.0"}


class UnsupportedVersion(ImportError):
    """An installed grpclib/h2/hyperframe is not one this module supports."""


def installed_versions(packages: Mapping[str, str] = SUPPORTED) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in packages:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def check_versions(installed: Mapping[str, str | None], supported: Mapping[str, str] = SUPPORTED) -> None:
    """Raise :class:`UnsupportedVersion` naming every mismatch and the fix."""
    wrong = [
        f"{name} {installed.get(name) or 'not installed'} (supported: {want})"
        for name, want in supported.items()
        if installed.get(name) != want
    ]
    if wrong:
        pins = " ".join(f"{name}=={want}" for name, want in supported.items())
        raise UnsupportedVersion(
            "sentinel's gRPC front end depends on internals of exact versions of grpclib, h2 "
            f"and hyperframe; installed: {', '.join(wrong)}. Install the supported versions "
            f"(pip install {pins}), or update sentinel/server/compat.py and the pins in "
            "pyproject.toml together after running tests/server against the new versions."
        )


check_versions(installed_versions())

# Imported only once the versions are known to fit.
import grpclib.encoding.proto as _grpclib_proto  # noqa: E402
from grpclib.encoding.base import StatusDetailsCodecBase  # noqa: E402
from h2.utilities import SizeLimitDict  # noqa: E402


def h2_connection(connection: Any) -> Any:
    """The h2 ``H2Connection`` under a grpclib ``protocol.Connection``."""
    return connection._connection


def event_processors(processor: Any) -> dict[Any, Any]:
    """grpclib's h2 event dispatch table (event class -> callable) of one connection."""
    processors: dict[Any, Any] = processor.processors
    return processors


def new_connection_handler(server: Any, handler_class: Any, **options: Any) -> tuple[Any, Any, Any]:
    """What grpclib's ``Server._protocol_factory`` does before building the protocol:
    a ``handler_class`` (a grpclib ``Handler`` subclass taking ``options``) registered
    with ``server``, and the server's grpclib and h2 configurations for the protocol."""
    server.__gc_step__()
    handler = handler_class(
        server._mapping, server._codec, server._status_details_codec, server.__dispatch__, **options
    )
    server._handlers.add(handler)
    return handler, server._config, server._h2_config


def wrap_client_transport(channel: Any, wrap: Callable[[Any], Any]) -> None:
    """Make a grpclib client ``Channel`` write through ``wrap(transport)`` on every
    connection it opens: grpclib keeps the transport it is given in ``connection_made``
    and writes only through it."""
    make_protocol = channel._protocol_factory

    def protocol_factory() -> Any:
        protocol = make_protocol()
        connection_made = protocol.connection_made
        protocol.connection_made = lambda transport: connection_made(wrap(transport))
        return protocol

    channel._protocol_factory = protocol_factory


def handler_task(handler: Any, stream: Any) -> asyncio.Task[None] | None:
    """The task grpclib's ``Handler.accept`` started for ``stream``, if it still lists it."""
    task: asyncio.Task[None] | None = handler._tasks.get(stream)
    return task


def forget_handler_task(handler: Any, stream: Any, task: asyncio.Task[None]) -> None:
    """Drop a finished handler task from grpclib's tables (which otherwise keep it, with
    its result or exception and traceback, until grpclib's next tenth request)."""
    if handler._tasks.get(stream) is task:
        del handler._tasks[stream]
    handler._cancelled.discard(task)


def handler_task_counts(handler: Any) -> tuple[int, int]:
    """How many tasks grpclib's handler lists: (running, cancelled and not yet pruned)."""
    return len(handler._tasks), len(handler._cancelled)


def stream_count(processor: Any) -> int:
    """How many HTTP/2 streams grpclib's ``EventsProcessor`` of one connection holds."""
    return len(processor.streams)


def limit_closed_streams(connection: Any, limit: int) -> None:
    """Make the h2 connection remember how at most ``limit`` closed streams ended (h2
    keeps 65,536 per connection). Call before the connection receives a frame."""
    remembered: dict[int, Any] = SizeLimitDict(size_limit=limit)
    remembered.update(connection._closed_streams)
    connection._closed_streams = remembered


def release_closed_streams(connection: Any) -> None:
    """Make h2 drop the state of its closed streams now, keeping only how each ended.

    h2 does it only when it next counts open streams (when a peer opens one), so a
    connection that goes quiet would keep its last streams' state."""
    connection.open_inbound_streams  # noqa: B018 (the property prunes as it counts)


def closed_stream_counts(connection: Any) -> tuple[int, int]:
    """(streams h2 still holds, closed streams whose ending it remembers)."""
    return len(connection.streams), len(connection._closed_streams)


def default_status_details_codec() -> StatusDetailsCodecBase | None:
    """The status details codec grpclib's ``Server`` picks when given no codec."""
    if _grpclib_proto._googleapis_available():
        return _grpclib_proto.ProtoStatusDetailsCodec()
    return None


# -- h2's per-frame debug repr -------------------------------------------------------------
#
# h2 logs every frame it receives with ``logger.trace("Received frame: %s", repr(frame))``:
# the repr is built even with logging off. For a DATA frame hyperframe's repr copies the
# payload (``serialize_body``) and hex-encodes all of it, then keeps 20 hex digits: three
# passes over every byte received, measured at 13% of the broker's CPU while ingesting.
# The replacements produce the same text from the first 11 bytes only.

_h2_repr_installed = False


def _raw_data_repr(data: bytes | memoryview | None) -> str:
    if not data:
        return "None"
    shown = binascii.hexlify(data[:11]).decode("ascii")
    if len(shown) > 20:
        shown = shown[:20] + "..."
    return "<hex:" + shown + ">"


def _data_frame_body_repr(frame: Any) -> str:
    # Unpadded, the serialized body is exactly the payload.
    if "PADDED" in frame.flags:
        return _raw_data_repr(frame.serialize_body())
    return _raw_data_repr(frame.data)


def install_h2_repr() -> None:
    """Install the bounded DATA frame repr (idempotent)."""
    global _h2_repr_installed
    if _h2_repr_installed:
        return
    _h2_repr_installed = True
    from hyperframe import frame as hf

    hf._raw_data_repr = _raw_data_repr
    hf.DataFrame._body_repr = _data_frame_body_repr  # type: ignore[method-assign,assignment]


install_h2_repr()

__all__ = [
    "SUPPORTED",
    "UnsupportedVersion",
    "check_versions",
    "closed_stream_counts",
    "default_status_details_codec",
    "event_processors",
    "forget_handler_task",
    "h2_connection",
    "handler_task",
    "handler_task_counts",
    "install_h2_repr",
    "installed_versions",
    "limit_closed_streams",
    "new_connection_handler",
    "release_closed_streams",
    "stream_count",
    "wrap_client_transport",
]
