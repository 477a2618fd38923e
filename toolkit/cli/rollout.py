"""What ``policy-toolkit run`` does: roll a loaded bundle policy out in gymnasium (TF-free).

Episodes run in batches of up to ``MAX_PARALLEL_ENVS`` environments stepping together
(one policy call per step of the batch), each playing exactly one whole episode that
resets with ``seed + i``: ``toolkit.environments.episodes`` makes the environments and
plays the chunks, as it does for ``quantize --env`` and the Ray evaluators.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.environments import episodes as episodes_lib
from toolkit.errors import UnsupportedError

__all__ = [
    "MAX_PARALLEL_ENVS",
    "RolloutResult",
    "check_compatible",
    "check_record",
    "make_env",
    "record_episode",
    "render_rollout",
    "rollout",
]

MAX_RECORDED_FRAMES = 1000
#: Environments stepping together (toolkit.environments.episodes).
MAX_PARALLEL_ENVS = episodes_lib.MAX_PARALLEL_ENVS


def make_env(env_id: str, num_envs: int, **adapter_kwargs: Any) -> Any:
    """A GymVectorEnvironment of ``num_envs`` copies, or a clear error for a bad id.

    ``action_mask=True`` (for a bundle that declares a mask) puts the environment's
    ``info["action_mask"]`` into the observations (toolkit.environments.gym_adapter).
    """
    return episodes_lib.make_env(env_id, num_envs, what="--env", **adapter_kwargs)


#: Refuses an environment whose observations or actions the policy cannot take.
check_compatible = episodes_lib.check_compatible


def _masked(policy: Any) -> bool:
    """Whether a bundle policy reads an action mask from its observations."""
    return getattr(policy, "action_mask_input", None) is not None


@dataclasses.dataclass(frozen=True)
class RolloutResult:
    """Returns and lengths of every episode, and the wall time they took."""

    env_id: str
    seed: int
    returns: list[float]
    lengths: list[int]
    seconds: float
    #: per episode, the policy's train step when it started and ended (None: not tracked)
    train_steps: list[tuple[int | None, int | None]] | None = None

    @property
    def steps(self) -> int:
        return int(sum(self.lengths))

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else float("inf")

    def stats(self) -> dict[str, float]:
        r = np.asarray(self.returns, np.float64)
        return {
            "mean": float(r.mean()),
            "std": float(r.std()),
            "min": float(r.min()),
            "max": float(r.max()),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "env": self.env_id,
            "seed": self.seed,
            "episodes": len(self.returns),
            "return": self.stats(),
            "mean_length": float(np.mean(self.lengths)),
            "steps": self.steps,
            "seconds": self.seconds,
            "steps_per_second": self.steps_per_second,
            "returns": self.returns,
            "lengths": self.lengths,
            **({"train_steps": [list(t) for t in self.train_steps]} if self.train_steps else {}),
        }


def rollout(
    policy: Any,
    env: Any,
    episodes: int,
    seed: int,
    *,
    env_id: str = "",
    on_episode: Any = None,
    on_ended: Any = None,
) -> RolloutResult:
    """Plays ``episodes`` whole episodes; episode i resets with ``seed + i``.

    ``env`` is the first batch of environments (``make_env``); further batches of a
    different size are made as needed. With a batch of one, each episode's train steps
    (at its start and end) are recorded and ``on_episode(index, return, length,
    (first, last))`` is called after it (for ``--follow``). ``on_ended(n)`` is called
    whenever n episodes end (a progress bar).
    """
    returns: list[float] = []
    lengths: list[int] = []
    seconds = 0.0
    tracked = env.batch_size == 1
    train_steps: list[tuple[int | None, int | None]] = []
    with episodes_lib.EpisodePlayer(
        env_id, what="--env", first=env, action_mask=_masked(policy)
    ) as player:
        for start, count in episodes_lib.chunks(episodes, env.batch_size):
            player.env(count)  # made before the clock starts
            first = policy.train_step
            started = time.perf_counter()
            evaluation = player.play(policy, seed + start, count, on_ended=on_ended)
            seconds += time.perf_counter() - started
            returns += evaluation.episode_returns
            lengths += evaluation.episode_lengths
            if tracked:
                train_steps.append((first, policy.train_step))
                if on_episode is not None:
                    on_episode(start, returns[-1], lengths[-1], train_steps[-1])
    return RolloutResult(env_id, seed, returns, lengths, seconds, train_steps if tracked else None)


def render_rollout(
    result: RolloutResult, bundle: Path, backend: str, *, workers: int = 0
) -> tuple[str, Any]:
    """A title line and the table of results (``workers``: Ray actors that played them)."""
    from rich import box
    from rich.table import Table

    stats = result.stats()
    where = f", {workers} Ray workers" if workers else ""
    title = (
        f"{bundle} in {result.env_id} ({backend} backend{where}, seeds {result.seed}.."
        f"{result.seed + len(result.returns) - 1})"
    )
    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    for column in ("episodes", "mean return", "std", "min", "max", "mean length", "steps/s"):
        table.add_column(column, justify="right")
    table.add_row(
        str(len(result.returns)),
        f"{stats['mean']:.2f}",
        f"{stats['std']:.2f}",
        f"{stats['min']:.2f}",
        f"{stats['max']:.2f}",
        f"{np.mean(result.lengths):.1f}",
        f"{result.steps_per_second:,.0f}",
    )
    return title, table


def check_record(env_id: str, seed: int) -> None:
    """Fails before any episode is played when ``--record`` could not write its GIF:
    pillow missing, or the environment unable to render RGB frames here (its renderer,
    e.g. pygame, missing). Renders the first frame of a reset; the policy is not called.

    Raises:
      UnsupportedError: naming what is missing and what installs it.
    """
    try:
        import PIL  # noqa: F401
    except ModuleNotFoundError as e:
        raise UnsupportedError(
            "--record: writing the GIF needs pillow, which is not installed (pip install pillow)"
        ) from e
    env = _render_env(env_id)
    try:
        env.reset(seed=seed)
        _frame(env, env_id)
    finally:
        env.close()


def _render_env(env_id: str, *, action_mask: bool = False) -> Any:
    import gymnasium

    from toolkit.environments.gym_adapter import GymEnvironment

    # Off-screen rendering: no window, no display needed, no pygame banner.
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        return GymEnvironment(env_id, render_mode="rgb_array", action_mask=action_mask)
    except gymnasium.error.DependencyNotInstalled as e:
        raise UnsupportedError(_missing_renderer(env_id, e)) from e
    except gymnasium.error.Error as e:
        raise UnsupportedError(f"--record: {env_id} cannot render ({e})") from e


def _missing_renderer(env_id: str, error: BaseException) -> str:
    """What a renderer's missing module is, and what installs it."""
    cause = error if isinstance(error, ModuleNotFoundError) else error.__cause__
    name = getattr(cause, "name", None)
    if name:
        top = name.split(".")[0]
        package = {"PIL": "pillow"}.get(top, top)
        return (
            f"--record: rendering {env_id} needs {package}, which is not installed "
            f"(pip install {package})"
        )
    return f"--record: rendering {env_id} failed: {error}"


