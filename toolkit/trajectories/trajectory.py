"""Trajectories and transitions, as TF-Agents' ``trajectories.trajectory`` (TF-free).

A ``Trajectory`` is what a driver stores per step: the step type and observation of a
time step, the action and info the policy chose, and the next step's type, reward and
discount. ``from_transition`` builds one from ``(time_step, action_step,
next_time_step)``; ``to_transition`` turns ``[B, T]`` trajectories back into transitions.

Works on numpy arrays and on TensorFlow tensors: with tensors TensorFlow is loaded
already (the caller made them) and is looked up, never imported.
"""

from __future__ import annotations

import pprint
import sys
from typing import Any, NamedTuple

import numpy as np

from toolkit import nest
from toolkit.errors import SpecMismatchError
from toolkit.specs import array_spec
from toolkit.trajectories.policy_step import PolicyStep
from toolkit.trajectories.time_step import StepType, TimeStep
from toolkit.utils import nest_utils

__all__ = [
    "Trajectory",
    "Transition",
    "boundary",
    "experience_to_transitions",
    "first",
    "from_episode",
    "from_transition",
    "last",
    "mid",
    "single_step",
    "to_n_step_transition",
    "to_transition",
    "to_transition_spec",
]


def _tf() -> Any:
    return sys.modules.get("tensorflow")


def _is_tensor(value: Any) -> bool:
    tf = _tf()
    return tf is not None and tf.is_tensor(value)


def _equal(a: Any, value: int) -> Any:
    if _is_tensor(a):
        tf = _tf()
        return tf.equal(a, tf.cast(value, a.dtype))
    return np.asarray(a) == value


@array_spec.register_namedtuple
class Trajectory(NamedTuple):
    """One step of experience: the time step's ``step_type`` and ``observation``, the
    policy's ``action`` and ``policy_info``, the next time step's ``next_step_type``,
    ``reward`` and ``discount``. Fields may be batched (``[B]``, ``[T]``, ``[B, T]``)."""

    step_type: Any
    observation: Any
    action: Any
    policy_info: Any
    next_step_type: Any
    reward: Any
    discount: Any

    def is_first(self) -> Any:
        return _equal(self.step_type, StepType.FIRST)

    def is_mid(self) -> Any:
        both = (_equal(self.step_type, StepType.MID), _equal(self.next_step_type, StepType.MID))
        if _is_tensor(both[0]):
            return _tf().logical_and(*both)
        return both[0] & both[1]

    def is_last(self) -> Any:
        return _equal(self.next_step_type, StepType.LAST)

    def is_boundary(self) -> Any:
        return _equal(self.step_type, StepType.LAST)

    def replace(self, **kwargs: Any) -> Trajectory:
        """A copy with the given fields replaced (``namedtuple._replace``)."""
        return self._replace(**kwargs)

    def __repr__(self) -> str:
        return "Trajectory(\n" + pprint.pformat(dict(self._asdict()), sort_dicts=False) + ")"


@array_spec.register_namedtuple
class Transition(NamedTuple):
    """``(time_step, action_step, next_time_step)``: an S, A, S' step."""

    time_step: Any
    action_step: Any
    next_time_step: Any

    def replace(self, **kwargs: Any) -> Transition:
        """A copy with the given fields replaced (``namedtuple._replace``)."""
        return self._replace(**kwargs)

    def __repr__(self) -> str:
        return "Transition(\n" + pprint.pformat(dict(self._asdict())) + ")"


