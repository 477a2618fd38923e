"""Observation encoder: per-key preprocessing, a combiner, then fully connected layers.

Used by every network here so that dict (nested) observations just work:
``QNetwork({"position": ..., "velocity": ...}, action_spec)`` flattens each leaf and
concatenates them (``flatten_and_concat``) before the dense layers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optree
import tensorflow as tf
import tf_keras

from toolkit import nest
from toolkit.errors import SpecError, StructureError
from toolkit.networks.network import Network, check_layer

__all__ = [
    "CONV_TYPE_1D",
    "CONV_TYPE_2D",
    "EncodingNetwork",
    "PermanentDropout",
    "default_kernel_initializer",
    "flatten_and_concat",
    "flatten_outer",
    "outer_rank",
]


def default_kernel_initializer() -> tf_keras.initializers.Initializer:
    """He-style initializer, as TF-Agents' encoding networks use."""
    return tf_keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_in", distribution="truncated_normal"
    )


def outer_rank(tensor: tf.Tensor, spec: tf.TensorSpec) -> int:
    """Number of leading (batch, time) dimensions of ``tensor`` beyond ``spec.shape``."""
    return tensor.shape.rank - spec.shape.rank


def flatten_outer(tensor: tf.Tensor, num_outer_dims: int) -> tf.Tensor:
    """Reshapes ``[outer...] + inner`` to ``[outer..., prod(inner)]`` (inner must be static)."""
    inner_shape = tensor.shape[num_outer_dims:]
    if not inner_shape.is_fully_defined():
        raise SpecError(f"cannot flatten a tensor of shape {tensor.shape}: unknown inner dims")
    inner = int(np.prod(inner_shape.as_list(), dtype=np.int64))
    if tensor.shape.rank == num_outer_dims + 1:
        return tensor
    if num_outer_dims == 1:
        # A constant shape with -1 for the batch converts to one plain ONNX Reshape.
        return tf.reshape(tensor, [-1, inner])
    outer = tf.shape(tensor)[:num_outer_dims]
    flat = tf.reshape(tensor, tf.concat([outer, [inner]], axis=0))
    return tf.ensure_shape(flat, tensor.shape[:num_outer_dims].concatenate([inner]))


