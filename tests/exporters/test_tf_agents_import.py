"""Import of real TF-Agents 0.19 saved policies into bundles, checked against TF-Agents' own
recordings (see tests/tf_agents_saved.py and the reference folder's README.md).

Each reference case is imported once per module; the bundle's policy.onnx is then run
with onnxruntime on the recorded inputs, as the onnx runtime serves it.

Over 600 lines: one file for every recorded TF-Agents policy, sharing its fixtures.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import tensorflow as tf
from onnx.reference import ReferenceEvaluator

import exporters
from exporters import onnx_export
from exporters import tf_agents as tai
from tests.tf_agents_saved import (
    CASES,
    case_info,
    onnx_session,
    recording,
    run_session,
    saved_policy,
    time_step_feeds,
)
from toolkit import bundle
from toolkit.errors import BundleError, ExportError
from toolkit.specs.array_spec import ArraySpec, BoundedArraySpec
from toolkit.trajectories.time_step import TimeStep


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """``case -> bundle path``, imported on first use (tests must not change them)."""
    root = tmp_path_factory.mktemp("imported")

    @functools.cache
    def get(case: str) -> Path:
        return tai.import_tf_agents(saved_policy(case), root / case)

    return get


@pytest.fixture(scope="module")
def run(bundles):
    """``run(case, feeds) -> outputs`` of the case's bundle's policy.onnx."""
    sessions = {}

    def go(case: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if case not in sessions:
            sessions[case] = onnx_session(bundles(case))
        return run_session(sessions[case], feeds)

    return go


def manifest_of(path: Path) -> dict:
    return bundle.read_manifest(path)


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


# --- the recorded cases, through the bundle's ONNX graph ----------------------------


@pytest.mark.parametrize("case", ["q_greedy", "nested_obs"])
def test_greedy_actions_match_tf_agents_exactly(case, bundles, run):
    rec = recording(case)
    manifest = manifest_of(bundles(case))
    # The greedy distribution is a Deterministic whose loc is the action.
    assert manifest["distribution"] == {
        "kind": "distribution_params",
        "family": "deterministic",
        "params": ["loc"],
        "event_ndims": 0,
        "dtype": "int64",
    }
    assert manifest["policy"]["action"] == {
        "kind": "sample",
        "clip": True,
        "emit_log_probability": False,
    }
    out = run(case, time_step_feeds(rec))
    assert out["action"].dtype == np.int64
    np.testing.assert_array_equal(out["action"], rec["action"])
    np.testing.assert_array_equal(out["distribution/loc"], rec["action"])


def test_q_greedy_recording_is_the_argmax_of_its_logits():
    """The recorded Q-values agree with the recorded greedy actions (a check of the data)."""
    rec = recording("q_greedy")
    np.testing.assert_array_equal(rec["distribution/logits"].argmax(-1), rec["action"])


def test_stochastic_actor_exports_its_normal_parameters(bundles, run):
    case = "actor_normal_stochastic"
    rec = recording(case)
    assert not case_info(case)["deterministic"]
    manifest = manifest_of(bundles(case))
    assert manifest["distribution"] == {
        "kind": "distribution_params",
        "family": "normal",
        "params": ["loc", "scale"],
        "event_ndims": 1,
        "dtype": "float32",
    }
    out = run(case, time_step_feeds(rec))
    # Sampled: no action output, the runtime samples from the parameters.
    assert set(out) == {"distribution/loc", "distribution/scale"}
    # A MultivariateNormalDiag's mean is its loc and its stddev its scale_diag.
    np.testing.assert_allclose(out["distribution/loc"], rec["distribution/mean"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(
        out["distribution/scale"], rec["distribution/stddev"], rtol=0, atol=1e-5
    )


def test_q_rnn_reproduces_the_whole_sequence_with_state_and_resets(run):
    case = "q_rnn"
    rec = recording(case)
    steps = case_info(case)["rnn_steps"]
    assert steps == 10
    # The recording restarts (FIRST = 0) at step 0 and half-way: resets are exercised.
    assert np.all(rec["t0/step_type"] == 0)
    assert np.any(rec[f"t{steps // 2}/step_type"] == 0)
    batch = rec["t0/step_type"].shape[0]
    h, c = np.zeros((batch, 8), np.float32), np.zeros((batch, 8), np.float32)
    for t in range(steps):
        feeds = time_step_feeds(rec, f"t{t}/")
        feeds.update({"policy_state/0": h, "policy_state/1": c})
        out = run(case, feeds)
        np.testing.assert_array_equal(out["action"], rec[f"t{t}/action"], err_msg=f"step {t}")
        np.testing.assert_array_equal(out["distribution/loc"], rec[f"t{t}/action"])
        h, c = out["next_state/0"], out["next_state/1"]


def test_q_rnn_state_matters(run):
    """Control for the test above: without the fed-back state some action differs."""
    case = "q_rnn"
    rec = recording(case)
    batch = rec["t0/step_type"].shape[0]
    zeros = np.zeros((batch, 8), np.float32)
    differs = False
    for t in range(case_info(case)["rnn_steps"]):
        feeds = time_step_feeds(rec, f"t{t}/")
        feeds.update({"policy_state/0": zeros, "policy_state/1": zeros})
        differs |= bool(np.any(run(case, feeds)["action"] != rec[f"t{t}/action"]))
    assert differs


def test_the_graph_resets_the_state_on_first(run):
    """A FIRST step ignores the state fed in: the reset is inside the graph."""
    rec = recording("q_rnn")
    feeds = time_step_feeds(rec, "t0/")  # every entry FIRST
    zeros = np.zeros((4, 8), np.float32)
    noise = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    from_zeros = run("q_rnn", {**feeds, "policy_state/0": zeros, "policy_state/1": zeros})
    from_noise = run("q_rnn", {**feeds, "policy_state/0": noise, "policy_state/1": -noise})
    for name, value in from_zeros.items():
        np.testing.assert_array_equal(from_noise[name], value, err_msg=name)


def test_graph_inputs_and_outputs_are_named_by_nest_path(bundles):
    def names(case):
        model = onnx.load(str(bundles(case) / "policy.onnx"))
        return {i.name for i in model.graph.input}, {o.name for o in model.graph.output}

    assert names("q_rnn") == (
        {"step_type", "reward", "discount", "observation", "policy_state/0", "policy_state/1"},
        {"distribution/loc", "action", "next_state/0", "next_state/1"},
    )
    assert names("nested_obs")[0] == {
        "step_type",
        "reward",
        "discount",
        "observation/position",
        "observation/velocity",
    }
    assert names("actor_normal_stochastic")[1] == {"distribution/loc", "distribution/scale"}


@pytest.mark.parametrize("case", CASES)
def test_bundles_are_regular_with_checked_onnx_and_a_dynamic_batch(case, bundles):
    path = bundles(case)
    manifest = manifest_of(path)  # checks format, version and file hashes
    assert manifest["formats"] == ["saved_model", "onnx", "golden"]
    assert manifest["policy"]["class"] == "TFAgentsPolicy"
    assert manifest["train_step"] is None  # PolicySaver was given no train step
    assert manifest["metadata"] == {
        "imported_from": "tf_agents",
        "source": str(saved_policy(case)),
        "tf_agents_function": "distribution",
    }
    model = onnx.load(str(path / "policy.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [
        onnx_export.DEFAULT_OPSET
    ]
    ops = {node.op_type for node in onnx_export.all_nodes(model.graph)}
    assert not ops & onnx_export.RANDOM_OPS
    assert all(onnx.defs.has(op) for op in ops), ops
    for value in [*model.graph.input, *model.graph.output]:
        first = value.type.tensor_type.shape.dim[0]
        assert not first.HasField("dim_value"), value.name
    # The manifest's specs are TF-Agents' specs.
    specs = tai.read_policy_specs(saved_policy(case))
    from toolkit.specs import array_spec

    assert array_spec.spec_nest_from_json(manifest["specs"]["action"]) == specs.action_spec
    state = array_spec.spec_nest_from_json(manifest["specs"]["policy_state"])
    assert state == specs.policy_state_spec


@pytest.mark.parametrize("batch", [1, 3])
def test_other_batch_sizes_run(batch, run):
    rec = recording("q_greedy")
    feeds = {k: v[:batch] for k, v in time_step_feeds(rec).items()}
    np.testing.assert_array_equal(run("q_greedy", feeds)["action"], rec["action"][:batch])


@pytest.mark.parametrize("case", CASES)
def test_verify_compares_the_adapter_saved_model_and_onnx(case, bundles):
    from exporters.tf_agents import TFAgentsPolicy

    policy = TFAgentsPolicy(saved_policy(case))
    report = exporters.verify(bundles(case), num_samples=16, policy=policy)
    assert report.forms == ["tf_policy", "saved_model", "onnx"]
    assert report.ok, str(report)


def test_saved_model_signatures_reproduce_the_recording(bundles):
    """The bundle's SavedModel holds our signatures, not TF-Agents' TFP structures."""
    path = bundles("q_rnn") / "saved_model"
    # TF-Agents' own SavedModel names a TFP TypeSpec (loading it needs TFP); ours not.
    assert b"tfp.distributions" in (saved_policy("q_rnn") / "saved_model.pb").read_bytes()
    assert b"tfp." not in (path / "saved_model.pb").read_bytes()
    loaded = tf.saved_model.load(str(path))
    assert sorted(loaded.signatures) == [
        "action",
        "distribution",
        "get_initial_state",
        "get_metadata",
        "get_train_step",
        "serving_default",
    ]
    rec = recording("q_rnn")
    state = loaded.signatures["get_initial_state"](batch_size=tf.constant(4))
    for t in range(case_info("q_rnn")["rnn_steps"]):
        feeds = {k: tf.constant(v) for k, v in time_step_feeds(rec, f"t{t}/").items()}
        out = loaded.signatures["distribution"](**feeds, **state)
        np.testing.assert_array_equal(out["action"], rec[f"t{t}/action"], err_msg=f"step {t}")
        state = {
            "policy_state/" + k.removeprefix("next_state/"): v
            for k, v in out.items()
            if k.startswith("next_state/")
        }
    metadata = json.loads(loaded.signatures["get_metadata"]()["metadata_json"].numpy())
    assert metadata["imported_from"] == "tf_agents"


def test_saved_model_action_samples_within_the_bounds(bundles):
    """The stochastic case's SavedModel ``action`` samples (seeded), clipped to [-1, 1]."""
    loaded = tf.saved_model.load(str(bundles("actor_normal_stochastic") / "saved_model"))
    rec = recording("actor_normal_stochastic")
    feeds = {k: tf.constant(v) for k, v in time_step_feeds(rec).items()}
    first = loaded.signatures["action"](**feeds)["action"].numpy()
    second = loaded.signatures["action"](**feeds)["action"].numpy()
    assert first.shape == (32, 2) and first.dtype == np.float32
    assert np.all(np.abs(first) <= 1.0)
    assert not np.array_equal(first, second)  # sampled, not the mean
    # Samples sit around the recorded mean: mean +- 5 stddevs (clipped) holds them all.
    low = np.clip(rec["distribution/mean"] - 5 * rec["distribution/stddev"], -1, 1)
    high = np.clip(rec["distribution/mean"] + 5 * rec["distribution/stddev"], -1, 1)
    assert np.all((first >= low) & (first <= high))


