"""QNetwork: one Q-value per discrete action, ``[B] + obs -> [B, num_actions]``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf
import tf_keras

from toolkit.errors import SpecError
from toolkit.networks import spec_utils
from toolkit.networks.encoding_network import EncodingNetwork
from toolkit.networks.network import Network
from toolkit.specs import tensor_spec

__all__ = ["QNetwork", "q_value_layer"]


def q_value_layer(
    num_actions: int, name: str = "q_values", activation: Any = None, dtype: Any = tf.float32
) -> tf_keras.layers.Dense:
    """The last layer of Q networks: small uniform weights, bias -0.2 (as TF-Agents)."""
    return tf_keras.layers.Dense(
        num_actions,
        activation=activation,
        dtype=dtype,
        kernel_initializer=tf_keras.initializers.RandomUniform(minval=-0.03, maxval=0.03),
        bias_initializer=tf_keras.initializers.Constant(-0.2),
        name=name,
    )


def check_num_actions(who: str, action_spec: Any, num_actions: int | None) -> int:
    """The number of actions of ``action_spec``; an explicit ``num_actions`` must agree."""
    spec_actions, low, high = spec_utils.single_discrete_action(action_spec, who)
    if num_actions is not None and int(num_actions) != spec_actions:
        raise SpecError(
            f"{who}: num_actions={int(num_actions)} but {spec_utils.spec_label(action_spec)} "
            f"has {spec_actions} actions (minimum {low}, maximum {high})"
        )
    return spec_actions


class QNetwork(Network):
    """Feed-forward Q network.

    The output has one column per action of the bounded integer ``action_spec``, whose
    range may start anywhere: for ``minimum=-1, maximum=1`` column 0 is action -1. The
    policy maps columns to actions (``argmax + minimum``). Action specs of shape (1,)
    give ``[B, num_actions]`` too, not ``[B, 1, num_actions]``.

    Args:
      input_tensor_spec: observation spec (nests allowed: leaves are flattened and
        concatenated unless ``preprocessing_combiner`` says otherwise).
      action_spec: a single bounded integer spec of shape () or (1,).
      fc_layer_params: units of the hidden dense layers.
      preprocessing_layers: optional layer per observation leaf (a nest like the spec).
      preprocessing_combiner: optional callable merging the list of flattened leaves.
      activation_fn: activation of the hidden layers.
      num_actions: optional; must equal ``maximum - minimum + 1`` of ``action_spec``.
      kernel_initializer: hidden layers' initializer (default: He truncated normal).
      conv_layer_params, dropout_layer_params, weight_decay_params, batch_squash, dtype:
        see ``EncodingNetwork`` (convolutions for image observations).
      q_layer_activation_fn: activation of the Q-value layer (default none).
      name: module name.

    Raises:
      SpecError: at construction, for unsupported action specs or a ``num_actions``
        that disagrees with the spec.
    """

    def __init__(
        self,
        input_tensor_spec: Any,
        action_spec: Any,
        fc_layer_params: Sequence[int] | None = (75, 40),
        preprocessing_layers: Any = None,
        preprocessing_combiner: Callable[..., tf.Tensor] | None = None,
        activation_fn: Callable[[tf.Tensor], tf.Tensor] | None = tf.nn.relu,
        *,
        num_actions: int | None = None,
        kernel_initializer: Any = None,
        conv_layer_params: Sequence[Sequence[Any]] | None = None,
        dropout_layer_params: Sequence[Any] | None = None,
        weight_decay_params: Sequence[float | None] | None = None,
        batch_squash: bool = True,
        dtype: Any = tf.float32,
        q_layer_activation_fn: Callable[[tf.Tensor], tf.Tensor] | None = None,
        name: str = "QNetwork",
    ):
        # Checked before anything is built: a wrong spec must fail here, not in a matmul.
        checked_num_actions = check_num_actions(name, action_spec, num_actions)
        super().__init__(input_tensor_spec, state_spec=(), name=name)
        self._num_actions = checked_num_actions
        self._set_untracked("_action_spec", tensor_spec.from_spec(action_spec))
        with self.name_scope:  # nests the encoder's variable names under this network's
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
        self._q_layer = q_value_layer(
            self._num_actions, activation=q_layer_activation_fn, dtype=dtype
        )
        self.create_variables()

    @property
    def num_actions(self) -> int:
        return self._num_actions

    @property
    def action_spec(self) -> Any:
        return self._action_spec

    def call(self, observation, step_type=None, network_state=(), training=False):
        encoded, _ = self._encoder(observation, step_type=step_type, training=training)
        return self._q_layer(encoded, training=training), network_state
