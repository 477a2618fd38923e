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
    _check_graph(parsed, schema, names, where)


#: Element sizes of the tensor types a micro model holds (schema TensorType names).
_ITEM_BYTES = {"FLOAT32": 4, "INT8": 1, "INT16": 2, "INT32": 4, "INT64": 8}
#: The largest dimension of a micro model's tensor (its layers are a few hundred wide).
_MAX_DIM = 1 << 16


def _check_graph(model: Any, schema: Any, op_names: dict[int, str], where: str) -> None:
    """Refuses a parsed model whose indices, shapes or constants do not hold together:
    TFLite Micro trusts them (an operator code, tensor or buffer index out of range, or a
    constant shorter than its shape, is read out of bounds), and it reads tensors placed
    by an ``OfflineMemoryAllocation`` metadata entry where that entry says. So only what
    the micro export writes passes: no metadata, signatures, external or offset buffers,
    sparse, variable or custom parts; every index in range; each constant exactly its
    shape's bytes; each operator's shapes those of the chain the export writes
    (exporters/micro/tflite_model.py).

    Raises:
      BundleError: naming the part and what it holds.
    """
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}

    def bad(what: str, expected: str, got: Any) -> BundleError:
        return BundleError(f"{where}: {what}: expected {expected}, got {got}")

    for field in ("metadata", "metadataBuffer", "signatureDefs", "externalBuffers"):
        if getattr(model, field, None):
            raise bad(field, "none (the micro export writes none)", "entries")
    graph = model.subgraphs[0]
    buffers = model.buffers or []
    tensors = graph.tensors or []
    if not buffers or (buffers[0].data is not None and len(buffers[0].data)):
        raise bad("buffer 0", "an empty buffer", "data")
    for i, buffer in enumerate(buffers):
        if buffer.offset or buffer.size:
            raise bad(f"buffer {i}", "data inside the model", f"offset {buffer.offset}")
    shapes: list[tuple[int, ...]] = []
    kinds: list[str] = []
    constant: list[bool] = []
    for i, t in enumerate(tensors):
        what = f"tensor {i}"
        kind = type_names.get(t.type, str(t.type))
        if kind not in _ITEM_BYTES:
            raise bad(what, f"a type of {sorted(_ITEM_BYTES)}", kind)
        shape = tuple(int(d) for d in (t.shape if t.shape is not None else ()))
        if not 1 <= len(shape) <= 2 or not all(1 <= d <= _MAX_DIM for d in shape):
            raise bad(what, f"a shape of 1 or 2 dimensions in [1, {_MAX_DIM}]", shape)
        if t.isVariable or t.sparsity is not None or t.variantTensors or t.externalBuffer:
            raise bad(what, "a plain tensor", "a variable, sparse or external one")
        if t.shapeSignature is not None and tuple(t.shapeSignature) != shape:
            raise bad(what, f"a shape signature of {shape}", tuple(t.shapeSignature))
        if not 0 <= t.buffer < len(buffers):
            raise bad(what, f"a buffer index below {len(buffers)}", t.buffer)
        data = buffers[t.buffer].data if t.buffer else None
        size = int(np.prod(shape)) * _ITEM_BYTES[kind]
        if data is not None and len(data) != size:
            raise bad(what, f"{size} bytes of {kind} {shape}", f"{len(data)} bytes")
        q = t.quantization
        if q is not None:
            n = 0 if q.scale is None else len(q.scale)
            zeros = 0 if q.zeroPoint is None else len(q.zeroPoint)
            axis = int(q.quantizedDimension)
            if q.details is not None or q.min is not None or q.max is not None:
                raise bad(f"{what} quantization", "scales and zero points", "more")
            if n != zeros or not 0 <= axis < len(shape) or n not in (0, 1, shape[axis]):
                raise bad(f"{what} quantization", f"1 or {shape[axis : axis + 1]} scales", n)
            if n and not np.all(np.isfinite(q.scale) & (np.asarray(q.scale) > 0)):
                raise bad(f"{what} quantization", "finite positive scales", "others")
        shapes.append(shape)
        kinds.append(kind)
        constant.append(data is not None)
    count = len(tensors)
    ins = [int(i) for i in (graph.inputs if graph.inputs is not None else ())]
    outs = [int(i) for i in (graph.outputs if graph.outputs is not None else ())]
    if len(ins) != 1 or len(outs) != 1 or not all(0 <= i < count for i in ins + outs):
        raise bad("subgraph", f"one input and one output among {count} tensors", (ins, outs))
    if constant[ins[0]] or kinds[ins[0]] != "FLOAT32":
        raise bad("subgraph input", "a float32 tensor that is not a constant", kinds[ins[0]])
    written = {ins[0]}
    codes = model.operatorCodes or []
    for k, op in enumerate(graph.operators or []):
        what = f"operator {k}"
        if not 0 <= op.opcodeIndex < len(codes):
            raise bad(what, f"an operator code below {len(codes)}", op.opcodeIndex)
        code = codes[op.opcodeIndex]
        name = op_names.get(max(code.builtinCode, code.deprecatedBuiltinCode))
        if (
            op.customOptions is not None
            or op.mutatingVariableInputs is not None
            or op.intermediates is not None
            or op.largeCustomOptionsOffset
            or op.largeCustomOptionsSize
            or op.builtinOptions2Type
        ):
            raise bad(what, f"a plain {name}", "custom, variable or intermediate parts")
        args = [int(i) for i in (op.inputs if op.inputs is not None else ())]
        results = [int(i) for i in (op.outputs if op.outputs is not None else ())]
        if not all(0 <= i < count for i in args + results):
            raise bad(what, f"tensor indices below {count}", (args, results))
        # In order: an operator reads constants, the input and earlier results only, and
        # writes each tensor once (never a constant).
        for i in args:
            if not constant[i] and i not in written:
                raise bad(what, "inputs computed before it", f"tensor {i}")
        for i in results:
            if constant[i] or i in written:
                raise bad(what, "outputs written once, not constants", f"tensor {i}")
            written.add(i)
        _check_operator(name, [shapes[i] for i in args], [shapes[i] for i in results], bad, what)
        if name == "ARG_MAX":
            axis = tensors[args[1]]
            data = buffers[axis.buffer].data if constant[args[1]] else None
            value = np.frombuffer(bytes(data), "<i4") if kinds[args[1]] == "INT32" else None
            # Along the batch axis the index would have n elements for a (1,) output.
            if value is None or value.tolist() not in ([1], [-1]):
                raise bad(what, "ARG_MAX along a constant int32 axis 1", "another axis")
            if kinds[results[0]] != "INT32":
                raise bad(what, "an int32 index", kinds[results[0]])
        if name == "FULLY_CONNECTED" and not (constant[args[1]] and constant[args[2]]):
            raise bad(what, "constant weights and bias", "computed ones")
    if outs[0] not in written or outs[0] == ins[0]:
        raise bad("subgraph output", "a tensor an operator computes", f"tensor {outs[0]}")


