"""The ONNX format: ``policy.onnx``, the ``distribution`` function for onnxruntime.

Converted with probe weights so that the graph's weights map can be recorded
(``exporters.probe``; docs/bundle-format.md, "The weights map"), with the manifest copy
in its ``metadata_props``. The onnx backend runs it without TensorFlow; ``update`` writes
new initializer values into it, also without TensorFlow.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from exporters.formats.base import Format, NewWeights, Runner
from toolkit import bundle
from toolkit.bundle import readers
from toolkit.bundle.layout import FormatEntry, Layout, thaw
from toolkit.errors import BundleError, UnsupportedError

__all__ = ["FORMAT", "OnnxFormat", "load_model"]

_DIM = {"type": "integer", "minimum": 0, "maximum": 1 << 40}
_WEIGHT_DTYPE = {"enum": ["float16", "float32", "float64"]}


@dataclasses.dataclass
class _Content:
    """The model to save and its manifest section; ``max_change`` after an update."""

    model: Any
    section: dict[str, Any]
    max_change: float | None = None


def load_model(root: Path, layout: Layout) -> Any:
    """The bundle's ONNX model as an ``onnx.ModelProto``, from checked bytes
    (``readers.read_onnx``: contained, hashed, self-contained, its manifest copy equal).

    Raises:
      BundleError: a model that fails the checks or that onnx cannot parse.
    """
    import onnx

    data = readers.read_onnx(root, layout)
    try:
        return onnx.load_model_from_string(data)
    except Exception as e:  # protobuf's DecodeError and others
        raise BundleError(f"{root}: not a readable ONNX model ({e})") from e


class OnnxFormat(Format):
    name = "onnx"
    label = "ONNX"
    default = True
    export_needs = ("tensorflow", "tf2onnx", "onnx")
    runner_needs = ("onnxruntime",)
    schema = {
        "type": "object",
        "required": ["file", "opset", "function", "graph_fingerprint", "initializers"],
        "additionalProperties": False,
        "properties": {
            "file": {"$ref": "#/$defs/relativePath"},
            "opset": {"type": "integer", "minimum": 1, "maximum": 1000},
            "function": {"const": "distribution"},
            "graph_fingerprint": {"$ref": "#/$defs/sha256"},
            "initializers": {
                "type": "array",
                "maxItems": 100000,
                "items": {"type": "string", "maxLength": 1000},
            },
            "weights": {
                "description": (
                    "The weights map: which variable each initializer holds and where TF "
                    "checkpoints keep it (docs/bundle-format.md, The weights map)."
                ),
                "type": "object",
                "required": ["version", "variables", "initializers"],
                "additionalProperties": False,
                "properties": {
                    "version": {"const": 1},
                    "variables": {
                        "type": "array",
                        "maxItems": 100000,
                        "items": {
                            "type": "object",
                            "required": ["name", "dtype", "shape", "paths"],
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string", "maxLength": 1000},
                                "dtype": _WEIGHT_DTYPE,
                                "shape": {"type": "array", "maxItems": 64, "items": _DIM},
                                "paths": {
                                    "type": "array",
                                    "maxItems": 16,
                                    "items": {
                                        "type": "array",
                                        "maxItems": 64,
                                        "items": {"type": "string", "maxLength": 1000},
                                    },
                                },
                            },
                        },
                    },
                    "initializers": {
                        "type": "array",
                        "maxItems": 100000,
                        "items": {
                            "oneOf": [
                                {"type": "null"},
                                {
                                    "type": "object",
                                    "required": ["variable", "shape", "dtype"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "variable": {
                                            "type": "integer",
                                            "minimum": 0,
                                            "maximum": 100000,
                                        },
                                        "shape": {"type": "array", "maxItems": 64, "items": _DIM},
                                        "dtype": _WEIGHT_DTYPE,
                                        "transpose": {
                                            "type": "array",
                                            "maxItems": 64,
                                            "items": {
                                                "type": "integer",
                                                "minimum": 0,
                                                "maximum": 64,
                                            },
                                        },
                                    },
                                },
                            ]
                        },
                    },
                },
            },
        },
    }

    # --- export ----------------------------------------------------------------------

    def convert(self, module: Any, options: dict[str, Any]) -> _Content:
        from exporters import onnx_export
        from exporters.onnx_export import onnx_model_and_weights
        from exporters.weights import canonical_initializers, graph_fingerprint

        opset = options.get("opset", onnx_export.DEFAULT_OPSET)
        model, weights = onnx_model_and_weights(module, opset)
        section: dict[str, Any] = {
            "file": bundle.ONNX_FILE,
            "opset": opset,
            "function": "distribution",
            "graph_fingerprint": graph_fingerprint(model),
            "initializers": canonical_initializers(model),
        }
        if weights is not None:
            section["weights"] = weights
        return _Content(model, section)

    def write(self, content: _Content, folder: Path) -> dict[str, Any]:
        # The file is saved by ``embed``: the model carries the finished manifest.
        return content.section

    def embed(self, content: _Content, folder: Path, manifest: dict[str, Any]) -> None:
        import onnx

        from exporters import onnx_export

        onnx_export.embed_manifest(content.model, manifest)
        onnx.save(content.model, str(folder / content.section["file"]))

    # --- update ----------------------------------------------------------------------

    def check_update(self, root: Path, layout: Layout, weights_map: bool) -> None:
        if importlib.util.find_spec("onnx") is None:
            raise UnsupportedError(
                f"{root}: updating policy.onnx rewrites its initializers with the onnx "
                "package (pip install onnx)"
            )

    def updated(self, root: Path, layout: Layout, weights: NewWeights, folder: Path) -> Any:
        from onnx import numpy_helper

        if weights.initializers is None:
            return None
        model = load_model(root, layout)
        by_name = {init.name: init for init in model.graph.initializer}
        max_change = 0.0
        for name, new in weights.initializers.items():
            if name not in by_name:
                raise BundleError(
                    f"{root}: initializer {name!r} of the manifest is not in the graph"
                )
            old = numpy_helper.to_array(by_name[name])
            if old.shape != new.shape or old.dtype != new.dtype:
                raise BundleError(
                    f"{weights.source}: initializer {name}: expected {old.dtype} {old.shape}, "
                    f"got {new.dtype} {new.shape}"
                )
            if old.size and old.dtype.kind in "fiub":
                diff = np.abs(new.astype(np.float64) - old.astype(np.float64))
                max_change = max(max_change, float(diff.max()))
            by_name[name].CopyFrom(numpy_helper.from_array(new, name))
        return _Content(model, thaw(layout.format(self.name).section), max_change)

    def weight_change(self, content: Any) -> float | None:
        return content.max_change

    # --- verify and inspect ------------------------------------------------------------

    def runner(self, root: Path, layout: Layout) -> Runner:
        from exporters import graph_io
        from runtimes.backends.onnx import check_graph_io

        model = readers.read_onnx(root, layout)
        try:
            run = graph_io.onnx_runner(model, threads=0)
        except Exception as e:  # onnxruntime raises its own exception types
            raise BundleError(f"onnxruntime could not load the policy graph: {e}") from e
        check_graph_io(run.session, layout.signatures["distribution"], layout.format("onnx").path)
        return run

    def describe(self, entry: FormatEntry) -> str:
        s = entry.section
        return (
            f"{entry.path}: opset {s.get('opset')}, function {s.get('function')}, "
            f"{len(s.get('initializers', ()))} initializers, "
            f"graph {str(s.get('graph_fingerprint', ''))[:12]}"
        )


FORMAT = OnnxFormat()
