"""TensorFlow imported with its C++ start-up lines kept off the terminal.

Importing TensorFlow 2.21 prints, once per shared library it loads (so twice), lines
logged before absl logging starts (``oneDNN custom operations``, ``cudart_stub``,
``cpu_feature_guard``), then a CUDA probe's ``cuInit`` error and, at the first XLA
compilation, ``XLA service`` lines. ``TF_CPP_MIN_LOG_LEVEL`` filters the later ones but
not those written before absl starts, so the import (and the device probe) runs with
file descriptor 2 pointed at a temporary file, which is replayed if the import fails.

The training examples call ``quiet_import(args.verbose)`` and the CLI
``quiet_import(debug)`` before anything imports TensorFlow. This module imports nothing
heavy itself.
"""

from __future__ import annotations

import os
import sys
import tempfile

__all__ = ["QUIET_LEVEL", "quiet_import"]

#: ``TF_CPP_MIN_LOG_LEVEL`` when quiet: errors too (e.g. oneDNN's "supports DT_INT64
#: only on platforms with AVX-512"), which TensorFlow also raises as Python exceptions
#: when they matter. A value the user set is kept.
QUIET_LEVEL = "3"


def quiet_import(verbose: bool = False) -> None:
    """Imports TensorFlow quietly, unless ``verbose`` or it is imported already.

    With ``verbose`` nothing changes: TensorFlow logs as it does by default.
    """
    if verbose or "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_LEVEL)
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")  # the CUDA probe logs here, once
        except BaseException:
            os.dup2(saved, 2)
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
