"""export_policy: a TF policy -> a bundle (SavedModel, ONNX, LiteRT + manifest), atomically."""

from __future__ import annotations

import json
import os
import platform
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
import tensorflow as tf

from exporters import litert_export, onnx_export
from exporters.signatures import ExportModule
from exporters.weights import canonical_initializers, graph_fingerprint
from toolkit import __version__, action_masks, bundle, nest
from toolkit import distribution_families as families
from toolkit.errors import ExportError, UnsupportedError
from toolkit.policies import tf_policy as tf_policy_lib
from toolkit.specs import tensor_spec

__all__ = [
    "DEFAULT_FORMATS",
    "FORMATS",
    "export_policy",
    "module_for",
    "onnx_model_and_weights",
    "onnx_model_for",
]

FORMATS = bundle.FORMATS
#: What ``export_policy`` writes unless told otherwise.
DEFAULT_FORMATS = ("saved_model", "onnx")


def _check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    formats = tuple(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"formats: expected some of {list(FORMATS)}, got {list(formats)}")
    return formats


def _check_metadata(metadata: dict[str, Any] | None) -> dict[str, Any]:
    metadata = dict(metadata or {})
    for key in metadata:
        if not isinstance(key, str):
            raise ExportError(f"metadata: expected string keys, got {key!r}")
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ExportError(f"metadata: expected JSON values (str, number, list, dict), {e}") from e
    return metadata


def _producer() -> dict[str, str]:
    import tensorflow_probability as tfp
    import tf2onnx

    return {
        "policy_toolkit": __version__,
        "tensorflow": tf.__version__,
        "tensorflow_probability": tfp.__version__,
        "tf2onnx": tf2onnx.__version__,
        "onnx": onnx.__version__,
        "python": platform.python_version(),
    }


def _params_to_json(params: Any) -> Any:
    return nest.to_json(params, families.leaf_to_json)


def module_for(policy: Any, train_step: int | None, metadata: dict[str, Any]) -> ExportModule:
    """The traced export module of a TF policy (export, weights-only checkpoints, parity).

    Raises:
      ExportError: not a TFPolicy, or a policy part that does not export.
    """
    if not isinstance(policy, tf_policy_lib.TFPolicy):
        raise ExportError(
            f"{type(policy).__name__}: expected a TFPolicy (toolkit.policies.tf_policy); "
            "Python policies have no graph to export"
        )
    try:
        module = ExportModule(policy, train_step, metadata)
        module.build_functions()
        # Tracing the distribution function checks that every part of the policy exports.
        module.info.functions["distribution"].get_concrete_function()
    except (UnsupportedError, NotImplementedError) as e:
        raise ExportError(f"{type(policy).__name__}: cannot be exported: {e}") from e
    kind = module.info.description.get("kind")
    if kind not in families.KINDS:
        raise ExportError(
            f"{type(policy).__name__}: cannot be exported: its action derivation {kind!r} is "
            f"not one of {list(families.KINDS)}"
        )
    return module


def onnx_model_for(module: ExportModule, opset: int = onnx_export.DEFAULT_OPSET) -> onnx.ModelProto:
    """The ONNX model of a module's ``distribution`` function."""
    inputs = dict(module.info.inputs)
    what = type(module.policy).__name__
    model = onnx_export.convert(
        module.info.functions["distribution"], [inputs], opset=opset, what=what
    )
    stray = sorted({i.name for i in model.graph.input} - set(inputs))
    if stray:
        # e.g. a tensor captured from outside the traced function (not a variable).
        raise ExportError(
            f"{what}: expected the ONNX graph to take only {sorted(inputs)}, got extra "
            f"inputs {stray} (tensors captured from outside the traced function?)"
        )
    return model


def onnx_model_and_weights(
    module: ExportModule, opset: int = onnx_export.DEFAULT_OPSET
) -> tuple[onnx.ModelProto, dict[str, Any] | None]:
    """The ONNX model (converted with probe weights, real ones written in) and its weights
    map for ``manifest["onnx"]["weights"]`` (see exporters.probe)."""
    from exporters.probe import convert_with_probes

    what = type(module.policy).__name__
    try:
        model, weights = convert_with_probes(module, lambda m: onnx_model_for(m, opset), what)
    except ExportError as e:
        if "disagree" not in str(e):
            raise
        # Some graphs compute with their weights at conversion time (e.g. an observation
        # normaliser's variance folded through sqrt): they still export, converted with
        # their real weights, but without a weights map (see docs/bundle-format.md).
        warnings.warn(
            f"{what}: exported without a weights map ({e}); the bundle takes weights-only "
            "checkpoints of this graph, not TF checkpoints without TensorFlow",
            UserWarning,
            stacklevel=2,
        )
        return onnx_model_for(module, opset), None
    by_name = weights.pop("by_name")
    weights["initializers"] = [by_name.get(name) for name in canonical_initializers(model)]
    return model, weights


