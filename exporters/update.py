"""update_bundle: new weights into an existing bundle, without a new export.

A fleet that runs a bundle can take a small weights update instead of a full
re-export. The update comes from any checkpoint ``toolkit.checkpoint_weights`` finds: a
weights-only checkpoint (``exporters.save_checkpoint``), a training run's policy
checkpoints (``<out>`` or ``<out>/policy_checkpoints``), TF-Agents' policy checkpoints
(``policies/checkpoints/`` of PolicySavedModelTrigger, or one ``PolicySaver``
checkpoint), or a checkpoint prefix; a folder gives its latest (or ``step``).

This module finds the new weights (``NewWeights``) and rewrites the bundle atomically;
each format takes them its own way (``exporters.formats``: ONNX initializers, SavedModel
variables, a LiteRT model converted again). Bundles with a weights map
(docs/bundle-format.md, "The weights map") take every kind of checkpoint through it,
reading TF checkpoints without TensorFlow; bundles exported before the map go the old way:
TF checkpoints are turned into a weights-only checkpoint with TensorFlow, whose graph
fingerprint must equal the bundle's. Every format is asked whether it can take the
update before any work is done; the manifest's train step and every hash are updated,
and a failed update leaves the old bundle as it was.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any

from exporters import card as card_lib
from exporters import formats as export_formats
from exporters.formats.base import NewWeights
from toolkit import bundle
from toolkit.bundle.layout import Layout
from toolkit.errors import BundleError

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


def _weights_from_tf_agents(layout: Layout, checkpoint: Path, tmp: Path) -> Path:
    """A TF-Agents policy checkpoint as a weights-only checkpoint of the imported bundle."""
    from exporters.tf_agents.importer import import_tf_agents_checkpoint

    saved_model = Path(str(layout.metadata.get("source", "")))
    if not saved_model.is_dir():
        raise BundleError(
            f"{checkpoint}: a TF-Agents checkpoint is read into the SavedModel the bundle was "
            f"imported from, {saved_model}, which is not on this machine"
        )
    opset = layout.format("onnx").section.get("opset") if layout.has("onnx") else None
    kwargs = {"opset": opset} if opset is not None else {}
    # The same policy the import built: with --greedy, the deterministic part only.
    greedy = bool(layout.metadata.get("tf_agents_greedy", False))
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
        policy structure (fingerprint, names, shapes), an unsupported checkpoint, or a
        quantized bundle (whose weights take no float checkpoint).
      UnsupportedError: a format that cannot take the update here (e.g. policy.tflite
        without TensorFlow), said before any work is done.
    """
    from toolkit import checkpoint_weights

    root = Path(bundle_dir)
    layout = bundle.read_layout(root)
    if (root / "saved_model.pb").is_file():
        # publish mirrors the SavedModel at a version's root for TF Serving; an update
        # would rewrite the bundle without it, and servers keep what they loaded anyway.
        raise BundleError(
            f"{root}: a published version is never changed in place, as servers keep what "
            "they loaded; update the source bundle and publish it as a new version"
        )
    if layout.quantization is not None:
        checkpoint_weights.require_weights_map(layout)  # says what to do instead
    formats = tuple(name for name in export_formats.names() if layout.has(name))
    if not formats:
        raise BundleError(f"{root}: the bundle holds no model to update")
    for name in formats:
        export_formats.get(name).check_update(root, layout, layout.weights is not None)
    source = Path(checkpoint)
    if not source.exists() and not Path(f"{source}.index").is_file():
        raise BundleError(f"{source}: no such checkpoint")
    if layout.weights is not None:
        found = checkpoint_weights.select(source, step)
        return _write(root, layout, formats, _through_map(layout, found), found.kind)
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
        elif layout.metadata.get("imported_from") == "tf_agents":
            kind = "tf_agents_checkpoint"
            weights_dir = _weights_from_tf_agents(layout, source, Path(scratch))
            info = bundle.read_checkpoint(weights_dir)
        else:
            raise BundleError(
                f"{source}: unsupported checkpoint: expected a weights-only checkpoint "
                "(checkpoint.json, from exporters.save_checkpoint), a training run's "
                "policy checkpoints (policy_spec.json), or for a bundle imported from "
                "TF-Agents a PolicySaver checkpoint"
            )
        try:
            weights = _weights_only(layout, weights_dir, info, kind, source)
            return _write(root, layout, formats, weights, kind)
        except BundleError as e:
            if "fingerprint" in str(e) or "another policy structure" in str(e):
                raise BundleError(
                    f"{e}; {root} was exported before policy-toolkit recorded a weights map "
                    "(a bundle exported from zero biases takes no trained weights): export "
                    "it again with this version to take every later checkpoint"
                ) from e
            raise


