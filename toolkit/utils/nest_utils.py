"""TF-Agents' ``nest_utils``: batching, unbatching, stacking and checking nests (TF-free).

The helpers policies and drivers use, with TF-Agents' names and semantics, on numpy
arrays and on TensorFlow tensors alike. The module imports no TensorFlow: shapes are
compared as tuples, and the tensor operations (expand dims, split, stack, where...) are
TensorFlow's only when the values are tensors, so TensorFlow is loaded already (it is
looked up, as ``toolkit.trajectories.time_step`` does). Sparse tensors are leaves with
the rank of their dense shape.

Structure checks follow ``tf.nest``: with ``check_types`` lists and tuples differ
(``toolkit.nest.assert_same_structure``, which policies use, lets them stand for each
other), any mapping matches any mapping with the same keys, and TensorFlow's tracking
wrappers are the containers they wrap.

Over 600 lines on purpose: it mirrors one TF-Agents module name for name, so code and
tests written for ``tf_agents.utils.nest_utils`` find every helper where they expect it.
"""

from __future__ import annotations

import collections
import collections.abc
import numbers
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from toolkit import nest
from toolkit.errors import SpecMismatchError, UnsupportedError

__all__ = [
    "assert_matching_dtypes_and_inner_shapes",
    "assert_same_structure",
    "assert_tensors_matching_dtypes_and_shapes",
    "assert_value_spec",
    "batch_nested_array",
    "batch_nested_tensors",
    "fast_map_structure",
    "fast_map_structure_flatten",
    "flatten_and_check_shape_nested_specs",
    "flatten_multi_batched_nested_tensors",
    "flatten_with_joined_paths",
    "get_outer_array_shape",
    "get_outer_rank",
    "get_outer_shape",
    "has_tensors",
    "is_batched_nested_tensors",
    "prune_extra_keys",
    "remove_singleton_batch_spec_dim",
    "spec_shape",
    "split_nested_tensors",
    "stack_nested_arrays",
    "stack_nested_tensors",
    "tile_batch",
    "unbatch_nested_array",
    "unbatch_nested_tensors",
    "unbatch_nested_tensors_to_arrays",
    "unstack_nested_arrays",
    "unstack_nested_arrays_into_flat_items",
    "unstack_nested_tensors",
    "where",
]


# --- TensorFlow, when the values are tensors -------------------------------------------


def _tf() -> Any:
    return sys.modules.get("tensorflow")


def _is_tensor(value: Any) -> bool:
    tf = _tf()
    return tf is not None and (tf.is_tensor(value) or isinstance(value, tf.Variable))


def _is_sparse(value: Any) -> bool:
    tf = _tf()
    return tf is not None and isinstance(value, (tf.SparseTensor, tf.SparseTensorSpec))


def _needs_tf(what: str) -> Any:
    tf = _tf()
    if tf is None:
        raise UnsupportedError(f"{what}: expected TensorFlow tensors (TensorFlow is not loaded)")
    return tf


# --- shapes as tuples (None: unknown) --------------------------------------------------


def _dims(shape: Any) -> tuple[int | None, ...] | None:
    """A shape (TensorShape, tuple, list) as a tuple of ints and Nones; None: unknown rank."""
    if shape is None:
        return None
    if getattr(shape, "rank", 0) is None:  # a TensorShape of unknown rank
        return None
    as_list = getattr(shape, "as_list", None)
    if as_list is not None:
        shape = as_list()
    return tuple(None if d is None else int(d) for d in shape)


def _compatible(a: tuple[int | None, ...], b: tuple[int | None, ...]) -> bool:
    return len(a) == len(b) and all(
        x is None or y is None or x == y for x, y in zip(a, b, strict=True)
    )


def spec_shape(t: Any) -> Any:
    """The shape of a spec or tensor; a sparse tensor's is its rank of unknown dims."""
    tf = _tf()
    if tf is not None and isinstance(t, tf.SparseTensor):
        rank = t.dense_shape.shape[0]
        return tf.TensorShape([None] * int(rank))
    return t.shape


def _shape_of(value: Any) -> tuple[int | None, ...] | None:
    return _dims(spec_shape(value))


def _dtype_name(value: Any) -> str:
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        return type(value).__name__
    return getattr(dtype, "name", str(dtype))


def _same_dtype(a: Any, b: Any) -> bool:
    da, db = getattr(a, "dtype", None), getattr(b, "dtype", None)
    da = getattr(da, "as_numpy_dtype", da)
    db = getattr(db, "as_numpy_dtype", db)
    try:
        return np.dtype(da) == np.dtype(db)
    except TypeError:
        return da == db


