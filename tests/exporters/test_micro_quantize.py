"""``quantize --target micro`` (issue 27 item 1): the micro format's int8 model, chosen
and judged by action agreement on real states.

The expected agreement is measured here with the runtimes (the float policy on the
onnx backend, the written bundle on the micro backend) on states replayed independently
of the quantize engine.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import runtimes
from exporters.quantize.source import FloatBundle
from exporters.quantize.states import states_from_env
from toolkit import bundle as bundle_lib
from toolkit.trajectories import time_step as ts

pytest.importorskip("tflite_micro")

EPISODES = 3


@pytest.fixture(scope="module")
def float_bundle():
    from tests.micro_bundles import cartpole_micro

    return cartpole_micro()  # its ONNX graph is what quantize reads


def _actions(path, backend, observations):
    policy = runtimes.load_policy(path, backend)
    step = ts.transition(observations, np.zeros(len(observations), np.float32))
    return np.asarray(policy.action(step).action).reshape(len(observations), -1)


def test_quantize_target_micro_writes_a_micro_bundle_judged_on_agreement(float_bundle, tmp_path):
    from toolkit.cli import app

    runner = CliRunner()
    out = tmp_path / "q"
    args = ["quantize", str(float_bundle), str(out), "--target", "micro", "--env", "CartPole-v1"]
    result = runner.invoke(app, [*args, "-n", str(EPISODES), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["target"] == "micro" and report["written"]
    assert report["method"] == "micro-int8"  # the smaller file, and it passed
    assert [c["method"] for c in report["candidates"]] == ["micro-int8", "micro-int16"]
    # The measured states (all kept for verify: fewer than package.KEPT) are the float
    # policy's episodes (seeds 0...), not the calibration ones; on them, the reported
    # agreement is what TFLite Micro computes against the float policy's actions.
    held = np.fromfile(out / "micro/held_out_states.f32", "<f4").reshape(-1, 4)
    assert report["states"] == len(held)
    episodes = states_from_env(FloatBundle.read(float_bundle), "CartPole-v1", EPISODES, 0)
    np.testing.assert_array_equal(held, episodes.inputs["observation"])
    want = _actions(float_bundle, "onnx", held)
    got = _actions(out, "micro", held)
    assert report["action_agreement"] == pytest.approx(np.mean(np.all(want == got, axis=1)))
    stored = np.fromfile(out / "micro/held_out_actions.bin", "<i4")
    np.testing.assert_array_equal(stored, want.reshape(-1))
    # The bundle holds the micro format only, as export --format micro writes it.
    manifest = bundle_lib.read_manifest(out)  # every hash checks
    assert manifest["formats"] == ["micro"]
    assert manifest["quantization"]["target"] == "micro"
    assert manifest["quantization"]["activations"] == "int8"
    section = manifest["micro"]
    assert section["flash_bytes"] == (out / "micro/policy.tflite").stat().st_size
    assert report["size_after"] == section["flash_bytes"]
    assert (out / "micro/policy_model.cc").read_text().count("alignas(16)") == 1

    # The text report names the agreement; the output runs, benches and verifies.
    shown = runner.invoke(app, [*args, "-n", "1", "--overwrite"])
    assert shown.exit_code == 0, shown.output
    assert "action agreement (real states)" in shown.stdout and "micro-int8" in shown.stdout
    ran = runner.invoke(app, ["run", str(out), "--backend", "micro", "--env", "CartPole-v1"])
    assert ran.exit_code == 0, ran.output
    verified = runner.invoke(app, ["verify", str(out)])
    assert verified.exit_code == 0, verified.output
    assert "held-out real states agree" in verified.stdout


def test_a_continuous_actor_is_judged_by_its_action_error(tmp_path):
    """A Pendulum actor (deterministic, tanh-squashed to the spec): agreement is the share
    of states whose TFLite Micro action is within --tolerance of the action range."""
    from exporters import export_policy
    from exporters.quantize import quantize_bundle
    from toolkit.environments.gym_adapter import GymEnvironment
    from toolkit.networks.actor_network import ActorNetwork
    from toolkit.policies.actor_policy import ActorPolicy
    from toolkit.specs import tensor_spec

    with GymEnvironment("Pendulum-v1") as env:
        time_step_spec = tensor_spec.from_spec(env.time_step_spec())
        action_spec = tensor_spec.from_spec(env.action_spec())
    network = ActorNetwork(time_step_spec.observation, action_spec, fc_layer_params=(32, 32))
    policy = ActorPolicy(time_step_spec, action_spec, network)
    float_bundle = export_policy(policy, tmp_path / "float", formats=["onnx"])
    rng = np.random.default_rng(5)
    angle = rng.uniform(-np.pi, np.pi, 800)
    speed = rng.uniform(-8, 8, 800)
    observations = np.stack([np.cos(angle), np.sin(angle), speed], axis=1).astype(np.float32)
    npz = tmp_path / "states.npz"
    np.savez(npz, observation=observations)
    tolerance = 0.02
    report = quantize_bundle(
        float_bundle, tmp_path / "q", observations=npz, target="micro",
        tolerance=tolerance, min_agreement=0.0,
    )  # fmt: skip
    assert report.written and report.states == 400
    measured = observations[400:]
    want = _actions(float_bundle, "onnx", measured)
    got = _actions(tmp_path / "q", "micro", measured)
    assert got.dtype == np.float32 and np.all(np.abs(got) <= 2.0)
    close = np.all(np.abs(want - got) <= tolerance * 4.0, axis=1)  # the range is [-2, 2]
    assert report.action_agreement == pytest.approx(np.mean(close))
    assert report.action_agreement > 0.9  # int8 is near, not equal, by design


def test_int16_activations_from_recorded_states_and_a_bundle_without_onnx(float_bundle, tmp_path):
    """``--method micro-int16`` on recorded states: calibrated on the first half, measured
    on the second; the output's manifest says int16 and it verifies. A bundle without an
    ONNX graph (the micro-only output) is refused naming what the target reads."""
    from exporters.quantize import micro_target
    from toolkit.cli import app
    from toolkit.errors import BundleError

    rng = np.random.default_rng(3)
    observations = (rng.standard_normal((400, 4)) * [0.5, 0.8, 0.08, 0.8]).astype(np.float32)
    npz = tmp_path / "states.npz"
    np.savez(npz, observation=observations)
    out = tmp_path / "q16"
    args = ["quantize", str(float_bundle), str(out), "--target", "micro", "--observations"]
    result = CliRunner().invoke(app, [*args, str(npz), "--method", "micro-int16", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["method"] == "micro-int16" and report["states"] == 200
    measured = observations[200:]
    want = _actions(float_bundle, "onnx", measured)
    got = _actions(out, "micro", measured)
    assert report["action_agreement"] == pytest.approx(np.mean(np.all(want == got, axis=1)))
    manifest = bundle_lib.read_manifest(out)
    assert manifest["micro"]["activations"] == "int16"
    assert manifest["quantization"]["activations"] == "int16"
    verified = CliRunner().invoke(app, ["verify", str(out)])
    assert verified.exit_code == 0, verified.output
    with pytest.raises(BundleError, match=r"reads the policy's float ONNX graph, and this bundle"):
        micro_target.check(FloatBundle.read(out))


def test_a_recurrent_policy_is_refused_in_one_line_naming_its_state(tmp_path):
    """The micro model is a stateless MLP: a recurrent Q policy is refused before any
    state is read (exit 2, one line naming the policy state), nothing written."""
    from tests.exported_bundles import bundle_for
    from toolkit.cli import app

    path, _ = bundle_for("tf/greedy_q_rnn")
    out = tmp_path / "q"
    result = CliRunner().invoke(
        app, ["quantize", str(path), str(out), "--target", "micro", "--env", "CartPole-v1"]
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert "quantize --target micro: the policy is recurrent (policy state" in lines[0]
    assert not out.exists()


def test_quantize_target_micro_runs_with_tensorflow_blocked(float_bundle, tmp_path):
    """``quantize --target micro`` (distillation included) in a process where TensorFlow
    cannot be imported: it writes a micro bundle that verifies, and loads none of it."""
    from tests.subprocess_utils import run_python

    rng = np.random.default_rng(8)
    observations = (rng.standard_normal((100, 4)) * [0.5, 0.8, 0.08, 0.8]).astype(np.float32)
    npz = tmp_path / "states.npz"
    np.savez(npz, observation=observations)
    out = tmp_path / "q"
    result = run_python(
        f"""
        from exporters.quantize import quantize_bundle
        from toolkit import bundle
        report = quantize_bundle({str(float_bundle)!r}, {str(out)!r}, observations={str(npz)!r},
                                 target="micro", method="micro-int16", min_agreement=0.0)
        assert report.written, report
        assert bundle.read_manifest({str(out)!r})["formats"] == ["micro"]
        tests.tf_blocker.assert_no_heavy_modules()
        print("ok")
        """,
        without_tensorflow=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
