"""Weights are data: convert with probe weights, then map the real values in by identity.

tf2onnx freezes a policy's variables into constants and runs TensorFlow's constant
folding, which drops an ``Add`` of an all-zero bias and merges constants that are
exactly equal. Converting a freshly initialised network therefore gave another graph
(and fingerprint) than converting the same network trained, and a bundle exported
before training refused every later checkpoint.

``convert_with_probes`` converts with *probe* values in every floating variable:
distinct values of magnitude in [0.5, 1) (never 0 or 1, no two alike), so nothing
folds away or merges. Each ONNX initializer is then traced back to the variable it
came from by value (its elements must be exactly one variable's probe values, possibly
transposed or reshaped; anything else is refused), the real values are written in
through that map, and the graph is checked against the TF policy on sampled inputs
(a weight folded into another constant would show there). The manifest records the map
(``onnx.weights``): for each variable its object paths from the policy (how
``tf.train.Checkpoint`` names it, found by writing one) and for each initializer its
variable and transpose, so a reader can take new weights from a TF checkpoint
without TensorFlow (``toolkit.checkpoint_weights``).
"""

from __future__ import annotations

import itertools
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper
import tensorflow as tf

from toolkit import nest, tensor_bundle
from toolkit.checkpoint_weights import WEIGHTS_MAP_VERSION
from toolkit.errors import ExportError
from toolkit.specs import tensor_spec

__all__ = ["convert_with_probes", "probe_values", "probed_variables"]

#: Object paths recorded per variable (a variable can be reachable several ways).
MAX_PATHS = 4
_MAX_PROBES = 1 << 24  # distinct probe bit patterns available
_PARITY_ATOL, _PARITY_RTOL = 1e-4, 1e-3


def probe_values(shapes: list[tuple[int, ...]], seed: int = 0) -> list[np.ndarray]:
    """Distinct float32 values of magnitude in [0.5, 1), one array per shape.

    Raises:
      ExportError: for more than 2**24 weights in all (no distinct probes left).
    """
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    total = sum(sizes)
    if total > _MAX_PROBES:
        raise ExportError(
            f"the policy has {total} weights; probing them needs at most {_MAX_PROBES}"
        )
    rng = np.random.default_rng(seed)
    codes = rng.choice(_MAX_PROBES, size=total, replace=False).astype(np.uint32)
    # Bit 23 picks the sign; the low 23 bits are the mantissa of a value in [0.5, 1).
    bits = 0x3F000000 | (codes & 0x7FFFFF) | ((codes >> 23) << 31)
    values = bits.astype(np.uint32).view(np.float32)
    out, start = [], 0
    for shape, size in zip(shapes, sizes, strict=True):
        out.append(values[start : start + size].reshape(shape))
        start += size
    return out


def probed_variables(policy: Any) -> list[tf.Variable]:
    """The policy's float variables, each once, in ``policy.variables()`` order."""
    seen, variables = set(), []
    for variable in policy.variables():
        if variable.ref() in seen or variable.dtype not in (tf.float32, tf.float64):
            continue
        seen.add(variable.ref())
        variables.append(variable)
    return variables


