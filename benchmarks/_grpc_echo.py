"""A bare gRPC echo server for serve_bench.py: our server's transport with no policy.

The same ``grpc.server`` as ``policy-toolkit serve --grpc-port`` builds
(``runtimes.serving.grpc_server.new_server``: its thread pool and options), with one
method, KServe v2's ModelInfer, that answers each request with its own bytes (no
decoding, no policy). What a load run measures against it is what the transport and the
client cost on this machine: the floor under every gRPC server's figures. Listens on
127.0.0.1 at a free port, prints ``gRPC listening on 127.0.0.1:PORT`` and serves until
SIGTERM.

Usage: ``python benchmarks/_grpc_echo.py``
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from runtimes.serving.grpc_server import new_server  # noqa: E402

SERVICE = "inference.GRPCInferenceService"


def _identity(data: bytes) -> bytes:
    return data


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


def main() -> None:
    server = new_server(4 << 20)
    handler = grpc.unary_unary_rpc_method_handler(
        _echo, request_deserializer=_identity, response_serializer=_identity
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"ModelInfer": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.start()
    print(f"gRPC listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    stop.wait()
    server.stop(1).wait()


if __name__ == "__main__":
    main()
