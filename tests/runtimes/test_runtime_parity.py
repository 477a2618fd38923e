"""Runtimes against the live TF policy: graph outputs, actions, log-probabilities, sampling.

Every exportable policy kind (tests.contract.cases_runtime) is exported once; the onnx
and tf backends must reproduce the live TF policy's distribution parameters, states
and deterministic actions, agree with each other under one seed, and sample with the
statistics of the distributions they describe. Expected values come from the live TF
policy (TFP) or from hand-derived formulas, never from the runtime itself.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.contract import cases_runtime as cr
from tests.contract.case import sample_time_step
from toolkit import distribution_families as families
from toolkit import nest
from toolkit.specs import array_spec
from toolkit.trajectories.time_step import StepType, TimeStep

pytestmark = pytest.mark.slow

ALL = sorted(cr.KINDS)
DETERMINISTIC = [k for k in ALL if cr.KINDS[k][1]]
STOCHASTIC = [k for k in ALL if not cr.KINDS[k][1]]
LOG_2PI = math.log(2 * math.pi)


def _numpy(tree):
    return nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else np.asarray(t), tree)


def _inputs(policy, batch, seed, step_type=None):
    rng = np.random.default_rng(seed)
    time_step = sample_time_step(policy.time_step_spec, (batch,), rng)
    if step_type is not None:
        time_step = time_step._replace(step_type=np.full(batch, step_type, np.int32))
    state = array_spec.sample_spec_nest(policy.policy_state_spec, rng, (batch,))
    return time_step, state


def _repeat(time_step, n):
    """``n`` copies of the first batch entry of a time step."""
    return nest.map_structure(lambda a: np.repeat(np.asarray(a)[:1], n, axis=0), time_step)


def _close(got, want, what, atol=1e-5):
    nest.assert_same_structure(got, want, what)
    for g, w in zip(nest.flatten(got), nest.flatten(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=atol, rtol=1e-5, err_msg=what)


# --- parity ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ALL)
def test_graph_outputs_match_the_live_policy(kind):
    live = cr.live(kind)
    runtimes = [cr.load(kind, "onnx"), cr.load(kind, "tf")]
    # Mixed step types: stateful graphs must reset FIRST entries as the TF policy does.
    time_step, state = _inputs(runtimes[0], 6, seed=1)
    time_step = time_step._replace(step_type=np.array([0, 1, 2, 0, 1, 2], np.int32))
    params, live_state, live_info = live.distribution_params(time_step, state)
    want = [v.numpy() for _, v in families.flatten_params(params)]
    for runtime in runtimes:
        step = runtime.distribution_params(time_step, state)
        got = [v for d in nest.flatten(step.action) for v in d.parameters().values()]
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5, err_msg=runtime.backend)
        _close(step.state, _numpy(live_state), f"{runtime.backend} state")
        if nest.flatten(live_info):
            _close(step.info, _numpy(live_info), f"{runtime.backend} info")


@pytest.mark.parametrize("kind", DETERMINISTIC)
def test_deterministic_actions_match_the_live_policy(kind):
    live = cr.live(kind)
    runtimes = [cr.load(kind, "onnx"), cr.load(kind, "tf")]
    states = [p.get_initial_state(4) for p in runtimes]
    live_state = live.get_initial_state(4)
    for step_index in range(3):
        time_step, _ = _inputs(runtimes[0], 4, seed=10 + step_index)
        if step_index == 0:
            time_step = time_step._replace(step_type=np.zeros(4, np.int32))
        want = live.action(time_step, live_state)
        live_state = want.state
        for i, runtime in enumerate(runtimes):
            got = runtime.action(time_step, states[i])
            _close(got.action, _numpy(want.action), f"{runtime.backend} action")
            _close(got.state, _numpy(want.state), f"{runtime.backend} state")
            states[i] = got.state


@pytest.mark.parametrize("kind", STOCHASTIC)
def test_backends_sample_alike_under_one_seed(kind):
    onnx, tf = cr.load(kind, "onnx"), cr.load(kind, "tf")
    state_onnx, state_tf = onnx.get_initial_state(5), tf.get_initial_state(5)
    for step_index in range(3):
        time_step, _ = _inputs(onnx, 5, seed=20 + step_index)
        a = onnx.action(time_step, state_onnx, seed=step_index)
        b = tf.action(time_step, state_tf, seed=step_index)
        _close(a.action, b.action, "action")
        _close(a.state, b.state, "state")
        _close(a.info, b.info, "info")
        state_onnx, state_tf = a.state, b.state


# --- log-probabilities -------------------------------------------------------------------------


def _inside(value, low, high):
    """Rows whose every element is strictly inside the bounds (so clipping did nothing)."""
    value = np.asarray(value)
    return np.all((value > low) & (value < high), axis=tuple(range(1, value.ndim)))


def test_log_probability_of_sampled_actions_matches_tfp():
    kind = "actor/categorical_normal"
    live = cr.live(kind)
    policy = cr.load(kind, "onnx")
    time_step, _ = _inputs(policy, 400, seed=3)
    step = policy.action(time_step, seed=4)
    distributions = live.distribution(time_step).action
    move = distributions["move"].log_prob(step.action["move"]).numpy()
    np.testing.assert_allclose(step.info["log_probability"]["move"], move, atol=1e-5)
    inside = _inside(step.action["force"], -1.0, 2.0)
    assert 50 < inside.sum() < 400  # some rows are clipped, enough are not
    force = distributions["force"].log_prob(step.action["force"]).numpy()
    np.testing.assert_allclose(
        step.info["log_probability"]["force"][inside], force[inside], atol=1e-4
    )


def test_greedy_log_probability_is_zero():
    policy = cr.load("greedy_actor/categorical_normal", "onnx")
    time_step, _ = _inputs(policy, 3, seed=5)
    info = policy.action(time_step).info
    _close(info["log_probability"], {"force": np.zeros(3), "move": np.zeros(3)}, "log-prob")


def test_epsilon_greedy_log_probability():
    live = cr.live("epsilon_greedy_q")
    policy = cr.load("epsilon_greedy_q", "onnx")
    time_step, _ = _inputs(policy, 300, seed=6)
    step = policy.action(time_step, seed=7)
    greedy = live.greedy_policy.action(time_step).action.numpy()
    is_greedy = step.action[:, 0] == greedy[:, 0]
    assert 0 < (~is_greedy).sum() < 300
    # Hand-derived: epsilon 0.3 spread over 3 actions, the rest on the greedy one.
    want = np.where(is_greedy, math.log(0.7 + 0.1), math.log(0.1))
    np.testing.assert_allclose(step.info["log_probability"], want, atol=1e-6)


def test_gaussian_noise_log_probability():
    live = cr.live("gaussian_actor")
    policy = cr.load("gaussian_actor", "onnx")
    time_step, _ = _inputs(policy, 300, seed=8)
    step = policy.action(time_step, seed=9)
    clean = live.wrapped_policy.action(time_step).action.numpy()
    inside = _inside(step.action, -1.0, 2.0)
    assert inside.sum() > 30
    z = (step.action - clean) / 0.3
    want = (-0.5 * z**2 - math.log(0.3) - 0.5 * LOG_2PI).sum(axis=1)
    np.testing.assert_allclose(step.info["log_probability"][inside], want[inside], atol=1e-4)


def test_random_policy_log_probabilities():
    policy = cr.load("random_tf/nested", "onnx")
    time_step, _ = _inputs(policy, 50, seed=10)
    step = policy.action(time_step, seed=11)
    log_probs = step.info["log_probability"]
    np.testing.assert_allclose(log_probs["force"][0], np.full(50, -3 * math.log(3.0)), rtol=1e-6)
    np.testing.assert_allclose(log_probs["force"][1], np.full(50, -math.log(10.0)), rtol=1e-6)
    np.testing.assert_allclose(log_probs["move"], np.full(50, -math.log(4.0)), rtol=1e-6)
    free = step.action["free"]
    np.testing.assert_allclose(
        log_probs["free"], (-0.5 * free**2 - 0.5 * LOG_2PI).sum(axis=1), rtol=1e-5
    )


# --- sampling statistics -----------------------------------------------------------------------

N = 20000


def test_q_policy_samples_the_softmax_of_q_values():
    live = cr.live("q")
    policy = cr.load("q", "onnx")
    time_step = _repeat(_inputs(policy, 1, seed=12)[0], N)
    logits = live.distribution(_repeat(time_step, 1)).action.distribution.logits.numpy()
    probs = np.exp(logits[0, 0] - logits[0, 0].max())
    probs /= probs.sum()
    actions = policy.action(time_step, seed=13).action[:, 0]
    freq = np.bincount(actions + 1, minlength=3) / N
    # sd of each frequency <= 0.0036 at N=20000: 0.015 is > 4 sd.
    np.testing.assert_allclose(freq, probs, atol=0.015)


def _check_quantiles(samples, loc, scale, low, high):
    """Quantiles of clipped Normal samples equal loc + z * scale wherever that is inside."""
    for q, z in ((0.25, -0.6745), (0.5, 0.0), (0.75, 0.6745)):
        want = loc + z * scale
        got = np.quantile(samples, q, axis=0)
        inside = (want > low + 0.05) & (want < high - 0.05)
        assert inside.any()
        # Quantile sd ~ 1.25 * scale / sqrt(N) ~ 0.009 * scale: 0.05 * scale is > 5 sd.
        np.testing.assert_allclose(got[inside], want[inside], atol=0.05 * scale.max())


def test_normal_actor_samples_match_its_distribution():
    live = cr.live("actor/normal_dict_obs")
    policy = cr.load("actor/normal_dict_obs", "onnx")
    time_step = _repeat(_inputs(policy, 1, seed=14)[0], N)
    params, _, _ = live.distribution_params(_repeat(time_step, 1))
    loc, scale = params.params["loc"].numpy()[0], params.params["scale"].numpy()[0]
    samples = policy.action(time_step, seed=15).action
    _check_quantiles(samples, loc, scale, -1.0, 2.0)


def test_gaussian_noise_samples_around_the_clean_action():
    live = cr.live("gaussian_actor")
    policy = cr.load("gaussian_actor", "onnx")
    time_step = _repeat(_inputs(policy, 1, seed=16)[0], N)
    clean = live.wrapped_policy.action(_repeat(time_step, 1)).action.numpy()[0]
    samples = policy.action(time_step, seed=17).action
    _check_quantiles(samples, clean, np.full(3, 0.3), -1.0, 2.0)


def test_epsilon_greedy_explores_at_rate_epsilon():
    live = cr.live("epsilon_greedy_q")
    policy = cr.load("epsilon_greedy_q", "onnx")
    time_step = _repeat(_inputs(policy, 1, seed=18)[0], N)
    greedy = int(live.greedy_policy.action(_repeat(time_step, 1)).action.numpy()[0, 0])
    actions = policy.action(time_step, seed=19).action[:, 0]
    freq = np.bincount(actions + 1, minlength=3) / N
    want = np.full(3, 0.1)
    want[greedy + 1] = 0.8
    np.testing.assert_allclose(freq, want, atol=0.015)


def test_mixture_picks_components_by_weight():
    live = cr.live("mixture")
    policy = cr.load("mixture", "onnx")
    time_step = _repeat(_inputs(policy, 1, seed=20)[0], N)
    greedy = int(live.policies[0].action(_repeat(time_step, 1)).action.numpy()[0, 0])
    actions = policy.action(time_step, seed=21).action[:, 0]
    freq = np.bincount(actions + 1, minlength=3) / N
    # Weight 0.25 on the greedy component, 0.75 on a uniform one over 3 actions.
    want = np.full(3, 0.25)
    want[greedy + 1] = 0.5
    np.testing.assert_allclose(freq, want, atol=0.015)


def test_ou_noise_has_the_ornstein_uhlenbeck_statistics():
    policy = cr.load("ou_noise_actor", "onnx")
    batch = 4000
    time_step, _ = _inputs(policy, batch, seed=22, step_type=StepType.MID)
    state = policy.get_initial_state(batch)
    noise = []
    rng = np.random.default_rng(23)
    for _ in range(40):
        step = policy.action(time_step, state, seed=rng)
        state = step.state
        noise.append(state["ou_noise"])
    x = np.stack(noise[20:])  # past burn-in: (1 - 0.15)^20 ~ 0.04 of the start remains
    # x' = 0.85 x + 0.2 N(0, 1): stationary sd 0.2 / sqrt(1 - 0.85^2), lag-1 corr 0.85.
    np.testing.assert_allclose(x.std(), 0.2 / math.sqrt(1 - 0.85**2), rtol=0.03)
    lag1 = np.corrcoef(x[:-1].reshape(-1), x[1:].reshape(-1))[0, 1]
    np.testing.assert_allclose(lag1, 0.85, atol=0.01)
    # FIRST steps restart the noise from zero (in the graph) before the new draw.
    first = time_step._replace(step_type=np.zeros(batch, np.int32))
    restarted = policy.action(first, state, seed=24).state["ou_noise"]
    np.testing.assert_allclose(restarted.std(), 0.2, rtol=0.03)


def test_random_policy_samples_its_spec_uniformly():
    policy = cr.load("random_tf/nested", "onnx")
    time_step, _ = _inputs(policy, N, seed=25)
    action = policy.action(time_step, seed=26).action
    force, gear = action["force"]
    assert force.min() >= -1.0 and force.max() <= 2.0
    np.testing.assert_allclose(force.mean(axis=0), 0.5, atol=0.03)  # sd 0.87/141 = 0.006
    np.testing.assert_allclose(force.std(axis=0), 3 / math.sqrt(12), rtol=0.02)
    np.testing.assert_allclose(np.bincount(gear[:, 0], minlength=10) / N, 0.1, atol=0.01)
    np.testing.assert_allclose(np.bincount(action["move"] - 2, minlength=4) / N, 0.25, atol=0.015)
    np.testing.assert_allclose(action["free"].mean(axis=0), 0.0, atol=0.03)
    np.testing.assert_allclose(action["free"].std(axis=0), 1.0, rtol=0.02)


# --- seeds -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["q", "gaussian_actor", "ou_noise/rnn_greedy"])
def test_seeds_at_load_and_per_call(kind):
    time_step, _ = _inputs(cr.load(kind, "onnx"), 5, seed=27)

    def run(policy, seeds):
        state = policy.get_initial_state(5)
        out = []
        for seed in seeds:
            step = policy.action(time_step, state, seed=seed)
            out.append(step.action)
            state = step.state
        return out

    first = run(cr.load(kind, "onnx", seed=1), [None] * 3)
    # The same load seed replays the sequence; successive calls differ.
    np.testing.assert_array_equal(
        np.stack(first), np.stack(run(cr.load(kind, "onnx", 1), [None] * 3))
    )
    assert not np.array_equal(first[0], first[1])
    # Another load seed gives another sequence; per-call seeds override the policy's.
    assert not np.array_equal(first[0], run(cr.load(kind, "onnx", seed=2), [None])[0])
    a = run(cr.load(kind, "onnx", seed=1), [5, 5])
    b = run(cr.load(kind, "onnx", seed=2), [5, 5])
    np.testing.assert_array_equal(a[0], b[0])
    gen = run(cr.load(kind, "onnx", seed=3), [np.random.default_rng(8)])
    np.testing.assert_array_equal(
        gen[0], run(cr.load(kind, "onnx", seed=4), [np.random.default_rng(8)])[0]
    )


def test_unbatched_time_steps_sample_like_a_batch_of_one():
    policy = cr.load("actor/categorical_normal", "onnx")
    time_step, _ = _inputs(policy, 1, seed=28)
    single = TimeStep(*(np.asarray(a)[0] for a in time_step))
    a = policy.action(single, seed=29)
    b = policy.action(time_step, seed=29)
    _close(a.action, nest.map_structure(lambda x: x[0], b.action), "action")
    _close(a.info, nest.map_structure(lambda x: x[0], b.info), "info")
