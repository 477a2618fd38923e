"""TF policies: the base class, distributions, Q/greedy/epsilon-greedy/random/actor, PyTFPolicy.

Expected values come from numpy (the network's weights read back and applied by hand),
from TFP's own distributions, or from hand-derived probabilities.

Over 600 lines: one file for every TF policy kind of the tutorial, sharing its fixtures.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

from toolkit.errors import PolicyError, SpecMismatchError, StructureError
from toolkit.networks.network import Network
from toolkit.networks.q_network import QNetwork
from toolkit.networks.q_rnn_network import QRnnNetwork
from toolkit.policies import (
    actor_policy,
    epsilon_greedy_policy,
    greedy_policy,
    py_tf_policy,
    q_policy,
    random_tf_policy,
)
from toolkit.policies.tf_policy import ShiftedCategorical
from toolkit.specs import tensor_spec
from toolkit.trajectories import time_step as ts
from toolkit.trajectories.time_step import StepType, TimeStep

tfd = tfp.distributions

OBS = tensor_spec.TensorSpec((4,), tf.float32, name="observation")
TIME_STEP_SPEC = ts.time_step_spec(OBS)
# The TF-Agents policies tutorial's QPolicy spec: actions -1, 0, 1 with shape (1,).
SEED_Q_SPEC = tensor_spec.BoundedTensorSpec((1,), tf.int32, minimum=-1, maximum=1)
UNIT_BOX = tensor_spec.BoundedTensorSpec((3,), tf.float32, minimum=-1, maximum=1)


def _restart(observations) -> TimeStep:
    observations = tf.constant(observations, tf.float32)
    return ts.restart(observations, batch_size=observations.shape[0])


def _steps(observations, step_types) -> TimeStep:
    observations = tf.constant(observations, tf.float32)
    batch = observations.shape[0]
    return TimeStep(
        tf.constant(step_types, tf.int32),
        tf.zeros([batch]),
        tf.ones([batch]),
        observations,
    )


class SeedQNetwork(Network):
    """The tutorial's QNetwork: one dense layer of ``num_actions`` (default 2) units."""

    def __init__(self, observation_spec, action_spec, num_actions=2, name=None):
        super().__init__(observation_spec, state_spec=(), name=name)
        self._dense = tf_keras.layers.Dense(num_actions)

    def call(self, inputs, step_type=None, network_state=()):
        inputs = tf.cast(inputs, tf.float32)
        return self._dense(inputs), network_state


def _q_policy(kernel, bias, **kwargs):
    network = SeedQNetwork(OBS, SEED_Q_SPEC, num_actions=3)
    network(tf.zeros([1, 4]))
    network._dense.set_weights([np.asarray(kernel, np.float32), np.asarray(bias, np.float32)])
    return q_policy.QPolicy(TIME_STEP_SPEC, SEED_Q_SPEC, q_network=network, **kwargs), network


def _dense_numpy(layer, x, activation=None):
    kernel, bias = (w for w in layer.get_weights())
    out = np.asarray(x, np.float64) @ kernel.astype(np.float64) + bias
    return activation(out) if activation else out


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


# --- ShiftedCategorical -----------------------------------------------------------------


def test_shifted_categorical_matches_hand_values():
    probs = np.array([0.2, 0.3, 0.5])
    dist = ShiftedCategorical(np.log(probs).astype(np.float32), shift=-1, dtype=tf.int32)
    assert dist.dtype == tf.int32
    assert int(dist.mode()) == 1
    log_probs = dist.log_prob(tf.constant([-1, 0, 1, 2, -2])).numpy()
    np.testing.assert_allclose(log_probs[:3], np.log(probs), rtol=1e-6)
    assert np.all(np.isneginf(log_probs[3:]))
    np.testing.assert_allclose(dist.entropy().numpy(), -(probs * np.log(probs)).sum(), rtol=1e-6)
    samples = dist.sample(20000, seed=tf.constant([1, 2])).numpy()
    assert samples.dtype == np.int32 and set(np.unique(samples)) == {-1, 0, 1}
    frequencies = np.array([(samples == v).mean() for v in (-1, 0, 1)])
    # 4 standard errors of a frequency from 20000 draws: at most 0.0142.
    np.testing.assert_allclose(frequencies, probs, atol=0.0142)


