"""ActorDistributionNetwork: observations -> a nest of action distributions.

Integer action leaves get a ``tfd.Categorical`` over ``num_values = max - min + 1``
logits (UNSHIFTED: values 0..n-1, the policy adds the minimum); float leaves get a
diagonal Normal ``tfd.Independent(tfd.Normal(loc, scale))`` with event shape = spec
shape, loc tanh-squashed into the bounds (see ``projection_networks``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from toolkit import nest
from toolkit.errors import SpecError
from toolkit.networks.encoding_network import EncodingNetwork
from toolkit.networks.network import Network
from toolkit.networks.projection_networks import CONTINUOUS_PROJECTIONS, projection_for
from toolkit.specs import tensor_spec

__all__ = ["ActorDistributionNetwork", "build_projections", "project"]


def build_projections(
    output_tensor_spec: Any,
    who: str,
    *,
    state_dependent_std: bool = False,
    std_bias_initializer_value: float = 0.0,
    continuous_projection: str = "normal",
) -> list[tf.Module]:
    """One projection per action leaf, in canonical nest order."""
    if continuous_projection not in CONTINUOUS_PROJECTIONS:
        raise SpecError(
            f"{who}: continuous_projection: expected one of {list(CONTINUOUS_PROJECTIONS)}, "
            f"got {continuous_projection!r}"
        )
    return [
        projection_for(
            spec,
            who,
            path,
            index,
            continuous_projection=continuous_projection,
            state_dependent_std=state_dependent_std,
            std_bias_initializer_value=std_bias_initializer_value,
        )
        for index, (path, spec) in enumerate(
            nest.flatten_with_paths(output_tensor_spec, prefix="action_spec")
        )
    ]


def project(
    output_tensor_spec: Any, projections: Sequence[tf.Module], encoded: tf.Tensor, training: bool
) -> Any:
    """The nest of distributions for an encoding."""
    distributions = [p(encoded, training=training) for p in projections]
    return nest.pack_sequence_as(output_tensor_spec, distributions)


class ActorDistributionNetwork(Network):
    """Feed-forward actor whose output is a nest of ``tfp.distributions`` like the action spec.

    Args:
      input_tensor_spec: observation spec (nests are flattened and concatenated).
      output_tensor_spec: action spec (nests allowed): bounded integer leaves ->
        Categorical, bounded float leaves -> diagonal Normal.
      fc_layer_params: units of the hidden dense layers.
      preprocessing_layers, preprocessing_combiner: see ``EncodingNetwork``.
      activation_fn: activation of the hidden layers.
      kernel_initializer: hidden layers' initializer.
      conv_layer_params, dropout_layer_params, weight_decay_params, batch_squash, dtype:
        see ``EncodingNetwork`` (convolutions for image observations).
      state_dependent_std: Normal scales from a dense output instead of a learned vector.
      std_bias_initializer_value: initial pre-softplus scale parameter.
      continuous_projection: ``"normal"`` (above) or ``"tanh_normal"``: float leaves get a
        ``TanhNormal`` squashed into their bounds with state-dependent scales (SAC's
        actor; the std options do not apply).
      name: module name.

    Raises:
      SpecError: action leaves that are unbounded, have infinite float bounds, or
        integer leaves with per-element bounds.
    """

    def __init__(
        self,
        input_tensor_spec: Any,
        output_tensor_spec: Any,
        fc_layer_params: Sequence[int] | None = (200, 100),
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
        state_dependent_std: bool = False,
        std_bias_initializer_value: float = 0.0,
        continuous_projection: str = "normal",
        name: str = "ActorDistributionNetwork",
    ):
        output_tensor_spec = tensor_spec.from_spec(output_tensor_spec)
        super().__init__(input_tensor_spec, state_spec=(), name=name)
        self._set_untracked("_output_tensor_spec", output_tensor_spec)
        with self.name_scope:
            # The encoder first: variables are listed in the order layers are made.
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
            self._projections = build_projections(
                output_tensor_spec,
                name,
                state_dependent_std=state_dependent_std,
                std_bias_initializer_value=std_bias_initializer_value,
                continuous_projection=continuous_projection,
            )
        self.create_variables()

    @property
    def output_tensor_spec(self) -> Any:
        return self._output_tensor_spec

    @property
    def encoder(self) -> EncodingNetwork:
        """The hidden layers (``ValueNetwork.sharing`` puts a value head on them)."""
        return self._encoder

    def call(self, observation, step_type=None, network_state=(), training=False):
        encoded, _ = self._encoder(observation, step_type=step_type, training=training)
        return project(self._output_tensor_spec, self._projections, encoded, training), (
            network_state
        )