# --- structures ------------------------------------------------------------------------


class _Dot:
    """A leaf shown as "." in structure messages."""

    def __repr__(self) -> str:
        return "."


_DOT = _Dot()


def _unwrap(value: Any) -> Any:
    # TensorFlow's tracking proxies (_DictWrapper, _TupleWrapper) hold the real container.
    wrapped = getattr(type(value), "__wrapped__", None)
    if wrapped is not None and type(value).__module__.startswith("tensorflow."):
        return value.__wrapped__
    return value


def _is_namedtuple(value: Any) -> bool:
    return isinstance(value, tuple) and isinstance(
        getattr(value, "_fields", None), collections.abc.Sequence
    )


def _node_type(value: Any) -> Any:
    value = _unwrap(value)
    if isinstance(value, list):
        return list  # ListWrapper is a list
    if isinstance(value, collections.abc.Mapping):
        return collections.abc.Mapping
    if _is_namedtuple(value):
        return (type(value).__name__, tuple(value._fields))
    return type(value)


def _children(value: Any) -> list[Any]:
    value = _unwrap(value)
    if isinstance(value, collections.abc.Mapping):
        return [value[key] for key in _sorted(value)]
    return list(value)


def _sorted(mapping: Any) -> list[Any]:
    try:
        return sorted(mapping)
    except TypeError:
        return list(mapping)


def _check_same(a: Any, b: Any, check_types: bool, shallow: bool) -> None:
    a_nested, b_nested = nest.is_nested(a), nest.is_nested(b)
    if not a_nested:
        if b_nested and not shallow:
            raise ValueError("a leaf against a nested structure")
        return
    if not b_nested:
        raise ValueError("a nested structure against a leaf")
    if check_types and _node_type(a) != _node_type(b):
        raise TypeError(
            f"different kinds: {type(_unwrap(a)).__name__}, {type(_unwrap(b)).__name__}"
        )
    a_raw, b_raw = _unwrap(a), _unwrap(b)
    a_map = isinstance(a_raw, collections.abc.Mapping)
    if a_map != isinstance(b_raw, collections.abc.Mapping):
        raise TypeError("a mapping against a sequence")
    if a_map and set(a_raw) != set(b_raw):
        raise ValueError(f"different keys: {_sorted(a_raw)}, {_sorted(b_raw)}")
    if len(a_raw) != len(b_raw):
        raise ValueError(f"different lengths: {len(a_raw)}, {len(b_raw)}")
    for x, y in zip(_children(a), _children(b), strict=True):
        _check_same(x, y, check_types, shallow)


def assert_same_structure(
    nest1: Any,
    nest2: Any,
    check_types: bool = True,
    expand_composites: bool = False,
    allow_shallow_nest1: bool = False,
    message: str | None = None,
) -> None:
    """``tf.nest.assert_same_structure`` with a message showing both structures.

    Raises:
      ValueError: different lengths, keys or nesting.
      TypeError: with ``check_types``, different kinds of containers (a list and a
        tuple; any two mappings match).
    """
    if not isinstance(check_types, bool):
        raise TypeError(f"check_types must be a bool, got {check_types!r}")
    if not isinstance(expand_composites, bool):
        raise TypeError(f"expand_composites must be a bool, got {expand_composites!r}")
    try:
        _check_same(nest1, nest2, check_types, allow_shallow_nest1)
    except (TypeError, ValueError) as error:
        text = message or "The two structures do not match"
        dots1 = nest.map_structure(lambda _: _DOT, nest1)
        dots2 = nest.map_structure(lambda _: _DOT, nest2)
        raise type(error)(
            f"{text} ({error}):\n  {dots1}\nvs.\n  {dots2}\nValues:\n  {nest1}\nvs.\n  {nest2}."
        ) from None


def flatten_with_joined_paths(structure: Any, expand_composites: bool = False) -> list:
    """``(path, leaf)`` pairs, paths joined with "/"."""
    del expand_composites
    return nest.flatten_with_paths(structure)


def fast_map_structure_flatten(func: Callable[..., Any], structure: Any, *flat_structure, **_):
    """``func`` over already flattened leaves, packed as ``structure``."""
    return nest.pack_sequence_as(structure, [func(*x) for x in zip(*flat_structure, strict=False)])