def test_shifted_categorical_in_an_independent_of_the_spec_shape():
    logits = tf.math.log([[[0.1, 0.6, 0.3]], [[0.7, 0.2, 0.1]]])  # [B=2, 1, 3]
    dist = tfd.Independent(ShiftedCategorical(logits, shift=3, dtype=tf.uint8), 1)
    assert dist.batch_shape == [2] and dist.event_shape == [1]
    np.testing.assert_array_equal(dist.mode().numpy(), np.array([[4], [3]], np.uint8))
    np.testing.assert_allclose(
        dist.log_prob(tf.constant([[5], [3]], tf.uint8)).numpy(), np.log([0.3, 0.7]), rtol=1e-6
    )
    # Slicing the batch (how unbatched time steps are served) keeps the shift.
    assert int(dist[1].mode()[0]) == 3


# --- QPolicy, the tutorial's example ------------------------------------------------------------


def test_seed_q_network_with_default_num_actions_fails_at_construction():
    network = SeedQNetwork(OBS, SEED_Q_SPEC)  # num_actions=2, but the spec has 3 actions
    with pytest.raises(SpecMismatchError, match=r"q_network: expected 3 Q values .*got 2"):
        q_policy.QPolicy(TIME_STEP_SPEC, SEED_Q_SPEC, q_network=network)


def test_q_network_declaring_num_actions_is_checked_without_running_it():
    class Declares(SeedQNetwork):
        num_actions = 4

        def call(self, inputs, step_type=None, network_state=()):
            raise AssertionError("should not run")

    with pytest.raises(SpecMismatchError, match=r"expected 3 Q values .*got num_actions=4"):
        q_policy.QPolicy(TIME_STEP_SPEC, SEED_Q_SPEC, q_network=Declares(OBS, SEED_Q_SPEC, 4))


def test_q_policy_logits_are_the_q_values_shifted_to_the_spec():
    rng = np.random.default_rng(0)
    policy, network = _q_policy(rng.normal(size=(4, 3)), rng.normal(size=3))
    observations = rng.normal(size=(5, 4)).astype(np.float32)
    time_step = _restart(observations)
    q_values = _dense_numpy(network._dense, observations)

    params, state, info = policy.distribution_params(time_step)
    assert (params.family, params.shift, params.dtype, params.event_ndims) == (
        "categorical",
        -1,
        "int32",
        1,
    )
    np.testing.assert_allclose(params.params["logits"].numpy()[:, 0, :], q_values, rtol=1e-5)
    assert state == () and info == ()

    distribution = policy.distribution(time_step).action
    reference = tfd.Categorical(logits=tf.constant(q_values, tf.float32))
    for value in (-1, 0, 1):
        np.testing.assert_allclose(
            distribution.log_prob(tf.fill([5, 1], value)).numpy(),
            reference.log_prob(tf.fill([5], value + 1)).numpy(),
            rtol=1e-5,
        )
    action = policy.action(time_step, seed=3).action.numpy()
    assert action.shape == (5, 1) and action.dtype == np.int32
    assert set(np.unique(action)) <= {-1, 0, 1}


def test_greedy_q_policy_takes_the_argmax_as_an_action_of_the_spec():
    rng = np.random.default_rng(1)
    policy, network = _q_policy(rng.normal(size=(4, 3)), rng.normal(size=3))
    observations = rng.normal(size=(6, 4)).astype(np.float32)
    expected = np.argmax(_dense_numpy(network._dense, observations), axis=1) - 1
    greedy = greedy_policy.GreedyPolicy(policy)
    time_step = _restart(observations)
    np.testing.assert_array_equal(greedy.action(time_step).action.numpy()[:, 0], expected)
    delta = greedy.distribution(time_step).action
    np.testing.assert_array_equal(delta.sample(seed=(1, 2)).numpy()[:, 0], expected)
    params, _, _ = greedy.distribution_params(time_step)
    assert params.family == "deterministic"
    np.testing.assert_array_equal(params.params["loc"].numpy()[:, 0], expected)


