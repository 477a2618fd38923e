"""Gymnasium environments as this project's specs and TimeSteps (TF-free).

``GymEnvironment`` wraps one ``gymnasium.Env``; ``GymVectorEnvironment`` wraps a
``gymnasium.vector.VectorEnv`` (a ``SyncVectorEnv`` unless you pass your own) and returns
batched TimeSteps. Both map gymnasium's five-tuple onto time steps:

- ``reset()`` returns a FIRST step (reward 0, discount 1);
- ``terminated`` becomes ``termination`` (LAST, discount 0): the episode really ended;
- ``truncated`` (e.g. a time limit) becomes ``truncation`` (LAST, discount 1), so a learner
  still bootstraps from the last observation; when both are set, terminated wins.

Auto-reset: the step after a LAST step is a FIRST step. The action passed to that call
is ignored (the environment is reset instead of stepped), as in TF-Agents and as in
gymnasium's ``AutoresetMode.NEXT_STEP``, which the vector adapter requires. A transition
whose first time step is LAST is therefore a boundary and carries no experience.

Spaces map to specs as follows: ``Box`` -> ``BoundedArraySpec`` with the box's bounds
(``ArraySpec`` when the box is unbounded everywhere); ``Discrete(n, start)`` -> scalar int64
``BoundedArraySpec`` in ``[start, start + n - 1]``; ``MultiDiscrete`` and ``MultiBinary`` ->
integer ``BoundedArraySpec``; ``Dict`` -> dict of specs; ``Tuple`` -> tuple of specs. Other
spaces (``Text``, ``Graph``, ``Sequence``, ``OneOf``, custom ones) raise UnsupportedError.

Rewards are float32 scalars per environment, discounts float32, step types int32.
gymnasium is imported when an adapter is built from an id, not when this module loads.

Action masks: environments such as Taxi give ``info["action_mask"]`` (1 where an action
is allowed) with every observation. ``action_mask=True`` (or the info key, as a str)
makes it an observation leaf: observations become ``{"observation": <the space's
value>, "mask": <int8 of shape (n,)>}`` for a ``Discrete(n)`` action space, the mask
spec ``BoundedArraySpec((n,), int8, 0, 1)`` (nonzero values become 1), and
``observation_and_action_constraint_splitter()`` returns the splitter that agents and
policies take (a ``toolkit.action_masks.MaskSplitter``). A step without the mask in its
info raises SpecMismatchError naming the key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from toolkit import nest
from toolkit.action_masks import MaskSplitter
from toolkit.errors import ArgumentError, ArgumentTypeError, SpecMismatchError, UnsupportedError
from toolkit.specs.array_spec import ArraySpec, BoundedArraySpec
from toolkit.trajectories import time_step as ts

__all__ = [
    "ACTION_MASK_INFO_KEY",
    "SUPPORTED_SPACES",
    "GymEnvironment",
    "GymVectorEnvironment",
    "space_to_spec",
]

SUPPORTED_SPACES = ("Box", "Discrete", "MultiDiscrete", "MultiBinary", "Dict", "Tuple")

_REWARD_SPEC = ArraySpec((), np.float32, name="reward")
#: The info key ``action_mask=True`` reads (gymnasium's toy-text environments give it).
ACTION_MASK_INFO_KEY = "action_mask"
_MASK_SPLITTER = MaskSplitter("observation", "mask")


def _gym() -> Any:
    # Lazily: the TF-free core must import without gymnasium installed.
    import gymnasium

    return gymnasium


def space_to_spec(space: Any, name: str = "observation") -> Any:
    """The array spec (or nest of specs) describing the values of a gymnasium space.

    Args:
      space: a ``gymnasium.spaces.Space``.
      name: the nest path of the space, used as spec name and in error messages.

    Raises:
      UnsupportedError: for a space (or a space nested in a Dict/Tuple) that has no
        array spec here; the message names the space and its path.
    """
    spaces = _gym().spaces
    if isinstance(space, spaces.Box):
        low, high = np.asarray(space.low), np.asarray(space.high)
        if space.dtype.kind == "f" and np.all(np.isneginf(low)) and np.all(np.isposinf(high)):
            return ArraySpec(space.shape, space.dtype, name=name)
        return BoundedArraySpec(space.shape, space.dtype, minimum=low, maximum=high, name=name)
    if isinstance(space, spaces.Discrete):
        start, n = int(space.start), int(space.n)
        return BoundedArraySpec((), space.dtype, minimum=start, maximum=start + n - 1, name=name)
    if isinstance(space, spaces.MultiDiscrete):
        start = np.asarray(space.start)
        maximum = start + np.asarray(space.nvec) - 1
        return BoundedArraySpec(space.shape, space.dtype, minimum=start, maximum=maximum, name=name)
    if isinstance(space, spaces.MultiBinary):
        return BoundedArraySpec(space.shape, space.dtype, minimum=0, maximum=1, name=name)
    if isinstance(space, spaces.Dict):
        return {key: space_to_spec(sub, nest.join_path(name, key)) for key, sub in space.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(space_to_spec(sub, nest.join_path(name, i)) for i, sub in enumerate(space))
    raise UnsupportedError(
        f"{name}: gymnasium space {space!r} ({type(space).__name__}) is not supported; "
        f"supported spaces are {', '.join(SUPPORTED_SPACES)}"
    )


def _to_nest(value: Any, space: Any) -> Any:
    """Converts a gymnasium value (dicts keyed like the space) to this project's nest."""
    spaces = _gym().spaces
    if isinstance(space, spaces.Dict):
        return {key: _to_nest(value[key], sub) for key, sub in space.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(_to_nest(v, sub) for v, sub in zip(value, space, strict=True))
    return value


def _from_nest(value: Any, space: Any) -> Any:
    """Converts an action nest to what the gymnasium space expects (dicts, tuples)."""
    spaces = _gym().spaces
    if isinstance(space, spaces.Dict):
        return {key: _from_nest(value[key], sub) for key, sub in space.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(_from_nest(v, sub) for v, sub in zip(value, space, strict=True))
    if isinstance(space, spaces.Discrete) and isinstance(value, np.ndarray) and not value.ndim:
        # A numpy scalar: toy-text environments index dicts with the action (Taxi's P[s][a]),
        # and 0-d arrays are not hashable.
        return value[()]
    return value


def _conform(value: Any, spec: Any, prefix: str, outer_dims: tuple[int, ...]) -> Any:
    """Casts every leaf to its spec's dtype, checking shapes (and integer bounds)."""
    nest.assert_same_structure(value, spec, prefix)
    leaves = []
    for (path, s), leaf in zip(
        nest.flatten_with_paths(spec, prefix), nest.flatten(value), strict=True
    ):
        array, _ = s.conform(leaf, path, outer_dims)
        # Out-of-range integer actions crash gymnasium envs with a bare AssertionError;
        # float actions are left to the environment, which clips or rejects them itself.
        if isinstance(s, BoundedArraySpec) and s.dtype.kind in "iub":
            s.check_bounds(array, path)
        leaves.append(array)
    return nest.pack_sequence_as(spec, leaves)


def _mask_info_key(action_mask: Any, action_space: Any) -> str | None:
    """The info key of the action mask asked for, checked against the action space."""
    if action_mask is False or action_mask is None:
        return None
    if action_mask is True:
        key = ACTION_MASK_INFO_KEY
    elif isinstance(action_mask, str) and action_mask:
        key = action_mask
    else:
        raise ArgumentTypeError(
            f"action_mask: expected a bool or an info key (str), got {action_mask!r}"
        )
    if not isinstance(action_space, _gym().spaces.Discrete):
        raise UnsupportedError(
            f"action_mask: masks a Discrete action space, got {type(action_space).__name__} "
            f"{action_space!r}"
        )
    return key


class _Specs:
    """Specs shared by the single and the vector adapter."""

    def _init_specs(self, observation_space: Any, action_space: Any, action_mask: Any) -> None:
        self._observation_space = observation_space
        self._action_space = action_space
        self._mask_key = _mask_info_key(action_mask, action_space)
        if self._mask_key is None:
            self._observation_spec = space_to_spec(observation_space, "observation")
        else:
            self._num_actions = int(action_space.n)
            self._observation_spec = {
                "observation": space_to_spec(observation_space, "observation/observation"),
                "mask": BoundedArraySpec(
                    (self._num_actions,), np.int8, 0, 1, name="observation/mask"
                ),
            }
        self._action_spec = space_to_spec(action_space, "action")
        self._time_step_spec = ts.time_step_spec(self._observation_spec, _REWARD_SPEC)

    def observation_and_action_constraint_splitter(self) -> MaskSplitter | None:
        """The splitter of this adapter's observations with ``action_mask``, else None."""
        return None if self._mask_key is None else _MASK_SPLITTER

    def observation_spec(self) -> Any:
        return self._observation_spec

    def action_spec(self) -> Any:
        return self._action_spec

    def reward_spec(self) -> ArraySpec:
        return _REWARD_SPEC

    def time_step_spec(self) -> ts.TimeStep:
        return self._time_step_spec

    def _observation(self, raw: Any, outer_dims: tuple[int, ...], info: Any) -> Any:
        value = _to_nest(raw, self._observation_space)
        if self._mask_key is not None:
            value = {"observation": value, "mask": self._mask(info, outer_dims)}
        return _conform(value, self._observation_spec, "observation", outer_dims)

    def _mask(self, info: Any, outer_dims: tuple[int, ...]) -> np.ndarray:
        """The action mask of ``info`` (per environment for a vector), as int8 0/1."""
        key = self._mask_key
        shape = tuple(outer_dims) + (self._num_actions,)
        value = info.get(key) if isinstance(info, dict) else None
        present = info.get("_" + key, True) if isinstance(info, dict) else True
        if value is None or not np.all(present):
            missing = "" if value is None else f" for environments {np.flatnonzero(~present)}"
            raise SpecMismatchError(
                f"info[{key!r}]",
                f"an action mask of shape {shape} (action_mask asks for it)",
                f"none{missing}",
            )
        mask = np.asarray(value)
        if mask.shape != shape:
            raise SpecMismatchError(f"info[{key!r}]", f"shape {shape}", f"{mask.shape}")
        return (mask != 0).astype(np.int8)


class GymEnvironment(_Specs):
    """One gymnasium environment, stepping with actions that match ``action_spec()``.

    Args:
      env: a ``gymnasium.Env``, or an environment id for ``gymnasium.make``.
      validate_actions: check actions against the action spec before stepping, so that
        a wrong shape or an out-of-range discrete action gets a clear SpecMismatchError.
      action_mask: put the environment's ``info["action_mask"]`` (or the info key
        given) into observations as ``{"observation": ..., "mask": ...}`` (see above).
      **make_kwargs: passed to ``gymnasium.make`` when ``env`` is an id.
    """

    batch_size: int | None = None
    batched = False

    def __init__(
        self,
        env: Any,
        *,
        validate_actions: bool = True,
        action_mask: bool | str = False,
        **make_kwargs: Any,
    ):
        if isinstance(env, str):
            env = _gym().make(env, **make_kwargs)
        elif make_kwargs:
            raise ArgumentTypeError(
                f"make_kwargs {sorted(make_kwargs)} need an environment id, not an env"
            )
        self._env = env
        self._validate_actions = validate_actions
        self._init_specs(env.observation_space, env.action_space, action_mask)
        self._current: ts.TimeStep | None = None
        self.last_info: dict[str, Any] = {}

    @property
    def gym_env(self) -> Any:
        """The wrapped ``gymnasium.Env``."""
        return self._env

    def current_time_step(self) -> ts.TimeStep | None:
        return self._current

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> ts.TimeStep:
        """Starts an episode; ``seed`` seeds the environment's generator (gymnasium rules)."""
        observation, self.last_info = self._env.reset(seed=seed, options=options)
        self._current = ts.restart(
            self._observation(observation, (), self.last_info), reward_spec=_REWARD_SPEC
        )
        return self._current

    def step(self, action: Any) -> ts.TimeStep:
        """Applies ``action``; after a LAST step (or before any reset) resets instead."""
        if self._current is None or bool(self._current.is_last()):
            return self.reset()
        if self._validate_actions:
            action = _conform(action, self._action_spec, "action", ())
        observation, reward, terminated, truncated, self.last_info = self._env.step(
            _from_nest(action, self._action_space)
        )
        observation = self._observation(observation, (), self.last_info)
        reward = np.float32(reward)
        if terminated:
            self._current = ts.termination(observation, reward, reward_spec=_REWARD_SPEC)
        elif truncated:
            self._current = ts.truncation(observation, reward, reward_spec=_REWARD_SPEC)
        else:
            self._current = ts.transition(observation, reward, reward_spec=_REWARD_SPEC)
        return self._current

    def render(self) -> Any:
        return self._env.render()

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> GymEnvironment:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class GymVectorEnvironment(_Specs):
    """A batch of gymnasium environments stepping together; time steps are batched.

    Each sub-environment auto-resets on its own: where the previous step was LAST, the
    next step is FIRST and that environment's action is ignored (gymnasium's NEXT_STEP
    autoreset mode, which this adapter requires of a VectorEnv you pass in).

    Args:
      env: an environment id (then ``num_envs`` copies run in a ``SyncVectorEnv``), a
        sequence of functions that each build a ``gymnasium.Env``, or a
        ``gymnasium.vector.VectorEnv`` whose autoreset mode is NEXT_STEP.
      num_envs: how many copies of an environment id to run.
      validate_actions: check actions against the (batched) action spec before stepping.
      action_mask: put each environment's ``info["action_mask"]`` (or the info key
        given) into observations as ``{"observation": ..., "mask": ...}`` (see above).
      **make_kwargs: passed to ``gymnasium.make`` when ``env`` is an id.
    """

    batched = True

    def __init__(
        self,
        env: str | Sequence[Callable[[], Any]] | Any,
        num_envs: int | None = None,
        *,
        validate_actions: bool = True,
        action_mask: bool | str = False,
        **make_kwargs: Any,
    ):
        gym = _gym()
        autoreset = gym.vector.AutoresetMode.NEXT_STEP
        if isinstance(env, str):
            if num_envs is None or int(num_envs) < 1:
                raise ArgumentError(
                    f"num_envs: expected a positive int for id {env!r}, got {num_envs}"
                )
            env_id = env
            env = gym.vector.SyncVectorEnv(
                [lambda: gym.make(env_id, **make_kwargs) for _ in range(int(num_envs))],
                autoreset_mode=autoreset,
            )
        elif isinstance(env, gym.vector.VectorEnv):
            mode = env.metadata.get("autoreset_mode", autoreset)
            if gym.vector.AutoresetMode(mode) is not autoreset:
                raise UnsupportedError(
                    f"VectorEnv autoreset_mode: expected {autoreset.name}, got "
                    f"{gym.vector.AutoresetMode(mode).name} (TimeSteps need the LAST "
                    "observation before the reset)"
                )
        else:
            env = gym.vector.SyncVectorEnv(list(env), autoreset_mode=autoreset)
        if num_envs is not None and int(num_envs) != env.num_envs:
            raise ArgumentError(
                f"num_envs: expected {env.num_envs} (the VectorEnv's), got {num_envs}"
            )
        self._env = env
        self._validate_actions = validate_actions
        self._init_specs(env.single_observation_space, env.single_action_space, action_mask)
        self._current: ts.TimeStep | None = None
        self._needs_reset = np.ones(env.num_envs, dtype=bool)
        self.last_info: dict[str, Any] = {}

    @property
    def batch_size(self) -> int:
        return int(self._env.num_envs)

    @property
    def gym_env(self) -> Any:
        """The wrapped ``gymnasium.vector.VectorEnv``."""
        return self._env

    def current_time_step(self) -> ts.TimeStep | None:
        return self._current

    def reset(
        self, seed: int | Sequence[int] | None = None, options: dict[str, Any] | None = None
    ) -> ts.TimeStep:
        """Resets every environment; an int ``seed`` seeds environment i with ``seed + i``."""
        observation, self.last_info = self._env.reset(seed=seed, options=options)
        outer = (self.batch_size,)
        self._current = ts.restart(
            self._observation(observation, outer, self.last_info),
            self.batch_size,
            reward_spec=_REWARD_SPEC,
        )
        self._needs_reset[:] = False
        return self._current

    def step(self, action: Any) -> ts.TimeStep:
        """Steps every environment; those whose last step was LAST restart (FIRST) instead."""
        if self._current is None:
            return self.reset()
        outer = (self.batch_size,)
        if self._validate_actions:
            action = _conform(action, self._action_spec, "action", outer)
        observation, reward, terminated, truncated, self.last_info = self._env.step(
            _from_nest(action, self._action_space)
        )
        terminated = np.asarray(terminated, dtype=bool)
        truncated = np.asarray(truncated, dtype=bool)
        first = self._needs_reset
        step_type = np.where(
            first,
            ts.StepType.FIRST,
            np.where(terminated | truncated, ts.StepType.LAST, ts.StepType.MID),
        ).astype(np.int32)
        discount = np.where(terminated & ~first, 0.0, 1.0).astype(np.float32)
        reward = np.where(first, 0.0, np.asarray(reward)).astype(np.float32)
        self._current = ts.TimeStep(
            step_type, reward, discount, self._observation(observation, outer, self.last_info)
        )
        self._needs_reset = (terminated | truncated) & ~first
        return self._current

    def render(self) -> Any:
        return self._env.render()

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> GymVectorEnvironment:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
