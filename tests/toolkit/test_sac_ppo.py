"""SAC and PPO: the tanh-normal family in TF and numpy, GAE, the agents' train steps,
short learning runs, checkpoints, and the exported stochastic policies against TF."""

from __future__ import annotations

import json

import gymnasium
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import runtimes
from exporters.export import export_policy
from runtimes import distributions as np_dists
from toolkit.agents import checkpoints, ppo, sac, training
from toolkit.distributions.tanh_normal import TanhNormal
from toolkit.environments import driver as driver_lib
from toolkit.environments import gym_adapter
from toolkit.errors import ArgumentError, SpecMismatchError, UnsupportedError
from toolkit.networks.actor_distribution_network import ActorDistributionNetwork
from toolkit.networks.critic_network import CriticNetwork
from toolkit.networks.value_network import ValueNetwork
from toolkit.policies.py_tf_policy import PyTFPolicy
from toolkit.policies.random_py_policy import RandomPyPolicy
from toolkit.trajectories import time_step as ts

# --- a small continuous task ------------------------------------------------------------


class Reach(gymnasium.Env):
    """Move a point on a line to 0: x' = clip(x + a / 2), reward -|x'|, 10 steps.

    A real gymnasium environment small enough to learn in seconds: a random policy
    scores about -9, moving straight to 0 about -1.5.
    """

    observation_space = gymnasium.spaces.Box(-2.0, 2.0, (1,), np.float32)
    action_space = gymnasium.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._x = self.np_random.uniform(-1.5, 1.5, (1,)).astype(np.float32)
        self._t = 0
        return self._x.copy(), {}

    def step(self, action):
        self._x = np.clip(self._x + 0.5 * np.asarray(action, np.float32), -2.0, 2.0)
        self._t += 1
        return self._x.copy(), float(-abs(self._x[0])), False, self._t >= 10, {}


def _reach_env(n):
    return gym_adapter.GymVectorEnvironment([Reach] * n)


def _se(values):
    values = np.asarray(values, np.float64)
    return values.std(ddof=1) / np.sqrt(len(values))


# --- the tanh_normal family: TF and numpy ------------------------------------------------


def _tanh_pair(seed=0, batch=5):
    rng = np.random.default_rng(seed)
    loc = rng.normal(0, 1, (batch, 2)).astype(np.float32)
    scale = rng.uniform(0.1, 1.5, (batch, 2)).astype(np.float32)
    low, high = np.array([-2.0, 0.0], np.float32), np.array([2.0, 1.0], np.float32)
    tf_dist = TanhNormal(loc, scale, low, high, event_ndims=1)
    np_dist = np_dists.TanhNormal(loc, scale, np.broadcast_to(low, loc.shape), high, 1)
    return tf_dist, np_dist


def test_tanh_normal_log_prob_mode_and_stddev_match_the_runtime():
    tf_dist, np_dist = _tanh_pair()
    values = tf_dist.sample(7, seed=(1, 2)).numpy()  # [7, 5, 2], inside the bounds
    assert values.shape == (7, 5, 2)
    assert np.all(values[..., 0] >= -2) and np.all(values[..., 1] <= 1)
    # A fresh tensor: no bijector cache, log_prob inverts tanh as the runtime does.
    tf_log_prob = tf_dist.log_prob(tf.constant(values)).numpy()
    np.testing.assert_allclose(np_dist.log_prob(values), tf_log_prob, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np_dist.mode(), tf_dist.mode().numpy(), atol=1e-6)
    np.testing.assert_allclose(np_dist.stddev(), tf_dist.stddev().numpy(), atol=1e-6)
    # Outside the bounds: the runtime says -inf (impossible), never NaN.
    assert np.all(np.isneginf(np_dist.log_prob(np.full((5, 2), 3.0, np.float32))))


def test_tanh_normal_samples_match_the_runtime_in_distribution():
    tf_dist, np_dist = _tanh_pair(seed=3, batch=1)
    n = 20_000
    tf_samples = tf_dist.sample(n, seed=(5, 6)).numpy()[:, 0]
    np_samples = _runtime_samples(np_dist, n)
    for dim in range(2):
        a, b = tf_samples[:, dim], np_samples[:, dim]
        assert abs(a.mean() - b.mean()) <= 4 * np.hypot(_se(a), _se(b))
        std_se = np.hypot(a.std() / np.sqrt(2 * n), b.std() / np.sqrt(2 * n))
        assert abs(a.std() - b.std()) <= 4 * std_se


