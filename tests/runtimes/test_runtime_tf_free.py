"""The onnx runtime where TensorFlow cannot be imported: load, act, sample, update weights.

This process exports a stateful stochastic policy and a checkpoint with other weights,
and records what the live TF policies compute; a fresh interpreter with TensorFlow
blocked (tests/tf_blocker.py) must reproduce it with numpy and onnxruntime alone.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.contract import cases_runtime as cr
from tests.contract.case import sample_time_step
from tests.subprocess_utils import run_python
from toolkit import distribution_families as families

KIND = "rnn/actor_distribution"


@pytest.mark.slow
def test_onnx_runtime_without_tensorflow(tmp_path):
    from exporters.checkpoint import save_checkpoint

    bundle = cr.bundle(KIND)
    updated = cr.set_weights(cr.live(KIND), 999)
    checkpoint = save_checkpoint(updated, tmp_path / "ckpt", train_step=42)
    original = cr.live(KIND)
    rng = np.random.default_rng(0)
    time_step = sample_time_step(original.time_step_spec, (3,), rng)
    state = [rng.normal(size=(3, 5)).astype(np.float32) for _ in range(2)]
    live_state = ((state[0], state[1]),)
    expected = {}
    for name, policy in (("before", original), ("after", updated)):
        params, next_state, _ = policy.distribution_params(time_step, live_state)
        for path, value in families.flatten_params(params, "distribution"):
            expected[f"{name}:{path}"] = value.numpy()
        expected[f"{name}:state"] = next_state[0][0].numpy()
    np.savez(
        tmp_path / "inputs.npz",
        step_type=time_step.step_type,
        reward=time_step.reward,
        discount=time_step.discount,
        observation=time_step.observation,
        state0=state[0],
        state1=state[1],
        **{k.replace("/", "|"): v for k, v in expected.items()},
    )
    result = run_python(
        f"""
        import sys
        import numpy as np
        import runtimes
        from runtimes import distributions
        from toolkit.errors import UnsupportedError
        from toolkit.trajectories.time_step import TimeStep

        data = np.load({str(tmp_path / "inputs.npz")!r})
        expected = {{k.replace("|", "/"): data[k] for k in data.files if ":" in k}}
        time_step = TimeStep(data["step_type"], data["reward"], data["discount"],
                             data["observation"])
        state = ((data["state0"], data["state1"]),)

        policy = runtimes.load_policy({str(bundle)!r}, seed=0)  # auto: onnx
        assert policy.backend == "onnx", policy.backend
        assert policy.train_step == 7

        def check(tag):
            step = policy.distribution(time_step, state)
            normal = step.action
            assert isinstance(normal, distributions.Normal), normal
            np.testing.assert_allclose(normal.loc, expected[tag + ":distribution/loc"],
                                       atol=1e-5)
            np.testing.assert_allclose(normal.scale, expected[tag + ":distribution/scale"],
                                       atol=1e-5)
            np.testing.assert_allclose(step.state[0][0], expected[tag + ":state"], atol=1e-5)
            return normal

        normal = check("before")
        sample = normal.sample(7)
        assert sample.shape == (3, 3)
        np.testing.assert_array_equal(sample, normal.sample(7))
        # Acting: seeded actions repeat, state carries over, actions stay in bounds.
        first = policy.action(time_step, state, seed=3)
        again = policy.action(time_step, state, seed=3)
        np.testing.assert_array_equal(first.action, again.action)
        assert first.action.dtype == np.float32 and first.action.shape == (3, 3)
        assert np.all(first.action >= -1.0) and np.all(first.action <= 2.0)
        step = policy.action(time_step, first.state)
        assert step.state[0][0].shape == (3, 5)

        policy.update_from_checkpoint({str(checkpoint)!r})
        assert policy.train_step == 42
        check("after")

        try:
            runtimes.load_policy({str(bundle)!r}, "tf")
        except UnsupportedError as e:
            assert "needs TensorFlow" in str(e), e
        else:
            raise AssertionError("the tf backend loaded without TensorFlow")
        tests.tf_blocker.assert_no_heavy_modules()
        print("ok")
        """,
        without_tensorflow=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_importing_runtimes_loads_neither_onnxruntime_nor_tensorflow():
    result = run_python(
        """
        import sys
        import runtimes, runtimes.policy, runtimes.distributions, runtimes.backends.tf
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("onnxruntime", "tensorflow"))
        assert not loaded, loaded
        print("ok")
        """,
        without_tensorflow=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.slow
def test_litert_runtime_without_tensorflow():
    bundle = cr.bundle(KIND)
    original = cr.live(KIND)
    rng = np.random.default_rng(1)
    time_step = sample_time_step(original.time_step_spec, (3,), rng)
    params, _, _ = original.distribution_params(time_step, original.get_initial_state(3))
    loc = dict(families.flatten_params(params, "distribution"))["distribution/loc"].numpy()
    result = run_python(
        f"""
        import sys
        import numpy as np
        import runtimes
        from toolkit.trajectories.time_step import TimeStep

        time_step = TimeStep(np.array({time_step.step_type.tolist()}, np.int32),
                             np.array({time_step.reward.tolist()}, np.float32),
                             np.array({time_step.discount.tolist()}, np.float32),
                             np.array({time_step.observation.tolist()}, np.float32))
        policy = runtimes.load_policy({str(bundle)!r}, "litert", seed=0)
        step = policy.distribution(time_step, policy.get_initial_state(3))
        np.testing.assert_allclose(step.action.loc, np.array({loc.tolist()}), atol=1e-5)
        acted = policy.action(time_step, policy.get_initial_state(3), seed=1)
        assert acted.action.shape == (3, 3)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in
                       ("tensorflow", "tensorflow_probability", "tf2onnx", "keras", "onnxruntime"))
        assert not heavy, heavy
        print("ok")
        """,
        without_tensorflow=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
    assert "XNNPACK" not in result.stderr
