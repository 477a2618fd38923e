"""quantize_bundle: an int8 copy of a bundle's policy, judged on the states it will meet.

A quantized policy is only as good as the actions it takes where the policy really
goes, so every measurement here is on *real states*:

* ``env``: episodes of the float policy in a gymnasium environment (episode i resets
  with ``seed + i``); every time step it acted on (with its policy state, for stateful
  policies) is kept. The quantized candidate then plays the same episodes, so the
  report gives its mean return beside the float one.
* ``observations``: an ``.npz`` the user recorded (``observation`` or
  ``observation/<key>`` arrays with one row per state; optional ``step_type``,
  ``reward``, ``discount`` and ``policy_state/...``). Read with ``allow_pickle=False``.

Action agreement is the share of those states on which every action leaf's
representative action (argmax for categoricals, ``loc`` for deterministic and normal
leaves, the mean for uniform ones) is the same (float actions within ``tolerance``
of the action range), both forms fed the same inputs.

Calibration (static activation ranges, GPTQ rounding, refits) uses *other* real
states than those measured, so a candidate fitted to its states cannot pass by
remembering them: with ``env``, as many episodes again of the float policy, reset with
``seed + CALIBRATION_SEED_OFFSET + i``; with ``observations``, the first half of the
rows calibrate and the second half are measured.

What makes int8 work for small policies: a Q-network's action is decided by a gap
between Q-values that can be a few thousandths of their range, so a per-tensor int8
step flips it often. Candidates, from the smallest file to the most faithful:

* ONNX: ``gptq`` (exporters/gptq.py: int8 hidden layers with GPTQ rounding on the
  calibration states and corrected biases; the first and last layers float, the last
  refitted to the float outputs; computes in float. On trained demo policies it
  agrees on 99.6-100% of real states it was not calibrated on, where round-to-nearest
  int8 agrees on 50-94% and float16 weights on 93-99%); and, with
  onnxruntime.quantization, ``dynamic`` (int8 weights, one scale per matrix),
  ``dynamic-per-channel`` (one scale per output column), ``dynamic-per-channel-keep-last``
  (the last MatMul/Gemm layers, which produce the Q-values or logits, stay float),
  ``static-per-channel-keep-last`` (int8 weights and activations as QDQ, activation
  ranges from the calibration states) and ``float16`` weights.
* LiteRT: ``litert-gptq`` (the same GPTQ weights in the bundle's float LiteRT model:
  per-channel int8 weights feeding DEQUANTIZE ops, computing in float); and, from
  TensorFlow's converter on the bundle's SavedModel, ``litert-dynamic-range`` (int8
  weights, float activations), ``litert-int8`` (int8 weights and activations, the
  calibration states as the representative dataset; float inputs and outputs) and
  ``litert-float16``.

``method="auto"`` tries the candidates of the target in order of file size and takes
the first that passes both gates: agreement >= ``min_agreement`` and, with ``env``,
mean return >= the float policy's less ``(1 - min_return_ratio)`` x its magnitude.
Below the gates nothing is written unless ``force`` (then the most faithful candidate
is written). The report lists every candidate tried, with why it was taken or not.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from exporters import formats as export_formats
from exporters import graph_io
from toolkit import bundle, nest
from toolkit.errors import BundleError, ExportError, UnsupportedError

__all__ = [
    "LITERT_METHODS",
    "ONNX_METHODS",
    "Candidate",
    "QuantizeReport",
    "RealStates",
    "quantize_bundle",
]

ONNX_METHODS = (
    "gptq",
    "dynamic",
    "dynamic-per-channel",
    "dynamic-per-channel-keep-last",
    "static-per-channel-keep-last",
    "float16",
)
LITERT_METHODS = ("litert-gptq", "litert-dynamic-range", "litert-int8", "litert-float16")
#: Methods whose activations are int8 too (the others compute in float).
INT8_ACTIVATIONS = ("static-per-channel-keep-last", "litert-int8")
TARGETS = ("onnx", "litert")
#: Largest number of states kept from rollouts (evenly thinned beyond).
MAX_STATES = 20_000
#: Calibration episode i (env) resets with seed + CALIBRATION_SEED_OFFSET + i.
CALIBRATION_SEED_OFFSET = 1_000_000


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One quantization tried: its file size and what it measured.

    Attributes:
      method: one of ONNX_METHODS or LITERT_METHODS.
      size: bytes of the quantized model file.
      agreement: share of the real states on which its actions agree with the float ones.
      mean_return: its mean return over the same episodes (``env`` only, else None).
      float_layers: nodes kept in float (keep-last methods, gptq).
      verdict: "chosen", "rejected: <why>", or "not tried: <why>".
    """

    method: str
    size: int
    agreement: float | None
    mean_return: float | None
    float_layers: tuple[str, ...]
    verdict: str

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["float_layers"] = list(self.float_layers)
        return data


