"""The c backend: a bundle's dependency-free C export compiled by the system C compiler
(``cc``) into a shared library and called through ctypes. For tests and benchmarks.

Nothing from the bundle is compiled as it stands: the C source is generated again
(``c_files``) from the weights file and the manifest's layer sizes (numbers, each read
at the size the manifest declares), must equal the bundle's ``c/policy.c`` and
``c/policy.h`` byte for byte, and only then is compiled. The exporter writes the same
files with the same generator, so the C a user builds is the C this backend runs.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.policy import BundlePolicy
from toolkit.bundle import files
from toolkit.bundle.layout import Layout
from toolkit.errors import BundleError, PolicyError, UnsupportedError
from toolkit.trajectories.policy_step import PolicyStep

__all__ = [
    "CModel",
    "CPolicy",
    "CRunner",
    "c_files",
    "compile_library",
    "golden_main",
    "read_weights",
]

#: C types of the action dtypes the export writes.
C_TYPES = {"int64": "int64_t", "int32": "int32_t", "float32": "float"}
_CTYPES = {"int64": ctypes.c_int64, "int32": ctypes.c_int32, "float32": ctypes.c_float}
_BANNER = "/* The policy's deterministic action in C99 (policy-toolkit c export). Generated. */"
#: The most weights read (floats).
MAX_WEIGHTS = 1 << 24


class CModel:
    """The numbers of a C export: dense layers and the action head.

    Attributes:
      layers: ``[(weight float32 or int8 [out, in], bias float32 [out], activation)]``.
      scales: per layer, None (float weights) or float32 ``[out]``: an int8 layer's
        per-output-channel scales (its weights are ``weight * scale``).
      kind: ``argmax`` or ``affine``; shift: the argmax's first action.
      scale, offset, low, high: affine only, float32 per action element.
      dtype: the action dtype name; size: the action's element count.
    """

    def __init__(
        self,
        layers,
        kind,
        dtype,
        size,
        shift=0,
        scale=None,
        offset=None,
        low=None,
        high=None,
        scales=None,
    ):
        self.layers = layers
        self.scales = list(scales) if scales is not None else [None] * len(layers)
        self.kind, self.dtype, self.size, self.shift = kind, dtype, int(size), int(shift)
        self.scale, self.offset, self.low, self.high = scale, offset, low, high

    @property
    def features(self) -> int:
        return int(self.layers[0][0].shape[1])

    @property
    def int8(self) -> bool:
        return any(s is not None for s in self.scales)

    def weights_bytes(self) -> bytes:
        """Float weights: every layer's weights then bias as little-endian float32. With
        int8 layers, per layer in order: an int8 layer's int8 weights, float32 scales and
        float32 bias; a float layer's float32 weights and bias."""
        if not self.int8:
            parts = [np.concatenate([w.reshape(-1), b]) for w, b, _ in self.layers]
            return np.concatenate(parts).astype("<f4").tobytes()
        out = []
        for (w, b, _), s in zip(self.layers, self.scales, strict=True):
            if s is None:
                out.append(np.concatenate([w.reshape(-1), b]).astype("<f4").tobytes())
            else:
                out.append(np.asarray(w, np.int8).tobytes())
                out.append(np.concatenate([s, b]).astype("<f4").tobytes())
        return b"".join(out)


def layer_bytes(sizes: list[tuple[int, int]], int8: list[bool]) -> int:
    """The weights file's size for layers ``(outputs, inputs)``, int8 or float."""
    pairs = zip(sizes, int8, strict=True)
    return sum((o * i + 8 * o) if q else 4 * (o * i + o) for (o, i), q in pairs)


def _f(value: float) -> str:
    value = float(np.float32(value))
    if not np.isfinite(value):
        raise BundleError(f"c export: expected finite weights, got {value}")
    text = f"{value:.9g}"
    if not any(c in text for c in ".e"):  # "2" is an int: "2f" would not compile
        text += ".0"
    return text + "f"


def _int8_array(name: str, values: np.ndarray) -> str:
    flat = [str(int(v)) for v in np.asarray(values, np.int8).reshape(-1)]
    rows = [", ".join(flat[i : i + 16]) for i in range(0, len(flat), 16)]
    body = ",\n  ".join(rows)
    return f"static const int8_t {name}[{len(flat)}] = {{\n  {body}\n}};\n"


def _array(name: str, values: np.ndarray) -> str:
    flat = [_f(v) for v in np.asarray(values, np.float32).reshape(-1)]
    rows = [", ".join(flat[i : i + 8]) for i in range(0, len(flat), 8)]
    body = ",\n  ".join(rows)
    return f"static const float {name}[{len(flat)}] = {{\n  {body}\n}};\n"


