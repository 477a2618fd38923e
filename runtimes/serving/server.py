"""Running the policy server: every protocol's codec on the serving core, both ports on
one event loop.

``run(options)`` builds the core (``runtimes.serving.core``), loads every model's
versions, binds the socket, serves every HTTP protocol of ``runtimes.serving.protocols``
over our HTTP/1.1 transport (``runtimes.serving.http_server``) and, with a gRPC port,
every gRPC one (``runtimes.serving.grpc_server``), on uvloop when it is installed, until
SIGTERM or SIGINT; then it stops accepting, lets requests in flight finish (at most
``graceful_seconds``) and returns 0. Connections are bounded in number
(``max_connections``; at the limit a new one takes an idle one's place) and in patience:
one that has not delivered a whole request ``read_timeout_seconds`` after it opened, or
after its request began, is closed (idle keep-alive connections close after 5 s). The
request bytes both ports buffer at once are bounded by ``limits.max_buffered_bytes``
(the core's ``RequestBudget``). The access log is off unless asked for.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import signal
import socket
import sys
import threading
from typing import Any

from runtimes.serving import protocols
from runtimes.serving.core import CoreOptions, ServingCore, build_core, check_backend
from runtimes.serving.http import build_handler
from runtimes.serving.http_server import HttpServer
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


class _Stop:
    """SIGTERM/SIGINT: the core stops being ready, both ports drain (the gRPC one sends
    GOAWAY), and ``wait()`` returns."""

    def __init__(self, core: ServingCore, servers: list[Any]):
        self.core = core
        self.servers = servers
        self.event = asyncio.Event()

    def __call__(self) -> None:
        self.core.start_draining()
        for server in self.servers:
            server.drain()
        self.event.set()


async def _run_servers(
    core: ServingCore, options: ServeOptions, sock: socket.socket, listening: str
) -> int:
    """Both ports on this event loop until a signal; then answers in flight finish (at
    most ``graceful_seconds``); the requests served."""
    loop = asyncio.get_running_loop()
    servers: list[Any] = []
    if options.grpc_port is not None:
        from runtimes.serving.grpc_server import build_server

        grpc_server, port = await build_server(
            core,
            protocols.codecs(core, "grpc"),
            options.host,
            options.grpc_port,
            max_connections=options.max_connections,
            read_timeout=options.read_timeout_seconds,
        )
        servers.append(grpc_server)
        print(
            f"policy-toolkit serve: gRPC listening on {options.host}:{port}",
            file=sys.stderr,
            flush=True,
        )
    handler = build_handler(core, protocols.codecs(core, "http"))
    http_server = HttpServer(
        core,
        handler,
        max_connections=options.max_connections,
        read_timeout=options.read_timeout_seconds,
        access_log=options.access_log,
    )
    await http_server.start(sock=sock)
    servers.insert(0, http_server)
    stop = _Stop(core, servers)
    handled = (signal.SIGINT, signal.SIGTERM)
    on_main = threading.current_thread() is threading.main_thread()
    if on_main:
        for sig in handled:
            loop.add_signal_handler(sig, stop)
    # The line scripts wait for: every socket is listening from here on.
    print(listening, file=sys.stderr, flush=True)
    try:
        await stop.event.wait()
        await asyncio.gather(*(s.stop(options.graceful_seconds) for s in servers))
    finally:
        if on_main:
            for sig in handled:
                loop.remove_signal_handler(sig)
    return http_server.requests


def _event_loop_runner() -> Any:
    """uvloop's runner when it is installed (it is with [serve] off Windows), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


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
    # What is loaded now lives as long as the server: keeping it out of the garbage
    # collector's generations shortens the collections that pause requests.
    gc.collect()
    gc.freeze()
    sock = _bind(options.host, options.port)
    host, port = sock.getsockname()[:2]
    listening = f"policy-toolkit serve: listening on http://{host}:{port}"
    for name, snapshot in registry.snapshots.items():
        log.info(
            "model %s: versions %s in service (%s)",
            name,
            sorted(snapshot.versions),
            registry.configs[name].versions,
        )
    log.info(
        "request bodies buffered at once: at most %d bytes (--max-buffered-bytes), "
        "each at most %d (--max-body-bytes)",
        core.limits.max_buffered_bytes,
        core.limits.max_body_bytes,
    )
    core.start(options.poll_seconds)
    try:
        served = _event_loop_runner()(_run_servers(core, options, sock, listening))
    finally:
        sock.close()
    log.info("stopped after %d requests", served)
    return 0
