"""PolicyCase and the helpers the contract suite shares with case modules."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from toolkit import nest
from toolkit.specs import array_spec
from toolkit.trajectories.time_step import StepType, TimeStep


@dataclasses.dataclass(frozen=True)
class PolicyCase:
    """A policy kind for the contract suite.

    Attributes:
      id: test id.
      make: returns a fresh PyPolicy; two calls must give identically seeded policies.
      deterministic: the same inputs give the same action without a seed.
      batched / unbatched: which time steps the policy accepts.
      time_step: optional ``(policy, outer_dims, rng) -> TimeStep`` when sampling from
        the spec would not do (e.g. masks); None samples from ``time_step_spec``.
    """

    id: str
    make: Callable[[], Any]
    deterministic: bool
    batched: bool = True
    unbatched: bool = True
    time_step: Callable[[Any, tuple[int, ...], np.random.Generator], Any] | None = None
    marks: tuple[Any, ...] = ()


def sample_time_step(
    time_step_spec: Any, outer_dims: tuple[int, ...], rng: np.random.Generator
) -> TimeStep | None:
    """A random time step of the spec: observation sampled, step types mixed."""
    if time_step_spec is None:
        return None
    observation = array_spec.sample_spec_nest(time_step_spec.observation, rng, outer_dims)
    step_type = rng.integers(0, 3, size=outer_dims).astype(np.int32)
    reward = array_spec.sample_spec_nest(time_step_spec.reward, rng, outer_dims)
    discount = rng.uniform(0.0, 1.0, size=outer_dims).astype(np.float32)
    return TimeStep(step_type, reward, discount, observation)


def first_time_step(time_step: TimeStep | None) -> TimeStep | None:
    """The same time step with every entry FIRST."""
    if time_step is None:
        return None
    return time_step._replace(
        step_type=np.full(np.shape(time_step.step_type), StepType.FIRST, np.int32)
    )


def assert_conforms(values: Any, spec: Any, outer_dims: tuple[int, ...], what: str) -> None:
    """Exact structure, shape ``outer_dims + spec.shape``, dtype and bounds of every leaf."""
    nest.assert_same_structure(values, spec, what)
    for (path, s), v in zip(nest.flatten_with_paths(spec, what), nest.flatten(values), strict=True):
        array = np.asarray(v)
        assert array.shape == tuple(outer_dims) + s.shape, f"{path}: shape {array.shape}"
        assert array.dtype == s.dtype, f"{path}: dtype {array.dtype} != {s.dtype}"
        if isinstance(s, array_spec.BoundedArraySpec):
            assert np.all(array >= s.minimum) and np.all(array <= s.maximum), (
                f"{path}: {array} outside [{s.minimum}, {s.maximum}]"
            )


def assert_nests_equal(a: Any, b: Any, *, atol: float = 0.0) -> None:
    nest.assert_same_structure(a, b)
    for x, y in zip(nest.flatten(a), nest.flatten(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


def nests_equal(a: Any, b: Any) -> bool:
    try:
        assert_nests_equal(a, b)
    except AssertionError:
        return False
    return True
