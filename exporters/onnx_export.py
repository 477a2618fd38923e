"""tf.function -> ONNX with tf2onnx, refusing any graph tf2onnx could not convert whole.

tf2onnx carries on after a node fails to convert and logs an error; a graph like that
must never ship. ``convert`` captures tf2onnx's log, checks the result for ops outside
the ONNX domain, and runs the full ONNX checker.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import onnx

from toolkit.errors import ExportError

__all__ = ["DEFAULT_OPSET", "convert", "set_metadata"]

#: Opset of exported graphs: supported by tf2onnx 1.17 and onnxruntime >= 1.14.
DEFAULT_OPSET = 17

# Random ops must never reach an exported graph: tf2onnx would bake a fixed seed in.
_RANDOM_OPS = frozenset(
    {
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
    }
)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _tf2onnx_errors() -> Iterator[list[str]]:
    handler = _Collect()
    logger = logging.getLogger("tf2onnx")
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


def _register_handlers() -> None:
    # Handlers for ops TFP emits that tf2onnx lacks, registered on first use only.
    try:
        from exporters import tf2onnx_handlers
    except ImportError:  # pragma: no cover - the module ships with the package
        return
    tf2onnx_handlers.register_handlers()


def convert(
    function: Any, input_signature: Any, *, opset: int = DEFAULT_OPSET, what: str = "policy"
) -> onnx.ModelProto:
    """Converts a tf.function to a checked ONNX model.

    Raises:
      ExportError: naming the ops tf2onnx failed on, random ops found in the graph, or
        what the ONNX checker refused.
    """
    import tf2onnx

    _register_handlers()
    with _tf2onnx_errors() as errors:
        try:
            model, _ = tf2onnx.convert.from_function(
                function, input_signature=input_signature, opset=opset
            )
        except Exception as e:  # tf2onnx raises bare exceptions of many kinds
            raise ExportError(f"{what}: tf2onnx could not convert the graph: {e}") from e
    if errors:
        raise ExportError(f"{what}: tf2onnx could not convert every op: {errors[0]}")
    bad = sorted(
        {n.op_type for n in model.graph.node if n.domain not in ("", "ai.onnx", "ai.onnx.ml")}
    )
    if bad:
        raise ExportError(f"{what}: the ONNX graph still holds ops outside ONNX: {bad}")
    random = sorted({n.op_type for n in model.graph.node if n.op_type in _RANDOM_OPS})
    if random:
        raise ExportError(
            f"{what}: the ONNX graph holds random ops {random}; exported graphs must be "
            "deterministic (the runtime samples)"
        )
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{what}: the ONNX checker refused the graph: {e}") from e
    return model


def set_metadata(model: onnx.ModelProto, entries: dict[str, str]) -> None:
    """Replaces the model's metadata_props with ``entries``."""
    del model.metadata_props[:]
    for key, value in entries.items():
        prop = model.metadata_props.add()
        prop.key = key
        prop.value = value
