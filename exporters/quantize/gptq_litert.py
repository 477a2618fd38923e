"""GPTQ int8 hidden layers in a LiteRT model (``exporters.quantize.gptq`` has the method).

Quantized weights are stored as per-channel int8 tensors feeding a DEQUANTIZE op, as
LiteRT's own float16 models do with float16: the model computes in float and the file
holds int8. The flatbuffer is edited with TensorFlow's own schema
(``tensorflow.lite.tools.flatbuffer_utils``): the converter has no weight-only int8
mode (tensorflow#38781).
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import numpy as np

from exporters.quantize.gptq import choose, flat, gptq, reaches, refit, scales
from toolkit.errors import BundleError, ExportError

__all__ = ["quantize_litert"]


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

    from runtimes.backends.litert import new_interpreter

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
        return reaches(index, inputs_of, lambda t: t in outputs and t != own)

    def downstream_layer(index: int) -> bool:
        return reaches(index, outputs_of, lambda t: t in outputs and t != index)

    last = {layer.name for layer in layers if not downstream_layer(layer.output)}
    first = {layer.name for layer in layers if not upstream_layer(layer.input, layer.output)}
    names = choose([layer.name for layer in layers], first, last)
    chosen = [layer for layer in layers if layer.name in names]
    if not chosen:
        raise ExportError(
            "gptq: no hidden or first FULLY_CONNECTED layer with a constant float weight"
        )

    def run(indices: list[int]) -> list[np.ndarray]:
        """Values of tensors of the current model on the calibration states."""
        import copy

        from runtimes.backends.litert import new_interpreter, quiet_stderr

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
                try:
                    out = runner(**{k: calibration[k][start : start + 1024] for k in wanted})
                except RuntimeError as e:
                    # LiteRT checks a model's tensor indices when it allocates, not at load.
                    raise BundleError(
                        f"the LiteRT model cannot run for gptq ({str(e).strip()[:200]})"
                    ) from None
                for i, name in enumerate(names):
                    parts[i].append(out[name])
        return [flat(np.concatenate(p).astype(np.float64)) for p in parts]

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
        scale = scales(weight)
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
        solution = refit(features, target, start, discrete)
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
