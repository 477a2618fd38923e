"""update_bundle: new weights into an existing bundle, without a new export.

A fleet that runs a bundle can take a small weights update instead of a full
re-export. The update comes from any checkpoint ``toolkit.checkpoint_weights`` finds: a
weights-only checkpoint (``exporters.save_checkpoint``), a training run's policy
checkpoints (``<out>`` or ``<out>/policy_checkpoints``), TF-Agents' policy checkpoints
(``policies/checkpoints/`` of PolicySavedModelTrigger, or one ``PolicySaver``
checkpoint), or a checkpoint prefix; a folder gives its latest (or ``step``).

Bundles with a weights map (``manifest["onnx"]["weights"]``, see exporters.probe) take
them all through it: the ONNX initializers are read from the checkpoint without
TensorFlow (runtimes.checkpoints) and the SavedModel's variables are assigned along the
same object paths. Bundles exported before the map go the old way: TF checkpoints are
turned into a weights-only checkpoint with TensorFlow, whose graph fingerprint must
equal the bundle's. The manifest's train step and every hash are updated, and the
bundle is replaced atomically: a failed update leaves the old bundle as it was.

This module imports TensorFlow only to update a SavedModel or for bundles without a
weights map; an ONNX-only bundle with a map takes every checkpoint without it.
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
    from exporters.tf_agents.importer import import_tf_agents_checkpoint

    saved_model = Path(str(manifest["metadata"].get("source", "")))
    if not saved_model.is_dir():
        raise BundleError(
            f"{checkpoint}: a TF-Agents checkpoint is read into the SavedModel the bundle was "
            f"imported from, {saved_model}, which is not on this machine"
        )
    opset = manifest.get("onnx", {}).get("opset")
    kwargs = {"opset": opset} if opset is not None else {}
    # The same policy the import built: with --greedy, the deterministic part only.
    greedy = bool(manifest["metadata"].get("tf_agents_greedy", False))
    return import_tf_agents_checkpoint(
        saved_model, checkpoint, tmp / "weights", greedy=greedy, **kwargs
    )


def update_bundle(
    bundle_dir: str | os.PathLike,
    checkpoint: str | os.PathLike,
    *,
    step: int | None = None,
) -> UpdateReport:
    """Writes the weights of ``checkpoint`` into the bundle, atomically.

    Args:
      bundle_dir: an exported bundle.
      checkpoint: a weights-only checkpoint folder (or a folder of them), a training
        run's policy checkpoints (``<out>`` or ``<out>/policy_checkpoints``), TF-Agents'
        ``policies/checkpoints/`` (or one ``policy_checkpoint_<step>``), or a
        checkpoint prefix; the latest checkpoint of a folder is taken.
      step: the train step to take (the latest by default).

    Returns:
      An UpdateReport.

    Raises:
      BundleError: a bundle or checkpoint that cannot be read, a checkpoint of another
        policy structure (fingerprint, names, shapes), or an unsupported checkpoint.
      UnsupportedError: a SavedModel that was not written by ``export_policy``.
    """
    from toolkit import checkpoint_weights

    root = Path(bundle_dir)
    manifest = bundle.read_manifest(root)
    if (root / "saved_model.pb").is_file():
        # publish mirrors the SavedModel at a version's root for TF Serving; an update
        # would rewrite the bundle without it, and servers keep what they loaded anyway.
        raise BundleError(
            f"{root}: a published version is never changed in place, as servers keep what "
            "they loaded; update the source bundle and publish it as a new version"
        )
    source = Path(checkpoint)
    if not source.exists() and not Path(f"{source}.index").is_file():
        raise BundleError(f"{source}: no such checkpoint")
    if checkpoint_weights.has_weights_map(manifest):
        found = checkpoint_weights.select(source, step)
        return _apply_found(root, manifest, found)
    # A bundle exported before the weights map: TF checkpoints go through TensorFlow.
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
        try:
            return _apply(root, manifest, weights_dir, info, kind, shown=source)
        except BundleError as e:
            if "fingerprint" in str(e) or "another policy structure" in str(e):
                raise BundleError(
                    f"{e}; {root} was exported before policy-toolkit recorded a weights map "
                    "(a bundle exported from zero biases takes no trained weights): export "
                    "it again with this version to take every later checkpoint"
                ) from e
            raise


def _apply_found(root: Path, manifest: dict[str, Any], found: Any) -> UpdateReport:
    """Applies a checkpoint through the bundle's weights map (ONNX without TensorFlow)."""
    from runtimes.checkpoints import read_weights

    formats = tuple(f for f in bundle.FORMATS if f in manifest)
    if "litert" in manifest:
        _check_can_reconvert(root, manifest)
    weights = read_weights(manifest, found)
    train_step = weights.train_step
    if found.kind == "tf_agents_checkpoint" and train_step == -1:
        train_step = None  # PolicySaver's "no train step", as import_tf_agents reads it
    new_manifest = copy.deepcopy(manifest)
    new_manifest.pop("files", None)
    new_manifest["train_step"] = train_step
    model, max_change = _onnx_with(root, manifest, weights.initializers)
    loaded = None
    if "saved_model" in manifest:
        loaded = _saved_model_with(root, manifest, found, train_step)
    _write(root, manifest, new_manifest, model, loaded)
    return UpdateReport(
        bundle=root,
        checkpoint=str(found.path),
        source=found.kind,
        previous_train_step=manifest.get("train_step"),
        train_step=train_step,
        formats=formats,
        max_weight_change=max_change,
    )


