"""The server is TF-free: its modules import without TensorFlow and never load it."""

from __future__ import annotations

from typer.testing import CliRunner

from tests.subprocess_utils import run_python
from toolkit.cli import app


def test_the_server_modules_import_without_tensorflow():
    result = run_python(
        """
        import sys
        import runtimes.serving
        assert "starlette" not in sys.modules and "uvicorn" not in sys.modules
        import runtimes.serving.server, runtimes.serving.app, runtimes.serving.publish
        import toolkit.cli
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in
                       ("tensorflow", "tensorflow_probability", "tf2onnx", "keras", "tf_keras"))
        assert not heavy, heavy
        print("ok")
        """,
        without_tensorflow=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


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
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
