"""Runs every benchmark script in this folder in turn (``make bench``).

Each ``*.py`` here but this one (and private ``_*.py`` helpers) is a benchmark, run in
its own process so one's imports and memory never skew another's; that includes
``time_to_475.py`` (training) when it is present. The exit status is non-zero if any
benchmark failed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def scripts() -> list[Path]:
    return sorted(
        p for p in HERE.glob("*.py") if p.name != Path(__file__).name and not p.name.startswith("_")
    )


def main() -> int:
    failed = []
    for script in scripts():
        print(f"=== {script.name}", flush=True)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, str(script)], cwd=HERE.parent)
        print(
            f"=== {script.name}: exit {done.returncode} in {time.perf_counter() - start:.1f} s\n",
            flush=True,
        )
        if done.returncode != 0:
            failed.append(script.name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
