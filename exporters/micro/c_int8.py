"""Int8 weights for the C export, chosen on real calibration states (``c_weights=int8``).

The C keeps float activations and stores each chosen layer's weights as int8 with one
float scale per output channel, dequantized in the C loop (``acc = b + s * sum(w_q * x)``).
Plain per-channel rounding to nearest keeps the trained demo policy's decision on only
about half of its held-out states (its Q-value gaps are a few thousandths of their
range), so the weights are chosen as the micro path chooses them (``exporters.micro.int8``
and ``exporters.quantize.gptq``), on calibration states the measurement never sees:

1. each quantized layer is rounded by GPTQ on the inputs the already-quantized layers
   give it, and its bias takes the mean output error on the calibration states;
2. the last layer is first refitted by least squares to the float policy's outputs from
   the quantized features (states near a decision weighted up);
3. ``all`` quantizes every layer; ``first_float`` / ``last_float`` keep the first / last
   layer float, ``hidden`` both (the observation's and the action's width: a small share
   of the weights). ``choose`` tries them from the fewest weight bytes up and takes the
   first that keeps the float decisions on ``AUTO_AGREEMENT`` of the calibration states
   (else the one agreeing most). On the trained demo policy (4-100-50-2) ``all`` keeps
   about 99.3%, ``last_float`` 99.95%.

The result is a float ``Mlp`` whose int8 layers hold exactly ``q * scale`` (what the C
computes, up to float32 rounding), and the per-layer scales (None for a float layer).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from exporters.micro.mlp import Mlp, activate
from exporters.quantize import gptq as gptq_lib

__all__ = [
    "AUTO_AGREEMENT",
    "MODES",
    "QuantizedMlp",
    "agreement",
    "choose",
    "quantize",
    "weight_bytes",
]

#: Which layers get int8 weights.
MODES = ("all", "first_float", "last_float", "hidden")
#: ``choose`` keeps every layer int8 when it agrees on this share of calibration states.
AUTO_AGREEMENT = 0.995
#: A continuous action agrees when within this share of its range (or of 1 when the
#: range is unbounded) of the float action.
ACTION_TOLERANCE = 0.01


@dataclasses.dataclass(frozen=True)
class QuantizedMlp:
    """An ``Mlp`` with int8 layers (``mlp``: their weights are ``int8 * scale``), each
    layer's int8 values ``[inputs, outputs]`` and scales ``[outputs]`` (None: float)."""

    mlp: Mlp
    values: tuple[np.ndarray | None, ...]
    scales: tuple[np.ndarray | None, ...]
    mode: str


def _which(n: int, mode: str) -> list[bool]:
    """Which of ``n`` layers get int8 under ``mode`` (``MODES``)."""
    first = mode in ("all", "last_float")
    last = mode in ("all", "first_float")
    return [(i > 0 or first) and (i < n - 1 or last) for i in range(n)]


def weight_bytes(mlp: Mlp, mode: str) -> int:
    """The C's weight bytes under ``mode``: int8 weights and float32 scales and biases, or
    float32 weights and biases."""
    return sum(
        layer.inputs * layer.outputs + 8 * layer.outputs
        if q
        else 4 * (layer.inputs * layer.outputs + layer.outputs)
        for layer, q in zip(mlp.layers, _which(len(mlp.layers), mode), strict=True)
    )


def quantize(mlp: Mlp, calibration: np.ndarray, mode: str) -> QuantizedMlp:
    """``mlp`` with int8 weights on the layers ``mode`` names (module doc)."""
    chosen = _which(len(mlp.layers), mode)
    x_float = np.asarray(calibration, np.float64)
    x_q = x_float
    layers, values, scales = [], [], []
    for i, (layer, quantized) in enumerate(zip(mlp.layers, chosen, strict=True)):
        weight, bias = layer.weight, layer.bias
        pre_float = x_float @ weight + bias
        if i == len(mlp.layers) - 1:
            start = np.vstack([weight, bias[None, :]])
            solution = gptq_lib.refit(x_q, pre_float, start, discrete=mlp.discrete)
            if solution is not None:
                weight, bias = solution[:-1], solution[-1]
        if quantized:
            q = gptq_lib.gptq(weight, x_q)
            scale = gptq_lib.scales(weight)
            dequantized = q.astype(np.float64) * scale
            bias = bias + np.mean(x_q @ weight - x_q @ dequantized, axis=0)
            weight = dequantized
            values.append(q)
            scales.append(scale)
        else:
            values.append(None)
            scales.append(None)
        layers.append(dataclasses.replace(layer, weight=weight, bias=bias))
        x_q = activate(x_q @ weight + bias, layer.activation)
        x_float = activate(pre_float, layer.activation)
    return QuantizedMlp(
        dataclasses.replace(mlp, layers=tuple(layers)), tuple(values), tuple(scales), mode
    )


def agreement(mlp: Mlp, want: np.ndarray, got: np.ndarray) -> float:
    """The share of states whose actions agree: equal (discrete) or within
    ``ACTION_TOLERANCE`` of the action's range (continuous)."""
    if mlp.discrete:
        return float(np.mean(want.reshape(-1) == got.reshape(-1)))
    span = mlp.head.high - mlp.head.low
    span = np.where(np.isfinite(span), span, 1.0)
    error = np.abs(want.reshape(len(want), -1) - got.reshape(len(got), -1))
    return float(np.mean(np.all(error <= ACTION_TOLERANCE * span, axis=1)))


def choose(mlp: Mlp, calibration: np.ndarray) -> tuple[QuantizedMlp, float]:
    """The mode of fewest weight bytes that keeps the decisions on ``AUTO_AGREEMENT`` of
    the calibration states (else the one agreeing most), with its agreement there."""
    want = mlp.act(calibration)
    best = None
    modes = [m for m in MODES if any(_which(len(mlp.layers), m))]
    for mode in sorted(modes, key=lambda m: weight_bytes(mlp, m)):
        candidate = quantize(mlp, calibration, mode)
        share = agreement(mlp, want, candidate.mlp.act(calibration))
        if share >= AUTO_AGREEMENT:
            return candidate, share
        if best is None or share > best[1]:
            best = (candidate, share)
    return best