def test_onnx_reference_evaluator_agrees_with_onnxruntime(bundles, run):
    rec = recording("actor_normal_stochastic")
    model = onnx.load(str(bundles("actor_normal_stochastic") / "policy.onnx"))
    feeds = time_step_feeds(rec)
    names = [o.name for o in model.graph.output]
    expected = run("actor_normal_stochastic", feeds)
    for name, value in zip(names, ReferenceEvaluator(model).run(names, feeds), strict=True):
        np.testing.assert_allclose(value, expected[name], rtol=0, atol=1e-6, err_msg=name)


def test_user_metadata_is_merged_and_reserved_keys_are_refused(tmp_path):
    path = tai.import_tf_agents(
        saved_policy("q_greedy"),
        tmp_path / "b",
        formats=["onnx"],
        metadata={"team": "rl", "run": 7},
    )
    manifest = manifest_of(path)
    assert manifest["formats"] == ["onnx", "golden"]
    assert not (path / "saved_model").exists()
    assert manifest["metadata"] == {
        "team": "rl",
        "run": 7,
        "imported_from": "tf_agents",
        "source": str(saved_policy("q_greedy")),
        "tf_agents_function": "distribution",
    }
    # The ONNX file describes itself: the manifest is in its metadata_props.
    props = {p.key: p.value for p in onnx.load(str(path / "policy.onnx")).metadata_props}
    assert json.loads(props["policy_toolkit.manifest"])["metadata"]["team"] == "rl"
    with pytest.raises(ExportError) as info:
        tai.import_tf_agents(saved_policy("q_greedy"), tmp_path / "c", metadata={"source": "x"})
    assert str(info.value) == (
        "metadata: expected keys other than ['imported_from', 'source', 'tf_agents_batch_size', "
        "'tf_agents_exploration', 'tf_agents_function', 'tf_agents_greedy'] (the import sets "
        "them), got ['source']"
    )
    assert not (tmp_path / "c").exists()


