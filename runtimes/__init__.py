"""Bundle -> Python policy. The onnx and litert backends import no TensorFlow.

``load_policy(path)`` returns a ``toolkit.policies.py_policy.PyPolicy`` with the
interface of the TF-Agents policies tutorial plus ``train_step``, ``metadata``,
``update_from_checkpoint(path)`` and ``follow(directory)``.
Importing this package is cheap: onnxruntime, LiteRT or TensorFlow load inside
``load_policy``.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["AUTO_THREADS_MIN_BATCH", "load_policy", "thread_setting"]

#: ``threads="auto"``: batches of at least this many rows run with the engine's default
#: threads (onnxruntime: one per physical core; LiteRT: its own default), smaller ones
#: on one thread. Measured on 2 idle cores (load 0.8) with
#: ``python benchmarks/runtime_bench.py --only threads --rounds 9`` (raw session.run,
#: onnxruntime's default threads over one, median of rounds): slower at every batch up to
#: 256 on the benchmark's three policies (demo 0.98-1.30x, Gaussian 1.00-1.36x, LSTM
#: 0.99-1.33x), so one thread up to 256 rows; 512 is the first size not measured slower.
AUTO_THREADS_MIN_BATCH = 512


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
    trust: Any = None,
) -> Any:
    """Loads an exported policy bundle as a Python policy.

    Args:
      path: the bundle folder (or its manifest.json, policy.onnx or policy.tflite).
      backend: a backend of ``runtimes.backends.BACKENDS``: "onnx" (onnxruntime, no
        TensorFlow), "litert" (LiteRT, no TensorFlow), "tf" (the SavedModel), or "auto":
        the first TF-free backend (table order: onnx, litert) whose format the bundle
        holds and whose engine is installed, else tf.
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
      trust: the keys whose signatures this load accepts: a
        ``toolkit.bundle.TrustPolicy``, or a PEM public key path (or several). Then an
        unsigned bundle, one signed by another key, or any file changed, added or removed
        since signing is refused before anything is read. None (default) applies the
        keys of POLICY_TOOLKIT_TRUST_KEYS when it is set; False none.

    Returns:
      The backend's ``runtimes.policy.BundlePolicy``: ``runtimes.backends.onnx.OnnxPolicy``,
      ``runtimes.backends.litert.LiteRTPolicy`` or ``runtimes.backends.tf.SavedModelPolicy``.

    Raises:
      BundleError: for a missing, corrupted, tampered or too-new bundle, one without
        the format the backend needs, a manifest that breaks its schema (one line per
        violation) or differs from its format's copy or graph, a path leaving the
        bundle, a symbolic link, FIFO or device, or an ONNX model with external data
        (docs/bundle-format.md, "What a reader trusts").
      TrustError: a bundle the trust policy refuses (a BundleError).
      UnsupportedError: when the backend's library is not installed (the message names
        the extra to install).
    """
    from runtimes.backends import choose
    from toolkit import bundle

    threads = thread_setting(threads)
    root = bundle.bundle_root(path)
    # Each backend checks the hashes of the files it reads (an edge device may hold
    # only manifest.json and policy.onnx or policy.tflite).
    # Without a policy (none given, none in the environment) the signing module and
    # ``cryptography`` stay unloaded: the cold start is as before.
    wanted = trust is not None or bool(os.environ.get(bundle.TRUST_KEYS_ENV))
    policy = bundle.trust_policy(trust) if wanted and trust is not False else None
    layout = bundle.read_layout(root, check_files=False, trust=policy)
    chosen = choose(backend, layout.formats, str(root))
    return chosen.policy_type()(
        layout,
        root,
        seed=seed,
        validate_args=validate_args,
        check_finite=check_finite,
        **({"threads": threads} if chosen.threads else {}),
    )