def _runtime_samples(np_dist, n):
    tiled = np_dists.TanhNormal(
        np.repeat(np_dist.loc, n, 0), np.repeat(np_dist.scale, n, 0), np_dist.low, np_dist.high, 1
    )
    return tiled.sample(np.random.default_rng(11))


def test_tanh_normal_sample_log_prob_uses_the_pre_tanh_value():
    # Near the bounds atanh loses everything; the cached pre-tanh sample does not.
    dist = TanhNormal(tf.constant([[6.0]]), tf.constant([[0.01]]), -1.0, 1.0, event_ndims=1)
    sample = dist.sample(seed=(0, 1))
    log_prob = dist.log_prob(sample).numpy()
    assert np.all(np.isfinite(log_prob)) and log_prob[0] > 10.0


def test_tanh_normal_actor_exports_the_tanh_normal_family():
    observation = gym_adapter.space_to_spec(Reach.observation_space)
    action = gym_adapter.space_to_spec(Reach.action_space, "action")
    network = ActorDistributionNetwork(
        observation, action, fc_layer_params=(4,), continuous_projection="tanh_normal"
    )
    from toolkit.policies.actor_policy import ActorPolicy

    policy = ActorPolicy(ts.time_step_spec(observation), action, network)
    step = ts.restart(np.zeros((3, 1), np.float32), 3)
    params, _, _ = policy.distribution_params(step)
    assert params.family == "tanh_normal"
    assert params.params["low"].shape == (3, 1)
    np.testing.assert_allclose(params.params["high"].numpy(), 1.0)


def test_continuous_projection_names_the_choices():
    observation = gym_adapter.space_to_spec(Reach.observation_space)
    action = gym_adapter.space_to_spec(Reach.action_space, "action")
    with pytest.raises(Exception, match=r"continuous_projection: expected one of \['normal'"):
        ActorDistributionNetwork(observation, action, continuous_projection="beta")


# --- GAE and the PPO train step ---------------------------------------------------------


def _gae_loop(rewards, values, next_values, discounts, lasts, valid, gamma, lam):
    T, N = rewards.shape
    out = np.zeros((T, N))
    for n in range(N):
        running = 0.0
        for t in reversed(range(T)):
            if not valid[t, n]:
                running = 0.0
                continue
            delta = rewards[t, n] + gamma * discounts[t, n] * next_values[t, n] - values[t, n]
            running = delta + (0.0 if lasts[t, n] else gamma * lam * running)
            out[t, n] = running
    return out


def test_gae_matches_a_python_loop():
    rng = np.random.default_rng(0)
    T, N = 12, 3
    args = [rng.normal(size=(T, N)).astype(np.float32) for _ in range(3)]
    lasts = (rng.random((T, N)) < 0.2).astype(np.float32)
    discounts = np.where(lasts * (rng.random((T, N)) < 0.5), 0.0, 1.0).astype(np.float32)
    # The step after an episode's last one is a reset boundary.
    valid = np.ones((T, N), np.float32)
    valid[1:][lasts[:-1] > 0] = 0.0
    lasts = lasts * valid
    expected = _gae_loop(*args, discounts, lasts, valid, 0.9, 0.8)
    got = ppo.gae(*map(tf.constant, (*args, discounts, lasts, valid)), 0.9, 0.8).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def _cartpole_ppo(seed=0, **kwargs):
    tf.random.set_seed(seed)
    env = gym_adapter.GymVectorEnvironment("CartPole-v1", 8)
    obs, act = env.observation_spec(), env.action_spec()
    kwargs.setdefault("minibatch_size", 128)
    agent = ppo.PpoAgent(
        env.time_step_spec(),
        act,
        ActorDistributionNetwork(obs, act, fc_layer_params=(64, 64), activation_fn=tf.nn.tanh),
        ValueNetwork(obs, fc_layer_params=(64, 64), activation_fn=tf.nn.tanh),
        tf_keras.optimizers.Adam(1e-3),
        seed=seed,
        **kwargs,
    )
    return env, agent


def _random_rollout(agent, T=16, N=8, seed=0):
    rng = np.random.default_rng(seed)
    return ppo.Rollout(
        observation=rng.normal(size=(T, N, 4)).astype(np.float32),
        action=rng.integers(0, 2, (T, N)).astype(np.int64),
        reward=np.ones((T, N), np.float32),
        discount=np.ones((T, N), np.float32),
        next_observation=rng.normal(size=(T, N, 4)).astype(np.float32),
        valid=np.ones((T, N), np.float32),
        last=np.zeros((T, N), np.float32),
    )


