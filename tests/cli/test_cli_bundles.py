"""The CLI commands that read bundles: inspect, verify, run, bench (quantize: test_cli_quantize)."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.cli_factories import cartpole_bundle, small_cartpole
from tests.exported_bundles import bundle_for
from toolkit import bundle as bundle_lib
from toolkit import nest
from toolkit.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def error_line(result) -> str:
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), result.output
    assert all(line[0] in "✓✗" for line in lines[:-1]), result.stderr
    return lines[-1]


def rehash(root) -> None:
    """Rewrites a bundle's file table after a test changed a file on purpose."""
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"] = bundle_lib.hash_files(root)
    (root / "manifest.json").write_text(json.dumps(manifest))


# --- inspect ---------------------------------------------------------------------------


def test_inspect_shows_specs_signatures_files_and_metadata():
    path = cartpole_bundle()
    result = invoke("inspect", path)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "GreedyPolicy" in out
    assert "saved_model, onnx" in out
    assert "train step   7" in out
    assert "derivation   sample (clipped to the action spec)" in out
    # The spec table: CartPole's observation bounds, the discrete action.
    observation = next(line for line in out.splitlines() if line.strip().startswith("observation"))
    assert observation.split()[:4] == ["observation", "bounded", "(4,)", "float32"]
    assert "[-4.8, -inf, -0.4189, -inf]" in observation and "[4.8, inf, 0.4189, inf]" in observation
    action = next(line for line in out.splitlines() if line.strip().startswith("action "))
    assert action.split() == ["action", "bounded", "()", "int64", "0", "1"]
    assert "deterministic" in out
    for name in ("distribution", "get_initial_state", "get_train_step", "get_metadata"):
        assert f" {name} " in out
    assert "observation  float32 (B, 4)" in out
    digest = hashlib.sha256((path / "policy.onnx").read_bytes()).hexdigest()
    files = next(line for line in out.splitlines() if line.strip().startswith("policy.onnx"))
    assert digest[:16] in files
    assert "KiB" in files and files.split()[-1] == "ok"
    metadata = next(line for line in out.splitlines() if line.strip().startswith("k "))
    assert metadata.split() == ["k", "v"]
    import tensorflow as tf

    assert f"tensorflow               {tf.__version__}" in out


@pytest.mark.parametrize(
    "case_id", ["tf/epsilon_greedy_q", "tf/actor/categorical_nested", "tf/actor_distribution_rnn"]
)
def test_inspect_lists_every_spec_leaf_and_distribution(case_id):
    path, policy = bundle_for(case_id)
    result = invoke("inspect", path)
    assert result.exit_code == 0, result.output
    first_column = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    specs = {
        "action": policy.action_spec,
        "policy_state": policy.policy_state_spec,
        "observation": policy.time_step_spec.observation,
    }
    for prefix, spec in specs.items():
        for leaf_path, _ in nest.flatten_with_paths(spec, prefix):
            assert leaf_path in first_column, (leaf_path, result.stdout)
    manifest = bundle_lib.read_manifest(path)
    for entry in manifest["signatures"]["distribution"]["outputs"]:
        assert f"{entry['name']}  {entry['dtype']}" in result.stdout


