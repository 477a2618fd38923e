"""PpoAgent: proximal policy optimization, a whole update per ``tf.function`` call.

One ``train`` call takes a ``Rollout`` of ``T`` steps of ``N`` environments (what
``training.train_on_policy`` collects with ``collect_policy``) and, inside the graph:

1. computes the rollout's log-probabilities under the current (= collecting) actor and
   the values of its observations and next observations;
2. computes GAE(lambda) advantages backwards over time and the value targets
   ``advantage + value``; an episode's last step bootstraps from its final observation
   when the episode was truncated (discount 1) and not when it terminated (discount 0);
3. runs ``num_epochs`` epochs of shuffled minibatches, each one gradient step on the
   clipped surrogate ``-min(r A, clip(r, 1 - eps, 1 + eps) A)`` (advantages normalized
   per minibatch), plus ``value_coef`` times the value loss, minus ``entropy_coef``
   times the entropy.

Steps where the environment reset instead of acting (``GymVectorEnvironment``'s
boundaries: the step after a LAST one) carry no experience: they have weight 0.

The actor is an ``ActorDistributionNetwork``: a Categorical for discrete actions, a
Normal (or TanhNormal) for continuous ones; the deployed ``policy`` samples it, so the
export is the distribution's parameters and the runtime samples them. For a Normal
actor the policy clips samples to the bounds and the losses see the clipped action
(the log-probability of the action the environment got).

With an ``observation_and_action_constraint_splitter`` (discrete actions) both networks
see the split observation and the actor's logits of disallowed actions are set to the
lowest float (TF-Agents' MaskedCategorical, here with the dtype's minimum as the
policies use): the policies never sample them, and the log-probabilities, ratios and
entropy of the losses are those of the masked distribution the policy sampled from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from toolkit import nest
from toolkit.agents import checkpoints, common
from toolkit.agents.common import LossInfo
from toolkit.errors import ArgumentError, SpecError, SpecMismatchError, UnsupportedError
from toolkit.policies import actor_policy
from toolkit.specs import tensor_spec

__all__ = ["PpoAgent", "Rollout", "gae", "rollout_spec"]

_EXTRA = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction")


class Rollout(NamedTuple):
    """``T`` steps of ``N`` environments; every leaf has outer dims ``[T, N]``.

    Attributes:
      observation: what the policy saw.
      action: what it did.
      reward: the reward of the step.
      discount: 0 where the episode terminated on this step, else 1.
      next_observation: the observation after the step (an episode's final one at its end).
      valid: 1.0 for real steps, 0.0 for reset boundaries (the step after a LAST one).
      last: 1.0 where the episode ended on this step (terminated or truncated).
    """

    observation: Any
    action: Any
    reward: Any
    discount: Any
    next_observation: Any
    valid: Any
    last: Any


def rollout_spec(time_step_spec: Any, action_spec: Any) -> Rollout:
    """The TensorSpec of one ``Rollout`` entry (no outer dims)."""
    observation = tensor_spec.from_spec(time_step_spec.observation)
    scalar = tf.TensorSpec((), tf.float32)
    return Rollout(
        observation=observation,
        action=tensor_spec.from_spec(action_spec),
        reward=scalar,
        discount=scalar,
        next_observation=observation,
        valid=scalar,
        last=scalar,
    )


def gae(
    rewards: tf.Tensor,
    values: tf.Tensor,
    next_values: tf.Tensor,
    discounts: tf.Tensor,
    lasts: tf.Tensor,
    valid: tf.Tensor,
    gamma: float,
    lambda_: float,
) -> tf.Tensor:
    """Generalized advantage estimates ``[T, N]`` of ``[T, N]`` inputs.

    ``A_t = delta_t + gamma * lambda * (1 - last_t) * A_{t+1}`` with ``delta_t = r_t +
    gamma * discount_t * V(s'_t) - V(s_t)``; boundaries (``valid`` 0) get 0.
    """
    deltas = rewards + gamma * discounts * next_values - values
    carry = gamma * lambda_ * (1.0 - lasts)

    def step(next_advantage, inputs):
        delta, keep, real = inputs
        return real * (delta + keep * next_advantage)

    advantages = tf.scan(
        step, (deltas, carry, valid), initializer=tf.zeros_like(deltas[0]), reverse=True
    )
    return advantages


class PpoAgent(common.Agent):
    """PPO with a clipped objective, GAE and a value network (separate or shared).

    Attributes:
      policy: ``ActorPolicy`` sampling the actor's distribution (deployed, stochastic).
      collect_policy: another ``ActorPolicy`` over the same actor (its own generator).
      train: a ``tf.function`` taking a ``Rollout`` (``[T, N]`` outer dims) and returning
        the mean ``LossInfo(loss, {"policy_loss", "value_loss", "entropy", "approx_kl",
        "clip_fraction"})`` over its gradient steps.
      train_step_counter: an int64 variable counting gradient steps.

    Args:
      time_step_spec: the environment's TimeStep spec.
      action_spec: the action spec (one leaf: bounded integer or bounded float).
      actor_network: a stateless network returning a distribution per action leaf
        (an ``ActorDistributionNetwork``).
      value_network: a stateless network ``observation -> [B]`` (a ``ValueNetwork``;
        ``ValueNetwork.sharing(actor_network)`` shares the actor's hidden layers).
      optimizer: a ``tf_keras`` optimizer for both networks.
      num_epochs: passes over each rollout.
      minibatch_size: rows per gradient step; a rollout of ``T * N`` rows gives
        ``T * N // minibatch_size`` steps per epoch (the remainder of each shuffle is
        left out of that epoch).
      clip_ratio: the surrogate's epsilon.
      gamma, lambda_: discount and GAE lambda.
      value_coef: weight of the value loss.
      entropy_coef: weight of the entropy bonus.
      normalize_advantages: normalize advantages per minibatch (zero mean, unit std).
      gradient_clipping: clip gradients to this global norm (None: no clipping).
      observation_and_action_constraint_splitter: for a discrete action, ``observation
        -> (network observation, mask)`` with ``mask[..., i]`` nonzero where action
        ``minimum + i`` is allowed; both networks take the network observation.
      train_step_counter: an int64 variable to count gradient steps in.
      seed: seeds the minibatch shuffles.
      jit_compile: compile the train function with XLA.
      name: module name.
    """

    def __init__(
        self,
        time_step_spec: Any,
        action_spec: Any,
        actor_network: Any,
        value_network: Any,
        optimizer: Any,
        *,
        num_epochs: int = 10,
        minibatch_size: int = 64,
        clip_ratio: float = 0.2,
        gamma: float = 0.99,
        lambda_: float = 0.95,
        value_coef: float = 0.5,
        entropy_coef: float = 0.0,
        normalize_advantages: bool = True,
        gradient_clipping: float | None = 0.5,
        observation_and_action_constraint_splitter: Callable[[Any], Any] | None = None,
        train_step_counter: tf.Variable | None = None,
        seed: int | None = None,
        jit_compile: bool = False,
        name: str = "PpoAgent",
    ):
        for label, network in (("actor", actor_network), ("value", value_network)):
            if nest.flatten(getattr(network, "state_spec", ())):
                raise UnsupportedError(f"PpoAgent trains stateless networks; the {label} has state")
        for label, value in (("num_epochs", num_epochs), ("minibatch_size", minibatch_size)):
            if int(value) < 1:
                raise ArgumentError(f"PpoAgent {label}: expected >= 1, got {value}")
        if not 0.0 < float(clip_ratio) < 1.0:
            raise ArgumentError(
                f"PpoAgent clip_ratio: expected a value in (0, 1), got {clip_ratio}"
            )
        super().__init__(time_step_spec, action_spec, train_step_counter, name=name)
        if len(nest.flatten(self.action_spec)) != 1:
            raise SpecError(f"PpoAgent: expected one action spec, got {action_spec}")
        self._set_plain("rollout_spec", rollout_spec(self.time_step_spec, self.action_spec))
        leaf = nest.flatten(self.action_spec)[0]
        self._splitter = observation_and_action_constraint_splitter
        if self._splitter is not None and not leaf.dtype.is_integer:
            raise SpecError(
                f"PpoAgent: an action mask needs a discrete action spec, got {self.action_spec}"
            )
        # The network's Categorical is unshifted (0..n-1); the policy adds the minimum.
        self._action_shift = int(np.min(leaf.minimum)) if leaf.dtype.is_integer else 0
        self.actor_network = actor_network
        self.value_network = value_network
        self.optimizer = optimizer
        self._num_epochs = int(num_epochs)
        self._minibatch_size = int(minibatch_size)
        self._clip_ratio = float(clip_ratio)
        self._gamma = float(gamma)
        self._lambda = float(lambda_)
        self._value_coef = float(value_coef)
        self._entropy_coef = float(entropy_coef)
        self._normalize = bool(normalize_advantages)
        self._clipping = gradient_clipping
        self.generator = (
            tf.random.Generator.from_seed(seed)
            if seed is not None
            else tf.random.Generator.from_non_deterministic_state()
        )
        self.policy = actor_policy.ActorPolicy(
            self.time_step_spec,
            self.action_spec,
            actor_network,
            observation_and_action_constraint_splitter=self._splitter,
        )
        self.collect_policy = actor_policy.ActorPolicy(
            self.time_step_spec,
            self.action_spec,
            actor_network,
            observation_and_action_constraint_splitter=self._splitter,
        )
        optimizer.build(self._variables())
        self._make_train(self._train, jit_compile)

    @property
    def rollout_spec(self) -> Rollout:
        """The TensorSpec of one Rollout entry that ``train`` takes (with ``[T, N]``)."""
        return self._rollout_spec

    def _variables(self) -> list[tf.Variable]:
        # A shared encoder (ValueNetwork.sharing) is in both lists: train each once.
        out, seen = [], set()
        for variable in list(self.actor_network.trainable_variables) + list(
            self.value_network.trainable_variables
        ):
            if variable.ref() not in seen:
                seen.add(variable.ref())
                out.append(variable)
        return out

    def policy_config(self) -> dict[str, Any]:
        """The policy_spec.json content that lets ``checkpoints.load_policy`` rebuild ``policy``."""
        return checkpoints.policy_config(
            "ppo",
            self.time_step_spec,
            self.action_spec,
            {"actor_network": self.actor_network},
            splitter=self._splitter,
        )

    # --- training ---------------------------------------------------------------------

    def _check_rollout(self, rollout: Any) -> None:
        if not isinstance(rollout, Rollout):
            raise SpecMismatchError("PpoAgent.train rollout", "a Rollout", type(rollout).__name__)
        nest.assert_same_structure(rollout, self._rollout_spec, "rollout")
        for (path, spec), value in zip(
            nest.flatten_with_paths(self._rollout_spec, "rollout"),
            nest.flatten(rollout),
            strict=True,
        ):
            expected = [None, None, *spec.shape.as_list()]
            if value.dtype != spec.dtype:
                raise SpecMismatchError(path, f"dtype {spec.dtype.name}", value.dtype.name)
            if not tf.TensorShape(expected).is_compatible_with(value.shape):
                raise SpecMismatchError(
                    path,
                    f"shape [T, N] + {tuple(spec.shape.as_list())}",
                    f"{tuple(value.shape.as_list())}",
                )

    def _split(self, observation: Any) -> tuple[Any, Any]:
        """``(network observation, mask or None)``."""
        if self._splitter is None:
            return observation, None
        return self._splitter(observation)

    def _value(self, observation: Any, training: bool = False) -> tf.Tensor:
        values, _ = self.value_network(self._split(observation)[0], training=training)
        return values

    def _distribution(self, observation: Any) -> Any:
        network_observation, mask = self._split(observation)
        distribution, _ = self.actor_network(network_observation, training=True)
        distribution = nest.flatten(distribution)[0]
        if mask is None:
            return distribution
        if not isinstance(distribution, tfp.distributions.Categorical):
            raise SpecError(
                "PpoAgent: an action mask needs a Categorical actor output, got "
                f"{type(distribution).__name__}"
            )
        logits = distribution.logits
        allowed = tf.reshape(tf.not_equal(mask, tf.zeros([], mask.dtype)), tf.shape(logits))
        logits = tf.where(allowed, logits, tf.constant(logits.dtype.min, logits.dtype))
        return tfp.distributions.Categorical(logits=logits, dtype=distribution.dtype)

    def _log_prob(self, distribution: Any, action: tf.Tensor) -> tf.Tensor:
        if self._action_shift:
            action = action - tf.cast(self._action_shift, action.dtype)
        return distribution.log_prob(action)

    def _train(self, rollout: Rollout) -> LossInfo:
        self._check_rollout(rollout)
        size = tf.shape(rollout.reward)[0] * tf.shape(rollout.reward)[1]

        def flat(x):
            return tf.reshape(x, tf.concat([[size], tf.shape(x)[2:]], 0))

        observation = nest.map_structure(flat, rollout.observation)
        next_observation = nest.map_structure(flat, rollout.next_observation)
        action = flat(nest.flatten(rollout.action)[0])
        shape = tf.shape(rollout.reward)
        old_log_prob = tf.stop_gradient(self._log_prob(self._distribution(observation), action))
        values = self._value(observation)
        next_values = self._value(next_observation)
        values = tf.reshape(tf.stop_gradient(values), shape)
        next_values = tf.reshape(tf.stop_gradient(next_values), shape)
        advantages = gae(
            rollout.reward,
            values,
            next_values,
            rollout.discount,
            rollout.last,
            rollout.valid,
            self._gamma,
            self._lambda,
        )
        returns = tf.reshape(advantages + values, [-1])
        advantages = tf.reshape(advantages, [-1])
        weights = tf.reshape(rollout.valid, [-1])

        batches = size // self._minibatch_size
        keys = self.generator.uniform([self._num_epochs, size])
        order = tf.argsort(keys, axis=-1)[:, : batches * self._minibatch_size]
        order = tf.reshape(order, [self._num_epochs * batches, self._minibatch_size])
        data = (observation, action, old_log_prob, advantages, returns, weights)

        def body(i, loss, extra):
            rows = order[i]
            info = self._minibatch_step(nest.map_structure(lambda x: tf.gather(x, rows), data))
            extra = {key: extra[key] + info.extra[key] for key in _EXTRA}
            return i + 1, loss + info.loss, extra

        zero = tf.constant(0.0, tf.float32)
        count = self._num_epochs * batches
        _, loss, extra = tf.while_loop(
            lambda i, *_: i < count, body, (tf.constant(0), zero, {key: zero for key in _EXTRA})
        )
        scale = 1.0 / tf.cast(tf.maximum(count, 1), tf.float32)
        return LossInfo(loss * scale, {key: value * scale for key, value in extra.items()})

    def _minibatch_step(self, data: tuple) -> LossInfo:
        observation, action, old_log_prob, advantages, returns, weights = data
        total_weight = tf.maximum(tf.reduce_sum(weights), 1.0)

        def mean(x):
            return tf.reduce_sum(weights * x) / total_weight

        if self._normalize:
            centre = mean(advantages)
            spread = tf.sqrt(mean(tf.square(advantages - centre)))
            advantages = (advantages - centre) / (spread + 1e-8)
        variables = self._variables()
        with tf.GradientTape() as tape:
            distribution = self._distribution(observation)
            log_prob = self._log_prob(distribution, action)
            ratio = tf.exp(log_prob - old_log_prob)
            clipped = tf.clip_by_value(ratio, 1.0 - self._clip_ratio, 1.0 + self._clip_ratio)
            policy_loss = -mean(tf.minimum(ratio * advantages, clipped * advantages))
            values = self._value(observation, training=True)
            value_loss = mean(tf.square(returns - values))
            entropy = mean(_entropy(distribution, log_prob))
            loss = policy_loss + self._value_coef * value_loss - self._entropy_coef * entropy
        common.apply_gradients(
            self.optimizer, tape.gradient(loss, variables), variables, self._clipping
        )
        self.train_step_counter.assign_add(1)
        log_ratio = log_prob - old_log_prob
        return LossInfo(
            loss,
            {
                "policy_loss": policy_loss,
                "value_loss": value_loss,
                "entropy": entropy,
                # The low-variance estimator of KL(old || new): E[(r - 1) - log r].
                "approx_kl": mean(tf.stop_gradient(ratio - 1.0 - log_ratio)),
                "clip_fraction": mean(tf.cast(tf.abs(ratio - 1.0) > self._clip_ratio, tf.float32)),
            },
        )


def _entropy(distribution: Any, log_prob: tf.Tensor) -> tf.Tensor:
    """The distribution's entropy; ``-log_prob`` of the actions where it has no closed form
    (a TanhNormal)."""
    try:
        return distribution.entropy()
    except NotImplementedError:
        return -log_prob
