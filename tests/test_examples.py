"""Every examples/*.py is run by a test; this file runs the quick ones."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.subprocess_utils import ROOT
from toolkit import bundle as bundle_lib

EXAMPLES = ROOT / "examples"


def _run(name: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_policies_tour_runs_the_tutorial_examples():
    result = _run("policies_tour.py")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "== Random Python policy ==" in out
    # The scripted example plays [5, 2], skips the zero-repeat entry, then [1, 2] twice.
    scripted = out.split("Executing scripted policy...")[1]
    lines = [line for line in scripted.splitlines() if line.startswith("PolicyStep")]
    assert "array([5, 2]" in lines[0]
    assert "array([1, 2]" in lines[1] and "array([1, 2]" in lines[2]
    assert "array([5, 2]" in lines[3]  # after the reset


def test_every_example_has_a_test():
    tested = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        text = path.read_text()
        tested.update(p.name for p in EXAMPLES.glob("*.py") if f'"{p.name}"' in text)
    untested = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert [n for n in untested if n not in tested] == []


@pytest.mark.slow
def test_demo_runs_every_step(tmp_path):
    # --quick: a tiny training budget; every CLI step still runs (about a minute).
    result = _run("demo.py", "--quick", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    for step in ("--version", "export", "verify", "inspect", "run", "bench"):
        assert f"$ policy-toolkit {step}" in result.stdout
    assert "$ python examples/train_cartpole.py" in result.stdout
    assert "(onnx backend, seeds 0..19)" in result.stdout  # 20 CartPole episodes
    assert bundle_lib.read_manifest(tmp_path / "cartpole")["metadata"] == {"env": "CartPole-v1"}
    assert result.stdout.rstrip().endswith("demo: done")