def record_episode(policy: Any, env_id: str, seed: int, path: Path) -> int:
    """Renders one episode (reset with ``seed``) into an animated GIF; returns the frames.

    Raises:
      UnsupportedError: the environment cannot render RGB frames, or pillow (or the
        environment's renderer, e.g. pygame) is not installed.
    """
    from PIL import Image  # ``run --record`` checked for it first (check_record)

    env = _render_env(env_id, action_mask=_masked(policy))
    frames = []
    try:
        time_step = env.reset(seed=seed)
        state = policy.get_initial_state()
        while True:
            frames.append(_frame(env, env_id))
            if bool(time_step.is_last()) or len(frames) >= MAX_RECORDED_FRAMES:
                break
            step = policy.action(time_step, state)
            time_step, state = env.step(step.action), step.state
    finally:
        env.close()
    fps = env.gym_env.metadata.get("render_fps") or 30
    images = [Image.fromarray(frame) for frame in frames]
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(
        path,
        save_all=True,
        append_images=images[1:],
        duration=max(20, int(1000 / fps)),
        loop=0,
    )
    return len(frames)


def _frame(env: Any, env_id: str) -> np.ndarray:
    import gymnasium

    try:
        frame = env.render()
    except (gymnasium.error.DependencyNotInstalled, ModuleNotFoundError) as e:
        raise UnsupportedError(_missing_renderer(env_id, e)) from e
    frame = np.asarray(frame) if frame is not None else None
    if frame is None or frame.ndim != 3 or frame.shape[-1] not in (3, 4):
        raise UnsupportedError(f"--record: {env_id} renders no RGB frames")
    return frame.astype(np.uint8)
