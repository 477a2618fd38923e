"""Running the policy server: uvicorn over the HTTP protocols, on the serving core.

``run(options)`` builds the core (``runtimes.serving.core``), loads every model's
versions, binds the socket, serves every HTTP protocol of ``runtimes.serving.protocols``
until SIGTERM or SIGINT, then stops accepting, lets requests in flight finish (at most
``graceful_seconds``) and returns 0. Connections are bounded in number
(``max_connections``; more are closed at once) and in patience: one that has not
delivered a whole request ``read_timeout_seconds`` after it opened, or after its
request began, is closed (idle keep-alive connections close after uvicorn's 5 s). The
access log is off unless asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn

from runtimes.serving import protocols
from runtimes.serving.core import CoreOptions, ServingCore, build_core, check_backend
from runtimes.serving.http import build_app
from runtimes.serving.metrics import ServerMetrics
from runtimes.serving.models import is_bundle
from toolkit.errors import ServingError

__all__ = ["LOG_LEVELS", "ServeOptions", "run"]

log = logging.getLogger("policy_toolkit.serve")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


@dataclasses.dataclass
class ServeOptions(CoreOptions):
    """What ``policy-toolkit serve`` was asked for (see its --help): the core's options
    and the HTTP server's."""

    host: str = "127.0.0.1"
    port: int = 8501
    log_level: str = "info"
    access_log: bool = False
    graceful_seconds: float = 4.0
    #: seconds a connection may take to deliver a whole request (from its opening, or
    #: from the request's first byte)
    read_timeout_seconds: float = 5.0
    #: open connections at most; more are closed as they come
    max_connections: int = 1024
    #: the gRPC port (None: no gRPC)
    grpc_port: int | None = None


def _protocol_class(options: ServeOptions, metrics: ServerMetrics) -> Any:
    """uvicorn's HTTP protocol with TCP_NODELAY, a connection limit and a read timeout.

    TCP_NODELAY: uvicorn leaves it to the event loop; uvloop and asyncio set it, and
    doing it here keeps that true whatever loop runs. Measured with it turned off:
    uvicorn writes the head and the body of an answer apart, Nagle's algorithm holds
    the body until the client's delayed ACK, and one client's p50 went from 0.3 ms to
    44 ms. The read timeout needs httptools' parser callbacks; without httptools (the
    pure-Python h11 parser) only the connection limit holds.
    """
    limit = options.max_connections
    timeout = options.read_timeout_seconds
    closed = metrics.connections_closed
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    except ImportError:  # httptools missing: the pure-Python h11 parser
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base
    timed = hasattr(Base, "on_message_begin")  # httptools' request callbacks

    class Guarded(Base):
        _refused = False
        _timer: Any = None

        def connection_made(self, transport: Any) -> None:
            if len(self.connections) >= limit:
                self._refused = True
                closed.labels("limit").inc()
                transport.close()
                return
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError, AttributeError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            if self._timer is None and timed:
                self._timer = self.loop.call_later(timeout, self._timed_out)

        def _timed_out(self) -> None:
            self._timer = None
            if not self.transport.is_closing():
                closed.labels("read_timeout").inc()
                self.transport.close()

        def on_message_begin(self) -> None:  # a request's first bytes (httptools)
            super().on_message_begin()
            self._arm()

        def on_message_complete(self) -> None:  # the whole request is in
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


