"""The c format and backend (issue 27): the deterministic action as dependency-free C99."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from toolkit import bundle
from toolkit.errors import BundleError
from toolkit.trajectories import time_step as ts

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")


@pytest.fixture(scope="module")
def float_bundle():
    from tests.micro_bundles import cartpole_c

    return cartpole_c()


@pytest.fixture(scope="module", params=["float32", "int8"])
def c_bundle(request):
    """The C export with float32 weights, then with int8 weights (``c_weights``)."""
    from tests.micro_bundles import cartpole_c, cartpole_c_int8

    return cartpole_c() if request.param == "float32" else cartpole_c_int8()


def _cc(folder, *flags):
    command = ["cc", "-std=c99", "-Wall", "-Wextra", "-Werror", *flags, "-o", "golden"]
    command += ["policy.c", "policy_main.c", "-lm"]
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return subprocess.run(["./golden"], cwd=folder, capture_output=True, text=True, timeout=60)


def test_the_golden_main_compiles_without_warnings_and_passes(c_bundle, tmp_path):
    shutil.copytree(c_bundle / "c", tmp_path / "c")
    run = _cc(tmp_path / "c", "-O2")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == "16 of 16 golden vectors pass"


def test_address_and_undefined_sanitizers_run_clean_over_the_golden_vectors(c_bundle, tmp_path):
    shutil.copytree(c_bundle / "c", tmp_path / "c")
    run = _cc(
        tmp_path / "c", "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"
    )
    assert run.returncode == 0 and run.stderr == "", run.stdout + run.stderr


def test_a_wrong_golden_vector_fails_the_main(float_bundle, tmp_path):
    folder = tmp_path / "c"
    shutil.copytree(float_bundle / "c", folder)
    main = (folder / "policy_main.c").read_text()
    start = main.index("want[16] = {") + len("want[16] = {")
    flipped = "1" if main[start] == "0" else "0"
    (folder / "policy_main.c").write_text(main[:start] + flipped + main[start + 1 :])
    run = _cc(folder, "-O2")
    assert run.returncode == 1 and run.stdout.strip() == "15 of 16 golden vectors pass"


def test_the_c_backend_agrees_with_the_float_graph(c_bundle):
    from exporters.formats import micro
    from runtimes import load_policy

    layout = bundle.read_layout(c_bundle)
    states, want = micro.read_held_out(c_bundle, layout, "c")
    c_policy = load_policy(c_bundle, backend="c")
    onnx_policy = load_policy(c_bundle, backend="onnx")
    step = ts.restart(states, batch_size=len(states))
    got = c_policy.action(step).action
    float_actions = onnx_policy.action(step).action
    assert got.dtype == float_actions.dtype and got.shape == float_actions.shape
    assert np.mean(got == float_actions) >= 0.99
    assert np.mean(got == want.reshape(-1)) >= 0.99
    assert int(c_policy.action(ts.restart(states[0])).action) == int(got[0])


def test_verify_compiles_the_c_and_checks_agreement(c_bundle):
    from exporters import verify

    report = verify(c_bundle)
    assert report.ok, str(report)
    assert [r.form for r in report.rows if "held-out" in r.output] == ["c"]


def test_an_altered_c_source_is_never_compiled(c_bundle, tmp_path):
    """The backend compiles only the C it generates from the weights, after checking the
    bundle's C is that text: altered C (with rewritten hashes) is a BundleError."""
    from runtimes import load_policy

    copy = tmp_path / "altered"
    shutil.copytree(c_bundle, copy)
    source = copy / "c/policy.c"
    text = source.read_text()
    for altered, message in (
        (text.replace("  return 0;\n}", "  return 1;\n}"), "expected the C the export generates"),
        (text.replace("return 0;\n}", 'system("true"); return 0;\n}'), "expected at most"),
    ):
        source.write_text(altered)
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest["files"] = bundle.hash_files(copy)
        (copy / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(BundleError, match=message):
            load_policy(copy, backend="c")


def test_a_layer_the_c_target_cannot_compute_is_named():
    from exporters import export_policy
    from tests.exported_bundles import tf_policy_for
    from toolkit.errors import UnsupportedError

    with pytest.raises(UnsupportedError, match=r"c export: the policy is recurrent"):
        export_policy(
            tf_policy_for("tf/greedy_q_rnn"),
            "/nonexistent/never",
            formats=["c"],
            format_options={"env": "CartPole-v1"},
        )


def test_a_continuous_actor_in_c_is_its_float_action_squashed_scaled_and_clipped():
    """The affine head (tanh squashing, the spec's scale and offset, the clip) compiled:
    within float32 rounding of the float64 Mlp, and the clip bounds hold."""
    from exporters.micro.c_export import c_model
    from exporters.micro.mlp import Dense, Head, Mlp
    from runtimes.backends.c import CRunner

    rng = np.random.default_rng(2)
    layers = (
        Dense("a", rng.normal(0, 0.5, (3, 16)), rng.normal(0, 0.1, 16), "relu"),
        Dense("b", rng.normal(0, 0.5, (16, 2)), rng.normal(0, 0.1, 2), "tanh"),
    )
    head = Head(
        "affine",
        "float32",
        (2,),
        scale=np.array([2.0, 0.5]),
        offset=np.array([0.0, 0.25]),
        low=np.array([-1.5, -np.inf]),
        high=np.array([1.5, 0.6]),
    )
    mlp = Mlp(("observation",), (3,), layers, head)
    x = rng.normal(0, 2, (500, 3))
    got = CRunner(c_model(mlp), "test")(x.astype(np.float32))
    want = mlp.act(x)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert got[:, 0].max() <= 1.5 and got[:, 0].min() >= -1.5 and got[:, 1].max() <= 0.6
    assert (got[:, 0] == 1.5).any()  # the clip was reached, not only never needed


def test_int8_weights_are_int8_constants_with_per_channel_scales(c_bundle):
    """The int8 export's C holds int8 weight arrays and float scales, its weights file
    is int8 (smaller than float32), and the manifest says which layers are int8."""
    section = bundle.read_layout(c_bundle).format("c").section
    source = (c_bundle / "c/policy.c").read_text()
    if section["weight_type"] == "float32":
        assert "int8_t" not in source and section["weights"] == "c/weights.f32"
        return
    layers = section["layers"]
    assert [x["weights"] for x in layers] == ["int8"] * len(layers)  # "all" on this policy
    assert section["measured"]["int8_layers"] == "all"
    for i, x in enumerate(layers):
        assert f"static const int8_t W{i}[{x['inputs'] * x['outputs']}]" in source
        assert f"static const float S{i}[{x['outputs']}]" in source
    weights = sum(x["inputs"] * x["outputs"] for x in layers)
    assert section["flash_bytes"] == weights + 8 * sum(x["outputs"] for x in layers)
    assert section["flash_bytes"] == (c_bundle / section["weights"]).stat().st_size
    assert section["measured"]["int8_agreement"] >= 0.99


def _mlp(rng, last_columns=None):
    from exporters.micro.mlp import Dense, Head, Mlp

    w2 = rng.normal(0, 0.3, (16, 2)) if last_columns is None else last_columns
    layers = (
        Dense("a", rng.normal(0, 1.0, (4, 32)), rng.normal(0, 0.1, 32), "relu"),
        Dense("b", rng.normal(0, 0.3, (32, 16)), rng.normal(0, 0.1, 16), "tanh"),
        Dense("c", w2, np.zeros(2), "linear"),
    )
    return Mlp(("observation",), (4,), layers, Head("argmax", "int64", ()))


def test_int8_layers_beside_float_ones_compute_the_quantized_model():
    """``hidden`` keeps the first and last layers float: the generated C (both dense
    loops, int8 dequantized per channel) computes the quantized model's actions."""
    from exporters.micro import c_int8
    from exporters.micro.c_export import c_model
    from runtimes.backends.c import CRunner, c_files

    rng = np.random.default_rng(4)
    mlp = _mlp(rng)
    x = rng.normal(0, 1, (600, 4))
    quantized = c_int8.quantize(mlp, x[:300], "hidden")
    assert [v is not None for v in quantized.values] == [False, True, False]
    model = c_model(mlp, quantized)
    source, _ = c_files(model)
    assert "static void dense(" in source and "static void dense_q(" in source
    y = quantized.mlp.hidden(x[300:])[-1]
    clear = np.abs(y[:, 0] - y[:, 1]) > 1e-3
    got = CRunner(model, "test")(x[300:].astype(np.float32)).reshape(-1)
    np.testing.assert_array_equal(got[clear], quantized.mlp.act(x[300:])[clear])
    # Different from the float weights, which it approximates.
    assert not np.array_equal(quantized.mlp.layers[1].weight, mlp.layers[1].weight)
    assert c_int8.agreement(mlp, mlp.act(x[300:]), got) >= 0.95
    # The flash ``choose`` ranks the modes by is the weights file the C export writes.
    for mode in c_int8.MODES:
        written = c_model(mlp, c_int8.quantize(mlp, x[:300], mode)).weights_bytes()
        assert c_int8.weight_bytes(mlp, mode) == len(written)
    assert c_int8.weight_bytes(mlp, "all") < c_int8.weight_bytes(mlp, "hidden")


def test_int8_weights_below_99_percent_agreement_are_refused():
    """A policy whose decision hangs on a gap int8 cannot hold (two near-equal output
    columns) is refused with the agreement measured, and nothing is returned."""
    from exporters.micro import c_export
    from toolkit.errors import ExportError

    rng = np.random.default_rng(5)
    column = rng.normal(0, 0.3, (16, 1))
    mlp = _mlp(rng, np.hstack([column, column + rng.normal(0, 1e-4, (16, 1))]))
    with pytest.raises(
        ExportError,
        match=r"c export: int8 weights agree with the float policy on \d+\.\d\d% of \d+ "
        r"held-out states of CartPole-v1; expected at least 99%",
    ):
        c_export.build_c(mlp, "CartPole-v1", episodes=3, calibration_episodes=3, weights="int8")
    with pytest.raises(ExportError, match=r"c_weights: expected one of \('float32', 'int8'\)"):
        c_export.build_c(mlp, "CartPole-v1", episodes=1, weights="int4")


def test_the_cli_exports_int8_c_weights_and_refuses_unknown_ones(tmp_path):
    from typer.testing import CliRunner

    from toolkit.cli import app

    def export(out, weights):
        args = ["export", "tests.cli_factories:cartpole_100_40", str(tmp_path / out)]
        args += ["--format", "onnx,c", "--env", "CartPole-v1", "-n", "2", "--no-verify"]
        return CliRunner().invoke(app, [*args, "--c-weights", weights])

    done = export("int8", "int8")
    assert done.exit_code == 0, done.output
    section = bundle.read_layout(tmp_path / "int8").format("c").section
    assert section["weight_type"] == "int8" and (tmp_path / "int8/c/weights.bin").exists()
    refused = export("int4", "int4")
    assert refused.exit_code == 2
    assert "c export: c_weights: expected one of ('float32', 'int8'), got 'int4'" in (
        refused.stderr
    )
    assert not (tmp_path / "int4").exists()


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("float_return", "float32", r'c.measured.float_return: expected a number, got "float32"'),
        ("agreement", 2.5, r"c.measured.agreement: expected a value <= 1, got 2.5"),
        ("int8_layers", ["all"], r"c.measured.int8_layers: expected a string, got a list"),
    ],
)
def test_measured_values_of_another_type_are_refused_at_load(float_bundle, key, value, message):
    # inspect formatted ``float_return`` with :.1f and crashed on a string
    # (benchmarks/fuzz_bundles.py, a field set with every copy rewritten to match).
    from toolkit.bundle import manifest as manifest_lib

    data = json.loads((float_bundle / "manifest.json").read_text())
    manifest_lib.validate(data)  # the export's own manifest passes
    data["c"]["measured"][key] = value
    with pytest.raises(BundleError, match=message):
        manifest_lib.validate(data)
