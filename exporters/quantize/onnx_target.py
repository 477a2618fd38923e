"""Target ``onnx``: candidates from the bundle's ONNX graph, measured with onnxruntime.

* ``gptq`` (``gptq_onnx``): int8 hidden layers with GPTQ rounding on the calibration
  states and corrected biases; the first and last layers float, the last refitted to
  the float outputs; computes in float.
* With ``onnxruntime.quantization``: ``dynamic`` (int8 weights, one scale per
  matrix), ``dynamic-per-channel`` (one scale per output column),
  ``dynamic-per-channel-keep-last`` (the last MatMul/Gemm layers, which produce the
  Q-values or logits, stay float), ``static-per-channel-keep-last`` (int8 weights and
  activations as QDQ, activation ranges from the calibration states).
* ``float16``: MatMul/Gemm weights stored as float16, cast back at load.

Needs onnx and onnxruntime (the ``[runtime]`` extra), no TensorFlow.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from exporters import graph_io
from exporters.quantize.gptq_onnx import last_layers
from exporters.quantize.source import FloatBundle
from toolkit.bundle.layout import thaw
from toolkit.errors import BundleError, ExportError

__all__ = [
    "Prepared",
    "build",
    "check",
    "finish",
    "float16_weights",
    "format_entry",
    "prepare",
    "runner",
]


def check(source: FloatBundle) -> list[str]:
    """The members read (the ONNX graph); BundleError if the bundle has none."""
    if not source.has("onnx"):
        raise BundleError(
            f"{source.root}: expected a bundle with an ONNX graph, got {source.formats}"
        )
    return [source.onnx_file]


class Prepared:
    """What every candidate starts from, read and checked once.

    Attributes:
      float_model: the float ONNX graph's bytes (contained, hash-checked, self-contained).
      model: the same parsed, every node named (quantizers exclude nodes by name).
    """

    def __init__(self, source: FloatBundle):
        import onnx

        self.float_model = source.read_onnx()
        try:
            model = onnx.load_model_from_string(self.float_model)
        except Exception as e:  # protobuf's DecodeError and others
            raise BundleError(f"{source.root}: not a readable ONNX model ({e})") from e
        for i, node in enumerate(model.graph.node):
            if not node.name:
                node.name = f"{node.op_type}_{i}"
        if not any(n.op_type in ("MatMul", "Gemm") for n in model.graph.node):
            raise ExportError(
                f"{source.root}: nothing to quantize: the graph has no MatMul/Gemm weights"
            )
        self.model = model


def prepare(source: FloatBundle) -> Prepared:
    return Prepared(source)


def build(
    method: str, prepared: Prepared, source: FloatBundle, calibration: Any, tmp: Path
) -> tuple[bytes, tuple[str, ...]]:
    """One candidate's model bytes and float layers (``calibration``: RealStates)."""
    import onnx

    model = copy.deepcopy(prepared.model)
    if method == "gptq":
        from exporters.quantize import gptq_onnx

        result = gptq_onnx.quantize_model(model, calibration.inputs, source.discrete)
        return result.model.SerializeToString(), result.float_layers
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    float_file = tmp / "float.onnx"
    onnx.save(model, str(float_file))
    out = tmp / f"{method}.onnx"
    keep = tuple(last_layers(model)) if method.endswith("keep-last") else ()
    if method == "float16":
        return float16_weights(model).SerializeToString(), ()
    with _quiet_root_logger():
        if method.startswith("dynamic"):
            quantize_dynamic(
                str(float_file),
                str(out),
                weight_type=QuantType.QInt8,
                per_channel="per-channel" in method,
                nodes_to_exclude=list(keep),
                op_types_to_quantize=["MatMul", "Gemm"],
            )
        else:
            batches = list(calibration.batches(256))

            class Reader(CalibrationDataReader):
                def __init__(self) -> None:
                    self.items = iter(batches)

                def get_next(self) -> dict[str, np.ndarray] | None:
                    return next(self.items, None)

            quantize_static(
                str(float_file),
                str(out),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                weight_type=QuantType.QInt8,
                activation_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul", "Gemm"],
                nodes_to_exclude=list(keep),
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
    return out.read_bytes(), keep


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    # onnxruntime.quantization logs "consider pre-processing" warnings on the root logger.
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def float16_weights(model: Any) -> Any:
    """The model with its MatMul/Gemm weights stored as float16, cast back at load.

    onnxruntime folds the Cast of a constant once, when the session is made, so the
    graph computes in float32 with weights rounded to float16 (11 significant bits
    where int8 keeps 8 with one scale per column).
    """
    from onnx import TensorProto, helper, numpy_helper

    weights = {
        node.input[1]
        for node in model.graph.node
        if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1
    }
    casts = []
    for init in model.graph.initializer:
        if init.name in weights and init.data_type == TensorProto.FLOAT and len(init.dims) == 2:
            name, value = init.name, numpy_helper.to_array(init)
            stored = f"{name}_float16"
            init.CopyFrom(numpy_helper.from_array(value.astype(np.float16), stored))
            casts.append(
                helper.make_node(
                    "Cast", [stored], [name], name=f"{stored}_cast", to=TensorProto.FLOAT
                )
            )
    nodes = casts + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def format_entry(source: FloatBundle, model: bytes) -> dict[str, Any]:
    """The quantized bundle's ``onnx`` entry: the source's, for the quantized graph."""
    import onnx

    from exporters.weights import canonical_initializers, graph_fingerprint

    quantized = onnx.load_from_string(model)
    return {
        # No weights map: the quantized graph's initializers are no variable's values.
        **{k: v for k, v in thaw(source.layout.format("onnx").section).items() if k != "weights"},
        "graph_fingerprint": graph_fingerprint(quantized),
        "initializers": canonical_initializers(quantized),
    }


def finish(model: bytes, manifest: dict[str, Any]) -> bytes:
    """The ONNX model carrying ``manifest``'s copy (readers compare the two)."""
    import onnx

    from exporters.onnx_export import embed_manifest

    proto = onnx.load_from_string(model)
    embed_manifest(proto, manifest)
    return proto.SerializeToString()


def runner(model: bytes) -> graph_io.Runner:
    return graph_io.onnx_runner(model)
