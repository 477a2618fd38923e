"""A bare HTTP echo on uvicorn as ``policy-toolkit serve`` configures it, no policy.

uvicorn with httptools, on uvloop, with the protocol class the REST port ran on before
it had a transport of its own (runtimes/serving/http_server.py): TCP_NODELAY, a
connection limit and a read timeout, kept here as the baseline; lifespan
and the access log off, and a minimal ASGI app answering every request with a fixed
small JSON body (after reading the request's body). serve_bench.py ``--http-echoes``
runs it beside benchmarks/_http_echo_ours.py: what the REST transport costs on this
machine. Listens on 127.0.0.1 at a free port, prints ``listening on
http://127.0.0.1:PORT`` and serves until SIGTERM.

Usage: ``python benchmarks/_http_echo_uvicorn.py``
"""

from __future__ import annotations

import contextlib
import socket
import sys
from typing import Any

import uvicorn

ANSWER = b'{"predictions": [0]}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(ANSWER))]


async def app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:  # the whole body, as HttpRequest.body() reads it
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})


def _protocol_class(limit: int = 1024, timeout: float = 5.0) -> Any:
    """uvicorn's httptools protocol with TCP_NODELAY, a connection limit and a read
    timeout (a connection's request must be whole ``timeout`` s after it opened or
    began), as the REST port had it."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base

    class Guarded(Base):
        _refused = False
        _timer: Any = None

        def connection_made(self, transport: Any) -> None:
            if len(self.connections) >= limit:
                self._refused = True
                transport.close()
                return
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError, AttributeError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            if self._timer is None:
                self._timer = self.loop.call_later(timeout, self._timed_out)

        def _timed_out(self) -> None:
            self._timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def connection_lost(self, exc: Exception | None) -> None:
            if self._refused:
                return
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            super().connection_lost(exc)

    return Guarded


def main() -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    sock.setblocking(False)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        http=_protocol_class(),
        lifespan="off",
        server_header=False,
    )
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}", file=sys.stderr, flush=True)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