def c_files(model: CModel) -> tuple[str, str]:
    """``policy.c`` and ``policy.h``: C99, no heap, no libm beyond ``tanhf``. An int8
    layer's weights are dequantized per output channel in its loop (float activations)."""
    ctype = C_TYPES[model.dtype]
    width = max(max(w.shape[0] for w, _, _ in model.layers), model.features)
    uses_tanh = any(a == "tanh" for _, _, a in model.layers)
    header = f"""{_BANNER}
#ifndef POLICY_H_
#define POLICY_H_

#include <stdint.h>

#define POLICY_FEATURES {model.features}
#define POLICY_ACTION_SIZE {model.size}
/* Stack bytes policy_action uses for activations (two buffers of the widest layer). */
#define POLICY_STACK_BYTES {2 * width * 4}

/* Writes the action for one observation of POLICY_FEATURES floats (the observation's
   leaves flattened and concatenated); returns 0, or -1 for a non-finite observation. */
int policy_action(const float *observation, {ctype} *action);

#endif /* POLICY_H_ */
"""
    lines = [
        _BANNER,
        '#include "policy.h"',
        "",
    ]
    if uses_tanh:
        lines += ["#include <math.h>", ""]
    for i, ((w, b, _), s) in enumerate(zip(model.layers, model.scales, strict=True)):
        if s is None:
            lines.append(_array(f"W{i}", w))
        else:
            lines.append(_int8_array(f"W{i}", w))
            lines.append(_array(f"S{i}", s))
        lines.append(_array(f"B{i}", b))
    if model.kind == "affine":
        lines.append(_array("SCALE", model.scale))
        lines.append(_array("OFFSET", model.offset))
        big = float(np.finfo(np.float32).max)  # an infinite bound clips nothing
        lines.append(_array("HIGH", np.clip(model.high, -big, big)))
        lines.append(_array("LOW", np.clip(model.low, -big, big)))
    activate = (
        (
            """
    if (activation == 2) acc = tanhf(acc);"""
            if uses_tanh
            else ""
        )
        + """
    if (activation == 1 && acc < 0.0f) acc = 0.0f;
    y[i] = acc;
  }
}
"""
    )
    if any(s is None for s in model.scales):
        lines.append(
            """static void dense(const float *x, int n, const float *w, const float *b, int m,
                  float *y, int activation) {
  int i, k;
  for (i = 0; i < m; ++i) {
    float acc = b[i];
    for (k = 0; k < n; ++k) acc += w[i * n + k] * x[k];"""
            + activate
        )
    if model.int8:
        lines.append(
            """/* int8 weights, one float scale per output channel: y = b + s * (w . x). */
static void dense_q(const float *x, int n, const int8_t *w, const float *s, const float *b,
                    int m, float *y, int activation) {
  int i, k;
  for (i = 0; i < m; ++i) {
    float acc = 0.0f;
    for (k = 0; k < n; ++k) acc += (float)w[i * n + k] * x[k];
    acc = b[i] + s[i] * acc;"""
            + activate
        )
    codes = {"linear": 0, "relu": 1, "tanh": 2}
    body = [
        f"int policy_action(const float *observation, {ctype} *action) {{",
        f"  float a[{width}], b[{width}];",
        "  int i;",
        "  for (i = 0; i < POLICY_FEATURES; ++i) {",
        "    float v = observation[i];",
        "    if (!(v - v == 0.0f)) return -1; /* NaN or infinite */",
        "    a[i] = v;",
        "  }",
    ]
    src, dst = "a", "b"
    n = model.features
    for i, ((w, _, activation), s) in enumerate(zip(model.layers, model.scales, strict=True)):
        m = w.shape[0]
        if s is None:
            body.append(f"  dense({src}, {n}, W{i}, B{i}, {m}, {dst}, {codes[activation]});")
        else:
            body.append(
                f"  dense_q({src}, {n}, W{i}, S{i}, B{i}, {m}, {dst}, {codes[activation]});"
            )
        src, dst, n = dst, src, m
    if model.kind == "argmax":
        body += [
            "  {",
            "    int best = 0;",
            f"    for (i = 1; i < {n}; ++i) if ({src}[i] > {src}[best]) best = i;",
            f"    action[0] = ({ctype})(best + {model.shift});",
            "  }",
        ]
    else:
        body += [
            f"  for (i = 0; i < {n}; ++i) {{",
            f"    float v = OFFSET[i] + SCALE[i] * {src}[i];",
            "    if (v > HIGH[i]) v = HIGH[i];",
            "    if (v < LOW[i]) v = LOW[i];",
        ]
        body += ["    action[i] = v;", "  }"]
    body += ["  return 0;", "}", ""]
    return "\n".join(lines + body), header


