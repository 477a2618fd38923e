"""The micro format (issue 27): an int8 TFLite Micro model of the deterministic action.

One export (module fixture) of a 100-40 greedy Q policy, calibrated on CartPole-v1, is
shared by the tests. The int8 arithmetic is checked three ways that do not share code:
numpy's replay of the kernels (``int8.simulate``) against TFLite Micro's interpreter,
the micro actions against the float ONNX graph's on held-out real states, and
``verify``'s agreement check, which must fail when the stored float actions are wrong.
"""

from __future__ import annotations

import contextlib
import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.cli_factories import cartpole_100_40
from toolkit import bundle
from toolkit.errors import BundleError, ExportError

pytest.importorskip("tflite_micro")


@pytest.fixture(scope="module")
def micro_bundle():
    from tests.micro_bundles import cartpole_micro

    return cartpole_micro()


def _interpreter(model: bytes, arena: int):
    from tflite_micro.python.tflite_micro import runtime

    return runtime.Interpreter.from_bytes(model, arena_size=arena)


def test_the_folder_holds_model_c_array_ops_arena_and_golden_vectors(micro_bundle):
    layout = bundle.read_layout(micro_bundle)
    section = layout.format("micro").section
    model = (micro_bundle / "micro/policy.tflite").read_bytes()
    assert model[4:8] == b"TFL3"
    assert section["flash_bytes"] == len(model)
    assert list(section["ops"]) == ["MUL", "ADD", "QUANTIZE", "FULLY_CONNECTED", "ARG_MAX"]
    source = (micro_bundle / "micro/policy_model.cc").read_text()
    header = (micro_bundle / "micro/policy_model.h").read_text()
    # The C array is the model, byte for byte, 16-byte aligned.
    array = re.search(
        r"alignas\(16\) const unsigned char g_policy_model\[\] = \{(.*?)\};", source, re.S
    )
    assert bytes(int(b, 16) for b in re.findall(r"0x([0-9a-f]{2})", array.group(1))) == model
    assert f"#define POLICY_MODEL_ARENA_BYTES {section['arena_bytes']}" in header
    assert "(resolver).AddFullyConnected();" in header and "(resolver).AddArgMax();" in header
    # Quantization parameters: int8 per channel, one entry per dense layer.
    layers = section["quantization"]["layers"]
    assert [layer["activation"] for layer in layers] == ["relu", "relu", "linear"]
    assert section["activations"] == "int8"


def test_the_measured_arena_is_the_smallest_tflite_micro_runs_in(micro_bundle):
    from runtimes.backends import micro

    section = bundle.read_layout(micro_bundle).format("micro").section
    model = (micro_bundle / "micro/policy.tflite").read_bytes()
    arena = section["arena_bytes"]
    # Each try in a forked child (an arena too small can crash this tflite-micro release).
    assert micro._fits(model, arena) and not micro._fits(model, arena - 16)
    assert micro.arena_bound(model) >= arena


def test_the_golden_vectors_are_what_tflite_micro_computes(micro_bundle):
    section = bundle.read_layout(micro_bundle).format("micro").section
    source = (micro_bundle / "micro/policy_model.cc").read_text()
    inputs = re.search(r"g_policy_golden_inputs\[\] = \{(.*?)\};", source, re.S).group(1)
    outputs = re.search(r"g_policy_golden_outputs\[\] = \{(.*?)\};", source, re.S).group(1)
    x = np.array([float(v.strip().rstrip("f")) for v in inputs.split(",")], np.float32)
    want = [int(v) for v in outputs.split(",")]
    interpreter = _interpreter(
        (micro_bundle / "micro/policy.tflite").read_bytes(), section["arena_bytes"]
    )
    got = []
    for row in x.reshape(-1, 4):
        interpreter.set_input(row[None], 0)
        interpreter.invoke()
        got.append(int(interpreter.get_output(0)[0]))
    assert got == want and len(got) == 16


