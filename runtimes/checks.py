"""The runtime's value checks on the per-call path: step types, graph inputs, output leaves.

``BundlePolicy`` (runtimes.policy) validates every call; these helpers are what its fast
path runs, so each is written for what it costs per call (instruction counts in the
comments were taken with callgrind): a step-type batch as one Python int, bounds as
Python numbers below a few elements, 0-d bounds when uniform. Anything they are unsure
of returns False, and the caller falls back to ``PyPolicy``'s full check, which names
what is wrong.
"""

# No ``from __future__ import annotations``: typing compiles each string annotation of a
# NamedTuple's fields at import (a runtime's cold start).

import sys
from typing import Any, NamedTuple

import numpy as np

from toolkit import nest
from toolkit.specs import array_spec

__all__ = [
    "STEP_ROWS",
    "LeafCheck",
    "fill_inputs",
    "flatten_like",
    "leaf_within",
    "leaves_within",
    "step_types_ok",
]

_NDARRAY = np.ndarray
_BYTEORDER = sys.byteorder
_UINT32 = np.dtype(np.uint32)
_MAX = np.maximum.reduce
_MIN = np.minimum.reduce
#: rows above which a batch's step types are checked by one numpy reduction (about 11k
#: instructions whatever the size) rather than as one Python int (callgrind, per call:
#: 4.4k at 1 row, 7.3k at 32, 28k at 256)
STEP_ROWS = 64
#: byte count -> (every bit but the two lowest of each int32 lane, the lowest bit of each)
_STEP_MASKS: dict[int, tuple[int, int]] = {}


def step_types_ok(step_type: np.ndarray) -> bool:
    """Whether every int32 step type of a batch is 0, 1 or 2.

    Up to ``STEP_ROWS`` rows, the batch as one Python int, masked: a lane is valid when
    no bit above the lowest two is set and not both of those are (3). Above, seen as
    unsigned (a negative step type is above 2 too), one maximum decides.
    """
    if step_type.size > STEP_ROWS:
        return _MAX(step_type.view(_UINT32)) <= 2
    data = step_type.tobytes()
    masks = _STEP_MASKS.get(len(data))
    if masks is None:
        lanes = len(data) // 4
        high = (b"\xfc\xff\xff\xff" if _BYTEORDER == "little" else b"\xff\xff\xff\xfc") * lanes
        low = (b"\x01\x00\x00\x00" if _BYTEORDER == "little" else b"\x00\x00\x00\x01") * lanes
        masks = _STEP_MASKS[len(data)] = (
            int.from_bytes(high, _BYTEORDER),
            int.from_bytes(low, _BYTEORDER),
        )
    value = int.from_bytes(data, _BYTEORDER)
    return not (value & masks[0]) and not (value & (value >> 1) & masks[1])


def fill_inputs(buffers: list[np.ndarray], arrays: list[Any], unbatched: bool) -> None:
    """Copies graph inputs into a backend's buffers; an unbatched value fills row 0.

    ``buffer[0] = value`` costs a third less than ``buffer[...] = value``; a value only
    the latter takes (an unvalidated one with an extra leading 1) gets the latter.
    """
    # (zip without strict=: its keyword parsing costs ~1.5k instructions per call;
    # the lists are the backend's, one buffer per input)
    if unbatched:
        try:
            for buffer, value in zip(buffers, arrays):  # noqa: B905
                buffer[0] = value
            return
        except (ValueError, TypeError):
            pass
    for buffer, value in zip(buffers, arrays):  # noqa: B905
        buffer[...] = value


