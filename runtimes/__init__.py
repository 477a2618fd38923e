"""Bundle -> Python policy. The onnx backend imports no TensorFlow.

``load_policy(path)`` returns a ``toolkit.policies.py_policy.PyPolicy`` with the
interface of the TF-Agents policies tutorial plus ``train_step``, ``metadata`` and
``update_from_checkpoint(path)``.
Importing this package is cheap: onnxruntime or TensorFlow load inside ``load_policy``.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

__all__ = ["BACKENDS", "load_policy"]

BACKENDS = ("auto", "onnx", "tf")


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a blocked or half-installed module
        return False


def load_policy(
    path: str | os.PathLike,
    backend: str = "auto",
    *,
    seed: int | None = None,
    validate_args: bool = True,
    threads: int = 1,
    check_finite: bool = False,
) -> Any:
    """Loads an exported policy bundle as a Python policy.

    Args:
      path: the bundle folder (or its manifest.json or policy.onnx).
      backend: "onnx" (onnxruntime, no TensorFlow), "tf" (the SavedModel), or "auto":
        onnx when the bundle has policy.onnx and onnxruntime is installed, else tf.
      seed: seeds the policy's generator, used by ``action(seed=None)``; None seeds it
        from the OS, so two loads act differently.
      validate_args: check time steps and states against the specs, converting safe
        dtypes (float64 observations into a float32 spec) and naming what is wrong:
        step types other than FIRST/MID/LAST, ragged or non-numeric observations and
        states of another structure are refused naming the leaf. With False, inputs
        are trusted and go to the graph unchecked (a wrong dtype may be cast or refused
        by the backend); that saves under a microsecond a call.
      threads: onnxruntime intra-op threads (onnx backend).
      check_finite: refuse observations holding NaN or infinite values, naming the leaf
        (a failing sensor); off by default, as in TF-Agents, which passes them on.

    Returns:
      A ``runtimes.onnx_backend.OnnxPolicy`` or ``runtimes.tf_backend.SavedModelPolicy``.

    Raises:
      BundleError: for a missing, corrupted, tampered or too-new bundle, one without
        the format the backend needs, a manifest that breaks its schema (one line per
        violation) or differs from its format's copy or graph, a path leaving the
        bundle, a symbolic link, FIFO or device, or an ONNX model with external data
        (docs/bundle-format.md, "What a reader trusts").
      UnsupportedError: when the backend's library is not installed.
    """
    from toolkit import bundle
    from toolkit.errors import BundleError, SpecMismatchError, UnsupportedError

    if backend not in BACKENDS:
        raise SpecMismatchError("backend", f"one of {list(BACKENDS)}", repr(backend))
    root = bundle.bundle_root(path)
    # Each backend checks the hashes of the files it reads (an edge device may hold
    # only manifest.json and policy.onnx).
    manifest = bundle.read_manifest(root, check_files=False)
    formats = manifest.get("formats", [])
    has_onnx = "onnx" in formats and isinstance(manifest.get("onnx"), dict)
    has_saved_model = "saved_model" in formats and isinstance(manifest.get("saved_model"), dict)
    if backend == "auto":
        if has_onnx and _has_module("onnxruntime"):
            backend = "onnx"
        elif has_saved_model:
            backend = "tf"
        elif has_onnx:
            raise UnsupportedError(
                f"{root}: the bundle holds only ONNX and onnxruntime is not installed "
                "(pip install 'policy-toolkit[runtime]')"
            )
        else:
            raise BundleError(f"{root}: expected an ONNX or SavedModel export, got {formats}")
    if backend == "onnx":
        if not has_onnx:
            raise BundleError(
                f"{root}: the bundle was exported without ONNX (formats {formats}); "
                "use backend='tf'"
            )
        if not _has_module("onnxruntime"):
            raise UnsupportedError(
                "the onnx backend needs onnxruntime (pip install 'policy-toolkit[runtime]')"
            )
        from runtimes.onnx_backend import OnnxPolicy

        return OnnxPolicy(
            manifest,
            root,
            seed=seed,
            validate_args=validate_args,
            threads=threads,
            check_finite=check_finite,
        )
    if not has_saved_model:
        raise BundleError(
            f"{root}: the bundle was exported without a SavedModel (formats {formats}); "
            "use backend='onnx'"
        )
    from runtimes.tf_backend import SavedModelPolicy

    return SavedModelPolicy(
        manifest, root, seed=seed, validate_args=validate_args, check_finite=check_finite
    )
