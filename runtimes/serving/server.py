"""Running the policy server: uvicorn (keep-alive, TCP_NODELAY) over the ASGI app.

``run(options)`` loads every model's versions, binds the socket, serves until SIGTERM
or SIGINT, then stops accepting, lets requests in flight finish (at most
``graceful_seconds``) and returns 0. The access log is off unless asked for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import uvicorn

from runtimes.serving.app import Limits, build_app
from runtimes.serving.batching import Batcher
from runtimes.serving.following import Followers
from runtimes.serving.metrics import ServerMetrics
from runtimes.serving.models import (
    LoadedVersion,
    ModelConfig,
    ModelRegistry,
    is_bundle,
)
from runtimes.serving.signatures import ActionRunner, signatures_for
from toolkit.errors import ServingError

__all__ = ["ServeOptions", "run"]

log = logging.getLogger("policy_toolkit.serve")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


@dataclasses.dataclass
class ServeOptions:
    """What ``policy-toolkit serve`` was asked for (see its --help)."""

    models: list[ModelConfig]
    host: str = "127.0.0.1"
    port: int = 8501
    poll_seconds: float = 1.0
    seed: int | None = None
    backend: str = "onnx"
    batch_window_us: int | None = None
    limits: Limits = dataclasses.field(default_factory=Limits)
    log_level: str = "info"
    access_log: bool = False
    graceful_seconds: float = 4.0
    threads: int = 1
    #: model name -> a checkpoint folder its highest version follows (``--follow``)
    follow: dict[str, Path] = dataclasses.field(default_factory=dict)
    follow_seconds: float = 1.0
    #: the keys a version must be signed by (``--trust-key``, POLICY_TOOLKIT_TRUST_KEYS);
    #: a refused version is logged and counted, the versions in service stay
    trust: Any = None


def _nodelay_protocol() -> Any:
    """uvicorn's HTTP protocol, setting TCP_NODELAY on each connection.

    uvicorn leaves it to the event loop; uvloop and asyncio set it, and doing it here
    keeps that true whatever loop runs. Measured here with it turned off: uvicorn writes
    the head and the body of an answer apart, Nagle's algorithm holds the body until
    the client's delayed ACK, and one client's p50 went from 0.3 ms to 44 ms.
    """
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    except ImportError:  # httptools missing: the pure-Python h11 parser
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base

    class NoDelay(Base):
        def connection_made(self, transport: Any) -> None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError, AttributeError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().connection_made(transport)

    return NoDelay


class _Server(uvicorn.Server):
    """uvicorn's server, but a handled SIGTERM/SIGINT ends with exit status 0.

    (uvicorn raises the signal again after its graceful shutdown, so the process would
    end as killed by it.)
    """

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


def make_registry(
    options: ServeOptions,
    metrics: ServerMetrics,
    executor: ThreadPoolExecutor | None,
    followers: Followers | None = None,
) -> ModelRegistry:
    """The model registry with the loading, preparing and following the options ask for."""
    import runtimes

    window = None if options.batch_window_us is None else options.batch_window_us / 1e6

    from toolkit.errors import TrustError

    trust = False if options.trust is None else options.trust
    names = {Path(c.path).absolute(): c.name for c in options.models}

    def load(path: Path) -> tuple[Any, dict[str, Any]]:
        try:
            policy = runtimes.load_policy(
                path, options.backend, seed=options.seed, threads=options.threads, trust=trust
            )
        except TrustError:
            folder = Path(path).absolute()
            metrics.trust_refusals.labels(names.get(folder.parent, names.get(folder, ""))).inc()
            raise
        return policy, policy.manifest

    def prepare(name, policy, manifest, version, path, identity) -> LoadedVersion:
        action = batcher = None
        if window is not None:
            batcher = Batcher(
                ActionRunner(policy),
                window,
                options.limits.max_batch,
                executor,
                on_batch=metrics.batch_rows.labels(name).observe,
            )
            action = batcher
        signatures = signatures_for(policy, manifest, action)
        return LoadedVersion(version, path, policy, signatures, identity, time.time(), batcher)

    def on_change(name: str, snapshot: Any) -> None:
        metrics.set_versions(name, snapshot.versions)
        if followers is not None:
            followers.update(name, snapshot)

    return ModelRegistry(
        options.models,
        load,
        prepare,
        on_change=on_change,
        on_failure=lambda name, version, message: metrics.load_failures.labels(name).inc(),
    )


def run(options: ServeOptions) -> int:
    """Serves until SIGTERM/SIGINT; returns the exit status (0).

    Raises:
      ServingError: for a model path that is neither a bundle nor a folder, a single
        bundle that cannot be loaded, or an address that cannot be bound.
    """
    _configure_logging(options.log_level)
    for config in options.models:
        if not config.path.is_dir():
            raise ServingError(
                f"model {config.name}: {config.path} is neither a bundle nor a base path "
                "of version folders"
            )
    for name, folder in options.follow.items():
        if not folder.is_dir():
            log.warning(
                "model %s: --follow folder %s does not exist yet; checking every %g s",
                name,
                folder,
                options.follow_seconds,
            )
    metrics = ServerMetrics([c.name for c in options.models])
    executor = (
        ThreadPoolExecutor(1, thread_name_prefix="policy-serve-infer")
        if options.batch_window_us is not None
        else None
    )
    followers = Followers(
        options.follow,
        options.follow_seconds,
        # A checkpoint changes the train step /metrics shows for the version.
        on_apply=lambda name: metrics.set_versions(name, registry.get(name).versions),
    )
    registry = make_registry(options, metrics, executor, followers)
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
    app = build_app(registry, metrics, options.limits)
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
        http=_nodelay_protocol(),
        lifespan="off",
        timeout_graceful_shutdown=options.graceful_seconds,
        server_header=False,
    )
    server = _Server(config)
    for name, snapshot in registry.snapshots.items():
        log.info(
            "model %s: versions %s in service (%s)",
            name,
            sorted(snapshot.versions),
            registry.configs[name].versions,
        )
    # The line scripts wait for: the socket is listening from here on.
    print(f"policy-toolkit serve: listening on http://{host}:{port}", file=sys.stderr, flush=True)
    registry.start(options.poll_seconds)
    try:
        server.run(sockets=[sock])
    finally:
        registry.stop()
        followers.stop()
        if executor is not None:
            executor.shutdown(wait=True)
        sock.close()
    log.info("stopped after %d requests", server.server_state.total_requests)
    return 0