def _onnx_with(
    root: Path, manifest: dict[str, Any], initializers: dict[str, np.ndarray]
) -> tuple[Any, float]:
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load_model_from_string(bundle.read_onnx(root, manifest))
    except BundleError:
        raise
    except Exception as e:  # protobuf's DecodeError and others
        raise BundleError(f"{root}: not a readable ONNX model ({e})") from e
    by_name = {init.name: init for init in model.graph.initializer}
    max_change = 0.0
    for name, new in initializers.items():
        if name not in by_name:
            raise BundleError(f"{root}: initializer {name!r} of the manifest is not in the graph")
        old = numpy_helper.to_array(by_name[name])
        if old.shape != new.shape or old.dtype != new.dtype:
            raise BundleError(
                f"{root}: initializer {name}: expected {old.dtype} {old.shape}, got "
                f"{new.dtype} {new.shape}"
            )
        if old.size:
            diff = np.abs(new.astype(np.float64) - old.astype(np.float64))
            max_change = max(max_change, float(diff.max()))
        by_name[name].CopyFrom(numpy_helper.from_array(new, name))
    return model, max_change


def _load_saved_model(root: Path, manifest: dict[str, Any]) -> Any:
    """The bundle's SavedModel as export_policy wrote it (``policy`` and ``train_step``)."""
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
    return loaded


def _saved_model_with(
    root: Path, manifest: dict[str, Any], found: Any, train_step: int | None
) -> Any:
    """The bundle's SavedModel with the checkpoint's variables assigned by object path."""
    from toolkit import checkpoint_weights

    loaded = _load_saved_model(root, manifest)
    if found.kind == "weights_only":
        info = bundle.read_checkpoint(found.path)
        prefix = found.path / str(info.get("tf_checkpoint", bundle.TF_CHECKPOINT_PREFIX))
    else:
        prefix = found.path
    values, _ = checkpoint_weights.read_tf_checkpoint(manifest, prefix, str(found.path))
    for spec, value in zip(manifest["onnx"]["weights"]["variables"], values, strict=True):
        variable = _variable_at(loaded.policy, spec["paths"])
        if variable is None:
            raise BundleError(
                f"{root}: the SavedModel's policy has no variable at {spec['paths'][:1]}; "
                "export the policy again"
            )
        variable.assign(value)
    loaded.train_step.assign(-1 if train_step is None else int(train_step))
    return loaded


def _variable_at(policy: Any, paths: list[list[str]]) -> Any:
    import tensorflow as tf

    for path in paths:
        node = policy
        for name in path:
            node = tf.train.TrackableView(node).children(node).get(name)
            if node is None:
                break
        if isinstance(node, tf.Variable):
            return node
    return None


