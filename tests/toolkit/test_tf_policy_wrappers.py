"""Noise and mixture wrappers, automatic state reset, and the export hooks of TF policies."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from toolkit import distribution_families as families
from toolkit.errors import SpecError, UnsupportedError
from toolkit.networks.actor_distribution_network import ActorDistributionNetwork
from toolkit.networks.network import Network
from toolkit.networks.q_network import QNetwork
from toolkit.policies import (
    actor_policy,
    epsilon_greedy_policy,
    gaussian_policy,
    greedy_policy,
    mixture_policy,
    ou_noise_policy,
    py_tf_policy,
    q_policy,
    random_tf_policy,
)
from toolkit.specs import tensor_spec
from toolkit.trajectories import time_step as ts
from toolkit.trajectories.time_step import StepType, TimeStep

tfd = tfp.distributions

OBS = tensor_spec.TensorSpec((2,), tf.float32, name="observation")
TIME_STEP_SPEC = ts.time_step_spec(OBS)
WIDE = tensor_spec.BoundedTensorSpec((2,), tf.float32, minimum=-100.0, maximum=100.0)
DISCRETE = tensor_spec.BoundedTensorSpec((), tf.int32, minimum=-1, maximum=1)


def _constant_actor(value, spec=WIDE):
    """An actor function returning ``value`` for every entry (deterministic)."""

    def actor(time_steps):
        batch = tf.shape(time_steps.observation)[:1]
        return tf.fill(tf.concat([batch, spec.shape.as_list()], 0), tf.constant(value, spec.dtype))

    return actor_policy.ActorPolicy(TIME_STEP_SPEC, spec, actor_network=actor)


def _steps(batch, step_type=StepType.MID) -> TimeStep:
    return TimeStep(
        tf.fill([batch], tf.constant(int(step_type), tf.int32)),
        tf.zeros([batch]),
        tf.ones([batch]),
        tf.zeros([batch, 2]),
    )


def _np_steps(batch, step_types) -> TimeStep:
    return TimeStep(
        np.asarray(step_types, np.int32),
        np.zeros(batch, np.float32),
        np.ones(batch, np.float32),
        np.zeros((batch, 2), np.float32),
    )


def _lag1_autocorrelation(series):
    """Per column lag-1 autocorrelation of ``series[T, N]``, averaged over columns."""
    x = series - series.mean(axis=0)
    return float(np.mean((x[1:] * x[:-1]).sum(axis=0) / (x * x).sum(axis=0)))


def _run(policy, steps, batch, seed=0):
    py = py_tf_policy.PyTFPolicy(policy, seed=seed)
    state = py.get_initial_state(batch)
    time_step = _np_steps(batch, [StepType.MID] * batch)
    actions = []
    for _ in range(steps):
        step = py.action(time_step, state)
        actions.append(step.action)
        state = step.state
    return np.stack(actions)


# --- noise ------------------------------------------------------------------------------------


def test_ou_noise_is_temporally_correlated_and_gaussian_noise_is_not():
    damping, stddev = 0.15, 0.2
    ou = ou_noise_policy.OUNoisePolicy(_constant_actor(1.0), ou_stddev=stddev, ou_damping=damping)
    noise = _run(ou, 400, 32)[50:] - 1.0  # [T, B, 2], past the start-up from x = 0
    series = noise.reshape(noise.shape[0], -1)
    # x' = (1 - d) x + s e has lag-1 autocorrelation 1 - d = 0.85 and stationary standard
    # deviation s / sqrt(1 - (1 - d)^2) = 0.380. Standard error of the estimate ~0.005.
    assert abs(_lag1_autocorrelation(series) - (1 - damping)) < 0.03
    assert abs(series.std() - stddev / np.sqrt(1 - (1 - damping) ** 2)) < 0.04
    # Entries and elements get independent noise.
    assert abs(np.corrcoef(series[:, 0], series[:, 1])[0, 1]) < 0.2

    gaussian = gaussian_policy.GaussianPolicy(_constant_actor(1.0), scale=0.5)
    white = (_run(gaussian, 100, 32) - 1.0).reshape(100, -1)
    assert abs(_lag1_autocorrelation(white)) < 0.04
    assert abs(white.std() - 0.5) < 0.02


def test_ou_noise_state_resets_on_first_steps_per_entry():
    policy = ou_noise_policy.OUNoisePolicy(_constant_actor(0.0), ou_stddev=1.0, ou_damping=0.1)
    assert set(policy.policy_state_spec) == {"ou_noise"}
    state = {"ou_noise": tf.fill([2, 2], 5.0)}
    mixed = _steps(2)._replace(step_type=tf.constant([StepType.FIRST, StepType.MID]))
    step = policy.action(mixed, state, seed=4)
    fresh = policy.action(mixed, policy.get_initial_state(2), seed=4)
    # Entry 0 restarted from x = 0, so both calls drew the same action; entry 1 kept x = 5:
    # its action is 0.9 * 5 larger than from x = 0.
    np.testing.assert_allclose(step.action[0], fresh.action[0], rtol=1e-6)
    np.testing.assert_allclose(step.action[1] - fresh.action[1], [4.5, 4.5], rtol=1e-5)
    np.testing.assert_allclose(step.state["ou_noise"], step.action)  # the action is 0 + x'


def test_gaussian_distribution_is_normal_around_the_wrapped_action():
    policy = gaussian_policy.GaussianPolicy(_constant_actor(2.0), scale=[0.5, 1.5])
    distribution = policy.distribution(_steps(3)).action
    np.testing.assert_allclose(distribution.mean(), np.full((3, 2), 2.0))
    np.testing.assert_allclose(distribution.stddev(), np.tile([0.5, 1.5], (3, 1)))
    # Normal around a Normal adds variances.
    net = lambda t: tfd.Normal(tf.zeros([tf.shape(t.observation)[0], 2]), 2.0)  # noqa: E731
    inner = actor_policy.ActorPolicy(TIME_STEP_SPEC, WIDE, actor_network=net)
    around_normal = gaussian_policy.GaussianPolicy(inner, scale=1.5).distribution(_steps(1))
    np.testing.assert_allclose(around_normal.action.stddev(), [[2.5, 2.5]], rtol=1e-6)


def test_gaussian_log_probability_is_the_normal_density_of_the_noise():
    policy = gaussian_policy.GaussianPolicy(
        _constant_actor(0.0), scale=0.5, emit_log_probability=True
    )
    step = policy.action(_steps(4), seed=1)
    x = step.action.numpy()
    expected = (-0.5 * (x / 0.5) ** 2 - np.log(0.5) - 0.5 * np.log(2 * np.pi)).sum(axis=1)
    np.testing.assert_allclose(step.info["log_probability"], expected, rtol=1e-5)


def test_noise_policies_refuse_discrete_actions_and_bad_scales():
    discrete = _constant_actor(0, DISCRETE)
    with pytest.raises(SpecError, match="float actions, got int32"):
        gaussian_policy.GaussianPolicy(discrete)
    with pytest.raises(SpecError, match="ou_damping: expected values in"):
        ou_noise_policy.OUNoisePolicy(_constant_actor(0.0), ou_damping=1.5)
    with pytest.raises(SpecError, match="non-negative scale"):
        gaussian_policy.GaussianPolicy(_constant_actor(0.0), scale=-1.0)


# --- mixture -----------------------------------------------------------------------------------


def test_mixture_frequencies_follow_the_weights_per_entry():
    low, high = _constant_actor(-1.0), _constant_actor(1.0)
    policy = mixture_policy.MixturePolicy([low, high], weights=[1.0, 3.0])
    actions = policy.action(_steps(20000), seed=3).action.numpy()[:, 0]
    assert set(np.unique(actions)) == {-1.0, 1.0}
    # 3/4 of the entries take the second policy; 4 standard errors are 0.0122. Equal
    # weights (0.5) or one choice for the whole batch (0 or 1) fail.
    assert abs(np.mean(actions == 1.0) - 0.75) < 0.0122


def test_mixture_of_stateful_policies_carries_each_state():
    ou = ou_noise_policy.OUNoisePolicy(_constant_actor(0.0), ou_stddev=1.0, ou_damping=0.5)
    policy = mixture_policy.MixturePolicy([ou, _constant_actor(0.0)], weights=[0.5, 0.5])
    assert isinstance(policy.policy_state_spec, tuple) and policy.policy_state_spec[1] == ()
    state = policy.get_initial_state(3)
    step = policy.action(_steps(3), state, seed=2)
    assert step.state[0]["ou_noise"].shape == (3, 2)
    with pytest.raises(UnsupportedError, match="no distribution"):
        policy.distribution(_steps(3), state)


def test_mixture_refuses_mismatched_policies_and_weights():
    with pytest.raises(SpecError, match="expected at least one policy"):
        mixture_policy.MixturePolicy([], [])
    other = _constant_actor(0, DISCRETE)
    with pytest.raises(Exception, match=r"policies\[1\]\.action_spec"):
        mixture_policy.MixturePolicy([_constant_actor(0.0), other], [1, 1])
    with pytest.raises(Exception, match="2 weights"):
        mixture_policy.MixturePolicy([_constant_actor(0.0), _constant_actor(1.0)], [1.0])


# --- automatic state reset ----------------------------------------------------------------------


class CounterNetwork(Network):
    """Outputs its state as the action and counts up; never resets by itself."""

    def __init__(self):
        super().__init__(OBS, state_spec=tensor_spec.TensorSpec((2,), tf.float32))

    def call(self, observation, step_type=None, network_state=(), training=False):
        return network_state, network_state + 1.0


def test_automatic_state_reset_restarts_first_entries_and_can_be_turned_off():
    policy = actor_policy.ActorPolicy(TIME_STEP_SPEC, WIDE, actor_network=CounterNetwork())
    state = tf.constant([[3.0, 3.0], [7.0, 7.0]])
    mixed = _steps(2)._replace(step_type=tf.constant([StepType.FIRST, StepType.MID]))
    step = policy.action(mixed, state)
    np.testing.assert_array_equal(step.action, [[0.0, 0.0], [7.0, 7.0]])
    np.testing.assert_array_equal(step.state, [[1.0, 1.0], [8.0, 8.0]])

    manual = actor_policy.ActorPolicy(
        TIME_STEP_SPEC, WIDE, actor_network=CounterNetwork(), automatic_state_reset=False
    )
    np.testing.assert_array_equal(manual.action(mixed, state).action, [[3.0, 3.0], [7.0, 7.0]])


# --- export hooks ---------------------------------------------------------------------------------


def _q():
    network = QNetwork(OBS, DISCRETE, fc_layer_params=(4,))
    return q_policy.QPolicy(TIME_STEP_SPEC, DISCRETE, q_network=network)


def _describe(policy, batch=3, state=None):
    time_step = _steps(batch)
    state = policy.get_initial_state(batch) if state is None else state
    params, next_state, info = policy.distribution_params(time_step, state)
    description = policy.export_description()
    json.dumps(description)  # plain JSON: no tensors, no numpy scalars
    return params, next_state, info, description


def test_export_hooks_of_plain_and_greedy_policies():
    q = _q()
    params, _, _, description = _describe(q)
    assert description == {"kind": "sample", "clip": False, "emit_log_probability": False}
    assert families.flatten_params(params)[0][0] == "logits"
    assert params.to_json() == {
        "family": "categorical",
        "params": ["logits"],
        "event_ndims": 0,
        "dtype": "int32",
        "shift": -1,
    }
    greedy_params, _, _, greedy = _describe(greedy_policy.GreedyPolicy(q))
    assert greedy["kind"] == "sample" and greedy_params.family == "deterministic"
    np.testing.assert_array_equal(
        greedy_params.params["loc"], np.argmax(params.params["logits"].numpy(), axis=-1) - 1
    )

    random_params, _, _, _ = _describe(
        random_tf_policy.RandomTFPolicy(TIME_STEP_SPEC, {"d": DISCRETE, "c": WIDE})
    )
    assert random_params["d"].family == "categorical"
    np.testing.assert_array_equal(random_params["d"].params["logits"], np.zeros((3, 3)))
    assert random_params["c"].family == "uniform"
    np.testing.assert_array_equal(random_params["c"].params["high"], np.full((3, 2), 100.0))


def test_export_hooks_of_wrappers():
    q = _q()
    epsilon = epsilon_greedy_policy.EpsilonGreedyPolicy(q, epsilon=0.25)
    params, _, _, description = _describe(epsilon)
    assert description["kind"] == "epsilon_greedy" and description["epsilon"] == 0.25
    assert [p for p, _ in families.flatten_params(params)] == ["greedy/loc", "random/logits"]

    gaussian = gaussian_policy.GaussianPolicy(_constant_actor(2.0), scale=0.3)
    params, _, _, description = _describe(gaussian)
    assert description["kind"] == "gaussian_noise" and description["scale"] == 0.3
    assert description["inner"]["kind"] == "sample" and params.family == "deterministic"
    np.testing.assert_array_equal(params.params["loc"], np.full((3, 2), 2.0))

    ou = ou_noise_policy.OUNoisePolicy(_constant_actor(0.0), ou_stddev=0.2, ou_damping=0.15)
    state = {"ou_noise": tf.fill([3, 2], 0.5)}
    params, next_state, _, description = _describe(ou, state=state)
    assert description["kind"] == "ou_noise" and description["state_key"] == "ou_noise"
    assert (description["ou_stddev"], description["ou_damping"]) == (0.2, 0.15)
    # The graph passes the (reset) noise through; the runtime draws the next one.
    np.testing.assert_array_equal(next_state["ou_noise"], np.full((3, 2), 0.5))
    first = _steps(3, StepType.FIRST)
    _, reset_state, _ = ou.distribution_params(first, state)
    np.testing.assert_array_equal(reset_state["ou_noise"], np.zeros((3, 2)))

    mixture = mixture_policy.MixturePolicy([_constant_actor(0.0), gaussian], [0.5, 0.5])
    params, _, _, description = _describe(mixture)
    assert description["kind"] == "mixture" and description["weights"] == [0.5, 0.5]
    assert [d["kind"] for d in description["components"]] == ["sample", "gaussian_noise"]
    assert isinstance(params, tuple) and len(params) == 2


def test_distribution_params_agree_with_the_numpy_runtime_distributions():
    """The contract with runtimes: numpy distributions built from the params match TFP."""
    from runtimes.distributions import make_distribution

    spec = {"move": DISCRETE, "force": WIDE}
    network = ActorDistributionNetwork(OBS, spec, fc_layer_params=(4,))
    policy = actor_policy.ActorPolicy(
        TIME_STEP_SPEC, spec, actor_network=network, emit_log_probability=True
    )
    time_step = _steps(5)._replace(observation=tf.random.stateless_normal([5, 2], seed=(1, 2)))
    step = policy.action(time_step, seed=3)
    params, _, _ = policy.distribution_params(time_step)
    for key in spec:
        numpy_params = {k: v.numpy() for k, v in params[key].params.items()}
        distribution = make_distribution(params[key].family, numpy_params, **params[key].static())
        # Log-probabilities are of the unclipped sample; these bounds never clip.
        np.testing.assert_allclose(
            distribution.log_prob(step.action[key].numpy()),
            step.info["log_probability"][key],
            rtol=1e-4,
        )
    greedy = greedy_policy.GreedyPolicy(policy).action(time_step).action
    move = make_distribution(
        "categorical",
        {"logits": params["move"].params["logits"].numpy()},
        **params["move"].static(),
    )
    np.testing.assert_array_equal(move.mode(), greedy["move"])


def test_distribution_families_module_is_tf_free():
    from tests.subprocess_utils import run_python

    result = run_python(
        """
        import numpy as np
        from toolkit import distribution_families as families

        params = {"move": families.DistributionParams(
            "categorical", {"logits": np.zeros((2, 3))}, 0, "int32", shift=-1)}
        assert families.flatten_params(params, "distribution")[0][0] == "distribution/move/logits"
        assert params["move"].static() == {"event_ndims": 0, "dtype": "int32", "shift": -1}
        print("ok")
        """,
        without_tensorflow=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_distribution_params_refuse_unknown_families():
    with pytest.raises(SpecError, match="expected a family in"):
        families.DistributionParams("beta", {}, 0, "float32")
    with pytest.raises(SpecError, match=r"normal: expected parameters \['loc', 'scale'\], got"):
        families.DistributionParams("normal", {"loc": np.zeros(2)}, 0, "float32")
    spec = tensor_spec.BoundedTensorSpec((), tf.float32, 0.0, 1.0)
    beta = actor_policy.ActorPolicy(
        TIME_STEP_SPEC,
        spec,
        actor_network=lambda t: tfd.Beta(tf.ones([tf.shape(t.reward)[0]]), 2.0),
    )
    assert beta.action(_steps(2)).action.shape == (2,)  # acting works ...
    with pytest.raises(UnsupportedError, match="^action: Beta has no export family"):
        beta.distribution_params(_steps(2))  # ... but there is no family to export
