"""Time steps: what a policy sees at each step (TF-free).

Works on numpy arrays and, when given TensorFlow tensors, on tensors: TensorFlow is
then already imported by the caller, and this module only looks it up.
"""

from __future__ import annotations

import enum
import sys
from typing import Any, NamedTuple

import numpy as np

from toolkit import nest
from toolkit.errors import SpecMismatchError
from toolkit.specs import array_spec
from toolkit.specs.array_spec import ArraySpec, BoundedArraySpec

__all__ = [
    "StepType",
    "TimeStep",
    "check_step_type",
    "restart",
    "termination",
    "time_step_spec",
    "transition",
    "truncation",
]


class StepType(enum.IntEnum):
    """Where a step sits in an episode."""

    FIRST = 0
    MID = 1
    LAST = 2


@array_spec.register_namedtuple
class TimeStep(NamedTuple):
    """One step of an environment: ``step_type``, ``reward``, ``discount``, ``observation``."""

    step_type: Any
    reward: Any
    discount: Any
    observation: Any

    def is_first(self) -> Any:
        return _backend(self.step_type).equal(self.step_type, StepType.FIRST)

    def is_mid(self) -> Any:
        return _backend(self.step_type).equal(self.step_type, StepType.MID)

    def is_last(self) -> Any:
        return _backend(self.step_type).equal(self.step_type, StepType.LAST)


def check_step_type(step_type: np.ndarray, path: str = "step_type") -> None:
    """Raises SpecMismatchError when a step type is not FIRST (0), MID (1) or LAST (2)."""
    # One unsigned comparison catches negatives too.
    if step_type.dtype.kind in "iu" and not (step_type.astype(np.uint64) <= 2).all():
        bad = np.argwhere(np.atleast_1d((step_type < 0) | (step_type > 2)))[0]
        index = tuple(int(i) for i in bad) if step_type.ndim else ()
        value = step_type[index] if index else step_type.reshape(-1)[int(bad[0])]
        where = f" at index {index}" if index else ""
        raise SpecMismatchError(
            path, "a step type in {0: FIRST, 1: MID, 2: LAST}", f"{value}{where}"
        )


# --- numpy or TensorFlow, chosen by the values given ---------------------------------


class _NumpyOps:
    @staticmethod
    def outer_shape(leaf: Any, inner_rank: int) -> tuple[int, ...]:
        shape = np.shape(leaf)
        return tuple(shape[: len(shape) - inner_rank])

    @staticmethod
    def full(outer: Any, inner: tuple[int, ...], value: Any, dtype: Any) -> np.ndarray:
        return np.full(tuple(outer) + tuple(inner), value, dtype=np.dtype(dtype))

    @staticmethod
    def cast(value: Any, dtype: Any) -> np.ndarray:
        return np.asarray(value, dtype=np.dtype(dtype))

    @staticmethod
    def broadcast(value: Any, outer: Any, dtype: Any) -> np.ndarray:
        return np.broadcast_to(np.asarray(value, dtype=np.dtype(dtype)), tuple(outer)).copy()

    @staticmethod
    def equal(a: Any, b: Any) -> Any:
        return np.equal(a, b)


class _TensorFlowOps:
    def __init__(self, tf: Any):
        self.tf = tf

    def outer_shape(self, leaf: Any, inner_rank: int) -> Any:
        tf = self.tf
        leaf = tf.convert_to_tensor(leaf)
        static = leaf.shape
        if static.rank is not None and static[: static.rank - inner_rank].is_fully_defined():
            return tuple(static[: static.rank - inner_rank].as_list())
        return tf.shape(leaf)[: tf.rank(leaf) - inner_rank]

    def full(self, outer: Any, inner: tuple[int, ...], value: Any, dtype: Any) -> Any:
        tf = self.tf
        if isinstance(outer, tuple):
            return tf.fill(outer + tuple(inner), tf.constant(value, dtype=dtype))
        return tf.fill(tf.concat([outer, list(inner)], 0), tf.constant(value, dtype=dtype))

    def cast(self, value: Any, dtype: Any) -> Any:
        return self.tf.cast(value, dtype)

    def broadcast(self, value: Any, outer: Any, dtype: Any) -> Any:
        tf = self.tf
        return tf.broadcast_to(
            tf.cast(value, dtype), outer if not isinstance(outer, tuple) else list(outer)
        )

    def equal(self, a: Any, b: Any) -> Any:
        return self.tf.equal(a, self.tf.cast(b, a.dtype))


def _is_tensor(value: Any) -> bool:
    tf = sys.modules.get("tensorflow")
    return tf is not None and tf.is_tensor(value)


def _backend(*values: Any) -> Any:
    for value in values:
        for leaf in nest.flatten(value):
            if _is_tensor(leaf):
                return _TensorFlowOps(sys.modules["tensorflow"])
    return _NumpyOps


def _spec_dtype(spec: Any, backend: Any) -> Any:
    if backend is _NumpyOps:
        return np.dtype(getattr(spec.dtype, "as_numpy_dtype", spec.dtype))
    return spec.dtype if not isinstance(spec, ArraySpec) else backend.tf.as_dtype(spec.dtype)


