"""An off-policy training loop: collect, train in-graph, evaluate, checkpoint, resume.

One iteration steps every environment of a vector once with the agent's
``collect_policy`` (through ``PyTFPolicy``), writes the transitions to the replay
buffer, and calls ``agent.train`` once on ``[K, B]`` sampled experience: K gradient
steps inside one ``tf.function`` call, so Python overhead is paid per iteration, not
per gradient step. Every ``eval_interval`` environment steps the greedy ``policy``
plays one episode in each environment of ``eval_env``; a better mean return is saved
as a policy checkpoint, so the latest policy checkpoint is always the best policy
seen, and reaching ``target_return`` stops training early.

The whole training state (agent, optimizer, replay buffer, train step, environment
steps, best return) is checkpointed every ``checkpoint_interval`` environment steps
and at the end; a new run with the same output directory resumes from it. See
``toolkit.agents.checkpoints`` for the directory layout.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from toolkit.agents import checkpoints
from toolkit.environments import driver as driver_lib
from toolkit.policies.py_tf_policy import PyTFPolicy
from toolkit.policies.random_py_policy import RandomPyPolicy

__all__ = [
    "Progress",
    "ProgressBar",
    "TrainResult",
    "configure_tensorflow",
    "format_number",
    "report_run",
    "restore_best_policy",
    "train_off_policy",
]


@dataclasses.dataclass
class Progress:
    """What the loop reports after each iteration (for progress bars and logs)."""

    env_steps: int
    train_step: int
    loss: float
    recent_return: float | None
    eval_return: float | None
    best_return: float | None
    elapsed: float
    policy_lag: int | None = None


@dataclasses.dataclass
class TrainResult:
    """How a training run ended.

    Attributes:
      env_steps: environment steps taken in total (resumed runs included).
      train_step: gradient steps taken in total.
      best_return: the best evaluation mean return (None if never evaluated).
      best_train_step: the train step of that evaluation (its policy checkpoint).
      resumed_from: the train step restored from a checkpoint (0 for a fresh run).
      stop_reason: "target", "steps" or "time".
      seconds: wall time of this run's training loop.
      evaluations: ``(seconds, env_steps, mean_return)`` of every evaluation of this run,
        seconds counted from the start of the loop.
      eval_seconds: the part of ``seconds`` spent evaluating.
    """

    env_steps: int
    train_step: int
    best_return: float | None
    best_train_step: int | None
    resumed_from: int
    stop_reason: str
    seconds: float
    evaluations: list[tuple[float, int, float]]
    eval_seconds: float = 0.0


def train_off_policy(
    agent: Any,
    env: Any,
    replay_buffer: Any,
    writer: Callable[[Any], Any],
    output_dir: str | os.PathLike,
    *,
    max_env_steps: int,
    batch_size: int = 64,
    train_steps_per_iteration: int = 1,
    initial_collect_steps: int = 1000,
    eval_env: Any = None,
    eval_interval: int = 2000,
    eval_seed: int = 10_000,
    max_episode_return: float | None = None,
    target_return: float | None = None,
    checkpoint_interval: int = 10_000,
    max_seconds: float | None = None,
    seed: int | None = None,
    on_progress: Callable[[Progress], Any] | None = None,
    collector: Any = None,
) -> TrainResult:
    """Trains ``agent`` on ``env`` (a GymVectorEnvironment) until a budget or target is hit.

    Args:
      agent: a DqnAgent or DdpgAgent.
      env: the batched training environment.
      replay_buffer: a ReplayBuffer of ``Experience`` rows.
      writer: the observer filling it (an ``ExperienceWriter``).
      output_dir: where ``checkpoints/`` and ``policy_checkpoints/`` go.
      max_env_steps: stop after this many environment steps (counting resumed ones).
      batch_size: rows per gradient step.
      train_steps_per_iteration: gradient steps per iteration (one ``train`` call).
      initial_collect_steps: random-policy steps that fill the buffer first (skipped
        when a checkpoint restores a buffer).
      eval_env: a GymVectorEnvironment for evaluations (one episode per environment);
        None disables evaluation, early stopping and best-policy checkpoints.
      eval_interval: environment steps between evaluations.
      eval_seed: evaluation episodes reset with seeds ``eval_seed + i``.
      max_episode_return: the largest possible episode return, if known (CartPole-v1:
        500): an evaluation then stops as soon as it cannot beat the best one so far,
        which is all the loop needs to know (such evaluations are not recorded).
      target_return: stop once an evaluation's mean return reaches it.
      checkpoint_interval: environment steps between training checkpoints.
      max_seconds: stop after this much wall time in the loop.
      seed: seeds the collection policies and the first reset of ``env``.
      on_progress: called with a ``Progress`` after every iteration.
      collector: collects instead of ``env`` (which then only plays the random
        warm-up), e.g. Ray actors (``toolkit.distributed.training.train_off_policy``
        makes one): ``start()`` once the state is restored, then per iteration
        ``collect(replay_buffer, min_steps) -> (env steps, episode returns)``,
        ``maybe_broadcast()`` after training, ``policy_lag`` for the progress line,
        and ``close()`` at the end. The learner trains once per ``env.batch_size``
        environment steps collected, as it does locally.
    """
    start = time.perf_counter()
    output_dir = Path(output_dir)
    env_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="env_steps")
    best = tf.Variable(-np.inf, dtype=tf.float64, trainable=False, name="best_return")
    best_step = tf.Variable(-1, dtype=tf.int64, trainable=False, name="best_train_step")
    trainer = checkpoints.TrainCheckpointer(
        output_dir / "checkpoints",
        agent,
        replay_buffer,
        env_steps=env_steps,
        best_return=best,
        best_train_step=best_step,
    )
    policy_saver = checkpoints.PolicyCheckpointer(output_dir / "policy_checkpoints", agent)
    resumed_from = trainer.restore()

    collect_policy = PyTFPolicy(agent.collect_policy, seed=seed, validate_args=False)
    greedy_policy = PyTFPolicy(agent.policy, validate_args=False)
    time_step = env.reset(seed=seed)
    if len(replay_buffer) < initial_collect_steps:
        random_policy = RandomPyPolicy(env.time_step_spec(), env.action_spec(), seed=seed)
        warmup = driver_lib.Driver(
            env, random_policy, [writer], max_steps=initial_collect_steps - len(replay_buffer)
        ).run(time_step)
        time_step = warmup.time_step
        env_steps.assign_add(warmup.num_steps)
    # max_steps=1: one policy call and one step of every environment per iteration.
    collect = driver_lib.Driver(env, collect_policy, [writer], max_steps=1)
    if collector is not None:
        collector.start()
    # One train call per env.batch_size environment steps, wherever they come from.
    steps_per_train = env.batch_size or 1
    credit = 0

    recent = collections.deque(maxlen=20)
    evaluations: list[tuple[float, int, float]] = []
    next_eval = int(env_steps.numpy()) + eval_interval
    next_checkpoint = int(env_steps.numpy()) + checkpoint_interval
    loss, eval_return, stop_reason = float("nan"), None, "steps"
    eval_seconds = 0.0
    policy_state = None
    while int(env_steps.numpy()) < max_env_steps:
        if collector is None:
            result = collect.run(time_step, policy_state)
            time_step, policy_state = result.time_step, result.policy_state
            num_steps, episode_returns = result.num_steps, result.episode_returns
        else:
            num_steps, episode_returns = collector.collect(replay_buffer, steps_per_train - credit)
        recent.extend(episode_returns)
        steps = int(env_steps.assign_add(num_steps).numpy())
        credit += num_steps
        while credit >= steps_per_train:
            credit -= steps_per_train
            if len(replay_buffer) >= batch_size:
                experience = replay_buffer.sample(batch_size, train_steps_per_iteration)
                loss = float(agent.train(experience).loss.numpy())
        if collector is not None:
            collector.maybe_broadcast()
        stop = False
        if eval_env is not None and steps >= next_eval:
            next_eval = steps + eval_interval
            eval_start = time.perf_counter()
            best_so_far = float(best.numpy())
            evaluation = driver_lib.evaluate_policy(
                eval_env,
                greedy_policy,
                seed=eval_seed,
                max_episode_return=max_episode_return,
                give_up_below=best_so_far if np.isfinite(best_so_far) else None,
            )
            eval_seconds += time.perf_counter() - eval_start
            if evaluation.complete:
                eval_return = evaluation.mean_return
                evaluations.append((time.perf_counter() - start, steps, eval_return))
            else:
                eval_return = None
            if evaluation.complete and eval_return > best_so_far:
                best.assign(eval_return)
                best_step.assign(agent.train_step_counter)
                policy_saver.save()
            if (
                eval_return is not None
                and target_return is not None
                and eval_return >= target_return
            ):
                stop, stop_reason = True, "target"
        if steps >= next_checkpoint:
            next_checkpoint = steps + checkpoint_interval
            trainer.save()
        elapsed = time.perf_counter() - start
        if on_progress is not None:
            on_progress(
                Progress(
                    env_steps=steps,
                    train_step=int(agent.train_step_counter.numpy()),
                    loss=loss,
                    recent_return=float(np.mean(recent)) if recent else None,
                    eval_return=eval_return,
                    best_return=_finite(best),
                    elapsed=elapsed,
                    policy_lag=None if collector is None else collector.policy_lag,
                )
            )
        if not stop and max_seconds is not None and elapsed >= max_seconds:
            stop, stop_reason = True, "time"
        if stop:
            break
    trainer.save()
    if eval_env is None or not np.isfinite(float(best.numpy())):
        # No evaluation happened: the final policy is the one to deploy.
        policy_saver.save()
    return TrainResult(
        env_steps=int(env_steps.numpy()),
        train_step=int(agent.train_step_counter.numpy()),
        best_return=_finite(best),
        best_train_step=int(best_step.numpy()) if int(best_step.numpy()) >= 0 else None,
        resumed_from=resumed_from,
        stop_reason=stop_reason,
        seconds=time.perf_counter() - start,
        evaluations=evaluations,
        eval_seconds=eval_seconds,
    )


def _finite(variable: tf.Variable) -> float | None:
    value = float(variable.numpy())
    return value if np.isfinite(value) else None


def configure_tensorflow(seed: int) -> None:
    """Seeds TF and numpy and gives TF one thread per pool, as the training examples do.

    Small networks gain nothing from thread pools; one thread each avoids contention.
    """
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.random.set_seed(seed)
    np.random.seed(seed)


def restore_best_policy(agent: Any, output_dir: str | os.PathLike) -> int | None:
    """Loads the latest policy checkpoint (the best evaluated policy) into ``agent.policy``.

    Returns the train step it was saved at, or None when there is none.
    """
    saver = checkpoints.PolicyCheckpointer(Path(output_dir) / "policy_checkpoints", agent)
    latest = saver.latest
    if latest is None:
        return None
    step = tf.Variable(0, dtype=tf.int64)
    tf.train.Checkpoint(
        policy=agent.policy, model_variables=list(agent.policy.variables()), train_step=step
    ).read(latest).assert_existing_objects_matched().expect_partial()  # save_counter stays
    return int(step.numpy())


class ProgressBar:
    """A rich progress bar (on stderr) showing steps, loss, recent and evaluated returns.

    Use as ``on_progress``; ``with ProgressBar(...) as bar:`` starts and stops it. Drawn on
    stderr so that stdout carries only the results.
    """

    def __init__(self, description: str, total: int, *, enabled: bool = True):
        self._progress = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as RichProgress

        self._progress = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("return {task.fields[ret]}"),
            TextColumn("eval {task.fields[evaluation]}"),
            TextColumn("{task.fields[lag]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        )
        self._task = self._progress.add_task(
            description, total=total, loss="-", ret="-", evaluation="-", lag=""
        )

    def __enter__(self) -> ProgressBar:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, progress: Progress) -> None:
        if self._progress is None:
            return
        self._progress.update(
            self._task,
            completed=progress.env_steps,
            loss=format_number(progress.loss, ".3f"),
            ret=format_number(progress.recent_return),
            evaluation=format_number(progress.eval_return),
            lag="" if progress.policy_lag is None else f"lag {progress.policy_lag}",
        )


def report_run(
    agent: Any,
    output_dir: str | os.PathLike,
    eval_env: Any,
    result: TrainResult,
    training_seconds: float,
    *,
    final_eval_seed: int,
    started: float,
) -> float:
    """Restores the best policy, evaluates it on fresh episodes and prints the run's report.

    The examples' shared ending: its last line is ``mean return: <number>``.

    Returns:
      The mean return of the final evaluation.
    """
    best_step = restore_best_policy(agent, output_dir)
    final = driver_lib.evaluate_policy(eval_env, PyTFPolicy(agent.policy), seed=final_eval_seed)
    if result.resumed_from:
        print(f"resumed from train step {result.resumed_from}")
    print(
        f"stopped: {result.stop_reason} after {result.env_steps} env steps, "
        f"{result.train_step} train steps"
    )
    log = ", ".join(f"{t:.1f}s/{n}/{r:.1f}" for t, n, r in result.evaluations)
    print(f"evaluations (seconds/env steps/mean return): {log}")
    print(
        f"best evaluation: {format_number(result.best_return)} (policy of train step {best_step})"
    )
    print(f"training time: {training_seconds:.1f} s ({result.eval_seconds:.1f} s evaluating)")
    print(f"wall time: {time.perf_counter() - started:.1f} s")
    print(f"mean return: {final.mean_return:.1f}")
    return final.mean_return


def format_number(value: float | None, spec: str = ".1f") -> str:
    """``value`` formatted, or "-" for None and NaN."""
    if value is None or not np.isfinite(value):
        return "-"
    return format(value, spec)
