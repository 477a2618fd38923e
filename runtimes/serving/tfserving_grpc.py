"""TF Serving's gRPC API as a codec over the serving core, without TensorFlow.

``tensorflow.serving.PredictionService`` (Predict, GetModelMetadata) and
``tensorflow.serving.ModelService`` (GetModelStatus), with the messages of
``proto/tfserving.proto`` (TF Serving's, under another package name: the wire format
is the same). A ``ModelSpec`` is read as TF Serving reads it: ``name``, ``version``
or ``version_label``, ``signature_name`` (``serving_default`` when empty). Tensors are
``TensorProto``s: read from ``tensor_content`` or the typed ``*_val`` fields, answered
in ``tensor_content`` (strings in ``string_val``), which ``tf.make_ndarray`` reads.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from runtimes.serving import plans
from runtimes.serving.core import OFFLOAD_BYTES, ServingCore
from runtimes.serving.grpc_server import GrpcMethod
from runtimes.serving.models import LoadedVersion
from runtimes.serving.proto import tfserving_pb2 as pb
from runtimes.serving.signatures import DEFAULT_SIGNATURE, Signature, TensorInfo
from runtimes.serving.v2 import little_endian
from toolkit.errors import ServingError

__all__ = ["NAME", "TFServingGrpc", "make"]

NAME = "tfserving_grpc"
PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
SIGNATURE_DEF_MAP_URL = "type.googleapis.com/tensorflow.serving.SignatureDefMap"
PREDICT_METHOD = "tensorflow/serving/predict"

_LITTLE = sys.byteorder == "little"
#: layouts of plain Predict requests kept (``_Plan``); all are dropped when full
_MAX_PLANS = 256

# numpy dtype name -> (DataType, the TensorProto field of its values)
_TYPES = {
    "float32": (pb.DT_FLOAT, "float_val"),
    "float64": (pb.DT_DOUBLE, "double_val"),
    "float16": (pb.DT_HALF, "half_val"),
    "int8": (pb.DT_INT8, "int_val"),
    "int16": (pb.DT_INT16, "int_val"),
    "int32": (pb.DT_INT32, "int_val"),
    "int64": (pb.DT_INT64, "int64_val"),
    "uint8": (pb.DT_UINT8, "int_val"),
    "uint16": (pb.DT_UINT16, "int_val"),
    "uint32": (pb.DT_UINT32, "uint32_val"),
    "uint64": (pb.DT_UINT64, "uint64_val"),
    "bool": (pb.DT_BOOL, "bool_val"),
    "object": (pb.DT_STRING, "string_val"),
}


# np.dtype(...).name costs microseconds a call (twice a request): look dtypes up directly
_BY_DTYPE = {np.dtype(k): v for k, v in _TYPES.items()}


def _type_of(dtype: np.dtype) -> tuple[int, str]:
    """A numpy dtype's (DataType, TensorProto field of its values)."""
    found = _BY_DTYPE.get(dtype)
    return found if found is not None else _TYPES[np.dtype(dtype).name]


def make(core: ServingCore) -> TFServingGrpc:
    """The codec over ``core`` (the protocol table's entry point)."""
    return TFServingGrpc(core)


def _dtype_name(dtype: int) -> str:
    return pb.DataType.Name(dtype) if dtype in pb.DataType.values() else str(dtype)


