"""Tensor specs (needs TensorFlow): TF's own TensorSpec and BoundedTensorSpec.

``BoundedTensorSpec`` is TensorFlow's, as TF-Agents used: it works in tf.function
input signatures and SavedModels. Conversions go both ways with the array specs, on
whole nests, and tensor specs share the array specs' JSON form.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.python.framework import tensor_spec as _tf_tensor_spec

from toolkit import nest
from toolkit.errors import SpecError
from toolkit.specs import array_spec
from toolkit.specs.array_spec import ArraySpec, BoundedArraySpec

__all__ = [
    "BoundedTensorSpec",
    "TensorSpec",
    "add_outer_dims",
    "discrete_range",
    "from_spec",
    "is_bounded",
    "is_discrete",
    "same_kind",
    "sample_spec_nest",
    "shape_text",
    "spec_nest_from_json",
    "spec_nest_to_json",
    "to_array_spec",
    "zero_spec_nest",
]

TensorSpec = tf.TensorSpec
BoundedTensorSpec = _tf_tensor_spec.BoundedTensorSpec


def _one_from_spec(spec: Any) -> tf.TensorSpec:
    if isinstance(spec, BoundedTensorSpec):
        return spec
    if isinstance(spec, BoundedArraySpec):
        return BoundedTensorSpec(
            spec.shape, tf.as_dtype(spec.dtype), spec.minimum, spec.maximum, spec.name
        )
    if isinstance(spec, (ArraySpec, tf.TensorSpec)):
        dtype = spec.dtype if isinstance(spec, tf.TensorSpec) else tf.as_dtype(spec.dtype)
        return tf.TensorSpec(spec.shape, dtype, spec.name)
    raise TypeError(f"expected an array or tensor spec, got {type(spec).__name__}")


def from_spec(spec: Any) -> Any:
    """Tensor specs for a nest of array specs (or tensor specs, returned as they are)."""
    return nest.map_structure(_one_from_spec, spec)


def _one_to_array_spec(spec: Any) -> ArraySpec:
    if isinstance(spec, ArraySpec):
        return spec
    dtype = spec.dtype.as_numpy_dtype
    shape = tuple(spec.shape.as_list())
    if isinstance(spec, BoundedTensorSpec):
        return BoundedArraySpec(shape, dtype, spec.minimum, spec.maximum, spec.name)
    return ArraySpec(shape, dtype, spec.name)


def to_array_spec(spec: Any) -> Any:
    """Array specs for a nest of tensor specs (fully defined shapes only)."""
    return nest.map_structure(_one_to_array_spec, spec)


def is_bounded(spec: Any) -> bool:
    return isinstance(spec, (BoundedTensorSpec, BoundedArraySpec))


def is_discrete(spec: Any) -> bool:
    dtype = tf.as_dtype(spec.dtype)
    return dtype.is_integer or dtype.is_bool


def add_outer_dims(spec: Any, outer_dims: Sequence[int | None]) -> Any:
    """The same nest of specs with ``outer_dims`` prepended (None for a dynamic batch)."""

    def add(s: Any) -> Any:
        shape = tf.TensorShape(list(outer_dims)).concatenate(s.shape)
        if isinstance(s, BoundedTensorSpec):
            return BoundedTensorSpec(shape, s.dtype, s.minimum, s.maximum, s.name)
        return tf.TensorSpec(shape, s.dtype, s.name)

    return nest.map_structure(add, spec)


def sample_spec_nest(
    spec: Any, seed: int | np.random.Generator | None = None, outer_dims: Sequence[int] = ()
) -> Any:
    """Random tensors for a nest of specs, drawn like array_spec.sample_spec_nest."""
    arrays = array_spec.sample_spec_nest(to_array_spec(spec), seed, outer_dims)
    return nest.map_structure(tf.convert_to_tensor, arrays)


def zero_spec_nest(spec: Any, outer_dims: Any = ()) -> Any:
    """Zero tensors for a nest of specs; ``outer_dims`` may be a tensor (dynamic batch)."""

    def zeros(s: Any) -> tf.Tensor:
        shape = (
            tf.concat([tf.cast(outer_dims, tf.int32), tf.constant(s.shape.as_list(), tf.int32)], 0)
            if tf.is_tensor(outer_dims)
            else list(outer_dims) + s.shape.as_list()
        )
        return tf.zeros(shape, s.dtype)

    return nest.map_structure(zeros, spec)


def spec_nest_to_json(spec: Any) -> Any:
    """The array specs' JSON form, for tensor specs."""
    return array_spec.spec_nest_to_json(to_array_spec(spec))


def spec_nest_from_json(data: Any) -> Any:
    """Tensor specs from the JSON form."""
    return from_spec(array_spec.spec_nest_from_json(data))


def _spec_label(spec: Any, path: str) -> str:
    return path or spec.name or "action"


def discrete_range(spec: Any, path: str = "") -> tuple[int, int]:
    """``(minimum, maximum)`` of a bounded integer spec whose elements share one range."""
    label = _spec_label(spec, path)
    if not is_bounded(spec) or not is_discrete(spec):
        raise SpecError(f"{label}: expected a bounded integer spec, got {spec}")
    low = np.unique(np.asarray(spec.minimum))
    high = np.unique(np.asarray(spec.maximum))
    if low.size != 1 or high.size != 1:
        raise SpecError(
            f"{label}: expected one range shared by every element, got minimum "
            f"{spec.minimum} and maximum {spec.maximum}"
        )
    return int(low[0]), int(high[0])


def same_kind(a: tf.DType, b: tf.DType) -> bool:
    """Whether two dtypes are both floating or both integer (a cast between them is safe)."""
    return (a.is_floating and b.is_floating) or (a.is_integer and b.is_integer)


def shape_text(shape: tf.TensorShape) -> str:
    """A shape for messages: ``(2, 3)``, or "of unknown rank"."""
    if shape.rank is None:
        return "of unknown rank"
    return str(tuple(shape.as_list()))
