"""A device install: each extra alone, in a fresh venv, runs the device commands.

``pip install '<repo>[runtime]'`` (or ``[litert]``), non-editable, into a new venv,
then the installed ``policy-toolkit`` script loads, inspects, runs, verifies (against its
golden vectors) and benchmarks a bundle this test exports, and ``[runtime]`` quantizes
it; TensorFlow must not be installed, and a command that needs what the extra lacks says
which extra to install, in one line, exit 2, before it does any work. The install
ships py.typed and the LICENSE.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest

from tests import run_cache
from tests.cli_factories import small_cartpole

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
#: extra -> (its backend, the other backend, the module that one needs)
EXTRA_BACKEND = {
    "runtime": ("onnx", "litert", "ai_edge_litert"),
    "litert": ("litert", "onnx", "onnxruntime"),
}


@pytest.fixture(scope="module")
def device_bundle(tmp_path_factory):
    from exporters import export_policy

    return export_policy(
        small_cartpole(), tmp_path_factory.mktemp("device") / "cartpole", formats=("onnx", "litert")
    )


def _build_wheel(out: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
         "--disable-pip-version-check", "--wheel-dir", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


@functools.cache
def _project_wheel() -> Path:
    """The project's wheel, built once per test run (this file and the micro install's
    share it across workers, tests/run_cache.py): what ``pip install .`` builds."""
    (wheel,) = run_cache.shared("device-wheel", _build_wheel).glob("policy_toolkit-*.whl")
    return wheel


def _pip(env_dir: Path, *args: str) -> subprocess.CompletedProcess:
    # The test venv's pip acting on the device venv (``pip --python``): the device venv
    # needs no pip of its own, which saves ensurepip's seconds per install.
    return subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(env_dir / "bin" / "python"),
         "--disable-pip-version-check", *args],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip


def _install(tmp_path: Path, extra: str) -> Path:
    """A new venv holding the project's wheel with ``extra`` and nothing else."""
    env_dir = tmp_path / f"venv-{extra}"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    done = _pip(env_dir, "install", "--quiet", f"{_project_wheel()}[{extra}]")
    assert done.returncode == 0, done.stderr[-3000:]
    return env_dir


