"""Quantization-aware fine-tuning of a discrete policy's MLP (distillation, TF-free).

A Q-network's action hangs on Q-value gaps of a thousandth of their range; rounding its
weights (and its activations) moves outputs by about that much, so a quantized copy
flips the action on states near a decision. ``fine_tune`` trains a copy of the MLP (the
student) through the quantization it will get (``exporters.micro.int8``'s: the
per-feature preamble and input QUANTIZE, int8 weights with one symmetric scale per output
channel rounded to nearest, the hidden activations' int8/int16 grid, the centred argmax
head) so that its quantized outputs match the float policy (the teacher) on real states:

* loss: the centred Q-values' squared error, weighted up near a decision (as the head
  refit of ``exporters.quantize.gptq.refit``: ``1 / (gap + 0.01 spread)^2``), plus a
  hinge on the states whose quantized decision differs from the teacher's;
* rounding and clamping pass gradients straight through (the straight-through
  estimator), inside the clamp only;
* the states: the calibration states and jittered copies of them (5% of each feature's
  spread), all labelled by the teacher (it can label any state);
* Adam with a cosine-decayed step of ``LR`` times each tensor's mean magnitude (larger
  steps move the weights across many rounding steps and lose decisions), minibatches
  from one seeded generator: the result is deterministic given the seed;
* started from ``int8.quantize``'s model (``start``: its integer weights on its weight
  scales, which stay fixed), every ``check`` steps quantized exactly and measured on the
  calibration states; the best is returned (step 0 is that model itself).

Only the micro model is the student: the bundle's float policy is unchanged. The
student is returned as an ``Mlp`` on raw observations, with the activation ranges it was
trained with and its fixed weight scales (``Student.quantize`` quantizes it exactly as it
was trained).

The hidden layers must be ReLU or linear (a tanh hidden layer, or a continuous head, is
left to ``int8.quantize`` alone: ``fine_tune`` returns None).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from exporters.micro import int8
from exporters.micro.mlp import Dense, Mlp
from exporters.quantize import gptq as gptq_lib

__all__ = ["LR", "STEPS", "Student", "fine_tune"]

#: Adam's step, as a share of each tensor's mean magnitude, per activation width: int16
#: layers need only small moves (3e-4 already lost decisions), int8 ones larger (on trained
#: CartPole, 1e-3 held 93-96% of the held-out decisions where 1e-4 held 92-95%).
LR = {8: 1e-3, 16: 1e-4}
#: Minibatch steps per activation width (the best of every 50th is kept).
STEPS = {8: 800, 16: 400}
#: States per minibatch.
BATCH = 1024
#: Jittered copies of each calibration state, and their noise (share of each feature's std).
COPIES = 3
JITTER = 0.05
#: Weight of the hinge on flipped decisions, in shares of the Q-values' spread.
HINGE = 0.01

_F = np.float32


@dataclasses.dataclass(frozen=True)
class Student:
    """The fine-tuned MLP and the hidden activation ranges it was trained with.

    Attributes:
      mlp: the student, on raw observations (the teacher's layout and head).
      ranges: ``(low, high)`` of each hidden layer's output quantization.
      weight_scales: each layer's per-output-channel int8 weight scales (fixed while
        training: the weights move on a fixed grid).
      steps: the minibatch steps taken.
    """

    mlp: Mlp
    ranges: tuple[tuple[float, float], ...]
    weight_scales: tuple[np.ndarray, ...]
    steps: int

    def quantize(self, calibration: np.ndarray, bits: int, decisions: np.ndarray) -> int8.QModel:
        """The student's integer model, quantized exactly as it was trained."""
        model = int8.quantize(
            self.mlp,
            calibration,
            bits,
            ranges=self.ranges,
            weight_scales=self.weight_scales,
            decisions=decisions,
        )
        return dataclasses.replace(model, fine_tuned=self.steps)