def test_ppo_train_runs_every_epoch_and_minibatch_in_one_traced_call():
    _, agent = _cartpole_ppo(num_epochs=3, minibatch_size=32)
    rollout = _random_rollout(agent)  # 128 rows: 4 minibatches per epoch
    info = agent.train(rollout)
    assert int(agent.train_step_counter.numpy()) == 3 * 4
    assert set(info.extra) == set(ppo._EXTRA)
    # The first minibatch step sees the collecting policy itself: ratio 1, so the mean
    # KL estimate of the whole call is small but the policy moved.
    assert 0.0 <= float(info.extra["approx_kl"]) < 0.1
    agent.train(_random_rollout(agent, seed=1))
    assert agent.train.experimental_get_tracing_count() == 1


def test_a_shared_encoder_is_trained_once_and_reached_by_the_value_loss():
    env = gym_adapter.GymVectorEnvironment("CartPole-v1", 2)
    obs, act = env.observation_spec(), env.action_spec()
    actor = ActorDistributionNetwork(obs, act, fc_layer_params=(16,), activation_fn=tf.nn.tanh)
    value = ValueNetwork.sharing(actor)
    encoder = {v.ref() for v in actor.encoder.trainable_variables}
    assert encoder and encoder <= {v.ref() for v in value.trainable_variables}
    agent = ppo.PpoAgent(
        env.time_step_spec(), act, actor, value, tf_keras.optimizers.Adam(1e-3), seed=0
    )
    # Each variable once: the actor's, plus the value head's kernel and bias.
    assert len(agent._variables()) == len(actor.trainable_variables) + 2
    assert len({v.ref() for v in agent._variables()}) == len(agent._variables())
    with tf.GradientTape() as tape:
        values, _ = value(tf.random.normal([5, 4]))
        loss = tf.reduce_mean(tf.square(values - 1.0))
    grads = tape.gradient(loss, actor.encoder.trainable_variables)
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)
    before = [v.numpy() for v in actor.encoder.trainable_variables]
    agent.train(_random_rollout(agent))
    assert any(
        not np.array_equal(b, v.numpy())
        for b, v in zip(before, actor.encoder.trainable_variables, strict=True)
    )


def test_a_value_network_takes_an_encoder_or_layer_options_not_both():
    obs = gym_adapter.GymVectorEnvironment("CartPole-v1", 1).observation_spec()
    act = gym_adapter.GymVectorEnvironment("CartPole-v1", 1).action_spec()
    actor = ActorDistributionNetwork(obs, act, fc_layer_params=(8,))
    with pytest.raises(ArgumentError, match=r"expected either encoder or \['fc_layer_params'\]"):
        ValueNetwork(obs, fc_layer_params=(8,), encoder=actor.encoder)
    with pytest.raises(ArgumentError, match="expected a network with an EncodingNetwork encoder"):
        ValueNetwork.sharing(ValueNetwork(obs))


def test_ppo_rollout_of_the_wrong_shape_names_the_field():
    _, agent = _cartpole_ppo()
    rollout = _random_rollout(agent)._replace(reward=np.ones((16,), np.float32))
    with pytest.raises(SpecMismatchError, match=r"rollout/reward: expected shape \[T, N\]"):
        agent.train(rollout)


# --- the SAC train step -----------------------------------------------------------------


def _reach_sac(seed=0, **kwargs):
    tf.random.set_seed(seed)
    env = _reach_env(4)
    obs, act = env.observation_spec(), env.action_spec()
    actor = ActorDistributionNetwork(
        obs, act, fc_layer_params=(32, 32), continuous_projection="tanh_normal"
    )
    critic = CriticNetwork((obs, act), joint_fc_layer_params=(32, 32))
    agent = sac.SacAgent(
        env.time_step_spec(),
        act,
        actor,
        critic,
        tf_keras.optimizers.Adam(3e-3),
        tf_keras.optimizers.Adam(3e-3),
        tf_keras.optimizers.Adam(3e-3),
        seed=seed,
        **kwargs,
    )
    return env, agent


def _reach_experience(agent, batch, rng, outer=()):
    from toolkit.replay_buffer import Experience

    shape = tuple(outer) + (batch,)
    return Experience(
        observation=rng.uniform(-2, 2, shape + (1,)).astype(np.float32),
        action=rng.uniform(-1, 1, shape + (1,)).astype(np.float32),
        reward=rng.normal(size=shape).astype(np.float32),
        discount=np.ones(shape, np.float32),
        next_observation=rng.uniform(-2, 2, shape + (1,)).astype(np.float32),
    )


