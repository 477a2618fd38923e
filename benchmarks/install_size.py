"""Install size of each device extra, measured by installing it into a fresh venv.

For ``[runtime]`` (onnxruntime) and ``[litert]`` (ai-edge-litert): a new venv, ``pip
install '<repo>[extra]'`` (non-editable), and the size of what that added to
site-packages (a bare venv's pip is subtracted), the number of distributions and
whether TensorFlow came along (it must not).

Usage: ``python benchmarks/install_size.py [--json] [--extras runtime,litert]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TF_DISTRIBUTIONS = {"tensorflow", "tensorflow-cpu", "tf-keras", "tensorflow-probability"}


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _site_packages(env_dir: Path) -> Path:
    return next(env_dir.glob("lib/python*/site-packages"))


def _distributions(env_dir: Path) -> set[str]:
    listed = subprocess.run(
        [str(env_dir / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return {p["name"].lower() for p in json.loads(listed.stdout)}


def measure(extra: str | None, directory: Path) -> dict[str, Any]:
    env_dir = directory / (extra or "bare")
    venv.EnvBuilder(with_pip=True).create(env_dir)
    seconds = 0.0
    if extra is not None:
        started = time.perf_counter()
        subprocess.run(
            [
                str(env_dir / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                f"{ROOT}[{extra}]",
            ],
            check=True,
        )
        seconds = time.perf_counter() - started
    names = _distributions(env_dir)
    return {
        "extra": extra,
        "site_packages_bytes": _size(_site_packages(env_dir)),
        "distributions": sorted(names),
        "tensorflow": sorted(names & TF_DISTRIBUTIONS),
        "install_s": seconds,
    }


def run(extras: list[str]) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="install-size-"))
    try:
        bare = measure(None, directory)
        rows = []
        for extra in extras:
            row = measure(extra, directory)
            row["added_mib"] = (row["site_packages_bytes"] - bare["site_packages_bytes"]) / 2**20
            row["added_distributions"] = sorted(
                set(row["distributions"]) - set(bare["distributions"])
            )
            rows.append(row)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return {"benchmark": "install_size", "python": sys.version.split()[0], "extras": rows}


def table(result: dict[str, Any]) -> str:
    lines = [
        f"install size (fresh venv, Python {result['python']}, pip install '.[extra]'; "
        "size added to site-packages)",
        f"{'extra':<10} {'added MiB':>10} {'packages':>9} {'TensorFlow':>11} {'install s':>10}",
    ]
    for row in result["extras"]:
        lines.append(
            f"{row['extra']:<10} {row['added_mib']:>10.1f} {len(row['added_distributions']):>9} "
            f"{'yes' if row['tensorflow'] else 'no':>11} {row['install_s']:>10.1f}"
        )
    for row in result["extras"]:
        lines.append(f"  [{row['extra']}]: {', '.join(row['added_distributions'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--extras", default="runtime,litert", help="comma-separated extras")
    args = parser.parse_args(argv)
    result = run([e for e in args.extras.split(",") if e])
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 1 if any(row["tensorflow"] for row in result["extras"]) else 0


if __name__ == "__main__":
    sys.exit(main())