def fast_map_structure(func: Callable[..., Any], *structure: Any, **_) -> Any:
    """``map_structure`` without structure checks (leaves are paired in order)."""
    flat = [nest.flatten(s) for s in structure]
    return nest.pack_sequence_as(structure[0], [func(*x) for x in zip(*flat, strict=False)])


def has_tensors(*x: Any) -> bool:
    """True when any leaf is a TensorFlow tensor."""
    return any(_is_tensor(leaf) for leaf in nest.flatten(x))


def _is_attrs(value: Any) -> bool:
    return getattr(type(value), "__attrs_attrs__", None) is not None


def prune_extra_keys(narrow: Any, wide: Any) -> Any:
    """``wide`` with its mappings cut down to the keys ``narrow`` has, recursively.

    Where ``narrow`` and ``wide`` disagree (kinds, lengths, missing keys), that part of
    ``wide`` is returned as it is. ``narrow == ()`` gives ``()``. Wrapped containers
    (TensorFlow's tracking proxies) are rebuilt around the pruned content.
    """
    narrow_raw = _unwrap(narrow)
    if type(narrow_raw) is tuple and not narrow_raw:
        return narrow
    if _unwrap(wide) is not wide:
        return type(wide)(prune_extra_keys(narrow, wide.__wrapped__))
    if (
        type(narrow_raw) is not type(wide)
        and not (isinstance(narrow_raw, list) and isinstance(wide, list))
        and not (
            isinstance(narrow_raw, collections.abc.Mapping)
            and isinstance(wide, collections.abc.Mapping)
        )
    ):
        return wide
    if isinstance(narrow_raw, collections.abc.Mapping):
        if not set(wide.keys()).issuperset(narrow_raw.keys()):
            return wide
        items = [(key, prune_extra_keys(value, wide[key])) for key, value in narrow_raw.items()]
        if isinstance(wide, collections.defaultdict):
            return type(wide)(wide.default_factory, items)
        return type(wide)(items)
    if nest.is_nested(narrow_raw):
        if _is_attrs(wide):
            names = [a.name for a in type(wide).__attrs_attrs__]
            return type(wide)(
                *[prune_extra_keys(getattr(narrow_raw, n), getattr(wide, n)) for n in names]
            )
        if len(narrow_raw) != len(wide):
            return wide
        items = [prune_extra_keys(n, w) for n, w in zip(narrow_raw, wide, strict=True)]
        if _is_namedtuple(wide):
            return type(wide)(*items)
        return type(wide)(items)
    return wide


# --- dtypes and shapes against specs ---------------------------------------------------


def _flat_pairs(tensors: Any, specs: Any, message: str) -> tuple[list[Any], list[Any]]:
    assert_same_structure(tensors, specs, message=message)
    return nest.flatten(tensors), nest.flatten(specs)


def assert_tensors_matching_dtypes_and_shapes(
    tensors_1: Any, tensors_2: Any, caller: Any, tensors_1_name: str, tensors_2_name: str
) -> None:
    """Raises ValueError unless both nests have the same dtypes and ranks, leaf by leaf."""
    flat_1, flat_2 = _flat_pairs(
        tensors_1,
        tensors_2,
        f"{caller}: {tensors_1_name} and {tensors_2_name} do not have matching structures",
    )
    for a, b in zip(flat_1, flat_2, strict=True):
        a, b = _as_value(a), _as_value(b)
        shape_a, shape_b = _shape_of(a), _shape_of(b)
        rank_a = None if shape_a is None else len(shape_a)
        rank_b = None if shape_b is None else len(shape_b)
        if not _same_dtype(a, b) or rank_a != rank_b:
            raise ValueError(
                f"{caller}: Inconsistent dtypes or shapes between {tensors_1_name} and "
                f"{tensors_2_name}.\ndtypes:\n{_dtypes(tensors_1)}\nvs.\n{_dtypes(tensors_2)}.\n"
                f"shapes:\n{_shapes(tensors_1)}\nvs.\n{_shapes(tensors_2)}."
            )


def _as_value(value: Any) -> Any:
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return value
    return np.asarray(value)


def _dtypes(tree: Any) -> Any:
    return nest.map_structure(_dtype_name, tree)


def _shapes(tree: Any) -> Any:
    return nest.map_structure(lambda x: _shape_of(_as_value(x)), tree)


