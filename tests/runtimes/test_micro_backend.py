"""The micro backend: TFLite Micro's interpreter behind the Python-policy interface."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from toolkit import bundle
from toolkit.errors import UnsupportedError
from toolkit.trajectories import time_step as ts

pytest.importorskip("tflite_micro")

runner = CliRunner()


@pytest.fixture(scope="module")
def micro_bundle():
    from tests.micro_bundles import cartpole_micro

    return cartpole_micro()


def test_load_policy_runs_the_micro_model_batched_and_unbatched(micro_bundle):
    from tflite_micro.python.tflite_micro import runtime

    from exporters.formats import micro
    from runtimes import load_policy

    layout = bundle.read_layout(micro_bundle)
    states, _ = micro.read_held_out(micro_bundle, layout)
    policy = load_policy(micro_bundle, backend="micro")
    assert policy.backend == "micro"
    got = policy.action(ts.restart(states, batch_size=len(states))).action
    # The same model under a fresh interpreter of tflite-micro, row by row.
    interpreter = runtime.Interpreter.from_bytes(
        (micro_bundle / "micro/policy.tflite").read_bytes(), arena_size=1 << 16
    )
    want = []
    for row in states:
        interpreter.set_input(row[None], 0)
        interpreter.invoke()
        want.append(int(interpreter.get_output(0)[0]))
    assert got.dtype == np.int64 and got.shape == (len(states),)
    np.testing.assert_array_equal(got, want)
    one = policy.action(ts.restart(states[0])).action
    assert one.shape == () and int(one) == want[0]


def test_what_the_micro_model_cannot_do_is_refused(micro_bundle):
    from runtimes import load_policy

    policy = load_policy(micro_bundle, backend="micro")
    step = ts.restart(np.zeros((2, 4), np.float32), batch_size=2)
    with pytest.raises(UnsupportedError, match="deterministic action only"):
        policy.distribution(step)
    with pytest.raises(UnsupportedError, match="takes no checkpoints"):
        policy.update_from_checkpoint("somewhere")
    # auto never picks it silently.
    assert load_policy(micro_bundle).backend == "onnx"


def test_run_and_bench_take_the_micro_backend(micro_bundle):
    from toolkit.cli import app

    result = runner.invoke(
        app, ["run", str(micro_bundle), "--env", "CartPole-v1", "-n", "2", "-b", "micro", "--json"]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app, ["bench", str(micro_bundle), "-b", "micro", "--batch", "1", "--seconds", "0.05"]
    )
    assert result.exit_code == 0, result.output
    assert "micro" in result.stdout


def test_a_manifest_declaring_too_small_an_arena_cannot_crash_the_interpreter(
    micro_bundle, tmp_path
):
    """The loader runs in at least the model's own arena bound: an arena too small can
    crash this tflite-micro release (SIGSEGV) instead of failing."""
    import json
    import shutil

    from runtimes import load_policy

    copy = tmp_path / "small_arena"
    shutil.copytree(micro_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["micro"]["arena_bytes"] = 16
    (copy / "manifest.json").write_text(json.dumps(manifest))
    states = np.zeros((3, 4), np.float32)
    got = load_policy(copy, backend="micro").action(ts.restart(states, batch_size=3)).action
    want = load_policy(micro_bundle, backend="micro").action(ts.restart(states, batch_size=3))
    np.testing.assert_array_equal(got, want.action)