def test_q_policy_log_probability_is_the_log_softmax_of_the_q_values():
    rng = np.random.default_rng(2)
    policy, network = _q_policy(
        rng.normal(size=(4, 3)), rng.normal(size=3), emit_log_probability=True
    )
    # TF-Agents' PolicyInfo (info.log_probability); info["log_probability"] reads it too.
    assert policy.info_spec._fields == ("log_probability",)
    observations = rng.normal(size=(8, 4)).astype(np.float32)
    step = policy.action(_restart(observations), seed=4)
    action = step.action.numpy()[:, 0]
    expected = _log_softmax(_dense_numpy(network._dense, observations))[np.arange(8), action + 1]
    np.testing.assert_allclose(step.info["log_probability"].numpy(), expected, rtol=1e-5)


def test_q_policy_action_mask_excludes_actions():
    spec = {"obs": OBS, "mask": tensor_spec.TensorSpec((3,), tf.int32)}
    network = SeedQNetwork(OBS, SEED_Q_SPEC, num_actions=3)
    network(tf.zeros([1, 4]))
    # Without the mask, action 1 (index 2) dominates.
    network._dense.set_weights([np.zeros((4, 3), np.float32), np.array([0, 0, 9], np.float32)])
    policy = q_policy.QPolicy(
        ts.time_step_spec(spec),
        SEED_Q_SPEC,
        q_network=network,
        observation_and_action_constraint_splitter=lambda o: (o["obs"], o["mask"]),
    )
    mask = np.tile([[1, 1, 0]], (200, 1)).astype(np.int32)
    time_step = ts.restart({"obs": tf.zeros([200, 4]), "mask": tf.constant(mask)}, batch_size=200)
    actions = policy.action(time_step, seed=0).action.numpy()
    assert set(np.unique(actions)) == {-1, 0}
    greedy = greedy_policy.GreedyPolicy(policy).action(time_step).action.numpy()
    assert np.all(greedy == -1)  # index 0 and 1 tie at 0; argmax takes the first


def test_q_policy_over_a_real_q_network_and_nested_observations():
    spec = {
        "a": tensor_spec.TensorSpec((2,), tf.float32),
        "b": tensor_spec.TensorSpec((3,), tf.float32),
    }
    network = QNetwork(spec, SEED_Q_SPEC, fc_layer_params=(5,))
    policy = q_policy.QPolicy(ts.time_step_spec(spec), SEED_Q_SPEC, q_network=network)
    time_step = ts.restart({"a": tf.ones([3, 2]), "b": tf.ones([3, 3])}, batch_size=3)
    q_values, _ = network({"a": tf.ones([3, 2]), "b": tf.ones([3, 3])})
    params, _, _ = policy.distribution_params(time_step)
    np.testing.assert_allclose(params.params["logits"].numpy()[:, 0], q_values.numpy(), rtol=1e-6)


# --- Actor policies, the tutorial's examples ----------------------------------------------------


def _seed_action_net(kernel, bias):
    dense = tf_keras.layers.Dense(3, activation="tanh")
    dense.build((None, 4))
    dense.set_weights([np.asarray(kernel, np.float32), np.asarray(bias, np.float32)])

    def action_net(time_steps, action_spec):
        actions = dense(time_steps.observation)
        return tf.reshape(actions, [-1, *action_spec.shape.as_list()])

    return action_net, dense


def test_actor_policy_with_the_tutorials_action_function_is_deterministic():
    rng = np.random.default_rng(3)
    action_net, dense = _seed_action_net(rng.normal(size=(4, 3)), rng.normal(size=3))
    policy = actor_policy.ActorPolicy(TIME_STEP_SPEC, UNIT_BOX, actor_network=action_net)
    observations = np.ones((2, 4), np.float32)
    time_step = ts.restart(tf.constant(observations), 2)
    expected = _dense_numpy(dense, observations, np.tanh)
    first = policy.action(time_step).action.numpy()
    np.testing.assert_allclose(first, expected, rtol=1e-5)
    np.testing.assert_array_equal(policy.action(time_step).action.numpy(), first)
    params, _, _ = policy.distribution_params(time_step)
    assert params.family == "deterministic"
    np.testing.assert_allclose(params.params["loc"].numpy(), expected, rtol=1e-5)


