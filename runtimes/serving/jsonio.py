"""JSON for the REST codecs: bodies in, tensors out, without stalling the event loop.

* ``loads(raw)``: a body's JSON. Large bodies are parsed in slices: Python's C
  decoder takes the GIL for a whole document (a 4 MiB body held every other request
  for a fifth of a second and more), so a large body is walked in Python with each
  innermost run of numbers (the rows of a batch) handed to the C decoder in pieces of
  at most ``SLICE`` characters. A thread decoding it then gives the GIL back to the
  event loop's thread at least every switch interval (5 ms).
* ``to_array(value, tensor, max_batch)``: nested lists -> an array, their shape checked
  against the tensor's (and the batch against ``max_batch``) before numpy converts
  anything, so the conversion is bounded by what the signature declares.
* ``dumps`` and ``plain``: answers, floats written as the shortest text that reads
  back to the same float32 (as TF Serving writes them).
"""

from __future__ import annotations

import json
import json.decoder
import json.scanner
import re
from typing import Any

import numpy as np

from runtimes.serving.signatures import TensorInfo, short
from toolkit.errors import ServingError

__all__ = ["SLICE", "dumps", "loads", "plain", "to_array"]

#: The most characters one call into the C decoder takes from a large body.
SLICE = 1 << 16
# An array of numbers only (no nesting, strings or literals) of at most SLICE characters.
_NUMBERS = re.compile(rf"\[[-+0-9.eE,\s]{{0,{SLICE}}}\]")


def _parse_array(s_and_end: tuple[str, int], scan_once: Any) -> tuple[list, int]:
    string, end = s_and_end
    match = _NUMBERS.match(string, end - 1)
    if match is not None:  # a row: one short call into the C decoder
        return json.loads(match.group()), match.end()
    return json.decoder.JSONArray(s_and_end, scan_once)


def _sliced_decoder() -> json.JSONDecoder:
    decoder = json.JSONDecoder()
    decoder.parse_array = _parse_array
    decoder.scan_once = json.scanner.py_make_scanner(decoder)
    return decoder


_SLICED = _sliced_decoder()
_RAW_DECODE = json.JSONDecoder().raw_decode
# json.dumps with separators builds a new encoder per call: one, made once, for answers
_ENCODE = json.JSONEncoder(separators=(",", ":"), allow_nan=True).encode


def loads(raw: bytes, sliced: bool = False) -> Any:
    """A request body's JSON (NaN and Infinity accepted, as TF Serving does).

    Args:
      raw: the body.
      sliced: parse in slices (for large bodies decoded off the event loop's thread).

    Raises:
      ServingError: (invalid argument) ``JSON Parse error: ...``.
    """
    if not raw.strip():
        raise ServingError("JSON Parse error: The document is empty")
    try:
        if not sliced:
            if raw[:1] == b"{" and raw[1:2] != b"\x00":  # UTF-8 (UTF-16's '{' has a 0 byte)
                text = raw.decode("utf-8", "surrogatepass")
                value, end = _RAW_DECODE(text)
                if end == len(text):  # else json.loads allows whitespace, names extra data
                    return value
            return json.loads(raw)
        text = raw.decode(json.detect_encoding(raw), "surrogatepass")
        return _SLICED.decode(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError too
        raise ServingError(f"JSON Parse error: {e}") from None


def to_array(value: Any, tensor: TensorInfo, max_batch: int) -> np.ndarray:
    """Nested lists of numbers -> an array of the tensor's shape (its dtype: ``conform``).

    The lists' shape along their first elements is checked first, so numpy converts
    nothing but ``max_batch`` rows at most of the declared shape (or finds them ragged).

    Raises:
      ServingError: (invalid argument) for another shape, a batch over ``max_batch``,
        or ragged or mixed lists.
    """
    probe = []
    item = value
    while isinstance(item, list):
        probe.append(len(item))
        if not item:
            break
        item = item[0]
    if len(probe) != len(tensor.shape) or any(
        expected is not None and expected != got
        for expected, got in zip(tensor.shape, probe, strict=True)
    ):
        raise ServingError(
            f"{tensor.name}: expected shape {tensor.describe_shape()}, "
            f"got [{', '.join(map(str, probe))}]"
        )
    if tensor.shape and tensor.shape[0] is None and probe[0] > max_batch:
        raise ServingError(
            f"inputs: expected a batch of at most {max_batch} (the server's --max-batch), "
            f"got {probe[0]}"
        )
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        array = None
    if array is None or array.dtype.kind == "O":
        raise ServingError(
            f"{tensor.name}: expected a nested list of numbers of shape "
            f"{tensor.describe_shape()}, got a ragged or mixed one: {short(value)}"
        )
    return array


def plain(value: Any) -> Any:
    """An output -> JSON-able values; floats print as the shortest text that reads back
    to the same float32 (TF Serving prints them the same way)."""
    if isinstance(value, str):
        return value
    array = np.asarray(value)
    if array.dtype.kind == "f" and array.dtype.itemsize < 8:
        array = array.astype(str).astype(np.float64)
    elif array.dtype.kind in "US":
        return array.astype(str).tolist()
    return array.tolist()


def dumps(data: Any, indent: int | None = None) -> bytes:
    """JSON bytes; NaN and Infinity as tokens, as TF Serving writes them (its API allows them)."""
    if indent is not None:
        return json.dumps(data, indent=indent, allow_nan=True).encode()
    return _ENCODE(data).encode()
