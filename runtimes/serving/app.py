"""The HTTP side: TF Serving's REST API as an ASGI app (uvicorn runs it).

Paths, bodies and errors follow TF Serving's RESTful API (its path patterns are
case-insensitive, as theirs): model status ``GET /v1/models/NAME[/versions/V|/labels/L]``,
metadata ``GET .../metadata``, predict ``POST /v1/models/NAME[/versions/V|/labels/L]:predict``;
errors are ``{"error": "..."}`` with 400 (bad request), 404 (no such model, version or
label) or 413 (body too large). ``GET /metrics`` is Prometheus' text format.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import re
import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from runtimes.serving.metrics import ServerMetrics
from runtimes.serving.models import ModelRegistry, Snapshot
from runtimes.serving.signatures import DEFAULT_SIGNATURE, encode
from toolkit.errors import ServingError, ToolkitError

__all__ = ["Limits", "build_app"]

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
_INT64_MAX = 2**63 - 1
_JSON = b"application/json"


@dataclasses.dataclass(frozen=True)
class Limits:
    """Request limits: body bytes (413 beyond) and rows per request (400 beyond)."""

    max_body_bytes: int = 4 << 20
    max_batch: int = 1024


class _Answer:
    """A response: status, body bytes and content type."""

    __slots__ = ("body", "content_type", "status")

    def __init__(self, body: bytes, status: int = 200, content_type: bytes = _JSON):
        self.body = body
        self.status = status
        self.content_type = content_type


def _error(message: str, status: int) -> _Answer:
    return _Answer(json.dumps({"error": message}).encode(), status)


async def _read_body(scope: dict, receive: Any, limit: int) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                raise ServingError(f"Content-Length: expected a number, got {value!r}") from None
            if declared > limit:
                raise ServingError(
                    f"request body: expected at most {limit} bytes (the server's "
                    f"--max-body-bytes), got {declared}",
                    413,
                )
            break
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ServingError("the client went away", 499)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ServingError(
                f"request body: expected at most {limit} bytes (the server's "
                f"--max-body-bytes), got more",
                413,
            )
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _version(text: str | None) -> int | None:
    if text is None:
        return None
    value = int(text)
    if value > _INT64_MAX:
        raise ServingError(f"Failed to convert version: {text} to numeric.")
    return value


def _status_entry(version: int, state: str = "AVAILABLE", error: str = "") -> dict[str, Any]:
    return {
        "version": str(version),
        "state": state,
        "status": {"error_code": "UNKNOWN" if error else "OK", "error_message": error},
    }


def model_status(snapshot: Snapshot, version: int | None, label: str | None) -> dict[str, Any]:
    """TF Serving's GetModelStatusResponse in JSON."""
    if version is not None or label is not None:
        if version is not None and version not in snapshot.versions:
            failure = snapshot.failures.get(version)
            if failure is not None:
                return {"model_version_status": [_status_entry(version, "END", failure[1])]}
            raise ServingError(f"Could not find version {version} of model {snapshot.name}", 404)
        loaded = snapshot.resolve(version, label)
        return {"model_version_status": [_status_entry(loaded.version)]}
    entries = [_status_entry(v) for v in sorted(snapshot.versions)]
    entries += [
        _status_entry(v, "END", f[1])
        for v, f in sorted(snapshot.failures.items())
        if v not in snapshot.versions
    ]
    if not entries:
        raise ServingError(f"Could not find any versions of model {snapshot.name}", 404)
    return {"model_version_status": entries}


def model_metadata(snapshot: Snapshot, version: int | None, label: str | None) -> dict[str, Any]:
    """TF Serving's GetModelMetadataResponse in JSON (the signature defs)."""
    loaded = snapshot.resolve(version, label)
    return {
        "model_spec": {
            "name": snapshot.name,
            "signature_name": "",
            "version": str(loaded.version),
        },
        "metadata": {
            "signature_def": {
                "signature_def": {n: s.to_json() for n, s in loaded.signatures.items()}
            }
        },
    }


