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
from toolkit.errors import SpecError, UnsupportedError
from toolkit.specs import array_spec
from toolkit.specs.array_spec import ArraySpec, BoundedArraySpec

__all__ = [
    "BoundedTensorSpec",
    "TensorSpec",
    "add_outer_dim",
    "add_outer_dims",
    "add_outer_dims_nest",
    "discrete_range",
    "from_spec",
    "is_bounded",
    "is_continuous",
    "is_discrete",
    "is_integer_or_bool",
    "remove_outer_dims_nest",
    "same_kind",
    "sample_bounded_spec",
    "sample_spec_nest",
    "shape_text",
    "spec_nest_from_json",
    "spec_nest_to_json",
    "to_array_spec",
    "to_nest_array_spec",
    "with_dtype",
    "zero_spec_nest",
]

TensorSpec = tf.TensorSpec
BoundedTensorSpec = _tf_tensor_spec.BoundedTensorSpec


def _has_bounds(spec: Any) -> bool:
    return hasattr(spec, "minimum") and hasattr(spec, "maximum")


def _one_from_spec(spec: Any) -> tf.TypeSpec:
    if isinstance(spec, tf.TypeSpec):  # tensor specs, and sparse or ragged ones, as they are
        return spec
    if not (hasattr(spec, "shape") and hasattr(spec, "dtype")):
        raise SpecError(
            f"expected an array or tensor spec (shape and dtype), got {type(spec).__name__}: "
            f"{spec!r:.80}"
        )
    array = array_spec.as_array_spec(spec)  # checks the dtype (no strings) and the bounds
    dtype = tf.as_dtype(array.dtype)
    if isinstance(array, BoundedArraySpec):
        return BoundedTensorSpec(array.shape, dtype, array.minimum, array.maximum, array.name)
    return tf.TensorSpec(array.shape, dtype, array.name)


def from_spec(spec: Any) -> Any:
    """Tensor specs for a nest of array specs (tensor specs are returned as they are)."""
    return nest.map_structure(_one_from_spec, spec)


def _one_to_array_spec(spec: Any) -> ArraySpec:
    if isinstance(spec, ArraySpec):
        return spec
    dtype = spec.dtype.as_numpy_dtype
    shape = tuple(spec.shape.as_list())
    if _has_bounds(spec):
        return BoundedArraySpec(shape, dtype, spec.minimum, spec.maximum, spec.name)
    return ArraySpec(shape, dtype, spec.name)


def to_array_spec(spec: Any) -> Any:
    """Array specs for a nest of tensor specs (fully defined shapes only)."""
    return nest.map_structure(_one_to_array_spec, spec)


def to_nest_array_spec(spec: Any) -> Any:
    """TF-Agents' older name of ``to_array_spec``."""
    return to_array_spec(spec)


def is_bounded(spec: Any) -> bool:
    """True for bounded specs (anything with a shape, a dtype, a minimum and a maximum)."""
    if isinstance(spec, (BoundedTensorSpec, BoundedArraySpec)):
        return True
    return _has_bounds(spec) and hasattr(spec, "dtype") and hasattr(spec, "shape")


def is_discrete(spec: Any) -> bool:
    """True for integer specs (bool specs are neither discrete nor continuous, as in
    TF-Agents)."""
    return tf.as_dtype(spec.dtype).is_integer


def is_continuous(spec: Any) -> bool:
    """True for floating-point specs."""
    return tf.as_dtype(spec.dtype).is_floating


def is_integer_or_bool(spec: Any) -> bool:
    """True for integer and bool specs: the specs a policy can draw from a finite set."""
    dtype = tf.as_dtype(spec.dtype)
    return dtype.is_integer or dtype.is_bool


def _with_shape(spec: Any, shape: Any) -> Any:
    name = getattr(spec, "name", None)
    if isinstance(spec, tf.SparseTensorSpec):
        return tf.SparseTensorSpec(shape, spec.dtype)
    if _has_bounds(spec):
        return BoundedTensorSpec(shape, spec.dtype, spec.minimum, spec.maximum, name)
    return tf.TensorSpec(shape, spec.dtype, name)


def add_outer_dims_nest(specs: Any, outer_dims: Sequence[int | None]) -> Any:
    """The same nest of tensor specs with ``outer_dims`` (a tuple or list) prepended."""
    if not isinstance(outer_dims, (tuple, list)):
        raise SpecError(
            f"outer_dims: expected a tuple or list of dimensions, got {type(outer_dims).__name__}"
        )
    outer = tf.TensorShape(list(outer_dims))
    return nest.map_structure(lambda s: _with_shape(s, outer.concatenate(_tensor_shape(s))), specs)


def add_outer_dims(spec: Any, outer_dims: Sequence[int | None]) -> Any:
    """Like ``add_outer_dims_nest`` (None for a dynamic batch)."""
    return add_outer_dims_nest(spec, list(outer_dims))


