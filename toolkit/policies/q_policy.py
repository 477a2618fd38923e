"""QPolicy: a categorical over Q-values used as logits (DQN's policy)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from toolkit import nest
from toolkit.distributions import utils as dist_utils
from toolkit.distributions.shifted_categorical import ShiftedCategorical
from toolkit.errors import SpecError, SpecMismatchError, StructureError
from toolkit.policies import tf_policy
from toolkit.policies.tf_policy import TFPolicy
from toolkit.specs import tensor_spec
from toolkit.trajectories.policy_step import PolicyStep

tfd = tfp.distributions

__all__ = ["QPolicy"]


class QPolicy(TFPolicy):
    """Samples actions from ``Categorical(logits=Q(observation))``, shifted to the spec.

    Column ``i`` of the Q network's output is the action ``minimum + i``: action specs
    need not start at zero (the TF-Agents policies tutorial's ``minimum=-1, maximum=1``
    gives actions -1, 0, 1) and may have shape () or (1,) (or any shape, with Q-values
    ``[B] + shape + [n]``).

    Args:
      time_step_spec: the TimeStep spec.
      action_spec: a single bounded integer spec (possibly in a one-leaf nest).
      q_network: a Network called as ``q_network(observation, step_type=...,
        network_state=...)`` returning ``(q_values, next_state)``; its ``state_spec`` is
        the policy state spec.
      emit_log_probability: add ``info["log_probability"]``.
      observation_and_action_constraint_splitter: ``observation -> (observation, mask)``
        where ``mask[..., i]`` is 1 for allowed actions ``minimum + i``; disallowed
        actions get the lowest logit.
      validate_args: check inputs against the specs.
      seed: seeds the policy's own generator.
      name: module name.

    Raises:
      SpecError / SpecMismatchError: at construction, for a non-discrete action spec or
        a network whose number of Q-values differs from the number of actions.
    """

    def __init__(
        self,
        time_step_spec: Any,
        action_spec: Any,
        q_network: Any,
        emit_log_probability: bool = False,
        observation_and_action_constraint_splitter: Callable[[Any], Any] | None = None,
        validate_args: bool = True,
        *,
        seed: int | None = None,
        name: str | None = None,
    ):
        leaves = nest.flatten(action_spec)
        if len(leaves) != 1:
            raise SpecError(
                "QPolicy: Only scalar actions are supported: expected a single discrete "
                f"action spec, got {len(leaves)} specs"
            )
        spec = tensor_spec.from_spec(leaves[0])
        self._low, self._high = tf_policy.discrete_range(spec, "action_spec")
        self._num_actions = self._high - self._low + 1
        super().__init__(
            time_step_spec,
            action_spec,
            policy_state_spec=getattr(q_network, "state_spec", ()),
            clip=False,  # sampled actions are in range by construction
            emit_log_probability=emit_log_probability,
            validate_args=validate_args,
            seed=seed,
            name=name,
        )
        self._spec = spec
        self._q_network = q_network
        self._splitter = observation_and_action_constraint_splitter
        self._check_q_network()

    @property
    def q_network(self) -> Any:
        return self._q_network

    @property
    def num_actions(self) -> int:
        return self._num_actions

    def _check_q_network(self) -> None:
        """Fails at construction when the network's Q-values don't match the actions, or
        its own ``action_spec`` (when it declares one) is not compatible with the policy's."""
        network_spec = getattr(self._q_network, "action_spec", None)
        if network_spec is not None:
            network_leaves = nest.flatten(tensor_spec.from_spec(network_spec))
            if len(network_leaves) != 1 or not self._spec.is_compatible_with(network_leaves[0]):
                raise SpecMismatchError(
                    "q_network",
                    f"an action_spec compatible with the policy's {self._spec} (action_spec "
                    "must be compatible with q_network.action_spec)",
                    f"{network_spec}",
                )
        expected = self._num_actions
        what = f"{expected} Q values (one per action from {self._low} to {self._high})"
        declared = getattr(self._q_network, "num_actions", None)
        if isinstance(declared, (int, np.integer)) and int(declared) != expected:
            raise SpecMismatchError("q_network", what, f"num_actions={int(declared)}")
        # Run the network once on a zero batch: catches networks that declare nothing.
        with tf.init_scope():
            observation = tensor_spec.zero_spec_nest(self.time_step_spec.observation, [1])
            if self._splitter is not None:
                observation, _ = self._splitter(observation)
            state = tensor_spec.zero_spec_nest(self.policy_state_spec, [1])
            q_values, _ = self._q_network(
                observation, step_type=tf.zeros([1], tf.int32), network_state=state
            )
        shape = tuple(q_values.shape.as_list()[1:])
        element_shape = tuple(self._spec.shape.as_list())
        accepted = {element_shape + (expected,)}
        if int(np.prod(element_shape)) == 1:
            accepted.add((expected,))
        if shape not in accepted:
            got = f"{shape[-1]}" if shape else "a scalar"
            raise SpecMismatchError(
                "q_network",
                what,
                f"{got} (Q values of shape {shape} per batch entry)",
            )

    def _q_logits(self, time_step: Any, policy_state: Any) -> tuple[tf.Tensor, Any]:
        observation = time_step.observation
        mask = None
        if self._splitter is not None:
            observation, mask = self._splitter(observation)
        q_values, state = self._q_network(
            observation, step_type=time_step.step_type, network_state=policy_state
        )
        logits = tf.reshape(q_values, [-1, *self._spec.shape.as_list(), self._num_actions])
        if mask is not None:
            mask = tf.reshape(tf.cast(mask, tf.bool), tf.shape(logits))
            logits = tf.where(mask, logits, tf.constant(logits.dtype.min, logits.dtype))
        return logits, state

    def _distribution(self, time_step: Any, policy_state: Any) -> PolicyStep:
        logits, state = self._q_logits(time_step, policy_state)
        if not self.is_stateful:
            state = ()
        elif not nest.flatten(state):
            raise StructureError("q_network state", "the next network state", "no state")
        distribution = dist_utils.independent(
            ShiftedCategorical(logits, shift=self._low, dtype=self._spec.dtype),
            self._spec.shape.rank,
        )
        action = nest.pack_sequence_as(self.action_spec, [distribution])
        return PolicyStep(action, state, ())
