"""The CLI's export and update commands: factories, checkpoints, and every error path."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.subprocess_utils import ROOT
from toolkit import bundle as bundle_lib
from toolkit.cli import app

runner = CliRunner()
FACTORY = "tests.cli_factories:small_cartpole"
# The demo's factory: "cartpole_factory.py" builds the network train_cartpole.py trains.
CARTPOLE_FACTORY = "examples.cartpole_factory:policy"


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def error_line(result) -> str:
    """The one error line a failing command prints, last on stderr after any stage lines."""
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    # Stage lines before it say which stage failed (a cross), never a traceback.
    assert all(line[0] in "✓✗" for line in lines[:-1]), result.stderr
    return errors[0]


def cartpole_time_steps(n: int = 64, seed: int = 0):
    from toolkit.trajectories import time_step as ts

    rng = np.random.default_rng(seed)
    observation = rng.uniform(-2.0, 2.0, (n, 4)).astype(np.float32)
    return ts.restart(observation, n)


def tf_actions(policy, time_step) -> np.ndarray:
    from toolkit.policies.py_tf_policy import PyTFPolicy

    return np.asarray(PyTFPolicy(policy).action(time_step).action)


def bundle_actions(path, time_step, backend: str = "onnx") -> np.ndarray:
    from runtimes import load_policy

    return np.asarray(load_policy(path, backend=backend).action(time_step).action)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A bundle of FACTORY (both formats), exported through the CLI once."""
    path = tmp_path_factory.mktemp("export") / "small"
    result = invoke("export", FACTORY, path, "--metadata", "owner=ci")
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="module")
def training_run(tmp_path_factory):
    """A training output folder like train_cartpole.py's: policy checkpoints at steps 10, 20.

    Returns ``(folder, {step: greedy actions on cartpole_time_steps()})``.
    """
    import tensorflow as tf
    import tf_keras

    from toolkit.agents import checkpoints, dqn
    from toolkit.environments.gym_adapter import GymEnvironment
    from toolkit.networks.q_network import QNetwork

    out = tmp_path_factory.mktemp("training")
    with GymEnvironment("CartPole-v1") as env:
        time_step_spec, action_spec = env.time_step_spec(), env.action_spec()
    tf.random.set_seed(3)
    network = QNetwork(time_step_spec.observation, action_spec, fc_layer_params=(100, 50))
    counter = tf.Variable(0, dtype=tf.int64)
    agent = dqn.DqnAgent(
        time_step_spec,
        action_spec,
        network,
        tf_keras.optimizers.Adam(1e-3),
        train_step_counter=counter,
    )
    saver = checkpoints.PolicyCheckpointer(out / "policy_checkpoints", agent)
    actions = {}
    rng = np.random.default_rng(0)
    for step in (10, 20):
        for variable in agent.policy.variables():
            variable.assign(rng.normal(0, 0.3, variable.shape.as_list()).astype(np.float32))
        counter.assign(step)
        saver.save()
        actions[step] = tf_actions(agent.policy, cartpole_time_steps())
    assert not np.array_equal(actions[10], actions[20])  # the two checkpoints act apart
    return out, actions


# --- export ---------------------------------------------------------------------------


def test_export_writes_a_verified_bundle_that_acts_like_the_policy(exported):
    from tests.cli_factories import small_cartpole

    manifest = bundle_lib.read_manifest(exported)
    assert manifest["formats"] == ["saved_model", "onnx", "golden"]
    assert manifest["metadata"] == {"owner": "ci"}
    assert manifest["train_step"] is None
    time_step = cartpole_time_steps()
    expected = tf_actions(small_cartpole(), time_step)
    np.testing.assert_array_equal(bundle_actions(exported, time_step, "onnx"), expected)
    np.testing.assert_array_equal(bundle_actions(exported, time_step, "tf"), expected)


def test_export_prints_each_stage_and_the_verify_report(tmp_path):
    result = invoke(
        "export", FACTORY, tmp_path / "b", "--format", "onnx", "-m", "note=a=b", "-m", "n=1"
    )
    assert result.exit_code == 0, result.output
    for stage in ("✓ build tests.cli_factories:small_cartpole: GreedyPolicy", "✓ export onnx"):
        assert stage in result.stderr
    assert "✓ verify: OK" in result.stderr
    assert f"exported GreedyPolicy -> {tmp_path / 'b'}" in result.stdout
    assert "verify" in result.stdout and "OK" in result.stdout
    manifest = bundle_lib.read_manifest(tmp_path / "b")
    assert manifest["formats"] == ["onnx", "golden"]
    assert manifest["metadata"] == {"note": "a=b", "n": "1"}  # split at the first "="
    assert not (tmp_path / "b" / "saved_model").exists()


