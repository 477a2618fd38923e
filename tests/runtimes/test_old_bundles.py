"""Bundles exported before the weights map: weights-only checkpoints work as before; TF
checkpoints are refused with what to do."""

from __future__ import annotations

import json

import pytest
import tensorflow as tf

import runtimes
from exporters import export_policy, save_checkpoint
from tests.exported_bundles import tf_policy_for
from toolkit import bundle as bundle_lib
from toolkit.errors import BundleError


def _as_old_bundle(path):
    """The bundle as exports before the weights map wrote it (manifest, its ONNX copy and
    the file table agreeing)."""
    import onnx

    from exporters import onnx_export

    manifest = json.loads((path / bundle_lib.MANIFEST).read_text())
    del manifest["onnx"]["weights"]
    model = onnx.load(str(path / bundle_lib.ONNX_FILE))
    onnx_export.embed_manifest(model, manifest)
    onnx.save(model, str(path / bundle_lib.ONNX_FILE))
    manifest["files"] = bundle_lib.hash_files(path)
    (path / bundle_lib.MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.slow
def test_old_bundle_takes_weights_only_and_refuses_tf_checkpoints(tmp_path):
    policy = tf_policy_for("tf/greedy_q")
    bundle = export_policy(policy, tmp_path / "bundle", formats=("onnx",), train_step=1)
    _as_old_bundle(bundle)
    save_checkpoint(policy, tmp_path / "weights", train_step=5)
    step = tf.Variable(9, dtype=tf.int64)
    tf.train.CheckpointManager(
        tf.train.Checkpoint(policy=policy, train_step=step), str(tmp_path / "run"), 1
    ).save(9)
    loaded = runtimes.load_policy(bundle, "onnx")
    loaded.update_from_checkpoint(tmp_path / "weights")
    assert loaded.train_step == 5
    with pytest.raises(BundleError, match=r"the bundle has no weights map \(exported before"):
        loaded.update_from_checkpoint(tmp_path / "run")
    assert loaded.train_step == 5
