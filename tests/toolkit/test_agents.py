"""DQN and DDPG agents: losses against numpy references, in-graph training, learning,
checkpoints and resuming, on real TensorFlow and gymnasium."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from toolkit.agents import checkpoints, common, ddpg, dqn, training
from toolkit.environments import driver as driver_lib
from toolkit.environments import gym_adapter
from toolkit.errors import (
    ArgumentError,
    SpecError,
    SpecMismatchError,
    ToolkitError,
    UnsupportedError,
)
from toolkit.networks.actor_network import ActorNetwork
from toolkit.networks.critic_network import CriticNetwork
from toolkit.networks.q_network import QNetwork
from toolkit.networks.q_rnn_network import QRnnNetwork
from toolkit.policies.py_tf_policy import PyTFPolicy
from toolkit.policies.random_py_policy import RandomPyPolicy
from toolkit.replay_buffer import Experience, ExperienceWriter, ReplayBuffer, experience_spec
from toolkit.specs.array_spec import ArraySpec, BoundedArraySpec
from toolkit.trajectories import time_step as ts

OBS = ArraySpec((3,), np.float32, "observation")
# Actions -1, 0, 1: the Q column of action a is a + 1.
ACTIONS = BoundedArraySpec((), np.int64, -1, 1, "action")
TIME_STEP_SPEC = ts.time_step_spec(OBS)


def _experience(batch, rng, outer=()):
    shape = tuple(outer) + (batch,)
    return Experience(
        observation=rng.standard_normal(shape + (3,)).astype(np.float32),
        action=rng.integers(-1, 2, size=shape).astype(np.int64),
        reward=rng.standard_normal(shape).astype(np.float32),
        discount=rng.choice([0.0, 1.0], size=shape).astype(np.float32),
        next_observation=rng.standard_normal(shape + (3,)).astype(np.float32),
    )


def _dqn(**kwargs):
    tf.random.set_seed(0)
    network = QNetwork(OBS, ACTIONS, fc_layer_params=(8,))
    kwargs.setdefault("gamma", 0.9)
    return dqn.DqnAgent(TIME_STEP_SPEC, ACTIONS, network, tf_keras.optimizers.SGD(0.1), **kwargs)


def _q(network, observation):
    return network(observation)[0].numpy()


def _huber(x):
    return np.where(np.abs(x) <= 1.0, 0.5 * x**2, np.abs(x) - 0.5)


# --- losses --------------------------------------------------------------------------


def test_huber_loss_by_hand():
    errors = tf.constant([0.5, -2.0, 3.0, 0.0])
    np.testing.assert_allclose(common.huber_loss(errors).numpy(), [0.125, 1.5, 2.5, 0.0])
    np.testing.assert_allclose(common.huber_loss(errors, delta=2.0).numpy(), [0.125, 2.0, 4.0, 0.0])


@pytest.mark.parametrize("double_dqn", [False, True])
def test_dqn_loss_matches_a_numpy_reference(double_dqn):
    agent = _dqn(double_dqn=double_dqn, reward_scale_factor=2.0)
    # Make the target network differ from the online one, so double DQN matters.
    for v in agent.target_q_network.variables:
        v.assign(v * 0.5 + 0.1)
    batch = _experience(16, np.random.default_rng(1))
    q = _q(agent.q_network, batch.observation)
    next_target = _q(agent.target_q_network, batch.next_observation)
    if double_dqn:
        best = np.argmax(_q(agent.q_network, batch.next_observation), axis=1)
        next_value = next_target[np.arange(16), best]
    else:
        next_value = next_target.max(axis=1)
    target = 2.0 * batch.reward + 0.9 * batch.discount * next_value
    chosen = q[np.arange(16), batch.action + 1]
    expected = _huber(target - chosen).mean()
    info = agent.train(batch)
    np.testing.assert_allclose(info.loss.numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(info.extra["q_mean"].numpy(), chosen.mean(), rtol=1e-5)


def test_dqn_gradient_step_matches_sgd_on_the_loss():
    agent = _dqn(gradient_clipping=None)
    batch = _experience(8, np.random.default_rng(2))
    variables = agent.q_network.trainable_variables
    before = [v.numpy() for v in variables]
    # Reference gradient: the same loss written out with tf ops, outside the agent.
    next_value = tf.reduce_max(agent.target_q_network(batch.next_observation)[0], axis=1)
    target = batch.reward + 0.9 * batch.discount * next_value
    with tf.GradientTape() as tape:
        q = agent.q_network(batch.observation)[0]
        chosen = tf.gather(q, batch.action + 1, batch_dims=1)
        loss = tf.reduce_mean(common.huber_loss(target - chosen))
    gradients = tape.gradient(loss, variables)
    agent.train(batch)
    for b, g, v in zip(before, gradients, variables, strict=True):
        np.testing.assert_allclose(v.numpy(), b - 0.1 * g.numpy(), rtol=1e-5, atol=1e-6)


# --- in-graph training ----------------------------------------------------------------


def test_dqn_train_is_a_tf_function_traced_once():
    agent = _dqn()
    assert isinstance(agent.train, tf.types.experimental.PolymorphicFunction)
    rng = np.random.default_rng(3)
    for _ in range(4):
        agent.train(_experience(16, rng))
    # Four calls, one trace: the Python body ran once, the graph four times.
    assert agent.train.experimental_get_tracing_count() == 1
    assert int(agent.train_step_counter.numpy()) == 4


def test_k_batches_make_k_gradient_steps_in_one_call():
    agent = _dqn()
    agent.train(_experience(16, np.random.default_rng(4), outer=(5,)))
    assert int(agent.train_step_counter.numpy()) == 5
    assert agent.train.experimental_get_tracing_count() == 1


def test_k_batches_equal_k_single_calls():
    one, many = _dqn(), _dqn()
    common.soft_update(many.q_network.variables, one.q_network.variables, 1.0)
    common.soft_update(many.target_q_network.variables, one.target_q_network.variables, 1.0)
    batches = _experience(8, np.random.default_rng(5), outer=(3,))
    for k in range(3):
        one.train(Experience(*(field[k] for field in batches)))
    many.train(batches)
    for a, b in zip(one.q_network.variables, many.q_network.variables, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_hard_target_update_every_period():
    agent = _dqn(target_update_period=3)
    initial = [v.numpy() for v in agent.target_q_network.variables]
    rng = np.random.default_rng(6)
    agent.train(_experience(8, rng))
    agent.train(_experience(8, rng))
    for v, i in zip(agent.target_q_network.variables, initial, strict=True):
        np.testing.assert_array_equal(v.numpy(), i)
    agent.train(_experience(8, rng))
    for t, o in zip(agent.target_q_network.variables, agent.q_network.variables, strict=True):
        np.testing.assert_array_equal(t.numpy(), o.numpy())


def test_soft_target_update_moves_by_tau():
    agent = _dqn(target_update_tau=0.25)
    old = [v.numpy() for v in agent.target_q_network.variables]
    agent.train(_experience(8, np.random.default_rng(7)))
    for t, o, before in zip(
        agent.target_q_network.variables, agent.q_network.variables, old, strict=True
    ):
        np.testing.assert_allclose(t.numpy(), 0.75 * before + 0.25 * o.numpy(), rtol=1e-5)


def test_experience_of_the_wrong_shape_names_the_field():
    agent = _dqn()
    bad = _experience(8, np.random.default_rng(8))._replace(
        observation=np.zeros((8, 4), np.float32)
    )
    with pytest.raises(SpecMismatchError, match=r"^experience/observation: expected shape \[B\]"):
        agent.train(bad)
    wrong_dtype = _experience(8, np.random.default_rng(8))._replace(reward=np.zeros(8, np.float64))
    with pytest.raises(SpecMismatchError, match=r"^experience/reward: expected dtype float32"):
        agent.train(wrong_dtype)


def test_dqn_refuses_recurrent_networks_and_continuous_actions():
    rnn = QRnnNetwork(OBS, ACTIONS, lstm_size=(4,))
    with pytest.raises(UnsupportedError, match="recurrent DQN is not supported"):
        dqn.DqnAgent(TIME_STEP_SPEC, ACTIONS, rnn, tf_keras.optimizers.SGD(0.1))
    continuous = BoundedArraySpec((), np.float32, -1.0, 1.0)
    with pytest.raises(SpecError, match="bounded integer spec"):
        dqn.DqnAgent(
            TIME_STEP_SPEC,
            continuous,
            QNetwork(OBS, ACTIONS, fc_layer_params=(4,)),
            tf_keras.optimizers.SGD(0.1),
        )


def test_epsilon_schedule_follows_the_train_step():
    counter = tf.Variable(0, dtype=tf.int64)
    epsilon = common.linear_decay(1.0, 0.1, 100, counter)
    assert float(epsilon()) == pytest.approx(1.0)
    counter.assign(50)
    assert float(epsilon()) == pytest.approx(0.55)
    counter.assign(1000)
    assert float(epsilon()) == pytest.approx(0.1)


def test_collect_policy_explores_and_policy_is_greedy():
    counter = tf.Variable(0, dtype=tf.int64)
    agent = _dqn(
        epsilon_greedy=common.linear_decay(1.0, 0.0, 10, counter), train_step_counter=counter
    )
    observation = np.random.default_rng(9).standard_normal((400, 3)).astype(np.float32)
    step = ts.restart(observation, 400)
    greedy = np.argmax(_q(agent.q_network, observation), axis=1) - 1
    np.testing.assert_array_equal(PyTFPolicy(agent.policy).action(step).action, greedy)
    collect = PyTFPolicy(agent.collect_policy, seed=0)
    exploring = collect.action(step).action
    # epsilon 1: uniform over 3 actions, so about a third agree with greedy by chance.
    assert 0.2 < np.mean(exploring == greedy) < 0.5
    counter.assign(10)  # epsilon 0 now, read inside the traced function
    np.testing.assert_array_equal(collect.action(step).action, greedy)


# --- DDPG --------------------------------------------------------------------------------


PENDULUM_OBS = BoundedArraySpec((3,), np.float32, [-1, -1, -8], [1, 1, 8], "observation")
TORQUE = BoundedArraySpec((1,), np.float32, -2.0, 2.0, "action")


def _ddpg(**kwargs):
    tf.random.set_seed(0)
    actor = ActorNetwork(PENDULUM_OBS, TORQUE, fc_layer_params=(16,))
    critic = CriticNetwork(
        (PENDULUM_OBS, TORQUE), observation_fc_layer_params=(16,), joint_fc_layer_params=(16,)
    )
    kwargs.setdefault("gamma", 0.9)
    return ddpg.DdpgAgent(
        ts.time_step_spec(PENDULUM_OBS),
        TORQUE,
        actor,
        critic,
        tf_keras.optimizers.SGD(0.01),
        tf_keras.optimizers.SGD(0.01),
        **kwargs,
    )


def _pendulum_batch(batch, rng):
    return Experience(
        observation=rng.uniform(-1, 1, (batch, 3)).astype(np.float32),
        action=rng.uniform(-2, 2, (batch, 1)).astype(np.float32),
        reward=rng.uniform(-16, 0, batch).astype(np.float32),
        discount=np.ones(batch, np.float32),
        next_observation=rng.uniform(-1, 1, (batch, 3)).astype(np.float32),
    )


def test_ddpg_critic_loss_matches_a_numpy_reference():
    agent = _ddpg()
    for v in agent.target_critic_network.variables:
        v.assign(v + 0.05)
    batch = _pendulum_batch(16, np.random.default_rng(10))
    next_actions = agent.target_actor_network(batch.next_observation)[0]
    next_q = agent.target_critic_network((batch.next_observation, next_actions))[0].numpy()
    q = agent.critic_network((batch.observation, batch.action))[0].numpy()
    expected_critic = np.mean((batch.reward + 0.9 * batch.discount * next_q - q) ** 2)
    info = agent.train(batch)
    np.testing.assert_allclose(info.extra["critic_loss"].numpy(), expected_critic, rtol=1e-5)
    assert isinstance(agent.train, tf.types.experimental.PolymorphicFunction)


def test_ddpg_actor_step_raises_the_critics_value():
    agent = _ddpg(target_update_tau=1.0)
    batch = _pendulum_batch(64, np.random.default_rng(11))

    def value():
        actions = agent.actor_network(batch.observation)[0]
        return float(tf.reduce_mean(agent.critic_network((batch.observation, actions))[0]))

    # Train the critic only a little (SGD 0.01): the actor's step must still climb Q.
    # Measured against the critic after the step, the actor's change is what matters,
    # so compare the updated actor with the old actor under the updated critic.
    old_actor = [v.numpy() for v in agent.actor_network.variables]
    agent.train(batch)
    new_value = value()
    new_actor = [v.numpy() for v in agent.actor_network.variables]
    for v, old in zip(agent.actor_network.variables, old_actor, strict=True):
        v.assign(old)
    old_value = value()
    for v, new in zip(agent.actor_network.variables, new_actor, strict=True):
        v.assign(new)
    assert new_value > old_value


def test_ddpg_collect_policy_adds_noise_and_policy_does_not():
    agent = _ddpg(ou_stddev=0.5, ou_damping=0.15)
    observation = np.random.default_rng(12).uniform(-1, 1, (32, 3)).astype(np.float32)
    step = ts.restart(observation, 32)
    deterministic = agent.actor_network(observation)[0].numpy()
    np.testing.assert_allclose(
        PyTFPolicy(agent.policy).action(step).action, deterministic, rtol=1e-5, atol=1e-6
    )
    collect = PyTFPolicy(agent.collect_policy, seed=1)
    noisy = collect.action(step, collect.get_initial_state(32)).action
    assert np.all(np.abs(noisy) <= 2.0)
    assert np.std(noisy - deterministic) > 0.1


# --- learning, checkpoints and resuming -------------------------------------------------


def _cartpole_agent(seed=0, **kwargs):
    tf.random.set_seed(seed)
    env = gym_adapter.GymVectorEnvironment("CartPole-v1", 16)
    counter = tf.Variable(0, dtype=tf.int64, name="train_step")
    agent = dqn.DqnAgent(
        env.time_step_spec(),
        env.action_spec(),
        QNetwork(env.observation_spec(), env.action_spec(), fc_layer_params=(100, 50)),
        tf_keras.optimizers.Adam(1e-3),
        epsilon_greedy=common.linear_decay(1.0, 0.05, 4000, counter),
        target_update_period=200,
        gamma=0.98,
        double_dqn=True,
        train_step_counter=counter,
        **kwargs,
    )
    buffer = ReplayBuffer(experience_spec(env.time_step_spec(), env.action_spec()), 50_000, seed)
    return env, agent, buffer, ExperienceWriter(buffer, n_step=3, gamma=0.98)


def test_dqn_on_cartpole_beats_a_random_policy(tmp_path):
    # About 5 s: 6000 environment and gradient steps. Measured trained returns: 140-190.
    env, agent, buffer, writer = _cartpole_agent(seed=0, jit_compile=True)
    result = training.train_off_policy(
        agent,
        env,
        buffer,
        writer,
        tmp_path,
        max_env_steps=6000,
        train_steps_per_iteration=16,
        initial_collect_steps=500,
        seed=0,
    )
    assert result.env_steps >= 6000 and result.stop_reason == "steps"
    eval_env = gym_adapter.GymVectorEnvironment("CartPole-v1", 10)
    trained = driver_lib.evaluate_policy(eval_env, PyTFPolicy(agent.policy), seed=777)
    random = driver_lib.evaluate_policy(
        eval_env, RandomPyPolicy(env.time_step_spec(), env.action_spec(), seed=0), seed=777
    )
    # A random policy keeps the pole up for about 20 steps.
    assert random.mean_return < 40
    assert trained.mean_return > 3 * random.mean_return


@pytest.mark.parametrize(
    ("patience", "returns", "stop", "best"),
    [
        (None, [1.0, 5.0, 9.0], "target", 5.0),
        (2, [1.0, 5.0, 6.0, 6.0, 5.5, 9.0], "plateau", 6.0),  # two without a better one
        (1, [5.0, 5.0, 9.0], "plateau", 5.0),  # a tie is no improvement, but it is kept
        (2, [1.0, 5.0, 4.0, 7.0, 6.0, 8.0, 3.0, 2.0, 9.0], "plateau", 8.0),
    ],
)
def test_patience_trains_past_the_target_until_evaluations_stop_improving(
    tmp_path, monkeypatch, patience, returns, stop, best
):
    # The evaluations' returns are scripted: the stopping rule is what is tested here.
    scripted = iter(returns)
    saved_steps = []  # the train step at each evaluation

    def evaluate(*args, **kwargs):
        saved_steps.append(int(agent.train_step_counter.numpy()))
        return driver_lib.Evaluation([next(scripted)], [1])

    monkeypatch.setattr(training.driver_lib, "evaluate_policy", evaluate)
    env, agent, buffer, writer = _cartpole_agent(seed=2)
    result = training.train_off_policy(
        agent,
        env,
        buffer,
        writer,
        tmp_path,
        max_env_steps=10_000,
        initial_collect_steps=64,
        eval_env=env,
        eval_interval=16,  # one evaluation per iteration
        target_return=5.0,
        patience=patience,
        seed=0,
    )
    assert result.stop_reason == stop
    assert [r for _, _, r in result.evaluations] == returns[: len(result.evaluations)]
    assert len(result.evaluations) == len(returns) - 1
    assert result.best_return == best
    # The policy kept is that of the last evaluation at the best return (ties: the later).
    last_best = max(i for i, r in enumerate(returns[: len(result.evaluations)]) if r == best)
    assert result.best_train_step == saved_steps[last_best]


def test_patience_must_be_positive(tmp_path):
    env, agent, buffer, writer = _cartpole_agent(seed=2)
    with pytest.raises(ArgumentError, match="patience: expected None or >= 1, got 0"):
        training.train_off_policy(
            agent, env, buffer, writer, tmp_path, max_env_steps=10, eval_env=env, patience=0
        )


def test_training_writes_checkpoints_and_a_resumed_run_continues(tmp_path):
    env, agent, buffer, writer = _cartpole_agent(seed=1)
    first = training.train_off_policy(
        agent,
        env,
        buffer,
        writer,
        tmp_path,
        max_env_steps=2000,
        train_steps_per_iteration=2,
        initial_collect_steps=1000,
        seed=1,
    )
    saved_step, saved_rows = first.train_step, len(buffer)
    assert saved_step > 100 and first.resumed_from == 0
    assert (tmp_path / "checkpoints" / "checkpoint").is_file()
    assert (tmp_path / "policy_checkpoints" / checkpoints.POLICY_SPEC_FILE).is_file()

    # A new process would build everything afresh: so do we.
    env, agent, buffer, writer = _cartpole_agent(seed=1)
    assert int(agent.train_step_counter.numpy()) == 0 and len(buffer) == 0
    second = training.train_off_policy(
        agent,
        env,
        buffer,
        writer,
        tmp_path,
        max_env_steps=2300,
        train_steps_per_iteration=2,
        initial_collect_steps=1000,
        seed=1,
    )
    assert second.resumed_from == saved_step
    # Steps continue from the checkpoint: no second warm-up of 1000 random steps, and
    # the train step counts on (a fresh run would be at about 2 * 1300 / 16 now).
    assert 2300 <= second.env_steps < first.env_steps + 400
    iterations = (second.train_step - saved_step) // 2
    assert second.train_step == saved_step + 2 * iterations and 15 <= iterations <= 30
    assert len(buffer) > saved_rows


def test_train_checkpointer_restores_networks_optimizer_and_buffer(tmp_path):
    env, agent, buffer, writer = _cartpole_agent(seed=2)
    driver_lib.Driver(
        env,
        RandomPyPolicy(env.time_step_spec(), env.action_spec(), seed=0),
        [writer],
        max_steps=200,
    ).run(seed=0)
    agent.train(buffer.sample(32, 3))
    saver = checkpoints.TrainCheckpointer(tmp_path, agent, buffer)
    path = saver.save()
    assert path.endswith("ckpt-3")
    weights = [v.numpy() for v in agent.variables]
    rows = buffer.gather_all()

    env, fresh, fresh_buffer, _ = _cartpole_agent(seed=3)
    assert checkpoints.TrainCheckpointer(tmp_path, fresh, fresh_buffer).restore() == 3
    for a, b in zip(weights, [v.numpy() for v in fresh.variables], strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(rows, fresh_buffer.gather_all(), strict=True):
        np.testing.assert_array_equal(a, b)
    # Adam's step count came back too: the optimizer continues, not restarts.
    assert int(fresh.optimizer.iterations.numpy()) == 3


def test_restoring_a_checkpoint_of_another_agent_fails_clearly(tmp_path):
    _, agent, buffer, _ = _cartpole_agent()
    checkpoints.TrainCheckpointer(tmp_path, agent, buffer).save()
    other = _ddpg()
    with pytest.raises(ToolkitError, match="checkpoint does not match this agent"):
        checkpoints.TrainCheckpointer(tmp_path, other).restore()


def test_policy_checkpoint_rebuilds_the_greedy_policy(tmp_path):
    env, agent, _, _ = _cartpole_agent(seed=4)
    agent.train_step_counter.assign(42)
    saver = checkpoints.PolicyCheckpointer(tmp_path, agent)
    saver.save()
    spec = json.loads((tmp_path / checkpoints.POLICY_SPEC_FILE).read_text())
    assert spec["agent"] == "dqn"
    assert spec["networks"]["q_network"]["class"] == "QNetwork"
    assert spec["networks"]["q_network"]["kwargs"]["fc_layer_params"] == {"tuple": [100, 50]}

    loaded = checkpoints.load_policy(tmp_path)
    assert loaded.train_step == 42
    assert type(loaded.policy).__name__ == "GreedyPolicy"
    step = env.reset(seed=5)
    np.testing.assert_array_equal(
        PyTFPolicy(loaded.policy).action(step).action, PyTFPolicy(agent.policy).action(step).action
    )
    # The variables are also readable by index, for loaders without the object graph.
    reader = tf.train.load_checkpoint(loaded.checkpoint)
    first = reader.get_tensor("model_variables/0/.ATTRIBUTES/VARIABLE_VALUE")
    np.testing.assert_array_equal(first, agent.policy.variables()[0].numpy())


def test_ddpg_policy_checkpoint_rebuilds_the_actor_policy(tmp_path):
    agent = _ddpg()
    checkpoints.PolicyCheckpointer(tmp_path, agent).save()
    loaded = checkpoints.load_policy(tmp_path)
    assert type(loaded.policy).__name__ == "ActorPolicy"
    observation = np.random.default_rng(13).uniform(-1, 1, (5, 3)).astype(np.float32)
    step = ts.restart(observation, 5)
    np.testing.assert_allclose(
        PyTFPolicy(loaded.policy).action(step).action, PyTFPolicy(agent.policy).action(step).action
    )


def test_load_policy_errors(tmp_path):
    with pytest.raises(
        ToolkitError, match="expected a policy checkpoint directory with policy_spec.json"
    ):
        checkpoints.load_policy(tmp_path)
    (tmp_path / checkpoints.POLICY_SPEC_FILE).write_text(
        json.dumps({"format": checkpoints.POLICY_SPEC_FORMAT, "version": 1})
    )
    with pytest.raises(ToolkitError, match="no checkpoint found"):
        checkpoints.load_policy(tmp_path)
    # A damaged spec file is named, not an unexpected JSONDecodeError or AttributeError.
    spec = tmp_path / checkpoints.POLICY_SPEC_FILE
    spec.write_bytes(b'{"format": ')
    with pytest.raises(ToolkitError, match=r"policy_spec.json: expected JSON, got Expecting value"):
        checkpoints.load_policy(tmp_path)
    spec.write_text("[1, 2]")
    with pytest.raises(ToolkitError, match=r"policy_spec.json: expected a JSON object, got list"):
        checkpoints.load_policy(tmp_path)


def test_network_classes_outside_the_allowlist_are_refused():
    with pytest.raises(UnsupportedError, match=r"network class: expected one of .*got 'os.system'"):
        checkpoints.build_network({"class": "os.system", "kwargs": {}})
