"""Time to a greedy CartPole-v1 return of 475, per training seed, with the example's defaults.

    python benchmarks/time_to_475.py [--seeds 0 1 2] [--json results.json]

Runs ``examples/train_cartpole.py`` once per seed, each in a fresh process (imports and
final evaluation included in its wall time), and reports per seed:

- time-to-475: training seconds until the first periodic evaluation (20 episodes)
  with a mean return of at least 475, or "-" if none reached it;
- the final mean return over 20 fresh episodes (the example's last line), which must
  be at least 475 within 60 s of training;
- the training time, the whole run's wall time (target: under 90 s) and the machine's
  1-minute load average before and after (other processes share the cores).
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
EXAMPLE = ROOT / "examples" / "train_cartpole.py"
TARGET = 475.0
TRAINING_BUDGET = 60.0
WALL_BUDGET = 90.0


def run_seed(seed: int, extra: list[str]) -> dict:
    """Runs the example for one seed and parses its output."""
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix=f"cartpole-{seed}-") as out:
        start = time.perf_counter()
        completed = subprocess.run(
            [sys.executable, str(EXAMPLE), "--seed", str(seed), "--output-dir", out]
            + ["--no-progress", *extra],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(f"seed {seed} failed:\n{completed.stderr[-2000:]}")
    lines = completed.stdout.strip().splitlines()
    final = float(re.fullmatch(r"mean return: (-?[\d.]+)", lines[-1]).group(1))
    training = float(_field(lines, r"training time: ([\d.]+) s.*"))
    evaluations = []
    log = _field(lines, r"evaluations \(seconds/env steps/mean return\): (.*)")
    for item in filter(None, (log or "").split(", ")):
        seconds, steps, mean = item.split("/")
        evaluations.append((float(seconds.rstrip("s")), int(steps), float(mean)))
    reached = next(((t, n) for t, n, r in evaluations if r >= TARGET), None)
    return {
        "seed": seed,
        "time_to_475": reached[0] if reached else None,
        "env_steps_to_475": reached[1] if reached else None,
        "final_mean_return": final,
        "training_seconds": training,
        "wall_seconds": wall,
        "stopped": _field(lines, r"stopped: (.*)"),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "ok": final >= TARGET and training <= TRAINING_BUDGET and wall <= WALL_BUDGET,
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
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("extra", nargs="*", help="more flags for the example (after --)")
    args = parser.parse_args(argv)
    print(
        f"{'seed':>4} {'t->475 s':>9} {'steps':>7} {'final':>7} {'train s':>8} "
        f"{'wall s':>7} {'load':>10}  stopped"
    )
    results = []
    for seed in args.seeds:
        r = run_seed(seed, args.extra)
        results.append(r)
        t475 = "-" if r["time_to_475"] is None else f"{r['time_to_475']:.1f}"
        steps = "-" if r["env_steps_to_475"] is None else str(r["env_steps_to_475"])
        load = f"{r['load_before']:.1f}->{r['load_after']:.1f}"
        print(
            f"{seed:>4} {t475:>9} {steps:>7} {r['final_mean_return']:>7.1f} "
            f"{r['training_seconds']:>8.1f} {r['wall_seconds']:>7.1f} {load:>10}  {r['stopped']}",
            flush=True,
        )
    passed = sum(r["ok"] for r in results)
    print(
        f"{passed}/{len(results)} seeds reached a fresh-episode mean >= {TARGET:g} within "
        f"{TRAINING_BUDGET:g} s of training and {WALL_BUDGET:g} s of wall time"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
