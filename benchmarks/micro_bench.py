"""How well the micro model holds a trained CartPole policy's decisions (issue 27).

For each training seed: trains the demo's DQN policy (examples/train_cartpole.py, the
demo's budget), exports its ONNX bundle, plays 20 calibration episodes (seeds
1,000,000+i) and 20 held-out episodes (seeds i, up to 10,000 states) with the float
policy, and for int8 and int16 activations reports the agreement with the float action
on the held-out states of

* ``gptq``: ``int8.quantize`` alone (GPTQ rounding, the refitted centred head: the
  model before quantization-aware fine-tuning), by the exact integer replay;
* ``final``: what ``export --format micro`` ships for that width
  (``package.calibrated``: the better of it and its fine-tuned student on the
  calibration states), run through TFLite Micro's own interpreter, with the mean return
  of 20 held-out episodes it plays itself.

    python benchmarks/micro_bench.py                      # seeds 0,1,2 (about 5 minutes)
    python benchmarks/micro_bench.py --seeds 0 --work /tmp/micro_bench
    python benchmarks/micro_bench.py --bundle out/cartpole   # an exported ONNX bundle

Agreement and return do not depend on the machine's load (only the time column does).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ENV = "CartPole-v1"
EPISODES = 20


def train_and_export(seed: int, work: Path) -> Path:
    """The demo's training run for ``seed`` and its ONNX bundle (reused when present)."""
    run_dir, bundle = work / f"run_seed{seed}", work / f"bundle_seed{seed}"
    if not (bundle / "manifest.json").exists():
        subprocess.run(
            [sys.executable, "examples/train_cartpole.py", "--output-dir", str(run_dir),
             "--seed", str(seed), "--steps", "40000", "--max-seconds", "240", "--no-progress"],
            cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        subprocess.run(
            [sys.executable, "-m", "toolkit", "export", "examples.cartpole_factory:policy",
             str(bundle), "--checkpoint", str(run_dir), "--format", "onnx", "--overwrite"],
            cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    return bundle


def measure(bundle: Path, label: str) -> list[str]:
    """Markdown rows: int8 and int16 for one bundle."""
    import onnx

    from exporters.micro import int8, package, tflite_model
    from exporters.micro import mlp as mlp_lib
    from runtimes.backends.micro import MicroModel, smallest_arena
    from toolkit import bundle as bundle_lib

    layout = bundle_lib.read_layout(bundle)
    mlp = mlp_lib.extract(onnx.load(str(bundle / "policy.onnx")), layout, "micro bench")
    calibration, _ = package.play(ENV, mlp.act, EPISODES, 1_000_000)
    held_out, float_returns = package.play(ENV, mlp.act, EPISODES, 0)
    want = mlp.act(held_out).reshape(-1)
    x = held_out.astype(np.float32)
    rows = []
    for bits in (8, 16):
        gptq = int8.quantize(mlp, calibration, bits)
        gptq_agree = float(np.mean(int8.simulate(gptq, x).reshape(-1) == want))
        started = time.perf_counter()
        model = package.calibrated(mlp, calibration, bits)
        seconds = time.perf_counter() - started
        data = tflite_model.build(model)
        interpreter = MicroModel(data, smallest_arena(data, "bench"), mlp.inputs, "bench")

        def act(obs: np.ndarray, interpreter=interpreter) -> np.ndarray:
            return np.asarray(interpreter(obs), np.int64).reshape(len(obs)) + mlp.head.shift

        final = float(np.mean(act(x) == want))
        _, returns = package.play(ENV, act, EPISODES, 0)
        tuned = f"yes ({model.fine_tuned} steps)" if model.fine_tuned else "no"
        rows.append(
            f"| {label} | int{bits} | {len(held_out)} | {gptq_agree:.2%} | {final:.2%} | {tuned} "
            f"| {np.mean(returns):.1f} ({np.mean(float_returns):.1f}) | {len(data)} B "
            f"| {seconds:.0f} s |"
        )
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="training seeds (comma-separated)")
    parser.add_argument("--work", type=Path, default=None, help="runs and bundles (kept)")
    parser.add_argument("--bundle", type=Path, action="append", default=[], help="ONNX bundle")
    args = parser.parse_args(argv)
    header = (
        "| policy | activations | held-out states | gptq agreement | final agreement (TFLite "
        "Micro) | fine-tuned | micro return (float) | model | quantize time |\n"
        "| --- | --- | ---: | ---: | ---: | --- | --- | ---: | ---: |"
    )
    print(header, flush=True)
    rows = []
    for bundle in args.bundle:
        rows += measure(bundle, str(bundle))
    if not args.bundle:
        with tempfile.TemporaryDirectory() as tmp:
            work = args.work or Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            for seed in (int(s) for s in args.seeds.split(",") if s):
                rows += measure(train_and_export(seed, work), f"CartPole seed {seed}")
    print(f"\n{header}\n" + "\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
