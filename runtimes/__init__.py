"""Bundle -> Python policy. The onnx and litert backends import no TensorFlow.

``load_policy(path)`` returns a ``toolkit.policies.py_policy.PyPolicy`` with the
interface of the TF-Agents policies tutorial plus ``train_step``, ``metadata``,
``update_from_checkpoint(path)`` and ``follow(directory)``.
Importing this package is cheap: onnxruntime, LiteRT or TensorFlow load inside
``load_policy``.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

__all__ = [
    "AUTO_THREADS_MIN_BATCH",
    "BACKENDS",
    "EXTRAS",
    "load_policy",
    "missing_extra",
    "thread_setting",
]

BACKENDS = ("auto", "onnx", "litert", "tf")

#: ``threads="auto"``: batches of at least this many rows run with the engine's default
#: threads (onnxruntime: one per physical core; LiteRT: its own default), smaller ones
#: on one thread. Measured with ``python benchmarks/runtime_bench.py --only threads``
#: (graph time alone, one thread against the default, batches 1 to 256, on the
#: benchmark's three policies): see README.md, "Benchmarks".
AUTO_THREADS_MIN_BATCH = 64

#: The pip extra that brings each TF-free backend's runtime.
EXTRAS = {"onnx": "runtime", "litert": "litert"}
_MODULES = {"onnx": "onnxruntime", "litert": "ai_edge_litert"}


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a blocked or half-installed module
        return False


def missing_extra(backend: str) -> str | None:
    """``pip install ...`` advice when a TF-free backend's runtime is not installed, else None."""
    module = _MODULES.get(backend)
    if module is None or _has_module(module):
        return None
    return f"the {backend} backend needs {module} (pip install 'policy-toolkit[{EXTRAS[backend]}]')"


def thread_setting(threads: Any) -> int | str:
    """``threads`` checked: a positive int, or ``"auto"``.

    Raises:
      SpecMismatchError: anything else.
    """
    if threads == "auto" and isinstance(threads, str):
        return "auto"
    if hasattr(threads, "__index__") and not isinstance(threads, bool) and threads >= 1:
        return int(threads)  # numpy ints too
    from toolkit.errors import SpecMismatchError

    raise SpecMismatchError("threads", "a positive int or 'auto'", repr(threads))


def load_policy(
    path: str | os.PathLike,
    backend: str = "auto",
    *,
    seed: int | None = None,
    validate_args: bool = True,
    threads: int | str = "auto",
    check_finite: bool = False,
) -> Any:
    """Loads an exported policy bundle as a Python policy.

    Args:
      path: the bundle folder (or its manifest.json, policy.onnx or policy.tflite).
      backend: "onnx" (onnxruntime, no TensorFlow), "litert" (LiteRT, no TensorFlow),
        "tf" (the SavedModel), or "auto": onnx when the bundle has policy.onnx and
        onnxruntime is installed, else litert when it has policy.tflite and
        ai-edge-litert is installed, else tf.
      seed: seeds the policy's generator, used by ``action(seed=None)``; None seeds it
        from the OS, so two loads act differently.
      validate_args: check time steps and states against the specs, converting safe
        dtypes (float64 observations into a float32 spec) and naming what is wrong:
        step types other than FIRST/MID/LAST, ragged or non-numeric observations and
        states of another structure are refused naming the leaf. With False, inputs
        are trusted and go to the graph unchecked (a wrong dtype may be cast or refused
        by the backend); that saves under a microsecond a call.
      threads: the onnx and litert backends' intra-op threads: an int, or "auto" (the
        default): one thread for batches below ``AUTO_THREADS_MIN_BATCH`` rows (a
        small network's call is over before threads could share it, and several
        processes may share the machine), the engine's default above (a second
        session or interpreter, built when the first such batch comes). Pass 1 to
        keep every call on one thread (many policy processes per machine).
      check_finite: refuse observations holding NaN or infinite values, naming the leaf
        (a failing sensor); off by default, as in TF-Agents, which passes them on.

    Returns:
      A ``runtimes.onnx_backend.OnnxPolicy``, ``runtimes.litert_backend.LiteRTPolicy``
      or ``runtimes.tf_backend.SavedModelPolicy``.

    Raises:
      BundleError: for a missing, corrupted, tampered or too-new bundle, one without
        the format the backend needs, a manifest that breaks its schema (one line per
        violation) or differs from its format's copy or graph, a path leaving the
        bundle, a symbolic link, FIFO or device, or an ONNX model with external data
        (docs/bundle-format.md, "What a reader trusts").
      UnsupportedError: when the backend's library is not installed (the message names
        the extra to install).
    """
    from toolkit import bundle
    from toolkit.errors import BundleError, SpecMismatchError, UnsupportedError

    if backend not in BACKENDS:
        raise SpecMismatchError("backend", f"one of {list(BACKENDS)}", repr(backend))
    threads = thread_setting(threads)
    root = bundle.bundle_root(path)
    # Each backend checks the hashes of the files it reads (an edge device may hold
    # only manifest.json and policy.onnx or policy.tflite).
    manifest = bundle.read_manifest(root, check_files=False)
    formats = manifest.get("formats", [])
    has = {
        backend_name: key in formats and isinstance(manifest.get(key), dict)
        for backend_name, key in (("onnx", "onnx"), ("litert", "litert"), ("tf", "saved_model"))
    }
    if backend == "auto":
        usable = [b for b in ("onnx", "litert") if has[b] and missing_extra(b) is None]
        if usable:
            backend = usable[0]
        elif has["tf"]:
            backend = "tf"
        else:
            light = [b for b in ("onnx", "litert") if has[b]]
            if not light:
                raise BundleError(
                    f"{root}: expected an ONNX, LiteRT or SavedModel export, got {formats}"
                )
            advice = " or ".join(f"'policy-toolkit[{EXTRAS[b]}]'" for b in light)
            raise UnsupportedError(
                f"{root}: the bundle holds {' and '.join(light)} only and no runtime for it "
                f"is installed (pip install {advice})"
            )
    if not has[backend]:
        labels = {"onnx": "ONNX", "litert": "LiteRT", "tf": "a SavedModel"}
        others = [b for b in ("onnx", "litert", "tf") if has[b]]
        hint = f"; use backend={others[0]!r}" if others else ""
        raise BundleError(
            f"{root}: the bundle was exported without {labels[backend]} (formats {formats}){hint}"
        )
    advice = missing_extra(backend)
    if advice is not None:
        raise UnsupportedError(advice)
    if backend == "onnx":
        from runtimes.onnx_backend import OnnxPolicy

        return OnnxPolicy(
            manifest,
            root,
            seed=seed,
            validate_args=validate_args,
            threads=threads,
            check_finite=check_finite,
        )
    if backend == "litert":
        from runtimes.litert_backend import LiteRTPolicy

        return LiteRTPolicy(
            manifest,
            root,
            seed=seed,
            validate_args=validate_args,
            threads=threads,
            check_finite=check_finite,
        )
    from runtimes.tf_backend import SavedModelPolicy

    return SavedModelPolicy(
        manifest, root, seed=seed, validate_args=validate_args, check_finite=check_finite
    )
