"""Int8 weights that keep a small policy's decisions: GPTQ rounding, calibrated on real states.

A Q-network's action is decided by a gap between Q-values that is often a few
thousandths of their range. Rounding each int8 weight to nearest adds output errors
of about that size, and flips the action on those states (50-94% agreement on
trained demo policies). This method keeps the decisions by choosing the int8 weights *for the
states the policy meets* (``quantize_model``, on calibration states that the
measurements never use):

1. The hidden layers (MatMul with a constant 2-D weight, neither reading the graph's
   inputs directly nor producing its outputs) get int8 weights, one symmetric scale
   per output column, rounded by GPTQ (Frantar et al. 2022: each weight's rounding
   error is compensated in the not yet rounded weights of its column, through the
   inverse Hessian of the layer's inputs on the calibration states). Layers are done
   in graph order, each on the inputs the already quantized layers give it. With no
   hidden layer, the first layers are quantized instead.
2. A quantized layer's bias is corrected by the mean output error on the calibration
   states.
3. The first and last layers stay float (they hold a small share of the weights: the
   observation's and the action's width), and each last layer is refitted by least
   squares to the float model's outputs from the quantized layers' features, with
   states near a decision (a small gap between the two largest outputs, for discrete
   actions) weighted up, starting from (and barely pulled towards) its own weights.

The result computes in float and its file holds int8: in ONNX (``quantize_model``)
``Cast(int8 weights) * scale`` feeds the MatMul, which onnxruntime folds once when the
session is made; in LiteRT (``quantize_litert``, on FULLY_CONNECTED layers) per-channel
int8 weights feed a DEQUANTIZE op, as LiteRT's own float16 models do with float16.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable
from typing import Any

import numpy as np

from toolkit.errors import BundleError, ExportError

__all__ = ["GptqResult", "gptq", "quantize_litert", "quantize_model"]

#: GPTQ's damping: this share of the mean Hessian diagonal is added to it.
DAMP = 0.01
#: Decision weighting of the last-layer refit: 1 / (gap + EPS * spread)^2.
GAP_EPS = 1e-2
#: Pull of the last-layer refit towards the layer's own weights, as a share of the
#: normal matrix's mean diagonal (1e-6 towards zero cost the demo policy 0.3-1% of
#: its agreement; 1e-10 towards its weights recovers them on float features).
RIDGE = 1e-10


@dataclasses.dataclass(frozen=True)
class GptqResult:
    """The quantized model and what was done to it.

    Attributes:
      model: the ONNX ModelProto (int8 weights with DequantizeLinear).
      int8_layers: MatMul nodes given int8 weights.
      float_layers: MatMul nodes kept in float (first and last layers).
      refitted: last layers refitted on the calibration states.
    """

    model: Any
    int8_layers: tuple[str, ...]
    float_layers: tuple[str, ...]
    refitted: tuple[str, ...]


@dataclasses.dataclass
class _Layer:
    node: Any
    weight: str  # the initializer name
    bias: str | None  # the initializer added to the MatMul's output, if any
    output: str  # the tensor after the bias (the MatMul's output without one)


def _layers(model: Any) -> list[_Layer]:
    inits = {i.name: i for i in model.graph.initializer}
    uses: dict[str, int] = {}
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
            consumers.setdefault(name, []).append(node)
    layers = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2:
            continue
        weight = inits.get(node.input[1])
        # A weight shared by two nodes would be quantized for one of them only.
        if weight is None or len(weight.dims) != 2 or weight.data_type != 1:
            continue
        if uses.get(weight.name, 0) != 1:
            continue
        bias, output = None, node.output[0]
        users = consumers.get(node.output[0], [])
        if len(users) == 1 and users[0].op_type == "Add":
            add = users[0]
            other = [n for n in add.input if n != node.output[0]]
            init = inits.get(other[0]) if len(other) == 1 else None
            if (
                init is not None
                and init.data_type == 1
                and list(init.dims) == [weight.dims[1]]
                and uses.get(init.name, 0) == 1
            ):
                bias, output = init.name, add.output[0]
        layers.append(_Layer(node, weight.name, bias, output))
    return layers


def _reaches(start: Any, step: Callable[[Any], list], hit: Callable[[Any], bool]) -> bool:
    """Whether a walk from ``start`` along ``step`` meets a tensor for which ``hit`` holds."""
    seen, stack = set(), [start]
    while stack:
        t = stack.pop()
        if t not in seen:
            seen.add(t)
            if hit(t):
                return True
            stack.extend(step(t))
    return False


def _choose(names: list[str], first: set[str], last: set[str]) -> list[str]:
    """The layers to quantize: the hidden ones, or else all but the last."""
    hidden = [n for n in names if n not in last | first]
    return hidden or [n for n in names if n not in last]


def _run(model: Any, inputs: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
    """Values of any tensors of the model on the calibration inputs."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for name in names:
        if name not in known:
            # Every layer tensor is float (the layers are float MatMuls).
            probe.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    feed = {i.name: inputs[i.name] for i in session.get_inputs()}
    out = []
    batch = 4096
    count = len(next(iter(feed.values())))
    for start in range(0, count, batch):
        part = {k: v[start : start + batch] for k, v in feed.items()}
        out.append(session.run(names, part))
    return [np.concatenate([o[i] for o in out]).astype(np.float64) for i in range(len(names))]


