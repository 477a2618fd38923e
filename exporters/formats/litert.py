"""The LiteRT format: ``policy.tflite``, ``distribution`` and ``get_initial_state``.

Converted by TensorFlow's ``TFLiteConverter`` with builtin ops only (docs/bundle-format.md,
"The LiteRT model"); the litert backend runs it without TensorFlow. Its weights are
converted constants, so an update converts it again from the updated SavedModel.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from exporters.formats.base import Format, NewWeights, Runner
from toolkit import bundle
from toolkit.bundle import readers
from toolkit.bundle.layout import FormatEntry, Layout
from toolkit.errors import UnsupportedError

__all__ = ["FORMAT", "LiteRTFormat"]


class LiteRTFormat(Format):
    name = "litert"
    label = "LiteRT"
    default = False
    export_needs = ("tensorflow", "ai_edge_litert")
    runner_needs = ("ai_edge_litert",)
    # A LiteRT model's weights are constants: updating it converts the SavedModel again.
    update_after = ("saved_model",)
    schema = {
        "type": "object",
        "required": ["file", "signatures", "ops"],
        "additionalProperties": False,
        "properties": {
            "file": {"$ref": "#/$defs/relativePath"},
            "signatures": {
                "type": "array",
                "maxItems": 16,
                "items": {"enum": ["distribution", "get_initial_state"]},
            },
            "ops": {
                "type": "array",
                "maxItems": 1000,
                "items": {"type": "string", "maxLength": 200},
            },
        },
    }

    # --- export ----------------------------------------------------------------------

    def convert(self, module: Any, options: dict[str, Any]) -> bytes:
        from exporters import litert_export

        return litert_export.convert(module)

    def write(self, content: bytes, folder: Path) -> dict[str, Any]:
        from exporters import litert_export

        (folder / bundle.LITERT_FILE).write_bytes(content)
        return litert_export.manifest_entry(content, bundle.LITERT_FILE)

    # --- update ----------------------------------------------------------------------

    def check_update(self, root: Path, layout: Layout, weights_map: bool) -> None:
        rel = layout.format(self.name).path
        if not layout.has("saved_model"):
            raise UnsupportedError(
                f"{root}: updating {rel} converts it again from the bundle's SavedModel, and "
                "this bundle has none; export the policy again (--format onnx,litert) instead"
            )
        if importlib.util.find_spec("tensorflow") is None:
            raise UnsupportedError(
                f"{root}: updating {rel} converts the LiteRT model again, which needs "
                "TensorFlow (pip install 'policy-toolkit[all]'); on a device, run `update` "
                "where TensorFlow is installed and copy the bundle over"
            )

    def updated(self, root: Path, layout: Layout, weights: NewWeights, folder: Path) -> bytes:
        from exporters import litert_export

        saved_model = folder / layout.format("saved_model").path
        return litert_export.convert_saved_model(saved_model, what=str(root))

    # --- verify and inspect ------------------------------------------------------------

    def runner(self, root: Path, layout: Layout) -> Runner:
        from exporters import graph_io

        return graph_io.litert_runner(readers.read_litert(root, layout))

    def extra_checks(self, root: Path, layout: Layout, batch: int) -> list[Any]:
        """The model's ``get_initial_state`` against the zero states readers start from."""
        from exporters import graph_io
        from exporters.parity import OutputDiff, compare

        run = graph_io.litert_runner(readers.read_litert(root, layout), "get_initial_state")
        got = run({"batch_size": np.asarray(batch, np.int32)})
        rows = []
        for name, expected in graph_io.initial_state(layout, batch).items():
            value = got.get(name)
            output = f"get_initial_state/{name}"
            if value is None:
                rows.append(OutputDiff(self.name, output, np.inf, np.inf, False))
                continue
            max_abs, max_rel, ok = compare(expected, value, 0.0, 0.0)
            rows.append(OutputDiff(self.name, output, max_abs, max_rel, ok))
        return rows

    def describe(self, entry: FormatEntry) -> str:
        s = entry.section
        return (
            f"{entry.path}: signatures {', '.join(s.get('signatures', ()))}; "
            f"{len(s.get('ops', ()))} builtin ops"
        )


FORMAT = LiteRTFormat()