def _create(observation, action, policy_info, reward, discount, step_type, next_step_type):
    if nest_utils.has_tensors(observation, action, policy_info, reward, discount):
        tf = _tf()
        discount = tf.identity(discount)
        shape = tf.shape(discount)
        copy = lambda tree: nest.map_structure(tf.identity, tree)  # noqa: E731
        return Trajectory(
            step_type=tf.fill(shape, np.int32(step_type)),
            observation=copy(observation),
            action=copy(action),
            policy_info=copy(policy_info),
            next_step_type=tf.fill(shape, np.int32(next_step_type)),
            reward=copy(reward),
            discount=discount,
        )
    discount = np.asarray(discount)
    arrays = lambda tree: nest.map_structure(np.asarray, tree)  # noqa: E731
    return Trajectory(
        step_type=np.full(discount.shape, step_type, np.int32),
        observation=arrays(observation),
        action=arrays(action),
        policy_info=arrays(policy_info),
        next_step_type=np.full(discount.shape, next_step_type, np.int32),
        reward=arrays(reward),
        discount=discount,
    )


def first(observation, action, policy_info, reward, discount) -> Trajectory:
    """A Trajectory from a FIRST step to a MID one; ``discount`` gives the outer shape."""
    return _create(observation, action, policy_info, reward, discount, StepType.FIRST, StepType.MID)


def mid(observation, action, policy_info, reward, discount) -> Trajectory:
    """A Trajectory from a MID step to a MID one."""
    return _create(observation, action, policy_info, reward, discount, StepType.MID, StepType.MID)


def last(observation, action, policy_info, reward, discount) -> Trajectory:
    """A Trajectory from a MID step to a LAST one."""
    return _create(observation, action, policy_info, reward, discount, StepType.MID, StepType.LAST)


def single_step(observation, action, policy_info, reward, discount) -> Trajectory:
    """A Trajectory from a FIRST step to a LAST one (a one-step episode)."""
    return _create(
        observation, action, policy_info, reward, discount, StepType.FIRST, StepType.LAST
    )


def boundary(observation, action, policy_info, reward, discount) -> Trajectory:
    """A Trajectory from a LAST step to the FIRST step of the next episode."""
    return _create(
        observation, action, policy_info, reward, discount, StepType.LAST, StepType.FIRST
    )


def _outer_dim(value: Any) -> Any:
    """The first dim of an array or tensor: an int when known, else a scalar tensor."""
    if not _is_tensor(value):
        return np.shape(value)[0]
    tf = _tf()
    if isinstance(value, tf.SparseTensor):
        static = tf.get_static_value(value.dense_shape)
        return int(static[0]) if static is not None else value.dense_shape[0]
    if isinstance(value, tf.RaggedTensor):
        return value.shape[0] if value.shape[0] is not None else value.nrows()
    return value.shape[0] if value.shape[0] is not None else tf.shape(value)[0]


def from_episode(observation, action, policy_info, reward, discount=None) -> Trajectory:
    """A Trajectory of one whole episode of ``T`` steps: FIRST, MID..., then LAST.

    Every leaf is ``[T, ...]``; without ``discount``, T is read from the first reward leaf
    and the discounts are ones (float32).

    Raises:
      SpecMismatchError: a leaf whose first dim is not T.
    """
    tensors = nest_utils.has_tensors(observation, action, policy_info, reward, discount)
    tf = _tf() if tensors else None
    source = discount if discount is not None else nest.flatten(reward)[0]
    frames = _outer_dim(source)
    if discount is None:
        discount = tf.ones([frames], tf.float32) if tensors else np.ones([frames], np.float32)
    if isinstance(frames, (int, np.integer)):
        for path, leaf in nest.flatten_with_paths(
            {
                "observation": observation,
                "action": action,
                "policy_info": policy_info,
                "reward": reward,
                "discount": discount,
            }
        ):
            dim = _outer_dim(leaf)
            if isinstance(dim, (int, np.integer)) and dim != frames:
                raise SpecMismatchError(path, f"a first dim of {frames} (T)", f"{dim}")
    if tensors:
        mids = tf.fill([tf.maximum(0, frames - 1)], np.int32(StepType.MID))
        step_type = tf.concat([[np.int32(StepType.FIRST)], mids], 0)
        next_step_type = tf.concat([mids, [np.int32(StepType.LAST)]], 0)
        copy = lambda tree: nest.map_structure(tf.identity, tree)  # noqa: E731
    else:
        mids = np.full([max(0, frames - 1)], StepType.MID, np.int32)
        step_type = np.concatenate([[np.int32(StepType.FIRST)], mids])
        next_step_type = np.concatenate([mids, [np.int32(StepType.LAST)]])
        copy = lambda tree: nest.map_structure(np.asarray, tree)  # noqa: E731
    return Trajectory(
        step_type=step_type,
        observation=copy(observation),
        action=copy(action),
        policy_info=copy(policy_info),
        next_step_type=next_step_type,
        reward=copy(reward),
        discount=copy(discount),
    )


