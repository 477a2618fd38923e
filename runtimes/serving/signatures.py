"""What a served policy answers, and TF Serving's JSON encoding of tensors (TF-free).

Every loaded version offers the signatures of the bundle's SavedModel, run by the
runtime (docs/serving.md):

* ``serving_default``: observation in (plus ``step_type`` and ``policy_state/...``
  for recurrent policies), ``action`` out (plus ``next_state/...``);
* ``action``: the whole time step and state in; ``action/...``, ``next_state/...``,
  ``info/...`` out;
* ``distribution``: the same inputs; the distribution parameters
  (``distribution/<path>/<param>``), ``next_state/...`` and the graph's ``info/...``;
* ``get_initial_state`` (``batch_size``), ``get_train_step``, ``get_metadata``.

Inputs other than the observation may be left out: ``step_type`` is MID, ``reward``
0, ``discount`` 1 and the state the initial one. Requests come in TF Serving's row
(``instances``) or columnar (``inputs``) format and are answered in the same one
(``predictions`` / ``outputs``); numbers are checked against the input's dtype and
shape, and errors name the input, what was expected and what came.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Callable
from typing import Any

import numpy as np

from toolkit import distribution_families as families
from toolkit import nest
from toolkit.errors import ServingError
from toolkit.trajectories.time_step import StepType, TimeStep

__all__ = [
    "DEFAULT_SIGNATURE",
    "Decoded",
    "Signature",
    "Tensor",
    "encode",
    "signatures_for",
]

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"

_DT = {
    "bool": "DT_BOOL",
    "int8": "DT_INT8",
    "int16": "DT_INT16",
    "int32": "DT_INT32",
    "int64": "DT_INT64",
    "uint8": "DT_UINT8",
    "uint16": "DT_UINT16",
    "uint32": "DT_UINT32",
    "uint64": "DT_UINT64",
    "float16": "DT_HALF",
    "float32": "DT_FLOAT",
    "float64": "DT_DOUBLE",
    "object": "DT_STRING",
}
# Which JSON-derived array kinds an input of each kind takes: numbers for floats,
# whole numbers for integers (as TF Serving: 1.5 is no int32), true/false for bools.
_ACCEPTS = {"f": "fiu", "i": "iu", "u": "iu", "b": "b"}


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One named input or output: dtype and full shape (None = the batch dim)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]
    required: bool = True

    def to_json(self) -> dict[str, Any]:
        """TF Serving's TensorInfo in JSON (as in GetModelMetadataResponse)."""
        return {
            "dtype": _DT.get(np.dtype(self.dtype).name, "DT_INVALID"),
            "tensor_shape": {
                "dim": [{"size": str(-1 if d is None else d), "name": ""} for d in self.shape],
                "unknown_rank": False,
            },
            "name": f"{self.name}:0",
        }

    def describe_shape(self) -> str:
        return "[" + ", ".join("B" if d is None else str(d) for d in self.shape) + "]"


@dataclasses.dataclass
class Decoded:
    """A request's inputs as arrays, its batch size, and whether it came as rows."""

    arrays: dict[str, np.ndarray]
    batch: int
    rows: bool


