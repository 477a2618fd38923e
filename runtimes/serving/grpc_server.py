"""The gRPC transport: HTTP/2 on the server's event loop, a codec per service.

Each gRPC codec declares its methods (``GrpcMethod``: full path, request and response
types, handler, metrics api name); ``GrpcServer`` serves every codec's methods at
``--grpc-port`` on the event loop the HTTP server runs on, and a call runs the way a
REST request runs: inline on the loop, through the version's batcher, sequences on the
same loop, no thread crossing.

The transport is HTTP/2 cleartext with prior knowledge (what grpc clients use for
insecure channels), a frame layer of our own for the hot path, with header blocks
decoded by ``hpack``. Measured (benchmarks/serve_bench.py ``--echoes``): a bare echo on
it spends ~45 us of CPU a call against ~200 us on the ``h2`` library and ~230-400 us on
grpcio's server (its poller and pool threads), and its p50 is below our REST's.

What it does, as grpc servers do:

* HTTP/2: the client preface, SETTINGS (MAX_CONCURRENT_STREAMS, MAX_HEADER_LIST_SIZE,
  INITIAL_WINDOW_SIZE, all bounded), PING acks (grpc-core's BDP pings), flow control
  both ways (an answer waits for the peer's windows), RST_STREAM (cancels the call),
  GOAWAY (sent on drain; a protocol error closes that connection only).
* gRPC: ``content-type: application/grpc`` (else HTTP 415), ``grpc-encoding`` other
  than identity or a compressed message is UNIMPLEMENTED / INTERNAL, a message's
  length prefix is checked against ``--max-body-bytes`` and reserved from the
  server's request-memory budget (``core.RequestBudget``, ``--max-buffered-bytes``,
  shared with the HTTP port) before it is buffered (RESOURCE_EXHAUSTED on that stream
  when it does not fit, counted in the metrics; given back when the call ends, is
  reset or cancelled, or its connection closes), unknown methods are UNIMPLEMENTED,
  ``grpc-timeout`` is honoured (DEADLINE_EXCEEDED), errors are trailers-only answers
  with ``grpc-status`` and a percent-encoded ``grpc-message``.
* Bounds, as the HTTP port's: at most ``--max-connections`` open connections (at the
  limit a new one takes the place of the longest-idle one without calls in progress,
  which gets GOAWAY; with none idle the new one is closed); ``--read-timeout-seconds``
  for the client preface once a connection opens and for each request's whole message
  once its headers come (else the connection closes, counted ``read_timeout``); per
  connection, the bytes the peer may send before its calls are answered are bounded by
  the connection window we grant (we grant more only as buffered requests are answered
  or dropped), and our answers stop being produced while the socket's write buffer is
  full; across connections, by the request budget above.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import hpack
import hpack.exceptions

from runtimes.serving.core import OFFLOAD_BYTES, ServingCore
from runtimes.serving.transport import Listener, run_inline
from toolkit.errors import ConnectionProtocolError, ErrorKind, ServingError, ToolkitError

__all__ = [
    "MAX_CONCURRENT_STREAMS",
    "MAX_CONNECTIONS",
    "GrpcCodec",
    "GrpcMethod",
    "GrpcServer",
    "build_server",
]

log = logging.getLogger("policy_toolkit.serve")

#: calls in progress at once on one connection (more are refused: REFUSED_STREAM)
MAX_CONCURRENT_STREAMS = 100
#: open gRPC connections by default (the server passes ``--max-connections``)
MAX_CONNECTIONS = 1024
#: seconds for a preface, or a request's message after its headers, by default (the
#: server passes ``--read-timeout-seconds``)
READ_TIMEOUT_S = 5.0
#: a request's header block, decoded (more: the connection is closed)
MAX_HEADER_LIST_SIZE = 16 << 10
#: the largest frame we accept (HTTP/2's default, which we do not raise)
MAX_FRAME_SIZE = 16384

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_HEAD = struct.Struct(">IBI")  # length (3 bytes) + type, flags, stream id
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE = range(9)
CONTINUATION = 9
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
# HTTP/2 error codes
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL = 0x5, 0x6, 0x7, 0x8
COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x9, 0xB


class GrpcMethod(NamedTuple):
    """One unary method of a gRPC codec.

    Attributes:
      path: ``/package.Service/Method``.
      request_type: the request message class.
      response_type: the response message class.
      handler: ``request -> (response | its bytes, model)``, or a coroutine of that;
        raises ServingError (or ToolkitError: invalid argument).
      api: the metrics' api label.
      model_of: ``request -> model name | None`` (the metrics of a call that fails).
    """

    path: str
    request_type: Any
    response_type: Any
    handler: Callable[[Any], Any]
    api: str
    model_of: Callable[[Any], str | None]


class GrpcCodec(Protocol):
    """A protocol over gRPC (one module per protocol; runtimes.serving.protocols)."""

    #: the protocol's name: the ``protocol`` label of the metrics
    name: str

    def methods(self) -> list[GrpcMethod]:
        """The protocol's methods."""


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload
    )


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """A header as an HPACK literal without indexing (no encoder state to keep)."""
    return b"\x00" + _hpack_int(len(name), 7) + name + _hpack_int(len(value), 7) + value


