"""Import of real TF-Agents 0.19 saved policies, checked against TF-Agents' own recordings.

The reference folder holds four ``PolicySaver`` outputs and what TF-Agents' loader
returned on recorded inputs (reward 0, discount 1): see its README.md.
"""

from __future__ import annotations

import collections
import functools
import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tensorflow as tf
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from exporters import tf_agents_import as tai
from toolkit.errors import BundleError, ExportError
from toolkit.specs.array_spec import ArraySpec, BoundedArraySpec
from toolkit.specs.tensor_spec import BoundedTensorSpec
from toolkit.trajectories.policy_step import PolicyStep
from toolkit.trajectories.time_step import TimeStep

REFERENCE = Path("/work/shared/reference/tf_agents_0_19")
CASES = ("q_greedy", "actor_normal_stochastic", "nested_obs", "q_rnn")

pytestmark = pytest.mark.skipif(
    not REFERENCE.is_dir(), reason="the TF-Agents reference policies are not on this machine"
)


def saved_policy(case: str) -> Path:
    return REFERENCE / case / "saved_policy"


@functools.cache
def imported(case: str) -> tai.ImportedPolicy:
    """One conversion per case for the whole module (tests must not mutate it)."""
    return tai.convert_tf_agents_policy(saved_policy(case))


@functools.cache
def recording(case: str) -> dict[str, np.ndarray]:
    with np.load(REFERENCE / case / "expected.npz") as data:
        return {k: data[k] for k in data.files}


def case_info(case: str) -> dict:
    return json.loads((REFERENCE / case / "case.json").read_text())


