"""The micro backend: a bundle's int8 ``micro/policy.tflite`` run by TFLite Micro's own
interpreter (``MicroPolicy``), TF-free.

``MicroModel`` (the interpreter over checked model bytes) is shared with the micro
export, which measures its model through the same interpreter a device runs. Needs the
``tflite-micro`` package (``pip install 'policy-toolkit[micro]'``; only dev releases
exist on PyPI).
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from runtimes.policy import BundlePolicy
from toolkit.bundle import files
from toolkit.bundle.layout import Layout
from toolkit.errors import BundleError, PolicyError, UnsupportedError
from toolkit.trajectories.policy_step import PolicyStep

__all__ = [
    "ARENA_ALIGN",
    "OPS",
    "MicroModel",
    "MicroPolicy",
    "actions_of",
    "check_model",
    "smallest_arena",
]

#: Arena sizes are measured in steps of this many bytes (TFLite Micro aligns to 16).
ARENA_ALIGN = 16
#: The largest micro model read (a micro controller's flash is a few MiB at most).
MAX_MODEL_BYTES = 16 << 20
#: The largest arena tried when measuring (a micro policy needs a few KiB).
MAX_ARENA = 1 << 22


#: The builtin ops a micro model may use (what ``exporters.micro.tflite_model`` writes).
OPS = frozenset(
    (
        "ADD",
        "ARG_MAX",
        "DEQUANTIZE",
        "FULLY_CONNECTED",
        "MAXIMUM",
        "MINIMUM",
        "MUL",
        "QUANTIZE",
        "TANH",
    )
)


def check_model(model: bytes, where: str) -> None:
    """Refuses a model that is not a canonical flatbuffer of the ops above, before TFLite
    Micro sees it: TFLite Micro does not verify flatbuffers (a hostile offset would be
    read as it stands), so the model is parsed with the schema's Python reader (which
    raises on any offset outside the buffer), packed again, and must come out byte for
    byte as it went in.

    Raises:
      BundleError: a model that does not parse, is not canonical, or uses other ops.
    """
    import flatbuffers
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    try:
        if len(model) < 8 or model[4:8] != b"TFL3":
            raise ValueError("no TFL3 identifier")
        parsed = schema.ModelT.InitFromPackedBuf(bytearray(model), 0)
        builder = flatbuffers.Builder(1024)
        builder.Finish(parsed.Pack(builder), file_identifier=b"TFL3")
        canonical = bytes(builder.Output()) == model
        names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        ops = {
            names.get(max(c.builtinCode, c.deprecatedBuiltinCode))
            for c in parsed.operatorCodes or ()
        }
        subgraphs = len(parsed.subgraphs or ())
    except Exception as e:  # a hostile buffer raises whatever its bytes lead the reader to
        raise BundleError(
            f"{where}: expected a TFLite Micro model, got unreadable bytes ({e})"
        ) from e
    if not canonical:
        raise BundleError(f"{where}: expected a canonical micro model flatbuffer; it was altered")
    if subgraphs != 1 or not ops <= OPS:
        raise BundleError(
            f"{where}: expected one subgraph of {sorted(OPS)}, got {subgraphs} subgraphs of "
            f"{sorted(str(o) for o in ops)}"
        )


def _interpreter(model: bytes, arena: int) -> Any:
    from tflite_micro.python.tflite_micro import runtime

    return runtime.Interpreter.from_bytes(model, arena_size=arena)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Keeps TFLite Micro's allocation failures (C++ prints them to fd 2) off stderr while
    the arena is measured: the bisection fails on purpose."""
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _fits(model: bytes, arena: int) -> bool:
    """Whether TFLite Micro runs ``model`` in ``arena`` bytes, tried in a forked child:
    this tflite-micro dev release can crash (SIGSEGV) instead of failing cleanly when an
    arena is too small for a model with int16 activations, and a crash must only mean
    "does not fit"."""
    pid = os.fork()
    if pid == 0:  # the child: try, and report by exit status only
        code = 1
        # A crash here is an answer ("does not fit"), not an error to report: no
        # traceback from a faulthandler the parent enabled (pytest does).
        faulthandler.disable()
        try:
            signal.alarm(30)  # a child stuck on a lock inherited from a thread dies
            interpreter = _interpreter(model, arena)
            details = interpreter.get_input_details(0)
            interpreter.set_input(np.zeros(details["shape"], details["dtype"]), 0)
            interpreter.invoke()
            code = 0
        except BaseException:  # the child reports by status, never raises
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def arena_bound(model: bytes) -> int:
    """A generous upper bound of the arena ``model`` needs, from its (checked) tensors:
    twice every non-constant tensor's bytes, fixed costs per tensor, op and output
    channel, and 16 KiB. Loaders run in at least this much, whatever a manifest declares,
    since an arena too small can crash TFLite Micro (``_fits``)."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    parsed = schema.ModelT.InitFromPackedBuf(bytearray(model), 0)
    sizes = {0: 1, 1: 4, 2: 4, 3: 1, 4: 8, 7: 2, 9: 1}  # TensorType -> bytes per element
    total, channels = 16 << 10, 0
    graph = parsed.subgraphs[0]
    for tensor in graph.tensors or ():
        shape = [int(d) for d in (tensor.shape if tensor.shape is not None else ())]
        count = int(np.prod(np.abs(shape), dtype=np.float64)) if shape else 1
        total += 128
        buffers = parsed.buffers or []
        constant = 0 < tensor.buffer < len(buffers) and buffers[tensor.buffer].data is not None
        if not constant:
            total += 2 * count * sizes.get(int(tensor.type), 8)
        if len(shape) == 2:
            channels += shape[0]
    total += 512 * len(graph.operators or ()) + 32 * channels
    return -(-total // ARENA_ALIGN) * ARENA_ALIGN


def smallest_arena(model: bytes, where: str) -> int:
    """The smallest tensor arena (bytes, a multiple of 16) TFLite Micro runs ``model`` in,
    found by bisection over real interpreter allocations.

    Raises:
      BundleError: the model does not run even in ``MAX_ARENA`` bytes.
    """
    with _quiet_stderr():
        return _smallest(model, where)


def _smallest(model: bytes, where: str) -> int:
    if not _fits(model, MAX_ARENA):
        raise BundleError(
            f"{where}: TFLite Micro cannot run the model (not even in a {MAX_ARENA}-byte arena)"
        )
    low, high = 0, MAX_ARENA // ARENA_ALIGN  # fits at high * 16, not at low * 16
    while high - low > 1:
        mid = (low + high) // 2
        if _fits(model, mid * ARENA_ALIGN):
            high = mid
        else:
            low = mid
    return high * ARENA_ALIGN


class MicroModel:
    """One micro model under TFLite Micro's interpreter: float observations ``[1, n]`` in,
    the action out (int32 ``[1]`` index or float32 ``[1, k]``), one state per call.

    Args:
      model: the model bytes (already checked against the bundle's file table).
      arena: the tensor arena size in bytes (the manifest's measured size).
      inputs: the observation features the model declares (checked against the model).
      where: the model's file, for messages.

    Raises:
      BundleError: a model TFLite Micro refuses, or one whose input is not ``[1, inputs]``
        float32.
    """

    def __init__(self, model: bytes, arena: int, inputs: int, where: str):
        check_model(model, where)
        # At least the bound: a declared arena too small could crash the interpreter.
        arena = max(int(arena), arena_bound(model))
        if arena > MAX_ARENA:
            raise BundleError(f"{where}: expected a model within a {MAX_ARENA}-byte arena")
        try:
            self._interpreter = _interpreter(model, arena)
            details = self._interpreter.get_input_details(0)
        except (RuntimeError, ValueError) as e:
            raise BundleError(f"{where}: TFLite Micro refuses the model: {e}") from e
        shape = tuple(int(d) for d in details["shape"])
        if shape != (1, inputs) or np.dtype(details["dtype"]) != np.float32:
            raise BundleError(
                f"{where}: expected a float32 input of shape (1, {inputs}), got "
                f"{np.dtype(details['dtype']).name} {shape}"
            )
        self.inputs = inputs
        self.where = where

    def __call__(self, observations: np.ndarray) -> np.ndarray:
        """The model's outputs for flat observations ``[N, n]``, stacked ``[N, ...]``."""
        x = np.ascontiguousarray(observations, np.float32).reshape(-1, 1, self.inputs)
        interpreter = self._interpreter
        out = []
        for row in x:
            interpreter.set_input(row, 0)
            try:
                interpreter.invoke()
            except RuntimeError as e:
                raise BundleError(f"{self.where}: TFLite Micro failed to invoke: {e}") from e
            out.append(np.array(interpreter.get_output(0)))
        return np.stack(out).reshape(len(x), *out[0].shape[1:]) if out else np.zeros((0,))


def actions_of(section: Any, out: np.ndarray) -> np.ndarray:
    """The policy's actions ``[N, *shape]`` from the micro model's outputs, as the
    manifest's ``micro.action`` says: the argmax index plus the categorical's shift (the
    action dtype), or the float action."""
    action = section["action"]
    shape = tuple(int(d) for d in action["shape"])
    n = len(out)
    if action["kind"] == "argmax":
        index = np.asarray(out, np.int64).reshape(n) + int(action["shift"])
        return index.astype(action["dtype"]).reshape((n, *shape))
    return np.asarray(out, np.float32).astype(action["dtype"]).reshape((n, *shape))


class MicroPolicy(BundlePolicy):
    """A bundle's ``micro/policy.tflite`` run by TFLite Micro's interpreter (no TensorFlow),
    behind the Python-policy interface: what a device computes, so ``run``, ``bench`` and
    ``quantize`` measure it. Made by ``runtimes.load_policy(backend="micro")``.

    The model computes the deterministic action only (greedy, a deterministic actor's, a
    stochastic policy's mode), one state per interpreter call; ``distribution()`` and
    weight updates are refused.
    """

    backend = "micro"

    def __init__(
        self,
        layout: Layout,
        bundle_dir: str | os.PathLike,
        *,
        seed: int | None = None,
        validate_args: bool = True,
        check_finite: bool = False,
    ):
        super().__init__(
            layout, bundle_dir, seed=seed, validate_args=validate_args, check_finite=check_finite
        )
        if not layout.has("micro"):
            raise BundleError(f"{self._bundle_dir}: the bundle was exported without TFLite Micro")
        entry = layout.format("micro")
        section = self._section = entry.section
        names = list(section["observation"])
        unknown = [n for n in names if n not in self._input_names]
        if unknown:
            raise BundleError(
                f"{self._bundle_dir}: micro.observation: expected graph inputs of "
                f"{self._input_names}, got {unknown}"
            )
        self._positions = [self._input_names.index(n) for n in names]
        model = files.read_member(
            self._bundle_dir,
            entry.path,
            key="micro.file",
            files=layout.files_json,
            cap=MAX_MODEL_BYTES,
        )
        self._model = MicroModel(model, section["arena_bytes"], section["features"], entry.path)
        self._plain_output = False  # the action comes from _action below, never _run

    def _action(self, time_step: Any, policy_state: Any, seed: Any) -> PolicyStep:
        arrays, outer = self._inputs_from(time_step, policy_state)
        n = int(np.prod(outer, dtype=np.int64)) if outer else 1
        parts = [np.asarray(arrays[i], np.float32).reshape(n, -1) for i in self._positions]
        x = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
        if x.shape[1] != self._model.inputs:
            raise BundleError(
                f"{self._bundle_dir}: micro.features: expected {x.shape[1]}, "
                f"got {self._model.inputs}"
            )
        action = actions_of(self._section, self._model(x))
        action = action[0] if not outer else action.reshape(tuple(outer) + action.shape[1:])
        return PolicyStep(action, (), ())

    def _run(self, arrays: list[np.ndarray], unbatched: bool, fetch: list[str]) -> list[Any]:
        raise UnsupportedError(
            f"{self._bundle_dir}: the micro backend computes the deterministic action only "
            "(no distribution parameters); use backend='onnx' or 'litert' for those"
        )

    def _take_weights(self, policy: BundlePolicy) -> None:
        """``update(other)``: takes another micro policy's model (same features, action)."""
        same = isinstance(policy, MicroPolicy) and all(
            policy._section[k] == self._section[k] for k in ("features", "observation", "action")
        )
        if not same:
            raise PolicyError(
                f"update(): expected a micro-backend policy with the same features and action, "
                f"got {policy!r}"
            )
        self._model, self._section = policy._model, policy._section

    def update_from_checkpoint(self, path: Any, *, step: int | None = None) -> None:
        """Not available: the micro model is calibrated on real states at export.

        Raises:
          UnsupportedError: always, naming what to do instead.
        """
        raise UnsupportedError(
            f"{path}: the micro backend takes no checkpoints: its int8 model is calibrated "
            "at export; export the policy again with --format micro --env ENV_ID"
        )
