"""The REST port's transport: HTTP/1.1 on the server's event loop, parsed by httptools.

``HttpServer`` serves the handler of ``runtimes.serving.http`` (every REST protocol's
codec, and ``/metrics``) at ``--port``, on the event loop the gRPC port runs on. A
request runs as a gRPC call does: once it is whole, its handler's coroutine is stepped
inline (``transport.run_inline``) and the answer written with one ``transport.write``;
only a request that waits (batching, a sequence, a large body parsed off the loop)
becomes a task. Measured (callgrind, one keep-alive client): uvicorn's bare echo costs
~134k instructions a request, an asyncio.Protocol over httptools answering inline ~8k,
the whole server's v2 REST request ~385k on uvicorn.

What it does, as uvicorn did here:

* HTTP/1.1 keep-alive, HTTP/1.0 (closed after the answer unless it asks to be kept
  alive), ``Connection: close``, pipelined requests answered in order (while one
  waits, those after it queue; reading pauses past a few), chunked request bodies,
  ``Expect: 100-continue``, ``HEAD`` answered without a body.
* A body over ``--max-body-bytes`` (by its ``Content-Length``, or while a chunked one
  comes) is answered at once by the codec (413 in the protocol's shape), and the rest of
  it is read and dropped (closing on the client as it sends would reset the connection
  before it reads the answer). A body is reserved from the server's request-memory
  budget (``core.RequestBudget``, ``--max-buffered-bytes``, shared with the gRPC port)
  before it is buffered: by its Content-Length, a chunked one chunk by chunk; one that
  does not fit is answered at once as one over the limit is (503 with Retry-After, in
  the protocol's shape; bodies over 64 KiB may take 7/8 of the budget), and the
  reservation is given back when the request is answered or dropped (its connection
  closed, the read timeout, a parse error). A malformed
  request (httptools refuses it) gets 400, a head over 64 KiB or 100 headers 431; then
  the connection closes.
* Bounds: ``--max-connections`` (``transport.Listener``: idle eviction);
  ``--read-timeout-seconds`` for a connection's first request from its opening and for
  each request's head and body from its first byte (slowloris), counted
  ``read_timeout``; an idle keep-alive connection closes after 5 s; reading stops while
  the peer does not read our answers. TCP_NODELAY on every connection (an answer is one
  write, but the client's requests may not be).
* Draining (SIGTERM, server.py): the port closes, idle connections close, answers in
  flight are written with ``connection: close``.

Deadlines are checked by one timer a server, not one a request: a connection notes
when it must have received what it waits for, on a clock the timer advances (every
quarter of the shortest timeout, at most a second); the timer closes those past it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import http
import json
import logging
import socket
import time
import urllib.parse
from typing import Any

import httptools

from runtimes.serving.core import OFFLOAD_BYTES, ServingCore
from runtimes.serving.http import HttpAnswer, HttpRequest, too_large
from runtimes.serving.transport import Listener, run_inline
from toolkit.errors import ErrorKind, RequestHeadTooLargeError, ServingError

__all__ = ["IDLE_TIMEOUT_S", "LINGER_S", "MAX_HEADERS", "MAX_HEAD_BYTES", "HttpServer"]

log = logging.getLogger("policy_toolkit.serve")

#: seconds an idle keep-alive connection stays open (uvicorn's default, which it had)
IDLE_TIMEOUT_S = 5.0
#: a request's URL and headers, bytes at most (more: 431 and the connection closes)
MAX_HEAD_BYTES = 64 << 10
#: a request's headers at most
MAX_HEADERS = 100
#: seconds a connection closed by us (an error, ``Connection: close``) reads and drops
#: what its client still sends, waiting for it to close
LINGER_S = 2.0
#: requests queued behind one that waits before reading pauses
_MAX_QUEUED = 8

_STATUS_LINES = {
    status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode())
    for status in http.HTTPStatus
}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CLOSE = b"connection: close\r\n"
#: a request refused for want of budget may be retried: the bodies holding it are
#: answered or timed out within --read-timeout-seconds (5 s), most far sooner
_RETRY_AFTER = b"retry-after: 1\r\n"


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d Unknown\r\n" % status


class _Request:
    """A request being received or waiting for its turn."""

    __slots__ = (
        "answered",
        "complete",
        "expect",
        "fixed",
        "head",
        "keep_alive",
        "request",
        "reserved",
        "task",
    )

    def __init__(self, request: HttpRequest, keep_alive: bool, head: bool, expect: bool):
        self.request = request
        self.keep_alive = keep_alive
        self.head = head  # a HEAD request: answered without a body
        self.expect = expect  # Expect: 100-continue
        self.complete = False  # its whole body is in
        self.answered = False
        self.reserved = 0  # its body's bytes reserved from the server's budget
        self.task: asyncio.Task | None = None
        self.fixed: HttpAnswer | None = None  # the transport's own answer (an error)


class HttpServer(Listener):
    """The REST handler over HTTP/1.1 on the running event loop (module docstring).

    Args:
      core: the serving core.
      handler: ``async (HttpRequest) -> HttpAnswer`` (``runtimes.serving.http.build_handler``).
      max_connections: open connections at most.
      read_timeout: seconds for a request's head and body (see the module docstring).
      idle_timeout: seconds an idle keep-alive connection stays open.
      access_log: log a line per request.
    """

    what = "HTTP"

    def __init__(
        self,
        core: ServingCore,
        handler: Any,
        max_connections: int = 1024,
        read_timeout: float = 5.0,
        idle_timeout: float = IDLE_TIMEOUT_S,
        access_log: bool = False,
    ):
        super().__init__(core, max_connections, read_timeout)
        self.handler = handler
        self.idle_timeout = idle_timeout
        self.access_log = access_log
        self.requests = 0
        #: the clock deadlines are on (seconds, advanced by the sweeper)
        self.now = time.monotonic()
        self.date = b""
        self._date_second = -1
        self._tick = max(0.01, min(1.0, read_timeout / 4, idle_timeout / 4))
        # what a connection waits on the clock, which is up to a tick behind: a timeout
        # passes between its seconds and two ticks more, never before
        self.read_wait = read_timeout + self._tick
        self.idle_wait = idle_timeout + self._tick
        self._sweeper: asyncio.TimerHandle | None = None
        self._update_date()

    def connection_factory(self) -> _Connection:
        return _Connection(self)

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, sock: socket.socket | None = None
    ) -> int:
        bound = await super().start(host, port, sock)
        self._sweeper = asyncio.get_running_loop().call_later(self._tick, self._sweep)
        return bound

    async def stop(self, seconds: float) -> None:
        await super().stop(seconds)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _update_date(self) -> None:
        second = int(time.time())
        if second != self._date_second:
            self._date_second = second
            self.date = b"date: %s\r\n" % email.utils.formatdate(second, usegmt=True).encode()

    def _sweep(self) -> None:
        """Advances the clock and closes the connections past their deadline."""
        self.now = now = time.monotonic()
        self._update_date()
        for connection in list(self.connections):
            deadline = connection.deadline
            if deadline is not None and now >= deadline:
                connection.expire()
        self._sweeper = asyncio.get_running_loop().call_later(self._tick, self._sweep)


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection (the module docstring says what it does)."""

    def __init__(self, server: HttpServer):
        self.server = server
        self.handler = server.handler
        self.limit = server.limit
        self.budget = server.core.budget
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.closed = False
        self.going_away = False
        # the request being received
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_size = 0
        self.head_seen = 0  # bytes read while in one head, after the read it began in
        self.begun = 0  # requests begun
        self.body: list[bytes] = []
        self.size = 0
        # budget reserved for the body being received: its Content-Length, or what has
        # come of a chunked one
        self.reserved = 0
        self.receiving = False  # between a request's first byte and its end
        self.current: _Request | None = None  # after its head, until its end
        # requests whose answers are due, in order; the first may be running as a task
        self.queue: collections.deque[_Request] = collections.deque()
        self.deadline: float | None = server.now + server.read_wait
        self.idle = False  # the deadline is the keep-alive one (not counted when it passes)
        self.write_paused = False
        self.read_paused = False
        self.close_after = False  # what comes after the queued answers is not served

    # --- asyncio --------------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if not self.server.admit(self, transport):
            self.closed = True
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.forget(self)
        self._cancel()

    def busy(self) -> bool:
        return bool(self.queue) or self.current is not None

    def pause_writing(self) -> None:  # the peer does not read: stop reading it too
        self.write_paused = True
        self._reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._reading()

    def _reading(self) -> None:
        if self.closed:
            return
        queued = len(self.queue)
        if self.write_paused or queued > _MAX_QUEUED or (self.close_after and queued):
            if not self.read_paused:
                self.read_paused = True
                self.transport.pause_reading()
        elif self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.closed or self.close_after:
            return
        begun = self.begun
        try:
            self.parser.feed_data(data)
            if self.receiving and self.current is None and self.begun == begun:
                # still in the same head: httptools buffers a header until it ends, so
                # the bytes of a head are bounded here too, not only in its callbacks
                self.head_seen += len(data)
                if self.head_seen > MAX_HEAD_BYTES:
                    raise RequestHeadTooLargeError
        except httptools.HttpParserUpgrade:
            # the request was answered; what follows is another protocol's
            self._close_after_answers(None)
        except RequestHeadTooLargeError:
            self._close_after_answers(431, "the request's head is too large")
        except httptools.HttpParserCallbackError as e:
            if isinstance(e.__cause__ or e.__context__, RequestHeadTooLargeError):
                self._close_after_answers(431, "the request's head is too large")
            else:
                log.error("HTTP request parsing failed", exc_info=e)
                self._close_after_answers(500, "internal error")
        except httptools.HttpParserError as e:
            self._close_after_answers(400, f"Malformed HTTP request: {e}")

    # --- httptools' callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.receiving = True
        self.begun += 1
        self.head_seen = 0
        self.url = b""
        self.headers = []
        self.head_size = 0
        self.body = []
        self.size = 0
        if self.deadline is None or self.idle:
            self.idle = False
            self.deadline = self.server.now + self.server.read_wait

    def on_url(self, url: bytes) -> None:
        self.head_size += len(url)
        if self.head_size > MAX_HEAD_BYTES:
            raise RequestHeadTooLargeError
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value)
        if self.head_size > MAX_HEAD_BYTES or len(self.headers) >= MAX_HEADERS:
            raise RequestHeadTooLargeError
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        method = parser.get_method().decode("ascii")
        url = self.url
        if url[:1] == b"/":
            path = url.split(b"?", 1)[0].split(b"#", 1)[0]
        else:  # absolute form (or *)
            path = httptools.parse_url(url).path or b"/"
        text = path.decode("latin-1")
        if "%" in text:
            text = urllib.parse.unquote(text)
        declared = None
        expect = False
        for name, value in self.headers:
            if name == b"content-length":
                declared = int(value)  # httptools checked it is a number
            elif name == b"expect":
                expect = value.lower() == b"100-continue"
        request = HttpRequest(method, text, self.headers)
        keep_alive = parser.should_keep_alive() and not self.going_away
        self.current = current = _Request(request, keep_alive, method == "HEAD", expect)
        if declared:
            if declared > self.limit:
                request._error = too_large(self.limit, declared)
                self._enqueue(current)  # answered now; the body is dropped as it comes
                return
            # reserved before it is buffered (RequestBudget.reserve, inline: per request)
            budget = self.budget
            reserved = budget.reserved + declared
            if reserved > budget.limit or (
                declared > OFFLOAD_BYTES and reserved > budget.large_limit
            ):
                self._out_of_budget(current, declared, declared)
                return
            budget.reserved = reserved
            self.reserved = declared
        if expect and not self.queue:
            self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        current = self.current
        if current is None or current.request._error is not None:
            return  # dropped: the request was answered already
        self.size += len(body)
        if self.size > self.limit:
            self._unreserve()
            current.request._error = too_large(self.limit, None)
            self._enqueue(current)
            return
        if self.size > self.reserved:  # chunked: reserved as it grows
            if not self.budget.reserve(len(body), self.size):
                self._unreserve()
                self._out_of_budget(current, len(body), self.size)
                return
            self.reserved += len(body)
        self.body.append(body)

    def _out_of_budget(self, current: _Request, size: int, whole: int) -> None:
        """``size`` more bytes of the body (``whole`` bytes so far) cannot be buffered
        now: answered at once (503 with Retry-After, in the codec's shape) and dropped as
        it comes, as a body over the limit is."""
        message = self.budget.refusal("http", "request body", size, whole)
        current.request._error = ServingError(message, ErrorKind.UNAVAILABLE)
        self._enqueue(current)

    def _unreserve(self) -> None:
        """The body being received is dropped: its reservation is given back."""
        self.body = []
        if self.reserved:
            self.budget.release(self.reserved)
            self.reserved = 0

    def on_message_complete(self) -> None:
        current = self.current
        self.current = None
        self.receiving = False
        self.deadline = None
        if current is None:
            return
        current.complete = True
        if current.request._error is None:
            body = self.body
            current.request._body = body[0] if len(body) == 1 else b"".join(body)
            self.body = []
            current.reserved = self.reserved  # released when it is answered or dropped
            self.reserved = 0
            self._enqueue(current)
        elif current.answered and not current.keep_alive:
            self._linger()
        else:
            self._idle()

    # --- requests -------------------------------------------------------------------------

    def _enqueue(self, request: _Request) -> None:
        if self.closed or self.close_after:  # the parser goes on with what was read
            if request.reserved:  # dropped, as its body is
                self.budget.release(request.reserved)
                request.reserved = 0
            return
        queue = self.queue
        queue.append(request)
        if len(queue) == 1:
            self._run(request)
        elif len(queue) > _MAX_QUEUED:
            self._reading()

    def _run(self, request: _Request) -> None:
        """Runs a request's handler: answered inline, or when its task ends."""
        if request.fixed is not None:
            self._respond(request, request.fixed)
            return
        self.server.requests += 1
        try:
            answer, task = run_inline(
                self.handler(request.request), lambda t, r=request: self._completed(r, t)
            )
        except Exception as e:
            answer = self._internal(request, e)
        else:
            if task is not None:
                request.task = task
                return
        self._respond(request, answer)

    def _completed(self, request: _Request, task: asyncio.Task) -> None:
        if self.closed or request.answered:
            return
        if task.cancelled():
            answer = HttpAnswer(json.dumps({"error": "cancelled"}).encode(), 503)
        elif task.exception() is not None:
            answer = self._internal(request, task.exception())
        else:
            answer = task.result()
        self._respond(request, answer)

    def _internal(self, request: _Request, error: BaseException) -> HttpAnswer:
        log.error("%s %s failed", request.request.method, request.request.path, exc_info=error)
        body = json.dumps({"error": f"Internal error: {type(error).__name__}: {error}"})
        return HttpAnswer(body.encode(), 500)

    def _respond(self, request: _Request, answer: HttpAnswer) -> None:
        """Writes a request's answer (one write), then runs the next one due."""
        request.answered = True
        request.task = None
        if request.reserved:
            self.budget.reserved -= request.reserved  # RequestBudget.release, inline
            request.reserved = 0
        queue = self.queue
        queue.popleft()
        body = answer.body
        close = (
            not request.keep_alive
            or self.going_away
            or (request.expect and not request.complete)  # the body will not come
        )
        head = [
            _status_line(answer.status),
            b"content-type: %s\r\ncontent-length: %d\r\n" % (answer.content_type, len(body)),
        ]
        if answer.headers:
            head += [b"%s: %s\r\n" % header for header in answer.headers]
        head.append(self.server.date)
        if answer.status == 503 and request.request._error is not None:
            # the transport's errors are a body too large (413) or out of budget (503)
            head.append(_RETRY_AFTER)
        if close:
            head.append(_CLOSE)
        head.append(b"\r\n")
        if request.head:
            body = b""
        if len(body) < 65536:
            head.append(body)
            self.transport.write(b"".join(head))
        else:
            self.transport.writelines([b"".join(head), body])
        if self.server.access_log:
            peer = self.transport.get_extra_info("peername")
            log.info(
                '%s - "%s %s" %d',
                peer[0] if peer else "-",
                request.request.method,
                request.request.path,
                answer.status,
            )
        if close and (request.complete or request.expect):
            self._linger()
            return
        if queue:
            self._run(queue[0])
        elif self.close_after:
            self._linger()
            return
        else:
            self._idle()
        if self.read_paused:
            self._reading()

    def _idle(self) -> None:
        """Nothing is due: the keep-alive deadline runs (unless a request is coming)."""
        if self.going_away and not self.busy():
            self.close()
        elif not self.receiving and not self.queue:
            self.idle = True
            self.deadline = self.server.now + self.server.idle_wait

    def _close_after_answers(self, status: int | None, message: str = "") -> None:
        """The rest of the stream is not served: an error answer (if ``status``) in its
        turn after those due, then the connection closes."""
        self.close_after = True
        self.current = None
        self._unreserve()
        self.receiving = False
        self.deadline = None
        self._reading()
        if status is not None:
            request = _Request(HttpRequest("", "", []), False, False, False)
            request.complete = True
            request.fixed = HttpAnswer(json.dumps({"error": message}).encode(), status)
            self.queue.append(request)
            if len(self.queue) == 1:
                self._run(request)
        elif not self.queue:
            self._linger()

    def _linger(self) -> None:
        """Closes after the answers written, lingering: our side ends (FIN) and what the
        client still sends is read and dropped until it closes too, or for at most
        ``LINGER_S`` (closing on unread bytes would reset the connection, and the client's
        system would drop our answers before it reads them)."""
        if self.closed:
            return
        self.close_after = True
        self._cancel()
        if not self.transport.can_write_eof():
            self.close()
            return
        self.transport.write_eof()
        self.idle = True  # its passing is not a read timeout
        self.deadline = self.server.now + LINGER_S + self.server._tick
        if self.read_paused and not self.write_paused:
            self.read_paused = False
            self.transport.resume_reading()

    def expire(self) -> None:
        """The deadline passed: closed (counted, unless it was the keep-alive one)."""
        if self.closed:
            return
        if not self.idle:
            self.server.closed_counter.labels("read_timeout").inc()
            log.debug("HTTP connection closed: no whole request within the read timeout")
        self.close()

    # --- closing --------------------------------------------------------------------------

    def go_away(self) -> None:
        """Draining: closes now when idle, else after the answers in flight."""
        self.going_away = True
        if not self.closed and not self.busy():
            self.close()

    def _cancel(self) -> None:
        """Drops every request of the connection (and the body being received)."""
        for request in self.queue:
            if request.task is not None and not request.task.done():
                request.task.cancel()
            if request.reserved:
                self.budget.release(request.reserved)
                request.reserved = 0
        self.queue.clear()
        self._unreserve()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.deadline = None
            self._cancel()
            self.transport.close()
