"""The Python-policy interface (TF-free).

Public methods validate their inputs against the specs (``validate_args=False`` turns
that off for hot paths), then call the private ``_action`` / ``_distribution`` /
``_get_initial_state`` that subclasses implement.
"""

from __future__ import annotations

import abc
from typing import Any, TypeAlias

import numpy as np

from toolkit import nest
from toolkit.errors import SpecMismatchError, StructureError, UnsupportedError
from toolkit.specs import array_spec
from toolkit.specs.array_spec import BoundedArraySpec
from toolkit.trajectories.policy_step import PolicyStep
from toolkit.trajectories.time_step import TimeStep, check_step_type

__all__ = ["PyPolicy", "Seed", "as_array_spec_nest"]

# A string: evaluating ``np.random`` would import numpy.random (~10 ms) into every
# runtime, greedy ones included.
Seed: TypeAlias = "int | np.random.Generator | None"


def as_array_spec_nest(spec: Any) -> Any:
    """Converts every spec in a nest (tensor specs included) to an array spec."""
    if spec is None:
        return None
    return nest.map_structure(array_spec.as_array_spec, spec)


class PyPolicy(abc.ABC):
    """Base class of policies that take and return numpy arrays.

    Args:
      time_step_spec: a TimeStep of specs, or None for policies that ignore time steps.
      action_spec: a nest of array specs.
      policy_state_spec: a nest of array specs for the state fed back each step; ``()``
        for stateless policies.
      info_spec: a nest of array specs for side information (e.g. log-probabilities).
      validate_args: check time steps, states and returned actions against the specs.
      check_finite: also refuse observations holding NaN or infinite values (naming the
        leaf); off by default, as in TF-Agents.
    """

    def __init__(
        self,
        time_step_spec: Any,
        action_spec: Any,
        policy_state_spec: Any = (),
        info_spec: Any = (),
        *,
        validate_args: bool = True,
        check_finite: bool = False,
    ):
        if action_spec is None:
            raise StructureError("action_spec", "a spec or a nest of specs", "None")
        self._time_step_spec = as_array_spec_nest(time_step_spec)
        self._action_spec = as_array_spec_nest(action_spec)
        self._policy_state_spec = as_array_spec_nest(policy_state_spec)
        self._info_spec = as_array_spec_nest(info_spec)
        self._validate_args = validate_args
        self._check_finite = check_finite

    # --- specs ------------------------------------------------------------------

    @property
    def time_step_spec(self) -> Any:
        return self._time_step_spec

    @property
    def action_spec(self) -> Any:
        return self._action_spec

    @property
    def policy_state_spec(self) -> Any:
        return self._policy_state_spec

    @property
    def info_spec(self) -> Any:
        return self._info_spec

    @property
    def validate_args(self) -> bool:
        return self._validate_args

    @property
    def check_finite(self) -> bool:
        """Whether observations with NaN or infinite values are refused."""
        return self._check_finite

    @property
    def is_stateful(self) -> bool:
        return bool(nest.flatten(self._policy_state_spec))

    # --- public API ---------------------------------------------------------------

    def get_initial_state(self, batch_size: int | None = None) -> Any:
        """The state to start an episode with; batched when ``batch_size`` is given."""
        return self._get_initial_state(batch_size)

    def reset(self, batch_size: int | None = None) -> Any:
        """Starts over: returns the initial policy state (as in the TF-Agents policies tutorial)."""
        return self.get_initial_state(batch_size)

    def action(self, time_step: Any, policy_state: Any = (), seed: Seed = None) -> PolicyStep:
        """Maps a time step (and state) to a PolicyStep(action, state, info).

        Args:
          time_step: a TimeStep matching ``time_step_spec``, batched or not; None for
            policies built with ``time_step_spec=None``.
          policy_state: the state from ``get_initial_state()`` or the previous step.
          seed: an int or Generator for stochastic policies: the same seed gives the
            same action. None draws from the policy's own generator.
        """
        time_step, policy_state, outer_dims = self._prepare(time_step, policy_state)
        step = self._action(time_step, policy_state, seed)
        if self._validate_args:
            self._check_step(step, outer_dims)
        return step

    def distribution(self, time_step: Any, policy_state: Any = ()) -> PolicyStep:
        """A PolicyStep whose ``action`` is a distribution over actions, where supported."""
        time_step, policy_state, _ = self._prepare(time_step, policy_state)
        return self._distribution(time_step, policy_state)

    def update(self, policy: PyPolicy) -> None:
        """Makes this policy act like ``policy``, which must have the same specs."""
        for name in ("time_step_spec", "action_spec", "policy_state_spec"):
            mine, theirs = getattr(self, name), as_array_spec_nest(getattr(policy, name))
            if not _specs_equal(mine, theirs):
                raise SpecMismatchError(
                    name, f"{mine}", f"{theirs}", detail="update() needs equal specs"
                )
        self._update(policy)

    def copy(self) -> PyPolicy:
        """An independent copy: acting with one never changes the other."""
        import copy  # not at module import: ~0.2 ms of cold start

        return copy.deepcopy(self)

    # --- for subclasses -------------------------------------------------------------

    @abc.abstractmethod
    def _action(self, time_step: Any, policy_state: Any, seed: Seed) -> PolicyStep:
        """Returns the PolicyStep for validated inputs."""

    def _distribution(self, time_step: Any, policy_state: Any) -> PolicyStep:
        del time_step, policy_state
        raise UnsupportedError(
            f"{type(self).__name__} has no distribution(): it computes actions directly"
        )

    def _get_initial_state(self, batch_size: int | None) -> Any:
        outer = () if batch_size is None else (int(batch_size),)
        return array_spec.zero_spec_nest(self._policy_state_spec, outer)

    def _update(self, policy: PyPolicy) -> None:
        raise UnsupportedError(f"{type(self).__name__} does not support update()")

    # --- validation -----------------------------------------------------------------

    def outer_dims(self, time_step: Any) -> tuple[int, ...]:
        """The batch dims of a time step (``()`` when unbatched or None)."""
        if time_step is None:
            return ()
        return tuple(np.shape(time_step.step_type))

    def _prepare(self, time_step: Any, policy_state: Any) -> tuple[Any, Any, Any]:
        outer: tuple[int, ...] | None = None
        if self._validate_args and self._time_step_spec is not None and time_step is not None:
            time_step, outer = array_spec.conform_nest(time_step, self._time_step_spec)
            if isinstance(time_step, TimeStep):
                check_step_type(time_step.step_type)
        elif time_step is not None:
            outer = self.outer_dims(time_step)
        if self._check_finite and isinstance(time_step, TimeStep):
            for path, leaf in nest.flatten_with_paths(time_step.observation, "observation"):
                array_spec.check_finite(np.asarray(leaf), path)
        if self.is_stateful:
            if policy_state is None or not nest.flatten(policy_state):
                raise StructureError(
                    "policy_state",
                    f"a state like {nest.structure_repr(self._policy_state_spec)} "
                    "(from get_initial_state())",
                    "no state",
                )
            if self._validate_args:
                policy_state, state_outer = array_spec.conform_nest(
                    policy_state, self._policy_state_spec, "policy_state", outer
                )
                outer = state_outer if outer is None else outer
        return time_step, policy_state, outer

    def _check_step(self, step: Any, outer_dims: tuple[int, ...] | None) -> None:
        if not isinstance(step, PolicyStep):
            raise StructureError("policy step", "a PolicyStep", type(step).__name__)
        _check_outputs(step.action, self._action_spec, "action", outer_dims)
        if self.is_stateful:
            _check_outputs(step.state, self._policy_state_spec, "state", outer_dims)
        if nest.flatten(self._info_spec):
            _check_outputs(step.info, self._info_spec, "info", outer_dims)


def _check_outputs(values: Any, spec: Any, prefix: str, outer_dims: tuple[int, ...] | None):
    nest.assert_same_structure(values, spec, prefix)
    for (path, s), v in zip(
        nest.flatten_with_paths(spec, prefix), nest.flatten_up_to(spec, values), strict=True
    ):
        array = np.asarray(v)
        expected_shape = (tuple(outer_dims) if outer_dims is not None else ()) + s.shape
        if outer_dims is None:
            expected_shape = array.shape[: array.ndim - len(s.shape)] + s.shape
        if array.shape != expected_shape:
            raise SpecMismatchError(path, f"shape {expected_shape}", f"{array.shape}")
        if array.dtype != s.dtype:
            raise SpecMismatchError(path, f"dtype {s.dtype.name}", array.dtype.name)
        if isinstance(s, BoundedArraySpec):
            s.check_bounds(array, path)


def _specs_equal(a: Any, b: Any) -> bool:
    try:
        nest.assert_same_structure(a, b)
    except StructureError:
        return False
    return all(
        array_spec.as_array_spec(x) == array_spec.as_array_spec(y)
        for x, y in zip(nest.flatten(a), nest.flatten(b), strict=True)
    )