@dataclasses.dataclass(frozen=True)
class QuantizeReport:
    """What ``quantize_bundle`` measured and whether it wrote the output.

    Attributes:
      source, output: the bundles.
      target: "onnx" or "litert".
      written: False when no candidate passed the gates and ``force`` was not given.
      method: the candidate written (or that would have been), None if none ran.
      reason: why that candidate, in one sentence.
      states: real states compared; ``state_source`` says where they came from.
      calibration_states, calibration_source: the other real states calibration used.
      action_agreement: the chosen candidate's agreement on them (0..1).
      min_agreement, tolerance: the agreement gate and the float-action tolerance.
      float_return, quantized_return: mean returns over the same episodes (env only).
      min_return_ratio: the return gate, a share of the float return.
      size_before, size_after: bytes of the float and quantized model files.
      latency_before_us, latency_after_us: median batch-1 graph call, microseconds.
      candidates: every candidate, in the order tried.
    """

    source: Path
    output: Path
    target: str
    written: bool
    method: str | None
    reason: str
    states: int
    state_source: str
    calibration_states: int
    calibration_source: str
    action_agreement: float
    min_agreement: float
    tolerance: float
    float_return: float | None
    quantized_return: float | None
    min_return_ratio: float
    size_before: int
    size_after: int
    latency_before_us: float
    latency_after_us: float
    candidates: list[Candidate]

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["source"], data["output"] = str(self.source), str(self.output)
        data["candidates"] = [c.to_json() for c in self.candidates]
        return data


# --- real states -------------------------------------------------------------------------------


@dataclasses.dataclass
class RealStates:
    """Graph inputs of states a policy really meets, by flat input name, one row each.

    Attributes:
      inputs: ``{input name: array [N, ...]}`` for every graph input (policy states too).
      source: where they came from, for the report.
      env_id, episodes, seed: the rollouts' set-up (env only).
      float_return: the float policy's mean return over them (env only).
    """

    inputs: dict[str, np.ndarray]
    source: str
    env_id: str | None = None
    episodes: int = 0
    seed: int = 0
    float_return: float | None = None

    @property
    def count(self) -> int:
        return len(next(iter(self.inputs.values())))

    def batches(self, size: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, self.count, size):
            yield {k: v[start : start + size] for k, v in self.inputs.items()}

    def split(self) -> tuple[RealStates, RealStates]:
        """(calibration, measured): the first and the second half of the rows.

        One row calibrates and is measured too (said in both sources).
        """
        count = self.count
        if count < 2:
            same = dataclasses.replace(self, source=f"{self.source} (also calibrated on)")
            return same, same
        half = count // 2
        first = {k: v[:half] for k, v in self.inputs.items()}
        second = {k: v[half:] for k, v in self.inputs.items()}
        return (
            dataclasses.replace(
                self, inputs=first, source=f"{self.source}: rows 0-{half - 1} calibrate"
            ),
            dataclasses.replace(
                self, inputs=second, source=f"{self.source}: rows {half}-{count - 1} measured"
            ),
        )


def _input_dtypes(manifest: dict[str, Any]) -> dict[str, tuple[np.dtype, list]]:
    entries = manifest["signatures"]["distribution"]["inputs"]
    return {e["name"]: (np.dtype(e["dtype"]), e["shape"][1:]) for e in entries}


class _Recorder:
    """A policy that plays as the wrapped one and keeps every graph input it was given."""

    def __init__(self, policy: Any, dtypes: dict[str, tuple[np.dtype, list]]):
        self.policy = policy
        self.dtypes = dtypes
        self.rows: list[dict[str, np.ndarray]] = []

    def get_initial_state(self, batch_size: int | None = None) -> Any:
        return self.policy.get_initial_state(batch_size)

    def action(self, time_step: Any, policy_state: Any = ()) -> Any:
        flat = dict(nest.flatten_with_paths(time_step))
        flat.update(nest.flatten_with_paths(policy_state, "policy_state"))
        row = {}
        for name, (dtype, _) in self.dtypes.items():
            value = np.asarray(flat[name], dtype)
            row[name] = value.reshape((-1, *value.shape[1:])) if value.ndim else value[None]
        self.rows.append(row)
        return self.policy.action(time_step, policy_state)