def test_an_existing_output_needs_overwrite(bundles, tmp_path):
    target = tmp_path / "b"
    shutil.copytree(bundles("q_greedy"), target)
    with pytest.raises(ExportError, match="already exists; pass overwrite=True"):
        tai.import_tf_agents(saved_policy("nested_obs"), target)
    assert manifest_of(target)["metadata"]["source"] == str(saved_policy("q_greedy"))
    tai.import_tf_agents(saved_policy("nested_obs"), target, formats=["onnx"], overwrite=True)
    assert manifest_of(target)["metadata"]["source"] == str(saved_policy("nested_obs"))


def test_import_is_exported_lazily_from_exporters():
    assert exporters.import_tf_agents is tai.import_tf_agents
    assert exporters.import_tf_agents_checkpoint is tai.import_tf_agents_checkpoint


# --- not a TF-Agents policy ----------------------------------------------------------


def test_missing_directory(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(BundleError) as info:
        tai.import_tf_agents(missing, tmp_path / "out")
    assert str(info.value) == (
        f"{missing}: expected a TF-Agents saved policy directory, got no such directory"
    )
    assert not (tmp_path / "out").exists()


def test_directory_without_specs(tmp_path):
    with pytest.raises(BundleError) as info:
        tai.import_tf_agents(tmp_path, tmp_path / "out")
    assert str(info.value) == (
        f"{tmp_path}: expected a TF-Agents saved policy (saved_model.pb and "
        "policy_specs.pbtxt), got a directory without either"
    )
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def plain_saved_model(tmp_path_factory):
    """A SavedModel that is not a TF-Agents policy: one function, no specs file."""
    path = tmp_path_factory.mktemp("plain") / "saved_model"
    module = tf.Module()
    module.scale = tf.Variable(2.0)
    module.double = tf.function(
        lambda x: x * module.scale, input_signature=[tf.TensorSpec([None], tf.float32)]
    )
    tf.saved_model.save(module, str(path))
    return path


def test_plain_saved_model_is_refused(plain_saved_model, tmp_path):
    with pytest.raises(BundleError) as info:
        tai.import_tf_agents(plain_saved_model, tmp_path / "out")
    assert str(info.value) == (
        f"{plain_saved_model}: a SavedModel without policy_specs.pbtxt is not a TF-Agents "
        "policy (PolicySaver writes policy_specs.pbtxt beside saved_model.pb)"
    )
    assert not (tmp_path / "out").exists()


def test_plain_saved_model_with_copied_specs_is_refused(plain_saved_model, tmp_path):
    path = tmp_path / "saved_model"
    shutil.copytree(plain_saved_model, path)
    shutil.copy(saved_policy("q_greedy") / "policy_specs.pbtxt", path)
    with pytest.raises(BundleError) as info:
        tai.import_tf_agents(path, tmp_path / "out")
    assert str(info.value) == (
        f"{path}: expected what TF-Agents' PolicySaver saves (action, get_initial_state), "
        "got a SavedModel without ['action', 'get_initial_state']"
    )


def test_corrupted_pbtxt(tmp_path):
    source = tmp_path / "policy"
    shutil.copytree(saved_policy("q_greedy"), source)
    text = (source / "policy_specs.pbtxt").read_text()
    (source / "policy_specs.pbtxt").write_text(text[: len(text) // 2])
    with pytest.raises(BundleError) as info:
        tai.import_tf_agents(source, tmp_path / "out")
    message = str(info.value)
    assert message.startswith(
        f"{source / 'policy_specs.pbtxt'}: not a readable StructuredValue text proto ("
    )
    assert "Expected" in message  # protobuf's own description of what it expected
    assert not (tmp_path / "out").exists()


def test_corrupted_saved_model(tmp_path):
    source = tmp_path / "policy"
    shutil.copytree(saved_policy("q_greedy"), source)
    (source / "saved_model.pb").write_bytes(b"\x00garbage")
    with pytest.raises(BundleError) as info:
        tai.import_tf_agents(source, tmp_path / "out")
    # The screen parses saved_model.pb before TensorFlow loads anything.
    assert str(info.value).startswith(
        f"{source / 'saved_model.pb'}: not a SavedModel protobuf (Error parsing message"
    )


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


# --- conversion guards the import relies on -----------------------------------------


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
        onnx_export.convert(gradient_args, what="gradient_args")
    message = str(info.value)
    assert message.startswith("gradient_args: tf2onnx could not convert it: ")
    assert "BroadcastGradientArgs" in message


def test_random_ops_are_refused():
    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="loc")])
    def sample(loc):
        return {"sample": loc + tf.random.normal(tf.shape(loc), seed=1)}

    with pytest.raises(ExportError) as info:
        onnx_export.convert(sample, what="sample")
    assert re.fullmatch(
        r"sample: expected a graph without random ops, got \['RandomNormal(Like)?'\]",
        str(info.value),
    )


