"""verify: parity of a bundle's exported forms with each other and with the TF policy.

Spec-sampled time steps (sequences with FIRST steps for stateful policies, each form
feeding back its own state) go through every available form of the ``distribution``
function: the live TF policy (when given), the SavedModel, the ONNX graph under
onnxruntime and the LiteRT model under ai-edge-litert. The report gives the largest
absolute and relative difference per output against the reference (the TF policy, else
the SavedModel); for LiteRT also its ``get_initial_state`` against the zero states.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

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


def _onnx_runner(root: Path, manifest: dict[str, Any]) -> Runner:
    from runtimes.backends.onnx import check_graph_io

    # Contained, hash-checked and self-contained (bundle.read_onnx).
    model = bundle.read_onnx(root, manifest)
    try:
        run = graph_io.onnx_runner(model, threads=0)
    except Exception as e:  # onnxruntime raises its own exception types
        raise BundleError(f"onnxruntime could not load the policy graph: {e}") from e
    check_graph_io(run.session, manifest["signatures"]["distribution"], manifest["onnx"]["file"])
    return run


def _read_litert(root: Path, manifest: dict[str, Any]) -> bytes:
    rel = manifest["litert"]["file"]
    return bundle.read_member(root, rel, key="litert.file", files=manifest["files"])


def _litert_runner(root: Path, manifest: dict[str, Any]) -> Runner:
    model = _read_litert(root, manifest)
    return graph_io.litert_runner(model)


def _litert_initial_state(root: Path, manifest: dict[str, Any], batch: int) -> list[OutputDiff]:
    """The LiteRT model's ``get_initial_state`` against the zero states readers start from."""
    model = _read_litert(root, manifest)
    run = graph_io.litert_runner(model, "get_initial_state")
    got = run({"batch_size": np.asarray(batch, np.int32)})
    rows = []
    for name, expected in graph_io.initial_state(manifest, batch).items():
        value = got.get(name)
        if value is None:
            rows.append(OutputDiff("litert", f"get_initial_state/{name}", np.inf, np.inf, False))
            continue
        max_abs, max_rel, ok = _compare(expected, value, 0.0, 0.0)
        rows.append(OutputDiff("litert", f"get_initial_state/{name}", max_abs, max_rel, ok))
    return rows


def _tf_runner(function: Any) -> Runner:
    import tensorflow as tf

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = function({k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in outputs.items()}

    return run


def _saved_model_runner(root: Path, manifest: dict[str, Any]) -> Runner:
    import tensorflow as tf
    import tensorflow_probability  # noqa: F401  (registers TFP types the model may name)

    path = bundle.check_saved_model(root, manifest)
    try:
        loaded = tf.saved_model.load(str(path))
        signature = loaded.signatures["distribution"]
    except Exception as e:  # TF raises many kinds for a broken SavedModel
        raise BundleError(f"{path}: TensorFlow could not load the SavedModel: {e}") from e

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = signature(**{k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in outputs.items()}

    return run


def _compare(reference: np.ndarray, other: np.ndarray, atol: float, rtol: float):
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
    manifest = bundle.read_manifest(root)
    if num_samples < 1:
        raise BundleError(f"num_samples: expected at least 1, got {num_samples}")
    runners: dict[str, Runner] = {}
    if policy is not None:
        from exporters.export import module_for

        module = module_for(policy, manifest.get("train_step"), {})
        runners["tf_policy"] = _tf_runner(module.info.functions["distribution"])
    if "saved_model" in manifest:
        runners["saved_model"] = _saved_model_runner(root, manifest)
    if "onnx" in manifest:
        runners["onnx"] = _onnx_runner(root, manifest)
    if "litert" in manifest:
        runners["litert"] = _litert_runner(root, manifest)
    if len(runners) < 2:
        raise BundleError(
            f"{root}: nothing to compare: the bundle has one form ({list(runners)}) and no "
            "policy was given"
        )
    stateful = bool(graph_io.initial_state(manifest, 1))
    steps = steps if steps is not None else (8 if stateful else 1)
    rng = np.random.default_rng(seed)
    states = {name: graph_io.initial_state(manifest, num_samples) for name in runners}
    worst: dict[tuple[str, str], list[float | bool]] = {}
    reference = next(iter(runners))
    for step in range(steps):
        time_step = graph_io.sample_time_steps(
            manifest, num_samples, rng, first=step == 0, stateful=stateful
        )
        outputs = {name: run({**time_step, **states[name]}) for name, run in runners.items()}
        for name in runners:
            states[name] = graph_io.next_state(outputs[name])
        for form in list(runners)[1:]:
            for output, ref_value in outputs[reference].items():
                if output not in outputs[form]:
                    worst[(form, output)] = [float("inf"), float("inf"), False]
                    continue
                max_abs, max_rel, ok = _compare(ref_value, outputs[form][output], atol, rtol)
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
    if "litert" in runners:
        rows += _litert_initial_state(root, manifest, num_samples)
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
