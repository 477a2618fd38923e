"""Drivers: run a Python policy in an environment and report what happened (TF-free).

Works with any ``PyPolicy`` (``PyTFPolicy``, scripted and random policies, loaded runtime
policies) and with the adapters of ``toolkit.environments.gym_adapter``, batched or not.

A driver step is one call of ``policy.action`` followed by one ``env.step``; observers
see it as a ``Transition(time_step, action_step, next_time_step)``, batched like the
environment. A transition whose ``time_step`` is LAST is a boundary: the environment
reset instead of acting on the action, so it carries no experience
(``Transition.is_boundary()``); boundaries count neither as steps nor as episodes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from toolkit.errors import ArgumentError
from toolkit.trajectories.policy_step import PolicyStep
from toolkit.trajectories.time_step import StepType, TimeStep

__all__ = ["Driver", "DriverResult", "Evaluation", "Transition", "evaluate_policy"]


class Transition(NamedTuple):
    """One step of experience: the time step seen, the policy's output, the next time step."""

    time_step: TimeStep
    action_step: PolicyStep
    next_time_step: TimeStep

    def is_boundary(self) -> Any:
        """True (per batch entry) where the environment reset instead of stepping."""
        return np.equal(self.time_step.step_type, StepType.LAST)


@dataclasses.dataclass
class DriverResult:
    """What one ``Driver.run`` did.

    Attributes:
      time_step: the environment's last time step; pass it to the next ``run``.
      policy_state: the policy state to feed back on the next ``run``.
      num_steps: environment steps taken (boundaries excluded; every batch entry counts).
      num_episodes: episodes that ended (LAST steps seen).
      episode_returns: the undiscounted return of each episode that ended, in order.
      episode_lengths: the number of steps of each of those episodes.
      transitions: every Transition, when the driver was built with ``record=True``.
    """

    time_step: TimeStep
    policy_state: Any
    num_steps: int = 0
    num_episodes: int = 0
    episode_returns: list[float] = dataclasses.field(default_factory=list)
    episode_lengths: list[int] = dataclasses.field(default_factory=list)
    transitions: list[Transition] = dataclasses.field(default_factory=list)


class Driver:
    """Runs a policy in an environment for a number of steps or episodes.

    Episode returns and lengths are tracked across ``run`` calls, so an episode that
    spans two runs is reported whole by the run in which it ends.

    Args:
      env: a ``GymEnvironment`` or ``GymVectorEnvironment`` (anything with ``reset``,
        ``step`` and ``batch_size``, returning TimeSteps).
      policy: a ``PyPolicy``.
      observers: callables each given every Transition (boundaries included, so that
        e.g. a replay buffer can tell episodes apart).
      max_steps: stop once at least this many steps were taken.
      max_episodes: stop once at least this many episodes ended. With a batched
        environment, short episodes end first: to score a policy use
        ``evaluate_policy``, which counts one episode per environment.
      record: keep every Transition in ``DriverResult.transitions``.
    """

    def __init__(
        self,
        env: Any,
        policy: Any,
        observers: Sequence[Callable[[Transition], Any]] = (),
        *,
        max_steps: int | None = None,
        max_episodes: int | None = None,
        record: bool = False,
    ):
        if max_steps is None and max_episodes is None:
            raise ArgumentError("Driver: expected max_steps or max_episodes (or both), got neither")
        for name, value in (("max_steps", max_steps), ("max_episodes", max_episodes)):
            if value is not None and int(value) < 1:
                raise ArgumentError(f"Driver: expected {name} >= 1, got {value}")
        self.env = env
        self.policy = policy
        self.observers = list(observers)
        self.max_steps = max_steps
        self.max_episodes = max_episodes
        self.record = record
        batch = env.batch_size
        self._returns = np.zeros(batch or 1, dtype=np.float64)
        self._lengths = np.zeros(batch or 1, dtype=np.int64)

    def run(
        self,
        time_step: TimeStep | None = None,
        policy_state: Any = None,
        *,
        seed: int | None = None,
    ) -> DriverResult:
        """Acts until ``max_steps`` steps or ``max_episodes`` episodes are reached.

        Args:
          time_step: where to continue from (the previous result's ``time_step``); None
            resets the environment with ``seed``.
          policy_state: the state to continue with; None starts from
            ``policy.get_initial_state``.
          seed: the reset seed, used only when ``time_step`` is None.
        """
        batch = self.env.batch_size
        if time_step is None:
            time_step = self.env.reset(seed=seed)
            self._returns[:] = 0.0
            self._lengths[:] = 0
        if policy_state is None:
            policy_state = self.policy.get_initial_state(batch)
        result = DriverResult(time_step=time_step, policy_state=policy_state)
        while not self._done(result):
            action_step = self.policy.action(time_step, policy_state)
            next_time_step = self.env.step(action_step.action)
            transition = Transition(time_step, action_step, next_time_step)
            for observer in self.observers:
                observer(transition)
            if self.record:
                result.transitions.append(transition)
            self._account(transition, result)
            time_step, policy_state = next_time_step, action_step.state
        result.time_step, result.policy_state = time_step, policy_state
        return result

    def _done(self, result: DriverResult) -> bool:
        return (self.max_steps is not None and result.num_steps >= self.max_steps) or (
            self.max_episodes is not None and result.num_episodes >= self.max_episodes
        )

    def _account(self, transition: Transition, result: DriverResult) -> None:
        # Flat views: an unbatched step is a batch of one here.
        stepped = ~np.reshape(transition.is_boundary(), -1)
        reward = np.reshape(np.asarray(transition.next_time_step.reward, np.float64), -1)
        ended = np.reshape(np.equal(transition.next_time_step.step_type, StepType.LAST), -1)
        self._returns += np.where(stepped, reward, 0.0)
        self._lengths += stepped
        result.num_steps += int(np.sum(stepped))
        for i in np.flatnonzero(ended & stepped):
            result.num_episodes += 1
            result.episode_returns.append(float(self._returns[i]))
            result.episode_lengths.append(int(self._lengths[i]))
            self._returns[i] = 0.0
            self._lengths[i] = 0


