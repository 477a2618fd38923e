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
def c_bundle():
    from tests.micro_bundles import cartpole_c

    return cartpole_c()


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


def test_a_wrong_golden_vector_fails_the_main(c_bundle, tmp_path):
    folder = tmp_path / "c"
    shutil.copytree(c_bundle / "c", folder)
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
