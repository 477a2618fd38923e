"""The micro model as a LiteRT flatbuffer TFLite Micro runs (``build``).

One subgraph, batch 1, builtin ops only, written with the flatbuffer schema tflite-micro
ships (its object API), so what is written is exactly what its interpreter reads:

    observation float32 [1, n]
      MUL (per-feature scale) -> ADD (per-feature offset)   the float preamble
      QUANTIZE -> int8
      FULLY_CONNECTED (int8 weights, one scale per output channel, int32 bias)
        [fused RELU | DEQUANTIZE -> TANH -> QUANTIZE]        per layer
      discrete:   ARG_MAX (int8 -> int32)                    -> action int32 [1]
      continuous: DEQUANTIZE -> [TANH] -> MUL -> ADD -> MINIMUM -> MAXIMUM
                                                             -> action float32 [1, k]

The argmax output is the index; a categorical's shift (its first action) is added by
the reader (the C wrapper, the micro backend), as the header says.
"""

from __future__ import annotations

import numpy as np

from exporters.micro.int8 import QModel

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "build", "ops_of"]

INPUT_NAME = "observation"
OUTPUT_NAME = "action"


def _schema():
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    return schema


class _Builder:
    def __init__(self):
        self.s = _schema()
        self.tensors: list = []
        self.buffers: list = [self.s.BufferT()]  # buffer 0: empty, by convention
        self.operators: list = []
        self.codes: list[int] = []

    def tensor(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: int,
        data: np.ndarray | None = None,
        scale: list[float] | None = None,
        zero_point: list[int] | None = None,
        axis: int = 0,
    ) -> int:
        s = self.s
        t = s.TensorT()
        t.name = name.encode()
        t.shape = np.array(shape, np.int32)
        t.type = dtype
        t.buffer = 0
        if data is not None:
            buffer = s.BufferT()
            buffer.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            self.buffers.append(buffer)
            t.buffer = len(self.buffers) - 1
        if scale is not None:
            q = s.QuantizationParametersT()
            q.scale = np.array(scale, np.float32)
            q.zeroPoint = np.array(zero_point if zero_point is not None else [0] * len(scale))
            q.quantizedDimension = axis
            t.quantization = q
        self.tensors.append(t)
        return len(self.tensors) - 1

    def op(self, code: int, inputs: list[int], outputs: list[int], options=None, kind=0) -> None:
        s = self.s
        if code not in self.codes:
            self.codes.append(code)
        op = s.OperatorT()
        op.opcodeIndex = self.codes.index(code)
        op.inputs = np.array(inputs, np.int32)
        op.outputs = np.array(outputs, np.int32)
        if options is not None:
            op.builtinOptionsType = kind
            op.builtinOptions = options
        self.operators.append(op)

    def finish(self, inputs: list[int], outputs: list[int], description: str) -> bytes:
        import flatbuffers

        s = self.s
        subgraph = s.SubGraphT()
        subgraph.tensors = self.tensors
        subgraph.inputs = np.array(inputs, np.int32)
        subgraph.outputs = np.array(outputs, np.int32)
        subgraph.operators = self.operators
        subgraph.name = b"main"
        model = s.ModelT()
        model.version = 3
        model.description = description.encode()
        model.buffers = self.buffers
        model.subgraphs = [subgraph]
        codes = []
        for code in self.codes:
            oc = s.OperatorCodeT()
            oc.builtinCode = code
            oc.deprecatedBuiltinCode = min(code, 127)
            oc.version = 1
            codes.append(oc)
        model.operatorCodes = codes
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


