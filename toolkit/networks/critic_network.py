"""CriticNetwork: Q(s, a) for continuous actions (DDPG), ``((obs, action)) -> [B]``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf
import tf_keras

from toolkit.errors import StructureError
from toolkit.networks.encoding_network import EncodingNetwork, default_kernel_initializer
from toolkit.networks.network import Network

__all__ = ["CriticNetwork"]


class CriticNetwork(Network):
    """Observation and action encoders, concatenated, dense joint layers, one Q-value.

    Called as ``critic((observation, action), step_type)``; returns ``[B]`` values (or
    ``[B, T]`` for sequences). Nested observations or actions are flattened and
    concatenated; integer actions are cast to float.

    Args:
      input_tensor_spec: the pair ``(observation_spec, action_spec)``.
      observation_fc_layer_params: dense layers applied to the observation alone.
      action_fc_layer_params: dense layers applied to the action alone.
      joint_fc_layer_params: dense layers applied to both, concatenated.
      activation_fn: activation of the hidden layers.
      kernel_initializer: hidden layers' initializer.
      last_kernel_initializer: the value layer's (default uniform +-0.003, as DDPG).
      name: module name.
    """

    def __init__(
        self,
        input_tensor_spec: tuple[Any, Any],
        observation_fc_layer_params: Sequence[int] | None = (400,),
        action_fc_layer_params: Sequence[int] | None = None,
        joint_fc_layer_params: Sequence[int] | None = (300,),
        activation_fn: Callable[[tf.Tensor], tf.Tensor] | None = tf.nn.relu,
        *,
        kernel_initializer: Any = None,
        last_kernel_initializer: Any = None,
        name: str = "CriticNetwork",
    ):
        if not isinstance(input_tensor_spec, (tuple, list)) or len(input_tensor_spec) != 2:
            raise StructureError(
                f"{name}.input_tensor_spec",
                "a pair (observation_spec, action_spec)",
                f"a {type(input_tensor_spec).__name__}",
            )
        observation_spec, action_spec = input_tensor_spec
        super().__init__((observation_spec, action_spec), state_spec=(), name=name)
        initializer = kernel_initializer or default_kernel_initializer()
        with self.name_scope:
            self._observation_encoder = EncodingNetwork(
                observation_spec,
                fc_layer_params=observation_fc_layer_params,
                activation_fn=activation_fn,
                kernel_initializer=initializer,
                name="observation_encoder",
            )
            self._action_encoder = EncodingNetwork(
                action_spec,
                fc_layer_params=action_fc_layer_params,
                activation_fn=activation_fn,
                kernel_initializer=initializer,
                name="action_encoder",
            )
        self._joint_layers = [
            tf_keras.layers.Dense(
                int(units),
                activation=activation_fn,
                kernel_initializer=type(initializer).from_config(initializer.get_config())
                if isinstance(initializer, tf_keras.initializers.Initializer)
                else initializer,
                name=f"joint_{i}",
            )
            for i, units in enumerate(joint_fc_layer_params or ())
        ]
        self._value_layer = tf_keras.layers.Dense(
            1,
            kernel_initializer=last_kernel_initializer
            or tf_keras.initializers.RandomUniform(minval=-0.003, maxval=0.003),
            name="value",
        )
        self.create_variables()

    def call(self, observation, step_type=None, network_state=(), training=False):
        observations, actions = observation
        encoded_observation, _ = self._observation_encoder(observations, training=training)
        encoded_action, _ = self._action_encoder(actions, training=training)
        joint = tf.concat([encoded_observation, encoded_action], axis=-1)
        for layer in self._joint_layers:
            joint = layer(joint, training=training)
        return tf.squeeze(self._value_layer(joint, training=training), axis=-1), network_state
