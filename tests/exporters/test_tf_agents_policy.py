"""TFAgentsPolicy, the adapter: TF-Agents saved policies of every kind as TFPolicies and bundles.

Policy kinds the reference folder lacks are written with PolicySaver's layout by
``tests.tf_agents_saved.save_like_policy_saver``; expected values come from numpy on
the known weights, or from the reference recordings.
"""

from __future__ import annotations

import functools
import json
import warnings

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import exporters
from exporters import tf_agents as tai
from exporters.tf_agents import TFAgentsPolicy
from tests.tf_agents_saved import (
    OBSERVATION,
    W_MOVE,
    W_TURN,
    fake_feeds,
    onnx_session,
    recording,
    run_session,
    save_like_policy_saver,
    saved_policy,
    time_step_feeds,
)
from toolkit import bundle
from toolkit.errors import BundleError, ExportError, SpecMismatchError, UnsupportedError
from toolkit.policies import tf_policy
from toolkit.trajectories.time_step import TimeStep

tfd = tfp.distributions


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``saved(kind, **options) -> path`` of a PolicySaver look-alike, written once each."""
    root = tmp_path_factory.mktemp("saved")

    @functools.cache
    def get(kind: str, **options) -> object:
        name = "_".join([kind, *(f"{k}{v}" for k, v in sorted(options.items()))])
        return save_like_policy_saver(root / name, kind, **options)

    return get


def time_step(batch: int = 6, step_type: int = 1) -> TimeStep:
    return TimeStep(
        tf.fill([batch], step_type),
        tf.zeros([batch]),
        tf.ones([batch]),
        tf.constant(OBSERVATION[:batch]),
    )


def normal_log_prob(x, loc, scale):
    return -0.5 * ((x - loc) / scale) ** 2 - np.log(scale) - 0.5 * np.log(2 * np.pi)


def log_softmax(logits):
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


# --- stochastic policies: the saved distribution -------------------------------------


@pytest.mark.parametrize("kind", ["stochastic", "independent"])
def test_normal_and_categorical_become_this_projects_families(saved, kind):
    policy = TFAgentsPolicy(saved(kind))
    assert policy.function == "distribution" and policy.skipped is None
    assert not policy.deterministic
    params, state, info = policy.distribution_params(time_step())
    assert state == () and info == ()
    assert params["move"].family == "normal" and params["move"].event_ndims == 1
    np.testing.assert_allclose(params["move"].params["loc"], OBSERVATION @ W_MOVE, atol=1e-6)
    np.testing.assert_array_equal(params["move"].params["scale"], np.full((6, 2), 0.5))
    # TF-Agents uses a TFP Categorical's indices as actions: shift 0.
    assert (params["turn"].family, params["turn"].shift, params["turn"].dtype) == (
        "categorical",
        0,
        "int32",
    )
    np.testing.assert_allclose(params["turn"].params["logits"], OBSERVATION @ W_TURN, atol=1e-6)


def test_uniform_becomes_the_uniform_family(saved):
    params, _, _ = TFAgentsPolicy(saved("uniform")).distribution_params(time_step())
    assert params["move"].family == "uniform" and params["move"].event_ndims == 1
    np.testing.assert_allclose(params["move"].params["low"], OBSERVATION @ W_MOVE - 1, atol=1e-6)
    np.testing.assert_allclose(params["move"].params["high"], OBSERVATION @ W_MOVE + 1, atol=1e-6)


def test_stochastic_bundle_holds_the_parameters_and_the_saved_metadata(saved, tmp_path):
    path = tai.import_tf_agents(saved("stochastic"), tmp_path / "b")
    manifest = bundle.read_manifest(path)
    assert manifest["train_step"] == 3
    assert manifest["metadata"] == {
        "version": 2,
        "imported_from": "tf_agents",
        "source": str(saved("stochastic")),
        "tf_agents_function": "distribution",
    }
    assert manifest["distribution"]["items"]["turn"] == {
        "kind": "distribution_params",
        "family": "categorical",
        "params": ["logits"],
        "event_ndims": 0,
        "dtype": "int32",
        "shift": 0,
    }
    out = run_session(onnx_session(path), fake_feeds())
    assert set(out) == {
        "distribution/move/loc",
        "distribution/move/scale",
        "distribution/turn/logits",
    }
    np.testing.assert_allclose(out["distribution/move/loc"], OBSERVATION @ W_MOVE, atol=1e-6)
    np.testing.assert_array_equal(out["distribution/move/scale"], np.full((6, 2), 0.5, np.float32))
    np.testing.assert_allclose(out["distribution/turn/logits"], OBSERVATION @ W_TURN, atol=1e-6)


def test_actions_sample_the_distribution_with_seeds_and_clip(saved):
    policy = TFAgentsPolicy(saved("stochastic"))
    first = policy.action(time_step(), seed=3)
    again = policy.action(time_step(), seed=3)
    other = policy.action(time_step(), seed=4)
    np.testing.assert_array_equal(first.action["move"], again.action["move"])
    np.testing.assert_array_equal(first.action["turn"], again.action["turn"])
    assert not np.array_equal(first.action["move"], other.action["move"])
    assert np.all(np.abs(first.action["move"].numpy()) <= 1.0)
    assert first.action["turn"].dtype == tf.int32
    assert set(np.unique(first.action["turn"])) <= {0, 1, 2}


def test_log_probability_info_is_computed_like_native_policies(saved, tmp_path):
    """TF-Agents' PolicyInfo(log_probability, value): log-probabilities are this project's
    emit_log_probability (computed from the distribution), the rest is graph info."""
    policy = TFAgentsPolicy(saved("stochastic", info=True))
    assert policy.emit_log_probability
    assert set(policy.info_spec) == {"log_probability", "value"}
    # Large scale keeps samples unclipped often; compare log-probs where unclipped.
    step = policy.action(time_step(), seed=1)
    move = step.action["move"].numpy()
    turn = step.action["turn"].numpy()
    expected_move = normal_log_prob(move, OBSERVATION @ W_MOVE, 0.5).sum(-1)
    expected_turn = log_softmax(OBSERVATION @ W_TURN)[np.arange(6), turn]
    inside = np.all(np.abs(move) < 1.0, axis=-1)
    assert inside.any()
    np.testing.assert_allclose(
        step.info["log_probability"]["move"].numpy()[inside], expected_move[inside], atol=1e-5
    )
    np.testing.assert_allclose(step.info["log_probability"]["turn"], expected_turn, atol=1e-5)
    np.testing.assert_allclose(step.info["value"], OBSERVATION.sum(-1), atol=1e-6)

    path = tai.import_tf_agents(saved("stochastic", info=True), tmp_path / "b", formats=["onnx"])
    manifest = bundle.read_manifest(path)
    assert manifest["policy"]["action"]["emit_log_probability"] is True
    out = run_session(onnx_session(path), fake_feeds())
    # The graph's info has no log-probabilities: the runtime computes them.
    assert {k for k in out if k.startswith("info/")} == {"info/value"}
    np.testing.assert_allclose(out["info/value"], OBSERVATION.sum(-1), atol=1e-6)


# --- deterministic policies and the action fallback ----------------------------------


def test_deterministic_policy_with_a_fixed_batch_size(saved, tmp_path):
    path = saved("deterministic", batch_size=6)
    policy = TFAgentsPolicy(path)
    assert policy.deterministic and policy.batch_size == 6
    with pytest.warns(UserWarning, match=r"batch_size=6\): the bundle serves batches of exactly 6"):
        bundle_path = tai.import_tf_agents(path, tmp_path / "b", formats=["onnx"])
    manifest = bundle.read_manifest(bundle_path)
    assert manifest["metadata"]["tf_agents_batch_size"] == 6
    out = run_session(onnx_session(bundle_path), fake_feeds())
    np.testing.assert_allclose(out["action/move"], np.clip(OBSERVATION @ W_MOVE, -1, 1), atol=1e-6)
    np.testing.assert_array_equal(out["action/turn"], (OBSERVATION @ W_TURN).argmax(-1))
    np.testing.assert_array_equal(out["distribution/turn/loc"], out["action/turn"])
    # Another batch size fails in TF with TF's own message naming the shapes.
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="6"):
        policy.action(time_step(batch=2))


def test_unsupported_family_falls_back_to_the_deterministic_action(saved, tmp_path):
    path = saved("gamma")
    policy = TFAgentsPolicy(path)
    assert policy.function == "action"
    assert policy.skipped == (
        "distribution/move: expected a Deterministic, Categorical, Normal, "
        "MultivariateNormalDiag or Uniform distribution, got Gamma"
    )
    with pytest.warns(UserWarning) as record:
        bundle_path = tai.import_tf_agents(path, tmp_path / "b", formats=["onnx"])
    assert str(record[0].message) == (
        f"{path}: importing the deterministic action instead of the saved distribution "
        f"({policy.skipped})"
    )
    manifest = bundle.read_manifest(bundle_path)
    assert manifest["metadata"]["tf_agents_function"] == "action"
    assert manifest["distribution"]["items"]["move"]["family"] == "deterministic"
    out = run_session(onnx_session(bundle_path), fake_feeds())
    np.testing.assert_allclose(out["action/move"], np.clip(OBSERVATION @ W_MOVE, -1, 1), atol=1e-6)
    np.testing.assert_array_equal(out["action/turn"], (OBSERVATION @ W_TURN).argmax(-1))


def test_a_sampled_action_without_a_usable_distribution_is_refused(saved, tmp_path):
    path = saved("unserializable")
    expected = (
        f"{path}: expected a deterministic action or a supported distribution to import, got "
        "neither (action: the saved action samples (TF ops ['Multinomial', "
        "'RandomStandardNormal']) and an exported graph must not hold random ops; "
        "distribution: the saved policy's distribution function only raises: PolicySaver "
        "could not serialize policy.distribution() when the policy was saved)"
    )
    with pytest.raises(UnsupportedError) as info:
        TFAgentsPolicy(path)
    assert str(info.value) == expected
    with pytest.raises(ExportError) as info:
        tai.import_tf_agents(path, tmp_path / "b")
    # The import also tried TF-Agents' exploration wrappers, and says what to save.
    assert str(info.value) == (
        f"cannot import: {expected}; nor is it one of TF-Agents' EpsilonGreedyPolicy, "
        "GaussianPolicy, OUNoisePolicy or RandomTFPolicy (expected a single action tensor "
        "among the saved action's outputs, got 2 outputs (a nest of actions or info)): save "
        "the agent's greedy `policy` instead (a deterministic action, or a distribution of "
        "TFP's or TF-Agents' families)"
    )
    assert not (tmp_path / "b").exists()


# --- state -----------------------------------------------------------------------------


def test_state_resets_on_first_inside_the_saved_functions(saved):
    policy = TFAgentsPolicy(saved("deterministic", initial_count=0.0))
    assert not policy.automatic_state_reset  # the saved functions reset themselves
    assert policy.policy_state_spec == [tf.TensorSpec((1,), tf.float32, "count")]
    state = policy.get_initial_state(6)
    np.testing.assert_array_equal(state[0], np.zeros((6, 1)))
    state = policy.action(time_step(step_type=0), state).state
    state = policy.action(time_step(step_type=1), state).state
    np.testing.assert_array_equal(state[0], np.full((6, 1), 2.0))
    _, state, _ = policy.distribution_params(time_step(step_type=0), state)
    np.testing.assert_array_equal(state[0], np.ones((6, 1)))


def test_a_non_zero_initial_state_is_refused(saved):
    path = saved("deterministic", initial_count=5.0)
    with pytest.raises(UnsupportedError) as info:
        TFAgentsPolicy(path)
    assert str(info.value) == (
        f"{path}: policy_state/0: expected a zero initial state (runtimes start from zeros), "
        "got non-zero values from get_initial_state"
    )


# --- the reference policies as TFPolicies ----------------------------------------------


def test_reference_policies_act_like_tf_agents():
    rec = recording("nested_obs")
    policy = TFAgentsPolicy(saved_policy("nested_obs"))
    feeds = time_step_feeds(rec)
    step = policy.action(
        TimeStep(
            feeds["step_type"],
            feeds["reward"],
            feeds["discount"],
            {"position": feeds["observation/position"], "velocity": feeds["observation/velocity"]},
        )
    )
    np.testing.assert_array_equal(step.action, rec["action"])
    actor = TFAgentsPolicy(saved_policy("actor_normal_stochastic"))
    feeds = time_step_feeds(recording("actor_normal_stochastic"))
    dist = actor.distribution(TimeStep(*(feeds[k] for k in TimeStep._fields))).action
    rec = recording("actor_normal_stochastic")
    np.testing.assert_allclose(dist.mean(), rec["distribution/mean"], atol=1e-5)
    np.testing.assert_allclose(dist.stddev(), rec["distribution/stddev"], atol=1e-5)


def test_unbatched_time_steps_and_validation():
    policy = TFAgentsPolicy(saved_policy("q_greedy"))
    rec = recording("q_greedy")
    single = TimeStep(np.int32(1), np.float32(0), np.float32(1), rec["observation"][0])
    assert int(policy.action(single).action) == rec["action"][0]
    with pytest.raises(SpecMismatchError, match=r"observation: expected shape \(4,\)"):
        policy.action(single._replace(observation=np.zeros(5, np.float32)))


def test_variables_are_the_saved_model_variables_and_copies_are_independent():
    policy = TFAgentsPolicy(saved_policy("q_greedy"))
    loaded = tai.load_saved_policy(saved_policy("q_greedy"))
    assert [v.name for v in policy.variables()] == [v.name for v in loaded.model_variables]
    clone = policy.copy()
    head = [v for v in clone.variables() if v.name.startswith("QNetwork/dense_2/")]
    for variable in head:
        variable.assign(-variable)
    rec = recording("q_greedy")
    ts = TimeStep(*(time_step_feeds(rec)[k] for k in TimeStep._fields))
    np.testing.assert_array_equal(policy.action(ts).action, rec["action"])
    no_tie = rec["distribution/logits"][:, 0] != rec["distribution/logits"][:, 1]
    np.testing.assert_array_equal(clone.action(ts).action[no_tie], 1 - rec["action"][no_tie])
    # update() copies values between the two, as for native policies.
    policy.update(clone)
    np.testing.assert_array_equal(policy.action(ts).action[no_tie], 1 - rec["action"][no_tie])


def test_a_failed_checkpoint_restore_leaves_the_policy_as_it_was(tmp_path):
    policy = TFAgentsPolicy(saved_policy("q_greedy"))
    before = [v.numpy() for v in policy.variables()]
    other = tai.load_saved_policy(saved_policy("q_rnn"))
    tf.train.Checkpoint(policy=other).write(str(tmp_path / "variables" / "variables"))
    with pytest.raises(BundleError, match="expected a checkpoint of this policy's variables"):
        policy.restore_tf_agents_checkpoint(tmp_path)
    for value, variable in zip(before, policy.variables(), strict=True):
        np.testing.assert_array_equal(variable.numpy(), value)


def test_the_bundle_saved_model_tracks_only_our_objects(tmp_path):
    """No TF-Agents function or TFP structure is re-saved: only the variables they read."""
    path = tai.import_tf_agents(saved_policy("q_greedy"), tmp_path / "b", formats=["saved_model"])
    assert json.loads((path / "manifest.json").read_text())["formats"] == [
        "saved_model",
        "golden",
    ]
    loaded = tf.saved_model.load(str(path / "saved_model"))
    children = set(loaded.policy._trackable_children())
    assert "model_variables" in children
    assert not {"action", "distribution", "get_initial_state"} & children
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = exporters.verify(
            path, num_samples=8, policy=TFAgentsPolicy(saved_policy("q_greedy"))
        )
    assert report.forms == ["tf_policy", "saved_model"] and report.ok, str(report)


def test_tf_policy_helpers_accept_the_adapter(saved):
    """The adapter is a TFPolicy: wrappers and PyTFPolicy take it as any other."""
    from toolkit.policies import greedy_policy, py_tf_policy

    policy = TFAgentsPolicy(saved("stochastic"))
    assert isinstance(policy, tf_policy.TFPolicy)
    greedy = greedy_policy.GreedyPolicy(policy)
    action = greedy.action(time_step()).action
    np.testing.assert_allclose(action["move"], np.clip(OBSERVATION @ W_MOVE, -1, 1), atol=1e-6)
    np.testing.assert_array_equal(action["turn"], (OBSERVATION @ W_TURN).argmax(-1))
    py = py_tf_policy.PyTFPolicy(policy, seed=0)
    step = py.action(TimeStep(np.int32(1), np.float32(0), np.float32(1), OBSERVATION[0]))
    assert step.action["move"].shape == (2,) and step.action["turn"].shape == ()
