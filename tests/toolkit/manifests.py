"""A small valid manifest for tests of the bundle layer (no export needed)."""

from __future__ import annotations

import copy
from typing import Any

from toolkit import bundle

_SPEC = {"kind": "array_spec", "shape": [], "dtype": "float32", "name": None}

MINIMAL: dict[str, Any] = {
    "format": bundle.FORMAT,
    "format_version": bundle.FORMAT_VERSION,
    "policy": {"class": "TestPolicy", "action": {"kind": "sample", "clip": True}},
    "specs": {
        "time_step": {
            "kind": "namedtuple",
            "type": "TimeStep",
            "fields": ["step_type", "reward", "discount", "observation"],
            "items": [
                {"kind": "array_spec", "shape": [], "dtype": "int32", "name": "step_type"},
                {"kind": "array_spec", "shape": [], "dtype": "float32", "name": "reward"},
                {
                    "kind": "bounded_array_spec",
                    "shape": [],
                    "dtype": "float32",
                    "name": "discount",
                    "minimum": 0.0,
                    "maximum": 1.0,
                },
                {"kind": "array_spec", "shape": [2], "dtype": "float32", "name": "observation"},
            ],
        },
        "action": {
            "kind": "bounded_array_spec",
            "shape": [],
            "dtype": "int64",
            "name": "action",
            "minimum": 0,
            "maximum": 1,
        },
        "policy_state": {"kind": "tuple", "items": []},
        "info": {"kind": "tuple", "items": []},
        "graph_info": {"kind": "tuple", "items": []},
    },
    "distribution": {
        "kind": "distribution_params",
        "family": "categorical",
        "params": ["logits"],
        "event_ndims": 0,
        "dtype": "int64",
        "shift": 0,
    },
    "signatures": {
        "distribution": {
            "inputs": [
                {"name": "step_type", "dtype": "int32", "shape": [None]},
                {"name": "reward", "dtype": "float32", "shape": [None]},
                {"name": "discount", "dtype": "float32", "shape": [None]},
                {"name": "observation", "dtype": "float32", "shape": [None, 2]},
            ],
            "outputs": [{"name": "distribution/logits", "dtype": "float32", "shape": [None, 2]}],
        }
    },
    "formats": ["saved_model", "onnx"],
    "onnx": {
        "file": "policy.onnx",
        "opset": 17,
        "function": "distribution",
        "graph_fingerprint": "0" * 64,
        "initializers": [],
    },
    "saved_model": {"dir": "saved_model", "tags": ["serve"]},
    "train_step": None,
    "metadata": {},
    "producer": {"policy_toolkit": "test"},
}
del _SPEC


def minimal_manifest(**changes: Any) -> dict[str, Any]:
    """A copy of MINIMAL (without files) with top-level keys replaced."""
    manifest = copy.deepcopy(MINIMAL)
    manifest.update(changes)
    return manifest
