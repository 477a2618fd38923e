"""DqnAgent: deep Q-learning with a target network, each train step a ``tf.function``.

The loss for a batch of ``Experience`` rows is the Huber loss (by default) between
``Q(s, a)`` and the target ``r + gamma * discount * V'(s')``, where ``V'(s')`` is
``max_a Q_target(s', a)``, or with ``double_dqn`` ``Q_target(s', argmax_a Q(s', a))``.
Rows written by ``ExperienceWriter`` with n-step returns already carry the summed
rewards and ``gamma**(n-1)`` in their discount, so the same target serves them.

With an ``observation_and_action_constraint_splitter`` (TF-Agents' argument) the
networks see the split observation and the mask restricts every choice of an action,
as in TF-Agents: the policies' greedy and epsilon-greedy choices, and the target's
argmax over the next observation's allowed actions (``V'(s') = Q_target(s', a*)``
with ``a*`` the best allowed action under the target, or under the online network
for Double DQN).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

from toolkit import nest
from toolkit.agents import checkpoints, common
from toolkit.agents.common import LossInfo
from toolkit.errors import SpecError, UnsupportedError
from toolkit.policies import epsilon_greedy_policy, greedy_policy, q_policy, tf_policy
from toolkit.replay_buffer import Experience

__all__ = ["DqnAgent"]


class DqnAgent(common.Agent):
    """DQN over a ``QNetwork`` for one discrete action.

    Attributes:
      policy: the greedy policy (for evaluation and deployment): argmax of Q.
      collect_policy: the epsilon-greedy policy used to collect experience.
      train: a ``tf.function`` taking an ``Experience`` batch (leaves ``[B] + spec`` for
        one gradient step, or ``[K, B] + spec`` for K steps in one call) and returning a
        ``LossInfo(loss, {"td_loss", "q_mean"})``.
      train_step_counter: an int64 variable counting gradient steps.

    Args:
      time_step_spec: the environment's TimeStep spec (array or tensor specs).
      action_spec: a bounded integer spec of shape () or (1,).
      q_network: a stateless Network returning ``[B, num_actions]`` Q-values.
      optimizer: a ``tf_keras`` optimizer (its variables are built here, eagerly).
      epsilon_greedy: exploration of ``collect_policy``: a float, a variable, or a
        no-argument callable (e.g. ``common.linear_decay`` over the train step).
      target_q_network: the target network; by default a copy of ``q_network``.
      target_update_tau: how far each target update moves towards the online network.
      target_update_period: update the target every this many gradient steps.
      gamma: the discount factor.
      td_errors_loss_fn: element-wise loss of the TD errors (default Huber, delta 1).
      double_dqn: pick the next action with the online network (Double DQN).
      gradient_clipping: clip gradients to this global norm (None: no clipping).
      reward_scale_factor: multiplies rewards in the target.
      observation_and_action_constraint_splitter: ``observation -> (network
        observation, mask)`` with ``mask[..., i]`` nonzero where action ``minimum + i``
        is allowed (e.g. ``GymEnvironment(..., action_mask=True)``'s); ``q_network``
        then takes the network observation. A ``toolkit.action_masks.MaskSplitter`` is
        saved with the policy checkpoints (other splitters need an export factory).
      train_step_counter: an int64 variable to count gradient steps in (e.g. shared
        with checkpoints); a new one by default.
      jit_compile: compile the train step with XLA.
      name: module name.
    """

    def __init__(
        self,
        time_step_spec: Any,
        action_spec: Any,
        q_network: Any,
        optimizer: Any,
        *,
        epsilon_greedy: float | tf.Variable | Callable[[], Any] = 0.1,
        target_q_network: Any = None,
        target_update_tau: float = 1.0,
        target_update_period: int = 1,
        gamma: float = 0.99,
        td_errors_loss_fn: Callable[[tf.Tensor], tf.Tensor] | None = None,
        double_dqn: bool = False,
        gradient_clipping: float | None = None,
        reward_scale_factor: float = 1.0,
        observation_and_action_constraint_splitter: Callable[[Any], Any] | None = None,
        train_step_counter: tf.Variable | None = None,
        jit_compile: bool = False,
        name: str = "DqnAgent",
    ):
        if nest.flatten(getattr(q_network, "state_spec", ())):
            raise UnsupportedError(
                "DqnAgent trains stateless Q networks; got one with state "
                f"{getattr(q_network, 'state_spec', None)} (recurrent DQN is not supported)"
            )
        common.check_target_update(target_update_tau, target_update_period)
        super().__init__(time_step_spec, action_spec, train_step_counter, name=name)
        time_step_spec, action_spec = self.time_step_spec, self.action_spec
        leaf = nest.flatten(action_spec)
        if len(leaf) != 1 or leaf[0].shape.num_elements() != 1:
            raise SpecError(
                f"DqnAgent: expected one discrete action of one element, got {action_spec}"
            )
        self._minimum, _ = tf_policy.discrete_range(leaf[0], "action_spec")
        self.q_network = q_network
        self.target_q_network = (
            target_q_network if target_q_network is not None else q_network.copy()
        )
        self.optimizer = optimizer
        self._tau = float(target_update_tau)
        self._period = int(target_update_period)
        self._gamma = float(gamma)
        self._loss_fn = td_errors_loss_fn or common.huber_loss
        self._double_dqn = bool(double_dqn)
        self._clipping = gradient_clipping
        self._reward_scale = float(reward_scale_factor)
        self._splitter = observation_and_action_constraint_splitter

        q = q_policy.QPolicy(
            time_step_spec,
            action_spec,
            q_network,
            observation_and_action_constraint_splitter=self._splitter,
        )
        self.policy = greedy_policy.GreedyPolicy(q)
        self.collect_policy = epsilon_greedy_policy.EpsilonGreedyPolicy(q, epsilon_greedy)
        # Optimizer slots exist before tracing, so train() creates no variables.
        optimizer.build(q_network.trainable_variables)
        self.initialize()
        self._make_train(self._train, jit_compile)

    def initialize(self) -> None:
        """Copies the online network's variables into the target network."""
        common.soft_update(self.target_q_network.variables, self.q_network.variables, 1.0)

    # --- training ---------------------------------------------------------------------

    def _train(self, experience: Experience) -> LossInfo:
        outer_rank = common.check_experience(experience, self._experience_spec, "DqnAgent")
        return common.run_batches(experience, outer_rank, self._train_step, ("td_loss", "q_mean"))

    def _train_step(self, experience: Experience) -> LossInfo:
        variables = self.q_network.trainable_variables
        with tf.GradientTape() as tape:
            loss, q_mean = self._loss(experience)
        common.apply_gradients(
            self.optimizer, tape.gradient(loss, variables), variables, self._clipping
        )
        self.train_step_counter.assign_add(1)
        self._update_targets([(self.target_q_network, self.q_network)], self._tau, self._period)
        return LossInfo(loss, {"td_loss": loss, "q_mean": q_mean})

    def _loss(self, experience: Experience) -> tuple[tf.Tensor, tf.Tensor]:
        """The mean TD loss of a ``[B]`` batch, and the mean Q(s, a) (for monitoring)."""
        action = tf.reshape(nest.flatten(experience.action)[0], [-1])
        index = tf.cast(action, tf.int32) - self._minimum
        observation, _ = self._split(experience.observation)
        q_values, _ = self.q_network(observation, training=True)
        q_values = tf.reshape(q_values, [tf.shape(index)[0], -1])
        chosen = tf.gather(q_values, index, batch_dims=1)
        target = tf.stop_gradient(self._target(experience))
        loss = tf.reduce_mean(self._loss_fn(target - chosen))
        return loss, tf.reduce_mean(chosen)

    def _split(self, observation: Any) -> tuple[Any, Any]:
        """``(network observation, mask or None)``."""
        if self._splitter is None:
            return observation, None
        return self._splitter(observation)

    def _target(self, experience: Experience) -> tf.Tensor:
        next_observation, mask = self._split(experience.next_observation)
        next_q, _ = self.target_q_network(next_observation)
        batch = tf.shape(experience.reward)[0]
        next_q = tf.reshape(next_q, [batch, -1])
        if self._double_dqn or mask is not None:
            chooser = next_q
            if self._double_dqn:
                online_q, _ = self.q_network(next_observation)
                chooser = tf.reshape(online_q, [batch, -1])
            if mask is not None:
                # TF-Agents' masking: disallowed actions at the lowest value, so the argmax
                # is the best allowed one (the first action where none is allowed).
                allowed = tf.reshape(tf.not_equal(mask, tf.zeros([], mask.dtype)), [batch, -1])
                chooser = tf.where(allowed, chooser, tf.constant(chooser.dtype.min, chooser.dtype))
            best = tf.argmax(chooser, axis=-1, output_type=tf.int32)
            next_value = tf.gather(next_q, best, batch_dims=1)
        else:
            next_value = tf.reduce_max(next_q, axis=-1)
        reward = self._reward_scale * experience.reward
        return reward + self._gamma * experience.discount * next_value

    def policy_config(self) -> dict[str, Any]:
        """The policy_spec.json content that lets ``checkpoints.load_policy`` rebuild ``policy``."""
        return checkpoints.policy_config(
            "dqn",
            self._time_step_spec,
            self._action_spec,
            {"q_network": self.q_network},
            splitter=self._splitter,
        )
