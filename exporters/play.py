"""Export a trained policy and play its bundle on episodes (what the training examples end with)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from exporters.export import export_policy
from toolkit.environments import driver as driver_lib

__all__ = ["export_and_play"]


def export_and_play(
    policy: Any,
    bundle_dir: str | os.PathLike,
    eval_env: Any,
    *,
    seed: int,
    train_step: int | None = None,
    backend: str = "onnx",
) -> driver_lib.Evaluation:
    """Exports ``policy`` to ``bundle_dir`` (replacing a bundle there) and scores the bundle.

    The bundle is loaded on ``backend`` with its generator seeded by ``seed`` (a
    stochastic policy samples there, not in TensorFlow) and plays one episode per
    environment of ``eval_env``, environment i reset with ``seed + i``.
    """
    from runtimes import load_policy

    bundle = export_policy(policy, Path(bundle_dir), train_step=train_step, overwrite=True)
    runtime_policy = load_policy(bundle, backend=backend, seed=seed)
    return driver_lib.evaluate_policy(eval_env, runtime_policy, seed=seed)