# --- TF-Agents checkpoints, through update -------------------------------------------


def _write_negated_checkpoint(source: Path, directory: Path, train_step: int) -> None:
    """A PolicySaver.save_checkpoint-style output with the Q head negated.

    PolicySaver writes ``Checkpoint(policy=<saved module>, model_variables=...,
    train_step=...)`` to ``<dir>/variables/variables``; the saved module is what
    ``tf.saved_model.load`` gives back, so a loaded policy stands in for it.
    """
    loaded = tai.load_saved_policy(source)
    for variable in loaded.model_variables:
        if variable.name.startswith("QNetwork/dense_2/"):  # the Q-value layer
            variable.assign(-variable)
    loaded.train_step.assign(train_step)
    checkpoint = tf.train.Checkpoint(
        policy=loaded, model_variables=loaded.model_variables, train_step=loaded.train_step
    )
    checkpoint.write(str(directory / "variables" / "variables"))


def _weights_of(checkpoint: Path, manifest: dict) -> dict[str, np.ndarray]:
    """The checkpoint's weights under the bundle's initializer names (the documented
    reading: ``w<i>`` is the value of ``manifest.onnx.initializers[i]``)."""
    names = manifest["onnx"]["initializers"]
    with np.load(checkpoint / bundle.WEIGHTS_FILE, allow_pickle=False) as data:
        return {names[int(key[1:])]: data[key] for key in data.files}