def assert_matching_dtypes_and_inner_shapes(
    tensors_or_specs: Any,
    specs: Any,
    caller: Any,
    tensors_name: str,
    specs_name: str,
    allow_extra_fields: bool = False,
) -> None:
    """Raises ValueError unless each tensor (or spec) has its spec's dtype and ends with
    its spec's shape (outer dims are free)."""
    if allow_extra_fields:
        tensors_or_specs = prune_extra_keys(specs, tensors_or_specs)
    flat_values, flat_specs = _flat_pairs(
        tensors_or_specs,
        specs,
        f"{caller}: {tensors_name} and {specs_name} do not have matching structures",
    )
    compatible = True
    for value, spec in zip(flat_values, flat_specs, strict=True):
        value = _as_value_like(value, spec)
        if not _same_dtype(value, spec):
            compatible = False
            break
        s_shape, t_shape = _shape_of(spec), _shape_of(value)
        if s_shape is None or t_shape is None or len(s_shape) == 0:
            continue
        if len(s_shape) > len(t_shape) or not _compatible(s_shape, t_shape[-len(s_shape) :]):
            compatible = False
            break
    if not compatible:
        raise ValueError(
            f"{caller}: Inconsistent dtypes or shapes between {tensors_name} and {specs_name}."
            f"\ndtypes:\n{_dtypes(tensors_or_specs)}\nvs.\n{_dtypes(specs)}.\n"
            f"shapes:\n{_shapes(tensors_or_specs)}\nvs.\n{_shapes(specs)}."
        )


def _as_value_like(value: Any, spec: Any) -> Any:
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return value
    dtype = getattr(spec.dtype, "as_numpy_dtype", spec.dtype)
    return np.asarray(value, dtype=dtype)


def _outer_ranks(tensors: Any, specs: Any, what: str) -> tuple[list[int], list[bool], list]:
    """Per leaf: how many dims the tensor has beyond its spec, whether the inner dims
    match, and whether the tensor matches the spec unbatched."""
    flat_tensors = nest.flatten(tensors)
    flat_specs = nest.flatten(specs)
    tensor_shapes = [_shape_of(t) for t in flat_tensors]
    spec_shapes = [_shape_of(s) for s in flat_specs]
    if any(s is None for s in spec_shapes):
        raise ValueError(f"All specs should have ndims defined.  Saw shapes: {spec_shapes}")
    if any(t is None for t in tensor_shapes):
        raise ValueError(f"All {what} should have ndims defined.  Saw shapes: {tensor_shapes}")
    unbatched = [_compatible(s, t) for s, t in zip(spec_shapes, tensor_shapes, strict=True)]
    extra = [len(t) - len(s) for s, t in zip(spec_shapes, tensor_shapes, strict=True)]
    inner_match = [
        d >= 0 and _compatible(s, t[d:])
        for d, s, t in zip(extra, spec_shapes, tensor_shapes, strict=True)
    ]
    return extra, inner_match, [unbatched, tensor_shapes, spec_shapes]


def is_batched_nested_tensors(
    tensors: Any,
    specs: Any,
    num_outer_dims: int = 1,
    allow_extra_fields: bool = False,
    check_dtypes: bool = True,
) -> bool:
    """True when every tensor has ``num_outer_dims`` outer dims beyond its spec, False
    when none has any (or all have another number of outer dims).

    Raises:
      ValueError: shapes that do not match the specs, or a mix of batched and unbatched.
      TypeError: dtypes that differ from the specs' (with ``check_dtypes``).
    """
    if allow_extra_fields:
        tensors = prune_extra_keys(specs, tensors)
    assert_same_structure(
        tensors, specs, message="Tensors and specs do not have matching structures"
    )
    flat_tensors, flat_specs = nest.flatten(tensors), nest.flatten(specs)
    extra, inner_match, (unbatched, tensor_shapes, spec_shapes) = _outer_ranks(
        tensors, specs, "tensors"
    )
    if check_dtypes:
        mismatched = [
            path
            for (path, s), t in zip(nest.flatten_with_paths(specs), flat_tensors, strict=True)
            if not _same_dtype(t, s)
        ]
        if mismatched:
            raise TypeError(
                f"Tensor dtypes do not match spec dtypes:\n{_dtypes(tensors)}\nvs.\n"
                f"{_dtypes(specs)}\nNumber of mismatched entries: {len(mismatched)}\n"
                f"Mismatch: {mismatched}"
            )
    del flat_specs
    if all(unbatched):
        return False
    if all(d == num_outer_dims for d in extra) and all(inner_match):
        return True
    if all(d == extra[0] for d in extra) and all(inner_match):
        return False
    raise ValueError(
        "Received a mix of batched and unbatched Tensors, or Tensors are not compatible "
        f"with Specs.  num_outer_dims: {num_outer_dims}.\nSaw tensor_shapes:\n   "
        f"{nest.pack_sequence_as(specs, tensor_shapes)}\nAnd spec_shapes:\n   "
        f"{nest.pack_sequence_as(specs, spec_shapes)}"
    )