def _seed_distribution_net(kernel, bias, std=1.0):
    dense = tf_keras.layers.Dense(3, activation="tanh")
    dense.build((None, 4))
    dense.set_weights([np.asarray(kernel, np.float32), np.asarray(bias, np.float32)])

    def action_distribution_net(time_steps, action_spec):
        means = tf.reshape(dense(time_steps.observation), [-1, *action_spec.shape.as_list()])
        return tfd.Normal(means, std * tf.ones_like(means))

    return action_distribution_net, dense


def test_actor_policy_with_a_normal_distribution_function():
    rng = np.random.default_rng(4)
    net, dense = _seed_distribution_net(rng.normal(size=(4, 3)), rng.normal(size=3))
    policy = actor_policy.ActorPolicy(TIME_STEP_SPEC, UNIT_BOX, actor_network=net)
    observations = rng.normal(size=(4, 4)).astype(np.float32)
    time_step = _restart(observations)
    params, _, _ = policy.distribution_params(time_step)
    assert params.family == "normal" and params.event_ndims == 1
    np.testing.assert_allclose(
        params.params["loc"].numpy(), _dense_numpy(dense, observations, np.tanh), rtol=1e-5
    )
    np.testing.assert_array_equal(params.params["scale"].numpy(), np.ones((4, 3)))
    distribution = policy.distribution(time_step).action
    assert distribution.event_shape == [3]  # the tutorial's Normal, made Independent
    a, b = policy.action(time_step).action.numpy(), policy.action(time_step).action.numpy()
    assert not np.array_equal(a, b)  # stochastic
    greedy = greedy_policy.GreedyPolicy(policy).action(time_step).action.numpy()
    np.testing.assert_allclose(greedy, np.clip(params.params["loc"].numpy(), -1, 1), rtol=1e-6)


def test_actor_policy_clips_samples_to_the_spec_unless_told_not_to():
    net, _ = _seed_distribution_net(np.zeros((4, 3)), np.zeros(3), std=10.0)
    time_step = _restart(np.zeros((500, 4)))
    clipped = actor_policy.ActorPolicy(TIME_STEP_SPEC, UNIT_BOX, actor_network=net)
    actions = clipped.action(time_step, seed=1).action.numpy()
    assert actions.min() == -1.0 and actions.max() == 1.0
    # P(|N(0, 10)| > 1) = 0.92: most samples sit on a bound after clipping.
    assert 0.85 < np.mean(np.abs(actions) == 1.0) < 0.97
    raw = actor_policy.ActorPolicy(TIME_STEP_SPEC, UNIT_BOX, actor_network=net, clip=False)
    unclipped = raw.action(time_step, seed=1).action.numpy()
    np.testing.assert_array_equal(np.clip(unclipped, -1, 1), actions)  # same seed, same draw
    assert np.abs(unclipped).max() > 10


def test_actor_policy_shifts_an_unshifted_categorical():
    spec = tensor_spec.BoundedTensorSpec((), tf.int64, minimum=-2, maximum=1)

    def categorical(time_steps):
        logits = (
            tf.math.log(tf.constant([[0.1, 0.2, 0.3, 0.4]])) + 0 * time_steps.observation[:, :1]
        )
        return tfd.Categorical(logits=logits)

    policy = actor_policy.ActorPolicy(
        TIME_STEP_SPEC, spec, actor_network=categorical, emit_log_probability=True
    )
    step = policy.action(_restart(np.zeros((4000, 4))), seed=5)
    values = step.action.numpy()
    assert values.dtype == np.int64 and set(np.unique(values)) == {-2, -1, 0, 1}
    np.testing.assert_allclose(
        [np.mean(values == v) for v in (-2, -1, 0, 1)], [0.1, 0.2, 0.3, 0.4], atol=0.031
    )
    np.testing.assert_allclose(
        step.info["log_probability"].numpy(),
        np.log(np.array([0.1, 0.2, 0.3, 0.4]))[values + 2],
        rtol=1e-5,
    )
    assert int(greedy_policy.GreedyPolicy(policy).action(_restart(np.zeros((1, 4)))).action[0]) == 1


# --- Epsilon-greedy ---------------------------------------------------------------------------


