"""Real bundles, mutated: readers refuse with a ToolkitError or act within the spec, and
writers (update, quantize) never write outside the bundle."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil

import numpy as np
import pytest

import runtimes
from tests import exported_bundles
from toolkit import bundle
from toolkit.errors import BundleError, ToolkitError
from toolkit.specs import array_spec

hypothesis = pytest.importorskip("hypothesis")
st = pytest.importorskip("hypothesis.strategies")

CASE = sorted(exported_bundles.ONNX_ONLY)[0]  # ONNX only: nothing here needs TensorFlow


@pytest.fixture(scope="module")
def source():
    path, _ = exported_bundles.bundle_for(CASE)
    return path


def _copy(source, tmp_path, name="b"):
    target = tmp_path / name
    shutil.copytree(source, target)
    return target


def _rehash(path, rel):
    manifest = json.loads((path / "manifest.json").read_text())
    data = (path / rel).read_bytes()
    manifest["files"][rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (path / "manifest.json").write_text(json.dumps(manifest))


def _act_within_spec(policy):
    rng = np.random.default_rng(0)
    for step in range(2):
        time_step = array_spec.sample_spec_nest(policy.time_step_spec, rng)
        time_step = time_step._replace(step_type=np.asarray(min(step, 1), np.int32))
        action = policy.action(time_step, policy.get_initial_state()).action
        assert array_spec.check_arrays_nest(action, policy.action_spec)


@hypothesis.settings(max_examples=40, deadline=None, derandomize=True)
@hypothesis.given(
    cut=st.floats(0.0, 1.0),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 7)), max_size=6),
    rehash=st.booleans(),
)
def test_damaged_graphs_are_refused_or_act_within_the_spec(
    source, tmp_path_factory, cut, flips, rehash
):
    path = _copy(source, tmp_path_factory.mktemp("fuzz"))
    data = bytearray((path / "policy.onnx").read_bytes())
    data = data[: max(1, int(len(data) * cut))] if cut < 0.5 else data
    for where, bit in flips:
        data[int(where * (len(data) - 1))] ^= 1 << bit
    (path / "policy.onnx").write_bytes(bytes(data))
    if rehash:
        _rehash(path, "policy.onnx")
    try:
        policy = runtimes.load_policy(path, "onnx", seed=0)
    except ToolkitError:
        return
    with contextlib.suppress(ToolkitError):  # refusing a time step is fine too
        _act_within_spec(policy)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from exporters import save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "ckpt"
    return save_checkpoint(exported_bundles.tf_policy_for(CASE), path, train_step=7)


def _decoy(tmp_path, name, data):
    decoy = tmp_path / name
    decoy.write_bytes(data)
    return decoy, decoy.stat().st_mtime_ns


def test_update_never_writes_outside_the_bundle(source, checkpoint, tmp_path):
    from exporters import update_bundle

    path = _copy(source, tmp_path)
    victim, mtime = _decoy(tmp_path, "victim.onnx", (path / "policy.onnx").read_bytes())
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["onnx"]["file"] = "../victim.onnx"
    manifest["files"]["../victim.onnx"] = manifest["files"].pop("policy.onnx")
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"onnx.file: expected a relative path inside the bundle"):
        update_bundle(path, checkpoint)
    assert victim.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "victim.onnx"]


def test_update_through_a_symlink_is_refused(source, checkpoint, tmp_path):
    from exporters import update_bundle

    path = _copy(source, tmp_path)
    victim, mtime = _decoy(tmp_path, "victim.onnx", (path / "policy.onnx").read_bytes())
    (path / "policy.onnx").unlink()
    (path / "policy.onnx").symlink_to(victim)
    with pytest.raises(BundleError, match=r"policy.onnx is reached through a symbolic link"):
        update_bundle(path, checkpoint)
    assert victim.stat().st_mtime_ns == mtime


@pytest.mark.parametrize(
    "card", [b'{"metadata": {', b'{"metadata": {"component": []}}', b'{"metadata": {"component":'
             b' {"modelCard": {"properties": "x"}}}}'],
    ids=["truncated", "component-a-list", "properties-a-string"],
)  # fmt: skip
def test_update_refuses_a_malformed_card_whose_hash_matches_and_keeps_the_bundle(
    source, checkpoint, tmp_path, card
):
    # update rewrites the card's train step; a card it cannot read was an unexpected
    # JSONDecodeError/KeyError/TypeError (benchmarks/fuzz_bundles.py found inspect's twin).
    import hashlib

    from exporters import update_bundle

    path = _copy(source, tmp_path)
    (path / "bom.cdx.json").write_bytes(card)
    manifest = json.loads((path / "manifest.json").read_text())
    digest = hashlib.sha256(card).hexdigest()
    manifest["files"]["bom.cdx.json"] = {"sha256": digest, "size": len(card)}
    (path / "manifest.json").write_text(json.dumps(manifest))
    before = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
    with pytest.raises(BundleError, match=r"bom.cdx.json: expected a CycloneDX model card with "
                       r"metadata.component.modelCard \(as export writes it\), got "):  # fmt: skip
        update_bundle(path, checkpoint)
    assert {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()} == before


def test_update_applies_a_checkpoint_and_stays_consistent(source, checkpoint, tmp_path):
    from exporters import update_bundle

    path = _copy(source, tmp_path)
    report = update_bundle(path, checkpoint)
    assert report.train_step == 7
    policy = runtimes.load_policy(path, "onnx", seed=0)  # manifest, copy and graph agree
    assert policy.train_step == 7
    _act_within_spec(policy)


def test_external_data_in_a_bundle_is_refused_before_onnxruntime(source, tmp_path):
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    path = _copy(source, tmp_path)
    model = onnx.load_model_from_string((path / "policy.onnx").read_bytes())
    convert_model_to_external_data(model, location="w.bin", size_threshold=0)
    onnx.save_model(model, str(path / "policy.onnx"))
    _rehash(path, "policy.onnx")
    _rehash(path, "w.bin")
    with pytest.raises(BundleError, match=r"expected a self-contained ONNX model"):
        runtimes.load_policy(path, "onnx")


def test_quantize_reads_contained_and_writes_only_its_output(source, tmp_path):
    from exporters import quantize_bundle

    path = _copy(source, tmp_path)
    (path / "policy.onnx").rename(tmp_path / "elsewhere.onnx")
    (path / "policy.onnx").symlink_to(tmp_path / "elsewhere.onnx")
    with pytest.raises(BundleError, match=r"reached through a symbolic link"):
        # The containment check comes before the states are read.
        quantize_bundle(path, tmp_path / "q", observations=tmp_path / "states.npz")
    assert not (tmp_path / "q").exists()
    assert not any(p.name.startswith(".q.") for p in tmp_path.iterdir())


def test_a_manifest_that_names_no_bundle_file_for_weights_is_refused(checkpoint, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint, ckpt)
    info = json.loads((ckpt / bundle.CHECKPOINT_FILE).read_text())
    info["weights"] = "../../etc/passwd"
    (ckpt / bundle.CHECKPOINT_FILE).write_text(json.dumps(info))
    with pytest.raises(BundleError, match=r"checkpoint.json: weights: expected a relative path"):
        bundle.read_checkpoint(ckpt)