@functools.cache
def session(case: str, function: str) -> ort.InferenceSession:
    model = imported(case).models[function].model
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def run(case: str, function: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = session(case, function)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def time_step_feeds(rec: dict[str, np.ndarray], prefix: str = "") -> dict[str, np.ndarray]:
    """The recorded inputs under graph input names: reward 0 and discount 1, as recorded."""
    step_type = rec[prefix + "step_type"]
    feeds = {
        "step_type": step_type.astype(np.int32),
        "reward": np.zeros(step_type.shape, np.float32),
        "discount": np.ones(step_type.shape, np.float32),
    }
    for key, value in rec.items():
        if key.startswith(prefix + "observation"):
            feeds[key.removeprefix(prefix)] = value
    return feeds


# --- specs ---------------------------------------------------------------------------


def test_specs_of_q_greedy_are_read_from_the_pbtxt():
    specs = tai.read_policy_specs(saved_policy("q_greedy"))
    assert specs.time_step_spec.step_type == ArraySpec((), np.int32)
    assert specs.time_step_spec.reward == ArraySpec((), np.float32)
    assert specs.time_step_spec.discount == BoundedArraySpec((), np.float32, 0.0, 1.0)
    assert specs.time_step_spec.observation == ArraySpec((4,), np.float32)
    assert specs.action_spec == BoundedArraySpec((), np.int64, 0, 1)
    assert specs.action_spec.name == "action"
    assert specs.policy_state_spec == ()
    assert specs.info_spec == ()


def test_specs_of_dict_observations_recurrent_states_and_continuous_actions():
    nested = tai.read_policy_specs(saved_policy("nested_obs"))
    assert nested.time_step_spec.observation == {
        "position": ArraySpec((2,), np.float32),
        "velocity": ArraySpec((3,), np.float32),
    }
    assert nested.action_spec == BoundedArraySpec((), np.int64, 0, 3)
    rnn = tai.read_policy_specs(saved_policy("q_rnn"))
    # TF-Agents keeps the LSTM state as a list [h, c].
    assert rnn.policy_state_spec == [ArraySpec((8,), np.float32), ArraySpec((8,), np.float32)]
    actor = tai.read_policy_specs(saved_policy("actor_normal_stochastic"))
    assert actor.action_spec == BoundedArraySpec((2,), np.float32, -1.0, 1.0)


# --- the recorded cases --------------------------------------------------------------


@pytest.mark.parametrize("case", ["q_greedy", "nested_obs"])
def test_greedy_actions_match_tf_agents_exactly(case):
    rec = recording(case)
    policy = imported(case)
    assert policy.deterministic
    assert set(policy.models) == {"action", "distribution"}
    assert policy.skipped == {}
    feeds = time_step_feeds(rec)
    action = run(case, "action", feeds)["action"]
    assert action.dtype == np.int64
    np.testing.assert_array_equal(action, rec["action"])
    # The greedy distribution is a Deterministic whose loc is the action.
    assert policy.distribution == {
        "family": "deterministic",
        "params": ["loc"],
        "event_ndims": 0,
        "dtype": "int64",
    }
    loc = run(case, "distribution", feeds)["distribution/loc"]
    np.testing.assert_array_equal(loc, rec["action"])


def test_q_greedy_recording_is_the_argmax_of_its_logits():
    """The recorded Q-values agree with the recorded greedy actions (a check of the data)."""
    rec = recording("q_greedy")
    np.testing.assert_array_equal(rec["distribution/logits"].argmax(-1), rec["action"])


def test_stochastic_actor_exports_its_normal_parameters_only():
    case = "actor_normal_stochastic"
    rec = recording(case)
    policy = imported(case)
    assert not case_info(case)["deterministic"]
    assert not policy.deterministic
    assert set(policy.models) == {"distribution"}
    assert "RandomStandardNormal" in policy.skipped["action"]
    assert policy.distribution == {
        "family": "normal",
        "params": ["loc", "scale"],
        "event_ndims": 1,
        "dtype": "float32",
    }
    out = run(case, "distribution", time_step_feeds(rec))
    assert set(out) == {"distribution/loc", "distribution/scale"}
    # A MultivariateNormalDiag's mean is its loc and its stddev its scale_diag.
    np.testing.assert_allclose(out["distribution/loc"], rec["distribution/mean"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(
        out["distribution/scale"], rec["distribution/stddev"], rtol=0, atol=1e-5
    )


def test_q_rnn_reproduces_the_whole_sequence_with_state_and_resets():
    case = "q_rnn"
    rec = recording(case)
    steps = case_info(case)["rnn_steps"]
    assert steps == 10
    # The recording restarts (FIRST = 0) at step 0 and half-way: resets are exercised.
    assert np.all(rec["t0/step_type"] == 0)
    assert np.any(rec[f"t{steps // 2}/step_type"] == 0)
    batch = rec["t0/step_type"].shape[0]
    state = [np.zeros((batch, 8), np.float32), np.zeros((batch, 8), np.float32)]
    for name in ("action", "distribution"):
        h, c = state
        for t in range(steps):
            feeds = time_step_feeds(rec, f"t{t}/")
            feeds.update({"policy_state/0": h, "policy_state/1": c})
            out = run(case, name, feeds)
            got = out["action"] if name == "action" else out["distribution/loc"]
            np.testing.assert_array_equal(got, rec[f"t{t}/action"], err_msg=f"{name}, step {t}")
            h, c = out["next_state/0"], out["next_state/1"]


def test_q_rnn_state_matters():
    """Control for the test above: without the fed-back state some action differs."""
    case = "q_rnn"
    rec = recording(case)
    batch = rec["t0/step_type"].shape[0]
    zeros = np.zeros((batch, 8), np.float32)
    differs = False
    for t in range(case_info(case)["rnn_steps"]):
        feeds = time_step_feeds(rec, f"t{t}/")
        feeds.update({"policy_state/0": zeros, "policy_state/1": zeros})
        differs |= bool(np.any(run(case, "action", feeds)["action"] != rec[f"t{t}/action"]))
    assert differs


def test_graph_inputs_and_outputs_are_named_by_nest_path():
    rnn = imported("q_rnn").models["action"]
    assert [i.name for i in rnn.model.graph.input] == [
        "step_type",
        "reward",
        "discount",
        "observation",
        "policy_state/0",
        "policy_state/1",
    ]
    assert [o.name for o in rnn.model.graph.output] == ["action", "next_state/0", "next_state/1"]
    assert rnn.input_map["policy_state/1"] == "policy_state/1"
    assert rnn.input_map["observation"] == "time_step/observation"
    assert rnn.output_map == {
        "action": "action",
        "next_state/0": "state/0",
        "next_state/1": "state/1",
    }
    nested = imported("nested_obs").models["action"]
    assert [i.name for i in nested.model.graph.input] == [
        "step_type",
        "reward",
        "discount",
        "observation/position",
        "observation/velocity",
    ]
    actor = imported("actor_normal_stochastic").models["distribution"]
    assert actor.output_map == {
        "distribution/loc": "distribution/loc",
        "distribution/scale": "distribution/scale",
    }
    assert [io.param for io in actor.outputs] == ["loc", "scale"]


@pytest.mark.parametrize("case", CASES)
def test_models_are_checked_deterministic_onnx_with_a_dynamic_batch(case):
    policy = imported(case)
    assert policy.opset == tai.DEFAULT_OPSET >= 17
    assert policy.batch_size is None
    assert policy.train_step == -1  # PolicySaver was given no train step
    for imported_model in policy.models.values():
        model = imported_model.model
        onnx.checker.check_model(model, full_check=True)
        assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [
            policy.opset
        ]
        ops = {node.op_type for node in model.graph.node}
        assert not {op for op in ops if "Random" in op or op in ("Multinomial", "Bernoulli")}
        assert all(onnx.defs.has(op) for op in ops), ops
        for value in [*model.graph.input, *model.graph.output]:
            first = value.type.tensor_type.shape.dim[0]
            assert not first.HasField("dim_value"), value.name


@pytest.mark.parametrize("batch", [1, 3])
def test_other_batch_sizes_run(batch):
    rec = recording("q_greedy")
    feeds = {k: v[:batch] for k, v in time_step_feeds(rec).items()}
    np.testing.assert_array_equal(run("q_greedy", "action", feeds)["action"], rec["action"][:batch])


def test_bundled_tf_functions_match_the_onnx_graphs():
    """The concrete TF functions kept for a SavedModel re-export compute the same."""
    rec = recording("q_rnn")
    model = imported("q_rnn").models["action"]
    feeds = time_step_feeds(rec, "t0/")
    feeds.update({f"policy_state/{i}": np.full((4, 8), 0.1 * (i + 1), np.float32) for i in (0, 1)})
    onnx_out = run("q_rnn", "action", feeds)
    tf_out = model.concrete_function(*(tf.constant(feeds[io.name]) for io in model.inputs))
    assert set(tf_out) == set(onnx_out)
    for name, value in onnx_out.items():
        np.testing.assert_allclose(value, tf_out[name].numpy(), rtol=0, atol=1e-5, err_msg=name)


def test_onnx_reference_evaluator_agrees_with_onnxruntime():
    rec = recording("actor_normal_stochastic")
    model = imported("actor_normal_stochastic").models["distribution"].model
    feeds = time_step_feeds(rec)
    reference = ReferenceEvaluator(model)
    names = [o.name for o in model.graph.output]
    expected = run("actor_normal_stochastic", "distribution", feeds)
    for name, value in zip(names, reference.run(names, feeds), strict=True):
        np.testing.assert_allclose(value, expected[name], rtol=0, atol=1e-6, err_msg=name)


def test_functions_can_be_chosen():
    policy = tai.convert_tf_agents_policy(saved_policy("q_greedy"), functions=["distribution"])
    assert set(policy.models) == {"distribution"}
    with pytest.raises(ValueError, match=re.escape("expected 'action' and/or 'distribution'")):
        tai.convert_tf_agents_policy(saved_policy("q_greedy"), functions=["sample"])


def test_a_stochastic_policy_asked_only_for_its_action_fails_clearly():
    with pytest.raises(ExportError) as info:
        tai.convert_tf_agents_policy(saved_policy("actor_normal_stochastic"), functions=["action"])
    message = str(info.value)
    assert "expected a deterministic action or a supported distribution to export" in message
    assert "the saved action samples (TF ops ['RandomStandardNormal'])" in message


# --- bad inputs ----------------------------------------------------------------------


def test_missing_directory(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(BundleError) as info:
        tai.convert_tf_agents_policy(missing)
    assert str(info.value) == (
        f"{missing}: expected a TF-Agents saved policy directory, got no such directory"
    )


def test_directory_without_specs(tmp_path):
    with pytest.raises(BundleError) as info:
        tai.read_policy_specs(tmp_path)
    assert str(info.value) == (
        f"{tmp_path}: expected a TF-Agents saved policy (saved_model.pb and "
        "policy_specs.pbtxt), got a directory without either"
    )


@pytest.fixture(scope="module")
def plain_saved_model(tmp_path_factory):
    """A SavedModel that is not a TF-Agents policy: one function, no specs file."""
    path = tmp_path_factory.mktemp("plain") / "saved_model"
    module = tf.Module()
    module.scale = tf.Variable(2.0)
    module.double = tf.function(
        lambda x: x * module.scale, input_signature=[tf.TensorSpec([None], tf.float32)]
    )
    with warnings.catch_warnings():
        # TF warns that loading needs TFP's TypeSpecs registered: the import does that.
        warnings.filterwarnings("ignore", "Encoding a StructuredValue")
        tf.saved_model.save(module, str(path))
    return path


def test_plain_saved_model_is_refused(plain_saved_model):
    with pytest.raises(BundleError) as info:
        tai.convert_tf_agents_policy(plain_saved_model)
    assert str(info.value) == (
        f"{plain_saved_model}: a SavedModel without policy_specs.pbtxt is not a TF-Agents "
        "policy (PolicySaver writes policy_specs.pbtxt beside saved_model.pb)"
    )


def test_plain_saved_model_with_copied_specs_is_refused(plain_saved_model, tmp_path):
    path = tmp_path / "saved_model"
    shutil.copytree(plain_saved_model, path)
    shutil.copy(saved_policy("q_greedy") / "policy_specs.pbtxt", path)
    with pytest.raises(BundleError) as info:
        tai.convert_tf_agents_policy(path)
    assert str(info.value) == (
        f"{path}: expected the functions of TF-Agents' PolicySaver (action, distribution, "
        "get_initial_state), got a SavedModel without ['action', 'get_initial_state']"
    )


def test_corrupted_pbtxt(tmp_path):
    text = (saved_policy("q_greedy") / "policy_specs.pbtxt").read_text()
    (tmp_path / "policy_specs.pbtxt").write_text(text[: len(text) // 2])
    with pytest.raises(BundleError) as info:
        tai.read_policy_specs(tmp_path)
    message = str(info.value)
    assert message.startswith(
        f"{tmp_path / 'policy_specs.pbtxt'}: not a readable StructuredValue text proto ("
    )
    assert "Expected" in message  # protobuf's own description of what it expected


def test_binary_garbage_pbtxt(tmp_path):
    (tmp_path / "policy_specs.pbtxt").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(BundleError, match="not a readable StructuredValue text proto"):
        tai.read_policy_specs(tmp_path)


def test_specs_that_are_not_a_policys(tmp_path):
    (tmp_path / "policy_specs.pbtxt").write_text(
        'dict_value { fields { key: "observation" value { tensor_spec_value { '
        'name: "observation" shape { dim { size: 3 } } dtype: DT_FLOAT } } } }'
    )
    with pytest.raises(BundleError) as info:
        tai.read_policy_specs(tmp_path)
    assert str(info.value) == (
        f"{tmp_path / 'policy_specs.pbtxt'}: expected a dict with 'collect_data_spec' and "
        "'policy_state_spec', got keys ['observation']"
    )


def test_collect_data_spec_that_is_not_a_trajectory(tmp_path):
    (tmp_path / "policy_specs.pbtxt").write_text(
        'dict_value { fields { key: "collect_data_spec" value { named_tuple_value { '
        'name: "Transition" values { key: "observation" value { tensor_spec_value { '
        'name: "o" shape { } dtype: DT_FLOAT } } } } } } '
        'fields { key: "policy_state_spec" value { tuple_value { } } } }'
    )
    with pytest.raises(BundleError) as info:
        tai.read_policy_specs(tmp_path)
    assert str(info.value) == (
        f"{tmp_path / 'policy_specs.pbtxt'}: collect_data_spec: expected a Trajectory with "
        "fields ['step_type', 'observation', 'action', 'policy_info', 'reward', 'discount'], "
        "got fields ['observation']"
    )


# --- conversion guards ---------------------------------------------------------------


def test_an_op_tf2onnx_lacks_fails_the_conversion_naming_it():
    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.int32, name="a"),
            tf.TensorSpec([None], tf.int32, name="b"),
        ]
    )
    def gradient_args(a, b):
        r0, r1 = tf.raw_ops.BroadcastGradientArgs(s0=a, s1=b)
        return {"r0": r0, "r1": r1}

    with pytest.raises(ExportError) as info:
        tai.convert_function(gradient_args, what="gradient_args")
    message = str(info.value)
    assert message.startswith("gradient_args: tf2onnx could not convert it: ")
    assert "BroadcastGradientArgs" in message


def test_random_ops_are_refused():
    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="loc")])
    def sample(loc):
        return {"sample": loc + tf.random.normal(tf.shape(loc), seed=1)}

    with pytest.raises(ExportError) as info:
        tai.convert_function(sample, what="sample")
    assert re.fullmatch(
        r"sample: expected a graph without random ops, got \['RandomNormal(Like)?'\]",
        str(info.value),
    )