def golden_main(model: CModel, inputs: np.ndarray, outputs: np.ndarray, tolerance: float) -> str:
    """``policy_main.c``: checks the golden vectors, exit status 0 when all pass."""
    ctype = C_TYPES[model.dtype]
    rows = len(inputs)
    check = (
        "got[k] != want[r * POLICY_ACTION_SIZE + k]"
        if model.kind == "argmax"
        else f"(got[k] - want[r * POLICY_ACTION_SIZE + k] > {_f(tolerance)} || "
        f"want[r * POLICY_ACTION_SIZE + k] - got[k] > {_f(tolerance)})"
    )
    want = (
        ", ".join(str(int(v)) for v in np.asarray(outputs).reshape(-1))
        if model.kind == "argmax"
        else ", ".join(_f(v) for v in np.asarray(outputs).reshape(-1))
    )
    return f"""/* Golden vectors: held-out real observations and the float policy's actions. */
#include <stdio.h>
#include "policy.h"

{_array("inputs", inputs).replace("static const float inputs", "static const float inputs")}
static const {ctype} want[{outputs.size}] = {{{want}}};

int main(void) {{
  int r, k, failed = 0;
  for (r = 0; r < {rows}; ++r) {{
    {ctype} got[POLICY_ACTION_SIZE];
    if (policy_action(inputs + r * POLICY_FEATURES, got) != 0) {{ ++failed; continue; }}
    for (k = 0; k < POLICY_ACTION_SIZE; ++k) {{
      if ({check}) {{ ++failed; break; }}
    }}
  }}
  printf("%d of {rows} golden vectors pass\\n", {rows} - failed);
  return failed != 0;
}}
"""


def read_weights(root: Path, layout: Layout) -> CModel:
    """The C export's numbers, each file read at the size the manifest declares."""
    section = layout.format("c").section
    layers_json = section["layers"]
    sizes = [(int(x["outputs"]), int(x["inputs"])) for x in layers_json]
    int8 = [x.get("weights", "float32") == "int8" for x in layers_json]
    count = sum(o * i + o for o, i in sizes)
    if count > MAX_WEIGHTS:
        raise BundleError(f"c.layers: expected at most {MAX_WEIGHTS} weights, got {count}")
    for (_, i), (n, _) in zip(sizes[1:], sizes[:-1], strict=True):
        if i != n:
            raise BundleError(f"c.layers: a layer of {i} inputs follows one of {n} outputs")
    if sizes[0][1] != int(section["features"]):
        raise BundleError(f"c.layers: expected {section['features']} inputs, got {sizes[0][1]}")
    size = layer_bytes(sizes, int8)
    data = files.read_member(
        root, section["weights"], key="c.weights", files=layout.files_json, cap=size
    )
    if len(data) != size:
        raise BundleError(f"{section['weights']}: expected {size} bytes, got {len(data)}")
    layers, scales, at = [], [], 0
    for (o, i), x, q in zip(sizes, layers_json, int8, strict=True):
        if q:
            w = np.frombuffer(data, np.int8, o * i, at).reshape(o, i)
            s = np.frombuffer(data, "<f4", o, at + o * i).astype(np.float32)
            b = np.frombuffer(data, "<f4", o, at + o * i + 4 * o).astype(np.float32)
            at += o * i + 8 * o
        else:
            w = np.frombuffer(data, "<f4", o * i, at).reshape(o, i).astype(np.float32)
            b = np.frombuffer(data, "<f4", o, at + 4 * o * i).astype(np.float32)
            s = None
            at += 4 * (o * i + o)
        layers.append((w, b, x["activation"]))
        scales.append(s)
    action = section["action"]
    size = int(np.prod(action["shape"], dtype=np.int64)) if action["shape"] else 1
    if action["kind"] == "argmax":
        return CModel(layers, "argmax", action["dtype"], 1, shift=action["shift"], scales=scales)
    head = {k: np.asarray(action[k], np.float32) for k in ("scale", "offset", "low", "high")}
    if any(v.shape != (size,) for v in head.values()) or sizes[-1][0] != size:
        raise BundleError(f"c.action: expected {size} values per head parameter")
    return CModel(layers, "affine", action["dtype"], size, scales=scales, **head)


