"""KServe v2's ``inference.GRPCInferenceService`` as a codec over the serving core.

ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata and ModelInfer, with
the messages of ``proto/kserve_v2.proto``. ModelInfer takes tensors as typed contents
or as ``raw_input_contents`` (little-endian bytes, one entry per input, as
``tritonclient.grpc`` sends them) and answers in ``raw_output_contents``; parameters,
request ids, named outputs and sequence flags as over REST (``runtimes.serving.v2``).
Errors are gRPC statuses of the error's kind.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from runtimes.serving import plans, v2
from runtimes.serving.core import OFFLOAD_BYTES, ServingCore
from runtimes.serving.grpc_server import GrpcMethod
from runtimes.serving.models import LoadedVersion
from runtimes.serving.proto import kserve_v2_pb2 as pb
from toolkit.errors import ErrorKind, ServingError

__all__ = ["NAME", "SERVICE", "KServeV2Grpc", "make"]

NAME = "kserve_v2_grpc"
SERVICE = "inference.GRPCInferenceService"

_LITTLE = sys.byteorder == "little"
# Wire tags (field number << 3 | 2) of ModelInferResponse.id (3), raw_output_contents (6)
_ID_TAG = 0x1A
_RAW_TAG = 0x32
#: layouts of plain requests kept (``_Plan``); all are dropped when full
_MAX_PLANS = 256

# datatype -> the InferTensorContents field that carries it
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def make(core: ServingCore) -> KServeV2Grpc:
    """The codec over ``core`` (the protocol table's entry point)."""
    return KServeV2Grpc(core)


def parameters(message: Any) -> dict[str, Any]:
    """A message's ``map<string, InferParameter>`` as plain values."""
    out = {}
    for key, value in message.parameters.items():
        choice = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, choice) if choice else None
    return out


class KServeV2Grpc:
    """KServe v2's gRPC service (see the module docstring)."""

    name = NAME

    def __init__(self, core: ServingCore):
        self.core = core
        self._plans = plans.Plans(_MAX_PLANS)
        from importlib.metadata import PackageNotFoundError, version

        try:
            self._version = version("policy-toolkit")
        except PackageNotFoundError:
            self._version = "0"

    def methods(self) -> list[GrpcMethod]:
        """The service's methods (the gRPC transport serves them)."""
        methods = {
            "ServerLive": (self.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": (self.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
            "ModelReady": (self.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ServerMetadata": (
                self.server_metadata,
                pb.ServerMetadataRequest,
                pb.ServerMetadataResponse,
            ),
            "ModelMetadata": (
                self.model_metadata,
                pb.ModelMetadataRequest,
                pb.ModelMetadataResponse,
            ),
            "ModelInfer": (self.model_infer, pb.ModelInferRequest, pb.ModelInferResponse),
        }
        return [
            GrpcMethod(f"/{SERVICE}/{name}", request, response, fn, _api(name), _model_of(request))
            for name, (fn, request, response) in methods.items()
        ]

    # --- health and metadata -----------------------------------------------------------------

    def server_live(self, request: Any) -> tuple[Any, None]:
        return pb.ServerLiveResponse(live=True), None

    def server_ready(self, request: Any) -> tuple[Any, None]:
        return pb.ServerReadyResponse(ready=self.core.ready()), None

    def model_ready(self, request: Any) -> tuple[Any, str]:
        try:
            self.core.resolve(request.name, v2.parse_version_text(request.version), None)
            ready = not self.core.draining
        except ServingError as e:
            if e.kind != ErrorKind.NOT_FOUND:
                raise
            ready = False
        return pb.ModelReadyResponse(ready=ready), request.name

    def server_metadata(self, request: Any) -> tuple[Any, None]:
        meta = v2.server_metadata(self._version)
        return pb.ServerMetadataResponse(**meta), None

    def model_metadata(self, request: Any) -> tuple[Any, str]:
        loaded = self.core.resolve(request.name, v2.parse_version_text(request.version), None)
        meta = v2.model_metadata(self.core, request.name, loaded)
        response = pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"]
        )
        for field in ("inputs", "outputs"):
            getattr(response, field).extend(
                pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta[field]
            )
        return response, request.name

    # --- infer -----------------------------------------------------------------------------------

    async def model_infer(self, request: Any) -> tuple[Any, str]:
        model = request.model_name
        loaded = self.core.resolve(model, v2.parse_version_text(request.model_version), None)
        raw = request.raw_input_contents
        key = None
        if raw and not request.parameters:  # tritonclient's plain request
            inputs, asked = request.inputs, request.outputs
            if len(inputs) == 1:  # the usual request: no generator
                one = inputs[0]
                layout = ((one.name, one.datatype, tuple(one.shape)),)
            else:
                layout = tuple((i.name, i.datatype, tuple(i.shape)) for i in inputs)
            names = tuple(o.name for o in asked) if asked else ()
            key = (model, request.model_version, layout, names)
            plan = self._plans.get(key)
            outputs = None if plan is None else await plan.run(self.core, loaded, raw)
            if outputs is not None:
                return plan.encode(outputs, request.id) or self._encode(
                    model, loaded, request.id, plan.names, outputs
                ), model
        return await self._infer(request, model, loaded, key), model

    async def _infer(self, request: Any, model: str, loaded: LoadedVersion, key: Any) -> Any:
        """Any request, decoded and checked in full; ``key``: the plan to make for the
        layout of a plain request that passes (``_Plan``)."""
        core = self.core
        params = parameters(request)
        signature = v2.signature_of(loaded, params)
        max_batch = core.limits.max_batch
        # Typed contents of a large request are decoded off the event loop (the other
        # clients' calls go on meanwhile), as REST bodies are.
        if not request.raw_input_contents and request.ByteSize() > OFFLOAD_BYTES:
            arrays = await core.offload(self._decode, request, signature, model)
        else:
            arrays = self._decode(request, signature, model)
        names = v2.output_names(signature, [o.name for o in request.outputs], model)
        if key is None or not signature.batched:
            outputs = await v2.infer(core, model, loaded, signature, arrays, params)
            return self._encode(model, loaded, request.id, names, outputs)
        checked, batch = signature.check(arrays, max_batch)
        outputs = await core.run(signature, checked, checked=batch)
        if all(checked[n] is a for n, a in arrays.items()):  # passed as they came
            self._plans.learn(
                key, _Plan.make(model, loaded, signature, checked, batch, names, outputs)
            )
        return self._encode(model, loaded, request.id, names, outputs)

    def _decode(self, request: Any, signature: Any, model: str) -> dict[str, np.ndarray]:
        """A request's inputs as arrays, each checked against the signature's shapes."""
        raw = request.raw_input_contents
        if raw and len(raw) != len(request.inputs):
            raise ServingError(
                f"raw_input_contents: expected one entry per input ({len(request.inputs)}), "
                f"got {len(raw)}"
            )
        max_batch = self.core.limits.max_batch
        arrays: dict[str, np.ndarray] = {}
        for i, item in enumerate(request.inputs):
            name = item.name
            if name in arrays:
                raise ServingError(f"{name}: given twice")
            tensor, shape, count = v2.check_shape(
                name, item.datatype, list(item.shape), signature, model, max_batch
            )
            if raw:
                arrays[name] = v2.from_bytes(name, raw[i], tensor, shape, count)
            else:
                values = list(getattr(item.contents, _CONTENTS[item.datatype]))
                if item.datatype == "BYTES":
                    values = [bytes(v) for v in values]
                arrays[name] = v2.from_list(name, values, tensor, shape, count)
        return arrays

    def _encode(
        self, model: str, loaded: LoadedVersion, id: str, names: Any, outputs: dict[str, Any]
    ) -> Any:
        response = pb.ModelInferResponse(model_name=model, model_version=str(loaded.version), id=id)
        for name in names:
            array = np.asarray(outputs[name])
            response.outputs.add(name=name, datatype=v2.datatype(array.dtype), shape=array.shape)
            response.raw_output_contents.append(v2.to_bytes(array))
        return response


