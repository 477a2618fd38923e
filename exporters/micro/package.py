"""The bundle's ``micro/`` folder: a calibrated int8 model and what a device build needs.

``build_micro`` takes the policy's float ``Mlp`` and real states: it plays the float
policy's deterministic action in the environment (``play``) for calibration episodes and
for other, held-out episodes, quantizes on the first, measures the model through TFLite
Micro's own interpreter on the second (agreement with the float action, and the return
of episodes it plays itself), and writes:

* ``micro/policy.tflite``: the int8 model (``exporters.micro.tflite_model``);
* ``micro/policy_model.cc``/``.h``: the model as a 16-byte aligned C array, the measured
  arena size, the op resolver's list (``POLICY_MODEL_ADD_OPS``) and golden vectors (the
  first held-out states and the actions TFLite Micro computes for them);
* ``micro/held_out_states.f32`` and ``micro/held_out_actions.bin``: held-out real states
  (little-endian float32 rows) and the float policy's actions on them, which ``verify``
  runs the model on again (verify has no environment; these are real states the
  quantizer never saw).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from exporters.micro import int8, tflite_model
from exporters.micro.mlp import Mlp
from toolkit.errors import ExportError

__all__ = [
    "DIR",
    "OP_METHODS",
    "MicroContent",
    "build_micro",
    "c_array_files",
    "play",
]

DIR = "micro"
MODEL_FILE = f"{DIR}/policy.tflite"
SOURCE_FILE = f"{DIR}/policy_model.cc"
HEADER_FILE = f"{DIR}/policy_model.h"
STATES_FILE = f"{DIR}/held_out_states.f32"
ACTIONS_FILE = f"{DIR}/held_out_actions.bin"
#: Golden vectors written into the C source.
GOLDEN = 16
#: Held-out states kept for verify (the rest only measured at export).
KEPT = 2000

#: What ``activations`` takes.
ACTIVATIONS = ("auto", "int8", "int16")
#: ``auto`` keeps int8 when it agrees with the float policy on this share of calibration
#: states.
AUTO_AGREEMENT = 0.995

#: The op resolver's method per builtin op (tflite::MicroMutableOpResolver).
OP_METHODS = {
    "ADD": "AddAdd",
    "ARG_MAX": "AddArgMax",
    "DEQUANTIZE": "AddDequantize",
    "FULLY_CONNECTED": "AddFullyConnected",
    "MAXIMUM": "AddMaximum",
    "MINIMUM": "AddMinimum",
    "MUL": "AddMul",
    "QUANTIZE": "AddQuantize",
    "TANH": "AddTanh",
}


@dataclasses.dataclass
class MicroContent:
    """What the micro format writes: files by bundle path, and its manifest section."""

    files: dict[str, bytes]
    section: dict[str, Any]


def env_option(options: dict[str, Any], what: str) -> str:
    """The export option ``env`` (``export --env``), which the micro targets need."""
    env_id = options.get("env")
    if not env_id:
        raise ExportError(
            f"{what}: expected real states to calibrate on: an environment (export --env "
            "ENV_ID, or export_policy(..., format_options={'env': ENV_ID}))"
        )
    return str(env_id)


def mlp_of(module: Any, options: dict[str, Any], what: str) -> Mlp:
    """A traced policy's deterministic action as an ``Mlp`` (read from its ONNX graph)."""
    from exporters import export, onnx_export
    from exporters.micro import mlp as mlp_lib
    from toolkit.bundle.layout import Layout

    model, _ = onnx_export.onnx_model_and_weights(
        module, options.get("opset", onnx_export.DEFAULT_OPSET)
    )
    manifest = export.manifest_for(module, [], None, {})
    manifest["files"] = {}
    layout = Layout.of(manifest, what, owned=True)
    return mlp_lib.extract(model, layout, what)