def _installed(env_dir: Path) -> dict[str, str]:
    """``{distribution name (lower case): version}`` of the device venv."""
    listed = _pip(env_dir, "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr[-3000:]
    return {p["name"].lower(): p["version"] for p in json.loads(listed.stdout)}


def _cli(env_dir: Path, *args, cwd: Path) -> subprocess.CompletedProcess:
    # From another folder, so the installed package is what runs, not the checkout.
    return subprocess.run(
        [str(env_dir / "bin" / "policy-toolkit"), *map(str, args)],
        capture_output=True, text=True, cwd=cwd, timeout=300,
    )  # fmt: skip


@pytest.mark.parametrize("extra", ["runtime", "litert"])
def test_each_device_extra_alone_runs_the_device_commands(tmp_path, device_bundle, extra):
    backend, other, other_module = EXTRA_BACKEND[extra]
    env_dir = _install(tmp_path, extra)
    installed = set(_installed(env_dir))
    assert not {"tensorflow", "tensorflow-cpu", "tf-keras", "tf2onnx"} & installed
    assert {"typer", "rich", "gymnasium"} <= installed

    assert _cli(env_dir, "--help", cwd=tmp_path).returncode == 0
    inspect = _cli(env_dir, "inspect", device_bundle, cwd=tmp_path)
    assert inspect.returncode == 0, inspect.stderr
    assert "policy.tflite" in inspect.stdout and "policy.onnx" in inspect.stdout
    run = _cli(
        env_dir, "run", device_bundle, "--env", "CartPole-v1", "-n", "3", "--json", cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["episodes"] == 3
    assert f"({backend} backend" not in run.stderr  # the JSON goes to stdout only
    bench = _cli(
        env_dir, "bench", device_bundle, "--batch", "1", "--seconds", "0.05", "--json", cwd=tmp_path
    )
    assert bench.returncode == 0, bench.stderr
    assert [row["backend"] for row in json.loads(bench.stdout)] == [backend]
    assert "XNNPACK" not in run.stderr + bench.stderr

    # What the extra lacks is named, in one line, exit 2.
    missing = _cli(env_dir, "run", device_bundle, "--env", "CartPole-v1", "-b", other, cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1] == (
        f"error: the {other} backend needs {other_module} "
        f"(pip install 'policy-toolkit[{'litert' if other == 'litert' else 'runtime'}]')"
    )
    _quantize(env_dir, tmp_path, device_bundle, extra)
    export = _cli(env_dir, "export", "tests.cli_factories:small_cartpole", tmp_path / "b", cwd=ROOT)
    assert export.returncode == 2
    assert export.stderr.strip().splitlines()[-1] == (
        "error: export: TensorFlow is not installed (pip install 'policy-toolkit[all]')"
    )
    _verify(env_dir, tmp_path, device_bundle, backend, other)
    _typed_and_licensed(env_dir)


def _verify(env_dir: Path, tmp_path: Path, bundle: Path, backend: str, other: str) -> None:
    """``verify`` checks the installed backend's form against the bundle's golden vectors
    and names the form it skips and what installs it."""
    done = _cli(env_dir, "verify", bundle, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["reference"] == "golden"
    assert report["forms"] == [backend]
    assert set(report["skipped"]) == {other}
    assert {(r["form"], r["reference"]) for r in report["outputs"]} == {(backend, "golden")}


def _typed_and_licensed(env_dir: Path) -> None:
    """The wheel ships py.typed for the three packages and the Apache-2.0 LICENSE."""
    code = (
        "import importlib.metadata as m, importlib.resources as r\n"
        "print(all(r.files(p).joinpath('py.typed').is_file() "
        "for p in ('toolkit', 'exporters', 'runtimes')))\n"
        "d = m.distribution('policy-toolkit')\n"
        "print(any(str(f).endswith('LICENSE') for f in d.files), d.metadata['License-Expression'])"
    )
    done = subprocess.run(
        [str(env_dir / "bin" / "python"), "-c", code],
        capture_output=True, text=True, cwd=env_dir, timeout=60,
    )  # fmt: skip
    assert done.stdout.split() == ["True", "True", "Apache-2.0"], done.stderr


def _quantize(env_dir: Path, tmp_path: Path, bundle: Path, extra: str) -> None:
    """``[runtime]`` carries what ``quantize`` (target onnx) needs; ``[litert]`` is told
    what to install before a single episode is played."""
    states = tmp_path / "states.npz"
    rng = np.random.default_rng(0)
    np.savez(states, observation=(rng.standard_normal((200, 4)) * 0.3).astype(np.float32))
    if extra == "runtime":
        done = _cli(
            env_dir, "quantize", bundle, tmp_path / "q", "--observations", states,
            "--min-agreement", "0", "--json", cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["written"] and (tmp_path / "q" / "policy.onnx").is_file()
        return
    for target, missing, install in (
        ("onnx", "onnx, onnxruntime, which are", "pip install 'policy-toolkit[runtime]'"),
        ("litert", "tensorflow, which is", "pip install 'policy-toolkit[all]'; target onnx "
         "needs only the [runtime] extra"),
    ):  # fmt: skip
        refused = _cli(
            env_dir, "quantize", bundle, tmp_path / "q", "--env", "CartPole-v1", "-n", "40",
            "--target", target, cwd=tmp_path,
        )  # fmt: skip
        assert refused.returncode == 2
        assert refused.stderr.strip().splitlines() == [
            f"error: quantize --target {target} needs {missing} not installed ({install})"
        ]


def test_the_serve_extra_alone_serves_every_protocol(tmp_path, device_bundle):
    """``pip install '.[serve]'`` alone serves TF Serving's REST API, KServe v2's REST API
    and, with --grpc-port, both gRPC APIs, without TensorFlow: each answers the action
    the in-process onnx policy takes."""
    import grpc
    import httpx
    import tritonclient.grpc as tgrpc
    import tritonclient.http as thttp

    import runtimes
    from tests.runtimes.serving.server_process import ServerProcess
    from toolkit.trajectories import time_step as ts

    env_dir = _install(tmp_path, "serve")
    installed = set(_installed(env_dir))
    assert not {"tensorflow", "tensorflow-cpu", "tf-keras", "tf2onnx"} & installed
    assert {"hpack", "protobuf", "httptools"} <= installed
    assert "uvicorn" not in installed  # the REST transport is our own (http_server.py)
    assert "grpcio" not in installed  # the gRPC transport is our own (grpc_server.py)

    observations = np.array(
        [[0.02, -0.01, 0.03, 0.04], [0.1, 0.5, -0.05, -0.6], [-0.2, -0.3, 0.1, 0.4]], np.float32
    )
    policy = runtimes.load_policy(device_bundle, backend="onnx")
    expected = policy.action(ts.restart(observations, batch_size=3)).action
    args = ["--model", f"cartpole={device_bundle}", "--grpc-port", "0", "--backend", "onnx"]
    with ServerProcess(*args, executable=env_dir / "bin" / "policy-toolkit") as server:
        assert server.grpc, server.log
        rest = httpx.post(
            f"{server.url}/v1/models/cartpole:predict",
            json={"instances": observations.tolist()},
            timeout=30,
        )
        assert rest.status_code == 200, rest.text
        np.testing.assert_array_equal(rest.json()["predictions"], expected)

        for module, address in ((thttp, server.url.removeprefix("http://")), (tgrpc, server.grpc)):
            client = module.InferenceServerClient(address)
            given = module.InferInput("observation", list(observations.shape), "FP32")
            given.set_data_from_numpy(observations)
            answer = client.infer("cartpole", [given]).as_numpy("action")
            np.testing.assert_array_equal(answer, expected, err_msg=module.__name__)
            client.close()

        import tensorflow as tf  # the test's client only: TF Serving's stubs need it
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        with grpc.insecure_channel(server.grpc) as channel:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "cartpole"
            request.inputs["observation"].CopyFrom(tf.make_tensor_proto(observations))
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            response = stub.Predict(request, timeout=30)
            np.testing.assert_array_equal(tf.make_ndarray(response.outputs["action"]), expected)
        assert server.stop() == 0, server.log
