"""The micro format: ``micro/``, an int8 TFLite Micro model of the deterministic action.

A LiteRT flatbuffer computing in int8 (int8 weights and activations, int32 biases),
static batch 1, builtin ops TFLite Micro registers, behind a float per-feature preamble
(so a device feeds raw sensor values) and ending in an int32 ARG_MAX (discrete actions)
or the float action (continuous). It computes the policy's deterministic action only: a
greedy Q policy's argmax, a deterministic actor's action, a stochastic policy's mode
(``exporters.micro.mlp``). It is calibrated on real states: export plays the float policy
in the environment given as the export option ``env`` (``export --env``); see
``exporters.micro.package`` for the files and what is measured.

``verify`` cannot compare an int8 model by tolerance (it differs by design): the format
has no ``distribution`` runner, and its check runs the model through TFLite Micro on the
held-out real states stored at export and requires agreement with the float policy's
actions (``MIN_AGREEMENT`` of them, discrete) or a bounded action error (continuous).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from exporters.formats.base import Format, Runner
from toolkit.bundle import files as bundle_files
from toolkit.bundle.layout import FormatEntry, Layout
from toolkit.errors import BundleError, UnsupportedError

__all__ = ["FORMAT", "MAX_ACTION_ERROR", "MIN_AGREEMENT", "MicroFormat", "read_model"]

#: verify's floor: the share of held-out states where the micro action is the float one.
MIN_AGREEMENT = 0.99
#: verify's bound (continuous): the largest action error as a share of the action range.
MAX_ACTION_ERROR = 0.1
#: The largest micro model read (a micro controller's flash is a few MiB at most).
MAX_MODEL_BYTES = 16 << 20

_PATH = {"$ref": "#/$defs/relativePath"}
#: The held-out real states a target of the deterministic action is verified on.
HELD_OUT_SCHEMA = {
    "type": "object",
    "required": ["states", "actions", "rows", "action_dtype"],
    "additionalProperties": False,
    "properties": {
        "states": _PATH,
        "actions": _PATH,
        "rows": {"type": "integer", "minimum": 1, "maximum": 100_000},
        "action_dtype": {"enum": ["int32", "float32"]},
    },
}
_COUNT = {"type": "integer", "minimum": 0}
_SHARE = {"type": "number", "minimum": 0, "maximum": 1}
#: What export and quantize measured (micro and c), as ``describe`` and inspect read it:
#: each known entry typed, so a manifest with another kind of value is refused at load.
MEASURED_SCHEMA = {
    "type": "object",
    "maxProperties": 64,
    "properties": {
        "env": {"type": "string", "maxLength": 256},
        "state_source": {"type": "string", "maxLength": 4096},
        "episodes": _COUNT,
        "calibration_episodes": _COUNT,
        "seed": {"type": "integer"},
        "held_out_states": _COUNT,
        "calibration_states": _COUNT,
        "float_return": {"type": "number"},
        "micro_return": {"type": "number"},
        "c_return": {"type": "number"},
        "agreement": _SHARE,
        "int8_agreement": _SHARE,
        "calibration_agreement": _SHARE,
        "max_action_error": {"type": "number"},
        "mean_action_error": {"type": "number"},
        "action_range": {"type": "array", "maxItems": 1 << 16, "items": {"type": "number"}},
        "int8_layers": {"type": "string", "maxLength": 64},
    },
}
OBSERVATION_SCHEMA = {
    "type": "array",
    "minItems": 1,
    "maxItems": 256,
    "items": {"type": "string", "maxLength": 500},
}
_NUMBER = {"type": "number"}


class MicroFormat(Format):
    name = "micro"
    label = "TFLite Micro"
    default = False
    export_needs = ("tensorflow", "onnx", "tflite_micro", "gymnasium")
    runner_needs = ("tflite_micro",)
    schema = {
        "type": "object",
        "required": [
            "file",
            "source",
            "header",
            "ops",
            "flash_bytes",
            "arena_bytes",
            "features",
            "observation",
            "action",
            "held_out",
        ],
        "additionalProperties": False,
        "properties": {
            "file": _PATH,
            "source": _PATH,
            "header": _PATH,
            "ops": {
                "type": "array",
                "maxItems": 64,
                "items": {"type": "string", "maxLength": 64},
            },
            "flash_bytes": {"type": "integer", "minimum": 0},
            "arena_bytes": {"type": "integer", "minimum": 16, "maximum": 1 << 22},
            "activations": {"enum": ["int8", "int16"]},
            "features": {"type": "integer", "minimum": 1, "maximum": 1 << 16},
            "observation": OBSERVATION_SCHEMA,
            "action": {
                "type": "object",
                "required": ["kind", "dtype", "shape", "shift"],
                "additionalProperties": False,
                "properties": {
                    "kind": {"enum": ["argmax", "affine"]},
                    "dtype": {"type": "string", "maxLength": 16},
                    "shape": {
                        "type": "array",
                        "maxItems": 8,
                        "items": {"type": "integer", "minimum": 1, "maximum": 1 << 16},
                    },
                    "shift": {"type": "integer"},
                },
            },
            "quantization": {"type": "object"},
            "held_out": HELD_OUT_SCHEMA,
            "measured": MEASURED_SCHEMA,
        },
    }

    # --- export ----------------------------------------------------------------------

    def convert(self, module: Any, options: dict[str, Any]) -> Any:
        from exporters.micro import package

        env_id = package.env_option(options, "micro export")
        mlp = package.mlp_of(module, options, "micro export")
        return package.build_micro(
            mlp,
            str(env_id),
            episodes=int(options.get("episodes", 20)),
            calibration_episodes=int(options.get("calibration_episodes", 20)),
            seed=int(options.get("seed", 0)),
            activations=str(options.get("activations", "auto")),
        )

    def write(self, content: Any, folder: Path) -> dict[str, Any]:
        (folder / "micro").mkdir(exist_ok=True)
        for rel, data in content.files.items():
            (folder / rel).write_bytes(data)
        return content.section

    # --- update ----------------------------------------------------------------------

    def check_update(self, root: Path, layout: Layout, weights_map: bool) -> None:
        raise UnsupportedError(
            f"{root}: {layout.format(self.name).path} is calibrated on real states and takes "
            "no weight updates; export the policy again with --format micro --env ENV_ID"
        )

    # --- verify and inspect ------------------------------------------------------------

    def runner(self, root: Path, layout: Layout) -> Runner | None:
        return None  # not the distribution function: extra_checks measures agreement

    def extra_checks(self, root: Path, layout: Layout, batch: int) -> list[Any]:
        from runtimes.backends import micro as micro_backend

        section = layout.format(self.name).section
        model = micro_backend.MicroModel(
            read_model(root, layout),
            section["arena_bytes"],
            section["features"],
            section["file"],
        )
        states, want = read_held_out(root, layout, self.name)
        got = micro_backend.actions_of(section, model(states))
        return [agreement_row(self.name, layout, states, want, got)]

    def describe(self, entry: FormatEntry) -> str:
        s = entry.section
        measured = s.get("measured", {})
        agreement = measured.get("agreement")
        quality = f"; agrees on {agreement:.2%} of held-out states" if agreement is not None else ""
        if agreement is not None and "micro_return" in measured:  # quantize records no return here
            quality += (
                f", return {measured['micro_return']:.1f} vs {measured.get('float_return', 0):.1f}"
            )
        weights = str(s.get("quantization", {}).get("weights", ""))
        if weights.startswith("a student"):
            # The float policy is unchanged: only the micro model is the student.
            quality += f"; weights: {weights}"
        return (
            f"{entry.path}: {s.get('activations', 'int8')}, flash {s.get('flash_bytes')} bytes, "
            f"arena {s.get('arena_bytes')} bytes; ops {', '.join(s.get('ops', ()))}{quality}"
        )


def read_model(root: Path, layout: Layout) -> bytes:
    """The micro model's bytes: contained, bounded, hash-checked."""
    entry = layout.format("micro")
    return bundle_files.read_member(
        root, entry.path, key="micro.file", files=layout.files_json, cap=MAX_MODEL_BYTES
    )