@pytest.fixture(scope="module")
def negated_checkpoint(tmp_path_factory, bundles):
    """``(TF-Agents checkpoint dir, converted checkpoint dir)`` for q_greedy, Q head negated."""
    root = tmp_path_factory.mktemp("ckpt")
    _write_negated_checkpoint(saved_policy("q_greedy"), root / "tf_agents", train_step=7)
    converted = tai.import_tf_agents_checkpoint(
        saved_policy("q_greedy"), root / "tf_agents", root / "converted"
    )
    return root / "tf_agents", converted


def test_tf_agents_checkpoint_updates_the_onnx_bundle(negated_checkpoint, bundles):
    _, converted = negated_checkpoint
    path = bundles("q_greedy")
    manifest = manifest_of(path)
    info = bundle.read_checkpoint(converted)
    assert info["train_step"] == 7
    # The weights fit this bundle: the runtime applies them only on equal fingerprints.
    assert info["graph_fingerprint"] == manifest["onnx"]["graph_fingerprint"]
    rec = recording("q_greedy")
    feeds = time_step_feeds(rec)
    session = onnx_session(path, _weights_of(converted, manifest))
    action = run_session(session, feeds)["action"]
    # Negated Q-values over two actions: the greedy action flips wherever there was
    # no tie in the recorded logits.
    logits = rec["distribution/logits"]
    no_tie = logits[:, 0] != logits[:, 1]
    assert no_tie.sum() > 20
    np.testing.assert_array_equal(action[no_tie], 1 - rec["action"][no_tie])


