"""A micro device install: ``pip install '<repo>[micro]'`` alone, in a fresh venv, runs
``inspect``, ``run`` and ``bench`` on a micro bundle through TFLite Micro's interpreter,
without TensorFlow (the recipe of tests/cli/test_device_install.py)."""

from __future__ import annotations

import json

import pytest

from tests.cli.test_device_install import _cli, _install, _installed

pytestmark = pytest.mark.slow


def test_the_micro_extra_alone_runs_and_benches_a_micro_bundle(tmp_path):
    from tests.micro_bundles import cartpole_micro

    bundle = cartpole_micro()
    env_dir = _install(tmp_path, "micro")
    installed = _installed(env_dir)
    assert not {"tensorflow", "tensorflow-cpu", "tf-keras", "tf2onnx", "onnxruntime"} & set(
        installed
    )
    assert installed.get("tflite-micro", installed.get("tflite_micro")) == "0.dev20261023182759"
    inspect = _cli(env_dir, "inspect", bundle, cwd=tmp_path)
    assert inspect.returncode == 0, inspect.stderr
    assert "micro/policy.tflite: int" in inspect.stdout
    run = _cli(
        env_dir, "run", bundle, "--env", "CartPole-v1", "-n", "2", "-b", "micro", "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["episodes"] == 2
    bench = _cli(
        env_dir, "bench", bundle, "-b", "micro", "--batch", "1", "--seconds", "0.05", cwd=tmp_path
    )
    assert bench.returncode == 0, bench.stderr
    assert "micro" in bench.stdout
