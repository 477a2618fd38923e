"""GPTQ int8 hidden layers in an ONNX graph (``exporters.quantize.gptq`` has the method).

Quantized weights are stored as ``Cast(int8 weights) * scale`` feeding the MatMul,
which onnxruntime folds once when the session is made: the graph computes in float
and the file holds int8.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from exporters.quantize.gptq import choose, flat, gptq, reaches, refit, scales
from toolkit.errors import ExportError

__all__ = ["GptqResult", "last_layers", "quantize_model"]


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


def last_layers(model: Any) -> list[str]:
    """Names of the MatMul/Gemm nodes with no MatMul/Gemm after them (the output layers)."""
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def feeds_a_layer(node: Any, seen: set[str]) -> bool:
        for output in node.output:
            for user in consumers.get(output, []):
                if user.name in seen:
                    continue
                seen.add(user.name)
                if user.op_type in ("MatMul", "Gemm") or feeds_a_layer(user, seen):
                    return True
        return False

    return [
        node.name
        for node in model.graph.node
        if node.op_type in ("MatMul", "Gemm") and not feeds_a_layer(node, set())
    ]


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
        if not reaches(
            layer.node.input[0],
            inputs_of,
            lambda t, own=layer.node.output[0]: t in outputs and t != own,
        )
    }
    names = choose([layer.node.name for layer in layers], first, last)
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
    float_values = dict(zip(wanted, map(flat, _run(float_model, calibration, wanted)), strict=True))

    quantized: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for layer in chosen:
        y_float = float_values[layer.node.output[0]]
        x_now = flat(_run(model, calibration, [layer.node.input[0]])[0])
        weight = values[layer.weight]
        q = gptq(weight, x_now)
        scale = scales(weight)
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
        solution = refit(flat(features), float_values[layer.output], start, discrete)
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
