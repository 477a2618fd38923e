"""An ``Mlp`` computing in int8, calibrated on real states, and its exact integer arithmetic.

What TFLite Micro's int8 kernels compute (and the C export's int8 form, which is the same
arithmetic written out): a float preamble normalises each observation feature
(``x * scale + offset``, so features that differ by orders of magnitude each use the
int8 range), QUANTIZE, then per dense layer

    acc = sum_k (x_q[k] - zp_in) * w_q[c, k] + bias_q[c]          (int32)
    y_q = clamp(zp_out + MultiplyByQuantizedMultiplier(acc, M[c]))  (int8)

with int8 weights of one symmetric scale per output channel, int32 biases on the scale
``s_in * s_w[c]``, ReLU fused into the clamp and tanh applied between a DEQUANTIZE and a
QUANTIZE. The head is an ARG_MAX over the last layer's int8 outputs (discrete) or a
DEQUANTIZE, tanh squashing, the affine map to the action spec and the clip (continuous).

Rounding int8 weights to nearest flips a small policy's decisions often (a Q-network's
action hangs on Q-value gaps of a few thousandths of their range), so the quantizer
(``quantize``) works on real calibration states:

1. each layer's weights are rounded by GPTQ (``exporters.quantize.gptq``) on the inputs
   the already-quantized layers give it, and its bias takes the mean output error;
2. a discrete head's last layer is centred (each output minus the outputs' mean: the
   argmax is unchanged and the outputs' range shrinks to the gaps between them), refitted
   to the float outputs on the quantized features with states near a decision weighted
   up, and its output scale is chosen among candidates by agreement on the calibration
   states (saturating outputs keep their order: for two actions the argmax is the sign
   of the int32 accumulator);
3. activation ranges come from the quantized pipeline's own values.

``simulate`` replays the kernels' integer arithmetic in numpy (TFLite's
``MultiplyByQuantizedMultiplier`` with its double rounding), which the quantizer uses to
choose; the exported model is then measured through TFLite Micro's own interpreter.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from exporters.micro.mlp import Head, Mlp
from exporters.quantize import gptq as gptq_lib
from toolkit.errors import ExportError

__all__ = [
    "QLayer",
    "QModel",
    "multiply_by_quantized_multiplier",
    "quantize",
    "quantize_multiplier",
    "simulate",
]

#: Output scales tried for a discrete head, as shares of the largest centred output.
_HEAD_FACTORS = tuple(2.0**-k for k in range(0, 15))


@dataclasses.dataclass(frozen=True)
class QLayer:
    """One int8 dense layer.

    Attributes:
      name: the float layer's graph node.
      weight: int8 ``[outputs, inputs]`` (TFLite's FULLY_CONNECTED layout).
      weight_scale: float ``[outputs]``: one symmetric scale per output channel.
      bias: int32 ``[outputs]`` on the scale ``input_scale * weight_scale``.
      input_scale, input_zp: the int8 input's quantization.
      output_scale, output_zp: the int8 output's (before a tanh).
      activation: ``relu`` (fused), ``tanh`` (dequantize, tanh, quantize at 1/128) or
        ``linear``.
      multiplier, shift: per channel, ``input_scale * weight_scale / output_scale`` as
        TFLite's fixed-point multiplier and shift.
    """

    name: str
    weight: np.ndarray
    weight_scale: np.ndarray
    bias: np.ndarray
    input_scale: float
    input_zp: int
    output_scale: float
    output_zp: int
    activation: str
    multiplier: np.ndarray
    shift: np.ndarray
    bits: int = 8

    @property
    def activation_range(self) -> tuple[int, int]:
        """The clamp of the output: ReLU's starts at the zero point."""
        low, high = _limits(self.bits)
        return (self.output_zp if self.activation == "relu" else low), high

    @property
    def next_scale(self) -> tuple[float, int]:
        """The quantization of what the next layer reads (after a tanh: [-1, 1])."""
        if self.activation == "tanh":
            return 1.0 / (1 << (self.bits - 1)), 0
        return self.output_scale, self.output_zp


@dataclasses.dataclass(frozen=True)
class QModel:
    """The int8 model: the preamble, the layers and the head.

    Attributes:
      preamble_scale, preamble_offset: float32 per observation feature.
      input_scale, input_zp: the QUANTIZE after the preamble.
      layers: the int8 dense layers.
      head: the float head (``Mlp.head``): argmax, or the continuous affine map and clip.
      observation, sizes: as the ``Mlp``'s.
      bits: the activations' bits (8, or 16: TFLite's 16x8 kernels).
      fine_tuned: the quantization-aware fine-tuning steps of the student these layers
        are (``exporters.micro.distill``), or 0: the policy's own weights, quantized.
    """

    preamble_scale: np.ndarray
    preamble_offset: np.ndarray
    input_scale: float
    input_zp: int
    layers: tuple[QLayer, ...]
    head: Head
    observation: tuple[str, ...]
    sizes: tuple[int, ...]
    bits: int = 8
    fine_tuned: int = 0

    @property
    def activations(self) -> str:
        """``int8``, or ``int16`` (TFLite's 16x8: int16 activations, int8 weights)."""
        return f"int{self.bits}"

    @property
    def inputs(self) -> int:
        return int(sum(self.sizes))

    @property
    def discrete(self) -> bool:
        return self.head.kind == "argmax"

    def to_json(self) -> dict:
        """The quantization parameters a device needs beside the model (the manifest's)."""
        return {
            "weights": (
                f"a student fine-tuned through its quantization ({self.fine_tuned} steps)"
                if self.fine_tuned
                else "the policy's own, GPTQ-rounded"
            ),
            "preamble_scale": [float(v) for v in self.preamble_scale],
            "preamble_offset": [float(v) for v in self.preamble_offset],
            "input": {"scale": float(self.input_scale), "zero_point": int(self.input_zp)},
            "layers": [
                {
                    "name": layer.name,
                    "activation": layer.activation,
                    "weights": "int8 per channel",
                    "output": {
                        "scale": float(layer.output_scale),
                        "zero_point": int(layer.output_zp),
                    },
                }
                for layer in self.layers
            ],
        }


# --- TFLite's fixed-point arithmetic --------------------------------------------------------


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite's ``QuantizeMultiplier``: ``real = multiplier * 2^(shift - 31)``."""
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    fixed = round(q * (1 << 31))
    if fixed == 1 << 31:
        fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return int(fixed), int(shift)


def _trunc_div(value: np.ndarray, divisor: int) -> np.ndarray:
    """C's integer division (towards zero) of int64 values."""
    return np.where(value >= 0, value // divisor, -((-value) // divisor))


def multiply_by_quantized_multiplier(
    acc: np.ndarray, multiplier: np.ndarray, shift: np.ndarray
) -> np.ndarray:
    """TFLite's ``MultiplyByQuantizedMultiplier`` (double rounding) on int32 values, per
    channel (``multiplier`` and ``shift`` broadcast over the last axis)."""
    acc = np.asarray(acc, np.int64)
    multiplier = np.asarray(multiplier, np.int64)
    shift = np.asarray(shift, np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    x = np.clip(acc << left, -(1 << 31), (1 << 31) - 1)
    # SaturatingRoundingDoublingHighMul(x, multiplier)
    ab = x * multiplier
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    high = _trunc_div(ab + nudge, 1 << 31)
    overflow = (x == -(1 << 31)) & (multiplier == -(1 << 31))
    high = np.where(overflow, (1 << 31) - 1, high)
    # RoundingDivideByPOT(high, right)
    mask = (np.int64(1) << right) - 1
    remainder = high & mask
    threshold = (mask >> 1) + (high < 0)
    return (high >> right) + (remainder > threshold)


def _quantize(x: np.ndarray, scale: float, zp: int, bits: int = 8) -> np.ndarray:
    """Float -> int8 (int16) as QUANTIZE does: round half away from zero, then clamp."""
    q = np.round(np.asarray(x, np.float64) / scale)  # ties: numpy rounds to even
    exact = np.asarray(x, np.float64) / scale
    half = np.abs(exact - np.trunc(exact)) == 0.5
    q = np.where(half, np.trunc(exact) + np.sign(exact), q)
    low, high = _limits(bits)
    return np.clip(q + zp, low, high).astype(np.int64)


def _limits(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def multiply_by_quantized_multiplier_64(
    acc: np.ndarray, multiplier: np.ndarray, shift: np.ndarray
) -> np.ndarray:
    """TFLite's int64 ``MultiplyByQuantizedMultiplier`` (16x8 kernels): the multiplier
    reduced to 16 bits, one rounding shift."""
    acc = np.asarray(acc, np.int64)
    multiplier = np.asarray(multiplier, np.int64)
    reduced = np.where(multiplier < 0x7FFF0000, (multiplier + (1 << 15)) >> 16, 0x7FFF)
    total = 15 - np.asarray(shift, np.int64)
    return (acc * reduced + (np.int64(1) << (total - 1))) >> total


def _dense(layer: QLayer, x_q: np.ndarray) -> np.ndarray:
    """One layer's int8 outputs (before a tanh) for int8 inputs ``[N, in]`` (int64)."""
    acc = (x_q - layer.input_zp) @ layer.weight.astype(np.int64).T + layer.bias.astype(np.int64)
    if layer.bits == 16:
        y = multiply_by_quantized_multiplier_64(acc, layer.multiplier, layer.shift)
    else:
        y = multiply_by_quantized_multiplier(acc, layer.multiplier, layer.shift)
    y = y + layer.output_zp
    low, high = layer.activation_range
    return np.clip(y, low, high)


def _tanh_q(layer: QLayer, y_q: np.ndarray) -> np.ndarray:
    real = (y_q - layer.output_zp) * np.float32(layer.output_scale)
    scale, zp = layer.next_scale
    return _quantize(np.tanh(real.astype(np.float32)), scale, zp, layer.bits)


def simulate(model: QModel, x: np.ndarray, *, outputs: bool = False) -> np.ndarray:
    """The int8 model's actions ``[N, *shape]`` for flat observations ``[N, inputs]``
    (``outputs``: the last layer's int8 outputs instead)."""
    x = np.asarray(x, np.float32)
    pre = x * model.preamble_scale.astype(np.float32) + model.preamble_offset.astype(np.float32)
    h = _quantize(pre, model.input_scale, model.input_zp, model.bits)
    for layer in model.layers:
        h = _dense(layer, h)
        if layer.activation == "tanh":
            h = _tanh_q(layer, h)
    if outputs:
        return h
    last = model.layers[-1]
    if model.head.kind == "argmax":
        index = np.argmax(h, axis=1) + model.head.shift
        return index.astype(model.head.dtype).reshape((len(x), *model.head.shape))
    scale, zp = last.next_scale
    y = ((h - zp) * np.float32(scale)).astype(np.float32)
    head = model.head
    value = head.offset.astype(np.float32) + head.scale.astype(np.float32) * y
    value = np.minimum(value, head.high.astype(np.float32))
    value = np.maximum(value, head.low.astype(np.float32))
    return value.astype(head.dtype).reshape((len(x), *head.shape))


# --- the quantizer --------------------------------------------------------------------------


def _range_params(low: float, high: float, bits: int) -> tuple[float, int]:
    """A scale and zero point covering ``[low, high]`` (and 0): asymmetric for int8,
    symmetric (zero point 0, as TFLite's 16x8 kernels need) for int16."""
    low, high = min(low, 0.0), max(high, 0.0)
    if high - low < 1e-12:
        high = low + 1e-6
    if bits == 16:
        return float(max(-low, high) / 32767.0), 0
    scale = (high - low) / 255.0
    zp = int(np.clip(round(-128 - low / scale), -128, 127))
    return float(scale), zp


def _layer(
    name: str,
    q: np.ndarray,
    weight_scale: np.ndarray,
    bias: np.ndarray,
    input_q: tuple[float, int],
    output_q: tuple[float, int],
    activation: str,
    bits: int,
) -> QLayer:
    s_in, zp_in = input_q
    s_out, zp_out = output_q
    bias_q = np.round(bias / (np.float32(s_in) * weight_scale.astype(np.float32)))
    limit = 2**31 - 1 if bits == 8 else 2**47
    if np.any(np.abs(bias_q) >= limit):
        raise ExportError(f"micro export: {name}: a bias overflows its integer type")
    pairs = [
        quantize_multiplier(float(np.float32(s_in)) * float(s) / float(np.float32(s_out)))
        for s in weight_scale.astype(np.float32)
    ]
    return QLayer(
        name=name,
        weight=q.T.astype(np.int8).copy(),
        weight_scale=weight_scale.astype(np.float32),
        bias=bias_q.astype(np.int32 if bits == 8 else np.int64),
        input_scale=float(np.float32(s_in)),
        input_zp=int(zp_in),
        output_scale=float(np.float32(s_out)),
        output_zp=int(zp_out),
        activation=activation,
        multiplier=np.array([m for m, _ in pairs], np.int64),
        shift=np.array([s for _, s in pairs], np.int64),
        bits=bits,
    )


def quantize(
    mlp: Mlp,
    calibration: np.ndarray,
    bits: int = 8,
    *,
    ranges: tuple[tuple[float, float], ...] | None = None,
    weight_scales: tuple[np.ndarray, ...] | None = None,
    decisions: np.ndarray | None = None,
) -> QModel:
    """The int8 form of ``mlp`` (``bits=16``: int16 activations, TFLite's 16x8),
    calibrated on flat real observations ``[N, inputs]``.

    The hidden layers' output ``ranges`` and each layer's per-channel ``weight_scales``
    quantize a student of ``exporters.micro.distill``
    exactly as it was trained: weights rounded to nearest on those scales, no bias
    correction, head centring or refit (they would pull it back towards float outputs).
    ``decisions``: the argmax indices the head's output scale is chosen to agree with
    (default: ``mlp``'s own on the calibration states).

    Raises:
      ExportError: no calibration states, or values the integer types cannot hold.
    """
    x = np.asarray(calibration, np.float64)
    if len(x) < 1:
        raise ExportError("micro export: expected calibration states, got none")
    low, high = x.min(axis=0), x.max(axis=0)
    half = (high - low) / 2.0
    half = np.where(half > 1e-12, half, 1.0)
    mid = (high + low) / 2.0
    pre_scale = (1.0 / half).astype(np.float32)
    pre_offset = (-mid / half).astype(np.float32)
    top = _limits(bits)[1]
    input_q = (float(np.float32(1.0 / top)), 0)
    pre = x.astype(np.float32) * pre_scale + pre_offset
    h_q = _quantize(pre, *input_q, bits)
    h_real = (h_q - input_q[1]) * input_q[0]
    float_in = x
    layers: list[QLayer] = []
    count = len(mlp.layers)
    for i, dense in enumerate(mlp.layers):
        weight, bias = dense.weight, dense.bias
        if i == 0:
            # The first layer reads normalised features: its weights take the
            # preamble's inverse.
            bias = bias + mid @ weight
            weight = half[:, None] * weight
        last = i == count - 1
        y_float = float_in @ dense.weight + dense.bias  # the float pre-activations
        nearest = weight_scales is not None
        if last and mlp.discrete:
            fixed = weight_scales[i] if weight_scales is not None else None
            layer = _discrete_head(
                dense.name, weight, bias, h_real, y_float, h_q, input_q, bits, fixed, decisions
            )
        else:
            scale = weight_scales[i] if weight_scales is not None else gptq_lib.scales(weight)
            if nearest:
                q = np.clip(np.round(weight / scale), -127, 127).astype(np.int8)
            else:
                q = gptq_lib.gptq(weight, h_real)
            dequantized = q.astype(np.float64) * scale
            if not nearest:
                bias = bias + (y_float - h_real @ dequantized - bias).mean(axis=0)
            y_q_float = h_real @ dequantized + bias
            if ranges is not None and not last:
                output_q = _range_params(*ranges[i], bits)
            elif dense.activation == "relu":
                output_q = _range_params(0.0, float(np.max(y_q_float)), bits)
            else:
                output_q = _range_params(float(np.min(y_q_float)), float(np.max(y_q_float)), bits)
            layer = _layer(dense.name, q, scale, bias, input_q, output_q, dense.activation, bits)
        layers.append(layer)
        h_q = _dense(layer, h_q)
        if layer.activation == "tanh":
            h_q = _tanh_q(layer, h_q)
        input_q = layer.next_scale
        h_real = (h_q - input_q[1]) * input_q[0]
        float_in = _activate(y_float, dense.activation)
    return QModel(
        preamble_scale=pre_scale,
        preamble_offset=pre_offset,
        input_scale=float(np.float32(1.0 / top)),
        input_zp=0,
        layers=tuple(layers),
        head=mlp.head,
        observation=mlp.observation,
        sizes=mlp.sizes,
        bits=bits,
    )


def _activate(x: np.ndarray, activation: str) -> np.ndarray:
    if activation == "relu":
        return np.maximum(x, 0.0)
    if activation == "tanh":
        return np.tanh(x)
    return x


def _discrete_head(
    name: str,
    weight: np.ndarray,
    bias: np.ndarray,
    h_real: np.ndarray,
    y_float: np.ndarray,
    h_q: np.ndarray,
    input_q: tuple[float, int],
    bits: int,
    fixed_scale: np.ndarray | None = None,
    decisions: np.ndarray | None = None,
) -> QLayer:
    """The argmax layer: centred, refitted on the quantized features, GPTQ-rounded, its
    output scale chosen by agreement on the calibration states (``fixed_scale``: a
    distilled student's, rounded to nearest on its weight scales only)."""
    want = np.argmax(y_float, axis=1) if decisions is None else np.asarray(decisions).reshape(-1)
    centred_w = weight - weight.mean(axis=1, keepdims=True)
    centred_b = bias - bias.mean()
    target = y_float - y_float.mean(axis=1, keepdims=True)
    scale = gptq_lib.scales(centred_w)
    if fixed_scale is not None:
        centred_w, centred_b, scale = weight, bias, fixed_scale
        q = np.clip(np.round(centred_w / scale), -127, 127).astype(np.int8)
    else:
        start = np.vstack([centred_w, centred_b[None]])
        solution = gptq_lib.refit(h_real, target, start, discrete=True)
        if solution is not None:
            centred_w, centred_b = solution[:-1], solution[-1]
        q = gptq_lib.gptq(centred_w, h_real)
        scale = gptq_lib.scales(centred_w)
        dequantized = q.astype(np.float64) * scale
        centred_b = centred_b + (target - h_real @ dequantized - centred_b).mean(axis=0)
    dequantized = q.astype(np.float64) * scale
    y = h_real @ dequantized + centred_b
    top = float(np.max(np.abs(y))) or 1.0
    limit = _limits(bits)[1]
    best, best_agree = None, -1.0
    for factor in _HEAD_FACTORS:
        s_out = top * factor / limit
        layer = _layer(name, q, scale, centred_b, input_q, (s_out, 0), "linear", bits)
        got = np.argmax(_dense(layer, h_q), axis=1)
        agree = float(np.mean(got == want))
        if agree > best_agree + 1e-12:
            best, best_agree = layer, agree
    return best