@pytest.mark.parametrize(("target_entropy", "direction"), [(5.0, 1), (-50.0, -1)])
def test_sac_temperature_moves_towards_the_target_entropy(target_entropy, direction):
    _, agent = _reach_sac(target_entropy=target_entropy)
    batch = _reach_experience(agent, 32, np.random.default_rng(0), outer=(5,))
    info = agent.train(batch)
    assert int(agent.train_step_counter.numpy()) == 5
    # Entropy below the target raises alpha; far above it lowers alpha.
    assert np.sign(float(agent.log_alpha.numpy())) == direction
    assert {"critic_loss", "actor_loss", "alpha", "entropy"} <= set(info.extra)


def test_sac_twin_critics_and_targets_are_separate_variables():
    _, agent = _reach_sac()
    c1, c2 = agent.critic_network_1.variables, agent.critic_network_2.variables
    assert not np.allclose(c1[0].numpy(), c2[0].numpy())  # the twin has its own init
    for target, source in (
        (agent.target_critic_network_1, agent.critic_network_1),
        (agent.target_critic_network_2, agent.critic_network_2),
    ):
        for t, s in zip(target.variables, source.variables, strict=True):
            assert t is not s
            np.testing.assert_array_equal(t.numpy(), s.numpy())
    agent.train(_reach_experience(agent, 16, np.random.default_rng(1)))
    moved = agent.target_critic_network_1.variables[0].numpy()
    online = agent.critic_network_1.variables[0].numpy()
    assert not np.array_equal(moved, online)  # a soft update only moves part of the way


def test_sac_refuses_discrete_actions():
    env = gym_adapter.GymVectorEnvironment("CartPole-v1", 1)
    obs, act = env.observation_spec(), env.action_spec()
    with pytest.raises(Exception, match="SacAgent: expected one bounded float action spec"):
        sac.SacAgent(
            env.time_step_spec(),
            act,
            ActorDistributionNetwork(obs, act),
            CriticNetwork((obs, act)),
            *(tf_keras.optimizers.Adam() for _ in range(3)),
        )


# --- learning, then the exported stochastic policies -------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """SAC and Gaussian PPO on Reach, Categorical PPO on CartPole, briefly trained."""
    out = {}
    root = tmp_path_factory.mktemp("sac_ppo")
    env, agent = _reach_sac(seed=0)
    from toolkit.replay_buffer import ExperienceWriter, ReplayBuffer, experience_spec

    buffer = ReplayBuffer(experience_spec(env.time_step_spec(), env.action_spec()), 10_000, 0)
    result = training.train_off_policy(
        agent,
        env,
        buffer,
        ExperienceWriter(buffer, n_step=1, gamma=0.99),
        root / "sac",
        max_env_steps=1200,
        batch_size=64,
        train_steps_per_iteration=4,
        initial_collect_steps=200,
        seed=0,
    )
    out["sac"] = (agent, result, root / "sac", _reach_env)

    env, agent = _cartpole_ppo(seed=0)
    result = training.train_on_policy(
        agent, env, root / "ppo", max_env_steps=8192, rollout_length=128, seed=0
    )
    out["ppo"] = (
        agent,
        result,
        root / "ppo",
        lambda n: gym_adapter.GymVectorEnvironment("CartPole-v1", n),
    )

    tf.random.set_seed(1)
    env = _reach_env(8)
    obs, act = env.observation_spec(), env.action_spec()
    agent = ppo.PpoAgent(
        env.time_step_spec(),
        act,
        ActorDistributionNetwork(obs, act, fc_layer_params=(32,)),
        ValueNetwork(obs, fc_layer_params=(32,)),
        tf_keras.optimizers.Adam(3e-3),
        minibatch_size=64,
        seed=1,
    )
    result = training.train_on_policy(
        agent, env, root / "ppo_gauss", max_env_steps=4000, rollout_length=50, seed=1
    )
    out["ppo_gauss"] = (agent, result, root / "ppo_gauss", _reach_env)
    return out


def _returns(env, policy, seed=4242):
    return driver_lib.evaluate_policy(env, policy, seed=seed).episode_returns


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sac", "ppo", "ppo_gauss"])
def test_short_training_beats_a_random_policy(trained, kind):
    agent, _, _, make_env = trained[kind]
    env = make_env(20)
    learned = np.mean(_returns(env, PyTFPolicy(agent.policy, seed=0)))
    random = np.mean(_returns(env, RandomPyPolicy(env.time_step_spec(), env.action_spec(), seed=0)))
    if kind == "ppo":
        # CartPole: a random policy lasts about 20 steps.
        assert random < 30 and learned > 3 * random, (learned, random)
    else:
        # Reach: random about -9, heading straight for 0 about -1.5.
        assert random < -6 and learned > random / 2, (learned, random)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sac", "ppo", "ppo_gauss"])
