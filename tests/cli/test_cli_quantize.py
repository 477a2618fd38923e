"""``policy-toolkit quantize``: real states, gates, the report, and bad input.

Expected agreements and returns are measured here with the runtimes on the same
states and episodes, independently of the quantize engine.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import runtimes
from tests.cli.test_cli_bundles import error_line, invoke
from tests.cli_factories import cartpole_bundle, small_cartpole
from toolkit import bundle as bundle_lib
from toolkit.trajectories import time_step as ts

pytestmark = pytest.mark.slow


def _observations(n: int = 600, seed: int = 3) -> np.ndarray:
    """CartPole-like observations (the untrained test policy acts on these)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 4)) * [0.5, 0.8, 0.08, 0.8]).astype(np.float32)


def _actions(path, backend, observations):
    policy = runtimes.load_policy(path, backend)
    step = ts.transition(observations, np.zeros(len(observations), np.float32))
    return np.asarray(policy.action(step).action)


def test_agreement_is_measured_on_the_recorded_states(tmp_path):
    observations = _observations()
    npz = tmp_path / "states.npz"
    np.savez(npz, observation=observations)
    out = tmp_path / "q"
    result = invoke(
        "quantize", cartpole_bundle(), out, "--observations", npz, "--method", "dynamic",
        "--min-agreement", "0", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    # The first half of the rows calibrates, the second half is measured.
    assert report["written"] and report["method"] == "dynamic" and report["states"] == 300
    assert report["state_source"] == "states.npz: 600 recorded states: rows 300-599 measured"
    assert report["calibration_states"] == 300
    assert report["calibration_source"] == "states.npz: 600 recorded states: rows 0-299 calibrate"
    measured = observations[300:]
    want = np.mean(_actions(cartpole_bundle(), "onnx", measured) == _actions(out, "onnx", measured))
    assert report["action_agreement"] == pytest.approx(want, abs=1e-9)
    manifest = bundle_lib.read_manifest(out)  # every hash checks
    assert manifest["formats"] == ["onnx"]
    entry = manifest["quantization"]
    assert entry["method"] == "dynamic" and entry["weight_type"] == "int8"
    assert entry["action_agreement"] == report["action_agreement"]
    assert report["size_after"] == (out / "policy.onnx").stat().st_size
    again = invoke("quantize", out, tmp_path / "again", "--observations", npz)
    assert again.exit_code == 2
    assert error_line(again) == f"error: {out}: already quantized (dynamic)"


def test_env_rollouts_give_returns_that_the_run_command_reproduces(tmp_path):
    out = tmp_path / "q"
    result = invoke(
        "quantize", cartpole_bundle(), out, "--env", "CartPole-v1", "--episodes", "6",
        "--seed", "4", "--json",
    )  # fmt: skip
    assert result.exit_code in (0, 1), result.output
    report = json.loads(result.stdout)
    assert report["state_source"].startswith("CartPole-v1: 6 episodes of the float policy")
    assert report["calibration_source"] == (
        "CartPole-v1: 6 episodes of the float policy (seeds 1000004...1000009)"
    )
    methods = [c["method"] for c in report["candidates"]]
    assert sorted(methods) == sorted(
        ["gptq", "dynamic", "dynamic-per-channel", "dynamic-per-channel-keep-last",
         "static-per-channel-keep-last", "float16"]
    )  # fmt: skip
    sizes = [c["size"] for c in report["candidates"]]
    assert sizes == sorted(sizes)  # tried from the smallest file up
    float_run = invoke(
        "run", cartpole_bundle(), "--env", "CartPole-v1", "-n", "6", "--seed", "4", "--json"
    )
    assert report["float_return"] == pytest.approx(json.loads(float_run.stdout)["return"]["mean"])
    if report["written"]:
        chosen = [c for c in report["candidates"] if c["verdict"] == "chosen"]
        assert [c["method"] for c in chosen] == [report["method"]]
        quantized = invoke("run", out, "--env", "CartPole-v1", "-n", "6", "--seed", "4", "--json")
        mean = json.loads(quantized.stdout)["return"]["mean"]
        assert report["quantized_return"] == pytest.approx(mean)
        assert mean >= 0.95 * report["float_return"]
        assert report["action_agreement"] >= 0.99


def test_gates_refuse_to_write_unless_forced(tmp_path):
    npz = tmp_path / "states.npz"
    np.savez(npz, observation=_observations(4000))
    out = tmp_path / "q"
    args = ("quantize", cartpole_bundle(), out, "--observations", npz, "--method", "dynamic")
    result = invoke(*args, "--min-agreement", "1.0")
    if result.exit_code == 0:  # pragma: no cover - int8 agreed on every state
        pytest.skip("per-tensor int8 agreed on every state")
    assert result.exit_code == 1
    line = error_line(result)
    assert line.startswith("error: no candidate passed the agreement gates; nothing written")
    assert "rejected: agreement" in result.stdout
    assert not out.exists()
    forced = invoke(*args, "--min-agreement", "1.0", "--force")
    assert forced.exit_code == 0, forced.output
    assert "chose dynamic: forced" in forced.stdout
    assert f"wrote {out}" in forced.stdout


@pytest.mark.parametrize(
    ("method", "weights"), [("litert-float16", "float16"), ("litert-gptq", "int8")]
)
def test_litert_target_writes_a_litert_bundle(tmp_path, method, weights):
    observations = _observations(200)
    npz = tmp_path / "states.npz"
    np.savez(npz, observation=observations)
    out = tmp_path / "q"
    result = invoke(
        "quantize", cartpole_bundle(), out, "--observations", npz, "--target", "litert",
        "--method", method, "--min-agreement", "0", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    manifest = bundle_lib.read_manifest(out)
    assert manifest["formats"] == ["litert"] and manifest["litert"]["file"] == "policy.tflite"
    assert manifest["quantization"]["weight_type"] == weights
    if method == "litert-gptq":
        # int8 weights feed DEQUANTIZE; the output layer stays float (in so small a
        # network, the scales and the extra op outweigh the bytes int8 saves).
        assert "DEQUANTIZE" in manifest["litert"]["ops"]
        assert manifest["quantization"]["float_layers"] and manifest["quantization"]["per_channel"]
    measured = observations[100:]  # the first half calibrates
    want = np.mean(
        _actions(cartpole_bundle(), "onnx", measured) == _actions(out, "litert", measured)
    )
    assert report["action_agreement"] == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "error: expected real states: --env ID (episodes of the float policy) or"),
        (["--env", "CartPole-v1", "--observations", "x.npz"], "error: expected real states"),
        (["--env", "NoSuchEnv-v0"], "error: env 'NoSuchEnv-v0': "),
        (["--observations", "missing.npz"], "error: --observations: missing.npz: no such file"),
        (["--env", "CartPole-v1", "--method", "magic"], "error: method: expected 'auto' or one"),
        (["--env", "CartPole-v1", "--target", "tpu"], "error: --target: expected some of"),
    ],
)
def test_input_errors(tmp_path, extra, message):
    result = invoke("quantize", cartpole_bundle(), tmp_path / "q", *extra)
    assert result.exit_code == 2, result.output
    assert error_line(result).startswith(message)