@dataclasses.dataclass
class Evaluation:
    """The returns and lengths of one episode per environment.

    ``complete`` is False when ``evaluate_policy`` gave up early: then only
    ``upper_bound`` is meaningful (returns and lengths of unfinished episodes are
    partial).
    """

    episode_returns: list[float]
    episode_lengths: list[int]
    complete: bool = True
    upper_bound: float | None = None

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.episode_returns))

    @property
    def mean_length(self) -> float:
        return float(np.mean(self.episode_lengths))


def evaluate_policy(
    env: Any,
    policy: Any,
    seed: int | None = None,
    *,
    max_episode_return: float | None = None,
    give_up_below: float | None = None,
    on_ended: Callable[[int], Any] | None = None,
) -> Evaluation:
    """Runs exactly one whole episode in each environment of a batch and scores them.

    Every episode counts, long or short (unlike ``Driver(max_episodes=...)`` on a
    batch, where short episodes end first). Make ``env`` a ``GymVectorEnvironment``
    with as many environments as episodes wanted; with ``seed``, environment i
    resets with ``seed + i``, so evaluation episodes are reproducible and can be kept
    apart from training seeds. An unbatched environment plays one episode.

    Args:
      env: the environment (batched or not).
      policy: a PyPolicy.
      seed: reset seed (``seed + i`` for environment i).
      max_episode_return: the largest return an episode can have (CartPole-v1: 500).
      give_up_below: with ``max_episode_return``, stop as soon as the mean return
        cannot reach this value even if every unfinished episode scored the maximum.
        A training loop that only wants to know whether a policy beats its best so far
        saves the rest of the episodes.
      on_ended: called with the number of episodes that ended at a step, when some did
        (progress bars).

    Returns:
      An ``Evaluation`` with one return and one length per environment.
    """
    batch = env.batch_size
    size = batch or 1
    time_step = env.reset(seed=seed)
    policy_state = policy.get_initial_state(batch)
    returns = np.zeros(size, dtype=np.float64)
    lengths = np.zeros(size, dtype=np.int64)
    finished = np.zeros(size, dtype=bool)
    can_give_up = max_episode_return is not None and give_up_below is not None
    while not finished.all():
        action_step = policy.action(time_step, policy_state)
        time_step = env.step(action_step.action)
        policy_state = action_step.state
        active = ~finished
        returns += np.where(active, np.reshape(time_step.reward, -1), 0.0)
        lengths += active
        ended = np.reshape(np.equal(time_step.step_type, StepType.LAST), -1)
        if can_give_up and np.any(ended & active):
            bound = float(np.mean(np.where(finished | ended, returns, max_episode_return)))
            if bound < give_up_below:
                return Evaluation(
                    [float(r) for r in returns], [int(n) for n in lengths], False, bound
                )
        if on_ended is not None and np.any(ended & active):
            on_ended(int(np.count_nonzero(ended & active)))
        finished |= ended
    return Evaluation([float(r) for r in returns], [int(n) for n in lengths])
