"""The SavedModel format: ``saved_model/``, TensorFlow's own, with six signatures.

What TF Serving loads (``publish``), what the tf backend runs, and the source ``update``
converts the LiteRT model from again. It carries a manifest copy in
``assets.extra/policy_toolkit.manifest.json`` (docs/bundle-format.md, "The SavedModel").
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from exporters.formats.base import Format, NewWeights, Runner
from toolkit import bundle
from toolkit.bundle import readers
from toolkit.bundle.layout import FormatEntry, Layout
from toolkit.errors import BundleError, ExportError, UnsupportedError

__all__ = ["FORMAT", "SavedModelFormat", "distribution_runner", "load_checked"]


@dataclasses.dataclass(frozen=True)
class _Content:
    """What ``tf.saved_model.save`` writes: the object and its signatures."""

    obj: Any
    signatures: dict[str, Any]
    policy_name: str


def load_checked(root: Path, layout: Layout) -> Any:
    """The bundle's SavedModel loaded with TensorFlow, after ``readers.check_saved_model``
    (only listed, hashed regular files; its manifest copy equal to the bundle's).

    Raises:
      BundleError: a folder that fails the checks or that TensorFlow cannot load.
    """
    import tensorflow as tf
    import tensorflow_probability  # noqa: F401  (registers TFP types the model may name)

    path = readers.check_saved_model(root, layout)
    try:
        return tf.saved_model.load(str(path))
    except Exception as e:  # TF raises many kinds for a broken SavedModel
        raise BundleError(f"{path}: TensorFlow could not load the SavedModel: {e}") from e


class SavedModelFormat(Format):
    name = "saved_model"
    label = "a SavedModel"
    default = True
    schema = {
        "type": "object",
        "required": ["dir", "tags"],
        "additionalProperties": False,
        "properties": {
            "dir": {"$ref": "#/$defs/relativePath"},
            "tags": {
                "type": "array",
                "maxItems": 16,
                "items": {"type": "string", "maxLength": 100},
            },
        },
    }
    runner_needs = ("tensorflow",)

    # --- export ----------------------------------------------------------------------

    def convert(self, module: Any, options: dict[str, Any]) -> _Content:
        return _Content(module, dict(module.info.functions), type(module.policy).__name__)

    def write(self, content: _Content, folder: Path) -> dict[str, Any]:
        import tensorflow as tf

        path = folder / bundle.SAVED_MODEL_DIR
        try:
            tf.saved_model.save(content.obj, str(path), signatures=content.signatures)
        except AssertionError as e:
            if "untracked" not in str(e):
                raise
            raise ExportError(
                f"{content.policy_name}: cannot be exported to SavedModel: it uses variables "
                "that no tf.Module tracks (e.g. layers held by a plain Python function used as "
                "a network); make the network a toolkit Network or tf.Module, or export "
                "formats=('onnx',) only"
            ) from e
        return {"dir": bundle.SAVED_MODEL_DIR, "tags": ["serve"]}

    def embed(self, content: _Content, folder: Path, manifest: dict[str, Any]) -> None:
        bundle.write_saved_model_manifest(folder / manifest[self.name]["dir"], manifest)

    # --- update ----------------------------------------------------------------------

    def check_update(self, root: Path, layout: Layout, weights_map: bool) -> None:
        if importlib.util.find_spec("tensorflow") is None:
            raise UnsupportedError(
                f"{root}: updating its SavedModel needs TensorFlow (pip install "
                "'policy-toolkit[all]'); on a device, run `update` where TensorFlow is "
                "installed and copy the bundle over"
            )

    def updated(self, root: Path, layout: Layout, weights: NewWeights, folder: Path) -> _Content:
        loaded = load_checked(root, layout)
        if not hasattr(loaded, "policy") or not hasattr(loaded, "train_step"):
            raise UnsupportedError(
                f"{root}: the SavedModel has no 'policy' and 'train_step' (not written by "
                "export_policy); export the policy again instead"
            )
        if weights.variables is not None:
            from runtimes.backends.tf import assign_variables
            from toolkit.checkpoint_weights import require_weights_map

            weights_map = require_weights_map(layout)
            assign_variables(loaded.policy, weights_map, weights.variables, f"{root}")
            step = weights.train_step
            loaded.train_step.assign(-1 if step is None else int(step))
        elif weights.tf_checkpoint is not None:
            _restore(loaded, weights.tf_checkpoint, weights.source)
        else:
            return None
        signatures = {name: loaded.signatures[name] for name in loaded.signatures}
        return _Content(loaded, signatures, layout.policy_class)

    # --- verify and inspect ------------------------------------------------------------

    def runner(self, root: Path, layout: Layout) -> Runner:
        return distribution_runner(load_checked(root, layout), str(root))

    def describe(self, entry: FormatEntry) -> str:
        return f"{entry.path}/ (tags {', '.join(entry.section.get('tags', ()))})"


def distribution_runner(loaded: Any, where: str) -> Runner:
    """Runs a loaded SavedModel's ``distribution`` signature on flat numpy inputs."""
    import tensorflow as tf

    try:
        signature = loaded.signatures["distribution"]
    except KeyError as e:
        raise BundleError(f"{where}: the SavedModel has no 'distribution' signature") from e

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = signature(**{k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in outputs.items()}

    return run


def _restore(loaded: Any, prefix: Path, shown: str) -> None:
    """A weights-only checkpoint's ``tf/ckpt`` restored into the loaded SavedModel."""
    import tensorflow as tf

    checkpoint = tf.train.Checkpoint(policy=loaded.policy, train_step=loaded.train_step)
    try:
        checkpoint.read(str(prefix)).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BundleError(
            f"{shown}: expected a checkpoint of the bundle's policy, got one that does not "
            f"fit its SavedModel ({first})"
        ) from e


FORMAT = SavedModelFormat()
