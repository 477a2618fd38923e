"""export_policy: a TF policy -> a bundle (its formats + manifest), atomically.

The formats are ``exporters.formats``' (SavedModel, ONNX, LiteRT...): this module traces
the policy once, builds the manifest's common part, and asks each format for its files
and its section (``Format.convert``, ``write``, ``embed``).
"""

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

from exporters import formats as export_formats
from exporters import onnx_export
from exporters.signatures import ExportModule
from exporters.weights import canonical_initializers
from toolkit import __version__, bundle, nest
from toolkit import distribution_families as families
from toolkit.errors import ExportError, UnsupportedError
from toolkit.policies import tf_policy as tf_policy_lib
from toolkit.specs import tensor_spec

__all__ = [
    "export_policy",
    "manifest_for",
    "module_for",
    "onnx_model_and_weights",
    "onnx_model_for",
]


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
    formats: Sequence[str] | str | None = None,
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
      formats: some of ``exporters.formats.names()`` (``saved_model``, ``onnx``,
        ``litert``; a sequence or "saved_model,onnx"); by default the formats marked
        default (SavedModel and ONNX). ``litert`` writes policy.tflite (builtin ops only;
        see exporters.litert_export).
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
    names = export_formats.parse(formats) if formats else export_formats.default_formats()
    metadata = _check_metadata(metadata)
    if train_step is not None and (isinstance(train_step, bool) or int(train_step) != train_step):
        raise ExportError(f"train_step: expected an int, got {train_step!r}")
    output = Path(output_dir)
    if output.exists() and not overwrite:
        raise ExportError(f"{output.absolute()}: already exists; pass overwrite=True to replace it")
    module = module_for(policy, train_step, metadata)
    options = {"opset": opset}
    # The slow part (conversions) before the temporary folder exists.
    contents = {name: export_formats.get(name).convert(module, options) for name in names}

    def build(tmp: Path) -> dict[str, Any]:
        manifest = manifest_for(module, names, train_step, metadata)
        for name, content in contents.items():
            manifest[name] = export_formats.get(name).write(content, tmp)
        # Last: the formats repeat the finished manifest.
        for name, content in contents.items():
            export_formats.get(name).embed(content, tmp, manifest)
        return manifest

    return bundle.write_bundle(output, build, overwrite=overwrite)


def manifest_for(
    module: ExportModule,
    formats: Sequence[str],
    train_step: int | None,
    metadata: dict[str, Any],
) -> dict[str, Any]:
    """The manifest's common part for a traced policy (the formats add their sections)."""
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
    return {
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
