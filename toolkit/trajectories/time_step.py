"""Time steps: what a policy sees at each step (TF-free).

Works on numpy arrays and, when given TensorFlow tensors, on tensors: TensorFlow is
then already imported by the caller, and this module only looks it up.
"""

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

    def __repr__(self) -> str:
        # As TF-Agents: tf.print shows a time step as this dict. pprint is imported here:
        # it imports dataclasses, which the runtime's cold start does without.
        import pprint

        return "TimeStep(\n" + pprint.pformat(dict(self._asdict()), sort_dicts=False) + ")"


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
        outer = tf.cast(outer, tf.int32)
        return tf.fill(
            tf.concat([outer, tf.constant(inner, tf.int32, shape=[len(inner)])], 0),
            tf.constant(value, dtype=dtype),
        )

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


def _as_outer(batch_size: Any) -> Any:
    """``batch_size`` as outer dims: an int gives ``(n,)``; a shape (a tuple, an array or a
    tensor of rank 1) is the outer dims itself."""
    if _is_tensor(batch_size):
        if batch_size.shape.rank == 0:
            return (batch_size,)
        return batch_size
    dims = np.asarray(batch_size)
    if dims.ndim > 0:
        return tuple(int(d) for d in dims)
    return (int(dims),)


def _outer_from(observation: Any, observation_spec: Any, batch_size: Any, ops: Any):
    if batch_size is not None:
        return _as_outer(batch_size)
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
    batch_size: Any = None,
    reward_spec: Any = None,
    *,
    observation_spec: Any = None,
) -> TimeStep:
    """A FIRST time step: reward 0 (zeros like ``reward_spec``), discount 1.

    The batch is ``batch_size`` when given (an int, or outer dims as a tuple or a rank-1
    tensor); otherwise it is inferred from the observation when ``observation_spec`` is
    given (the observation's extra leading dims are the batch); otherwise the step is
    unbatched.
    """
    ops = _backend(observation, batch_size)
    reward_spec = _SCALAR_REWARD if reward_spec is None else reward_spec
    outer = _outer_from(observation, observation_spec, batch_size, ops)
    return TimeStep(
        step_type=ops.full(outer, (), StepType.FIRST, _int32(ops)),
        reward=_rewards_like(reward_spec, outer, ops),
        discount=ops.full(outer, (), 1.0, _float32(ops)),
        observation=observation,
    )


def _reward_outer(reward: Any, reward_spec: Any, ops: Any) -> Any:
    leaves = nest.flatten(reward)
    if reward_spec is not None:
        specs = nest.flatten(reward_spec)
        return ops.outer_shape(leaves[0], len(tuple(specs[0].shape)))
    if len(leaves) == 1:  # one reward: a scalar per batch entry, as the default spec says
        return ops.outer_shape(leaves[0], 0)
    # Several rewards (TF-Agents' multi-rewards): the batch is their first dim.
    shape = getattr(leaves[0], "shape", None)
    rank = len(np.shape(leaves[0])) if shape is None else len(shape)
    return ops.outer_shape(leaves[0], max(0, rank - 1))


def _reward_leaf(path: str, value: Any, spec: Any, ops: Any) -> Any:
    """A reward leaf: tensors keep their dtype (numpy values become float32) unless a
    reward spec says otherwise; None is refused."""
    if value is None:
        raise SpecMismatchError(path, "a number", "None (a time step input left unset?)")
    if spec is not None:
        return ops.cast(value, _spec_dtype(spec, ops))
    if ops is _NumpyOps:
        array = np.asarray(value)
        if array.dtype.kind == "O":
            raise SpecMismatchError(path, "numbers", f"{array!r:.60}")
        return array.astype(np.float32)
    return ops.tf.convert_to_tensor(value)


def _none_path(tree: Any, path: str) -> str | None:
    """The path of the first None in a nest (None is an empty nest to toolkit.nest)."""
    if tree is None:
        return path
    if isinstance(tree, dict):
        items = list(tree.items())
    elif isinstance(tree, (tuple, list)):
        items = list(enumerate(tree))
    else:
        return None
    for key, value in items:
        found = _none_path(value, nest.join_path(path, key))
        if found is not None:
            return found
    return None


def _step(observation, reward, discount, step_type, reward_spec, outer_dims):
    none = _none_path(reward, "reward")
    if none is not None:
        raise SpecMismatchError(none, "a number", "None (a time step input left unset?)")
    ops = _backend(observation, reward)
    if reward_spec is None:
        reward = nest.map_structure_with_paths(
            lambda path, r: _reward_leaf(path, r, None, ops), reward, prefix="reward"
        )
    else:
        nest.assert_same_structure(reward, reward_spec, "reward")
        specs = nest.flatten(reward_spec)
        paths = [p for p, _ in nest.flatten_with_paths(reward_spec, "reward")]
        leaves = [
            _reward_leaf(path, r, s, ops)
            for path, r, s in zip(
                paths, nest.flatten_up_to(reward_spec, reward), specs, strict=True
            )
        ]
        reward = nest.pack_sequence_as(reward_spec, leaves)
    outer = (
        _as_outer(outer_dims) if outer_dims is not None else _reward_outer(reward, reward_spec, ops)
    )
    if discount is None:
        raise SpecMismatchError("discount", "a number", "None")
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
    outer_dims: Any = None,
    reward_spec: Any = None,
) -> TimeStep:
    """A MID time step.

    The batch is ``outer_dims`` when given, else the reward's outer dims (a single
    reward's whole shape; the first dim of several rewards). Reward tensors keep their
    dtype and numpy rewards become float32, as in TF-Agents, unless ``reward_spec`` gives
    the dtypes.
    """
    return _step(observation, reward, discount, StepType.MID, reward_spec, outer_dims)


def termination(
    observation: Any,
    reward: Any,
    outer_dims: Any = None,
    reward_spec: Any = None,
) -> TimeStep:
    """A LAST time step of an episode that ended (discount 0)."""
    return _step(observation, reward, 0.0, StepType.LAST, reward_spec, outer_dims)


def truncation(
    observation: Any,
    reward: Any,
    discount: Any = 1.0,
    outer_dims: Any = None,
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