def play(
    env_id: str, act: Any, episodes: int, seed: int, max_states: int | None = None
) -> tuple[np.ndarray, list[float]]:
    """``episodes`` episodes of ``act`` (flat float observations ``[1, n]`` -> actions
    ``[1, ...]``) in a gymnasium environment, episode i reset with ``seed + i``.

    Returns:
      The observations acted on ``[N, n]`` (float64) and each episode's return.
    """
    import gymnasium as gym

    try:
        env = gym.make(env_id)
    except Exception as e:  # gymnasium raises several kinds for an unknown id
        raise ExportError(f"--env: cannot make {env_id!r}: {e}") from e
    states, returns = [], []
    try:
        for i in range(episodes):
            obs, _ = env.reset(seed=seed + i)
            total, done = 0.0, False
            while not done:
                x = np.asarray(obs, np.float64).reshape(1, -1)
                states.append(x[0])
                action = np.asarray(act(x))[0]
                if action.ndim == 0:
                    action = action.item()
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
    finally:
        env.close()
    return np.asarray(states, np.float64), returns


def _agreement(mlp: Mlp, want: np.ndarray, got: np.ndarray) -> dict[str, float]:
    if mlp.discrete:
        return {"agreement": float(np.mean(want.reshape(-1) == got.reshape(-1)))}
    error = np.abs(want.reshape(len(want), -1) - got.reshape(len(got), -1))
    span = mlp.head.high - mlp.head.low
    span = np.where(np.isfinite(span), span, 1.0)
    return {
        "max_action_error": float(error.max()),
        "mean_action_error": float(error.mean()),
        "action_range": [float(v) for v in span],
    }


def build_micro(
    mlp: Mlp,
    env_id: str,
    *,
    episodes: int = 20,
    calibration_episodes: int = 20,
    seed: int = 0,
    activations: str = "auto",
) -> MicroContent:
    """The micro folder for ``mlp``, calibrated and measured on ``env_id`` (module doc).

    Calibration episodes reset with ``seed + 1_000_000 + i``, held-out ones with
    ``seed + i``: quantization and measurement never share a state. ``activations``:
    ``int8``, ``int16`` (TFLite's 16x8 kernels: int8 weights, int16 activations) or
    ``auto`` (``choose``).
    """
    from runtimes.backends.micro import MicroModel, smallest_arena

    if episodes < 1 or calibration_episodes < 1:
        raise ExportError("micro export: expected at least one episode of each kind")
    if activations not in ACTIVATIONS:
        raise ExportError(
            f"micro export: activations: expected one of {ACTIVATIONS}, got {activations!r}"
        )
    calibration, _ = play(env_id, mlp.act, calibration_episodes, seed + 1_000_000)
    held_out, float_returns = play(env_id, mlp.act, episodes, seed)
    model = choose(mlp, calibration, activations, seed)
    data = tflite_model.build(model)
    arena = smallest_arena(data, MODEL_FILE)
    interpreter = MicroModel(data, arena, mlp.inputs, MODEL_FILE)

    def act_micro(x: np.ndarray) -> np.ndarray:
        return _action(mlp, interpreter(x))

    float_actions = mlp.act(held_out)
    micro_actions = act_micro(held_out.astype(np.float32))
    _, micro_returns = play(env_id, act_micro, episodes, seed)
    measured = {
        "env": env_id,
        "episodes": episodes,
        "calibration_episodes": calibration_episodes,
        "seed": seed,
        "held_out_states": len(held_out),
        "calibration_states": len(calibration),
        "float_return": float(np.mean(float_returns)),
        "micro_return": float(np.mean(micro_returns)),
        **_agreement(mlp, float_actions, micro_actions),
    }
    ops = tflite_model.ops_of(data)
    kept = held_out[:KEPT].astype(np.float32)
    kept_actions = float_actions[:KEPT]
    action_dtype = "int32" if mlp.discrete else "float32"
    golden_in = kept[:GOLDEN]
    golden_out = micro_actions[:GOLDEN]
    source, header = c_array_files(data, arena, ops, mlp, golden_in, golden_out)
    files = {
        MODEL_FILE: data,
        SOURCE_FILE: source.encode(),
        HEADER_FILE: header.encode(),
        STATES_FILE: kept.astype("<f4").tobytes(),
        ACTIONS_FILE: np.asarray(kept_actions)
        .astype(action_dtype)
        .astype("<i4" if mlp.discrete else "<f4")
        .tobytes(),
    }
    head = mlp.head
    section = {
        "file": MODEL_FILE,
        "source": SOURCE_FILE,
        "header": HEADER_FILE,
        "ops": ops,
        "flash_bytes": len(data),
        "arena_bytes": arena,
        "activations": model.activations,
        "features": mlp.inputs,
        "observation": list(mlp.observation),
        "action": {
            "kind": head.kind,
            "dtype": head.dtype,
            "shape": list(head.shape),
            "shift": int(head.shift),
        },
        "quantization": model.to_json(),
        "held_out": {
            "states": STATES_FILE,
            "actions": ACTIONS_FILE,
            "rows": len(kept),
            "action_dtype": action_dtype,
        },
        "measured": measured,
    }
    return MicroContent(files, section)