def test_micro_actions_agree_with_the_float_graph_on_held_out_real_states(micro_bundle):
    from exporters.formats import micro
    from runtimes import load_policy
    from toolkit.trajectories import time_step as ts

    layout = bundle.read_layout(micro_bundle)
    states, _ = micro.read_held_out(micro_bundle, layout)
    float_policy = load_policy(micro_bundle, backend="onnx")
    want = float_policy.action(ts.restart(states, batch_size=len(states))).action
    model = _interpreter(
        (micro_bundle / "micro/policy.tflite").read_bytes(),
        layout.format("micro").section["arena_bytes"],
    )
    got = []
    for row in states:
        model.set_input(row[None], 0)
        model.invoke()
        got.append(int(model.get_output(0)[0]))
    assert len(states) >= 20
    assert np.mean(np.asarray(got) == want) >= 0.95


def test_the_int8_arithmetic_replayed_in_numpy_is_tflite_micros_exactly():
    """``int8.simulate`` (the quantizer's model of the kernels) against the interpreter, on
    a random MLP with ReLU and tanh and states far outside the calibration range."""
    from exporters.micro import int8, tflite_model
    from exporters.micro.mlp import Dense, Head, Mlp

    rng = np.random.default_rng(0)
    layers = (
        Dense("a", rng.normal(0, 0.5, (5, 16)), rng.normal(0, 0.1, 16), "relu"),
        Dense("b", rng.normal(0, 0.5, (16, 8)), rng.normal(0, 0.1, 8), "tanh"),
        Dense("c", rng.normal(0, 0.5, (8, 3)), rng.normal(0, 0.1, 3), "linear"),
    )
    mlp = Mlp(("observation",), (5,), layers, Head("argmax", "int64", (), shift=0))
    scale = np.array([1.0, 10.0, 0.1, 100.0, 1.0])
    model = int8.quantize(mlp, rng.normal(0, 1, (400, 5)) * scale)
    data = tflite_model.build(model)
    x = (rng.normal(0, 2, (300, 5)) * scale).astype(np.float32)
    interpreter = _interpreter(data, 1 << 16)
    got = []
    for row in x:
        interpreter.set_input(row[None], 0)
        interpreter.invoke()
        got.append(int(interpreter.get_output(0)[0]))
    np.testing.assert_array_equal(int8.simulate(model, x), got)
    assert np.mean(mlp.act(x) == np.asarray(got)) > 0.8


def test_verify_checks_agreement_on_the_held_out_states_and_can_fail(micro_bundle, tmp_path):
    import shutil

    from exporters import verify

    report = verify(micro_bundle)
    assert report.ok, str(report)
    row = [r for r in report.rows if r.form == "micro"]
    assert len(row) == 1 and "held-out real states agree" in row[0].output
    # The float actions flipped (and the files rehashed): the agreement check fails.
    copy = tmp_path / "flipped"
    shutil.copytree(micro_bundle, copy)
    actions = copy / "micro/held_out_actions.bin"
    flipped = 1 - np.frombuffer(actions.read_bytes(), "<i4")
    actions.write_bytes(flipped.astype("<i4").tobytes())
    _rehash(copy)
    report = verify(copy)
    assert not report.ok
    assert [r.form for r in report.failures()] == ["micro"]


