"""KServe v2 (the Open Inference Protocol) over REST, as a codec over the serving core.

Paths: server metadata ``GET /v2``, ``GET /v2/health/live`` and ``/v2/health/ready``,
model metadata ``GET /v2/models/NAME[/versions/V]``, ``GET .../ready``, and
``POST /v2/models/NAME[/versions/V]/infer``. Tensors come as JSON (``data``, flat or
nested, row-major) or, with the binary tensor data extension, as raw bytes after the
JSON header (``Inference-Header-Content-Length`` gives the header's size, each
input's ``binary_data_size`` parameter its share). Outputs are answered in binary when
asked (``binary_data`` on an output, or ``binary_data_output`` on the request, as
``tritonclient.http`` asks by default). Errors are ``{"error": "..."}`` with an HTTP
status per error kind (``runtimes.serving.http.error_answer``).
"""

from __future__ import annotations

import logging
import re
import weakref
from typing import Any

import numpy as np

from runtimes.serving import jsonio, plans, v2
from runtimes.serving.core import OFFLOAD_BYTES, ServingCore
from runtimes.serving.http import HttpAnswer, HttpRequest, error_answer
from runtimes.serving.models import LoadedVersion
from toolkit.errors import ErrorKind, ServingError, ToolkitError

__all__ = ["NAME", "KServeV2Rest", "make"]

NAME = "kserve_v2_rest"
HEADER_LENGTH = b"inference-header-content-length"
OCTETS = b"application/octet-stream"
#: layouts of plain requests kept (``_Plan``); all are dropped when full
_MAX_PLANS = 256
# the element kinds JSON data of an input's kind may hold (as ``v2.from_list``)
_ACCEPTS = {"f": "fiu", "i": "iu", "u": "iu", "b": "b"}

log = logging.getLogger("policy_toolkit.serve")


_MODEL = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?(?:/(ready|infer))?")


def make(core: ServingCore) -> KServeV2Rest:
    """The codec over ``core`` (the protocol table's entry point)."""
    return KServeV2Rest(core)