def _through_map(layout: Layout, found: Any) -> NewWeights:
    """A checkpoint read through the bundle's weights map, without TensorFlow."""
    from runtimes.checkpoints import read_weights
    from toolkit import checkpoint_weights

    weights = read_weights(layout, found)
    train_step = weights.train_step
    if found.kind == "tf_agents_checkpoint" and train_step == -1:
        train_step = None  # PolicySaver's "no train step", as import_tf_agents reads it
    variables = None
    if layout.has("saved_model"):
        if found.kind == "weights_only":
            info = bundle.read_checkpoint(found.path)
            prefix = found.path / str(info.get("tf_checkpoint", bundle.TF_CHECKPOINT_PREFIX))
        else:
            prefix = found.path
        variables, _ = checkpoint_weights.read_tf_checkpoint(layout, prefix, str(found.path))
    return NewWeights(weights.initializers, variables, None, train_step, str(found.path))


def _weights_only(
    layout: Layout, weights_dir: Path, info: dict[str, Any], kind: str, shown: Path
) -> NewWeights:
    """A weights-only checkpoint of a bundle without a weights map: its ``weights.npz``
    for the ONNX graph (the fingerprints must agree), its ``tf/ckpt`` for the SavedModel."""
    from runtimes.checkpoints import load_npz_weights

    train_step: int | None = int(info["train_step"])
    if kind == "tf_agents_checkpoint" and train_step == -1:
        train_step = None  # PolicySaver's "no train step", as import_tf_agents reads it
    initializers = None
    if layout.has("onnx"):
        expected, got = layout.graph_fingerprint, info.get("graph_fingerprint")
        if expected != got:
            raise BundleError(
                f"{shown}: expected a checkpoint of graph {str(expected)[:12]}... (the "
                f"bundle's), got graph {str(got)[:12]}...: another policy structure"
            )
        initializers = load_npz_weights(weights_dir, info, list(layout.onnx_initializers))
    prefix = weights_dir / info.get("tf_checkpoint", bundle.TF_CHECKPOINT_PREFIX)
    return NewWeights(initializers, None, prefix, train_step, str(shown))


def _write(
    root: Path, layout: Layout, formats: tuple[str, ...], weights: NewWeights, kind: str
) -> UpdateReport:
    """Rewrites the bundle with every format's updated files, atomically."""
    new_manifest = layout.to_json()
    new_manifest.pop("files", None)
    new_manifest["train_step"] = weights.train_step
    replaced = [layout.format(name).path for name in formats]
    files = layout.files_json
    contents: dict[str, Any] = {}

    def build(tmp: Path) -> dict[str, Any]:
        for rel in files:
            if any(rel == r or rel.startswith(r + "/") for r in replaced):
                continue
            # Anything else travels unchanged, read contained and hash-checked; the path
            # was validated, so it stays inside ``tmp`` too.
            data = bundle.read_member(root, rel, key=f"files[{rel!r}]", files=files)
            if rel == card_lib.CARD_FILE:  # the model card names the train step
                data = card_lib.updated_card(data, new_manifest)
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)
        for name in formats:  # writing order: a format's update_after come first
            fmt = export_formats.get(name)
            content = fmt.updated(root, layout, weights, tmp)
            if content is None:
                _copy_format(root, layout, name, tmp)
                continue
            contents[name] = content
            new_manifest[name] = fmt.write(content, tmp)
        # Last: the formats repeat the finished manifest.
        for name, content in contents.items():
            export_formats.get(name).embed(content, tmp, new_manifest)
        return new_manifest

    bundle.write_bundle(root, build, overwrite=True)
    changes = [export_formats.get(n).weight_change(c) for n, c in contents.items()]
    changes = [c for c in changes if c is not None]
    return UpdateReport(
        bundle=root,
        checkpoint=weights.source,
        source=kind,
        previous_train_step=layout.train_step,
        train_step=weights.train_step,
        formats=formats,
        max_weight_change=max(changes) if changes else None,
    )


def _copy_format(root: Path, layout: Layout, name: str, tmp: Path) -> None:
    """A format the update leaves alone travels as it is (read contained and checked)."""
    files = layout.files_json
    prefix = layout.format(name).path
    for rel in files:
        if rel == prefix or rel.startswith(prefix + "/"):
            data = bundle.read_member(root, rel, key=f"files[{rel!r}]", files=files)
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)