class LeafCheck(NamedTuple):
    """What one output leaf must be: dtype, shape and bounds (flat lists, or None).

    ``low_array`` and ``high_array`` are 0-d when the bounds are uniform (numpy
    compares against a 0-d bound several times faster than a broadcast one).
    """

    dtype: np.dtype
    shape: tuple[int, ...]
    low: list[Any] | None
    high: list[Any] | None
    low_array: np.ndarray | None
    high_array: np.ndarray | None
    uniform: bool = False
    #: uniform integer bounds from 0: the unsigned dtype of the same size, which sees a
    #: negative value as one above every bound (one reduction decides, see leaf_within)
    unsigned: np.dtype | None = None

    @classmethod
    def of(cls, spec: Any) -> "LeafCheck":
        if not isinstance(spec, array_spec.BoundedArraySpec) or spec.dtype.kind not in "biuf":
            return cls(spec.dtype, spec.shape, None, None, None, None)
        low = np.broadcast_to(spec.minimum, spec.shape)
        high = np.broadcast_to(spec.maximum, spec.shape)
        low_list, high_list = low.ravel().tolist(), high.ravel().tolist()
        uniform = len(set(low_list)) <= 1 and len(set(high_list)) <= 1
        if uniform and low_list:
            low, high = low.reshape(-1)[:1].reshape(()), high.reshape(-1)[:1].reshape(())
        unsigned = None
        if uniform and low_list and spec.dtype.kind in "iu" and low_list[0] == 0:
            unsigned = np.dtype(f"u{spec.dtype.itemsize}")
        return cls(spec.dtype, spec.shape, low_list, high_list, low, high, uniform, unsigned)


# Below this many elements, bounds are compared as Python numbers: numpy's comparisons
# and reductions cost about a microsecond each on tiny arrays.
_SMALL = 16


def leaves_within(
    values: list[Any],
    checks: list[LeafCheck],
    outer: tuple[int, ...],
    clipped: list[Any] | None = None,
) -> bool:
    """Whether every value surely has its check's dtype, shape and bounds (False: unsure).

    ``clipped``: per leaf, whether the derivation clipped it to the bounds (not None).
    """
    if len(values) != len(checks):
        return False
    for i, (value, check) in enumerate(zip(values, checks)):  # noqa: B905 (lengths equal)
        if not leaf_within(value, check, outer, None if clipped is None else clipped[i]):
            return False
    return True


def leaf_within(value: Any, check: LeafCheck, outer: tuple[int, ...], clipped: Any = None) -> bool:
    # An unbatched action of a scalar spec comes out of the graph's batch as a numpy
    # scalar (``array[0]``), which has a dtype and shape like a 0-d array.
    # The dtype by identity first; onnxruntime's own outputs (a plain run, large
    # batches) carry int64 as numpy's "longlong" (q), a dtype object equal to but not
    # the same as np.dtype(np.int64) (l) on Linux: without ``==`` every such step took
    # PyPolicy's full check (about half of an LSTM call at batch 256).
    if (
        (type(value) is not _NDARRAY and not isinstance(value, np.generic))
        or (value.dtype is not check.dtype and value.dtype != check.dtype)
        or value.shape != outer + check.shape
    ):
        return False
    low, high = check.low, check.high
    if low is None or high is None or clipped is not None:
        return True
    size = value.size
    if size == 1:  # then the spec has one element too
        return low[0] <= value.item() <= high[0]  # False for NaN: the full check decides
    if size <= _SMALL:
        if check.uniform:  # min() and max() may skip a NaN, never a value out of bounds
            values = value.ravel().tolist()
            return low[0] <= min(values) and max(values) <= high[0]
        n = len(low)
        values = value.ravel().tolist()
        return all(low[i % n] <= v <= high[i % n] for i, v in enumerate(values))
    unsigned = check.unsigned
    if unsigned is not None:
        # Integers within [0, high]: seen as unsigned of the same size (the dtype was
        # checked), a negative value is above the signed maximum, so the maximum decides:
        # one reduction where the extremes take two (an LSTM's int64 action at batch 256).
        return _MAX(value.view(unsigned), None) <= high[0]
    if check.uniform and value.dtype.kind in "iu":
        # Integers (no NaN) against uniform bounds: the extremes, by the ufuncs' reduce
        # directly (``.any()`` goes through a Python wrapper, and the comparisons make two
        # temporaries): an LSTM's int64 action at batch 256, 2.4 -> 1.7 us.
        return low[0] <= _MIN(value, None) and _MAX(value, None) <= high[0]  # axis=None
    return not ((value < check.low_array).any() or (value > check.high_array).any())


def flatten_like(spec: Any, values: Any, what: str) -> list[Any]:
    """``values``' leaves in ``spec``'s order; a StructureError naming where otherwise."""
    try:
        return nest.flatten_up_to(spec, values)
    except (ValueError, TypeError):
        nest.assert_same_structure(values, spec, what)  # raises a StructureError naming where
        raise
