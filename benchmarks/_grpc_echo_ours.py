"""A bare gRPC echo on our own transport (runtimes/serving/grpc_server.py), no policy.

``policy-toolkit serve --grpc-port``'s transport (HTTP/2 on a uvloop event loop) with
one method, KServe v2's ModelInfer, answering each request with its own message
(parsed and serialized again, as a codec would, but no decoding of tensors and no
policy). serve_bench.py runs it beside benchmarks/_grpc_echo.py (the same echo on
grpcio's server) and benchmarks/_h2_echo.py (on the ``h2`` library): what each
transport costs on this machine. Listens on 127.0.0.1 at a free port, prints ``gRPC
listening on 127.0.0.1:PORT`` and serves until SIGTERM.

Usage: ``python benchmarks/_grpc_echo_ours.py``
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import _echo_loop  # benchmarks/, this script's folder

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from runtimes.serving.core import Limits, RequestBudget  # noqa: E402
from runtimes.serving.grpc_server import GrpcMethod, GrpcServer  # noqa: E402
from runtimes.serving.proto import kserve_v2_pb2 as pb  # noqa: E402


class _Echo:
    name = "echo"

    def methods(self) -> list[GrpcMethod]:
        return [
            GrpcMethod(
                "/inference.GRPCInferenceService/ModelInfer",
                pb.ModelInferRequest,
                pb.ModelInferResponse,
                lambda request: (request.SerializeToString(), None),
                "infer",
                lambda request: None,
            )
        ]


async def _start() -> tuple[int, Any]:
    # The transport's only needs of a core: its limits and request budget, a metrics
    # hook and the closed connections' counter (no-ops: the echo measures the transport
    # alone).
    uncounted = types.SimpleNamespace(labels=lambda reason: types.SimpleNamespace(inc=int))
    core = types.SimpleNamespace(
        limits=Limits(),
        budget=RequestBudget(Limits().max_buffered_bytes, Limits().max_body_bytes),
        observe=lambda *args: None,
        metrics=types.SimpleNamespace(connections_closed=uncounted),
    )
    server = GrpcServer(core, [_Echo()])
    return await server.start("127.0.0.1", 0), lambda: server.stop(1.0)


if __name__ == "__main__":
    _echo_loop.run(_start)