def _greedy_on_zero():
    """A Q policy whose greedy action is 0 (index 1): bias [0, 5, 0]."""
    policy, _ = _q_policy(np.zeros((4, 3)), [0.0, 5.0, 0.0])
    return policy


def test_epsilon_greedy_frequencies():
    policy = epsilon_greedy_policy.EpsilonGreedyPolicy(_greedy_on_zero(), epsilon=0.3)
    n = 20000
    actions = policy.action(_restart(np.zeros((n, 4))), seed=7).action.numpy()[:, 0]
    frequencies = np.array([np.mean(actions == v) for v in (-1, 0, 1)])
    # Greedy with 0.7, plus uniform over 3 actions with 0.3: [0.1, 0.8, 0.1]. Tolerance:
    # 4 standard errors (0.0113 for 0.8); forgetting that the random branch may pick the
    # greedy action (0.7) or using epsilon as the greedy share (0.3 + 0.1) fails.
    np.testing.assert_allclose(frequencies, [0.1, 0.8, 0.1], atol=0.0113)


def test_epsilon_greedy_distribution_and_log_probability_are_the_mixture():
    policy = epsilon_greedy_policy.EpsilonGreedyPolicy(
        _greedy_on_zero(), epsilon=0.3, emit_log_probability=True
    )
    time_step = _restart(np.zeros((50, 4)))
    distribution = policy.distribution(time_step).action
    for value, probability in ((-1, 0.1), (0, 0.8), (1, 0.1)):
        np.testing.assert_allclose(
            distribution.prob(tf.fill([50, 1], value)).numpy(), probability, rtol=1e-5
        )
    step = policy.action(time_step, seed=2)
    expected = np.where(step.action.numpy()[:, 0] == 0, np.log(0.8), np.log(0.1))
    np.testing.assert_allclose(step.info["log_probability"].numpy(), expected, rtol=1e-5)


def test_epsilon_from_a_variable_or_callable_is_read_at_every_call_of_the_compiled_policy():
    epsilon = tf.Variable(0.0)
    for value in (epsilon, lambda: epsilon * 1.0):
        policy = py_tf_policy.PyTFPolicy(
            epsilon_greedy_policy.EpsilonGreedyPolicy(_greedy_on_zero(), epsilon=value), seed=0
        )
        time_step = ts.restart(np.zeros((3000, 4), np.float32), batch_size=3000)
        epsilon.assign(0.0)
        assert np.all(policy.action(time_step).action == 0)
        epsilon.assign(1.0)
        actions = policy.action(time_step).action
        np.testing.assert_allclose(
            [np.mean(actions == v) for v in (-1, 0, 1)], [1 / 3] * 3, atol=0.035
        )
        assert policy.tracing_count() == 1


def test_epsilon_greedy_respects_the_action_mask_in_both_branches():
    spec = {"obs": OBS, "mask": tensor_spec.TensorSpec((3,), tf.int32)}
    network = SeedQNetwork(OBS, SEED_Q_SPEC, num_actions=3)
    network(tf.zeros([1, 4]))
    network._dense.set_weights([np.zeros((4, 3), np.float32), np.array([0, 0, 9], np.float32)])
    q = q_policy.QPolicy(
        ts.time_step_spec(spec),
        SEED_Q_SPEC,
        q_network=network,
        observation_and_action_constraint_splitter=lambda o: (o["obs"], o["mask"]),
    )
    policy = epsilon_greedy_policy.EpsilonGreedyPolicy(q, epsilon=0.5)
    mask = np.tile([[0, 1, 1]], (2000, 1)).astype(np.int32)
    time_step = ts.restart({"obs": tf.zeros([2000, 4]), "mask": tf.constant(mask)}, batch_size=2000)
    actions = policy.action(time_step, seed=3).action.numpy()[:, 0]
    # Greedy is action 1; random is uniform over the allowed {0, 1}: 0 with 0.25.
    assert set(np.unique(actions)) == {0, 1}
    assert abs(np.mean(actions == 0) - 0.25) < 0.04


# --- RandomTFPolicy ---------------------------------------------------------------------------


