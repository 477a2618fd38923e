"""OUNoisePolicy: a policy's actions plus Ornstein-Uhlenbeck (temporally correlated) noise."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from toolkit import distribution_families as families
from toolkit import nest
from toolkit.errors import SpecError, UnsupportedError
from toolkit.policies import tf_policy
from toolkit.policies.gaussian_policy import noise_scales
from toolkit.policies.seeds import split_seed
from toolkit.policies.tf_policy import TFPolicy
from toolkit.specs import tensor_spec
from toolkit.trajectories.policy_step import PolicyStep

__all__ = ["OU_STATE_KEY", "OUNoisePolicy"]

#: The policy state entry holding the noise process.
OU_STATE_KEY = "ou_noise"
_WRAPPED_KEY = "wrapped"


class OUNoisePolicy(TFPolicy):
    """Adds Ornstein-Uhlenbeck noise to every float action of a wrapped policy.

    Per batch entry and action element, the noise follows
    ``x' = (1 - ou_damping) * x + ou_stddev * N(0, 1)`` from ``x = 0``, and the action is
    the wrapped action plus ``x'``. The noise lives in the policy state (entry
    ``"ou_noise"``, like the action spec; the wrapped policy's state, if any, is under
    ``"wrapped"``), so it is per batch entry and restarts from zero on FIRST steps. Its
    lag-1 autocorrelation is ``1 - ou_damping``.

    Args:
      wrapped_policy: a TFPolicy with float actions.
      ou_stddev: standard deviation of the noise's increments (number or nest).
      ou_damping: pull towards zero per step, in [0, 1] (number or nest).
      clip: clip the noisy actions to bounded specs.
      seed: seeds the policy's own generator.
      name: module name.
    """

    def __init__(
        self,
        wrapped_policy: TFPolicy,
        ou_stddev: Any = 1.0,
        ou_damping: Any = 1.0,
        clip: bool = True,
        *,
        seed: int | None = None,
        name: str | None = None,
    ):
        action_spec = wrapped_policy.action_spec
        stddevs = noise_scales(ou_stddev, action_spec, "OUNoisePolicy ou_stddev")
        dampings = noise_scales(ou_damping, action_spec, "OUNoisePolicy ou_damping")
        if any(np.any(d > 1) for d in dampings):
            raise SpecError(f"ou_damping: expected values in [0, 1], got {ou_damping}")
        noise_spec = nest.map_structure(
            lambda s: tensor_spec.TensorSpec(s.shape, s.dtype, name=OU_STATE_KEY), action_spec
        )
        state_spec = {OU_STATE_KEY: noise_spec}
        if wrapped_policy.is_stateful:
            state_spec[_WRAPPED_KEY] = wrapped_policy.policy_state_spec
        super().__init__(
            wrapped_policy.time_step_spec,
            action_spec,
            state_spec,
            tf_policy.without_log_probability(wrapped_policy.info_spec),
            clip=clip,
            validate_args=wrapped_policy.validate_args,
            seed=seed,
            name=name or f"OUNoise{wrapped_policy.name}",
        )
        self._wrapped_policy = wrapped_policy
        object.__setattr__(self, "_stddevs", stddevs)
        object.__setattr__(self, "_dampings", dampings)
        object.__setattr__(self, "_arguments", (ou_stddev, ou_damping))

    @property
    def wrapped_policy(self) -> TFPolicy:
        return self._wrapped_policy

    def _wrapped_state(self, policy_state: Any) -> Any:
        return policy_state[_WRAPPED_KEY] if self._wrapped_policy.is_stateful else ()

    def _state(self, noise: Any, wrapped_state: Any) -> dict[str, Any]:
        state = {OU_STATE_KEY: noise}
        if self._wrapped_policy.is_stateful:
            state[_WRAPPED_KEY] = wrapped_state
        return state

    def _action(self, time_step: Any, policy_state: Any, seed: tf.Tensor) -> PolicyStep:
        wrapped_seed, noise_seed = split_seed(seed, 2)
        step = self._wrapped_policy.action(
            time_step, self._wrapped_state(policy_state), seed=wrapped_seed
        )
        clean = nest.flatten(step.action)
        noise = nest.flatten(policy_state[OU_STATE_KEY])
        seeds = split_seed(noise_seed, len(clean))
        new_noise = [
            (1 - damping) * x + stddev * tf.random.stateless_normal(tf.shape(x), s, dtype=x.dtype)
            for x, s, stddev, damping in zip(
                noise, seeds, self._stddevs, self._dampings, strict=True
            )
        ]
        action = [a + x for a, x in zip(clean, new_noise, strict=True)]
        state = self._state(nest.pack_sequence_as(self.action_spec, new_noise), step.state)
        return PolicyStep(
            nest.pack_sequence_as(self.action_spec, action),
            state,
            tf_policy.strip_log_probability(step.info),
        )

    def _distribution(self, time_step: Any, policy_state: Any) -> PolicyStep:
        raise UnsupportedError(
            "OUNoisePolicy has no distribution(): its next state depends on the noise drawn; "
            "see distribution_params() and export_description()"
        )

    def _distribution_params(self, time_step: Any, policy_state: Any):
        params, wrapped_state, info = self._wrapped_policy.distribution_params(
            time_step, self._wrapped_state(policy_state)
        )
        # The noise passes through (already reset on FIRST): the runtime updates it.
        return params, self._state(policy_state[OU_STATE_KEY], wrapped_state), info

    def export_description(self) -> dict[str, Any]:
        """``{"kind": "ou_noise", "ou_stddev", "ou_damping", "state_key", "inner"}``."""
        stddev, damping = (
            nest.map_structure(lambda s: np.asarray(s).tolist(), a)
            if nest.is_nested(a) and nest.is_nested(self.action_spec)
            else np.asarray(a).tolist()
            for a in self._arguments
        )
        return {
            "kind": families.OU_NOISE,
            "clip": self._clip,
            "emit_log_probability": False,
            "ou_stddev": stddev,
            "ou_damping": damping,
            "state_key": OU_STATE_KEY,
            "inner": self._wrapped_policy.export_description(),
        }
