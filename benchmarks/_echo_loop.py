"""What the event-loop echo servers share (benchmarks/_h2_echo.py, _grpc_echo_ours.py):
serve on uvloop (asyncio without it) until SIGTERM, after printing the line
serve_bench.py waits for, ``gRPC listening on 127.0.0.1:PORT``."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable

#: starts listening on 127.0.0.1: (the port, a coroutine function that stops serving)
Start = Callable[[], Awaitable[tuple[int, Callable[[], Awaitable[None]]]]]


async def _serve(start: Start) -> None:
    port, stop_serving = await start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"gRPC listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    await stop.wait()
    await stop_serving()


def run(start: Start) -> None:
    """Serves with ``start`` until SIGTERM."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(start))
    else:
        uvloop.run(_serve(start))
