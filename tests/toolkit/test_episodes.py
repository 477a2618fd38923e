"""toolkit.environments.episodes: environments made with clear errors, seeded episodes in chunks."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from toolkit.environments import driver, episodes
from toolkit.environments.gym_adapter import GymVectorEnvironment
from toolkit.errors import ArgumentError, EnvironmentIdError, SpecMismatchError, UnsupportedError
from toolkit.specs.array_spec import ArraySpec, BoundedArraySpec
from toolkit.trajectories import time_step as ts
from toolkit.trajectories.policy_step import PolicyStep


class _Lean:
    """Pushes the cart where the pole leans: deterministic, any batch; records batch sizes."""

    time_step_spec = ts.time_step_spec(ArraySpec((4,), np.float32))
    action_spec = BoundedArraySpec((), np.int64, minimum=0, maximum=1)

    def __init__(self):
        self.batches: list[int] = []

    def get_initial_state(self, batch_size=None):
        return ()

    def action(self, time_step, policy_state=()):
        observation = np.asarray(time_step.observation)
        self.batches.append(len(observation))
        return PolicyStep(np.asarray(observation[:, 2] > 0, np.int64), (), ())


def test_chunks_start_at_multiples_of_the_chunk():
    assert episodes.chunks(70, 32) == [(0, 32), (32, 32), (64, 6)]
    assert episodes.chunks(3) == [(0, 3)]
    for bad in (0, -1, True):
        with pytest.raises(ArgumentError, match=r"episodes: expected a positive int, got"):
            episodes.chunks(bad)
    with pytest.raises(ArgumentError, match=r"chunk: expected a positive int, got 0"):
        episodes.chunks(5, 0)


def test_episode_i_resets_with_seed_plus_i_whatever_the_chunks():
    policy = _Lean()
    played = episodes.play(policy, "CartPole-v1", 5, seed=3, chunk=2)
    # Chunks of 2, 2 and 1 environments stepping together.
    assert policy.batches[0] == 2 and policy.batches[-1] == 1 and set(policy.batches) == {1, 2}
    alone = []
    for i in range(5):
        env = GymVectorEnvironment("CartPole-v1", 1)
        alone += driver.evaluate_policy(env, _Lean(), seed=3 + i).episode_returns
        env.close()
    assert played.returns == alone
    assert played.lengths == [int(r) for r in alone]  # CartPole: reward 1 per step
    assert len(set(alone)) > 1  # the seeds give different episodes
    assert played.mean_return == pytest.approx(np.mean(alone))


def test_a_player_keeps_one_environment_per_chunk_size_and_closes_them():
    first = episodes.make_env("CartPole-v1", 2)
    with episodes.EpisodePlayer("CartPole-v1", first=first) as player:
        assert player.env(2) is first
        made = player.env(1)
        assert player.env(1) is made and made.batch_size == 1
        assert len(player.play(_Lean(), 0, 2).episode_returns) == 2
    again = player.env(1)  # closed ones are forgotten: a new one is made
    assert again is not made
    player.close()


def test_unknown_ids_and_modules_are_named():
    with pytest.raises(EnvironmentIdError, match=r"^--env 'NoSuchEnv-v0': Environment `NoSuchEnv`"):
        episodes.make_env("NoSuchEnv-v0", 1, what="--env")
    with pytest.raises(EnvironmentIdError, match=r"^env 'NoSuchEnv-v0': "):
        episodes.play(_Lean(), "NoSuchEnv-v0", 2, seed=0)


def test_without_gymnasium_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gymnasium", None)  # as if not installed
    with pytest.raises(UnsupportedError) as caught:
        episodes.make_env("CartPole-v1", 1, what="quantize --env")
    assert str(caught.value) == (
        "quantize --env: playing episodes needs gymnasium, which is not installed "
        "(pip install gymnasium; the [runtime], [litert] and [ray] extras carry it)"
    )


def test_a_policy_that_does_not_fit_the_environment_is_refused_naming_the_leaf():
    env = episodes.make_env("Pendulum-v1", 1)
    with pytest.raises(SpecMismatchError) as caught:
        episodes.check_compatible(_Lean(), env, "Pendulum-v1")
    env.close()
    assert str(caught.value) == (
        "Pendulum-v1 observation: expected shape (4,) float32 (the policy's), "
        "got shape (3,) float32"
    )
    env = episodes.make_env("CartPole-v1", 1)
    episodes.check_compatible(_Lean(), env, "CartPole-v1")  # fits
    env.close()