def get_outer_rank(tensors: Any, specs: Any) -> int:
    """The number of outer dims every tensor has beyond its spec (0 if none).

    Raises:
      ValueError: shapes that do not match the specs, or differing numbers of outer dims.
    """
    assert_same_structure(
        tensors, specs, message="Tensors and specs do not have matching structures"
    )
    extra, inner_match, (unbatched, tensor_shapes, spec_shapes) = _outer_ranks(
        tensors, specs, "tensors"
    )
    if all(unbatched):
        return 0
    if all(d == extra[0] for d in extra) and all(inner_match):
        return extra[0]
    raise ValueError(
        "Received a mix of batched and unbatched Tensors, or Tensors are not compatible "
        f"with Specs.  num_outer_dims: {extra[0]}.\nSaw tensor_shapes:\n   {tensor_shapes}\n"
        f"And spec_shapes:\n   {spec_shapes}"
    )


def get_outer_shape(nested_tensor: Any, spec: Any) -> Any:
    """The outer (batch) dims of a nest of tensors as a shape tensor (``[]`` unbatched);
    a numpy array for numpy values."""
    assert_same_structure(
        nested_tensor, spec, message="Tensors and specs do not have matching structures"
    )
    first = nest.flatten(nested_tensor)[0]
    first_spec = nest.flatten(spec)[0]
    num_outer_dims = len(_shape_of(first)) - len(_shape_of(first_spec))
    tensors = _is_tensor(first)
    if not is_batched_nested_tensors(
        nested_tensor, spec, num_outer_dims=num_outer_dims, check_dtypes=False
    ):
        if tensors:
            return _tf().constant([], dtype=_tf().int32)
        return np.zeros([0], np.int32)
    if tensors:
        return _tf().shape(first)[:num_outer_dims]
    return np.asarray(np.shape(first)[:num_outer_dims], np.int32)


def get_outer_array_shape(nested_array: Any, spec: Any) -> tuple[int, ...]:
    """The outer (batch) dims of a nest of numpy arrays, read from its first leaf."""
    first = nest.flatten(nested_array)[0]
    first_spec = nest.flatten(spec)[0]
    num_outer_dims = len(first.shape) - len(first_spec.shape)
    return tuple(first.shape[:num_outer_dims])


def _check_shapes(tensors: Any, specs: Any, num_outer_dims: int = 1) -> tuple[list, list]:
    """Flat tensors and spec shapes, each tensor unbatched or with ``num_outer_dims``."""
    assert_same_structure(
        tensors, specs, message="Tensors and specs do not have matching structures"
    )
    flat_tensors = nest.flatten(tensors)
    flat_shapes = [_shape_of(s) for s in nest.flatten(specs)]
    for tensor, shape in zip(flat_tensors, flat_shapes, strict=True):
        t_shape = _shape_of(tensor)
        if t_shape is not None and shape is not None:
            if len(t_shape) == len(shape):
                if not _compatible(t_shape, shape):
                    raise SpecMismatchError("", f"shape {shape}", f"{t_shape}")
                continue
            if len(t_shape) == len(shape) + num_outer_dims:
                if not _compatible(t_shape[num_outer_dims:], shape):
                    raise SpecMismatchError("", f"shape [outer dims] + {list(shape)}", f"{t_shape}")
                continue
        raise ValueError(
            "Tensor does not have the correct dimensions. "
            f"tensor.shape {t_shape} expected shape {[None] + list(shape or ())}"
        )
    return flat_tensors, flat_shapes


def flatten_and_check_shape_nested_specs(specs: Any, reference_specs: Any):
    """Flat ``specs`` and their shapes, checked against ``reference_specs``."""
    try:
        return _check_shapes(specs, reference_specs, num_outer_dims=0)
    except ValueError as error:
        raise ValueError(
            f"specs must be compatible with reference_specs; instead got specs={specs}, "
            f"reference_specs={reference_specs}"
        ) from error


def _expand_dims(value: Any, axis: int) -> Any:
    if _is_tensor(value) or _is_sparse(value):
        tf = _tf()
        if isinstance(value, tf.SparseTensor):
            return tf.sparse.expand_dims(value, axis)
        return tf.expand_dims(value, axis)
    return np.expand_dims(value, axis)


