"""Specs: the shapes, dtypes and bounds of observations, actions and states.

As TF-Agents' ``specs`` package: ``specs.ArraySpec`` and ``specs.BoundedArraySpec`` (TF-free)
and ``specs.TensorSpec``, ``specs.BoundedTensorSpec`` and ``specs.tensor_spec``, which load
``toolkit.specs.tensor_spec`` (and TensorFlow) when first asked for: importing the package
for its array specs loads no TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import Any

from toolkit.specs.array_spec import ArraySpec, BoundedArraySpec

__all__ = ["ArraySpec", "BoundedArraySpec", "BoundedTensorSpec", "TensorSpec", "tensor_spec"]

_TENSOR_NAMES = ("BoundedTensorSpec", "TensorSpec", "tensor_spec")


def __getattr__(name: str) -> Any:
    if name in _TENSOR_NAMES:
        # TensorFlow, only for tensor specs (``from toolkit.specs import tensor_spec``
        # would ask this very function for the submodule first).
        module = importlib.import_module("toolkit.specs.tensor_spec")
        return module if name == "tensor_spec" else getattr(module, name)
    raise AttributeError(f"module 'toolkit.specs' has no attribute {name!r}")
