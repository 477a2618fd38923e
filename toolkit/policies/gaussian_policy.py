"""GaussianPolicy: a policy's actions plus Gaussian exploration noise."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from toolkit import distribution_families as families
from toolkit import nest
from toolkit.distributions import utils as dist_utils
from toolkit.errors import SpecError, UnsupportedError
from toolkit.policies import tf_policy
from toolkit.policies.seeds import split_seed
from toolkit.policies.tf_policy import TFPolicy
from toolkit.trajectories.policy_step import PolicyStep

tfd = tfp.distributions

__all__ = ["GaussianPolicy", "noise_scales"]


def noise_scales(scale: Any, action_spec: Any, what: str) -> list[np.ndarray]:
    """One float array per action leaf from a number, an array, or a nest like the spec."""
    leaves = nest.flatten_with_paths(action_spec, "action")
    for path, spec in leaves:
        if not spec.dtype.is_floating:
            raise SpecError(f"{path}: {what} adds noise to float actions, got {spec.dtype.name}")
    # For a single action leaf, a list is an array of per-element scales.
    if nest.is_nested(action_spec) and nest.is_nested(scale):
        nest.assert_same_structure(scale, action_spec, what)
        values = nest.flatten(scale)
    else:
        values = [scale] * len(leaves)
    out = []
    for (path, spec), value in zip(leaves, values, strict=True):
        array = np.asarray(value, spec.dtype.as_numpy_dtype)
        if np.any(array < 0) or not np.all(np.isfinite(array)):
            raise SpecError(f"{path}: {what} expected a finite non-negative scale, got {value}")
        try:
            np.broadcast_to(array, spec.shape.as_list())
        except ValueError as error:
            raise SpecError(
                f"{path}: {what} scale of shape {array.shape} does not broadcast to the "
                f"action shape {tuple(spec.shape.as_list())}"
            ) from error
        out.append(array)
    return out


class GaussianPolicy(TFPolicy):
    """Adds ``N(0, scale)`` noise to every float action of a wrapped policy.

    ``distribution()`` is defined when the wrapped distributions are Deterministic
    (giving ``Normal(loc, scale)``) or Normal (giving ``Normal(loc, sqrt(s^2 +
    scale^2))``). The emitted log-probability is that of the noise, i.e. of the action
    given the wrapped policy's action (the exact one for deterministic wrapped policies).

    Args:
      wrapped_policy: a TFPolicy with float actions.
      scale: the noise's standard deviation: a number or a nest like the action spec.
      clip: clip the noisy actions to bounded specs.
      emit_log_probability: add ``info["log_probability"]``.
      seed: seeds the policy's own generator.
      name: module name.
    """

    def __init__(
        self,
        wrapped_policy: TFPolicy,
        scale: Any = 1.0,
        clip: bool = True,
        emit_log_probability: bool = False,
        *,
        seed: int | None = None,
        name: str | None = None,
    ):
        super().__init__(
            wrapped_policy.time_step_spec,
            wrapped_policy.action_spec,
            wrapped_policy.policy_state_spec,
            tf_policy.without_log_probability(wrapped_policy.info_spec),
            clip=clip,
            emit_log_probability=emit_log_probability,
            automatic_state_reset=wrapped_policy.automatic_state_reset,
            validate_args=wrapped_policy.validate_args,
            seed=seed,
            name=name or f"Gaussian{wrapped_policy.name}",
        )
        self._wrapped_policy = wrapped_policy
        object.__setattr__(self, "_scales", noise_scales(scale, self.action_spec, "GaussianPolicy"))
        object.__setattr__(self, "_scale_argument", scale)

    @property
    def wrapped_policy(self) -> TFPolicy:
        return self._wrapped_policy

    def _action(self, time_step: Any, policy_state: Any, seed: tf.Tensor) -> PolicyStep:
        wrapped_seed, noise_seed = split_seed(seed, 2)
        step = self._wrapped_policy.action(time_step, policy_state, seed=wrapped_seed)
        clean = nest.flatten(step.action)
        seeds = split_seed(noise_seed, len(clean))
        noisy = [
            a + tf.random.stateless_normal(tf.shape(a), seed=s, dtype=a.dtype) * scale
            for a, s, scale in zip(clean, seeds, self._scales, strict=True)
        ]
        info = tf_policy.strip_log_probability(step.info)
        if self._emit_log_probability:
            log_probs = [
                _normal(a, scale).log_prob(x)
                for a, x, scale in zip(clean, noisy, self._scales, strict=True)
            ]
            info = self._with_log_probability(
                info, nest.pack_sequence_as(self.action_spec, log_probs)
            )
        return PolicyStep(nest.pack_sequence_as(self.action_spec, noisy), step.state, info)

    def _distribution(self, time_step: Any, policy_state: Any) -> PolicyStep:
        step = self._wrapped_policy.distribution(time_step, policy_state)
        out = []
        for (path, _), d, scale in zip(
            nest.flatten_with_paths(self.action_spec, "action"),
            nest.flatten(step.action),
            self._scales,
            strict=True,
        ):
            base = dist_utils.unwrap_independent(d)
            if dist_utils.is_instance(base, tfd.Deterministic):
                out.append(_normal(base.loc, scale))
            elif dist_utils.is_instance(base, tfd.Normal):
                out.append(_normal(base.loc, tf.sqrt(tf.square(base.scale) + scale**2)))
            else:
                raise UnsupportedError(
                    f"{path}: GaussianPolicy.distribution() needs a Deterministic or Normal "
                    f"wrapped distribution, got {type(base).__name__}"
                )
        return PolicyStep(
            nest.pack_sequence_as(self.action_spec, out),
            step.state,
            tf_policy.strip_log_probability(step.info),
        )

    def _distribution_params(self, time_step: Any, policy_state: Any):
        return self._wrapped_policy.distribution_params(time_step, policy_state)

    def export_description(self) -> dict[str, Any]:
        """``{"kind": "gaussian_noise", "scale": ..., "inner": <wrapped description>}``."""
        scale = self._scale_argument
        scale = (
            nest.map_structure(lambda s: np.asarray(s).tolist(), scale)
            if nest.is_nested(scale) and nest.is_nested(self.action_spec)
            else np.asarray(scale).tolist()
        )
        return {
            "kind": families.GAUSSIAN_NOISE,
            "clip": self._clip,
            "emit_log_probability": self._emit_log_probability,
            "scale": scale,
            "inner": self._wrapped_policy.export_description(),
        }


def _normal(loc: tf.Tensor, scale: Any) -> tfd.Distribution:
    loc = tf.convert_to_tensor(loc)
    scale = tf.broadcast_to(tf.cast(scale, loc.dtype), tf.shape(loc))
    return dist_utils.independent(tfd.Normal(loc, scale), loc.shape.rank - 1)
