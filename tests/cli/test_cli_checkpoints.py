"""CLI: import-tf-agents from a trigger's output with --checkpoint, update with TF-Agents'
checkpoints folder, and run --follow reporting each episode's train step."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from typer.testing import CliRunner

import runtimes
from exporters import export_policy
from tests import cli_factories
from toolkit.cli import app
from toolkit.trajectories.time_step import TimeStep

runner = CliRunner()
DATA = Path(__file__).resolve().parent.parent / "data" / "tf_agents_trigger" / "dqn"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _greedy_actions(bundle: Path) -> np.ndarray:
    with np.load(DATA / "expected.npz") as data:
        observation = data["observation"]
    batch = len(observation)
    step_type = np.zeros(batch, np.int32)
    step_type[batch // 2 :] = 1
    policy = runtimes.load_policy(bundle, "onnx")
    time_step = TimeStep(
        step_type, np.zeros(batch, np.float32), np.ones(batch, np.float32), observation
    )
    return np.asarray(policy.action(time_step).action)


def _expected(key: str) -> np.ndarray:
    with np.load(DATA / "expected.npz") as data:
        return data[key]


@pytest.mark.slow
def test_import_trigger_output_with_a_checkpoint_then_update_to_another(tmp_path):
    bundle = tmp_path / "b"
    result = invoke(
        "import-tf-agents", DATA, bundle, "--policy", "greedy_policy", "--checkpoint", "latest"
    )
    assert result.exit_code == 0, result.output
    saved = DATA / "policies" / "greedy_policy"
    assert f"of {saved}, train step 300 -> {bundle}" in result.stdout
    np.testing.assert_array_equal(_greedy_actions(bundle), _expected("300/greedy_policy/action"))

    checkpoints = DATA / "policies" / "checkpoints"
    result = invoke("update", bundle, "--checkpoint", checkpoints, "--step", "150")
    assert result.exit_code == 0, result.output
    # The golden vectors take the new weights' outputs too.
    assert "(saved_model, onnx, golden): train step 300 -> 150" in result.stdout
    np.testing.assert_array_equal(_greedy_actions(bundle), _expected("150/greedy_policy/action"))

    result = invoke("update", bundle, "--checkpoint", checkpoints, "--step", "7")
    assert result.exit_code == 2
    assert f"{checkpoints}: no checkpoint of train step 7; there are [150, 300]" in result.stderr


def test_import_option_errors(tmp_path):
    result = invoke("import-tf-agents", DATA, tmp_path / "b", "--policy", "best")
    assert result.exit_code == 2
    assert "expected one of policy, greedy_policy, collect_policy, got 'best'" in result.output
    result = invoke("import-tf-agents", DATA, tmp_path / "b", "--checkpoint", "newest")
    assert result.exit_code == 2
    assert "expected 'latest' or a train step, got 'newest'" in result.output
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_run_follow_reports_the_train_step_of_each_episode(tmp_path):
    policy = cli_factories.small_cartpole(seed=3)
    bundle = export_policy(policy, tmp_path / "bundle", formats=("onnx",), train_step=0)
    step = tf.Variable(77, dtype=tf.int64)
    run = tmp_path / "run" / "policy_checkpoints"
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(policy=cli_factories.small_cartpole(seed=4), train_step=step),
        str(run),
        max_to_keep=2,
    )
    manager.save(checkpoint_number=77)
    result = invoke(
        "run", bundle, "--env", "CartPole-v1", "--episodes", "2", "--follow", tmp_path / "run"
    )
    assert result.exit_code == 0, result.output
    assert "episode 0: return" in result.stdout and "train step 77" in result.stdout
    assert "episode 1: return" in result.stdout
    result = invoke(
        "run",
        bundle,
        "--env",
        "CartPole-v1",
        "--episodes",
        "1",
        "--follow",
        tmp_path / "run",
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["train_steps"] == [[77, 77]]
