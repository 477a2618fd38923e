"""The protocols the server speaks: one table, one codec module per protocol.

Each entry names a codec module over the protocol-neutral core
(``runtimes.serving.core``) and the transport it rides on. A module's ``make(core)``
returns its codec: for ``http`` an ``runtimes.serving.http.HttpCodec`` (its own path
prefix, on the server's one HTTP port); the server (``runtimes.serving.server``)
builds every entry of the transports it runs. Adding a protocol is one codec module
and one line here: a REST protocol (KServe v2's ``/v2/...``) is another ``http``
entry; a gRPC service would be a ``grpc`` entry whose codec adds its servicer to a
gRPC server on its own port, over the same core in the same process.
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
)


def codecs(core: Any, transport: str) -> list[Any]:
    """The codecs of every protocol on ``transport``, over ``core``, in table order."""
    return [
        importlib.import_module(p.module).make(core) for p in PROTOCOLS if p.transport == transport
    ]
