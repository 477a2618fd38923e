"""SacAgent: soft actor-critic for continuous actions, each train call a ``tf.function``.

The actor is an ``ActorDistributionNetwork`` with ``continuous_projection="tanh_normal"``:
a Normal squashed by tanh into the action bounds (the ``tanh_normal`` family, TF-Agents'
``SquashToSpecNormal``), so the policy it deploys is stochastic and exports as that
family's parameters; the runtime samples them with its own generator.

For a batch of ``Experience`` rows and temperature ``alpha = exp(log_alpha)``:

* critics (twins, each with a target network): ``Q_i(s, a)`` towards ``r + gamma *
  discount * (min_i Q'_i(s', a') - alpha * log pi(a'|s'))`` with ``a' ~ pi(.|s')``;
* actor: minimizes ``alpha * log pi(a|s) - min_i Q_i(s, a)`` over reparameterized
  samples ``a ~ pi(.|s)``;
* temperature: minimizes ``-log_alpha * (log pi(a|s) + target_entropy)``, which raises
  alpha while the policy's entropy is below ``target_entropy`` and lowers it above.

Target critics follow with soft updates. Samples in the train step come from the
agent's own ``tf.random.Generator`` (checkpointed with it, so a resumed run continues
the same stream).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from toolkit import nest
from toolkit.agents import checkpoints, common
from toolkit.agents.common import LossInfo
from toolkit.errors import SpecError, UnsupportedError
from toolkit.policies import actor_policy
from toolkit.replay_buffer import Experience

__all__ = ["SacAgent"]

_EXTRA = ("critic_loss", "actor_loss", "alpha_loss", "alpha", "entropy")


class SacAgent(common.Agent):
    """SAC over a squashed-Gaussian actor and two critics.

    Attributes:
      policy: ``ActorPolicy`` sampling the actor's TanhNormal (stochastic; deployed).
      collect_policy: another ``ActorPolicy`` over the same actor (its own generator).
      train: a ``tf.function`` taking an ``Experience`` batch (``[B]`` or ``[K, B]`` outer
        dims, K gradient steps per call) and returning ``LossInfo(loss, {"critic_loss",
        "actor_loss", "alpha_loss", "alpha", "entropy"})``; ``entropy`` is the batch's
        ``-mean(log pi(a|s))``.
      train_step_counter: an int64 variable counting gradient steps.
      log_alpha: the temperature's logarithm (a variable).

    Args:
      time_step_spec: the environment's TimeStep spec.
      action_spec: one bounded float action spec.
      actor_network: an ``ActorDistributionNetwork`` whose float leaf is a TanhNormal.
      critic_network: a stateless network ``(observation, action) -> [B]`` values.
      actor_optimizer, critic_optimizer, alpha_optimizer: ``tf_keras`` optimizers.
      critic_network_2: the second critic; by default a copy of ``critic_network`` with
        fresh weights.
      target_update_tau, target_update_period: soft updates of the target critics.
      initial_log_alpha: the temperature's starting logarithm.
      target_entropy: the entropy the temperature steers to; default ``-dim(action)``.
      gamma: the discount factor.
      reward_scale_factor: multiplies rewards in the target.
      gradient_clipping: clip each network's gradients to this global norm.
      train_step_counter: an int64 variable to count gradient steps in.
      seed: seeds the agent's sampling generator.
      jit_compile: compile the train step with XLA.
      name: module name.
    """

    def __init__(
        self,
        time_step_spec: Any,
        action_spec: Any,
        actor_network: Any,
        critic_network: Any,
        actor_optimizer: Any,
        critic_optimizer: Any,
        alpha_optimizer: Any,
        *,
        critic_network_2: Any = None,
        target_update_tau: float = 0.005,
        target_update_period: int = 1,
        initial_log_alpha: float = 0.0,
        target_entropy: float | None = None,
        gamma: float = 0.99,
        reward_scale_factor: float = 1.0,
        gradient_clipping: float | None = None,
        train_step_counter: tf.Variable | None = None,
        seed: int | None = None,
        jit_compile: bool = False,
        name: str = "SacAgent",
    ):
        for label, network in (("actor", actor_network), ("critic", critic_network)):
            if nest.flatten(getattr(network, "state_spec", ())):
                raise UnsupportedError(f"SacAgent trains stateless networks; the {label} has state")
        common.check_target_update(target_update_tau, target_update_period)
        super().__init__(time_step_spec, action_spec, train_step_counter, name=name)
        leaves = nest.flatten(self.action_spec)
        if len(leaves) != 1 or not leaves[0].dtype.is_floating:
            raise SpecError(f"SacAgent: expected one bounded float action spec, got {action_spec}")
        self.actor_network = actor_network
        self.critic_network_1 = critic_network
        # copy() rebuilds the layers: the twin starts from its own random weights.
        self.critic_network_2 = critic_network_2 or critic_network.copy(name="CriticNetwork2")
        self.target_critic_network_1 = critic_network.copy(name="TargetCriticNetwork1")
        self.target_critic_network_2 = self.critic_network_2.copy(name="TargetCriticNetwork2")
        self.actor_optimizer = actor_optimizer
        self.critic_optimizer = critic_optimizer
        self.alpha_optimizer = alpha_optimizer
        self.log_alpha = tf.Variable(float(initial_log_alpha), dtype=tf.float32, name="log_alpha")
        size = int(np.prod(leaves[0].shape.as_list()))
        self._target_entropy = float(-size if target_entropy is None else target_entropy)
        self._tau = float(target_update_tau)
        self._period = int(target_update_period)
        self._gamma = float(gamma)
        self._reward_scale = float(reward_scale_factor)
        self._clipping = gradient_clipping
        self.generator = (
            tf.random.Generator.from_seed(seed)
            if seed is not None
            else tf.random.Generator.from_non_deterministic_state()
        )

        self.policy = actor_policy.ActorPolicy(self.time_step_spec, self.action_spec, actor_network)
        self.collect_policy = actor_policy.ActorPolicy(
            self.time_step_spec, self.action_spec, actor_network
        )
        self._check_actor()
        actor_optimizer.build(actor_network.trainable_variables)
        critic_optimizer.build(self._critic_variables())
        alpha_optimizer.build([self.log_alpha])
        self.initialize()
        self._make_train(self._train, jit_compile)

    def _check_actor(self) -> None:
        observation = _zeros_like_spec(self.time_step_spec.observation)
        distribution, _ = self.actor_network(observation)
        if not hasattr(nest.flatten(distribution)[0], "sample"):
            raise SpecError(
                "SacAgent: actor_network must return a distribution (an "
                "ActorDistributionNetwork with continuous_projection='tanh_normal'), got "
                f"{type(nest.flatten(distribution)[0]).__name__}"
            )

    def _critic_variables(self) -> list[tf.Variable]:
        return list(self.critic_network_1.trainable_variables) + list(
            self.critic_network_2.trainable_variables
        )

    def initialize(self) -> None:
        """Copies the critics' variables into their target networks."""
        common.soft_update(
            self.target_critic_network_1.variables, self.critic_network_1.variables, 1.0
        )
        common.soft_update(
            self.target_critic_network_2.variables, self.critic_network_2.variables, 1.0
        )

    def policy_config(self) -> dict[str, Any]:
        """The policy_spec.json content that lets ``checkpoints.load_policy`` rebuild ``policy``."""
        return checkpoints.policy_config(
            "sac", self.time_step_spec, self.action_spec, {"actor_network": self.actor_network}
        )

    # --- training ---------------------------------------------------------------------

    def _train(self, experience: Experience) -> LossInfo:
        outer_rank = common.check_experience(experience, self.experience_spec, "SacAgent")
        return common.run_batches(experience, outer_rank, self._train_step, _EXTRA)

    def _sample(self, observation: Any) -> tuple[tf.Tensor, tf.Tensor]:
        """Reparameterized actions of the actor and their log-probabilities ``[B]``."""
        distribution, _ = self.actor_network(observation, training=True)
        distribution = nest.flatten(distribution)[0]
        seed = tf.cast(self.generator.make_seeds(1)[:, 0], tf.int32)
        action = distribution.sample(seed=seed)
        return action, distribution.log_prob(action)

    def _min_q(self, networks: tuple[Any, Any], observation: Any, action: tf.Tensor):
        q1, _ = networks[0]((observation, action))
        q2, _ = networks[1]((observation, action))
        return tf.minimum(q1, q2)

    def _train_step(self, experience: Experience) -> LossInfo:
        alpha = tf.exp(self.log_alpha)
        action = nest.flatten(experience.action)[0]

        next_action, next_log_prob = self._sample(experience.next_observation)
        next_q = self._min_q(
            (self.target_critic_network_1, self.target_critic_network_2),
            experience.next_observation,
            next_action,
        )
        target = tf.stop_gradient(
            self._reward_scale * experience.reward
            + self._gamma * experience.discount * (next_q - alpha * next_log_prob)
        )
        critic_variables = self._critic_variables()
        with tf.GradientTape() as tape:
            q1, _ = self.critic_network_1((experience.observation, action), training=True)
            q2, _ = self.critic_network_2((experience.observation, action), training=True)
            critic_loss = 0.5 * (
                tf.reduce_mean(tf.square(target - q1)) + tf.reduce_mean(tf.square(target - q2))
            )
        common.apply_gradients(
            self.critic_optimizer,
            tape.gradient(critic_loss, critic_variables),
            critic_variables,
            self._clipping,
        )

        actor_variables = self.actor_network.trainable_variables
        with tf.GradientTape() as tape:
            sampled, log_prob = self._sample(experience.observation)
            q = self._min_q(
                (self.critic_network_1, self.critic_network_2), experience.observation, sampled
            )
            actor_loss = tf.reduce_mean(alpha * log_prob - q)
        common.apply_gradients(
            self.actor_optimizer,
            tape.gradient(actor_loss, actor_variables),
            actor_variables,
            self._clipping,
        )

        entropy_gap = tf.stop_gradient(log_prob + self._target_entropy)
        with tf.GradientTape() as tape:
            alpha_loss = -tf.reduce_mean(self.log_alpha * entropy_gap)
        common.apply_gradients(
            self.alpha_optimizer,
            tape.gradient(alpha_loss, [self.log_alpha]),
            [self.log_alpha],
            None,
        )

        self.train_step_counter.assign_add(1)
        self._update_targets(
            [
                (self.target_critic_network_1, self.critic_network_1),
                (self.target_critic_network_2, self.critic_network_2),
            ],
            self._tau,
            self._period,
        )
        total = critic_loss + actor_loss + alpha_loss
        return LossInfo(
            total,
            {
                "critic_loss": critic_loss,
                "actor_loss": actor_loss,
                "alpha_loss": alpha_loss,
                "alpha": alpha,
                "entropy": -tf.reduce_mean(log_prob),
            },
        )


def _zeros_like_spec(spec: Any) -> Any:
    """A batch of one all-zero observation like ``spec`` (to probe a network's output)."""
    return nest.map_structure(lambda s: tf.zeros([1, *s.shape.as_list()], s.dtype), spec)
