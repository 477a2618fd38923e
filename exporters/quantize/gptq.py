"""Int8 weights that keep a small policy's decisions: GPTQ rounding, calibrated on real states.

A Q-network's action is decided by a gap between Q-values that is often a few
thousandths of their range. Rounding each int8 weight to nearest adds output errors
of about that size, and flips the action on those states (50-94% agreement on
trained demo policies). This method keeps the decisions by choosing the int8 weights *for the
states the policy meets* (on calibration states that the
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

The result computes in float and its file holds int8: in ONNX (``gptq_onnx``)
``Cast(int8 weights) * scale`` feeds the MatMul, which onnxruntime folds once when the
session is made; in LiteRT (``gptq_litert``, on FULLY_CONNECTED layers) per-channel
int8 weights feed a DEQUANTIZE op, as LiteRT's own float16 models do with float16.
This module is the format-free part: the rounding, the refit and the layer choice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["DAMP", "GAP_EPS", "RIDGE", "choose", "flat", "gptq", "reaches", "refit", "scales"]

#: GPTQ's damping: this share of the mean Hessian diagonal is added to it.
DAMP = 0.01
#: Decision weighting of the last-layer refit: 1 / (gap + EPS * spread)^2.
GAP_EPS = 1e-2
#: Pull of the last-layer refit towards the layer's own weights, as a share of the
#: normal matrix's mean diagonal (1e-6 towards zero cost the demo policy 0.3-1% of
#: its agreement; 1e-10 towards its weights recovers them on float features).
RIDGE = 1e-10


def reaches(start: Any, step: Callable[[Any], list], hit: Callable[[Any], bool]) -> bool:
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


def choose(names: list[str], first: set[str], last: set[str]) -> list[str]:
    """The layers to quantize: the hidden ones, or else all but the last."""
    hidden = [n for n in names if n not in last | first]
    return hidden or [n for n in names if n not in last]


def flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, x.shape[-1])


def scales(weight: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(weight).max(axis=0), 1e-30) / 127.0


def gptq(weight: np.ndarray, inputs: np.ndarray, damp: float = DAMP) -> np.ndarray:
    """Int8 values (as int8) of ``weight`` [in, out] for layer inputs [N, in], per column.

    Rounds one input row at a time in order of decreasing input energy, pushing each
    rounding error into the rows not yet rounded so the layer's outputs on ``inputs``
    move least (GPTQ, with the Cholesky form of the inverse Hessian).
    """
    scale = scales(weight)
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


def refit(
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