def test_recorded_states_of_the_wrong_shape_are_named(tmp_path):
    npz = tmp_path / "states.npz"
    np.savez(npz, observation=np.zeros((10, 3), np.float32))
    result = invoke("quantize", cartpole_bundle(), tmp_path / "q", "--observations", npz)
    assert result.exit_code == 2
    assert error_line(result) == (f"error: {npz}: observation: expected shape (10, 4), got (10, 3)")
    np.savez(npz, obs=np.zeros((10, 4), np.float32))
    result = invoke("quantize", cartpole_bundle(), tmp_path / "q", "--observations", npz)
    assert error_line(result).startswith(
        f"error: {npz}: expected arrays ['observation'] (one row per state), missing"
    )


def test_bundles_without_what_the_target_needs(tmp_path):
    from exporters import export_policy

    saved_model_only = export_policy(small_cartpole(), tmp_path / "sm", formats=("saved_model",))
    result = invoke("quantize", saved_model_only, tmp_path / "q", "--env", "CartPole-v1")
    assert result.exit_code == 2
    assert error_line(result) == (
        f"error: {saved_model_only}: expected a bundle with an ONNX graph, got "
        "['saved_model', 'golden']"
    )
    onnx_only = export_policy(small_cartpole(), tmp_path / "onnx", formats=("onnx",))
    result = invoke(
        "quantize", onnx_only, tmp_path / "q", "--env", "CartPole-v1", "--target", "litert"
    )
    assert result.exit_code == 2
    assert "LiteRT quantization converts the bundle's SavedModel again" in error_line(result)