class _Plan(plans.InputPlan):
    """What a plain request of one layout needs, worked out on its first request.

    A plain request is tritonclient's: raw tensor bytes, no parameters. Its layout
    (model, version asked for, input names, datatypes and shapes, outputs asked for)
    fixes its inputs (``plans.InputPlan``) and the answer's head (model, version,
    outputs' names, datatypes and shapes), serialized once. The outputs' dtypes and
    shapes are checked against the head on every request.
    """

    __slots__ = ("head", "names", "outputs")

    @classmethod
    def make(cls, model, loaded, signature, arrays, batch, names, outputs) -> _Plan | None:
        """The plan of a request that passed (None: one of text tensors, or whose
        outputs are not plain arrays)."""
        inputs = plans.InputPlan.layout(arrays)
        if inputs is None:
            return None
        head = pb.ModelInferResponse(model_name=model, model_version=str(loaded.version))
        plan_outputs = []
        for name in names:
            array = outputs[name]
            if type(array) is not np.ndarray or array.dtype.kind in plans.TEXT_KINDS:
                return None
            plan_outputs.append((name, array.dtype, array.shape))
            head.outputs.add(name=name, datatype=v2.datatype(array.dtype), shape=array.shape)
        plan = cls(loaded, signature, inputs, batch)
        plan.names = tuple(names)
        #: per output asked for: name, dtype, shape
        plan.outputs = tuple(plan_outputs)
        plan.head = head.SerializeToString()
        return plan

    def encode(self, outputs: dict[str, Any], id: str) -> bytes | None:
        """The answer's bytes: the head, then the id and the outputs' data (a message's
        fields may come in any order and in pieces: protobuf merges them). None: an
        output whose dtype or shape is not the head's."""
        contents = []
        for name, dtype, shape in self.outputs:
            array = outputs[name]
            if type(array) is not np.ndarray or array.dtype != dtype or array.shape != shape:
                return None
            contents.append(
                plans.field(_RAW_TAG, array.tobytes() if _LITTLE else v2.to_bytes(array))
            )
        if id:
            return b"".join([self.head, plans.field(_ID_TAG, id.encode()), *contents])
        return b"".join([self.head, *contents])


def _model_of(request_type: Any) -> Any:
    """How to read the model a request names (the metrics of a call that fails)."""
    fields = request_type.DESCRIPTOR.fields_by_name
    for name in ("model_name", "name"):
        if name in fields:
            return lambda request, name=name: getattr(request, name) or None
    return lambda request: None


def _api(method: str) -> str:
    """ModelInfer -> model_infer (the metrics' api label, as over REST)."""
    out = "".join("_" + c.lower() if c.isupper() else c for c in method).lstrip("_")
    return {"model_infer": "infer", "server_live": "live", "server_ready": "ready"}.get(out, out)
