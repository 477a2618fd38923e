"""A policy's ``distribution`` and ``get_initial_state`` as one LiteRT model (needs TF).

TensorFlow's converter (``tf.lite.TFLiteConverter``, still in TF 2.21) turns the traced
functions into a ``.tflite`` flatbuffer with one signature each, restricted to LiteRT's
builtin ops: the ``action`` signature samples with TF random ops, which need Flex
(TF Select) kernels that neither pip runtime ships, so it is not converted; sampling
stays in the reader, as for ONNX. Quantized conversions (dynamic-range and full int8)
are made by exporters.quantize through ``convert(..., quantization=...)``.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from toolkit.errors import ExportError

__all__ = ["SIGNATURES", "convert", "convert_saved_model", "manifest_entry"]

SIGNATURES = ("distribution", "get_initial_state")


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """The converter's MLIR diagnostics (C++, fd 2) go to a list, not the terminal."""
    captured: list[str] = []
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        fd = 2
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), fd)
        try:
            yield captured
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            log.seek(0)
            captured.append(log.read().decode(errors="replace"))


def _summary(error: Exception) -> str:
    """One line out of the converter's error: the unsupported ops, or its first line."""
    text = str(error)
    found = re.search(r"TF Select ops: ([^\n]+)", text)
    if found:
        return (
            f"it uses TensorFlow ops that are not LiteRT builtins ({found.group(1).strip()}); "
            "LiteRT's builtin kernels lack e.g. float64 broadcasting and fills"
        )
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    return first[:300]


def _run_converter(converter: Any, what: str, quantization: dict[str, Any] | None) -> bytes:
    import tensorflow as tf

    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        representative = quantization.get("representative_dataset")
        if representative is not None:
            converter.representative_dataset = representative
            if quantization.get("full_int8"):
                converter.target_spec.supported_ops = [
                    tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                    tf.lite.OpsSet.TFLITE_BUILTINS,
                ]
        if quantization.get("float16"):
            converter.target_spec.supported_types = [tf.float16]
    try:
        with _captured_stderr():
            return converter.convert()
    except Exception as e:  # the converter raises ConverterError and plain Exceptions
        raise ExportError(f"{what}: cannot be exported to LiteRT: {_summary(e)}") from e


def convert(module: Any, quantization: dict[str, Any] | None = None) -> bytes:
    """The LiteRT model of an ExportModule's ``distribution`` and ``get_initial_state``.

    Raises:
      ExportError: naming the ops LiteRT's builtins lack, when the policy uses some.
    """
    import tensorflow as tf

    functions = module.info.functions
    concrete = [functions[name].get_concrete_function() for name in SIGNATURES]
    what = type(module.policy).__name__
    # The converter freezes the functions through a SavedModel it logs about (fd 2).
    with _captured_stderr():
        converter = tf.lite.TFLiteConverter.from_concrete_functions(concrete, module)
        return _check(_run_converter(converter, what, quantization))


def convert_saved_model(
    saved_model_dir: str | os.PathLike,
    quantization: dict[str, Any] | None = None,
    what: str = "the SavedModel",
    signatures: tuple[str, ...] = SIGNATURES,
) -> bytes:
    """The LiteRT model of a bundle's SavedModel (its two signatures), for re-conversion."""
    import tensorflow as tf

    with _captured_stderr():
        converter = tf.lite.TFLiteConverter.from_saved_model(
            str(saved_model_dir), signature_keys=list(signatures)
        )
        return _check(_run_converter(converter, what, quantization))


def _check(model: bytes) -> bytes:
    from runtimes.backends.litert import check_no_custom_ops

    check_no_custom_ops(model, "the converted LiteRT model")
    return model


def manifest_entry(model: bytes, file: str) -> dict[str, Any]:
    """The manifest's ``litert`` entry: the file, its signatures and the ops it uses."""
    from ai_edge_litert.interpreter import Interpreter

    from runtimes.backends.litert import litert_ops

    signatures = sorted(Interpreter(model_content=model).get_signature_list())
    return {"file": file, "signatures": signatures, "ops": litert_ops(model)}


def representative_dataset(
    samples: Iterable[dict[str, Any]], initial_state: bool
) -> Callable[[], Iterator[tuple[str, dict[str, Any]]]]:
    """A converter's representative dataset: ``distribution`` inputs, and for stateful
    policies one ``get_initial_state`` call (every signature needs calibration data)."""
    import numpy as np

    def generate() -> Iterator[tuple[str, dict[str, Any]]]:
        if initial_state:
            yield "get_initial_state", {"batch_size": np.asarray(1, np.int32)}
        for inputs in samples:
            yield "distribution", inputs

    return generate
