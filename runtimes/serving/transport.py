"""What the server's two transports share (HTTP/1.1: http_server.py, HTTP/2 + gRPC:
grpc_server.py): listening on the running event loop, the connection limit with idle
eviction, draining, and running a call inline.

* ``Listener`` keeps the open connections, oldest first. At ``--max-connections`` a new
  connection takes the place of the oldest one without a call in progress (that one is
  told to go away and closed); with every connection busy the new one is closed. Both are
  counted in ``policy_serving_connections_closed{reason="limit"}``.
* ``run_inline`` steps a call's coroutine by hand: a call that does not wait (no
  batching, no sequence, no body parsed off the loop) is answered within the
  ``data_received`` that completed it, with no task and no loop turn between (measured
  on gRPC: answering from a task's callback doubled one client's p50); only a call that
  waits becomes a task.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol

from runtimes.serving.core import ServingCore
from toolkit.errors import ServingError

__all__ = ["Connection", "Listener", "resume", "run_inline"]


class Connection(Protocol):
    """A transport's connection, as the listener sees it."""

    closed: bool

    def busy(self) -> bool:
        """Whether a call is in progress on it (it is not evicted, and draining waits)."""

    def go_away(self) -> None:
        """No new calls; it closes once its calls are answered."""

    def close(self) -> None:
        """Closes it now (its calls in progress are cancelled)."""


class Listener:
    """The open connections of one transport and its listening socket.

    Args:
      core: the serving core (limits, metrics).
      max_connections: open connections at most (see the module docstring).
      read_timeout: seconds a connection may take to deliver what it must (each
        transport says what).
    """

    #: what the transport is, for error messages ("HTTP", "gRPC")
    what = ""

    def __init__(self, core: ServingCore, max_connections: int, read_timeout: float):
        self.core = core
        self.limit = core.limits.max_body_bytes
        self.max_connections = max_connections
        self.read_timeout = read_timeout
        self.closed_counter = core.metrics.connections_closed
        # open connections, oldest first
        self.connections: dict[Any, None] = {}
        self.draining = False
        self._server: asyncio.AbstractServer | None = None

    def connection_factory(self) -> Any:
        """A new connection's protocol object (the transport's)."""
        raise NotImplementedError

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, sock: socket.socket | None = None
    ) -> int:
        """Listens at ``host:port``, or on the bound ``sock``; the port bound.

        Raises:
          ServingError: when the address cannot be bound.
        """
        loop = asyncio.get_running_loop()
        factory = self.connection_factory
        try:
            if sock is not None:
                self._server = await loop.create_server(factory, sock=sock)
            else:
                self._server = await loop.create_server(factory, host, port)
        except OSError as e:
            where = f" for {self.what}" if self.what else ""
            raise ServingError(f"{host}:{port}: cannot listen there{where} ({e})") from None
        return self._server.sockets[0].getsockname()[1]

    def admit(self, connection: Connection, transport: Any) -> bool:
        """Whether a new connection may stay (else its transport is closed): not while
        draining; at the limit only in the place of an idle one."""
        if self.draining:
            transport.close()
            return False
        if len(self.connections) >= self.max_connections:
            idle = next((c for c in self.connections if not (c.closed or c.busy())), None)
            self.closed_counter.labels("limit").inc()
            if idle is None:  # every connection has calls in progress
                transport.close()
                return False
            idle.go_away()
            idle.close()
        self.connections[connection] = None
        return True

    def forget(self, connection: Connection) -> None:
        """A connection is gone."""
        self.connections.pop(connection, None)

    def drain(self) -> None:
        """Stops taking connections and new calls; calls in flight go on."""
        if self.draining:
            return
        self.draining = True
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.go_away()

    async def stop(self, seconds: float) -> None:
        """Drains, waits up to ``seconds`` for calls in flight, then closes every connection."""
        self.drain()
        deadline = time.monotonic() + seconds
        while (
            any(c.busy() for c in self.connections if not c.closed) and time.monotonic() < deadline
        ):
            await asyncio.sleep(0.01)
        for connection in list(self.connections):
            connection.close()


def run_inline(coroutine: Any, done: Callable[[asyncio.Task], None]) -> tuple[Any, Any]:
    """Runs ``coroutine`` until it finishes or waits: ``(its result, None)``, or
    ``(None, the task that goes on with it)``, which calls ``done(task)`` when it ends.
    An exception it raises before waiting propagates."""
    try:
        waiting = coroutine.send(None)
    except StopIteration as finished:
        return finished.value, None
    task = asyncio.get_running_loop().create_task(resume(coroutine, waiting))
    task.add_done_callback(done)
    return None, task


async def resume(coroutine: Any, waiting: Any) -> Any:
    """Goes on with a coroutine that was stepped once by hand and is now ``waiting`` on a
    future (or yielded None: a bare turn of the loop), as a task would: its result,
    exceptions and cancellation pass through."""
    while True:
        try:
            if waiting is None:
                await asyncio.sleep(0)
            else:
                # as a task does with what a coroutine yields: the future was flagged
                # "blocking" when yielded; awaiting it again needs the flag cleared
                waiting._asyncio_future_blocking = False
                await waiting
        except asyncio.CancelledError as e:
            if waiting is not None and not waiting.done():
                waiting.cancel()
            try:
                waiting = coroutine.throw(e)
            except StopIteration as finished:
                return finished.value
            continue
        except BaseException:  # the coroutine reads the future's outcome itself
            pass
        try:
            waiting = coroutine.send(None)
        except StopIteration as finished:
            return finished.value