def export_policy(
    policy: Any,
    output_dir: str | os.PathLike,
    formats: Sequence[str] = DEFAULT_FORMATS,
    train_step: int | None = None,
    metadata: dict[str, Any] | None = None,
    *,
    overwrite: bool = False,
    opset: int = onnx_export.DEFAULT_OPSET,
) -> Path:
    """Exports a TF policy to a bundle folder.

    Args:
      policy: a TFPolicy.
      output_dir: the bundle folder to write (atomically: a failed export leaves nothing).
      formats: some of ``("saved_model", "onnx", "litert")`` (or "saved_model,onnx");
        ``litert`` writes policy.tflite (builtin ops only; see exporters.litert_export).
      train_step: recorded in the manifest and the ``get_train_step`` signature.
      metadata: JSON-able user metadata, in the manifest and ``get_metadata``.
      overwrite: replace an existing bundle at ``output_dir``.
      opset: the ONNX opset.

    Returns:
      The bundle's path.

    Raises:
      ExportError: for a policy or part of one that cannot be exported (named), bad
        arguments, an existing output without ``overwrite``, or an unwritable place.
    """
    formats = _check_formats(formats)
    metadata = _check_metadata(metadata)
    if train_step is not None and (isinstance(train_step, bool) or int(train_step) != train_step):
        raise ExportError(f"train_step: expected an int, got {train_step!r}")
    output = Path(output_dir)
    if output.exists() and not overwrite:
        raise ExportError(f"{output.absolute()}: already exists; pass overwrite=True to replace it")
    module = module_for(policy, train_step, metadata)
    model, weights = onnx_model_and_weights(module, opset) if "onnx" in formats else (None, None)
    tflite = litert_export.convert(module) if "litert" in formats else None

    def build(tmp: Path) -> dict[str, Any]:
        manifest = _manifest(module, formats, train_step, metadata, opset, model, weights)
        if tflite is not None:
            (tmp / bundle.LITERT_FILE).write_bytes(tflite)
            manifest["litert"] = litert_export.manifest_entry(tflite, bundle.LITERT_FILE)
        if "saved_model" in formats:
            _save_saved_model(module, tmp / bundle.SAVED_MODEL_DIR)
            bundle.write_saved_model_manifest(tmp / bundle.SAVED_MODEL_DIR, manifest)
        if model is not None:
            onnx_export.embed_manifest(model, manifest)
            onnx.save(model, str(tmp / bundle.ONNX_FILE))
        return manifest

    return bundle.write_bundle(output, build, overwrite=overwrite)


def _save_saved_model(module: ExportModule, path: Path) -> None:
    try:
        tf.saved_model.save(module, str(path), signatures=dict(module.info.functions))
    except AssertionError as e:
        if "untracked" not in str(e):
            raise
        raise ExportError(
            f"{type(module.policy).__name__}: cannot be exported to SavedModel: it uses "
            "variables that no tf.Module tracks (e.g. layers held by a plain Python function "
            "used as a network); make the network a toolkit Network or tf.Module, or export "
            "formats=('onnx',) only"
        ) from e


def _action_mask_input(policy: Any) -> str | None:
    """The observation input a masked policy reads its mask from (runtimes check it)."""
    splitter = policy.observation_and_action_constraint_splitter
    if splitter is None:
        return None
    path = action_masks.mask_path(splitter, policy.time_step_spec.observation)
    if path is None:
        warnings.warn(
            f"{type(policy).__name__}: its observation_and_action_constraint_splitter returns "
            "no observation leaf as the mask (it computes one?): the bundle declares no "
            "action mask, so runtimes cannot refuse an entry whose mask allows no action",
            UserWarning,
            stacklevel=3,
        )
    return path


def _manifest(
    module: ExportModule,
    formats: tuple[str, ...],
    train_step: int | None,
    metadata: dict[str, Any],
    opset: int,
    model: onnx.ModelProto | None,
    weights: dict[str, Any] | None = None,
) -> dict[str, Any]:
    policy = module.policy
    specs = {
        "time_step": tensor_spec.spec_nest_to_json(policy.time_step_spec),
        "action": tensor_spec.spec_nest_to_json(policy.action_spec),
        "policy_state": tensor_spec.spec_nest_to_json(policy.policy_state_spec),
        "info": tensor_spec.spec_nest_to_json(policy.info_spec),
        "graph_info": tensor_spec.spec_nest_to_json(
            tf_policy_lib.without_log_probability(policy.info_spec)
        ),
    }
    signatures = {name: module.signature_io(name).to_json() for name in module.info.functions}
    manifest: dict[str, Any] = {
        "format": bundle.FORMAT,
        "format_version": bundle.FORMAT_VERSION,
        "policy": {"class": type(policy).__name__, "action": module.info.description},
        "specs": specs,
        "distribution": _params_to_json(module.info.params_structure),
        "signatures": signatures,
        "formats": list(formats),
        "train_step": train_step,
        "metadata": metadata,
        "producer": _producer(),
    }
    mask = _action_mask_input(policy)
    if mask is not None:
        manifest["policy"]["action_mask"] = mask
    if "saved_model" in formats:
        manifest["saved_model"] = {"dir": bundle.SAVED_MODEL_DIR, "tags": ["serve"]}
    if model is not None:
        manifest["onnx"] = {
            "file": bundle.ONNX_FILE,
            "opset": opset,
            "function": "distribution",
            "graph_fingerprint": graph_fingerprint(model),
            "initializers": canonical_initializers(model),
        }
        if weights is not None:
            manifest["onnx"]["weights"] = weights
    return manifest