def from_transition(
    time_step: TimeStep, action_step: PolicyStep, next_time_step: TimeStep
) -> Trajectory:
    """The Trajectory of one transition (no time dim is added)."""
    return Trajectory(
        step_type=time_step.step_type,
        observation=time_step.observation,
        action=action_step.action,
        policy_info=action_step.info,
        next_step_type=next_time_step.step_type,
        reward=next_time_step.reward,
        discount=next_time_step.discount,
    )


def _check_rank(value: Any, low: int, high: int) -> None:
    rank = len(value.shape)
    if rank < low or rank > high:
        raise SpecMismatchError(
            "trajectory/discount", f"a rank within [{low},{high}]", f"rank {rank}"
        )


def _slice_time(value: Any, start: int | None, end: int | None) -> Any:
    """``value[:, start:end]`` for arrays, tensors and sparse tensors."""
    tf = _tf()
    if tf is not None and isinstance(value, tf.SparseTensor):
        shape = tf.cast(value.dense_shape, tf.int64)
        length = shape[1]
        begin = 0 if start is None else (start if start >= 0 else length + start)
        stop = length if end is None else (end if end >= 0 else length + end)
        starts = tf.concat([[0], [begin], tf.zeros_like(shape[2:])], 0)
        sizes = tf.concat([shape[:1], [stop - begin], shape[2:]], 0)
        return tf.sparse.slice(value, tf.cast(starts, tf.int64), tf.cast(sizes, tf.int64))
    return value[:, start:end]


def _squeeze_time(value: Any) -> Any:
    tf = _tf()
    if tf is not None and isinstance(value, tf.SparseTensor):
        shape = tf.concat([value.dense_shape[:1], value.dense_shape[2:]], 0)
        return tf.sparse.reshape(value, shape)
    if _is_tensor(value):
        return tf.squeeze(value, 1)
    return np.squeeze(value, 1)


def _zeros_like(value: Any) -> Any:
    return _tf().zeros_like(value) if _is_tensor(value) else np.zeros_like(value)


def to_transition(trajectory: Trajectory, next_trajectory: Trajectory | None = None) -> Transition:
    """The transitions of ``[B, T]`` trajectories (T - 1 of them), or of two adjacent ones.

    The time steps' reward and discount cannot be known: they are zeros.

    Raises:
      SpecMismatchError: a discount of rank other than 1 or 2.
    """
    _check_rank(trajectory.discount, 1, 2)
    if next_trajectory is not None:
        _check_rank(next_trajectory.discount, 1, 2)
    else:
        next_trajectory = nest.map_structure(lambda t: _slice_time(t, 1, None), trajectory)
        trajectory = nest.map_structure(lambda t: _slice_time(t, None, -1), trajectory)
    action_steps = PolicyStep(action=trajectory.action, state=(), info=trajectory.policy_info)
    time_steps = TimeStep(
        trajectory.step_type,
        reward=nest.map_structure(_zeros_like, trajectory.reward),
        discount=_zeros_like(trajectory.discount),
        observation=trajectory.observation,
    )
    next_time_steps = TimeStep(
        step_type=trajectory.next_step_type,
        reward=trajectory.reward,
        discount=trajectory.discount,
        observation=next_trajectory.observation,
    )
    return Transition(time_steps, action_steps, next_time_steps)


