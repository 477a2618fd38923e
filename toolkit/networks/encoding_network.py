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
    "EncodingNetwork",
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


class EncodingNetwork(Network):
    """Preprocessing layers per observation leaf, a combiner, then dense layers.

    Each observation leaf goes through its preprocessing layer (or is cast to float32
    when it has none), is flattened to ``[B, n]``, and the leaves are combined: by
    ``preprocessing_combiner`` if given (it receives the list of flattened leaves in the
    nest's canonical order, dict keys sorted; e.g. ``tf_keras.layers.Concatenate()``),
    else by ``flatten_and_concat``. Then ``fc_layer_params`` dense layers.

    Output: float32 ``[B, units]`` (``[B, T, units]`` for sequence inputs).

    ``owner_name`` is the name of the network that holds this encoder, for error messages.
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
        owner_name: str | None = None,
    ):
        super().__init__(input_tensor_spec, state_spec=(), name=name)
        spec = self.input_tensor_spec
        # Errors name the network the user built (e.g. "QNetwork"), not this inner encoder.
        where = f"{owner_name or name}.preprocessing_layers"
        if preprocessing_layers is None:
            layers = [None] * len(nest.flatten(spec))
        elif not nest.is_nested(spec):
            if nest.is_nested(preprocessing_layers):
                raise StructureError(
                    where,
                    "a single layer (the observation is a single tensor)",
                    nest.structure_repr(preprocessing_layers),
                )
            layers = [check_layer(preprocessing_layers, where)]
        else:
            if not nest.is_nested(preprocessing_layers):
                raise StructureError(
                    where,
                    f"a nest of layers like the observation {nest.structure_repr(spec)} "
                    "(None for no preprocessing)",
                    f"a single {type(preprocessing_layers).__name__}",
                    detail="merge leaves with preprocessing_combiner",
                )
            nest.assert_same_structure(preprocessing_layers, spec, path=where)
            leaves = optree.tree_structure(spec).flatten_up_to(preprocessing_layers)
            paths = [p for p, _ in nest.flatten_with_paths(spec, prefix=where)]
            layers = [check_layer(layer, path) for layer, path in zip(leaves, paths, strict=True)]
        # A flat list (tracked as a ListWrapper): the layers' variables belong to this module.
        self._preprocessing_layers = layers
        self._combiner = (
            check_layer(preprocessing_combiner, f"{owner_name or name}.preprocessing_combiner")
            if preprocessing_combiner is not None
            else flatten_and_concat
        )
        initializer = kernel_initializer or default_kernel_initializer()
        self._fc_layers = [
            tf_keras.layers.Dense(
                int(units),
                activation=activation_fn,
                kernel_initializer=_fresh(initializer),
                name=f"fc_{i}",
            )
            for i, units in enumerate(fc_layer_params or ())
        ]

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
        processed = []
        for tensor, layer in zip(leaves, self._preprocessing_layers, strict=True):
            if layer is None:
                out = tf.cast(tensor, tf.float32)
            else:
                out = _call_layer(layer, tensor, training)
                out = tf.cast(out, tf.float32)
            processed.append(flatten_outer(out, num_outer))
        if len(processed) == 1 and self._combiner is flatten_and_concat:
            state = processed[0]
        else:
            state = _call_layer(self._combiner, processed, training)
        for layer in self._fc_layers:
            state = layer(state, training=training)
        return state, network_state


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
