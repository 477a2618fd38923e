"""Training loops: collect, train in-graph, evaluate, checkpoint, resume.

``train_off_policy`` (DQN, DDPG, SAC): one iteration steps every environment of a
vector once with the agent's ``collect_policy`` (through ``PyTFPolicy``), writes the
transitions to the replay buffer, and calls ``agent.train`` once on ``[K, B]`` sampled
experience: K gradient steps inside one ``tf.function`` call, so Python overhead is
paid per iteration, not per gradient step. Every ``eval_interval`` environment steps
the agent's ``policy`` (greedy for DQN and DDPG; stochastic for SAC and PPO, as
deployed) plays one episode in each environment of ``eval_env``; a better (or equal:
the later of two is trained longer) mean return is saved as a policy checkpoint, so the
latest policy checkpoint is always the best policy seen, and reaching ``target_return``
stops training early (or, with ``patience``, once that many evaluations after it bring
no better return).

``train_on_policy`` (PPO): one iteration collects a ``Rollout`` of ``rollout_length``
steps of every environment with ``collect_policy`` and calls ``agent.train`` once on it
(all epochs and minibatches inside that call); evaluations and checkpoints as above.

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

from toolkit import nest
from toolkit.agents import checkpoints
from toolkit.environments import driver as driver_lib
from toolkit.errors import ArgumentError
from toolkit.policies.py_tf_policy import PyTFPolicy
from toolkit.policies.random_py_policy import RandomPyPolicy
from toolkit.trajectories.time_step import StepType

__all__ = [
    "Progress",
    "TrainResult",
    "configure_tensorflow",
    "restore_best_policy",
    "train_off_policy",
    "train_on_policy",
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
      stop_reason: "target", "plateau" (``patience`` evaluations past the target brought
        nothing better), "steps" or "time".
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


class _Run:
    """The bookkeeping both loops share: counters, evaluations, checkpoints, progress."""

    def __init__(
        self,
        agent: Any,
        output_dir: str | os.PathLike,
        replay_buffer: Any,
        *,
        eval_env: Any,
        eval_interval: int,
        eval_seed: int,
        max_episode_return: float | None,
        target_return: float | None,
        checkpoint_interval: int,
        max_seconds: float | None,
        on_progress: Callable[[Progress], Any] | None,
        patience: int | None = None,
    ):
        self.start = time.perf_counter()
        self.agent = agent
        output_dir = Path(output_dir)
        self.env_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="env_steps")
        self.best = tf.Variable(-np.inf, dtype=tf.float64, trainable=False, name="best_return")
        self.best_step = tf.Variable(-1, dtype=tf.int64, trainable=False, name="best_train_step")
        self.trainer = checkpoints.TrainCheckpointer(
            output_dir / "checkpoints",
            agent,
            replay_buffer,
            env_steps=self.env_steps,
            best_return=self.best,
            best_train_step=self.best_step,
        )
        self.policy_saver = checkpoints.PolicyCheckpointer(output_dir / "policy_checkpoints", agent)
        self.resumed_from = self.trainer.restore()
        self.eval_env = eval_env
        self.eval_policy = PyTFPolicy(agent.policy, validate_args=False)
        self.eval_interval = eval_interval
        self.eval_seed = eval_seed
        self.max_episode_return = max_episode_return
        self.target_return = target_return
        if patience is not None and int(patience) < 1:
            raise ArgumentError(f"patience: expected None or >= 1, got {patience}")
        self.patience = None if patience is None else int(patience)
        self.reached = False  # an evaluation reached target_return
        self.stale = 0  # evaluations since then without a better return
        self.checkpoint_interval = checkpoint_interval
        self.max_seconds = max_seconds
        self.on_progress = on_progress
        self.recent: collections.deque = collections.deque(maxlen=20)
        self.evaluations: list[tuple[float, int, float]] = []
        self.eval_seconds = 0.0
        self.loss = float("nan")
        self.stop_reason = "steps"
        self.eval_return: float | None = None
        self.next_eval = self.steps + eval_interval
        self.next_checkpoint = self.steps + checkpoint_interval
        # Set by a distributed loop: reports the policy lag in the progress line.
        self.collector: Any = None

    @property
    def steps(self) -> int:
        return int(self.env_steps.numpy())

    def after_iteration(self, new_steps: int, episode_returns: list[float]) -> bool:
        """Counts steps, evaluates, saves and reports; True when training should stop."""
        self.recent.extend(episode_returns)
        steps = int(self.env_steps.assign_add(new_steps).numpy())
        stop = False
        if self.eval_env is not None and steps >= self.next_eval:
            self.next_eval = steps + self.eval_interval
            stop = self._evaluate(steps)
        if steps >= self.next_checkpoint:
            self.next_checkpoint = steps + self.checkpoint_interval
            self.trainer.save()
        elapsed = time.perf_counter() - self.start
        if self.on_progress is not None:
            self.on_progress(
                Progress(
                    env_steps=steps,
                    train_step=int(self.agent.train_step_counter.numpy()),
                    loss=self.loss,
                    recent_return=float(np.mean(self.recent)) if self.recent else None,
                    eval_return=self.eval_return,
                    best_return=_finite(self.best),
                    elapsed=elapsed,
                    policy_lag=None if self.collector is None else self.collector.policy_lag,
                )
            )
        if not stop and self.max_seconds is not None and elapsed >= self.max_seconds:
            stop, self.stop_reason = True, "time"
        return stop

    def _evaluate(self, steps: int) -> bool:
        eval_start = time.perf_counter()
        best_so_far = float(self.best.numpy())
        evaluation = driver_lib.evaluate_policy(
            self.eval_env,
            self.eval_policy,
            seed=self.eval_seed,
            max_episode_return=self.max_episode_return,
            give_up_below=best_so_far if np.isfinite(best_so_far) else None,
        )
        self.eval_seconds += time.perf_counter() - eval_start
        self.eval_return = evaluation.mean_return if evaluation.complete else None
        improved = matched = False
        if self.eval_return is not None:  # None: it could not beat the best, and gave up
            self.evaluations.append((time.perf_counter() - self.start, steps, self.eval_return))
            improved = self.eval_return > best_so_far
            # A tie keeps the later policy, trained longer: a policy scoring as well on the
            # evaluation's episodes may still be better on others (Taxi's first policy at
            # its optimum there failed fresh episodes; the one at the plateau's end did not).
            matched = self.eval_return == best_so_far
        if improved or matched:
            self.best.assign(self.eval_return)
            self.best_step.assign(self.agent.train_step_counter)
            self.policy_saver.save()
        if self.target_return is None:
            return False
        if not self.reached:
            if self.eval_return is None or self.eval_return < self.target_return:
                return False
            self.reached = True
            if self.patience is None:
                self.stop_reason = "target"
                return True
            return False
        self.stale = 0 if improved else self.stale + 1
        if self.patience is not None and self.stale >= self.patience:
            self.stop_reason = "plateau"
            return True
        return False

    def finish(self) -> TrainResult:
        self.trainer.save()
        if self.eval_env is None or not np.isfinite(float(self.best.numpy())):
            # No evaluation happened: the final policy is the one to deploy.
            self.policy_saver.save()
        best_step = int(self.best_step.numpy())
        return TrainResult(
            env_steps=self.steps,
            train_step=int(self.agent.train_step_counter.numpy()),
            best_return=_finite(self.best),
            best_train_step=best_step if best_step >= 0 else None,
            resumed_from=self.resumed_from,
            stop_reason=self.stop_reason,
            seconds=time.perf_counter() - self.start,
            evaluations=self.evaluations,
            eval_seconds=self.eval_seconds,
        )


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
    patience: int | None = None,
    checkpoint_interval: int = 10_000,
    max_seconds: float | None = None,
    seed: int | None = None,
    on_progress: Callable[[Progress], Any] | None = None,
    collector: Any = None,
) -> TrainResult:
    """Trains ``agent`` on ``env`` (a GymVectorEnvironment) until a budget or target is hit.

    Args:
      agent: a DqnAgent, DdpgAgent or SacAgent.
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
      patience: with ``target_return``, train on past the target until this many
        evaluations in a row bring no better return (the best is kept): for tasks
        whose best return is unknown, the target being only what is good enough.
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
    run = _Run(
        agent,
        output_dir,
        replay_buffer,
        eval_env=eval_env,
        eval_interval=eval_interval,
        eval_seed=eval_seed,
        max_episode_return=max_episode_return,
        target_return=target_return,
        checkpoint_interval=checkpoint_interval,
        max_seconds=max_seconds,
        on_progress=on_progress,
        patience=patience,
    )
    collect_policy = PyTFPolicy(agent.collect_policy, seed=seed, validate_args=False)
    time_step = env.reset(seed=seed)
    if len(replay_buffer) < initial_collect_steps:
        random_policy = RandomPyPolicy(
            env.time_step_spec(),
            env.action_spec(),
            seed=seed,
            observation_and_action_constraint_splitter=(
                agent.observation_and_action_constraint_splitter
            ),
        )
        warmup = driver_lib.Driver(
            env, random_policy, [writer], max_steps=initial_collect_steps - len(replay_buffer)
        ).run(time_step)
        time_step = warmup.time_step
        run.env_steps.assign_add(warmup.num_steps)
        run.next_eval, run.next_checkpoint = (
            run.steps + eval_interval,
            run.steps + checkpoint_interval,
        )
    # max_steps=1: one policy call and one step of every environment per iteration.
    collect = driver_lib.Driver(env, collect_policy, [writer], max_steps=1)
    if collector is not None:
        collector.start()
        run.collector = collector
    # One train call per env.batch_size environment steps, wherever they come from.
    steps_per_train = env.batch_size or 1
    credit = 0
    policy_state = None
    while run.steps < max_env_steps:
        if collector is None:
            result = collect.run(time_step, policy_state)
            time_step, policy_state = result.time_step, result.policy_state
            num_steps, episode_returns = result.num_steps, result.episode_returns
        else:
            num_steps, episode_returns = collector.collect(replay_buffer, steps_per_train - credit)
        credit += num_steps
        while credit >= steps_per_train:
            credit -= steps_per_train
            if len(replay_buffer) >= batch_size:
                experience = replay_buffer.sample(batch_size, train_steps_per_iteration)
                run.loss = float(agent.train(experience).loss.numpy())
        if collector is not None:
            collector.maybe_broadcast()
        if run.after_iteration(num_steps, episode_returns):
            break
    return run.finish()