def to_array(
    name: str, proto: Any, tensor: TensorInfo, max_batch: int, batched: bool
) -> np.ndarray:
    """A TensorProto -> an array, its dtype and shape checked against the input first.

    Raises:
      ServingError: (invalid argument) naming the input, what was expected and what came.
    """
    target = np.dtype(tensor.dtype)
    dtype, field = _type_of(target)
    if proto.dtype != dtype:
        raise ServingError(
            f"{name}: expected {pb.DataType.Name(dtype)}, got {_dtype_name(proto.dtype)}"
        )
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    if not tensor.shape and shape in ((), (1,)):
        shape = ()
    elif len(shape) != len(tensor.shape) or any(
        d is not None and d != n for d, n in zip(tensor.shape, shape, strict=False)
    ):
        raise ServingError(
            f"{name}: expected shape {tensor.describe_shape()}, got [{', '.join(map(str, shape))}]"
        )
    if any(n < 0 for n in shape):
        raise ServingError(f"{name}: expected sizes >= 0, got {list(shape)}")
    if batched and shape and shape[0] > max_batch:
        raise ServingError(
            f"{name}: expected a batch of at most {max_batch} (the server's --max-batch), "
            f"got {shape[0]}"
        )
    count = math.prod(shape)
    if proto.tensor_content and target.kind != "O":
        expected = count * target.itemsize
        if len(proto.tensor_content) != expected:
            raise ServingError(
                f"{name}: expected {expected} bytes of tensor_content for shape "
                f"{list(shape)}, got {len(proto.tensor_content)}"
            )
        return little_endian(proto.tensor_content, target).reshape(shape)
    values = getattr(proto, field)
    if target.name == "float16":
        array = np.asarray(values, np.uint16).view(np.float16)
    elif target.kind == "O":
        array = np.empty(len(values), object)
        array[:] = list(values)
    else:
        array = np.asarray(values, target)
    if array.size == 1 and count != 1:  # TensorFlow fills a shape from one value
        array = np.full(count, array[0], array.dtype)
    if array.size != count:
        raise ServingError(
            f"{name}: expected {count} values for shape {list(shape)}, got {array.size}"
        )
    return array.reshape(shape)


def to_proto(value: Any, proto: Any = None) -> Any:
    """An output -> a TensorProto (numbers in tensor_content, strings in string_val);
    ``proto``: an empty one to fill (a response's map entry) instead of a new one."""
    array = np.asarray(value)
    if proto is None:
        proto = pb.TensorProto()
    if array.dtype.kind in "OUS":
        proto.dtype = pb.DT_STRING
        proto.string_val.extend(
            v if isinstance(v, bytes) else str(v).encode() for v in array.ravel().tolist()
        )
    else:
        proto.dtype = _type_of(array.dtype)[0]
        proto.tensor_content = np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()
    for n in array.shape:
        proto.tensor_shape.dim.add(size=n)
    return proto


def _tensor_info(tensor: TensorInfo) -> Any:
    info = pb.TensorInfo(name=f"{tensor.name}:0", dtype=_type_of(np.dtype(tensor.dtype))[0])
    info.tensor_shape.dim.extend(
        pb.TensorShapeProto.Dim(size=-1 if d is None else d) for d in tensor.shape
    )
    return info


def _signature_def(signature: Signature) -> Any:
    out = pb.SignatureDef(method_name=PREDICT_METHOD)
    for name, tensor in signature.inputs.items():
        out.inputs[name].CopyFrom(_tensor_info(tensor))
    for name, tensor in signature.outputs.items():
        out.outputs[name].CopyFrom(_tensor_info(tensor))
    return out


