"""Export once (fresh weights, zero biases), train, then take the trained checkpoints.

Before the probe conversion (exporters.probe), TF's constant folding dropped the zero
bias Adds of a fresh network, so its bundle refused every later checkpoint. Here each
policy kind is exported fresh, trained (a real DQN run on CartPole for the Q policy;
300 Adam steps on a regression of its distribution parameters for the others), and
its training checkpoints (the PolicyCheckpointer layout) are applied to the bundle:
by ``update_from_checkpoint`` on both backends and by ``update_bundle``. The bundle then
computes what the live TF policy computes.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import runtimes
from exporters import export_policy
from exporters.update import update_bundle
from tests.checkpoint_checks import assert_reader_matches_tf
from tests.exported_bundles import tf_policy_for
from toolkit import distribution_families as families
from toolkit import nest
from toolkit.specs import tensor_spec
from toolkit.trajectories.time_step import TimeStep

#: kind -> contract case: actor, Gaussian, recurrent and dict-observation policies.
KINDS = {
    "actor": "tf/actor/action_network",
    "gaussian": "tf/gaussian_actor",
    "recurrent": "tf/q_rnn",
    "dict_observation": "tf/actor/normal_dict_obs",
}
BATCH = 4


def _time_step(policy, seed, batch=BATCH, moderate=False):
    """Time steps with spec-sampled observations (or, ``moderate``, floats drawn from
    N(0, 1): spec samples of unbounded dims are extreme, where a greedy policy picks the
    same action whatever its weights)."""
    spec = tensor_spec.to_array_spec(policy.time_step_spec)
    rng = np.random.default_rng(seed)

    def draw(s):
        if moderate and s.dtype.kind == "f":
            return rng.normal(0.0, 1.0, (batch, *s.shape)).astype(s.dtype)
        return s.sample(rng, outer_dims=(batch,))

    observation = nest.map_structure(draw, spec.observation)
    step_type = np.resize(np.array([0, 1, 1, 2], np.int32), batch)
    ones = np.ones(batch, np.float32)
    return TimeStep(step_type, np.zeros(batch, np.float32), ones, observation)


def _live_params(policy, time_step):
    state = policy.get_initial_state(len(time_step.step_type))
    params, _, _ = policy.distribution_params(nest.map_structure(tf.constant, time_step), state)
    return [np.asarray(v) for _, v in families.flatten_params(params, "distribution")]


def _runtime_params(policy, time_step):
    state = policy.get_initial_state(len(time_step.step_type))
    dists = nest.flatten(policy.distribution_params(time_step, state).action)
    return [np.asarray(v) for d in dists for v in d.parameters().values()]


def _fresh(policy):
    for variable in policy.variables():
        if variable.dtype.is_floating and len(variable.shape) == 1:
            variable.assign(tf.zeros_like(variable))  # as a freshly built network has


def _train(policy, steps=300):
    """Adam steps that move every variable: regress the parameters onto targets."""
    optimizer = tf_keras.optimizers.Adam(1e-2)
    batches = [_time_step(policy, seed) for seed in range(4)]
    variables = policy.trainable_variables

    # Without AutoGraph: the step has no Python control flow on tensors, and converting
    # the policy's and networks' code costs ~15 s of tracing (the 300 steps take ~1 s).
    @tf.function(autograph=False)
    def step(time_step):
        with tf.GradientTape() as tape:
            state = policy.get_initial_state(BATCH)
            params, _, _ = policy.distribution_params(time_step, state)
            leaves = [v for _, v in families.flatten_params(params, "distribution")]
            loss = tf.add_n(
                [tf.reduce_mean(tf.square(tf.cast(v, tf.float32) - 0.7)) for v in leaves]
            )
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))

    for i in range(steps):
        step(nest.map_structure(tf.constant, batches[i % len(batches)]))


def _save_like_policy_checkpointer(policy, directory, train_step):
    step = tf.Variable(train_step, dtype=tf.int64)
    checkpoint = tf.train.Checkpoint(
        policy=policy, model_variables=list(policy.variables()), train_step=step
    )
    prefix = tf.train.CheckpointManager(checkpoint, str(directory), 3).save(train_step)
    assert_reader_matches_tf(prefix)
    return prefix


def _check_both_backends(bundle, live, checkpoint, train_step, tmp_path):
    time_step = _time_step(live, 99)
    want = _live_params(live, time_step)
    # Training changed what the policy does (on many states: a greedy policy's few
    # actions on BATCH states may all be the same before and after).
    probe = _time_step(live, 98, batch=1024, moderate=True)
    trained = _live_params(live, probe)
    for backend in ("onnx", "tf"):
        policy = runtimes.load_policy(bundle, backend)
        before = _runtime_params(policy, probe)
        assert any(not np.allclose(b, w, atol=1e-4) for b, w in zip(before, trained, strict=True))
        policy.update_from_checkpoint(checkpoint)
        assert policy.train_step == train_step
        for got, w in zip(_runtime_params(policy, time_step), want, strict=True):
            np.testing.assert_allclose(got, w, atol=1e-5, err_msg=backend)
    updated = shutil.copytree(bundle, tmp_path / "updated")
    report = update_bundle(updated, checkpoint)
    assert report.train_step == train_step and report.formats == ("saved_model", "onnx", "golden")
    for backend in ("onnx", "tf"):
        policy = runtimes.load_policy(updated, backend)
        assert policy.train_step == train_step
        for got, w in zip(_runtime_params(policy, time_step), want, strict=True):
            np.testing.assert_allclose(got, w, atol=1e-5, err_msg=f"updated bundle, {backend}")


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_fresh_export_takes_the_trained_checkpoints(kind, tmp_path):
    policy = tf_policy_for(KINDS[kind])
    _fresh(policy)
    bundle = export_policy(policy, tmp_path / "bundle", train_step=0)
    _train(policy)
    assert all(np.any(v.numpy() != 0) for v in policy.variables() if len(v.shape) == 1)
    _save_like_policy_checkpointer(policy, tmp_path / "policy_checkpoints", 300)
    _check_both_backends(bundle, policy, tmp_path / "policy_checkpoints", 300, tmp_path)


@pytest.mark.slow
def test_fresh_dqn_export_follows_a_real_training_run(tmp_path):
    """The Q case with the real workflow: export the agent's policy before training,
    train DQN on CartPole (toolkit.agents), take its policy_checkpoints/."""
    from toolkit.agents import checkpoints, common, dqn, training
    from toolkit.environments import gym_adapter
    from toolkit.networks.q_network import QNetwork
    from toolkit.replay_buffer import ExperienceWriter, ReplayBuffer, experience_spec

    tf.random.set_seed(0)
    env = gym_adapter.GymVectorEnvironment("CartPole-v1", 8)
    counter = tf.Variable(0, dtype=tf.int64)
    agent = dqn.DqnAgent(
        env.time_step_spec(),
        env.action_spec(),
        QNetwork(env.observation_spec(), env.action_spec(), fc_layer_params=(16,)),
        tf_keras.optimizers.Adam(1e-3),
        epsilon_greedy=common.linear_decay(1.0, 0.05, 300, counter),
        train_step_counter=counter,
    )
    bundle = export_policy(agent.policy, tmp_path / "bundle", train_step=0)
    buffer = ReplayBuffer(experience_spec(env.time_step_spec(), env.action_spec()), 10_000, 0)
    training.train_off_policy(
        agent,
        env,
        buffer,
        ExperienceWriter(buffer),
        tmp_path / "run",
        max_env_steps=1600,
        train_steps_per_iteration=4,
        initial_collect_steps=400,
        seed=0,
    )
    # The run's own policy checkpoint holds its best policy; save the last one too.
    checkpoints.PolicyCheckpointer(tmp_path / "run" / "policy_checkpoints", agent).save()
    train_step = int(counter.numpy())
    assert train_step >= 300
    _check_both_backends(bundle, agent.policy, tmp_path / "run", train_step, tmp_path)
