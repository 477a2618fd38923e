"""verify: parity of a bundle's exported forms with each other and with the TF policy.

Spec-sampled time steps (sequences with FIRST steps for stateful policies, each form
feeding back its own state) go through every available form of the ``distribution``
function: the live TF policy (when given), then each format of the bundle in the format
registry's order (``Format.runner``: the SavedModel, the ONNX graph under onnxruntime,
the LiteRT model under ai-edge-litert...). The report gives the largest absolute and
relative difference per output against the reference (the TF policy, else the first
format); formats add their own rows (``Format.extra_checks``: LiteRT's
``get_initial_state`` against the zero states).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from exporters import formats as export_formats
from exporters import graph_io
from exporters.graph_io import Runner
from toolkit import bundle
from toolkit.errors import BundleError

__all__ = ["OutputDiff", "VerifyReport", "verify"]


@dataclasses.dataclass(frozen=True)
class OutputDiff:
    """The largest difference of one output between a form and the reference."""

    form: str
    output: str
    max_abs: float
    max_rel: float
    ok: bool


@dataclasses.dataclass
class VerifyReport:
    """What ``verify`` measured. ``ok`` is False when any output is beyond tolerance."""

    bundle: Path
    reference: str
    forms: list[str]
    num_samples: int
    steps: int
    atol: float
    rtol: float
    rows: list[OutputDiff]

    @property
    def ok(self) -> bool:
        return all(row.ok for row in self.rows)

    def failures(self) -> list[OutputDiff]:
        return [row for row in self.rows if not row.ok]

    def to_json(self) -> dict[str, Any]:
        return {
            "bundle": str(self.bundle),
            "ok": self.ok,
            "reference": self.reference,
            "forms": self.forms,
            "num_samples": self.num_samples,
            "steps": self.steps,
            "atol": self.atol,
            "rtol": self.rtol,
            "outputs": [dataclasses.asdict(row) for row in self.rows],
        }

    def __str__(self) -> str:
        lines = [
            f"verify {self.bundle}: {'OK' if self.ok else 'FAILED'} "
            f"({self.num_samples} samples x {self.steps} steps; reference {self.reference}; "
            f"tolerance {self.atol:g} + {self.rtol:g} x |reference|)"
        ]
        width = max([len(r.output) for r in self.rows] + [6])
        lines.append(f"  {'form':<12} {'output':<{width}} {'max abs':>10} {'max rel':>10}")
        for row in self.rows:
            mark = "" if row.ok else "  <-- beyond tolerance"
            lines.append(
                f"  {row.form:<12} {row.output:<{width}} {row.max_abs:>10.3g} "
                f"{row.max_rel:>10.3g}{mark}"
            )
        return "\n".join(lines)


def _tf_runner(function: Any) -> Runner:
    import tensorflow as tf

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = function({k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in outputs.items()}

    return run


def compare(
    reference: np.ndarray, other: np.ndarray, atol: float, rtol: float
) -> tuple[float, float, bool]:
    """``(max abs diff, max rel diff, ok)``: ok when ``|other - reference| <= atol + rtol *
    |reference|`` everywhere (integers: equal; non-finite floats: the same values)."""
    if reference.shape != other.shape:
        return float("inf"), float("inf"), False
    if reference.dtype.kind in "biu" or other.dtype.kind in "biu":
        diff = np.abs(reference.astype(np.float64) - other.astype(np.float64))
        ok = bool(np.all(diff == 0))
    else:
        ref = reference.astype(np.float64)
        with np.errstate(invalid="ignore"):  # inf - inf where both are -inf logits
            diff = np.abs(ref - other.astype(np.float64))
        finite = np.isfinite(ref)
        same_nonfinite = np.all((ref == other) | finite)
        diff = np.where(finite, diff, 0.0)
        ok = bool(same_nonfinite and np.all(diff <= atol + rtol * np.abs(ref)))
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = np.maximum(np.abs(reference.astype(np.float64)), 1e-12)
    max_rel = float((diff / scale).max()) if diff.size else 0.0
    return max_abs, max_rel, ok


def verify(
    bundle_dir: str | os.PathLike,
    num_samples: int = 64,
    *,
    policy: Any = None,
    steps: int | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    seed: int = 0,
) -> VerifyReport:
    """Compares every exported form of a bundle (and ``policy``, when given).

    Args:
      bundle_dir: the bundle.
      num_samples: the batch of sampled time steps fed at each step.
      policy: the live TF policy the bundle was exported from; it becomes the reference.
      steps: time steps per sequence; defaults to 8 for stateful policies, 1 otherwise.
      atol, rtol: an output passes when ``|form - reference| <= atol + rtol * |reference|``
        everywhere (float32 MLPs agree to about 1e-6; rtol covers large Q-values).
        Integer outputs must be equal.
      seed: seeds the sampled inputs.

    Returns:
      A VerifyReport (``report.ok``; ``str(report)`` is a table).
    """
    root = Path(bundle_dir)
    layout = bundle.read_layout(root)
    if num_samples < 1:
        raise BundleError(f"num_samples: expected at least 1, got {num_samples}")
    runners: dict[str, Runner] = {}
    if policy is not None:
        from exporters.signatures import module_for

        module = module_for(policy, layout.train_step, {})
        runners["tf_policy"] = _tf_runner(module.info.functions["distribution"])
    present = [export_formats.get(name) for name in export_formats.names() if layout.has(name)]
    for fmt in present:
        runners[fmt.name] = fmt.runner(root, layout)
    if len(runners) < 2:
        raise BundleError(
            f"{root}: nothing to compare: the bundle has one form ({list(runners)}) and no "
            "policy was given"
        )
    stateful = bool(layout.names.states)
    steps = steps if steps is not None else (8 if stateful else 1)
    rng = np.random.default_rng(seed)
    states = {name: graph_io.initial_state(layout, num_samples) for name in runners}
    worst: dict[tuple[str, str], list[float | bool]] = {}
    reference = next(iter(runners))
    for step in range(steps):
        time_step = graph_io.sample_time_steps(
            layout, num_samples, rng, first=step == 0, stateful=stateful
        )
        outputs = {name: run({**time_step, **states[name]}) for name, run in runners.items()}
        for name in runners:
            states[name] = graph_io.next_state(outputs[name])
        for form in list(runners)[1:]:
            for output, ref_value in outputs[reference].items():
                if output not in outputs[form]:
                    worst[(form, output)] = [float("inf"), float("inf"), False]
                    continue
                max_abs, max_rel, ok = compare(ref_value, outputs[form][output], atol, rtol)
                previous = worst.get((form, output), [0.0, 0.0, True])
                worst[(form, output)] = [
                    max(previous[0], max_abs),
                    max(previous[1], max_rel),
                    bool(previous[2] and ok),
                ]
    rows = [
        OutputDiff(form, output, float(v[0]), float(v[1]), bool(v[2]))
        for (form, output), v in worst.items()
    ]
    for fmt in present:
        rows += fmt.extra_checks(root, layout, num_samples)
    return VerifyReport(
        bundle=root,
        reference=reference,
        forms=list(runners),
        num_samples=num_samples,
        steps=steps,
        atol=atol,
        rtol=rtol,
        rows=rows,
    )
