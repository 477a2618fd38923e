"""A bare HTTP echo on uvicorn as ``policy-toolkit serve`` configures it, no policy.

uvicorn with httptools, on uvloop, with the REST port's protocol class
(runtimes/serving/server.py: TCP_NODELAY, connection limit, read timeout), lifespan
and the access log off, and a minimal ASGI app answering every request with a fixed
small JSON body (after reading the request's body). serve_bench.py ``--http-echoes``
runs it beside benchmarks/_http_echo_ours.py: what the REST transport costs on this
machine. Listens on 127.0.0.1 at a free port, prints ``listening on
http://127.0.0.1:PORT`` and serves until SIGTERM.

Usage: ``python benchmarks/_http_echo_uvicorn.py``
"""

from __future__ import annotations

import socket
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import uvicorn  # noqa: E402

from runtimes.serving.server import ServeOptions, _protocol_class  # noqa: E402

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


def main() -> None:
    uncounted = types.SimpleNamespace(labels=lambda reason: types.SimpleNamespace(inc=int))
    metrics = types.SimpleNamespace(connections_closed=uncounted)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    sock.setblocking(False)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        http=_protocol_class(ServeOptions(models=[]), metrics),
        lifespan="off",
        server_header=False,
    )
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}", file=sys.stderr, flush=True)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
