"""Export once, then follow the learner without TensorFlow: the production checkpoint loop.

    python examples/follow_training.py --out runs/follow

1. A freshly built CartPole policy (untrained: zero biases) is exported to an ONNX-only
   bundle, in a child process (`policy-toolkit export`), as a deployment would ship it.
2. examples/train_cartpole.py starts training in a second process; it writes a policy
   checkpoint whenever an evaluation beats the best one so far.
3. This process, which never imports TensorFlow (checked at the end), loads the bundle
   with the onnx backend, calls ``policy.follow(<out>/run, interval=0.5)`` and plays
   CartPole episodes one after another, each with the newest weights, until an
   episode scores 500 (CartPole-v1's maximum).

``--quick`` (for the test suite) trains for a few seconds and stops once an episode
has been played with weights from a checkpoint, whatever its score.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV_ID = "CartPole-v1"
EPISODE_SEED = 2_000_000  # episode i resets with EPISODE_SEED + i: never a training seed


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/follow", help="bundle and training output")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--quick", action="store_true", help="a short run (for tests)")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="give up after this")
    return parser.parse_args(argv)


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def export_fresh(bundle: Path) -> None:
    """The untrained policy, exported ONNX-only by the CLI in a child process."""
    subprocess.run(
        _python(
            "-m",
            "toolkit",
            "export",
            "examples.cartpole_factory:policy",
            str(bundle),
            "--format",
            "onnx",
            "--overwrite",
        ),
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def start_training(run: Path, seed: int, quick: bool) -> subprocess.Popen:
    args = ["--output-dir", str(run), "--seed", str(seed), "--no-progress"]
    if quick:
        # No XLA: on a loaded machine compiling the train step could take most of the
        # 20 s, and the run would end before its first checkpoint.
        args += ["--steps", "3000", "--eval-interval", "1000", "--max-seconds", "20"]
        args += ["--jit-compile", "0"]
    else:
        args += ["--max-seconds", "600"]
    return subprocess.Popen(
        _python(str(ROOT / "examples" / "train_cartpole.py"), *args),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out).absolute()
    bundle, run = out / "cartpole", out / "run"
    started = time.perf_counter()
    print(f"exporting a fresh {ENV_ID} policy (ONNX only) -> {bundle}", flush=True)
    export_fresh(bundle)

    import runtimes
    from toolkit.environments import driver
    from toolkit.environments.gym_adapter import GymEnvironment

    policy = runtimes.load_policy(bundle, "onnx", seed=args.seed)
    print(f"training in a second process -> {run}", flush=True)
    trainer = start_training(run, args.seed, args.quick)
    env = GymEnvironment(ENV_ID)
    episode, best, reached = 0, 0.0, False
    try:
        with policy.follow(run, interval=0.5) as follower:
            while time.perf_counter() - started < args.max_seconds:
                step = policy.train_step
                evaluation = driver.evaluate_policy(env, policy, seed=EPISODE_SEED + episode)
                score = evaluation.episode_returns[0]
                best = max(best, score)
                print(f"episode {episode}: return {score:.0f} (train step {step})", flush=True)
                episode += 1
                if score >= 500.0 or (args.quick and follower.applied and step):
                    reached = score >= 500.0
                    break
                # The same weights play the same episodes: wait a little for new ones.
                deadline = time.perf_counter() + 1.0
                while policy.train_step == step and time.perf_counter() < deadline:
                    time.sleep(0.05)
                if trainer.poll() is not None and policy.train_step == step and not follower.poll():
                    break  # training ended and its last checkpoint has been played
    finally:
        trainer.terminate()
        _, stderr = trainer.communicate(timeout=60)
        env.close()
    assert "tensorflow" not in sys.modules, "the following process imported TensorFlow"
    print(
        f"{episode} episodes, {follower.applied} checkpoints applied, best return {best:.0f}, "
        f"last train step {policy.train_step}; TensorFlow never imported in this process "
        f"({time.perf_counter() - started:.0f} s)",
        flush=True,
    )
    if trainer.returncode not in (0, -15) and not reached:
        print(stderr[-2000:], file=sys.stderr)
    if args.quick:
        return 0 if follower.applied else 1
    print("followed policy scored 500" if reached else "did not reach 500", flush=True)
    return 0 if reached else 1


if __name__ == "__main__":
    sys.exit(main())
