"""A toy bundle format, as a user would add one: this module plus one registry line.

``onnx_copy`` writes the policy's ``distribution`` function a second time, as
``policy_copy.onnx`` without a weights map or a manifest copy, with a manifest section
of its own (``{"file": ...}``). ``verify`` runs it with onnxruntime, ``inspect`` shows
it, and ``update`` refuses it (it says what to do instead).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from exporters.formats.base import Format, Runner
from toolkit.bundle import files
from toolkit.bundle.layout import FormatEntry, Layout
from toolkit.errors import UnsupportedError

FILE = "policy_copy.onnx"


class OnnxCopyFormat(Format):
    name = "onnx_copy"
    label = "an ONNX copy"
    export_needs = ("tensorflow", "tf2onnx", "onnx")
    runner_needs = ("onnxruntime",)
    schema = {
        "type": "object",
        "required": ["file"],
        "additionalProperties": False,
        "properties": {"file": {"$ref": "#/$defs/relativePath"}},
    }

    def convert(self, module: Any, options: dict[str, Any]) -> Any:
        from exporters.onnx_export import onnx_model_for

        return onnx_model_for(module)

    def write(self, content: Any, folder: Path) -> dict[str, Any]:
        import onnx

        onnx.save(content, str(folder / FILE))
        return {"file": FILE}

    def check_update(self, root: Path, layout: Layout, weights_map: bool) -> None:
        raise UnsupportedError(f"{root}: {FILE} takes no updates; export the policy again")

    def runner(self, root: Path, layout: Layout) -> Runner:
        import onnxruntime as ort

        entry = layout.format(self.name)
        data = files.read_member(root, entry.path, key="onnx_copy.file", files=layout.files_json)
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]

        def run(inputs: dict[str, Any]) -> dict[str, Any]:
            return dict(zip(names, session.run(names, inputs), strict=True))

        return run

    def describe(self, entry: FormatEntry) -> str:
        return f"{entry.path}: the distribution function again (toy)"


FORMAT = OnnxCopyFormat()
