"""Runtime benchmark: the onnx backend against raw onnxruntime and the tf backend.

One process, one run:

* ``action()`` latency at batch 1 and throughput at batch 256 for the onnx backend,
  raw ``onnxruntime`` ``session.run`` on the same model (a bare script's default
  session, and one with the runtime's session options), and the tf backend; the
  policy is a greedy Q policy over a 64x64 MLP (CartPole's shapes), plus the same
  network sampling its Q-values' softmax for the cost of sampling;
* cold start (a new process imports, loads and acts once) and its peak RSS, for the
  onnx backend, a bare onnxruntime script and the tf backend.

Timings interleave the contenders round by round, so a change in machine load hits
all of them alike; ratios are medians of per-round ratios. The load average is
reported, since the machine may be shared. Targets: onnx ``action()`` within 1.5x of
raw ``session.run``; onnx cold start within 1.5x of the bare onnxruntime script.

Usage: ``python benchmarks/runtime_bench.py [--json] [--rounds N] [--cold-runs N]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ACTION_TARGET = 1.5
COLD_START_TARGET = 1.5


def export_bundles(directory: Path) -> dict[str, Path]:
    """A greedy and a sampling Q policy over one 64x64 MLP, exported as bundles."""
    import numpy as np
    import tensorflow as tf

    from exporters.export import export_policy
    from toolkit.networks.q_network import QNetwork
    from toolkit.policies import greedy_policy, q_policy
    from toolkit.specs import tensor_spec
    from toolkit.trajectories import time_step as ts

    observation = tensor_spec.TensorSpec((4,), tf.float32, name="observation")
    action = tensor_spec.BoundedTensorSpec((), tf.int64, 0, 1, name="action")
    network = QNetwork(observation, action, fc_layer_params=(64, 64))
    policy = q_policy.QPolicy(ts.time_step_spec(observation), action, q_network=network)
    rng = np.random.default_rng(0)
    for variable in policy.variables():
        variable.assign(rng.normal(0, 0.3, variable.shape).astype(np.float32))
    return {
        "greedy": export_policy(greedy_policy.GreedyPolicy(policy), directory / "greedy"),
        "sampling": export_policy(policy, directory / "sampling"),
    }


def _time(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def interleaved(contenders: dict[str, Any], calls: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per call, one burst of ``calls`` per contender per round, in turn."""
    for fn in contenders.values():
        _time(fn, max(calls // 10, 1))  # warm-up: bindings, caches, lazy init
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            times[name].append(_time(fn, calls))
    return times


def _ratio(times: dict[str, list[float]], name: str, base: str) -> float:
    return statistics.median(a / b for a, b in zip(times[name], times[base], strict=True))


def in_process(bundles: dict[str, Path], rounds: int) -> list[dict[str, Any]]:
    import onnxruntime as ort

    import runtimes
    from runtimes.onnx_backend import session_options

    model = str(bundles["greedy"] / "policy.onnx")
    policies = {
        "raw": ort.InferenceSession(model, providers=["CPUExecutionProvider"]),
        "tuned": ort.InferenceSession(model, session_options(), providers=["CPUExecutionProvider"]),
        "onnx_greedy": runtimes.load_policy(bundles["greedy"], "onnx"),
        "onnx_sampling": runtimes.load_policy(bundles["sampling"], "onnx", seed=0),
        "tf_greedy": runtimes.load_policy(bundles["greedy"], "tf"),
    }
    rows = []
    for batch, calls, tf_calls in ((1, 2000, 100), (256, 200, 40)):
        rows += _measure_batch(policies, batch, calls, tf_calls, rounds)
    return rows


RAW = "raw onnxruntime session.run (default session)"
TF_GREEDY = "tf backend action() greedy"


def _measure_batch(
    policies: dict[str, Any], batch: int, calls: int, tf_calls: int, rounds: int
) -> list[dict[str, Any]]:
    import numpy as np

    from toolkit.trajectories import time_step as ts

    observation = np.random.default_rng(batch).normal(size=(batch, 4)).astype(np.float32)
    # Batch 1 is the common production call: one unbatched observation.
    time_step = ts.restart(observation[0]) if batch == 1 else ts.restart(observation, batch)
    feed = {
        "step_type": np.zeros(batch, np.int32),
        "reward": np.zeros(batch, np.float32),
        "discount": np.ones(batch, np.float32),
        "observation": observation,
    }
    raw, tuned = policies["raw"], policies["tuned"]
    onnx_greedy, onnx_sampling = policies["onnx_greedy"], policies["onnx_sampling"]
    tf_greedy = policies["tf_greedy"]
    times = interleaved(
        {
            RAW: lambda: raw.run(None, feed),
            "raw onnxruntime session.run (runtime's options)": lambda: tuned.run(None, feed),
            "onnx backend action() greedy": lambda: onnx_greedy.action(time_step),
            "onnx backend action() sampling": lambda: onnx_sampling.action(time_step),
        },
        calls,
        rounds,
    )
    # The tf backend is ~100x slower: fewer calls, against the same raw baseline.
    tf_times = interleaved(
        {TF_GREEDY: lambda: tf_greedy.action(time_step), RAW: lambda: raw.run(None, feed)},
        tf_calls,
        max(rounds // 2, 3),
    )
    rows = []
    for name, source in [*((n, times) for n in times), (TF_GREEDY, tf_times)]:
        values = source[name]
        rows.append(
            {
                "batch": batch,
                "what": name,
                "median_us": statistics.median(values) * 1e6,
                "best_us": min(values) * 1e6,
                "actions_per_s": batch / statistics.median(values),
                "vs_raw": _ratio(source, name, RAW),
            }
        )
    return rows


_COLD_SCRIPTS = {
    "bare onnxruntime script": """
        import numpy as np
        import onnxruntime as ort
        session = ort.InferenceSession({model!r}, providers=["CPUExecutionProvider"])
        feed = {{"step_type": np.zeros(1, np.int32), "reward": np.zeros(1, np.float32),
                 "discount": np.ones(1, np.float32), "observation": np.zeros((1, 4), np.float32)}}
        session.run(None, feed)
    """,
    "onnx backend": """
        import numpy as np
        import runtimes
        from toolkit.trajectories import time_step as ts
        policy = runtimes.load_policy({bundle!r}, "onnx")
        policy.action(ts.restart(np.zeros(4, np.float32)))
    """,
    "tf backend": """
        import numpy as np
        import runtimes
        from toolkit.trajectories import time_step as ts
        policy = runtimes.load_policy({bundle!r}, "tf")
        policy.action(ts.restart(np.zeros(4, np.float32)))
    """,
}

# Peak RSS of this process image: /proc's VmHWM (ru_maxrss would carry over the forking
# parent's peak, which holds TensorFlow), else ru_maxrss where there is no /proc.
_RSS = """
import resource, sys
def _peak_kib():
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
sys.stdout.write("RSS_KIB=%d\\n" % _peak_kib())
"""


def cold_start(bundle: Path, runs: int, pycache: Path) -> list[dict[str, Any]]:
    """Wall time of a new process that imports, loads and acts once; its peak RSS.

    Children write bytecode to ``pycache`` (an installed package is compiled at install;
    a checkout run with PYTHONDONTWRITEBYTECODE would compile every module at every
    start), and one unmeasured run per contender writes it and warms the file cache.
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    model = str(bundle / "policy.onnx")
    results: dict[str, dict[str, list[float]]] = {
        name: {"s": [], "rss": []} for name in _COLD_SCRIPTS
    }
    for round_index in range(runs + 1):
        for name, template in _COLD_SCRIPTS.items():
            code = textwrap.dedent(template.format(model=model, bundle=str(bundle))) + _RSS
            start = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT
            )
            elapsed = time.perf_counter() - start
            if done.returncode != 0:
                raise RuntimeError(f"{name} failed:\n{done.stderr}")
            if round_index == 0:
                continue  # the warm-up round
            rss = [line for line in done.stdout.splitlines() if line.startswith("RSS_KIB=")]
            results[name]["s"].append(elapsed)
            results[name]["rss"].append(int(rss[-1].split("=")[1]) / 1024)
    base = statistics.median(results["bare onnxruntime script"]["s"])
    base_rss = statistics.median(results["bare onnxruntime script"]["rss"])
    return [
        {
            "what": name,
            "median_s": statistics.median(r["s"]),
            "best_s": min(r["s"]),
            "peak_rss_mib": statistics.median(r["rss"]),
            "vs_bare": statistics.median(r["s"]) / base,
            "rss_vs_bare": statistics.median(r["rss"]) / base_rss,
        }
        for name, r in results.items()
    ]


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not available on every platform
        return []


def run(rounds: int, cold_runs: int) -> dict[str, Any]:
    load_before = _load()
    directory = Path(tempfile.mkdtemp(prefix="runtime-bench-"))
    try:
        bundles = export_bundles(directory)
        action_rows = in_process(bundles, rounds)
        cold_rows = cold_start(bundles["greedy"], cold_runs, directory / "pycache")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    import onnxruntime

    onnx_b1 = next(
        r for r in action_rows if r["batch"] == 1 and r["what"] == "onnx backend action() greedy"
    )
    onnx_cold = next(r for r in cold_rows if r["what"] == "onnx backend")
    return {
        "benchmark": "runtime",
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": _load(),
            "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__,
            "platform": platform.platform(),
        },
        "action": action_rows,
        "cold_start": cold_rows,
        "targets": {
            "onnx_action_vs_raw": {
                "target": ACTION_TARGET,
                "measured": round(onnx_b1["vs_raw"], 3),
                "met": onnx_b1["vs_raw"] <= ACTION_TARGET,
            },
            "onnx_cold_start_vs_bare": {
                "target": COLD_START_TARGET,
                "measured": round(onnx_cold["vs_bare"], 3),
                "met": onnx_cold["vs_bare"] <= COLD_START_TARGET,
            },
        },
    }


def table(result: dict[str, Any]) -> str:
    machine = result["machine"]
    lines = [
        f"runtime benchmark: {machine['cpus']} CPUs, load average {machine['load_average_before']}"
        f" -> {machine['load_average_after']}, onnxruntime {machine['onnxruntime']}, "
        f"Python {machine['python']}",
        "",
        "action() on a 64x64 MLP Q policy (interleaved rounds; ratio = median of per-round "
        "ratios to raw default session.run)",
        f"{'batch':>5}  {'what':<50} {'median us':>10} {'best us':>9} {'actions/s':>11} "
        f"{'vs raw':>7}",
    ]
    for row in result["action"]:
        lines.append(
            f"{row['batch']:>5}  {row['what']:<50} {row['median_us']:>10.1f} "
            f"{row['best_us']:>9.1f} {row['actions_per_s']:>11,.0f} {row['vs_raw']:>6.2f}x"
        )
    lines += [
        "",
        "cold start: new process, import + load + first action",
        f"{'what':<28} {'median s':>9} {'best s':>8} {'vs bare':>8} {'peak RSS MiB':>13} "
        f"{'vs bare':>8}",
    ]
    for row in result["cold_start"]:
        lines.append(
            f"{row['what']:<28} {row['median_s']:>9.3f} {row['best_s']:>8.3f} "
            f"{row['vs_bare']:>7.2f}x {row['peak_rss_mib']:>13.1f} {row['rss_vs_bare']:>7.2f}x"
        )
    lines.append("")
    for name, target in result["targets"].items():
        verdict = "met" if target["met"] else "NOT met"
        lines.append(
            f"target {name}: {target['measured']:.2f}x (target <= {target['target']}x): {verdict}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    parser.add_argument("--cold-runs", type=int, default=5, help="new processes per contender")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    result = run(args.rounds, args.cold_runs)
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