class Signature:
    """One function a served version answers: its inputs, outputs and how to run it.

    Args:
      name: the signature name.
      inputs: the inputs by name; ``required=False`` ones may be left out.
      outputs: the outputs by name.
      batched: whether inputs and outputs carry a leading batch dim (one row per
        instance); get_initial_state, get_train_step and get_metadata do not.
      run: ``(arrays, batch) -> {output name: array}``.
    """

    def __init__(
        self,
        name: str,
        inputs: list[Tensor],
        outputs: list[Tensor],
        batched: bool,
        run: Callable[[dict[str, np.ndarray], int], dict[str, Any]],
    ):
        self.name = name
        self.inputs = {t.name: t for t in inputs}
        self.outputs = {t.name: t for t in outputs}
        self.batched = batched
        self.run = run
        self.required = [t.name for t in inputs if t.required]

    def to_json(self) -> dict[str, Any]:
        """TF Serving's SignatureDef in JSON."""
        return {
            "inputs": {n: t.to_json() for n, t in self.inputs.items()},
            "outputs": {n: t.to_json() for n, t in self.outputs.items()},
            "method_name": PREDICT_METHOD,
            "defaults": {},
        }

    # --- decoding -------------------------------------------------------------------

    def decode(self, body: Any, max_batch: int) -> Decoded:
        """A predict request's body (parsed JSON) -> input arrays.

        Raises:
          ServingError: (400) naming what is wrong, as TF Serving words it where it can.
        """
        if not isinstance(body, dict):
            raise ServingError(f"JSON Value: {_short(body)} Is not object")
        has_rows, has_columns = "instances" in body, "inputs" in body
        if has_rows and has_columns:
            raise ServingError(
                "Not formatted correctly expecting only one of 'inputs' or 'instances' "
                "keys to exist"
            )
        if not self.batched:
            return self._decode_unbatched(body, has_rows, max_batch)
        if has_rows:
            columns, batch = self._columns_from_rows(body["instances"], max_batch)
        elif has_columns:
            columns, batch = self._single_or_map(body["inputs"], "'inputs'"), None
        else:
            raise ServingError("Missing 'inputs' or 'instances' key")
        arrays = self._arrays(columns)
        if batch is None:
            batch = self._common_batch(arrays, max_batch)
        return Decoded(arrays, batch, has_rows)

    def _columns_from_rows(self, instances: Any, max_batch: int) -> tuple[dict[str, Any], int]:
        if not isinstance(instances, list):
            raise ServingError("Expecting 'instances' to be an list/array")
        if not instances:
            raise ServingError("No values in 'instances' array")
        if len(instances) > max_batch:
            raise ServingError(
                f"instances: expected at most {max_batch} (the server's --max-batch), "
                f"got {len(instances)}"
            )
        if not isinstance(instances[0], dict):
            name = self._single_input("instances is a plain list")
            for i, item in enumerate(instances):
                if isinstance(item, dict):
                    raise ServingError(
                        f"Expecting value/list but got object at item {i} of input list"
                    )
            return {name: instances}, len(instances)
        keys = set(instances[0])
        for i, item in enumerate(instances):
            if not isinstance(item, dict):
                raise ServingError(f"Expecting object but got list at item {i} of input list")
            if set(item) != keys:
                raise ServingError(
                    f"Failed to process element: {i} of 'instances' list. JSON object: keys "
                    f"must be equal to: {','.join(sorted(keys))} (as in element 0), got "
                    f"{','.join(sorted(item))}"
                )
        return {k: [item[k] for item in instances] for k in keys}, len(instances)

    def _single_or_map(self, value: Any, where: str) -> dict[str, Any]:
        if isinstance(value, dict):
            return value
        return {self._single_input(f"{where} is a plain value/list"): value}

    def _single_input(self, what: str) -> str:
        if len(self.required) != 1:
            raise ServingError(
                f"{what}, but expecting named inputs (an object) as signature "
                f"'{self.name}' takes {sorted(self.inputs)}"
            )
        return self.required[0]

    def _arrays(self, columns: dict[str, Any]) -> dict[str, np.ndarray]:
        unknown = sorted(set(columns) - set(self.inputs))
        if unknown:
            raise ServingError(
                f"{unknown[0]}: not an input of signature '{self.name}' "
                f"(expected some of {sorted(self.inputs)})"
            )
        missing = [n for n in self.required if n not in columns]
        if missing:
            raise ServingError(
                f"Missing named input: {missing[0]} (signature '{self.name}' needs {self.required})"
            )
        return {n: to_array(v, self.inputs[n]) for n, v in columns.items()}

    def _common_batch(self, arrays: dict[str, np.ndarray], max_batch: int) -> int:
        batch, first = None, None
        for name, array in arrays.items():
            if batch is None:
                batch, first = array.shape[0], name
            elif array.shape[0] != batch:
                raise ServingError(
                    f"{name}: expected a batch of {batch} (as {first}), got {array.shape[0]}"
                )
        if batch is None:
            raise ServingError(f"signature '{self.name}': expected inputs, got none")
        if batch > max_batch:
            raise ServingError(
                f"inputs: expected a batch of at most {max_batch} (the server's --max-batch), "
                f"got {batch}"
            )
        return batch

    def _decode_unbatched(self, body: dict[str, Any], rows: bool, max_batch: int) -> Decoded:
        if rows:
            instances = body["instances"]
            if not isinstance(instances, list) or len(instances) > 1:
                raise ServingError(
                    f"instances: signature '{self.name}' takes one instance, got "
                    f"{_short(instances)}"
                )
            value = instances[0] if instances else {}
        else:
            value = body.get("inputs", {})
        if not self.inputs:
            if value not in ({}, [], None):
                raise ServingError(f"signature '{self.name}' takes no inputs, got {_short(value)}")
            return Decoded({}, 1, rows)
        arrays = self._arrays(self._single_or_map(value, "'inputs'"))
        size = arrays.get("batch_size")
        if size is not None and not 0 <= int(size) <= max_batch:
            raise ServingError(
                f"batch_size: expected 0 to {max_batch} (the server's --max-batch), got {int(size)}"
            )
        return Decoded(arrays, int(size) if size is not None else 1, rows)


