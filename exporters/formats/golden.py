"""Golden vectors: ``golden.bin``, recorded calls of the ``distribution`` function.

Written with every export (``Format.always``): a fixed set of moderate sampled time steps
(seeded; for stateful policies a sequence of steps with the states the policy carried
between them) and what the TF policy's ``distribution`` function gave for them. It is no
form of the policy (``Format.records``): ``verify`` runs every installed form on the
recorded inputs and compares the outputs, so a device without TensorFlow checks its
runtime against the TF policy as it was exported (docs/bundle-format.md, "Golden
vectors"). ``update`` records the new weights' outputs on the same inputs; ``quantize``
writes bundles without it (a quantized policy is not meant to match the float outputs).

The file is the arrays of ``arrays`` in order, each C-ordered and little-endian, with
nothing between them; the manifest declares every name, dtype and shape, so a reader
checks the file's size before it reads an array (no pickle, no numpy container).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from exporters.formats.base import Format, NewWeights, Recording
from toolkit import nest
from toolkit.bundle import files as bundle_files
from toolkit.bundle.layout import FormatEntry, Layout, thaw
from toolkit.errors import BundleError, UnsupportedError

__all__ = ["FILE", "FORMAT", "GoldenFormat", "read_recording"]

FILE = "golden.bin"
#: The inputs' seed: every export records the same draws for the same specs.
SEED = 20240501
#: Time steps per call (fewer when a step is large: ``_batch``).
BATCH = 16
#: Calls recorded for stateful policies (the state carried through them); stateless: 1.
STATEFUL_STEPS = 4
#: Bytes the recording aims to stay under (large observations get smaller batches).
BUDGET_BYTES = 1 << 20
#: The most a reader reads (the manifest declares the size; this bounds a hostile one).
MAX_BYTES = 64 << 20
_DTYPES = [
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
]
_SOURCES = ["tf_policy", "saved_model", "onnx"]


@dataclasses.dataclass
class _Content:
    """A recording to write: its section (without ``file``) and its arrays in file order."""

    section: dict[str, Any]
    arrays: list[np.ndarray]


def _entry(step: int, role: str, name: str, value: np.ndarray) -> dict[str, Any]:
    return {
        "step": step,
        "role": role,
        "name": name,
        "dtype": value.dtype.name,
        "shape": list(value.shape),
    }


def _content(recording: Recording, seed: int) -> _Content:
    entries: list[dict[str, Any]] = []
    arrays: list[np.ndarray] = []
    for step, (inputs, outputs) in enumerate(recording.steps):
        for role, values in (("input", inputs), ("output", outputs)):
            for name, value in values.items():
                value = np.asarray(value)
                entries.append(_entry(step, role, name, value))
                arrays.append(value)
    batch = len(next(iter(recording.steps[0][0].values())))
    section = {
        "function": "distribution",
        "byte_order": "little",
        "source": recording.source,
        "seed": seed,
        "batch": batch,
        "steps": len(recording.steps),
        "arrays": entries,
    }
    return _Content(section, arrays)


def _row_bytes(specs: dict[str, Any]) -> int:
    """Bytes of one batch entry of TensorSpecs shaped ``[None, *shape]``."""
    total = 0
    for spec in specs.values():
        dims = [d if d is not None else 1 for d in spec.shape.as_list()[1:]]
        total += math.prod(dims) * spec.dtype.size
    return total


def _batch(module: Any, steps: int) -> int:
    fixed = getattr(module.policy, "batch_size", None)  # a TF-Agents policy saved for one
    if isinstance(fixed, int) and not isinstance(fixed, bool) and fixed > 0:
        return fixed
    signature = module.signature_io("distribution")
    row = _row_bytes(signature.inputs) + _row_bytes(signature.outputs)
    return max(1, min(BATCH, BUDGET_BYTES // max(1, row * steps)))


def record(module: Any) -> Recording:
    """Calls a traced policy's ``distribution`` function on the golden inputs.

    ``module`` is an ``exporters.signatures.ExportModule`` with its functions built.
    """
    import tensorflow as tf

    from exporters import graph_io
    from toolkit.specs import tensor_spec

    policy = module.policy
    time_step_spec = tensor_spec.to_array_spec(policy.time_step_spec)
    state_spec = tensor_spec.to_array_spec(policy.policy_state_spec)
    state_leaves = nest.flatten_with_paths(state_spec, "policy_state")
    stateful = bool(state_leaves)
    steps = STATEFUL_STEPS if stateful else 1
    batch = _batch(module, steps)
    function = module.info.functions["distribution"]
    names = list(module.info.inputs)
    output_names = list(module.signature_io("distribution").outputs)
    rng = np.random.default_rng(SEED)
    state = {path: spec.zeros((batch,)) for path, spec in state_leaves}
    recorded = []
    for step in range(steps):
        drawn = graph_io.sample_inputs(
            time_step_spec, batch, rng, first=step == 0, stateful=stateful, moderate=True
        )
        inputs = {name: np.asarray({**drawn, **state}[name]) for name in names}
        result = function({k: tf.constant(v) for k, v in inputs.items()})
        outputs = {name: result[name].numpy() for name in output_names}
        recorded.append((inputs, outputs))
        state = graph_io.next_state(outputs)
    return Recording("tf_policy", recorded)


def read_recording(root: str | Path, layout: Layout) -> Recording:
    """The bundle's golden vectors, read bounded and checked against the manifest.

    Raises:
      BundleError: a file that is not listed, changed, or of another size than its
        arrays, or arrays that are not the ``distribution`` signature's inputs and
        outputs at every step (names, dtypes, the recorded batch).
    """
    entry = layout.format(GoldenFormat.name)
    section = entry.section
    where = f"{GoldenFormat.name}.arrays"
    declared = 0
    for i, array in enumerate(section["arrays"]):
        count = math.prod(array["shape"])
        declared += count * np.dtype(array["dtype"]).itemsize
        if declared > MAX_BYTES:
            raise BundleError(
                f"{where}[{i}]: expected at most {MAX_BYTES} bytes of golden vectors, "
                f"got {declared} or more"
            )
    data = bundle_files.read_member(
        root, entry.path, key=f"{GoldenFormat.name}.file", files=layout.files_json, cap=MAX_BYTES
    )
    if len(data) != declared:
        raise BundleError(
            f"{entry.path}: expected {declared} bytes (the arrays {where} declares), "
            f"got {len(data)}"
        )
    steps: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = [
        ({}, {}) for _ in range(section["steps"])
    ]
    batch = section["batch"]
    offset = 0
    for i, array in enumerate(section["arrays"]):
        dtype = np.dtype(array["dtype"]).newbyteorder("<")
        shape = tuple(array["shape"])
        count = math.prod(shape)
        value = np.frombuffer(data, dtype, count, offset).reshape(shape)
        offset += count * dtype.itemsize
        if array["step"] >= len(steps):
            raise BundleError(
                f"{where}[{i}].step: expected a step below {len(steps)}, got {array['step']}"
            )
        if not shape or shape[0] != batch:
            raise BundleError(
                f"{where}[{i}].shape: expected a first dim of {batch} (the batch), got "
                f"{list(shape)}"
            )
        # Native byte order, and a copy the caller owns (frombuffer's is read-only).
        steps[array["step"]][array["role"] == "output"][array["name"]] = value.astype(
            dtype.newbyteorder("=")
        )
    signature = layout.signatures["distribution"]
    for step, (inputs, outputs) in enumerate(steps):
        for role, values, expected in (
            ("inputs", inputs, signature.inputs),
            ("outputs", outputs, signature.outputs),
        ):
            want = {info.name: info.dtype for info in expected}
            got = {name: value.dtype.name for name, value in values.items()}
            if got != want:
                raise BundleError(
                    f"{where}: step {step}: expected the distribution signature's {role} "
                    f"{sorted(want.items())}, got {sorted(got.items())}"
                )
    return Recording(str(section["source"]), steps)


class GoldenFormat(Format):
    name = "golden"
    label = "golden vectors"
    default = True
    always = True
    records = True
    export_needs = ("tensorflow",)
    # The outputs are recomputed from the updated SavedModel, else the ONNX graph.
    update_after = ("saved_model", "onnx")
    schema = {
        "description": (
            "Golden vectors: recorded inputs and outputs of the distribution function "
            "(docs/bundle-format.md, Golden vectors)."
        ),
        "type": "object",
        "required": [
            "file",
            "function",
            "byte_order",
            "source",
            "seed",
            "batch",
            "steps",
            "arrays",
        ],
        "additionalProperties": False,
        "properties": {
            "file": {"$ref": "#/$defs/relativePath"},
            "function": {"const": "distribution"},
            "byte_order": {"const": "little"},
            "source": {"enum": _SOURCES},
            "seed": {"type": "integer", "minimum": 0, "maximum": (1 << 63) - 1},
            "batch": {"type": "integer", "minimum": 1, "maximum": 1 << 20},
            "steps": {"type": "integer", "minimum": 1, "maximum": 64},
            "arrays": {
                "type": "array",
                "maxItems": 100000,
                "items": {
                    "type": "object",
                    "required": ["step", "role", "name", "dtype", "shape"],
                    "additionalProperties": False,
                    "properties": {
                        "step": {"type": "integer", "minimum": 0, "maximum": 63},
                        "role": {"enum": ["input", "output"]},
                        "name": {"type": "string", "maxLength": 1000},
                        "dtype": {"enum": _DTYPES},
                        "shape": {
                            "type": "array",
                            "maxItems": 64,
                            "items": {"type": "integer", "minimum": 0, "maximum": 1 << 40},
                        },
                    },
                },
            },
        },
    }

    # --- export ----------------------------------------------------------------------

    def convert(self, module: Any, options: dict[str, Any]) -> _Content:
        return _content(record(module), SEED)

    def write(self, content: _Content, folder: Path) -> dict[str, Any]:
        with open(folder / FILE, "wb") as f:
            for array in content.arrays:
                f.write(np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes())
        return {"file": FILE, **content.section}

    # --- update ----------------------------------------------------------------------

    def check_update(self, root: Path, layout: Layout, weights_map: bool) -> None:
        if layout.has("saved_model"):
            return  # the SavedModel's own check asks for TensorFlow
        if layout.has("onnx"):
            from runtimes import backends

            reason = backends.not_installed("onnxruntime")
            if reason is not None:
                raise UnsupportedError(
                    f"{root}: updating {layout.format(self.name).path} runs the updated ONNX "
                    f"graph on its recorded inputs, and {reason}"
                )
            return
        raise UnsupportedError(
            f"{root}: updating {layout.format(self.name).path} runs the updated policy on its "
            "recorded inputs, which needs its SavedModel or ONNX graph; the bundle has "
            f"{[n for n in layout.formats if n != self.name]}"
        )

    def updated(self, root: Path, layout: Layout, weights: NewWeights, folder: Path) -> Any:
        from exporters import graph_io

        old = read_recording(root, layout)
        if layout.has("saved_model"):
            import tensorflow as tf

            from exporters.formats.saved_model import distribution_runner

            # The SavedModel this update just wrote (saved_model comes first).
            path = folder / layout.format("saved_model").path
            run = distribution_runner(tf.saved_model.load(str(path)), str(path))
            source = "saved_model"
        else:
            from toolkit.bundle import readers

            model = readers.read_onnx(root, layout)
            run = graph_io.onnx_runner(model, initializers=weights.initializers)
            source = "onnx"
        # Every step's inputs hold the state carried into it: each step is recomputed on
        # its own, with the new weights.
        steps = []
        for inputs, outputs in old.steps:
            new = run(inputs)
            steps.append((inputs, {name: np.asarray(new[name]) for name in outputs}))
        section = thaw(layout.format(self.name).section)
        return _content(Recording(source, steps), section["seed"])

    # --- verify and inspect ------------------------------------------------------------

    def recording(self, root: Path, layout: Layout) -> Recording:
        return read_recording(root, layout)

    def describe(self, entry: FormatEntry) -> str:
        s = entry.section
        return (
            f"{entry.path}: {s.get('batch')} time steps x {s.get('steps')} "
            f"step{'s' if s.get('steps') != 1 else ''} of {s.get('function')}, outputs of "
            f"{s.get('source')} (verify's reference)"
        )


FORMAT = GoldenFormat()