class _Server(uvicorn.Server):
    """uvicorn's server; a handled SIGTERM/SIGINT starts draining the core and ends
    with exit status 0 (uvicorn raises the signal again after its graceful shutdown,
    so the process would end as killed by it). With a gRPC port, the gRPC transport
    (on this event loop) starts before the HTTP server; a signal sends its clients
    GOAWAY, and it stops with the HTTP server, letting its calls in flight finish."""

    core: ServingCore | None = None
    grpc_port: int | None = None
    grpc_host: str = "127.0.0.1"
    grpc_server: Any = None
    graceful_seconds: float = 4.0
    max_connections: int = 1024
    read_timeout_seconds: float = 5.0
    listening: str = ""
    loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        grpc_server = None
        self.loop = asyncio.get_running_loop()
        if self.grpc_port is not None and self.core is not None:
            from runtimes.serving.grpc_server import build_server

            codecs = protocols.codecs(self.core, "grpc")
            grpc_server, port = await build_server(
                self.core,
                codecs,
                self.grpc_host,
                self.grpc_port,
                max_connections=self.max_connections,
                read_timeout=self.read_timeout_seconds,
            )
            self.grpc_server = grpc_server
            print(
                f"policy-toolkit serve: gRPC listening on {self.grpc_host}:{port}",
                file=sys.stderr,
                flush=True,
            )
        # The line scripts wait for: every socket is listening from here on.
        print(self.listening, file=sys.stderr, flush=True)
        try:
            await super().serve(sockets=sockets)
        finally:
            if grpc_server is not None:
                await grpc_server.stop(self.graceful_seconds)

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.core is not None:
            self.core.start_draining()
        if self.grpc_server is not None:  # GOAWAY, from the loop; calls in flight go on
            self.loop.call_soon_threadsafe(self.grpc_server.drain)
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ServingError(f"{host}:{port}: cannot listen there ({e.strerror})") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # runtimes.follow logs the checkpoints --follow skips (corrupt, or of another policy).
    for name in ("policy_toolkit.serve", "runtimes.follow"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False


def run(options: ServeOptions) -> int:
    """Serves until SIGTERM/SIGINT; returns the exit status (0).

    Raises:
      ServingError: for a model path that is neither a bundle nor a folder, a single
        bundle that cannot be loaded, or an address that cannot be bound.
      UnsupportedError: for a backend that is not installed or cannot follow.
    """
    _configure_logging(options.log_level)
    check_backend(options.backend, bool(options.follow))
    for config in options.models:
        try:
            found = config.path.is_dir()
        except OSError as e:
            raise ServingError(
                f"model {config.name}: cannot read {config.path} ({e.strerror})"
            ) from None
        if not found:
            raise ServingError(
                f"model {config.name}: {config.path} is neither a bundle nor a base path "
                "of version folders"
            )
    for name, folder in options.follow.items():
        try:
            found = folder.is_dir()
        except OSError:  # unreadable: the follower says so, and follows once it can read
            found = True
        if not found:
            log.warning(
                "model %s: --follow folder %s does not exist yet; checking every %g s",
                name,
                folder,
                options.follow_seconds,
            )
    core = build_core(options)
    try:
        return _serve(core, options)
    finally:
        core.close()


def _serve(core: ServingCore, options: ServeOptions) -> int:
    registry = core.registry
    registry.poll()
    for config in options.models:
        snapshot = registry.snapshots[config.name]
        if snapshot.versions:
            continue
        if is_bundle(config.path):
            failure = next(iter(snapshot.failures.values()), (None, "unknown error"))
            raise ServingError(f"model {config.name}: cannot serve {config.path}: {failure[1]}")
        log.warning(
            "model %s: no version under %s yet; answering 404 until one appears",
            config.name,
            config.path,
        )
    app = build_app(core, protocols.codecs(core, "http"))
    # What is loaded now lives as long as the server: keeping it out of the garbage
    # collector's generations shortens the collections that pause requests.
    gc.collect()
    gc.freeze()
    sock = _bind(options.host, options.port)
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app,
        log_level=options.log_level,
        access_log=options.access_log,
        http=_protocol_class(options, core.metrics),
        lifespan="off",
        timeout_graceful_shutdown=options.graceful_seconds,
        server_header=False,
    )
    server = _Server(config)
    server.core = core
    server.grpc_port = options.grpc_port
    server.grpc_host = options.host
    server.graceful_seconds = options.graceful_seconds
    server.max_connections = options.max_connections
    server.read_timeout_seconds = options.read_timeout_seconds
    server.listening = f"policy-toolkit serve: listening on http://{host}:{port}"
    for name, snapshot in registry.snapshots.items():
        log.info(
            "model %s: versions %s in service (%s)",
            name,
            sorted(snapshot.versions),
            registry.configs[name].versions,
        )
    core.start(options.poll_seconds)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    log.info("stopped after %d requests", server.server_state.total_requests)
    return 0
