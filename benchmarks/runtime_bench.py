"""Runtime benchmark: the onnx and litert backends against raw onnxruntime, side by side.

One process, one run, three policies: the demo's greedy Q policy (CartPole, MLP
4-100-50-2), a Gaussian actor (8 -> 64x64 -> 2 with N(0, 0.1) noise sampled in the
reader) and an LSTM policy (greedy Q over an LSTM of 32 units, its state fed back):

* ``action()`` latency at batch 1 and batch 256 of the onnx backend and the litert
  backend, and raw ``onnxruntime`` ``session.run`` on the same policy.onnx (a bare
  script's default session);
* cold start (a new process imports, loads and acts once) and its peak RSS, for the
  onnx, litert and tf backends and a bare onnxruntime script, on the demo policy.

Timings interleave the contenders round by round, so a change in machine load hits
all of them alike; ratios are medians of per-round ratios. Targets: litert
``action()`` at batch 1 <= 0.5x raw ``session.run``, onnx <= 1.0x (on the demo
policy); litert cold start <= 0.8x the bare onnxruntime script.

Usage: ``python benchmarks/runtime_bench.py [--json] [--rounds N] [--cold-runs N]
[--only action|cold]``
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

LITERT_ACTION_TARGET = 0.5
ONNX_ACTION_TARGET = 1.0
LITERT_COLD_START_TARGET = 0.8
FORMATS = ("saved_model", "onnx", "litert")


def _weights(policy: Any, seed: int) -> Any:
    import numpy as np

    rng = np.random.default_rng(seed)
    for variable in policy.variables():
        variable.assign(rng.normal(0, 0.3, variable.shape).astype(np.float32))
    return policy


def export_bundles(directory: Path) -> dict[str, Path]:
    """The three benchmark policies, exported with SavedModel, ONNX and LiteRT."""
    import tensorflow as tf

    from examples import cartpole_factory
    from exporters.export import export_policy
    from toolkit.networks.actor_network import ActorNetwork
    from toolkit.networks.q_rnn_network import QRnnNetwork
    from toolkit.policies import actor_policy, gaussian_policy, greedy_policy, q_policy
    from toolkit.specs import tensor_spec
    from toolkit.trajectories import time_step as ts

    demo = _weights(cartpole_factory.policy(), 0)
    observation = tensor_spec.TensorSpec((8,), tf.float32, name="observation")
    force = tensor_spec.BoundedTensorSpec((2,), tf.float32, -1.0, 1.0, name="force")
    actor = ActorNetwork(observation, force, fc_layer_params=(64, 64))
    gaussian = gaussian_policy.GaussianPolicy(
        _weights(actor_policy.ActorPolicy(ts.time_step_spec(observation), force, actor), 1),
        scale=0.1,
    )
    move = tensor_spec.BoundedTensorSpec((), tf.int64, 0, 3, name="move")
    rnn = QRnnNetwork(observation, move, input_fc_layer_params=(32,), lstm_size=(32,))
    lstm = greedy_policy.GreedyPolicy(
        _weights(q_policy.QPolicy(ts.time_step_spec(observation), move, q_network=rnn), 2)
    )
    return {
        name: export_policy(policy, directory / name, formats=FORMATS)
        for name, policy in (("demo", demo), ("gaussian", gaussian), ("lstm", lstm))
    }


def _time(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def interleaved(contenders: dict[str, Any], calls: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per call, one burst of ``calls`` per contender per round, in turn."""
    for fn in contenders.values():
        _time(fn, max(calls // 10, 1))  # warm-up: bindings, allocations, lazy init
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            times[name].append(_time(fn, calls))
    return times


def _ratio(times: dict[str, list[float]], name: str, base: str) -> float:
    return statistics.median(a / b for a, b in zip(times[name], times[base], strict=True))


RAW = "raw session.run"


def _contenders(bundle: Path, batch: int) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort

    import runtimes
    from toolkit.trajectories import time_step as ts

    onnx = runtimes.load_policy(bundle, "onnx", seed=0)
    litert = runtimes.load_policy(bundle, "litert", seed=0)
    rng = np.random.default_rng(batch)
    shape = onnx.time_step_spec.observation.shape
    observation = rng.normal(size=(batch, *shape)).astype(np.float32)
    # Batch 1 is the common production call: one unbatched observation.
    outer = None if batch == 1 else batch
    time_step = ts.restart(observation[0]) if batch == 1 else ts.restart(observation, batch)
    session = ort.InferenceSession(str(bundle / "policy.onnx"), providers=["CPUExecutionProvider"])
    feed = {
        "step_type": np.zeros(batch, np.int32),
        "reward": np.zeros(batch, np.float32),
        "discount": np.ones(batch, np.float32),
        "observation": observation,
    }
    states = {}
    for policy in (onnx, litert):
        states[policy.backend] = policy.get_initial_state(outer)
    for name, value in _flat_state(onnx.get_initial_state(batch)).items():
        feed[name] = value

    def act(policy):
        def call():
            states[policy.backend] = policy.action(time_step, states[policy.backend]).state

        return call

    return {
        RAW: lambda: session.run(None, feed),
        "onnx backend action()": act(onnx),
        "litert backend action()": act(litert),
    }


def _flat_state(state: Any) -> dict[str, Any]:
    from toolkit import nest

    return dict(nest.flatten_with_paths(state, "policy_state"))


def in_process(bundles: dict[str, Path], rounds: int) -> list[dict[str, Any]]:
    rows = []
    for name, bundle in bundles.items():
        for batch, calls in ((1, 2000), (256, 100)):
            times = interleaved(_contenders(bundle, batch), calls, rounds)
            for what, values in times.items():
                rows.append(
                    {
                        "policy": name,
                        "batch": batch,
                        "what": what,
                        "median_us": statistics.median(values) * 1e6,
                        "actions_per_s": batch / statistics.median(values),
                        "vs_raw": _ratio(times, what, RAW),
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
    "litert backend": """
        import numpy as np
        import runtimes
        from toolkit.trajectories import time_step as ts
        policy = runtimes.load_policy({bundle!r}, "litert")
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

    Children write bytecode to ``pycache`` (an installed package is compiled at install),
    and one unmeasured run per contender writes it and warms the file cache.
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


def _target(measured: float, target: float) -> dict[str, Any]:
    return {"target": target, "measured": round(measured, 3), "met": measured <= target}


def run(rounds: int, cold_runs: int, only: str | None = None) -> dict[str, Any]:
    load_before = _load()
    directory = Path(tempfile.mkdtemp(prefix="runtime-bench-"))
    try:
        bundles = export_bundles(directory)
        action_rows = in_process(bundles, rounds) if only != "cold" else []
        cold_rows = (
            cold_start(bundles["demo"], cold_runs, directory / "pycache")
            if only != "action"
            else []
        )
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    import ai_edge_litert
    import onnxruntime

    def ratio(what: str) -> float:
        return next(
            r["vs_raw"]
            for r in action_rows
            if r["policy"] == "demo" and r["batch"] == 1 and r["what"] == what
        )

    targets = {}
    if action_rows:
        targets["litert_action_vs_raw"] = _target(
            ratio("litert backend action()"), LITERT_ACTION_TARGET
        )
        targets["onnx_action_vs_raw"] = _target(ratio("onnx backend action()"), ONNX_ACTION_TARGET)
    if cold_rows:
        litert_cold = next(r for r in cold_rows if r["what"] == "litert backend")
        targets["litert_cold_start_vs_bare"] = _target(
            litert_cold["vs_bare"], LITERT_COLD_START_TARGET
        )
    return {
        "benchmark": "runtime",
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": _load(),
            "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__,
            "ai_edge_litert": getattr(ai_edge_litert, "__version__", "?"),
            "platform": platform.platform(),
        },
        "action": action_rows,
        "cold_start": cold_rows,
        "targets": targets,
    }


def table(result: dict[str, Any]) -> str:
    machine = result["machine"]
    lines = [
        f"runtime benchmark: {machine['cpus']} CPUs, load average {machine['load_average_before']}"
        f" -> {machine['load_average_after']}, onnxruntime {machine['onnxruntime']}, "
        f"ai-edge-litert {machine['ai_edge_litert']}, Python {machine['python']}",
        "",
        "action() latency (interleaved rounds; ratio = median of per-round ratios to raw "
        "default session.run on the same policy.onnx)",
        f"{'policy':<9} {'batch':>5}  {'what':<26} {'median us':>10} {'actions/s':>11} "
        f"{'vs raw':>7}",
    ]
    for row in result["action"]:
        lines.append(
            f"{row['policy']:<9} {row['batch']:>5}  {row['what']:<26} {row['median_us']:>10.1f} "
            f"{row['actions_per_s']:>11,.0f} {row['vs_raw']:>6.2f}x"
        )
    lines += [
        "",
        "cold start (demo policy): new process, import + load + first action",
        f"{'what':<26} {'median s':>9} {'best s':>8} {'vs bare':>8} {'peak RSS MiB':>13} "
        f"{'vs bare':>8}",
    ]
    for row in result["cold_start"]:
        lines.append(
            f"{row['what']:<26} {row['median_s']:>9.3f} {row['best_s']:>8.3f} "
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
    parser.add_argument(
        "--only", choices=("action", "cold"), help="measure action() latency or cold start only"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    result = run(args.rounds, args.cold_runs, args.only)
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
