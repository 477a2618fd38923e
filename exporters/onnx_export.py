"""tf.function -> ONNX with tf2onnx, refusing any graph tf2onnx could not convert whole.

tf2onnx carries on after a node fails to convert (leaving the TF op in the graph) and
only logs an error; a graph like that must never ship. ``convert`` captures tf2onnx's
error log, looks up every op (subgraphs included) in ONNX's op registry, refuses random
ops, and runs the full ONNX checker.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import onnx

from toolkit import bundle
from toolkit.errors import ExportError

__all__ = [
    "DEFAULT_OPSET",
    "RANDOM_OPS",
    "all_nodes",
    "convert",
    "embed_manifest",
    "first_line",
    "onnx_model_and_weights",
    "onnx_model_for",
]

#: Opset of exported graphs: supported by tf2onnx 1.17 and onnxruntime >= 1.14.
DEFAULT_OPSET = 17

#: ONNX random ops: tf2onnx would bake a fixed seed into them, so graphs must not hold any.
RANDOM_OPS = frozenset(
    {
        "Bernoulli",
        "Multinomial",
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
    }
)


class _ErrorRecords(logging.Handler):
    """Collects the error records tf2onnx logs while it carries on converting."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage().splitlines()[0])


def first_line(error: BaseException) -> str:
    """The first line of an error's text (TF's are long)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def all_nodes(graph: Any) -> Iterator[Any]:
    """Every node of a graph, those of subgraphs (If, Loop, Scan) included."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.g.node:
                yield from all_nodes(attribute.g)
            for subgraph in attribute.graphs:
                yield from all_nodes(subgraph)


def convert(
    function: Any,
    input_signature: Any = None,
    *,
    opset: int = DEFAULT_OPSET,
    what: str = "policy",
) -> onnx.ModelProto:
    """Converts a tf.function to a checked ONNX model.

    Args:
      function: a tf.function.
      input_signature: its input signature (default: the function's own).
      opset: the ONNX opset.
      what: names the thing converted in error messages.

    Raises:
      ExportError: naming the ops tf2onnx failed on, ops ONNX does not define, random
        ops, or what the ONNX checker refused.
    """
    import tf2onnx

    from exporters.tf2onnx_handlers import register_handlers

    register_handlers()
    logger = logging.getLogger("tf2onnx")
    records = _ErrorRecords()
    logger.addHandler(records)
    old_level = logger.level
    if logger.getEffectiveLevel() > logging.ERROR:
        logger.setLevel(logging.ERROR)
    try:
        model, _ = tf2onnx.convert.from_function(
            function,
            input_signature=input_signature
            if input_signature is not None
            else function.input_signature,
            opset=opset,
        )
    except Exception as e:  # tf2onnx raises bare exceptions of many kinds
        raise ExportError(f"{what}: tf2onnx failed ({type(e).__name__}: {first_line(e)})") from e
    finally:
        logger.removeHandler(records)
        logger.setLevel(old_level)
    if records.messages:
        raise ExportError(f"{what}: tf2onnx could not convert it: " + "; ".join(records.messages))
    nodes = list(all_nodes(model.graph))
    unknown = sorted({n.op_type for n in nodes if not onnx.defs.has(n.op_type, n.domain)})
    if unknown:
        raise ExportError(f"{what}: expected only ONNX ops, got ops ONNX does not define {unknown}")
    random_ops = sorted({n.op_type for n in nodes} & RANDOM_OPS)
    if random_ops:
        raise ExportError(f"{what}: expected a graph without random ops, got {random_ops}")
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # onnx raises ValidationError and InferenceError
        raise ExportError(f"{what}: the ONNX model fails onnx.checker ({first_line(e)})") from e
    return model


def embed_manifest(model: onnx.ModelProto, manifest: dict[str, Any]) -> None:
    """Puts ``manifest`` (less its file table) into the model's metadata_props.

    The file table is left out: it would have to hash the file that holds it.
    """
    embedded = {k: v for k, v in manifest.items() if k != "files"}
    del model.metadata_props[:]
    prop = model.metadata_props.add()
    prop.key = bundle.ONNX_MANIFEST_KEY
    prop.value = json.dumps(embedded, sort_keys=True)


def onnx_model_for(module: Any, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """The ONNX model of a module's ``distribution`` function."""
    inputs = dict(module.info.inputs)
    what = type(module.policy).__name__
    model = convert(module.info.functions["distribution"], [inputs], opset=opset, what=what)
    stray = sorted({i.name for i in model.graph.input} - set(inputs))
    if stray:
        # e.g. a tensor captured from outside the traced function (not a variable).
        raise ExportError(
            f"{what}: expected the ONNX graph to take only {sorted(inputs)}, got extra "
            f"inputs {stray} (tensors captured from outside the traced function?)"
        )
    return model


def onnx_model_and_weights(
    module: Any, opset: int = DEFAULT_OPSET
) -> tuple[onnx.ModelProto, dict[str, Any] | None]:
    """The ONNX model (converted with probe weights, real ones written in) and its weights
    map for ``manifest["onnx"]["weights"]`` (see exporters.probe)."""
    from exporters.probe import convert_with_probes
    from exporters.weights import canonical_initializers

    what = type(module.policy).__name__
    try:
        model, weights = convert_with_probes(module, lambda m: onnx_model_for(m, opset), what)
    except ExportError as e:
        if "disagree" not in str(e):
            raise
        # Some graphs compute with their weights at conversion time (e.g. an observation
        # normaliser's variance folded through sqrt): they still export, converted with
        # their real weights, but without a weights map (see docs/bundle-format.md).
        warnings.warn(
            f"{what}: exported without a weights map ({e}); the bundle takes weights-only "
            "checkpoints of this graph, not TF checkpoints without TensorFlow",
            UserWarning,
            stacklevel=2,
        )
        return onnx_model_for(module, opset), None
    by_name = weights.pop("by_name")
    weights["initializers"] = [by_name.get(name) for name in canonical_initializers(model)]
    return model, weights