def test_seed_random_tf_example_unbatched():
    action_spec = tensor_spec.BoundedTensorSpec((2,), tf.float32, minimum=-1, maximum=3)
    observation_spec = tensor_spec.TensorSpec((2,), tf.float32)
    policy = random_tf_policy.RandomTFPolicy(
        action_spec=action_spec, time_step_spec=ts.time_step_spec(observation_spec)
    )
    time_step = ts.restart(tf.ones(observation_spec.shape))
    first = policy.action(time_step).action.numpy()
    second = policy.action(time_step).action.numpy()
    assert first.shape == (2,) and first.dtype == np.float32
    assert np.all((first >= -1) & (first <= 3)) and not np.array_equal(first, second)


def test_random_tf_policy_is_uniform_within_bounds_per_element():
    spec = {
        "ints": tensor_spec.BoundedTensorSpec((2,), tf.int32, minimum=[0, 5], maximum=[1, 7]),
        "floats": tensor_spec.BoundedTensorSpec((), tf.float64, minimum=-2.0, maximum=4.0),
        "flag": tensor_spec.BoundedTensorSpec((), tf.bool, minimum=False, maximum=True),
    }
    policy = random_tf_policy.RandomTFPolicy(TIME_STEP_SPEC, spec, seed=1)
    action = policy.action(_restart(np.zeros((6000, 4)))).action
    ints = action["ints"].numpy()
    np.testing.assert_allclose([np.mean(ints[:, 0] == v) for v in (0, 1)], [0.5] * 2, atol=0.026)
    np.testing.assert_allclose(
        [np.mean(ints[:, 1] == v) for v in (5, 6, 7)], [1 / 3] * 3, atol=0.025
    )
    floats = action["floats"].numpy()
    assert floats.dtype == np.float64 and floats.min() >= -2 and floats.max() <= 4
    assert abs(floats.mean() - 1.0) < 0.1  # uniform on [-2, 4]: mean 1, sd 1.73
    assert action["flag"].dtype == tf.bool and abs(np.mean(action["flag"].numpy()) - 0.5) < 0.026


def test_random_tf_policy_seeded_policies_replay_and_seeds_reproduce():
    time_step = _restart(np.zeros((4, 4)))
    a = random_tf_policy.RandomTFPolicy(TIME_STEP_SPEC, UNIT_BOX, seed=3)
    b = random_tf_policy.RandomTFPolicy(TIME_STEP_SPEC, UNIT_BOX, seed=3)
    np.testing.assert_array_equal(a.action(time_step).action, b.action(time_step).action)
    np.testing.assert_array_equal(
        a.action(time_step, seed=9).action, b.action(time_step, seed=9).action
    )
    assert not np.array_equal(
        a.action(time_step, seed=9).action, a.action(time_step, seed=10).action
    )


# --- the TFPolicy base ------------------------------------------------------------------------


def test_inputs_are_validated_with_paths():
    policy, _ = _q_policy(np.zeros((4, 3)), np.zeros(3))
    good = _restart(np.zeros((2, 4)))
    with pytest.raises(SpecMismatchError, match=r"^observation: expected dtype float32, got int32"):
        policy.action(good._replace(observation=tf.zeros([2, 4], tf.int32)))
    with pytest.raises(
        SpecMismatchError, match=r"^observation: expected shape \(2, 4\), got \(2, 5\)"
    ):
        policy.action(good._replace(observation=tf.zeros([2, 5])))
    with pytest.raises(SpecMismatchError, match=r"^discount: expected shape \(2,\), got \(3,\)"):
        policy.action(good._replace(discount=tf.ones([3])))
    with pytest.raises(StructureError, match=r"time_step"):
        policy.action(None)
    dict_policy = random_tf_policy.RandomTFPolicy(ts.time_step_spec({"a": OBS, "b": OBS}), UNIT_BOX)
    with pytest.raises(
        StructureError, match=r"observation: expected keys \['a', 'b'\], got missing \['b'\]"
    ):
        dict_policy.action(ts.restart({"a": tf.zeros([1, 4])}, batch_size=1))