def test_tf_agents_checkpoint_updates_the_saved_model_bundle(negated_checkpoint, bundles):
    """The tf side: tf/ckpt restores into the bundle SavedModel's policy and train_step."""
    _, converted = negated_checkpoint
    loaded = tf.saved_model.load(str(bundles("q_greedy") / "saved_model"))
    status = tf.train.Checkpoint(policy=loaded.policy, train_step=loaded.train_step).read(
        str(converted / bundle.TF_CHECKPOINT_PREFIX)
    )
    status.assert_existing_objects_matched()
    assert int(loaded.signatures["get_train_step"]()["train_step"]) == 7
    rec = recording("q_greedy")
    feeds = {k: tf.constant(v) for k, v in time_step_feeds(rec).items()}
    action = loaded.signatures["distribution"](**feeds)["action"].numpy()
    no_tie = rec["distribution/logits"][:, 0] != rec["distribution/logits"][:, 1]
    np.testing.assert_array_equal(action[no_tie], 1 - rec["action"][no_tie])


def test_a_saved_policy_directory_reads_as_a_checkpoint_too(tmp_path, bundles):
    """Its own variables: the converted weights equal the bundle's initializers."""
    converted = tai.import_tf_agents_checkpoint(
        saved_policy("nested_obs"), saved_policy("nested_obs"), tmp_path / "c"
    )
    manifest = manifest_of(bundles("nested_obs"))
    assert bundle.read_checkpoint(converted)["train_step"] == -1
    model = onnx.load(str(bundles("nested_obs") / "policy.onnx"))
    initial = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    weights = _weights_of(converted, manifest)
    assert set(weights) == set(initial)
    for name, value in weights.items():
        np.testing.assert_array_equal(value, initial[name], err_msg=name)


def test_checkpoint_of_another_policy_is_refused(tmp_path):
    loaded = tai.load_saved_policy(saved_policy("nested_obs"))
    tf.train.Checkpoint(policy=loaded).write(str(tmp_path / "variables" / "variables"))
    with pytest.raises(BundleError) as info:
        tai.import_tf_agents_checkpoint(saved_policy("q_greedy"), tmp_path, tmp_path / "out")
    assert str(info.value).startswith(
        f"{tmp_path}: expected a checkpoint of this policy's variables, got one that does "
        "not match ("
    )
    assert not (tmp_path / "out").exists()


def test_missing_checkpoint(tmp_path):
    with pytest.raises(BundleError) as info:
        tai.import_tf_agents_checkpoint(saved_policy("q_greedy"), tmp_path, tmp_path / "out")
    assert str(info.value) == (
        f"{tmp_path}: expected a TF-Agents policy checkpoint (variables/variables.index), got none"
    )


