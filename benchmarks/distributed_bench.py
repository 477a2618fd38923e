"""Collection on Ray actors vs local vectorized collection, with a 2 ms cost per step.

    python benchmarks/distributed_bench.py [--seconds 6] [--no-train]

Environment steps per second of CartPole-v1 whose every step sleeps 2 ms (a simulator
stand-in: the cost is waiting, not computing): local vectorized collection (one
process, 4 environments stepping together) and 1, 2, 4 and 8 Ray collector actors (4
environments each, the bundle on the onnx backend). Then Ray's overhead beside the
local run (cluster start-up time, resident memory of Ray's processes) and the
distributed CartPole DQN (``examples/train_cartpole.py --actors 4 --ray local``).
The machine's load average is printed with the figures: the ratios are from one run.
Target: 4 actors >= 3x one actor's steps per second; the DQN reaches >= 475.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ENV_ID = "CartPole-v1"
DELAY = 0.002
ENVS = 4
STEPS_PER_CALL = 8


def _bundle(folder: Path) -> Path:
    from examples import cartpole_factory
    from exporters.export import export_policy

    return export_policy(cartpole_factory.policy(), folder / "cartpole", formats=("onnx",))


def local_steps_per_second(bundle: Path, seconds: float) -> float:
    from runtimes import load_policy
    from toolkit.environments import driver
    from toolkit.environments.delayed import Delayed
    from toolkit.environments.episodes import make_env

    env = make_env(Delayed(ENV_ID, DELAY), ENVS)
    policy = load_policy(bundle, backend="onnx", seed=0)
    run = driver.Driver(env, policy, max_steps=ENVS * STEPS_PER_CALL)
    time_step, state, steps = env.reset(seed=0), None, 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        result = run.run(time_step, state)
        time_step, state = result.time_step, result.policy_state
        steps += result.num_steps
    return steps / (time.perf_counter() - start)


def actor_steps_per_second(ray, files, description, actors: int, seconds: float) -> float:
    from toolkit.distributed.actors import CollectorActor
    from toolkit.environments.delayed import Delayed

    remote = ray.remote(num_cpus=1)(CollectorActor)
    handles = [
        remote.options(scheduling_strategy="SPREAD").remote(
            files, Delayed(ENV_ID, DELAY), ENVS, 1, 0.99, i
        )
        for i in range(actors)
    ]
    call = lambda a: a.collect.remote(None, None, description, STEPS_PER_CALL)  # noqa: E731
    ray.get([call(a) for a in handles])  # started and warm
    pending = {call(a): a for a in handles}
    steps = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        done, _ = ray.wait(list(pending), num_returns=1)
        actor = pending.pop(done[0])
        steps += ray.get(done[0])["env_steps"]
        pending[call(actor)] = actor
    elapsed = time.perf_counter() - start
    for actor in handles:
        ray.kill(actor)
    return steps / elapsed


def _rss_mib(pids: list[int]) -> float:
    """Resident memory of these processes, from /proc (Linux)."""
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue  # gone meanwhile
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        total += int(match.group(1)) * 1024 if match else 0
    return total / 2**20


def _ray_pids(folder: str) -> list[int]:
    """Processes whose command line names Ray's temporary folder of this run."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if folder in cmdline:
            found.append(int(entry.name))
    return found


def train(seconds: float) -> str:
    done = subprocess.run(
        [sys.executable, "examples/train_cartpole.py", "--actors", "4", "--ray", "local",
         "--no-progress", "--max-seconds", str(seconds), "--output-dir",
         tempfile.mkdtemp(prefix="dqn-actors-")],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    lines = [
        line for line in done.stdout.splitlines()
        if re.match(r"(stopped|best evaluation|training time|wall time|mean return)", line)
    ]  # fmt: skip
    return "\n".join(lines) if lines else done.stderr[-1500:]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--no-train", action="store_true")
    parser.add_argument("--train-seconds", type=float, default=180.0)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="ptk-bench-")
    os.environ["RAY_TMPDIR"] = folder
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    bundle = _bundle(Path(folder))
    from runtimes import load_policy
    from toolkit.distributed import actors as actors_lib
    from toolkit.distributed import cluster

    files = actors_lib.bundle_payload(bundle)
    description = load_policy(bundle, backend="onnx").action_description
    local = local_steps_per_second(bundle, args.seconds)
    local_rss = _rss_mib([os.getpid()])
    start = time.perf_counter()
    with cluster.connect("local", num_cpus=8) as ray:
        startup = time.perf_counter() - start
        ray_rss = _rss_mib(_ray_pids(folder))
        rows = []
        for k in (1, 2, 4, 8):
            rows.append((k, actor_steps_per_second(ray, files, description, k, args.seconds)))
            rows[-1] += (os.getloadavg()[0],)
        workers_rss = _rss_mib(_ray_pids(folder))
    print(f"\nCartPole-v1 + {DELAY * 1000:.0f} ms/step, {ENVS} envs per collector")
    print("| collection | env steps/s | vs 1 actor | load (1 min) |")
    print("|---|---:|---:|---:|")
    print(f"| local vectorized ({ENVS} envs, 1 process) | {local:,.0f} | | |")
    one = rows[0][1]
    for k, rate, load in rows:
        name = f"{k} Ray actor{'s' if k > 1 else ''}"
        print(f"| {name} | {rate:,.0f} | {rate / one:.2f}x | {load:.1f} |")
    print(f"\nRay overhead: local cluster start-up {startup:.1f} s; Ray's processes "
          f"{ray_rss:,.0f} MiB resident after start-up ({workers_rss:,.0f} MiB after the "
          f"actors ended); this process {local_rss:,.0f} MiB "
          "(local collection; TF loaded for the export)")  # fmt: skip
    ratio = dict((k, r) for k, r, _ in rows)[4] / one
    print(f"target 4 actors >= 3x 1 actor: {ratio:.2f}x -> {'met' if ratio >= 3 else 'NOT met'}")
    if not args.no_train:
        print(f"\ndistributed CartPole DQN (4 actors, load {os.getloadavg()[0]:.1f}):")
        print(train(args.train_seconds))


if __name__ == "__main__":
    main()