def test_export_no_verify_skips_verification(tmp_path):
    result = invoke("export", FACTORY, tmp_path / "b", "--format", "onnx", "--no-verify")
    assert result.exit_code == 0, result.output
    assert "✓ verify" not in result.stderr and "verify " not in result.stdout
    assert (tmp_path / "b" / "policy.onnx").is_file()


def test_export_refuses_an_existing_output_unless_overwrite(exported, tmp_path):
    target = tmp_path / "b"
    shutil.copytree(exported, target)
    result = invoke("export", FACTORY, target, "--format", "onnx")
    assert result.exit_code == 2
    assert error_line(result) == f"error: {target}: already exists; pass --overwrite to replace it"
    result = invoke("export", FACTORY, target, "--format", "onnx", "--overwrite", "--no-verify")
    assert result.exit_code == 0, result.output
    assert bundle_lib.read_manifest(target)["formats"] == ["onnx", "golden"]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("cli_factories", "factory 'cli_factories': expected 'module:callable'"),
        ("tests.cli_factories:", "expected 'module:callable'"),
        ("tests/cli_factories.py:small_cartpole", "expected 'module:callable'"),
        (
            "tests.no_such_module:policy",
            "factory 'tests.no_such_module:policy': no module named 'tests.no_such_module'",
        ),
        (
            "tests.cli_factories:missing",
            "factory 'tests.cli_factories:missing': 'tests.cli_factories' has no attribute "
            "'missing'",
        ),
        (
            "tests.cli_factories:not_a_policy",
            "factory 'tests.cli_factories:not_a_policy': expected it to return a TFPolicy "
            "(toolkit.policies.tf_policy.TFPolicy), got list",
        ),
        (
            "tests.cli_factories:python_policy",
            "expected it to return a TFPolicy (toolkit.policies.tf_policy.TFPolicy), got "
            "RandomPyPolicy",
        ),
        (
            "tests.cli_factories:broken",
            "factory 'tests.cli_factories:broken' raised RuntimeError: the factory needs a GPU",
        ),
        (
            "tests.cli_factories:NOT_CALLABLE",
            "expected a callable or a TFPolicy, got int",
        ),
    ],
)
def test_bad_factories_fail_with_one_line_and_exit_2(tmp_path, source, message):
    result = invoke("export", source, tmp_path / "b")
    assert result.exit_code == 2, result.output
    assert message in error_line(result)
    assert not (tmp_path / "b").exists()


def test_debug_shows_the_exception(tmp_path):
    from toolkit.errors import PolicyError

    args = ["--debug", "export", "tests.cli_factories:broken", str(tmp_path / "b")]
    result = runner.invoke(app, args)
    assert isinstance(result.exception, PolicyError)
    assert "raised RuntimeError" in str(result.exception)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metadata", "novalue"], "error: --metadata: expected key=value, got 'novalue'"),
        (["-m", "a=1", "-m", "a=2"], "error: --metadata: key 'a' given twice"),
        (
            ["--format", "onnx,tflite"],
            "error: --format: expected some of ['saved_model', 'onnx', 'litert', 'micro', 'c'], "
            "got ['tflite']",
        ),
        (["--step", "3"], "error: --step needs --checkpoint"),
    ],
)
def test_bad_export_options_exit_2(tmp_path, args, message):
    result = invoke("export", FACTORY, tmp_path / "b", *args)
    assert result.exit_code == 2
    assert error_line(result) == message


# --- export --checkpoint ---------------------------------------------------------------


def test_export_restores_the_latest_training_checkpoint(training_run, tmp_path):
    out, actions = training_run
    assert (ROOT / "examples" / "cartpole_factory.py").is_file()
    # The training output folder and its policy_checkpoints/ both work.
    for checkpoint in (out, out / "policy_checkpoints"):
        target = tmp_path / checkpoint.name
        result = invoke("export", CARTPOLE_FACTORY, target, "--checkpoint", checkpoint)
        assert result.exit_code == 0, result.output
        assert "restore" in result.stderr and "ckpt-20, train step 20" in result.stderr
        assert bundle_lib.read_manifest(target)["train_step"] == 20
        np.testing.assert_array_equal(bundle_actions(target, cartpole_time_steps()), actions[20])


