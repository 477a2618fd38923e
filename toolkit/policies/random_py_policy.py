"""RandomPyPolicy: uniform random actions within the action spec (TF-free)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from toolkit import action_masks, nest
from toolkit.errors import SpecError, SpecMismatchError
from toolkit.policies import py_policy
from toolkit.specs import array_spec
from toolkit.specs.array_spec import BoundedArraySpec
from toolkit.trajectories.policy_step import PolicyStep

__all__ = ["RandomPyPolicy"]


class RandomPyPolicy(py_policy.PyPolicy):
    """Samples actions uniformly from bounded action specs; ignores observations.

    Args:
      time_step_spec: the TimeStep spec, or None (then ``action(None)`` works).
      action_spec: a nest of array specs; bounded specs are sampled uniformly within
        their bounds, integer bounds inclusive.
      seed: seeds the policy's own generator, so a seeded policy replays its actions.
      outer_dims: batch dims of the actions; when given they hold whatever the time step's
        batch (as TF-Agents), else the time step's batch is the actions'.
      observation_and_action_constraint_splitter: for a single discrete action spec,
        a function ``observation -> (observation, mask)`` where ``mask[..., i]`` is 1
        for allowed actions ``minimum + i``; actions are drawn among the allowed ones.
    """

    def __init__(
        self,
        time_step_spec: Any,
        action_spec: Any,
        policy_state_spec: Any = (),
        info_spec: Any = (),
        seed: int | None = None,
        outer_dims: Sequence[int] | None = None,
        observation_and_action_constraint_splitter: Callable[[Any], tuple[Any, Any]] | None = None,
        *,
        validate_args: bool = True,
    ):
        super().__init__(
            time_step_spec, action_spec, policy_state_spec, info_spec, validate_args=validate_args
        )
        self._seed = seed
        self._rng = np.random.default_rng(seed)
        self._outer_dims = tuple(outer_dims or ())
        self._fixed_outer_dims = outer_dims is not None
        self._splitter = observation_and_action_constraint_splitter
        if self._splitter is not None:
            leaves = nest.flatten(self.action_spec)
            if (
                len(leaves) != 1
                or not isinstance(leaves[0], BoundedArraySpec)
                or leaves[0].dtype.kind not in "iu"
                or int(np.prod(leaves[0].shape)) != 1
            ):
                raise SpecError(
                    "an action mask needs a single bounded integer action spec with one "
                    f"element, got {self.action_spec}"
                )

    def _action(self, time_step: Any, policy_state: Any, seed: py_policy.Seed) -> PolicyStep:
        rng = self._rng if seed is None else array_spec.as_rng(seed)
        fixed = time_step is None or self._fixed_outer_dims
        outer = self._outer_dims if fixed else self.outer_dims(time_step)
        if self._splitter is not None and time_step is not None:
            action = self._masked_action(time_step, outer, rng)
        else:
            action = array_spec.sample_spec_nest(self.action_spec, rng, outer)
        info = array_spec.zero_spec_nest(self.info_spec, outer)
        return PolicyStep(action, policy_state, info)

    def _masked_action(self, time_step: Any, outer: tuple[int, ...], rng: np.random.Generator):
        spec = nest.flatten(self.action_spec)[0]
        num_actions = int(np.max(spec.num_values))
        _, mask = self._splitter(time_step.observation)
        mask = np.asarray(mask)
        if mask.shape != outer + (num_actions,):
            raise SpecMismatchError(
                "observation mask", f"shape {outer + (num_actions,)}", f"{mask.shape}"
            )
        action_masks.check_rows(
            mask,
            outer,
            lambda: action_masks.mask_label(self._splitter, self.time_step_spec.observation),
        )
        flat_mask = mask.reshape(-1, num_actions).astype(bool)
        # Uniform over allowed actions: argmax of masked uniform noise.
        noise = rng.uniform(size=flat_mask.shape)
        choice = np.argmax(np.where(flat_mask, noise, -1.0), axis=1)
        action = (choice + int(np.min(spec.minimum))).astype(spec.dtype)
        action = action.reshape(outer + spec.shape)
        return nest.pack_sequence_as(self.action_spec, [action])

    def _prepare(self, time_step: Any, policy_state: Any) -> tuple[Any, Any, Any]:
        time_step, policy_state, outer = super()._prepare(time_step, policy_state)
        return time_step, policy_state, self._outer_dims if self._fixed_outer_dims else outer

    def _update(self, policy: py_policy.PyPolicy) -> None:
        # Nothing is learned: the specs (checked by update()) are all there is.
        del policy
