"""quantize_bundle: a bundle's ONNX graph with int8 weights, checked before it is written.

``onnxruntime.quantization.quantize_dynamic`` stores MatMul/Gemm weights as int8 (with
a float scale and zero point) and quantizes activations on the fly. That shrinks the
model and can speed up large layers on CPUs with int8 instructions, and it changes the
numbers, so before anything is written the quantized graph is compared with the
original on spec-sampled time steps:

* action agreement: the share of sampled time steps (see ``sample_leaf``) on which
  every action leaf's representative action (the distribution's mode: argmax for
  categoricals, ``loc`` for deterministic and normal leaves; the mean for uniform ones)
  is the same; float actions count as the same within ``tolerance`` times the action
  spec's range (``tolerance * max(1, |original|)`` for unbounded actions);
* the largest parameter difference: ``|dequantized int8 weight - float weight|``;
* the file size and the latency of one batch-1 call, before and after.

Below ``min_agreement`` nothing is written unless ``force``. The output is a bundle of
its own (ONNX only: the SavedModel keeps float weights, so it would no longer match),
with a ``quantization`` entry in the manifest, updated hashes, the graph's new
fingerprint and initializer list, written atomically. TF-free: onnx and onnxruntime.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import bundle, nest
from toolkit import distribution_families as families
from toolkit.errors import BundleError, ExportError
from toolkit.specs import array_spec

__all__ = ["QuantizeReport", "quantize_bundle", "sample_leaf"]

METHOD = "onnxruntime.quantize_dynamic"


@dataclasses.dataclass(frozen=True)
class QuantizeReport:
    """What ``quantize_bundle`` measured and whether it wrote the output.

    Attributes:
      source, output: the bundles.
      written: False when the agreement was below the threshold and not forced.
      samples: sampled time steps compared.
      action_agreement: share of samples whose actions agree (0..1).
      min_agreement: the threshold.
      tolerance: float actions agree within this share of the action range.
      max_weight_diff: the largest ``|dequantized - original|`` weight.
      quantized_weights: how many initializers became int8.
      size_before, size_after: bytes of the ONNX file.
      latency_before_us, latency_after_us: median of batch-1 calls, microseconds.
    """

    source: Path
    output: Path
    written: bool
    samples: int
    action_agreement: float
    min_agreement: float
    tolerance: float
    max_weight_diff: float
    quantized_weights: int
    size_before: int
    size_after: int
    latency_before_us: float
    latency_after_us: float

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["source"], data["output"] = str(self.source), str(self.output)
        return data


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    # quantize_dynamic logs a "consider pre-processing" warning on the root logger.
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _session(model_bytes: bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def _run(session: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    feed = {i.name: inputs[i.name] for i in session.get_inputs()}
    return dict(zip(names, session.run(names, feed), strict=True))


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


def _sample_time_steps(
    manifest: dict[str, Any], batch: int, rng: np.random.Generator, first: bool
) -> dict[str, np.ndarray]:
    spec = array_spec.spec_nest_from_json(manifest["specs"]["time_step"])
    inputs = {path: sample_leaf(leaf, rng, batch) for path, leaf in nest.flatten_with_paths(spec)}
    # Episodes start on the first step; later steps restart a quarter of them.
    restart = np.ones(batch, bool) if first else rng.uniform(size=batch) < 0.25
    inputs["step_type"] = np.where(restart, 0, rng.integers(1, 3, size=batch)).astype(np.int32)
    inputs["discount"] = rng.uniform(0.0, 1.0, size=batch).astype(np.float32)
    return inputs


def _initial_state(manifest: dict[str, Any], batch: int) -> dict[str, np.ndarray]:
    spec = array_spec.spec_nest_from_json(manifest["specs"]["policy_state"])
    return {path: s.zeros((batch,)) for path, s in nest.flatten_with_paths(spec, "policy_state")}


def _next_state(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        "policy_state/" + k.removeprefix("next_state/"): v
        for k, v in outputs.items()
        if k.startswith("next_state/")
    }


def _actions(manifest: dict[str, Any], outputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The representative action of every distribution leaf (see the module doc)."""
    from runtimes.distributions import make_distribution

    leaves = nest.from_json(manifest["distribution"], families.leaf_from_json)
    actions = []
    for path, leaf in nest.flatten_with_paths(leaves, "distribution"):
        names = families.FAMILIES[leaf.family]
        params = {name: outputs[nest.join_path(path, name)] for name in names}
        distribution = make_distribution(leaf.family, params, **leaf.static)
        actions.append(distribution.mean() if leaf.family == "uniform" else distribution.mode())
    return actions


