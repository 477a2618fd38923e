"""A bare gRPC echo server on asyncio + the ``h2`` library (step 1 of brief h2grpc).

HTTP/2 cleartext with prior knowledge (what grpc clients use for insecure channels) on
a uvloop event loop, answering every unary method with its own request message (no
decoding, no policy). Measured beside benchmarks/_grpc_echo.py (the same echo on
grpcio's server) by serve_bench.py: what an event-loop transport costs against grpcio's
threads. Listens on 127.0.0.1 at a free port, prints ``gRPC listening on
127.0.0.1:PORT`` and serves until SIGTERM.

Usage: ``python benchmarks/_h2_echo.py``
"""

from __future__ import annotations

import asyncio
from typing import Any

import _echo_loop  # benchmarks/, this script's folder
import h2.config
import h2.connection
import h2.events

_HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc")]
_TRAILERS = [(b"grpc-status", b"0")]


class EchoProtocol(asyncio.Protocol):
    """One connection: h2's state machine; each ended stream answered with its data."""

    def __init__(self):
        config = h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_inbound_headers=False
        )
        self.conn = h2.connection.H2Connection(config)
        self.bodies: dict[int, list[bytes]] = {}
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.conn.initiate_connection()
        transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        try:
            events = conn.receive_data(data)
        except Exception:  # a protocol error: close this connection only
            self.transport.close()
            return
        for event in events:
            kind = type(event)
            if kind is h2.events.RequestReceived:
                self.bodies[event.stream_id] = []
            elif kind is h2.events.DataReceived:
                body = self.bodies.get(event.stream_id)
                if body is not None:
                    body.append(event.data)
                if event.flow_controlled_length:
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif kind is h2.events.StreamEnded:
                body = self.bodies.pop(event.stream_id, None)
                if body is not None:
                    message = b"".join(body)  # 5-byte prefix + message: echoed as is
                    conn.send_headers(event.stream_id, _HEADERS)
                    conn.send_data(event.stream_id, message)
                    conn.send_headers(event.stream_id, _TRAILERS, end_stream=True)
            elif kind is h2.events.StreamReset:
                self.bodies.pop(event.stream_id, None)
        out = conn.data_to_send()
        if out:
            self.transport.write(out)


async def _start() -> tuple[int, Any]:
    server = await asyncio.get_running_loop().create_server(EchoProtocol, "127.0.0.1", 0)

    async def stop() -> None:
        server.close()

    return server.sockets[0].getsockname()[1], stop


if __name__ == "__main__":
    _echo_loop.run(_start)
