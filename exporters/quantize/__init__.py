"""quantize_bundle: an int8 copy of a bundle's policy, judged on the states it will meet."""

from exporters.quantize.engine import (
    LITERT_METHODS,
    ONNX_METHODS,
    Candidate,
    QuantizeReport,
    RealStates,
    last_layers,
    quantize_bundle,
    return_floor,
)

__all__ = [
    "LITERT_METHODS",
    "ONNX_METHODS",
    "Candidate",
    "QuantizeReport",
    "RealStates",
    "last_layers",
    "quantize_bundle",
    "return_floor",
]