def _rounded(weight: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Int8 per-output-channel rounding to nearest on fixed scales, dequantized."""
    return (np.clip(np.round(weight / scale), -127, 127) * scale).astype(_F)


class _Net:
    """The student's fake-quantized forward pass and its backward pass."""

    def __init__(self, weights, biases, scales, grids):
        self.weights = weights
        self.biases = biases
        self.scales = scales
        # Per hidden layer: (scale, zero point, low, high) of its output grid.
        self.grids = grids

    def forward(self, h: np.ndarray) -> tuple[np.ndarray, list]:
        cache = []
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            wq = _rounded(w, self.scales[i])
            y = h @ wq + b
            if i == last:
                cache.append((h, wq, None))
                return y, cache
            scale, zp, low, high = self.grids[i]
            q = np.round(y / scale) + zp
            inside = (q >= low) & (q <= high)
            cache.append((h, wq, inside))
            h = ((np.clip(q, low, high) - zp) * scale).astype(_F)
        raise AssertionError("unreachable")

    @staticmethod
    def backward(cache: list, grad: np.ndarray) -> tuple[list, list]:
        grad_w, grad_b = [], []
        for h, wq, inside in reversed(cache):
            if inside is not None:
                grad = grad * inside
            grad_w.append(h.T @ grad)
            grad_b.append(grad.sum(axis=0))
            grad = grad @ wq.T
        return grad_w[::-1], grad_b[::-1]


def fine_tune(
    mlp: Mlp,
    calibration: np.ndarray,
    bits: int = 8,
    *,
    seed: int = 0,
    steps: int | None = None,
    start: int8.QModel | None = None,
    check: int = 50,
) -> Student | None:
    """The student of ``mlp`` for ``bits``-bit activations (module doc), trained on flat
    real observations ``[N, inputs]``; None when the MLP is not a ReLU/linear Q-network."""
    if not mlp.discrete or any(d.activation == "tanh" for d in mlp.layers[:-1]):
        return None
    x = np.asarray(calibration, np.float64)
    if len(x) < 2:
        return None
    rng = np.random.default_rng(seed)
    steps = STEPS[bits] if steps is None else steps
    std = x.std(axis=0)
    pool = np.concatenate(
        [x, *(x + rng.normal(0.0, 1.0, x.shape) * std * JITTER for _ in range(COPIES))]
    )
    # The preamble and input QUANTIZE int8.quantize builds (from the calibration states).
    low, high = x.min(axis=0), x.max(axis=0)
    half = np.where((high - low) / 2.0 > 1e-12, (high - low) / 2.0, 1.0)
    mid = (high + low) / 2.0
    pre_scale = (1.0 / half).astype(np.float32)
    pre_offset = (-mid / half).astype(np.float32)
    top = (1 << (bits - 1)) - 1
    inputs = int8._quantize(pool.astype(np.float32) * pre_scale + pre_offset, 1.0 / top, 0, bits)
    inputs = (inputs / top).astype(_F)

    teacher = mlp.hidden(pool)
    target = teacher[-1] - teacher[-1].mean(axis=1, keepdims=True)
    action = np.argmax(target, axis=1)
    ordered = np.sort(target, axis=1)
    spread = float(np.quantile(target, 0.99) - np.quantile(target, 0.01)) or 1.0
    weight = 1.0 / (ordered[:, -1] - ordered[:, -2] + gptq_lib.GAP_EPS * spread) ** 2
    weight = (weight / weight.mean()).astype(_F)
    target = target.astype(_F)

    first = mlp.layers[0]
    weights = [half[:, None] * first.weight] + [d.weight for d in mlp.layers[1:]]
    biases = [first.bias + mid @ first.weight] + [d.bias for d in mlp.layers[1:]]
    weights[-1] = weights[-1] - weights[-1].mean(axis=1, keepdims=True)
    biases[-1] = biases[-1] - biases[-1].mean()
    if start is not None:
        scales = [layer.weight_scale.astype(np.float64) for layer in start.layers]
        weights = [
            layer.weight.T.astype(np.float64) * s
            for layer, s in zip(start.layers, scales, strict=True)
        ]
        biases = [
            layer.bias.astype(np.float64) * layer.input_scale * s
            for layer, s in zip(start.layers, scales, strict=True)
        ]
    else:
        scales = [gptq_lib.scales(w) for w in weights]
    weights = [w.astype(_F) for w in weights]
    biases = [b.astype(_F) for b in biases]
    scales = [np.asarray(s, _F) for s in scales]

    # Activation grids from the teacher's own range on the calibration states.
    ranges, grids = [], []
    lo_q, hi_q = int8._limits(bits)
    for i, (dense, values) in enumerate(zip(mlp.layers[:-1], teacher[:-1], strict=True)):
        seen = values[: len(x)]
        if start is not None:
            layer = start.layers[i]
            lo_layer = 0 if dense.activation == "relu" else lo_q - layer.output_zp
            span = (lo_layer * layer.output_scale, (hi_q - layer.output_zp) * layer.output_scale)
        elif dense.activation == "relu":
            span = (0.0, float(seen.max()))
        else:
            span = (float(seen.min()), float(seen.max()))
        scale, zp = int8._range_params(*span, bits)
        low_q = zp if dense.activation == "relu" else lo_q
        ranges.append(span)
        grids.append((_F(scale), zp, low_q, hi_q))
    net = _Net(weights, biases, scales, grids)

    params = [*weights, *biases]
    rates = [LR[bits] * float(np.abs(p).mean() + (1e-3 if p.ndim == 1 else 0.0)) for p in params]
    first_moment = [np.zeros_like(p) for p in params]
    second_moment = [np.zeros_like(p) for p in params]
    batch = min(BATCH, len(inputs))
    rows = np.arange(batch)
    decisions = np.argmax(teacher[-1][: len(x)], axis=1)
    best, best_agree = None, -1.0
    for step in range(steps + 1):
        if step % check == 0 or step == steps:
            student = Student(
                _raw(mlp, weights, biases, half, mid),
                tuple(ranges),
                tuple(s.astype(np.float64) for s in scales),
                step,
            )
            model = student.quantize(x, bits, decisions)
            got = int8.simulate(model, x.astype(np.float32), outputs=True)
            agree = float(np.mean(np.argmax(got, axis=1) == decisions))
            if agree > best_agree:
                best, best_agree = student, agree
            if step == steps:
                break
        index = rng.integers(0, len(inputs), batch)
        y, cache = net.forward(inputs[index])
        want = action[index]
        grad = 2.0 * weight[index, None] * (y - target[index]) / batch
        others = y.copy()
        others[rows, want] = -np.inf
        rival = np.argmax(others, axis=1)
        flipped = (y[rows, want] - y[rows, rival]) < 0
        hinge = np.zeros_like(y)
        hinge[rows, want] -= flipped
        hinge[rows, rival] += flipped
        grad = (grad + HINGE * spread * hinge / batch).astype(_F)
        grad_w, grad_b = net.backward(cache, grad)
        decay = 0.5 * (1.0 + np.cos(np.pi * step / steps))
        for j, (p, g) in enumerate(zip(params, [*grad_w, *grad_b], strict=True)):
            first_moment[j] = 0.9 * first_moment[j] + 0.1 * g
            second_moment[j] = 0.999 * second_moment[j] + 0.001 * g * g
            m_hat = first_moment[j] / (1.0 - 0.9 ** (step + 1))
            v_hat = second_moment[j] / (1.0 - 0.999 ** (step + 1))
            p -= (rates[j] * decay * m_hat / (np.sqrt(v_hat) + 1e-12)).astype(_F)

    return best


def _raw(mlp: Mlp, weights: list, biases: list, half: np.ndarray, mid: np.ndarray) -> Mlp:
    """The student on raw observations: int8.quantize folds the preamble in again."""
    first = mlp.layers[0]
    raw_first = weights[0].astype(np.float64) / half[:, None]
    bias = biases[0].astype(np.float64) - mid @ raw_first
    layers = [Dense(first.name, raw_first, bias, first.activation)]
    for dense, w, b in zip(mlp.layers[1:], weights[1:], biases[1:], strict=True):
        w64, b64 = w.astype(np.float64), b.astype(np.float64)
        layers.append(Dense(dense.name, w64, b64, dense.activation))
    return dataclasses.replace(mlp, layers=tuple(layers))
