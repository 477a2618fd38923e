"""What a trust policy adds to a runtime's cold start, measured as ratios in one run.

Usage: ``python benchmarks/trust_bench.py [--rounds 15] [--backend onnx] [--work DIR]``

Exports (once) the demo-sized greedy Q policy (SavedModel, ONNX and LiteRT: the files a
fleet ships), signs it with a fresh P-256 key, then starts fresh Python processes that
each ``load_policy`` the bundle and take one action, alternately without and with
``trust=PUBLIC.pem``, ``--rounds`` times each. Processes alternate so load on the
machine hits both alike; the figure is the ratio of medians, with the spread (the
quartiles of each). Each process also reports its own in-process time of the load and
of the verification alone (``verify_bundle``), and which modules the trusted load
imports that the plain one does not. Wall-clock under other jobs' load is noisy: take
the ratio, and re-run on a quiet machine for absolute figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_CHILD = """
import sys, time, json
t0 = time.perf_counter()
import numpy as np
import runtimes
from toolkit.trajectories import time_step as ts
before = set(sys.modules)
t1 = time.perf_counter()
trust = sys.argv[3] if sys.argv[3] != "-" else False
policy = runtimes.load_policy(sys.argv[1], sys.argv[2], trust=trust)
t2 = time.perf_counter()
policy.action(ts.restart(np.zeros(policy.time_step_spec.observation.shape, np.float32)))
t3 = time.perf_counter()
verify = None
if trust:
    from toolkit import bundle
    policy_ = bundle.TrustPolicy.from_files([trust])
    v0 = time.perf_counter()
    bundle.verify_bundle(sys.argv[1], policy_)
    verify = time.perf_counter() - v0
new = sorted(m.split(".")[0] for m in set(sys.modules) - before)
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "first_action": t3 - t2,
                  "verify_again": verify, "new_top_modules": sorted(set(new))}))
"""


def _quartiles(values: list[float]) -> str:
    q = statistics.quantiles(values, n=4)
    median = statistics.median(values)
    return f"median {median * 1e3:.1f} ms (IQR {q[0] * 1e3:.1f}-{q[2] * 1e3:.1f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--backend", default="onnx", choices=("onnx", "litert"))
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from toolkit import bundle

    work = args.work or Path(tempfile.mkdtemp(prefix="trust-bench-"))
    path = work / "bundle"
    if not path.exists():
        from exporters import export_policy
        from tests import exported_bundles

        policy = exported_bundles.tf_policy_for("tf/greedy_q")
        export_policy(policy, path, formats=("saved_model", "onnx", "litert"), train_step=1)
    from tests.signing_keys import write_key_pair

    private, public = write_key_pair(work, "bench")
    bundle.sign_bundle(path, private)
    files = sum(1 for p in path.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    print(f"bundle: {files} files, {size / 1024:.0f} KiB; backend {args.backend}", flush=True)

    wall: dict[str, list[float]] = {"plain": [], "trusted": []}
    inner: dict[str, list[dict]] = {"plain": [], "trusted": []}
    for _ in range(args.rounds):
        for mode, key in (("plain", "-"), ("trusted", str(public))):
            start = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-c", _CHILD, str(path), args.backend, key],
                cwd=ROOT,
                capture_output=True,
                text=True,
                env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
            )
            wall[mode].append(time.perf_counter() - start)
            if done.returncode != 0:
                print(done.stderr[-2000:], file=sys.stderr)
                return 1
            inner[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
    for mode in ("plain", "trusted"):
        loads = [r["load"] for r in inner[mode]]
        print(f"{mode:8s} process wall {_quartiles(wall[mode])}; load_policy {_quartiles(loads)}")
    ratio_wall = statistics.median(wall["trusted"]) / statistics.median(wall["plain"])
    ratio_load = statistics.median(r["load"] for r in inner["trusted"]) / statistics.median(
        r["load"] for r in inner["plain"]
    )
    verify = [r["verify_again"] for r in inner["trusted"]]
    print(f"ratio trusted/plain: process wall {ratio_wall:.2f}, load_policy {ratio_load:.2f}")
    print(f"verify_bundle alone (warm, in process): {_quartiles(verify)}")
    plain_new = set(inner["plain"][0]["new_top_modules"])
    extra = sorted(set(inner["trusted"][0]["new_top_modules"]) - plain_new)
    print(f"top-level modules the trusted load adds: {extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
