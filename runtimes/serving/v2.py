"""What KServe v2's REST and gRPC codecs share: datatypes, metadata, tensors, parameters.

The Open Inference Protocol names a tensor's element type by a ``datatype`` string
(``FP32``, ``INT64``, ``BYTES``...) and its shape by a list of sizes (``-1`` for a
variable one in metadata). A v2 model here is a served model; its inputs and outputs
are those of a signature: ``serving_default`` unless the request's parameters name
another (``"signature_name": "action"``). Sequence flags (``sequence_id``,
``sequence_start``, ``sequence_end``) ride in the request's parameters, as Triton reads
them (``runtimes.serving.sequences``).
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from runtimes.serving.core import ServingCore
from runtimes.serving.models import LoadedVersion, parse_version
from runtimes.serving.sequences import parse_flags
from runtimes.serving.signatures import DEFAULT_SIGNATURE, Signature, TensorInfo
from toolkit.errors import ServingError

__all__ = [
    "DATATYPES",
    "PLATFORM",
    "SERVER_NAME",
    "check_shape",
    "datatype",
    "infer",
    "little_endian",
    "model_metadata",
    "numpy_dtype",
    "parse_version_text",
    "server_metadata",
    "signature_of",
]

SERVER_NAME = "policy-toolkit"
PLATFORM = "policy-toolkit"
EXTENSIONS = ["binary_tensor_data", "sequence"]

#: numpy dtype name -> v2 datatype
DATATYPES = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "object": "BYTES",
}
_NUMPY = {v: k for k, v in DATATYPES.items()}
_LITTLE = sys.byteorder == "little"


# np.dtype(...).name is slow (tens of microseconds per request on the hot path): look
# dtypes up directly, falling back to the name for anything else.
_BY_DTYPE = {np.dtype(k): v for k, v in DATATYPES.items()}


def datatype(dtype: Any) -> str:
    """A numpy dtype's v2 datatype."""
    try:
        found = _BY_DTYPE.get(dtype)
    except TypeError:  # unhashable
        found = None
    if found is not None:
        return found
    return DATATYPES.get(np.dtype(dtype).name, "BYTES")


def numpy_dtype(name: str) -> np.dtype:
    """A v2 datatype's numpy dtype (object for BYTES)."""
    return np.dtype(_NUMPY[name])


def parse_version_text(text: str | None) -> int | None:
    """A version given as text ('' or None: the highest in service)."""
    if not text:
        return None
    version = parse_version(text)
    if version is None:
        raise ServingError(f"model version: expected a whole number, got {text!r:.40}")
    return version


def server_metadata(version: str) -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": version, "extensions": EXTENSIONS}


def _tensor_metadata(tensor: TensorInfo) -> dict[str, Any]:
    shape = [-1 if d is None else d for d in tensor.shape]
    return {"name": tensor.name, "datatype": datatype(tensor.dtype), "shape": shape}


def model_metadata(core: ServingCore, name: str, loaded: LoadedVersion) -> dict[str, Any]:
    """A model's metadata: its versions in service and ``serving_default``'s tensors."""
    versions = sorted(core.registry.get(name).versions)
    signature = loaded.signatures[DEFAULT_SIGNATURE]
    return {
        "name": name,
        "versions": [str(v) for v in versions],
        "platform": PLATFORM,
        "inputs": [_tensor_metadata(t) for t in signature.inputs.values()],
        "outputs": [_tensor_metadata(t) for t in signature.outputs.values()],
    }


def signature_of(loaded: LoadedVersion, parameters: dict[str, Any]) -> Signature:
    """The signature a request names in its parameters (``serving_default`` without)."""
    name = parameters.get("signature_name", "") or DEFAULT_SIGNATURE
    if not isinstance(name, str):
        raise ServingError(f"parameters/signature_name: expected a string, got {name!r:.40}")
    signature = loaded.signatures.get(name)
    if signature is None:
        raise ServingError(
            f"parameters/signature_name: no signature {name!r:.60} (signatures: "
            f"{sorted(loaded.signatures)})"
        )
    return signature


