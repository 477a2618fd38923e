"""The server is TF-free: its modules import without TensorFlow and never load it."""

from __future__ import annotations

from tests.subprocess_utils import run_python


def test_the_server_modules_import_without_tensorflow():
    result = run_python(
        """
        import sys
        import runtimes.serving
        assert "httptools" not in sys.modules and "onnxruntime" not in sys.modules
        import importlib, pkgutil
        # Every module of the package: the core, each protocol's codec, publish.
        for module in pkgutil.iter_modules(runtimes.serving.__path__):
            importlib.import_module("runtimes.serving." + module.name)
        assert "runtimes.serving.tfserving_rest" in sys.modules
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
