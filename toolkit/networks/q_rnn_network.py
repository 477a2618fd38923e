"""QRnnNetwork: an LSTM Q network, ``([B] + obs, state) -> ([B, num_actions], state)``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from toolkit.networks.lstm_encoding_network import LSTMEncodingNetwork
from toolkit.networks.network import Network
from toolkit.networks.q_network import check_num_actions, q_value_layer
from toolkit.specs import tensor_spec

__all__ = ["QRnnNetwork"]


class QRnnNetwork(Network):
    """Q values from an LSTM encoding; the state resets on FIRST steps inside the call.

    ``state_spec`` is one ``(h, c)`` pair per LSTM layer (see ``LSTMEncodingNetwork``). Output
    ``[B, num_actions]`` for single steps, ``[B, T, num_actions]`` for sequences. Action
    specs and ``num_actions`` are checked as in ``QNetwork``.

    Args:
      input_tensor_spec: observation spec (nests allowed).
      action_spec: a single bounded integer spec of shape () or (1,).
      preprocessing_layers, preprocessing_combiner: see ``EncodingNetwork``.
      input_fc_layer_params: dense layers before the LSTM.
      lstm_size: units of each stacked LSTM layer (default ``(40,)``).
      conv_layer_params, input_dropout_layer_params, weight_decay_params,
        rnn_construction_fn, rnn_construction_kwargs, dtype: see ``LSTMEncodingNetwork``.
      output_fc_layer_params: dense layers after the LSTM.
      activation_fn: activation of the dense layers.
      num_actions: optional; must equal ``maximum - minimum + 1`` of ``action_spec``.
      kernel_initializer: dense layers' initializer.
      name: module name.
    """

    def __init__(
        self,
        input_tensor_spec: Any,
        action_spec: Any,
        preprocessing_layers: Any = None,
        preprocessing_combiner: Callable[..., tf.Tensor] | None = None,
        input_fc_layer_params: Sequence[int] | None = (75, 40),
        lstm_size: Sequence[int] | None = None,
        output_fc_layer_params: Sequence[int] | None = (75, 40),
        activation_fn: Callable[[tf.Tensor], tf.Tensor] | None = tf.nn.relu,
        *,
        num_actions: int | None = None,
        kernel_initializer: Any = None,
        conv_layer_params: Sequence[Sequence[Any]] | None = None,
        input_dropout_layer_params: Sequence[Any] | None = None,
        weight_decay_params: Sequence[float | None] | None = None,
        rnn_construction_fn: Callable[..., Any] | None = None,
        rnn_construction_kwargs: dict[str, Any] | None = None,
        dtype: Any = tf.float32,
        name: str = "QRnnNetwork",
    ):
        checked_num_actions = check_num_actions(name, action_spec, num_actions)
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
        self._num_actions = checked_num_actions
        self._set_untracked("_action_spec", tensor_spec.from_spec(action_spec))
        self._lstm = lstm
        self._q_layer = q_value_layer(checked_num_actions, dtype=dtype)
        self.create_variables()

    @property
    def num_actions(self) -> int:
        return self._num_actions

    @property
    def action_spec(self) -> Any:
        return self._action_spec

    def call(self, observation, step_type=None, network_state=(), training=False):
        encoded, next_state = self._lstm(
            observation, step_type=step_type, network_state=network_state, training=training
        )
        return self._q_layer(encoded, training=training), next_state
