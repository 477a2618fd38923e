"""ValueRnnNetwork: an LSTM state-value network, ``([B] + obs, state) -> ([B], state)``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf
import tf_keras

from toolkit.networks.lstm_encoding_network import LSTMEncodingNetwork
from toolkit.networks.network import Network

__all__ = ["ValueRnnNetwork"]


class ValueRnnNetwork(Network):
    """One state value per observation from an LSTM encoding (TF-Agents' ValueRnnNetwork).

    Output ``[B]`` for single steps, ``[B, T]`` for sequences; the state is the LSTM's
    (see ``LSTMEncodingNetwork``), reset on FIRST steps inside the call.

    Args:
      input_tensor_spec: observation spec (nests allowed).
      preprocessing_layers, preprocessing_combiner: see ``EncodingNetwork``.
      conv_layer_params: convolutions of the input encoder (image observations).
      input_fc_layer_params: dense layers before the LSTM.
      input_dropout_layer_params: dropout after each of those (see ``EncodingNetwork``).
      lstm_size: units of each stacked LSTM layer.
      output_fc_layer_params: dense layers after the LSTM.
      activation_fn: activation of the conv and dense layers.
      dtype: the layers' dtype.
      kernel_initializer, weight_decay_params, rnn_construction_fn,
        rnn_construction_kwargs: see ``LSTMEncodingNetwork``.
      name: module name.
    """

    def __init__(
        self,
        input_tensor_spec: Any,
        preprocessing_layers: Any = None,
        preprocessing_combiner: Callable[..., tf.Tensor] | None = None,
        conv_layer_params: Sequence[Sequence[Any]] | None = None,
        input_fc_layer_params: Sequence[int] | None = (75, 40),
        input_dropout_layer_params: Sequence[Any] | None = None,
        lstm_size: Sequence[int] | None = None,
        output_fc_layer_params: Sequence[int] | None = (75, 40),
        activation_fn: Callable[[tf.Tensor], tf.Tensor] | None = tf.nn.relu,
        dtype: Any = tf.float32,
        name: str = "ValueRnnNetwork",
        *,
        kernel_initializer: Any = None,
        weight_decay_params: Sequence[float | None] | None = None,
        rnn_construction_fn: Callable[..., Any] | None = None,
        rnn_construction_kwargs: dict[str, Any] | None = None,
    ):
        lstm = LSTMEncodingNetwork(
            input_tensor_spec,
            preprocessing_layers=preprocessing_layers,
            preprocessing_combiner=preprocessing_combiner,
            input_fc_layer_params=input_fc_layer_params,
            lstm_size=lstm_size,
            output_fc_layer_params=output_fc_layer_params,
            activation_fn=activation_fn,
            kernel_initializer=kernel_initializer,
            conv_layer_params=conv_layer_params,
            input_dropout_layer_params=input_dropout_layer_params,
            weight_decay_params=weight_decay_params,
            rnn_construction_fn=rnn_construction_fn,
            rnn_construction_kwargs=rnn_construction_kwargs,
            dtype=dtype,
            name=f"{name}_lstm",
            owner_name=name,
        )
        super().__init__(input_tensor_spec, state_spec=lstm.state_spec, name=name)
        self._lstm = lstm
        self._value_layer = tf_keras.layers.Dense(
            1,
            kernel_initializer=tf_keras.initializers.RandomUniform(minval=-0.03, maxval=0.03),
            dtype=dtype,
            name="value",
        )
        self.create_variables()

    def call(self, observation, step_type=None, network_state=(), training=False):
        encoded, next_state = self._lstm(
            observation, step_type=step_type, network_state=network_state, training=training
        )
        return tf.squeeze(self._value_layer(encoded, training=training), -1), next_state