def to_array(value: Any, tensor: Tensor) -> np.ndarray:
    """A JSON value -> an array of the tensor's dtype and shape, or a ServingError."""
    try:
        array = np.asarray(value)
    except ValueError:
        array = None
    if array is None or array.dtype.kind == "O":
        raise ServingError(
            f"{tensor.name}: expected a nested list of numbers of shape "
            f"{tensor.describe_shape()}, got a ragged or mixed one: {_short(value)}"
        )
    target = np.dtype(tensor.dtype)
    if array.dtype.kind not in _ACCEPTS.get(target.kind, "") and array.size:
        raise ServingError(
            f"{tensor.name}: expected {target.name} values, got {_kind_name(array)}: "
            f"{_short(value)}"
        )
    if len(array.shape) != len(tensor.shape) or any(
        d is not None and d != n for d, n in zip(tensor.shape, array.shape, strict=False)
    ):
        raise ServingError(
            f"{tensor.name}: expected shape {tensor.describe_shape()}, "
            f"got [{', '.join(map(str, array.shape))}]"
        )
    if target.kind in "iu" and array.size:
        info = np.iinfo(target)
        if array.min() < info.min or array.max() > info.max:
            raise ServingError(
                f"{tensor.name}: expected {target.name} values in [{info.min}, {info.max}], "
                f"got {array.min()} .. {array.max()}"
            )
    return array.astype(target, copy=False)


def _kind_name(array: np.ndarray) -> str:
    return {"b": "booleans", "U": "strings", "S": "strings", "f": "decimals"}.get(
        array.dtype.kind, "integers" if array.dtype.kind in "iu" else array.dtype.name
    )


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- encoding ---------------------------------------------------------------------------


def _plain(value: Any) -> Any:
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


def encode(outputs: dict[str, Any], rows: bool) -> bytes:
    """Outputs -> TF Serving's predict response: ``predictions`` (rows) or ``outputs``.

    One output is given without its name; several as objects keyed by name. In rows,
    an output without a batch dim (a scalar) counts as one row.
    """
    names = list(outputs)
    plain = {n: _plain(outputs[n]) for n in names}
    if not rows:
        body: Any = plain[names[0]] if len(names) == 1 else plain
        return _dumps({"outputs": body})
    columns = {n: (v if np.ndim(outputs[n]) else [v]) for n, v in plain.items()}
    if len(names) == 1:
        return _dumps({"predictions": columns[names[0]]})
    count = len(next(iter(columns.values()))) if columns else 0
    return _dumps({"predictions": [{n: columns[n][i] for n in names} for i in range(count)]})


def _dumps(data: Any) -> bytes:
    # NaN and Infinity are written as tokens, as TF Serving does (its API allows them).
    return json.dumps(data, separators=(",", ":"), allow_nan=True).encode()


# --- the signatures of a runtime policy ---------------------------------------------------

_FAMILY_OF = {name.capitalize(): name for name in families.FAMILIES}


