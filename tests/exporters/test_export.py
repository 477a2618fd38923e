"""Export: bundles of every TF policy kind, their parity, their manifest, and bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tensorflow as tf
from onnx.reference import ReferenceEvaluator

import exporters
from exporters import export as export_lib
from tests.exported_bundles import CASES, ONNX_ONLY, bundle_for, tf_policy_for
from toolkit import bundle
from toolkit.errors import ExportError
from toolkit.networks.q_network import QNetwork
from toolkit.policies import py_tf_policy, q_policy, random_py_policy
from toolkit.specs import array_spec, tensor_spec
from toolkit.trajectories import time_step as ts

pytestmark = pytest.mark.slow
CASE_IDS = sorted(CASES)


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_tf_policy_saved_model_and_onnx_agree(case_id):
    path, policy = bundle_for(case_id)
    report = exporters.verify(path, num_samples=32, policy=policy)
    forms = ["tf_policy", "onnx"] if case_id in ONNX_ONLY else ["tf_policy", "saved_model", "onnx"]
    assert report.forms == forms
    assert report.ok, str(report)
    outputs = {row.output for row in report.rows}
    # Every form was compared on the distribution parameters, not only on actions.
    assert any(name.startswith("distribution/") for name in outputs), outputs
    if policy.is_stateful:
        assert any(name.startswith("next_state/") for name in outputs)


def _sample_feed(session: ort.InferenceSession, manifest, batch: int = 5):
    from toolkit import nest

    rng = np.random.default_rng(0)
    spec = array_spec.spec_nest_from_json(manifest["specs"]["time_step"])
    feed = {p: s.sample(rng, (batch,)) for p, s in nest.flatten_with_paths(spec)}
    state = array_spec.spec_nest_from_json(manifest["specs"]["policy_state"])
    feed.update(
        {p: s.sample(rng, (batch,)) for p, s in nest.flatten_with_paths(state, "policy_state")}
    )
    return {i.name: feed[i.name] for i in session.get_inputs()}


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_reference_evaluator_agrees_with_onnxruntime(case_id):
    path, _ = bundle_for(case_id)
    manifest = bundle.read_manifest(path)
    model = onnx.load(str(path / bundle.ONNX_FILE))
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(str(path / bundle.ONNX_FILE))
    feed = _sample_feed(session, manifest)
    names = [o.name for o in session.get_outputs()]
    expected = session.run(names, feed)
    actual = ReferenceEvaluator(model).run(names, feed)
    for name, want, got in zip(names, expected, actual, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5, err_msg=name)


def test_manifest_records_what_a_reader_needs():
    path, _ = bundle_for("tf/q")
    manifest = bundle.read_manifest(path)
    assert manifest["format"] == "policy-toolkit-bundle" and manifest["format_version"] == 1
    assert manifest["train_step"] == 42 and manifest["metadata"] == {"case": "tf/q"}
    assert manifest["policy"]["class"] == "QPolicy"
    assert manifest["policy"]["action"]["kind"] == "sample"
    # The TF-Agents policies tutorial's three actions -1, 0, 1 in a (1,)-shaped spec: a
    # categorical shifted by -1.
    assert manifest["distribution"] == {
        "kind": "distribution_params",
        "family": "categorical",
        "params": ["logits"],
        "event_ndims": 1,
        "dtype": "int32",
        "shift": -1,
    }
    action_spec = array_spec.spec_nest_from_json(manifest["specs"]["action"])
    assert action_spec == array_spec.BoundedArraySpec((1,), np.int32, -1, 1)
    inputs = {i["name"] for i in manifest["signatures"]["distribution"]["inputs"]}
    assert inputs == {"step_type", "reward", "discount", "observation"}
    assert set(manifest["files"]) >= {"policy.onnx", "saved_model/saved_model.pb"}
    assert {"tensorflow", "tf2onnx", "onnx", "policy_toolkit"} <= set(manifest["producer"])
    assert manifest["onnx"]["opset"] == 17


def test_onnx_file_describes_itself():
    path, _ = bundle_for("tf/greedy_q")
    model = onnx.load(str(path / bundle.ONNX_FILE))
    props = {p.key: p.value for p in model.metadata_props}
    embedded = json.loads(props[bundle.ONNX_MANIFEST_KEY])
    manifest = bundle.read_manifest(path)
    manifest.pop("files")
    assert embedded == manifest
    assert model.opset_import[0].version == 17


def test_graph_inputs_and_outputs_are_named_by_nest_path():
    path, _ = bundle_for("tf/q_rnn")
    session = ort.InferenceSession(str(path / bundle.ONNX_FILE))
    inputs = {i.name: i.shape for i in session.get_inputs()}
    assert set(inputs) == {
        "step_type",
        "reward",
        "discount",
        "observation/position",
        "observation/velocity",
        "policy_state/0/0",
        "policy_state/0/1",
    }
    assert not isinstance(inputs["observation/velocity"][0], int)  # dynamic batch
    outputs = {o.name for o in session.get_outputs()}
    assert outputs == {"distribution/logits", "next_state/0/0", "next_state/0/1"}


def test_saved_model_signatures_are_listed_by_saved_model_cli():
    path, _ = bundle_for("tf/greedy_q")
    cli = shutil.which("saved_model_cli") or str(
        __import__("pathlib").Path(sys.executable).parent / "saved_model_cli"
    )
    result = subprocess.run(
        [cli, "show", "--all", "--dir", str(path / "saved_model")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for name in ("action", "distribution", "get_initial_state", "get_train_step", "get_metadata"):
        assert f"signature_def['{name}']" in result.stdout
    assert "inputs['observation'] tensor_info" in result.stdout
    assert "shape: (-1, 4)" in result.stdout  # dynamic batch


def test_saved_model_signatures_work():
    path, policy = bundle_for("tf/q_rnn")
    loaded = tf.saved_model.load(str(path / "saved_model"))
    state = loaded.signatures["get_initial_state"](batch_size=tf.constant(3))
    assert set(state) == {"policy_state/0/0", "policy_state/0/1"}
    assert state["policy_state/0/0"].shape == (3, 5)
    assert int(loaded.signatures["get_train_step"]()["train_step"]) == 42
    metadata = loaded.signatures["get_metadata"]()["metadata_json"].numpy().decode()
    assert json.loads(metadata) == {"case": "tf/q_rnn"}
    obs = {
        "observation/position": tf.zeros([3, 2]),
        "observation/velocity": tf.zeros([3, 3], tf.float64),
    }
    step = loaded.signatures["action"](
        step_type=tf.zeros([3], tf.int32),
        reward=tf.zeros([3]),
        discount=tf.ones([3]),
        **obs,
        **state,
    )
    assert step["action"].shape == (3, 1) and step["action"].dtype == tf.int32
    assert np.all(np.abs(step["action"].numpy()) <= 1)
    del policy


# --- bad input ---------------------------------------------------------------------


def _small_q_policy(observation_spec=None):
    observation_spec = observation_spec or tensor_spec.TensorSpec((4,), tf.float32)
    action_spec = tensor_spec.BoundedTensorSpec((), tf.int32, 0, 2)
    network = QNetwork(observation_spec, action_spec, fc_layer_params=(4,))
    return q_policy.QPolicy(ts.time_step_spec(observation_spec), action_spec, q_network=network)


def test_python_policies_are_refused(tmp_path):
    policy = random_py_policy.RandomPyPolicy(None, array_spec.BoundedArraySpec((), np.int32, 0, 1))
    with pytest.raises(ExportError, match="RandomPyPolicy: expected a TFPolicy"):
        exporters.export_policy(policy, tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


def test_wrapped_py_tf_policy_is_refused_with_a_hint(tmp_path):
    policy = py_tf_policy.PyTFPolicy(_small_q_policy())
    with pytest.raises(ExportError, match="PyTFPolicy: expected a TFPolicy"):
        exporters.export_policy(policy, tmp_path / "b")


def test_unsupported_distribution_is_named(tmp_path):
    import tensorflow_probability as tfp

    from toolkit.policies import actor_policy

    obs = tensor_spec.TensorSpec((2,), tf.float32)
    action = tensor_spec.BoundedTensorSpec((), tf.float32, 0.0, 1.0)

    def beta_net(time_steps, action_spec):
        del action_spec
        concentration = tf.nn.softplus(tf.reduce_sum(time_steps.observation, -1)) + 1.0
        return tfp.distributions.Beta(concentration, concentration)

    policy = actor_policy.ActorPolicy(ts.time_step_spec(obs), action, actor_network=beta_net)
    with pytest.raises(
        ExportError, match=r"ActorPolicy: cannot be exported: .*Beta has no export family"
    ):
        exporters.export_policy(policy, tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


def test_untracked_variables_are_named_for_saved_model(tmp_path):
    policy = tf_policy_for("tf/actor/tutorial_function")
    with pytest.raises(
        ExportError,
        match="ActorPolicy: cannot be exported to SavedModel: it uses variables that no "
        "tf.Module tracks",
    ):
        exporters.export_policy(policy, tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_refused(tmp_path):
    (tmp_path / "b").mkdir()
    with pytest.raises(ExportError, match=r"/b: already exists; pass overwrite=True to replace it"):
        exporters.export_policy(_small_q_policy(), tmp_path / "b")


def test_overwrite_replaces(tmp_path):
    first = exporters.export_policy(_small_q_policy(), tmp_path / "b", train_step=1)
    exporters.export_policy(_small_q_policy(), first, train_step=2, overwrite=True)
    assert bundle.read_manifest(first)["train_step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ExportError, match="cannot create the output folder"):
        exporters.export_policy(_small_q_policy(), blocker / "b")


def test_names_that_collide_after_flattening(tmp_path):
    obs = {
        "a/b": tensor_spec.TensorSpec((1,), tf.float32),
        "a": {"b": tensor_spec.TensorSpec((1,), tf.float32)},
    }
    with pytest.raises(ExportError, match="observation/a/b: two specs flatten to the same name"):
        exporters.export_policy(_small_q_policy(obs), tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


def test_names_that_are_no_graph_names(tmp_path):
    obs = {"joint angle": tensor_spec.TensorSpec((1,), tf.float32)}
    with pytest.raises(ExportError, match="observation/joint angle: not a valid graph input name"):
        exporters.export_policy(_small_q_policy(obs), tmp_path / "b")


def test_failure_mid_export_leaves_nothing(tmp_path, monkeypatch):
    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(onnx, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        exporters.export_policy(_small_q_policy(), tmp_path / "b")
    # The SavedModel was already written into the temporary folder: it is gone too.
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments(tmp_path):
    with pytest.raises(
        ExportError,
        match=r"formats: expected some of \['saved_model', 'onnx', 'litert', 'micro', 'c'\], "
        r"got \['tflite'\]",
    ):
        exporters.export_policy(_small_q_policy(), tmp_path / "b", formats=("tflite",))
    with pytest.raises(ExportError, match="metadata: expected JSON values"):
        exporters.export_policy(_small_q_policy(), tmp_path / "b", metadata={"x": object()})


def test_single_format_bundles(tmp_path):
    onnx_only = exporters.export_policy(_small_q_policy(), tmp_path / "o", formats="onnx")
    # The golden vectors (verify's reference on devices) and the model card come with
    # every export.
    files = set(bundle.read_manifest(onnx_only)["files"])
    assert files == {"policy.onnx", "golden.bin", "bom.cdx.json"}
    saved_only = exporters.export_policy(_small_q_policy(), tmp_path / "s", formats=["saved_model"])
    assert "onnx" not in bundle.read_manifest(saved_only)


def test_verify_fails_beyond_tolerance(tmp_path):
    policy = _small_q_policy()
    path = exporters.export_policy(policy, tmp_path / "b")
    for variable in policy.variables():
        variable.assign_add(tf.ones_like(variable) * 0.01)
    report = exporters.verify(path, num_samples=8, policy=policy)
    assert not report.ok
    # The changed policy differs from both exported forms, and from the golden vectors
    # recorded at export (its own row).
    assert {row.form for row in report.failures()} == {"saved_model", "onnx", "tf_policy"}
    assert "beyond tolerance" in str(report)


def test_weights_checkpoint_fits_the_bundle(tmp_path):
    policy = tf_policy_for("tf/q")
    path, _ = bundle_for("tf/q")
    for variable in policy.variables():
        variable.assign(variable * 2.0)
    checkpoint = exporters.save_checkpoint(policy, tmp_path / "ckpt", train_step=77)
    info = bundle.read_checkpoint(checkpoint)
    manifest = bundle.read_manifest(path)
    assert info["train_step"] == 77
    assert info["graph_fingerprint"] == manifest["onnx"]["graph_fingerprint"]
    weights = np.load(checkpoint / bundle.WEIGHTS_FILE, allow_pickle=False)
    assert sorted(weights.files, key=lambda k: int(k[1:])) == [
        f"w{i}" for i in range(len(manifest["onnx"]["initializers"]))
    ]
    # Overriding the bundle's initializers with the checkpoint reproduces the new policy.
    options = ort.SessionOptions()
    values = {}
    for i, name in enumerate(manifest["onnx"]["initializers"]):
        values[name] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(weights[f"w{i}"]))
        options.add_initializer(name, values[name])
    session = ort.InferenceSession(str(path / bundle.ONNX_FILE), options)
    feed = _sample_feed(session, manifest)
    got = session.run(["distribution/logits"], feed)[0]
    module = export_lib.module_for(policy, None, {})
    want = module.info.functions["distribution"]({k: tf.constant(v) for k, v in feed.items()})
    np.testing.assert_allclose(got, want["distribution/logits"].numpy(), atol=1e-5)
