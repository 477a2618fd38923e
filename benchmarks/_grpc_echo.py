"""A bare gRPC echo server for serve_bench.py: our server's transport with no policy.

The ``grpc.server`` ``policy-toolkit serve --grpc-port`` ran before its own transport
(``runtimes.serving.grpc_server``): 16 pool threads and the same options, with one
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

from concurrent.futures import ThreadPoolExecutor  # noqa: E402

import grpc  # noqa: E402

SERVICE = "inference.GRPCInferenceService"


def _identity(data: bytes) -> bytes:
    return data


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


def new_server(max_body_bytes: int) -> grpc.Server:
    return grpc.server(
        ThreadPoolExecutor(16, thread_name_prefix="policy-serve-grpc"),
        options=[
            ("grpc.max_receive_message_length", max_body_bytes),
            ("grpc.max_send_message_length", max(max_body_bytes, 64 << 20)),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=1024,
    )


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
