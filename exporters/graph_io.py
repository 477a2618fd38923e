"""Feeding a bundle's ``distribution`` graph: inputs, states and runners (TF-free).

One home for what ``verify`` (exporters.parity) and ``quantize`` (exporters.quantize)
both need: sampled time steps and zero states in the graph's flat names
(docs/bundle-format.md), the next state out of a step's outputs, the representative
action of every distribution leaf, and runners that take flat inputs and give flat
outputs for the ONNX graph (onnxruntime) and the LiteRT model (ai-edge-litert).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import nest
from toolkit.bundle.layout import Layout
from toolkit.errors import BundleError
from toolkit.specs import array_spec

__all__ = [
    "Runner",
    "action_ranges",
    "actions",
    "agree",
    "initial_state",
    "litert_runner",
    "next_state",
    "onnx_runner",
    "sample_inputs",
    "sample_leaf",
    "sample_time_steps",
]

Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def sample_leaf(spec: Any, rng: np.random.Generator, batch: int) -> np.ndarray:
    """Values of one spec like those a policy meets: floats uniform within finite bounds
    and standard normal (clipped to any one-sided bound) where a bound is infinite;
    other dtypes as ``spec.sample``.

    Spec sampling draws unbounded floats from up to +-1e3, where a network's largest
    inputs decide every action by a wide margin, so agreement would look better there
    than on real observations.
    """
    if spec.dtype.kind != "f":
        return spec.sample(rng, outer_dims=(batch,))
    shape = (batch, *spec.shape)
    low = np.broadcast_to(np.asarray(getattr(spec, "minimum", -np.inf), np.float64), shape)
    high = np.broadcast_to(np.asarray(getattr(spec, "maximum", np.inf), np.float64), shape)
    finite = np.isfinite(low) & np.isfinite(high)
    uniform = rng.uniform(np.where(finite, low, 0.0), np.where(finite, high, 1.0))
    normal = np.clip(rng.standard_normal(shape), low, high)
    return np.where(finite, uniform, normal).astype(spec.dtype)


def _spec_sample(spec: Any, rng: np.random.Generator, batch: int) -> np.ndarray:
    return spec.sample(rng, outer_dims=(batch,))


def sample_time_steps(
    layout: Layout | dict[str, Any],
    batch: int,
    rng: np.random.Generator,
    *,
    first: bool,
    stateful: bool = True,
    moderate: bool = False,
) -> dict[str, np.ndarray]:
    """A batch of time steps drawn from the bundle's time step spec, by flat input name.

    Args:
      first: the first step of a sequence (every entry FIRST for stateful policies).
      stateful: later steps restart a quarter of the entries; stateless policies get
        step types drawn uniformly.
      moderate: floats as ``sample_leaf`` (near what policies meet) instead of the
        spec's full range (which stresses parity over large inputs).
    """
    spec = Layout.coerce(layout).specs.time_step
    return sample_inputs(spec, batch, rng, first=first, stateful=stateful, moderate=moderate)


def sample_inputs(
    time_step_spec: Any,
    batch: int,
    rng: np.random.Generator,
    *,
    first: bool,
    stateful: bool = True,
    moderate: bool = False,
) -> dict[str, np.ndarray]:
    """``sample_time_steps`` from a time step spec of array specs (no manifest yet)."""
    leaf = sample_leaf if moderate else _spec_sample
    inputs = {path: leaf(s, rng, batch) for path, s in nest.flatten_with_paths(time_step_spec)}
    if stateful:
        restart = np.ones(batch, bool) if first else rng.uniform(size=batch) < 0.25
        step_type = np.where(restart, 0, rng.integers(1, 3, size=batch))
    else:
        step_type = rng.integers(0, 3, size=batch)
    inputs["step_type"] = step_type.astype(np.int32)
    inputs["discount"] = rng.uniform(0.0, 1.0, size=batch).astype(np.float32)
    return inputs


def initial_state(layout: Layout | dict[str, Any], batch: int) -> dict[str, np.ndarray]:
    """Zero policy states for ``batch`` entries, by flat input name (empty if stateless)."""
    spec = Layout.coerce(layout).specs.policy_state
    return {path: s.zeros((batch,)) for path, s in nest.flatten_with_paths(spec, "policy_state")}


def next_state(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A step's ``next_state/...`` outputs renamed to the next step's ``policy_state/...``."""
    return {
        "policy_state/" + name.removeprefix("next_state/"): value
        for name, value in outputs.items()
        if name.startswith("next_state/")
    }


