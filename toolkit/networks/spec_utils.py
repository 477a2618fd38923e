"""Checks and transforms of action specs shared by the networks."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from toolkit import nest
from toolkit.errors import SpecError
from toolkit.specs import tensor_spec

__all__ = [
    "discrete_range",
    "float_bounds",
    "scale_to_spec",
    "single_discrete_action",
    "spec_label",
]


def spec_label(spec: Any, path: str = "action_spec") -> str:
    """``action_spec 'name'`` or just the path, for error messages."""
    name = getattr(spec, "name", None)
    return f"{path} '{name}'" if name else path


def _shape_text(spec: Any) -> str:
    return str(tuple(tf.TensorShape(spec.shape).as_list()))


def discrete_range(spec: Any, who: str, path: str = "action_spec") -> tuple[int, int]:
    """``(minimum, maximum)`` of a bounded integer spec whose bounds are the same everywhere.

    Raises:
      SpecError: the spec is unbounded, not integer, or has per-element bounds.
    """
    spec = tensor_spec.from_spec(spec)
    label = spec_label(spec, path)
    if not isinstance(spec, tensor_spec.BoundedTensorSpec):
        raise SpecError(
            f"{who}: {label} must be a bounded integer spec (BoundedTensorSpec), "
            f"got {type(spec).__name__}"
        )
    if not spec.dtype.is_integer:
        raise SpecError(f"{who}: {label} must have an integer dtype, got {spec.dtype.name}")
    minimum, maximum = np.unique(spec.minimum), np.unique(spec.maximum)
    if minimum.size != 1 or maximum.size != 1:
        raise SpecError(
            f"{who}: {label} must have one minimum and one maximum for all elements, "
            f"got minimum {spec.minimum.tolist()} and maximum {spec.maximum.tolist()}"
        )
    low, high = int(minimum[0]), int(maximum[0])
    if high < low:
        raise SpecError(f"{who}: {label} has maximum {high} < minimum {low}")
    return low, high


def single_discrete_action(action_spec: Any, who: str) -> tuple[int, int, int]:
    """``(num_actions, minimum, maximum)`` of a single scalar-like integer action spec.

    The action range may start anywhere (e.g. -1..1); the shape must be () or (1,).

    Raises:
      SpecError: nested, float, unbounded or multi-element action specs.
    """
    if nest.is_nested(action_spec):
        raise SpecError(
            f"{who}: expected a single bounded integer action spec, got a nest "
            f"{nest.structure_repr(action_spec)}"
        )
    spec = tensor_spec.from_spec(action_spec)
    if tuple(spec.shape.as_list()) not in ((), (1,)):
        raise SpecError(
            f"{who}: {spec_label(spec)} must have shape () or (1,) (one discrete action), "
            f"got {_shape_text(spec)}"
        )
    low, high = discrete_range(spec, who)
    return high - low + 1, low, high


def float_bounds(spec: Any, who: str, path: str = "action_spec") -> tuple[np.ndarray, np.ndarray]:
    """Finite float32 ``(minimum, maximum)`` of a bounded float spec, broadcast to its shape."""
    spec = tensor_spec.from_spec(spec)
    label = spec_label(spec, path)
    if not isinstance(spec, tensor_spec.BoundedTensorSpec) or not spec.dtype.is_floating:
        raise SpecError(
            f"{who}: {label} must be a bounded float spec (BoundedTensorSpec), got "
            f"{type(spec).__name__} of dtype {spec.dtype.name}"
        )
    shape = tuple(spec.shape.as_list())
    low = np.broadcast_to(np.asarray(spec.minimum, np.float64), shape)
    high = np.broadcast_to(np.asarray(spec.maximum, np.float64), shape)
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
        raise SpecError(
            f"{who}: {label} must have finite bounds to scale into, got "
            f"minimum {spec.minimum.tolist()} and maximum {spec.maximum.tolist()}"
        )
    if np.any(high < low):
        raise SpecError(f"{who}: {label} has maximum < minimum")
    return low.astype(np.float32), high.astype(np.float32)


def scale_to_spec(tensor: tf.Tensor, low: np.ndarray, high: np.ndarray) -> tf.Tensor:
    """Maps values in [-1, 1] (e.g. tanh outputs) linearly onto [low, high]."""
    means = tf.constant((high + low) / 2.0, tf.float32)
    magnitudes = tf.constant((high - low) / 2.0, tf.float32)
    return means + magnitudes * tensor
