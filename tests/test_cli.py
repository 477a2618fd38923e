"""The CLI's entry points."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tests.subprocess_utils import run_python
from toolkit import __version__
from toolkit.cli import app

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"policy-toolkit {__version__}"


def test_help_lists_the_app():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "Build, export, verify and run RL policies" in result.output


def test_help_runs_without_tensorflow():
    result = run_python(
        """
        import sys
        from typer.testing import CliRunner
        from toolkit.cli import app
        result = CliRunner().invoke(app, ["--help"])
        assert result.exit_code == 0, result.output
        assert "tensorflow" not in sys.modules
        print("ok")
        """,
        without_tensorflow=True,
    )
    assert result.returncode == 0, result.stderr


def test_python_dash_m_toolkit():
    result = subprocess.run(
        [sys.executable, "-m", "toolkit", "--version"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert __version__ in result.stdout


def test_installed_console_script():
    script = shutil.which("policy-toolkit") or str(
        __import__("pathlib").Path(sys.executable).parent / "policy-toolkit"
    )
    if not __import__("os").path.exists(script):
        pytest.fail("the console script policy-toolkit is not installed next to the interpreter")
    result = subprocess.run([script, "--version"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"policy-toolkit {__version__}"
