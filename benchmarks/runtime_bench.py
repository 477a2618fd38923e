"""Runtime benchmark: the onnx and litert backends against raw onnxruntime, side by side.

One process, one run, three policies: the demo's greedy Q policy (CartPole, MLP
4-100-50-2), a Gaussian actor (8 -> 64x64 -> 2 with N(0, 0.1) noise sampled in the
reader) and an LSTM policy (greedy Q over an LSTM of 32 units, its state fed back):

* ``action()`` latency at batch 1 and batch 256 of the onnx backend and the litert
  backend, and raw ``onnxruntime`` ``session.run`` on the same policy.onnx (a bare
  script's default session); every contender cycles through the same 64 observations
  (batches), one per call: the demo's are CartPole-v1 states met by the policy itself,
  the others' N(0, 1) draws (their 8-dim observations have no installed environment);
* cold start (a new process imports, loads and acts once) and its peak RSS, for the
  onnx, litert and tf backends and a bare onnxruntime script, on the demo policy.

* with ``--only threads``: the graph alone (raw ``session.run``) on one intra-op
  thread against onnxruntime's default, batches 1 to 256, the measurement behind
  ``runtimes.AUTO_THREADS_MIN_BATCH`` (``threads="auto"``).

Timings interleave the contenders round by round, so a change in machine load hits
all of them alike; ratios are medians of per-round ratios, reported with their min and
max over the rounds, and the load average is read before and after each part. Each
measured burst follows ``SETTLE_S`` of unmeasured calls of the same contender, so no
contender is timed in the wake of the one before it (raw onnxruntime's worker thread
spins on for tens of milliseconds after its last run). Targets
(issue 24), for every policy: the onnx backend's ``action()`` <= 1.0x raw
``session.run`` at batch 1 and 256 (sampling included on our side), litert <= 0.5x
at batch 1 and <= 1.0x at 256; cold start (median of the runs): litert <= 0.8x the
bare onnxruntime script, onnx <= 1.0x.

Usage: ``python benchmarks/runtime_bench.py [--json] [--rounds N] [--cold-runs N] [--settle S]
[--only action|cold|threads]``
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

#: (backend, batch) -> the most ``action()`` may cost, as a multiple of raw session.run
ACTION_TARGETS = {("onnx", 1): 1.0, ("onnx", 256): 1.0, ("litert", 1): 0.5, ("litert", 256): 1.0}
#: backend -> the most its cold start may take, as a multiple of the bare script's
COLD_START_TARGETS = {"onnx": 1.0, "litert": 0.8}
THREAD_BATCHES = (1, 16, 32, 64, 128, 256)
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


#: Seconds each contender runs unmeasured before each of its measured bursts, so that
#: what the one before it left running has stopped: onnxruntime's default session
#: (raw ``session.run``) keeps its intra-op worker thread spinning after its last run.
#: Read from /proc/self/task/*/schedstat (``/tmp`` script, load 3): after a 300-call
#: burst of raw LSTM batch-256 runs, the worker thread still used 4-8 ms of CPU in each
#: 10 ms for 30-50 ms, then nothing; a batch-256 burst of the next contender (100 calls,
#: 5-20 ms) ran entirely in that wake. Twice the longest tail seen.
SETTLE_S = 0.1


def interleaved(
    contenders: dict[str, Any], calls: int, rounds: int, settle: float = SETTLE_S
) -> dict[str, list[float]]:
    """Seconds per call, one burst of ``calls`` per contender per round, in turn; before
    each burst the contender runs unmeasured for ``settle`` seconds (``SETTLE_S``)."""
    for fn in contenders.values():
        _time(fn, max(calls // 10, 1))  # warm-up: bindings, allocations, lazy init
    times: dict[str, list[float]] = {name: [] for name in contenders}
    clock = time.perf_counter
    for _ in range(rounds):
        for name, fn in contenders.items():
            end = clock() + settle
            while clock() < end:  # the previous contender's threads wind down meanwhile
                fn()
            times[name].append(_time(fn, calls))
    return times


def _spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _ratios(times: dict[str, list[float]], name: str, base: str) -> dict[str, float]:
    """min, median and max over the rounds of ``name``'s time over ``base``'s."""
    return _spread([a / b for a, b in zip(times[name], times[base], strict=True)])


RAW = "raw session.run"


#: Distinct observations each contender cycles through, one per call, in the same order.
STATES = 64
#: policy -> the gymnasium environment its observations come from (played by the policy
#: itself); the others' 8-dim observations (LunarLander's shape, whose Box2D is not a
#: dependency) are N(0, 1) draws.
ENVIRONMENTS = {"demo": "CartPole-v1"}


def observations(policy: Any, env_id: str | None, count: int, seed: int) -> Any:
    """``count`` observations: states of ``env_id`` met by ``policy`` acting from seeded
    resets (a new episode when one ends), else N(0, 1) draws of the spec's shape."""
    import numpy as np

    from toolkit.trajectories import time_step as ts

    shape = policy.time_step_spec.observation.shape
    if env_id is None:
        return np.random.default_rng(seed).normal(size=(count, *shape)).astype(np.float32)
    import gymnasium

    env = gymnasium.make(env_id)
    try:
        found = []
        observation, _ = env.reset(seed=seed)
        while len(found) < count:
            observation = np.asarray(observation, np.float32)
            found.append(observation)
            action = policy.action(ts.restart(observation)).action
            observation, _, terminated, truncated, _ = env.step(action.item())
            if terminated or truncated:
                observation, _ = env.reset(seed=seed + len(found))
    finally:
        env.close()
    return np.stack(found)