def _npz_declaring(path, shape, descr="<f4", data=b""):
    """An .npz whose observation.npy header declares ``shape`` and holds ``data`` only."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("observation.npy", header.getvalue() + data)
    return path


def _hostile(tmp_path, kind):
    """A states file of one hostile kind (issue 22) and the error it must give."""
    path = tmp_path / "states.npz"
    rows = _observations(600)
    if kind == "nan":
        rows[7, 2] = np.nan
        rows[300:310, 0] = np.nan
        np.savez(path, observation=rows)
        return path, f"{path}: observation: expected finite values, got nan in row 7 (11 of 600 "
    if kind == "inf":
        rows[0, 3] = -np.inf
        np.savez(path, observation=rows)
        return path, f"{path}: observation: expected finite values, got -inf in row 0 (1 of 600 "
    if kind == "scalar":
        np.savez(path, observation=np.float32(0.5))
        return path, f"{path}: observation: expected one row per state, got a scalar (shape ())"
    if kind == "npy":
        path = tmp_path / "states.npy"
        np.save(path, rows)
        return path, (
            f"{path}: expected an .npz of arrays (numpy.savez), got a single .npy array; "
            "save the states with numpy.savez(path, observation=array)"
        )
    if kind == "not_zip":
        path.write_bytes(b"observation,0.1,0.2\n" * 10)
        return path, (
            f"{path}: expected an .npz of arrays (numpy.savez), got a file that is not a zip "
            "archive (File is not a zip file)"
        )
    if kind == "bad_zip":
        path.write_bytes(b"PK\x03\x04" + b"\0" * 100)
        return path, (
            f"{path}: expected an .npz of arrays (numpy.savez), got a file that is not a zip "
            "archive (File is not a zip file)"
        )
    if kind == "declares_1e8_rows":
        _npz_declaring(path, (100_000_000, 4), data=b"\0" * 64)
        return path, (
            f"{path}: observation: expected at most 1,000,000 rows (states), got 100,000,000 "
            "(shape (100000000, 4))"
        )
    if kind == "declares_800_mib":
        _npz_declaring(path, (1_000_000, 200))
        return path, (
            f"{path}: expected arrays of at most 512 MiB in all, got 763 MiB declared by the "
            "arrays up to 'observation' (observation: shape (1000000, 200), float32)"
        )
    if kind == "truncated":
        _npz_declaring(path, (10, 4), data=b"\0" * 8)
        return (
            path,
            f"{path}: observation: expected 160 bytes of data (shape (10, 4), float32), got 8",
        )
    if kind == "objects":
        _npz_declaring(path, (10, 4), descr="|O")
        return path, f"{path}: observation: expected numbers (bool, int or float), got dtype '|O'"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    ["nan", "inf", "scalar", "npy", "not_zip", "bad_zip", "declares_1e8_rows", "declares_800_mib",
     "truncated", "objects"],
)  # fmt: skip
def test_hostile_states_files_are_refused_in_one_line_before_their_data_is_read(tmp_path, kind):
    path, message = _hostile(tmp_path, kind)
    result = invoke("quantize", cartpole_bundle(), tmp_path / "q", "--observations", path)
    assert result.exit_code == 2, result.output
    assert error_line(result).startswith(f"error: {message}")
    assert not (tmp_path / "q").exists()


def test_what_the_target_needs_is_checked_before_any_episode(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnx", None)  # as on a device without it
    result = invoke(
        "quantize", cartpole_bundle(), tmp_path / "q", "--env", "CartPole-v1", "-n", "40"
    )
    assert result.exit_code == 2
    # One line and no stage before it: not one episode was played.
    assert result.stderr.strip().splitlines() == [
        "error: quantize --target onnx needs onnx, which is not installed "
        "(pip install 'policy-toolkit[runtime]')"
    ]


@pytest.fixture(scope="module")
def litert_bundle(tmp_path_factory):
    from exporters import export_policy

    return export_policy(
        small_cartpole(), tmp_path_factory.mktemp("litert") / "b",
        formats=("saved_model", "onnx", "litert"),
    )  # fmt: skip


@pytest.mark.parametrize("method", ["litert-gptq", "litert-float16"])
def test_a_hash_matching_litert_model_that_cannot_run_is_a_bundle_error(
    tmp_path, litert_bundle, method
):
    """LiteRT checks a model's tensor indices when it allocates, not when it loads it."""
    import shutil

    from tensorflow.lite.tools import flatbuffer_utils

    from tests.cli.test_cli_bundles import rehash

    bundle = shutil.copytree(litert_bundle, tmp_path / "b")
    model = flatbuffer_utils.read_model_from_bytearray(
        bytearray((bundle / "policy.tflite").read_bytes())
    )
    subgraph = max(model.subgraphs, key=lambda s: len(s.operators))  # distribution's
    subgraph.operators[0].inputs[0] = 8_388_615  # far beyond the subgraph's tensors
    (bundle / "policy.tflite").write_bytes(
        bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    )
    rehash(bundle)
    npz = tmp_path / "states.npz"
    np.savez(npz, observation=_observations(100))
    result = invoke(
        "quantize", bundle, tmp_path / "q", "--observations", npz, "--target", "litert",
        "--method", method, "--min-agreement", "0",
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert error_line(result).startswith(
        "error: LiteRT could not run the model's distribution signature: Invalid tensor index "
        "8388615"
    )
    assert not (tmp_path / "q").exists()


def test_a_target_module_plugs_in_with_one_table_entry(tmp_path, monkeypatch):
    """tests/toy_quantize_target.py, registered in place of ``onnx`` (the manifest schema
    names the targets, so a new name would also need its line there), is built,
    measured and written by ``quantize_bundle`` through the target interface only."""
    from exporters.quantize import quantize_bundle, targets
    from tests import toy_quantize_target

    toy = targets.Target(
        "onnx", toy_quantize_target.__name__, reads=("onnx",), writes="onnx",
        methods=(targets.Method("bfloat16-rounded", weights="bfloat16"),),
        needs=("onnx",), install="pip install onnx",
    )  # fmt: skip
    monkeypatch.setitem(targets.TARGETS, "onnx", toy)
    observations = _observations(400)
    npz = tmp_path / "states.npz"
    np.savez(npz, observation=observations)
    report = quantize_bundle(cartpole_bundle(), tmp_path / "q", observations=npz)
    assert toy_quantize_target.built == ["bfloat16-rounded"]
    assert report.written and report.method == "bfloat16-rounded"
    manifest = bundle_lib.read_manifest(tmp_path / "q")  # hashes and copies agree
    assert manifest["quantization"]["weight_type"] == "bfloat16"
    # What it measured is what the runtime computes on the held-out half.
    measured = observations[200:]
    want = np.mean(
        _actions(cartpole_bundle(), "onnx", measured) == _actions(tmp_path / "q", "onnx", measured)
    )
    assert report.action_agreement == pytest.approx(want, abs=1e-9)
