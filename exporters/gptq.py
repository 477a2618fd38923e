"""Int8 weights that keep a small policy's decisions: GPTQ rounding, calibrated on real states.

A Q-network's action is decided by a gap between Q-values that is often a few
thousandths of their range. Rounding each int8 weight to nearest adds output errors
of about that size, and flips the action on those states (an 80-90% agreement on the
demo policy). This method keeps the decisions by choosing the int8 weights *for the
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
   actions) weighted up.

The result computes in float: ``Cast(int8 weights) * scale`` feeds the MatMul, so the
file holds int8 and onnxruntime folds the dequantization once, when the session is
made.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from toolkit.errors import ExportError

__all__ = ["GptqResult", "quantize_model"]

#: GPTQ's damping: this share of the mean Hessian diagonal is added to it.
DAMP = 0.01
#: Decision weighting of the last-layer refit: 1 / (gap + EPS * spread)^2.
GAP_EPS = 1e-2
#: Ridge of the last-layer refit, as a share of the normal matrix's mean diagonal.
RIDGE = 1e-6


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


def _reads_inputs_only(model: Any, layer: _Layer, layer_outputs: set[str]) -> bool:
    """True if no other layer lies between the graph's inputs and this layer."""
    producer = {out: node for node in model.graph.node for out in node.output}
    seen: set[str] = set()
    stack = [layer.node.input[0]]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in layer_outputs:
            return False
        node = producer.get(name)
        if node is not None:
            stack.extend(node.input)
    return True


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
    first = {
        layer.node.name
        for layer in layers
        if _reads_inputs_only(model, layer, outputs - {layer.node.output[0]})
    }
    hidden = [layer for layer in layers if layer.node.name not in last | first]
    chosen = hidden or [layer for layer in layers if layer.node.name not in last]
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

    quantized: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for layer in chosen:
        x_float, y_float = _run(
            float_model, calibration, [layer.node.input[0], layer.node.output[0]]
        )
        (x_now,) = _run(model, calibration, [layer.node.input[0]])
        x_float, y_float, x_now = _flat(x_float), _flat(y_float), _flat(x_now)
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
        (target,) = _run(float_model, calibration, [layer.output])
        (features,) = _run(model, calibration, [layer.node.input[0]])
        target, features = _flat(target), _flat(features)
        if layer.bias is not None:
            features = np.hstack([features, np.ones((len(features), 1))])
        if len(features) < 2 * features.shape[1]:
            continue  # too few states to refit this many weights
        weights = np.ones(len(features))
        if discrete and target.shape[1] >= 2:
            top = np.sort(target, axis=1)
            gap = top[:, -1] - top[:, -2]
            spread = float(np.quantile(target, 0.99) - np.quantile(target, 0.01)) or 1.0
            weights = 1.0 / (gap + GAP_EPS * spread) ** 2
        weights /= weights.mean()
        normal = (features * weights[:, None]).T @ features
        normal += RIDGE * max(float(np.mean(np.diag(normal))), 1e-12) * np.eye(len(normal))
        solution = np.linalg.solve(normal, (features * weights[:, None]).T @ target)
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
