"""A broker that dies under a request the client is still sending: the caller gets one
Unavailable and nothing else reaches stderr.

The "broker" is a bare HTTP/2 server (h2 on an asyncio socket) that opens a flow-control
window large enough for the whole request, then resets the connection at the first DATA
frame: grpclib goes on writing the rest of the request to the lost socket, and each write
past the fifth used to make asyncio log "socket.send() raised exception." (the lines a
``sentinel produce`` user saw when the broker was killed).
"""

from __future__ import annotations

import asyncio
import logging

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from sentinel.client.connection import Connection
from sentinel.errors import Unavailable
from sentinel.generated.sentinel import v1 as pb

MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65_535


async def _dies_at_first_data(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: MAX_WINDOW})
    conn.increment_flow_control_window(MAX_WINDOW - DEFAULT_WINDOW)
    writer.write(conn.data_to_send())
    while data := await reader.read(65_536):
        if any(isinstance(event, h2.events.DataReceived) for event in conn.receive_data(data)):
            writer.transport.abort()  # RST: the client's next sends fail
            return
        writer.write(conn.data_to_send())


def test_writes_to_a_lost_connection_log_nothing(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        server = await asyncio.start_server(_dies_at_first_data, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conn = Connection("127.0.0.1", port)
        try:
            with pytest.raises(Unavailable, match=f"cannot reach broker 127.0.0.1:{port}: Connection lost"):
                with conn.errors:
                    request = pb.ProduceRequest(topic="t", record_batches=b"x" * 8_000_000)
                    await conn.stub.produce(request, timeout=10)
        finally:
            conn.close()
            server.close()
            await server.wait_closed()

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        asyncio.run(scenario())
    logged = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert logged == []
