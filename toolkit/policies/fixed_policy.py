"""FixedPolicy: always the same action, as TF-Agents' ``policies.fixed_policy``."""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from toolkit import nest
from toolkit.distributions import utils as dist_utils
from toolkit.policies.tf_policy import TFPolicy
from toolkit.trajectories.policy_step import PolicyStep

__all__ = ["FixedPolicy"]


class FixedPolicy(TFPolicy):
    """Returns ``actions`` for every batch entry; its distribution is a delta there.

    Args:
      actions: a nest like ``action_spec`` of values (converted to the specs' dtypes).
      time_step_spec: the TimeStep spec.
      action_spec: a nest of specs.
      emit_log_probability: add ``info["log_probability"]`` (0: the action is certain).
      policy_info: the info returned with every action (like ``info_spec``).
      info_spec: the spec of ``policy_info``.
      name: module name.
    """

    def __init__(
        self,
        actions: Any,
        time_step_spec: Any,
        action_spec: Any,
        emit_log_probability: bool = True,
        policy_info: Any = (),
        info_spec: Any = (),
        name: str | None = None,
    ):
        super().__init__(
            time_step_spec,
            action_spec,
            info_spec=info_spec,
            clip=False,
            emit_log_probability=emit_log_probability,
            name=name,
        )
        nest.assert_same_structure(actions, self.action_spec, "actions")
        with tf.init_scope():
            self._action_value = nest.map_structure(
                lambda value, spec: tf.convert_to_tensor(value, dtype=spec.dtype),
                nest.pack_sequence_as(
                    self.action_spec, nest.flatten_up_to(self.action_spec, actions)
                ),
                self.action_spec,
            )
        self._policy_info = policy_info

    def _actions_and_info(self, time_step: Any) -> tuple[Any, Any]:
        batch = tf.shape(time_step.step_type)[:1]
        action = nest.map_structure(
            lambda value: tf.broadcast_to(value, tf.concat([batch, tf.shape(value)], 0)),
            self._action_value,
        )
        info = nest.map_structure(
            lambda value: tf.broadcast_to(value, tf.concat([batch, tf.shape(value)], 0)),
            self._policy_info,
        )
        return action, info

    def _action(self, time_step: Any, policy_state: Any, seed: Any) -> PolicyStep:
        del seed
        action, info = self._actions_and_info(time_step)
        zeros = nest.map_structure(
            lambda _: tf.zeros(tf.shape(time_step.step_type)[:1], tf.float32), self.action_spec
        )
        return PolicyStep(action, policy_state, self._with_log_probability(info, zeros))

    def _distribution(self, time_step: Any, policy_state: Any) -> PolicyStep:
        action, info = self._actions_and_info(time_step)
        distributions = nest.map_structure_with_paths(
            lambda path, value, spec: dist_utils.as_action_distribution(value, spec, path),
            action,
            self.action_spec,
            prefix="action",
        )
        return PolicyStep(distributions, policy_state, info)
