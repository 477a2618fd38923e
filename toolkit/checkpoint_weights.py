"""A bundle's ONNX weights from TF checkpoints, without TensorFlow.

Bundles exported with the probe conversion (``exporters.probe``) carry a weights map in
``manifest["onnx"]["weights"]``::

    {"version": 1,
     "variables": [{"name", "dtype", "shape", "paths": [[local names...], ...]}, ...],
     "initializers": [null | {"variable": j[, "transpose": [axes]]}, ...]}

``initializers[i]`` describes ``manifest["onnx"]["initializers"][i]`` (canonical order):
null for a constant, else the variable it holds (transposed by ``transpose``, then
reshaped to the initializer's shape). A variable's ``paths`` are its object paths from
the exported policy, as ``tf.train.Checkpoint(policy=...)`` records them in the
checkpoint's object graph. This module finds them in a checkpoint
(``toolkit.tensor_bundle``) and builds the initializer values.

``find_checkpoints`` lists the checkpoints of a directory a user points at: a
weights-only checkpoint (``exporters.save_checkpoint``) or a folder of them, a
training run's ``policy_checkpoints/`` (or the run's output folder), TF-Agents'
``policies/checkpoints/`` (or the trigger's ``policies/`` root or the training root),
one ``policy_checkpoint_<step>`` folder, or a checkpoint prefix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from toolkit import tensor_bundle
from toolkit.errors import BundleError, CheckpointError

if TYPE_CHECKING:
    from toolkit.bundle.layout import Layout, WeightsMap

__all__ = [
    "WEIGHTS_MAP_VERSION",
    "Checkpoint",
    "find_checkpoints",
    "initializer_values",
    "read_tf_checkpoint",
    "require_weights_map",
    "select",
]

WEIGHTS_MAP_VERSION = 1
CHECKPOINT_FILE = "checkpoint.json"  # toolkit.bundle.CHECKPOINT_FILE (kept import-light)

_CKPT = re.compile(r"^ckpt-(\d+)$")
_TF_AGENTS = re.compile(r"^policy_checkpoint_(\d+)$")


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """One checkpoint found on disk.

    Attributes:
      kind: "weights_only" (a folder with checkpoint.json), "policy_checkpoint" (the
        toolkit's training checkpoints) or "tf_agents_checkpoint".
      path: the weights-only folder, or the TF checkpoint prefix.
      step: the train step its name says (None when it says none).
    """

    kind: str
    path: Path
    step: int | None

    @property
    def index(self) -> Path | None:
        return None if self.kind == "weights_only" else Path(f"{self.path}.index")

    def signature(self) -> tuple:
        """Changes when the checkpoint's files change (for watchers)."""
        target = self.path / CHECKPOINT_FILE if self.kind == "weights_only" else self.index
        try:
            stat = target.stat()
        except OSError:
            return (str(self.path), None)
        return (str(self.path), stat.st_size, stat.st_mtime_ns)


# --- finding checkpoints -------------------------------------------------------------


def _state_checkpoints(directory: Path, kind: str) -> list[Checkpoint]:
    """The checkpoints a CheckpointManager's ``checkpoint`` state file lists (it is
    written after each checkpoint is complete)."""
    latest, every = tensor_bundle.checkpoint_state(directory)
    prefixes = list(dict.fromkeys([*every, *([latest] if latest else [])]))
    found = []
    for prefix in prefixes:
        if not Path(f"{prefix}.index").is_file():
            continue
        match = _CKPT.match(prefix.name)
        found.append(Checkpoint(kind, prefix, int(match.group(1)) if match else None))
    return found


def _tf_agents_checkpoints(directory: Path) -> list[Checkpoint]:
    found = []
    for child in directory.iterdir():
        match = _TF_AGENTS.match(child.name)
        prefix = child / "variables" / "variables"
        if match and Path(f"{prefix}.index").is_file():
            found.append(Checkpoint("tf_agents_checkpoint", prefix, int(match.group(1))))
    return found


def _weights_only(directory: Path) -> Checkpoint:
    import json

    step = None
    with contextlib.suppress(OSError, ValueError, AttributeError):
        step = json.loads((directory / CHECKPOINT_FILE).read_text()).get("train_step")
    return Checkpoint("weights_only", directory, step if isinstance(step, int) else None)


def find_checkpoints(path: str | os.PathLike) -> list[Checkpoint]:
    """Every complete checkpoint at ``path``, oldest first (by step, then name).

    Raises:
      CheckpointError: nothing there that holds checkpoints of a known layout.
    """
    path = Path(path)
    if Path(f"{path}.index").is_file() and not path.is_dir():
        match = _CKPT.match(path.name)
        kind = "tf_agents_checkpoint" if path.name == "variables" else "policy_checkpoint"
        return [Checkpoint(kind, path, int(match.group(1)) if match else None)]
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint or checkpoint folder")
    if (path / CHECKPOINT_FILE).is_file():
        return [_weights_only(path)]
    if (path / "variables" / "variables.index").is_file():
        # PolicySaver.save_checkpoint's output (policy_checkpoint_<step> in the trigger's
        # layout) or PolicySaver.save's SavedModel variables.
        match = _TF_AGENTS.match(path.name)
        step = int(match[1]) if match else None
        return [Checkpoint("tf_agents_checkpoint", path / "variables" / "variables", step)]
    for candidate in (path, path / "policy_checkpoints"):
        if (candidate / tensor_bundle.STATE_FILE).is_file():
            return _sorted(_state_checkpoints(candidate, "policy_checkpoint"))
    for candidate in (path, path / "checkpoints", path / "policies" / "checkpoints"):
        if candidate.is_dir():
            found = _tf_agents_checkpoints(candidate)
            if found:
                return _sorted(found)
    # Hidden folders are save_checkpoint's work in progress (renamed into place when done).
    children = [
        c for c in path.iterdir() if not c.name.startswith(".") and (c / CHECKPOINT_FILE).is_file()
    ]
    if children:
        return _sorted([_weights_only(c) for c in children])
    if (
        any(p.is_dir() for p in (path / "policy_checkpoints", path / "policies"))
        or (path / "checkpoints" / tensor_bundle.STATE_FILE).is_file()
    ):
        return []  # a training run that has written no policy checkpoint yet
    entries = list(path.iterdir())
    if entries and all(c.name.startswith(".") or "_temp" in c.name for c in entries):
        return []  # only TF's (or save_checkpoint's) work in progress: the first save
    raise CheckpointError(
        f"{path}: expected checkpoints: a weights-only checkpoint (checkpoint.json) or a "
        "folder of them, a training run's policy_checkpoints/, TF-Agents' "
        "policies/checkpoints/ (policy_checkpoint_<step>/), or a checkpoint prefix "
        "(<prefix>.index); found none of these"
    )


def _sorted(found: list[Checkpoint]) -> list[Checkpoint]:
    return sorted(found, key=lambda c: (c.step if c.step is not None else -1, str(c.path)))


def select(path: str | os.PathLike, step: int | None = None) -> Checkpoint:
    """The checkpoint of ``step`` at ``path``, or the latest.

    Raises:
      CheckpointError: no checkpoint there, or none of that step (the steps there named).
    """
    found = find_checkpoints(path)
    if not found:
        raise CheckpointError(f"{path}: no checkpoint written yet")
    if step is None:
        return found[-1]
    for checkpoint in found:
        if checkpoint.step == step:
            return checkpoint
    steps = [c.step for c in found]
    raise CheckpointError(f"{path}: no checkpoint of train step {step}; there are {steps}")


# --- reading weights -----------------------------------------------------------------


def _key(nodes: list, node: int) -> str | None:
    return nodes[node].attributes.get(tensor_bundle.VARIABLE_VALUE)


def _train_step(reader: tensor_bundle.TensorBundle, nodes: list) -> int | None:
    """The root's ``train_step``, when it is an integer scalar (read after checking so)."""
    node = nodes[0].children.get("train_step")
    key = None if node is None else _key(nodes, node)
    if key is None or key not in reader:
        return None
    entry = reader.entry(key)
    if entry.shape != () or entry.dtype_name not in _STEP_DTYPES:
        return None
    return int(reader.get(key))


_STEP_DTYPES = ("int32", "int64", "uint32", "uint64")


def _policy_checkpoints_hint(prefix: str | os.PathLike) -> str:
    """Where a training run keeps the policy checkpoints, given its training state."""
    run = Path(prefix).parent.parent
    folder = run / "policy_checkpoints"
    if folder.is_dir():
        return f"{folder} (pass that, or the run folder {run})"
    return "the run's policy_checkpoints/ (pass that, or the run folder)"


def require_weights_map(layout: Layout) -> WeightsMap:
    """The bundle's weights map, or a BundleError saying why it has none and what to do."""
    if layout.weights is not None:
        return layout.weights
    if layout.quantization is not None:
        method = layout.quantization.get("method", "quantized")
        raise BundleError(
            f"the bundle was written by quantize ({method}): its quantized weights cannot take "
            "a float checkpoint; update the float bundle it was made from, then quantize it "
            "again"
        )
    raise BundleError(
        "the bundle has no weights map (exported before policy-toolkit could read TF "
        "checkpoints without TensorFlow); export it again, or update it with a "
        "weights-only checkpoint"
    )


def read_tf_checkpoint(
    layout: Layout, prefix: str | os.PathLike, where: str | None = None
) -> tuple[list[np.ndarray], int | None]:
    """The values of the bundle's mapped variables in a TF checkpoint, and its train step.

    The policy is the checkpoint root's child ``policy`` (tf.train.Checkpoint(policy=...)
    as the toolkit and TF-Agents' PolicySaver.save_checkpoint write) or, failing that,
    the root (PolicySaver.save's variables). The train step is the root's ``train_step``.

    Raises:
      BundleError: a bundle without a weights map (exported before policy-toolkit
        recorded one).
      CheckpointError: a checkpoint that cannot be read or lacks a variable, or one
        whose variable has another shape or dtype (another policy structure).
    """
    weights_map = require_weights_map(layout)
    where = where or str(prefix)
    reader = tensor_bundle.TensorBundle(prefix)
    nodes = reader.object_graph()
    starts = [s for s in (nodes[0].children.get("policy"), 0) if s is not None]
    values = []
    for variable in weights_map.variables:
        key = None
        for start in starts:
            for path in variable.paths:
                node = tensor_bundle.resolve(nodes, path, start)
                if node is not None:
                    key = _key(nodes, node)
                if key is not None:
                    break
            if key is not None:
                break
        name = variable.name
        if key is None:
            shown = "/".join(variable.paths[0]) if variable.paths else "(none)"
            if "agent" in nodes[0].children and "policy" not in nodes[0].children:
                raise CheckpointError(
                    f"{where}: expected a policy checkpoint, got a training state (an "
                    "agent with its optimizer and replay buffer: a run's checkpoints/); "
                    f"the run's policy checkpoints are in {_policy_checkpoints_hint(prefix)}"
                )
            raise CheckpointError(
                f"{where}: expected the variable {name} (policy/{shown}), found no such "
                "object in the checkpoint: a checkpoint of another policy"
            )
        # The map says what the variable is: its entry must declare that shape and
        # dtype before a byte of it is read (an entry may declare any size).
        shape, dtype = tuple(variable.shape), np.dtype(variable.dtype)
        entry = reader.entry(key)
        if entry.shape != shape or entry.dtype_name != dtype.name:
            raise CheckpointError(
                f"{where}: variable {name}: expected {dtype.name} {list(shape)}, got "
                f"{entry.dtype_name} {list(entry.shape)}: a checkpoint of another policy "
                "structure"
            )
        values.append(reader.get(key, max_bytes=entry.count * dtype.itemsize))
    return values, _train_step(reader, nodes)


def initializer_values(layout: Layout, variables: list[np.ndarray]) -> dict[str, np.ndarray]:
    """``{initializer name: value}`` for the mapped initializers.

    Args:
      layout: the bundle's layout (with a weights map).
      variables: the values of the weights map's variables, in order.
    """
    names = layout.onnx_initializers
    entries = require_weights_map(layout).initializers
    if len(entries) != len(names):
        raise BundleError(
            f"manifest onnx.weights: expected {len(names)} initializer entries, got {len(entries)}"
        )
    out = {}
    for name, entry in zip(names, entries, strict=True):
        if entry is None:
            continue
        value = variables[entry.variable]
        if entry.transpose is not None:
            value = value.transpose(entry.transpose)
        shape, dtype = entry.shape, np.dtype(entry.dtype)
        if value.size != int(np.prod(shape, dtype=np.int64)):
            raise BundleError(f"initializer {name}: expected {list(shape)}, got {value.shape}")
        out[name] = np.ascontiguousarray(value.reshape(shape).astype(dtype))
    return out