def _flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, x.shape[-1])


def _scales(weight: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(weight).max(axis=0), 1e-30) / 127.0


def gptq(weight: np.ndarray, inputs: np.ndarray, damp: float = DAMP) -> np.ndarray:
    """Int8 values (as int8) of ``weight`` [in, out] for layer inputs [N, in], per column.

    Rounds one input row at a time in order of decreasing input energy, pushing each
    rounding error into the rows not yet rounded so the layer's outputs on ``inputs``
    move least (GPTQ, with the Cholesky form of the inverse Hessian).
    """
    scale = _scales(weight)
    w = weight.astype(np.float64).copy()
    n = w.shape[0]
    hessian = inputs.T @ inputs
    hessian += (damp * max(float(np.mean(np.diag(hessian))), 1e-12) + 1e-12) * np.eye(n)
    order = np.argsort(-np.diag(hessian), kind="stable")
    w, hessian = w[order], hessian[order][:, order]
    upper = np.linalg.cholesky(np.linalg.inv(hessian)).T
    q = np.zeros(w.shape, np.int8)
    for i in range(n):
        row = np.clip(np.round(w[i] / scale), -127, 127)
        q[i] = row.astype(np.int8)
        error = (w[i] - row * scale) / upper[i, i]
        w[i + 1 :] -= np.outer(upper[i, i + 1 :], error)
    out = np.empty_like(q)
    out[order] = q
    return out


def _refit(
    features: np.ndarray, target: np.ndarray, start: np.ndarray, discrete: bool
) -> np.ndarray | None:
    """Least squares [in (+1), out] of a float last layer to the float outputs (or None).

    ``start`` is the layer's own [W; b] (``len(start) == features' width + 1`` when it has
    a bias). The fit is pulled towards it, barely (RIDGE): on the float features it
    gives ``start`` back exactly, where a pull towards zero measurably flipped actions.
    """
    if len(start) == features.shape[1] + 1:
        features = np.hstack([features, np.ones((len(features), 1))])
    if len(features) < 2 * features.shape[1]:
        return None  # too few states to refit this many weights
    weights = np.ones(len(features))
    if discrete and target.shape[1] >= 2:
        top = np.sort(target, axis=1)
        gap = top[:, -1] - top[:, -2]
        spread = float(np.quantile(target, 0.99) - np.quantile(target, 0.01)) or 1.0
        weights = 1.0 / (gap + GAP_EPS * spread) ** 2
    weights /= weights.mean()
    normal = (features * weights[:, None]).T @ features
    ridge = RIDGE * max(float(np.mean(np.diag(normal))), 1e-12)
    right = (features * weights[:, None]).T @ target + ridge * start
    return np.linalg.solve(normal + ridge * np.eye(len(normal)), right)


