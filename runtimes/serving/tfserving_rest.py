"""TF Serving's REST API as a codec over the serving core (paths, JSON, errors).

Paths, bodies and errors follow TF Serving's RESTful API (its path patterns are
case-insensitive, as theirs): model status ``GET /v1/models/NAME[/versions/V|/labels/L]``,
metadata ``GET .../metadata``, predict ``POST /v1/models/NAME[/versions/V|/labels/L]:predict``
with the inputs in row (``instances``) or columnar (``inputs``) format, answered in
the same one (``predictions`` / ``outputs``); errors are ``{"error": "..."}`` with the
HTTP status ``runtimes.serving.http.HTTP_STATUS`` gives each error kind, as TF Serving maps
its codes (``runtimes.serving.http.error_answer``).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np

from runtimes.serving import jsonio
from runtimes.serving.core import OFFLOAD_BYTES, ServingCore, VersionState
from runtimes.serving.http import HttpAnswer, HttpRequest, error_answer
from runtimes.serving.models import LoadedVersion, parse_version
from runtimes.serving.signatures import DEFAULT_SIGNATURE, Signature, TensorInfo, short
from toolkit.errors import ErrorKind, ServingError, ToolkitError

__all__ = ["NAME", "TFServingRest", "encode", "make"]

#: The protocol's name (the metrics' ``protocol`` label).
NAME = "tfserving_rest"
PREDICT_METHOD = "tensorflow/serving/predict"

log = logging.getLogger("policy_toolkit.serve")


# TF Serving's path patterns (http_rest_api_util.cc), matched against the whole path.
_PREDICT = re.compile(
    r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:(classify|regress|predict)",
    re.IGNORECASE,
)
_STATUS = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:/versions/(\d+)|/labels/([^/:]+))?(?:/(metadata))?",
    re.IGNORECASE,
)
_DT = {
    "bool": "DT_BOOL",
    "int8": "DT_INT8",
    "int16": "DT_INT16",
    "int32": "DT_INT32",
    "int64": "DT_INT64",
    "uint8": "DT_UINT8",
    "uint16": "DT_UINT16",
    "uint32": "DT_UINT32",
    "uint64": "DT_UINT64",
    "float16": "DT_HALF",
    "float32": "DT_FLOAT",
    "float64": "DT_DOUBLE",
    "object": "DT_STRING",
}


def make(core: ServingCore) -> TFServingRest:
    """The codec over ``core`` (the protocol table's entry point)."""
    return TFServingRest(core)


def _version(text: str | None) -> int | None:
    if text is None:
        return None
    version = parse_version(text)
    if version is None:
        raise ServingError(f"Failed to convert version: {text} to numeric.")
    return version


class TFServingRest:
    """TF Serving's REST API on ``/v1/...`` (see the module docstring)."""

    name = NAME

    def __init__(self, core: ServingCore):
        self.core = core

    def handles(self, path: str) -> bool:
        return path == "/v1" or path.startswith("/v1/")

    async def handle(self, request: HttpRequest) -> HttpAnswer:
        method, path = request.method, request.path
        model, api = None, "other"
        try:
            if method == "POST" and (match := _PREDICT.fullmatch(path)):
                model, version, label, verb = match.groups()
                api = verb.lower()
                if api != "predict":
                    raise ServingError(
                        f"{verb}: not supported (policies answer :predict; classify and "
                        "regress take tf.Example protos)",
                        ErrorKind.UNIMPLEMENTED,
                    )
                body = await self.predict(request, model, _version(version), label)
            elif method == "GET" and (match := _STATUS.fullmatch(path)):
                model, version, label, sub = match.groups()
                api = "metadata" if sub else "status"
                if not model:
                    raise ServingError("Missing model name in request.")
                make_json = self.metadata if sub else self.status
                body = jsonio.dumps(make_json(model, _version(version), label), indent=1)
            else:
                raise ServingError(f"Malformed request: {method} {path}")
        except ServingError as e:
            return error_answer(str(e), e.kind, model, api)
        except ToolkitError as e:  # the policy refused the inputs (names what is wrong)
            return error_answer(str(e), ErrorKind.INVALID_ARGUMENT, model, api)
        except Exception as e:
            log.exception("%s %s failed", method, path)
            message = f"Internal error: {type(e).__name__}: {e}"
            return error_answer(message, ErrorKind.INTERNAL, model, api)
        return HttpAnswer(body, model=model, api=api)

    # --- predict ------------------------------------------------------------------------

    async def predict(
        self, request: HttpRequest, model: str, version: int | None, label: str | None
    ) -> bytes:
        raw = request.body()
        loaded = self.core.resolve(model, version, label)
        core = self.core
        if len(raw) <= OFFLOAD_BYTES:
            signature, arrays, rows = self.decode(raw, loaded, False)
            return encode(await core.run(signature, arrays), rows)
        # A large body: decoded (and its answer encoded) off the event loop's thread.
        signature, arrays, rows = await core.offload(self.decode, raw, loaded, True)
        outputs = await core.run(signature, arrays)
        return await core.offload(encode, outputs, rows)

    def decode(
        self, raw: bytes, loaded: LoadedVersion, sliced: bool
    ) -> tuple[Signature, dict[str, np.ndarray], bool]:
        """A predict body -> (its signature, input arrays, whether it came as rows).

        Raises:
          ServingError: (invalid argument) naming what is wrong, as TF Serving words it
            where it can.
        """
        body = jsonio.loads(raw, sliced)
        name = body.get("signature_name", "") if isinstance(body, dict) else ""
        if not isinstance(name, str):
            raise ServingError(
                f"JSON Value: {short(name)} Expecting 'signature_name' to be a string"
            )
        name = name or DEFAULT_SIGNATURE
        signature = loaded.signatures.get(name)
        if signature is None:
            raise ServingError(
                f'Serving signature name: "{name}" not found in signature def '
                f"(signatures: {sorted(loaded.signatures)})"
            )
        if not isinstance(body, dict):
            raise ServingError(f"JSON Value: {short(body)} Is not object")
        rows, has_columns = "instances" in body, "inputs" in body
        if rows and has_columns:
            raise ServingError(
                "Not formatted correctly expecting only one of 'inputs' or 'instances' "
                "keys to exist"
            )
        max_batch = self.core.limits.max_batch
        if not signature.batched:
            columns = _unbatched(signature, body, rows)
        elif rows:
            columns = _columns_from_rows(signature, body["instances"], max_batch)
        elif has_columns:
            columns = _single_or_map(signature, body["inputs"], "'inputs'")
        else:
            raise ServingError("Missing 'inputs' or 'instances' key")
        signature.check_names(columns)
        arrays = {n: jsonio.to_array(v, signature.inputs[n], max_batch) for n, v in columns.items()}
        return signature, arrays, rows

    # --- status and metadata --------------------------------------------------------------

    def status(self, model: str, version: int | None, label: str | None) -> dict[str, Any]:
        """TF Serving's GetModelStatusResponse in JSON."""
        states = self.core.status(model, version, label)
        return {"model_version_status": [_state_json(s) for s in states]}

    def metadata(self, model: str, version: int | None, label: str | None) -> dict[str, Any]:
        """TF Serving's GetModelMetadataResponse in JSON (the signature defs)."""
        loaded = self.core.resolve(model, version, label)
        return {
            "model_spec": {"name": model, "signature_name": "", "version": str(loaded.version)},
            "metadata": {
                "signature_def": {
                    "signature_def": {n: _signature_json(s) for n, s in loaded.signatures.items()}
                }
            },
        }


# --- decoding -------------------------------------------------------------------------------


def _columns_from_rows(signature: Signature, instances: Any, max_batch: int) -> dict[str, Any]:
    if not isinstance(instances, list):
        raise ServingError("Expecting 'instances' to be an list/array")
    if not instances:
        raise ServingError("No values in 'instances' array")
    if len(instances) > max_batch:
        raise ServingError(
            f"instances: expected at most {max_batch} (the server's --max-batch), "
            f"got {len(instances)}"
        )
    if not isinstance(instances[0], dict):
        name = _single_input(signature, "instances is a plain list")
        for i, item in enumerate(instances):
            if isinstance(item, dict):
                raise ServingError(f"Expecting value/list but got object at item {i} of input list")
        return {name: instances}
    keys = set(instances[0])
    for i, item in enumerate(instances):
        if not isinstance(item, dict):
            raise ServingError(f"Expecting object but got list at item {i} of input list")
        if set(item) != keys:
            raise ServingError(
                f"Failed to process element: {i} of 'instances' list. JSON object: keys "
                f"must be equal to: {','.join(sorted(keys))} (as in element 0), got "
                f"{','.join(sorted(item))}"
            )
    return {k: [item[k] for item in instances] for k in keys}


def _single_or_map(signature: Signature, value: Any, where: str) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    return {_single_input(signature, f"{where} is a plain value/list"): value}


def _single_input(signature: Signature, what: str) -> str:
    if len(signature.required) != 1:
        raise ServingError(
            f"{what}, but expecting named inputs (an object) as signature "
            f"'{signature.name}' takes {sorted(signature.inputs)}"
        )
    return signature.required[0]


def _unbatched(signature: Signature, body: dict[str, Any], rows: bool) -> dict[str, Any]:
    if rows:
        instances = body["instances"]
        if not isinstance(instances, list) or len(instances) > 1:
            raise ServingError(
                f"instances: signature '{signature.name}' takes one instance, got "
                f"{short(instances)}"
            )
        value = instances[0] if instances else {}
    else:
        value = body.get("inputs", {})
    if not signature.inputs:
        if value not in ({}, [], None):
            raise ServingError(f"signature '{signature.name}' takes no inputs, got {short(value)}")
        return {}
    return _single_or_map(signature, value, "'inputs'")


# --- encoding -------------------------------------------------------------------------------


def encode(outputs: dict[str, Any], rows: bool) -> bytes:
    """Outputs -> TF Serving's predict response: ``predictions`` (rows) or ``outputs``.

    One output is given without its name; several as objects keyed by name. In rows,
    an output without a batch dim (a scalar) counts as one row.
    """
    names = list(outputs)
    plain = {n: jsonio.plain(outputs[n]) for n in names}
    if not rows:
        body: Any = plain[names[0]] if len(names) == 1 else plain
        return jsonio.dumps({"outputs": body})
    columns = {n: (v if np.ndim(outputs[n]) else [v]) for n, v in plain.items()}
    if len(names) == 1:
        return jsonio.dumps({"predictions": columns[names[0]]})
    count = len(next(iter(columns.values()))) if columns else 0
    return jsonio.dumps({"predictions": [{n: columns[n][i] for n in names} for i in range(count)]})


def _tensor_json(tensor: TensorInfo) -> dict[str, Any]:
    """TF Serving's TensorInfo in JSON (as in GetModelMetadataResponse)."""
    return {
        "dtype": _DT.get(np.dtype(tensor.dtype).name, "DT_INVALID"),
        "tensor_shape": {
            "dim": [{"size": str(-1 if d is None else d), "name": ""} for d in tensor.shape],
            "unknown_rank": False,
        },
        "name": f"{tensor.name}:0",
    }


def _signature_json(signature: Signature) -> dict[str, Any]:
    """TF Serving's SignatureDef in JSON."""
    return {
        "inputs": {n: _tensor_json(t) for n, t in signature.inputs.items()},
        "outputs": {n: _tensor_json(t) for n, t in signature.outputs.items()},
        "method_name": PREDICT_METHOD,
        "defaults": {},
    }


def _state_json(state: VersionState) -> dict[str, Any]:
    return {
        "version": str(state.version),
        "state": "AVAILABLE" if state.available else "END",
        "status": {
            "error_code": "OK" if state.available else "UNKNOWN",
            "error_message": state.error,
        },
    }
