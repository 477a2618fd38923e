"""DdpgAgent: deterministic policy gradients for continuous actions, trained in-graph.

Why DDPG (and not SAC) here: it trains exactly the pieces this project deploys. Its
policy is an ``ActorNetwork`` inside an ``ActorPolicy``, a deterministic graph that
exports to SavedModel and ONNX as it is, and its exploration is the ``OUNoisePolicy``
the TF-Agents policies tutorial uses; SAC would need a squashed-Gaussian actor network that the
deployment side does not otherwise need. On Pendulum-v1 DDPG learns a good swing-up
within about ten thousand environment steps.

The critic minimizes ``loss_fn(r + gamma * discount * Q'(s', mu'(s')) - Q(s, a))``; the
actor maximizes ``Q(s, mu(s))``, following the critic's action gradient (optionally
clipped, ``dqda_clipping``). Target networks follow with soft updates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

from toolkit import nest
from toolkit.agents import checkpoints, common
from toolkit.agents.common import LossInfo
from toolkit.errors import SpecError, UnsupportedError
from toolkit.policies import actor_policy, ou_noise_policy
from toolkit.replay_buffer import Experience
from toolkit.specs import tensor_spec

__all__ = ["DdpgAgent"]


class DdpgAgent(tf.Module):
    """DDPG over an ``ActorNetwork`` and a ``CriticNetwork``.

    Attributes:
      policy: ``ActorPolicy`` over the actor network (deterministic; for deployment).
      collect_policy: the same with Ornstein-Uhlenbeck exploration noise.
      train: a ``tf.function`` taking an ``Experience`` batch (``[B]`` or ``[K, B]``
        outer dims) and returning ``LossInfo(loss, {"critic_loss", "actor_loss"})``.
      train_step_counter: an int64 variable counting gradient steps.

    Args:
      time_step_spec: the environment's TimeStep spec.
      action_spec: bounded float action spec(s).
      actor_network: a stateless network ``observation -> actions`` within the bounds.
      critic_network: a stateless network ``(observation, action) -> [B]`` values.
      actor_optimizer, critic_optimizer: ``tf_keras`` optimizers.
      ou_stddev, ou_damping: the exploration noise (see ``OUNoisePolicy``).
      target_actor_network, target_critic_network: default to copies.
      target_update_tau, target_update_period: soft target updates.
      dqda_clipping: clip the critic's action gradient element-wise to this value.
      td_errors_loss_fn: element-wise critic loss of TD errors (default: squared error).
      gamma: the discount factor.
      reward_scale_factor: multiplies rewards in the target.
      gradient_clipping: clip each network's gradients to this global norm.
      train_step_counter: an int64 variable to count gradient steps in.
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
        *,
        ou_stddev: float = 0.2,
        ou_damping: float = 0.15,
        target_actor_network: Any = None,
        target_critic_network: Any = None,
        target_update_tau: float = 0.005,
        target_update_period: int = 1,
        dqda_clipping: float | None = None,
        td_errors_loss_fn: Callable[[tf.Tensor], tf.Tensor] | None = None,
        gamma: float = 0.99,
        reward_scale_factor: float = 1.0,
        gradient_clipping: float | None = None,
        train_step_counter: tf.Variable | None = None,
        jit_compile: bool = False,
        name: str = "DdpgAgent",
    ):
        super().__init__(name=name)
        for label, network in (("actor", actor_network), ("critic", critic_network)):
            if nest.flatten(getattr(network, "state_spec", ())):
                raise UnsupportedError(
                    f"DdpgAgent trains stateless networks; the {label} has state"
                )
        if not 0.0 < float(target_update_tau) <= 1.0:
            raise SpecError(
                f"target_update_tau: expected a value in (0, 1], got {target_update_tau}"
            )
        if int(target_update_period) < 1:
            raise SpecError(f"target_update_period: expected >= 1, got {target_update_period}")
        time_step_spec = tensor_spec.from_spec(time_step_spec)
        action_spec = tensor_spec.from_spec(action_spec)
        object.__setattr__(self, "_time_step_spec", time_step_spec)
        object.__setattr__(self, "_action_spec", action_spec)
        object.__setattr__(
            self, "_experience_spec", common.experience_tensor_spec(time_step_spec, action_spec)
        )
        self.actor_network = actor_network
        self.critic_network = critic_network
        self.target_actor_network = target_actor_network or actor_network.copy()
        self.target_critic_network = target_critic_network or critic_network.copy()
        self.actor_optimizer = actor_optimizer
        self.critic_optimizer = critic_optimizer
        self.train_step_counter = (
            train_step_counter
            if train_step_counter is not None
            else tf.Variable(0, dtype=tf.int64, trainable=False, name="train_step")
        )
        self._tau = float(target_update_tau)
        self._period = int(target_update_period)
        self._dqda_clipping = dqda_clipping
        self._loss_fn = td_errors_loss_fn or tf.square
        self._gamma = float(gamma)
        self._reward_scale = float(reward_scale_factor)
        self._clipping = gradient_clipping

        self.policy = actor_policy.ActorPolicy(time_step_spec, action_spec, actor_network)
        self.collect_policy = ou_noise_policy.OUNoisePolicy(
            actor_policy.ActorPolicy(time_step_spec, action_spec, actor_network),
            ou_stddev=ou_stddev,
            ou_damping=ou_damping,
        )
        actor_optimizer.build(actor_network.trainable_variables)
        critic_optimizer.build(critic_network.trainable_variables)
        self.initialize()
        # No autograph: the step uses explicit tf.while_loop/tf.cond, and spec errors raised
        # while tracing then reach the caller as they are.
        self.train = tf.function(self._train, jit_compile=bool(jit_compile), autograph=False)

    @property
    def time_step_spec(self) -> Any:
        return self._time_step_spec

    @property
    def action_spec(self) -> Any:
        return self._action_spec

    @property
    def experience_spec(self) -> Experience:
        return self._experience_spec

    def initialize(self) -> None:
        """Copies the networks' variables into the target networks."""
        common.soft_update(self.target_actor_network.variables, self.actor_network.variables, 1.0)
        common.soft_update(self.target_critic_network.variables, self.critic_network.variables, 1.0)

    def policy_config(self) -> dict[str, Any]:
        """The policy_spec.json content that lets ``checkpoints.load_policy`` rebuild ``policy``."""
        return checkpoints.policy_config(
            "ddpg", self._time_step_spec, self._action_spec, {"actor_network": self.actor_network}
        )

    # --- training ---------------------------------------------------------------------

    def _train(self, experience: Experience) -> LossInfo:
        outer_rank = common.check_experience(experience, self._experience_spec, "DdpgAgent")
        return common.run_batches(
            experience, outer_rank, self._train_step, ("critic_loss", "actor_loss")
        )

    def _train_step(self, experience: Experience) -> LossInfo:
        critic_variables = self.critic_network.trainable_variables
        with tf.GradientTape() as tape:
            critic_loss = self._critic_loss(experience)
        self._apply(
            tape.gradient(critic_loss, critic_variables), critic_variables, self.critic_optimizer
        )

        actor_variables = self.actor_network.trainable_variables
        with tf.GradientTape() as tape:
            actor_loss = self._actor_loss(experience)
        self._apply(
            tape.gradient(actor_loss, actor_variables), actor_variables, self.actor_optimizer
        )

        self.train_step_counter.assign_add(1)
        self._update_targets()
        total = critic_loss + actor_loss
        return LossInfo(total, {"critic_loss": critic_loss, "actor_loss": actor_loss})

    def _apply(self, gradients, variables, optimizer) -> None:
        if self._clipping is not None:
            gradients, _ = tf.clip_by_global_norm(gradients, self._clipping)
        optimizer.apply_gradients(zip(gradients, variables, strict=True))

    def _critic_loss(self, experience: Experience) -> tf.Tensor:
        next_actions, _ = self.target_actor_network(experience.next_observation)
        next_q, _ = self.target_critic_network((experience.next_observation, next_actions))
        target = tf.stop_gradient(
            self._reward_scale * experience.reward + self._gamma * experience.discount * next_q
        )
        q, _ = self.critic_network((experience.observation, experience.action), training=True)
        return tf.reduce_mean(self._loss_fn(target - q))

    def _actor_loss(self, experience: Experience) -> tf.Tensor:
        actions, _ = self.actor_network(experience.observation, training=True)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(actions)
            q, _ = self.critic_network((experience.observation, actions))
        dqdas = tape.gradient(q, actions)
        loss = 0.0
        for dqda, action in zip(nest.flatten(dqdas), nest.flatten(actions), strict=True):
            if self._dqda_clipping is not None:
                dqda = tf.clip_by_value(dqda, -self._dqda_clipping, self._dqda_clipping)
            # Moves each action along dQ/da: the gradient of this loss is -dQ/da.
            target = tf.stop_gradient(action + dqda)
            per_row = tf.reduce_sum(
                tf.reshape(tf.square(target - action), [tf.shape(action)[0], -1]), axis=-1
            )
            loss += 0.5 * tf.reduce_mean(per_row)
        return loss

    def _update_targets(self) -> None:
        def update() -> None:
            common.soft_update(
                self.target_actor_network.variables, self.actor_network.variables, self._tau
            )
            common.soft_update(
                self.target_critic_network.variables, self.critic_network.variables, self._tau
            )

        if self._period == 1:
            update()
        else:
            tf.cond(tf.equal(self.train_step_counter % self._period, 0), update, lambda: None)