def add_outer_dim(specs: Any, dim: int | None = None) -> Any:
    """The same nest of tensor specs with one outer dim (None: any size) prepended."""
    return add_outer_dims_nest(specs, (dim,))


def remove_outer_dims_nest(specs: Any, num_outer_dims: int) -> Any:
    """The same nest of tensor specs without their ``num_outer_dims`` outer dims.

    Raises:
      SpecError: for a spec of lower rank than ``num_outer_dims``.
    """

    def remove(spec: Any) -> Any:
        shape = _tensor_shape(spec)
        if shape.rank is None or shape.rank < num_outer_dims:
            raise SpecError(
                f"{spec}: expected a rank of at least {num_outer_dims} (num_outer_dims), "
                f"got {shape.rank}"
            )
        return _with_shape(spec, shape[num_outer_dims:])

    return nest.map_structure(remove, specs)


def with_dtype(specs: Any, dtype: Any) -> Any:
    """The same nest of tensor specs with every dtype replaced by ``dtype``."""

    def update(spec: Any) -> Any:
        if _has_bounds(spec):
            return BoundedTensorSpec(spec.shape, dtype, spec.minimum, spec.maximum, spec.name)
        return tf.TensorSpec(spec.shape, dtype, spec.name)

    return nest.map_structure(update, specs)


def _tensor_shape(spec: Any) -> tf.TensorShape:
    return tf.TensorShape(spec.shape)


# --- sampling and zeros ------------------------------------------------------------------


def _outer_shape(outer_dims: Any) -> tf.Tensor:
    if outer_dims is None:
        return tf.constant([], tf.int32)
    if not tf.is_tensor(outer_dims) and not isinstance(outer_dims, (tuple, list)):
        outer_dims = [outer_dims]
    return tf.reshape(tf.cast(tf.convert_to_tensor(outer_dims), tf.int32), [-1])


def sample_bounded_spec(spec: Any, seed: Any = None, outer_dims: Any = None) -> tf.Tensor:
    """A uniform sample of a bounded spec, bounds inclusive, with optional outer dims.

    Integer samples may take every value in ``[minimum, maximum]``, the dtype's maximum
    included. Float bounds beyond +-``array_spec.FLOAT_SAMPLE_LIMIT`` are narrowed to it,
    as array specs sample. ``seed``: None (TensorFlow's stateful generator) or an int
    (reproducible: stateless ops).
    """
    spec = BoundedTensorSpec.from_spec(spec) if not is_bounded(spec) else spec
    dtype = tf.as_dtype(spec.dtype)
    shape = tf.concat([_outer_shape(outer_dims), tf.constant(spec.shape.as_list(), tf.int32)], 0)
    seed = _seed_pair(seed)
    if dtype.is_bool:
        low, high = np.zeros(spec.shape, np.int64), np.ones(spec.shape, np.int64)
    else:
        low = np.broadcast_to(np.asarray(spec.minimum), spec.shape.as_list())
        high = np.broadcast_to(np.asarray(spec.maximum), spec.shape.as_list())
    if dtype.is_floating:
        limit = array_spec.FLOAT_SAMPLE_LIMIT
        low64 = np.clip(low.astype(np.float64), -limit, limit)
        high64 = np.maximum(np.clip(high.astype(np.float64), -limit, limit), low64)
        unit = _uniform(shape, tf.float64, seed)
        sample = low64 + unit * (high64 - low64)
        return tf.cast(
            tf.clip_by_value(sample, low.astype(np.float64), high.astype(np.float64)), dtype
        )
    # Integers: an offset below (maximum - minimum + 1), drawn as a float64 fraction for
    # ranges that fit its 53 bits exactly, else as full 64-bit words reduced modulo the range.
    low_int = low.astype(np.int64) if dtype != tf.uint64 else low.astype(np.uint64)
    # Exact spans (Python ints): float64 cannot tell int64 bounds near the dtype's limits apart.
    exact = high.astype(object) - low.astype(object) + 1
    span = np.asarray(exact, dtype=np.float64)
    if all(int(v) <= 2**53 for v in np.asarray(exact).reshape(-1)):
        unit = _uniform(shape, tf.float64, seed)
        offset = tf.minimum(tf.floor(unit * span), span - 1.0)
        sample = tf.cast(offset, tf.int64) + tf.constant(low.astype(np.int64), tf.int64)
        return tf.cast(sample, dtype)
    words = _full_int(shape, seed)
    span_int = high.astype(np.uint64) - low_int.astype(np.uint64) + np.uint64(1)
    wide = tf.cast(words, tf.uint64)
    # A full 2**64 span wraps to 0: every word is a sample then.
    offset = tf.where(
        tf.constant(span_int == 0),
        wide,
        tf.math.floormod(wide, tf.constant(np.where(span_int == 0, 1, span_int), tf.uint64)),
    )
    sample = (
        tf.bitcast(offset + tf.constant(low_int.astype(np.uint64)), tf.int64)
        if (dtype == tf.int64)
        else offset + tf.constant(low_int.astype(np.uint64))
    )
    return tf.cast(sample, dtype)


