"""The protocols the server speaks: one table, one codec module per protocol.

Each entry names a codec module over the protocol-neutral core
(``runtimes.serving.core``) and the transport it rides on. A module's ``make(core)``
returns its codec: for ``http`` an ``runtimes.serving.http.HttpCodec`` (its own path
prefix, on the server's one HTTP port), for ``grpc`` a
``runtimes.serving.grpc_server.GrpcCodec`` (its services' methods, ``GrpcMethod``s, on
the server's gRPC port, ``--grpc-port``, served by our HTTP/2 transport); the server
(``runtimes.serving.server``) builds every entry of the transports it runs, over the
same core on the same event loop. Adding a protocol is one codec module and one line here.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

__all__ = ["PROTOCOLS", "Protocol", "codecs"]


@dataclasses.dataclass(frozen=True)
class Protocol:
    """One protocol: its name (the metrics' ``protocol`` label), transport and codec module."""

    name: str
    transport: str
    module: str
    summary: str


PROTOCOLS: tuple[Protocol, ...] = (
    Protocol(
        "tfserving_rest",
        "http",
        "runtimes.serving.tfserving_rest",
        "TF Serving's REST API: /v1/models/NAME[/versions/V|/labels/L][:predict|/metadata]",
    ),
    Protocol(
        "kserve_v2_rest",
        "http",
        "runtimes.serving.kserve_v2_rest",
        "KServe v2 (Open Inference Protocol) REST: /v2, /v2/health/*, /v2/models/NAME[/versions/V]"
        "[/ready|/infer], JSON and binary tensors",
    ),
    Protocol(
        "kserve_v2_grpc",
        "grpc",
        "runtimes.serving.kserve_v2_grpc",
        "KServe v2 gRPC: inference.GRPCInferenceService (health, metadata, ModelInfer)",
    ),
    Protocol(
        "tfserving_grpc",
        "grpc",
        "runtimes.serving.tfserving_grpc",
        "TF Serving's gRPC API: PredictionService (Predict, GetModelMetadata), "
        "ModelService (GetModelStatus)",
    ),
)


def codecs(core: Any, transport: str) -> list[Any]:
    """The codecs of every protocol on ``transport``, over ``core``, in table order."""
    return [
        importlib.import_module(p.module).make(core) for p in PROTOCOLS if p.transport == transport
    ]
