"""ActorNetwork: deterministic actions, tanh outputs scaled into the action bounds (DDPG)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf
import tf_keras

from toolkit import nest
from toolkit.networks import spec_utils
from toolkit.networks.encoding_network import EncodingNetwork
from toolkit.networks.network import Network
from toolkit.specs import tensor_spec

__all__ = ["ActorNetwork", "reshape_inner"]


def reshape_inner(tensor: tf.Tensor, inner_shape: Sequence[int]) -> tf.Tensor:
    """Reshapes ``[outer..., n]`` to ``[outer...] + inner_shape`` (n = prod(inner_shape))."""
    inner_shape = [int(d) for d in inner_shape]
    if tensor.shape.rank == 2:
        # A constant target shape with -1 for the batch: one plain ONNX Reshape.
        return tf.reshape(tensor, [-1, *inner_shape])
    outer = tf.shape(tensor)[:-1]
    reshaped = tf.reshape(tensor, tf.concat([outer, tf.constant(inner_shape, tf.int32)], 0))
    return tf.ensure_shape(reshaped, tensor.shape[:-1].concatenate(inner_shape))


class ActorNetwork(Network):
    """Maps observations to actions in the bounds of a (nested) bounded float action spec.

    Each action leaf gets its own dense layer with ``tanh``; the output ``t`` in [-1, 1]
    is mapped to ``(max + min) / 2 + (max - min) / 2 * t``, so it always lies within
    [minimum, maximum] (per element when the bounds are arrays).

    Args:
      input_tensor_spec: observation spec (nests are flattened and concatenated).
      output_tensor_spec: bounded float action spec, or a nest of them.
      fc_layer_params: units of the hidden dense layers.
      preprocessing_layers, preprocessing_combiner: see ``EncodingNetwork``.
      activation_fn: activation of the hidden layers.
      kernel_initializer: hidden layers' initializer.
      last_kernel_initializer: action layers' initializer (default uniform +-0.003, as
        DDPG and TF-Agents, so initial actions sit near the middle of the range).
      conv_layer_params, dropout_layer_params, weight_decay_params, batch_squash, dtype:
        see ``EncodingNetwork`` (convolutions for image observations).
      name: module name.

    Raises:
      SpecError: an action leaf that is not a bounded float spec with finite bounds.
    """

    def __init__(
        self,
        input_tensor_spec: Any,
        output_tensor_spec: Any,
        fc_layer_params: Sequence[int] | None = (400, 300),
        preprocessing_layers: Any = None,
        preprocessing_combiner: Callable[..., tf.Tensor] | None = None,
        activation_fn: Callable[[tf.Tensor], tf.Tensor] | None = tf.nn.relu,
        *,
        kernel_initializer: Any = None,
        last_kernel_initializer: Any = None,
        conv_layer_params: Sequence[Sequence[Any]] | None = None,
        dropout_layer_params: Sequence[Any] | None = None,
        weight_decay_params: Sequence[float | None] | None = None,
        batch_squash: bool = True,
        dtype: Any = tf.float32,
        name: str = "ActorNetwork",
    ):
        output_tensor_spec = tensor_spec.from_spec(output_tensor_spec)
        bounds = [
            spec_utils.float_bounds(spec, name, path)
            for path, spec in nest.flatten_with_paths(output_tensor_spec, prefix="action_spec")
        ]
        super().__init__(input_tensor_spec, state_spec=(), name=name)
        self._set_untracked("_output_tensor_spec", output_tensor_spec)
        self._set_untracked("_bounds", bounds)
        with self.name_scope:
            self._encoder = EncodingNetwork(
                input_tensor_spec,
                preprocessing_layers=preprocessing_layers,
                preprocessing_combiner=preprocessing_combiner,
                fc_layer_params=fc_layer_params,
                activation_fn=activation_fn,
                kernel_initializer=kernel_initializer,
                name="encoder",
                conv_layer_params=conv_layer_params,
                dropout_layer_params=dropout_layer_params,
                weight_decay_params=weight_decay_params,
                batch_squash=batch_squash,
                dtype=dtype,
                owner_name=name,
            )
        self._action_layers = [
            tf_keras.layers.Dense(
                max(1, spec.shape.num_elements()),
                activation=tf.nn.tanh,
                kernel_initializer=last_kernel_initializer
                or tf_keras.initializers.RandomUniform(minval=-0.003, maxval=0.003),
                dtype=dtype,
                name=f"action_{i}",
            )
            for i, spec in enumerate(nest.flatten(output_tensor_spec))
        ]
        self.create_variables()

    @property
    def output_tensor_spec(self) -> Any:
        return self._output_tensor_spec

    def call(self, observation, step_type=None, network_state=(), training=False):
        encoded, _ = self._encoder(observation, step_type=step_type, training=training)
        actions = []
        for spec, layer, (low, high) in zip(
            nest.flatten(self._output_tensor_spec), self._action_layers, self._bounds, strict=True
        ):
            squashed = reshape_inner(layer(encoded, training=training), spec.shape)
            actions.append(tf.cast(spec_utils.scale_to_spec(squashed, low, high), spec.dtype))
        return nest.pack_sequence_as(self._output_tensor_spec, actions), network_state