def _squeeze(value: Any, axis: int) -> Any:
    if _is_tensor(value) or _is_sparse(value):
        tf = _tf()
        if isinstance(value, tf.SparseTensor):
            shape = tf.concat([value.dense_shape[:axis], value.dense_shape[axis + 1 :]], 0)
            return tf.sparse.reshape(value, shape)
        return tf.squeeze(value, [axis])
    return np.squeeze(value, axis)


def batch_nested_tensors(tensors: Any, specs: Any = None) -> Any:
    """Adds a batch dim where a tensor lacks one (every tensor when ``specs`` is None).

    Raises:
      ValueError: a tensor that matches its spec neither unbatched nor with one batch dim.
    """
    if specs is None:
        return nest.map_structure(lambda t: _expand_dims(t, 0), tensors)
    flat_tensors, flat_shapes = _check_shapes(tensors, specs)
    out = [
        _expand_dims(t, 0) if len(_shape_of(t)) == len(shape) else t
        for t, shape in zip(flat_tensors, flat_shapes, strict=True)
    ]
    return nest.pack_sequence_as(tensors, out)


def unbatch_nested_tensors(tensors: Any, specs: Any = None) -> Any:
    """Removes the batch dim where a tensor has one (every tensor's first dim when ``specs``
    is None)."""
    if specs is None:
        return nest.map_structure(lambda t: _squeeze(t, 0), tensors)
    flat_tensors, flat_shapes = _check_shapes(tensors, specs)
    out = [
        _squeeze(t, 0) if len(_shape_of(t)) == len(shape) + 1 else t
        for t, shape in zip(flat_tensors, flat_shapes, strict=True)
    ]
    return nest.pack_sequence_as(tensors, out)


def split_nested_tensors(tensors: Any, specs: Any, num_or_size_splits: Any) -> list[Any]:
    """A list of nests, the batch dim split as ``tf.split`` does.

    Raises:
      ValueError: an unbatched tensor, or size splits with a sparse tensor in the nest.
    """
    tf = _needs_tf("split_nested_tensors")
    flat_tensors, flat_shapes = _check_shapes(tensors, specs)
    parts = []
    for tensor, shape in zip(flat_tensors, flat_shapes, strict=True):
        if len(_shape_of(tensor)) == len(shape):
            raise ValueError("Can only split tensors with a batch dimension.")
        if isinstance(tensor, tf.SparseTensor):
            if not isinstance(num_or_size_splits, numbers.Number):
                raise ValueError(
                    "Saw a SparseTensor, for which num_or_size_splits must be a scalar. "
                    f"But it is not: {num_or_size_splits}"
                )
            parts.append(tf.sparse.split(sp_input=tensor, num_split=num_or_size_splits, axis=0))
        else:
            parts.append(tf.split(tensor, num_or_size_splits))
    return [nest.pack_sequence_as(tensors, list(zipped)) for zipped in zip(*parts, strict=True)]


def unstack_nested_tensors(tensors: Any, specs: Any) -> list[Any]:
    """A list of nests, one per entry of the batch dim."""
    flat_tensors, flat_shapes = _check_shapes(tensors, specs)
    parts = []
    for tensor, shape in zip(flat_tensors, flat_shapes, strict=True):
        if len(_shape_of(tensor)) == len(shape):
            raise ValueError("Can only unstack tensors with a batch dimension.")
        if _is_tensor(tensor):
            parts.append(_tf().unstack(tensor))
        else:
            parts.append(list(np.asarray(tensor)))
    return [nest.pack_sequence_as(tensors, list(zipped)) for zipped in zip(*parts, strict=True)]


def stack_nested_tensors(tensors: Sequence[Any], axis: int = 0) -> Any:
    """One nest, the nests of the list stacked along ``axis``."""
    if has_tensors(tensors):
        tf = _tf()
        return nest.map_structure(lambda *ts: tf.stack(ts, axis=axis), *tensors)
    return nest.map_structure(lambda *ts: np.stack(ts, axis=axis), *tensors)


