"""The litert backend: a bundle's ``policy.tflite`` run by LiteRT (ai-edge-litert).

Like the onnx backend, this module never imports TensorFlow: it needs numpy,
ai-edge-litert and the TF-free core. The model's ``distribution`` signature computes
the distribution parameters; runtimes.policy derives the actions (and samples).

The hot path skips LiteRT's ``SignatureRunner``, which resizes and re-allocates every
tensor on every call: inputs are set, the signature's subgraph invoked and outputs read
directly, and tensors are resized (and re-allocated) only when the batch size changes.
Interpreters are not thread-safe, so each thread gets its own.
"""

from __future__ import annotations

import contextlib
import os
import sys
from _thread import _local as thread_local  # threading.local; threading costs ~0.7 ms
from collections.abc import Iterator
from typing import Any

import numpy as np
from ai_edge_litert import interpreter as litert

import runtimes
from runtimes.checks import fill_inputs
from runtimes.policy import BundlePolicy
from toolkit.bundle import readers
from toolkit.bundle.layout import Layout
from toolkit.errors import BundleError, PolicyError, UnsupportedError

__all__ = [
    "SIGNATURE",
    "LiteRTPolicy",
    "check_no_custom_ops",
    "litert_ops",
    "new_interpreter",
    "quiet_stderr",
]

