"""The end-to-end demo behind ``make demo``: every step is a command, printed before it runs.

Trains a CartPole policy, exports it through the CLI (factory + checkpoint) as
SavedModel, ONNX and LiteRT, verifies and inspects the bundle, plays 20 episodes with
the onnx and the litert backend (no TensorFlow), quantizes it with candidates judged on
real CartPole states (agreement and return beside the float policy's), benchmarks
every backend, float and quantized, with a plot, and ends by serving the policy over
HTTP (``policy-toolkit serve``, TF Serving's REST API) and asking it for one action
with curl. Copy any printed command to run that step yourself (inside the venv:
``. .venv/bin/activate``).

    python examples/demo.py            # the full demo (about 1.5 minutes, mostly training)
    python examples/demo.py --quick    # a tiny training budget: checks that every step runs

Outputs go to ``./demo_out`` under the current folder (``--output-dir`` elsewhere); the
commands run from the repository root, which holds the examples they use.

DQN on CartPole is sensitive to its seed: now and then a run's greedy policy collapses
and does not recover within the budget. The demo then trains again with the next seed
(a printed command too), up to ``MAX_ATTEMPTS`` runs, and exports the best run.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOLVED = 475.0  # CartPole-v1 counts as solved at a mean return of 475
MAX_ATTEMPTS = 3


def _rel(path: Path) -> str:
    """A path as short as it can be printed (relative to the repository when inside it)."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def train_command(run_dir: Path, seed: int, quick: bool = False) -> list[str]:
    """The training step: train_cartpole.py writes policy checkpoints into run_dir."""
    if quick:
        # Enough to produce a checkpoint and exercise every command, not to balance well.
        # No XLA: compiling the train step costs more than this run trains
        # (tests/test_training_examples.py trains with it).
        budget = ["--steps", "1000", "--max-seconds", "10", "--eval-interval", "500"]
        budget += ["--jit-compile", "0", "--no-progress"]
    else:
        # Training stops once 20 evaluation episodes average 500 (CartPole's maximum),
        # which takes about 20-60 s on 2 cores. A budget in steps rather than the
        # example's default 55 s keeps that so on a busy machine, where 55 s buys
        # fewer steps; 240 s caps the worst case.
        budget = ["--steps", "40000", "--max-seconds", "240"]
    seed_args = ["--seed", str(seed)] if seed else []
    return [
        "python",
        "examples/train_cartpole.py",
        "--output-dir",
        _rel(run_dir),
        *seed_args,
        *budget,
    ]


def steps(out: Path, run_dir: Path, quick: bool = False) -> list[list[str]]:
    """The commands after training, in order."""
    bundle = _rel(out / "cartpole")
    quantized = [_rel(out / "cartpole_quantized")]
    bench = ["--batch", "1,32", "--seconds", "0.05"] if quick else ["--batch", "1,32,256"]
    # A quick run's policy is untrained: --force shows the report even if no candidate
    # passes. The full demo writes only a candidate that passes both gates.
    force = ["--force"] if quick else []
    commands = [
        [
            "policy-toolkit",
            "export",
            "examples.cartpole_factory:policy",
            bundle,
            "--checkpoint",
            _rel(run_dir),
            "--format",
            "saved_model,onnx,litert",
            "--metadata",
            "env=CartPole-v1",
            "--overwrite",
        ],
        ["policy-toolkit", "verify", bundle],
        ["policy-toolkit", "inspect", bundle],
        *(
            ["policy-toolkit", "run", bundle, "--env", "CartPole-v1", "--episodes", "20",
             "--backend", backend]
            for backend in ("onnx", "litert")
        ),
        ["policy-toolkit", "quantize", bundle, quantized[0], "--env", "CartPole-v1",
         "--episodes", "20", "--overwrite", *force],
    ]  # fmt: skip
    if not quick:
        quantized.append(_rel(out / "cartpole_quantized_litert"))
        commands.append(
            ["policy-toolkit", "quantize", bundle, quantized[1], "--env", "CartPole-v1",
             "--episodes", "20", "--target", "litert", "--overwrite"]
        )  # fmt: skip
    plot = ["--plot", _rel(out / "bench.png")]
    commands.append(["policy-toolkit", "bench", bundle, *quantized, *bench, *plot])
    # The smallest edge: the same policy as an integer TFLite Micro model and as plain C,
    # calibrated and measured on real CartPole states, then played through TFLite Micro's
    # own interpreter and through the C compiled by cc.
    micro = _rel(out / "cartpole_micro")
    commands.append(
        ["policy-toolkit", "export", "examples.cartpole_factory:policy", micro,
         "--checkpoint", _rel(run_dir), "--format", "micro,c", "--env", "CartPole-v1",
         "--episodes", "3" if quick else "20", "--overwrite",
         # A quick run's policy is untrained: its near-ties may fail the 99% agreement.
         *(["--no-verify"] if quick else [])]
    )  # fmt: skip
    commands += [
        ["policy-toolkit", "run", micro, "--env", "CartPole-v1", "--episodes", "20",
         "--backend", backend]
        for backend in ("micro", "c")
    ]  # fmt: skip
    return commands


#: Steps whose exit code 1 is a result, not a failure: quantize refusing every candidate.
REFUSALS = {"quantize"}


