"""What a served policy answers, protocol-neutral: signatures of flat named arrays (TF-free).

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
0, ``discount`` 1 and the state the initial one. A signature describes its inputs and
outputs (``TensorInfo``: name, dtype, shape with ``None`` for the batch dim), checks
the arrays a codec decoded (``Signature.check``) and runs them (``Signature.run``):
flat arrays in, flat arrays out, through the runtime policy's flat entry points
(``action_flat``, ``distribution_params_flat``), so no request builds a nest. How
arrays travel (JSON, binary tensors, protobufs) is each protocol's codec's business.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from toolkit import nest
from toolkit.bundle.layout import Layout
from toolkit.errors import ServingError
from toolkit.trajectories.time_step import StepType

__all__ = [
    "DEFAULT_SIGNATURE",
    "Signature",
    "TensorInfo",
    "distribution_outputs",
    "short",
    "signatures_for",
]

DEFAULT_SIGNATURE = "serving_default"

# Which array kinds an input of each kind takes: numbers for floats, whole numbers for
# integers (as TF Serving: 1.5 is no int32), booleans for bools.
_ACCEPTS = {"f": "fiu", "i": "iu", "u": "iu", "b": "b"}

Outputs = dict[str, Any]
Run = Callable[[dict[str, np.ndarray], int], "Outputs | Awaitable[Outputs]"]


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One named input or output: dtype and full shape (None = the batch dim)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]
    required: bool = True

    def describe_shape(self) -> str:
        return "[" + ", ".join("B" if d is None else str(d) for d in self.shape) + "]"


class Signature:
    """One function a served version answers: its inputs, outputs and how to run it.

    Args:
      name: the signature name.
      inputs: the inputs; ``required=False`` ones may be left out.
      outputs: the outputs, in the order answers list them.
      batched: whether inputs and outputs carry a leading batch dim (one row per
        instance); get_initial_state, get_train_step and get_metadata do not.
      run: ``(arrays, batch) -> {output name: array}`` (or an awaitable of it, when
        request batching runs it), for arrays that passed ``check``.
    """

    def __init__(
        self,
        name: str,
        inputs: list[TensorInfo],
        outputs: list[TensorInfo],
        batched: bool,
        run: Run,
    ):
        self.name = name
        self.inputs = {t.name: t for t in inputs}
        self.outputs = {t.name: t for t in outputs}
        self.batched = batched
        self.run = run
        self.required = [t.name for t in inputs if t.required]

    def check_names(self, names: Any) -> None:
        """Refuses names that are not inputs, and missing required inputs.

        Raises:
          ServingError: (invalid argument) naming the first unknown or missing input.
        """
        unknown = [n for n in names if n not in self.inputs]
        if unknown:
            raise ServingError(
                f"{sorted(unknown)[0]}: not an input of signature '{self.name}' "
                f"(expected some of {sorted(self.inputs)})"
            )
        missing = [n for n in self.required if n not in names]
        if missing:
            raise ServingError(
                f"Missing named input: {missing[0]} (signature '{self.name}' needs {self.required})"
            )

    def check(self, arrays: dict[str, np.ndarray], max_batch: int) -> tuple[dict, int]:
        """Checks decoded inputs: names, dtypes, shapes, value ranges and the batch.

        Args:
          arrays: input name -> array, as a codec decoded it.
          max_batch: the most rows a request may hold.

        Returns:
          ``(arrays in the inputs' dtypes, batch size)``.

        Raises:
          ServingError: (invalid argument) naming the input, what was expected and
            what came.
        """
        self.check_names(arrays)
        checked = {n: conform(a, self.inputs[n]) for n, a in arrays.items()}
        if not self.batched:
            size = checked.get("batch_size")
            if size is None:
                return checked, 1
            if not 0 <= int(size) <= max_batch:
                raise ServingError(
                    f"batch_size: expected 0 to {max_batch} (the server's --max-batch), "
                    f"got {int(size)}"
                )
            return checked, int(size)
        batch, first = None, None
        for name, array in checked.items():
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
        return checked, batch


def conform(array: np.ndarray, tensor: TensorInfo) -> np.ndarray:
    """An array -> the tensor's dtype, if its kind, shape and values fit; or a ServingError."""
    target = np.dtype(tensor.dtype)
    if array.dtype.kind not in _ACCEPTS.get(target.kind, "") and array.size:
        raise ServingError(
            f"{tensor.name}: expected {target.name} values, got {_kind_name(array)}: "
            f"{short(array.ravel()[:16].tolist())}"
        )
    if len(array.shape) != len(tensor.shape) or any(
        d is not None and d != n for d, n in zip(tensor.shape, array.shape, strict=False)
    ):
        raise ServingError(
            f"{tensor.name}: expected shape {tensor.describe_shape()}, "
            f"got [{', '.join(map(str, array.shape))}]"
        )
    if target.kind in "iu" and array.size and array.dtype != target:
        info = np.iinfo(target)
        low, high = array.min(), array.max()
        if low < info.min or high > info.max:
            raise ServingError(
                f"{tensor.name}: expected {target.name} values in [{info.min}, {info.max}], "
                f"got {low} .. {high}"
            )
    return array.astype(target, copy=False)


def _kind_name(array: np.ndarray) -> str:
    return {"b": "booleans", "U": "strings", "S": "strings", "f": "decimals"}.get(
        array.dtype.kind, "integers" if array.dtype.kind in "iu" else array.dtype.name
    )


def short(value: Any, limit: int = 80) -> str:
    """A value for an error message, cut to ``limit`` characters (never a whole body)."""
    if isinstance(value, list) and len(value) > limit:
        value = value[:limit]  # a list longer than the limit shows no more than that
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value[:limit])
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- the signatures of a runtime policy ---------------------------------------------------