def _play(policy: Any, env_id: str, episodes: int, seed: int) -> list[float]:
    """Mean-able returns of ``episodes`` episodes (episode i resets with ``seed + i``)."""
    from toolkit.environments import driver
    from toolkit.environments.gym_adapter import GymVectorEnvironment

    returns: list[float] = []
    done = 0
    while done < episodes:
        size = min(episodes - done, 32)
        env = _make_env(GymVectorEnvironment, env_id, size)
        try:
            returns += driver.evaluate_policy(env, policy, seed=seed + done).episode_returns
        finally:
            env.close()
        done += size
    return returns


def _make_env(factory: Any, env_id: str, size: int) -> Any:
    try:
        import gymnasium
    except ModuleNotFoundError as e:
        raise UnsupportedError(
            "quantize --env plays episodes with gymnasium (pip install gymnasium)"
        ) from e
    try:
        return factory(env_id, size)
    except gymnasium.error.Error as e:
        raise ExportError(f"env {env_id!r}: {e}") from e


def _float_policy(source: Path, manifest: dict[str, Any]) -> Any:
    import runtimes
    from runtimes import backends

    for backend in backends.installed(manifest.get("formats", [])):
        if backend.tf_free:
            return runtimes.load_policy(source, backend.name, seed=0)
    return runtimes.load_policy(source, seed=0)


def states_from_env(
    source: Path, manifest: dict[str, Any], env_id: str, episodes: int, seed: int
) -> RealStates:
    """Rollouts of the bundle's float policy; every state it acted on."""
    policy = _float_policy(source, manifest)
    _check_env(policy, env_id)
    recorder = _Recorder(policy, _input_dtypes(manifest))
    returns = _play(recorder, env_id, episodes, seed)
    inputs = {
        name: np.concatenate([row[name] for row in recorder.rows]) for name in recorder.dtypes
    }
    count = len(inputs["step_type"])
    if count > MAX_STATES:
        keep = np.linspace(0, count - 1, MAX_STATES).astype(np.int64)
        inputs = {k: v[keep] for k, v in inputs.items()}
    return RealStates(
        inputs,
        f"{env_id}: {len(returns)} episodes of the float policy (seeds {seed}..."
        f"{seed + episodes - 1})",
        env_id=env_id,
        episodes=episodes,
        seed=seed,
        float_return=float(np.mean(returns)),
    )


def _check_env(policy: Any, env_id: str) -> None:
    from toolkit.environments.gym_adapter import GymVectorEnvironment

    env = _make_env(GymVectorEnvironment, env_id, 1)
    try:
        mine = [tuple(s.shape) for s in nest.flatten(policy.time_step_spec.observation)]
        theirs = [tuple(s.shape) for s in nest.flatten(env.observation_spec())]
        if mine != theirs:
            raise ExportError(
                f"env {env_id!r}: expected observations of shapes {mine} (the policy's), "
                f"got {theirs}"
            )
    finally:
        env.close()


def states_from_file(path: Path, manifest: dict[str, Any], root: Path) -> RealStates:
    """States recorded by the user: an .npz of observation arrays, one row per state.

    Missing ``step_type`` means MID steps (FIRST for the first row of a stateful
    policy), missing ``reward``/``discount`` zeros/ones; for a stateful policy without
    ``policy_state/...`` arrays the rows are taken as one sequence and the float graph
    computes the states.
    """
    dtypes = _input_dtypes(manifest)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as e:
        raise ExportError(f"{path}: expected an .npz of arrays (numpy.savez), {e}") from e
    observation_names = [n for n in dtypes if n == "observation" or n.startswith("observation/")]
    missing = [n for n in observation_names if n not in arrays]
    if missing:
        raise ExportError(
            f"{path}: expected arrays {observation_names} (one row per state), "
            f"missing {missing}; found {sorted(arrays)}"
        )
    unknown = sorted(set(arrays) - set(dtypes))
    if unknown:
        raise ExportError(f"{path}: unexpected arrays {unknown}; the graph takes {list(dtypes)}")
    count = len(arrays[observation_names[0]])
    if count < 1:
        raise ExportError(f"{path}: expected at least one state, got 0 rows")
    stateful = any(n.startswith("policy_state/") for n in dtypes)
    inputs = {}
    for name, (dtype, inner) in dtypes.items():
        if name in arrays:
            value = arrays[name]
        elif name == "step_type":
            value = np.ones(count, np.int32)
            if stateful:
                value[0] = 0
        elif name == "discount":
            value = np.ones(count, np.float32)
        elif name == "reward" or name.startswith("policy_state/"):
            value = np.zeros((count, *[d or 1 for d in inner]), dtype)
        else:  # pragma: no cover - every input is one of the above
            raise ExportError(f"{path}: missing array {name!r}")
        if value.shape[:1] != (count,) or (
            all(d is not None for d in inner) and tuple(value.shape[1:]) != tuple(inner)
        ):
            raise ExportError(
                f"{path}: {name}: expected shape ({count}, {', '.join(map(str, inner))}), "
                f"got {value.shape}"
            )
        if value.dtype.kind != dtype.kind and not (value.dtype.kind in "iu" and dtype.kind in "iu"):
            raise ExportError(f"{path}: {name}: expected {dtype.name} values, got {value.dtype}")
        inputs[name] = value.astype(dtype, copy=False)
    if stateful and not any(n.startswith("policy_state/") for n in arrays):
        inputs = _sequence_states(manifest, root, inputs)
    return RealStates(inputs, f"{path.name}: {count} recorded states")