def calibrated(
    mlp: Mlp, calibration: np.ndarray, bits: int, seed: int = 0, steps: int | None = None
) -> int8.QModel:
    """The quantized model for ``bits``-bit activations: ``int8.quantize``'s (GPTQ
    rounding, the refitted centred head), then, for a Q-network, its quantization-aware
    fine-tuning (``exporters.micro.distill``, started from it): whichever agrees with the
    float policy on more calibration states (the exact integer replay, ``int8.simulate``).
    Measured on 5 trained CartPole policies (benchmarks/micro_bench.py), fine-tuning took
    the agreement on 10,000 held-out states from 98.2-99.5% to 99.3-99.8% with int16
    activations, and from 74.7-95.4% to 89.0-95.6% with int8. ``steps``: the fine-tuning's
    (default ``distill.STEPS``)."""
    from exporters.micro import distill

    x = np.asarray(calibration, np.float64)
    model = int8.quantize(mlp, x, bits=bits)
    if not mlp.discrete:
        return model
    student = distill.fine_tune(mlp, x, bits, seed=seed, steps=steps, start=model)
    if student is None:
        return model
    want = np.argmax(mlp.hidden(x)[-1], axis=1)
    tuned = student.quantize(x, bits, want)

    def agreement(candidate: int8.QModel) -> float:
        out = int8.simulate(candidate, x.astype(np.float32), outputs=True)
        return float(np.mean(np.argmax(out, axis=1) == want))

    return tuned if student.steps and agreement(tuned) > agreement(model) else model


def choose(mlp: Mlp, calibration: np.ndarray, activations: str, seed: int = 0) -> int8.QModel:
    """The quantized model (``calibrated``): int8, or with ``auto`` int16 activations
    when the int8 model's decisions agree with the float policy's on fewer than
    ``AUTO_AGREEMENT`` of the calibration states (measured with the exact integer replay,
    ``int8.simulate``; never on the held-out states, which measure the result). A
    Q-network's decision hangs on Q-value gaps of a thousandth of their range, which int8
    hidden activations lose (89-96% agreement on trained CartPole even fine-tuned)."""
    if activations == "int16":
        return calibrated(mlp, calibration, 16, seed)
    model = calibrated(mlp, calibration, 8, seed)
    if activations == "int8":
        return model
    want = mlp.act(calibration)
    got = int8.simulate(model, calibration.astype(np.float32))
    if mlp.discrete:
        good = float(np.mean(want == got)) >= AUTO_AGREEMENT
    else:
        span = np.where(np.isfinite(mlp.head.high - mlp.head.low), mlp.head.high - mlp.head.low, 1)
        error = np.abs(want - got).reshape(len(got), -1) / span
        good = float(np.quantile(error.max(axis=1), AUTO_AGREEMENT)) <= 0.05
    return model if good else calibrated(mlp, calibration, 16, seed)


