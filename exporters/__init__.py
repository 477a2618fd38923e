"""TF policy -> bundle (SavedModel, ONNX and LiteRT). Needs TensorFlow.

``export_policy``, ``verify``, ``save_checkpoint``, ``update_bundle``,
``quantize_bundle``, ``import_tf_agents`` and ``import_tf_agents_checkpoint`` are loaded
on first use, so importing this package stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "export_policy",
    "import_tf_agents",
    "import_tf_agents_checkpoint",
    "quantize_bundle",
    "save_checkpoint",
    "update_bundle",
    "verify",
]

_LAZY = {
    "export_policy": "exporters.export",
    "import_tf_agents": "exporters.tf_agents.importer",
    "import_tf_agents_checkpoint": "exporters.tf_agents.importer",
    "quantize_bundle": "exporters.quantize",
    "save_checkpoint": "exporters.checkpoint",
    "update_bundle": "exporters.update",
    "verify": "exporters.parity",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'exporters' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