def test_tf_warnings_of_the_import_are_not_errors(tmp_path):
    """Importing emits no warning of ours for a policy with a usable distribution."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        tai.import_tf_agents(saved_policy("nested_obs"), tmp_path / "b", formats=["onnx"])


# --- the runtime serves imported bundles like any other --------------------------------


def recorded_time_step(rec: dict[str, np.ndarray], prefix: str = "") -> TimeStep:
    """The recorded inputs as a TimeStep (reward 0, discount 1, as recorded)."""
    feeds = time_step_feeds(rec, prefix)
    if "observation" in feeds:
        observation = feeds["observation"]
    else:
        observation = {k.removeprefix("observation/"): v for k, v in feeds.items() if "/" in k}
    return TimeStep(feeds["step_type"], feeds["reward"], feeds["discount"], observation)


@pytest.mark.parametrize("case", ["q_greedy", "nested_obs"])
def test_onnx_runtime_matches_the_recorded_greedy_actions(case, bundles):
    from runtimes import load_policy

    policy = load_policy(bundles(case), backend="onnx")
    assert policy.backend == "onnx"
    rec = recording(case)
    action = policy.action(recorded_time_step(rec)).action
    assert action.dtype == np.int64
    np.testing.assert_array_equal(action, rec["action"])


def test_onnx_runtime_matches_the_recorded_distribution_parameters(bundles):
    from runtimes import load_policy

    case = "actor_normal_stochastic"
    policy = load_policy(bundles(case), backend="onnx", seed=0)
    rec = recording(case)
    time_step = recorded_time_step(rec)
    dist = policy.distribution(time_step).action
    np.testing.assert_allclose(dist.mean(), rec["distribution/mean"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(dist.stddev(), rec["distribution/stddev"], rtol=0, atol=1e-5)
    # Sampled in the runtime with its own generator, clipped to the spec as TF-Agents does.
    first = policy.action(time_step, seed=1).action
    np.testing.assert_array_equal(policy.action(time_step, seed=1).action, first)
    assert not np.array_equal(policy.action(time_step, seed=2).action, first)
    assert first.shape == (32, 2) and np.all(np.abs(first) <= 1.0)


@pytest.mark.parametrize("backend", ["onnx", "tf"])
def test_runtime_replays_the_recurrent_sequence_with_resets(backend, bundles):
    from runtimes import load_policy

    policy = load_policy(bundles("q_rnn"), backend=backend)
    rec = recording("q_rnn")
    state = policy.get_initial_state(4)
    for t in range(case_info("q_rnn")["rnn_steps"]):
        step = policy.action(recorded_time_step(rec, f"t{t}/"), state)
        np.testing.assert_array_equal(step.action, rec[f"t{t}/action"], err_msg=f"step {t}")
        state = step.state


@pytest.mark.parametrize("backend", ["onnx", "tf"])
def test_runtime_takes_a_tf_agents_checkpoint_through_update(backend, negated_checkpoint, bundles):
    from runtimes import load_policy

    _, converted = negated_checkpoint
    policy = load_policy(bundles("q_greedy"), backend=backend)
    rec = recording("q_greedy")
    time_step = recorded_time_step(rec)
    np.testing.assert_array_equal(policy.action(time_step).action, rec["action"])
    assert policy.train_step is None
    policy.update_from_checkpoint(converted)
    assert policy.train_step == 7
    no_tie = rec["distribution/logits"][:, 0] != rec["distribution/logits"][:, 1]
    action = policy.action(time_step).action
    np.testing.assert_array_equal(action[no_tie], 1 - rec["action"][no_tie])


def test_update_bundle_takes_the_converted_checkpoint(negated_checkpoint, bundles, tmp_path):
    """The bundle on disk takes it too (exporters.update.update_bundle), both formats."""
    from exporters.update import update_bundle
    from runtimes import load_policy

    _, converted = negated_checkpoint
    target = tmp_path / "b"
    shutil.copytree(bundles("q_greedy"), target)
    report = update_bundle(target, converted)
    assert report.train_step == 7 and manifest_of(target)["train_step"] == 7
    rec = recording("q_greedy")
    no_tie = rec["distribution/logits"][:, 0] != rec["distribution/logits"][:, 1]
    for backend in ("onnx", "tf"):
        action = load_policy(target, backend=backend).action(recorded_time_step(rec)).action
        np.testing.assert_array_equal(action[no_tie], 1 - rec["action"][no_tie], err_msg=backend)