def quantize_model(model: Any, calibration: dict[str, np.ndarray], discrete: bool) -> GptqResult:
    """The model with GPTQ int8 hidden layers and refitted float last layers (module doc).

    Args:
      model: the float ONNX ModelProto (left unchanged).
      calibration: graph inputs of the calibration states, one row each.
      discrete: the action is discrete (argmax of the last layers' outputs): the refit
        weights states near a decision up.

    Raises:
      ExportError: no layer with a constant float weight to quantize.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from exporters.quantize import last_layers

    float_model = model
    model = onnx.ModelProto()
    model.CopyFrom(float_model)
    layers = _layers(model)
    last = set(last_layers(model))
    outputs = {layer.node.output[0] for layer in layers}
    producer = {out: node for node in model.graph.node for out in node.output}

    def inputs_of(name: str) -> list[str]:
        node = producer.get(name)
        return [] if node is None else list(node.input)

    # First layers: no other layer between the graph's inputs and them.
    first = {
        layer.node.name
        for layer in layers
        if not _reaches(
            layer.node.input[0],
            inputs_of,
            lambda t, own=layer.node.output[0]: t in outputs and t != own,
        )
    }
    names = _choose([layer.node.name for layer in layers], first, last)
    chosen = [layer for layer in layers if layer.node.name in names]
    if not chosen:
        raise ExportError("gptq: no hidden or first layer with a constant float weight to quantize")
    inits = {i.name: i for i in model.graph.initializer}
    values = {
        name: numpy_helper.to_array(init).astype(np.float64)
        for name, init in inits.items()
        if init.data_type == TensorProto.FLOAT
    }

    def set_value(name: str, value: np.ndarray) -> None:
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
        values[name] = value.astype(np.float32).astype(np.float64)

    # What the float model computes is run once: the quantized layers' outputs (bias
    # correction) and the last layers' (refit targets).
    wanted = [layer.node.output[0] for layer in chosen]
    wanted += [layer.output for layer in layers if layer.node.name in last]
    wanted = list(dict.fromkeys(wanted))
    float_values = dict(
        zip(wanted, map(_flat, _run(float_model, calibration, wanted)), strict=True)
    )

    quantized: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for layer in chosen:
        y_float = float_values[layer.node.output[0]]
        x_now = _flat(_run(model, calibration, [layer.node.input[0]])[0])
        weight = values[layer.weight]
        q = gptq(weight, x_now)
        scale = _scales(weight)
        dequantized = q.astype(np.float64) * scale
        set_value(layer.weight, dequantized)
        quantized[layer.weight] = (q, scale)
        if layer.bias is not None:
            shift = (y_float - x_now @ dequantized).mean(axis=0)
            set_value(layer.bias, values[layer.bias] + shift)

    refitted = []
    for layer in layers:
        if layer.node.name not in last or layer.weight in quantized:
            continue
        (features,) = _run(model, calibration, [layer.node.input[0]])
        start = values[layer.weight]
        if layer.bias is not None:
            start = np.vstack([start, values[layer.bias][None]])
        solution = _refit(_flat(features), float_values[layer.output], start, discrete)
        if solution is None:
            continue
        if layer.bias is not None:
            set_value(layer.weight, solution[:-1])
            set_value(layer.bias, solution[-1])
        else:
            set_value(layer.weight, solution)
        refitted.append(layer.node.name)

    # Int8 storage: each quantized weight becomes Cast(int8) * scale (per output column).
    # onnxruntime folds that constant expression once, when the session is made (it
    # leaves a DequantizeLinear in place, for quantized kernels, and runs it each call).
    nodes = []
    for name, (q, scale) in quantized.items():
        stored = f"{name}_int8"
        inits[name].CopyFrom(numpy_helper.from_array(q, stored))
        model.graph.initializer.append(
            numpy_helper.from_array(scale.astype(np.float32), f"{name}_scale")
        )
        nodes += [
            helper.make_node(
                "Cast", [stored], [f"{stored}_float"], name=f"{stored}_cast", to=TensorProto.FLOAT
            ),
            helper.make_node(
                "Mul", [f"{stored}_float", f"{name}_scale"], [name], name=f"{stored}_scale"
            ),
        ]
    all_nodes = nodes + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(all_nodes)
    int8 = tuple(layer.node.name for layer in chosen)
    kept = tuple(layer.node.name for layer in layers if layer.weight not in quantized)
    return GptqResult(model, int8, kept, tuple(refitted))


# --- LiteRT ------------------------------------------------------------------------


@dataclasses.dataclass
class _FcLayer:
    position: int  # in the subgraph's operators
    name: str
    weight: int  # tensor indices
    bias: int | None
    input: int
    output: int


def quantize_litert(
    model: bytes,
    calibration: dict[str, np.ndarray],
    discrete: bool,
    signature: str = "distribution",
) -> tuple[bytes, tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """The LiteRT model with GPTQ int8 hidden FULLY_CONNECTED layers (see the module doc).

    Quantized weights are stored as per-channel int8 tensors feeding a DEQUANTIZE
    op (the layout LiteRT's float16 conversion uses, with int8): the model computes in
    float and the file holds int8. Needs TensorFlow (its flatbuffer schema).

    Returns:
      ``(model bytes, int8 layers, float layers, refitted layers)``, layers named by
      their output tensors.

    Raises:
      ExportError: no hidden or first FULLY_CONNECTED layer with a constant weight.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    from runtimes.litert_backend import new_interpreter

    # The model comes from a bundle: LiteRT builds it first (it verifies the flatbuffer and
    # its indices, BundleError if not), then the schema's parser reads it.
    new_interpreter(model)
    try:
        tflite = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
    except (struct.error, TypeError, ValueError, IndexError) as e:
        raise BundleError(
            f"the LiteRT model cannot be read for gptq ({type(e).__name__}: {e})"
        ) from None
    found = [s for s in tflite.signatureDefs if s.signatureKey.decode() == signature]
    if not found:
        raise ExportError(f"gptq: the LiteRT model has no {signature!r} signature")
    subgraph = tflite.subgraphs[found[0].subgraphIndex]

    def code(op: Any) -> int:
        entry = tflite.operatorCodes[op.opcodeIndex]
        return max(entry.builtinCode, entry.deprecatedBuiltinCode)

    def constant(index: int) -> np.ndarray | None:
        if index < 0:
            return None
        tensor = subgraph.tensors[index]
        data = tflite.buffers[tensor.buffer].data
        if tensor.type != schema.TensorType.FLOAT32 or data is None or len(data) == 0:
            return None
        return np.frombuffer(bytes(data), np.float32).reshape(list(tensor.shape)).astype(np.float64)

    uses: dict[int, int] = {}
    for op in subgraph.operators:
        for index in op.inputs:
            uses[index] = uses.get(index, 0) + 1
    layers = []
    for position, op in enumerate(subgraph.operators):
        if code(op) != schema.BuiltinOperator.FULLY_CONNECTED or len(op.inputs) < 2:
            continue
        weight = constant(op.inputs[1])
        if weight is None or weight.ndim != 2 or uses.get(op.inputs[1], 0) != 1:
            continue
        bias = op.inputs[2] if len(op.inputs) > 2 and constant(op.inputs[2]) is not None else None
        if bias is not None and uses.get(bias, 0) != 1:
            bias = None
        name = subgraph.tensors[op.outputs[0]].name.decode(errors="replace")
        layers.append(_FcLayer(position, name, op.inputs[1], bias, op.inputs[0], op.outputs[0]))
    producer = {out: op for op in subgraph.operators for out in op.outputs}
    consumers: dict[int, list[Any]] = {}
    for op in subgraph.operators:
        for index in op.inputs:
            consumers.setdefault(index, []).append(op)
    outputs = {layer.output for layer in layers}

    def inputs_of(t: int) -> list[int]:
        op = producer.get(t)
        return [] if op is None else [i for i in op.inputs if i >= 0]

    def outputs_of(t: int) -> list[int]:
        return [o for op in consumers.get(t, []) for o in op.outputs]

    def upstream_layer(index: int, own: int) -> bool:
        return _reaches(index, inputs_of, lambda t: t in outputs and t != own)

    def downstream_layer(index: int) -> bool:
        return _reaches(index, outputs_of, lambda t: t in outputs and t != index)

    last = {layer.name for layer in layers if not downstream_layer(layer.output)}
    first = {layer.name for layer in layers if not upstream_layer(layer.input, layer.output)}
    names = _choose([layer.name for layer in layers], first, last)
    chosen = [layer for layer in layers if layer.name in names]
    if not chosen:
        raise ExportError(
            "gptq: no hidden or first FULLY_CONNECTED layer with a constant float weight"
        )

    def run(indices: list[int]) -> list[np.ndarray]:
        """Values of tensors of the current model on the calibration states."""
        import copy

        from runtimes.litert_backend import new_interpreter, quiet_stderr

        probe = copy.deepcopy(tflite)
        probe_sig = next(s for s in probe.signatureDefs if s.signatureKey.decode() == signature)
        probe_graph = probe.subgraphs[probe_sig.subgraphIndex]
        names = []
        for index in indices:
            mapping = schema.TensorMapT()
            mapping.name = f"gptq_probe_{index}".encode()
            mapping.tensorIndex = index
            probe_sig.outputs.append(mapping)
            probe_graph.outputs = np.append(probe_graph.outputs, np.int32(index))
            names.append(mapping.name.decode())
        interpreter = new_interpreter(bytes(flatbuffer_utils.convert_object_to_bytearray(probe)))
        runner = interpreter.get_signature_runner(signature)
        wanted = list(interpreter.get_signature_list()[signature]["inputs"])
        count = len(next(iter(calibration.values())))
        parts: list[list[np.ndarray]] = [[] for _ in names]
        with quiet_stderr():
            for start in range(0, count, 1024):
                out = runner(**{k: calibration[k][start : start + 1024] for k in wanted})
                for i, name in enumerate(names):
                    parts[i].append(out[name])
        return [_flat(np.concatenate(p).astype(np.float64)) for p in parts]

    def write(index: int, value: np.ndarray) -> None:
        tensor = subgraph.tensors[index]
        data = value.astype(np.float32).reshape(list(tensor.shape))
        tflite.buffers[tensor.buffer].data = np.frombuffer(data.tobytes(), np.uint8)

    original = {layer.weight: constant(layer.weight) for layer in layers}
    original_bias = {layer.bias: constant(layer.bias) for layer in layers if layer.bias is not None}
    float_inputs = dict(
        zip([layer.input for layer in layers], run([layer.input for layer in layers]), strict=True)
    )
    quantized: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for layer in chosen:
        weight = original[layer.weight].T  # LiteRT keeps [out, in]
        (x_now,) = run([layer.input])
        q = gptq(weight, x_now)
        scale = _scales(weight)
        dequantized = q.astype(np.float64) * scale
        write(layer.weight, dequantized.T)
        quantized[layer.weight] = (q, scale)
        if layer.bias is not None:
            shift = (float_inputs[layer.input] @ weight - x_now @ dequantized).mean(axis=0)
            write(layer.bias, original_bias[layer.bias] + shift)

    refitted = []
    for layer in layers:
        if layer.name not in last or layer.weight in quantized:
            continue
        weight = original[layer.weight].T
        target = float_inputs[layer.input] @ weight
        if layer.bias is not None:
            target = target + original_bias[layer.bias]
        (features,) = run([layer.input])
        start = (
            weight if layer.bias is None else np.vstack([weight, original_bias[layer.bias][None]])
        )
        solution = _refit(features, target, start, discrete)
        if solution is None:
            continue
        if layer.bias is not None:
            write(layer.weight, solution[:-1].T)
            write(layer.bias, solution[-1])
        else:
            write(layer.weight, solution.T)
        refitted.append(layer.name)

    # Int8 storage: per-channel int8 weights (axis 0: LiteRT's output channels) and a
    # DEQUANTIZE op giving the FULLY_CONNECTED its float weights.
    dequantize = None
    for i, entry in enumerate(tflite.operatorCodes):
        if max(entry.builtinCode, entry.deprecatedBuiltinCode) == schema.BuiltinOperator.DEQUANTIZE:
            dequantize = i
    if dequantize is None:
        entry = schema.OperatorCodeT()
        entry.builtinCode = entry.deprecatedBuiltinCode = schema.BuiltinOperator.DEQUANTIZE
        entry.version = 2  # int8 input
        tflite.operatorCodes.append(entry)
        dequantize = len(tflite.operatorCodes) - 1
    new_ops = []
    for layer in chosen:
        q, scale = quantized[layer.weight]
        tensor = subgraph.tensors[layer.weight]
        float_tensor = schema.TensorT()
        float_tensor.shape = np.array(tensor.shape, np.int32)
        float_tensor.type = schema.TensorType.FLOAT32
        float_tensor.buffer = 0  # no data: computed by the DEQUANTIZE
        float_tensor.name = tensor.name + b"_dequantized"
        subgraph.tensors.append(float_tensor)
        float_index = len(subgraph.tensors) - 1
        tensor.type = schema.TensorType.INT8
        tflite.buffers[tensor.buffer].data = np.frombuffer(
            np.ascontiguousarray(q.T).tobytes(), np.uint8
        )
        params = schema.QuantizationParametersT()
        params.scale = scale.astype(np.float32)
        params.zeroPoint = np.zeros(len(scale), np.int64)
        params.quantizedDimension = 0
        tensor.quantization = params
        op = schema.OperatorT()
        op.opcodeIndex = dequantize
        op.inputs = np.array([layer.weight], np.int32)
        op.outputs = np.array([float_index], np.int32)
        new_ops.append(op)
        fc = subgraph.operators[layer.position]
        fc.inputs = np.array([float_index if i == layer.weight else i for i in fc.inputs], np.int32)
    subgraph.operators = new_ops + list(subgraph.operators)
    data = bytes(flatbuffer_utils.convert_object_to_bytearray(tflite))
    kept = tuple(layer.name for layer in layers if layer.weight not in quantized)
    return data, tuple(layer.name for layer in chosen), kept, tuple(refitted)
