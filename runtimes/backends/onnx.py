"""The onnx backend: a bundle's ``policy.onnx`` run by onnxruntime.

This module never imports TensorFlow, directly or indirectly: it needs numpy,
onnxruntime and the TF-free core of policy-toolkit, which is what an edge device has.
The graph computes distribution parameters; runtimes.policy derives the actions.
"""

from __future__ import annotations

import _thread
import os
from _thread import _local as thread_local  # threading.local; threading costs ~0.7 ms
from typing import Any

import numpy as np
import onnxruntime as ort

import runtimes
from runtimes.checks import fill_inputs
from runtimes.policy import BundlePolicy
from toolkit.bundle import readers
from toolkit.bundle.layout import Layout, Signature
from toolkit.errors import BundleError, PolicyError, SpecMismatchError, UnsupportedError

__all__ = ["OnnxPolicy", "check_graph_io", "session_options"]


def session_options(threads: int = 1) -> ort.SessionOptions:
    """Session settings for small policy networks.

    One thread and sequential execution: a 64x64 MLP at batch 1 runs in microseconds,
    so thread hand-offs would cost more than they save (and several policies may share a
    device). ``threads=0`` is onnxruntime's default (a thread per physical core). Every
    graph optimisation is on; they run once, at load.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT warns about unused initializers
    return options


#: Bytes a bound call would copy (inputs in, outputs out) above which a batch runs plain:
#: ``run`` takes the caller's arrays as they are and returns the arrays onnxruntime
#: allocated, where the binding copies both (an LSTM policy's state at batch 256 is
#: 130 KiB each way). Measured with callgrind on the benchmark's policies: bound
#: runs cost fewer instructions up to 36 KiB (LSTM, batch 64: 743k against 767k), plain
#: ones from 144 KiB (LSTM, batch 256: 2.22M against 2.33M).
PLAIN_RUN_BYTES = 64 * 1024


class _Binding:
    """Reused input and output buffers bound to a session at one batch size.

    Running with an IOBinding over buffers bound once skips building input and output
    values on every call, the main cost of ``run`` on small networks (measured: about a
    third less time per call for a 64x64 MLP at batch 1). ``plain``: this batch is too
    large for copies to pay (PLAIN_RUN_BYTES); the session's plain ``run`` is used.
    """

    def __init__(self, session: Any, batch: int, inputs: list, outputs: list, plain_bytes: int):
        self.session = session
        self.run_plain = getattr(session, "_sess", session).run
        # A RunOptions made once: passing None makes onnxruntime build one per call
        # (5.4k of a 60k-instruction run, callgrind).
        self.options = ort.RunOptions()
        self.inputs = [np.zeros((batch, *shape), dtype) for _, dtype, shape in inputs]
        self.outputs = [np.empty((batch, *shape), dtype) for _, dtype, shape in outputs]
        size = sum(b.nbytes for b in self.inputs) + sum(b.nbytes for b in self.outputs)
        self.plain = size > plain_bytes
        if self.plain:
            self.inputs = self.outputs = []
            return
        self.io = session.io_binding()
        for (name, _, _), buffer in zip(inputs, self.inputs, strict=True):
            self.io.bind_cpu_input(name, buffer)
        for (name, dtype, _), buffer in zip(outputs, self.outputs, strict=True):
            self.io.bind_output(name, "cpu", 0, dtype, buffer.shape, buffer.ctypes.data)
        inner = getattr(self.io, "_iobinding", None)
        self.inner = inner if inner is not None else self.io
        sess = getattr(session, "_sess", None)
        self.run_bound = sess.run_with_iobinding if sess is not None else session.run_with_iobinding


class _Session:
    """An InferenceSession, the initializer values it was built with, and per-thread bindings.

    onnxruntime keeps pointers into the OrtValues given to ``add_initializer``, so they
    (and the numpy arrays under them) live as long as the session. Weight updates build
    a new _Session and swap it in: a running call keeps using the one it started with.
    Sessions are thread-safe; the reused buffers are per thread (``threading.local``).

    ``threads="auto"``: batches below ``AUTO_THREADS_MIN_BATCH`` (runtimes) run on a
    one-thread session, larger ones on a second session with onnxruntime's default
    threads, built when such a batch first comes (it holds its own copy of the weights).
    """

    #: bindings kept per thread (one per batch size seen, oldest dropped first)
    MAX_BINDINGS = 8

    def __init__(
        self,
        model: bytes,
        threads: int | str,
        initializers: dict[str, np.ndarray] | None,
        inputs: list,
        outputs: list | None,
    ):
        self.model = model
        self.arrays = []
        self.values = []
        #: the initializers the session was built with, by name (what it runs)
        self.overrides: dict[str, np.ndarray] = {}
        for name, array in (initializers or {}).items():
            array = np.ascontiguousarray(array)
            self.arrays.append(array)
            self.overrides[name] = array
            self.values.append((name, ort.OrtValue.ortvalue_from_numpy(array)))
        self.auto = threads == "auto"
        self.min_batch = runtimes.AUTO_THREADS_MIN_BATCH
        self.plain_bytes = PLAIN_RUN_BYTES
        self.session = self._build(1 if self.auto else int(threads))
        self.many: Any = None  # the auto mode's session for large batches, made on first use
        self.lock = _thread.allocate_lock()
        self.input_layout = inputs
        self.names = [name for name, _, _ in inputs]
        # ``outputs``: (name, dtype, shape) of the hot-path outputs when all their shapes
        # are static but the batch; None -> plain runs.
        self.output_layout = outputs
        # The inner session's methods skip InferenceSession's per-call Python checks;
        # inputs are validated (or vouched for) by the policy already. Measured at batch 1
        # (64x64 MLP): run_with_iobinding 10.7 us inner vs 13.1 us public, run 17.7 vs
        # 22.0 us. ``_sess``/``_iobinding`` are private, hence the pinned onnxruntime
        # range (pyproject.toml) and tests/runtimes/test_onnx_inner_api.py; without
        # them the public methods are used.
        inner = getattr(self.session, "_sess", None)
        self.run_plain = inner.run if inner is not None else self.session.run
        self.run_bound = (
            inner.run_with_iobinding if inner is not None else self.session.run_with_iobinding
        )
        self.local = thread_local()

    def _build(self, threads: int) -> Any:
        options = session_options(threads)
        for name, value in self.values:
            options.add_initializer(name, value)
        try:
            return ort.InferenceSession(
                self.model, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own exception types
            raise BundleError(f"onnxruntime could not load the policy graph: {e}") from e

    def session_for(self, batch: int) -> Any:
        """The session that runs a batch of ``batch`` rows."""
        if not self.auto or batch < self.min_batch:
            return self.session
        many = self.many
        if many is None:
            with self.lock:  # two threads' first large batches build it once
                if self.many is None:
                    self.many = self._build(0)
                many = self.many
        return many

    def run(
        self, arrays: list[Any], unbatched: bool, fetch: list[str], bound: bool, copy: bool = True
    ) -> list:
        """The outputs; ``copy=False``: a bound run's are this thread's buffers (read them
        before this thread's next run)."""
        if not bound or self.output_layout is None:
            if unbatched:
                arrays = [a[None] for a in arrays]
            run = self.run_plain
            if self.auto and not unbatched:
                run = getattr(self.session_for(len(arrays[0])), "_sess", self.session).run
            # (no strict=: its keyword parsing costs ~1.5k instructions a call; the
            # policy builds ``arrays`` from the same input list, one per name)
            return run(fetch, dict(zip(self.names, arrays)), None)  # noqa: B905
        batch = 1 if unbatched else arrays[0].shape[0]
        bindings = getattr(self.local, "bindings", None)
        if bindings is None:
            bindings = self.local.bindings = {}
        binding = bindings.get(batch)
        if binding is None:
            if len(bindings) >= self.MAX_BINDINGS:
                del bindings[next(iter(bindings))]
            binding = bindings[batch] = _Binding(
                self.session_for(batch),
                batch,
                self.input_layout,
                self.output_layout,
                self.plain_bytes,
            )
        if binding.plain:  # the caller's arrays in, onnxruntime's out: no copies
            if unbatched:
                arrays = [a[None] for a in arrays]
            feeds = dict(zip(self.names, arrays))  # noqa: B905 (as above)
            return binding.run_plain(fetch, feeds, binding.options)
        fill_inputs(binding.inputs, arrays, unbatched)  # dtypes were checked
        binding.run_bound(binding.inner, binding.options)
        if not copy:
            return binding.outputs
        return [buffer.copy() for buffer in binding.outputs]


class OnnxPolicy(BundlePolicy):
    """A bundle's policy over onnxruntime (no TensorFlow). Made by ``runtimes.load_policy``.

    Args:
      layout: the bundle's layout (toolkit.bundle.read_layout).
      bundle_dir: the bundle folder.
      seed: seeds the policy's Generator, used by ``action(seed=None)``.
      validate_args: check (and safely convert) inputs against the specs.
      check_finite: refuse observations with NaN or infinite values.
      threads: onnxruntime intra-op threads, or "auto" (see ``runtimes.load_policy``).
    """

    backend = "onnx"

    def __init__(
        self,
        layout: Layout,
        bundle_dir: str | os.PathLike,
        *,
        seed: int | None = None,
        validate_args: bool = True,
        check_finite: bool = False,
        threads: int | str = "auto",
    ):
        super().__init__(
            layout,
            bundle_dir,
            seed=seed,
            validate_args=validate_args,
            check_finite=check_finite,
        )
        if not layout.has("onnx"):
            raise BundleError(f"{self._bundle_dir}: the bundle was exported without ONNX")
        self._threads = runtimes.thread_setting(threads)
        rel = layout.format("onnx").path
        # The session is built from these same bytes, so what was checked is what runs;
        # a model with external data is refused before onnxruntime sees it.
        self._model = readers.read_onnx(self._bundle_dir, layout)
        signature = layout.signatures["distribution"]
        self._layout = _layouts(signature, self._input_names, self._fetch)
        self._set_session(self._new_session(None))
        check_graph_io(self._session.session, signature, rel)

    def _new_session(self, initializers: dict[str, np.ndarray] | None) -> _Session:
        return _Session(self._model, self._threads, initializers, *self._layout)

    def _set_session(self, session: _Session) -> None:
        if getattr(self, "_session", None) is not None:  # a swap, not the load
            # What the new session proves, and-ed into the proof before any call can run
            # on it (a call still on the old session keeps what the old one proved).
            self._keep_proof(self._prove_clips(session))
        self._session = session
        self._session_run = session.run

    def _prove_clips(self, session: _Session | None = None) -> list[Any]:
        """Action leaves the graph itself clips to within the spec's bounds.

        The exporter ends a graph's own action with a clip to the spec's bounds (``Max``
        of ``Min``, or ``Clip``, with constant bounds). When this session's graph
        (its model's bytes and the initializers it was built with, as onnxruntime runs
        them) clips an action output to constants that all lie within the spec's
        bounds, every value of that output does too (NaN stays NaN, which the full
        check lets pass): the per-call comparison of every element with the bounds, a
        numpy reduction over the batch, is skipped; dtype and shape are still checked
        on every call. Anything not proven keeps the comparison. ``session``: the one to
        prove (default: the one in use).
        """
        from toolkit import onnx_proto  # the first batched call (or swap) only

        clips = list(self._no_clips)
        if not self._direct:
            return clips
        session = session if session is not None else self._session
        found = onnx_proto.output_clips(
            session.model, self._action_names, str(self._bundle_dir), session.overrides
        )
        for i, (name, check) in enumerate(zip(self._action_names, self._action_checks)):  # noqa: B905
            bounds = found.get(name)
            if bounds is None or check.low is None or not check.low:
                continue
            if any(b.dtype != check.dtype for b in bounds):
                continue
            low, high = max(check.low), min(check.high)
            # Python numbers, exact for every dtype here; NaN fails both comparisons
            if all(low <= v <= high for b in bounds for v in b.tolist()):
                clips[i] = True
        return clips

    @property
    def session(self) -> ort.InferenceSession:
        """The onnxruntime session in use (replaced by weight updates)."""
        return self._session.session

    @property
    def graph_fingerprint(self) -> str:
        """The ONNX graph's structural fingerprint (checkpoints must match it)."""
        return self.layout.graph_fingerprint

    def _run(self, arrays: list[Any], unbatched: bool, fetch: list[str]) -> list[Any]:
        try:
            return self._session_run(arrays, unbatched, fetch, fetch is self._fetch)
        except Exception as e:  # onnxruntime's own types (for unvalidated inputs)
            raise PolicyError(f"onnxruntime could not run the policy: {e}") from e

    def _run_borrowed(self, arrays: list[Any], unbatched: bool, fetch: list[str]) -> list[Any]:
        try:
            return self._session_run(arrays, unbatched, fetch, fetch is self._fetch, False)
        except Exception as e:  # onnxruntime's own types (for unvalidated inputs)
            raise PolicyError(f"onnxruntime could not run the policy: {e}") from e

    def update_from_checkpoint(self, path: str | os.PathLike, *, step: int | None = None) -> None:
        """Swaps in the weights of a checkpoint; no TensorFlow and no new export needed.

        Takes a weights-only checkpoint (exporters.save_checkpoint), a training run's
        ``policy_checkpoints/``, TF-Agents' ``policies/checkpoints/`` or one
        checkpoint of either (see runtimes.checkpoints); a folder gives its latest
        checkpoint, or the one of ``step``. The session is rebuilt with the new values
        as initializer overrides and swapped in whole: calls already running finish on
        the old weights.

        Raises:
          BundleError: for a missing, changed or corrupt checkpoint (CheckpointError),
            or one of another policy structure.
        """
        from runtimes.checkpoints import read_weights

        weights = read_weights(self.layout, path, step=step)
        self._apply_weights(weights)

    def apply_weights(self, initializers: dict[str, Any], train_step: int | None = None) -> None:
        """Swaps in new weights given as arrays keyed by ONNX initializer name.

        How Ray collectors take the learner's weights (``toolkit.distributed``): no
        checkpoint files, no TensorFlow. The arrays must be every weight of the graph
        (its weights map's initializers), each with its shape and dtype; then the
        session is rebuilt with them as initializer overrides and swapped in whole:
        calls already running finish on the old weights.

        Args:
          initializers: ``{initializer name: array}`` for every weight (e.g.
            ``toolkit.distributed.weights.WeightsMap.initializers()``).
          train_step: the train step these weights come from (``train_step`` reports
            it); None when unknown.

        Raises:
          SpecMismatchError: a weight missing, an initializer that is not a weight of
            this graph, or an array of another shape or dtype (naming the initializer).
          UnsupportedError: a bundle without a weights map (exported before
            policy-toolkit recorded one, or quantized).
        """
        if train_step is not None and (
            isinstance(train_step, bool) or not isinstance(train_step, (int, np.integer))
        ):
            raise SpecMismatchError("train_step", "an int or None", repr(train_step))
        arrays = _checked_weights(self.layout, initializers)
        self._set_session(self._new_session(arrays))
        self._train_step = None if train_step is None else int(train_step)

    def _apply_weights(self, weights: Any) -> None:
        self._set_session(self._new_session(weights.initializers))
        self._train_step = weights.train_step

    def _take_weights(self, policy: BundlePolicy) -> None:
        if not isinstance(policy, OnnxPolicy) or policy.graph_fingerprint != self.graph_fingerprint:
            raise PolicyError(
                "update(): expected an onnx-backend policy of the same graph (fingerprint "
                f"{self.graph_fingerprint[:12]}...), got {policy!r}"
            )
        # Sessions are never changed in place, so sharing one is safe.
        self._set_session(policy._session)


def _checked_weights(layout: Layout, initializers: dict[str, Any]) -> dict[str, np.ndarray]:
    """``initializers`` as arrays, each a weight of the graph with its mapped shape and dtype.

    onnxruntime takes overrides of unknown names and of other shapes without a word
    (a wrong shape fails later, mid-run, or not at all), so they are checked here.
    """
    weights = layout.weights
    if weights is None:
        raise UnsupportedError(
            "apply_weights: the bundle records no weights map (exported before "
            "policy-toolkit recorded one, or quantized); export it with this version"
        )
    entries = dict(zip(layout.onnx_initializers, weights.initializers, strict=False))
    out = {}
    for name, value in initializers.items():
        entry = entries.get(name)
        if entry is None:
            what = "a constant" if name in entries else "no initializer"
            raise SpecMismatchError(
                f"apply_weights/{name}", "a weight of this graph", f"{what} of that name"
            )
        array = np.asarray(value)
        shape, dtype = entry.shape, np.dtype(entry.dtype)
        if array.shape != shape or array.dtype != dtype:
            raise SpecMismatchError(
                f"apply_weights/{name}",
                f"shape {shape} {dtype.name}",
                f"shape {array.shape} {array.dtype.name}",
            )
        out[name] = array
    missing = [n for n, e in entries.items() if e is not None and n not in out]
    if missing:
        raise SpecMismatchError(
            "apply_weights",
            f"every weight of this graph ({len(out) + len(missing)})",
            f"{len(out)}, without {missing[:3]}{' ...' if len(missing) > 3 else ''}",
        )
    return out


def _layouts(signature: Signature, inputs: list[str], fetch: list[str]) -> tuple:
    """``(inputs, outputs)`` as (name, numpy dtype, shape without batch) for bindings.

    outputs is None when an output has a dynamic dim besides the batch (no buffer fits).
    """
    entries = {e.name: e for e in signature.inputs + signature.outputs}

    def layout(name: str) -> tuple[str, np.dtype, tuple[int, ...]] | None:
        shape = entries[name].shape
        if not shape or any(d is None for d in shape[1:]):
            return None
        return name, np.dtype(entries[name].dtype), tuple(int(d) for d in shape[1:])

    input_layout = [layout(name) for name in inputs]
    output_layout = [layout(name) for name in fetch]
    if any(entry is None for entry in input_layout + output_layout):
        # Inputs with dynamic inner dims cannot be bound to fixed buffers either.
        return [(name, None, None) for name in inputs], None
    return input_layout, output_layout


_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "string",
}


def check_graph_io(session: Any, signature: Signature, where: str) -> None:
    """Refuses a graph whose inputs and outputs differ from the manifest's signature
    (``Signature.check_graph``: same names and dtypes, the manifest's static dims)."""
    for which, args in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
        graph = {}
        for arg in args:
            shape = arg.shape if isinstance(arg.shape, list) else None
            static = [d if isinstance(d, int) else None for d in shape] if shape else shape
            graph[arg.name] = (_ORT_TYPES.get(arg.type, arg.type), static)
        signature.check_graph(which, graph, where)
