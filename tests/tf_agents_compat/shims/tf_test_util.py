"""Stands for TensorFlow's internal ``test_util`` in TF-Agents' rewritten tests (our code).

Its ``run_in_graph_and_eager_modes`` runs a test twice, in a TF1 graph and eagerly; this
project is TF2 and eager-only (docs/tf-agents-differences.md), so here it runs the eager
half only. Everything else is TensorFlow's own.
"""

from __future__ import annotations

import functools
from typing import Any

from tensorflow.python.framework.test_util import *  # noqa: F403  (TensorFlow's, unchanged)


def run_in_graph_and_eager_modes(func: Any = None, config: Any = None, use_gpu: bool = True):
    """The test, run eagerly (TF2's mode) only."""
    del config, use_gpu

    def decorator(test: Any) -> Any:
        @functools.wraps(test)
        def eager_only(self: Any, *args: Any, **kwargs: Any) -> Any:
            return test(self, *args, **kwargs)

        return eager_only

    return decorator if func is None else decorator(func)
