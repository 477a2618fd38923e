"""What training and the CLI print on stderr: no TensorFlow start-up lines, whole
progress lines when stderr is not a terminal.

Each TensorFlow case runs in a fresh interpreter (TensorFlow logs at its first import
only).
"""

from __future__ import annotations

import re
import sys

from tests.subprocess_utils import run_python

#: Lines TensorFlow's C++ side writes at import and at its CUDA probe (this machine
#: prints some of them on a plain ``import tensorflow``).
TF_START_UP = re.compile(r"cpu_feature_guard|cuInit|cudart|cuda_|oneDNN|absl::|XLA service")


def test_quiet_import_keeps_tensorflow_s_start_up_lines_off_stderr():
    quiet = run_python(
        """
        import os
        os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)  # TensorFlow's default: everything
        from toolkit.agents import tensorflow_logs
        tensorflow_logs.quiet_import()
        import tensorflow as tf
        tf.config.list_physical_devices("GPU")
        print(tf.constant(2) * 3)
        """
    )
    assert quiet.returncode == 0, quiet.stderr
    assert "tf.Tensor(6" in quiet.stdout
    assert quiet.stderr == ""
    # --verbose (and the CLI's --debug): TensorFlow's own logging, untouched (nothing
    # imported, no log level set, stderr left alone).
    verbose = run_python(
        """
        import os, sys
        os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as the user's environment had it
        from toolkit.agents import tensorflow_logs
        tensorflow_logs.quiet_import(verbose=True)
        print("tensorflow" in sys.modules, os.environ.get("TF_CPP_MIN_LOG_LEVEL"))
        """
    )
    assert verbose.returncode == 0, verbose.stderr
    assert verbose.stdout.split() == ["False", "None"]


def test_export_prints_its_stages_and_no_tensorflow_lines(tmp_path):
    done = run_python(
        f"""
        import sys
        sys.argv = ["policy-toolkit", "export", "tests.cli_factories:small_cartpole",
                    {str(tmp_path / "b")!r}, "--format", "onnx"]
        from toolkit.__main__ import main
        main()
        """
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert any("load TensorFlow" in line for line in lines), lines
    assert [line for line in lines if TF_START_UP.search(line)] == []


def test_the_training_progress_line_is_whole_when_stderr_is_not_a_terminal(capsys):
    # In this process: pytest's captured stderr is not a terminal either (no TensorFlow
    # start-up to watch here, so no fresh interpreter is needed).
    from toolkit.agents.reporting import ProgressBar
    from toolkit.agents.training import Progress

    assert not sys.stderr.isatty()
    with ProgressBar("train CartPole-v1", 200_000) as bar:
        bar(Progress(13054, 400, 0.1234, 21.5, 180.25, 180.25, 12.0))
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "13054/200000" in last and "eval 180" in last, last