def actions(layout: Layout | dict[str, Any], outputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The representative action of every distribution leaf: the mode (argmax for
    categoricals, ``loc`` for deterministic and normal leaves), the mean for uniform ones."""
    from runtimes.distributions import make_distribution
    from toolkit import distribution_families as families

    leaves = Layout.coerce(layout).distribution
    out = []
    for path, leaf in nest.flatten_with_paths(leaves, "distribution"):
        names = families.FAMILIES[leaf.family]
        params = {name: outputs[nest.join_path(path, name)] for name in names}
        distribution = make_distribution(leaf.family, params, **leaf.static)
        out.append(distribution.mean() if leaf.family == "uniform" else distribution.mode())
    return out


def action_ranges(layout: Layout | dict[str, Any]) -> list[np.ndarray | None]:
    """Per action leaf (in nest order), ``maximum - minimum`` where finite, else None."""
    ranges: list[np.ndarray | None] = []
    for spec in nest.flatten(Layout.coerce(layout).specs.action):
        if isinstance(spec, array_spec.BoundedArraySpec):
            width = np.asarray(spec.maximum, np.float64) - np.asarray(spec.minimum, np.float64)
            ranges.append(width if np.all(np.isfinite(width)) else None)
        else:
            ranges.append(None)
    return ranges


def agree(
    layout: Layout | dict[str, Any],
    a: dict[str, np.ndarray],
    b: dict[str, np.ndarray],
    tolerance: float,
) -> np.ndarray:
    """Per batch entry: do two steps' outputs give the same representative actions?

    Discrete actions must be equal; float actions agree within ``tolerance`` times the
    action spec's range (``tolerance * max(1, |a|)`` for unbounded actions).
    """
    layout = Layout.coerce(layout)
    ranges = action_ranges(layout)
    per_leaf = []
    # Wrappers (epsilon-greedy, mixtures) repeat the action nest in their parameters,
    # so distribution leaf i belongs to action leaf i mod n.
    for i, (x, y) in enumerate(zip(actions(layout, a), actions(layout, b), strict=True)):
        width = ranges[i % len(ranges)] if ranges else None
        if x.dtype.kind in "biu" and y.dtype.kind in "biu":
            same = x == y
        else:
            x64, y64 = x.astype(np.float64), y.astype(np.float64)
            scale = width if width is not None else np.maximum(1.0, np.abs(x64))
            same = np.abs(x64 - y64) <= tolerance * scale
        per_leaf.append(same.reshape(same.shape[0], -1).all(axis=1))
    if not per_leaf:
        return np.ones(len(next(iter(a.values()))), bool)
    return np.logical_and.reduce(per_leaf)


# --- runners ---------------------------------------------------------------------------------


def onnx_runner(
    model: bytes | str | Path,
    threads: int = 1,
    initializers: dict[str, np.ndarray] | None = None,
) -> Runner:
    """Runs an ONNX graph with onnxruntime (CPU, ``threads`` intra-op threads), with
    ``initializers`` (by name) in place of the graph's own values."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: ORT warns about unused initializers
    # onnxruntime keeps pointers into these OrtValues (and their arrays): they live as
    # long as the runner.
    arrays = {k: np.ascontiguousarray(v) for k, v in (initializers or {}).items()}
    values = {k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in arrays.items()}
    for name, value in values.items():
        options.add_initializer(name, value)
    source = str(model) if isinstance(model, Path) else model
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    input_names = [i.name for i in session.get_inputs()]

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {name: inputs[name] for name in input_names}
        return dict(zip(names, session.run(names, feed), strict=True))

    run.session = session  # type: ignore[attr-defined]
    run.keep = (arrays, values)  # type: ignore[attr-defined]
    return run


def litert_runner(model: bytes, signature: str = "distribution") -> Runner:
    """Runs one signature of a LiteRT model with ai-edge-litert (one thread)."""
    from runtimes.backends.litert import new_interpreter, quiet_stderr

    interpreter = new_interpreter(model)
    signatures = interpreter.get_signature_list()
    if signature not in signatures:
        raise BundleError(
            f"the LiteRT model has no {signature!r} signature (it has {sorted(signatures)})"
        )
    runner = interpreter.get_signature_runner(signature)
    input_names = list(signatures[signature]["inputs"])

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # A SignatureRunner allocates on every call, which prints the delegate banner.
        with quiet_stderr():
            try:
                return runner(**{name: inputs[name] for name in input_names})
            except RuntimeError as e:
                # LiteRT checks a model's tensor indices when it allocates, not at load.
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                raise BundleError(
                    f"LiteRT could not run the model's {signature} signature: {first}"
                ) from None

    return run
