"""ActorPolicy: actions or action distributions from an actor network (or a function)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import tensorflow as tf
import tensorflow_probability as tfp

from toolkit import nest
from toolkit.distributions import utils as dist_utils
from toolkit.distributions.shifted_categorical import ShiftedCategorical
from toolkit.errors import SpecError, StructureError
from toolkit.policies import tf_policy
from toolkit.policies.tf_policy import TFPolicy
from toolkit.specs import tensor_spec
from toolkit.trajectories.policy_step import PolicyStep

tfd = tfp.distributions

__all__ = ["ActorPolicy"]


def _is_network(value: Any) -> bool:
    return hasattr(value, "state_spec") and hasattr(value, "input_tensor_spec")


def _takes_action_spec(function: Callable[..., Any]) -> bool:
    """True when ``function`` accepts a second positional argument (the action spec)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    return len(positional) >= 2 or any(
        p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters
    )


class ActorPolicy(TFPolicy):
    """A policy over an actor network's output.

    The actor returns, per action leaf, either actions (then the distribution is a
    Deterministic around them) or TFP distributions (sampled by ``action()``). A TFP
    ``Categorical`` over ``0..n-1`` is shifted to the spec's range, and distributions
    with scalar events over ``[B] + spec.shape`` become Independent over the spec dims.

    ``actor_network`` is either a Network (``net(observation, step_type=...,
    network_state=..., training=...) -> (output, next_state)``; its ``state_spec`` is the
    policy state spec), or a plain callable called as the TF-Agents policies tutorial does:
    ``fn(time_steps, action_spec)`` (or ``fn(time_steps)`` if it takes one argument),
    returning the output alone. A network's variables are created at construction (its
    ``create_variables()``); a function's layers are not tracked by the policy (so
    ``variables()``, ``update()`` and copies don't see them) unless the callable is a
    ``tf.Module``.

    Args:
      time_step_spec: the TimeStep spec.
      action_spec: a nest of specs.
      actor_network: a Network or a callable, as above.
      policy_state_spec: defaults to the network's ``state_spec`` (``()`` for functions).
      info_spec: info spec; the network gives no info, so it must be ``()``.
      clip: clip sampled actions to bounded specs (default True).
      training: passed to the network.
      observation_and_action_constraint_splitter: ``observation -> (observation, mask)``
        for a single discrete action leaf; masked actions get the lowest logit.
      emit_log_probability: add ``info["log_probability"]``.
      validate_args: check inputs against the specs.
      automatic_state_reset: reset the state of FIRST entries to the initial state
        (networks that reset themselves don't need it).
      seed: seeds the policy's own generator.
      name: module name.
    """

    def __init__(
        self,
        time_step_spec: Any,
        action_spec: Any,
        actor_network: Any,
        policy_state_spec: Any = None,
        info_spec: Any = (),
        clip: bool = True,
        training: bool = False,
        observation_and_action_constraint_splitter: Callable[[Any], Any] | None = None,
        emit_log_probability: bool = False,
        validate_args: bool = True,
        *,
        automatic_state_reset: bool = True,
        seed: int | None = None,
        name: str | None = None,
    ):
        if not callable(actor_network):
            raise SpecError(
                "actor_network: expected a Network or a callable, got "
                f"{type(actor_network).__name__}"
            )
        is_network = _is_network(actor_network)
        if policy_state_spec is None:
            policy_state_spec = actor_network.state_spec if is_network else ()
        super().__init__(
            time_step_spec,
            action_spec,
            policy_state_spec,
            info_spec,
            clip=clip,
            emit_log_probability=emit_log_probability,
            automatic_state_reset=automatic_state_reset,
            validate_args=validate_args,
            seed=seed,
            name=name,
        )
        if is_network and callable(getattr(actor_network, "create_variables", None)):
            # As TF-Agents: a lazily built network gets its variables now, so that
            # variables(), update() and checkpoints see them before the first action.
            actor_network.create_variables()
        self._actor_network = actor_network
        self._is_network = is_network
        self._passes_action_spec = not is_network and _takes_action_spec(actor_network)
        self._training = bool(training)
        self._splitter = observation_and_action_constraint_splitter
        if self._splitter is not None:
            leaves = nest.flatten(self.action_spec)
            if len(leaves) != 1 or not tensor_spec.is_integer_or_bool(leaves[0]):
                raise SpecError(
                    f"an action mask needs a single discrete action spec, got {self.action_spec}"
                )

    @property
    def actor_network(self) -> Any:
        return self._actor_network

    def _apply_actor(self, time_step: Any, policy_state: Any) -> tuple[Any, Any, Any]:
        observation, mask = time_step.observation, None
        if self._splitter is not None:
            observation, mask = self._splitter(observation)
        if self._is_network:
            output, state = self._actor_network(
                observation,
                step_type=time_step.step_type,
                network_state=policy_state,
                training=self._training,
            )
        else:
            time_step = time_step._replace(observation=observation)
            if self._passes_action_spec:
                output = self._actor_network(time_step, self.action_spec)
            else:
                output = self._actor_network(time_step)
            state = policy_state
        if not self.is_stateful:
            state = ()
        return output, state, mask

    def _distribution(self, time_step: Any, policy_state: Any) -> PolicyStep:
        output, state, mask = self._apply_actor(time_step, policy_state)
        if not nest.is_nested(self.action_spec) and nest.is_nested(output):
            raise StructureError(
                "actor output", "a single tensor or distribution", nest.structure_repr(output)
            )
        specs = nest.flatten_with_paths(self.action_spec, "action")
        if nest.is_nested(self.action_spec):
            nest.assert_same_structure(output, self.action_spec, "actor output")
            leaves = tf_policy.leaves_like(self.action_spec, output)
        else:
            leaves = [output]
        distributions = [
            dist_utils.as_action_distribution(value, spec, path)
            for (path, spec), value in zip(specs, leaves, strict=True)
        ]
        if mask is not None:
            distributions = [_masked(distributions[0], mask, specs[0][1])]
        action = nest.pack_sequence_as(self.action_spec, distributions)
        return PolicyStep(action, state, ())


def _masked(distribution: Any, mask: Any, spec: Any) -> Any:
    """The categorical with disallowed actions at the lowest logit."""
    base = dist_utils.unwrap_independent(distribution)
    if not isinstance(base, ShiftedCategorical):
        raise SpecError(
            f"an action mask needs a categorical actor output, got {type(base).__name__}"
        )
    logits = base.logits_parameter()
    mask = tf.reshape(tf.cast(mask, tf.bool), tf.shape(logits))
    logits = tf.where(mask, logits, tf.constant(logits.dtype.min, logits.dtype))
    return dist_utils.independent(
        ShiftedCategorical(logits, shift=base.shift, dtype=spec.dtype), spec.shape.rank
    )