def check_shape(
    name: str, dtype_name: str, shape: Any, signature: Signature, model: str, max_batch: int
) -> tuple[TensorInfo, tuple[int, ...], int]:
    """Checks an input's name, datatype and shape before its data is read.

    Returns:
      ``(its tensor, the shape to reshape the data to, its element count)``. A scalar
      input (``batch_size``) may come as shape ``[1]``.

    Raises:
      ServingError: (invalid argument) naming the input, what was expected and what came.
    """
    tensor = signature.inputs.get(name)
    if tensor is None:
        raise ServingError(
            f"unexpected inference input '{name:.60}' for model '{model}' (signature "
            f"'{signature.name}' takes {sorted(signature.inputs)})"
        )
    expected = datatype(tensor.dtype)
    if dtype_name != expected:
        raise ServingError(
            f"{name}: unexpected datatype {dtype_name!s:.20} for inference input "
            f"'{name}', expecting {expected}"
        )
    if not isinstance(shape, list | tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ServingError(f"{name}: expected a shape of sizes >= 0, got {shape!r:.60}")
    shape = tuple(shape)
    if not tensor.shape and shape in ((), (1,)):
        return tensor, (), 1
    fits = len(shape) == len(tensor.shape) and all(
        d is None or d == n for d, n in zip(tensor.shape, shape, strict=False)
    )
    if not fits:
        raise ServingError(
            f"{name}: expected shape {tensor.describe_shape()}, got [{', '.join(map(str, shape))}]"
        )
    if signature.batched and shape and shape[0] > max_batch:
        raise ServingError(
            f"{name}: expected a batch of at most {max_batch} (the server's --max-batch), "
            f"got {shape[0]}"
        )
    return tensor, shape, math.prod(shape)


def from_list(name: str, data: Any, tensor: TensorInfo, shape: tuple, count: int) -> np.ndarray:
    """JSON ``data`` (flat or nested, row-major) -> an array of ``shape``.

    Raises:
      ServingError: (invalid argument) for values of the wrong kind or count.
    """
    if not isinstance(data, list):
        data = [data]
    target = np.dtype(tensor.dtype)
    try:
        array = np.array(data, dtype=object if target.kind == "O" else None)
    except (ValueError, TypeError):
        raise ServingError(
            f"{name}: expected a list of numbers, got nested lists of mixed lengths"
        ) from None
    if array.size != count:
        raise ServingError(
            f"{name}: expected {count} values for shape {list(shape)}, got {array.size}"
        )
    accepts = {"f": "fiu", "i": "iu", "u": "iu", "b": "b", "O": "OU"}[target.kind]
    if array.size and array.dtype.kind not in accepts:
        kind = {"f": "decimals", "b": "booleans", "U": "strings", "O": "mixed values"}.get(
            array.dtype.kind, "integers"
        )
        raise ServingError(f"{name}: expected {datatype(target)} values, got {kind}")
    return array.reshape(shape)


def from_bytes(
    name: str, raw: bytes | memoryview, tensor: TensorInfo, shape: tuple, count: int
) -> np.ndarray:
    """Raw little-endian tensor bytes (BYTES: 4-byte length prefixes) -> an array of ``shape``.

    Raises:
      ServingError: (invalid argument) for a size that does not match the shape.
    """
    target = np.dtype(tensor.dtype)
    if target.kind == "O":
        return _unpack_bytes(name, raw, count).reshape(shape)
    expected = count * target.itemsize
    if len(raw) != expected:
        raise ServingError(
            f"{name}: expected {expected} bytes of {datatype(target)} for shape "
            f"{list(shape)}, got {len(raw)}"
        )
    return little_endian(raw, target).reshape(shape)


def little_endian(raw: bytes | memoryview, dtype: np.dtype) -> np.ndarray:
    """Little-endian bytes (their size checked) -> a flat array of ``dtype`` itself.

    The result's dtype is ``dtype``'s own object, not an equal ``<f4`` one: the
    runtime's fast path takes arrays whose dtype is the spec's by identity, and an
    equal copy sends every request through its full nest checks (~100 us).
    """
    if _LITTLE or dtype.itemsize == 1:
        return np.frombuffer(raw, dtype)
    return np.frombuffer(raw, dtype.newbyteorder("<")).astype(dtype)


def _unpack_bytes(name: str, raw: bytes | memoryview, count: int) -> np.ndarray:
    out, offset, raw = [], 0, memoryview(raw)
    for _ in range(count):
        if offset + 4 > len(raw):
            raise ServingError(f"{name}: BYTES data ends inside element {len(out)}")
        size = int.from_bytes(raw[offset : offset + 4], "little")
        offset += 4
        if offset + size > len(raw):
            raise ServingError(f"{name}: BYTES element {len(out)} runs past the data")
        out.append(bytes(raw[offset : offset + size]))
        offset += size
    if offset != len(raw):
        raise ServingError(f"{name}: {len(raw) - offset} bytes left after {count} BYTES elements")
    array = np.empty(count, object)
    array[:] = out
    return array


def to_bytes(array: np.ndarray) -> bytes:
    """An output's raw little-endian bytes (BYTES: each element length-prefixed)."""
    if array.dtype.kind in "OUS":
        parts = []
        for item in array.ravel().tolist():
            data = item if isinstance(item, bytes) else str(item).encode()
            parts += [len(data).to_bytes(4, "little"), data]
        return b"".join(parts)
    return np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()


def output_names(signature: Signature, requested: list[str] | None, model: str) -> list[str]:
    """The outputs a request asked for (all of the signature's without a list).

    Raises:
      ServingError: (invalid argument) naming an output the signature lacks.
    """
    if not requested:
        return list(signature.outputs)
    for name in requested:
        if name not in signature.outputs:
            raise ServingError(
                f"unexpected inference output '{name:.60}' for model '{model}' (signature "
                f"'{signature.name}' gives {sorted(signature.outputs)})"
            )
    return list(requested)


async def infer(
    core: ServingCore,
    model: str,
    loaded: LoadedVersion,
    signature: Signature,
    arrays: dict[str, np.ndarray],
    parameters: dict[str, Any],
) -> dict[str, Any]:
    """Runs a decoded request, with server-held state when its parameters name a sequence."""
    flags = parse_flags(parameters)
    if flags is None:
        return await core.run(signature, arrays)
    return await core.run(signature, arrays, flags, loaded, model)