def agreement_row(
    name: str, layout: Layout, states: np.ndarray, want: np.ndarray, got: np.ndarray
) -> Any:
    """verify's row for a target of the deterministic action on held-out real states:
    agreement with the float actions (discrete) or the action error (continuous)."""
    from exporters.parity import OutputDiff

    section = layout.format(name).section
    want = want.reshape(got.shape)
    if section["action"]["kind"] == "argmax":
        agreement = float(np.mean(want == got))
        return OutputDiff(
            name,
            f"action: {agreement:.2%} of {len(states)} held-out real states agree "
            f"(at least {MIN_AGREEMENT:.0%})",
            float(np.mean(want != got)),
            0.0,
            agreement >= MIN_AGREEMENT,
        )
    error = np.abs(want.astype(np.float64) - got.astype(np.float64)).reshape(len(got), -1)
    spec = layout.specs.action
    span = np.broadcast_to(
        np.asarray(spec.maximum, np.float64) - np.asarray(spec.minimum, np.float64),
        tuple(section["action"]["shape"]),
    ).reshape(-1)
    share = float(np.max(error / span))
    return OutputDiff(
        name,
        f"action: error up to {share:.1%} of the action range on {len(states)} "
        f"held-out real states (at most {MAX_ACTION_ERROR:.0%})",
        float(error.max()),
        share,
        share <= MAX_ACTION_ERROR,
    )


def read_held_out(root: Path, layout: Layout, name: str = "micro") -> tuple[np.ndarray, np.ndarray]:
    """The held-out states ``[rows, features]`` and the float policy's actions on them,
    each read only at the size the manifest declares."""
    section = layout.format(name).section
    held = section["held_out"]
    rows, features = int(held["rows"]), int(section["features"])
    size = int(np.prod(section["action"]["shape"], dtype=np.int64)) or 1
    files = layout.files_json
    states = bundle_files.read_member(
        root, held["states"], key=f"{name}.held_out.states", files=files, cap=rows * features * 4
    )
    actions = bundle_files.read_member(
        root, held["actions"], key=f"{name}.held_out.actions", files=files, cap=rows * size * 4
    )
    if len(states) != rows * features * 4 or len(actions) != rows * size * 4:
        raise BundleError(
            f"{held['states']}: expected {rows} rows of {features} float32 features and "
            f"{rows} actions of {size} values, got {len(states)} and {len(actions)} bytes"
        )
    dtype = "<i4" if held["action_dtype"] == "int32" else "<f4"
    return (
        np.frombuffer(states, "<f4").reshape(rows, features),
        np.frombuffer(actions, dtype).reshape(rows, size),
    )


FORMAT = MicroFormat()
