"""EpsilonGreedyPolicy: the greedy action, or with probability epsilon a random one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf
import tensorflow_probability as tfp

from toolkit import distribution_families as families
from toolkit import nest
from toolkit.distributions import utils as dist_utils
from toolkit.distributions.shifted_categorical import ShiftedCategorical
from toolkit.errors import SpecError, UnsupportedError
from toolkit.policies import tf_policy
from toolkit.policies.greedy_policy import GreedyPolicy
from toolkit.policies.random_tf_policy import RandomTFPolicy
from toolkit.policies.seeds import split_seed
from toolkit.policies.tf_policy import TFPolicy
from toolkit.specs import tensor_spec
from toolkit.trajectories.policy_step import PolicyStep

tfd = tfp.distributions

__all__ = ["EpsilonGreedyPolicy"]

Epsilon = float | tf.Variable | tf.Tensor | Callable[[], Any]


class EpsilonGreedyPolicy(TFPolicy):
    """Per batch entry: with probability ``epsilon`` a random action, else the greedy one.

    The greedy action is ``GreedyPolicy(policy)``'s (the mode of ``policy``); the random
    one is ``RandomTFPolicy``'s over the action spec, honouring ``policy``'s action mask
    (observation_and_action_constraint_splitter).

    Args:
      policy: the TFPolicy to be greedy about.
      epsilon: a float, a tf.Variable, or a callable returning the current epsilon
        (read at every call; inside ``tf.function`` it should return a tensor, e.g. read
        a variable, since Python values are frozen when the function is traced).
      exploration_mask: for a single discrete action, one 0/1 entry per action: the
        random branch draws among the allowed ones only (TF-Agents' exploration_mask).
      info_fields_to_inherit_from_greedy: TF-Agents' bandit option; the info here is
        always the greedy policy's, so only ``()`` is accepted.
      name: module name.
      emit_log_probability: add ``info.log_probability``: the exact log-probability of
        the action under the epsilon mixture (single discrete action leaf only). Default:
        as ``policy``, as in TF-Agents.
      seed: seeds the policy's own generator.
    """

    def __init__(
        self,
        policy: TFPolicy,
        epsilon: Epsilon,
        exploration_mask: Any = None,
        info_fields_to_inherit_from_greedy: Any = (),
        name: str | None = None,
        *,
        emit_log_probability: bool | None = None,
        seed: int | None = None,
    ):
        if tuple(info_fields_to_inherit_from_greedy):
            raise UnsupportedError(
                "info_fields_to_inherit_from_greedy: expected (), got "
                f"{tuple(info_fields_to_inherit_from_greedy)} (the info is always the greedy "
                "policy's here)"
            )
        if emit_log_probability is None:
            emit_log_probability = policy.emit_log_probability
        super().__init__(
            policy.time_step_spec,
            policy.action_spec,
            policy.policy_state_spec,
            tf_policy.without_log_probability(policy.info_spec),
            clip=False,  # both branches are already in bounds
            emit_log_probability=emit_log_probability,
            automatic_state_reset=policy.automatic_state_reset,
            validate_args=policy.validate_args,
            seed=seed,
            name=name or f"EpsilonGreedy{policy.name}",
        )
        if not callable(epsilon) and not isinstance(epsilon, (tf.Variable, tf.Tensor)):
            epsilon = float(epsilon)
            if not 0.0 <= epsilon <= 1.0:
                raise SpecError(f"epsilon: expected a probability in [0, 1], got {epsilon}")
        self._epsilon = epsilon
        self._splitter = policy.observation_and_action_constraint_splitter
        self._greedy_policy = GreedyPolicy(policy, emit_log_probability=False)
        self._random_policy = RandomTFPolicy(
            policy.time_step_spec,
            policy.action_spec,
            observation_and_action_constraint_splitter=self._splitter,
            validate_args=policy.validate_args,
            stationary_mask=exploration_mask,
        )
        leaves = nest.flatten(self.action_spec)
        self._single_discrete = (
            len(leaves) == 1
            and tensor_spec.is_integer_or_bool(leaves[0])
            and leaves[0].shape.num_elements() == 1
        )
        if emit_log_probability and not self._single_discrete:
            raise UnsupportedError(
                "EpsilonGreedyPolicy emits log-probabilities for a single discrete action "
                f"with one element, got {self.action_spec}"
            )

    @property
    def wrapped_policy(self) -> TFPolicy:
        return self._greedy_policy.wrapped_policy

    @property
    def greedy_policy(self) -> GreedyPolicy:
        return self._greedy_policy

    @property
    def epsilon(self) -> tf.Tensor:
        """The current epsilon, as a float32 tensor."""
        value = self._epsilon
        if callable(value) and not isinstance(value, tf.Variable):
            value = value()
        return tf.cast(tf.convert_to_tensor(value), tf.float32)

    def _action(self, time_step: Any, policy_state: Any, seed: tf.Tensor) -> PolicyStep:
        greedy_seed, random_seed, coin_seed = split_seed(seed, 3)
        greedy = self._greedy_policy.action(time_step, policy_state, seed=greedy_seed)
        random = self._random_policy.action(time_step, seed=random_seed)
        epsilon = self.epsilon
        explore = tf.random.stateless_uniform(tf.shape(time_step.step_type), seed=coin_seed)
        explore = explore < epsilon
        action = nest.map_structure(
            lambda g, r: tf.where(tf_policy.broadcast_rows(explore, g.shape.rank), r, g),
            greedy.action,
            random.action,
        )
        info = greedy.info
        if self._emit_log_probability:
            random_dist = nest.flatten(self._random_policy.distribution(time_step).action)[0]
            chosen = nest.flatten(action)[0]
            is_greedy = tf.reduce_all(
                tf.reshape(tf.equal(chosen, nest.flatten(greedy.action)[0]), [-1, 1]), axis=1
            )
            probability = (1.0 - epsilon) * tf.cast(is_greedy, tf.float32) + epsilon * tf.exp(
                random_dist.log_prob(chosen)
            )
            log_prob = nest.pack_sequence_as(self.action_spec, [tf.math.log(probability)])
            info = self._with_log_probability(info, log_prob)
        return PolicyStep(action, greedy.state, info)

    def _distribution(self, time_step: Any, policy_state: Any) -> PolicyStep:
        """A categorical mixing the greedy one-hot and the random policy's probabilities.

        Defined for a single discrete action with one element: then the epsilon coin and
        the action are one event. Otherwise the coin couples the leaves and no product
        of per-leaf distributions describes the policy.
        """
        if not self._single_discrete:
            raise UnsupportedError(
                "EpsilonGreedyPolicy.distribution() needs a single discrete action with one "
                f"element, got {self.action_spec}"
            )
        spec = nest.flatten(self.action_spec)[0]
        greedy = self._greedy_policy.distribution(time_step, policy_state)
        random = nest.flatten(self._random_policy.distribution(time_step).action)[0]
        random_base = dist_utils.unwrap_independent(random)
        probs = random_base.probs_parameter()  # [B, *S, n]
        n = probs.shape[-1]
        mode = nest.flatten(greedy.action)[0].mode()
        one_hot = tf.one_hot(tf.cast(mode, tf.int64) - random_base.shift, n, dtype=probs.dtype)
        epsilon = self.epsilon
        mixed = (1.0 - epsilon) * one_hot + epsilon * probs
        distribution = dist_utils.independent(
            ShiftedCategorical(tf.math.log(mixed), shift=random_base.shift, dtype=spec.dtype),
            spec.shape.rank,
        )
        return PolicyStep(
            nest.pack_sequence_as(self.action_spec, [distribution]), greedy.state, greedy.info
        )

    def _distribution_params(self, time_step: Any, policy_state: Any):
        greedy, state, info = self._greedy_policy.distribution_params(time_step, policy_state)
        random, _, _ = self._random_policy.distribution_params(time_step)
        return {"greedy": greedy, "random": random}, state, info

    def export_description(self) -> dict[str, Any]:
        """``{"kind": "epsilon_greedy", "epsilon": <current value>, "greedy", "random"}``."""
        return {
            "kind": families.EPSILON_GREEDY,
            "clip": self._clip,
            "emit_log_probability": self._emit_log_probability,
            "epsilon": self._epsilon
            if isinstance(self._epsilon, float)
            else float(self.epsilon.numpy()),
            "greedy": self._greedy_policy.export_description(),
            "random": self._random_policy.export_description(),
        }
