"""Which runtime backend Ray workers run, decided here and nowhere else.

Workers never import TensorFlow, so they run the TF-free backends: onnx and litert.
Collectors also swap in the learner's weights from arrays, which only the onnx backend
takes (LiteRT models hold their weights as converted constants). A worker receives
what its backend reads (the manifest and one model file) as bytes, so workers on other
machines need no shared disk.

(When the runtime's backend table with capabilities lands, ``WORKER_BACKENDS`` becomes
a query of it.)
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from toolkit.errors import ArgumentError, BundleError, UnsupportedError

__all__ = ["WORKER_BACKENDS", "Payload", "WorkerBackend", "choose", "payload"]


@dataclasses.dataclass(frozen=True)
class WorkerBackend:
    """A backend Ray workers can run.

    Attributes:
      name: the runtime backend (``runtimes.load_policy(backend=...)``).
      format: the bundle format it reads (its manifest key).
      takes_weights: whether it applies new weights from arrays (collectors need it).
    """

    name: str
    format: str
    takes_weights: bool


#: In order of preference for "auto".
WORKER_BACKENDS = {
    "onnx": WorkerBackend("onnx", "onnx", takes_weights=True),
    "litert": WorkerBackend("litert", "litert", takes_weights=False),
}


@dataclasses.dataclass(frozen=True)
class Payload:
    """What a worker loads: the backend's name and its files ``{name: bytes}``."""

    backend: str
    files: dict[str, bytes]


def _formats(manifest: dict[str, Any]) -> list[str]:
    return [f for f in manifest.get("formats", []) if isinstance(manifest.get(f), dict)]


def choose(
    manifest: dict[str, Any], requested: str = "auto", *, takes_weights: bool = False
) -> WorkerBackend:
    """The backend workers run for a bundle: ``requested``, or for "auto" the first the
    bundle holds (onnx, then litert).

    Args:
      manifest: the bundle's manifest.
      requested: "auto", "onnx" or "litert".
      takes_weights: the workers must apply new weights from arrays (collectors).

    Raises:
      UnsupportedError: "tf" (workers never import TensorFlow), or a backend that
        cannot take weights when the workers must.
      BundleError: the bundle lacks the backend's format.
      ArgumentError: an unknown backend name.
    """
    usable = [b for b in WORKER_BACKENDS.values() if b.takes_weights or not takes_weights]
    names = [b.name for b in usable]
    formats = _formats(manifest)
    if requested == "tf":
        raise UnsupportedError(
            f"backend 'tf': Ray workers run TF-free backends ({', '.join(names)}), never "
            "TensorFlow; play tf locally (without --workers)"
        )
    if requested == "auto":
        for backend in usable:
            if backend.format in formats:
                return backend
        raise BundleError(
            f"Ray workers run the {' or '.join(names)} backend: expected a bundle with "
            f"{' or '.join(b.format for b in usable)}, got formats {formats}"
        )
    backend = WORKER_BACKENDS.get(requested)
    if backend is None:
        raise ArgumentError(
            f"backend: expected one of {['auto', *WORKER_BACKENDS]} for Ray workers, "
            f"got {requested!r}"
        )
    if takes_weights and not backend.takes_weights:
        raise UnsupportedError(
            f"backend {requested!r}: collectors apply the learner's weights from arrays, "
            f"which only {' or '.join(names)} takes"
        )
    if backend.format not in formats:
        raise BundleError(
            f"backend {requested!r}: expected a bundle with {backend.format}, got formats {formats}"
        )
    return backend


def payload(path: str | os.PathLike, backend: str = "auto", *, takes_weights: bool = False):
    """What workers of ``backend`` load from the bundle at ``path`` (read, bounded and
    hash-checked here): a ``Payload``.

    Raises:
      BundleError, UnsupportedError, ArgumentError: as ``choose``, or for an unreadable
        bundle.
    """
    from toolkit import bundle

    root = bundle.bundle_root(Path(path))
    manifest = bundle.read_manifest(root, check_files=False)
    chosen = choose(manifest, backend, takes_weights=takes_weights)
    model = manifest[chosen.format]["file"]
    files = {
        bundle.MANIFEST: bundle.read_member(
            root, bundle.MANIFEST, key=bundle.MANIFEST, cap=bundle.MAX_MANIFEST_BYTES
        ),
        model: bundle.read_member(
            root, model, key=f"{chosen.format}.file", files=manifest["files"]
        ),
    }
    return Payload(chosen.name, files)
