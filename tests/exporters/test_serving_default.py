"""Exports carry a ``serving_default`` signature, so TF Serving answers requests that
name no signature: observation in (and step type and state for recurrent policies)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.contract import cases_runtime as cr
from toolkit.trajectories.time_step import StepType


def _io(manifest, which):
    return {
        e["name"]: (e["dtype"], e["shape"])
        for e in manifest["signatures"]["serving_default"][which]
    }


def test_a_feed_forward_policy_takes_the_observation_only():
    import runtimes

    manifest = runtimes.load_policy(cr.bundle("q/dict_obs"), "onnx").manifest
    assert _io(manifest, "inputs") == {
        "observation/position": ("float32", [None, 2]),
        "observation/velocity": ("float64", [None, 3]),
    }
    assert _io(manifest, "outputs") == {"action": ("int32", [None, 1])}


@pytest.mark.slow
def test_a_recurrent_policy_takes_step_type_and_state_and_returns_the_next_state():
    import tensorflow as tf

    import runtimes

    bundle = cr.bundle("rnn/actor_distribution")
    manifest = runtimes.load_policy(bundle, "onnx").manifest
    assert _io(manifest, "inputs") == {
        "observation": ("float32", [None, 4]),
        "step_type": ("int32", [None]),
        "policy_state/0/0": ("float32", [None, 5]),
        "policy_state/0/1": ("float32", [None, 5]),
    }
    assert sorted(_io(manifest, "outputs")) == ["action", "next_state/0/0", "next_state/0/1"]

    # The TF signature's state follows the policy's (MID steps: the state carries on;
    # FIRST: reset), the same as the runtime's distribution graph computes it.
    loaded = tf.saved_model.load(str(bundle / "saved_model"))
    serving = loaded.signatures["serving_default"]
    policy = runtimes.load_policy(bundle, "onnx")
    rng = np.random.default_rng(0)
    observation = rng.normal(size=(3, 4)).astype(np.float32)
    state = [rng.normal(size=(3, 5)).astype(np.float32) for _ in range(2)]
    step_type = np.asarray([StepType.FIRST, StepType.MID, StepType.LAST], np.int32)
    out = serving(
        observation=tf.constant(observation),
        step_type=tf.constant(step_type),
        **{f"policy_state/0/{i}": tf.constant(s) for i, s in enumerate(state)},
    )
    from toolkit.trajectories.time_step import TimeStep

    time_step = TimeStep(step_type, np.zeros(3, np.float32), np.ones(3, np.float32), observation)
    expected = policy.distribution_params(time_step, ((state[0], state[1]),)).state
    np.testing.assert_allclose(out["next_state/0/0"].numpy(), expected[0][0], atol=1e-5)
    np.testing.assert_allclose(out["next_state/0/1"].numpy(), expected[0][1], atol=1e-5)
    action = out["action"].numpy()
    assert action.shape == (3, 3)
    assert np.all(action >= -1.0) and np.all(action <= 2.0)