def build(model: QModel, description: str = "policy-toolkit micro policy") -> bytes:
    """The flatbuffer of ``model`` (module doc)."""
    b = _Builder()
    s = b.s
    ops = s.BuiltinOperator
    types = s.TensorType
    n = model.inputs
    x = b.tensor(INPUT_NAME, (1, n), types.FLOAT32)
    scale = b.tensor("preamble/scale", (n,), types.FLOAT32, model.preamble_scale.astype(np.float32))
    offset = b.tensor(
        "preamble/offset", (n,), types.FLOAT32, model.preamble_offset.astype(np.float32)
    )
    scaled = b.tensor("preamble/scaled", (1, n), types.FLOAT32)
    normal = b.tensor("preamble/normalised", (1, n), types.FLOAT32)
    b.op(ops.MUL, [x, scale], [scaled], s.MulOptionsT(), s.BuiltinOptions.MulOptions)
    b.op(ops.ADD, [scaled, offset], [normal], s.AddOptionsT(), s.BuiltinOptions.AddOptions)
    act = types.INT8 if model.bits == 8 else types.INT16
    h = b.tensor(
        f"input/{model.activations}",
        (1, n),
        act,
        scale=[model.input_scale],
        zero_point=[model.input_zp],
    )
    b.op(ops.QUANTIZE, [normal], [h])
    for i, layer in enumerate(model.layers):
        outputs = layer.weight.shape[0]
        w = b.tensor(
            f"layer{i}/weights",
            layer.weight.shape,
            types.INT8,
            layer.weight.astype(np.int8),
            scale=[float(v) for v in layer.weight_scale],
            zero_point=[0] * outputs,
            axis=0,
        )
        bias_scales = [
            float(np.float32(layer.input_scale) * np.float32(v)) for v in layer.weight_scale
        ]
        bias = b.tensor(
            f"layer{i}/bias",
            (outputs,),
            types.INT32 if model.bits == 8 else types.INT64,
            layer.bias.astype(np.int32 if model.bits == 8 else np.int64),
            scale=bias_scales,
            zero_point=[0] * outputs,
            axis=0,
        )
        y = b.tensor(
            f"layer{i}/output",
            (1, outputs),
            act,
            scale=[layer.output_scale],
            zero_point=[layer.output_zp],
        )
        options = s.FullyConnectedOptionsT()
        options.fusedActivationFunction = (
            s.ActivationFunctionType.RELU
            if layer.activation == "relu"
            else s.ActivationFunctionType.NONE
        )
        b.op(
            ops.FULLY_CONNECTED,
            [h, w, bias],
            [y],
            options,
            s.BuiltinOptions.FullyConnectedOptions,
        )
        h = y
        if layer.activation == "tanh":
            real = b.tensor(f"layer{i}/dequantized", (1, outputs), types.FLOAT32)
            squashed = b.tensor(f"layer{i}/tanh", (1, outputs), types.FLOAT32)
            scale_out, zp_out = layer.next_scale
            h = b.tensor(
                f"layer{i}/tanh/{model.activations}",
                (1, outputs),
                act,
                scale=[scale_out],
                zero_point=[zp_out],
            )
            b.op(ops.DEQUANTIZE, [y], [real])
            b.op(ops.TANH, [real], [squashed])
            b.op(ops.QUANTIZE, [squashed], [h])
    head = model.head
    outputs = model.layers[-1].weight.shape[0]
    if head.kind == "argmax":
        if model.bits == 16:  # TFLite Micro's ARG_MAX reads float32 and int8 only
            real = b.tensor("head/dequantized", (1, outputs), types.FLOAT32)
            b.op(ops.DEQUANTIZE, [h], [real])
            h = real
        axis = b.tensor("argmax/axis", (1,), types.INT32, np.array([1], np.int32))
        action = b.tensor(OUTPUT_NAME, (1,), types.INT32)
        options = s.ArgMaxOptionsT()
        options.outputType = types.INT32
        b.op(ops.ARG_MAX, [h, axis], [action], options, s.BuiltinOptions.ArgMaxOptions)
    else:
        y = b.tensor("head/dequantized", (1, outputs), types.FLOAT32)
        b.op(ops.DEQUANTIZE, [h], [y])
        # A last layer with tanh was squashed (and requantized) above.
        a_scale = b.tensor("head/scale", (outputs,), types.FLOAT32, head.scale.astype(np.float32))
        a_offset = b.tensor(
            "head/offset", (outputs,), types.FLOAT32, head.offset.astype(np.float32)
        )
        high = b.tensor("head/high", (outputs,), types.FLOAT32, _finite(head.high))
        low = b.tensor("head/low", (outputs,), types.FLOAT32, _finite(head.low))
        scaled = b.tensor("head/scaled", (1, outputs), types.FLOAT32)
        shifted = b.tensor("head/shifted", (1, outputs), types.FLOAT32)
        capped = b.tensor("head/capped", (1, outputs), types.FLOAT32)
        action = b.tensor(OUTPUT_NAME, (1, outputs), types.FLOAT32)
        b.op(ops.MUL, [y, a_scale], [scaled], s.MulOptionsT(), s.BuiltinOptions.MulOptions)
        b.op(ops.ADD, [scaled, a_offset], [shifted], s.AddOptionsT(), s.BuiltinOptions.AddOptions)
        b.op(ops.MINIMUM, [shifted, high], [capped])
        b.op(ops.MAXIMUM, [capped, low], [action])
    return b.finish([x], [action], description)


def _finite(bound: np.ndarray) -> np.ndarray:
    """Bounds as float32, infinities as float32's extremes (clipping nothing)."""
    big = np.finfo(np.float32).max
    return np.clip(np.asarray(bound, np.float64), -big, big).astype(np.float32)


def ops_of(model: bytes) -> list[str]:
    """The builtin operator names a model uses, in the op resolver's order (first use)."""
    s = _schema()
    names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
    root = s.Model.GetRootAs(model, 0)
    return [
        names.get(
            max(root.OperatorCodes(i).BuiltinCode(), root.OperatorCodes(i).DeprecatedBuiltinCode()),
            "?",
        )
        for i in range(root.OperatorCodesLength())
    ]