def _contenders(bundle: Path, batch: int, env_id: str | None = None) -> dict[str, Any]:
    import itertools

    import numpy as np
    import onnxruntime as ort

    import runtimes
    from toolkit.trajectories import time_step as ts

    onnx = runtimes.load_policy(bundle, "onnx", seed=0)
    litert = runtimes.load_policy(bundle, "litert", seed=0)
    pool = observations(onnx, env_id, STATES * batch if batch > 1 else STATES, batch)
    # Batch 1 is the common production call: one unbatched observation. Larger batches
    # take rows of the pool in turn.
    outer = None if batch == 1 else batch
    if batch == 1:
        steps = [ts.restart(row) for row in pool]
        rows = [row[None] for row in pool]
    else:
        rows = list(pool.reshape(STATES, batch, *pool.shape[1:]))
        steps = [ts.restart(row, batch) for row in rows]
    session = ort.InferenceSession(str(bundle / "policy.onnx"), providers=["CPUExecutionProvider"])
    fixed = {
        "step_type": np.zeros(batch, np.int32),
        "reward": np.zeros(batch, np.float32),
        "discount": np.ones(batch, np.float32),
        **_flat_state(onnx.get_initial_state(batch)),
    }
    feeds = itertools.cycle([{**fixed, "observation": row} for row in rows])
    states = {}
    for policy in (onnx, litert):
        states[policy.backend] = policy.get_initial_state(outer)

    def act(policy):
        time_steps = itertools.cycle(steps)

        def call():
            key = policy.backend
            states[key] = policy.action(next(time_steps), states[key]).state

        return call

    return {
        RAW: lambda: session.run(None, next(feeds)),
        "onnx backend action()": act(onnx),
        "litert backend action()": act(litert),
    }


def _flat_state(state: Any) -> dict[str, Any]:
    from toolkit import nest

    return dict(nest.flatten_with_paths(state, "policy_state"))


def in_process(
    bundles: dict[str, Path], rounds: int, settle: float = SETTLE_S
) -> list[dict[str, Any]]:
    rows = []
    for name, bundle in bundles.items():
        for batch, calls in ((1, 2000), (256, 100)):
            contenders = _contenders(bundle, batch, ENVIRONMENTS.get(name))
            times = interleaved(contenders, calls, rounds, settle)
            for what, values in times.items():
                us = {k: v * 1e6 for k, v in _spread(values).items()}
                ratios = _ratios(times, what, RAW)
                rows.append(
                    {
                        "policy": name,
                        "batch": batch,
                        "what": what,
                        "median_us": us["median"],
                        "us": us,
                        "actions_per_s": batch / statistics.median(values),
                        "vs_raw": ratios["median"],
                        "vs_raw_spread": ratios,
                    }
                )
    return rows


