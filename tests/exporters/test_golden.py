"""Golden vectors (golden.bin): what they record, and verify against them.

The bundles are the contract suite's (tests/exported_bundles.py, shared with other
modules) and one ONNX-only CartPole bundle copied per test that changes it.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

import exporters
from exporters.formats import golden
from tests.exported_bundles import bundle_for
from toolkit import bundle as bundle_lib
from toolkit.errors import BundleError


def _rehash(root) -> dict:
    """Rewrites the file table, as a writer of a hostile bundle would; returns the manifest."""
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"] = bundle_lib.hash_files(root)
    (root / "manifest.json").write_text(json.dumps(manifest))
    return manifest


@pytest.fixture(scope="module")
def onnx_only(tmp_path_factory):
    from tests.cli_factories import small_cartpole

    root = tmp_path_factory.mktemp("golden") / "onnx"
    return exporters.export_policy(small_cartpole(seed=3), root, formats=("onnx",))


@pytest.fixture
def copy(onnx_only, tmp_path):
    return shutil.copytree(onnx_only, tmp_path / "b")


def test_a_recurrent_policy_s_recording_carries_its_state_between_steps():
    path, _ = bundle_for("tf/greedy_q_rnn")
    recording = golden.read_recording(path, bundle_lib.read_layout(path))
    assert recording.source == "tf_policy" and len(recording.steps) == golden.STATEFUL_STEPS
    (first_inputs, _), *later = recording.steps
    assert np.all(first_inputs["step_type"] == 0)
    states = [name for name in first_inputs if name.startswith("policy_state/")]
    assert states and all(not np.any(first_inputs[name]) for name in states)  # initial
    previous = recording.steps[0][1]
    for inputs, outputs in later:
        for name in states:
            carried = previous["next_state/" + name.removeprefix("policy_state/")]
            np.testing.assert_array_equal(inputs[name], carried)
        previous = outputs
    assert np.any(previous["next_state/" + states[0].removeprefix("policy_state/")])
    report = exporters.verify(path, num_samples=8)
    assert report.ok, str(report)
    golden_rows = {(r.form, r.output) for r in report.rows if r.reference == "golden"}
    assert {"saved_model", "onnx"} == {form for form, _ in golden_rows}
    assert any(output.startswith("next_state/") for _, output in golden_rows)


def test_verify_without_a_second_form_checks_onnx_against_the_recording(copy):
    report = exporters.verify(copy)
    assert report.ok and report.reference == "golden" and report.forms == ["onnx"]
    # Recorded outputs that the graph does not compute: verify fails, naming the output.
    manifest = bundle_lib.read_manifest(copy)
    offset = 0
    for array in manifest["golden"]["arrays"]:
        size = math.prod(array["shape"]) * np.dtype(array["dtype"]).itemsize
        if array["role"] == "output" and array["name"] == "distribution/loc":
            break
        offset += size
    data = bytearray((copy / golden.FILE).read_bytes())
    values = np.frombuffer(bytes(data[offset : offset + size]), "<f4") + 1.0
    data[offset : offset + size] = values.astype("<f4").tobytes()
    (copy / golden.FILE).write_bytes(bytes(data))
    _rehash(copy)
    report = exporters.verify(copy)
    assert not report.ok
    assert [(r.form, r.reference, r.output) for r in report.failures()] == [
        ("onnx", "golden", "distribution/loc")
    ]


def test_a_golden_file_of_another_size_than_declared_is_refused(copy):
    data = (copy / golden.FILE).read_bytes()
    (copy / golden.FILE).write_bytes(data[:-4])
    _rehash(copy)
    with pytest.raises(
        BundleError, match=rf"golden.bin: expected {len(data)} bytes \(the arrays golden.arrays "
        rf"declares\), got {len(data) - 4}"
    ):  # fmt: skip
        exporters.verify(copy)


def test_a_declared_shape_beyond_the_limit_is_refused_before_reading(copy):
    # A manifest (and its copy in policy.onnx) declaring 64 GiB for a 5 KB file: the
    # reader refuses it from the declaration alone.
    manifest = bundle_lib.read_manifest(copy)
    manifest["golden"]["arrays"][0]["shape"] = [16, 1 << 30]
    layout = bundle_lib.Layout.of(manifest)
    with pytest.raises(BundleError, match=r"golden.arrays\[0\]: expected at most 67108864 bytes"):
        golden.read_recording(copy, layout)