SIGNATURE = "distribution"
# What LiteRT's C++ side prints to stderr when it applies its default CPU delegate.
_BANNERS = ("Created TensorFlow Lite XNNPACK delegate for CPU.",)


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Keeps LiteRT's delegate banner off stderr (C++ writes to fd 2); passes anything else on."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (e.g. captured)
        fd = 2
    sys.stderr.flush()
    saved = os.dup(fd)
    with _scratch_file() as log:
        os.dup2(log.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            log.seek(0)
            lines = log.read().decode(errors="replace").splitlines(keepends=True)
            rest = "".join(line for line in lines if not any(b in line for b in _BANNERS))
            if rest:
                sys.stderr.write(rest)


def _scratch_file() -> Any:
    """An anonymous file: in memory where Linux offers one (tempfile costs ~4 ms of import)."""
    if hasattr(os, "memfd_create"):
        try:
            return os.fdopen(os.memfd_create("litert-stderr", os.MFD_CLOEXEC), "w+b")
        except OSError:  # e.g. refused by a sandbox
            pass
    import tempfile

    return tempfile.TemporaryFile()


def new_interpreter(model: bytes, threads: int | None = 1) -> Any:
    """A LiteRT Interpreter over model bytes, with its default CPU delegate (XNNPACK).

    ``threads=None``: LiteRT's default number of threads.
    """
    try:
        return litert.Interpreter(
            model_content=model, num_threads=None if threads is None else int(threads)
        )
    except (ValueError, RuntimeError) as e:
        raise BundleError(f"LiteRT could not load the policy model: {e}") from e


class _Runner:
    """One thread's interpreter, run directly on the ``distribution`` subgraph."""

    def __init__(self, model: bytes, threads: int | None, inputs: list[str], inner: list | None):
        self.interpreter = new_interpreter(model, threads)
        self.wrapper = self.interpreter._interpreter  # what SignatureRunner calls, too
        signature = self.interpreter._get_full_signature_list()[SIGNATURE]
        self.subgraph = self.wrapper.GetSubgraphIndexFromSignature(SIGNATURE)
        self.inputs = [signature["inputs"][name] for name in inputs]
        self.outputs = signature["outputs"]
        # ``inner``: each input's shape without the batch dim, or None where some are
        # dynamic (then every call's shapes decide whether to resize).
        self.dynamic = inner is None
        self.shapes: Any = None
        self.borrowed = None
        if inner is not None:  # ready for batch 1, the common call, at load
            self.resize([np.empty((1, *shape), np.uint8) for shape in inner], 1)

    def resize(self, arrays: list[np.ndarray], shapes: Any) -> None:
        wrapper, subgraph = self.wrapper, self.subgraph
        self.in_views = self.out_views = None  # views into the old arena must not outlive it
        for index, array in zip(self.inputs, arrays, strict=True):
            wrapper.ResizeInputTensor(index, np.array(array.shape, np.int32), False, subgraph)
        with quiet_stderr():
            wrapper.AllocateTensors(subgraph)
        # numpy views of the input and output buffers: writing an input is a numpy copy
        # (a third of SetTensor's cost), reading an output a copy of the view.
        self.in_views = [wrapper.tensor(self.interpreter, i, subgraph) for i in self.inputs]
        self.out_views = {
            name: wrapper.tensor(self.interpreter, index, subgraph)
            for name, index in self.outputs.items()
        }
        self.borrowed: tuple[list[str], list[np.ndarray]] | None = None  # see run
        self.shapes = shapes

    def run(
        self, arrays: list[np.ndarray], unbatched: bool, fetch: list[str], copy: bool = True
    ) -> list:
        """The outputs; ``copy=False``: views of the interpreter's buffers (read them
        before this thread's next run)."""
        # Inner dims are fixed unless the signature has dynamic ones; then the whole
        # shapes decide whether to resize.
        if self.dynamic:
            shapes = tuple(((1,) + a.shape) if unbatched else a.shape for a in arrays)
        else:
            shapes = 1 if unbatched else arrays[0].shape[0]
        if shapes != self.shapes:
            self.resize([a[None] if unbatched else a for a in arrays], shapes)
        fill_inputs(self.in_views, arrays, unbatched)  # unbatched: the batch of one
        self.wrapper.Invoke(self.subgraph)
        views = self.out_views
        if not copy:  # the views in fetch order, kept until the next resize (one list)
            borrowed = self.borrowed
            if borrowed is None or borrowed[0] is not fetch:
                borrowed = self.borrowed = (fetch, [views[name] for name in fetch])
            return borrowed[1]
        return [views[name].copy() for name in fetch]


class LiteRTPolicy(BundlePolicy):
    """A bundle's policy over LiteRT (no TensorFlow). Made by ``runtimes.load_policy``.

    Args:
      layout: the bundle's layout (toolkit.bundle.read_layout).
      bundle_dir: the bundle folder.
      seed: seeds the policy's Generator, used by ``action(seed=None)``.
      validate_args: check (and safely convert) inputs against the specs.
      threads: LiteRT's CPU threads per interpreter, or "auto" (see
        ``runtimes.load_policy``: large batches get a second interpreter per thread,
        with LiteRT's default threads).
      check_finite: refuse observations with NaN or infinite values.
    """

    backend = "litert"

    def __init__(
        self,
        layout: Layout,
        bundle_dir: str | os.PathLike,
        *,
        seed: int | None = None,
        validate_args: bool = True,
        threads: int | str = "auto",
        check_finite: bool = False,
    ):
        super().__init__(
            layout,
            bundle_dir,
            seed=seed,
            validate_args=validate_args,
            check_finite=check_finite,
        )
        if not layout.has("litert"):
            raise BundleError(f"{self._bundle_dir}: the bundle was exported without LiteRT")
        rel = layout.format("litert").path
        self._threads = runtimes.thread_setting(threads)
        self._min_batch = runtimes.AUTO_THREADS_MIN_BATCH if self._threads == "auto" else None
        # Contained, bounded and hash-checked; the interpreter is built from these bytes.
        self._model = readers.read_litert(self._bundle_dir, layout)
        entries = {e.name: e for e in layout.signatures[SIGNATURE].inputs}
        inner = [entries[name].shape[1:] for name in self._input_names]
        dynamic = any(d is None for shape in inner for d in shape)
        self._inner = None if dynamic else [tuple(int(d) for d in shape) for shape in inner]
        self._local = thread_local()
        runner = self._runner()  # checks the model against the manifest, once
        signature = runner.interpreter._get_full_signature_list()[SIGNATURE]
        inputs, outputs = set(signature["inputs"]), set(signature["outputs"])
        if inputs != set(self._input_names) or not set(self._param_fetch + self._fetch) <= outputs:
            raise BundleError(
                f"{self._bundle_dir}: {rel} does not match the manifest: inputs "
                f"{sorted(inputs)} (expected {sorted(self._input_names)}), outputs "
                f"{sorted(outputs)}"
            )

    def _runner(self, many: bool = False) -> _Runner:
        """This thread's runner; ``many``: the auto mode's one for large batches."""
        key = "many" if many else "runner"
        runner = getattr(self._local, key, None)
        if runner is None:
            threads = self._threads
            if threads == "auto":
                threads = None if many else 1
            try:
                runner = _Runner(self._model, threads, self._input_names, self._inner)
            except (KeyError, ValueError, RuntimeError) as e:
                raise BundleError(
                    f"{self._bundle_dir}: the LiteRT model has no {SIGNATURE!r} signature "
                    f"with the manifest's inputs ({e})"
                ) from e
            setattr(self._local, key, runner)
        return runner

    @property
    def interpreter(self) -> Any:
        """This thread's LiteRT Interpreter."""
        return self._runner().interpreter

    def _run(
        self, arrays: list[Any], unbatched: bool, fetch: list[str], copy: bool = True
    ) -> list[Any]:
        runner = getattr(self._local, "runner", None) or self._runner()
        if self._min_batch is not None and not unbatched and len(arrays[0]) >= self._min_batch:
            runner = getattr(self._local, "many", None) or self._runner(many=True)
        try:
            return runner.run(arrays, unbatched, fetch, copy)
        except (ValueError, RuntimeError) as e:  # LiteRT's errors, for unvalidated inputs
            runner.shapes = None  # a failed resize may leave other shapes behind
            raise PolicyError(f"LiteRT could not run the policy: {e}") from e

    def _run_borrowed(self, arrays: list[Any], unbatched: bool, fetch: list[str]) -> list[Any]:
        if not unbatched:
            return self._run(arrays, unbatched, fetch, False)
        runner = getattr(self._local, "runner", None) or self._runner()
        try:  # the unbatched hot path, without _run's frame and batch test
            return runner.run(arrays, True, fetch, False)
        except (ValueError, RuntimeError) as e:  # LiteRT's errors, for unvalidated inputs
            runner.shapes = None
            raise PolicyError(f"LiteRT could not run the policy: {e}") from e

    def update_from_checkpoint(self, path: str | os.PathLike) -> None:
        """Not available: a LiteRT model's weights are baked in when it is converted.

        Raises:
          UnsupportedError: always, naming what to do instead.
        """
        raise UnsupportedError(
            f"{path}: the litert backend cannot take a weights-only checkpoint: LiteRT "
            "models hold their weights as converted constants. Run `policy-toolkit update` "
            "on the bundle on a machine with TensorFlow (it converts policy.tflite again), "
            "or load the bundle with backend='onnx'"
        )

    def _take_weights(self, policy: BundlePolicy) -> None:
        mine = self.layout.signatures[SIGNATURE]
        if not isinstance(policy, LiteRTPolicy) or policy.layout.signatures[SIGNATURE] != mine:
            raise PolicyError(
                "update(): expected a litert-backend policy with the same signature, "
                f"got {policy!r}"
            )
        self._model = policy._model
        self._local = thread_local()  # each thread builds an interpreter of the new model


def litert_ops(model: bytes) -> list[str]:
    """The sorted operator names a LiteRT model uses (custom ops as ``CUSTOM:<name>``)."""
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    root = schema.Model.GetRootAs(model, 0)
    ops = set()
    for i in range(root.OperatorCodesLength()):
        code = root.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            custom = code.CustomCode()
            ops.add(f"CUSTOM:{custom.decode() if custom else '?'}")
        else:
            ops.add(names.get(builtin, str(builtin)))
    return sorted(ops)


def check_no_custom_ops(model: bytes, what: str) -> list[str]:
    """The model's ops; refuses custom and Flex ops, which pip's LiteRT runtime lacks."""
    ops = litert_ops(model)
    custom = [op for op in ops if op.startswith("CUSTOM:")]
    if custom:
        raise UnsupportedError(
            f"{what}: expected LiteRT builtin ops only, got custom or Flex ops {custom}"
        )
    return ops