def train_on_policy(
    agent: Any,
    env: Any,
    output_dir: str | os.PathLike,
    *,
    max_env_steps: int,
    rollout_length: int = 128,
    eval_env: Any = None,
    eval_interval: int = 10_000,
    eval_seed: int = 10_000,
    max_episode_return: float | None = None,
    target_return: float | None = None,
    patience: int | None = None,
    checkpoint_interval: int = 50_000,
    max_seconds: float | None = None,
    seed: int | None = None,
    on_progress: Callable[[Progress], Any] | None = None,
) -> TrainResult:
    """Trains an on-policy agent (``PpoAgent``) on ``env`` until a budget or target is hit.

    One iteration steps every environment of the vector ``rollout_length`` times with
    ``agent.collect_policy`` and calls ``agent.train`` once on the ``Rollout``.
    Evaluations, checkpoints and the result are those of ``train_off_policy`` (without
    a replay buffer); see its arguments.
    """
    from toolkit.agents.ppo import Rollout

    run = _Run(
        agent,
        output_dir,
        None,
        eval_env=eval_env,
        eval_interval=eval_interval,
        eval_seed=eval_seed,
        max_episode_return=max_episode_return,
        target_return=target_return,
        checkpoint_interval=checkpoint_interval,
        max_seconds=max_seconds,
        on_progress=on_progress,
        patience=patience,
    )
    policy = PyTFPolicy(agent.collect_policy, seed=seed, validate_args=False)
    time_step = env.reset(seed=seed)
    returns = np.zeros(env.batch_size, np.float64)
    while run.steps < max_env_steps:
        steps, episode_returns, columns = 0, [], []
        for _ in range(rollout_length):
            action = policy.action(time_step).action
            next_time_step = env.step(action)
            valid = np.not_equal(time_step.step_type, StepType.LAST)
            last = np.equal(next_time_step.step_type, StepType.LAST) & valid
            returns += np.where(valid, next_time_step.reward, 0.0)
            episode_returns.extend(float(r) for r in returns[last])
            returns[last] = 0.0
            steps += int(valid.sum())
            columns.append(
                (
                    time_step.observation,
                    action,
                    next_time_step.reward,
                    next_time_step.discount,
                    next_time_step.observation,
                    valid.astype(np.float32),
                    last.astype(np.float32),
                )
            )
            time_step = next_time_step
        rollout = Rollout(
            *(
                nest.map_structure(lambda *xs: np.stack(xs), *column)
                for column in zip(*columns, strict=True)
            )
        )
        run.loss = float(agent.train(rollout).loss.numpy())
        if run.after_iteration(steps, episode_returns):
            break
    return run.finish()


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