def test_export_restores_a_given_step(training_run, tmp_path):
    out, actions = training_run
    result = invoke(
        "export", CARTPOLE_FACTORY, tmp_path / "b", "-c", out, "--step", "10", "-f", "onnx"
    )
    assert result.exit_code == 0, result.output
    assert bundle_lib.read_manifest(tmp_path / "b")["train_step"] == 10
    np.testing.assert_array_equal(
        bundle_actions(tmp_path / "b", cartpole_time_steps()), actions[10]
    )
    result = invoke("export", CARTPOLE_FACTORY, tmp_path / "c", "-c", out, "--step", "99")
    assert result.exit_code == 2
    assert error_line(result) == (
        f"error: {out / 'policy_checkpoints'}: no checkpoint of train step 99; there are [10, 20]"
    )


def test_export_restores_a_weights_only_checkpoint(tmp_path):
    from exporters import save_checkpoint
    from tests.cli_factories import small_cartpole

    trained = small_cartpole(seed=99)
    save_checkpoint(trained, tmp_path / "ckpt", train_step=5)
    result = invoke("export", FACTORY, tmp_path / "b", "-c", tmp_path / "ckpt", "-f", "onnx")
    assert result.exit_code == 0, result.output
    assert bundle_lib.read_manifest(tmp_path / "b")["train_step"] == 5
    time_step = cartpole_time_steps()
    np.testing.assert_array_equal(
        bundle_actions(tmp_path / "b", time_step), tf_actions(trained, time_step)
    )


def test_export_refuses_a_checkpoint_of_other_networks(training_run, tmp_path):
    out, _ = training_run
    result = invoke("export", FACTORY, tmp_path / "b", "--checkpoint", out)
    assert result.exit_code == 2
    assert error_line(result) == (
        f"error: {out / 'policy_checkpoints'}/ckpt-20: expected 4 variables (the factory's "
        "GreedyPolicy), got 6 in the checkpoint: build the same networks as training"
    )
    result = invoke("export", "tests.cli_factories:cartpole_100_40", tmp_path / "b", "-c", out)
    assert result.exit_code == 2
    line = error_line(result)
    assert "model_variables/2" in line
    assert "expected shape (100, 40), got (100, 50)" in line
    assert not (tmp_path / "b").exists()


def test_export_refuses_unsupported_checkpoints(tmp_path):
    import tensorflow as tf

    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("export", FACTORY, tmp_path / "b", "--checkpoint", empty)
    assert result.exit_code == 2
    assert "unsupported checkpoint: expected a training output folder" in error_line(result)

    # A TF checkpoint without the policy's variables (like the full training state).
    state = tmp_path / "state"
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(x=tf.Variable(1.0)), str(state), max_to_keep=1
    )
    manager.save(checkpoint_number=7)
    result = invoke("export", FACTORY, tmp_path / "b", "--checkpoint", state)
    assert result.exit_code == 2
    assert error_line(result) == (
        f"error: {state}/ckpt-7: unsupported checkpoint: it holds no model_variables (a "
        "training-state checkpoint?); pass the policy_checkpoints/ folder that training writes"
    )
    result = invoke("export", FACTORY, tmp_path / "b", "--checkpoint", tmp_path / "nowhere")
    assert result.exit_code == 2
    assert error_line(result) == f"error: {tmp_path / 'nowhere'}: no such checkpoint"


# --- update -----------------------------------------------------------------------------


