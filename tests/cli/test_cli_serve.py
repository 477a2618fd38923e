"""``policy-toolkit serve`` and ``publish`` on the command line (the server's own
behaviour is tested over HTTP in tests/runtimes/serving)."""

from __future__ import annotations

from typer.testing import CliRunner

from tests.contract import cases_runtime as cr
from toolkit.cli import app


def test_publish_on_the_command_line(tmp_path):
    runner = CliRunner()
    base = tmp_path / "base"
    result = runner.invoke(
        app, ["publish", str(cr.bundle("greedy_q")), str(base), "--version", "4"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str((base / "4").absolute())
    again = runner.invoke(app, ["publish", str(cr.bundle("greedy_q")), str(base), "--version", "4"])
    assert again.exit_code == 2
    assert "version 4 already exists" in again.stderr


def test_serve_refuses_bad_options_naming_them(tmp_path):
    runner = CliRunner()
    cases = [
        (["serve"], "MODEL: expected a MODEL path or --model NAME=PATH"),
        (["serve", str(tmp_path), "--versions", "newest"], "--versions: expected latest"),
        (["serve", "--model", "a"], "--model: expected NAME=PATH, got 'a'"),
        (["serve", "--model", f"a={tmp_path}", "--model", f"a={tmp_path}"], "distinct model names"),
        (["serve", str(tmp_path), "--label", "x=one"], "numeric version"),
        (
            ["serve", str(tmp_path), "--versions", "b=all"],
            "--versions: expected NAME=POLICY with NAME one of",
        ),
        (["serve", str(tmp_path), "--log-level", "loud"], "--log-level: expected one of"),
        (["serve", str(tmp_path / "missing")], "is neither a bundle nor a base path"),
        (
            ["serve", str(tmp_path), "--max-body-bytes", "2048", "--max-buffered-bytes", "1024"],
            "--max-buffered-bytes: expected at least --max-body-bytes (2048), got 1024",
        ),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)


def test_serve_without_the_server_libraries_says_what_to_install(tmp_path):
    from tests.subprocess_utils import run_python

    result = run_python(
        f"""
        import sys
        sys.modules["httptools"] = None  # as if installed without the [serve] extra
        from toolkit.cli import main
        sys.argv = ["policy-toolkit", "serve", {str(tmp_path)!r}]
        main()
        """
    )
    assert result.returncode == 2, result.stderr
    assert "serve needs the server's libraries (httptools is missing)" in result.stderr
    assert "pip install 'policy-toolkit[serve]'" in result.stderr