def thread_scaling(
    bundles: dict[str, Path], rounds: int, settle: float = SETTLE_S
) -> list[dict[str, Any]]:
    """Raw session.run on one intra-op thread against onnxruntime's default threads."""
    import numpy as np
    import onnxruntime as ort

    from runtimes.backends.onnx import session_options

    rows = []
    for name, bundle in bundles.items():
        model = str(bundle / "policy.onnx")
        sessions = {
            threads: ort.InferenceSession(
                model, sess_options=session_options(threads), providers=["CPUExecutionProvider"]
            )
            for threads in (1, 0)
        }
        inputs = sessions[1].get_inputs()
        for batch in THREAD_BATCHES:
            rng = np.random.default_rng(batch)
            feed = {}
            for i in inputs:
                shape = [batch] + [d if isinstance(d, int) else 1 for d in i.shape[1:]]
                dtype = np.int32 if "int32" in i.type else np.float32
                value = np.zeros(shape, dtype) if dtype == np.int32 else rng.normal(size=shape)
                feed[i.name] = np.asarray(value, dtype)
            calls = max(20, 2000 // batch)
            runs = {t: (lambda s=s, f=feed: s.run(None, f)) for t, s in sessions.items()}
            times = interleaved(runs, calls, rounds, settle)
            rows.append(
                {
                    "policy": name,
                    "batch": batch,
                    "one_thread_us": statistics.median(times[1]) * 1e6,
                    "default_us": statistics.median(times[0]) * 1e6,
                    "default_vs_one": _ratios(times, 0, 1),
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
            "worst_s": max(r["s"]),
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


def run(
    rounds: int, cold_runs: int, only: str | None = None, settle: float = SETTLE_S
) -> dict[str, Any]:
    load = {"before": _load()}
    directory = Path(tempfile.mkdtemp(prefix="runtime-bench-"))
    action_rows, cold_rows, thread_rows = [], [], []
    try:
        bundles = export_bundles(directory)
        if only in (None, "action"):
            load["before action"] = _load()
            action_rows = in_process(bundles, rounds, settle)
            load["after action"] = _load()
        if only in (None, "cold"):
            load["before cold start"] = _load()
            cold_rows = cold_start(bundles["demo"], cold_runs, directory / "pycache")
            load["after cold start"] = _load()
        if only == "threads":
            thread_rows = thread_scaling(bundles, rounds, settle)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    load["after"] = _load()
    import ai_edge_litert
    import onnxruntime

    targets = {}
    for row in action_rows:
        backend = row["what"].split()[0]
        target = ACTION_TARGETS.get((backend, row["batch"]))
        if target is not None:
            key = f"{row['policy']} batch {row['batch']}: {backend} action() vs raw"
            targets[key] = _target(row["vs_raw"], target)
    for row in cold_rows:
        backend = row["what"].split()[0]
        if backend in COLD_START_TARGETS:
            targets[f"{backend} cold start vs bare"] = _target(
                row["vs_bare"], COLD_START_TARGETS[backend]
            )
    return {
        "benchmark": "runtime",
        "machine": {
            "cpus": os.cpu_count(),
            "load_average": load,
            "load_average_before": load["before"],
            "load_average_after": load["after"],
            "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__,
            "ai_edge_litert": getattr(ai_edge_litert, "__version__", "?"),
            "platform": platform.platform(),
        },
        "settle_s": settle,
        "action": action_rows,
        "cold_start": cold_rows,
        "threads": thread_rows,
        "targets": targets,
    }


def table(result: dict[str, Any]) -> str:
    machine = result["machine"]
    lines = [
        f"runtime benchmark: {machine['cpus']} CPUs, onnxruntime {machine['onnxruntime']}, "
        f"ai-edge-litert {machine['ai_edge_litert']}, Python {machine['python']}",
        "load average (1, 5, 15 min): "
        + "; ".join(f"{when} {values}" for when, values in machine["load_average"].items()),
    ]
    if result["action"]:
        lines += [
            "",
            "action() latency (interleaved rounds, each burst after "
            f"{result.get('settle_s', SETTLE_S)} s of unmeasured calls; vs raw = per-round "
            "ratio to raw default session.run on the same policy.onnx: median [min-max])",
            f"{'policy':<9} {'batch':>5}  {'what':<24} {'us: median [min-max]':>24} "
            f"{'actions/s':>11} {'vs raw: median [min-max]':>25}",
        ]
    for row in result["action"]:
        us, r = row["us"], row["vs_raw_spread"]
        lines.append(
            f"{row['policy']:<9} {row['batch']:>5}  {row['what']:<24} "
            f"{us['median']:>8.1f} [{us['min']:.1f}-{us['max']:.1f}]".ljust(67)
            + f"{row['actions_per_s']:>11,.0f} "
            f"{r['median']:>8.2f}x [{r['min']:.2f}-{r['max']:.2f}]"
        )
    if result["cold_start"]:
        lines += [
            "",
            "cold start (demo policy): new process, import + load + first action",
            f"{'what':<26} {'median s':>9} {'best s':>8} {'worst s':>8} {'vs bare':>8} "
            f"{'peak RSS MiB':>13} {'vs bare':>8}",
        ]
    for row in result["cold_start"]:
        lines.append(
            f"{row['what']:<26} {row['median_s']:>9.3f} {row['best_s']:>8.3f} "
            f"{row['worst_s']:>8.3f} {row['vs_bare']:>7.2f}x {row['peak_rss_mib']:>13.1f} "
            f"{row['rss_vs_bare']:>7.2f}x"
        )
    if result["threads"]:
        lines += [
            "",
            "threads: raw session.run, onnxruntime's default threads vs one (below 1: the "
            "default is faster)",
            f"{'policy':<9} {'batch':>5} {'1 thread us':>12} {'default us':>11} "
            f"{'default/1: median [min-max]':>28}",
        ]
    for row in result["threads"]:
        r = row["default_vs_one"]
        lines.append(
            f"{row['policy']:<9} {row['batch']:>5} {row['one_thread_us']:>12.1f} "
            f"{row['default_us']:>11.1f} {r['median']:>10.2f}x [{r['min']:.2f}-{r['max']:.2f}]"
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
    parser.add_argument("--cold-runs", type=int, default=9, help="new processes per contender")
    parser.add_argument(
        "--settle",
        type=float,
        default=SETTLE_S,
        help="seconds of unmeasured calls before each measured burst (0: none, the method "
        "before this option; see SETTLE_S)",
    )
    parser.add_argument(
        "--only",
        choices=("action", "cold", "threads"),
        help="measure action() latency, cold start, or thread scaling (not in the default run)",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    result = run(args.rounds, args.cold_runs, args.only, args.settle)
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