def _rehash(root) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"] = bundle.hash_files(root)
    (root / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("rel", ["micro/policy.tflite", "micro/held_out_states.f32"])
def test_a_mutated_micro_file_with_rewritten_hashes_gives_only_a_bundle_error(
    micro_bundle, tmp_path, rel
):
    import shutil

    from exporters import verify

    rng = np.random.default_rng(1)
    for trial in range(6):
        copy = tmp_path / f"m{trial}"
        shutil.copytree(micro_bundle, copy)
        data = bytearray((copy / rel).read_bytes())
        if trial == 0:
            data = data[: len(data) // 2]  # truncated
        else:
            for i in rng.integers(0, len(data), 8):
                data[i] = int(rng.integers(0, 256))
        (copy / rel).write_bytes(bytes(data))
        _rehash(copy)
        with contextlib.suppress(BundleError):  # or a report: never another error
            verify(copy)


def test_export_without_real_states_is_refused():
    from exporters import export_policy

    with pytest.raises(ExportError, match="micro export: expected real states to calibrate on"):
        export_policy(cartpole_100_40(), "/nonexistent/never", formats=["micro"])


def test_the_cli_exports_inspects_and_verifies_micro(tmp_path):
    from toolkit.cli import app

    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["export", "tests.cli_factories:small_cartpole", str(out), "--format", "onnx,micro"]
    result = runner.invoke(app, [*args, "--env", "CartPole-v1", "-n", "2"])
    assert result.exit_code == 0, result.output
    assert "held-out real states agree" in result.stdout
    shown = runner.invoke(app, ["inspect", str(out)])
    assert shown.exit_code == 0, shown.output
    assert re.search(r"micro/policy.tflite: int8, flash \d+ bytes, arena \d+ bytes", shown.stdout)
    # inspect says when the micro model is a fine-tuned student (the float policy is not).
    weights = bundle.read_layout(out).format("micro").section["quantization"]["weights"]
    text = " ".join(shown.stdout.split())  # the table wraps long lines
    assert ("weights: a student fine-tuned" in text) == weights.startswith("a student")
    refused = runner.invoke(app, [*args[:2], str(tmp_path / "no_env"), "--format", "micro"])
    assert refused.exit_code == 2
    assert (
        refused.stderr.strip()
        .splitlines()[-1]
        .startswith("error: micro export: expected real states to calibrate on")
    )


def test_the_16x8_arithmetic_replayed_in_numpy_is_tflite_micros_exactly():
    """int16 activations (the fallback of ``activations="auto"``): the replay against the
    interpreter again, ReLU, tanh and a discrete head (DEQUANTIZE before ARG_MAX)."""
    from exporters.micro import int8, tflite_model
    from exporters.micro.mlp import Dense, Head, Mlp

    rng = np.random.default_rng(1)
    layers = (
        Dense("a", rng.normal(0, 0.5, (4, 12)), rng.normal(0, 0.1, 12), "relu"),
        Dense("b", rng.normal(0, 0.5, (12, 6)), rng.normal(0, 0.1, 6), "tanh"),
        Dense("c", rng.normal(0, 0.5, (6, 2)), rng.normal(0, 0.1, 2), "linear"),
    )
    mlp = Mlp(("observation",), (4,), layers, Head("argmax", "int64", (), shift=0))
    calibration = rng.normal(0, 1, (400, 4))
    model = int8.quantize(mlp, calibration, bits=16)
    x = rng.normal(0, 1.5, (300, 4)).astype(np.float32)
    interpreter = _interpreter(tflite_model.build(model), 1 << 16)
    got = []
    for row in x:
        interpreter.set_input(row[None], 0)
        interpreter.invoke()
        got.append(int(interpreter.get_output(0)[0]))
    np.testing.assert_array_equal(int8.simulate(model, x), got)
    assert np.mean(mlp.act(x) == np.asarray(got)) > 0.97


def test_a_continuous_head_in_tflite_micro_is_the_replay_and_near_the_float_action():
    from exporters.micro import int8, tflite_model
    from exporters.micro.mlp import Dense, Head, Mlp

    rng = np.random.default_rng(3)
    layers = (
        Dense("a", rng.normal(0, 0.5, (3, 16)), rng.normal(0, 0.1, 16), "relu"),
        Dense("b", rng.normal(0, 0.5, (16, 1)), rng.normal(0, 0.1, 1), "tanh"),
    )
    head = Head(
        "affine", "float32", (1,), scale=np.array([2.0]), offset=np.array([0.0]),
        low=np.array([-2.0]), high=np.array([2.0]),
    )  # fmt: skip
    mlp = Mlp(("observation",), (3,), layers, head)
    model = int8.quantize(mlp, rng.normal(0, 1, (400, 3)))
    x = rng.normal(0, 1, (200, 3)).astype(np.float32)
    interpreter = _interpreter(tflite_model.build(model), 1 << 16)
    got = []
    for row in x:
        interpreter.set_input(row[None], 0)
        interpreter.invoke()
        got.append(np.array(interpreter.get_output(0)).reshape(-1))
    got = np.stack(got)
    np.testing.assert_allclose(got, int8.simulate(model, x), atol=1e-6)
    # int8 differs from the float action by design: within 5% of the action range here.
    assert np.max(np.abs(got - mlp.act(x))) < 0.05 * 4.0


def _near_tie_q_network(seed: int):
    """A ReLU Q-network whose two Q-values differ by a few hundredths of their size (a
    trained CartPole policy's are a thousandth), and states of CartPole-like spreads."""
    from exporters.micro.mlp import Dense, Head, Mlp

    rng = np.random.default_rng(seed)
    head = rng.normal(0, 0.3, (16, 1))
    near = np.hstack([head, head + rng.normal(0, 0.005, (16, 1))])
    layers = (
        Dense("a", rng.normal(0, 0.7, (4, 32)), rng.normal(0, 0.2, 32), "relu"),
        Dense("b", rng.normal(0, 0.3, (32, 16)), rng.normal(0, 0.2, 16), "relu"),
        Dense("c", near, np.full(2, 5.0), "linear"),
    )
    mlp = Mlp(("observation",), (4,), layers, Head("argmax", "int64", (), shift=0))
    scale = np.array([0.1, 0.5, 0.05, 0.5])
    return mlp, rng.normal(0, 1, (600, 4)) * scale, rng.normal(0, 1, (300, 4)) * scale


@pytest.mark.parametrize("bits", [8, 16])
def test_a_fine_tuned_student_starts_as_the_gptq_model_and_replays_exactly(bits):
    """Quantization-aware fine-tuning (``distill``): step 0 has ``int8.quantize``'s integer
    weights and biases (so choosing the student on calibration states is a fair comparison), the
    trained student is deterministic given its seed, TFLite Micro computes exactly what
    ``int8.simulate`` replays for it, and the model ``calibrated`` keeps agrees with the
    float policy on at least as many calibration states as the GPTQ model."""
    from exporters.micro import distill, int8, package, tflite_model

    mlp, calibration, x = _near_tie_q_network(1)
    decisions = np.argmax(mlp.hidden(calibration)[-1], axis=1)
    base = int8.quantize(mlp, calibration, bits)
    start = distill.fine_tune(mlp, calibration, bits, steps=0, start=base)
    same = start.quantize(calibration, bits, decisions)
    for a, b in zip(base.layers, same.layers, strict=True):
        np.testing.assert_array_equal(a.weight, b.weight)
        np.testing.assert_array_equal(a.bias, b.bias)
        # The head's output scale is searched again, from its int32 (rounded) biases.
        assert a.output_zp == b.output_zp
        assert a.output_scale == pytest.approx(b.output_scale, rel=1e-3)

    student = distill.fine_tune(mlp, calibration, bits, steps=60, check=20, start=base)
    again = distill.fine_tune(mlp, calibration, bits, steps=60, check=20, start=base)
    assert student.steps == again.steps
    for a, b in zip(student.mlp.layers, again.mlp.layers, strict=True):
        np.testing.assert_array_equal(a.weight, b.weight)
    model = student.quantize(calibration, bits, decisions)
    assert model.bits == bits and model.fine_tuned == student.steps
    interpreter = _interpreter(tflite_model.build(model), 1 << 16)
    got = []
    for row in x.astype(np.float32):
        interpreter.set_input(row[None], 0)
        interpreter.invoke()
        got.append(int(interpreter.get_output(0)[0]))
    np.testing.assert_array_equal(int8.simulate(model, x.astype(np.float32)), got)

    def agreement(candidate):
        return np.mean(int8.simulate(candidate, calibration.astype(np.float32)) == decisions)

    kept = package.calibrated(mlp, calibration, bits, steps=100)
    assert agreement(kept) >= agreement(base)
    described = kept.to_json()["weights"]
    assert ("fine-tuned" in described) == (kept.fine_tuned > 0)


def test_a_continuous_actor_is_not_fine_tuned():
    """Distillation is for argmax heads (ReLU/linear hidden layers); a tanh actor keeps
    ``int8.quantize``'s model, the policy's own weights."""
    from exporters.micro import distill, package
    from exporters.micro.mlp import Dense, Head, Mlp

    rng = np.random.default_rng(4)
    layers = (
        Dense("a", rng.normal(0, 0.5, (3, 8)), rng.normal(0, 0.1, 8), "relu"),
        Dense("b", rng.normal(0, 0.5, (8, 1)), rng.normal(0, 0.1, 1), "tanh"),
    )
    head = Head("affine", "float32", (1,), scale=np.full(1, 2.0), offset=np.zeros(1),
                low=np.full(1, -2.0), high=np.full(1, 2.0))  # fmt: skip
    mlp = Mlp(("observation",), (3,), layers, head)
    calibration = rng.normal(0, 1, (200, 3))
    assert distill.fine_tune(mlp, calibration, 8) is None
    assert package.calibrated(mlp, calibration, 8).fine_tuned == 0
