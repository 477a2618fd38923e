"""The HTTP side shared by the REST protocols: one handler, a codec per path prefix.

``build_handler(core, codecs)`` answers ``GET /metrics`` itself and hands every other
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
    "build_handler",
    "error_answer",
    "too_large",
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
    """One HTTP request as a codec sees it (the transport, http_server.py, has read it).

    Attributes:
      method: ``GET``, ``POST``...
      path: the decoded path, without the query.
      headers: ``[(lower-case name, value)]`` as bytes.
    """

    __slots__ = ("_body", "_error", "headers", "method", "path")

    def __init__(
        self,
        method: str,
        path: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes = b"",
        error: ServingError | None = None,
    ):
        self.method = method
        self.path = path
        self.headers = headers
        self._body = body
        self._error = error

    def body(self) -> bytes:
        """The whole body, at most the server's ``--max-body-bytes``.

        Raises:
          ServingError: RESOURCE_EXHAUSTED for a larger body (by its Content-Length, or
            while reading a chunked one).
        """
        if self._error is not None:
            raise self._error
        return self._body


def too_large(limit: int, declared: int | None) -> ServingError:
    """The error of a body over ``limit`` bytes (``declared`` by its Content-Length, or
    None: found while reading it)."""
    got = "more" if declared is None else str(declared)
    return ServingError(
        f"request body: expected at most {limit} bytes (the server's --max-body-bytes), got {got}",
        ErrorKind.RESOURCE_EXHAUSTED,
    )


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


def build_handler(core: ServingCore, codecs: list[HttpCodec]) -> Any:
    """``async handle(request) -> HttpAnswer`` over ``core``, speaking every protocol in
    ``codecs``; every answer a codec gives is counted in the metrics.

    A plain handler, no framework: the API is a handful of paths, and a framework's
    request and response objects cost more per request (measured: about a third of the
    server's time per predict) than they give here.
    """
    observe = core.observe
    registry = core.metrics.registry
    metrics_type = CONTENT_TYPE_LATEST.encode()

    async def handle(request: HttpRequest) -> HttpAnswer:
        started = time.perf_counter()
        path = request.path
        for codec in codecs:
            if codec.handles(path):
                answer = await codec.handle(request)
                observe(
                    codec.name,
                    answer.model,
                    answer.api,
                    answer.status,
                    time.perf_counter() - started,
                    answer.status >= 400,
                )
                return answer
        if path == "/metrics" and request.method == "GET":
            return HttpAnswer(generate_latest(registry), 200, metrics_type)
        message = f"Malformed request: {request.method} {path}"
        return HttpAnswer(json.dumps({"error": message}).encode(), 404)

    return handle