def compile_library(source: str, header: str, where: str) -> Path:
    """Compiles generated C into a shared library in a fresh temporary folder."""
    cc = shutil.which("cc")
    if cc is None:
        raise UnsupportedError("the c backend needs a C compiler (cc) on PATH")
    folder = Path(tempfile.mkdtemp(prefix="policy-c-"))
    (folder / "policy.c").write_text(source)
    (folder / "policy.h").write_text(header)
    library = folder / "libpolicy.so"
    command = [cc, "-std=c99", "-O2", "-shared", "-fPIC", "-o", str(library), "policy.c", "-lm"]
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise BundleError(f"{where}: cc failed: {done.stderr.strip()[:500]}")
    return library


class CRunner:
    """A ``CModel``'s generated C, compiled, called through ctypes: flat float
    observations ``[N, features]`` in, actions ``[N, size]`` (the action dtype) out."""

    def __init__(self, model: CModel, where: str):
        source, header = c_files(model)
        self.model = model
        self.library_path = compile_library(source, header, where)
        try:
            self._function = ctypes.CDLL(str(self.library_path)).policy_action
        finally:  # the loaded library stays mapped: its folder can go
            shutil.rmtree(self.library_path.parent, ignore_errors=True)
        self._ctype = _CTYPES[model.dtype]
        self._function.argtypes = [ctypes.POINTER(ctypes.c_float), ctypes.POINTER(self._ctype)]
        self._function.restype = ctypes.c_int

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32).reshape(-1, self.model.features)
        out = np.zeros((len(x), self.model.size), np.dtype(self.model.dtype))
        in_ptr, out_ptr = ctypes.POINTER(ctypes.c_float), ctypes.POINTER(self._ctype)
        function = self._function
        for r in range(len(x)):
            if function(x[r].ctypes.data_as(in_ptr), out[r].ctypes.data_as(out_ptr)) != 0:
                raise PolicyError(f"observation {r}: expected finite values, got {x[r].tolist()}")
        return out


class CPolicy(BundlePolicy):
    """A bundle's C export compiled by ``cc`` and called through ctypes (module doc).
    Computes the deterministic action only, one observation per C call."""

    backend = "c"

    def __init__(
        self,
        layout: Layout,
        bundle_dir: str | os.PathLike,
        *,
        seed: int | None = None,
        validate_args: bool = True,
        check_finite: bool = False,
    ):
        super().__init__(
            layout, bundle_dir, seed=seed, validate_args=validate_args, check_finite=check_finite
        )
        if not layout.has("c"):
            raise BundleError(f"{self._bundle_dir}: the bundle was exported without C")
        section = self._section = layout.format("c").section
        names = list(section["observation"])
        unknown = [n for n in names if n not in self._input_names]
        if unknown:
            raise BundleError(f"{self._bundle_dir}: c.observation: unknown inputs {unknown}")
        self._positions = [self._input_names.index(n) for n in names]
        self._c_model = read_weights(self._bundle_dir, layout)
        source, header = c_files(self._c_model)
        for key, text in (("file", source), ("header", header)):
            data = files.read_member(
                self._bundle_dir,
                section[key],
                key=f"c.{key}",
                files=layout.files_json,
                cap=len(text.encode()),
            )
            if data != text.encode():
                raise BundleError(
                    f"{self._bundle_dir}: {section[key]}: expected the C the export generates "
                    "from the bundle's weights; it was altered"
                )
        self._runner = CRunner(self._c_model, str(self._bundle_dir))
        self._plain_output = False

    def _action(self, time_step: Any, policy_state: Any, seed: Any) -> PolicyStep:
        arrays, outer = self._inputs_from(time_step, policy_state)
        n = int(np.prod(outer, dtype=np.int64)) if outer else 1
        parts = [np.asarray(arrays[i], np.float32).reshape(n, -1) for i in self._positions]
        out = self._runner(np.concatenate(parts, axis=1))
        shape = tuple(int(d) for d in self._section["action"]["shape"])
        action = out.reshape((n, *shape))
        action = action[0] if not outer else action.reshape(tuple(outer) + shape)
        return PolicyStep(action, (), ())

    def _run(self, arrays: list[np.ndarray], unbatched: bool, fetch: list[str]) -> list[Any]:
        raise UnsupportedError(
            f"{self._bundle_dir}: the c backend computes the deterministic action only "
            "(no distribution parameters); use backend='onnx' or 'litert' for those"
        )

    def _take_weights(self, policy: BundlePolicy) -> None:
        raise PolicyError("update(): the c backend takes no other policy's weights")

    def update_from_checkpoint(self, path: Any, *, step: int | None = None) -> None:
        """Not available: export the policy again with --format c."""
        raise UnsupportedError(
            f"{path}: the c backend takes no checkpoints; export the policy again with --format c"
        )