# --- checkpoints ---------------------------------------------------------------------


def _write_negated_checkpoint(source: Path, directory: Path, train_step: int) -> None:
    """A PolicySaver.save_checkpoint-style output with the Q head negated."""
    loaded = tai.load_saved_policy(source)
    for variable in loaded.model_variables:
        if variable.name.startswith("QNetwork/dense_2/"):  # the Q-value layer
            variable.assign(-variable)
    loaded.train_step.assign(train_step)
    checkpoint = tf.train.Checkpoint(
        policy=loaded, model_variables=loaded.model_variables, train_step=loaded.train_step
    )
    checkpoint.write(str(directory / "variables" / "variables"))


def test_checkpoint_update_changes_the_weights(tmp_path):
    rec = recording("q_greedy")
    _write_negated_checkpoint(saved_policy("q_greedy"), tmp_path, train_step=7)
    before = imported("q_greedy")
    after = tai.update_from_checkpoint(before, tmp_path)
    assert after.train_step == 7
    assert set(after.models) == set(before.models)
    feeds = time_step_feeds(rec)
    old_model = before.models["action"].model
    new_model = after.models["action"].model
    new_sess = ort.InferenceSession(new_model.SerializeToString())
    (action,) = new_sess.run(["action"], feeds)
    # Negated Q-values over two actions: the greedy action flips wherever there was
    # no tie in the recorded logits.
    logits = rec["distribution/logits"]
    no_tie = logits[:, 0] != logits[:, 1]
    np.testing.assert_array_equal(action[no_tie], 1 - rec["action"][no_tie])

    # Patching the old graph's initializers gives the new graph's results.
    updates = tai.initializer_updates(old_model, new_model)
    assert updates
    patched = onnx.ModelProto()
    patched.CopyFrom(old_model)
    for init in patched.graph.initializer:
        if init.name in updates:
            init.CopyFrom(numpy_helper.from_array(updates[init.name], init.name))
    (patched_action,) = ort.InferenceSession(patched.SerializeToString()).run(["action"], feeds)
    np.testing.assert_array_equal(patched_action, action)

    # The import the update started from is left as it was.
    assert before.train_step == -1
    np.testing.assert_array_equal(run("q_greedy", "action", feeds)["action"], rec["action"])
    model = before.models["action"]
    tf_action = model.concrete_function(*(tf.constant(feeds[io.name]) for io in model.inputs))
    np.testing.assert_array_equal(tf_action["action"].numpy(), rec["action"])


