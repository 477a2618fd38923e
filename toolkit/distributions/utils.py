"""Action distributions of TF policies: conversion to a spec's leaf, and to export parameters.

``as_action_distribution`` makes what a network or policy gives (a tensor, a TFP
``Categorical``, a ``Normal`` over scalars) into one distribution per action leaf with
the leaf's event shape; ``params_from_distribution`` describes such a distribution as a
``toolkit.distribution_families`` family and its parameter tensors, for export.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import tensorflow as tf
import tensorflow_probability as tfp

from toolkit import distribution_families as families
from toolkit.distributions.shifted_categorical import ShiftedCategorical
from toolkit.distributions.tanh_normal import TanhNormal
from toolkit.errors import SpecMismatchError, UnsupportedError
from toolkit.specs import tensor_spec

tfd = tfp.distributions

__all__ = [
    "DistributionSpecV2",
    "Params",
    "as_action_distribution",
    "get_parameters",
    "independent",
    "is_distribution",
    "is_instance",
    "make_from_parameters",
    "merge_to_parameters_from_dict",
    "parameters_to_dict",
    "params_from_distribution",
    "unwrap_independent",
]


@dataclasses.dataclass(eq=True)
class Params:
    """The recursive parameters of a TFP distribution (or bijector, linear operator...),
    as TF-Agents' ``distributions.utils.Params``: its type and the arguments given to its
    ``__init__`` that are not their defaults, nested objects with ``parameters`` as
    ``Params`` themselves. ``get_parameters`` makes one, ``make_from_parameters`` the
    object back."""

    type_: type
    params: dict[str, Any]


def get_parameters(value: Any) -> Params:
    """``value``'s ``Params`` (TypeError if it has no ``parameters`` dict)."""
    parameters = getattr(value, "parameters", None)
    if not isinstance(parameters, Mapping):
        raise TypeError(
            f"get_parameters: expected an object with a `parameters` dict (a TFP "
            f"distribution, bijector...), got {type(value).__name__} with parameters "
            f"{parameters!r}"
        )
    signature = inspect.signature(type(value).__init__).parameters
    defaults = {k: p.default for k, p in signature.items() if p.default is not p.empty}

    def convert(item: Any) -> Any:
        return get_parameters(item) if getattr(item, "parameters", None) is not None else item

    return Params(
        type(value),
        {
            key: tf.nest.map_structure(convert, item)
            for key, item in parameters.items()
            # As TF-Agents: defaults (and Nones) are left out, the type supplies them.
            if item is not None and item is not defaults.get(key)
        },
    )


def make_from_parameters(value: Params) -> Any:
    """The object ``value`` describes: ``value.type_(**value.params)``, nested ``Params``
    made first."""

    def make(item: Any) -> Any:
        return make_from_parameters(item) if isinstance(item, Params) else item

    return value.type_(
        **{key: tf.nest.map_structure(make, item) for key, item in value.params.items()}
    )


def _entries(key: str, item: Any) -> list[tuple[str, Any]]:
    """``[(key, item)]`` for a leaf (or ``Params``); ``key:0``, ``key:1``... for the leaves
    of a list, tuple or dict, in ``tf.nest.flatten`` order."""
    if isinstance(item, Params) or not tf.nest.is_nested(item):
        return [(key, item)]
    return [(f"{key}:{i}", leaf) for i, leaf in enumerate(tf.nest.flatten(item))]


def parameters_to_dict(value: Params, tensors_only: bool = False) -> dict[str, Any]:
    """``value`` as nested dicts, as TF-Agents': a nested ``Params`` is a dict of its own,
    the leaves of a list or dict parameter are ``name:0``, ``name:1``... With
    ``tensors_only``, only tensor leaves (and the nested dicts) are kept."""
    out: dict[str, Any] = {}
    for key, item in value.params.items():
        for name, leaf in _entries(key, item):
            if isinstance(leaf, Params):
                out[name] = parameters_to_dict(leaf, tensors_only)
            elif not tensors_only or tf.is_tensor(leaf):
                out[name] = leaf
    return out


