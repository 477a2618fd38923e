"""The end-to-end demo behind ``make demo``: every step is a command, printed before it runs.

Copy any printed command to run that step yourself (inside the venv).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def steps(out: Path) -> list[list[str]]:
    del out  # later steps write here
    return [
        ["policy-toolkit", "--version"],
        ["python", "examples/policies_tour.py"],
    ]


def run(command: list[str]) -> None:
    print(f"\n$ {shlex.join(command)}", flush=True)
    exe = command[0]
    if exe == "python":
        command = [sys.executable, *command[1:]]
    elif exe == "policy-toolkit":
        command = [sys.executable, "-m", "toolkit", *command[1:]]
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    print(f"  ({time.perf_counter() - started:.1f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "demo_out", help="where outputs go")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for command in steps(args.out):
        run(command)
    print("\ndemo: done")


if __name__ == "__main__":
    main()