class TFServingGrpc:
    """TF Serving's gRPC services (see the module docstring)."""

    name = NAME

    def __init__(self, core: ServingCore):
        self.core = core
        self._plans = plans.Plans(_MAX_PLANS)

    def methods(self) -> list[GrpcMethod]:
        """The services' methods (the gRPC transport serves them)."""
        return [
            GrpcMethod(
                f"/{PREDICTION_SERVICE}/Predict",
                pb.PredictRequest,
                pb.PredictResponse,
                self.predict,
                "predict",
                _spec_name,
            ),
            GrpcMethod(
                f"/{PREDICTION_SERVICE}/GetModelMetadata",
                pb.GetModelMetadataRequest,
                pb.GetModelMetadataResponse,
                self.metadata,
                "metadata",
                _spec_name,
            ),
            GrpcMethod(
                f"/{MODEL_SERVICE}/GetModelStatus",
                pb.GetModelStatusRequest,
                pb.GetModelStatusResponse,
                self.status,
                "status",
                _spec_name,
            ),
        ]

    def _resolve(self, spec: Any) -> Any:
        if not spec.name:
            raise ServingError("Missing ModelSpec")
        choice = spec.WhichOneof("version_choice")
        version = spec.version.value if choice == "version" else None
        label = spec.version_label if choice == "version_label" else None
        return self.core.resolve(spec.name, version, label)

    async def predict(self, request: Any) -> tuple[Any, str]:
        spec = request.model_spec
        loaded = self._resolve(spec)
        # A plain request (every input in tensor_content: what tf.make_tensor_proto
        # makes of an array) of a layout answered before takes that layout's plan.
        layout: list | None = []
        contents = []
        for key, proto in request.inputs.items():
            content = proto.tensor_content
            if not content:
                layout = None
                break
            layout.append((key, proto.dtype, tuple(d.size for d in proto.tensor_shape.dim)))
            contents.append(content)
        plan_key = None
        if layout:
            plan_key = (spec.SerializeToString(), tuple(layout), tuple(request.output_filter))
            plan = self._plans.get(plan_key)
            outputs = None if plan is None else await plan.run(self.core, loaded, contents)
            if outputs is not None:
                answer = plan.encode(outputs)
                if answer is None:
                    answer = _response(spec, loaded, plan.signature, plan.wanted, outputs)
                return answer, spec.name
        return await self._predict(spec, request, loaded, plan_key), spec.name

    async def _predict(self, spec: Any, request: Any, loaded: LoadedVersion, plan_key: Any) -> Any:
        """Any request, decoded and checked in full; ``plan_key``: the plan to make for
        the layout of a plain request that passes (``_Plan``)."""
        name = spec.signature_name or DEFAULT_SIGNATURE
        signature = loaded.signatures.get(name)
        if signature is None:
            raise ServingError(
                f'Serving signature name: "{name}" not found in signature def '
                f"(signatures: {sorted(loaded.signatures)})"
            )
        max_batch = self.core.limits.max_batch
        # The typed values of a large request are decoded off the event loop (the other
        # clients' calls go on meanwhile), as REST bodies are.
        if plan_key is None and request.ByteSize() > OFFLOAD_BYTES:
            arrays = await self.core.offload(_arrays, request, signature, max_batch)
        else:
            arrays = _arrays(request, signature, max_batch)
        wanted = list(request.output_filter) or list(signature.outputs)
        for key in wanted:
            if key not in signature.outputs:
                raise ServingError(
                    f"output tensor alias not found in signature: {key} (signature "
                    f"'{name}' gives {sorted(signature.outputs)})"
                )
        if plan_key is None or not signature.batched:
            outputs = await self.core.run(signature, arrays)
            return _response(spec, loaded, name, wanted, outputs)
        checked, batch = signature.check(arrays, max_batch)
        outputs = await self.core.run(signature, checked, checked=batch)
        if all(checked[n] is a for n, a in arrays.items()):  # passed as they came
            self._plans.learn(
                plan_key, _Plan.make(spec, loaded, signature, checked, batch, wanted, outputs)
            )
        return _response(spec, loaded, name, wanted, outputs)

    def metadata(self, request: Any) -> tuple[Any, str]:
        spec = request.model_spec
        fields = list(request.metadata_field)
        if fields != ["signature_def"]:
            raise ServingError(
                f"metadata_field: expected ['signature_def'] (the one field served), got {fields}"
            )
        loaded = self._resolve(spec)
        signatures = pb.SignatureDefMap()
        for key, signature in loaded.signatures.items():
            signatures.signature_def[key].CopyFrom(_signature_def(signature))
        response = pb.GetModelMetadataResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = loaded.version
        entry = response.metadata["signature_def"]
        entry.type_url = SIGNATURE_DEF_MAP_URL
        entry.value = signatures.SerializeToString()
        return response, spec.name

    def status(self, request: Any) -> tuple[Any, str]:
        spec = request.model_spec
        if not spec.name:
            raise ServingError("Missing ModelSpec")
        choice = spec.WhichOneof("version_choice")
        version = spec.version.value if choice == "version" else None
        label = spec.version_label if choice == "version_label" else None
        response = pb.GetModelStatusResponse()
        for state in self.core.status(spec.name, version, label):
            entry = response.model_version_status.add(
                version=state.version,
                state=pb.ModelVersionStatus.AVAILABLE
                if state.available
                else pb.ModelVersionStatus.END,
            )
            entry.status.error_code = pb.OK if state.available else pb.UNKNOWN
            entry.status.error_message = state.error
        return response, spec.name


