"""What ``policy-toolkit bench`` measures: latency and throughput of a policy's ``action``.

Each (backend, batch size) cell times single ``policy.action`` calls on a fixed,
spec-sampled time step (MID steps, the policy's state fed back) for a time budget,
after a few warm-up calls, and reports latency percentiles and actions per second.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import action_masks, nest
from toolkit.trajectories import time_step as ts

__all__ = ["BenchRow", "measure", "plot", "render"]

WARMUP_CALLS = 5
MIN_CALLS = 10
MAX_CALLS = 200_000


@dataclasses.dataclass(frozen=True)
class BenchRow:
    """One backend at one batch size: latency percentiles (microseconds), throughput."""

    backend: str
    batch: int
    calls: int
    p50_us: float
    p90_us: float
    p99_us: float
    mean_us: float

    @property
    def actions_per_second(self) -> float:
        return self.batch * 1e6 / self.mean_us

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "actions_per_second": self.actions_per_second}


def sample_time_step(time_step_spec: Any, batch: int, seed: int = 0) -> ts.TimeStep:
    """A batch of MID time steps with spec-sampled observations."""
    rng = np.random.default_rng(seed)
    observation = nest.map_structure(
        lambda spec: spec.sample(rng, outer_dims=(batch,)), time_step_spec.observation
    )
    return ts.TimeStep(
        step_type=np.full((batch,), ts.StepType.MID, dtype=time_step_spec.step_type.dtype),
        reward=np.zeros((batch, *time_step_spec.reward.shape), time_step_spec.reward.dtype),
        discount=np.ones((batch,), time_step_spec.discount.dtype),
        observation=observation,
    )


def measure(policy: Any, backend: str, batch: int, seconds: float) -> BenchRow:
    """Times ``policy.action`` at one batch size for about ``seconds``."""
    time_step = sample_time_step(policy.time_step_spec, batch)
    # Sampled masks may allow no action, which policies refuse.
    time_step = action_masks.allow_every_action(
        time_step, getattr(policy, "action_mask_input", None)
    )
    state = policy.get_initial_state(batch)
    for _ in range(WARMUP_CALLS):
        state = policy.action(time_step, state).state
    times = []
    clock = time.perf_counter
    deadline = clock() + seconds
    while len(times) < MAX_CALLS:
        start = clock()
        state = policy.action(time_step, state).state
        end = clock()
        times.append(end - start)
        if end >= deadline and len(times) >= MIN_CALLS:
            break
    us = np.asarray(times) * 1e6
    p50, p90, p99 = np.percentile(us, [50, 90, 99])
    return BenchRow(
        backend, batch, len(times), float(p50), float(p90), float(p99), float(us.mean())
    )


def render(rows: list[BenchRow]) -> Any:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    for column in ("backend", "batch", "calls", "p50 us", "p90 us", "p99 us", "actions/s"):
        table.add_column(column, justify="left" if column == "backend" else "right")
    for row in rows:
        table.add_row(
            row.backend,
            str(row.batch),
            str(row.calls),
            f"{row.p50_us:,.1f}",
            f"{row.p90_us:,.1f}",
            f"{row.p99_us:,.1f}",
            f"{row.actions_per_second:,.0f}",
        )
    return table


def plot(rows: list[BenchRow], path: Path, title: str = "") -> None:
    """Latency (p50 and p99) and throughput against batch size, one line per backend."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    figure, (latency, throughput) = plt.subplots(1, 2, figsize=(10, 4))
    for backend in dict.fromkeys(row.backend for row in rows):
        mine = sorted((r for r in rows if r.backend == backend), key=lambda r: r.batch)
        batches = [r.batch for r in mine]
        line = latency.plot(batches, [r.p50_us for r in mine], marker="o", label=f"{backend} p50")
        latency.plot(
            batches,
            [r.p99_us for r in mine],
            linestyle="--",
            color=line[0].get_color(),
            label=f"{backend} p99",
        )
        throughput.plot(batches, [r.actions_per_second for r in mine], marker="o", label=backend)
    for axis, label in ((latency, "latency per call (us)"), (throughput, "actions per second")):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("batch size")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
