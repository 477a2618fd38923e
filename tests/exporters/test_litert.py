"""The litert format and backend: export, manifest, verify, update, and the backend's
fast path, threads, errors and quiet start."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

import exporters
import runtimes
from tests.contract import cases_runtime as cr
from tests.contract.case import sample_time_step
from toolkit import bundle, nest
from toolkit.errors import BundleError, ExportError, PolicyError, UnsupportedError

pytestmark = pytest.mark.slow


def _copy(kind, tmp_path):
    return shutil.copytree(cr.bundle(kind), tmp_path / "bundle")


def _edit_manifest(path, edit):
    manifest_path = path / bundle.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    edit(manifest)
    manifest_path.write_text(json.dumps(manifest))


def test_manifest_lists_the_litert_model_with_its_hash_signatures_and_builtin_ops():
    path = cr.bundle("rnn/greedy_q")
    manifest = bundle.read_manifest(path)
    assert manifest["formats"] == ["saved_model", "onnx", "litert", "golden"]
    entry = manifest["litert"]
    assert entry["file"] == "policy.tflite"
    assert entry["signatures"] == ["distribution", "get_initial_state"]
    assert "FULLY_CONNECTED" in entry["ops"]
    assert not [op for op in entry["ops"] if op.startswith("CUSTOM")]
    data = (path / "policy.tflite").read_bytes()
    assert manifest["files"]["policy.tflite"]["size"] == len(data)
    # The LiteRT model carries exactly the two signatures, named like the manifest's I/O.
    from ai_edge_litert.interpreter import Interpreter

    signatures = Interpreter(model_content=data).get_signature_list()
    assert set(signatures) == {"distribution", "get_initial_state"}
    want = {e["name"] for e in manifest["signatures"]["distribution"]["inputs"]}
    assert set(signatures["distribution"]["inputs"]) == want


def test_verify_compares_litert_with_the_live_policy_and_its_initial_state():
    report = exporters.verify(cr.bundle("rnn/greedy_q"), 16, policy=cr.live("rnn/greedy_q"))
    assert report.ok, str(report)
    outputs = {row.output for row in report.rows if row.form == "litert"}
    assert {"action", "next_state/0/0", "get_initial_state/policy_state/0/0"} <= outputs


def test_verify_catches_a_litert_model_of_other_weights(tmp_path):
    path = _copy("greedy_q", tmp_path)
    other = exporters.export_policy(
        cr.set_weights(cr.live("greedy_q"), 99), tmp_path / "other", formats=("litert",)
    )
    data = (other / "policy.tflite").read_bytes()
    (path / "policy.tflite").write_bytes(data)

    def rehash(manifest):
        manifest["files"]["policy.tflite"] = {
            "sha256": bundle.sha256_file(path / "policy.tflite"),
            "size": len(data),
        }

    _edit_manifest(path, rehash)
    report = exporters.verify(path, 32)
    assert not report.ok
    assert {row.form for row in report.failures()} == {"litert"}


def test_ops_litert_lacks_are_named(tmp_path):
    with pytest.raises(ExportError, match=r"cannot be exported to LiteRT: .*BroadcastTo, Fill"):
        exporters.export_policy(
            cr.live("random_tf/nested"), tmp_path / "b", formats=("onnx", "litert")
        )
    assert not (tmp_path / "b").exists()


def test_update_converts_the_litert_model_again(tmp_path):
    path = _copy("actor/action_network", tmp_path)
    policy = cr.live("actor/action_network")
    for variable in policy.variables():
        variable.assign(variable * 1.5)
    checkpoint = exporters.save_checkpoint(policy, tmp_path / "ckpt", train_step=11)
    before = (path / "policy.tflite").read_bytes()
    report = exporters.update_bundle(path, checkpoint)
    assert report.formats == ("saved_model", "onnx", "litert", "golden")
    assert (path / "policy.tflite").read_bytes() != before
    assert exporters.verify(path, 16, policy=policy).ok
    litert = runtimes.load_policy(path, "litert")
    assert litert.train_step == 11
    time_step = sample_time_step(litert.time_step_spec, (4,), np.random.default_rng(0))
    want = runtimes.load_policy(path, "onnx").action(time_step).action
    np.testing.assert_allclose(litert.action(time_step).action, want, atol=1e-5)


def test_update_of_a_litert_bundle_without_savedmodel_says_why(tmp_path):
    policy = cr.live("greedy_q")
    path = exporters.export_policy(policy, tmp_path / "b", formats=("onnx", "litert"))
    checkpoint = exporters.save_checkpoint(policy, tmp_path / "ckpt", train_step=3)
    with pytest.raises(UnsupportedError, match=r"converts it again from the bundle's SavedModel"):
        exporters.update_bundle(path, checkpoint)


# --- the backend ---------------------------------------------------------------------------------


def test_litert_backend_refuses_weights_only_checkpoints_with_advice(tmp_path):
    policy = runtimes.load_policy(cr.bundle("greedy_q"), "litert")
    with pytest.raises(UnsupportedError, match=r"Run `policy-toolkit update` .* TensorFlow"):
        policy.update_from_checkpoint(tmp_path)


def test_tensors_are_resized_only_when_the_batch_changes(monkeypatch):
    policy = runtimes.load_policy(cr.bundle("rnn/greedy_q"), "litert", seed=0)
    runner = policy._runner()
    calls = []
    real = runner.wrapper

    class Counting:
        def __getattr__(self, name):
            if name == "ResizeInputTensor":
                calls.append(name)
            return getattr(real, name)

    runner.wrapper = Counting()
    rng = np.random.default_rng(0)
    sizes = [1, 1, 1, 4, 4, 1]
    for size in sizes:
        time_step = sample_time_step(policy.time_step_spec, (size,), rng)
        policy.action(time_step, policy.get_initial_state(size))
    inputs = len(policy._input_names)
    assert len(calls) == inputs * 2  # 1 -> 4 and 4 -> 1 (batch 1 was allocated at load)


def test_each_thread_has_its_own_interpreter_and_results_match():
    policy = runtimes.load_policy(cr.bundle("actor/action_network"), "litert")
    reference = runtimes.load_policy(cr.bundle("actor/action_network"), "onnx")
    rng = np.random.default_rng(1)
    steps = [sample_time_step(policy.time_step_spec, (8,), rng) for _ in range(4)]
    want = [reference.action(step).action for step in steps]
    # The objects themselves are kept (an id could be reused once a thread's is freed),
    # and the barrier keeps every thread alive until all have acted.
    interpreters, errors = [], []
    barrier = threading.Barrier(4)

    def work(i):
        try:
            for _ in range(50):
                got = policy.action(steps[i]).action
                np.testing.assert_allclose(got, want[i], atol=1e-5)
            interpreters.append(policy.interpreter)
            barrier.wait(timeout=60)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len({id(i) for i in interpreters}) == 4


def test_tampered_or_escaping_model_files_are_refused(tmp_path):
    path = _copy("greedy_q", tmp_path)
    data = bytearray((path / "policy.tflite").read_bytes())
    data[-1] ^= 1
    (path / "policy.tflite").write_bytes(bytes(data))
    with pytest.raises(
        BundleError, match=r"policy.tflite: expected sha256 .* \(the file was changed\)"
    ):
        runtimes.load_policy(path, "litert")

    def escape(manifest):
        manifest["litert"]["file"] = "../outside.tflite"

    _edit_manifest(path, escape)
    with pytest.raises(
        BundleError, match=r"litert.file: expected a relative path inside the bundle .*outside"
    ):
        runtimes.load_policy(path, "litert")


def test_unvalidated_inputs_are_cast_like_the_onnx_backends_and_bad_shapes_named():
    # validate_args=False: the caller vouches for inputs; a wrong dtype is cast into the
    # model's input buffer (as the onnx backend's bound buffers do), a wrong shape refused.
    policy = runtimes.load_policy(cr.bundle("greedy_q"), "litert", validate_args=False)
    time_step = sample_time_step(policy.time_step_spec, (2,), np.random.default_rng(0))
    want = policy.action(time_step).action
    wide = time_step._replace(observation=time_step.observation.astype(np.float64))
    np.testing.assert_array_equal(policy.action(wide).action, want)
    bad = time_step._replace(observation=np.zeros((2, 5), np.float32))
    with pytest.raises(PolicyError, match=r"LiteRT could not run the policy"):
        policy.action(bad)
    np.testing.assert_array_equal(policy.action(time_step).action, want)  # still works


def test_auto_prefers_onnx_then_litert(tmp_path):
    path = _copy("greedy_q", tmp_path)
    assert runtimes.load_policy(path).backend == "onnx"

    def litert_only(manifest):
        manifest["formats"] = ["litert"]
        # Every section but litert's goes (the golden vectors are a format too).
        for name in ("onnx", "saved_model", "golden"):
            manifest.pop(name, None)

    _edit_manifest(path, litert_only)
    assert runtimes.load_policy(path).backend == "litert"
    assert runtimes.load_policy(path / "policy.tflite").backend == "litert"
    with pytest.raises(BundleError, match=r"exported without ONNX \(formats \['litert'\]\); use"):
        runtimes.load_policy(path, "onnx")


def test_the_delegate_banner_stays_off_stderr():
    code = (
        "import numpy as np, runtimes\n"
        "from toolkit.trajectories import time_step as ts\n"
        f"p = runtimes.load_policy({str(cr.bundle('greedy_q'))!r}, 'litert')\n"
        "p.action(ts.restart(np.zeros(4, np.float32)))\n"
        "p.action(ts.restart(np.zeros((3, 4), np.float32), 3))\n"
        "print('acted')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "acted" in done.stdout
    assert "XNNPACK" not in done.stderr


def test_copies_act_alike_and_nest_outputs_match_onnx():
    kind = "actor/categorical_normal"
    litert = runtimes.load_policy(cr.bundle(kind), "litert", seed=5)
    onnx = runtimes.load_policy(cr.bundle(kind), "onnx", seed=5)
    time_step = sample_time_step(litert.time_step_spec, (), np.random.default_rng(3))
    a, b = litert.copy().action(time_step), onnx.action(time_step)
    for x, y in zip(nest.flatten(a), nest.flatten(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5)
