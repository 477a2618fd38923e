"""The training examples run end to end (tiny budgets), write checkpoints and resume."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MEAN_RETURN = re.compile(r"^mean return: (-?\d+(\.\d+)?)$")


def _run(script: str, *args: str, timeout: float = 240) -> list[str]:
    completed = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), "--no-progress", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout.strip().splitlines()


def _mean_return(lines: list[str]) -> float:
    match = MEAN_RETURN.match(lines[-1])
    assert match, f"last line is not 'mean return: <number>': {lines[-1]!r}"
    return float(match.group(1))


@pytest.mark.slow
def test_train_cartpole_runs_checkpoints_and_resumes(tmp_path):
    out = tmp_path / "cartpole"
    args = ["--steps", "1500", "--eval-interval", "1000", "--seed", "3", "--output-dir", str(out)]
    lines = _run("train_cartpole.py", *args)
    # 20 episodes of CartPole: every return lies between 8 and 500.
    assert 8.0 <= _mean_return(lines) <= 500.0
    assert any(line.startswith("wall time: ") for line in lines)
    assert (out / "checkpoints" / "checkpoint").is_file()
    spec = json.loads((out / "policy_checkpoints" / "policy_spec.json").read_text())
    assert spec["agent"] == "dqn"

    resumed = _run("train_cartpole.py", *args[:-2], "--output-dir", str(out), "--steps", "1800")
    assert any(re.match(r"resumed from train step [1-9]\d*$", line) for line in resumed)
    _mean_return(resumed)


@pytest.mark.slow
def test_train_pendulum_runs_and_prints_the_mean_return(tmp_path):
    out = tmp_path / "pendulum"
    lines = _run(
        "train_pendulum.py",
        *("--steps", "1200", "--eval-interval", "1000", "--output-dir", str(out)),
    )
    # Pendulum's rewards lie in [-16.3, 0] per step, 200 steps per episode.
    assert -3300.0 <= _mean_return(lines) <= 0.0
    assert (out / "policy_checkpoints" / "policy_spec.json").is_file()


@pytest.mark.slow
def test_train_pendulum_sac_exports_and_plays_on_onnx(tmp_path):
    out = tmp_path / "pendulum_sac"
    args = ["--steps", "600", "--eval-interval", "500", "--jit-compile", "0"]
    lines = _run("train_pendulum_sac.py", *args, "--output-dir", str(out))
    assert -3300.0 <= _mean_return(lines) <= 0.0
    assert any(line.startswith("TF policy mean return: ") for line in lines)
    assert any(line.startswith("exported policy (onnx backend, sampling)") for line in lines)
    spec = json.loads((out / "policy_checkpoints" / "policy_spec.json").read_text())
    assert spec["agent"] == "sac"
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert manifest["distribution"]["family"] == "tanh_normal"


@pytest.mark.slow
def test_train_cartpole_ppo_exports_and_plays_on_onnx(tmp_path):
    # Resuming is tested in-process (tests/toolkit/test_sac_ppo.py): one run here.
    out = tmp_path / "cartpole_ppo"
    args = ["--steps", "1024", "--eval-interval", "1000", "--jit-compile", "0"]
    lines = _run("train_cartpole_ppo.py", *args, "--output-dir", str(out))
    assert 8.0 <= _mean_return(lines) <= 500.0
    assert any(line.startswith("exported policy (onnx backend, sampling)") for line in lines)
    spec = json.loads((out / "policy_checkpoints" / "policy_spec.json").read_text())
    assert spec["agent"] == "ppo"
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert manifest["distribution"]["family"] == "categorical"


@pytest.mark.slow
def test_train_taxi_masked_exports_and_plays_on_both_tf_free_backends(tmp_path):
    out = tmp_path / "taxi_masked"
    lines = _run("train_taxi_masked.py", "--quick", "--output-dir", str(out))
    # Taxi with masks: -1 per step for at most 200 steps, +20 for the delivery.
    assert -200.0 <= _mean_return(lines) <= 20.0
    for backend in ("onnx", "litert"):
        played = [line for line in lines if line.startswith(f"{backend} backend: ")]
        assert len(played) == 1, lines
        assert played[0].endswith("actions the environment's mask forbids: 0")
    spec = json.loads((out / "policy_checkpoints" / "policy_spec.json").read_text())
    assert spec["splitter"] == {
        "kind": "mask_splitter",
        "observation": "observation",
        "mask": "mask",
    }
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert manifest["policy"]["action_mask"] == "observation/mask"
    assert manifest["formats"] == ["saved_model", "onnx", "litert", "golden"]
    # The CLI plays a masked bundle: its environment gives the mask as an observation.
    from typer.testing import CliRunner

    from toolkit.cli import app

    env_id = "Taxi-v4" if "Taxi-v4" in __import__("gymnasium").registry else "Taxi-v3"
    args = ["run", str(out / "bundle"), "--env", env_id, "-n", "3", "--backend", "litert"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["episodes"] == 3


def test_examples_show_their_flags_without_loading_tensorflow():
    for script in (
        "train_cartpole.py",
        "train_pendulum.py",
        "train_pendulum_sac.py",
        "train_cartpole_ppo.py",
        "train_taxi_masked.py",
    ):
        completed = subprocess.run(
            [sys.executable, "-X", "importtime", str(ROOT / "examples" / script), "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        for flag in ("--steps", "--seed", "--output-dir"):
            assert flag in completed.stdout
        assert "tensorflow" not in completed.stderr