def test_exported_stochastic_policy_matches_tf(trained, kind, tmp_path):
    agent, result, _, make_env = trained[kind]
    bundle = export_policy(agent.policy, tmp_path / "bundle", train_step=result.train_step)
    runtime = runtimes.load_policy(bundle, backend="onnx", seed=0)
    family = runtime.manifest["distribution"]["family"]
    assert family == {"sac": "tanh_normal", "ppo": "categorical", "ppo_gauss": "normal"}[kind]

    # Real states: the first observations of a few episodes.
    env = make_env(4)
    observations = env.reset(seed=99).observation
    n = 4000
    for observation in observations:
        batch = np.repeat(observation[None], n, axis=0)
        step = ts.restart(batch, n)
        tf_actions = PyTFPolicy(agent.policy, seed=1).action(step).action.reshape(n, -1)
        rt_actions = runtime.action(step).action.reshape(n, -1)
        for dim in range(tf_actions.shape[1]):
            a = tf_actions[:, dim].astype(np.float64)
            b = rt_actions[:, dim].astype(np.float64)
            assert abs(a.mean() - b.mean()) <= 4 * np.hypot(_se(a), _se(b)) + 1e-9
            std_se = np.hypot(a.std(), b.std()) / np.sqrt(2 * n)
            assert abs(a.std() - b.std()) <= 4 * std_se + 1e-9

        # Log-probabilities of the same actions, and entropies, from both sides.
        few = ts.restart(batch[:50], 50)
        tf_dist = agent.policy.distribution(few).action
        rt_dist = runtime.distribution(few).action
        actions = rt_actions[:50].reshape((50, *np.shape(runtime.action(few).action)[1:]))
        np.testing.assert_allclose(
            rt_dist.log_prob(actions),
            tf_dist.log_prob(tf.constant(actions)).numpy(),
            atol=1e-5,
            rtol=1e-5,
        )
        if kind == "sac":
            with pytest.raises(UnsupportedError, match="no closed-form entropy"):
                rt_dist.entropy()
        else:
            np.testing.assert_allclose(
                rt_dist.entropy(), tf_dist.entropy().numpy(), atol=1e-5, rtol=1e-5
            )

    # Episode returns over the same seeds: within 2 standard errors of the difference.
    env = make_env(20)
    tf_returns = _returns(env, PyTFPolicy(agent.policy, seed=3))
    rt_returns = _returns(env, runtimes.load_policy(bundle, backend="onnx", seed=3))
    gap = abs(np.mean(tf_returns) - np.mean(rt_returns))
    assert gap <= 2 * np.hypot(_se(tf_returns), _se(rt_returns)) + 1e-6, (
        np.mean(tf_returns),
        np.mean(rt_returns),
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sac", "ppo"])
def test_policy_checkpoints_rebuild_the_stochastic_policy(trained, kind):
    agent, result, out, make_env = trained[kind]
    spec = json.loads((out / "policy_checkpoints" / checkpoints.POLICY_SPEC_FILE).read_text())
    assert spec["agent"] == kind
    assert spec["networks"]["actor_network"]["class"] == "ActorDistributionNetwork"
    loaded = checkpoints.load_policy(out / "policy_checkpoints")
    assert loaded.train_step == result.train_step
    observation = make_env(5).reset(seed=5).observation
    step = ts.restart(observation, 5)
    for a, b in zip(
        tf.nest.flatten(loaded.policy.distribution_params(step)[0].params),
        tf.nest.flatten(agent.policy.distribution_params(step)[0].params),
        strict=True,
    ):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)


@pytest.mark.slow
def test_ppo_training_resumes_from_its_checkpoint(tmp_path):
    env, agent = _cartpole_ppo(seed=2, num_epochs=2)
    first = training.train_on_policy(
        agent, env, tmp_path, max_env_steps=1024, rollout_length=64, seed=2
    )
    assert first.env_steps >= 1024 and first.resumed_from == 0
    env, fresh = _cartpole_ppo(seed=2, num_epochs=2)
    second = training.train_on_policy(
        fresh, env, tmp_path, max_env_steps=1536, rollout_length=64, seed=2
    )
    assert second.resumed_from == first.train_step
    assert 1536 <= second.env_steps < first.env_steps + 1024
    assert second.train_step > first.train_step
