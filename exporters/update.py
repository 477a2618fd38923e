"""update_bundle: new weights into an existing bundle, without a new export.

A fleet that runs a bundle can take a small weights update instead of a full
re-export. The update comes from a checkpoint:

* a weights-only checkpoint (``exporters.save_checkpoint``): ``weights.npz`` holds the
  ONNX initializers ``w0, w1, ...`` in canonical order and ``tf/ckpt`` the TF variables;
* a training run's policy checkpoints (``<out>`` or ``<out>/policy_checkpoints``, with
  ``policy_spec.json``): the policy is rebuilt from the spec, restored (the latest
  checkpoint, or ``step``) and turned into a weights-only checkpoint first;
* for a bundle imported from TF-Agents, a ``PolicySaver`` checkpoint: read into the
  SavedModel the bundle was imported from (``metadata["source"]``) and turned into a
  weights-only checkpoint first (``exporters.import_tf_agents_checkpoint``).

The ONNX graph takes the new initializer values by canonical index, and only when the
checkpoint's graph fingerprint equals the bundle's (same structure, see
``exporters.weights``). The SavedModel is loaded, the TF checkpoint restored into its
``policy`` and ``train_step`` and saved again. The manifest's train step and every
hash are updated, and the bundle is replaced atomically: a failed update leaves the
old bundle as it was.

This module imports TensorFlow only to update a SavedModel or to read a training
checkpoint; an ONNX-only bundle takes a weights-only checkpoint without it.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import bundle
from toolkit.errors import BundleError, UnsupportedError

__all__ = ["UpdateReport", "update_bundle"]


@dataclasses.dataclass(frozen=True)
class UpdateReport:
    """What ``update_bundle`` changed.

    Attributes:
      bundle: the updated bundle.
      checkpoint: the weights-only checkpoint that was applied (a temporary one for a
        training checkpoint, gone once the update returns).
      source: what was given: "weights_only", "policy_checkpoint" or
        "tf_agents_checkpoint".
      previous_train_step: the bundle's train step before.
      train_step: the bundle's train step now.
      formats: the formats that were updated.
      max_weight_change: the largest absolute change of an ONNX initializer (None for a
        bundle without ONNX).
    """

    bundle: Path
    checkpoint: str
    source: str
    previous_train_step: int | None
    train_step: int | None
    formats: tuple[str, ...]
    max_weight_change: float | None


def _policy_checkpoint_dir(path: Path) -> Path | None:
    for candidate in (path, path / "policy_checkpoints"):
        if (candidate / "policy_spec.json").is_file():
            return candidate
    return None


def _weights_from_training(directory: Path, step: int | None, tmp: Path) -> Path:
    """Rebuilds the policy of a training run and writes it as a weights-only checkpoint."""
    from exporters.checkpoint import save_checkpoint
    from toolkit.agents import checkpoints

    prefix = None
    if step is not None:
        prefix = directory / f"ckpt-{step}"
        if not Path(f"{prefix}.index").is_file():
            steps = sorted(
                int(p.name[5:-6]) for p in directory.glob("ckpt-*.index") if p.name[5:-6].isdigit()
            )
            raise BundleError(f"{directory}: no checkpoint of train step {step}; there are {steps}")
    loaded = checkpoints.load_policy(directory, None if prefix is None else str(prefix))
    return save_checkpoint(loaded.policy, tmp / "weights", loaded.train_step)


def _weights_from_tf_agents(manifest: dict[str, Any], checkpoint: Path, tmp: Path) -> Path:
    """A TF-Agents policy checkpoint as a weights-only checkpoint of the imported bundle."""
    from exporters.tf_agents_import import import_tf_agents_checkpoint

    saved_model = Path(str(manifest["metadata"].get("source", "")))
    if not saved_model.is_dir():
        raise BundleError(
            f"{checkpoint}: a TF-Agents checkpoint is read into the SavedModel the bundle was "
            f"imported from, {saved_model}, which is not on this machine"
        )
    opset = manifest.get("onnx", {}).get("opset")
    kwargs = {"opset": opset} if opset is not None else {}
    return import_tf_agents_checkpoint(saved_model, checkpoint, tmp / "weights", **kwargs)


def update_bundle(
    bundle_dir: str | os.PathLike,
    checkpoint: str | os.PathLike,
    *,
    step: int | None = None,
) -> UpdateReport:
    """Writes the weights of ``checkpoint`` into the bundle, atomically.

    Args:
      bundle_dir: an exported bundle.
      checkpoint: a weights-only checkpoint folder, a training run's policy checkpoints
        (``<out>`` or ``<out>/policy_checkpoints``), or for a bundle imported from
        TF-Agents (``exporters.import_tf_agents``) a ``PolicySaver`` checkpoint.
      step: for training checkpoints, the train step to take (the latest by default).

    Returns:
      An UpdateReport.

    Raises:
      BundleError: a bundle or checkpoint that cannot be read, a checkpoint of another
        policy structure (fingerprint, names, shapes), or an unsupported checkpoint.
      UnsupportedError: a SavedModel that was not written by ``export_policy``.
    """
    root = Path(bundle_dir)
    manifest = bundle.read_manifest(root)
    source = Path(checkpoint)
    if not source.exists():
        raise BundleError(f"{source}: no such checkpoint")
    with tempfile.TemporaryDirectory(prefix="policy-update-") as scratch:
        if (source / bundle.CHECKPOINT_FILE).is_file():
            kind, weights_dir = "weights_only", source
            info = bundle.read_checkpoint(source)
            if step is not None and step != info.get("train_step"):
                raise BundleError(
                    f"{source}: step {step} asked, but this weights-only checkpoint holds "
                    f"train step {info.get('train_step')}"
                )
        elif (directory := _policy_checkpoint_dir(source)) is not None:
            kind = "policy_checkpoint"
            weights_dir = _weights_from_training(directory, step, Path(scratch))
            info = bundle.read_checkpoint(weights_dir)
        elif manifest.get("metadata", {}).get("imported_from") == "tf_agents":
            kind = "tf_agents_checkpoint"
            weights_dir = _weights_from_tf_agents(manifest, source, Path(scratch))
            info = bundle.read_checkpoint(weights_dir)
        else:
            raise BundleError(
                f"{source}: unsupported checkpoint: expected a weights-only checkpoint "
                "(checkpoint.json, from exporters.save_checkpoint), a training run's "
                "policy checkpoints (policy_spec.json), or for a bundle imported from "
                "TF-Agents a PolicySaver checkpoint"
            )
        return _apply(root, manifest, weights_dir, info, kind)


def _apply(
    root: Path, manifest: dict[str, Any], weights_dir: Path, info: dict[str, Any], kind: str
) -> UpdateReport:
    formats = tuple(f for f in ("saved_model", "onnx") if f in manifest)
    if not formats:
        raise BundleError(f"{root}: the bundle holds no model to update")
    train_step: int | None = int(info["train_step"])
    if kind == "tf_agents_checkpoint" and train_step == -1:
        train_step = None  # PolicySaver's "no train step", as import_tf_agents reads it
    new_manifest = copy.deepcopy(manifest)
    new_manifest.pop("files", None)
    new_manifest["train_step"] = train_step
    model, max_change = None, None
    if "onnx" in manifest:
        model, max_change = _updated_onnx(root, manifest, weights_dir, info)
    loaded = (
        _restored_saved_model(root, manifest, weights_dir, info)
        if "saved_model" in manifest
        else None
    )

    files = manifest["files"]
    replaced = [manifest[f]["file" if f == "onnx" else "dir"] for f in formats]

    def build(tmp: Path) -> dict[str, Any]:
        for rel in files:
            if any(rel == r or rel.startswith(r + "/") for r in replaced):
                continue
            # Anything else travels unchanged, read contained and hash-checked; the path
            # was validated, so it stays inside ``tmp`` too.
            data = bundle.read_member(root, rel, key=f"files[{rel!r}]", files=files)
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)
        if model is not None:
            import onnx

            from exporters import onnx_export

            onnx_export.embed_manifest(model, new_manifest)
            onnx.save(model, str(tmp / manifest["onnx"]["file"]))
        if loaded is not None:
            import tensorflow as tf

            signatures = {name: loaded.signatures[name] for name in loaded.signatures}
            saved_model_dir = tmp / manifest["saved_model"]["dir"]
            tf.saved_model.save(loaded, str(saved_model_dir), signatures=signatures)
            bundle.write_saved_model_manifest(saved_model_dir, new_manifest)
        return new_manifest

    bundle.write_bundle(root, build, overwrite=True)
    return UpdateReport(
        bundle=root,
        checkpoint=str(weights_dir),
        source=kind,
        previous_train_step=manifest.get("train_step"),
        train_step=train_step,
        formats=formats,
        max_weight_change=max_change,
    )


def _updated_onnx(
    root: Path, manifest: dict[str, Any], weights_dir: Path, info: dict[str, Any]
) -> tuple[Any, float]:
    import onnx
    from onnx import numpy_helper

    expected = manifest["onnx"].get("graph_fingerprint")
    got = info.get("graph_fingerprint")
    if expected != got:
        raise BundleError(
            f"{weights_dir}: expected a checkpoint of graph {str(expected)[:12]}... (the "
            f"bundle's), got graph {str(got)[:12]}...: another policy structure; export again"
        )
    names = manifest["onnx"]["initializers"]
    try:
        model = onnx.load_model_from_string(bundle.read_onnx(root, manifest))
    except BundleError:
        raise
    except Exception as e:  # protobuf's DecodeError and others
        raise BundleError(f"{root}: not a readable ONNX model ({e})") from e
    by_name = {init.name: init for init in model.graph.initializer}
    rel = info.get("weights", bundle.WEIGHTS_FILE)
    path = weights_dir / rel
    data = bundle.read_member(
        weights_dir, rel, key="weights", files=info["files"], where=bundle.CHECKPOINT_FILE
    )
    max_change = 0.0
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            weights = {key: npz[key] for key in npz.files}
    except Exception as e:  # zipfile and numpy raise several kinds for a broken file
        raise BundleError(f"{path}: not a readable weights file ({e})") from e
    keys = set(weights)
    wanted = {f"w{i}" for i in range(len(names))}
    if keys != wanted:
        raise BundleError(f"{path}: expected arrays w0..w{len(names) - 1}, got {sorted(keys)[:8]}")
    for i, name in enumerate(names):
        if name not in by_name:
            raise BundleError(f"{root}: initializer {name!r} of the manifest is not in the graph")
        old = numpy_helper.to_array(by_name[name])
        new = weights[f"w{i}"]
        if old.shape != new.shape or old.dtype != new.dtype:
            raise BundleError(
                f"{path}: w{i} ({name}): expected {old.dtype} {old.shape}, "
                f"got {new.dtype} {new.shape}"
            )
        if old.size and old.dtype.kind in "fiub":
            diff = np.abs(new.astype(np.float64) - old.astype(np.float64))
            max_change = max(max_change, float(diff.max()))
        by_name[name].CopyFrom(numpy_helper.from_array(new, name))
    return model, max_change


def _restored_saved_model(
    root: Path, manifest: dict[str, Any], weights_dir: Path, info: dict[str, Any]
) -> Any:
    import tensorflow as tf
    import tensorflow_probability  # noqa: F401  (registers TFP types the model may name)

    path = bundle.check_saved_model(root, manifest)
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as e:  # TF raises many kinds for a broken SavedModel
        raise BundleError(f"{path}: TensorFlow could not load the SavedModel: {e}") from e
    if not hasattr(loaded, "policy") or not hasattr(loaded, "train_step"):
        raise UnsupportedError(
            f"{root}: the SavedModel has no 'policy' and 'train_step' (not written by "
            "export_policy); export the policy again instead"
        )
    prefix = weights_dir / info.get("tf_checkpoint", bundle.TF_CHECKPOINT_PREFIX)
    checkpoint = tf.train.Checkpoint(policy=loaded.policy, train_step=loaded.train_step)
    try:
        checkpoint.read(str(prefix)).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BundleError(
            f"{weights_dir}: expected a checkpoint of the bundle's policy, got one that does "
            f"not fit its SavedModel ({first})"
        ) from e
    return loaded
