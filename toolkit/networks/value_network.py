"""ValueNetwork: one state value per observation, ``[B] + obs -> [B]`` (PPO's critic)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf
import tf_keras

from toolkit.errors import ArgumentError
from toolkit.networks.encoding_network import EncodingNetwork
from toolkit.networks.network import Network

__all__ = ["ValueNetwork"]


class ValueNetwork(Network):
    """Feed-forward state-value network (TF-Agents' ``ValueNetwork``).

    ``ValueNetwork.sharing(actor_network)`` puts the value head on the actor's own
    encoder instead (PPO with a shared torso): both losses train those layers.

    Args:
      input_tensor_spec: observation spec (nests are flattened and concatenated).
      fc_layer_params: units of the hidden dense layers.
      preprocessing_layers, preprocessing_combiner: see ``EncodingNetwork``.
      activation_fn: activation of the hidden layers.
      kernel_initializer: hidden layers' initializer.
      conv_layer_params, dropout_layer_params, weight_decay_params, batch_squash, dtype:
        see ``EncodingNetwork`` (convolutions for image observations).
      encoder: an existing ``EncodingNetwork`` to use (and share) instead of a new
        one; the layer options above must then be left at their defaults.
      name: module name.
    """

    def __init__(
        self,
        input_tensor_spec: Any,
        fc_layer_params: Sequence[int] | None = (75, 40),
        preprocessing_layers: Any = None,
        preprocessing_combiner: Callable[..., tf.Tensor] | None = None,
        activation_fn: Callable[[tf.Tensor], tf.Tensor] | None = tf.nn.relu,
        *,
        kernel_initializer: Any = None,
        conv_layer_params: Sequence[Sequence[Any]] | None = None,
        dropout_layer_params: Sequence[Any] | None = None,
        weight_decay_params: Sequence[float | None] | None = None,
        batch_squash: bool = True,
        dtype: Any = tf.float32,
        encoder: EncodingNetwork | None = None,
        name: str = "ValueNetwork",
    ):
        super().__init__(input_tensor_spec, state_spec=(), name=name)
        if encoder is not None:
            given = {
                "fc_layer_params": fc_layer_params != (75, 40),
                "preprocessing_layers": preprocessing_layers is not None,
                "preprocessing_combiner": preprocessing_combiner is not None,
                "activation_fn": activation_fn is not tf.nn.relu,
                "kernel_initializer": kernel_initializer is not None,
                "conv_layer_params": bool(conv_layer_params),
                "dropout_layer_params": dropout_layer_params is not None,
                "weight_decay_params": weight_decay_params is not None,
            }
            clash = [k for k, v in given.items() if v]
            if clash:
                raise ArgumentError(
                    f"ValueNetwork: expected either encoder or {clash}, got both "
                    "(a shared encoder brings its own layers)"
                )
            self._encoder = encoder
        else:
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
        self._value_layer = tf_keras.layers.Dense(
            1,
            dtype=dtype,
            kernel_initializer=tf_keras.initializers.RandomUniform(minval=-0.03, maxval=0.03),
            name="value",
        )
        self.create_variables()

    @classmethod
    def sharing(cls, actor_network: Any, name: str = "ValueNetwork") -> ValueNetwork:
        """A value head on ``actor_network``'s encoder (its observation spec and layers)."""
        encoder = getattr(actor_network, "encoder", None)
        if not isinstance(encoder, EncodingNetwork):
            raise ArgumentError(
                f"ValueNetwork.sharing: expected a network with an EncodingNetwork "
                f"encoder (e.g. ActorDistributionNetwork), got {type(actor_network).__name__}"
            )
        return cls(actor_network.input_tensor_spec, encoder=encoder, name=name)

    def call(self, observation, step_type=None, network_state=(), training=False):
        encoded, _ = self._encoder(observation, step_type=step_type, training=training)
        return tf.squeeze(self._value_layer(encoded, training=training), -1), network_state