def _sequence_states(
    manifest: dict[str, Any], root: Path, inputs: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The policy states along one recorded sequence, from the float graph."""
    run = _float_runner(manifest, root)
    state = graph_io.initial_state(manifest, 1)
    out = {k: v.copy() for k, v in inputs.items()}
    for i in range(len(inputs["step_type"])):
        for name, value in state.items():
            out[name][i] = value[0]
        row = {k: v[i : i + 1] for k, v in out.items()}
        state = graph_io.next_state(run(row))
    return out


# --- candidates --------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    # onnxruntime.quantization logs "consider pre-processing" warnings on the root logger.
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def last_layers(model: Any) -> list[str]:
    """Names of the MatMul/Gemm nodes with no MatMul/Gemm after them (the output layers)."""
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def feeds_a_layer(node: Any, seen: set[str]) -> bool:
        for output in node.output:
            for user in consumers.get(output, []):
                if user.name in seen:
                    continue
                seen.add(user.name)
                if user.op_type in ("MatMul", "Gemm") or feeds_a_layer(user, seen):
                    return True
        return False

    return [
        node.name
        for node in model.graph.node
        if node.op_type in ("MatMul", "Gemm") and not feeds_a_layer(node, set())
    ]


def _named(model: Any) -> Any:
    """The model with every node named (quantizers exclude nodes by name)."""
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    return model


def _discrete(manifest: dict[str, Any]) -> bool:
    """Whether every action leaf is an integer (chosen by an argmax of the outputs)."""
    from toolkit.specs import array_spec

    leaves = nest.flatten(array_spec.spec_nest_from_json(manifest["specs"]["action"]))
    return bool(leaves) and all(np.dtype(leaf.dtype).kind in "biu" for leaf in leaves)


def _onnx_candidate(
    method: str, model: Any, states: RealStates, tmp: Path, manifest: dict[str, Any]
) -> tuple[bytes, tuple[str, ...]]:
    """One ONNX candidate's model bytes and float layers (``states``: calibration)."""
    import onnx

    if method == "gptq":
        from exporters import gptq

        result = gptq.quantize_model(model, states.inputs, _discrete(manifest))
        return result.model.SerializeToString(), result.float_layers
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    source = tmp / "float.onnx"
    onnx.save(model, str(source))
    target = tmp / f"{method}.onnx"
    keep = tuple(last_layers(model)) if method.endswith("keep-last") else ()
    if method == "float16":
        return _float16_weights(model).SerializeToString(), ()
    with _quiet_root_logger():
        if method.startswith("dynamic"):
            quantize_dynamic(
                str(source),
                str(target),
                weight_type=QuantType.QInt8,
                per_channel="per-channel" in method,
                nodes_to_exclude=list(keep),
                op_types_to_quantize=["MatMul", "Gemm"],
            )
        else:
            batches = list(states.batches(256))

            class Reader(CalibrationDataReader):
                def __init__(self) -> None:
                    self.items = iter(batches)

                def get_next(self) -> dict[str, np.ndarray] | None:
                    return next(self.items, None)

            quantize_static(
                str(source),
                str(target),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                weight_type=QuantType.QInt8,
                activation_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul", "Gemm"],
                nodes_to_exclude=list(keep),
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
    return target.read_bytes(), keep


def _float16_weights(model: Any) -> Any:
    """The model with its MatMul/Gemm weights stored as float16, cast back at load.

    onnxruntime folds the Cast of a constant once, when the session is made, so the
    graph computes in float32 with weights rounded to float16 (11 significant bits
    where int8 keeps 8 with one scale per column).
    """
    from onnx import TensorProto, helper, numpy_helper

    weights = {
        node.input[1]
        for node in model.graph.node
        if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1
    }
    casts = []
    for init in model.graph.initializer:
        if init.name in weights and init.data_type == TensorProto.FLOAT and len(init.dims) == 2:
            name, value = init.name, numpy_helper.to_array(init)
            stored = f"{name}_float16"
            init.CopyFrom(numpy_helper.from_array(value.astype(np.float16), stored))
            casts.append(
                helper.make_node(
                    "Cast", [stored], [name], name=f"{stored}_cast", to=TensorProto.FLOAT
                )
            )
    nodes = casts + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _float_litert(source: Path, manifest: dict[str, Any]) -> bytes:
    """The bundle's float LiteRT model, or its SavedModel converted (float)."""
    from exporters import litert_export

    if "litert" in manifest:
        rel = manifest["litert"]["file"]
        return bundle.read_member(source, rel, key="litert.file", files=manifest["files"])
    return litert_export.convert_saved_model(source / bundle.SAVED_MODEL_DIR, what=str(source))


def _litert_candidate(
    method: str, source: Path, manifest: dict[str, Any], states: RealStates
) -> tuple[bytes, tuple[str, ...]]:
    """One LiteRT candidate's model bytes and float layers (``states``: calibration)."""
    from exporters import litert_export

    if method == "litert-gptq":
        from exporters import gptq

        model, _, kept, _ = gptq.quantize_litert(
            _float_litert(source, manifest), states.inputs, _discrete(manifest)
        )
        return model, kept
    stateful = bool(graph_io.initial_state(manifest, 1))
    signatures = litert_export.SIGNATURES
    quantization: dict[str, Any] = {"dynamic_range": True}
    if method == "litert-float16":
        quantization = {"float16": True}
    elif method == "litert-int8":
        rows = list(states.batches(1))[:: max(1, states.count // 500)]
        quantization = {
            "representative_dataset": litert_export.representative_dataset(rows, stateful),
            "full_int8": True,
        }
        if not stateful:
            # The calibrator refuses a signature without outputs (a stateless policy's
            # get_initial_state); readers do not need it.
            signatures = ("distribution",)
    model = litert_export.convert_saved_model(
        source / bundle.SAVED_MODEL_DIR,
        quantization=quantization,
        what=str(source),
        signatures=signatures,
    )
    return model, ()


# --- measuring ---------------------------------------------------------------------


def _float_runner(manifest: dict[str, Any], root: Path) -> graph_io.Runner:
    if "onnx" in manifest:
        return graph_io.onnx_runner(bundle.read_onnx(root, manifest))
    rel = manifest["litert"]["file"]
    return graph_io.litert_runner(
        bundle.read_member(root, rel, key="litert.file", files=manifest["files"])
    )


def _runner(target: str, model: bytes) -> graph_io.Runner:
    return graph_io.onnx_runner(model) if target == "onnx" else graph_io.litert_runner(model)


def _agreement(
    manifest: dict[str, Any],
    reference: list[dict[str, np.ndarray]],
    run: graph_io.Runner,
    states: RealStates,
    tolerance: float,
) -> float:
    agree = 0
    for batch, want in zip(states.batches(1024), reference, strict=True):
        agree += int(graph_io.agree(manifest, want, run(batch), tolerance).sum())
    return agree / states.count


def _latency_us(run: graph_io.Runner, states: RealStates, calls: int = 300) -> float:
    one = next(states.batches(1))
    for _ in range(20):
        run(one)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        run(one)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e6)


def _candidate_return(
    target: str,
    model: bytes,
    manifest: dict[str, Any],
    states: RealStates,
    tmp: Path,
) -> float:
    """The candidate's mean return over the float policy's episodes (same seeds)."""
    import runtimes

    file = bundle.ONNX_FILE if target == "onnx" else bundle.LITERT_FILE
    trial = copy.deepcopy(manifest)
    trial.pop("files", None)
    trial["formats"] = [target]
    for key in export_formats.names():  # the golden vectors too: float outputs
        if key != target:
            trial.pop(key, None)
    if target == "litert":
        from exporters import litert_export

        # The candidate's own entry (its ops and signatures), as the written bundle has.
        trial[target] = litert_export.manifest_entry(model, file)
    else:
        trial[target] = {**manifest.get(target, {}), "file": file}

    if target == "onnx":
        # Readers check the ONNX file's copy of the manifest against the manifest.
        model = _with_manifest(model, trial)

    def build(folder: Path) -> dict[str, Any]:
        (folder / file).write_bytes(model)
        return trial

    path = bundle.write_bundle(tmp / f"trial-{time.monotonic_ns()}", build)
    policy = runtimes.load_policy(path, target, seed=0)
    returns = _play(policy, states.env_id, states.episodes, states.seed)
    return float(np.mean(returns))


# --- the entry point ---------------------------------------------------------------


def quantize_bundle(
    bundle_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    env: str | None = None,
    observations: str | os.PathLike | None = None,
    episodes: int = 20,
    target: str = "onnx",
    method: str = "auto",
    min_agreement: float = 0.99,
    min_return_ratio: float = 0.95,
    force: bool = False,
    tolerance: float = 1e-2,
    overwrite: bool = False,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> QuantizeReport:
    """Writes an int8 copy of a bundle's policy if it acts like the float one on real states.

    Args:
      bundle_dir: the float bundle (an ONNX graph for target "onnx"; a SavedModel for
        target "litert", since LiteRT quantization converts again).
      output_dir: the quantized bundle to write (the target's format only).
      env: a gymnasium id: real states from ``episodes`` episodes of the float policy,
        and the return gate.
      observations: or an .npz of recorded states (see the module doc).
      episodes: episodes played with ``env`` (per candidate for the return).
      target: "onnx" or "litert".
      method: "auto" or one of ONNX_METHODS / LITERT_METHODS (of the target).
      min_agreement: the share of agreeing actions a candidate needs.
      min_return_ratio: with ``env``, the share of the float mean return it needs (for
        negative returns: a drop of at most ``(1 - ratio) * |float return|``).
      force: write the most faithful candidate even below the gates.
      tolerance: float actions agree within this share of the action spec's range.
      overwrite: replace an existing ``output_dir``.
      seed: episode i resets with ``seed + i``.
      progress: called with a short line as each stage starts.

    Returns:
      A QuantizeReport; ``written`` says whether the output exists.

    Raises:
      BundleError: the bundle lacks what the target needs, or is already quantized.
      ExportError: no real states given, bad arguments, an existing output, or
        nothing to quantize.
    """
    say = progress or (lambda _line: None)
    source, output = Path(bundle_dir), Path(output_dir)
    manifest = bundle.read_manifest(source, check_files=False)
    if target not in TARGETS:
        raise ExportError(f"target: expected one of {list(TARGETS)}, got {target!r}")
    methods = ONNX_METHODS if target == "onnx" else LITERT_METHODS
    if method != "auto" and method not in methods:
        raise ExportError(
            f"method: expected 'auto' or one of {list(methods)} for target {target}, got {method!r}"
        )
    if "quantization" in manifest:
        raise BundleError(f"{source}: already quantized ({manifest['quantization'].get('method')})")
    if target == "onnx" and "onnx" not in manifest:
        raise BundleError(
            f"{source}: expected a bundle with an ONNX graph, got {manifest.get('formats')}"
        )
    if target == "litert" and "saved_model" not in manifest:
        raise BundleError(
            f"{source}: LiteRT quantization converts the bundle's SavedModel again, and "
            f"this bundle has none (formats {manifest.get('formats')})"
        )
    if (env is None) == (observations is None):
        raise ExportError(
            "real states: expected exactly one of env (rollouts of the float policy, e.g. "
            "'CartPole-v1') or observations (an .npz of recorded states)"
        )
    if not 0.0 <= min_agreement <= 1.0:
        raise ExportError(f"min_agreement: expected a share in [0, 1], got {min_agreement}")
    if not 0.0 <= min_return_ratio <= 1.0:
        raise ExportError(f"min_return_ratio: expected a share in [0, 1], got {min_return_ratio}")
    if episodes < 1:
        raise ExportError(f"episodes: expected at least 1, got {episodes}")
    if output.exists() and not overwrite:
        raise ExportError(f"{output.absolute()}: already exists; pass overwrite=True to replace it")
    if target == "litert":
        import importlib.util

        if importlib.util.find_spec("tensorflow") is None:
            raise UnsupportedError(
                "LiteRT quantization converts the SavedModel again, which needs TensorFlow "
                "(pip install 'policy-toolkit[all]'); target onnx needs only onnxruntime"
            )
    # Only what this target reads is checked: a device copy may hold just one format.
    read = [manifest["onnx"]["file"]] if target == "onnx" else [bundle.SAVED_MODEL_DIR]
    bundle.check_bundle_files(source, manifest["files"], only=read)

    if env is not None:
        say(f"play {episodes} episodes of {env} with the float policy")
        states = states_from_env(source, manifest, env, episodes, seed)
        offset = seed + CALIBRATION_SEED_OFFSET
        say(f"play {episodes} more episodes (seeds {offset}...) to calibrate on")
        calibration = states_from_env(source, manifest, env, episodes, offset)
    else:
        calibration, states = states_from_file(Path(observations), manifest, source).split()
    reference_run = _float_runner(manifest, source)
    reference = [reference_run(batch) for batch in states.batches(1024)]

    with tempfile.TemporaryDirectory(prefix="policy-quantize-") as scratch:
        tmp = Path(scratch)
        float_model: bytes | None = None
        if target == "onnx":
            import onnx

            # Contained, hash-checked and self-contained (bundle.read_onnx).
            float_model = bundle.read_onnx(source, manifest)
            try:
                original = _named(onnx.load_model_from_string(float_model))
            except Exception as e:  # protobuf's DecodeError and others
                raise BundleError(f"{source}: not a readable ONNX model ({e})") from e
            if not any(n.op_type in ("MatMul", "Gemm") for n in original.graph.node):
                raise ExportError(
                    f"{source}: nothing to quantize: the graph has no MatMul/Gemm weights"
                )
        built: dict[str, tuple[bytes, tuple[str, ...]]] = {}
        for name in methods if method == "auto" else (method,):
            say(f"quantize: {name}")
            if target == "onnx":
                model, keep = _onnx_candidate(
                    name, copy.deepcopy(original), calibration, tmp, manifest
                )
                # With its own manifest copy (not the source's), so the sizes compared
                # are those a written bundle has (to a few bytes of measured figures).
                own = _quantized_manifest(
                    manifest, target, name, model, keep, states, calibration, 1.0, 500.0, tolerance
                )
                built[name] = (_with_manifest(model, own), keep)
            else:
                built[name] = _litert_candidate(name, source, manifest, calibration)
        if float_model is None:
            float_model = _float_litert(source, manifest)
        size_before = len(float_model)
        order = sorted(built, key=lambda n: (len(built[n][0]), list(built).index(n)))
        candidates: list[Candidate] = []
        chosen: str | None = None
        measured: dict[str, tuple[float, float | None]] = {}
        for name in order:
            model, keep = built[name]
            if chosen is not None:
                candidates.append(
                    Candidate(name, len(model), None, None, keep, "not tried: larger file")
                )
                continue
            say(f"measure: {name} on {states.count} real states")
            agreement = _agreement(manifest, reference, _runner(target, model), states, tolerance)
            mean_return = None
            why = ""
            if agreement < min_agreement:
                why = f"agreement {100 * agreement:.1f}% < {100 * min_agreement:.1f}%"
            elif states.env_id is not None:
                say(f"play {episodes} episodes of {states.env_id} with {name}")
                mean_return = _candidate_return(target, model, manifest, states, tmp)
                floor = return_floor(states.float_return, min_return_ratio)
                if mean_return < floor:
                    why = f"mean return {mean_return:.1f} < {floor:.1f}"
            measured[name] = (agreement, mean_return)
            if why:
                candidates.append(Candidate(name, len(model), agreement, mean_return, keep, why))
            else:
                chosen = name
                candidates.append(Candidate(name, len(model), agreement, mean_return, keep, ""))
        written = chosen is not None or force
        pick = chosen
        if pick is None and measured:
            pick = max(measured, key=lambda n: (measured[n][0], -len(built[n][0])))
        candidates = [
            dataclasses.replace(
                c,
                verdict=(
                    "chosen"
                    if c.method == pick and written
                    else c.verdict
                    if c.verdict.startswith("not tried")
                    else f"rejected: {c.verdict}"
                    if c.verdict
                    else "passed"
                ),
            )
            for c in candidates
        ]
        reason = _reason(pick, chosen, candidates, force, states)
        model, keep = built[pick]
        agreement, mean_return = measured[pick]
        before_run = _runner(target, float_model)
        after_run = _runner(target, model)
        latency_before = _latency_us(before_run, states)
        latency_after = _latency_us(after_run, states)
        new_manifest = _quantized_manifest(
            manifest, target, pick, model, keep, states, calibration, agreement, mean_return,
            tolerance,
        )  # fmt: skip
        if target == "onnx":
            model = _with_manifest(model, new_manifest)
        if written:
            file = manifest["onnx"]["file"] if target == "onnx" else bundle.LITERT_FILE

            def build(folder: Path) -> dict[str, Any]:
                (folder / file).write_bytes(model)
                return new_manifest

            bundle.write_bundle(output, build, overwrite=overwrite)
    return QuantizeReport(
        source=source,
        output=output,
        target=target,
        written=written,
        method=pick,
        reason=reason,
        states=states.count,
        state_source=states.source,
        calibration_states=calibration.count,
        calibration_source=calibration.source,
        action_agreement=agreement,
        min_agreement=min_agreement,
        tolerance=tolerance,
        float_return=states.float_return,
        quantized_return=mean_return,
        min_return_ratio=min_return_ratio,
        size_before=size_before,
        size_after=len(model),
        latency_before_us=latency_before,
        latency_after_us=latency_after,
        candidates=candidates,
    )


def _with_manifest(model: bytes, manifest: dict[str, Any]) -> bytes:
    """ONNX model bytes carrying ``manifest``'s copy (readers compare the two)."""
    import onnx

    from exporters.onnx_export import embed_manifest

    proto = onnx.load_from_string(model)
    embed_manifest(proto, manifest)
    return proto.SerializeToString()


def return_floor(float_return: float, ratio: float) -> float:
    """The lowest mean return the gate accepts: ``ratio`` of the float return, counted
    from below for negative returns (a drop of ``(1 - ratio) * |float return|``)."""
    return float_return - (1.0 - ratio) * abs(float_return)


def _reason(
    pick: str | None,
    chosen: str | None,
    candidates: list[Candidate],
    force: bool,
    states: RealStates,
) -> str:
    gates = "agreement" + (" and return" if states.env_id else "")
    if chosen is not None:
        smaller = [c.method for c in candidates if c.verdict.startswith("rejected")]
        if smaller:
            return (
                f"{chosen}: the smallest file that passed the {gates} gates "
                f"({', '.join(smaller)} did not)"
            )
        return f"{chosen}: the smallest file, and it passed the {gates} gates"
    if force:
        return f"{pick}: forced; no candidate passed the {gates} gates, this one agrees most"
    return f"no candidate passed the {gates} gates; nothing written"


def _quantized_manifest(
    manifest: dict[str, Any],
    target: str,
    method: str,
    model: bytes,
    keep: tuple[str, ...],
    states: RealStates,
    calibration: RealStates,
    agreement: float,
    mean_return: float | None,
    tolerance: float,
) -> dict[str, Any]:
    new = copy.deepcopy(manifest)
    new.pop("files", None)
    for key in export_formats.names():  # the golden vectors too: float outputs
        if key != target:
            new.pop(key, None)
    new["formats"] = [target]
    source_file = manifest.get(target, {}).get("file")
    entry: dict[str, Any] = {
        "method": method,
        "target": target,
        "weight_type": "float16" if method.endswith("float16") else "int8",
        "activations": "int8" if method in INT8_ACTIVATIONS else "float",
        "per_channel": "per-channel" in method
        or method in ("gptq", "litert-gptq", "litert-dynamic-range", "litert-int8"),
        "float_layers": list(keep),
        "states": states.count,
        "state_source": states.source,
        "calibration_states": calibration.count,
        "calibration_source": calibration.source,
        "action_agreement": agreement,
        "tolerance": tolerance,
        "float_return": states.float_return,
        "quantized_return": mean_return,
    }
    if source_file and source_file in manifest.get("files", {}):
        entry["source_sha256"] = manifest["files"][source_file]["sha256"]
    if target == "onnx":
        import onnx

        from exporters.weights import canonical_initializers, graph_fingerprint

        quantized = onnx.load_from_string(model)
        entry["source_graph_fingerprint"] = manifest["onnx"]["graph_fingerprint"]
        new["onnx"] = {
            # No weights map: the quantized graph's initializers are no variable's values.
            **{k: v for k, v in manifest["onnx"].items() if k != "weights"},
            "graph_fingerprint": graph_fingerprint(quantized),
            "initializers": canonical_initializers(quantized),
        }
    else:
        from exporters import litert_export

        new["litert"] = litert_export.manifest_entry(model, bundle.LITERT_FILE)
    new["quantization"] = entry
    return new
