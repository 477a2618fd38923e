"""The training examples' shared output: a progress bar and the run's closing report.

``ProgressBar`` is the ``on_progress`` of ``toolkit.agents.training``'s loops;
``report_run`` restores the best policy, evaluates it (and its export) on fresh episodes
and prints the lines the examples end with (the last: ``mean return: <number>``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from toolkit.agents.training import Progress, TrainResult, restore_best_policy
from toolkit.environments import driver as driver_lib
from toolkit.policies.py_tf_policy import PyTFPolicy

__all__ = ["ProgressBar", "format_number", "report_run"]


class ProgressBar:
    """A rich progress bar (on stderr) showing steps, loss, recent and evaluated returns.

    Use as ``on_progress``; ``with ProgressBar(...) as bar:`` starts and stops it. Drawn on
    stderr so that stdout carries only the results.
    """

    def __init__(self, description: str, total: int, *, enabled: bool = True):
        self._progress = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as RichProgress

        self._progress = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("return {task.fields[ret]}"),
            TextColumn("eval {task.fields[evaluation]}"),
            TextColumn("{task.fields[lag]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True, width=_progress_width()),
        )
        self._task = self._progress.add_task(
            description, total=total, loss="-", ret="-", evaluation="-", lag=""
        )

    def __enter__(self) -> ProgressBar:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, progress: Progress) -> None:
        if self._progress is None:
            return
        self._progress.update(
            self._task,
            completed=progress.env_steps,
            loss=format_number(progress.loss, ".3f"),
            ret=format_number(progress.recent_return),
            evaluation=format_number(progress.eval_return),
            lag="" if progress.policy_lag is None else f"lag {progress.policy_lag}",
        )


def _progress_width() -> int | None:
    """The terminal's width on a terminal; else wide enough for the whole line.

    Output that is not a terminal gets the bar's last state once, at the end, at rich's
    default of 80 columns, which cut the step count ("13054/200...").
    """
    if sys.stderr.isatty():
        return None
    return max(int(os.environ.get("COLUMNS") or 0), 200)


def report_run(
    agent: Any,
    output_dir: str | os.PathLike,
    eval_env: Any,
    result: TrainResult,
    training_seconds: float,
    *,
    final_eval_seed: int,
    started: float,
    exported: Callable[[int | None], Any] | None = None,
) -> float:
    """Restores the best policy, evaluates it on fresh episodes and prints the run's report.

    The examples' shared ending: its last line is ``mean return: <number>``. With
    ``exported`` (e.g. ``exporters.play.export_and_play`` bound to a bundle folder and
    the final episodes), called with the best policy's train step once that policy is
    restored, returning an ``Evaluation`` of the exported policy: the last line is then
    that evaluation's mean return, after a ``TF policy mean return`` line.

    Returns:
      The mean return of the final evaluation (of the exported policy, with ``exported``).
    """
    best_step = restore_best_policy(agent, output_dir)
    final = driver_lib.evaluate_policy(eval_env, PyTFPolicy(agent.policy), seed=final_eval_seed)
    deployed = None
    if exported is not None:
        export_start = time.perf_counter()
        deployed = exported(best_step)
        export_seconds = time.perf_counter() - export_start
    if result.resumed_from:
        print(f"resumed from train step {result.resumed_from}")
    print(
        f"stopped: {result.stop_reason} after {result.env_steps} env steps, "
        f"{result.train_step} train steps"
    )
    log = ", ".join(f"{t:.1f}s/{n}/{r:.1f}" for t, n, r in result.evaluations)
    print(f"evaluations (seconds/env steps/mean return): {log}")
    print(
        f"best evaluation: {format_number(result.best_return)} (policy of train step {best_step})"
    )
    print(f"training time: {training_seconds:.1f} s ({result.eval_seconds:.1f} s evaluating)")
    print(f"wall time: {time.perf_counter() - started:.1f} s")
    if deployed is None:
        print(f"mean return: {final.mean_return:.1f}")
        return final.mean_return
    print(f"export and its episodes: {export_seconds:.1f} s")
    print(f"TF policy mean return: {final.mean_return:.1f} +- {_stderr(final):.1f}")
    print(
        f"exported policy (onnx backend, sampling) mean return: {deployed.mean_return:.1f} "
        f"+- {_stderr(deployed):.1f}"
    )
    print(f"mean return: {deployed.mean_return:.1f}")
    return deployed.mean_return


def _stderr(evaluation: Any) -> float:
    returns = np.asarray(evaluation.episode_returns, np.float64)
    return float(returns.std(ddof=1) / np.sqrt(len(returns))) if len(returns) > 1 else 0.0


def format_number(value: float | None, spec: str = ".1f") -> str:
    """``value`` formatted, or "-" for None and NaN."""
    if value is None or not np.isfinite(value):
        return "-"
    return format(value, spec)
