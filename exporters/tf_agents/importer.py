"""Import of policies saved by TF-Agents' ``PolicySaver`` into this project's bundles.

TF-Agents (frozen at TF 2.15) saves a policy as a SavedModel plus ``policy_specs.pbtxt``.
This module reads both under TF 2.21 without TF-Agents, and writes regular bundles:

* ``import_tf_agents(saved_dir, output_dir)``: a bundle (SavedModel signatures, ONNX
  graph, manifest) made by ``exporters.export_policy`` from the policy
  ``exporters.tf_agents.build`` makes of the save (a ``TFAgentsPolicy``, the adapter
  that serves the saved functions as a TFPolicy, possibly inside this project's
  exploration wrappers). The runtime then serves it like any other bundle.
* ``import_tf_agents_checkpoint(saved_dir, checkpoint, output_dir)``: a
  ``PolicySaver.save_checkpoint`` output as a weights-only checkpoint
  (``exporters.save_checkpoint``) that a bundle imported from ``saved_dir`` takes
  through the runtime's ``update_from_checkpoint``. (Bundles with a weights map also
  take the TF-Agents checkpoint itself, without TensorFlow.)

Before anything of the save is loaded or run, ``exporters.tf_agents.screen`` checks its
files' sizes and every op the loaded functions can run against an allow-list.

What imports (``exporters.tf_agents.build`` decides): greedy and deterministic policies,
stateless or recurrent, any nest of observations and actions; stochastic policies whose
saved ``distribution`` is a TFP Deterministic, Categorical, Normal,
MultivariateNormalDiag or Uniform (each possibly Independent) or one of TF-Agents' own
(SquashToSpecNormal, ShiftedCategorical, MaskedCategorical: registered without
TF-Agents by ``exporters.tf_agents.distributions``): the bundle holds its parameters and
the runtime samples; collect policies that sample inside their saved action (TF-Agents'
EpsilonGreedyPolicy, GaussianPolicy, OUNoisePolicy), rebuilt as this project's
derivations over the deterministic core found in the saved graph
(``exporters.tf_agents.graph``); RandomTFPolicy saves, as the runtime's random
derivation. ``greedy=True`` imports only the deterministic action. What does not import:

* a stochastic policy of another kind (no usable distribution, no known exploration):
  the error names what was found and says to save the agent's greedy ``policy``;
* distributions of other libraries (TensorFlow cannot load a SavedModel naming a
  TypeSpec nobody registered);
* policies saved with ``input_fn_and_spec`` (the action takes an example, not a time
  step), and policies whose initial state is not zeros (runtimes start from zeros).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from exporters import onnx_export
from exporters.checkpoint import save_checkpoint
from exporters.export import export_policy
from exporters.tf_agents.build import build_policy
from exporters.tf_agents.saved import load_saved_policy, saved_metadata
from toolkit import nest
from toolkit.errors import ExportError, UnsupportedError

__all__ = ["RESERVED_METADATA", "import_tf_agents", "import_tf_agents_checkpoint"]

#: Metadata keys the import sets itself (a user's metadata may not use them).
RESERVED_METADATA = (
    "imported_from",
    "source",
    "tf_agents_batch_size",
    "tf_agents_exploration",
    "tf_agents_function",
    "tf_agents_greedy",
)


# --- bundles -------------------------------------------------------------------------


def _json_value(value: np.ndarray) -> Any:
    """A metadata value as JSON: numbers, strings (bytes decoded) and lists of them."""
    if value.dtype.kind in "SO":
        return nest.map_structure(
            lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v),
            value.tolist(),
        )
    return value.tolist()


def import_tf_agents(
    saved_model_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    formats: Sequence[str] = ("saved_model", "onnx"),
    overwrite: bool = False,
    metadata: dict[str, Any] | None = None,
    *,
    opset: int = onnx_export.DEFAULT_OPSET,
    greedy: bool = False,
) -> Path:
    """Imports a TF-Agents saved policy into a regular bundle of this project.

    The bundle is what ``exporters.export_policy`` writes for a ``TFAgentsPolicy``:
    specs from ``policy_specs.pbtxt``, the distribution parameters (or the deterministic
    action) as the ONNX graph and SavedModel signatures, the train step from the saved
    ``get_train_step`` (none when PolicySaver was given none), and as metadata the saved
    ``get_metadata`` values, then the user's, then ``imported_from: "tf_agents"``,
    ``source`` (the absolute saved policy path), ``tf_agents_function`` (the saved
    function the graph computes: ``distribution`` or ``action``) and, for a policy saved
    with a fixed batch size (whose graphs serve that batch size only),
    ``tf_agents_batch_size``. Falling back to the action and a fixed batch size are also
    said in a UserWarning.

    Args:
      saved_model_dir: a ``PolicySaver.save`` output.
      output_dir: the bundle to write (atomically).
      formats: some of ``("saved_model", "onnx")``.
      overwrite: replace an existing bundle.
      metadata: JSON-able user metadata (keys other than ``RESERVED_METADATA``).
      opset: the ONNX opset.
      greedy: import only the deterministic action: a collect policy's core without
        its exploration, a stochastic policy's mode (see ``exporters.tf_agents.build``).

    Returns:
      The bundle's path.

    Raises:
      BundleError: the directory is not a TF-Agents saved policy.
      ExportError: the policy cannot be imported (the reason named), or bad arguments.
    """
    reserved = sorted(set(metadata or {}) & set(RESERVED_METADATA))
    if reserved:
        raise ExportError(
            f"metadata: expected keys other than {list(RESERVED_METADATA)} (the import sets "
            f"them), got {reserved}"
        )
    try:
        built = build_policy(saved_model_dir, greedy=greedy)
    except UnsupportedError as e:
        raise ExportError(f"cannot import: {e}") from e
    policy = built.adapter
    merged = {
        **(metadata or {}),
        "imported_from": "tf_agents",
        "source": str(Path(saved_model_dir).absolute()),
        "tf_agents_function": built.function,
    }
    if built.exploration is not None:
        merged["tf_agents_exploration"] = built.exploration
    if greedy:
        merged["tf_agents_greedy"] = True
    if policy is None:  # a random policy: nothing of the saved graph is kept
        loaded = load_saved_policy(saved_model_dir)
        saved_values = saved_metadata(loaded)
        train_step = int(loaded.get_train_step()) if hasattr(loaded, "get_train_step") else -1
    else:
        if policy.skipped is not None:
            warnings.warn(
                f"{policy.source}: importing the deterministic action instead of the saved "
                f"distribution ({policy.skipped})",
                UserWarning,
                stacklevel=2,
            )
        if policy.batch_size is not None:
            # TF-Agents traced the functions for this batch size only; so are the graphs.
            warnings.warn(
                f"{policy.source}: saved with PolicySaver(batch_size={policy.batch_size}): "
                f"the bundle serves batches of exactly {policy.batch_size} time steps",
                UserWarning,
                stacklevel=2,
            )
            merged["tf_agents_batch_size"] = policy.batch_size
        saved_values = policy.saved_metadata
        train_step = policy.saved_train_step
    saved = {key: _json_value(value) for key, value in saved_values.items()}
    merged = {**saved, **merged}
    return export_policy(
        built.policy,
        output_dir,
        formats=formats,
        train_step=None if train_step == -1 else train_step,
        metadata=merged,
        overwrite=overwrite,
        opset=opset,
    )


def import_tf_agents_checkpoint(
    saved_model_dir: str | os.PathLike,
    checkpoint_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    opset: int = onnx_export.DEFAULT_OPSET,
    greedy: bool = False,
) -> Path:
    """A TF-Agents policy checkpoint as a weights-only checkpoint of the imported bundle.

    Restores ``checkpoint_path`` (a ``PolicySaver.save_checkpoint`` or ``save`` output)
    into a ``TFAgentsPolicy`` of ``saved_model_dir`` and writes it with
    ``exporters.save_checkpoint``: a bundle imported from ``saved_model_dir`` (with the
    same opset and ``greedy``) then takes it through ``update_from_checkpoint``, with
    either backend.

    Returns:
      The checkpoint folder's path.

    Raises:
      BundleError: no checkpoint there, or one of another policy.
      ExportError: the policy cannot be imported, or the output exists.
    """
    try:
        built = build_policy(saved_model_dir, greedy=greedy)
    except UnsupportedError as e:
        raise ExportError(f"cannot import: {e}") from e
    if built.adapter is None:
        raise ExportError(
            f"cannot import: {saved_model_dir}: a random policy has no weights to update"
        )
    train_step = built.adapter.restore_tf_agents_checkpoint(checkpoint_path)
    return save_checkpoint(built.policy, output_dir, train_step, overwrite=overwrite, opset=opset)