def test_update_writes_new_weights_into_both_formats(exported, tmp_path):
    from exporters import save_checkpoint, verify
    from tests.cli_factories import small_cartpole

    target = tmp_path / "b"
    shutil.copytree(exported, target)
    retrained = small_cartpole(seed=8)
    save_checkpoint(retrained, tmp_path / "ckpt", train_step=123)
    assert not verify(target, 16, policy=retrained).ok  # the bundle acts otherwise before

    result = invoke("update", target, "--checkpoint", tmp_path / "ckpt")
    assert result.exit_code == 0, result.output
    assert f"updated {target} (saved_model, onnx, golden): train step None -> 123" in result.stdout
    manifest = bundle_lib.read_manifest(target)  # hashes match the new files
    assert manifest["train_step"] == 123
    assert manifest["metadata"] == {"owner": "ci"}
    report = verify(target, 64, policy=retrained)  # the TF policy is the reference
    assert report.ok, str(report)
    assert set(report.forms) == {"tf_policy", "saved_model", "onnx"}
    from runtimes import load_policy

    assert load_policy(target, "onnx").train_step == 123
    # The ONNX file's own copy of the manifest is updated too.
    from toolkit.cli.manifest_view import load_for_inspection

    lone = tmp_path / "lone.onnx"
    shutil.copy(target / "policy.onnx", lone)
    assert load_for_inspection(lone)[0].train_step == 123


def test_update_from_training_checkpoints(training_run, tmp_path):
    out, actions = training_run
    result = invoke("export", CARTPOLE_FACTORY, tmp_path / "b", "-c", out, "--step", "10")
    assert result.exit_code == 0, result.output
    result = invoke("update", tmp_path / "b", "--checkpoint", out)
    assert result.exit_code == 0, result.output
    assert "train step 10 -> 20" in result.stdout
    for backend in ("onnx", "tf"):
        np.testing.assert_array_equal(
            bundle_actions(tmp_path / "b", cartpole_time_steps(), backend), actions[20]
        )


def test_update_refuses_a_checkpoint_of_another_structure(exported, tmp_path):
    from exporters import save_checkpoint
    from tests.cli_factories import cartpole_100_40

    target = tmp_path / "b"
    shutil.copytree(exported, target)
    before = (target / "manifest.json").read_text()
    save_checkpoint(cartpole_100_40(), tmp_path / "ckpt", train_step=1)
    result = invoke("update", target, "--checkpoint", tmp_path / "ckpt")
    assert result.exit_code == 2
    line = error_line(result)
    assert line.startswith(
        f"error: {tmp_path / 'ckpt'}: expected a checkpoint of this bundle's graph (fingerprint "
    )
    assert line.endswith("a checkpoint of another policy structure (use one of this policy's)")
    assert (target / "manifest.json").read_text() == before
    bundle_lib.read_manifest(target)  # untouched: every hash still matches


def test_update_names_the_policy_checkpoints_when_given_a_training_state(exported, tmp_path):
    """A run's checkpoints/ holds the agent (optimizer, replay buffer), not the policy."""
    import tensorflow as tf

    run = tmp_path / "run"
    (run / "policy_checkpoints").mkdir(parents=True)
    agent = tf.Module()
    agent.kernel = tf.Variable(np.ones((4, 2), np.float32))
    state = tf.train.Checkpoint(agent=agent, train_step=tf.Variable(5, dtype=tf.int64))
    tf.train.CheckpointManager(state, str(run / "checkpoints"), 1).save(5)
    target = tmp_path / "b"
    shutil.copytree(exported, target)
    result = invoke("update", target, "--checkpoint", run / "checkpoints")
    assert result.exit_code == 2
    assert error_line(result) == (
        f"error: {run / 'checkpoints' / 'ckpt-5'}: expected a policy checkpoint, got a "
        "training state (an agent with its optimizer and replay buffer: a run's "
        f"checkpoints/); the run's policy checkpoints are in {run / 'policy_checkpoints'} "
        f"(pass that, or the run folder {run})"
    )


@pytest.mark.parametrize("which", ["missing bundle", "missing checkpoint", "unsupported"])
def test_update_input_errors(exported, tmp_path, which):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = {
        "missing bundle": (tmp_path / "nope", empty),
        "missing checkpoint": (exported, tmp_path / "nope"),
        "unsupported": (exported, empty),
    }[which]
    result = invoke("update", args[0], "--checkpoint", args[1])
    assert result.exit_code == 2
    expected = {
        "missing bundle": f"error: {tmp_path / 'nope'}: no such bundle",
        "missing checkpoint": f"error: {tmp_path / 'nope'}: no such checkpoint",
        "unsupported": f"error: {empty}: expected checkpoints: a weights-only checkpoint",
    }[which]
    assert error_line(result).startswith(expected)


def test_manifest_json_matches_inspect_json(exported):
    result = invoke("inspect", exported, "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == json.loads((exported / "manifest.json").read_text())