def _check_operator(
    name: str | None,
    args: list[tuple[int, ...]],
    results: list[tuple[int, ...]],
    bad: Any,
    what: str,
) -> None:
    """One operator's shapes, as the micro export writes them (batch 1)."""
    if len(results) != 1:
        raise bad(what, f"one output of {name}", len(results))
    out = results[0]
    if name == "FULLY_CONNECTED":
        if len(args) != 3:
            raise bad(what, "input, weights and bias", f"{len(args)} inputs")
        x, w, b = args
        if len(x) != 2 or x[0] != 1 or len(w) != 2 or w[1] != x[1] or b != (w[0],):
            raise bad(what, "x (1, k), weights (n, k), bias (n,)", (x, w, b))
        if out != (1, w[0]):
            raise bad(what, f"an output of shape (1, {w[0]})", out)
    elif name in ("ADD", "MUL", "MINIMUM", "MAXIMUM"):
        if len(args) != 2 or len(args[0]) != 2 or args[0][0] != 1:
            raise bad(what, f"{name} of a (1, n) tensor and another", args)
        if args[1] not in (args[0], args[0][1:]) or out != args[0]:
            raise bad(what, f"(1, n) and (n,) in, (1, n) out for {name}", (args, out))
    elif name in ("QUANTIZE", "DEQUANTIZE", "TANH"):
        if len(args) != 1 or args[0] != out:
            raise bad(what, f"one input of the output's shape for {name}", (args, out))
    elif name == "ARG_MAX":
        if len(args) != 2 or len(args[0]) != 2 or args[0][0] != 1 or args[1] != (1,):
            raise bad(what, "ARG_MAX of a (1, n) tensor along a (1,) axis", args)
        if out != (1,):
            raise bad(what, "an ARG_MAX output of shape (1,)", out)
    else:
        raise bad(what, f"one of {sorted(OPS)}", name)


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
