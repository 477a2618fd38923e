"""The gRPC side shared by the gRPC protocols: one grpc.aio server, a codec per service.

``build_server(core, codecs, host, port)`` makes a ``grpc.aio`` server on the event
loop the HTTP server runs on (so request batching, sequences and the core's state are
shared across every protocol), with each codec's method handlers
(``GrpcCodec.handlers``). ``unary`` wraps one method: it times it, turns a
``ServingError`` into the gRPC status of its kind (the kinds are gRPC's canonical
codes), and counts it in the metrics under the codec's protocol name. Messages are
bounded by the server's ``--max-body-bytes`` (RESOURCE_EXHAUSTED beyond, from gRPC).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import grpc

from runtimes.serving.core import ServingCore
from toolkit.errors import ErrorKind, ServingError, ToolkitError

__all__ = ["GrpcCodec", "build_server", "unary"]

log = logging.getLogger("policy_toolkit.serve")


class GrpcCodec(Protocol):
    """A protocol over gRPC (one module per protocol; runtimes.serving.protocols)."""

    #: the protocol's name: the ``protocol`` label of the metrics
    name: str

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        """The method handlers of the protocol's services."""


def unary(
    core: ServingCore,
    protocol: str,
    api: str,
    method: Callable[[Any], Awaitable[tuple[Any, str | None]]],
    request_type: Any,
    response_type: Any,
) -> grpc.RpcMethodHandler:
    """A unary method handler: ``method(request) -> (response, model)``, errors mapped.

    Args:
      core: the serving core (its metrics).
      protocol: the metrics' protocol label.
      api: the metrics' api label (the method).
      method: the method; raises ServingError (or ToolkitError: invalid argument).
      request_type: the request message class.
      response_type: the response message class.
    """
    observe = core.observe

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        model = getattr(request, "model_name", None) or getattr(request, "name", None)
        spec = getattr(request, "model_spec", None)
        if spec is not None:
            model = spec.name or None
        try:
            response, model = await method(request)
        except ServingError as e:
            kind, message = e.kind, str(e)
        except ToolkitError as e:  # the policy refused the inputs (names what is wrong)
            kind, message = ErrorKind.INVALID_ARGUMENT, str(e)
        except Exception as e:
            log.exception("gRPC %s failed", api)
            kind, message = ErrorKind.INTERNAL, f"Internal error: {type(e).__name__}: {e}"
        else:
            observe(protocol, model, api, "OK", time.perf_counter() - started, False)
            return response
        code = grpc.StatusCode[kind.name]
        observe(protocol, model, api, code.name, time.perf_counter() - started, True)
        await context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(
        handle,
        request_deserializer=request_type.FromString,
        response_serializer=response_type.SerializeToString,
    )


def build_server(
    core: ServingCore, codecs: list[GrpcCodec], host: str, port: int
) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server with every codec's services, bound (not started): (server, port).

    Raises:
      ServingError: when the address cannot be bound.
    """
    limit = core.limits.max_body_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", max(limit, 64 << 20)),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=1024,
    )
    for codec in codecs:
        server.add_generic_rpc_handlers(tuple(codec.handlers()))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as e:
        raise ServingError(f"{address}: cannot listen there for gRPC ({e})") from None
    if not bound:
        raise ServingError(f"{address}: cannot listen there for gRPC")
    return server, bound
