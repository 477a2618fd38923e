"""SAC on Pendulum-v1 and PPO on CartPole-v1: time and env steps to target, per seed.

    python benchmarks/time_to_target_sac_ppo.py [--seeds 0 1 2] [--only sac|ppo] [--json FILE]
        [-- --max-seconds 300]   # more flags for the examples, e.g. a longer budget

Runs ``examples/train_pendulum_sac.py`` and ``examples/train_cartpole_ppo.py`` with their
defaults once per seed, each in a fresh process, and reports per seed:

- time and env steps to target: training seconds and environment steps until the first
  periodic evaluation (20 episodes, the stochastic policy sampling) reaching the target,
  or "-" (env steps are the figure a loaded machine does not change);
- the final mean return over 20 fresh episodes of the TF policy and of the exported
  bundle on the onnx backend, sampling (the example's last line);
- training time, wall time and the 1-minute load average before and after.

Targets (issue 18): SAC's exported policy >= -200 within 60 s of training; PPO's >= 475
within 120 s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS = {
    "sac": ("train_pendulum_sac.py", "Pendulum-v1 SAC", -200.0, 60.0),
    "ppo": ("train_cartpole_ppo.py", "CartPole-v1 PPO", 475.0, 120.0),
}


def run_seed(task: str, seed: int, extra: list[str] = ()) -> dict:
    script, _, target, budget = TASKS[task]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix=f"{task}-{seed}-") as out:
        start = time.perf_counter()
        completed = subprocess.run(
            [sys.executable, str(ROOT / "examples" / script), "--seed", str(seed)]
            + ["--output-dir", out, "--no-progress", *extra],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(f"{task} seed {seed} failed:\n{completed.stderr[-2000:]}")
    lines = completed.stdout.strip().splitlines()
    final = float(re.fullmatch(r"mean return: (-?[\d.]+)", lines[-1]).group(1))
    tf_return = float(_field(lines, r"TF policy mean return: (-?[\d.]+) .*"))
    training = float(_field(lines, r"training time: ([\d.]+) s.*"))
    evaluations = []
    log = _field(lines, r"evaluations \(seconds/env steps/mean return\): (.*)")
    for item in filter(None, (log or "").split(", ")):
        seconds, steps, mean = item.split("/")
        evaluations.append((float(seconds.rstrip("s")), int(steps), float(mean)))
    reached = next(((t, n) for t, n, r in evaluations if r >= target), None)
    return {
        "task": task,
        "seed": seed,
        "time_to_target": reached[0] if reached else None,
        "env_steps_to_target": reached[1] if reached else None,
        "final_mean_return": final,
        "tf_mean_return": tf_return,
        "training_seconds": training,
        "wall_seconds": wall,
        "stopped": _field(lines, r"stopped: (.*)"),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "ok": final >= target and training <= budget + 1.0,
    }


def _field(lines: list[str], pattern: str) -> str | None:
    for line in lines:
        match = re.fullmatch(pattern, line)
        if match:
            return match.group(1)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", choices=sorted(TASKS), help="run one task")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("extra", nargs="*", help="more flags for the examples (after --)")
    args = parser.parse_args(argv)
    results = []
    for task in [args.only] if args.only else list(TASKS):
        _, label, target, budget = TASKS[task]
        print(f"{label}: target {target:g} within {budget:g} s of training")
        print(
            f"{'seed':>4} {'t->target s':>11} {'steps':>7} {'onnx':>7} {'tf':>7} "
            f"{'train s':>8} {'wall s':>7} {'load':>10}  stopped"
        )
        for seed in args.seeds:
            r = run_seed(task, seed, args.extra)
            results.append(r)
            reached = "-" if r["time_to_target"] is None else f"{r['time_to_target']:.1f}"
            steps = "-" if r["env_steps_to_target"] is None else str(r["env_steps_to_target"])
            load = f"{r['load_before']:.1f}->{r['load_after']:.1f}"
            print(
                f"{seed:>4} {reached:>11} {steps:>7} {r['final_mean_return']:>7.1f} "
                f"{r['tf_mean_return']:>7.1f} {r['training_seconds']:>8.1f} "
                f"{r['wall_seconds']:>7.1f} {load:>10}  {r['stopped']}",
                flush=True,
            )
        ok = [r for r in results if r["task"] == task and r["ok"]]
        print(
            f"{len(ok)}/{len(args.seeds)} seeds: exported policy's fresh-episode mean >= "
            f"{target:g} within {budget:g} s of training\n"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