def test_stateful_policy_needs_its_state():
    network = QRnnNetwork(
        OBS, SEED_Q_SPEC, input_fc_layer_params=(4,), lstm_size=(3,), output_fc_layer_params=None
    )
    policy = q_policy.QPolicy(TIME_STEP_SPEC, SEED_Q_SPEC, q_network=network)
    with pytest.raises(StructureError, match=r"^policy_state: expected a state like"):
        policy.action(_restart(np.zeros((2, 4))))
    state = policy.get_initial_state(2)
    wrong = tf.nest.map_structure(lambda s: tf.zeros([3, s.shape[-1]]), state)
    with pytest.raises(
        SpecMismatchError, match=r"^policy_state/.*expected shape \(2, 3\), got \(3, 3\)"
    ):
        policy.action(_restart(np.zeros((2, 4))), wrong)


def test_state_resets_per_entry_on_first_steps():
    network = QRnnNetwork(
        OBS, SEED_Q_SPEC, input_fc_layer_params=(4,), lstm_size=(3,), output_fc_layer_params=None
    )
    policy = greedy_policy.GreedyPolicy(
        q_policy.QPolicy(TIME_STEP_SPEC, SEED_Q_SPEC, q_network=network)
    )
    observations = np.random.default_rng(5).normal(size=(2, 4)).astype(np.float32)
    state = policy.get_initial_state(2)
    for _ in range(3):
        state = policy.action(_steps(observations, [1, 1]), state).state
    junk = tf.nest.map_structure(lambda s: s + 1.0, state)
    mixed = _steps(observations, [StepType.FIRST, StepType.MID])
    from_junk = policy.action(mixed, junk).state
    from_zero = policy.action(mixed, policy.get_initial_state(2)).state
    for a, b in zip(tf.nest.flatten(from_junk), tf.nest.flatten(from_zero), strict=True):
        np.testing.assert_allclose(a.numpy()[0], b.numpy()[0], rtol=1e-6)  # reset entry
        assert not np.allclose(a.numpy()[1], b.numpy()[1])  # the MID entry kept its state


def test_action_in_tf_function_with_dynamic_batch_matches_eager():
    rng = np.random.default_rng(6)
    policy, _ = _q_policy(rng.normal(size=(4, 3)), rng.normal(size=3), emit_log_probability=True)
    signature = tensor_spec.add_outer_dims(policy.time_step_spec, [None])

    @tf.function(input_signature=[signature, tf.TensorSpec([2], tf.int32)])
    def act(time_step, seed):
        return policy.action(time_step, seed=seed)

    for batch in (1, 7):
        time_step = _restart(rng.normal(size=(batch, 4)))
        compiled = act(time_step, tf.constant([4, 2]))
        eager = policy.action(time_step, seed=tf.constant([4, 2]))
        np.testing.assert_array_equal(compiled.action, eager.action)
        np.testing.assert_allclose(
            compiled.info["log_probability"], eager.info["log_probability"], rtol=1e-6
        )
    assert act.experimental_get_tracing_count() == 1


def test_several_outer_dims_are_flattened_and_restored():
    policy = random_tf_policy.RandomTFPolicy(TIME_STEP_SPEC, SEED_Q_SPEC, seed=1)
    time_step = ts.restart(tf.zeros([2, 3, 4]), batch_size=None, observation_spec=OBS)
    assert time_step.step_type.shape == (2, 3)
    assert policy.action(time_step).action.shape == (2, 3, 1)
    assert policy.distribution(time_step).action.batch_shape == [2, 3]


