"""Quantizing the trained demo policy: every candidate, on real states, per training seed.

    python benchmarks/quantize_bench.py [--seeds 0 1 2] [--json FILE]

For each seed: trains the demo's CartPole-v1 DQN policy (``examples/train_cartpole.py``
in a fresh process), exports it (``policy-toolkit export``, SavedModel + ONNX), then
runs every quantization method of both targets on its own with the gates off, so each
candidate is measured in full:

- file size vs the float model file (policy.onnx, or the float policy.tflite);
- action agreement on 20 episodes of the float policy (10,000 real states here),
  calibrated on 20 other episodes;
- mean return over those 20 episodes, beside the float policy's;
- graph latency at batch 1 vs the float graph.

Then ``method="auto"`` (what ``policy-toolkit quantize --env`` does) picks per target.
Issue 15's targets for the auto-chosen ONNX candidate: return >= 475 over 20 episodes,
agreement >= 99% on real states, file <= 0.6x.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGETS = {"return": 475.0, "agreement": 0.99, "size": 0.6}


def _train_and_export(seed: int, out: Path) -> Path:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    run = out / "run"
    subprocess.run(
        [sys.executable, "examples/train_cartpole.py", "--seed", str(seed)]
        + ["--output-dir", str(run), "--no-progress"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    bundle = out / "cartpole"
    subprocess.run(
        [sys.executable, "-m", "toolkit", "export", "examples.cartpole_factory:policy"]
        + [str(bundle), "--checkpoint", str(run), "--format", "saved_model,onnx"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    return bundle


def run_seed(seed: int, episodes: int) -> dict:
    from exporters.quantize import quantize_bundle
    from exporters.quantize.targets import TARGETS as QUANTIZE_TARGETS

    rows = []
    auto = {}
    with tempfile.TemporaryDirectory(prefix=f"quantize-{seed}-") as scratch:
        out = Path(scratch)
        bundle = _train_and_export(seed, out)
        for target, spec in QUANTIZE_TARGETS.items():
            for method in spec.method_names:
                report = quantize_bundle(
                    bundle,
                    out / f"{target}-{method}",
                    env="CartPole-v1",
                    episodes=episodes,
                    target=target,
                    method=method,
                    min_agreement=0.0,
                    min_return_ratio=0.0,
                )
                rows.append(
                    {
                        "target": target,
                        "method": method,
                        "size_vs_float": report.size_after / report.size_before,
                        "agreement": report.action_agreement,
                        "float_return": report.float_return,
                        "return": report.quantized_return,
                        "latency_vs_float": report.latency_after_us / report.latency_before_us,
                        "states": report.states,
                        "calibration_states": report.calibration_states,
                    }
                )
            report = quantize_bundle(
                bundle, out / f"{target}-auto", env="CartPole-v1", episodes=episodes, target=target
            )
            auto[target] = {
                "written": report.written,
                "method": report.method,
                "size_vs_float": report.size_after / report.size_before,
                "agreement": report.action_agreement,
                "return": report.quantized_return,
                "float_return": report.float_return,
            }
    chosen = auto["onnx"]
    ok = (
        chosen["written"]
        and chosen["return"] is not None
        and chosen["return"] >= TARGETS["return"]
        and chosen["agreement"] >= TARGETS["agreement"]
        and chosen["size_vs_float"] <= TARGETS["size"]
    )
    return {"seed": seed, "rows": rows, "auto": auto, "ok": bool(ok)}


def table(results: list[dict]) -> str:
    lines = []
    for result in results:
        float_return = result["rows"][0]["float_return"]
        lines.append(f"seed {result['seed']} (float return {float_return:.1f})")
        lines.append(
            f"{'target':7} {'method':31} {'size':>6} {'agreement':>10} {'return':>7} {'latency':>8}"
        )
        for r in result["rows"]:
            ret = "-" if r["return"] is None else f"{r['return']:.1f}"
            lines.append(
                f"{r['target']:7} {r['method']:31} {r['size_vs_float']:5.2f}x "
                f"{100 * r['agreement']:9.2f}% {ret:>7} {r['latency_vs_float']:7.2f}x"
            )
        for target, a in result["auto"].items():
            what = a["method"] if a["written"] else f"nothing written (best {a['method']})"
            lines.append(
                f"auto, {target}: {what}: {a['size_vs_float']:.2f}x, "
                f"{100 * a['agreement']:.2f}%, return {a['return']}"
            )
        lines.append("")
    passed = sum(r["ok"] for r in results)
    lines.append(
        f"{passed}/{len(results)} seeds: the auto-chosen onnx candidate returns >= "
        f"{TARGETS['return']:.0f}, agrees on >= {100 * TARGETS['agreement']:.0f}% of real states "
        f"and is <= {TARGETS['size']}x the float file"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    results = [run_seed(seed, args.episodes) for seed in args.seeds]
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
