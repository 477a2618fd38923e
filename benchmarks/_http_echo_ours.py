"""A bare HTTP echo on an asyncio.Protocol of our own over httptools, no policy.

HTTP/1.1 keep-alive on uvloop: ``httptools.HttpRequestParser`` is fed each read and
calls back into the protocol, which answers a complete request inline with one
``transport.write`` of a fixed small JSON body (no task, no ASGI scope, no awaits).
The lower bound of a REST transport on httptools, beside
benchmarks/_http_echo_uvicorn.py (serve_bench.py ``--http-echoes``). Listens on
127.0.0.1 at a free port, prints ``listening on http://127.0.0.1:PORT`` and serves
until SIGTERM.

Usage: ``python benchmarks/_http_echo_ours.py``
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys

import httptools

ANSWER = b'{"predictions": [0]}'
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
    len(ANSWER),
    ANSWER,
)


class _Echo(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport = None
        self.body: list[bytes] = []

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            self.transport.close()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.body = []
        self.transport.write(RESPONSE)


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(f"listening on http://127.0.0.1:{port}", file=sys.stderr, flush=True)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve())
    else:
        uvloop.run(_serve())
