"""The gymnasium adapters, the driver and the replay buffer, on real gymnasium envs."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from toolkit.environments import driver as driver_lib
from toolkit.environments import gym_adapter
from toolkit.errors import SpecMismatchError, UnsupportedError
from toolkit.policies.random_py_policy import RandomPyPolicy
from toolkit.policies.scripted_py_policy import ScriptedPyPolicy
from toolkit.replay_buffer import Experience, ExperienceWriter, ReplayBuffer, experience_spec
from toolkit.specs.array_spec import ArraySpec, BoundedArraySpec
from toolkit.trajectories.time_step import StepType


class _SpacesEnv(gym.Env):
    """A tiny real gymnasium env with chosen spaces: observations count the steps.

    It terminates after ``terminate_at`` steps unless ``truncate_at`` comes first.
    """

    def __init__(self, observation_space=None, action_space=None, terminate_at=3, truncate_at=None):
        self.observation_space = observation_space or spaces.Box(-10, 10, (2,), np.float32)
        self.action_space = action_space or spaces.Discrete(2)
        self.terminate_at, self.truncate_at = terminate_at, truncate_at
        self.t = 0

    def _obs(self):
        return (
            self.observation_space.sample() * 0 + self.t
            if isinstance(self.observation_space, spaces.Box)
            else self.observation_space.sample()
        )

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.observation_space.seed(seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        assert self.action_space.contains(action), action
        self.t += 1
        terminated = self.t >= self.terminate_at
        truncated = self.truncate_at is not None and self.t >= self.truncate_at
        return self._obs(), float(self.t), terminated, truncated, {}


# --- specs ---------------------------------------------------------------------------


def test_box_becomes_bounded_spec_with_the_box_bounds():
    env = gym_adapter.GymEnvironment("CartPole-v1")
    spec = env.observation_spec()
    assert isinstance(spec, BoundedArraySpec)
    assert spec.shape == (4,) and spec.dtype == np.float32
    # CartPole's documented bounds: x in +-4.8, angle in +-0.418 rad, velocities unbounded.
    np.testing.assert_allclose(spec.minimum, [-4.8, -np.inf, -0.41887903, -np.inf], rtol=1e-6)
    np.testing.assert_allclose(spec.maximum, [4.8, np.inf, 0.41887903, np.inf], rtol=1e-6)
    pendulum = gym_adapter.GymEnvironment("Pendulum-v1").action_spec()
    assert pendulum == BoundedArraySpec((1,), np.float32, -2.0, 2.0)


def test_unbounded_box_is_a_plain_array_spec():
    spec = gym_adapter.space_to_spec(spaces.Box(-np.inf, np.inf, (3, 2), np.float64))
    assert type(spec) is ArraySpec
    assert spec == ArraySpec((3, 2), np.float64)


def test_discrete_is_a_scalar_int64_spec_from_start_to_start_plus_n_minus_1():
    assert gym_adapter.space_to_spec(spaces.Discrete(2), "action") == BoundedArraySpec(
        (), np.int64, 0, 1
    )
    spec = gym_adapter.space_to_spec(spaces.Discrete(5, start=-2))
    assert spec == BoundedArraySpec((), np.int64, -2, 2)


def test_multi_discrete_multi_binary_and_tuple():
    spec = gym_adapter.space_to_spec(spaces.MultiDiscrete([3, 4], start=[1, 0]))
    assert spec == BoundedArraySpec((2,), np.int64, [1, 0], [3, 3])
    assert gym_adapter.space_to_spec(spaces.MultiBinary(3)) == BoundedArraySpec((3,), np.int8, 0, 1)
    pair = gym_adapter.space_to_spec(spaces.Tuple((spaces.Discrete(2), spaces.Discrete(3))))
    assert pair == (BoundedArraySpec((), np.int64, 0, 1), BoundedArraySpec((), np.int64, 0, 2))


def test_dict_space_becomes_dict_of_specs_named_by_path():
    space = spaces.Dict(
        {
            "position": spaces.Box(-1.0, 1.0, (2,), np.float32),
            "mode": spaces.Discrete(3),
            "inner": spaces.Dict({"flag": spaces.MultiBinary(1)}),
        }
    )
    spec = gym_adapter.space_to_spec(space)
    assert set(spec) == {"position", "mode", "inner"}
    assert spec["position"] == BoundedArraySpec((2,), np.float32, -1.0, 1.0)
    assert spec["mode"] == BoundedArraySpec((), np.int64, 0, 2)
    assert spec["inner"]["flag"].name == "observation/inner/flag"


def test_dict_observations_come_back_as_dicts_matching_the_spec():
    space = spaces.Dict({"a": spaces.Box(-1.0, 1.0, (2,), np.float32), "b": spaces.Discrete(4)})
    env = gym_adapter.GymEnvironment(_SpacesEnv(observation_space=space))
    first = env.reset(seed=3)
    assert set(first.observation) == {"a", "b"}
    assert first.observation["a"].shape == (2,) and first.observation["a"].dtype == np.float32
    assert first.observation["b"].dtype == np.int64
    step = env.step(np.int64(1))
    assert step.step_type == StepType.MID and set(step.observation) == {"a", "b"}


@pytest.mark.parametrize(
    ("space", "name"),
    [
        (spaces.Text(5), "Text"),
        (spaces.Sequence(spaces.Discrete(2)), "Sequence"),
        (spaces.Graph(spaces.Box(0, 1, (1,)), spaces.Discrete(2)), "Graph"),
    ],
)
def test_unsupported_observation_space_names_the_space(space, name):
    with pytest.raises(
        UnsupportedError, match=rf"observation: gymnasium space .*\({name}\) is not"
    ):
        gym_adapter.GymEnvironment(_SpacesEnv(observation_space=space))


def test_unsupported_space_inside_a_dict_names_its_path():
    space = spaces.Dict({"pos": spaces.Box(-1, 1, (2,)), "label": spaces.Text(4)})
    with pytest.raises(UnsupportedError) as info:
        gym_adapter.GymEnvironment(_SpacesEnv(observation_space=space))
    message = str(info.value)
    assert message.startswith("observation/label: gymnasium space Text(")
    assert "supported spaces are Box, Discrete" in message


def test_unsupported_action_space_says_action():
    with pytest.raises(UnsupportedError, match=r"^action: gymnasium space Text\("):
        gym_adapter.GymEnvironment(_SpacesEnv(action_space=spaces.Text(3)))


# --- episodes --------------------------------------------------------------------------


def test_terminated_is_termination_with_discount_0():
    env = gym_adapter.GymEnvironment(_SpacesEnv(terminate_at=3))
    first = env.reset(seed=0)
    assert (first.step_type, first.reward, first.discount) == (StepType.FIRST, 0.0, 1.0)
    steps = [env.step(np.int64(0)) for _ in range(3)]
    assert [int(s.step_type) for s in steps] == [StepType.MID, StepType.MID, StepType.LAST]
    assert [float(s.reward) for s in steps] == [1.0, 2.0, 3.0]
    assert [float(s.discount) for s in steps] == [1.0, 1.0, 0.0]
    assert steps[-1].reward.dtype == np.float32 and steps[-1].step_type.dtype == np.int32


def test_truncated_is_truncation_with_discount_1_on_real_cartpole():
    # A time limit of 5 steps: CartPole cannot fall that fast from its start state.
    env = gym_adapter.GymEnvironment("CartPole-v1", max_episode_steps=5)
    env.reset(seed=0)
    steps = [env.step(np.int64(i % 2)) for i in range(5)]
    assert [int(s.step_type) for s in steps] == [1, 1, 1, 1, 2]
    assert float(steps[-1].discount) == 1.0


def test_termination_on_real_cartpole_has_discount_0():
    env = gym_adapter.GymEnvironment("CartPole-v1")
    env.reset(seed=0)
    step = None
    for _ in range(100):  # pushing right only tips the pole over in about ten steps
        step = env.step(np.int64(1))
        if step.is_last():
            break
    assert int(step.step_type) == StepType.LAST and float(step.discount) == 0.0


def test_both_terminated_and_truncated_counts_as_termination():
    env = gym_adapter.GymEnvironment(_SpacesEnv(terminate_at=2, truncate_at=2))
    env.reset()
    env.step(np.int64(0))
    assert float(env.step(np.int64(0)).discount) == 0.0


def test_the_step_after_last_is_first_and_ignores_the_action():
    env = gym_adapter.GymEnvironment(_SpacesEnv(terminate_at=1))
    env.reset(seed=1)
    assert env.step(np.int64(0)).is_last()
    # 7 is no valid action, but the env resets instead of stepping.
    restarted = env.step(np.int64(7))
    assert int(restarted.step_type) == StepType.FIRST and float(restarted.reward) == 0.0
    np.testing.assert_array_equal(restarted.observation, [0.0, 0.0])


def test_reset_seed_reproduces_the_gymnasium_env_observations():
    ours = gym_adapter.GymEnvironment("CartPole-v1")
    reference = gym.make("CartPole-v1")
    expected, _ = reference.reset(seed=42)
    np.testing.assert_array_equal(ours.reset(seed=42).observation, expected)
    for action in (0, 1, 1, 0):
        expected = reference.step(action)[0]
        np.testing.assert_array_equal(ours.step(np.int64(action)).observation, expected)


def test_an_out_of_range_action_gets_a_clear_error():
    env = gym_adapter.GymEnvironment("CartPole-v1")
    env.reset(seed=0)
    with pytest.raises(SpecMismatchError, match=r"^action: .*2"):
        env.step(np.int64(2))
    with pytest.raises(SpecMismatchError, match=r"^action: expected shape \(\).*got \(2,\)"):
        env.step(np.array([0, 1]))


# --- vector -----------------------------------------------------------------------------


def test_vector_env_batches_time_steps_and_matches_single_envs():
    vec = gym_adapter.GymVectorEnvironment("CartPole-v1", 3)
    assert vec.batch_size == 3
    assert vec.action_spec() == BoundedArraySpec((), np.int64, 0, 1)
    first = vec.reset(seed=10)
    assert first.observation.shape == (3, 4) and first.step_type.shape == (3,)
    np.testing.assert_array_equal(first.step_type, [StepType.FIRST] * 3)
    singles = [gym.make("CartPole-v1") for _ in range(3)]
    expected = np.stack([env.reset(seed=10 + i)[0] for i, env in enumerate(singles)])
    np.testing.assert_array_equal(first.observation, expected)
    actions = np.array([0, 1, 1])
    step = vec.step(actions)
    expected = np.stack([env.step(int(a))[0] for env, a in zip(singles, actions, strict=True)])
    np.testing.assert_array_equal(step.observation, expected)
    np.testing.assert_array_equal(step.step_type, [StepType.MID] * 3)


def test_vector_env_terminates_truncates_and_restarts_each_env_on_its_own():
    fns = [
        lambda: _SpacesEnv(terminate_at=2),
        lambda: _SpacesEnv(terminate_at=9, truncate_at=3),
    ]
    vec = gym_adapter.GymVectorEnvironment(fns)
    vec.reset(seed=0)
    action = np.zeros(2, np.int64)
    types, discounts, rewards = [], [], []
    for _ in range(5):
        s = vec.step(action)
        types.append(s.step_type.tolist())
        discounts.append(s.discount.tolist())
        rewards.append(s.reward.tolist())
    # env 0: MID, LAST (terminated), FIRST, MID, LAST; env 1: MID, MID, LAST (truncated), FIRST, MID
    assert types == [[1, 1], [2, 1], [0, 2], [1, 0], [2, 1]]
    assert discounts == [[1, 1], [0, 1], [1, 1], [1, 1], [0, 1]]
    assert rewards == [[1, 1], [2, 2], [0, 3], [1, 0], [2, 1]]


def test_vector_env_with_same_step_autoreset_is_refused():
    env = gym.vector.SyncVectorEnv(
        [lambda: gym.make("CartPole-v1")], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    with pytest.raises(UnsupportedError, match="autoreset_mode: expected NEXT_STEP, got SAME_STEP"):
        gym_adapter.GymVectorEnvironment(env)


def test_vector_env_checks_the_batch_of_actions():
    vec = gym_adapter.GymVectorEnvironment("CartPole-v1", 2)
    vec.reset(seed=0)
    with pytest.raises(SpecMismatchError, match=r"^action: expected shape \(2,\)"):
        vec.step(np.array([0, 1, 1]))


# --- driver ------------------------------------------------------------------------------


def _cartpole_random(env, seed=0):
    return RandomPyPolicy(env.time_step_spec(), env.action_spec(), seed=seed)


def test_driver_runs_n_steps_and_reports_whole_episodes():
    env = gym_adapter.GymEnvironment("CartPole-v1")
    result = driver_lib.Driver(env, _cartpole_random(env), max_steps=150, record=True).run(seed=0)
    assert result.num_steps == 150
    # CartPole pays 1 per step, so each return equals its episode's length.
    assert result.episode_returns == [float(n) for n in result.episode_lengths]
    assert result.num_episodes == len(result.episode_returns) >= 1
    boundaries = sum(bool(t.is_boundary()) for t in result.transitions)
    assert len(result.transitions) == 150 + boundaries
    assert sum(result.episode_lengths) <= 150


def test_driver_runs_n_episodes_and_continues_from_its_result():
    env = gym_adapter.GymEnvironment("CartPole-v1")
    driver = driver_lib.Driver(env, _cartpole_random(env), max_episodes=2)
    first = driver.run(seed=1)
    assert first.num_episodes == 2 and first.time_step.is_last()
    second = driver.run(first.time_step, first.policy_state)
    assert second.num_episodes == 2
    assert second.num_steps == sum(second.episode_lengths)


def test_driver_feeds_the_policy_state_back():
    env = gym_adapter.GymEnvironment("CartPole-v1", max_episode_steps=100)
    script = [(2, np.int64(0)), (3, np.int64(1))]
    policy = ScriptedPyPolicy(env.time_step_spec(), env.action_spec(), script, loop=True)
    result = driver_lib.Driver(env, policy, max_steps=7, record=True).run(seed=0)
    actions = [int(t.action_step.action) for t in result.transitions]
    assert actions[:7] == [0, 0, 1, 1, 1, 0, 0]


def test_driver_on_a_vector_env_counts_every_env_step():
    vec = gym_adapter.GymVectorEnvironment("CartPole-v1", 4)
    result = driver_lib.Driver(vec, _cartpole_random(vec), max_steps=100).run(seed=0)
    assert 100 <= result.num_steps < 104
    assert result.episode_returns == [float(n) for n in result.episode_lengths]


def test_driver_needs_a_limit():
    env = gym_adapter.GymEnvironment("CartPole-v1")
    with pytest.raises(ValueError, match="expected max_steps or max_episodes"):
        driver_lib.Driver(env, _cartpole_random(env))


def test_evaluate_policy_plays_one_whole_episode_per_env():
    # Episode lengths 2..6: a driver counting the first 5 episodes to end would count
    # the short ones twice; evaluate_policy must count each environment's first episode.
    fns = [lambda n=n: _SpacesEnv(terminate_at=n) for n in range(2, 7)]
    vec = gym_adapter.GymVectorEnvironment(fns)
    policy = RandomPyPolicy(vec.time_step_spec(), vec.action_spec(), seed=0)
    evaluation = driver_lib.evaluate_policy(vec, policy, seed=100)
    assert evaluation.episode_lengths == [2, 3, 4, 5, 6]
    # Rewards are 1, 2, ..., n: returns n(n+1)/2.
    assert evaluation.episode_returns == [3.0, 6.0, 10.0, 15.0, 21.0]
    assert evaluation.mean_return == 11.0


def test_evaluate_policy_gives_up_when_the_mean_cannot_reach_a_bound():
    fns = [lambda n=n: _SpacesEnv(terminate_at=n) for n in range(2, 7)]
    vec = gym_adapter.GymVectorEnvironment(fns)
    policy = RandomPyPolicy(vec.time_step_spec(), vec.action_spec(), seed=0)
    # Returns will be 3, 6, 10, 15, 21 (mean 11); no episode can score more than 21.
    # After step 2: (3 + 4 * 21) / 5 = 17.4 >= 15 goes on; after step 3:
    # (3 + 6 + 3 * 21) / 5 = 14.4 < 15 gives up.
    evaluation = driver_lib.evaluate_policy(
        vec, policy, seed=0, max_episode_return=21.0, give_up_below=15.0
    )
    assert not evaluation.complete
    assert evaluation.upper_bound == pytest.approx(14.4)
    assert evaluation.episode_lengths == [2, 3, 3, 3, 3]
    full = driver_lib.evaluate_policy(
        vec, policy, seed=0, max_episode_return=21.0, give_up_below=11.0
    )
    assert full.complete and full.mean_return == 11.0


def test_evaluate_policy_on_cartpole_with_a_time_limit():
    vec = gym_adapter.GymVectorEnvironment("CartPole-v1", 3, max_episode_steps=10)
    # Alternating pushes keep the pole up for 10 steps: every episode is truncated.
    policy = ScriptedPyPolicy(
        vec.time_step_spec(), vec.action_spec(), [(1, np.int64(0)), (1, np.int64(1))], loop=True
    )
    evaluation = driver_lib.evaluate_policy(vec, policy, seed=100)
    assert evaluation.episode_lengths == [10] * 3
    assert evaluation.mean_return == 10.0


# --- replay buffer ---------------------------------------------------------------------


def _spec():
    env = gym_adapter.GymEnvironment("CartPole-v1")
    return experience_spec(env.time_step_spec(), env.action_spec())


def test_replay_buffer_wraps_around_and_samples_only_stored_items():
    buffer = ReplayBuffer({"x": ArraySpec((), np.int64)}, capacity=5, seed=0)
    buffer.add_batch({"x": np.arange(7)})
    assert len(buffer) == 5 and buffer.position == 2 and buffer.num_added == 7
    np.testing.assert_array_equal(buffer.gather_all()["x"], [2, 3, 4, 5, 6])
    sample = buffer.sample(64, num_batches=3)["x"]
    assert sample.shape == (3, 64) and set(sample.ravel()) == {2, 3, 4, 5, 6}


def test_replay_buffer_state_round_trip_restores_position_contents_and_sampling():
    buffer = ReplayBuffer(_spec(), capacity=8, seed=1)
    writer = ExperienceWriter(buffer)
    vec = gym_adapter.GymVectorEnvironment("CartPole-v1", 2)
    driver_lib.Driver(vec, _cartpole_random(vec), [writer], max_steps=12).run(seed=0)
    state = buffer.state()
    other = ReplayBuffer(_spec(), capacity=8, seed=99)
    other.load_state(state)
    assert (other.position, len(other), other.num_added) == (
        buffer.position,
        len(buffer),
        buffer.num_added,
    )
    a, b = buffer.sample(4), other.sample(4)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_replay_buffer_rejects_wrong_shapes_by_path():
    buffer = ReplayBuffer(_spec(), capacity=4)
    bad = Experience(
        np.zeros((2, 3), np.float32),
        np.zeros(2, np.int64),
        np.zeros(2, np.float32),
        np.zeros(2, np.float32),
        np.zeros((2, 4), np.float32),
    )
    with pytest.raises(
        SpecMismatchError, match=r"^observation: expected shape \(2, 4\), got \(2, 3\)"
    ):
        buffer.add_batch(bad)


def test_experience_writer_drops_boundaries_and_keeps_next_observations():
    env = gym_adapter.GymEnvironment(_SpacesEnv(terminate_at=2))
    buffer = ReplayBuffer(experience_spec(env.time_step_spec(), env.action_spec()), 100)
    policy = RandomPyPolicy(env.time_step_spec(), env.action_spec(), seed=0)
    driver_lib.Driver(env, policy, [ExperienceWriter(buffer)], max_steps=4).run(seed=0)
    rows = buffer.gather_all()
    # Two episodes of two steps; observations count steps, rewards equal the new count.
    np.testing.assert_array_equal(rows.observation[:, 0], [0, 1, 0, 1])
    np.testing.assert_array_equal(rows.next_observation[:, 0], [1, 2, 1, 2])
    np.testing.assert_array_equal(rows.reward, [1, 2, 1, 2])
    np.testing.assert_array_equal(rows.discount, [1, 0, 1, 0])


def test_n_step_rows_sum_discounted_rewards_and_fold_gamma_into_the_discount():
    env = gym_adapter.GymEnvironment(_SpacesEnv(terminate_at=3))
    buffer = ReplayBuffer(experience_spec(env.time_step_spec(), env.action_spec()), 100)
    policy = RandomPyPolicy(env.time_step_spec(), env.action_spec(), seed=0)
    writer = ExperienceWriter(buffer, n_step=2, gamma=0.5)
    driver_lib.Driver(env, policy, [writer], max_steps=3).run(seed=0)
    rows = buffer.gather_all()
    # Rewards 1, 2, 3, terminated after the 3rd step. Rows by hand:
    # t=0: 1 + 0.5*2 = 2, next obs 2, discount 0.5 * 1; t=1: 2 + 0.5*3 = 3.5, next obs 3,
    # discount 0.5 * 0; t=2 (episode end): 3, next obs 3, discount 0.
    np.testing.assert_allclose(rows.reward, [2.0, 3.5, 3.0])
    np.testing.assert_allclose(rows.discount, [0.5, 0.0, 0.0])
    np.testing.assert_array_equal(rows.observation[:, 0], [0, 1, 2])
    np.testing.assert_array_equal(rows.next_observation[:, 0], [2, 3, 3])


def _n_step_reference(transitions, n, gamma):
    """n-step rows from the definition, per environment, from recorded transitions."""
    batch = transitions[0].time_step.step_type.shape[0]
    rows = []
    for i in range(batch):
        steps = []  # (obs, action, reward, discount, next_obs, ended) of non-boundary steps
        for t in transitions:
            if t.time_step.step_type[i] == StepType.LAST:
                continue
            steps.append(
                (
                    t.time_step.observation[i],
                    t.action_step.action[i],
                    float(t.next_time_step.reward[i]),
                    float(t.next_time_step.discount[i]),
                    t.next_time_step.observation[i],
                    t.next_time_step.step_type[i] == StepType.LAST,
                )
            )
        episode_start = 0
        for k, step in enumerate(steps):
            if not step[5]:
                continue
            episode = steps[episode_start : k + 1]
            episode_start = k + 1
            rows += _rows_of(episode, n, gamma, complete=True)
        rows += _rows_of(steps[episode_start:], n, gamma, complete=False)
    return rows


def _rows_of(episode, n, gamma, complete):
    rows = []
    for t in range(len(episode)):
        m = min(n, len(episode) - t)
        if m < n and not complete:
            break  # the window is not full yet and the episode goes on
        total, scale = 0.0, 1.0
        for j in range(m):
            total += scale * episode[t + j][2]
            scale *= gamma * episode[t + j][3] if j < m - 1 else 1.0
        discount = gamma ** (m - 1) * np.prod([episode[t + j][3] for j in range(m)])
        obs, action = episode[t][0], episode[t][1]
        rows.append((tuple(obs), int(action), total, discount, tuple(episode[t + m - 1][4])))
    return rows


@pytest.mark.parametrize("n_step", [1, 3])
def test_n_step_rows_on_a_cartpole_batch_match_the_definition(n_step):
    vec = gym_adapter.GymVectorEnvironment("CartPole-v1", 3)
    buffer = ReplayBuffer(experience_spec(vec.time_step_spec(), vec.action_spec()), 10_000)
    writer = ExperienceWriter(buffer, n_step=n_step, gamma=0.9)
    result = driver_lib.Driver(
        vec, _cartpole_random(vec, seed=4), [writer], max_steps=300, record=True
    ).run(seed=2)
    expected = _n_step_reference(result.transitions, n_step, 0.9)
    stored = buffer.gather_all()
    got = [
        (tuple(o), int(a), float(r), float(d), tuple(x))
        for o, a, r, d, x in zip(*stored, strict=True)
    ]
    assert len(got) == len(expected) > 250

    def key(row):
        return (row[0], row[1])

    for g, e in zip(sorted(got, key=key), sorted(expected, key=key), strict=True):
        assert g[0] == e[0] and g[1] == e[1] and g[4] == e[4]
        np.testing.assert_allclose(g[2:4], e[2:4], rtol=1e-6)


def test_adapters_driver_and_replay_buffer_import_no_tensorflow():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import toolkit.environments.gym_adapter, toolkit.environments.driver\n"
        "import toolkit.replay_buffer\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'tensorflow_probability', 'tf_keras', 'keras', 'gymnasium'))\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    # gymnasium too is imported only when an adapter is built.
    assert out.stdout.strip() == "[]"
