"""The c format: ``c/``, the policy's deterministic action as dependency-free C99.

For MLP policies (dense layers with ReLU or tanh, argmax, tanh squashing, the action
spec's scaling; anything else is an ``UnsupportedError`` naming the layer): one C source
and header with float32 weights (or, with the option ``c_weights="int8"`` / ``export
--c-weights int8``, int8 weights with one float scale per output channel, calibrated on
real states by ``exporters.micro.c_int8`` and refused below 99% agreement), ``int
policy_action(const float *observation, <action type> *action)``, no heap, no libm
beyond ``tanhf``, and a ``main`` checking golden vectors (``exporters.micro.c_export``).
Like micro it computes the deterministic action and needs real states (``export
--env``); ``verify`` compiles the C (the c backend) and requires agreement with the
float policy on the held-out real states stored at export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from exporters.formats.base import Format, Runner
from exporters.formats.micro import (
    HELD_OUT_SCHEMA,
    MEASURED_SCHEMA,
    OBSERVATION_SCHEMA,
    agreement_row,
    read_held_out,
)
from toolkit.bundle.layout import FormatEntry, Layout
from toolkit.errors import UnsupportedError

__all__ = ["FORMAT", "CFormat"]

_PATH = {"$ref": "#/$defs/relativePath"}
_FLOATS = {"type": "array", "maxItems": 1 << 16, "items": {"type": "number"}}


class CFormat(Format):
    name = "c"
    label = "C"
    default = False
    export_needs = ("tensorflow", "onnx", "gymnasium")
    runner_needs = ()
    schema = {
        "type": "object",
        "required": [
            "file",
            "header",
            "main",
            "weights",
            "features",
            "observation",
            "layers",
            "action",
            "held_out",
        ],
        "additionalProperties": False,
        "properties": {
            "file": _PATH,
            "header": _PATH,
            "main": _PATH,
            "weights": _PATH,
            "weight_type": {"enum": ["float32", "int8"]},
            "flash_bytes": {"type": "integer", "minimum": 0},
            "stack_bytes": {"type": "integer", "minimum": 0},
            "features": {"type": "integer", "minimum": 1, "maximum": 1 << 16},
            "observation": OBSERVATION_SCHEMA,
            "layers": {
                "type": "array",
                "minItems": 1,
                "maxItems": 64,
                "items": {
                    "type": "object",
                    "required": ["inputs", "outputs", "activation"],
                    "additionalProperties": False,
                    "properties": {
                        "inputs": {"type": "integer", "minimum": 1, "maximum": 1 << 16},
                        "outputs": {"type": "integer", "minimum": 1, "maximum": 1 << 16},
                        "activation": {"enum": ["linear", "relu", "tanh"]},
                        "weights": {"enum": ["float32", "int8"]},
                    },
                },
            },
            "action": {
                "type": "object",
                "required": ["kind", "dtype", "shape", "shift"],
                "additionalProperties": False,
                "properties": {
                    "kind": {"enum": ["argmax", "affine"]},
                    "dtype": {"enum": ["int64", "int32", "float32"]},
                    "shape": {
                        "type": "array",
                        "maxItems": 8,
                        "items": {"type": "integer", "minimum": 1, "maximum": 1 << 16},
                    },
                    "shift": {"type": "integer"},
                    "scale": _FLOATS,
                    "offset": _FLOATS,
                    "low": _FLOATS,
                    "high": _FLOATS,
                },
            },
            "held_out": HELD_OUT_SCHEMA,
            "measured": MEASURED_SCHEMA,
        },
    }

    def convert(self, module: Any, options: dict[str, Any]) -> Any:
        from exporters.micro import c_export, package

        env_id = package.env_option(options, "c export")
        mlp = package.mlp_of(module, options, "c export")
        return c_export.build_c(
            mlp,
            env_id,
            episodes=int(options.get("episodes", 20)),
            seed=int(options.get("seed", 0)),
            weights=str(options.get("c_weights", "float32")),
            calibration_episodes=int(options.get("calibration_episodes", 20)),
        )

    def write(self, content: Any, folder: Path) -> dict[str, Any]:
        (folder / "c").mkdir(exist_ok=True)
        for rel, data in content.files.items():
            (folder / rel).write_bytes(data)
        return content.section

    def check_update(self, root: Path, layout: Layout, weights_map: bool) -> None:
        raise UnsupportedError(
            f"{root}: {layout.format(self.name).path} takes no weight updates; export the "
            "policy again with --format c --env ENV_ID"
        )

    def runner(self, root: Path, layout: Layout) -> Runner | None:
        return None  # the deterministic action only: extra_checks measures agreement

    def extra_checks(self, root: Path, layout: Layout, batch: int) -> list[Any]:
        from runtimes.backends import c as c_backend

        policy = c_backend.CPolicy(layout, root)
        states, want = read_held_out(root, layout, self.name)
        got = policy._runner(states).reshape(
            (len(states), *layout.format("c").section["action"]["shape"])
        )
        return [agreement_row(self.name, layout, states, want, got)]

    def describe(self, entry: FormatEntry) -> str:
        s = entry.section
        measured = s.get("measured", {})
        agreement = measured.get("agreement")
        quality = (
            f"; agrees on {agreement:.2%} of held-out states, return "
            f"{measured.get('c_return', 0):.1f} vs {measured.get('float_return', 0):.1f}"
            if agreement is not None
            else ""
        )
        layers = " -> ".join(f"{x['outputs']} {x['activation']}" for x in s.get("layers", ()))
        weights = s.get("weight_type", "float32")
        if "int8_layers" in measured:  # which layers: all, first_float, last_float, hidden
            weights += f" ({measured['int8_layers']})"
        return (
            f"{entry.path}: C99, {weights} weights, flash "
            f"{s.get('flash_bytes')} bytes, stack {s.get('stack_bytes')} bytes; "
            f"layers {layers}{quality}"
        )


FORMAT = CFormat()