def _action(mlp: Mlp, out: np.ndarray) -> np.ndarray:
    """The policy's action from the micro model's outputs (the argmax index plus the
    categorical's shift, or the float action), ``[N, *shape]``."""
    head = mlp.head
    n = len(out)
    if head.kind == "argmax":
        index = np.asarray(out, np.int64).reshape(n) + head.shift
        return index.astype(head.dtype).reshape((n, *head.shape))
    return np.asarray(out, np.float32).astype(head.dtype).reshape((n, *head.shape))


def _c_floats(values: np.ndarray) -> str:
    return ", ".join(f"{float(v)!r}f" for v in np.asarray(values, np.float32).reshape(-1))


def c_array_files(
    model: bytes,
    arena: int,
    ops: list[str],
    mlp: Mlp,
    golden_in: np.ndarray,
    golden_out: np.ndarray,
) -> tuple[str, str]:
    """``policy_model.cc`` and ``policy_model.h``: the model as a 16-byte aligned array,
    its arena size, op list and golden vectors."""
    head = mlp.head
    k = int(np.prod(head.shape, dtype=np.int64)) if head.kind != "argmax" else 1
    out_type = "int32_t" if head.kind == "argmax" else "float"
    adds = " \\\n".join(f"  (resolver).{OP_METHODS[op]}();" for op in ops)
    header = f"""// The policy as a TFLite Micro model (policy-toolkit micro export). Generated.
#ifndef POLICY_MODEL_H_
#define POLICY_MODEL_H_

#include <stdint.h>

// The flatbuffer, 16-byte aligned (flash).
extern const unsigned char g_policy_model[];
extern const unsigned int g_policy_model_len;

// The tensor arena TFLite Micro's interpreter needs (measured), in bytes.
#define POLICY_MODEL_ARENA_BYTES {arena}
// Input: float32 [1, {mlp.inputs}], raw observation features (the model scales them).
#define POLICY_MODEL_FEATURES {mlp.inputs}
// Output: {
        "the int32 argmax index [1]; the action is index + POLICY_MODEL_ACTION_SHIFT"
        if head.kind == "argmax"
        else f"the float32 action [1, {k}]"
    }.
#define POLICY_MODEL_ACTION_SIZE {k}
#define POLICY_MODEL_ACTION_SHIFT {int(head.shift)}

// The ops to register: tflite::MicroMutableOpResolver<{len(ops)}> resolver;
// POLICY_MODEL_ADD_OPS(resolver);
#define POLICY_MODEL_OPS {len(ops)}
#define POLICY_MODEL_ADD_OPS(resolver) \\
{adds}

// Golden vectors: held-out real observations and the model's outputs for them.
#define POLICY_MODEL_GOLDEN {len(golden_in)}
extern const float g_policy_golden_inputs[];
extern const {out_type} g_policy_golden_outputs[];

#endif  // POLICY_MODEL_H_
"""
    rows = []
    for start in range(0, len(model), 12):
        rows.append("  " + ", ".join(f"0x{b:02x}" for b in model[start : start + 12]) + ",")
    if head.kind == "argmax":
        outputs = np.asarray(golden_out, np.int64).reshape(-1) - head.shift
        golden = ", ".join(str(int(v)) for v in outputs)
    else:
        golden = _c_floats(golden_out)
    source = f"""// The policy as a TFLite Micro model (policy-toolkit micro export). Generated.
#include "policy_model.h"

alignas(16) const unsigned char g_policy_model[] = {{
{chr(10).join(rows)}
}};
const unsigned int g_policy_model_len = {len(model)};

const float g_policy_golden_inputs[] = {{{_c_floats(golden_in)}}};
const {out_type} g_policy_golden_outputs[] = {{{golden}}};
"""
    return source, header