def test_update_with_tau_and_copy():
    rng = np.random.default_rng(7)
    first, _ = _q_policy(rng.normal(size=(4, 3)), rng.normal(size=3))
    second, _ = _q_policy(rng.normal(size=(4, 3)), rng.normal(size=3))
    third, _ = _q_policy(rng.normal(size=(4, 3)), rng.normal(size=3))
    before = [v.numpy() for v in first.variables()]
    theirs = [v.numpy() for v in second.variables()]
    first.update(second, tau=0.25)
    for variable, mine, other in zip(first.variables(), before, theirs, strict=True):
        np.testing.assert_allclose(variable.numpy(), 0.75 * mine + 0.25 * other, rtol=1e-6)
    first.update(second)
    time_step = _restart(rng.normal(size=(5, 4)))
    np.testing.assert_array_equal(
        first.action(time_step, seed=1).action, second.action(time_step, seed=1).action
    )

    # Inside tf.function, with tau a tensor (as agents do for target networks).
    before = [v.numpy() for v in first.variables()]
    tf.function(lambda tau: first.update(third, tau=tau))(tf.constant(0.5))
    for variable, mine, other in zip(first.variables(), before, third.variables(), strict=True):
        np.testing.assert_allclose(variable.numpy(), 0.5 * mine + 0.5 * other.numpy(), rtol=1e-6)

    clone = first.copy()
    assert [id(v) for v in clone.variables()] != [id(v) for v in first.variables()]
    clone.variables()[0].assign(tf.zeros_like(clone.variables()[0]))
    assert np.any(first.variables()[0].numpy() != 0)

    other = q_policy.QPolicy(
        TIME_STEP_SPEC, SEED_Q_SPEC, q_network=QNetwork(OBS, SEED_Q_SPEC, fc_layer_params=(3,))
    )
    with pytest.raises(PolicyError, match=r"expected a policy with 2 variables .* got 4"):
        first.update(other)


# --- PyTFPolicy -----------------------------------------------------------------------------


def test_seed_py_tf_policy_example_and_single_trace():
    action_spec = tensor_spec.BoundedTensorSpec((2,), tf.float32, minimum=-1, maximum=3)
    tf_random = random_tf_policy.RandomTFPolicy(
        ts.time_step_spec(tensor_spec.TensorSpec((2,), tf.float32)), action_spec
    )
    policy = py_tf_policy.PyTFPolicy(tf_random, seed=0)
    step = policy.action(ts.restart(np.array([3, 4])))  # int64 observation, as in the tutorial
    assert isinstance(step.action, np.ndarray) and step.action.shape == (2,)
    assert step.action.dtype == np.float32 and np.all((step.action >= -1) & (step.action <= 3))
    for batch in (3, 5):
        batched = policy.action(ts.restart(np.ones((batch, 2), np.float32), batch_size=batch))
        assert batched.action.shape == (batch, 2)
    assert policy.tracing_count() == 1
    strict = py_tf_policy.PyTFPolicy(tf_random, batch_time_steps=False)
    with pytest.raises(SpecMismatchError, match="unbatched"):
        strict.action(ts.restart(np.array([3.0, 4.0], np.float32)))


def test_py_tf_policy_update_and_distribution():
    rng = np.random.default_rng(8)
    first, _ = _q_policy(rng.normal(size=(4, 3)), rng.normal(size=3))
    second, network = _q_policy(rng.normal(size=(4, 3)), rng.normal(size=3))
    py_first, py_second = py_tf_policy.PyTFPolicy(first), py_tf_policy.PyTFPolicy(second)
    py_first.update(py_second)
    observation = rng.normal(size=4).astype(np.float32)
    distribution = py_first.distribution(ts.restart(observation)).action
    assert distribution.batch_shape == [] and distribution.event_shape == [1]
    np.testing.assert_allclose(
        distribution.distribution.logits.numpy()[0],
        _dense_numpy(network._dense, observation[None])[0],
        rtol=1e-5,
    )


# --- the tour's TF sections ---------------------------------------------------------------------


def test_policies_tour_tf_sections(capsys):
    import importlib.util

    from tests.subprocess_utils import ROOT

    spec = importlib.util.spec_from_file_location(
        "policies_tour", ROOT / "examples/policies_tour.py"
    )
    tour = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tour)
    for section in tour.SECTIONS:
        if section.__name__.startswith("tf_"):
            section()
    out = capsys.readouterr().out
    assert "q_network: expected 3 Q values (one per action from -1 to 1), got 2" in out
    deterministic = out.split("== Actor policy with an action network ==")[1].split("==")[0]
    first, second = deterministic.split("Action:")[1].split("Another action")
    assert first.strip() == second.split(":", 1)[1].strip()  # the same action twice
    stochastic = out.split("== Actor policy with an action distribution network ==")[1]
    assert "IndependentNormal" in stochastic.split("==")[0]
    assert "IndependentShiftedCategorical' batch_shape=[2] event_shape=[1] dtype=int32" in out
    py_tf = out.split("== PyTFPolicy ==")[1]
    assert "action=array([" in py_tf and "dtype=float32" in py_tf