def _discounted_return(rewards: Any, discounts: Any) -> Any:
    """``R_0`` of ``R_t = r_t + d_t R_{t+1}`` (``R_T = 0``) over the time dim of ``[B, T]``."""
    if _is_tensor(rewards) or _is_tensor(discounts):
        tf = _tf()
        rewards = tf.convert_to_tensor(rewards)
        discounts = tf.cast(discounts, rewards.dtype)
        returns = tf.scan(
            lambda total, step: step[0] + step[1] * total,
            (tf.transpose(rewards), tf.transpose(discounts)),
            initializer=tf.zeros_like(rewards[:, 0]),
            reverse=True,
        )
        return returns[0]
    rewards, discounts = np.asarray(rewards), np.asarray(discounts)
    total = np.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        total = rewards[:, t] + discounts[:, t] * total
    return total


def to_n_step_transition(trajectory: Trajectory, gamma: float) -> Transition:
    """An N-step transition from ``[B, N + 1]`` trajectories (no time dim left).

    ``next_time_step.reward`` is the discounted return of the first N rewards (gamma times
    each step's discount), ``next_time_step.discount`` ``gamma**(N-1)`` times the product
    of the N discounts; the first time step's reward and discount are NaN (unknown).

    Raises:
      SpecMismatchError: a discount of rank other than 2, or fewer than 2 frames.
    """
    _check_rank(trajectory.discount, 2, 2)
    tf = _tf() if _is_tensor(trajectory.discount) else None
    time_dim = trajectory.discount.shape[1]
    if time_dim is None and tf is not None:
        time_dim = tf.shape(trajectory.discount)[1]
    if isinstance(time_dim, (int, np.integer)) and time_dim < 2:
        raise SpecMismatchError(
            "trajectory/discount",
            "at least 2 frames (T)",
            f"{time_dim} (shape {tuple(trajectory.discount.shape)})",
        )
    n = time_dim - 1
    first_frame = nest.map_structure(lambda t: _squeeze_time(_slice_time(t, None, 1)), trajectory)
    final_frame = nest.map_structure(lambda t: _squeeze_time(_slice_time(t, -1, None)), trajectory)
    rewards = trajectory.reward[:, :-1]
    discounts = trajectory.discount[:, :-1]
    action_steps = PolicyStep(action=first_frame.action, state=(), info=first_frame.policy_info)
    reward = _discounted_return(rewards, gamma * discounts)
    if tf is not None:
        final_discount = gamma ** tf.cast(n - 1, discounts.dtype) * tf.reduce_prod(discounts, 1)
        nan_like = lambda t: np.nan * tf.ones_like(t)  # noqa: E731
    else:
        final_discount = gamma ** (n - 1) * np.prod(discounts, axis=1)
        nan_like = lambda t: np.nan * np.ones_like(t)  # noqa: E731
    time_steps = TimeStep(
        first_frame.step_type,
        reward=nest.map_structure(nan_like, first_frame.reward),
        discount=nan_like(first_frame.discount),
        observation=first_frame.observation,
    )
    next_time_steps = TimeStep(
        step_type=final_frame.step_type,
        reward=reward,
        discount=final_discount,
        observation=final_frame.observation,
    )
    return Transition(time_steps, action_steps, next_time_steps)


def to_transition_spec(trajectory_spec: Trajectory) -> Transition:
    """The Transition spec of a Trajectory spec (the policy step's state is ``()``)."""
    action_step_spec = PolicyStep(
        action=trajectory_spec.action, state=(), info=trajectory_spec.policy_info
    )
    time_step_spec = TimeStep(
        trajectory_spec.step_type,
        reward=trajectory_spec.reward,
        discount=trajectory_spec.discount,
        observation=trajectory_spec.observation,
    )
    return Transition(time_step_spec, action_step_spec, time_step_spec)


def experience_to_transitions(experience: Trajectory, squeeze_time_dim: bool) -> Transition:
    """``to_transition(experience)``, its time dim (of 1) squeezed out if asked."""
    transitions = to_transition(experience)
    if squeeze_time_dim:
        transitions = nest.map_structure(_squeeze_time, transitions)
    return transitions
