"""Seeded episodes in chunks, and the gymnasium environments they run in (TF-free).

One place for what ``policy-toolkit run``, ``quantize --env`` and the Ray evaluators
do: make a ``GymVectorEnvironment`` from an id (or a callable making one gymnasium
env) with a clear error for an unknown id or a missing gymnasium, check that a policy
fits it, and play whole episodes in chunks. Episode i always resets with ``seed + i``
and chunks start at multiples of ``chunk`` (``chunks``), so a stochastic policy
drawing per batch row gives the same episodes wherever the chunks are played.
gymnasium is imported when an environment is made, not when this module loads.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from toolkit import nest
from toolkit.errors import ArgumentError, EnvironmentIdError, SpecMismatchError, UnsupportedError

__all__ = [
    "MAX_PARALLEL_ENVS",
    "EpisodePlayer",
    "Episodes",
    "check_compatible",
    "chunks",
    "make_env",
    "play",
]

#: Environments stepping together (one policy call per step of all of them).
MAX_PARALLEL_ENVS = 32


def make_env(
    env: str | Callable[[], Any], num_envs: int, *, what: str = "env", **adapter_kwargs: Any
) -> Any:
    """A ``GymVectorEnvironment`` of ``num_envs`` copies of ``env``.

    Args:
      env: a gymnasium id, or a callable making one gymnasium env (e.g. a picklable
        factory sent to Ray workers).
      num_envs: copies stepping together.
      what: how the caller names the environment in messages (``--env``, ``env``).
      **adapter_kwargs: for ``GymVectorEnvironment`` (e.g. ``action_mask=True`` puts
        the environment's ``info["action_mask"]`` into the observations).

    Raises:
      UnsupportedError: gymnasium is not installed.
      EnvironmentIdError: gymnasium does not know the id, or the environment needs a
        module that is not installed (e.g. box2d).
    """
    try:
        import gymnasium
    except ModuleNotFoundError:
        raise UnsupportedError(
            f"{what}: playing episodes needs gymnasium, which is not installed "
            "(pip install gymnasium; the [runtime], [litert] and [ray] extras carry it)"
        ) from None
    from toolkit.environments.gym_adapter import GymVectorEnvironment

    name = env if isinstance(env, str) else getattr(env, "env_id", None) or repr(env)
    try:
        if isinstance(env, str):
            return GymVectorEnvironment(env, num_envs, **adapter_kwargs)
        return GymVectorEnvironment([env] * num_envs, **adapter_kwargs)
    except gymnasium.error.Error as e:
        raise EnvironmentIdError(f"{what} {name!r}: {e}") from e
    except ModuleNotFoundError as e:
        raise EnvironmentIdError(
            f"{what} {name!r}: the environment needs the module {e.name!r}; install it"
        ) from e


def check_compatible(policy: Any, env: Any, env_id: str) -> None:
    """Refuses an environment whose observations or actions the policy cannot take.

    Raises:
      SpecMismatchError: naming the leaf, e.g. ``CartPole-v1 observation: expected shape
        (3,) float32 (the policy's), got shape (4,) float32``.
    """
    pairs = (
        ("observation", policy.time_step_spec.observation, env.observation_spec()),
        ("action", policy.action_spec, env.action_spec()),
    )
    for what, mine, theirs in pairs:
        mine_leaves = nest.flatten_with_paths(mine, what)
        their_leaves = nest.flatten_with_paths(theirs, what)
        if [p for p, _ in mine_leaves] != [p for p, _ in their_leaves]:
            raise SpecMismatchError(
                f"{env_id} {what}",
                f"the policy's {[p for p, _ in mine_leaves]}",
                f"{[p for p, _ in their_leaves]}",
            )
        for (path, a), (_, b) in zip(mine_leaves, their_leaves, strict=True):
            if tuple(a.shape) != tuple(b.shape) or np.dtype(a.dtype).kind != np.dtype(b.dtype).kind:
                raise SpecMismatchError(
                    f"{env_id} {path}",
                    f"shape {tuple(a.shape)} {np.dtype(a.dtype).name} (the policy's)",
                    f"shape {tuple(b.shape)} {np.dtype(b.dtype).name}",
                )


def chunks(episodes: int, chunk: int = MAX_PARALLEL_ENVS) -> list[tuple[int, int]]:
    """``(first episode, count)`` blocks covering ``episodes``, each starting at a multiple
    of ``chunk``."""
    for name, value in (("episodes", episodes), ("chunk", chunk)):
        if isinstance(value, bool) or int(value) < 1:
            raise ArgumentError(f"{name}: expected a positive int, got {value!r}")
    return [(start, min(chunk, episodes - start)) for start in range(0, episodes, chunk)]


class EpisodePlayer:
    """Plays chunks of seeded episodes of one environment, keeping an env per chunk size.

    Args:
      env: a gymnasium id or a callable making one gymnasium env.
      what: how messages name the environment (``make_env``).
      first: an environment already made for it (e.g. to check the policy against),
        used for chunks of its batch size and closed with the player.
      **adapter_kwargs: for every environment it makes (``make_env``).
    """

    def __init__(
        self,
        env: str | Callable[[], Any],
        *,
        what: str = "env",
        first: Any = None,
        **adapter_kwargs: Any,
    ):
        self._env = env
        self._what = what
        self._adapter_kwargs = adapter_kwargs
        self._envs: dict[int, Any] = {}
        if first is not None:
            self._envs[first.batch_size or 1] = first

    def env(self, count: int) -> Any:
        """The environment of ``count`` copies (made on first use)."""
        made = self._envs.get(count)
        if made is None:
            made = self._envs[count] = make_env(
                self._env, count, what=self._what, **self._adapter_kwargs
            )
        return made

    def play(
        self,
        policy: Any,
        first_seed: int,
        count: int,
        *,
        on_ended: Callable[[int], Any] | None = None,
    ) -> Any:
        """``count`` whole episodes stepping together, episode i reset with ``first_seed + i``.

        ``on_ended(n)`` is called whenever n of them end at a step (a progress bar).

        Returns:
          The ``driver.Evaluation`` (one return and one length per episode).
        """
        from toolkit.environments import driver

        return driver.evaluate_policy(self.env(count), policy, seed=first_seed, on_ended=on_ended)

    def close(self) -> None:
        envs, self._envs = list(self._envs.values()), {}
        for env in envs:
            env.close()

    def __enter__(self) -> EpisodePlayer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclasses.dataclass(frozen=True)
class Episodes:
    """Returns and lengths of every episode, in seed order, and the seconds spent playing."""

    returns: list[float]
    lengths: list[int]
    seconds: float

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.returns))


def play(
    policy: Any,
    env: str | Callable[[], Any],
    episodes: int,
    seed: int,
    *,
    chunk: int = MAX_PARALLEL_ENVS,
    what: str = "env",
) -> Episodes:
    """Plays ``episodes`` whole episodes of ``policy``; episode i resets with ``seed + i``.

    Chunks of up to ``chunk`` environments step together (``chunks``); the time spent
    making environments is not counted in ``seconds``.
    """
    returns: list[float] = []
    lengths: list[int] = []
    seconds = 0.0
    with EpisodePlayer(env, what=what) as player:
        for start, count in chunks(episodes, chunk):
            player.env(count)
            started = time.perf_counter()
            evaluation = player.play(policy, seed + start, count)
            seconds += time.perf_counter() - started
            returns += evaluation.episode_returns
            lengths += evaluation.episode_lengths
    return Episodes(returns, lengths, seconds)