def flatten_multi_batched_nested_tensors(tensors: Any, specs: Any) -> tuple[Any, Any]:
    """Every tensor's outer dims folded into one; returns ``(tensors, outer_dims)``.

    The outer dims are read from the first tensor (a tensor; a numpy array for arrays).
    """
    assert_same_structure(
        tensors, specs, message="Tensors and specs do not have matching structures"
    )
    flat_tensors = nest.flatten(tensors)
    spec_shapes = [_shape_of(s) for s in nest.flatten(specs)]
    if not flat_tensors:
        return tensors, []
    tf = _tf()
    uses_tf = has_tensors(flat_tensors) or any(_is_sparse(t) for t in flat_tensors)
    first, first_spec = flat_tensors[0], spec_shapes[0]
    outer_rank = len(_shape_of(first)) - len(first_spec)
    outer = _shape_of(first)[:outer_rank]
    if uses_tf:
        if all(d is not None for d in outer):
            batch_dims = tf.constant(outer, dtype=tf.int64)
            batch_prod = int(np.prod(outer, dtype=np.int64))
        else:
            batch_dims = _dense_shape(first)[:outer_rank]
            batch_prod = tf.reduce_prod(batch_dims)
    else:
        batch_dims = np.asarray(outer, np.int64)
        batch_prod = int(np.prod(outer, dtype=np.int64))
    out = []
    for tensor, shape in zip(flat_tensors, spec_shapes, strict=True):
        rank = len(_shape_of(tensor))
        if not uses_tf:
            out.append(np.reshape(tensor, [batch_prod, *shape]))
            continue
        if all(d is not None for d in shape) and not isinstance(batch_prod, int):
            new_shape = tf.concat([[batch_prod], tf.constant(list(shape), tf.int64)], 0)
        elif all(d is not None for d in shape):
            new_shape = [batch_prod, *shape]
        else:
            inner = _dense_shape(tensor)[rank - len(shape) :]
            new_shape = tf.concat([tf.cast([batch_prod], inner.dtype), inner], 0)
        if isinstance(tensor, tf.SparseTensor):
            out.append(tf.sparse.reshape(tensor, tf.cast(new_shape, tf.int64)))
        else:
            out.append(tf.reshape(tensor, new_shape))
    return nest.pack_sequence_as(tensors, out), batch_dims


def _dense_shape(tensor: Any) -> Any:
    tf = _tf()
    if isinstance(tensor, tf.SparseTensor):
        return tensor.dense_shape
    return tf.shape(tensor, out_type=tf.int64)


# --- numpy arrays ---------------------------------------------------------------------


def batch_nested_array(nested_array: Any) -> Any:
    """Every array with a new outer dim of 1."""
    return nest.map_structure(lambda x: np.expand_dims(x, 0), nested_array)


def unbatch_nested_array(nested_array: Any) -> Any:
    """Every array without its outer dim of 1."""
    return nest.map_structure(lambda x: np.squeeze(x, 0), nested_array)


def unbatch_nested_tensors_to_arrays(nested_tensors: Any) -> Any:
    """Numpy arrays of a nest of batch-of-one tensors, without the batch dim."""
    return nest.map_structure(lambda t: np.squeeze(np.asarray(t), 0), nested_tensors)


def _flat_items(nested_array: Any):
    # Views (array[i]) rather than np.split: several times faster.
    columns = [[array[i] for i in range(len(array))] for array in nest.flatten(nested_array)]
    return zip(*columns, strict=True)


def unstack_nested_arrays(nested_array: Any) -> list[Any]:
    """A list of nests, one per entry of the arrays' outer dim."""
    return [nest.pack_sequence_as(nested_array, list(items)) for items in _flat_items(nested_array)]


def unstack_nested_arrays_into_flat_items(nested_array: Any) -> list[tuple[Any, ...]]:
    """Like ``unstack_nested_arrays``, each entry left flat (a tuple of leaves)."""
    return list(_flat_items(nested_array))


def stack_nested_arrays(nested_arrays: Sequence[Any]) -> Any:
    """One nest of arrays, the list's nests stacked along a new outer dim."""
    flat = [nest.flatten(a) for a in nested_arrays]
    return nest.pack_sequence_as(
        nested_arrays[0], [np.stack(column) for column in zip(*flat, strict=True)]
    )


# --- selection and tiling -------------------------------------------------------------