def _tensors(spec: Any, prefix: str, required: bool = True, batch: bool = True) -> list[Tensor]:
    return [
        Tensor(path, np.dtype(s.dtype), ((None,) if batch else ()) + tuple(s.shape), required)
        for path, s in nest.flatten_with_paths(spec, prefix)
    ]


def _flat(tree: Any, prefix: str) -> dict[str, Any]:
    return dict(nest.flatten_with_paths(tree, prefix))


class _Inputs:
    """Time step and state of a policy from flat request arrays, with the defaults."""

    def __init__(self, policy: Any):
        self.policy = policy
        spec = policy.time_step_spec
        self.time_step = _tensors(spec, "")
        self.time_step = [
            dataclasses.replace(t, required=t.name.split("/")[0] == "observation")
            for t in self.time_step
        ]
        self.state = _tensors(policy.policy_state_spec, "policy_state", required=False)
        self.state_names = [t.name for t in self.state]
        # A time step of single arrays (the usual case) is built without optree.
        self._flat_time_step = not any(nest.is_nested(field) for field in spec)
        self._defaults: dict[tuple[str, int], np.ndarray] = {}

    def full(self, arrays: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
        """Every time step and state input, defaults filled in."""
        out = {}
        for tensor in self.time_step:
            value = arrays.get(tensor.name)
            if value is None:
                value = self._default(tensor, batch)
            out[tensor.name] = value
        if self.state:
            given = [n for n in self.state_names if n in arrays]
            if given and len(given) != len(self.state_names):
                missing = sorted(set(self.state_names) - set(given))
                raise ServingError(
                    f"policy_state: expected all of {self.state_names} or none (for the "
                    f"initial state), missing {missing}"
                )
            if given:
                out.update((n, arrays[n]) for n in self.state_names)
            else:
                initial = self.policy.get_initial_state(batch)
                out.update(_flat(initial, "policy_state"))
        return out

    def _default(self, tensor: Tensor, batch: int) -> np.ndarray:
        key = (tensor.name, batch)
        value = self._defaults.get(key)
        if value is None:
            value = _default(tensor, batch)
            value.setflags(write=False)  # shared by requests of this batch size
            if len(self._defaults) < 256:
                self._defaults[key] = value
        return value

    def nests(self, full: dict[str, np.ndarray]) -> tuple[Any, Any]:
        leaves = [full[t.name] for t in self.time_step]
        if self._flat_time_step:
            time_step = TimeStep(*leaves)
        else:
            time_step = nest.pack_sequence_as(self.policy.time_step_spec, leaves)
        state = ()
        if self.state:
            state = nest.pack_sequence_as(
                self.policy.policy_state_spec, [full[n] for n in self.state_names]
            )
        return time_step, state


def _default(tensor: Tensor, batch: int) -> np.ndarray:
    shape = (batch,) + tuple(tensor.shape[1:])
    if tensor.name == "step_type":
        return np.full(shape, int(StepType.MID), tensor.dtype)
    if tensor.name == "discount":
        return np.ones(shape, tensor.dtype)
    return np.zeros(shape, tensor.dtype)


class ActionRunner:
    """Runs ``policy.action`` on full flat inputs; the unit request batching merges."""

    def __init__(self, policy: Any):
        self.policy = policy
        self.inputs = _Inputs(policy)
        self._names = [
            [t.name for t in _tensors(policy.action_spec, "action")],
            [t.name for t in _tensors(policy.policy_state_spec, "next_state")],
            [t.name for t in _tensors(policy.info_spec, "info")],
        ]

    def __call__(self, full: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        time_step, state = self.inputs.nests(full)
        step = self.policy.action(time_step, state)
        out = {}
        for names, tree, prefix in zip(
            self._names, step, ("action", "next_state", "info"), strict=True
        ):
            leaves = nest.flatten(tree)
            if len(leaves) == len(names):
                out.update(zip(names, leaves, strict=True))
            else:  # not shaped as its spec (an empty info): name what is there
                out.update(_flat(tree, prefix))
        return out


def signatures_for(
    policy: Any,
    manifest: dict[str, Any],
    action: Callable[[dict[str, np.ndarray], int], dict[str, np.ndarray]] | None = None,
) -> dict[str, Signature]:
    """The signatures a loaded runtime policy answers.

    Args:
      policy: a runtime policy (runtimes.load_policy).
      manifest: its bundle's manifest (for the distribution outputs).
      action: runs the action on full inputs and a batch size (request batching plugs
        in here); by default ``ActionRunner(policy)`` directly.
    """
    runner = ActionRunner(policy)
    inputs = runner.inputs
    if action is None:

        def action(full, batch):
            return runner(full)

    action_out = _tensors(policy.action_spec, "action")
    state_out = _tensors(policy.policy_state_spec, "next_state")
    info_out = _tensors(policy.info_spec, "info")
    observation = [t for t in inputs.time_step if t.required]
    step_type = [dataclasses.replace(t, required=False) for t in inputs.time_step]
    step_type = [t for t in step_type if t.name == "step_type"]

    def picker(tensors: list[Tensor]) -> Callable[..., Any]:
        def pick(out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {t.name: out[t.name] for t in tensors}

        def run(arrays, batch):
            out = action(inputs.full(arrays, batch), batch)
            if inspect.isawaitable(out):  # a batched action
                return _then(out, pick)
            return pick(out)

        return run

    run_serving = picker(action_out + state_out)
    run_action = picker(action_out + state_out + info_out)

    serving_inputs = observation + (step_type + inputs.state if inputs.state else [])
    all_inputs = inputs.time_step + inputs.state
    distribution_out = _distribution_outputs(manifest)

    def run_distribution(arrays, batch):
        time_step, state = inputs.nests(inputs.full(arrays, batch))
        step = policy.distribution_params(time_step, state)
        out: dict[str, Any] = {}
        for path, dist in nest.flatten_with_paths(step.action, "distribution"):
            family = _FAMILY_OF[type(dist).__name__]
            for param in families.FAMILIES[family]:
                out[nest.join_path(path, param)] = getattr(dist, param)
        out.update(_flat(step.state, "next_state"))
        out.update(_flat(step.info, "info"))
        return {
            t.name: np.asarray(out[t.name]).astype(t.dtype, copy=False) for t in distribution_out
        }

    def run_initial_state(arrays, batch):
        state = policy.get_initial_state(int(arrays["batch_size"]))
        return _flat(state, "policy_state")

    def run_train_step(arrays, batch):
        step = policy.train_step
        return {"train_step": np.int64(-1 if step is None else step)}

    def run_metadata(arrays, batch):
        return {"metadata_json": json.dumps(policy.metadata, sort_keys=True)}

    scalar = ()
    return {
        DEFAULT_SIGNATURE: Signature(
            DEFAULT_SIGNATURE, serving_inputs, action_out + state_out, True, run_serving
        ),
        "action": Signature(
            "action", all_inputs, action_out + state_out + info_out, True, run_action
        ),
        "distribution": Signature(
            "distribution", all_inputs, distribution_out, True, run_distribution
        ),
        "get_initial_state": Signature(
            "get_initial_state",
            [Tensor("batch_size", np.dtype(np.int32), scalar)],
            _tensors(policy.policy_state_spec, "policy_state"),
            False,
            run_initial_state,
        ),
        "get_train_step": Signature(
            "get_train_step",
            [],
            [Tensor("train_step", np.dtype(np.int64), scalar)],
            False,
            run_train_step,
        ),
        "get_metadata": Signature(
            "get_metadata",
            [],
            [Tensor("metadata_json", np.dtype(object), scalar)],
            False,
            run_metadata,
        ),
    }


async def _then(awaitable: Any, fn: Callable[[Any], Any]) -> Any:
    return fn(await awaitable)


def _distribution_outputs(manifest: dict[str, Any]) -> list[Tensor]:
    """The distribution function's outputs but the deterministic ``action/...`` (the
    action is the ``action`` signature's)."""
    entries = manifest.get("signatures", {}).get("distribution", {}).get("outputs", [])
    out = []
    for entry in entries:
        name = entry["name"]
        if name.split("/")[0] == "action":
            continue
        shape = tuple(None if d is None else int(d) for d in entry["shape"])
        out.append(Tensor(name, np.dtype(entry["dtype"]), shape))
    return out