def _write(
    root: Path, manifest: dict[str, Any], new_manifest: dict[str, Any], model: Any, loaded: Any
) -> None:
    formats = tuple(f for f in bundle.FORMATS if f in manifest)
    files = manifest["files"]
    replaced = [manifest[f]["dir" if f == "saved_model" else "file"] for f in formats]

    def build(tmp: Path) -> dict[str, Any]:
        for rel in files:
            if any(rel == r or rel.startswith(r + "/") for r in replaced):
                continue
            # Anything else travels unchanged, read contained and hash-checked; the path
            # was validated, so it stays inside ``tmp`` too.
            data = bundle.read_member(root, rel, key=f"files[{rel!r}]", files=files)
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)
        saved_model_dir = None
        if loaded is not None:
            import tensorflow as tf

            signatures = {name: loaded.signatures[name] for name in loaded.signatures}
            saved_model_dir = tmp / manifest["saved_model"]["dir"]
            tf.saved_model.save(loaded, str(saved_model_dir), signatures=signatures)
        if "litert" in manifest:
            # A LiteRT model's weights are converted constants: convert it again, from
            # the SavedModel that now holds the new weights.
            from exporters import litert_export

            model_bytes = litert_export.convert_saved_model(
                tmp / manifest["saved_model"]["dir"], what=str(root)
            )
            (tmp / manifest["litert"]["file"]).write_bytes(model_bytes)
            new_manifest["litert"] = litert_export.manifest_entry(
                model_bytes, manifest["litert"]["file"]
            )
        # Last: the SavedModel and the ONNX file repeat the finished manifest.
        if saved_model_dir is not None:
            bundle.write_saved_model_manifest(saved_model_dir, new_manifest)
        if model is not None:
            import onnx

            from exporters import onnx_export

            onnx_export.embed_manifest(model, new_manifest)
            onnx.save(model, str(tmp / manifest["onnx"]["file"]))
        return new_manifest

    bundle.write_bundle(root, build, overwrite=True)


def _apply(
    root: Path,
    manifest: dict[str, Any],
    weights_dir: Path,
    info: dict[str, Any],
    kind: str,
    shown: Path,
) -> UpdateReport:
    formats = tuple(f for f in bundle.FORMATS if f in manifest)
    if not formats:
        raise BundleError(f"{root}: the bundle holds no model to update")
    if "litert" in manifest:
        _check_can_reconvert(root, manifest)
    train_step: int | None = int(info["train_step"])
    if kind == "tf_agents_checkpoint" and train_step == -1:
        train_step = None  # PolicySaver's "no train step", as import_tf_agents reads it
    new_manifest = copy.deepcopy(manifest)
    new_manifest.pop("files", None)
    new_manifest["train_step"] = train_step
    model, max_change = None, None
    if "onnx" in manifest:
        model, max_change = _updated_onnx(root, manifest, weights_dir, info, shown)
    loaded = (
        _restored_saved_model(root, manifest, weights_dir, info, shown)
        if "saved_model" in manifest
        else None
    )
    _write(root, manifest, new_manifest, model, loaded)
    return UpdateReport(
        bundle=root,
        checkpoint=str(shown),
        source=kind,
        previous_train_step=manifest.get("train_step"),
        train_step=train_step,
        formats=formats,
        max_weight_change=max_change,
    )


def _check_can_reconvert(root: Path, manifest: dict[str, Any]) -> None:
    """Updating policy.tflite converts it again, which needs TensorFlow and the SavedModel."""
    import importlib.util

    if "saved_model" not in manifest:
        raise UnsupportedError(
            f"{root}: updating {manifest['litert'].get('file')} converts it again from the "
            "bundle's SavedModel, and this bundle has none; export the policy again "
            "(--format onnx,litert) instead"
        )
    if importlib.util.find_spec("tensorflow") is None:
        raise UnsupportedError(
            f"{root}: updating {manifest['litert'].get('file')} converts the LiteRT model "
            "again, which needs TensorFlow (pip install 'policy-toolkit[all]'); on a device, "
            "run `update` where TensorFlow is installed and copy the bundle over"
        )


def _updated_onnx(
    root: Path, manifest: dict[str, Any], weights_dir: Path, info: dict[str, Any], shown: Path
) -> tuple[Any, float]:
    import onnx
    from onnx import numpy_helper

    expected = manifest["onnx"].get("graph_fingerprint")
    got = info.get("graph_fingerprint")
    if expected != got:
        raise BundleError(
            f"{shown}: expected a checkpoint of graph {str(expected)[:12]}... (the "
            f"bundle's), got graph {str(got)[:12]}...: another policy structure"
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
    root: Path, manifest: dict[str, Any], weights_dir: Path, info: dict[str, Any], shown: Path
) -> Any:
    import tensorflow as tf

    loaded = _load_saved_model(root, manifest)
    prefix = weights_dir / info.get("tf_checkpoint", bundle.TF_CHECKPOINT_PREFIX)
    checkpoint = tf.train.Checkpoint(policy=loaded.policy, train_step=loaded.train_step)
    try:
        checkpoint.read(str(prefix)).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BundleError(
            f"{shown}: expected a checkpoint of the bundle's policy, got one that does "
            f"not fit its SavedModel ({first})"
        ) from e
    return loaded