class KServeV2Rest:
    """KServe v2's REST API on ``/v2...`` (see the module docstring)."""

    name = NAME

    def __init__(self, core: ServingCore):
        self.core = core
        self._plans = plans.Plans(_MAX_PLANS)
        from importlib.metadata import PackageNotFoundError, version

        try:
            self._version = version("policy-toolkit")
        except PackageNotFoundError:
            self._version = "0"

    def handles(self, path: str) -> bool:
        return path == "/v2" or path.startswith("/v2/")

    async def handle(self, request: HttpRequest) -> HttpAnswer:
        method, path = request.method, request.path
        model, api = None, "other"
        core = self.core
        try:
            # an infer of the highest version, without the path's regex
            if method == "POST" and path[-6:] == "/infer" and path[:11] == "/v2/models/":
                name = path[11:-6]
                if name and "/" not in name:
                    model, api = name, "infer"
                    return await self.infer(request, name, None)
            if path in ("/v2", "/v2/") and method == "GET":
                api = "server_metadata"
                return HttpAnswer(jsonio.dumps(v2.server_metadata(self._version)), api=api)
            if path in ("/v2/health/live", "/v2/health/ready") and method == "GET":
                api = path.rsplit("/", 1)[1]
                ok = api == "live" or core.ready()
                if not ok:
                    raise ServingError("the server is not ready", ErrorKind.UNAVAILABLE)
                return HttpAnswer(b"", api=api)
            match = _MODEL.fullmatch(path)
            if match is None:
                raise ServingError(f"Malformed request: {method} {path}", ErrorKind.NOT_FOUND)
            model, version_text, verb = match.groups()
            version = v2.parse_version_text(version_text)
            if verb == "infer" and method == "POST":
                api = "infer"
                return await self.infer(request, model, version)
            if verb == "ready" and method == "GET":
                api = "model_ready"
                core.resolve(model, version, None)  # not found: not ready
                if core.draining:
                    raise ServingError("the server is shutting down", ErrorKind.UNAVAILABLE)
                return HttpAnswer(b"", model=model, api=api)
            if verb is None and method == "GET":
                api = "model_metadata"
                loaded = core.resolve(model, version, None)
                body = jsonio.dumps(v2.model_metadata(core, model, loaded))
                return HttpAnswer(body, model=model, api=api)
            raise ServingError(f"Malformed request: {method} {path}", ErrorKind.NOT_FOUND)
        except ServingError as e:
            return error_answer(str(e), e.kind, model, api)
        except ToolkitError as e:  # the policy refused the inputs (names what is wrong)
            return error_answer(str(e), ErrorKind.INVALID_ARGUMENT, model, api)
        except Exception as e:
            log.exception("%s %s failed", method, path)
            message = f"Internal error: {type(e).__name__}: {e}"
            return error_answer(message, ErrorKind.INTERNAL, model, api)

    # --- infer ---------------------------------------------------------------------------------

    async def infer(self, request: HttpRequest, model: str, version: int | None) -> HttpAnswer:
        raw = request.body()
        header_size = None
        for key, value in request.headers:
            if key == HEADER_LENGTH:
                try:
                    header_size = int(value)
                except ValueError:
                    header_size = -1
                if not 0 <= header_size <= len(raw):
                    raise ServingError(
                        f"Inference-Header-Content-Length: expected 0 to {len(raw)} (the "
                        f"body's size), got {value.decode(errors='replace')[:40]}"
                    )
        loaded = self.core.resolve(model, version, None)
        core = self.core
        if len(raw) <= OFFLOAD_BYTES:
            if header_size is None:
                body = jsonio.loads(raw)
                key = _layout(body, model, version)
                plan = None if key is None else self._plans.get(key)
                if plan is not None:
                    arrays = plan.arrays(loaded, body["inputs"])
                    if arrays is not None:
                        signature = loaded.signatures[plan.signature]
                        outputs = await core.run(signature, arrays, checked=plan.batch)
                        answer = plan.encode(outputs, body)
                        if answer is not None:
                            return HttpAnswer(answer, model=model, api="infer")
                        return self.encode(outputs, body, plan.wanted, model, loaded)
                decoded = self.decode(raw, None, model, loaded, body)
                if key is not None:
                    return await self._learn(key, decoded, model, loaded)
            else:
                decoded = self.decode(raw, header_size, model, loaded)
        else:
            decoded = await core.offload(self.decode, raw, header_size, model, loaded)
        signature, arrays, parameters, body, wanted = decoded
        outputs = await v2.infer(core, model, loaded, signature, arrays, parameters)
        if len(raw) <= OFFLOAD_BYTES:
            return self.encode(outputs, body, wanted, model, loaded)
        return await core.offload(self.encode, outputs, body, wanted, model, loaded)

    async def _learn(
        self, key: tuple, decoded: tuple, model: str, loaded: LoadedVersion
    ) -> HttpAnswer:
        """Runs a plain request decoded in full, and keeps its layout's plan when the
        signature's check only converted its arrays' dtypes (``_Plan``)."""
        signature, arrays, _, body, wanted = decoded
        checked, batch = signature.check(arrays, self.core.limits.max_batch)
        outputs = await self.core.run(signature, checked, checked=batch)
        answer = self.encode(outputs, body, wanted, model, loaded)
        if all(checked[n].shape == a.shape for n, a in arrays.items()):
            plan = _Plan.make(model, loaded, signature, checked, batch, wanted, outputs)
            if plan is not None and plan.encode(outputs, body) == answer.body:
                self._plans.learn(key, plan)
        return answer

    def decode(
        self,
        raw: bytes,
        header_size: int | None,
        model: str,
        loaded: LoadedVersion,
        body: Any = None,
    ) -> tuple[Any, dict[str, np.ndarray], dict[str, Any], dict[str, Any], list]:
        """An infer body -> (signature, input arrays, parameters, the JSON, requested outputs).

        Args:
          body: the JSON of a body without binary data, if parsed already.

        Raises:
          ServingError: (invalid argument) naming what is wrong.
        """
        view = memoryview(raw)
        if body is None:
            head = raw if header_size is None else bytes(view[:header_size])
            body = jsonio.loads(head, len(head) > OFFLOAD_BYTES)
        if not isinstance(body, dict):
            raise ServingError("infer request: expected a JSON object")
        parameters = body.get("parameters", {}) or {}
        if not isinstance(parameters, dict):
            raise ServingError("parameters: expected an object")
        signature = v2.signature_of(loaded, parameters)
        inputs = body.get("inputs")
        if not isinstance(inputs, list):
            raise ServingError("inputs: expected a list of tensors")
        max_batch = self.core.limits.max_batch
        offset = 0 if header_size is None else header_size
        arrays: dict[str, np.ndarray] = {}
        for i, item in enumerate(inputs):
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise ServingError(f"inputs/{i}: expected an object with a name")
            name = item["name"]
            if name in arrays:
                raise ServingError(f"{name}: given twice")
            tensor, shape, count = v2.check_shape(
                name, item.get("datatype"), item.get("shape"), signature, model, max_batch
            )
            params = item.get("parameters") or {}
            size = params.get("binary_data_size") if isinstance(params, dict) else None
            if size is not None:
                if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                    raise ServingError(
                        f"{name}: binary_data_size: expected a size, got {size!r:.40}"
                    )
                if header_size is None or offset + size > len(raw):
                    raise ServingError(
                        f"{name}: binary_data_size {size} runs past the body's binary data "
                        f"({len(raw) - offset} bytes left)"
                    )
                arrays[name] = v2.from_bytes(
                    name, view[offset : offset + size], tensor, shape, count
                )
                offset += size
            elif "data" in item:
                arrays[name] = v2.from_list(name, item["data"], tensor, shape, count)
            else:
                raise ServingError(f"{name}: expected data or binary_data_size")
        if header_size is not None and offset != len(raw):
            raise ServingError(
                f"request body: {len(raw) - offset} bytes of binary data no input claims"
            )
        requested = body.get("outputs")
        wanted: list[tuple[str, bool]] = []
        default_binary = parameters.get("binary_data_output", False) is True
        if requested is not None:
            if not isinstance(requested, list) or not all(
                isinstance(o, dict) and isinstance(o.get("name"), str) for o in requested
            ):
                raise ServingError("outputs: expected a list of objects with a name")
            names = v2.output_names(signature, [o["name"] for o in requested], model)
            for name, o in zip(names, requested, strict=True):
                p = o.get("parameters") or {}
                wanted.append((name, bool(p.get("binary_data", default_binary))))
        else:
            wanted = [(n, default_binary) for n in signature.outputs]
        return signature, arrays, parameters, body, wanted

    def encode(
        self,
        outputs: dict[str, Any],
        body: dict[str, Any],
        wanted: list[tuple[str, bool]],
        model: str,
        loaded: LoadedVersion,
    ) -> HttpAnswer:
        answer: dict[str, Any] = {"model_name": model, "model_version": str(loaded.version)}
        if "id" in body:
            answer["id"] = body["id"]
        tensors, blobs = [], []
        for name, binary in wanted:
            array = np.asarray(outputs[name])
            tensor: dict[str, Any] = {
                "name": name,
                "datatype": v2.datatype(array.dtype),
                "shape": list(array.shape),
            }
            if binary:
                blob = v2.to_bytes(array)
                tensor["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                tensor["data"] = jsonio.plain(array.ravel())
            tensors.append(tensor)
        answer["outputs"] = tensors
        head = jsonio.dumps(answer)
        if not blobs:
            return HttpAnswer(head, model=model, api="infer")
        return HttpAnswer(
            b"".join([head, *blobs]),
            content_type=OCTETS,
            model=model,
            api="infer",
            headers=[(HEADER_LENGTH, str(len(head)).encode())],
        )


def _layout(body: Any, model: str, version: int | None) -> tuple | None:
    """The layout of a plain request's JSON: no parameters or outputs asked for (an
    ``id`` at most besides the inputs), each input its name, datatype, a shape of whole
    numbers and data only. None for anything else (decoded in full every time)."""
    if type(body) is not dict:
        return None
    inputs = body.get("inputs")
    if type(inputs) is not list or len(body) != 1 + ("id" in body):
        return None
    key: list[Any] = [model, version]
    for item in inputs:
        if type(item) is not dict or len(item) != 4 or "data" not in item:
            return None
        name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
        if type(name) is not str or type(datatype) is not str or type(shape) is not list:
            return None
        for size in shape:
            if type(size) is not int:  # True and 1.0 equal 1: the full path refuses them
                return None
        key.append((name, datatype, *shape))
    return tuple(key)


class _Plan:
    """What a plain JSON request of one layout needs, worked out on its first request.

    The layout (``_layout``: model, version asked for, input names, datatypes and
    shapes) fixes, for the version it was made on, the signature, each input's element
    count, dtype and shape, the batch, and the answer's text but the outputs' data.
    A request's data is still converted and checked (count, element kinds) on every
    request; anything that does not fit goes the full way, which names what is wrong.
    """

    __slots__ = ("batch", "head", "inputs", "loaded", "outputs", "signature", "wanted")

    @classmethod
    def make(cls, model, loaded, signature, arrays, batch, wanted, outputs) -> _Plan | None:
        """The plan of a request that passed (None: text tensors, binary outputs, or
        outputs that are not plain arrays)."""
        if not signature.batched or any(binary for _, binary in wanted):
            return None
        inputs = []
        for name, array in arrays.items():
            kind = array.dtype.kind
            if kind not in _ACCEPTS:
                return None
            inputs.append((name, array.dtype, array.shape, array.size, _ACCEPTS[kind]))
        plan_outputs = []
        for name, _ in wanted:
            array = outputs[name]
            if type(array) is not np.ndarray or array.dtype.kind in plans.TEXT_KINDS:
                return None
            prefix = jsonio.dumps({"name": name, "datatype": v2.datatype(array.dtype)})
            plan_outputs.append((name, array.dtype, prefix[:-1] + b',"shape":['))
        plan = cls()
        plan.loaded = weakref.ref(loaded)
        #: the signature's name (the signature itself would hold the version's policy)
        plan.signature = signature.name
        plan.inputs = tuple(inputs)
        plan.batch = batch
        plan.wanted = wanted
        plan.outputs = tuple(plan_outputs)
        version = jsonio.dumps(str(loaded.version))
        plan.head = b'{"model_name":' + jsonio.dumps(model) + b',"model_version":' + version
        return plan

    def arrays(self, loaded: LoadedVersion, items: list) -> dict[str, np.ndarray] | None:
        """A request's inputs in the signature's dtypes and shapes (None: another
        version's plan, or data that does not fit: the full path names what is wrong)."""
        if self.loaded() is not loaded:
            return None
        arrays = {}
        for (name, dtype, shape, count, accepts), item in zip(self.inputs, items, strict=True):
            try:
                array = np.array(item["data"])
            except (ValueError, TypeError):
                return None
            if array.size != count or (count and array.dtype.kind not in accepts):
                return None
            if array.dtype is not dtype:
                if dtype.kind in "iu":  # a range to check: the full path does
                    return None
                array = array.astype(dtype)
            arrays[name] = array.reshape(shape)
        return arrays

    def encode(self, outputs: dict[str, Any], body: dict) -> bytes | None:
        """The answer's JSON, as ``KServeV2Rest.encode`` writes it (None: an output of
        another dtype than the plan's)."""
        parts = [self.head]
        if "id" in body:
            parts += [b',"id":', jsonio.dumps(body["id"])]
        parts.append(b',"outputs":[')
        for i, (name, dtype, prefix) in enumerate(self.outputs):
            array = outputs[name]
            if type(array) is not np.ndarray or array.dtype != dtype:
                return None
            if i:
                parts.append(b",")
            shape = ",".join(map(str, array.shape)).encode()
            data = jsonio.dumps(jsonio.plain(array.ravel()))
            parts += [prefix, shape, b'],"data":', data, b"}"]
        parts.append(b"]}")
        return b"".join(parts)
