"""Target ``micro``: the bundle's deterministic action as a TFLite Micro int8 model.

The candidates are ``exporters.micro``'s (the builder of ``export --format micro``):

* ``micro-int8``: int8 weights and activations, int32 biases;
* ``micro-int16``: int8 weights, int16 activations (TFLite's 16x8 kernels), for
  Q-networks whose decisions hang on gaps int8 activations lose.

Both read the policy's float ONNX graph as an MLP (``exporters.micro.mlp``), take their
per-feature preamble and activation ranges from the calibration states (a Q-network's
layers then fine-tuned through their quantization on them, ``exporters.micro.distill``,
when that agrees on more of them: the bundle's float policy is unchanged), and are measured
through TFLite Micro's own interpreter on the other, measured states. A micro model
outputs the deterministic action only (a greedy Q policy's argmax, a deterministic
actor's action, a stochastic policy's mode), not distribution parameters, so agreement is
that action against the float graph's mode on each measured state (``agreement``): equal
for discrete actions, within ``tolerance`` of the action range for float ones.

The bundle written holds the ``micro/`` folder ``export --format micro`` writes (model,
C array, op list, arena, golden vectors, held-out states for ``verify``), the held-out
states being the first measured ones and their actions the float graph's.

Needs onnx and onnxruntime (the float graph) and tflite-micro; no TensorFlow.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from exporters import graph_io
from exporters.micro import int8, package, tflite_model
from exporters.quantize.source import FloatBundle
from toolkit.errors import BundleError

__all__ = ["Bound", "Prepared", "bind", "check", "prepare"]

WHAT = "quantize --target micro"
#: Bits of the activations per method.
BITS = {"micro-int8": 8, "micro-int16": 16}


def check(source: FloatBundle) -> list[str]:
    """The members read (the ONNX graph); BundleError if the bundle has none."""
    if not source.has("onnx"):
        raise BundleError(
            f"{source.root}: {WHAT} reads the policy's float ONNX graph, and this bundle has "
            f"none (formats {source.formats})"
        )
    return [source.onnx_file]


@dataclasses.dataclass
class _Built:
    """One candidate: its quantized layers and the arena TFLite Micro runs it in."""

    model: int8.QModel
    arena: int
    agreement: float | None = None


class Prepared:
    """What every candidate starts from, read and checked before any episode.

    Attributes:
      float_model: the float ONNX graph's bytes (the size and latency compared with).
      mlp: its deterministic action as dense layers (UnsupportedError naming a layer
        a micro model cannot compute).
      built: each candidate's model bytes -> its ``_Built``.
    """

    def __init__(self, source: FloatBundle):
        import onnx

        from exporters.micro import mlp as mlp_lib

        self.float_model = source.read_onnx()
        try:
            proto = onnx.load_model_from_string(self.float_model)
        except Exception as e:  # protobuf's DecodeError and others
            raise BundleError(f"{source.root}: not a readable ONNX model ({e})") from e
        self.mlp = mlp_lib.extract(proto, source.layout, WHAT)
        self.built: dict[bytes, _Built] = {}


def prepare(source: FloatBundle) -> Prepared:
    return Prepared(source)


def bind(prepared: Prepared, source: FloatBundle, states: Any) -> Bound:
    """The target for one run: its manifest entry and files hold the measured states."""
    return Bound(prepared, source, states)


class Bound:
    """The target interface (``targets`` module doc) for one run's measured states.

    Attributes:
      features: the measured states as flat float observations ``[N, inputs]``.
      float_actions: the float graph's mode on them ``[N, *shape]``.
    """

    def __init__(self, prepared: Prepared, source: FloatBundle, states: Any):
        self.prepared = prepared
        self.source = source
        self.states = states
        mlp = prepared.mlp
        self.features = mlp.features(states.inputs).astype(np.float32)
        run = source.float_runner()
        # The float graph's own mode (not the MLP read from it): what is compared with.
        parts = [graph_io.actions(source.layout, run(batch))[0] for batch in states.batches(1024)]
        self.float_actions = np.concatenate(parts).reshape((states.count, *mlp.head.shape))

    def build(
        self, method: str, prepared: Prepared, source: FloatBundle, calibration: Any, tmp: Path
    ) -> tuple[bytes, tuple[str, ...]]:
        """One candidate's model bytes (calibrated on ``calibration``: RealStates)."""
        from runtimes.backends.micro import smallest_arena

        x = prepared.mlp.features(calibration.inputs)
        quantized = package.calibrated(prepared.mlp, x, BITS[method])
        data = tflite_model.build(quantized)
        prepared.built[data] = _Built(quantized, smallest_arena(data, package.MODEL_FILE))
        return data, ()

    def _interpreter(self, model: bytes) -> Any:
        from runtimes.backends.micro import MicroModel

        built = self.prepared.built[model]
        return MicroModel(model, built.arena, self.prepared.mlp.inputs, package.MODEL_FILE)

    def _actions(self, model: bytes, x: np.ndarray) -> np.ndarray:
        return _actions_of(self.prepared.mlp, self._interpreter(model)(x))

    def agreement(self, model: bytes, tolerance: float) -> float:
        """The share of measured states where TFLite Micro's action is the float mode
        (float actions: within ``tolerance`` of the action range, or of max(1, |a|))."""
        got = self._actions(model, self.features).reshape(self.states.count, -1)
        want = self.float_actions.reshape(self.states.count, -1)
        if self.prepared.mlp.discrete:
            same = np.all(got == want, axis=1)
        else:
            want64, got64 = want.astype(np.float64), got.astype(np.float64)
            ranges = graph_io.action_ranges(self.source.layout)[0]
            scale = (
                np.asarray(ranges, np.float64).reshape(-1)
                if ranges is not None
                else np.maximum(1.0, np.abs(want64))
            )
            same = np.all(np.abs(want64 - got64) <= tolerance * scale, axis=1)
        agreement = float(np.mean(same))
        self.prepared.built[model].agreement = agreement
        return agreement

    def format_entry(self, source: FloatBundle, model: bytes) -> dict[str, Any]:
        """The ``micro`` section ``export --format micro`` writes, for this candidate."""
        built = self.prepared.built[model]
        mlp, states = self.prepared.mlp, self.states
        head = mlp.head
        measured: dict[str, Any] = {
            "state_source": states.source,
            "held_out_states": states.count,
        }
        if states.env_id is not None:
            measured.update(env=states.env_id, episodes=states.episodes, seed=states.seed)
            measured["float_return"] = states.float_return
        if built.agreement is not None and mlp.discrete:
            measured["agreement"] = built.agreement
        return {
            "file": package.MODEL_FILE,
            "source": package.SOURCE_FILE,
            "header": package.HEADER_FILE,
            "ops": tflite_model.ops_of(model),
            "flash_bytes": len(model),
            "arena_bytes": built.arena,
            "activations": built.model.activations,
            "features": mlp.inputs,
            "observation": list(mlp.observation),
            "action": {
                "kind": head.kind,
                "dtype": head.dtype,
                "shape": list(head.shape),
                "shift": int(head.shift),
            },
            "quantization": built.model.to_json(),
            "held_out": {
                "states": package.STATES_FILE,
                "actions": package.ACTIONS_FILE,
                "rows": min(package.KEPT, states.count),
                "action_dtype": "int32" if mlp.discrete else "float32",
            },
            "measured": measured,
        }

    def finish(self, model: bytes, manifest: dict[str, Any]) -> bytes:
        """The model file as written (TFLite models carry no manifest copy)."""
        return model

    def files(self, model: bytes, manifest: dict[str, Any]) -> dict[str, bytes]:
        """Every file of the ``micro/`` folder, by bundle path."""
        mlp = self.prepared.mlp
        section = manifest["micro"]
        kept = self.features[: section["held_out"]["rows"]]
        golden_in = kept[: package.GOLDEN]
        golden_out = self._actions(model, golden_in)
        source, header = package.c_array_files(
            model, section["arena_bytes"], section["ops"], mlp, golden_in, golden_out
        )
        actions = self.float_actions[: len(kept)].reshape(len(kept), -1)
        return {
            package.MODEL_FILE: model,
            package.SOURCE_FILE: source.encode(),
            package.HEADER_FILE: header.encode(),
            package.STATES_FILE: kept.astype("<f4").tobytes(),
            package.ACTIONS_FILE: actions.astype("<i4" if mlp.discrete else "<f4").tobytes(),
        }

    def runner(self, model: bytes) -> graph_io.Runner:
        """A runner of the float ONNX graph, or of a candidate (its action, ``action``)."""
        if model is self.prepared.float_model or model not in self.prepared.built:
            return graph_io.onnx_runner(model)
        interpreter = self._interpreter(model)
        mlp = self.prepared.mlp

        def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {"action": _actions_of(mlp, interpreter(mlp.features(inputs)))}

        return run


def _actions_of(mlp: Any, out: np.ndarray) -> np.ndarray:
    """The actions from a micro model's outputs, as the micro backend reads them."""
    from runtimes.backends.micro import actions_of

    head = mlp.head
    action = {"kind": head.kind, "dtype": head.dtype, "shape": head.shape, "shift": head.shift}
    return actions_of({"action": action}, out)
