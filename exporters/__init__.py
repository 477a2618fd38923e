"""TF policy -> bundle (SavedModel and ONNX). Needs TensorFlow.

``export_policy``, ``verify``, ``save_checkpoint`` and ``import_tf_agents`` are loaded
on first use, so importing this package stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["export_policy", "save_checkpoint", "verify"]

_LAZY = {
    "export_policy": "exporters.export",
    "save_checkpoint": "exporters.checkpoint",
    "verify": "exporters.parity",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'exporters' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