def run(command: list[str], allowed: tuple[int, ...] = (0,)) -> str:
    """Prints the command, runs it from the repository root (echoing its output), and
    returns its standard output; an exit code outside ``allowed`` raises."""
    print(f"\n$ {shlex.join(command)}", flush=True)
    exe = command[0]
    if exe == "python":
        command = [sys.executable, *command[1:]]
    elif exe == "policy-toolkit":
        command = [sys.executable, "-m", "toolkit", *command[1:]]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    lines = []
    for line in process.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    if process.wait() not in allowed:
        raise subprocess.CalledProcessError(process.returncode, command)
    print(f"  ({time.perf_counter() - started:.1f} s)", flush=True)
    run.returncode = process.returncode  # for the steps whose exit 1 is a result
    return "".join(lines)


def serve_commands(bundle: Path, port: int) -> tuple[list[str], list[str]]:
    """The server over the exported bundle, and one predict request to it."""
    serve = ["policy-toolkit", "serve", _rel(bundle), "--name", "cartpole", "--port", str(port)]
    body = json.dumps({"instances": [[0.02, -0.01, 0.03, 0.04]]})
    url = f"http://127.0.0.1:{port}/v1/models/cartpole:predict"
    return serve, ["curl", "-s", "-w", "\\n", "-d", body, url]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_and_ask(bundle: Path) -> dict:
    """Starts the server in the background, asks it once (curl), stops it (SIGTERM)."""
    serve, curl = serve_commands(bundle, _free_port())
    print(f"\n$ {shlex.join(serve)} &", flush=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "toolkit", *serve[1:]], cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                raise RuntimeError("demo: the server stopped before it listened")
            print(f"  {line}", end="", flush=True)
            if "listening on" in line:
                break
        if shutil.which("curl"):
            answer = run(curl)
        else:  # no curl on this machine: the same request from Python
            print(f"\n$ {shlex.join(curl)}   (curl is not installed; sent from Python)")
            request = urllib.request.Request(curl[-1], data=curl[-2].encode())
            with urllib.request.urlopen(request, timeout=30) as response:
                answer = response.read().decode()
            print(answer)
        print(f"\n$ kill -TERM {process.pid}", flush=True)
    finally:
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=30)
        print("".join(f"  {line}\n" for line in rest.splitlines()), end="", flush=True)
    if process.returncode != 0:
        raise subprocess.CalledProcessError(process.returncode, serve)
    prediction = json.loads(answer)
    if "predictions" not in prediction:
        raise RuntimeError(f"demo: the server answered {answer!r}")
    return prediction


def mean_return(output: str) -> float:
    """The last line of train_cartpole.py: ``mean return: <number>``."""
    found = re.findall(r"^mean return: (-?[\d.]+)$", output, re.MULTILINE)
    return float(found[-1]) if found else float("-inf")


def train(out: Path, quick: bool) -> Path:
    """Trains until a run solves CartPole (or MAX_ATTEMPTS runs); returns the best run."""
    runs: dict[Path, float] = {}
    for seed in range(1 if quick else MAX_ATTEMPTS):
        run_dir = out / ("cartpole_run" if seed == 0 else f"cartpole_run_seed{seed}")
        # A fresh run each time (train_cartpole.py would resume an old one).
        shutil.rmtree(run_dir, ignore_errors=True)
        runs[run_dir] = mean_return(run(train_command(run_dir, seed, quick)))
        if quick or runs[run_dir] >= SOLVED:
            break
        print(
            f"\ndemo: mean return {runs[run_dir]:.1f} is below {SOLVED:.0f} (this seed's policy "
            "collapsed); training again with the next seed",
            flush=True,
        )
    best = max(runs, key=runs.get)
    if not quick and runs[best] < SOLVED:
        print(f"\ndemo: no run reached {SOLVED:.0f}; exporting the best ({runs[best]:.1f})")
    return best


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The demo's options; ``out`` is absolute (the commands run from the repository root)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output-dir",
        "--out",
        dest="out",
        type=Path,
        default=Path("demo_out"),
        help="where outputs go (default: demo_out in the current folder)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny training budget (for tests): fast, not good"
    )
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    return args


def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        run(["policy-toolkit", "--version"])
        run_dir = train(args.out, args.quick)
        for command in steps(args.out, run_dir, args.quick):
            if command[1] == "bench":
                # A quantized bundle the gates refused was not written: bench the rest.
                command = [c for c in command if not c.startswith(_rel(args.out / "cartpole_q"))
                           or (ROOT / c).exists()]  # fmt: skip
            if command[1] in REFUSALS:
                run(command, allowed=(0, 1))
                if not (ROOT / command[3]).exists():
                    print("demo: quantize refused every candidate; deploy the float bundle")
            elif command[1] == "export" and "micro,c" in command:
                # The micro model is written either way; its verify gate (99% agreement
                # on held-out states) is a result, not a crash: with fine-tuning, 16x8
                # models agree on 99.25-99.89% of held-out states, and one demo run's
                # gate read 99.15% of its 2,000 stored states, so a run can miss it.
                run(command, allowed=(0, 1))
                if run.returncode == 1:
                    print("demo: the micro/C export agrees on less than 99% of held-out "
                          "states (report above): written, still played below")  # fmt: skip
            else:
                run(command)
        prediction = serve_and_ask(args.out / "cartpole")
        side = ["left", "right"][prediction["predictions"][0]]
        print(f"demo: the served policy pushes the cart {side}")
    except subprocess.CalledProcessError as e:
        print(f"\ndemo: step failed with exit code {e.returncode}", file=sys.stderr)
        sys.exit(e.returncode)
    print(f"\ndemo: every step ran, in {time.perf_counter() - started:.0f} s")
    print("demo: done")


if __name__ == "__main__":
    main()
