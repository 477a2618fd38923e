"""ActorDistributionRnnNetwork: an LSTM actor whose output is a nest of distributions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from toolkit.networks.actor_distribution_network import build_projections, project
from toolkit.networks.lstm_encoding_network import LSTMEncodingNetwork
from toolkit.networks.network import Network
from toolkit.specs import tensor_spec

__all__ = ["ActorDistributionRnnNetwork"]


class ActorDistributionRnnNetwork(Network):
    """Like ``ActorDistributionNetwork`` with an LSTM between encoder and projections.

    ``state_spec`` is ``((h, c),)`` per LSTM layer; the state resets on FIRST steps
    inside the call. Distributions as in ``ActorDistributionNetwork`` (Categorical
    unshifted; diagonal Normal with tanh-squashed loc), batch shape ``[B]`` for single
    steps and ``[B, T]`` for sequences.

    Args:
      input_tensor_spec: observation spec (nests allowed).
      output_tensor_spec: action spec (nests allowed).
      preprocessing_layers, preprocessing_combiner: see ``EncodingNetwork``.
      input_fc_layer_params: dense layers before the LSTM.
      lstm_size: units of each stacked LSTM layer (default ``(40,)``).
      conv_layer_params, input_dropout_layer_params, weight_decay_params,
        rnn_construction_fn, rnn_construction_kwargs, dtype: see ``LSTMEncodingNetwork``.
      output_fc_layer_params: dense layers after the LSTM.
      activation_fn: activation of the dense layers.
      kernel_initializer: dense layers' initializer.
      state_dependent_std, std_bias_initializer_value: see ``NormalProjectionNetwork``.
      name: module name.
    """

    def __init__(
        self,
        input_tensor_spec: Any,
        output_tensor_spec: Any,
        preprocessing_layers: Any = None,
        preprocessing_combiner: Callable[..., tf.Tensor] | None = None,
        input_fc_layer_params: Sequence[int] | None = (200, 100),
        lstm_size: Sequence[int] | None = None,
        output_fc_layer_params: Sequence[int] | None = (200, 100),
        activation_fn: Callable[[tf.Tensor], tf.Tensor] | None = tf.nn.relu,
        *,
        kernel_initializer: Any = None,
        conv_layer_params: Sequence[Sequence[Any]] | None = None,
        input_dropout_layer_params: Sequence[Any] | None = None,
        weight_decay_params: Sequence[float | None] | None = None,
        rnn_construction_fn: Callable[..., Any] | None = None,
        rnn_construction_kwargs: dict[str, Any] | None = None,
        dtype: Any = tf.float32,
        state_dependent_std: bool = False,
        std_bias_initializer_value: float = 0.0,
        name: str = "ActorDistributionRnnNetwork",
    ):
        output_tensor_spec = tensor_spec.from_spec(output_tensor_spec)
        # Specs are checked before any layer is built.
        projections = build_projections(
            output_tensor_spec,
            name,
            state_dependent_std=state_dependent_std,
            std_bias_initializer_value=std_bias_initializer_value,
        )
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
        self._set_untracked("_output_tensor_spec", output_tensor_spec)
        self._lstm = lstm
        self._projections = projections
        self.create_variables()

    @property
    def output_tensor_spec(self) -> Any:
        return self._output_tensor_spec

    def call(self, observation, step_type=None, network_state=(), training=False):
        encoded, next_state = self._lstm(
            observation, step_type=step_type, network_state=network_state, training=training
        )
        return project(self._output_tensor_spec, self._projections, encoded, training), next_state
