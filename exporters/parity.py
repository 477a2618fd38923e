"""verify: parity of a bundle's exported forms with each other and with the TF policy.

Two checks, on every form that can run here (``Format.runner``: the SavedModel, the ONNX
graph under onnxruntime, the LiteRT model under ai-edge-litert...; a form whose runtime is
not installed is skipped, naming what to install, ``Format.runner_missing``):

- against the recorded calls a bundle carries (``Format.records``: the golden vectors
  recorded from the TF policy at export): each form runs the recorded inputs, so a device
  without TensorFlow still checks its runtime against the TF policy;
- against each other: spec-sampled time steps (sequences with FIRST steps for stateful
  policies, each form feeding back its own state) go through the live TF policy (when
  given) and every form; the reference is the TF policy, else the first form.

The report gives the largest absolute and relative difference per output; formats add
their own rows (``Format.extra_checks``: LiteRT's ``get_initial_state`` against the zero
states).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from exporters import formats as export_formats
from exporters import graph_io
from exporters.formats.base import Recording
from exporters.graph_io import Runner
from toolkit import bundle
from toolkit.errors import BundleError

__all__ = ["OutputDiff", "VerifyReport", "verify"]


@dataclasses.dataclass(frozen=True)
class OutputDiff:
    """The largest difference of one output between a form and its reference."""

    form: str
    output: str
    max_abs: float
    max_rel: float
    ok: bool
    #: what the form was compared with (a form, or a recording such as "golden")
    reference: str = ""


@dataclasses.dataclass
class VerifyReport:
    """What ``verify`` measured. ``ok`` is False when any output is beyond tolerance.

    ``reference`` is the recording the forms were checked against ("golden"), else the
    form the others were compared with; ``skipped`` names the forms that could not run
    here and why; ``recorded`` describes each recording (its calls and their source).
    """

    bundle: Path
    reference: str
    forms: list[str]
    num_samples: int
    steps: int
    atol: float
    rtol: float
    rows: list[OutputDiff]
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    recorded: dict[str, str] = dataclasses.field(default_factory=dict)

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
            "skipped": self.skipped,
            "recorded": self.recorded,
            "num_samples": self.num_samples,
            "steps": self.steps,
            "atol": self.atol,
            "rtol": self.rtol,
            "outputs": [dataclasses.asdict(row) for row in self.rows],
        }

    def summary(self) -> str:
        """The status line: what was compared, with what, and the tolerance."""
        parts = [f"{name}: {text}" for name, text in self.recorded.items()]
        if len(self.forms) > 1:
            parts.append(
                f"{self.num_samples} samples x {self.steps} step{'s' if self.steps != 1 else ''}"
                f" across forms, reference {self._cross_reference()}"
            )
        return (
            f"verify {self.bundle}: {'OK' if self.ok else 'FAILED'} ({'; '.join(parts)}; "
            f"tolerance {self.atol:g} + {self.rtol:g} x |reference|)"
        )

    def skipped_lines(self) -> list[str]:
        """One line per form that could not run: ``saved_model: skipped, ...``."""
        return [f"{name}: skipped, {reason}" for name, reason in self.skipped.items()]

    def _cross_reference(self) -> str:
        return self.forms[0] if self.forms else ""

    def __str__(self) -> str:
        lines = [self.summary(), *("  " + line for line in self.skipped_lines())]
        width = max([len(r.output) for r in self.rows] + [6])
        lines.append(
            f"  {'form':<12} {'reference':<12} {'output':<{width}} {'max abs':>10} {'max rel':>10}"
        )
        for row in self.rows:
            mark = "" if row.ok else "  <-- beyond tolerance"
            lines.append(
                f"  {row.form:<12} {row.reference:<12} {row.output:<{width}} "
                f"{row.max_abs:>10.3g} {row.max_rel:>10.3g}{mark}"
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
    """Compares every exported form of a bundle that can run here with the bundle's
    recorded calls (golden vectors), with each other and with ``policy``, when given.

    Args:
      bundle_dir: the bundle.
      num_samples: the batch of sampled time steps fed at each step (across forms).
      policy: the live TF policy the bundle was exported from; it becomes the reference
        across forms.
      steps: time steps per sequence; defaults to 8 for stateful policies, 1 otherwise.
      atol, rtol: an output passes when ``|form - reference| <= atol + rtol * |reference|``
        everywhere (float32 MLPs agree to about 1e-6; rtol covers large Q-values).
        Integer outputs must be equal.
      seed: seeds the sampled inputs.

    Returns:
      A VerifyReport (``report.ok``; ``str(report)`` is a table; ``report.skipped`` the
      forms whose runtime is not installed).

    Raises:
      BundleError: a bundle that fails the readers' checks, or nothing to compare: no
        recording and fewer than two forms that can run here (naming the skipped ones).
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
    recordings: dict[str, Recording] = {}
    skipped: dict[str, str] = {}
    checked_apart: list[str] = []  # formats without a distribution runner
    for fmt in present:
        if fmt.records:
            recordings[fmt.name] = fmt.recording(root, layout)
            continue
        reason = fmt.runner_missing()
        if reason is not None:
            skipped[fmt.name] = reason
            continue
        run = fmt.runner(root, layout)
        if run is None:  # e.g. an int8 deterministic action: its extra_checks verify it
            checked_apart.append(fmt.name)
            continue
        runners[fmt.name] = run
    if not checked_apart and (not runners or (not recordings and len(runners) < 2)):
        also = "".join(f"; {name}: skipped, {reason}" for name, reason in skipped.items())
        raise BundleError(
            f"{root}: nothing to compare: "
            + (
                "no form of the policy can run here"
                if not runners
                else f"the bundle has one form that runs here ({list(runners)}), no golden "
                "vectors and no policy was given"
            )
            + also
        )
    rows: list[OutputDiff] = []
    for name, recording in recordings.items():
        rows += _against_recording(name, recording, runners, atol, rtol)
    stateful = bool(layout.names.states)
    steps = steps if steps is not None else (8 if stateful else 1)
    if len(runners) > 1:
        rows += _across_forms(layout, runners, num_samples, steps, stateful, seed, atol, rtol)
    for fmt in present:
        if fmt.name in runners or fmt.name in checked_apart:
            rows += fmt.extra_checks(root, layout, num_samples)
    recorded = {
        name: f"{_calls(recording)} recorded from {recording.source}"
        for name, recording in recordings.items()
    }
    return VerifyReport(
        bundle=root,
        reference=next(iter(recordings), None)
        or next(iter(runners), None)
        or "held-out real states",
        forms=[*runners, *checked_apart],
        num_samples=num_samples,
        steps=steps,
        atol=atol,
        rtol=rtol,
        rows=rows,
        skipped=skipped,
        recorded=recorded,
    )