def build_app(registry: ModelRegistry, metrics: ServerMetrics, limits: Limits) -> Any:
    """The ASGI app serving ``registry``'s models.

    A plain ASGI callable: the API is a handful of paths matched by TF Serving's own
    patterns, and a framework's request and response objects cost more per predict
    (measured: about a third of the server's time per request) than they give here.
    """

    async def predict(scope, receive, name: str, version: int | None, label: str | None):
        raw = await _read_body(scope, receive, limits.max_body_bytes)
        loaded = registry.get(name).resolve(version, label)
        if not raw.strip():
            raise ServingError("JSON Parse error: The document is empty")
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise ServingError(f"JSON Parse error: {e}") from None
        signature_name = body.get("signature_name", "") if isinstance(body, dict) else ""
        if not isinstance(signature_name, str):
            raise ServingError(
                f"JSON Value: {json.dumps(signature_name)[:80]} Expecting 'signature_name' to "
                "be a string"
            )
        signature_name = signature_name or DEFAULT_SIGNATURE
        signature = loaded.signatures.get(signature_name)
        if signature is None:
            raise ServingError(
                f'Serving signature name: "{signature_name}" not found in signature def '
                f"(signatures: {sorted(loaded.signatures)})"
            )
        decoded = signature.decode(body, limits.max_batch)
        outputs = signature.run(decoded.arrays, decoded.batch)
        if inspect.isawaitable(outputs):
            outputs = await outputs
        return _Answer(encode(outputs, decoded.rows))

    async def v1(scope, receive, method: str, path: str) -> tuple[_Answer, str | None, str]:
        model, api = None, "other"
        try:
            if method == "POST" and (match := _PREDICT.fullmatch(path)):
                model, version, label, verb = match.groups()
                api = verb.lower()
                if api != "predict":
                    raise ServingError(
                        f"{verb}: not supported (policies answer :predict; classify and "
                        "regress take tf.Example protos)",
                        501,
                    )
                answer = await predict(scope, receive, model, _version(version), label)
            elif method == "GET" and (match := _STATUS.fullmatch(path)):
                model, version, label, sub = match.groups()
                api = "metadata" if sub else "status"
                if not model:
                    raise ServingError("Missing model name in request.")
                snapshot = registry.get(model)
                make = model_metadata if sub else model_status
                answer = _Answer(
                    json.dumps(make(snapshot, _version(version), label), indent=1).encode()
                )
            else:
                raise ServingError(f"Malformed request: {method} {path}")
        except ServingError as e:
            answer = _error(str(e), e.status)
        except ToolkitError as e:  # the policy refused the inputs (names what is wrong)
            answer = _error(str(e), 400)
        except Exception as e:
            log.exception("%s %s failed", method, path)
            answer = _error(f"Internal error: {type(e).__name__}: {e}", 500)
        return answer, model, api

    async def app(scope, receive, send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "lifespan":  # not used (uvicorn runs with lifespan off)
                message = await receive()
                await send({"type": message["type"] + ".complete"})
            return
        started = time.perf_counter()
        method, path = scope["method"], scope["path"]
        if path == "/v1" or path.startswith("/v1/"):
            answer, model, api = await v1(scope, receive, method, path)
            metrics.observe(
                metrics.model_label(model), api, answer.status, time.perf_counter() - started
            )
        elif path == "/metrics" and method == "GET":
            answer = _Answer(generate_latest(metrics.registry), 200, CONTENT_TYPE_LATEST.encode())
        else:
            answer = _error(f"Malformed request: {method} {path}", 404)
        await send(
            {
                "type": "http.response.start",
                "status": answer.status,
                "headers": [
                    (b"content-type", answer.content_type),
                    (b"content-length", str(len(answer.body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": answer.body})

    return app