def _action_ranges(manifest: dict[str, Any]) -> list[np.ndarray | None]:
    """Per action leaf (in nest order), ``maximum - minimum`` where finite, else None."""
    ranges: list[np.ndarray | None] = []
    for spec in nest.flatten(array_spec.spec_nest_from_json(manifest["specs"]["action"])):
        if isinstance(spec, array_spec.BoundedArraySpec):
            width = np.asarray(spec.maximum, np.float64) - np.asarray(spec.minimum, np.float64)
            ranges.append(width if np.all(np.isfinite(width)) else None)
        else:
            ranges.append(None)
    return ranges


def _agree(a: np.ndarray, b: np.ndarray, width: np.ndarray | None, tolerance: float) -> np.ndarray:
    """Per batch entry: do the two actions agree (all elements)?"""
    if a.dtype.kind in "biu" and b.dtype.kind in "biu":
        same = a == b
    else:
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        scale = width if width is not None else np.maximum(1.0, np.abs(a64))
        same = np.abs(a64 - b64) <= tolerance * scale
    return same.reshape(same.shape[0], -1).all(axis=1)


def _max_weight_diff(original: Any, quantized: Any) -> tuple[float, int]:
    from onnx import numpy_helper

    floats = {
        init.name: numpy_helper.to_array(init)
        for init in original.graph.initializer
        if init.data_type in (1, 10, 11)  # float32, float16, float64
    }
    q = {init.name: init for init in quantized.graph.initializer}
    worst, count = 0.0, 0
    for name, value in floats.items():
        if f"{name}_quantized" not in q:
            continue
        weights = numpy_helper.to_array(q[f"{name}_quantized"]).astype(np.float64)
        scale = numpy_helper.to_array(q[f"{name}_scale"]).astype(np.float64)
        zero = numpy_helper.to_array(q[f"{name}_zero_point"]).astype(np.float64)
        if scale.ndim:  # per-channel: one scale per output column
            scale, zero = scale.reshape(1, -1), zero.reshape(1, -1)
        restored = (weights - zero) * scale
        worst = max(worst, float(np.max(np.abs(restored - value.astype(np.float64)))))
        count += 1
    return worst, count


def _latency_us(session: Any, inputs: dict[str, np.ndarray], runs: int = 200) -> float:
    one = {k: v[:1] for k, v in inputs.items()}
    names = [o.name for o in session.get_outputs()]
    feed = {i.name: one[i.name] for i in session.get_inputs()}
    for _ in range(20):
        session.run(names, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(names, feed)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e6)


