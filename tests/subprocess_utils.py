"""Running Python snippets in fresh interpreters, from the repository root."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_python(code: str, *, without_tensorflow: bool = False, timeout: float = 300):
    """Runs ``code`` in a new interpreter; returns the CompletedProcess (text)."""
    code = textwrap.dedent(code)
    if without_tensorflow:
        code = "import tests.tf_blocker\n" + code
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
