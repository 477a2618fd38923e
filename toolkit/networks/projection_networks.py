"""Projections from an encoding to a distribution over one action leaf.

The parameters are plain tensors that are easy to read off for export:
``Categorical.logits`` (shape ``[B] + spec.shape + [num_values]``) and, for continuous
actions, ``dist.distribution.loc`` / ``dist.distribution.scale`` (both ``[B] + spec.shape``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

from toolkit.distributions import utils as dist_utils
from toolkit.distributions.tanh_normal import TanhNormal
from toolkit.networks import spec_utils
from toolkit.networks.actor_network import reshape_inner

tfd = tfp.distributions

__all__ = [
    "CONTINUOUS_PROJECTIONS",
    "CategoricalProjectionNetwork",
    "NormalProjectionNetwork",
    "TanhNormalProjectionNetwork",
    "projection_for",
]


class CategoricalProjectionNetwork(tf.Module):
    """Logits for a bounded integer spec -> ``tfd.Categorical``.

    The Categorical is UNSHIFTED: its samples and mode are 0..num_values-1, and the
    policy adds ``spec.minimum`` to get actions. Its dtype is the spec's dtype.
    """

    def __init__(self, spec: Any, who: str, path: str = "action_spec", name: str = "categorical"):
        super().__init__(name=name)
        low, high = spec_utils.discrete_range(spec, who, path)
        self.num_values = high - low + 1
        object.__setattr__(self, "_spec", spec)
        self._layer = tf_keras.layers.Dense(
            max(1, spec.shape.num_elements()) * self.num_values,
            kernel_initializer=tf_keras.initializers.VarianceScaling(scale=0.1),
            name="logits",
        )

    def __call__(self, inputs: tf.Tensor, training: bool = False) -> tfd.Distribution:
        with self.name_scope:
            logits = reshape_inner(
                self._layer(inputs, training=training),
                [*self._spec.shape.as_list(), self.num_values],
            )
            return tfd.Categorical(logits=logits, dtype=self._spec.dtype)


class NormalProjectionNetwork(tf.Module):
    """A diagonal Normal over a bounded float spec, with event shape = spec shape.

    Returns ``tfd.Independent(tfd.Normal(loc, scale), reinterpreted_batch_ndims=rank)``:
    ``log_prob`` sums over the action's elements, giving ``[B]``. ``loc`` is squashed into
    the action range with tanh (``mean + magnitude * tanh(x)``, as TF-Agents'
    NormalProjectionNetwork with ``scale_distribution=False``); samples are NOT squashed
    (the policy clips). ``scale = softplus(s)``, where ``s`` is a learned
    state-independent vector by default (TF-Agents' default) or a dense output of the
    encoding with ``state_dependent_std=True``; ``s`` starts at
    ``std_bias_initializer_value`` (0.0 gives scale ln 2 ~ 0.69).
    """

    def __init__(
        self,
        spec: Any,
        who: str,
        path: str = "action_spec",
        *,
        state_dependent_std: bool = False,
        std_bias_initializer_value: float = 0.0,
        name: str = "normal",
    ):
        super().__init__(name=name)
        low, high = spec_utils.float_bounds(spec, who, path)
        object.__setattr__(self, "_spec", spec)
        object.__setattr__(self, "_bounds", (low, high))
        size = max(1, spec.shape.num_elements())
        self._means = tf_keras.layers.Dense(
            size, kernel_initializer=tf_keras.initializers.VarianceScaling(scale=0.1), name="loc"
        )
        self._state_dependent_std = state_dependent_std
        if state_dependent_std:
            self._stds = tf_keras.layers.Dense(
                size,
                kernel_initializer=tf_keras.initializers.VarianceScaling(scale=0.1),
                bias_initializer=tf_keras.initializers.Constant(std_bias_initializer_value),
                name="scale",
            )
        else:
            with tf.init_scope(), self.name_scope:
                self._std_bias = tf.Variable(
                    np.full(spec.shape.as_list(), std_bias_initializer_value, np.float32),
                    name="std_bias",
                )

    def __call__(self, inputs: tf.Tensor, training: bool = False) -> tfd.Distribution:
        with self.name_scope:
            return self._distribution(inputs, training)

    def _distribution(self, inputs: tf.Tensor, training: bool) -> tfd.Distribution:
        shape = self._spec.shape.as_list()
        low, high = self._bounds
        raw_means = reshape_inner(self._means(inputs, training=training), shape)
        loc = spec_utils.scale_to_spec(tf.nn.tanh(raw_means), low, high)
        if self._state_dependent_std:
            raw_stds = reshape_inner(self._stds(inputs, training=training), shape)
        else:
            # Broadcast so the exported scale has the same [B] + shape as loc.
            raw_stds = self._std_bias + tf.zeros_like(loc)
        scale = tf.nn.softplus(raw_stds)
        loc, scale = tf.cast(loc, self._spec.dtype), tf.cast(scale, self._spec.dtype)
        return dist_utils.independent(tfd.Normal(loc, scale), len(shape))


class TanhNormalProjectionNetwork(tf.Module):
    """A ``TanhNormal`` over a bounded float spec (SAC's actor head; TF-Agents'
    TanhNormalProjectionNetwork).

    One dense layer gives the pre-tanh ``loc`` and ``log(scale)`` per action element;
    ``log(scale)`` is clipped to ``[-20, 2]`` (TF-Agents' SAC ``std_clip_transform``),
    so the policy neither collapses to a point nor explodes early in training.
    """

    LOG_STD_RANGE = (-20.0, 2.0)

    def __init__(self, spec: Any, who: str, path: str = "action_spec", name: str = "tanh_normal"):
        super().__init__(name=name)
        low, high = spec_utils.float_bounds(spec, who, path)
        object.__setattr__(self, "_spec", spec)
        object.__setattr__(self, "_bounds", (low, high))
        self._size = max(1, spec.shape.num_elements())
        self._layer = tf_keras.layers.Dense(
            2 * self._size,
            kernel_initializer=tf_keras.initializers.VarianceScaling(scale=0.1),
            name="loc_and_log_scale",
        )

    def __call__(self, inputs: tf.Tensor, training: bool = False) -> tfd.Distribution:
        with self.name_scope:
            shape = self._spec.shape.as_list()
            outputs = self._layer(inputs, training=training)
            loc = reshape_inner(outputs[..., : self._size], shape)
            log_scale = reshape_inner(outputs[..., self._size :], shape)
            scale = tf.exp(tf.clip_by_value(log_scale, *self.LOG_STD_RANGE))
            low, high = self._bounds
            return TanhNormal(
                tf.cast(loc, self._spec.dtype),
                tf.cast(scale, self._spec.dtype),
                low,
                high,
                event_ndims=len(shape),
            )


#: ``continuous_projection`` values of the actor networks.
CONTINUOUS_PROJECTIONS = ("normal", "tanh_normal")


def projection_for(
    spec: Any,
    who: str,
    path: str,
    index: int,
    continuous_projection: str = "normal",
    **normal_kwargs: Any,
) -> tf.Module:
    """A Categorical projection for integer specs; for float specs a Normal one, or a
    TanhNormal one with ``continuous_projection="tanh_normal"``."""
    if tf.as_dtype(spec.dtype).is_integer:
        # normal_kwargs (std options) do not apply to discrete leaves.
        return CategoricalProjectionNetwork(spec, who, path, name=f"categorical_{index}")
    if continuous_projection == "tanh_normal":
        return TanhNormalProjectionNetwork(spec, who, path, name=f"tanh_normal_{index}")
    return NormalProjectionNetwork(spec, who, path, name=f"normal_{index}", **normal_kwargs)