def merge_to_parameters_from_dict(value: Params, params_dict: Mapping[str, Any]) -> Params:
    """``value`` with the entries of ``params_dict`` (a ``parameters_to_dict`` output, maybe
    edited or partial) in place of its own.

    Raises:
      ValueError: ``params_dict`` has keys ``value`` has not.
      KeyError: only some of the entries of one list or dict parameter are given (which
        of them would be ambiguous once the structure changed).
    """
    params: dict[str, Any] = {}
    processed: list[str] = []
    for key, item in value.params.items():
        entries = _entries(key, item)
        names = [name for name, _ in entries]
        processed.extend(names)
        given = [name for name in names if name in params_dict]
        nested = tf.nest.is_nested(item) and not isinstance(item, Params)
        if nested and given and len(given) != len(names):
            raise KeyError(
                f"Only saw partial information from the dictionary for nested key "
                f"'{key}' in params_dict. Entries provided: {sorted(given)}. Entries "
                f"required: {sorted(names)}"
            )
        leaves = []
        for name, leaf in entries:
            if name in params_dict:
                new = params_dict[name]
                leaf = merge_to_parameters_from_dict(leaf, new) if isinstance(leaf, Params) else new
            leaves.append(leaf)
        params[key] = tf.nest.pack_sequence_as(item, leaves) if nested else leaves[0]
    unknown = set(params_dict) - set(processed)
    if unknown:
        raise ValueError(
            f"params_dict had keys that were not part of value.params: {sorted(unknown)}. "
            f"params_dict keys: {sorted(params_dict)}, value.params processed keys: "
            f"{sorted(processed)}"
        )
    return Params(value.type_, params)


def map_params(function: Callable[[Any], Any], value: Params) -> Params:
    """``value`` with ``function`` applied to every leaf that is not a ``Params``."""

    def apply(item: Any) -> Any:
        return map_params(function, item) if isinstance(item, Params) else function(item)

    return Params(
        value.type_,
        {key: tf.nest.map_structure(apply, item) for key, item in value.params.items()},
    )


class DistributionSpecV2:
    """The spec of a distribution a network outputs, as TF-Agents': its event shape,
    dtype, and ``Params`` whose tensors are ``tf.TypeSpec``s (tensors are refused: a
    spec holds no values)."""

    def __init__(self, event_shape: Any, dtype: Any, parameters: Params) -> None:
        def refuse_tensors(item: Any) -> Any:
            if tf.is_tensor(item):
                raise TypeError(
                    f"DistributionSpecV2: expected tf.TypeSpec parameters, got a tensor in "
                    f"{parameters}"
                )
            return item

        map_params(refuse_tensors, parameters)
        self._event_shape = tf.TensorShape(event_shape)
        self._dtype = tf.as_dtype(dtype)
        self._parameters = parameters
        self._event_spec = tf.TensorSpec(self._event_shape, self._dtype)

    @property
    def event_shape(self) -> tf.TensorShape:
        return self._event_shape

    @property
    def dtype(self) -> tf.DType:
        return self._dtype

    @property
    def event_spec(self) -> tf.TensorSpec:
        """The spec of one sample."""
        return self._event_spec

    @property
    def parameters(self) -> Params:
        return self._parameters

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, DistributionSpecV2)
            and self._event_shape == other._event_shape
            and self._dtype == other._dtype
            and self._parameters == other._parameters
        )

    __hash__ = None  # type: ignore[assignment]  # mutable Params inside, as TF-Agents

    def __repr__(self) -> str:
        return (
            f"<DistributionSpecV2: event_shape={self._event_shape}, dtype={self._dtype}, "
            f"parameters={self._parameters}>"
        )


def is_distribution(value: Any) -> bool:
    """Whether ``value`` is a TFP distribution."""
    return isinstance(value, tfd.Distribution)


def _tfp_class(public: type) -> type:
    """The class behind a TFP distribution name.

    TFP builds ``_Independent`` (not ``Independent``) around distributions that are no
    CompositeTensor, like ShiftedCategorical: isinstance must test the private base.
    """
    for cls in public.__mro__:
        if cls.__name__ == "_" + public.__name__:
            return cls
    return public


def is_instance(value: Any, *publics: type) -> bool:
    """isinstance against TFP distribution classes, their private bases included."""
    return isinstance(value, tuple(_tfp_class(p) for p in publics))


def independent(distribution: Any, rank: int) -> Any:
    """``tfd.Independent`` over ``rank`` dims, or the distribution itself for rank 0: a
    scalar action's distribution is its own (a Categorical has its ``logits``)."""
    if not rank:
        return distribution
    return tfd.Independent(distribution, reinterpreted_batch_ndims=rank)


def unwrap_independent(value: Any) -> Any:
    """The distribution inside an ``Independent`` and a ``BatchBroadcast`` (a policy's
    output broadcast over the batch), or ``value`` itself."""
    if is_instance(value, tfd.Independent):
        value = value.distribution
    if is_instance(value, tfd.BatchBroadcast):
        value = value.distribution
    return value


