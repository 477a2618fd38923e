"""TF-Agents saves (``PolicySaver``, ``PolicySavedModelTrigger``) imported as bundles, without
TF-Agents.

The public surface, loaded on first use (importing the package loads no TensorFlow):

* ``import_tf_agents(saved_dir, output_dir, ...)``: a saved policy as a bundle;
* ``import_tf_agents_checkpoint(saved_dir, checkpoint, output_dir, ...)``: a
  ``PolicySaver.save_checkpoint`` output as a weights-only checkpoint of that bundle;
* ``import_tf_agents_layout(path, output_dir, policy=..., checkpoint=...)``,
  ``resolve_layout``, ``SAVED_POLICIES``, ``TriggerLayout``: a trigger's output;
* ``TFAgentsPolicy``: a saved policy as a TFPolicy of this project;
* ``read_policy_specs`` / ``TFAgentsSpecs``, ``load_saved_policy``,
  ``check_saved_model`` (the screen every load goes through), ``RESERVED_METADATA``.

One job per module; each imports only the modules below it (an import-linter contract
in pyproject.toml holds the layers, so there is no circle)::

    layout          PolicySavedModelTrigger's folders; imports, then applies a checkpoint
      |
    importer        import_tf_agents, import_tf_agents_checkpoint (export + metadata)
      |
    build           which policy a save becomes (adapter, exploration wrappers, random)
      |
    policy          TFAgentsPolicy: the saved functions served as a TFPolicy
      |
    saved           loading (after the screen), the saved functions, TF checkpoint reads
      |
    specs           policy_specs.pbtxt -> array specs
      |
    graph | distributions | screen    (independent of each other)
      graph          the saved action graph: exploration found, calls inlined
      distributions  TF-Agents' own distribution types, registered without TF-Agents
      screen         files, sizes and ops checked before TensorFlow loads anything
        |
      ops           the allow-list of TensorFlow ops
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "RESERVED_METADATA",
    "SAVED_POLICIES",
    "TFAgentsPolicy",
    "TFAgentsSpecs",
    "TriggerLayout",
    "check_saved_model",
    "import_tf_agents",
    "import_tf_agents_checkpoint",
    "import_tf_agents_layout",
    "load_saved_policy",
    "read_policy_specs",
    "resolve_layout",
]

_LAZY = {
    "RESERVED_METADATA": "importer",
    "SAVED_POLICIES": "layout",
    "TFAgentsPolicy": "policy",
    "TFAgentsSpecs": "specs",
    "TriggerLayout": "layout",
    "check_saved_model": "screen",
    "import_tf_agents": "importer",
    "import_tf_agents_checkpoint": "importer",
    "import_tf_agents_layout": "layout",
    "load_saved_policy": "saved",
    "read_policy_specs": "specs",
    "resolve_layout": "layout",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'exporters.tf_agents' has no attribute {name!r}")
    return getattr(importlib.import_module(f"exporters.tf_agents.{module}"), name)


def __dir__() -> list[str]:
    return sorted(__all__)