def _arrays(request: Any, signature: Signature, max_batch: int) -> dict[str, np.ndarray]:
    """A Predict request's inputs as arrays, checked against the signature."""
    arrays = {}
    for key, proto in request.inputs.items():
        tensor = signature.inputs.get(key)
        if tensor is None:
            signature.check_names([key])  # names the unknown input
        arrays[key] = to_array(key, proto, tensor, max_batch, signature.batched)
    return arrays


def _spec_name(request: Any) -> str | None:
    """The model a request names (the metrics of a call that fails)."""
    return request.model_spec.name or None


def _response(spec: Any, loaded: LoadedVersion, name: str, wanted: Any, outputs: Any) -> Any:
    """The PredictResponse: the model spec served (name, version, signature) and the
    outputs asked for."""
    response = pb.PredictResponse()
    response.model_spec.name = spec.name
    response.model_spec.version.value = loaded.version
    response.model_spec.signature_name = name
    for key in wanted:
        to_proto(outputs[key], response.outputs[key])
    return response


# Wire tags (field number << 3 | 2, length-delimited): PredictResponse.outputs (1), a
# map entry's key (1) and value (2), TensorProto.tensor_content (4).
_OUTPUTS_TAG = _ENTRY_KEY_TAG = 0x0A
_ENTRY_VALUE_TAG = 0x12
_CONTENT_TAG = 0x22


class _Plan(plans.InputPlan):
    """What a plain Predict request of one layout needs, worked out on its first one.

    A plain request carries every input in ``tensor_content``. Its layout (the model
    spec as sent, input names, dtypes and shapes, the output filter) fixes its inputs
    (``plans.InputPlan``) and the answer but for the outputs' bytes: the model spec and
    each output's dtype and shape, serialized once. The outputs' dtypes and shapes are
    checked on every request.
    """

    __slots__ = ("head", "outputs", "wanted")

    @classmethod
    def make(cls, spec, loaded, signature, arrays, batch, wanted, outputs) -> _Plan | None:
        """The plan of a request that passed (None: one of text tensors, or whose
        outputs are not plain numeric arrays)."""
        inputs = plans.InputPlan.layout(arrays)
        if inputs is None:
            return None
        plan_outputs = []
        for key in wanted:
            array = outputs[key]
            if type(array) is not np.ndarray or array.dtype.kind in plans.TEXT_KINDS:
                return None
            tensor = pb.TensorProto(dtype=_type_of(array.dtype)[0])
            for n in array.shape:
                tensor.tensor_shape.dim.add(size=n)
            key_field = plans.field(_ENTRY_KEY_TAG, key.encode())
            head = tensor.SerializeToString()
            plan_outputs.append((key, array.dtype, array.shape, key_field, head))
        head = pb.PredictResponse()
        head.model_spec.name = spec.name
        head.model_spec.version.value = loaded.version
        head.model_spec.signature_name = signature.name
        plan = cls(loaded, signature, inputs, batch)
        plan.wanted = tuple(wanted)
        #: per output asked for: name, dtype, shape, its map entry's key and TensorProto
        #: head (dtype and shape) on the wire
        plan.outputs = tuple(plan_outputs)
        #: the response's model spec on the wire
        plan.head = head.SerializeToString()
        return plan

    def encode(self, outputs: dict[str, Any]) -> bytes | None:
        """The answer's bytes: the model spec, then one map entry per output. None: an
        output whose dtype or shape is not the plan's."""
        parts = [self.head]
        for key, dtype, shape, key_field, tensor in self.outputs:
            array = outputs[key]
            if type(array) is not np.ndarray or array.dtype != dtype or array.shape != shape:
                return None
            data = array.tobytes() if _LITTLE else array.astype(dtype.newbyteorder("<")).tobytes()
            value = tensor + plans.field(_CONTENT_TAG, data)
            entry = key_field + plans.field(_ENTRY_VALUE_TAG, value)
            parts.append(plans.field(_OUTPUTS_TAG, entry))
        return b"".join(parts)