def _calls(recording: Recording) -> str:
    inputs = recording.steps[0][0]
    batch = len(next(iter(inputs.values()))) if inputs else 0
    n = len(recording.steps)
    return f"{batch} time steps x {n} step{'s' if n != 1 else ''}"


def _worst(
    worst: dict[tuple[str, str], list[Any]],
    form: str,
    reference_outputs: dict[str, np.ndarray],
    outputs: dict[str, np.ndarray],
    atol: float,
    rtol: float,
) -> None:
    """Folds one call's differences into ``worst[(form, output)]``."""
    for output, ref_value in reference_outputs.items():
        if output not in outputs:
            worst[(form, output)] = [float("inf"), float("inf"), False]
            continue
        max_abs, max_rel, ok = compare(ref_value, np.asarray(outputs[output]), atol, rtol)
        previous = worst.get((form, output), [0.0, 0.0, True])
        worst[(form, output)] = [
            max(previous[0], max_abs),
            max(previous[1], max_rel),
            bool(previous[2] and ok),
        ]


def _rows(worst: dict[tuple[str, str], list[Any]], reference: str) -> list[OutputDiff]:
    return [
        OutputDiff(form, output, float(v[0]), float(v[1]), bool(v[2]), reference)
        for (form, output), v in worst.items()
    ]


def _against_recording(
    name: str, recording: Recording, runners: dict[str, Runner], atol: float, rtol: float
) -> list[OutputDiff]:
    """Every form on the recorded inputs (each step with its recorded state)."""
    worst: dict[tuple[str, str], list[Any]] = {}
    for inputs, expected in recording.steps:
        for form, run in runners.items():
            _worst(worst, form, expected, run(dict(inputs)), atol, rtol)
    return _rows(worst, name)


def _across_forms(
    layout: Any,
    runners: dict[str, Runner],
    num_samples: int,
    steps: int,
    stateful: bool,
    seed: int,
    atol: float,
    rtol: float,
) -> list[OutputDiff]:
    """Every form against the first on sampled sequences, each feeding back its state."""
    rng = np.random.default_rng(seed)
    states = {name: graph_io.initial_state(layout, num_samples) for name in runners}
    worst: dict[tuple[str, str], list[Any]] = {}
    reference = next(iter(runners))
    for step in range(steps):
        time_step = graph_io.sample_time_steps(
            layout, num_samples, rng, first=step == 0, stateful=stateful
        )
        outputs = {name: run({**time_step, **states[name]}) for name, run in runners.items()}
        for name in runners:
            states[name] = graph_io.next_state(outputs[name])
        for form in list(runners)[1:]:
            _worst(worst, form, outputs[reference], outputs[form], atol, rtol)
    return _rows(worst, reference)