_SCALAR_REWARD = ArraySpec((), np.float32, name="reward")


def _outer_from(observation: Any, observation_spec: Any, batch_size: int | None, ops: Any):
    if batch_size is not None:
        return (int(batch_size),)
    if observation_spec is None:
        return ()
    leaves = nest.flatten(observation)
    specs = nest.flatten(observation_spec)
    if not leaves or not specs:
        return ()
    return ops.outer_shape(leaves[0], len(tuple(specs[0].shape)))


def _rewards_like(reward_spec: Any, outer: Any, ops: Any) -> Any:
    return nest.map_structure(
        lambda s: ops.full(outer, tuple(s.shape), 0, _spec_dtype(s, ops)), reward_spec
    )


def restart(
    observation: Any,
    batch_size: int | None = None,
    reward_spec: Any = None,
    *,
    observation_spec: Any = None,
) -> TimeStep:
    """A FIRST time step: reward 0, discount 1.

    The batch size is ``batch_size`` when given; otherwise it is inferred from the
    observation when ``observation_spec`` is given (the observation's extra leading
    dims are the batch); otherwise the step is unbatched.
    """
    ops = _backend(observation)
    reward_spec = _SCALAR_REWARD if reward_spec is None else reward_spec
    outer = _outer_from(observation, observation_spec, batch_size, ops)
    return TimeStep(
        step_type=ops.full(outer, (), StepType.FIRST, _int32(ops)),
        reward=_rewards_like(reward_spec, outer, ops),
        discount=ops.full(outer, (), 1.0, _float32(ops)),
        observation=observation,
    )


def _reward_outer(reward: Any, reward_spec: Any, ops: Any) -> Any:
    specs = nest.flatten(reward_spec)
    leaves = nest.flatten(reward)
    return ops.outer_shape(leaves[0], len(tuple(specs[0].shape)))


def _step(observation, reward, discount, step_type, reward_spec, outer_dims):
    ops = _backend(observation, reward)
    reward_spec = _SCALAR_REWARD if reward_spec is None else reward_spec
    outer = tuple(outer_dims) if outer_dims is not None else _reward_outer(reward, reward_spec, ops)
    reward = nest.map_structure(lambda r, s: ops.cast(r, _spec_dtype(s, ops)), reward, reward_spec)
    return TimeStep(
        step_type=ops.full(outer, (), step_type, _int32(ops)),
        reward=reward,
        discount=ops.broadcast(discount, outer, _float32(ops)),
        observation=observation,
    )


def transition(
    observation: Any,
    reward: Any,
    discount: Any = 1.0,
    outer_dims: tuple[int, ...] | None = None,
    reward_spec: Any = None,
) -> TimeStep:
    """A MID time step. The batch is the reward's outer dims unless ``outer_dims`` is given."""
    return _step(observation, reward, discount, StepType.MID, reward_spec, outer_dims)


def termination(
    observation: Any,
    reward: Any,
    outer_dims: tuple[int, ...] | None = None,
    reward_spec: Any = None,
) -> TimeStep:
    """A LAST time step of an episode that ended (discount 0)."""
    return _step(observation, reward, 0.0, StepType.LAST, reward_spec, outer_dims)


def truncation(
    observation: Any,
    reward: Any,
    discount: Any = 1.0,
    outer_dims: tuple[int, ...] | None = None,
    reward_spec: Any = None,
) -> TimeStep:
    """A LAST time step of an episode cut short (e.g. a time limit): discount stays."""
    return _step(observation, reward, discount, StepType.LAST, reward_spec, outer_dims)


def _int32(ops: Any) -> Any:
    return np.int32 if ops is _NumpyOps else ops.tf.int32


def _float32(ops: Any) -> Any:
    return np.float32 if ops is _NumpyOps else ops.tf.float32


def time_step_spec(observation_spec: Any = None, reward_spec: Any = None) -> TimeStep | None:
    """The TimeStep spec for an observation spec (array specs or tensor specs).

    Returns None when ``observation_spec`` is None, for policies that ignore time steps.
    """
    if observation_spec is None:
        return None
    spec = TimeStep(
        step_type=ArraySpec((), np.int32, name="step_type"),
        reward=_SCALAR_REWARD if reward_spec is None else reward_spec,
        discount=BoundedArraySpec((), np.float32, minimum=0.0, maximum=1.0, name="discount"),
        observation=observation_spec,
    )
    leaves = nest.flatten(observation_spec)
    if leaves and not all(isinstance(s, ArraySpec) for s in leaves):
        # Tensor specs: TensorFlow is loaded already, since the caller made them.
        from toolkit.specs import tensor_spec

        return TimeStep(
            step_type=tensor_spec.from_spec(spec.step_type),
            reward=tensor_spec.from_spec(spec.reward),
            discount=tensor_spec.from_spec(spec.discount),
            observation=observation_spec,
        )
    return spec