def test_inspect_json_is_the_manifest():
    path = cartpole_bundle()
    result = invoke("inspect", path, "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == json.loads((path / "manifest.json").read_text())


def test_inspect_a_lone_onnx_file_reads_its_metadata(tmp_path):
    lone = tmp_path / "shipped.onnx"
    shutil.copy(cartpole_bundle() / "policy.onnx", lone)
    result = invoke("inspect", lone)
    assert result.exit_code == 0, result.output
    assert f"{lone}  (onnx metadata)" in result.stdout
    assert "GreedyPolicy" in result.stdout
    digest = hashlib.sha256(lone.read_bytes()).hexdigest()
    assert digest[:16] in result.stdout


def test_inspect_errors(tmp_path):
    result = invoke("inspect", tmp_path / "nope")
    assert result.exit_code == 2
    assert error_line(result) == f"error: {tmp_path / 'nope'}: no such bundle"

    result = invoke("inspect", tmp_path)
    assert result.exit_code == 2
    assert error_line(result) == f"error: {tmp_path}: no manifest.json; not a policy-toolkit bundle"

    tampered = tmp_path / "tampered"
    shutil.copytree(cartpole_bundle(), tampered)
    with open(tampered / "policy.onnx", "ab") as f:
        f.write(b"\0")
    shutil.rmtree(tampered / "saved_model")
    result = invoke("inspect", tampered)
    assert result.exit_code == 1
    assert error_line(result) == (
        f"error: {tampered}: policy.onnx changed since export (size or sha256 differ from "
        "the manifest)"
    )
    checks = {
        line.split()[0]: line.split()[-1]
        for line in result.stdout.splitlines()
        if line.strip().startswith(("policy.onnx", "saved_model/"))
    }
    assert checks.pop("policy.onnx") == "CHANGED"
    listed = json.loads((tampered / "manifest.json").read_text())["files"]
    assert set(checks.values()) == {"missing"}
    assert len(checks) == sum(rel.startswith("saved_model/") for rel in listed)

    import onnx
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    stranger = tmp_path / "other" / "model.onnx"
    stranger.parent.mkdir()
    onnx.save(helper.make_model(graph), str(stranger))
    result = invoke("inspect", stranger)
    assert result.exit_code == 2
    assert error_line(result) == (
        f"error: {stranger}: no policy_toolkit.manifest in the model's metadata; "
        "not exported by policy-toolkit"
    )


# --- verify ------------------------------------------------------------------------------


def test_verify_reports_parity_and_exits_0():
    result = invoke("verify", cartpole_bundle(), "--samples", "16")
    assert result.exit_code == 0, result.output
    assert (
        f"verify {cartpole_bundle()}: OK (golden: 16 time steps x 1 step recorded from "
        "tf_policy; 16 samples x 1 step across forms, reference saved_model"
    ) in result.stdout
    rows = [line.split() for line in result.stdout.splitlines()]
    rows = [r for r in rows if r and r[0] in ("saved_model", "onnx")]
    # Each form against the golden vectors, and the ONNX graph against the SavedModel.
    assert sorted((r[0], r[1], r[2]) for r in rows) == [
        ("onnx", "golden", "action"),
        ("onnx", "golden", "distribution/loc"),
        ("onnx", "saved_model", "action"),
        ("onnx", "saved_model", "distribution/loc"),
        ("saved_model", "golden", "action"),
        ("saved_model", "golden", "distribution/loc"),
    ]
    assert all(r[-1] == "ok" for r in rows)
    report = json.loads(invoke("verify", cartpole_bundle(), "-n", "8", "--json").stdout)
    assert report["ok"] is True and report["forms"] == ["saved_model", "onnx"]


def test_verify_exits_1_when_a_form_differs(tmp_path):
    import onnx
    from onnx import numpy_helper

    broken = tmp_path / "broken"
    shutil.copytree(cartpole_bundle(), broken)
    model = onnx.load(str(broken / "policy.onnx"))
    # Shift every float weight: the ONNX graph no longer computes the SavedModel's Q-values.
    for init in model.graph.initializer:
        value = numpy_helper.to_array(init)
        if value.dtype == np.float32 and value.size > 1:
            init.CopyFrom(numpy_helper.from_array(value + 1.0, init.name))
    onnx.save(model, str(broken / "policy.onnx"))
    rehash(broken)
    result = invoke("verify", broken, "--samples", "64")
    assert result.exit_code == 1
    assert f"verify {broken}: FAILED" in result.stdout
    assert "BEYOND TOLERANCE" in result.stdout


def test_verify_missing_bundle_exits_2(tmp_path):
    result = invoke("verify", tmp_path / "nope")
    assert result.exit_code == 2
    assert error_line(result) == f"error: {tmp_path / 'nope'}: no such bundle"


# --- run ---------------------------------------------------------------------------------


def test_run_plays_episodes_like_the_tf_policy():
    expected = play_reference(episodes=3, seed=11)
    for backend in ("onnx", "tf"):
        result = invoke(
            "run",
            cartpole_bundle(),
            "--env",
            "CartPole-v1",
            "-n",
            "3",
            "--seed",
            "11",
            "--backend",
            backend,
            "--json",
        )
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["returns"] == expected
        assert data["return"]["mean"] == pytest.approx(np.mean(expected))
        assert data["return"]["min"] == min(expected) and data["return"]["max"] == max(expected)
        assert data["steps"] == sum(data["lengths"]) and data["steps_per_second"] > 0


def play_reference(episodes: int, seed: int) -> list[float]:
    """Returns of the TF policy played directly in gymnasium (no adapter, no runtime)."""
    import gymnasium as gym

    from toolkit.policies.py_tf_policy import PyTFPolicy
    from toolkit.trajectories import time_step as ts

    policy = PyTFPolicy(small_cartpole())
    env = gym.make("CartPole-v1")
    returns = []
    for i in range(episodes):
        observation, _ = env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            step = ts.restart(observation[None].astype(np.float32), 1)
            action = int(policy.action(step).action[0])
            observation, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return returns


def test_run_prints_a_table():
    result = invoke("run", cartpole_bundle(), "--env", "CartPole-v1", "--episodes", "2")
    assert result.exit_code == 0, result.output
    assert "in CartPole-v1 (onnx backend, seeds 0..1)" in result.stdout
    header = next(line for line in result.stdout.splitlines() if "mean return" in line)
    assert header.split() == [
        "episodes",
        "mean",
        "return",
        "std",
        "min",
        "max",
        "mean",
        "length",
        "steps/s",
    ]


def test_run_records_a_gif(tmp_path):
    from PIL import Image

    gif = tmp_path / "episode.gif"
    result = invoke("run", cartpole_bundle(), "--env", "CartPole-v1", "-n", "1", "--record", gif)
    assert result.exit_code == 0, result.output
    frames = int(result.stdout.split("recorded ")[1].split()[0])
    # One frame after the reset and one per step of the (seed 0) episode.
    assert frames == play_reference(1, 0)[0] + 1
    with Image.open(gif) as image:
        assert image.format == "GIF"
        assert image.size == (600, 400)  # CartPole's render size
        assert image.n_frames > 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--env", "NoSuchEnv-v0"],
            "error: --env 'NoSuchEnv-v0': Environment `NoSuchEnv` doesn't exist.",
        ),
        (
            ["--env", "Pendulum-v1"],
            "error: Pendulum-v1 observation: expected shape (4,) float32 (the policy's), "
            "got shape (3,) float32",
        ),
        (["--env", "CartPole-v1", "--backend", "gpu"], "error: --backend: expected one of"),
        (["--env", "CartPole-v1", "--record", "out.mp4"], "error: --record: expected a .gif"),
    ],
)
def test_run_input_errors(args, message):
    result = invoke("run", cartpole_bundle(), *args)
    assert result.exit_code == 2, result.output
    assert error_line(result).startswith(message)


