"""Measuring a candidate on real states: action agreement, graph latency, mean return.

Agreement is the share of states on which every action leaf's representative action
(argmax for categoricals, ``loc`` for deterministic and normal leaves, the mean for
uniform ones) is the same (float actions within ``tolerance`` of the action range),
both forms fed the same inputs (``graph_io.agree``). The return is measured by
playing the float policy's episodes (same seeds) with the candidate written as a
bundle and loaded by the runtime, as a user would run it.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from exporters import graph_io
from exporters.quantize.source import FloatBundle
from exporters.quantize.states import RealStates
from toolkit import bundle
from toolkit.environments import episodes as episodes_lib

__all__ = ["BATCH", "agreement", "candidate_return", "files_of", "latency_us", "reference"]

#: States per graph call when measuring agreement.
BATCH = 1024


def reference(source: FloatBundle, states: RealStates) -> list[dict[str, np.ndarray]]:
    """The float graph's outputs on ``states``, in batches of ``BATCH``."""
    run = source.float_runner()
    return [run(batch) for batch in states.batches(BATCH)]


def agreement(
    source: FloatBundle,
    want: list[dict[str, np.ndarray]],
    run: graph_io.Runner,
    states: RealStates,
    tolerance: float,
) -> float:
    """The share of ``states`` on which ``run`` acts as the float graph did (``want``)."""
    agree = 0
    for batch, expected in zip(states.batches(BATCH), want, strict=True):
        agree += int(graph_io.agree(source.layout, expected, run(batch), tolerance).sum())
    return agree / states.count


def latency_us(run: graph_io.Runner, states: RealStates, calls: int = 300) -> float:
    """Median microseconds of one batch-1 graph call (after 20 warm-up calls)."""
    one = next(states.batches(1))
    for _ in range(20):
        run(one)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        run(one)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e6)


def candidate_return(
    module: ModuleType,
    fmt: str,
    model: bytes,
    manifest: dict[str, Any],
    states: RealStates,
    tmp: Path,
) -> float:
    """The candidate's mean return over the float policy's episodes (same seeds).

    Args:
      module: the target module (its ``finish`` gives the file as written).
      fmt: the format written (``manifest[fmt]["file"]`` names the file).
      model: the candidate's model bytes.
      manifest: a manifest of the quantized bundle (``source.quantized_manifest``).
      states: the measured states (their episodes' env, count and seed).
      tmp: a scratch folder for the trial bundle.
    """
    import runtimes

    files = files_of(module, fmt, model, manifest)

    def build(folder: Path) -> dict[str, Any]:
        for rel, data in files.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(data)
        return manifest

    path = bundle.write_bundle(tmp / f"trial-{time.monotonic_ns()}", build)
    policy = runtimes.load_policy(path, fmt, seed=0)
    return episodes_lib.play(policy, states.env_id, states.episodes, states.seed).mean_return


def files_of(module: Any, fmt: str, model: bytes, manifest: dict[str, Any]) -> dict[str, bytes]:
    """The files a candidate's bundle holds, by bundle path: the target's ``files`` when
    its format has several, else its one model file (``finish``)."""
    if hasattr(module, "files"):
        return module.files(model, manifest)
    return {manifest[fmt]["file"]: module.finish(model, manifest)}
