"""The float bundle quantize reads, and the manifest of the bundle it writes.

Every read of the source bundle in the quantize package goes through ``FloatBundle``
(over the bundle's typed ``toolkit.bundle.layout.Layout``, read once), and the quantized
manifest is made by ``quantized_manifest``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from exporters import graph_io
from toolkit import bundle, nest
from toolkit.bundle.layout import Layout
from toolkit.errors import BundleError

__all__ = ["FloatBundle", "quantized_manifest"]


@dataclasses.dataclass(frozen=True)
class FloatBundle:
    """A float bundle's folder and its layout.

    Attributes:
      root: the bundle folder.
      layout: the bundle's validated layout (hashes not yet checked: ``check_files``).
    """

    root: Path
    layout: Layout

    @classmethod
    def read(cls, root: Path) -> FloatBundle:
        """Reads and validates the manifest (its hashes are checked as files are read)."""
        return cls(root, bundle.read_layout(root, check_files=False))

    def check_not_quantized(self) -> None:
        if self.layout.quantization is not None:
            raise BundleError(
                f"{self.root}: already quantized ({self.layout.quantization.get('method')})"
            )

    @property
    def formats(self) -> list[str]:
        return list(self.layout.formats)

    def has(self, fmt: str) -> bool:
        """Whether the bundle holds the format ``fmt``."""
        return self.layout.has(fmt)

    @property
    def onnx_file(self) -> str:
        return self.layout.format("onnx").path

    def check_files(self, members: list[str]) -> None:
        """Hash-checks the members read (a device copy may hold just one format)."""
        bundle.check_bundle_files(self.root, self.layout.files_json, only=members)

    def read_onnx(self) -> bytes:
        """The ONNX graph, contained, hash-checked and self-contained (bundle.read_onnx)."""
        return bundle.read_onnx(self.root, self.layout)

    def read_litert(self) -> bytes:
        return bundle.read_litert(self.root, self.layout)

    @property
    def saved_model(self) -> Path:
        return self.root / self.layout.format("saved_model").path

    @property
    def inputs(self) -> dict[str, tuple[np.dtype, list]]:
        """``{graph input name: (dtype, shape without the batch)}`` of ``distribution``."""
        entries = self.layout.signatures["distribution"].inputs
        return {e.name: (np.dtype(e.dtype), list(e.shape[1:])) for e in entries}

    @property
    def stateful(self) -> bool:
        return bool(self.layout.names.states)

    @property
    def discrete(self) -> bool:
        """Whether every action leaf is an integer (chosen by an argmax of the outputs)."""
        leaves = nest.flatten(self.layout.specs.action)
        return bool(leaves) and all(np.dtype(leaf.dtype).kind in "biu" for leaf in leaves)

    def float_runner(self) -> graph_io.Runner:
        """The float graph the candidates are compared with (ONNX if the bundle has it)."""
        if self.layout.has("onnx"):
            return graph_io.onnx_runner(self.read_onnx())
        return graph_io.litert_runner(self.read_litert())

    def float_policy(self) -> Any:
        """The float policy that plays the episodes: a TF-free backend where one is
        installed (the backend table's order), else any backend that loads it."""
        import runtimes
        from runtimes import backends

        for backend in backends.installed(self.layout.formats):
            if backend.tf_free:
                return runtimes.load_policy(self.root, backend.name, seed=0)
        return runtimes.load_policy(self.root, seed=0)


def quantized_manifest(
    source: FloatBundle,
    target: Any,
    method: Any,
    entry: dict[str, Any],
    keep: tuple[str, ...],
    states: Any,
    calibration: Any,
    agreement: float,
    mean_return: float | None,
    tolerance: float,
) -> dict[str, Any]:
    """The manifest of a quantized bundle: the source's, with one format and what was measured.

    Args:
      source: the float bundle.
      target, method: the ``targets.Target`` and its ``targets.Method``.
      entry: the written format's manifest entry (the target module's ``format_entry``).
      keep: the layers kept in float.
      states, calibration: the measured and the calibration RealStates.
      agreement, mean_return, tolerance: what the candidate measured, and the tolerance.
    """
    layout = source.layout
    fmt = target.writes
    new = layout.to_json()
    new.pop("files", None)
    for key in layout.formats:
        if key != fmt:
            new.pop(key, None)
    new["formats"] = [fmt]
    source_file = layout.format(fmt).path if layout.has(fmt) else None
    quantization: dict[str, Any] = {
        "method": method.name,
        "target": target.name,
        "weight_type": method.weights,
        "activations": method.activations,
        "per_channel": method.per_channel,
        "float_layers": list(keep),
        "states": states.count,
        "state_source": states.source,
        "calibration_states": calibration.count,
        "calibration_source": calibration.source,
        "action_agreement": agreement,
        "tolerance": tolerance,
        "float_return": states.float_return,
        "quantized_return": mean_return,
    }
    if source_file and source_file in layout.files:
        quantization["source_sha256"] = layout.files[source_file].sha256
    if fmt == "onnx":
        quantization["source_graph_fingerprint"] = layout.graph_fingerprint
    new[fmt] = entry
    new["quantization"] = quantization
    return new