def _tensors(spec: Any, prefix: str, required: bool = True, batch: bool = True) -> list:
    return [
        TensorInfo(path, np.dtype(s.dtype), ((None,) if batch else ()) + tuple(s.shape), required)
        for path, s in nest.flatten_with_paths(spec, prefix)
    ]


def distribution_outputs(layout: Layout) -> list[TensorInfo]:
    """The distribution function's outputs but the deterministic ``action/...`` (the
    action is the ``action`` signature's), from the bundle's typed layout."""
    signature = layout.signatures.get("distribution")
    out = []
    for entry in () if signature is None else signature.outputs:
        if entry.name.split("/")[0] == "action":
            continue
        shape = tuple(None if d is None else int(d) for d in entry.shape)
        out.append(TensorInfo(entry.name, np.dtype(entry.dtype), shape))
    return out


class Defaults:
    """Completes a request's inputs: step type MID, reward 0, discount 1, initial state.

    Args:
      policy: the runtime policy (its ``input_names``, specs and initial state).
    """

    def __init__(self, policy: Any):
        self.policy = policy
        time_step = _tensors(policy.time_step_spec, "")
        self.time_step = [
            dataclasses.replace(t, required=t.name.split("/")[0] == "observation")
            for t in time_step
        ]
        self.state = _tensors(policy.policy_state_spec, "policy_state", required=False)
        self.state_names = [t.name for t in self.state]
        self._cache: dict[tuple[str, int], np.ndarray] = {}
        #: batch -> every time step input's default (policies without state)
        self._steps: dict[int, dict[str, np.ndarray]] = {}

    def full(self, arrays: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
        """Every time step and state input, defaults filled in."""
        if not self.state:  # every input is a time step's: its defaults, then the inputs
            base = self._steps.get(batch)
            if base is None:
                base = {t.name: self._default(t, batch) for t in self.time_step}
                if len(self._steps) < 256:
                    self._steps[batch] = base
            out = base.copy()
            out.update(arrays)
            return out
        out = {}
        for tensor in self.time_step:
            value = arrays.get(tensor.name)
            out[tensor.name] = self._default(tensor, batch) if value is None else value
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
                out.update(nest.flatten_with_paths(initial, "policy_state"))
        return out

    def _default(self, tensor: TensorInfo, batch: int) -> np.ndarray:
        key = (tensor.name, batch)
        value = self._cache.get(key)
        if value is None:
            shape = (batch,) + tuple(tensor.shape[1:])
            if tensor.name == "step_type":
                value = np.full(shape, int(StepType.MID), tensor.dtype)
            elif tensor.name == "discount":
                value = np.ones(shape, tensor.dtype)
            else:
                value = np.zeros(shape, tensor.dtype)
            value.setflags(write=False)  # shared by requests of this batch size
            if len(self._cache) < 256:
                self._cache[key] = value
        return value


def signatures_for(
    policy: Any,
    distribution: list[TensorInfo],
    action: Callable[[dict[str, np.ndarray], int], Any] | None = None,
) -> dict[str, Signature]:
    """The signatures a loaded runtime policy answers.

    Args:
      policy: a runtime policy (``runtimes.load_policy``, any backend).
      distribution: the distribution signature's outputs (``distribution_outputs``).
      action: ``(full inputs, batch) -> flat outputs`` (or an awaitable of them):
        request batching plugs in here; by default ``policy.action_flat``.

    Returns:
      Signature name -> Signature.
    """
    defaults = Defaults(policy)
    if action is None:

        def action(full, batch):
            return policy.action_flat(full)

    action_out = _tensors(policy.action_spec, "action")
    state_out = _tensors(policy.policy_state_spec, "next_state")
    info_out = _tensors(policy.info_spec, "info")
    observation = [t for t in defaults.time_step if t.required]
    step_type = [
        dataclasses.replace(t, required=False) for t in defaults.time_step if t.name == "step_type"
    ]

    def picker(tensors: list[TensorInfo]) -> Run:
        names = [t.name for t in tensors]

        def pick(out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {n: out[n] for n in names}

        def run(arrays, batch):
            out = action(defaults.full(arrays, batch), batch)
            if type(out) is not dict and inspect.isawaitable(out):  # a batched action
                return _then(out, pick)
            return pick(out)

        return run

    def run_distribution(arrays, batch):
        out = policy.distribution_params_flat(defaults.full(arrays, batch))
        return {t.name: np.asarray(out[t.name]).astype(t.dtype, copy=False) for t in distribution}

    def run_initial_state(arrays, batch):
        state = policy.get_initial_state(int(arrays["batch_size"]))
        return dict(nest.flatten_with_paths(state, "policy_state"))

    def run_train_step(arrays, batch):
        step = policy.train_step
        return {"train_step": np.int64(-1 if step is None else step)}

    def run_metadata(arrays, batch):
        return {"metadata_json": json.dumps(policy.metadata, sort_keys=True)}

    serving_inputs = observation + (step_type + defaults.state if defaults.state else [])
    all_inputs = defaults.time_step + defaults.state
    scalar = ()
    signatures = [
        Signature(
            DEFAULT_SIGNATURE,
            serving_inputs,
            action_out + state_out,
            True,
            picker(action_out + state_out),
        ),
        Signature(
            "action",
            all_inputs,
            action_out + state_out + info_out,
            True,
            picker(action_out + state_out + info_out),
        ),
        Signature("distribution", all_inputs, distribution, True, run_distribution),
        Signature(
            "get_initial_state",
            [TensorInfo("batch_size", np.dtype(np.int32), scalar)],
            _tensors(policy.policy_state_spec, "policy_state"),
            False,
            run_initial_state,
        ),
        Signature(
            "get_train_step",
            [],
            [TensorInfo("train_step", np.dtype(np.int64), scalar)],
            False,
            run_train_step,
        ),
        Signature(
            "get_metadata",
            [],
            [TensorInfo("metadata_json", np.dtype(object), scalar)],
            False,
            run_metadata,
        ),
    ]
    return {s.name: s for s in signatures}


async def _then(awaitable: Any, fn: Callable[[Any], Any]) -> Any:
    return fn(await awaitable)
