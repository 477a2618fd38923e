"""The learner's side of weight broadcasts: TF variables -> ONNX initializers (TensorFlow).

``export_for_actors`` exports the collect policy once (ONNX only) with *probe* values in
its variables: distinct floats of magnitude in [0.5, 1), so tf2onnx can neither fold a
weight away (an all-zero bias drops out of a graph converted from fresh weights) nor
merge two alike. Every initializer of the graph is then traced to the variable it came
from by value, possibly transposed or reshaped; ``WeightsMap.initializers()`` turns the
current variables into the ``{initializer name: array}`` that actors swap in
(``toolkit.distributed.actors.set_weights``) without TensorFlow and without a new
export. The real values are restored right after the probe export.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import tensorflow as tf

from toolkit.errors import ExportError

__all__ = ["WeightsMap", "export_for_actors"]


@dataclasses.dataclass(frozen=True)
class _Entry:
    name: str
    variable: int
    transpose: tuple[int, ...] | None
    shape: tuple[int, ...]


class WeightsMap:
    """Which variable (and transpose) each ONNX initializer holds."""

    def __init__(self, variables: list[tf.Variable], entries: list[_Entry]):
        self._variables = variables
        self._entries = entries

    def initializers(self) -> dict[str, np.ndarray]:
        """The variables' current values, as the graph's initializers."""
        values = [v.numpy() for v in self._variables]
        out = {}
        for entry in self._entries:
            value = values[entry.variable]
            if entry.transpose is not None:
                value = np.transpose(value, entry.transpose)
            out[entry.name] = np.ascontiguousarray(value.reshape(entry.shape))
        return out


def export_for_actors(policy: Any, path: str | os.PathLike) -> WeightsMap:
    """Exports ``policy`` (ONNX only, probe weights) to ``path``; returns its weights map.

    Raises:
      ExportError: when an initializer is neither a constant nor one variable's values
        (transposed or reshaped), e.g. tf2onnx folded two weights into one.
    """
    import onnx
    import onnx.numpy_helper

    from exporters.export import export_policy
    from exporters.probe import probe_values, probed_variables
    from toolkit import bundle

    variables = probed_variables(policy)
    saved = [v.numpy() for v in variables]
    probes = probe_values([tuple(v.shape) for v in variables])
    try:
        for variable, probe in zip(variables, probes, strict=True):
            variable.assign(probe.astype(variable.dtype.as_numpy_dtype))
        root = export_policy(policy, path, formats=("onnx",), overwrite=True)
    finally:
        for variable, value in zip(variables, saved, strict=True):
            variable.assign(value)
    layout = bundle.read_layout(root, check_files=False)
    model = onnx.load_model_from_string(bundle.read_onnx(root, layout))
    owner = {}
    for index, probe in enumerate(probes):
        for position, value in enumerate(probe.reshape(-1)):
            owner[float(value)] = (index, position)
    entries = []
    for init in model.graph.initializer:
        array = onnx.numpy_helper.to_array(init)
        if array.dtype not in (np.float32, np.float64) or array.size == 0:
            continue
        first = owner.get(float(array.reshape(-1)[0]))
        if first is None:
            continue  # a constant of the graph, not a weight
        index = first[0]
        probe = probes[index]
        transpose = _match(probe, array)
        if transpose is False:
            raise ExportError(
                f"ONNX initializer {init.name}: expected the values of variable "
                f"{variables[index].name} {tuple(probe.shape)}, got another arrangement "
                f"{tuple(array.shape)}"
            )
        entries.append(_Entry(init.name, index, transpose, tuple(array.shape)))
    return WeightsMap(variables, entries)


def _match(probe: np.ndarray, array: np.ndarray) -> tuple[int, ...] | bool | None:
    """None when ``array`` is ``probe`` reshaped, the axes when transposed, else False."""
    if probe.size != array.size:
        return False
    if np.array_equal(probe.reshape(-1), array.reshape(-1).astype(probe.dtype)):
        return None
    if probe.ndim == 2:
        axes = (1, 0)
        if np.array_equal(np.transpose(probe, axes).reshape(-1), array.reshape(-1)):
            return axes
    return False
