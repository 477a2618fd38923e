"""The CLI's import-tf-agents command, and update with a TF-Agents checkpoint.

Checked against the recordings TF-Agents 0.19 made of its own saved policies
(tests/tf_agents_saved.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.tf_agents_saved import recording, saved_policy
from toolkit import bundle as bundle_lib
from toolkit.cli import app
from toolkit.trajectories import time_step as ts

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def recorded_time_step() -> ts.TimeStep:
    rec = recording("q_greedy")
    n = len(rec["step_type"])
    return ts.TimeStep(
        rec["step_type"].astype(np.int32),
        np.zeros(n, np.float32),
        np.ones(n, np.float32),
        rec["observation"],
    )


def actions(bundle, backend: str) -> np.ndarray:
    from runtimes import load_policy

    return np.asarray(load_policy(bundle, backend).action(recorded_time_step()).action)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    path = tmp_path_factory.mktemp("import") / "q_greedy"
    result = invoke("import-tf-agents", saved_policy("q_greedy"), path, "-m", "team=rl")
    assert result.exit_code == 0, result.output
    return path, result


def test_import_writes_a_verified_bundle_that_acts_like_tf_agents(imported):
    path, result = imported
    assert f"imported distribution of {saved_policy('q_greedy')} -> {path}" in result.stdout
    assert f"verify {path}: OK" in result.stdout
    assert "✓ import" in result.stderr and "✓ verify: OK" in result.stderr
    metadata = bundle_lib.read_manifest(path)["metadata"]
    assert metadata["team"] == "rl" and metadata["imported_from"] == "tf_agents"
    for backend in ("onnx", "tf"):
        np.testing.assert_array_equal(actions(path, backend), recording("q_greedy")["action"])


def test_update_takes_a_tf_agents_checkpoint(imported, tmp_path):
    import shutil

    import tensorflow as tf

    from exporters import tf_agents as tai

    path = tmp_path / "b"
    shutil.copytree(imported[0], path)
    # A PolicySaver.save_checkpoint-style output with the Q-value layer negated.
    loaded = tai.load_saved_policy(saved_policy("q_greedy"))
    for variable in loaded.model_variables:
        if variable.name.startswith("QNetwork/dense_2/"):
            variable.assign(-variable)
    loaded.train_step.assign(7)
    tf.train.Checkpoint(
        policy=loaded, model_variables=loaded.model_variables, train_step=loaded.train_step
    ).write(str(tmp_path / "ckpt" / "variables" / "variables"))

    result = invoke("update", path, "--checkpoint", tmp_path / "ckpt")
    assert result.exit_code == 0, result.output
    assert "(saved_model, onnx, golden): train step None -> 7" in result.stdout
    rec = recording("q_greedy")
    # Negated Q-values over two actions: the greedy action flips wherever there was no tie.
    no_tie = rec["distribution/logits"][:, 0] != rec["distribution/logits"][:, 1]
    assert no_tie.sum() > 20
    for backend in ("onnx", "tf"):
        np.testing.assert_array_equal(actions(path, backend)[no_tie], 1 - rec["action"][no_tie])


def test_import_errors(imported, tmp_path):
    result = invoke("import-tf-agents", tmp_path / "nope", tmp_path / "b")
    assert result.exit_code == 2
    assert result.stderr == f"error: {tmp_path / 'nope'}: no such SavedModel folder\n"

    result = invoke("import-tf-agents", saved_policy("q_greedy"), imported[0])
    assert result.exit_code == 2
    assert (
        result.stderr == f"error: {imported[0]}: already exists; pass --overwrite to replace it\n"
    )

    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("import-tf-agents", empty, tmp_path / "b")
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert lines[-1].startswith(f"error: {empty}")
    assert "Traceback" not in result.output and not (tmp_path / "b").exists()