def quantize_bundle(
    bundle_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    samples: int = 1024,
    min_agreement: float = 0.95,
    force: bool = False,
    tolerance: float = 1e-2,
    per_channel: bool = False,
    overwrite: bool = False,
    seed: int = 0,
) -> QuantizeReport:
    """Writes a dynamic-int8 copy of a bundle's ONNX graph, if its actions agree enough.

    Args:
      bundle_dir: a bundle with an ONNX graph.
      output_dir: the quantized bundle to write.
      samples: sampled time steps to compare (in 8 steps for stateful policies).
      min_agreement: the share of agreeing actions below which nothing is written.
      force: write even below ``min_agreement``.
      tolerance: float actions agree within this share of the action spec's range.
      per_channel: one scale per output column instead of one per weight matrix.
      overwrite: replace an existing ``output_dir``.
      seed: seeds the sampled time steps.

    Returns:
      A QuantizeReport; ``written`` says whether the output exists.

    Raises:
      BundleError: no ONNX graph in the bundle, or one that is already quantized.
      ExportError: an existing output without ``overwrite``, or nothing to quantize.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from exporters.onnx_export import embed_manifest
    from exporters.weights import canonical_initializers, graph_fingerprint

    source = Path(bundle_dir)
    output = Path(output_dir)
    # Only the ONNX graph is read, so a copy holding just it and the manifest will do.
    manifest = bundle.read_manifest(source, check_files=False)
    if "onnx" not in manifest:
        raise BundleError(
            f"{source}: expected a bundle with an ONNX graph, got {manifest['formats']}"
        )
    # Contained, hash-checked, self-contained and matching its manifest copy.
    source_bytes = bundle.read_onnx(source, manifest)
    if "quantization" in manifest:
        raise BundleError(f"{source}: already quantized ({manifest['quantization'].get('method')})")
    if not 0.0 <= min_agreement <= 1.0:
        raise ExportError(f"min_agreement: expected a share in [0, 1], got {min_agreement}")
    if samples < 1:
        raise ExportError(f"samples: expected at least 1, got {samples}")
    if output.exists() and not overwrite:
        raise ExportError(f"{output.absolute()}: already exists; pass overwrite=True to replace it")

    try:
        original = onnx.load_model_from_string(source_bytes)
    except Exception as e:  # protobuf's DecodeError and others
        raise BundleError(f"{source}: not a readable ONNX model ({e})") from e
    with tempfile.TemporaryDirectory(prefix="policy-quantize-") as tmp:
        # quantize_dynamic reads a path: give it a private copy of the checked bytes.
        source_path = Path(tmp) / "source.onnx"
        source_path.write_bytes(source_bytes)
        quantized_path = Path(tmp) / "quantized.onnx"
        with _quiet_root_logger():
            quantize_dynamic(
                str(source_path),
                str(quantized_path),
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
            )
        quantized = onnx.load(str(quantized_path))
    max_diff, count = _max_weight_diff(original, quantized)
    if count == 0:
        raise ExportError(f"{source}: nothing to quantize: the graph has no MatMul/Gemm weights")

    before, after = _session(original.SerializeToString()), _session(quantized.SerializeToString())
    stateful = bool(_initial_state(manifest, 1))
    ranges = _action_ranges(manifest)
    steps = 8 if stateful else 1
    batch = max(1, -(-samples // steps))
    rng = np.random.default_rng(seed)
    states = [_initial_state(manifest, batch), _initial_state(manifest, batch)]
    agree, compared, first_inputs = 0, 0, None
    for step in range(steps):
        time_step = _sample_time_steps(manifest, batch, rng, first=step == 0)
        first_inputs = first_inputs or {**time_step, **states[0]}
        outs = [
            _run(s, {**time_step, **state})
            for s, state in zip((before, after), states, strict=True)
        ]
        states = [_next_state(o) for o in outs]
        # Wrappers (epsilon-greedy, mixtures) repeat the action nest in their
        # parameters, so distribution leaf i belongs to action leaf i mod n.
        per_leaf = [
            _agree(a, b, ranges[i % len(ranges)], tolerance)
            for i, (a, b) in enumerate(
                zip(_actions(manifest, outs[0]), _actions(manifest, outs[1]), strict=True)
            )
        ]
        entries = np.logical_and.reduce(per_leaf) if per_leaf else np.ones(batch, bool)
        agree += int(entries.sum())
        compared += batch
    agreement = agree / compared

    latency_before = _latency_us(before, first_inputs)
    latency_after = _latency_us(after, first_inputs)
    written = agreement >= min_agreement or force
    new_manifest = copy.deepcopy(manifest)
    new_manifest.pop("files", None)
    new_manifest.pop("saved_model", None)
    new_manifest["formats"] = ["onnx"]
    new_manifest["onnx"] = {
        **manifest["onnx"],
        "graph_fingerprint": graph_fingerprint(quantized),
        "initializers": canonical_initializers(quantized),
    }
    new_manifest["quantization"] = {
        "method": METHOD,
        "weight_type": "int8",
        "per_channel": per_channel,
        "source_graph_fingerprint": manifest["onnx"]["graph_fingerprint"],
        "source_sha256": manifest["files"][manifest["onnx"]["file"]]["sha256"],
        "action_agreement": agreement,
        "samples": compared,
        "tolerance": tolerance,
        "max_weight_diff": max_diff,
    }
    embed_manifest(quantized, new_manifest)
    size_after = quantized.ByteSize()
    if written:

        def build(tmp: Path) -> dict[str, Any]:
            onnx.save(quantized, str(tmp / manifest["onnx"]["file"]))
            return new_manifest

        bundle.write_bundle(output, build, overwrite=overwrite)
    return QuantizeReport(
        source=source,
        output=output,
        written=written,
        samples=compared,
        action_agreement=agreement,
        min_agreement=min_agreement,
        tolerance=tolerance,
        max_weight_diff=max_diff,
        quantized_weights=count,
        size_before=len(source_bytes),
        size_after=size_after,
        latency_before_us=latency_before,
        latency_after_us=latency_after,
    )