def flatten_and_concat(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
    """The default combiner: concatenates ``[B, n_i]`` float tensors along the last axis."""
    tensors = [tf.cast(t, tf.float32) for t in tensors]
    if len(tensors) == 1:
        return tensors[0]
    return tf.concat(tensors, axis=-1)


CONV_TYPE_1D = "1d"
CONV_TYPE_2D = "2d"


class EncodingNetwork(Network):
    """Preprocessing layers per observation leaf, a combiner, conv layers, then dense layers.

    As TF-Agents' ``EncodingNetwork``: each observation leaf goes through its
    preprocessing layer (or is cast to ``dtype`` when it has none); the leaves are
    combined by ``preprocessing_combiner`` if given (it receives the list of processed
    leaves in the nest's canonical order, dict keys sorted, e.g.
    ``tf_keras.layers.Concatenate()``), else a single leaf passes as it is and several
    are flattened and concatenated (``flatten_and_concat``; TF-Agents requires a
    combiner there); then ``conv_layer_params`` convolutions, a Flatten, and
    ``fc_layer_params`` dense layers (each followed by a dropout layer where
    ``dropout_layer_params`` says so; ``weight_decay_params`` puts an L2 penalty on each
    dense kernel, in ``losses``). Observations with several outer dims (``[B, T] + ...``)
    are folded into one batch dim around the layers (``batch_squash``).

    Output: ``dtype`` ``[B, units]`` (``[B, T, units]`` for sequence inputs).

    Args:
      input_tensor_spec: observation spec (nests allowed).
      preprocessing_layers: a layer (single observation) or a nest of layers like the
        observation, None entries for leaves without one.
      preprocessing_combiner: a layer or callable merging the list of processed leaves.
      conv_layer_params: ``(filters, kernel_size, strides[, dilation_rate])`` per
        convolution, on image-like leaves (``[H, W, C]``, or ``[L, C]`` with
        ``conv_type="1d"``).
      fc_layer_params: units of the dense layers.
      dropout_layer_params: per dense layer, None, a rate, or a dict of
        ``tf_keras.layers.Dropout`` arguments (``permanent=True`` keeps dropout on
        outside training).
      activation_fn: activation of the conv and dense layers.
      weight_decay_params: per dense layer, None or an L2 coefficient.
      kernel_initializer: conv and dense kernels' initializer (default He truncated normal).
      batch_squash: fold several outer dims into one around the layers.
      dtype: the layers' dtype (and that of leaves without a preprocessing layer).
      name: module name.
      conv_type: ``"2d"`` or ``"1d"``.
      owner_name: the network holding this encoder, for error messages.

    Raises:
      SpecError / StructureError: bad layer parameters or preprocessing layers that do not
        match the observation.
    """

    def __init__(
        self,
        input_tensor_spec: Any,
        preprocessing_layers: Any = None,
        preprocessing_combiner: Callable[[list[tf.Tensor]], tf.Tensor] | None = None,
        fc_layer_params: Sequence[int] | None = None,
        activation_fn: Callable[[tf.Tensor], tf.Tensor] | None = tf.nn.relu,
        kernel_initializer: Any = None,
        name: str = "EncodingNetwork",
        *,
        conv_layer_params: Sequence[Sequence[Any]] | None = None,
        dropout_layer_params: Sequence[Any] | None = None,
        weight_decay_params: Sequence[float | None] | None = None,
        batch_squash: bool = True,
        dtype: Any = tf.float32,
        conv_type: str = CONV_TYPE_2D,
        owner_name: str | None = None,
    ):
        super().__init__(input_tensor_spec, state_spec=(), name=name)
        spec = self.input_tensor_spec
        who = owner_name or name
        self._preprocessing_layers = _check_preprocessing_layers(
            spec, preprocessing_layers, f"{who}.preprocessing_layers"
        )
        self._combiner = (
            check_layer(preprocessing_combiner, f"{who}.preprocessing_combiner")
            if preprocessing_combiner is not None
            else flatten_and_concat
        )
        self._set_untracked("_dtype", tf.as_dtype(dtype))
        self._set_untracked("_batch_squash", bool(batch_squash))
        initializer = kernel_initializer or default_kernel_initializer()
        self._conv_layers = _conv_layers(
            conv_layer_params, conv_type, activation_fn, initializer, self._dtype, who
        )
        self._flatten = tf_keras.layers.Flatten(dtype=self._dtype)
        self._fc_layers = _fc_layers(
            fc_layer_params,
            dropout_layer_params,
            weight_decay_params,
            activation_fn,
            initializer,
            self._dtype,
            who,
        )

    def call(self, observation, step_type=None, network_state=(), training=False):
        specs = nest.flatten(self.input_tensor_spec)
        leaves = nest.flatten(observation)
        ranks = {outer_rank(t, s) for t, s in zip(leaves, specs, strict=True)}
        if len(ranks) != 1:
            raise StructureError(
                "observation",
                "the same batch dimensions on every leaf",
                f"outer ranks {sorted(ranks)}",
            )
        num_outer = ranks.pop()
        squash = self._batch_squash and num_outer > 1
        if squash:
            outer_shape = tf.shape(leaves[0])[:num_outer]
            leaves = [_fold_outer(t, num_outer) for t in leaves]
            num_outer = 1
        if self._combiner is not flatten_and_concat and all(
            layer is None for layer in self._preprocessing_layers
        ):
            # As TF-Agents: without preprocessing layers the combiner gets the observation
            # as it came (a dict stays a dict, e.g. for DenseFeatures of string features).
            observation = nest.pack_sequence_as(self.input_tensor_spec, leaves)
            state = _call_layer(self._combiner, observation, training)
            processed = None
        else:
            processed = [
                tf.cast(tensor, self._dtype)
                if layer is None
                else _call_layer(layer, tensor, training)
                for tensor, layer in zip(leaves, self._preprocessing_layers, strict=True)
            ]
        if processed is None:
            pass
        elif self._combiner is not flatten_and_concat:
            state = _call_layer(self._combiner, processed, training)
        elif len(processed) == 1:
            state = processed[0]
        else:
            state = flatten_and_concat(
                [flatten_outer(tf.cast(t, self._dtype), num_outer) for t in processed]
            )
        for layer in self._conv_layers:
            state = layer(state, training=training)
        if state.shape.rank is None or state.shape.rank != num_outer + 1:
            # Scalar leaves become [B, 1]; images (or conv outputs) [B, H * W * C].
            state = (
                self._flatten(state)
                if num_outer == 1 and (state.shape.rank or 0) > 2
                else flatten_outer(state, num_outer)
            )
        for layer in self._fc_layers:
            state = layer(state, training=training)
        if squash:
            state = tf.reshape(state, tf.concat([outer_shape, tf.shape(state)[1:]], 0))
        return state, network_state


def _check_preprocessing_layers(spec: Any, layers: Any, where: str) -> list[Any]:
    """One layer (or None) per observation leaf, in canonical order."""
    count = len(nest.flatten(spec))
    if layers is None:
        return [None] * count
    if not nest.is_nested(spec):
        if nest.is_nested(layers):
            given = len(nest.flatten(layers))
            raise StructureError(
                where,
                "a single layer (the observation is a single tensor)",
                f"{given} layers (sequence length {given})",
            )
        return [check_layer(layers, where)]
    if not nest.is_nested(layers):
        raise StructureError(
            where,
            f"a nest of layers like the observation {nest.structure_repr(spec)} "
            "(None for no preprocessing)",
            f"a single {type(layers).__name__}",
            detail="merge leaves with preprocessing_combiner",
        )
    if (
        isinstance(spec, (list, tuple))
        and isinstance(layers, (list, tuple))
        and not hasattr(spec, "_fields")
        and len(layers) != len(spec)
    ):
        raise StructureError(
            where,
            f"the observation's sequence length {len(spec)}",
            f"sequence length {len(layers)}",
        )
    nest.assert_same_structure(layers, spec, path=where)
    leaves = optree.tree_structure(spec).flatten_up_to(layers)
    paths = [p for p, _ in nest.flatten_with_paths(spec, prefix=where)]
    return [check_layer(layer, path) for layer, path in zip(leaves, paths, strict=True)]


def _conv_layers(params, conv_type, activation_fn, initializer, dtype, who) -> list[Any]:
    if not params:
        return []
    if conv_type == CONV_TYPE_2D:
        conv, no_dilation = tf_keras.layers.Conv2D, (1, 1)
    elif conv_type == CONV_TYPE_1D:
        conv, no_dilation = tf_keras.layers.Conv1D, (1,)
    else:
        raise SpecError(f"{who}: conv_type: expected '1d' or '2d', got {conv_type!r}")
    layers = []
    for index, config in enumerate(params):
        config = tuple(config)
        if len(config) == 4:
            filters, kernel_size, strides, dilation_rate = config
        elif len(config) == 3:
            (filters, kernel_size, strides), dilation_rate = config, no_dilation
        else:
            raise SpecError(
                f"{who}: conv_layer_params[{index}]: expected (filters, kernel_size, strides"
                f"[, dilation_rate]), only 3 or 4 elements permitted, got {config}"
            )
        layers.append(
            conv(
                filters=filters,
                kernel_size=kernel_size,
                strides=strides,
                dilation_rate=dilation_rate,
                activation=activation_fn,
                kernel_initializer=_fresh(initializer),
                dtype=dtype,
                name=f"conv_{index}",
            )
        )
    return layers


def _per_layer(values: Sequence[Any] | None, count: int, what: str, who: str) -> list[Any]:
    if values is None:
        return [None] * count
    values = list(values)
    if len(values) != count:
        raise SpecError(
            f"{who}: {what}: expected one entry per fully connected layer ({count}), "
            f"got {len(values)} (the lists have different lengths)"
        )
    return values


def _fc_layers(
    fc_params, dropout_params, weight_decay_params, activation_fn, initializer, dtype, who
) -> list[Any]:
    fc_params = tuple(fc_params or ())
    dropouts = _per_layer(dropout_params, len(fc_params), "dropout_layer_params", who)
    decays = _per_layer(weight_decay_params, len(fc_params), "weight_decay_params", who)
    layers: list[Any] = []
    for index, (units, dropout, decay) in enumerate(zip(fc_params, dropouts, decays, strict=True)):
        layers.append(
            tf_keras.layers.Dense(
                int(units),
                activation=activation_fn,
                kernel_initializer=_fresh(initializer),
                kernel_regularizer=(
                    tf_keras.regularizers.l2(float(decay)) if decay is not None else None
                ),
                dtype=dtype,
                name=f"fc_{index}",
            )
        )
        if dropout is not None and dropout is not False:
            arguments = dict(dropout) if isinstance(dropout, dict) else {"rate": float(dropout)}
            layers.append(PermanentDropout(name=f"dropout_{index}", **arguments))
    return layers


class PermanentDropout(tf_keras.layers.Dropout):
    """``tf_keras.layers.Dropout``, or with ``permanent=True`` dropout at inference too
    (approximate Bayesian inference, as TF-Agents' PermanentVariableRateDropout)."""

    def __init__(self, rate: float, permanent: bool = False, **kwargs: Any):
        super().__init__(rate, **kwargs)
        self.permanent = bool(permanent)

    def call(self, inputs, training=None):
        return super().call(inputs, training=True if self.permanent else training)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "permanent": self.permanent}


def _fold_outer(tensor: tf.Tensor, num_outer: int) -> tf.Tensor:
    """``[d0, ..., dk] + inner`` as ``[d0 * ... * dk] + inner``."""
    inner = tensor.shape[num_outer:]
    if inner.is_fully_defined():
        return tf.reshape(tensor, [-1, *inner.as_list()])
    return tf.reshape(tensor, tf.concat([[-1], tf.shape(tensor)[num_outer:]], 0))


def _call_layer(layer: Any, inputs: Any, training: bool) -> Any:
    if isinstance(layer, Network):
        output, _ = layer(inputs, training=training)
        return output
    if isinstance(layer, tf_keras.layers.Layer):
        return layer(inputs, training=training)
    return layer(inputs)


def _fresh(initializer: Any) -> Any:
    # One initializer object per layer: a seeded Keras initializer reused across layers
    # would give every layer the same weights.
    if isinstance(initializer, tf_keras.initializers.Initializer):
        return type(initializer).from_config(initializer.get_config())
    return initializer