class _Probes:
    """Probe values assigned to variables, and the reverse lookup value -> (var, index)."""

    def __init__(self, variables: list[tf.Variable]):
        self.variables = variables
        self.values = probe_values([tuple(v.shape.as_list()) for v in variables])
        bits = [v.view(np.uint32).ravel() for v in self.values]
        owner = np.concatenate(
            [np.full(b.size, i, np.int64) for i, b in enumerate(bits)] or [np.zeros(0, np.int64)]
        )
        position = np.concatenate(
            [np.arange(b.size, dtype=np.int64) for b in bits] or [np.zeros(0, np.int64)]
        )
        flat = np.concatenate(bits or [np.zeros(0, np.uint32)])
        order = np.argsort(flat, kind="stable")
        self.sorted_bits = flat[order]
        self.owner = owner[order]
        self.position = position[order]

    def lookup(self, array: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(found, variable, position)`` per element of a float array."""
        values = array.ravel()
        as32 = values.astype(np.float32)
        exact = as32.astype(values.dtype) == values
        bits = as32.view(np.uint32)
        if not self.sorted_bits.size:
            none = np.zeros(values.size, bool)
            return none, np.zeros(values.size, np.int64), np.zeros(values.size, np.int64)
        index = np.clip(np.searchsorted(self.sorted_bits, bits), 0, self.sorted_bits.size - 1)
        found = exact & (self.sorted_bits[index] == bits)
        return found, self.owner[index], self.position[index]


def _initializer_entry(init: onnx.TensorProto, probes: _Probes, what: str) -> dict[str, Any] | None:
    """Which variable an initializer holds (and how it is transposed), or None for a
    constant."""
    array = onnx.numpy_helper.to_array(init)
    if array.dtype not in (np.float32, np.float64) or array.size == 0:
        return None
    found, owner, position = probes.lookup(array)
    if not found.any():
        return None
    if not found.all():
        raise ExportError(
            f"{what}: ONNX constant {init.name} mixes weights with other values "
            f"({int(found.sum())} of {array.size} elements are weights); tf2onnx folded a "
            "weight into a constant, which a checkpoint could not update"
        )
    sources = np.unique(owner)
    if sources.size != 1:
        names = [probes.variables[int(i)].name for i in sources]
        raise ExportError(
            f"{what}: ONNX constant {init.name} combines the variables {names}; expected "
            "each constant to hold one variable"
        )
    index = int(sources[0])
    variable = probes.variables[index]
    shape = tuple(variable.shape.as_list())
    if array.size != int(np.prod(shape, dtype=np.int64)):
        raise ExportError(
            f"{what}: ONNX constant {init.name} holds {array.size} of the "
            f"{int(np.prod(shape))} values of variable {variable.name}; expected all of them"
        )
    grid = np.arange(array.size, dtype=np.int64).reshape(shape)
    for perm in itertools.permutations(range(len(shape))):
        if np.array_equal(grid.transpose(perm).ravel(), position):
            entry: dict[str, Any] = {
                "variable": index,
                "shape": list(array.shape),
                "dtype": array.dtype.name,
            }
            if list(perm) != sorted(perm):
                entry["transpose"] = list(perm)
            return entry
    raise ExportError(
        f"{what}: ONNX constant {init.name} holds variable {variable.name} rearranged in a "
        "way other than a transpose; expected a transpose or reshape"
    )


def _object_paths(policy: Any, probes: _Probes) -> list[list[list[str]]]:
    """For each probed variable, its object paths from the policy (up to MAX_PATHS)."""
    by_bytes = {value.tobytes(): i for i, value in enumerate(probes.values)}
    paths: list[list[list[str]]] = [[] for _ in probes.variables]
    with tempfile.TemporaryDirectory(prefix="policy-probe-") as tmp:
        prefix = tf.train.Checkpoint(policy=policy).write(str(Path(tmp) / "probe"))
        reader = tensor_bundle.TensorBundle(prefix)
        nodes = reader.object_graph()
        start = nodes[0].children.get("policy")
        if start is None:
            return paths
        node_of: dict[int, int] = {}
        for node_id, node in enumerate(nodes):
            key = node.attributes.get(tensor_bundle.VARIABLE_VALUE)
            if key is None or key not in reader:
                continue
            entry = reader.entry(key)
            if entry.dtype_name not in ("float32", "float64"):
                continue
            value = reader.get(key).astype(np.float32)
            index = by_bytes.get(value.tobytes())
            if index is not None and value.shape == probes.values[index].shape:
                node_of[node_id] = index
        expanded: dict[int, int] = {}
        queue = deque([(start, ())])
        while queue:
            node_id, path = queue.popleft()
            if node_id in node_of and len(paths[node_of[node_id]]) < MAX_PATHS:
                paths[node_of[node_id]].append(list(path))
            if expanded.get(node_id, 0) >= MAX_PATHS or len(path) > 32:
                continue
            expanded[node_id] = expanded.get(node_id, 0) + 1
            for name, child in nodes[node_id].children.items():
                queue.append((child, (*path, name)))
    return paths


def _sample_inputs(module: Any, rng: np.random.Generator, batch: int = 5) -> dict[str, Any]:
    policy = module.policy
    fixed = getattr(policy, "batch_size", None)  # a TF-Agents policy saved for one batch size
    if isinstance(fixed, int) and fixed > 0:
        batch = fixed
    inputs: dict[str, np.ndarray] = {}
    time_step = tensor_spec.to_array_spec(policy.time_step_spec)
    for path, spec in nest.flatten_with_paths(time_step):
        inputs[path] = spec.sample(rng, outer_dims=(batch,))
    inputs["step_type"] = rng.integers(0, 3, size=batch).astype(np.int32)
    state = tensor_spec.to_array_spec(policy.policy_state_spec)
    for path, spec in nest.flatten_with_paths(state, "policy_state"):
        inputs[path] = spec.sample(rng, outer_dims=(batch,))
    return {name: inputs[name] for name in module.info.inputs}


def _check_parity(module: Any, model: onnx.ModelProto, what: str) -> None:
    """The converted graph, real weights written in, against the TF policy."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    extra = sorted({i.name for i in session.get_inputs()} - set(module.info.inputs))
    if extra:
        raise ExportError(
            f"{what}: the ONNX graph takes inputs {extra} besides the policy's "
            f"{sorted(module.info.inputs)} (a tensor tf2onnx could not freeze)"
        )
    function = module.info.functions["distribution"]
    rng = np.random.default_rng(1)
    for _ in range(3):
        inputs = _sample_inputs(module, rng)
        got = dict(zip(names, session.run(names, inputs), strict=True))
        expected = {k: v.numpy() for k, v in function(dict(inputs)).items()}
        for name in names:
            ref, out = np.asarray(expected[name]), np.asarray(got[name])
            if ref.shape != out.shape:
                raise ExportError(
                    f"{what}: {name}: the ONNX graph gives shape {out.shape}, TF {ref.shape}"
                )
            if ref.dtype.kind in "fc":
                ok = np.allclose(out, ref, atol=_PARITY_ATOL, rtol=_PARITY_RTOL, equal_nan=True)
            else:
                ok = np.array_equal(out, ref)
            if not ok:
                raise ExportError(
                    f"{what}: {name}: with the real weights written into the graph converted "
                    "with probe weights, ONNX and TF disagree (a weight was folded into a "
                    "constant tf2onnx computed); report this policy"
                )


def convert_with_probes(
    module: Any, convert: Any, what: str
) -> tuple[onnx.ModelProto, dict[str, Any] | None]:
    """Converts a module's ``distribution`` with probe weights, then writes the real ones in.

    Args:
      module: an ``exporters.signatures.ExportModule`` (functions built).
      convert: ``module -> onnx.ModelProto`` (the plain conversion).
      what: names the policy in errors.

    Returns:
      ``(model, weights)``: the model holding the real weights, and the manifest's
      ``onnx.weights`` map without ``initializers`` order (``weights["by_name"]`` maps
      initializer names to entries; the caller orders them canonically).

    Raises:
      ExportError: a constant that holds part of a weight or several, or a graph that
        disagrees with the TF policy once the real weights are in.
    """
    policy = module.policy
    variables = probed_variables(policy)
    real = [v.numpy() for v in variables]
    probes = _Probes(variables)
    try:
        for variable, value in zip(variables, probes.values, strict=True):
            variable.assign(value.astype(variable.dtype.as_numpy_dtype))
        model = convert(module)
        paths = _object_paths(policy, probes)
    finally:
        for variable, value in zip(variables, real, strict=True):
            variable.assign(value)
    by_name = {}
    for init in model.graph.initializer:
        entry = _initializer_entry(init, probes, what)
        if entry is None:
            continue
        by_name[init.name] = entry
        value = real[entry["variable"]]
        if "transpose" in entry:
            value = value.transpose(entry["transpose"])
        dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
        value = np.ascontiguousarray(value.reshape(tuple(init.dims)).astype(dtype))
        init.CopyFrom(onnx.numpy_helper.from_array(value, init.name))
    _check_parity(module, model, what)
    used = sorted({e["variable"] for e in by_name.values()})
    renumber = {old: new for new, old in enumerate(used)}
    weights = {
        "version": WEIGHTS_MAP_VERSION,
        "variables": [
            {
                "name": variables[i].name,
                "dtype": variables[i].dtype.name,
                "shape": variables[i].shape.as_list(),
                "paths": paths[i],
            }
            for i in used
        ],
        "by_name": {
            name: {**entry, "variable": renumber[entry["variable"]]}
            for name, entry in by_name.items()
        },
    }
    return model, weights
