"""The layering of docs/architecture.md, enforced: import-linter's contracts (pyproject.toml).

import-linter reads every import statement, those inside functions too, so a lazy
import across a layer fails here as well. tests/toolkit/test_tf_free.py and
tests/runtimes/test_runtime_tf_free.py check the same rule at run time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.subprocess_utils import ROOT


def test_import_contracts_are_kept():
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(lint_imports), "--no-cache", "--config", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_readme_layout_names_every_package_and_runtime_module():
    readme = (ROOT / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    packages = sorted(p.parent.name for p in (ROOT / "toolkit").glob("*/__init__.py"))
    runtimes = sorted(p.stem for p in (ROOT / "runtimes").glob("*.py") if p.stem != "__init__")
    commands = sorted(p.stem for p in (ROOT / "toolkit" / "cli").glob("*.py"))
    missing = [
        name
        for name in packages + runtimes + [c for c in commands if c != "__init__"]
        if name not in layout
    ]
    assert missing == []
