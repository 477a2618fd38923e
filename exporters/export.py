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

import tensorflow as tf

from exporters import card as card_lib
from exporters import formats as export_formats
from exporters import onnx_export
from exporters.signatures import ExportModule, module_for
from toolkit import __version__, action_masks, bundle, nest
from toolkit import distribution_families as families
from toolkit.errors import ExportError
from toolkit.policies import tf_policy as tf_policy_lib
from toolkit.specs import tensor_spec

__all__ = ["export_policy", "manifest_for", "module_for"]


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
    import onnx
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


def export_policy(
    policy: Any,
    output_dir: str | os.PathLike,
    formats: Sequence[str] | str | None = None,
    train_step: int | None = None,
    metadata: dict[str, Any] | None = None,
    *,
    card: dict[str, str] | None = None,
    overwrite: bool = False,
    opset: int = onnx_export.DEFAULT_OPSET,
    format_options: dict[str, Any] | None = None,
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
      card: what the model card (``bom.cdx.json``, ``exporters.card``) says beyond the
        manifest: keys of ``exporters.card.CARD_KEYS`` (agent, env, env_steps,
        eval_return...); metadata keys of those names fill in too.
      overwrite: replace an existing bundle at ``output_dir``.
      opset: the ONNX opset.
      format_options: more options the formats take (``Format.convert``), e.g.
        ``{"env": "CartPole-v1"}`` for ``micro`` and ``c``, calibrated on real states.

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
    options = {**(format_options or {}), "opset": opset}
    # The slow part (conversions) before the temporary folder exists.
    contents = {name: export_formats.get(name).convert(module, options) for name in names}

    def build(tmp: Path) -> dict[str, Any]:
        manifest = manifest_for(module, names, train_step, metadata)
        for name, content in contents.items():
            manifest[name] = export_formats.get(name).write(content, tmp)
        # Last: the formats repeat the finished manifest.
        for name, content in contents.items():
            export_formats.get(name).embed(content, tmp, manifest)
        (tmp / card_lib.CARD_FILE).write_bytes(
            card_lib.card_bytes(card_lib.make_card(manifest, card, name=output.absolute().name))
        )
        return manifest

    return bundle.write_bundle(output, build, overwrite=overwrite)


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
    manifest = {
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
    return manifest
