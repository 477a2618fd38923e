"""GreedyPolicy: the mode of a policy's distribution, as a deterministic policy."""

from __future__ import annotations

from typing import Any

import tensorflow_probability as tfp

from toolkit import nest
from toolkit.distributions import utils as dist_utils
from toolkit.errors import UnsupportedError
from toolkit.policies import tf_policy
from toolkit.policies.tf_policy import TFPolicy
from toolkit.trajectories.policy_step import PolicyStep

tfd = tfp.distributions

__all__ = ["GreedyPolicy"]


class GreedyPolicy(TFPolicy):
    """Acts with ``policy.distribution().mode()``; its distribution is a delta there.

    Args:
      policy: a TFPolicy that implements ``distribution()``.
      emit_log_probability: default: as ``policy``. The log-probability of the mode
        under the delta distribution is 0.
      name: module name.
    """

    def __init__(
        self, policy: TFPolicy, emit_log_probability: bool | None = None, name: str | None = None
    ):
        if emit_log_probability is None:
            emit_log_probability = policy.emit_log_probability
        super().__init__(
            policy.time_step_spec,
            policy.action_spec,
            policy.policy_state_spec,
            tf_policy.without_log_probability(policy.info_spec),
            clip=True,  # a Normal's mode (its loc) may leave the bounds
            emit_log_probability=emit_log_probability,
            automatic_state_reset=policy.automatic_state_reset,
            validate_args=policy.validate_args,
            name=name or f"Greedy{policy.name}",
        )
        self._wrapped_policy = policy
        self._splitter = policy.observation_and_action_constraint_splitter

    @property
    def wrapped_policy(self) -> TFPolicy:
        return self._wrapped_policy

    def _distribution(self, time_step: Any, policy_state: Any) -> PolicyStep:
        step = self._wrapped_policy.distribution(time_step, policy_state)

        def delta(path: str, distribution: Any, spec: Any) -> Any:
            try:
                mode = distribution.mode()
            except NotImplementedError as error:
                raise UnsupportedError(
                    f"{path}: GreedyPolicy needs the mode of {type(distribution).__name__}, "
                    "which TFP does not define"
                ) from error
            return dist_utils.as_action_distribution(mode, spec, path)

        action = nest.map_structure_with_paths(
            delta, step.action, self.action_spec, prefix="action"
        )
        return PolicyStep(action, step.state, tf_policy.strip_log_probability(step.info))
