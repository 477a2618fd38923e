"""Checkpoints -> ONNX initializer values for a bundle, without TensorFlow.

Takes every kind of checkpoint a learner writes (see ``toolkit.checkpoint_weights``):
weights-only checkpoints (``weights.npz``, by canonical index, when the graph
fingerprints agree; else their ``tf/ckpt`` through the bundle's weights map), the
toolkit's training ``policy_checkpoints/`` and TF-Agents' ``policies/checkpoints/``
(through the weights map).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from toolkit import bundle, checkpoint_weights
from toolkit.bundle.layout import Layout
from toolkit.checkpoint_weights import Checkpoint
from toolkit.errors import BundleError, CheckpointError

__all__ = ["Weights", "load_npz_weights", "read_weights"]


class Weights(NamedTuple):
    """New initializer values for a bundle's graph."""

    initializers: dict[str, np.ndarray]
    train_step: int | None
    checkpoint: Checkpoint


def load_npz_weights(root: Path, info: dict[str, Any], names: list[str]) -> dict[str, np.ndarray]:
    """``{initializer name: array}`` from a checkpoint's weights.npz, keyed w0..wN."""
    rel = bundle.WEIGHTS_FILE
    if rel not in info["files"]:
        raise BundleError(f"{root}: {rel} is not listed in {bundle.CHECKPOINT_FILE}")
    data = bundle.read_member(
        root, rel, key="weights", files=info["files"], where=bundle.CHECKPOINT_FILE
    )
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, KeyError) as e:
        raise BundleError(f"{root / rel}: not a readable weights file ({e})") from e
    expected = {f"w{i}" for i in range(len(names))}
    if set(arrays) != expected:
        raise BundleError(
            f"{root / rel}: expected {len(names)} arrays w0..w{len(names) - 1}, got {len(arrays)}"
        )
    return {name: arrays[f"w{i}"] for i, name in enumerate(names)}


def _fingerprint_error(root: Path, expected: str, got: str) -> BundleError:
    return BundleError(
        f"{root}: expected a checkpoint of this bundle's graph (fingerprint {expected[:12]}...), "
        f"got one of another graph ({got[:12]}...): a checkpoint of another policy structure "
        "(use one of this policy's)"
    )


def _weights_only(layout: Layout, checkpoint: Checkpoint) -> Weights:
    root = checkpoint.path
    info = bundle.read_checkpoint(root)
    expected = str(layout.graph_fingerprint)
    got = str(info.get("graph_fingerprint"))
    train_step = info.get("train_step")
    train_step = train_step if isinstance(train_step, int) else None
    if got == expected:
        names = list(layout.onnx_initializers)
        return Weights(load_npz_weights(root, info, names), train_step, checkpoint)
    prefix = root / str(info.get("tf_checkpoint", bundle.TF_CHECKPOINT_PREFIX))
    if layout.weights is not None and Path(f"{prefix}.index").is_file():
        # Another conversion of the weights (e.g. a checkpoint saved before the probe
        # conversion, from zero biases): its TF checkpoint still holds the variables.
        try:
            values, _ = checkpoint_weights.read_tf_checkpoint(layout, prefix, str(root))
        except CheckpointError as e:
            raise _fingerprint_error(root, expected, got) from e
        initializers = checkpoint_weights.initializer_values(layout, values)
        return Weights(initializers, train_step, checkpoint)
    raise _fingerprint_error(root, expected, got)


def read_weights(
    layout: Layout,
    source: str | os.PathLike | Checkpoint,
    *,
    step: int | None = None,
) -> Weights:
    """The initializer values a checkpoint gives a bundle's ONNX graph.

    Args:
      layout: the bundle's layout.
      source: a checkpoint, a folder of them (the latest is taken), or a ``Checkpoint``.
      step: take the checkpoint of this train step.

    Raises:
      CheckpointError: no checkpoint there, a corrupt one, or one of another policy.
      BundleError: a weights-only checkpoint of another graph, or a TF checkpoint for
        a bundle without a weights map.
    """
    if not isinstance(source, Checkpoint):
        checkpoint = checkpoint_weights.select(source, step)
    else:
        checkpoint = source
    if checkpoint.kind == "weights_only":
        weights = _weights_only(layout, checkpoint)
        if step is not None and weights.train_step != step:
            raise CheckpointError(
                f"{checkpoint.path}: step {step} asked, but this weights-only checkpoint holds "
                f"train step {weights.train_step}"
            )
        return weights
    values, train_step = checkpoint_weights.read_tf_checkpoint(
        layout, checkpoint.path, str(checkpoint.path)
    )
    initializers = checkpoint_weights.initializer_values(layout, values)
    return Weights(
        initializers, train_step if train_step is not None else checkpoint.step, checkpoint
    )
