"""MixturePolicy: per batch entry, the action of one of several policies, drawn by weight."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from toolkit import distribution_families as families
from toolkit import nest
from toolkit.errors import SpecError, SpecMismatchError, UnsupportedError
from toolkit.policies.seeds import split_seed
from toolkit.policies.tf_policy import TFPolicy
from toolkit.specs import tensor_spec
from toolkit.trajectories.policy_step import PolicyStep

__all__ = ["MixturePolicy"]


class MixturePolicy(TFPolicy):
    """Acts like policy ``i`` with probability ``weights[i]``, independently per entry.

    Every component acts at every step (so stateful components keep their state
    current); the policy state is the tuple of the components' states.

    Args:
      policies: TFPolicies with equal time step and action specs.
      weights: one non-negative weight per policy (normalized; not all zero).
      clip: clip the chosen actions to bounded specs.
      seed: seeds the policy's own generator.
      name: module name.
    """

    def __init__(
        self,
        policies: Sequence[TFPolicy],
        weights: Sequence[float],
        clip: bool = True,
        *,
        seed: int | None = None,
        name: str | None = None,
    ):
        policies = tuple(policies)
        if not policies:
            raise SpecError("MixturePolicy: expected at least one policy, got none")
        weights = np.asarray(weights, np.float64)
        if weights.shape != (len(policies),):
            raise SpecMismatchError(
                "weights", f"{len(policies)} weights (one per policy)", f"shape {weights.shape}"
            )
        if np.any(weights < 0) or not np.isfinite(weights).all() or weights.sum() <= 0:
            raise SpecError(
                f"weights: expected non-negative weights with a positive sum, got {weights}"
            )
        first = policies[0]
        for i, policy in enumerate(policies[1:], start=1):
            for attribute in ("time_step_spec", "action_spec"):
                mine = tensor_spec.to_array_spec(getattr(first, attribute))
                theirs = tensor_spec.to_array_spec(getattr(policy, attribute))
                if not _nests_equal(mine, theirs):
                    raise SpecMismatchError(
                        f"policies[{i}].{attribute}", f"{mine} (as policies[0])", f"{theirs}"
                    )
        super().__init__(
            first.time_step_spec,
            first.action_spec,
            tuple(p.policy_state_spec for p in policies),
            clip=clip,
            validate_args=first.validate_args,
            seed=seed,
            name=name,
        )
        if not self.is_stateful:
            object.__setattr__(self, "_policy_state_spec", ())
        self._policies = list(policies)
        self._weights = (weights / weights.sum()).tolist()

    @property
    def policies(self) -> list[TFPolicy]:
        return list(self._policies)

    @property
    def weights(self) -> list[float]:
        return list(self._weights)

    def _component_states(self, policy_state: Any) -> list[Any]:
        if not self.is_stateful:
            return [()] * len(self._policies)
        return list(policy_state)

    def _next_state(self, states: list[Any]) -> Any:
        return tuple(states) if self.is_stateful else ()

    def _action(self, time_step: Any, policy_state: Any, seed: tf.Tensor) -> PolicyStep:
        seeds = split_seed(seed, len(self._policies) + 1)
        steps = [
            policy.action(time_step, state, seed=s)
            for policy, state, s in zip(
                self._policies, self._component_states(policy_state), seeds[1:], strict=True
            )
        ]
        batch = tf.shape(time_step.step_type)[0]
        log_weights = tf.math.log(tf.constant([self._weights], tf.float32))
        choice = tf.random.stateless_categorical(log_weights, batch, seed=seeds[0])[0]

        def pick(*actions: tf.Tensor) -> tf.Tensor:
            return tf.gather(tf.stack(actions, axis=1), choice, axis=1, batch_dims=1)

        action = nest.map_structure(pick, *(step.action for step in steps))
        return PolicyStep(action, self._next_state([s.state for s in steps]), ())

    def _distribution(self, time_step: Any, policy_state: Any) -> PolicyStep:
        raise UnsupportedError(
            "MixturePolicy has no distribution(): its components' distributions may be of "
            "different families; see distribution_params() and export_description()"
        )

    def _distribution_params(self, time_step: Any, policy_state: Any):
        params, states = [], []
        for policy, state in zip(self._policies, self._component_states(policy_state), strict=True):
            policy_params, next_state, _ = policy.distribution_params(time_step, state)
            params.append(policy_params)
            states.append(next_state)
        return tuple(params), self._next_state(states), ()

    def export_description(self) -> dict[str, Any]:
        """``{"kind": "mixture", "weights": [...], "components": [...]}``."""
        return {
            "kind": families.MIXTURE,
            "clip": self._clip,
            "emit_log_probability": False,
            "weights": list(self._weights),
            "components": [p.export_description() for p in self._policies],
        }


def _nests_equal(a: Any, b: Any) -> bool:
    try:
        nest.assert_same_structure(a, b)
    except SpecMismatchError:
        return False
    return all(x == y for x, y in zip(nest.flatten(a), nest.flatten(b), strict=True))