def _seed_pair(seed: Any) -> tf.Tensor | None:
    if seed is None:
        return None
    if isinstance(seed, np.random.Generator):
        return tf.constant(seed.integers(0, 2**31 - 1, size=2), tf.int64)
    if tf.is_tensor(seed) and seed.shape.rank == 1:
        return tf.cast(seed, tf.int64)
    return tf.stack([tf.cast(seed, tf.int64), tf.constant(0x5EED, tf.int64)])


def _uniform(shape: tf.Tensor, dtype: tf.DType, seed: tf.Tensor | None) -> tf.Tensor:
    if seed is None:
        return tf.random.uniform(shape, dtype=dtype)
    return tf.random.stateless_uniform(shape, seed, dtype=dtype)


def _full_int(shape: tf.Tensor, seed: tf.Tensor | None) -> tf.Tensor:
    if seed is None:
        return tf.random.get_global_generator().uniform_full_int(shape, tf.uint64)
    return tf.random.stateless_uniform(shape, seed, minval=None, maxval=None, dtype=tf.uint64)


def sample_spec_nest(
    structure: Any,
    seed: Any = None,
    outer_dims: Any = (),
    minimum: Any = None,
    maximum: Any = None,
) -> Any:
    """Random tensors for a nest of tensor (or array) specs.

    Bounded specs are sampled uniformly within their bounds (inclusive), plain float
    specs from a standard normal, plain integer specs over their dtype's range, bool
    specs fairly. ``minimum`` / ``maximum`` narrow every numeric spec's bounds.
    ``outer_dims`` may be a tensor. ``seed``: None or an int (reproducible).
    """
    base = (
        None
        if seed is None
        else int(seed)
        if not isinstance(seed, np.random.Generator)
        else (int(seed.integers(0, 2**31 - 1)))
    )
    leaves = nest.flatten(structure)
    samples = []
    for index, spec in enumerate(leaves):
        leaf_seed = None if base is None else tf.constant([base, index], tf.int64)
        if isinstance(spec, (tf.SparseTensorSpec, tf.RaggedTensorSpec)):
            raise UnsupportedError(f"sample_spec_nest: {type(spec).__name__} is not supported")
        spec = _one_from_spec(spec)
        dtype = tf.as_dtype(spec.dtype)
        if dtype.is_floating and not is_bounded(spec) and minimum is None and maximum is None:
            shape = tf.concat(
                [_outer_shape(outer_dims), tf.constant(spec.shape.as_list(), tf.int32)], 0
            )
            noise = (
                tf.random.normal(shape, dtype=dtype)
                if leaf_seed is None
                else tf.random.stateless_normal(shape, leaf_seed, dtype=dtype)
            )
            samples.append(noise)
            continue
        if not dtype.is_bool:
            bounded = BoundedTensorSpec.from_spec(spec)
            low, high = np.asarray(bounded.minimum), np.asarray(bounded.maximum)
            if minimum is not None:
                low = np.maximum(low, np.asarray(minimum, low.dtype))
            if maximum is not None:
                high = np.minimum(high, np.asarray(maximum, high.dtype))
            spec = BoundedTensorSpec(spec.shape, dtype, low, high, spec.name)
        samples.append(sample_bounded_spec(spec, leaf_seed, outer_dims))
    return nest.pack_sequence_as(structure, samples)


def zero_spec_nest(spec: Any, outer_dims: Any = ()) -> Any:
    """Zero tensors for a nest of tensor specs; ``outer_dims`` may hold tensors (a dynamic
    batch).

    Raises:
      UnsupportedError: for sparse or ragged specs (a NotImplementedError, as in TF-Agents).
    """

    def zeros(s: Any) -> tf.Tensor:
        if not isinstance(s, tf.TensorSpec):
            raise UnsupportedError(
                f"zero_spec_nest: spec type not supported: {type(s).__name__} ({s})"
            )
        if outer_dims is None:
            return tf.zeros(s.shape, s.dtype)
        if tf.is_tensor(outer_dims) or any(tf.is_tensor(d) for d in nest.flatten(outer_dims)):
            shape = tf.concat(
                [_outer_shape(outer_dims), tf.constant(s.shape.as_list(), tf.int32)], 0
            )
            return tf.zeros(shape, s.dtype)
        return tf.zeros(list(outer_dims) + s.shape.as_list(), s.dtype)

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
    if not is_bounded(spec) or not is_integer_or_bool(spec):
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
