"""The float bundle quantize reads, and the manifest of the bundle it writes.

Every read of the source manifest in the quantize package goes through
``FloatBundle`` (built once, from a validated manifest), and the quantized
manifest is made by ``quantized_manifest``, so the layout is decoded in one place.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from exporters import graph_io
from toolkit import bundle, nest
from toolkit.errors import BundleError

__all__ = ["FloatBundle", "quantized_manifest"]


@dataclasses.dataclass(frozen=True)
class FloatBundle:
    """A float bundle's folder and what quantize needs of its manifest.

    Attributes:
      root: the bundle folder.
      manifest: the validated manifest (hashes not yet checked: ``check_files``).
    """

    root: Path
    manifest: dict[str, Any]

    @classmethod
    def read(cls, root: Path) -> FloatBundle:
        """Reads and validates the manifest; BundleError if it is already quantized."""
        manifest = bundle.read_manifest(root, check_files=False)
        return cls(root, manifest)

    def check_not_quantized(self) -> None:
        if "quantization" in self.manifest:
            raise BundleError(
                f"{self.root}: already quantized ({self.manifest['quantization'].get('method')})"
            )

    @property
    def formats(self) -> list[str]:
        return self.manifest.get("formats")

    def has(self, fmt: str) -> bool:
        """Whether the bundle holds the format ``fmt`` (its manifest entry)."""
        return fmt in self.manifest

    @property
    def onnx_file(self) -> str:
        return self.manifest["onnx"]["file"]

    def check_files(self, members: list[str]) -> None:
        """Hash-checks the members read (a device copy may hold just one format)."""
        bundle.check_bundle_files(self.root, self.manifest["files"], only=members)

    def read_onnx(self) -> bytes:
        """The ONNX graph, contained, hash-checked and self-contained (bundle.read_onnx)."""
        return bundle.read_onnx(self.root, self.manifest)

    def read_litert(self) -> bytes:
        rel = self.manifest["litert"]["file"]
        return bundle.read_member(self.root, rel, key="litert.file", files=self.manifest["files"])

    @property
    def saved_model(self) -> Path:
        return self.root / bundle.SAVED_MODEL_DIR

    @property
    def inputs(self) -> dict[str, tuple[np.dtype, list]]:
        """``{graph input name: (dtype, shape without the batch)}`` of ``distribution``."""
        entries = self.manifest["signatures"]["distribution"]["inputs"]
        return {e["name"]: (np.dtype(e["dtype"]), e["shape"][1:]) for e in entries}

    @property
    def stateful(self) -> bool:
        return bool(graph_io.initial_state(self.manifest, 1))

    @property
    def discrete(self) -> bool:
        """Whether every action leaf is an integer (chosen by an argmax of the outputs)."""
        from toolkit.specs import array_spec

        leaves = nest.flatten(array_spec.spec_nest_from_json(self.manifest["specs"]["action"]))
        return bool(leaves) and all(np.dtype(leaf.dtype).kind in "biu" for leaf in leaves)

    def float_runner(self) -> graph_io.Runner:
        """The float graph the candidates are compared with (ONNX if the bundle has it)."""
        if "onnx" in self.manifest:
            return graph_io.onnx_runner(self.read_onnx())
        return graph_io.litert_runner(self.read_litert())

    def float_policy(self) -> Any:
        """The float policy that plays the episodes: a TF-free backend where one is installed."""
        import runtimes

        for backend in ("onnx", "litert"):
            if backend in self.manifest and runtimes.missing_extra(backend) is None:
                return runtimes.load_policy(self.root, backend, seed=0)
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
    manifest = source.manifest
    fmt = target.writes
    new = copy.deepcopy(manifest)
    new.pop("files", None)
    for key in ("saved_model", "onnx", "litert"):
        if key != fmt:
            new.pop(key, None)
    new["formats"] = [fmt]
    source_file = manifest.get(fmt, {}).get("file")
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
    if source_file and source_file in manifest.get("files", {}):
        quantization["source_sha256"] = manifest["files"][source_file]["sha256"]
    if fmt == "onnx":
        quantization["source_graph_fingerprint"] = manifest["onnx"]["graph_fingerprint"]
    new[fmt] = entry
    new["quantization"] = quantization
    return new
