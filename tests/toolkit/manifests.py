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


def rewrite_manifest(path: Any, edit: Any) -> dict[str, Any]:
    """Edits a bundle's manifest *and* the copies its formats carry, with new hashes.

    What a careful editor (or attacker) would do: the bundle stays self-consistent, so
    only checks against the graphs themselves can tell.
    """
    import hashlib
    import json
    from pathlib import Path

    root = Path(path)
    manifest = json.loads((root / bundle.MANIFEST).read_text())
    edit(manifest)
    files = manifest["files"]

    def rehash(rel: str) -> None:
        data = (root / rel).read_bytes()
        files[rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}

    if "onnx" in manifest and manifest["onnx"]["file"] in files:
        import onnx

        from exporters.onnx_export import embed_manifest

        rel = manifest["onnx"]["file"]
        model = onnx.load_model_from_string((root / rel).read_bytes())
        embed_manifest(model, manifest)
        (root / rel).write_bytes(model.SerializeToString())
        rehash(rel)
    if "saved_model" in manifest:
        rel = f"{manifest['saved_model']['dir']}/{bundle.SAVED_MODEL_MANIFEST}"
        if rel in files:
            bundle.write_saved_model_manifest(root / manifest["saved_model"]["dir"], manifest)
            rehash(rel)
    (root / bundle.MANIFEST).write_text(json.dumps(manifest))
    return manifest
