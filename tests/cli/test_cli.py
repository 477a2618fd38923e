"""The CLI's entry points."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.subprocess_utils import run_python
from toolkit import __version__
from toolkit.bundle import read_manifest
from toolkit.cli import app

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"policy-toolkit {__version__}"


def test_help_lists_the_app():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "Build, export, verify and run RL policies" in result.output


COMMANDS = (
    "export",
    "inspect",
    "verify",
    "run",
    "bench",
    "quantize",
    "update",
    "import-tf-agents",
)


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    listed = {line.split()[0] for line in result.output.splitlines() if line.startswith("  ")}
    assert set(COMMANDS) <= listed
    for command in COMMANDS:
        sub = runner.invoke(app, [command, "--help"])
        assert sub.exit_code == 0, (command, sub.output)
        assert "Usage: policy-toolkit " + command in " ".join(sub.output.split())


def test_usage_errors_exit_2():
    result = runner.invoke(app, ["run", "somewhere"])  # --env is required
    assert result.exit_code == 2
    assert "Missing option '--env'" in result.output
    result = runner.invoke(app, ["no-such-command"])
    assert result.exit_code == 2


def test_onnx_commands_run_without_tensorflow(tmp_path):
    """inspect, run --backend onnx and quantize in a process where TF cannot be imported."""
    from tests.cli_factories import cartpole_bundle

    # An edge device's copy: only the manifest and the ONNX graph.
    edge = tmp_path / "edge"
    edge.mkdir()
    for name in ("manifest.json", "policy.onnx"):
        shutil.copy(cartpole_bundle() / name, edge / name)
    result = run_python(
        f"""
        import json, sys
        from typer.testing import CliRunner
        from toolkit.cli import app
        runner = CliRunner()
        result = runner.invoke(app, ["inspect", "{edge}"])
        assert result.exit_code == 0, result.output
        assert "GreedyPolicy" in result.output and "missing" in result.output
        result = runner.invoke(app, ["run", "{edge}", "--env", "CartPole-v1", "-n", "2", "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["episodes"] == 2
        result = runner.invoke(app, ["bench", "{edge}", "--backend", "onnx", "--batch", "1",
                                     "--seconds", "0.01"])
        assert result.exit_code == 0, result.output
        result = runner.invoke(app, ["quantize", "{edge}", "{tmp_path / "int8"}", "--force"])
        assert result.exit_code == 0, result.output
        tests.tf_blocker.assert_no_heavy_modules()
        print("ok")
        """,
        without_tensorflow=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_help_runs_without_tensorflow():
    result = run_python(
        """
        import sys
        from typer.testing import CliRunner
        from toolkit.cli import app
        result = CliRunner().invoke(app, ["--help"])
        assert result.exit_code == 0, result.output
        assert "tensorflow" not in sys.modules
        print("ok")
        """,
        without_tensorflow=True,
    )
    assert result.returncode == 0, result.stderr


def test_python_dash_m_toolkit():
    result = subprocess.run(
        [sys.executable, "-m", "toolkit", "--version"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert __version__ in result.stdout


def test_installed_console_script():
    script = shutil.which("policy-toolkit") or str(
        __import__("pathlib").Path(sys.executable).parent / "policy-toolkit"
    )
    if not __import__("os").path.exists(script):
        pytest.fail("the console script policy-toolkit is not installed next to the interpreter")
    result = subprocess.run([script, "--version"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"policy-toolkit {__version__}"
    # A real command's error: one line on stderr, exit code 2, no traceback.
    missing = "/nonexistent/bundle"
    result = subprocess.run(
        [script, "inspect", missing], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert result.stderr == f"error: {missing}: no such bundle\n"
    assert result.stdout == ""


FACTORY_MODULE = """
import numpy as np
import tensorflow as tf
from toolkit.networks.q_network import QNetwork
from toolkit.policies.greedy_policy import GreedyPolicy
from toolkit.policies.q_policy import QPolicy
from toolkit.specs import tensor_spec
from toolkit.trajectories import time_step as ts


def make():
    observation = tensor_spec.TensorSpec((3,), tf.float32, name="observation")
    action = tensor_spec.BoundedTensorSpec((), tf.int64, 0, 2, name="action")
    network = QNetwork(observation, action, fc_layer_params=(4,))
    return GreedyPolicy(QPolicy(ts.time_step_spec(observation), action, q_network=network))
"""


def test_console_script_exports_a_factory_of_the_current_folder(tmp_path):
    """Like ``uvicorn app:main``: a module beside the user imports, wherever the script is."""
    script = Path(sys.executable).parent / "policy-toolkit"
    (tmp_path / "my_policies.py").write_text(FACTORY_MODULE)
    result = subprocess.run(
        [str(script), "export", "my_policies:make", "bundle", "--format", "onnx", "--no-verify"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert f"exported GreedyPolicy -> {tmp_path / 'bundle'}" in result.stdout
    manifest = read_manifest(tmp_path / "bundle")
    assert manifest["policy"]["class"] == "GreedyPolicy"
    # TensorFlow's start-up chatter (CUDA probes) stays off the terminal.
    assert "cuda" not in result.stderr.lower(), result.stderr