def test_run_missing_bundle(tmp_path):
    result = invoke("run", tmp_path / "nope", "--env", "CartPole-v1")
    assert result.exit_code == 2
    assert error_line(result) == f"error: {tmp_path / 'nope'}: no such bundle"


# --- bench -------------------------------------------------------------------------------


def test_bench_measures_each_backend_and_batch(tmp_path):
    plot = tmp_path / "bench.png"
    result = invoke(
        "bench",
        cartpole_bundle(),
        "--backend",
        "onnx,tf",
        "--batch",
        "1,4",
        "--seconds",
        "0.05",
        "--json",
        "--plot",
        plot,
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["backend"], r["batch"]) for r in rows] == [
        ("onnx", 1),
        ("onnx", 4),
        ("tf", 1),
        ("tf", 4),
    ]
    for row in rows:
        assert row["calls"] >= 10
        assert 0 < row["p50_us"] <= row["p90_us"] <= row["p99_us"]
        assert row["actions_per_second"] == pytest.approx(row["batch"] * 1e6 / row["mean_us"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_prints_a_table():
    result = invoke(
        "bench", cartpole_bundle(), "--backend", "onnx", "--batch", "2", "--seconds", "0.02"
    )
    assert result.exit_code == 0, result.output
    header = next(line for line in result.stdout.splitlines() if "p50" in line)
    assert header.split() == [
        "backend",
        "batch",
        "calls",
        "p50",
        "us",
        "p90",
        "us",
        "p99",
        "us",
        "actions/s",
    ]
    assert any(line.split()[:2] == ["onnx", "2"] for line in result.stdout.splitlines())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch", "1,x"], "error: --batch: expected comma-separated integers, got '1,x'"),
        (["--batch", "0"], "error: --batch: expected sizes >= 1, got [0]"),
        (
            ["--backend", "onnx,cuda"],
            "error: --backend: expected some of ['onnx', 'litert', 'micro', 'c', 'tf'], got",
        ),
        (["--plot", "out.txt"], "error: --plot: expected a .png, .svg or .pdf file"),
    ],
)
def test_bench_input_errors(args, message):
    result = invoke("bench", cartpole_bundle(), *args)
    assert result.exit_code == 2
    assert error_line(result).startswith(message)
