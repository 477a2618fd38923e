"""TF-Agents' training layout: PolicySavedModelTrigger's output, end to end.

TF-Agents' ``PolicySavedModelTrigger`` (used by its ``Learner``) writes, under
``<root_dir>/policies/``::

    policy/            the agent's raw policy (PolicySaver.save), once, before training
    greedy_policy/     GreedyPolicy of it (argmax / mode), once
    collect_policy/    the agent's collect policy, once
    checkpoints/policy_checkpoint_<step, 10 digits>/variables/variables.*
                       PolicySaver.save_checkpoint of the raw policy, every interval

The saved policies hold the weights they had when saved (a fresh network: zero
biases); training only adds checkpoints. All three policies read the same variables,
so the raw policy's checkpoints fit each of them. ``resolve_layout`` finds the parts
from any of ``<root_dir>``, ``<root_dir>/policies`` or one saved policy folder;
``import_tf_agents_layout`` imports the chosen saved policy and applies a checkpoint
(through the bundle's weights map: see exporters.probe).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from toolkit.errors import BundleError

__all__ = ["SAVED_POLICIES", "TriggerLayout", "import_tf_agents_layout", "resolve_layout"]

#: The saved policies PolicySavedModelTrigger writes, by folder name.
SAVED_POLICIES = ("policy", "greedy_policy", "collect_policy")
CHECKPOINTS_DIR = "checkpoints"
_SPECS = "policy_specs.pbtxt"


@dataclasses.dataclass(frozen=True)
class TriggerLayout:
    """Where a trigger's output keeps the chosen saved policy and the checkpoints.

    Attributes:
      saved_policy: the saved policy folder to import.
      checkpoints: ``policies/checkpoints`` (None when given a lone saved policy).
    """

    saved_policy: Path
    checkpoints: Path | None


def resolve_layout(path: str | os.PathLike, policy: str = "greedy_policy") -> TriggerLayout:
    """The saved policy ``policy`` and the checkpoints folder of a trigger's output.

    Args:
      path: ``<root_dir>``, ``<root_dir>/policies``, or a saved policy folder (then
        ``policy`` is not used, and the checkpoints are its sibling ``checkpoints/``
        when there is one).
      policy: one of ``SAVED_POLICIES``.

    Raises:
      BundleError: an unknown ``policy`` name, or a folder of no known layout (saying
        which saved policies it holds).
    """
    if policy not in SAVED_POLICIES:
        raise BundleError(f"policy: expected one of {list(SAVED_POLICIES)}, got {policy!r}")
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"{root}: no such folder")
    if (root / _SPECS).is_file() or (root / "saved_model.pb").is_file():
        sibling = root.parent / CHECKPOINTS_DIR
        return TriggerLayout(root, sibling if sibling.is_dir() else None)
    for policies in (root, root / "policies"):
        present = [p for p in SAVED_POLICIES if (policies / p / _SPECS).is_file()]
        if not present:
            continue
        if policy not in present:
            raise BundleError(
                f"{policies}: no saved {policy!r}; this trigger output holds {present} "
                "(pick one with --policy)"
            )
        checkpoints = policies / CHECKPOINTS_DIR
        return TriggerLayout(policies / policy, checkpoints if checkpoints.is_dir() else None)
    raise BundleError(
        f"{root}: expected a TF-Agents saved policy (policy_specs.pbtxt) or the output of "
        f"PolicySavedModelTrigger (policies/ with {', '.join(SAVED_POLICIES)}), found neither"
    )


def import_tf_agents_layout(
    path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    policy: str = "greedy_policy",
    checkpoint: str | int | None = None,
    **import_kwargs: Any,
) -> Path:
    """Imports a saved policy of a trigger's output, then applies one of its checkpoints.

    Args:
      path: see ``resolve_layout``.
      output_dir: the bundle to write.
      policy: which saved policy (``policy``, ``greedy_policy``, ``collect_policy``).
      checkpoint: None (the saved weights), ``"latest"`` or a train step: the checkpoint
        of ``policies/checkpoints`` to apply.
      **import_kwargs: passed to ``exporters.import_tf_agents`` (formats, metadata...).

    Returns:
      The bundle's path.

    Raises:
      BundleError: no such layout, policy or checkpoint (the steps there named).
      ExportError: the saved policy cannot be imported.
    """
    from exporters.tf_agents.importer import import_tf_agents
    from exporters.update import update_bundle
    from toolkit import checkpoint_weights

    layout = resolve_layout(path, policy)
    step = None
    if checkpoint is not None and checkpoint != "latest":
        try:
            step = int(checkpoint)
        except (TypeError, ValueError):
            raise BundleError(
                f"checkpoint: expected 'latest' or a train step, got {checkpoint!r}"
            ) from None
    if checkpoint is not None:
        if layout.checkpoints is None:
            raise BundleError(
                f"{path}: no policies/checkpoints/ beside {layout.saved_policy.name}: nothing "
                "to take a checkpoint from"
            )
        # Checked before the import, so a wrong step costs no export.
        checkpoint_weights.select(layout.checkpoints, step)
    output = import_tf_agents(layout.saved_policy, output_dir, **import_kwargs)
    if checkpoint is not None:
        update_bundle(output, layout.checkpoints, step=step)
    return output