_STATUS_200 = b"\x88"  # the static table's :status 200
_CONTENT_TYPE = _literal(b"content-type", b"application/grpc")
_RESPONSE_HEAD = _STATUS_200 + _CONTENT_TYPE
_OK_TRAILERS = _literal(b"grpc-status", b"0")
_SETTINGS_ACK = _frame(SETTINGS, ACK, 0)


def _trailers(code: int, message: str, extra: bytes = b"") -> bytes:
    """A trailers block: grpc-status and grpc-message, percent-encoded as gRPC says."""
    text = urllib.parse.quote(message[:2048], safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")
    return (
        _literal(b"grpc-status", str(code).encode())
        + _literal(b"grpc-message", text.encode())
        + extra
    )


def _parse_timeout(value: bytes) -> float | None:
    """``grpc-timeout`` (1-8 digits and a unit) in seconds; None when malformed."""
    units = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
    digits, unit = value[:-1], value[-1:]
    if not digits.isdigit() or len(digits) > 8 or unit not in units:
        return None
    return int(digits) * units[unit]


class _Stream:
    """One call: its method, the request's bytes as they come, its task, its answer."""

    __slots__ = (
        "body",
        "buffered",
        "deadline",
        "done",
        "ended",
        "expected",
        "id",
        "method",
        "pending",
        "protocol",
        "refused",
        "reserved",
        "stall",
        "started",
        "task",
        "window",
    )

    def __init__(self, stream_id: int, window: int):
        self.id = stream_id
        self.method: GrpcMethod | None = None
        self.protocol = ""
        self.body: list[bytes] = []
        self.buffered = 0  # bytes in body (released to the connection window when done)
        self.expected = -1  # the message's length, once its prefix is in
        self.refused = False  # answered early: what else comes is dropped
        self.reserved = 0  # bytes reserved from the server's budget (from its prefix)
        self.done = False  # answered (or reset): the stream only waits to be dropped
        self.ended = False  # the peer's END_STREAM came: nothing more may come on it
        self.task: asyncio.Task | None = None
        self.deadline: asyncio.TimerHandle | None = None
        self.stall: asyncio.TimerHandle | None = None  # the read timeout of its message
        self.window = window  # what we may send on it
        self.pending: list[Any] = []  # an answer waiting for the peer's windows
        self.started = time.perf_counter()


class GrpcServer(Listener):
    """Every codec's methods over HTTP/2 on the running event loop (module docstring)."""

    what = "gRPC"

    def __init__(
        self,
        core: ServingCore,
        codecs: list[GrpcCodec],
        max_connections: int = MAX_CONNECTIONS,
        read_timeout: float = READ_TIMEOUT_S,
    ):
        super().__init__(core, max_connections, read_timeout)
        self.methods: dict[str, tuple[str, GrpcMethod]] = {}
        for codec in codecs:
            for method in codec.methods():
                self.methods[method.path] = (codec.name, method)

    def connection_factory(self) -> _Connection:
        return _Connection(self)


class _Connection(asyncio.Protocol):
    """One HTTP/2 connection (the module docstring says what it does)."""

    def __init__(self, server: GrpcServer):
        self.server = server
        self.observe = server.core.observe
        self.limit = server.limit
        self.budget = server.core.budget
        # the window each stream grants the peer: a whole message up to the limit
        self.stream_window = min(self.limit + 5, (1 << 31) - 1)
        # the connection window: bounds what the peer may have sent and we still buffer
        # (twice a whole message: what is released but not yet granted back, under a
        # quarter of it, never holds a message up)
        self.connection_window = min(max(2 * self.stream_window, 1 << 20), (1 << 31) - 1)
        self.transport: Any = None
        self.buffer = b""
        self.preface = False
        self.decoder = hpack.Decoder(max_header_list_size=MAX_HEADER_LIST_SIZE)
        self.header_cache: dict[bytes, tuple] = {}
        self.streams: dict[int, _Stream] = {}
        self.last_stream = 0
        self.received = 0  # DATA bytes the peer sent against our connection window
        self.released = 0  # of those, answered or dropped, not yet granted back
        self.send_window = 65535  # what we may send on the connection
        self.peer_window = 65535  # the peer's INITIAL_WINDOW_SIZE (for new streams)
        self.peer_frame = 16384  # the peer's MAX_FRAME_SIZE
        self.continuation: tuple[int, int, list[bytes]] | None = None
        self.going_away = False
        self.closed = False
        self.paused = False
        self.blocked: list[_Stream] = []  # streams with answers waiting for windows
        # streams whose headers came without their message in this read: their read
        # timeout is armed when the read is done (a client's headers and message
        # usually come in one read, and then no timer is made and cancelled per call)
        self.unarmed: list[_Stream] = []
        self.timer: asyncio.TimerHandle | None = None  # the preface's read timeout

    # --- asyncio --------------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        server = self.server
        if not server.admit(self, transport):
            self.closed = True
            return
        self.timer = asyncio.get_running_loop().call_later(
            server.read_timeout, self._timed_out, "no HTTP/2 preface"
        )
        settings = struct.pack(
            ">HIHIHI",
            0x3,  # MAX_CONCURRENT_STREAMS
            MAX_CONCURRENT_STREAMS,
            0x4,  # INITIAL_WINDOW_SIZE
            self.stream_window,
            0x6,  # MAX_HEADER_LIST_SIZE
            MAX_HEADER_LIST_SIZE,
        )
        grant = struct.pack(">I", self.connection_window - 65535)
        transport.write(_frame(SETTINGS, 0, 0, settings) + _frame(WINDOW_UPDATE, 0, 0, grant))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.forget(self)
        if self.timer is not None:
            self.timer.cancel()
        for stream in self.streams.values():
            self._cancel(stream)
        self.streams.clear()

    def busy(self) -> bool:
        return bool(self.streams)

    def pause_writing(self) -> None:  # the peer does not read: stop reading it too
        self.paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if not self.closed:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            out = self._receive(data)
        except ConnectionProtocolError as e:
            log.debug("gRPC connection closed: %s", e)
            self._close_with(e.code, str(e))
            return
        if out:
            self.transport.write(b"".join(out))

    # --- frames in ------------------------------------------------------------------------

    def _receive(self, data: bytes) -> list[bytes]:
        buffer = self.buffer + data if self.buffer else data
        if not self.preface:
            if len(buffer) < 24:
                if not _PREFACE.startswith(buffer):
                    raise ConnectionProtocolError(PROTOCOL_ERROR, "not an HTTP/2 client preface")
                self.buffer = buffer
                return []
            if buffer[:24] != _PREFACE:
                raise ConnectionProtocolError(PROTOCOL_ERROR, "not an HTTP/2 client preface")
            self.preface = True
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            buffer = buffer[24:]
        out: list[bytes] = []
        pos, end = 0, len(buffer)
        unpack = _HEAD.unpack_from
        while end - pos >= 9:
            word, flags, stream_id = unpack(buffer, pos)
            length, kind = word >> 8, word & 0xFF
            if length > MAX_FRAME_SIZE:
                raise ConnectionProtocolError(FRAME_SIZE_ERROR, f"a frame of {length} bytes")
            if end - pos - 9 < length:
                break
            payload = buffer[pos + 9 : pos + 9 + length]
            pos += 9 + length
            stream_id &= 0x7FFFFFFF
            if self.continuation is not None and kind != CONTINUATION:
                raise ConnectionProtocolError(PROTOCOL_ERROR, "expected a CONTINUATION frame")
            if kind == DATA:
                self._data(stream_id, flags, payload, out)
            elif kind == HEADERS:
                self._headers(stream_id, flags, payload, out)
            elif kind == CONTINUATION:
                self._continuation(stream_id, flags, payload, out)
            elif kind == SETTINGS:
                self._settings(stream_id, flags, payload, out)
            elif kind == PING:
                if stream_id or length != 8:
                    raise ConnectionProtocolError(PROTOCOL_ERROR, "a bad PING frame")
                if not flags & ACK:
                    out.append(_frame(PING, ACK, 0, payload))
            elif kind == WINDOW_UPDATE:
                self._window_update(stream_id, payload, out)
            elif kind == RST_STREAM:
                if not stream_id or length != 4:
                    raise ConnectionProtocolError(PROTOCOL_ERROR, "a bad RST_STREAM frame")
                stream = self.streams.pop(stream_id, None)
                if stream is not None:
                    self._cancel(stream)
                    self._release(stream)
            elif kind == GOAWAY:
                self.going_away = True
                if not self.streams:
                    self.closed = True
                    self.transport.close()
                    return out
            elif kind == PUSH_PROMISE:
                raise ConnectionProtocolError(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
            elif kind == PRIORITY and (length != 5 or not stream_id):
                raise ConnectionProtocolError(PROTOCOL_ERROR, "a bad PRIORITY frame")
            # other frame types are ignored, as HTTP/2 says
        self.buffer = buffer[pos:]
        if self.unarmed:
            self._arm()
        self._grant(out)
        return out

    def _arm(self) -> None:
        """Arms the read timeout of the streams still waiting for their message."""
        loop = asyncio.get_running_loop()
        for stream in self.unarmed:
            if not (stream.ended or stream.done or self.closed) and stream.stall is None:
                stream.stall = loop.call_later(
                    self.server.read_timeout,
                    self._timed_out,
                    f"stream {stream.id}: no whole request",
                )
        self.unarmed.clear()

    def _grant(self, out: list[bytes]) -> None:
        """Gives the peer back connection window for what left our buffers."""
        if self.released >= self.connection_window // 4:
            out.append(_frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.released)))
            self.received -= self.released
            self.released = 0

    def _release(self, stream: _Stream) -> None:
        self.released += stream.buffered
        stream.buffered = 0
        stream.body = []

    def _strip(self, flags: int, payload: bytes) -> bytes:
        if flags & PADDED:
            if not payload or payload[0] >= len(payload):
                raise ConnectionProtocolError(PROTOCOL_ERROR, "padding longer than its frame")
            payload = payload[1 : len(payload) - payload[0]]
        return payload

    def _data(self, stream_id: int, flags: int, payload: bytes, out: list[bytes]) -> None:
        if not stream_id:
            raise ConnectionProtocolError(PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        self.received += size
        if self.received > self.connection_window:
            raise ConnectionProtocolError(FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        stream = self.streams.get(stream_id)
        if stream is not None and stream.ended and not stream.done:
            # half-closed by the peer (a call waiting: batching, a sequence); taken as a
            # connection error, as HTTP/2 allows, so no request runs twice
            raise ConnectionProtocolError(
                STREAM_CLOSED, f"DATA on stream {stream_id} after its end"
            )
        if stream is None or stream.done or stream.refused:
            self.released += size  # dropped: the window comes back
            if stream is None and stream_id > self.last_stream:
                raise ConnectionProtocolError(PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            return
        data = self._strip(flags, payload)
        self.released += size - len(data)
        if data:
            stream.body.append(data)
            stream.buffered += len(data)
            if stream.buffered > self.stream_window:
                raise ConnectionProtocolError(FLOW_CONTROL_ERROR, "DATA beyond the stream window")
            if not self._check_prefix(stream, out):
                return
        if flags & END_STREAM:
            self._dispatch(stream, out)

    def _check_prefix(self, stream: _Stream, out: list[bytes]) -> bool:
        """Checks a message's length prefix as soon as it is in, before buffering the
        message (RESOURCE_EXHAUSTED beyond --max-body-bytes); False when refused."""
        if stream.expected >= 0:
            if stream.buffered > 5 + stream.expected:
                self._refuse(stream, ErrorKind.UNIMPLEMENTED, "a unary call with two messages", out)
                return False
            return True
        if stream.buffered < 5:
            return True
        head = b"".join(stream.body)[:5] if len(stream.body[0]) < 5 else stream.body[0][:5]
        compressed, length = head[0], int.from_bytes(head[1:5], "big")
        if compressed:
            self._refuse(
                stream, ErrorKind.INTERNAL, "a compressed message, but no grpc-encoding", out
            )
            return False
        if length > self.limit:
            self._refuse(
                stream,
                ErrorKind.RESOURCE_EXHAUSTED,
                f"request message: expected at most {self.limit} bytes (the server's "
                f"--max-body-bytes), got {length}",
                out,
            )
            return False
        # the whole message is reserved from the budget before it is buffered (the
        # prefix's 5 bytes are in, at most 4 more of a frame buffered before it came)
        budget = self.budget
        reserved = budget.reserved + length + 5  # RequestBudget.reserve, inline
        if reserved > budget.limit or (length > OFFLOAD_BYTES and reserved > budget.large_limit):
            message = budget.refusal("grpc", "request message", length, length)
            self._refuse(stream, ErrorKind.RESOURCE_EXHAUSTED, message, out)
            return False
        budget.reserved = reserved
        stream.reserved = length + 5
        stream.expected = length
        return self._check_prefix(stream, out)

    def _headers(self, stream_id: int, flags: int, payload: bytes, out: list[bytes]) -> None:
        if not stream_id or not stream_id & 1:
            raise ConnectionProtocolError(PROTOCOL_ERROR, f"HEADERS on stream {stream_id}")
        payload = self._strip(flags, payload)
        if flags & PRIORITY_FLAG:
            if len(payload) < 5:
                raise ConnectionProtocolError(PROTOCOL_ERROR, "a short HEADERS frame")
            payload = payload[5:]
        if not flags & END_HEADERS:
            self.continuation = (stream_id, flags, [payload])
            return
        self._header_block(stream_id, flags, payload, out)

    def _continuation(self, stream_id: int, flags: int, payload: bytes, out: list[bytes]) -> None:
        if self.continuation is None or self.continuation[0] != stream_id:
            raise ConnectionProtocolError(PROTOCOL_ERROR, "an unexpected CONTINUATION frame")
        parts = self.continuation[2]
        parts.append(payload)
        if sum(map(len, parts)) > MAX_HEADER_LIST_SIZE:
            raise ConnectionProtocolError(ENHANCE_YOUR_CALM, "a header block too large")
        if flags & END_HEADERS:
            first_flags = self.continuation[1]
            self.continuation = None
            self._header_block(stream_id, first_flags, b"".join(parts), out)

    def _header_block(self, stream_id: int, flags: int, block: bytes, out: list[bytes]) -> None:
        fields = self.header_cache.get(block)
        if fields is None:
            fields = self._decode(block)
        existing = self.streams.get(stream_id)
        if existing is not None:  # trailers of a request: only an end of stream
            if not flags & END_STREAM:
                raise ConnectionProtocolError(PROTOCOL_ERROR, "trailers without END_STREAM")
            if existing.ended:
                raise ConnectionProtocolError(
                    STREAM_CLOSED, f"HEADERS on stream {stream_id} after its end"
                )
            if not existing.done and not existing.refused:
                self._dispatch(existing, out)
            return
        if stream_id <= self.last_stream:
            raise ConnectionProtocolError(STREAM_CLOSED, f"HEADERS on closed stream {stream_id}")
        self.last_stream = stream_id
        if self.going_away or self.server.draining:
            out.append(_frame(RST_STREAM, 0, stream_id, struct.pack(">I", REFUSED_STREAM)))
            return
        if len(self.streams) >= MAX_CONCURRENT_STREAMS:
            out.append(_frame(RST_STREAM, 0, stream_id, struct.pack(">I", REFUSED_STREAM)))
            return
        stream = _Stream(stream_id, self.peer_window)
        self.streams[stream_id] = stream
        if not flags & END_STREAM:  # its message must come within the read timeout
            self.unarmed.append(stream)
        path, content_type, method, encoding, timeout = fields
        if content_type is None or not (
            content_type == b"application/grpc"
            or content_type.startswith(b"application/grpc+")
            or content_type.startswith(b"application/grpc;")
        ):
            # as grpc servers refuse a non-gRPC request: HTTP 415, no gRPC status
            block = b"\x00\x07:status\x03415"
            out.append(_frame(HEADERS, END_HEADERS | END_STREAM, stream_id, block))
            self._finish(stream)
            return
        name = path.decode("utf-8", "replace") if path else ""
        found = self.server.methods.get(name)
        if found is None or method != b"POST":
            shown = name
            self._refuse(stream, ErrorKind.UNIMPLEMENTED, f"Method not found: {shown}", out)
            return
        stream.protocol, stream.method = found
        if encoding is not None and encoding != b"identity":
            extra = _literal(b"grpc-accept-encoding", b"identity")
            self._refuse(
                stream,
                ErrorKind.UNIMPLEMENTED,
                f"grpc-encoding {encoding.decode('latin-1')}: not supported (identity only)",
                out,
                extra,
            )
            return
        if timeout is not None:
            seconds = _parse_timeout(timeout)
            if seconds is not None:
                loop = asyncio.get_running_loop()
                stream.deadline = loop.call_later(seconds, self._expire, stream)
        if flags & END_STREAM:
            self._dispatch(stream, out)

    def _decode(self, block: bytes) -> tuple:
        """A header block's fields we read: (path, content-type, method, grpc-encoding,
        grpc-timeout). A grpc client sends the same block, all indexed, for every call
        after its first few: a block that left HPACK's dynamic table as it was decodes
        the same while the table stays so, and is kept (the cache is dropped when the
        table changes)."""
        table = self.decoder.header_table
        entries = table.dynamic_entries
        before = (len(entries), entries[0] if entries else None, table.maxsize)
        try:
            headers = self.decoder.decode(block, raw=True)
        except hpack.exceptions.OversizedHeaderListError:
            raise ConnectionProtocolError(ENHANCE_YOUR_CALM, "a header list too large") from None
        except Exception as e:  # HPACK's state is lost: the connection cannot go on
            raise ConnectionProtocolError(COMPRESSION_ERROR, f"a bad header block ({e})") from None
        path = content_type = method = encoding = timeout = None
        for name, value in headers:
            if name == b":path":
                path = value
            elif name == b"content-type":
                content_type = value
            elif name == b":method":
                method = value
            elif name == b"grpc-encoding":
                encoding = value
            elif name == b"grpc-timeout":
                timeout = value
        fields = (path, content_type, method, encoding, timeout)
        cache = self.header_cache
        if (
            before[0] == len(entries)
            and (not entries or entries[0] is before[1])
            and (before[2] == table.maxsize)
        ):
            if len(cache) >= 32:
                cache.clear()
            cache[block] = fields
        elif cache:
            cache.clear()
        return fields

    def _settings(self, stream_id: int, flags: int, payload: bytes, out: list[bytes]) -> None:
        if stream_id:
            raise ConnectionProtocolError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            return
        if len(payload) % 6:
            raise ConnectionProtocolError(FRAME_SIZE_ERROR, "a SETTINGS frame of a bad length")
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            if key == 0x4:  # INITIAL_WINDOW_SIZE: applies to open streams too
                if value > (1 << 31) - 1:
                    raise ConnectionProtocolError(
                        FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE too large"
                    )
                delta = value - self.peer_window
                self.peer_window = value
                for stream in self.streams.values():
                    stream.window += delta
            elif key == 0x5:  # MAX_FRAME_SIZE
                if not 16384 <= value <= (1 << 24) - 1:
                    raise ConnectionProtocolError(PROTOCOL_ERROR, "a bad MAX_FRAME_SIZE")
                self.peer_frame = value
        out.append(_SETTINGS_ACK)
        self._flush(out)

    def _window_update(self, stream_id: int, payload: bytes, out: list[bytes]) -> None:
        if len(payload) != 4:
            raise ConnectionProtocolError(FRAME_SIZE_ERROR, "a WINDOW_UPDATE frame of a bad length")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if not increment:
            raise ConnectionProtocolError(PROTOCOL_ERROR, "a WINDOW_UPDATE of 0")
        if not stream_id:
            self.send_window += increment
            if self.send_window > (1 << 31) - 1:
                raise ConnectionProtocolError(
                    FLOW_CONTROL_ERROR, "the connection window overflowed"
                )
        else:
            stream = self.streams.get(stream_id)
            if stream is None:
                return
            stream.window += increment
        self._flush(out)

    # --- calls ----------------------------------------------------------------------------

    def _dispatch(self, stream: _Stream, out: list[bytes]) -> None:
        """The request is whole: decodes it and runs its handler (inline, or as a task
        when it awaits: batching, sequences)."""
        stream.ended = True
        if stream.stall is not None:
            stream.stall.cancel()
            stream.stall = None
        body = stream.body[0] if len(stream.body) == 1 else b"".join(stream.body)
        self._release(stream)
        if stream.method is None:
            return
        if len(body) < 5 or int.from_bytes(body[1:5], "big") != len(body) - 5:
            self._refuse(stream, ErrorKind.INTERNAL, "a request message cut short", out)
            return
        method = stream.method
        try:
            request = method.request_type.FromString(body[5:])
        except Exception:
            self._refuse(stream, ErrorKind.INTERNAL, "the request message does not parse", out)
            return
        try:
            answer = method.handler(request)
            if asyncio.iscoroutine(answer):
                answer, task = run_inline(
                    answer, lambda t, s=stream, r=request: self._completed(s, r, t)
                )
                if task is not None:
                    stream.task = task
                    return
        except Exception as e:  # mapped to the call's status
            self._failed(stream, request, e, out)
            return
        self._answer(stream, request, answer, out)

    def _completed(self, stream: _Stream, request: Any, task: asyncio.Task) -> None:
        if stream.done or self.closed:
            return
        out: list[bytes] = []
        if task.cancelled():
            self._failed(stream, request, ServingError("cancelled", ErrorKind.CANCELLED), out)
        else:
            error = task.exception()
            if error is not None:
                self._failed(stream, request, error, out)
            else:
                self._answer(stream, request, task.result(), out)
        self._grant(out)
        if out:
            self.transport.write(b"".join(out))

    def _answer(self, stream: _Stream, request: Any, answer: Any, out: list[bytes]) -> None:
        try:
            response, model = answer
            data = response if response.__class__ is bytes else response.SerializeToString()
        except Exception as e:  # a handler's bad answer: INTERNAL, not a hung call
            self._failed(stream, request, e, out)
            return
        method = stream.method
        self.observe(
            stream.protocol, model, method.api, "OK", time.perf_counter() - stream.started, False
        )
        message = b"\x00" + len(data).to_bytes(4, "big") + data
        sid = stream.id
        if (
            len(message) <= stream.window
            and len(message) <= self.send_window
            and len(message) <= self.peer_frame
            and not self.blocked
        ):  # the common case: one write of the three frames
            stream.window -= len(message)
            self.send_window -= len(message)
            out.append(
                _frame(HEADERS, END_HEADERS, sid, _RESPONSE_HEAD)
                + _frame(DATA, 0, sid, message)
                + _frame(HEADERS, END_HEADERS | END_STREAM, sid, _OK_TRAILERS)
            )
            self._finish(stream)
            return
        out.append(_frame(HEADERS, END_HEADERS, sid, _RESPONSE_HEAD))
        stream.pending = [memoryview(message), 0]
        stream.done = True
        self.blocked.append(stream)
        self._flush(out)

    def _flush(self, out: list[bytes]) -> None:
        """Sends what the peer's windows let through of answers waiting for them."""
        while self.blocked and self.send_window > 0:
            stream = self.blocked[0]
            view, offset = stream.pending
            while offset < len(view):
                size = min(len(view) - offset, stream.window, self.send_window, self.peer_frame)
                if size <= 0:
                    break
                out.append(_frame(DATA, 0, stream.id, bytes(view[offset : offset + size])))
                offset += size
                stream.window -= size
                self.send_window -= size
            stream.pending[1] = offset
            if offset < len(view):
                if stream.window <= 0 and self.send_window > 0 and len(self.blocked) > 1:
                    self.blocked.append(self.blocked.pop(0))  # another stream may go on
                    if all(s.window <= 0 for s in self.blocked):
                        return
                    continue
                return
            self.blocked.pop(0)
            out.append(_frame(HEADERS, END_HEADERS | END_STREAM, stream.id, _OK_TRAILERS))
            stream.pending = []
            self._finish(stream)

    def _failed(self, stream: _Stream, request: Any, error: BaseException, out: list) -> None:
        if isinstance(error, ServingError):
            kind, message = error.kind, str(error)
        elif isinstance(error, ToolkitError):  # the policy refused the inputs
            kind, message = ErrorKind.INVALID_ARGUMENT, str(error)
        else:
            log.error("gRPC %s failed", stream.method.api, exc_info=error)
            kind = ErrorKind.INTERNAL
            message = f"Internal error: {type(error).__name__}: {error}"
        model = None
        with contextlib.suppress(Exception):  # the metrics' label only
            model = stream.method.model_of(request)
        self._refuse(stream, kind, message, out, model=model)

    def _refuse(
        self,
        stream: _Stream,
        kind: ErrorKind,
        message: str,
        out: list[bytes],
        extra: bytes = b"",
        model: str | None = None,
    ) -> None:
        """A trailers-only answer with the error's status; the call is counted."""
        if stream.method is not None:
            self.observe(
                stream.protocol,
                model,
                stream.method.api,
                kind.name,
                time.perf_counter() - stream.started,
                True,
            )
        block = _RESPONSE_HEAD + _trailers(int(kind), message, extra)
        out.append(self._header_frames(stream.id, block))
        stream.refused = True
        self._release(stream)
        self._finish(stream)

    def _header_frames(self, stream_id: int, block: bytes) -> bytes:
        """A header block that ends the stream, in HEADERS + CONTINUATION frames."""
        size = self.peer_frame
        if len(block) <= size:
            return _frame(HEADERS, END_HEADERS | END_STREAM, stream_id, block)
        parts = [block[i : i + size] for i in range(0, len(block), size)]
        frames = [_frame(HEADERS, END_STREAM, stream_id, parts[0])]
        frames += [_frame(CONTINUATION, 0, stream_id, p) for p in parts[1:-1]]
        frames.append(_frame(CONTINUATION, END_HEADERS, stream_id, parts[-1]))
        return b"".join(frames)

    def _finish(self, stream: _Stream) -> None:
        stream.done = True
        _cancel_timers(stream)
        self._release(stream)
        if stream.reserved:
            self.budget.reserved -= stream.reserved  # RequestBudget.release, inline
            stream.reserved = 0
        self.streams.pop(stream.id, None)
        if self.going_away and not self.streams and not self.closed:
            # after the caller has written this stream's last frames
            asyncio.get_running_loop().call_soon(self._close_if_idle)

    def _close_if_idle(self) -> None:
        if not self.streams:
            self.close()

    def _cancel(self, stream: _Stream) -> None:
        stream.done = True
        _cancel_timers(stream)
        if stream.reserved:
            self.budget.release(stream.reserved)
            stream.reserved = 0
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()
        if stream in self.blocked:
            self.blocked.remove(stream)

    def _expire(self, stream: _Stream) -> None:
        """grpc-timeout passed: DEADLINE_EXCEEDED, the call cancelled."""
        stream.deadline = None
        if stream.done or self.closed or stream.id not in self.streams:
            return
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()
        out: list[bytes] = []
        if stream in self.blocked:
            self.blocked.remove(stream)
            out.append(_frame(RST_STREAM, 0, stream.id, struct.pack(">I", CANCEL)))
            self._finish(stream)
        else:
            self._refuse(stream, ErrorKind.DEADLINE_EXCEEDED, "Deadline Exceeded", out)
        self._grant(out)
        self.transport.write(b"".join(out))

    def _timed_out(self, what: str) -> None:
        """The read timeout passed (a preface, or a request's message): as the HTTP port
        does with a slow request, the connection closes."""
        if self.closed:
            return
        self.server.closed_counter.labels("read_timeout").inc()
        log.debug("gRPC connection closed: %s within the read timeout", what)
        self._close_with(NO_ERROR, f"{what} within {self.server.read_timeout:g} s")

    # --- closing --------------------------------------------------------------------------

    def go_away(self) -> None:
        """GOAWAY: no new calls; the connection closes when its calls are answered."""
        if self.closed or self.going_away:
            return
        self.going_away = True
        payload = struct.pack(">II", self.last_stream, NO_ERROR)
        self.transport.write(_frame(GOAWAY, 0, 0, payload))
        if not self.streams:
            self.close()

    def _close_with(self, code: int, message: str) -> None:
        payload = struct.pack(">II", self.last_stream, code) + message.encode()[:256]
        self.transport.write(_frame(GOAWAY, 0, 0, payload))
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for stream in self.streams.values():
                self._cancel(stream)
            self.streams.clear()
            self.transport.close()


def _cancel_timers(stream: _Stream) -> None:
    for timer in (stream.deadline, stream.stall):
        if timer is not None:
            timer.cancel()
    stream.deadline = stream.stall = None


async def build_server(
    core: ServingCore,
    codecs: list[GrpcCodec],
    host: str,
    port: int,
    *,
    max_connections: int = MAX_CONNECTIONS,
    read_timeout: float = READ_TIMEOUT_S,
) -> tuple[GrpcServer, int]:
    """A gRPC server with every codec's methods, listening: (server, port).

    Raises:
      ServingError: when the address cannot be bound.
    """
    server = GrpcServer(core, codecs, max_connections, read_timeout)
    bound = await server.start(host, port)
    return server, bound