def where(condition: Any, true_outputs: Any, false_outputs: Any) -> Any:
    """``tf.where`` over two nests, ``condition`` ``[B, ...]`` widened with dims of 1 to
    each leaf's rank.

    Raises:
      ValueError: a leaf of lower rank than ``condition``.
    """
    assert_same_structure(
        true_outputs,
        false_outputs,
        message='"true_outputs" and "false_outputs" structures do not match',
    )
    tf = _tf()
    if tf is None or not (has_tensors(true_outputs, false_outputs) or _is_tensor(condition)):
        return _where_numpy(condition, true_outputs, false_outputs)
    condition = tf.convert_to_tensor(condition)

    def per_leaf(t: Any, f: Any) -> Any:
        t, f = tf.convert_to_tensor(t), tf.convert_to_tensor(f)
        if condition.shape.rank is not None and t.shape.rank is not None:
            if t.shape.rank < condition.shape.rank:
                raise ValueError(
                    f"where: a value of rank {t.shape.rank} is below the condition's rank "
                    f"{condition.shape.rank}"
                )
            difference = t.shape.rank - condition.shape.rank
            shape = tf.concat([tf.shape(condition), tf.ones([difference], tf.int32)], 0)
        else:
            tf.debugging.assert_rank_at_least(t, tf.rank(condition))
            difference = tf.rank(t) - tf.rank(condition)
            shape = tf.concat([tf.shape(condition), tf.ones(difference, dtype=tf.int32)], 0)
        return tf.where(tf.reshape(condition, shape), t, f)

    return nest.map_structure(per_leaf, true_outputs, false_outputs)


def _where_numpy(condition: Any, true_outputs: Any, false_outputs: Any) -> Any:
    condition = np.asarray(condition)

    def per_leaf(t: Any, f: Any) -> Any:
        t, f = np.asarray(t), np.asarray(f)
        if t.ndim < condition.ndim:
            raise ValueError(
                f"where: a value of rank {t.ndim} is below the condition's rank {condition.ndim}"
            )
        shape = condition.shape + (1,) * (t.ndim - condition.ndim)
        return np.where(condition.reshape(shape), t, f)

    return nest.map_structure(per_leaf, true_outputs, false_outputs)


def tile_batch(tensors: Any, multiplier: Any) -> Any:
    """Each entry of the batch dim repeated ``multiplier`` times in a row:
    ``[t0, t0, t1, t1, ...]`` for 2."""
    tf = _tf()

    def tile(t: Any) -> Any:
        if tf is None or not (_is_tensor(t) or _is_tensor(multiplier)):
            array = np.asarray(t)
            if array.ndim < 1:
                raise ValueError("t must have statically known rank of at least 1")
            return np.repeat(array, int(multiplier), axis=0)
        t = tf.convert_to_tensor(t)
        if t.shape.rank is None or t.shape.rank < 1:
            raise ValueError("t must have statically known rank of at least 1")
        shape = tf.shape(t)
        tiling = [1] * (t.shape.rank + 1)
        tiling[1] = multiplier
        tiled = tf.tile(tf.expand_dims(t, 1), tiling)
        tiled = tf.reshape(tiled, tf.concat(([shape[0] * multiplier], shape[1:]), 0))
        if not tf.is_tensor(multiplier):
            batch = t.shape[0]
            static = None if batch is None else batch * int(multiplier)
            tiled = tf.ensure_shape(tiled, tf.TensorShape([static]).concatenate(t.shape[1:]))
        return tiled

    return nest.map_structure(tile, tensors)


def remove_singleton_batch_spec_dim(spec: Any, outer_ndim: int) -> Any:
    """``spec`` without up to ``outer_ndim`` outer dims of size 1 (it stops at the first
    other dim)."""
    shape = getattr(spec, "shape", None)
    if shape is None:
        shape = getattr(spec, "_shape", None)
    if shape is None:
        raise ValueError(
            f"Could not remove singleton batch dim from spec; it lacks a shape: {spec}"
        )
    for i in range(outer_ndim):
        dims = _dims(shape)
        if dims is None or len(dims) <= i or dims[i] != 1:
            break
        spec = spec._unbatch()
    return spec


def assert_value_spec(output_spec: Any, network_name: str) -> None:
    """Raises ValueError unless every leaf is a float tensor spec of shape () or (1,)."""
    tf = _needs_tf("assert_value_spec")

    def check(v: Any) -> None:
        if not isinstance(v, tf.TensorSpec):
            raise ValueError(
                f"{network_name} emits outputs that are not tensors; spec: {output_spec}"
            )
        if _dims(v.shape) not in ((), (1,)):
            raise ValueError(f"{network_name} emits multiple values; spec: {output_spec}")
        if not v.dtype.is_floating:
            raise ValueError(
                f"{network_name} emits outputs that are not real numbers; spec: {output_spec}"
            )

    nest.map_structure(check, output_spec)
