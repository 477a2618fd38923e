"""update and follow on the onnx backend where TensorFlow cannot be imported.

This process exports ONNX-only bundles from fresh weights and writes TF checkpoints of
trained weights (the toolkit's training layout; TF-Agents' trigger layout from
tests/data); a fresh interpreter with TensorFlow blocked (tests/tf_blocker.py) applies
them with ``update_from_checkpoint``, ``follow`` and the CLI's ``update``. Every trigger
kind following its checkpoints without TensorFlow is checked in
tests/exporters/test_tf_agents_trigger.py, on the bundles that file imports anyway.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from exporters import export_policy
from exporters.tf_agents.layout import import_tf_agents_layout
from tests.exported_bundles import tf_policy_for
from tests.subprocess_utils import run_python
from toolkit import distribution_families as families
from toolkit.trajectories.time_step import TimeStep

TRIGGER = Path(__file__).resolve().parent.parent / "data" / "tf_agents_trigger" / "dqn"
CASE = "tf/gaussian_actor"


@pytest.mark.slow
def test_update_and_follow_without_tensorflow(tmp_path):
    policy = tf_policy_for(CASE)
    for variable in policy.variables():
        if len(variable.shape) == 1:
            variable.assign(tf.zeros_like(variable))
    native = export_policy(policy, tmp_path / "native", formats=("onnx",), train_step=0)
    rng = np.random.default_rng(3)
    for variable in policy.variables():
        variable.assign(variable + rng.normal(0, 0.3, variable.shape).astype(np.float32))
    step = tf.Variable(120, dtype=tf.int64)
    tf.train.CheckpointManager(
        tf.train.Checkpoint(policy=policy, train_step=step), str(tmp_path / "run"), 2
    ).save(120)
    observation = rng.normal(size=(3, 4)).astype(np.float32)
    time_step = [np.ones(3, np.int32), np.zeros(3, np.float32), np.ones(3, np.float32)]
    params, _, _ = policy.distribution_params(
        TimeStep(*map(tf.constant, time_step), tf.constant(observation)), ()
    )
    loc = dict(families.flatten_params(params, "distribution"))["distribution/loc"].numpy()
    imported = import_tf_agents_layout(TRIGGER, tmp_path / "dqn", formats=("onnx",))
    copy = shutil.copytree(imported, tmp_path / "dqn-cli")
    with np.load(TRIGGER / "expected.npz") as data:
        dqn_observation, dqn_300 = data["observation"], data["300/greedy_policy/action"]
    np.savez(
        tmp_path / "data.npz",
        observation=observation,
        loc=loc,
        dqn_observation=dqn_observation,
        dqn_300=dqn_300,
    )
    checkpoints = TRIGGER / "policies" / "checkpoints"
    result = run_python(
        f"""
        import sys, time
        import numpy as np
        import runtimes
        from toolkit.cli import app
        from toolkit.trajectories.time_step import TimeStep

        data = np.load({str(tmp_path / "data.npz")!r})
        policy = runtimes.load_policy({str(native)!r}, "onnx")
        policy.update_from_checkpoint({str(tmp_path / "run")!r})
        assert policy.train_step == 120, policy.train_step
        ts = TimeStep(np.ones(3, np.int32), np.zeros(3, np.float32), np.ones(3, np.float32),
                      data["observation"])
        loc = policy.distribution_params(ts).action.parameters()["loc"]
        np.testing.assert_allclose(loc, data["loc"], atol=1e-5)

        dqn = runtimes.load_policy({str(imported)!r}, "onnx")
        n = len(data["dqn_observation"])
        step_type = np.zeros(n, np.int32)
        step_type[n // 2:] = 1
        ts = TimeStep(step_type, np.zeros(n, np.float32), np.ones(n, np.float32),
                      data["dqn_observation"])
        with dqn.follow({str(checkpoints)!r}, interval=0.05) as follower:
            deadline = time.monotonic() + 30
            while dqn.train_step != 300 and time.monotonic() < deadline:
                time.sleep(0.05)
        assert dqn.train_step == 300 and follower.applied == 1, follower
        np.testing.assert_array_equal(dqn.action(ts).action, data["dqn_300"])

        try:
            app(["update", {str(copy)!r}, "--checkpoint", {str(checkpoints)!r}, "--step", "150"])
        except SystemExit as e:
            assert e.code in (0, None), e.code
        assert "tensorflow" not in sys.modules
        print("TF-FREE OK")
        """,
        without_tensorflow=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "TF-FREE OK" in result.stdout
    assert "train step 0 -> 150" in result.stdout
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["train_step"] == 150
