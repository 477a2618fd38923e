"""PyTFPolicy: a TF policy used as a Python policy, numpy in and out (tf.function inside)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import tensorflow as tf

from toolkit import action_masks, nest
from toolkit.errors import PolicyError, SpecMismatchError, StructureError
from toolkit.policies import py_policy, tf_policy
from toolkit.policies.seeds import stateless_seed
from toolkit.policies.tf_policy import TFPolicy
from toolkit.specs import tensor_spec
from toolkit.trajectories.policy_step import PolicyStep

__all__ = ["PyTFPolicy"]


class PyTFPolicy(py_policy.PyPolicy):
    """Wraps a TFPolicy as a PyPolicy: numpy time steps in, numpy PolicySteps out.

    ``action`` runs the TF policy through one ``tf.function`` whose input signature has a
    dynamic batch dim, so it is traced once and serves every batch size. Unbatched time
    steps get a batch dim of one on the way in, which is removed on the way out; time
    steps with several outer dims are flattened to one and restored.

    Sampling is stateless inside the function: each call passes a seed, drawn from this
    policy's numpy Generator (seeded by ``seed``) unless ``action(..., seed=...)`` gives
    one. So the same seed gives the same action, and a copy never disturbs the original.

    Args:
      policy: the TFPolicy.
      batch_time_steps: accept unbatched time steps (adding and removing the batch dim).
        With False, time steps must carry batch dims.
      seed: seeds the Generator used when ``action`` gets no seed.
      validate_args: check numpy inputs and outputs against the specs.
      autograph: trace with AutoGraph. Off by default: policies here use no Python
        control flow on tensors, and tracing without it is several times faster. Turn
        it on for actor functions with ``if``/``for`` over tensors.
    """

    def __init__(
        self,
        policy: TFPolicy,
        batch_time_steps: bool = True,
        seed: int | None = None,
        *,
        validate_args: bool = True,
        autograph: bool = False,
    ):
        if not isinstance(policy, TFPolicy):
            raise PolicyError(f"PyTFPolicy wraps a TFPolicy, got {type(policy).__name__}")
        super().__init__(
            policy.time_step_spec,
            policy.action_spec,
            policy.policy_state_spec,
            policy.info_spec,
            validate_args=validate_args,
        )
        self._policy = policy
        self._batch_time_steps = bool(batch_time_steps)
        self._seed = seed
        self._rng = np.random.default_rng(seed)
        self._autograph = bool(autograph)
        self._action_fn = None  # built on first use: construction stays cheap

    @property
    def tf_policy(self) -> TFPolicy:
        """The wrapped TF policy."""
        return self._policy

    def variables(self) -> list[tf.Variable]:
        return self._policy.variables()

    # --- PyPolicy -------------------------------------------------------------------

    def _get_initial_state(self, batch_size: int | None) -> Any:
        return tf_policy.numpy_nest(self._policy.get_initial_state(batch_size))

    def _action(self, time_step: Any, policy_state: Any, seed: py_policy.Seed) -> PolicyStep:
        if time_step is None:
            raise StructureError("time_step", "a TimeStep (TF policies need one)", "None")
        outer = self.outer_dims(time_step)
        if not outer and not self._batch_time_steps:
            raise SpecMismatchError(
                "step_type",
                "batched time steps (PyTFPolicy(batch_time_steps=False))",
                "an unbatched time step",
            )
        if not self.is_stateful:
            policy_state = ()
        splitter = self._policy.observation_and_action_constraint_splitter
        if splitter is not None:  # here, in numpy: the graph's own check names no batch dims
            _, mask = splitter(time_step.observation)
            action_masks.check_rows(
                mask,
                outer,
                lambda: action_masks.mask_label(splitter, self.time_step_spec.observation),
            )
        time_step, policy_state = _to_one_batch_dim((time_step, policy_state), len(outer))
        seed_array = self._seed_array(seed)
        step = self._compiled()(time_step, policy_state, seed_array)
        step = tf_policy.numpy_nest(step)
        return _from_one_batch_dim(step, outer)

    def _distribution(self, time_step: Any, policy_state: Any) -> PolicyStep:
        # Distributions are Python objects: computed eagerly, not through tf.function.
        state = policy_state if self.is_stateful else ()
        step = self._policy.distribution(time_step, state)
        return step._replace(
            state=tf_policy.numpy_nest(step.state), info=tf_policy.numpy_nest(step.info)
        )

    def update(self, policy: Any, tau: float = 1.0) -> None:
        """Moves the TF policy's variables towards ``policy``'s (a PyTFPolicy or TFPolicy).

        ``tau=1`` copies them; smaller values make a soft update (see TFPolicy.update).
        """
        self._tau = tau
        try:
            super().update(policy)  # checks the specs, then calls _update
        finally:
            self._tau = 1.0

    def _update(self, policy: Any) -> None:
        source = policy.tf_policy if isinstance(policy, PyTFPolicy) else policy
        if not isinstance(source, TFPolicy):
            raise PolicyError(
                f"PyTFPolicy.update() takes a TFPolicy or PyTFPolicy, got {type(policy).__name__}"
            )
        self._policy.update(source, tau=getattr(self, "_tau", 1.0))

    def copy(self) -> PyTFPolicy:
        """A copy over a copy of the TF policy; its Generator continues from this one's."""
        twin = PyTFPolicy(
            self._policy.copy(),
            batch_time_steps=self._batch_time_steps,
            seed=self._seed,
            validate_args=self.validate_args,
            autograph=self._autograph,
        )
        twin._rng = copy.deepcopy(self._rng)
        return twin

    # --- internals -------------------------------------------------------------------

    def _seed_array(self, seed: py_policy.Seed) -> np.ndarray:
        if seed is None:
            return self._rng.integers(-(2**31), 2**31, size=2, dtype=np.int64).astype(np.int32)
        return stateless_seed(seed).numpy()

    def _compiled(self):
        if self._action_fn is None:
            policy = self._policy
            time_step_signature = tensor_spec.add_outer_dims(policy.time_step_spec, [None])
            state_signature = tensor_spec.add_outer_dims(policy.policy_state_spec, [None])
            seed_signature = tf.TensorSpec([2], tf.int32, name="seed")

            if policy.is_stateful:

                @tf.function(
                    input_signature=[time_step_signature, state_signature, seed_signature],
                    autograph=self._autograph,
                )
                def stateful_action(time_step, policy_state, seed):
                    return policy.action(time_step, policy_state, seed=seed)

                self._action_fn = stateful_action
                self._compiled_function = stateful_action
            else:

                @tf.function(
                    input_signature=[time_step_signature, seed_signature], autograph=self._autograph
                )
                def stateless_action(time_step, seed):
                    return policy.action(time_step, (), seed=seed)

                self._action_fn = lambda time_step, _state, seed: stateless_action(time_step, seed)
                self._compiled_function = stateless_action
        return self._action_fn

    def tracing_count(self) -> int:
        """How many times the action function was traced (1 after any number of calls)."""
        if self._action_fn is None:
            return 0
        function = self._compiled_function
        return function.experimental_get_tracing_count()


def _to_one_batch_dim(values: Any, outer_rank: int) -> Any:
    if outer_rank == 1:
        return values
    if outer_rank == 0:
        return nest.map_structure(lambda a: np.asarray(a)[None], values)
    return nest.map_structure(lambda a: np.reshape(a, (-1,) + np.shape(a)[outer_rank:]), values)


def _from_one_batch_dim(step: PolicyStep, outer: tuple[int, ...]) -> PolicyStep:
    if len(outer) == 1:
        return step
    if not outer:
        return nest.map_structure(lambda a: a[0], step)
    return nest.map_structure(lambda a: np.reshape(a, outer + a.shape[1:]), step)