def test_a_saved_policy_directory_reads_as_a_checkpoint_too():
    policy = imported("nested_obs")
    again = tai.update_from_checkpoint(policy, saved_policy("nested_obs"))
    feeds = time_step_feeds(recording("nested_obs"))
    sess = ort.InferenceSession(again.models["action"].model.SerializeToString())
    np.testing.assert_array_equal(sess.run(["action"], feeds)[0], recording("nested_obs")["action"])
    # Same values: every initializer update is a no-op.
    updates = tai.initializer_updates(policy.models["action"].model, again.models["action"].model)
    old = {
        i.name: numpy_helper.to_array(i) for i in policy.models["action"].model.graph.initializer
    }
    assert set(updates) == set(old)
    for name, value in updates.items():
        np.testing.assert_array_equal(value, old[name])


def test_initializer_updates_refuses_different_graphs():
    greedy = imported("q_greedy").models["action"].model
    nested = imported("nested_obs").models["action"].model
    with pytest.raises(ExportError, match="expected graphs that differ only in initializer"):
        tai.initializer_updates(greedy, nested)


def test_checkpoint_of_another_policy_is_refused(tmp_path):
    loaded = tai.load_saved_policy(saved_policy("nested_obs"))
    tf.train.Checkpoint(policy=loaded).write(str(tmp_path / "variables" / "variables"))
    with pytest.raises(BundleError) as info:
        tai.update_from_checkpoint(imported("q_greedy"), tmp_path)
    assert str(info.value).startswith(
        f"{tmp_path}: expected a checkpoint of this policy's variables, got one that does "
        "not match ("
    )


