"""The bundle's ``c/`` folder: the policy's deterministic action as dependency-free C99.

``build_c`` turns an ``Mlp`` into float32 weights (or int8 ones with per-channel scales,
``weights="int8"``: ``exporters.micro.c_int8``) and generated C (the generator is the
c backend's, ``runtimes.backends.c.c_files``, so the C users build is the C the backend
compiles), compiles it with ``cc``, and measures it against the float policy on held-out
real states of the environment (agreement and return). Files:

* ``c/policy.c``, ``c/policy.h``: ``int policy_action(const float *observation,
  <action type> *action)``, no heap, no libm beyond ``tanhf``;
* ``c/policy_main.c``: a ``main`` checking golden vectors (held-out states whose float
  decision is not a near-tie, and the float policy's actions);
* ``c/weights.f32``: the weights the C holds, as little-endian float32 (what the c
  backend generates the C from again); with int8 weights ``c/weights.bin`` instead
  (``runtimes.backends.c.CModel.weights_bytes``);
* ``c/held_out_states.f32``, ``c/held_out_actions.bin``: for ``verify``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from exporters.micro import c_int8, package
from exporters.micro.mlp import Mlp
from toolkit.errors import ExportError, UnsupportedError

__all__ = ["build_c", "c_model"]

DIR = "c"
GOLDEN = 16
#: What ``c_weights`` takes.
WEIGHTS = ("float32", "int8")
#: An int8 C export is refused below this agreement with the float policy on the
#: held-out states (issue 27's bar).
MIN_AGREEMENT = 0.99


def c_model(mlp: Mlp, quantized: c_int8.QuantizedMlp | None = None) -> Any:
    """The ``runtimes.backends.c.CModel`` of ``mlp`` (float32 weights), or of
    ``quantized`` (its int8 layers as int8 with per-channel scales)."""
    from runtimes.backends.c import C_TYPES, CModel

    head = mlp.head
    dtype = np.dtype(head.dtype).name
    if dtype not in C_TYPES:
        raise UnsupportedError(f"c export: a {dtype} action; expected one of {list(C_TYPES)}")
    if quantized is not None:
        mlp = quantized.mlp
    values = quantized.values if quantized is not None else (None,) * len(mlp.layers)
    scales = quantized.scales if quantized is not None else (None,) * len(mlp.layers)
    layers = [
        (
            np.ascontiguousarray(layer.weight.T, np.float32)
            if q is None
            else np.ascontiguousarray(q.T, np.int8),
            layer.bias.astype(np.float32),
            layer.activation,
        )
        for layer, q in zip(mlp.layers, values, strict=True)
    ]
    scales = [None if s is None else s.astype(np.float32) for s in scales]
    if head.kind == "argmax":
        return CModel(layers, "argmax", dtype, 1, shift=head.shift, scales=scales)
    f32 = np.float32
    return CModel(
        layers,
        "affine",
        dtype,
        mlp.action_size,
        scale=head.scale.astype(f32),
        offset=head.offset.astype(f32),
        low=head.low.astype(f32),
        high=head.high.astype(f32),
        scales=scales,
    )


def _golden(mlp: Mlp, states: np.ndarray) -> np.ndarray:
    """Held-out states whose float decision is clear (no near-tie float32 could flip)."""
    if not mlp.discrete:
        return states[:GOLDEN]
    y = np.sort(mlp.hidden(states)[-1], axis=1)
    gap = y[:, -1] - y[:, -2] if y.shape[1] > 1 else np.ones(len(y))
    clear = gap > 1e-3 * max(float(np.abs(y).max()), 1e-6)
    return states[clear][:GOLDEN]


def build_c(
    mlp: Mlp,
    env_id: str,
    *,
    episodes: int = 20,
    seed: int = 0,
    weights: str = "float32",
    calibration_episodes: int = 20,
) -> package.MicroContent:
    """The c folder for ``mlp``, measured on ``episodes`` held-out episodes of ``env_id``.

    ``weights="int8"``: int8 weights with per-channel scales chosen on
    ``calibration_episodes`` other episodes (``c_int8``; reset with ``seed + 1_000_000 +
    i``); refused (ExportError) unless the compiled C agrees with the float policy on
    ``MIN_AGREEMENT`` of the held-out states.
    """
    from runtimes.backends.c import CRunner, c_files, golden_main

    if weights not in WEIGHTS:
        raise ExportError(f"c export: c_weights: expected one of {WEIGHTS}, got {weights!r}")
    quantized, extra = None, {}
    if weights == "int8":
        if calibration_episodes < 1:
            raise ExportError("c export: expected at least one calibration episode")
        calibration, _ = package.play(env_id, mlp.act, calibration_episodes, seed + 1_000_000)
        quantized, calibration_share = c_int8.choose(mlp, calibration)
        extra = {
            "calibration_episodes": calibration_episodes,
            "calibration_states": len(calibration),
            "calibration_agreement": calibration_share,
            "int8_layers": quantized.mode,
        }
    model = c_model(mlp, quantized)
    source, header = c_files(model)
    runner = CRunner(model, "c export")
    held_out, float_returns = package.play(env_id, mlp.act, episodes, seed)
    float_actions = mlp.act(held_out)
    c_actions = runner(held_out.astype(np.float32)).reshape(float_actions.shape)
    if quantized is not None:
        share = c_int8.agreement(mlp, float_actions, c_actions)
        if share < MIN_AGREEMENT:
            what = "" if mlp.discrete else f" within {c_int8.ACTION_TOLERANCE:.0%} of its range"
            raise ExportError(
                f"c export: int8 weights agree with the float policy{what} on {share:.2%} "
                f"of {len(held_out)} held-out states of {env_id}; expected at least "
                f"{MIN_AGREEMENT:.0%}: export with float32 C weights instead"
            )
        extra["int8_agreement"] = share

    def act_c(x: np.ndarray) -> np.ndarray:
        return runner(x).reshape((len(x), *mlp.head.shape))

    _, c_returns = package.play(env_id, act_c, episodes, seed)
    # int8: the golden actions are the quantized model's (what the C computes), on
    # states where its own decision is clear.
    reference = quantized.mlp if quantized is not None else mlp
    golden = _golden(reference, held_out).astype(np.float32)
    golden_out = reference.act(golden.astype(np.float64)).reshape(len(golden), -1)
    tolerance = 1e-4 * max(1.0, float(np.abs(golden_out).max()) if golden_out.size else 1.0)
    kept = held_out[: package.KEPT].astype(np.float32)
    action_dtype = "int32" if mlp.discrete else "float32"
    widest = max(max(w.shape[0] for w, _, _ in model.layers), model.features)
    weights_file = f"{DIR}/weights.bin" if model.int8 else f"{DIR}/weights.f32"
    files = {
        f"{DIR}/policy.c": source.encode(),
        f"{DIR}/policy.h": header.encode(),
        f"{DIR}/policy_main.c": golden_main(model, golden, golden_out, tolerance).encode(),
        weights_file: model.weights_bytes(),
        f"{DIR}/held_out_states.f32": kept.astype("<f4").tobytes(),
        f"{DIR}/held_out_actions.bin": float_actions[: package.KEPT]
        .astype("<i4" if mlp.discrete else "<f4")
        .tobytes(),
    }
    head = mlp.head
    action: dict[str, Any] = {
        "kind": head.kind,
        "dtype": model.dtype,
        "shape": list(head.shape),
        "shift": int(head.shift),
    }
    if head.kind == "affine":
        for key in ("scale", "offset", "low", "high"):
            values = np.asarray(getattr(model, key), np.float64)
            big = float(np.finfo(np.float32).max)
            action[key] = [float(v) for v in np.clip(values, -big, big)]
    section = {
        "file": f"{DIR}/policy.c",
        "header": f"{DIR}/policy.h",
        "main": f"{DIR}/policy_main.c",
        "weights": weights_file,
        "weight_type": weights,
        "flash_bytes": len(files[weights_file]),
        "stack_bytes": 2 * widest * 4,
        "features": mlp.inputs,
        "observation": list(mlp.observation),
        "layers": [
            {
                "inputs": int(w.shape[1]),
                "outputs": int(w.shape[0]),
                "activation": a,
                **({"weights": "float32" if s is None else "int8"} if model.int8 else {}),
            }
            for (w, _, a), s in zip(model.layers, model.scales, strict=True)
        ],
        "action": action,
        "held_out": {
            "states": f"{DIR}/held_out_states.f32",
            "actions": f"{DIR}/held_out_actions.bin",
            "rows": len(kept),
            "action_dtype": action_dtype,
        },
        "measured": {
            "env": env_id,
            "episodes": episodes,
            "seed": seed,
            "held_out_states": len(held_out),
            "float_return": float(np.mean(float_returns)),
            "c_return": float(np.mean(c_returns)),
            **package._agreement(mlp, float_actions, c_actions),
            **extra,
        },
    }
    return package.MicroContent(files, section)
