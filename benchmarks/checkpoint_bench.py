"""Checkpoint loop on the onnx backend: time to apply a checkpoint, and follow's delay.

    python benchmarks/checkpoint_bench.py

This process (the learner, with TensorFlow) exports two fresh ONNX-only bundles, the
demo's CartPole policy (QNetwork 100x50) and a 256x256 actor, and writes TF checkpoints
of them as training does (``tf.train.CheckpointManager``). A child process with
TensorFlow blocked (tests/tf_blocker.py) then measures:

* apply: ``policy.update_from_checkpoint(<checkpoint>)``: reading the TF checkpoint
  without TensorFlow, mapping it to the ONNX initializers and building the new
  onnxruntime session (median and min of 20, alternating two checkpoints);
* follow delay: with ``policy.follow(dir, interval=0.5)`` and a thread acting in a loop,
  the time from a checkpoint landing (the learner's ``manager.save`` returned) to the
  first action computed with it, over 12 checkpoints saved at irregular times.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS = 12

CHILD = r"""
import json, sys, threading, time
import tests.tf_blocker
import numpy as np
import runtimes
from toolkit import checkpoint_weights, nest
from toolkit.specs import array_spec
from toolkit.trajectories.time_step import TimeStep

bundle, run, mode = sys.argv[1], sys.argv[2], sys.argv[3]
policy = runtimes.load_policy(bundle, "onnx")
spec = policy.time_step_spec.observation
obs = nest.map_structure(lambda s: np.zeros((1,) + tuple(s.shape), s.dtype), spec)
ts = TimeStep(np.ones(1, np.int32), np.zeros(1, np.float32), np.ones(1, np.float32), obs)
if mode == "apply":
    found = checkpoint_weights.find_checkpoints(run)
    times = []
    for i in range(20):
        start = time.perf_counter()
        policy.update_from_checkpoint(found[i % len(found)])
        times.append(time.perf_counter() - start)
        policy.action(ts)
    assert "tensorflow" not in sys.modules
    print(json.dumps({"apply": times}))
else:
    seen = {}
    stop = threading.Event()
    def act():
        while not stop.is_set():
            step = policy.train_step
            policy.action(ts)
            if step not in seen:
                seen[step] = time.time()
                print(json.dumps({"step": step, "t": seen[step]}), flush=True)
    with policy.follow(run, interval=0.5):
        thread = threading.Thread(target=act)
        thread.start()
        sys.stdin.readline()
        stop.set()
        thread.join()
    assert "tensorflow" not in sys.modules
"""


def _policies():
    import tensorflow as tf

    sys.path.insert(0, str(ROOT))
    from examples import cartpole_factory
    from toolkit.networks.actor_network import ActorNetwork
    from toolkit.policies.actor_policy import ActorPolicy
    from toolkit.specs.tensor_spec import BoundedTensorSpec
    from toolkit.trajectories import time_step as ts

    observation = tf.TensorSpec((17,), tf.float32, "observation")
    action = BoundedTensorSpec((6,), tf.float32, -1.0, 1.0, "action")
    actor = ActorNetwork(observation, action, fc_layer_params=(256, 256))
    return {
        "cartpole (100x50 Q)": cartpole_factory.policy(),
        "actor 256x256": ActorPolicy(ts.time_step_spec(observation), action, actor),
    }


def _child(code_args, **kwargs):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *code_args], cwd=ROOT, env=env, text=True, **kwargs
    )


def main() -> int:
    import numpy as np
    import tensorflow as tf

    from exporters import export_policy

    results = {}
    with tempfile.TemporaryDirectory(prefix="checkpoint-bench-") as tmp:
        for name, policy in _policies().items():
            folder = Path(tmp) / name.split()[0]
            bundle = export_policy(policy, folder / "bundle", formats=("onnx",), train_step=0)
            step = tf.Variable(0, dtype=tf.int64)
            manager = tf.train.CheckpointManager(
                tf.train.Checkpoint(policy=policy, train_step=step), str(folder / "apply"), 2
            )
            rng = np.random.default_rng(0)
            for i in (1, 2):
                for v in policy.variables():
                    v.assign(rng.normal(0, 0.1, v.shape).astype(np.float32))
                step.assign(i)
                manager.save(i)
            done = _child([str(bundle), str(folder / "apply"), "apply"], stdout=subprocess.PIPE)
            out, _ = done.communicate(timeout=300)
            apply = json.loads(out.strip().splitlines()[-1])["apply"]
            size = sum(int(np.prod(v.shape)) for v in policy.variables())

            # Follow delay: the learner saves while the child acts.
            run = folder / "run"
            manager = tf.train.CheckpointManager(
                tf.train.Checkpoint(policy=policy, train_step=step), str(run), 3
            )
            child = _child(
                [str(bundle), str(run), "follow"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            time.sleep(3.0)  # the child loads and starts acting
            landed = {}
            for i in range(1, CHECKPOINTS + 1):
                time.sleep(float(rng.uniform(0.9, 1.6)))
                step.assign(100 * i)
                manager.save(100 * i)
                landed[100 * i] = time.time()
            time.sleep(2.0)
            out, _ = child.communicate("\n", timeout=120)
            first_use = {}
            for line in out.splitlines():
                record = json.loads(line)
                first_use[record["step"]] = record["t"]
            delays = [first_use[s] - t for s, t in landed.items() if s in first_use]
            results[name] = {
                "weights": size,
                "apply_median_ms": 1000 * statistics.median(apply),
                "apply_min_ms": 1000 * min(apply),
                "delay_mean_s": statistics.mean(delays),
                "delay_max_s": max(delays),
                "delay_min_s": min(delays),
                "checkpoints_seen": f"{len(delays)}/{CHECKPOINTS}",
            }
    print(
        f"{'policy':22} {'weights':>8} {'apply median':>13} {'apply min':>10} "
        f"{'delay mean':>11} {'delay min..max':>16} {'seen':>6}"
    )
    for name, r in results.items():
        print(
            f"{name:22} {r['weights']:>8} {r['apply_median_ms']:>10.1f} ms "
            f"{r['apply_min_ms']:>7.1f} ms {r['delay_mean_s']:>9.3f} s "
            f"{r['delay_min_s']:>7.3f}..{r['delay_max_s']:.3f} s {r['checkpoints_seen']:>6}"
        )
    print("(follow interval 0.5 s; delay = checkpoint saved -> first action with its weights)")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
