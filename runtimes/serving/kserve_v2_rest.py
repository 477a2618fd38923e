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
from typing import Any

import numpy as np

from runtimes.serving import jsonio, v2
from runtimes.serving.core import OFFLOAD_BYTES, ServingCore
from runtimes.serving.http import HttpAnswer, HttpRequest, error_answer
from runtimes.serving.models import LoadedVersion
from toolkit.errors import ErrorKind, ServingError, ToolkitError

__all__ = ["NAME", "KServeV2Rest", "make"]

NAME = "kserve_v2_rest"
HEADER_LENGTH = b"inference-header-content-length"
OCTETS = b"application/octet-stream"

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
        raw = await request.body()
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
            decoded = self.decode(raw, header_size, model, loaded)
        else:
            decoded = await core.offload(self.decode, raw, header_size, model, loaded)
        signature, arrays, parameters, body, wanted = decoded
        outputs = await v2.infer(core, model, loaded, signature, arrays, parameters)
        if len(raw) <= OFFLOAD_BYTES:
            return self.encode(outputs, body, wanted, model, loaded)
        return await core.offload(self.encode, outputs, body, wanted, model, loaded)

    def decode(
        self, raw: bytes, header_size: int | None, model: str, loaded: LoadedVersion
    ) -> tuple[Any, dict[str, np.ndarray], dict[str, Any], dict[str, Any], list]:
        """An infer body -> (signature, input arrays, parameters, the JSON, requested outputs).

        Raises:
          ServingError: (invalid argument) naming what is wrong.
        """
        view = memoryview(raw)
        head = view if header_size is None else view[:header_size]
        body = jsonio.loads(bytes(head), len(head) > OFFLOAD_BYTES)
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
