"""Target ``litert``: candidates as LiteRT models, measured with ai-edge-litert.

* ``litert-gptq`` (``gptq_litert``): the GPTQ int8 weights in the bundle's float
  LiteRT model (converted from its SavedModel when it has none): per-channel int8
  weights feeding DEQUANTIZE ops, computing in float.
* From TensorFlow's converter on the bundle's SavedModel: ``litert-dynamic-range``
  (int8 weights, float activations), ``litert-int8`` (int8 weights and activations,
  the calibration states as the representative dataset; float inputs and outputs)
  and ``litert-float16``.

Needs TensorFlow (the converter, and the flatbuffer schema litert-gptq edits with).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from exporters import graph_io
from exporters.quantize.source import FloatBundle
from toolkit import bundle
from toolkit.errors import BundleError

__all__ = ["Prepared", "build", "check", "finish", "format_entry", "prepare", "runner"]


def check(source: FloatBundle) -> list[str]:
    """The members read (the SavedModel); BundleError if the bundle has none."""
    if not source.has("saved_model"):
        raise BundleError(
            f"{source.root}: LiteRT quantization converts the bundle's SavedModel again, and "
            f"this bundle has none (formats {source.formats})"
        )
    return [bundle.SAVED_MODEL_DIR]


class Prepared:
    """What every candidate starts from.

    Attributes:
      float_model: the bundle's float LiteRT model, or its SavedModel converted (float).
    """

    def __init__(self, source: FloatBundle):
        from exporters import litert_export

        if source.has("litert"):
            self.float_model = source.read_litert()
            # LiteRT checks a model's tensor indices when it allocates them, not when it
            # loads it: one call now, so a broken model is refused before any work.
            one = {
                name: np.zeros((1, *[d or 1 for d in inner]), dtype)
                for name, (dtype, inner) in source.inputs.items()
            }
            runner(self.float_model)(one)
        else:
            self.float_model = litert_export.convert_saved_model(
                source.saved_model, what=str(source.root)
            )


def prepare(source: FloatBundle) -> Prepared:
    return Prepared(source)


def build(
    method: str, prepared: Prepared, source: FloatBundle, calibration: Any, tmp: Path
) -> tuple[bytes, tuple[str, ...]]:
    """One candidate's model bytes and float layers (``calibration``: RealStates)."""
    from exporters import litert_export

    if method == "litert-gptq":
        from exporters.quantize import gptq_litert

        model, _, kept, _ = gptq_litert.quantize_litert(
            prepared.float_model, calibration.inputs, source.discrete
        )
        return model, kept
    signatures = litert_export.SIGNATURES
    quantization: dict[str, Any] = {"dynamic_range": True}
    if method == "litert-float16":
        quantization = {"float16": True}
    elif method == "litert-int8":
        rows = list(calibration.batches(1))[:: max(1, calibration.count // 500)]
        quantization = {
            "representative_dataset": litert_export.representative_dataset(rows, source.stateful),
            "full_int8": True,
        }
        if not source.stateful:
            # The calibrator refuses a signature without outputs (a stateless policy's
            # get_initial_state); readers do not need it.
            signatures = ("distribution",)
    model = litert_export.convert_saved_model(
        source.saved_model,
        quantization=quantization,
        what=str(source.root),
        signatures=signatures,
    )
    return model, ()


def format_entry(source: FloatBundle, model: bytes) -> dict[str, Any]:
    """The quantized bundle's ``litert`` entry (its ops and signatures)."""
    from exporters import litert_export

    return litert_export.manifest_entry(model, bundle.LITERT_FILE)


def finish(model: bytes, manifest: dict[str, Any]) -> bytes:
    """LiteRT models carry no manifest copy: written as they are."""
    return model


def runner(model: bytes) -> graph_io.Runner:
    return graph_io.litert_runner(model)