def as_action_distribution(value: Any, spec: Any, path: str = "action") -> tfd.Distribution:
    """The distribution of one action leaf with event shape ``spec.shape``.

    * a tensor (an action network's output) becomes a Deterministic around it;
    * a TFP ``Categorical`` over ``0..n-1`` becomes a ShiftedCategorical over the spec's
      range (``n`` must equal ``maximum - minimum + 1``), of the spec's dtype;
    * a distribution with scalar events over ``[B] + spec.shape`` (e.g. the TF-Agents
      policies tutorial's ``Normal(means, stds)``) is made Independent over the spec's dims.
    """
    rank = spec.shape.rank
    if not is_distribution(value):
        tensor = tf.convert_to_tensor(value)
        if tensor.dtype != spec.dtype:
            if not tensor_spec.same_kind(tensor.dtype, spec.dtype):
                raise SpecMismatchError(path, f"dtype {spec.dtype.name}", tensor.dtype.name)
            tensor = tf.cast(tensor, spec.dtype)
        return independent(tfd.Deterministic(tensor), rank)
    base = unwrap_independent(value)
    if (is_instance(base, tfd.Categorical) or isinstance(base, ShiftedCategorical)) and (
        tensor_spec.is_integer_or_bool(spec)
    ):
        return _shifted_categorical_for(base, spec, path)
    event = value.event_shape
    if event.rank == 0 and rank > 0:
        return independent(value, rank)
    if event.rank is not None and not event.is_compatible_with(spec.shape):
        raise SpecMismatchError(
            path,
            f"a distribution with event shape {tuple(spec.shape.as_list())}",
            f"event shape {tensor_spec.shape_text(event)}",
        )
    return value


def _shifted_categorical_for(base: Any, spec: Any, path: str) -> tfd.Distribution:
    low, high = tensor_spec.discrete_range(spec, path)
    logits = base.logits_parameter()
    n = logits.shape[-1]
    if n is not None and n != high - low + 1:
        raise SpecMismatchError(
            path,
            f"{high - low + 1} categories (actions {low} to {high})",
            f"{n} categories",
        )
    if isinstance(base, ShiftedCategorical) and base.shift != low:
        raise SpecMismatchError(path, f"categories starting at {low}", f"starting at {base.shift}")
    logits = tf.reshape(logits, [-1, *spec.shape.as_list(), high - low + 1])
    shifted = ShiftedCategorical(logits, shift=low, dtype=spec.dtype)
    return independent(shifted, spec.shape.rank)


def params_from_distribution(
    distribution: Any, spec: Any, batch_size: Any, path: str = "action"
) -> families.DistributionParams:
    """The export description (family and parameter tensors) of one action distribution.

    Parameters are broadcast to ``[B] + spec.shape`` (logits: ``[B] + spec.shape + [n]``).

    Raises:
      UnsupportedError: for distributions outside ``distribution_families.FAMILIES``.
    """
    base = unwrap_independent(distribution)
    shape = tf.concat(
        [
            tf.reshape(tf.cast(batch_size, tf.int32), [1]),
            tf.constant(spec.shape.as_list(), tf.int32),
        ],
        0,
    )
    event_ndims = spec.shape.rank
    dtype = families.dtype_name(spec.dtype)

    def full(t: Any, dtype: Any = None) -> tf.Tensor:
        t = tf.convert_to_tensor(t)
        if dtype is not None and t.dtype != dtype:
            t = tf.cast(t, dtype)
        return tf.broadcast_to(t, shape)

    def make(family: str, shift: int = 0, **params: Any) -> families.DistributionParams:
        return families.DistributionParams(family, params, event_ndims, dtype, shift)

    if isinstance(base, ShiftedCategorical):
        given = base.logits_parameter()  # also when it was given probs
        n = given.shape[-1]
        logits = tf.broadcast_to(given, tf.concat([shape, [tf.shape(given)[-1]]], 0))
        if n is not None:
            logits = tf.ensure_shape(logits, [None, *spec.shape.as_list(), n])
        return make(families.CATEGORICAL, shift=base.shift, logits=logits)
    if is_instance(base, tfd.Categorical):
        logits = base.logits_parameter()
        return make(
            families.CATEGORICAL,
            logits=tf.reshape(logits, tf.concat([shape, [tf.shape(logits)[-1]]], 0)),
        )
    if isinstance(base, TanhNormal):
        return make(
            families.TANH_NORMAL,
            loc=full(base.loc),
            scale=full(base.scale),
            low=full(base.low.astype(spec.dtype.as_numpy_dtype)),
            high=full(base.high.astype(spec.dtype.as_numpy_dtype)),
        )
    if is_instance(base, tfd.Deterministic, tfd.VectorDeterministic):
        return make(families.DETERMINISTIC, loc=full(base.loc, spec.dtype))
    if is_instance(base, tfd.Normal):
        return make(families.NORMAL, loc=full(base.loc), scale=full(base.scale))
    if is_instance(base, tfd.MultivariateNormalDiag):
        return make(families.NORMAL, loc=full(base.mean()), scale=full(base.stddev()))
    if is_instance(base, tfd.Uniform):
        return make(families.UNIFORM, low=full(base.low), high=full(base.high))
    raise UnsupportedError(
        f"{path}: {type(distribution).__name__} has no export family (supported: "
        "Deterministic, Categorical/ShiftedCategorical, Normal, MultivariateNormalDiag, "
        "Uniform, TanhNormal, each possibly Independent)"
    )