def test_missing_checkpoint(tmp_path):
    with pytest.raises(BundleError) as info:
        tai.update_from_checkpoint(imported("q_greedy"), tmp_path)
    assert str(info.value) == (
        f"{tmp_path}: expected a TF-Agents policy checkpoint (variables/variables.index), got none"
    )


# --- policy kinds the reference folder lacks, saved the way PolicySaver saves ---------

Trajectory = collections.namedtuple(
    "Trajectory",
    ["step_type", "observation", "action", "policy_info", "next_step_type", "reward", "discount"],
)
W_MOVE = np.arange(6, dtype=np.float32).reshape(3, 2) / 10
W_TURN = np.arange(9, dtype=np.float32).reshape(3, 3) / 10 - 0.3
OBSERVATION = np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32)


def save_like_policy_saver(path: Path, kind: str, batch_size: int | None = None) -> Path:
    """A SavedModel with PolicySaver's layout: action, distribution, get_initial_state,
    get_train_step, get_metadata, and policy_specs.pbtxt beside it.

    The action is a dict {"move": (2,) float in [-1, 1], "turn": () int32 in [0, 2]}:
      stochastic: Normal(obs @ W_MOVE, 0.5) and Categorical(obs @ W_TURN); action samples.
      independent: the same with the Normal wrapped in Independent (as TF-Agents' normal
        projections may do).
      deterministic: Deterministic(obs @ W_MOVE) and Deterministic(argmax(obs @ W_TURN)).
      unserializable: the distribution function only raises (PolicySaver's fallback when
        policy.distribution() cannot be saved); the action samples.
      gamma: a Gamma for "move" (no family of ours); the action is deterministic.
    """
    import tensorflow_probability as tfp

    tfd = tfp.distributions
    module = tf.Module()
    module.w_move = tf.Variable(W_MOVE)
    module.w_turn = tf.Variable(W_TURN)
    module.train_step = tf.Variable(3, dtype=tf.int64)
    module.metadata = {"version": tf.Variable(2)}

    def distributions(observation):
        move, turn = observation @ module.w_move, observation @ module.w_turn
        if kind == "deterministic":
            return {
                "move": tfd.Deterministic(move),
                "turn": tfd.Deterministic(tf.argmax(turn, -1, output_type=tf.int32)),
            }
        if kind == "gamma":
            first = tfd.Gamma(tf.exp(move), 1.0)
        elif kind == "independent":
            first = tfd.Independent(tfd.Normal(move, 0.5), reinterpreted_batch_ndims=1)
        else:
            first = tfd.Normal(move, 0.5)
        return {"move": first, "turn": tfd.Categorical(logits=turn, dtype=tf.int32)}

    @tf.function
    def distribution(time_step, policy_state=()):
        if kind == "unserializable":
            tf.debugging.Assert(False, ["could not serialize"])
            return ()
        dists = distributions(time_step.observation)
        return PolicyStep(tf.nest.map_structure(tfp.experimental.as_composite, dists))

    @tf.function
    def action(time_step, policy_state=()):
        dists = distributions(time_step.observation)
        if kind in ("deterministic", "gamma"):
            move = time_step.observation @ module.w_move
            turn = tf.argmax(time_step.observation @ module.w_turn, -1, output_type=tf.int32)
            return PolicyStep({"move": tf.clip_by_value(move, -1.0, 1.0), "turn": turn})
        return PolicyStep({k: d.sample(seed=1) for k, d in dists.items()})

    outer = [batch_size]
    batched = TimeStep(
        tf.TensorSpec(outer, tf.int32, "step_type"),
        tf.TensorSpec(outer, tf.float32, "reward"),
        tf.TensorSpec(outer, tf.float32, "discount"),
        tf.TensorSpec([*outer, 3], tf.float32, "observation"),
    )
    action.get_concrete_function(batched, ())
    distribution.get_concrete_function(batched, ())
    module.action, module.distribution = action, distribution
    module.get_initial_state = tf.function(lambda batch_size: ())
    module.get_initial_state.get_concrete_function(tf.TensorSpec((), tf.int32))
    module.get_train_step = tf.function(lambda: module.train_step.read_value())
    module.get_train_step.get_concrete_function()
    module.get_metadata = tf.function(lambda: {"version": module.metadata["version"] + 0})
    module.get_metadata.get_concrete_function()
    with warnings.catch_warnings():
        # TF warns that loading needs TFP's TypeSpecs registered: the import does that.
        warnings.filterwarnings("ignore", "Encoding a StructuredValue")
        tf.saved_model.save(module, str(path))

    from google.protobuf import text_format
    from tensorflow.python.saved_model import nested_structure_coder

    step_type = tf.TensorSpec((), tf.int32, "step_type")
    collect = Trajectory(
        step_type=step_type,
        observation=tf.TensorSpec((3,), tf.float32, "observation"),
        action={
            "move": BoundedTensorSpec((2,), tf.float32, -1.0, 1.0, "move"),
            "turn": BoundedTensorSpec((), tf.int32, 0, 2, "turn"),
        },
        policy_info=(),
        next_step_type=step_type,
        reward=tf.TensorSpec((), tf.float32, "reward"),
        discount=BoundedTensorSpec((), tf.float32, 0.0, 1.0, "discount"),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TF warns that namedtuples load as generic ones
        proto = nested_structure_coder.encode_structure(
            {"collect_data_spec": collect, "policy_state_spec": ()}
        )
    (path / tai.POLICY_SPECS_PBTXT).write_text(text_format.MessageToString(proto))
    return path


def fake_feeds(batch: int = 6) -> dict[str, np.ndarray]:
    return {
        "step_type": np.ones(batch, np.int32),
        "reward": np.zeros(batch, np.float32),
        "discount": np.ones(batch, np.float32),
        "observation": OBSERVATION[:batch],
    }


def run_model(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


@pytest.mark.parametrize("kind", ["stochastic", "independent"])
def test_nested_stochastic_policy_exports_normal_and_categorical_parameters(tmp_path, kind):
    policy = tai.convert_tf_agents_policy(save_like_policy_saver(tmp_path / "p", kind))
    assert set(policy.models) == {"distribution"}
    assert not policy.deterministic
    assert "['Multinomial', 'RandomStandardNormal']" in policy.skipped["action"]
    assert policy.distribution == {
        "move": {
            "family": "normal",
            "params": ["loc", "scale"],
            "event_ndims": 1,
            "dtype": "float32",
        },
        "turn": {
            "family": "categorical",
            "params": ["logits"],
            "event_ndims": 0,
            "dtype": "int32",
            "shift": 0,
        },
    }
    assert policy.train_step == 3
    assert policy.metadata == {"version": np.int32(2)}
    model = policy.models["distribution"]
    assert [o.name for o in model.model.graph.output] == [
        "distribution/move/loc",
        "distribution/move/scale",
        "distribution/turn/logits",
    ]
    out = run_model(model.model, fake_feeds())
    np.testing.assert_allclose(out["distribution/move/loc"], OBSERVATION @ W_MOVE, atol=1e-6)
    np.testing.assert_array_equal(out["distribution/move/scale"], np.full((6, 2), 0.5, np.float32))
    np.testing.assert_allclose(out["distribution/turn/logits"], OBSERVATION @ W_TURN, atol=1e-6)


def test_fixed_batch_size_is_kept(tmp_path):
    path = save_like_policy_saver(tmp_path / "p", "deterministic", batch_size=6)
    policy = tai.convert_tf_agents_policy(path)
    assert policy.batch_size == 6
    assert policy.deterministic
    model = policy.models["action"].model
    assert [i.type.tensor_type.shape.dim[0].dim_value for i in model.graph.input] == [6] * 4
    out = run_model(model, fake_feeds())
    np.testing.assert_allclose(
        out["action/move"], np.clip(OBSERVATION @ W_MOVE, -1, 1), rtol=0, atol=1e-6
    )
    np.testing.assert_array_equal(out["action/turn"], (OBSERVATION @ W_TURN).argmax(-1))
    loc = run_model(policy.models["distribution"].model, fake_feeds())
    np.testing.assert_array_equal(loc["distribution/turn/loc"], out["action/turn"])


def test_unserializable_distribution_and_sampled_action_fail_clearly(tmp_path):
    path = save_like_policy_saver(tmp_path / "p", "unserializable")
    with pytest.raises(ExportError) as info:
        tai.convert_tf_agents_policy(path)
    assert str(info.value) == (
        f"{path}: expected a deterministic action or a supported distribution to export, "
        "got neither (action: the saved action samples (TF ops ['Multinomial', "
        "'RandomStandardNormal']); an exported graph must not hold random ops, so only the "
        "distribution parameters are exported; distribution: the saved policy's distribution "
        "function only raises: PolicySaver could not serialize policy.distribution() when the "
        "policy was saved)"
    )


def test_unsupported_family_leaves_the_deterministic_action(tmp_path):
    policy = tai.convert_tf_agents_policy(save_like_policy_saver(tmp_path / "p", "gamma"))
    assert set(policy.models) == {"action"}
    assert policy.distribution is None
    assert policy.skipped == {
        "distribution": "distribution/move: expected a Deterministic, Categorical, Normal, "
        "MultivariateNormalDiag or Uniform distribution, got Gamma"
    }
    out = run_model(policy.models["action"].model, fake_feeds())
    np.testing.assert_array_equal(out["action/turn"], (OBSERVATION @ W_TURN).argmax(-1))


def test_bad_opset_and_functions_are_refused_before_loading(tmp_path):
    with pytest.raises(ExportError, match=re.escape("opset: expected an int in [17, 18], got 13")):
        tai.convert_tf_agents_policy(tmp_path, opset=13)
    with pytest.raises(ValueError, match=re.escape("got ['sample']")):
        tai.convert_tf_agents_policy(tmp_path, functions=["sample"])


def test_opset_18_converts_too():
    policy = tai.convert_tf_agents_policy(saved_policy("q_rnn"), functions=["action"], opset=18)
    model = policy.models["action"].model
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [18]
    rec = recording("q_rnn")
    feeds = time_step_feeds(rec, "t0/")
    feeds.update({f"policy_state/{i}": np.zeros((4, 8), np.float32) for i in (0, 1)})
    np.testing.assert_array_equal(run_model(model, feeds)["action"], rec["t0/action"])
