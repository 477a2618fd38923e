"""The gRPC side shared by the gRPC protocols: one grpc server, a codec per service.

``build_server(core, codecs, host, port)`` makes a sync ``grpc.server`` whose methods
run in a pool of ``WORKERS`` threads, with each codec's method handlers
(``GrpcCodec.handlers``). A method decodes, runs and encodes in its gRPC thread
(``ServingCore.run_blocking``); with request batching on, the thread waits for its
share of a merged call (or leads it) in the version's batcher, which REST requests on
the event loop feed too. Only sequences, which live on the HTTP server's event loop,
are handed to that loop. Measured against a ``grpc.aio`` server on that loop
(benchmarks/serve_bench.py, one blocking client, the users' kind): the aio server's
hand-offs between its poller thread and the loop cost more than the sync server's
between its poller and the pool.
``unary`` wraps one method: it times it, turns a ``ServingError`` into the gRPC status
of its kind (the kinds are gRPC's canonical codes), and counts it in the metrics under
the codec's protocol name. Messages are bounded by the server's ``--max-body-bytes``
(RESOURCE_EXHAUSTED beyond, from gRPC).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import grpc

from runtimes.serving.core import ServingCore
from toolkit.errors import ErrorKind, ServingError, ToolkitError

__all__ = ["WORKERS", "GrpcCodec", "build_server", "new_server", "unary"]

#: gRPC threads: calls in progress at once (more wait for one); each call waiting for
#: its share of a batched call holds one (its leader too), so this bounds what one
#: batch merges over gRPC
WORKERS = 16

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
    method: Callable[[Any], tuple[Any, str | None]],
    request_type: Any,
    response_type: Any,
) -> grpc.RpcMethodHandler:
    """A unary method handler: ``method(request) -> (response, model)``, errors mapped.

    The response is a message of ``response_type`` or its serialized bytes.

    Args:
      core: the serving core (its metrics).
      protocol: the metrics' protocol label.
      api: the metrics' api label (the method).
      method: the method, called in a gRPC thread; raises ServingError (or
        ToolkitError: invalid argument).
      request_type: the request message class.
      response_type: the response message class.
    """
    observe = core.observe
    model_of = _model_of(request_type)

    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        started = time.perf_counter()
        model = model_of(request)
        try:
            response, model = method(request)
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
        context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(
        handle,
        request_deserializer=request_type.FromString,
        response_serializer=_serialize,
    )


def _model_of(request_type: Any) -> Callable[[Any], str | None]:
    """How to read the model a request names (for the metrics of a call that fails),
    from its message type's fields: looked up once, not tried on every request."""
    fields = request_type.DESCRIPTOR.fields_by_name
    if "model_spec" in fields:
        return lambda request: request.model_spec.name or None
    for name in ("model_name", "name"):
        if name in fields:
            return lambda request, name=name: getattr(request, name) or None
    return lambda request: None


def _serialize(response: Any) -> bytes:
    """A response message's bytes; a method may answer with them already serialized."""
    return response if response.__class__ is bytes else response.SerializeToString()


def new_server(max_body_bytes: int) -> grpc.Server:
    """The transport alone: a grpc server with no services yet (benchmarks/serve_bench.py
    measures it bare, as the floor under every gRPC protocol)."""
    return grpc.server(
        ThreadPoolExecutor(WORKERS, thread_name_prefix="policy-serve-grpc"),
        options=[
            ("grpc.max_receive_message_length", max_body_bytes),
            ("grpc.max_send_message_length", max(max_body_bytes, 64 << 20)),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=1024,
    )


def build_server(
    core: ServingCore, codecs: list[GrpcCodec], host: str, port: int
) -> tuple[grpc.Server, int]:
    """A grpc server with every codec's services, bound (not started): (server, port).

    Raises:
      ServingError: when the address cannot be bound.
    """
    server = new_server(core.limits.max_body_bytes)
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
