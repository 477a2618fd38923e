"""The HTTP side shared by the REST protocols: one ASGI app, a codec per path prefix.

``build_app(core, codecs)`` answers ``GET /metrics`` itself and hands every other
request to the first codec whose ``handles(path)`` is true (TF Serving's REST API
takes ``/v1/...``; another REST protocol takes its own prefix on the same port). A
codec reads the request (``HttpRequest``: method, path, headers, a size-bounded
``body()``), answers an ``HttpAnswer`` and names the model and API it served, which
the app counts in the metrics under the codec's protocol name.
"""

from __future__ import annotations

import json
import time
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from runtimes.serving.core import ServingCore
from toolkit.errors import ErrorKind, ServingError

__all__ = [
    "HTTP_STATUS",
    "JSON",
    "HttpAnswer",
    "HttpCodec",
    "HttpRequest",
    "build_app",
    "error_answer",
]

JSON = b"application/json"

#: Error kind -> HTTP status, for every REST protocol: TF Serving's REST server's mapping
#: of its codes, which KServe v2's REST API shares (400 a bad request, 404 an unknown
#: model or version, 503 not ready or full), but for RESOURCE_EXHAUSTED: the one
#: resource a request exhausts here is the body size (413).
HTTP_STATUS = {
    ErrorKind.CANCELLED: 499,
    ErrorKind.INVALID_ARGUMENT: 400,
    ErrorKind.DEADLINE_EXCEEDED: 504,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.RESOURCE_EXHAUSTED: 413,
    ErrorKind.FAILED_PRECONDITION: 400,
    ErrorKind.UNIMPLEMENTED: 501,
    ErrorKind.INTERNAL: 500,
    ErrorKind.UNAVAILABLE: 503,
}


class HttpRequest:
    """One HTTP request as a codec sees it.

    Attributes:
      method: ``GET``, ``POST``...
      path: the decoded path, without the query.
      headers: ``[(lower-case name, value)]`` as bytes.
    """

    __slots__ = ("_limit", "_receive", "headers", "method", "path")

    def __init__(self, scope: dict, receive: Any, limit: int):
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.headers: list[tuple[bytes, bytes]] = scope["headers"]
        self._receive = receive
        self._limit = limit

    async def body(self) -> bytes:
        """The whole body, at most the server's ``--max-body-bytes``.

        Raises:
          ServingError: RESOURCE_EXHAUSTED for a larger body (by its Content-Length, or
            while reading a chunked one), INVALID_ARGUMENT for a bad Content-Length,
            CANCELLED when the client went away (or was timed out) before sending it.
        """
        limit = self._limit
        for name, value in self.headers:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    raise ServingError(
                        f"Content-Length: expected a number, got {value!r}"
                    ) from None
                if declared > limit:
                    raise ServingError(
                        f"request body: expected at most {limit} bytes (the server's "
                        f"--max-body-bytes), got {declared}",
                        ErrorKind.RESOURCE_EXHAUSTED,
                    )
                break
        chunks, size = [], 0
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ServingError("the client went away", ErrorKind.CANCELLED)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise ServingError(
                    f"request body: expected at most {limit} bytes (the server's "
                    f"--max-body-bytes), got more",
                    ErrorKind.RESOURCE_EXHAUSTED,
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class HttpAnswer:
    """A response (status, body, content type, more headers) and what it served, for the
    metrics."""

    __slots__ = ("api", "body", "content_type", "headers", "model", "status")

    def __init__(
        self,
        body: bytes,
        status: int = 200,
        content_type: bytes = JSON,
        model: str | None = None,
        api: str = "other",
        headers: list[tuple[bytes, bytes]] | None = None,
    ):
        self.body = body
        #: more response headers, ``[(lower-case name, value)]``
        self.headers = headers
        self.status = status
        self.content_type = content_type
        self.model = model
        self.api = api


def error_answer(message: str, kind: ErrorKind, model: str | None, api: str) -> HttpAnswer:
    """An error as both REST protocols answer it: ``{"error": message}`` with the HTTP
    status of its kind."""
    body = json.dumps({"error": message}).encode()
    return HttpAnswer(body, HTTP_STATUS[kind], model=model, api=api)


class HttpCodec(Protocol):
    """A protocol over HTTP (one module per protocol; runtimes.serving.protocols)."""

    #: the protocol's name: the ``protocol`` label of the metrics
    name: str

    def handles(self, path: str) -> bool:
        """Whether requests for ``path`` are this protocol's."""

    async def handle(self, request: HttpRequest) -> HttpAnswer:
        """The answer; errors too (in the protocol's shape), never an exception."""


def build_app(core: ServingCore, codecs: list[HttpCodec]) -> Any:
    """The ASGI app over ``core``, speaking every protocol in ``codecs``.

    A plain ASGI callable: the API is a handful of paths, and a framework's request and
    response objects cost more per request (measured: about a third of the server's
    time per predict) than they give here.
    """
    limit = core.limits.max_body_bytes
    observe = core.observe

    async def app(scope, receive, send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "lifespan":  # not used (uvicorn runs with lifespan off)
                message = await receive()
                await send({"type": message["type"] + ".complete"})
            return
        started = time.perf_counter()
        path = scope["path"]
        for codec in codecs:
            if codec.handles(path):
                answer = await codec.handle(HttpRequest(scope, receive, limit))
                observe(
                    codec.name,
                    answer.model,
                    answer.api,
                    answer.status,
                    time.perf_counter() - started,
                    answer.status >= 400,
                )
                break
        else:
            if path == "/metrics" and scope["method"] == "GET":
                registry = core.metrics.registry
                answer = HttpAnswer(generate_latest(registry), 200, CONTENT_TYPE_LATEST.encode())
            else:
                message = f"Malformed request: {scope['method']} {path}"
                answer = HttpAnswer(json.dumps({"error": message}).encode(), 404)
        headers = [
            (b"content-type", answer.content_type),
            (b"content-length", str(len(answer.body)).encode()),
        ]
        if answer.headers:
            headers += answer.headers
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})

    return app
